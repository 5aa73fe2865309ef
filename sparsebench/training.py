"""Training: online batches, AdamW with warm-up and a cosine schedule, many seeds at once.

Every step draws a fresh batch (there is no data set). Models that can stack
(`mlp1`) train all requested seeds in one batched module with a leading instance
dim; the loss is the sum over instances of each instance's batch mean, so each
instance gets exactly the gradient it would get alone, and AdamW is elementwise:
N seeds together equal N separate runs (tests/unit/test_training.py checks it).
Each seed's data come from its own generator, so the stream does not depend on
which other seeds share the batch.

Speed (docs/performance.md): when the task has a sparse KL target (`fused.supports_fused`)
and the model exposes `residual` and `unembed_params` (StackedMLP does), the CPU trainer
replaces "logits, then task.loss" by `fused.unembed_kl`, which never builds a batch x
vocab tensor; any other task or model trains through `task.loss` (the generic path).
With `kernel="native"` a stacked one-block `mlp1` on that path runs its whole forward and
backward in one compiled call instead (`sparsebench.native`), and that call also takes the AdamW
step, instance by instance while its gradients are in cache (`native.AdamW`).
Otherwise AdamW is torch's, with its fused kernel where the device has one.

Randomness: seed s initialises weights from generator(s, "init") and draws data
from generator(s, "data"); the same config and seed give the same weights on the
same device (bitwise on CPU).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm

from sparsebench.api import Task
from sparsebench.build import make_model, stackable
from sparsebench.config import check, stable_hash
from sparsebench.fused import supports_fused, unembed_kl
from sparsebench.native import AdamW as NativeAdamW
from sparsebench.native import check_kernel, samples, topk_batch, train_step
from sparsebench.native import supports as native_supports

ADAM_EPS = 1e-8  # AdamW's epsilon (torch's default), on either path


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000  # optimiser steps, one fresh batch each
    batch_size: int = 1024  # samples per step (per instance)
    lr: float = 1e-2  # peak learning rate
    warmup: int = 100  # linear warm-up steps before the cosine decay
    min_lr_frac: float = 0.0  # the cosine ends at lr * min_lr_frac
    weight_decay: float = 0.0  # AdamW decoupled weight decay
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.999  # AdamW second-moment decay
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast matmuls on CUDA (the post's setting)

    def __post_init__(self) -> None:
        w = "train"
        check(w, self.steps >= 1, "steps", f"must be at least 1 (got {self.steps})")
        check(w, self.batch_size >= 1, "batch_size", f"must be at least 1 (got {self.batch_size})")
        check(w, self.lr > 0, "lr", f"must be > 0 (got {self.lr})")
        check(w, 0 <= self.warmup <= self.steps, "warmup", f"must be in [0, steps] (got {self.warmup})")
        check(w, 0 <= self.min_lr_frac <= 1, "min_lr_frac", f"must be in [0, 1] (got {self.min_lr_frac})")
        check(w, self.weight_decay >= 0, "weight_decay", f"must be >= 0 (got {self.weight_decay})")
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


@dataclass
class TrainResult:
    models: list[Any]  # one trained model per seed, in seed order, on the training device
    final_loss: list[float]  # mean training loss over the last 5% of steps, per seed
    seconds: float  # wall time of the whole (batched) training
    processes: int = 1  # worker processes the seeds were split over (1: this process)
    threads: int = 1  # torch intra-op threads per process (CPU results depend on it in the last bits)
    kernel: str = "torch"  # what computed the steps: "torch", or "native" (sparsebench.native)


def init_models(task: Task, model_name: str, model_cfg: dict[str, Any], seeds: list[int]) -> list[Any]:
    """Freshly initialised models, one per seed, built on the CPU (so init is device-independent)."""
    return [make_model(model_name, model_cfg, task, generator=seed_generator(s, "init")) for s in seeds]


def use_fused(task: Task, module: torch.nn.Module, device: torch.device, fused: bool | None = None) -> bool:
    """Whether the fused unembedding + loss applies: asked for (None = auto: on the CPU), and supported."""
    possible = supports_fused(task) and hasattr(module, "residual") and hasattr(module, "unembed_params")
    if fused is None:
        return possible and device.type == "cpu"
    return bool(fused) and possible


def use_native(module: torch.nn.Module, precision: str, fused: bool, kernel: str) -> bool:
    """Whether the native kernel computes the steps: asked for, on the fused path, and a model (and, for
    bf16 precision, a CPU) it covers."""
    return kernel == "native" and fused and native_supports(module, precision)


def train(task: Task, model_name: str, model_cfg: dict[str, Any], cfg: TrainConfig, seeds: list[int], *,
          device: torch.device, progress: bool = True, fused: bool | None = None, workers: int = 1,
          kernel: str = "torch") -> TrainResult:
    """Train one model per seed; stackable models train all seeds in one batched module.

    fused: use the fused unembedding + sparse KL loss when the task and model support it
    (None: automatically on the CPU; False: always the generic `task.loss` path).
    workers: on the CPU, split the seeds of a stackable model over this many single-threaded
    processes (`sparsebench.parallel`), each training its share as one batched module. Each
    instance's arithmetic does not depend on its neighbours, so the weights match a
    one-process run on one thread (tests/unit/test_training.py). Unstackable models, a single
    seed and CUDA train in this process. Time includes starting the workers (~2-4 s each).
    kernel: "native" computes each step of a stacked one-block `mlp1` on the fused path (CPU)
    in one compiled call (`sparsebench.native`); anything else trains as with "torch", and
    `TrainResult.kernel` says which ran. A UserError if the native kernel cannot run here.

    Bitwise reproducibility holds for the same machine, torch build and thread count. Other
    thread counts split a few matmul reductions differently (~1e-10 after one step), and over
    thousands of steps that becomes a different but statistically equivalent solution
    (docs/performance.md, "Determinism"); run.json records the threads and processes used.
    """
    device = torch.device(device)
    check_kernel(kernel, device)
    if workers > 1 and len(seeds) > 1 and device.type == "cpu" and stackable(model_name):
        return _train_in_workers(task, model_name, model_cfg, cfg, seeds, fused, workers, kernel)
    models = init_models(task, model_name, model_cfg, seeds)
    start = time.perf_counter()
    ran = "torch"
    if stackable(model_name):
        stacked = type(models[0]).stacked(models).to(device)
        path = use_fused(task, stacked, device, fused)
        if use_native(stacked, cfg.precision, path, kernel):
            path, ran = "native", "native"
        losses = _optimise(stacked, task, cfg, seeds, device, progress, stacked=True, fused=path)
        trained = [m.to(device) for m in stacked.unstack(models[0].to(device))]
    else:
        trained, losses = [], []
        for seed, model in zip(seeds, models):
            model = model.to(device)
            losses += _optimise(model, task, cfg, [seed], device, progress, stacked=False, fused=False)
            trained.append(model)
    for m in trained:
        m.eval()
    return TrainResult(trained, losses, time.perf_counter() - start, threads=torch.get_num_threads(), kernel=ran)


def _train_in_workers(task: Task, model_name: str, model_cfg: dict[str, Any], cfg: TrainConfig, seeds: list[int],
                      fused: bool | None, workers: int, kernel: str) -> TrainResult:
    from sparsebench.parallel import require_installed, split, worker_pool

    require_installed({"tasks": [getattr(task, "name", "")], "models": [model_name]})
    groups = split(seeds, workers)
    start = time.perf_counter()
    with worker_pool(len(groups)) as pool:
        futures = [pool.submit(_train_states, task, model_name, model_cfg, cfg, g, fused, kernel) for g in groups]
        results = [f.result() for f in futures]
    models, losses = [], []
    for group, (states, group_losses, ran) in zip(groups, results):
        for model, state in zip(init_models(task, model_name, model_cfg, group), states):
            model.load_state_dict(state)
            models.append(model.eval())
        losses += group_losses
    return TrainResult(models, losses, time.perf_counter() - start, processes=len(groups), threads=1, kernel=ran)


def _train_states(task: Task, model_name: str, model_cfg: dict[str, Any], cfg: TrainConfig, seeds: list[int],
                  fused: bool | None, kernel: str) -> tuple[list[dict[str, torch.Tensor]], list[float], str]:
    """Worker side of `_train_in_workers`: weights travel back as state dicts (plain tensors)."""
    result = train(task, model_name, model_cfg, cfg, seeds, device=torch.device("cpu"), progress=False, fused=fused,
                   kernel=kernel)
    return [m.state_dict() for m in result.models], result.final_loss, result.kernel


def make_optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, with the fused (one kernel per tensor) implementation where the device supports it.

    On the CPU the default is a Python loop of ~10 ops per tensor; the fused kernel is one op
    per tensor (a large share of a step when the model is tiny). Elementwise either way, so
    instances stay independent.
    """
    kw = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, eps=ADAM_EPS)
    if params and all(p.dtype.is_floating_point and p.device.type in ("cpu", "cuda") for p in params):
        try:
            return torch.optim.AdamW(params, fused=True, **kw)
        except (RuntimeError, ValueError):  # an older torch without the fused CPU kernel
            pass
    return torch.optim.AdamW(params, **kw)


