"""Training: online batches, AdamW with warm-up and a cosine schedule, many seeds at once.

Every step draws a fresh batch (there is no data set): one `task.sample` per
instance, stacked. Models that can stack (their class has `stacked`: `mlp1` ->
`StackedMLP`, `transformer` -> `StackedTransformer`) train all requested seeds in one
batched module with a leading instance dim; the
loss is the sum over instances of each instance's batch mean, so each instance
gets exactly the gradient it would get alone, and AdamW is elementwise: N seeds
together equal N separate runs (tests/unit/test_training.py checks it). Each
seed's data come from its own generator, so the stream does not depend on which
other seeds share the batch.

This module is the plain path: autograd, then `torch.optim.AdamW`
(`AutogradStep`). Speed lives behind the run context's door
(`ctx.accel`, `sparsebench.accel`): where a backend covers the model and task it
hands back a faster step with the same interface (`sample`, then a call), and
with `ctx.workers > 1` it splits the seeds over worker processes. Either way the
arithmetic is the same update; docs/performance.md measures how close.

Randomness: seed s initialises weights from generator(s, "init") and draws data
from generator(s, "data"); the same config and seed give the same weights on the
same device (bitwise on CPU, for the same thread count and backend).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Literal

import torch
from tqdm.auto import tqdm

from sparsebench.api import Batch, Task
from sparsebench.build import make_model, model_class
from sparsebench.config import check, stable_hash
from sparsebench.errors import UserError

if TYPE_CHECKING:
    from sparsebench.context import RunContext

ADAM_EPS = 1e-8  # AdamW's epsilon (torch's default), on every path
DIVERGENCE_CHECK = 100  # steps between checks that the loss is finite (one device sync each)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # optimiser steps, one fresh batch each
    batch_size: int = 1024  # samples per step (per instance)
    lr: float = 1e-2  # peak learning rate
    warmup: int = 100  # linear warm-up steps before the cosine decay (at most `steps`)
    min_lr_frac: float = 0.0  # the cosine ends at lr * min_lr_frac
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.999  # AdamW second-moment decay
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast matmuls on CUDA (the post's setting)

    def __post_init__(self) -> None:
        w = "train"
        check(w, self.steps >= 1, "steps", f"must be at least 1 (got {self.steps})")
        check(w, self.batch_size >= 1, "batch_size", f"must be at least 1 (got {self.batch_size})")
        check(w, math.isfinite(self.lr) and self.lr > 0, "lr", f"must be a finite number > 0 (got {self.lr})")
        check(w, 0 <= self.warmup <= self.steps, "warmup",
              f"must be in [0, steps={self.steps}] (got {self.warmup}); set train.warmup too when you shorten steps")
        check(w, 0 <= self.min_lr_frac <= 1, "min_lr_frac", f"must be in [0, 1] (got {self.min_lr_frac})")
        check(w, math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
              f"must be a finite number >= 0 (got {self.weight_decay})")
        for f in ("beta1", "beta2"):
            check(w, 0 <= getattr(self, f) < 1, f, f"must be in [0, 1) (got {getattr(self, f)})")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak lr at `step`: linear warm-up, then cosine to min_lr_frac."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))


def seed_generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """An independent generator for (seed, stream), e.g. (3, "init") or (3, "data")."""
    derived = int(stable_hash({"seed": seed, "stream": stream}), 16) % (2**63)
    return torch.Generator(device=device).manual_seed(derived)


def autocast(device: torch.device, precision: str) -> Any:
    """bf16 autocast where it helps (CUDA); a no-op otherwise (CPU autocast is slower for these sizes)."""
    if precision == "bf16" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return nullcontext()


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, with torch's fused (one kernel per tensor) implementation where the device has it.

    Elementwise either way, so stacked instances stay independent.
    """
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, eps=ADAM_EPS)
    if params and all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.AdamW(params, fused=True, **kw)
        except (RuntimeError, ValueError):  # an older torch without the fused CPU kernel
            pass
    return torch.optim.AdamW(params, **kw)


@dataclass
class TrainResult:
    models: list[Any]  # one trained model per seed, in seed order, on the training device
    final_loss: list[float]  # mean training loss over the last 5% of steps, per seed
    seconds: float  # wall time of the whole (batched) training
    processes: int = 1  # worker processes the seeds were split over (1: this process)
    threads: int = 1  # torch intra-op threads per process (CPU results depend on it in the last bits)
    backend: str = "torch"  # what computed the steps: "torch", "fused" or "native" (sparsebench.accel)


def init_models(task: Task, model_name: str, model_cfg: dict[str, Any], seeds: list[int]) -> list[Any]:
    """Freshly initialised models, one per seed, built on the CPU (so init is device-independent)."""
    return [make_model(model_name, model_cfg, task, generator=seed_generator(s, "init")) for s in seeds]


def stackable(model_name: str) -> bool:
    """Whether seeds of this model train together in one batched module (its class has a `stacked`)."""
    return getattr(model_class(model_name), "stacked", None) is not None


