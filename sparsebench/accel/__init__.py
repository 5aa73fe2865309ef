"""The one door to speed. Everything that makes training or evaluation faster, and nothing else, lives here.

The science path (training, checkpoints, evaluate, models, tasks) reads plainly and never
imports this package: it holds a `RunContext` (`sparsebench.context`) and asks its
`accel`, an `Accelerator` built once from the context's device, workers, backend and
executor, three questions:

- `step(module, task, cfg)`: "is there a faster training step for this model and task?"
  Either a step with the plain step's interface (`training.AutogradStep`: `sample`, then a
  call) or None, and the trainer takes the plain one. Backends (`--backend`):
  * "torch": none; plain autograd and torch's AdamW everywhere.
  * "fused" (`fused.py`): stacked `mlp1` or `transformer` on a sparse-KL task: the
    unembedding fused with the loss, never building a [batch, V] tensor; the built-in top-k
    tasks' batches drawn for all instances at once.
  * "native" (`native.py`, `csrc/`): the same models and tasks, the whole step (forward,
    backward, AdamW) as one compiled call on x86-64 CPUs with AVX-512, and a compiled
    sampler; anything it does not cover falls back to "fused", then "torch".
  * "auto" (default): "fused" where it applies on the CPU, else "torch".
  Every fast sampler proves itself bitwise equal to the task's `sample` (`sampling.py`).
- `train_in_workers(...)`: "should this run's seeds be split over worker processes?"
  (`workers.py`: `--workers N` on the CPU, stackable models, more than one seed).
- `map_jobs(fn, calls, ...)`: "where do evaluation jobs run?" In this process, in
  `--workers N` single-threaded processes, or as Ray tasks (`ray.py`).

The benchmark of all of it against a plain PyTorch loop is `bench.py` (`sparsebench bench`).
Submodules are imported on first use, so `sparsebench --help` does not pay for torch.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, Iterator

from sparsebench.errors import UserError

if TYPE_CHECKING:
    import torch

    from sparsebench.context import RunContext

BACKENDS = ("auto", "torch", "fused", "native")  # the values of --backend
EXECUTORS = ("local", "ray")  # the values of --executor


class Accelerator:
    """The speed choices of one run context, validated once (see the module docstring)."""

    def __init__(self, ctx: "RunContext"):
        if ctx.backend not in BACKENDS:
            raise UserError(f"--backend must be one of {', '.join(BACKENDS)} (got {ctx.backend!r})")
        if ctx.executor not in EXECUTORS:
            raise UserError(f"--executor must be one of {', '.join(EXECUTORS)} (got {ctx.executor!r})")
        if not isinstance(ctx.workers, int) or ctx.workers < 1:
            raise UserError(f"--workers must be at least 1 (got {ctx.workers})")
        if ctx.workers > 1 and ctx.executor != "local":
            raise UserError("--workers is for the local executor; Ray places jobs on the cluster's CPUs itself")
        if ctx.backend == "native":
            if ctx.device.type != "cpu":
                raise UserError(f"--backend native runs on the CPU only (device is {ctx.device}); "
                                f"use --backend auto")
            from sparsebench.accel import native

            ok, why = native.available()
            if not ok:
                raise UserError(f"--backend native cannot run here: {why}")
        self.ctx = ctx

    def step(self, module: "torch.nn.Module", task: Any, cfg: Any) -> Any | None:
        """A faster training step for `module` (a stacked model) on `task`, or None for the plain one."""
        backend, device = self.ctx.backend, self.ctx.device
        if backend == "torch":
            return None
        from sparsebench.accel import fused

        if not fused.supports(module, task):
            return None
        if backend == "native":
            from sparsebench.accel import native

            if native.supports(module, cfg.precision):
                return native.NativeStep(module, task, cfg, device)
        if backend in ("fused", "native") or device.type == "cpu":
            return fused.FusedStep(module, task, cfg, device)
        return None

    def train_in_workers(self, train: Callable[..., Any], task: Any, model_name: str, model_cfg: dict[str, Any],
                         cfg: Any, seeds: list[int]) -> Any | None:
        """The run trained in worker processes (a `training.TrainResult`), or None to train in this one."""
        from sparsebench.training import stackable

        ctx = self.ctx
        if ctx.workers <= 1 or len(seeds) <= 1 or ctx.device.type != "cpu" or not stackable(model_name):
            return None
        from sparsebench.accel import workers

        return workers.train_split(train, ctx, task, model_name, model_cfg, cfg, seeds, ctx.workers)

    def map_jobs(self, fn: Callable[..., Any], calls: list[tuple[Any, ...]], uses: dict[str, list[str]],
                 desc: str = "evaluate") -> Iterator[Any]:
        """`fn(*call)` for every call, where the context says (results as they finish). `uses` names the
        registered entries the calls need ({registry kind: names}): worker processes and Ray tasks can
        only use installed ones, so entries registered at run time are refused first."""
        from sparsebench.accel import workers

        ctx = self.ctx
        if ctx.executor == "ray":
            from sparsebench.accel.ray import map_on_ray

            workers.require_installed(uses)
            return map_on_ray(fn, calls, ctx.ray_address, gpu=ctx.device.type == "cuda")
        if ctx.workers > 1 and calls:
            workers.require_installed(uses)
            return workers.map_jobs(fn, calls, ctx.workers, ctx.progress, desc)
        return workers.map_jobs(fn, calls, 1, ctx.progress, desc)


@functools.lru_cache(maxsize=16)
def accelerator(ctx: "RunContext") -> Accelerator:
    """The `Accelerator` of a context (one per distinct context in a process)."""
    return Accelerator(ctx)
