"""Where and how work runs, chosen once: device, model cache, progress bars, and speed.

A `RunContext` is made once (by the CLI from its flags, or by a library user) and
passed down to training, the model cache and evaluation instead of loose
arguments. Its `accel` is the one door to every speed feature
(`sparsebench.accel`): which step computes each training update, how many worker
processes share the work, and where evaluation jobs run. The science code
(training, checkpoints, evaluate, models, tasks) never imports the speed code; it
asks the context, and gets the plain path unless a backend covers the case.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from sparsebench import accel
from sparsebench.errors import UserError


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None) picks CUDA when present, else the CPU; anything else is taken as given."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UserError(f"invalid device {device!r}: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available on this machine")
    return dev


def default_cache_root() -> Path:
    """$SPARSEBENCH_CACHE if set and not empty, else ~/.cache/sparsebench."""
    env = os.environ.get("SPARSEBENCH_CACHE", "").strip()
    return Path(env) if env else Path.home() / ".cache" / "sparsebench"


@dataclass(frozen=True)
class RunContext:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where models train and are scored
    cache: Path | None = None  # model cache root; None: $SPARSEBENCH_CACHE, else ~/.cache/sparsebench
    progress: bool = True  # show progress bars
    workers: int = 1  # CPU worker processes (one thread each) for a run's seeds or evaluate's jobs
    backend: str = "auto"  # training step: "auto", "torch" (plain autograd), "fused", "native" (accel)
    executor: str = "local"  # where evaluate's jobs run: "local" (here, or `workers` processes) or "ray"
    ray_address: str | None = None  # an existing Ray cluster for executor "ray" (None: start a local one)

    @classmethod
    def create(cls, device: str | torch.device | None = "auto", **fields: Any) -> "RunContext":
        """A validated context: the device resolved, and every speed choice checked before any work
        (an unknown backend, or the native kernel where it cannot run, is one UserError)."""
        ctx = cls(device=resolve_device(device), **fields)
        ctx.accel  # noqa: B018 - builds and validates the speed door now
        return ctx

    @property
    def cache_root(self) -> Path:
        return Path(self.cache) if self.cache is not None else default_cache_root()

    @property
    def accel(self) -> "accel.Accelerator":
        """The speed door for this context (built once per distinct context, then reused)."""
        return accel.accelerator(self)

    def single(self, workers: int = 1) -> "RunContext":
        """The same context for work inside one worker process: no progress bars, the local executor, and
        `workers` processes of its own for a run's seeds (more than one when a run has fewer jobs than
        workers: the spare processes train seeds instead of idling)."""
        return replace(self, workers=workers, progress=False, executor="local")