def step_loss(module: torch.nn.Module, task: Task, batch: Any, cfg: TrainConfig, device: torch.device,
              fused: bool) -> torch.Tensor:
    """Per-instance mean training loss of one batch ([inst], or a scalar for an unstacked model).

    fused: False (task.loss on the logits) or True (`fused.unembed_kl`).
    """
    if fused:
        index, probs = task.sparse_kl_target(batch)  # type: ignore[attr-defined]
        W_U, b_U = module.unembed_params()  # type: ignore[operator]
        r = module.residual(**batch.inputs)  # type: ignore[operator]
        mm_dtype = torch.bfloat16 if cfg.precision == "bf16" else None
        return unembed_kl(r, W_U, b_U, index, probs, mm_dtype=mm_dtype)
    with autocast(device, cfg.precision):
        logits = module(**batch.inputs)
    return task.loss(logits.float(), batch).mean(-1)  # [inst] or scalar


class Step:
    """One training step as a call, step(batch, i) -> the per-instance mean loss (detached): the
    gradients of the batch, then AdamW with the learning rate of step i (warm-up and cosine,
    `lr_factor`); `sample(generators)` draws the stacked batch for it.

    fused: False or True as in `step_loss` (autograd, then torch's AdamW, `self.opt`), or "native":
    one call of the native kernel, which also takes the AdamW step (`native.AdamW`). Its gradients
    overwrite each .grad in place (no autograd graph, no zeroing, no new buffers), and a built-in
    top-k task's batches are drawn by `native.topk_batch` (bitwise the task's own batches).
    """

    def __init__(self, module: torch.nn.Module, task: Task, cfg: TrainConfig, device: torch.device,
                 fused: bool | str):
        self.module, self.task, self.cfg, self.device, self.fused = module, task, cfg, device, fused
        self.native = NativeAdamW(module, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay,
                                  eps=ADAM_EPS) if fused == "native" else None
        self.opt = None if self.native else make_optimizer([p for p in module.parameters() if p.requires_grad], cfg)
        self.native_sampler = self.native is not None and samples(task)  # decided once, not per step

    def sample(self, generators: list[torch.Generator]) -> Any:
        """The next stacked batch, one generator per instance (`Task.sample_stacked`)."""
        if self.native_sampler:
            return topk_batch(self.task, self.cfg.batch_size, generators)
        return self.task.sample_stacked(self.cfg.batch_size, generators=generators, device=self.device)

    def __call__(self, batch: Any, i: int) -> torch.Tensor:
        lr = self.cfg.lr * lr_factor(i, self.cfg)
        if self.native is not None:
            index, probs = self.task.sparse_kl_target(batch)  # type: ignore[attr-defined]
            return train_step(self.module, batch.inputs["tokens"], batch.inputs["weights"], index, probs,
                              bf16=self.cfg.precision == "bf16", adamw=self.native, lr=lr)
        per_instance = step_loss(self.module, self.task, batch, self.cfg, self.device, bool(self.fused))
        self.opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
        per_instance.sum().backward()
        for group in self.opt.param_groups:  # type: ignore[union-attr]
            group["lr"] = lr
        self.opt.step()  # type: ignore[union-attr]
        return per_instance.detach()


def _optimise(module: torch.nn.Module, task: Task, cfg: TrainConfig, seeds: list[int], device: torch.device,
              progress: bool, stacked: bool, fused: bool | str = False) -> list[float]:
    step_fn = Step(module, task, cfg, device, fused)
    gens = [seed_generator(s, "data", device) for s in seeds]
    tail = max(1, cfg.steps // 20)
    tail_sum = torch.zeros(len(seeds), device=device)
    module.train()
    label = f"train {getattr(task, 'name', '')} x{len(seeds)}".strip()
    bar = tqdm(range(cfg.steps), desc=label, disable=not progress, leave=False, mininterval=0.5)
    for step in bar:
        if stacked:
            batch = step_fn.sample(gens)
        else:
            batch = task.sample(cfg.batch_size, generator=gens[0], device=device)
        per_instance = step_fn(batch, step)
        if step >= cfg.steps - tail:
            tail_sum += per_instance.reshape(-1)
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{per_instance.mean().item():.4f}")
    bar.close()
    return (tail_sum / tail).tolist()