class AutogradStep:
    """One training step as a call: `step(batch, lr)` -> the per-instance mean loss (detached).

    The plain step: the model's logits, the task's loss, autograd, then AdamW at learning rate
    `lr`. `sample(generators)` draws the batch for it: one `task.sample` per instance, stacked
    ([inst, batch, ...]), or the single instance's batch as it is for an unstacked model.
    Speed backends (`sparsebench.accel`) subclass or replace it with the same two calls.
    """

    backend = "torch"

    def __init__(self, module: torch.nn.Module, task: Task, cfg: TrainConfig, device: torch.device,
                 stacked: bool = True):
        self.module, self.task, self.cfg, self.device, self.stacked = module, task, cfg, device, stacked
        self.opt = make_optimizer([p for p in module.parameters() if p.requires_grad], cfg)

    def sample(self, generators: list[torch.Generator]) -> Batch:
        batches = [self.task.sample(self.cfg.batch_size, generator=g, device=self.device) for g in generators]
        return Batch.stack(batches) if self.stacked else batches[0]

    def loss(self, batch: Batch) -> torch.Tensor:
        """Per-instance mean training loss: [inst] (a scalar for an unstacked model)."""
        with autocast(self.device, self.cfg.precision):
            logits = self.module(**batch.inputs)
        return self.task.loss(logits.float(), batch).mean(-1)

    def __call__(self, batch: Batch, lr: float) -> torch.Tensor:
        per_instance = self.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        per_instance.sum().backward()
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.opt.step()
        return per_instance.detach()


def optimise(module: torch.nn.Module, task: Task, cfg: TrainConfig, seeds: list[int], ctx: "RunContext",
             stacked: bool = True, on_step: Callable[[int], None] | None = None) -> tuple[list[float], str]:
    """Train `module` in place for cfg.steps steps: (final loss per seed, the backend that computed the steps).

    on_step(t), if given, is called after the t-th step (t = 1..steps), e.g. to snapshot the weights."""
    step = ctx.accel.step(module, task, cfg) if stacked else None
    step = step or AutogradStep(module, task, cfg, ctx.device, stacked)
    gens = [seed_generator(s, "data", ctx.device) for s in seeds]
    tail = max(1, cfg.steps // 20)
    tail_sum = torch.zeros(len(seeds), device=ctx.device)
    module.train()
    label = f"train {getattr(task, 'name', '')} x{len(seeds)}".strip()
    bar = tqdm(range(cfg.steps), desc=label, disable=not ctx.progress, leave=False, mininterval=0.5)
    # On a GPU a step never waits for the device (tests/unit/test_gpu.py checks it): the tail loss accumulates
    # on the device and the bar shows no loss (reading one would synchronise every 50 steps); the only wait is
    # the divergence check, once per DIVERGENCE_CHECK steps.
    show_loss = ctx.progress and ctx.device.type == "cpu"
    for i in bar:
        per_instance = step(step.sample(gens), cfg.lr * lr_factor(i, cfg))
        if i % DIVERGENCE_CHECK == DIVERGENCE_CHECK - 1 and not bool(torch.isfinite(per_instance).all()):
            bad = [s for s, v in zip(seeds, per_instance.reshape(-1).tolist()) if not math.isfinite(v)]
            raise UserError(f"training diverged: the loss of seed {bad[0]} of {getattr(task, 'name', '') or 'the task'}"
                            f" is not finite at step {i + 1} (train.lr={cfg.lr:g}); lower train.lr")
        if i >= cfg.steps - tail:
            tail_sum += per_instance.reshape(-1)
        if show_loss and i % 50 == 0:
            bar.set_postfix(loss=f"{per_instance.mean().item():.4f}")
        if on_step is not None:
            on_step(i + 1)
    bar.close()
    return (tail_sum / tail).tolist(), step.backend


def train(task: Task, model_name: str, model_cfg: dict[str, Any], cfg: TrainConfig, seeds: list[int],
          ctx: "RunContext") -> TrainResult:
    """Train one model per seed; stackable models train all seeds in one batched module.

    With `ctx.workers > 1` on the CPU, the run context may split the seeds of a stackable model
    over single-threaded worker processes (`ctx.accel.train_in_workers`), each training its share
    as one batched module. An instance's arithmetic does not depend on its neighbours' values, but a
    batched matmul over another number of instances may round in the last bits differently (2 seeds
    split 1 + 1 against 2 together: up to 2e-7 after 150 steps), so the weights match a one-process run
    on one thread to float tolerance, not bitwise.

    Bitwise reproducibility holds for the same machine, torch build, thread count, split of the seeds
    over processes and backend.
    Other thread counts split a few matmul reductions differently (~1e-10 after one step), and
    over thousands of steps that becomes a different but statistically equivalent solution
    (docs/performance.md, "Determinism"); run.json records the threads, processes and backend.
    """
    split = ctx.accel.train_in_workers(train, task, model_name, model_cfg, cfg, seeds)
    if split is not None:
        return split
    models = init_models(task, model_name, model_cfg, seeds)
    start = time.perf_counter()
    if stackable(model_name):
        stacked = type(models[0]).stacked(models).to(ctx.device)
        losses, backend = optimise(stacked, task, cfg, seeds, ctx)
        trained = [m.to(ctx.device) for m in stacked.unstack(models[0].to(ctx.device))]
    else:
        trained, losses, backend = [], [], "torch"
        for seed, model in zip(seeds, models):
            model = model.to(ctx.device)
            seed_losses, backend = optimise(model, task, cfg, [seed], ctx, stacked=False)
            losses += seed_losses
            trained.append(model)
    for m in trained:
        m.eval()
    return TrainResult(trained, losses, time.perf_counter() - start, threads=torch.get_num_threads(),
                       backend=backend)
