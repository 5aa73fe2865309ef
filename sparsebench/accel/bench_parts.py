"""Where a training step's time goes, and the ceiling a perfect loss kernel would reach.

`sparsebench bench` uses this to put its "x plain" figures next to a measured bound.
A step of the trainer (`training.optimise`, fused step) is four pieces of work:

    sample    the fused step's sampler: draw the batch of every instance
    model     the residual stream r (embedding bag, MLP blocks), forward + backward
    loss      the fused unembedding + sparse KL (`fused.unembed_kl`), forward + backward:
              three [B, d] x [d, V] matmuls per instance plus the softmax work on [B, V]
    optimiser AdamW (torch's fused kernel) over every parameter

Each is timed on its own, on one thread, for the instances one worker process holds.
"ceiling" is the step time if the loss ran its matmuls at the bf16 matmul rate measured
in the same run and did nothing else (no softmax, no exp, no Python): the best any
hand-written loss kernel could do with everything else unchanged. It bounds the
multi-process rows from above (it also assumes processes do not slow each other;
with more processes than cores, bench.py counts the rounds they take turns in).

Where the native kernel runs (`sparsebench.accel.native`), its one call (model and loss, forward
and backward: the work of "model" + "loss"), its sampler (the same batch as "sample") and the whole step with both (sample, then one call that also takes the AdamW
step) are timed too, in fp32 and with bf16 matmuls: what compiled code actually reached, next
to the ceiling.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

from sparsebench.accel.fused import bag_residual, unembed_kl
from sparsebench.accel.native import mlp1_kl
from sparsebench.training import lr_factor

PARTS = ("sample", "model", "loss", "optimiser")
# Timed when the native kernel runs here: its sampler, its one call (model and loss, forward and
# backward) and the whole step with both, in fp32 and with bf16 matmuls.
NATIVE_PARTS = ("sample, native", "model + loss, native", "step, native", "model + loss, native bf16",
                "step, native bf16")


class StepParts:
    """The trainer's step on `n` stacked `mlp1` instances, split into separately timed parts."""

    def __init__(self, task: Any, d: int, m: int, batch: int, n: int, native: tuple[str, ...] = ()):
        import torch

        from sparsebench.training import TrainConfig, init_models, seed_generator

        seeds = list(range(n))
        models = init_models(task, "mlp1", {"d_model": d, "d_mlp": m}, seeds)
        self.module = type(models[0]).stacked(models)
        self.cfg = TrainConfig(steps=1, batch_size=batch, warmup=0)
        self.task, self.batch, self.n, self.native = task, batch, n, native
        self.steps: dict[tuple[str, str], Any] = {}  # (backend, precision) -> the trainer's step
        self.opt = self.stepper("fused", "fp32").opt
        self.gens = [seed_generator(s, "data") for s in seeds]
        self.fixed = self.stepper("fused", "fp32").sample(self.gens)  # one batch reused by model/loss
        r = bag_residual(self.module, **self.fixed.inputs)  # [n, batch, d]
        self.r = r.detach().requires_grad_()
        self.grad_r = torch.randn_like(r)  # a stand-in upstream gradient for the model's backward
        self.step()  # every parameter has a .grad, so the optimiser part does real work

    def loss_flops(self) -> int:
        """Matmul FLOPs of the loss part: 3 matmuls of 2 * batch * d * V per instance."""
        W_U, _ = self.module.unembed_params()
        return 3 * 2 * self.n * self.batch * W_U.shape[-2] * W_U.shape[-1]

    def _loss(self, r: Any, batch: Any) -> Any:
        """The fused loss from a given residual stream r (the fused step computes r itself)."""
        W_U, b_U = self.module.unembed_params()
        index, probs = self.task.sparse_kl_target(batch)
        return unembed_kl(r, W_U, b_U, index, probs).sum()

    def stepper(self, backend: str, precision: str) -> Any:
        """The trainer's own step on this module, as the run context's door hands it out for `backend`."""
        import dataclasses

        from sparsebench.context import RunContext

        if (backend, precision) not in self.steps:
            cfg = dataclasses.replace(self.cfg, precision=precision)
            ctx = RunContext.create("cpu", progress=False, backend=backend)
            self.steps[backend, precision] = ctx.accel.step(self.module, self.task, cfg)
        return self.steps[backend, precision]

    def step(self, backend: str = "fused", precision: str = "fp32") -> None:
        """One whole training step as the trainer takes it: sample, then the step (at step 0's lr)."""
        step = self.stepper(backend, precision)
        step(step.sample(self.gens), self.cfg.lr * lr_factor(0, self.cfg))

    def parts(self) -> dict[str, Callable[[], Any]]:
        """The parts as calls. model and loss return their gradients (autograd.grad) instead of
        accumulating them into .grad, so repeating them leaves the model as it was."""
        import torch

        W_U, b_U = self.module.unembed_params()
        trainable = [p for p in self.module.parameters() if p.requires_grad]
        body = [p for p in trainable if p is not W_U and p is not b_U]
        native = {}
        for precision in self.native:  # the precisions the native kernel runs in here
            index, probs = self.task.sparse_kl_target(self.fixed)
            inputs, bf16 = self.fixed.inputs, precision == "bf16"

            def call(bf16: bool = bf16) -> Any:
                loss = mlp1_kl(self.module, inputs["tokens"], inputs["weights"], index, probs, bf16=bf16)
                return torch.autograd.grad(loss.sum(), trainable)

            tag = " bf16" if bf16 else ""
            native[f"model + loss, native{tag}"] = call
            native[f"step, native{tag}"] = lambda precision=precision: self.step("native", precision)
        if self.native:
            native["sample, native"] = lambda: self.stepper("native", "fp32").sample(self.gens)
        return {
            "sample": lambda: self.stepper("fused", "fp32").sample(self.gens),
            "model": lambda: torch.autograd.grad(bag_residual(self.module, **self.fixed.inputs), body, self.grad_r),
            "loss": lambda: torch.autograd.grad(self._loss(self.r, self.fixed), [self.r, W_U, b_U]),
            "optimiser": self.opt.step,
            "step": self.step,
            **native,
        }

    def time(self, reps: int, names: tuple[str, ...] | None = None) -> dict[str, float]:
        """Seconds per call of each named part (default: all, the whole step and the native parts if
        the kernel runs here), mean of `reps` calls.

        The optimiser part re-applies the last step's gradients `reps` times; the weights and
        optimiser state are restored afterwards, so the model only moves by real steps.
        """
        import copy

        out = {}
        parts = self.parts()
        for name in names or parts:
            fn = parts[name]
            saved = copy.deepcopy((self.module.state_dict(), self.opt.state_dict())) if name == "optimiser" else None
            fn()  # first-call costs
            t = time.perf_counter()
            for _ in range(reps):
                fn()
            out[name] = (time.perf_counter() - t) / reps
            if saved is not None:
                self.module.load_state_dict(saved[0])
                self.opt.load_state_dict(saved[1])
        return out


def ceiling(times: dict[str, float], loss_flops: int, bf16_rate: float) -> float:
    """Step seconds with the loss at `bf16_rate` FLOP/s doing nothing but its matmuls."""
    return times["step"] - times["loss"] + loss_flops / bf16_rate


def summarise(runs: list[dict[str, float]]) -> dict[str, float]:
    """Median over repeats of each timed quantity."""
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}
