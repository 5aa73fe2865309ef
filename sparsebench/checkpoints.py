"""The model cache: safetensors weights plus a JSON of every config, keyed by a hash of them all.

A checkpoint lives in `<cache>/models/<key>/` with `model.safetensors` and
`run.json`. The key hashes the task (name, version, full config), the model
(name, full config), the training config and the seed, so the same settings
load instead of retraining, and any change trains anew. The folder is written
under a temporary name and renamed when complete: a killed run leaves no
half-written checkpoint, only a hidden temporary folder that is ignored.

Nothing is trusted that the cache holds: `load` verifies an entry (run.json parses
and describes this very run, the weights load with the right names and shapes, and
every weight is finite) and a damaged entry is named in one warning, moved aside to
a hidden `.damaged-*` sibling (atomically; readers ignore hidden folders) and
retrained. A model whose training diverged (a non-finite loss or weight) is an error
for its run and is never cached. Weights are safetensors, never pickles, and no code
is ever loaded from the cache.

The cache root is the run context's (`--cache`, else `$SPARSEBENCH_CACHE`, else
`~/.cache/sparsebench`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

import sparsebench
from sparsebench import limits
from sparsebench.api import Task, applies
from sparsebench.build import make_model, make_model_config, make_task, model_class
from sparsebench.config import stable_hash, to_dict
from sparsebench.context import RunContext
from sparsebench.errors import UserError
from sparsebench.io import atomic_path, ensure_writable
from sparsebench.training import TrainConfig, stackable, train

CACHE_FORMAT = 1  # bump when the checkpoint layout or training semantics change


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a trained model, except the seed."""

    task: str  # registered task name
    task_config: dict[str, Any]  # full task config (defaults filled in)
    model: str  # registered model name
    model_config: dict[str, Any]  # full model config
    train: TrainConfig  # training settings

    @classmethod
    def create(cls, task: str, task_config: dict[str, Any] | None, model: str,
               model_config: dict[str, Any] | None, train: TrainConfig) -> "RunSpec":
        """Validate and normalise every config (a bad one raises a ConfigError naming its field); a model
        that cannot read the task's inputs is a UserError."""
        t = make_task(task, task_config)
        why = applies(model_class(model), t)
        if why:
            raise UserError(f"model {model!r} cannot train on task {task!r}: it {why}")
        m = to_dict(make_model_config(model, model_config))
        limits.check_run(t, model_class(model), m, train)  # sizes that cannot fit, before any allocation
        return cls(task, t.config_dict(), model, m, train)

    def make_task(self) -> Task:
        return make_task(self.task, self.task_config)

    @functools.cached_property
    def task_version(self) -> int:  # read once: describe() runs for every key and record id
        return self.make_task().version

    def describe(self, seed: int) -> dict[str, Any]:
        """The JSON form of (spec, seed): what the cache key hashes and what records store."""
        return {
            "task": {"name": self.task, "version": self.task_version, "config": self.task_config},
            "model": {"name": self.model, "config": self.model_config},
            "train": to_dict(self.train),
            "seed": seed,
        }

    def key(self, seed: int) -> str:
        return stable_hash({"format": CACHE_FORMAT, **self.describe(seed)}, length=20)


@dataclass
class Checkpoint:
    model: Any  # the trained model, on the requested device
    seed: int
    key: str  # cache key
    sha256: str  # hash of the weights file
    info: dict[str, Any]  # run.json: configs, seed, training time, final loss, versions
    trained: bool = False  # True if trained by this call, False if loaded from the cache


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class CacheWarning(UserWarning):
    """A damaged cache entry was moved aside and will be retrained (the message names it and why)."""


class Damaged(Exception):
    """A cache entry that cannot be trusted (the message says why)."""


def finite(model: Any) -> bool:
    """Whether every weight (parameter) of `model` is finite. Buffers are not weights: TransformerLens keeps
    an attention mask's -inf in one."""
    return all(bool(torch.isfinite(p).all()) for p in model.parameters() if p.dtype.is_floating_point)


def read_run_json(folder: Path, files: tuple[str, ...], describes: dict[str, Any]) -> dict[str, Any]:
    """The run.json of a cache entry whose `files` are regular files, checked to describe `describes` (its
    fields as written: tuples become lists); `Damaged` says what is wrong."""
    info_path = folder / "run.json"
    for f in (*(folder / name for name in files), info_path):
        if not f.is_file():  # missing, or not a regular file (a FIFO would block the read)
            raise Damaged(f"{f.name} is missing or not a regular file")
    try:
        with info_path.open("rb") as f:
            raw = f.read(1_000_001)  # a run.json is a few KB
        if len(raw) > 1_000_000:
            raise ValueError("larger than 1 MB")
        info = json.loads(raw.decode("utf-8"), parse_constant=lambda c: math.nan)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise Damaged(f"run.json is not readable JSON ({type(e).__name__})") from None
    if not isinstance(info, dict):
        raise Damaged("run.json is not a JSON object")
    for field, value in json.loads(json.dumps(describes)).items():
        if info.get(field) != value:
            raise Damaged(f"run.json describes another run ({field} differs)")
    return info


def _verified(spec: RunSpec, seed: int, folder: Path, device: torch.device) -> tuple[Any, dict[str, Any]]:
    """The model and run.json of a cache entry, checked; `Damaged` says what is wrong."""
    weights = folder / "model.safetensors"
    info = read_run_json(folder, (weights.name,), spec.describe(seed))
    model = make_model(spec.model, spec.model_config, spec.make_task())
    try:
        safetensors.torch.load_file(str(weights), device="cpu")  # readable, whole
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise Damaged(f"model.safetensors cannot be read ({type(e).__name__}: {first_line(e)})") from None
    try:
        safetensors.torch.load_model(model, str(weights), strict=True, device="cpu")
    except RuntimeError as e:  # a weight of the wrong shape, a missing or a foreign one
        raise Damaged(f"model.safetensors does not fit the model ({first_line(e, last=True)})") from None
    if not finite(model):
        raise Damaged("non-finite weights")
    return model.to(device).eval(), info


def first_line(e: BaseException, last: bool = False) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
    return (lines[-1] if last else lines[0])[:200]


def move_aside(folder: Path, why: str) -> None:
    """Rename a damaged entry to a hidden sibling (atomic; every reader ignores hidden folders)."""
    aside = folder.with_name(f".damaged-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(folder, aside)
    except FileNotFoundError:
        return  # another process moved it first
    except OSError as e:
        raise UserError(f"damaged cache entry {folder}: {why}; it cannot be moved aside ({e.strerror or e}): "
                        f"delete it") from None
    warnings.warn(f"damaged cache entry {folder}: {why}; moved to {aside.name}, retraining", CacheWarning,
                  stacklevel=3)


def load(spec: RunSpec, seed: int, ctx: RunContext) -> Checkpoint | None:
    """The cached checkpoint of (spec, seed) on the context's device, or None if there is none.

    A damaged entry (unreadable or foreign run.json, unreadable weights or weights of the wrong
    shapes, non-finite weights) is moved aside with a warning, and None is returned: it is retrained.
    """
    key = spec.key(seed)
    folder = ctx.cache_root / "models" / key
    if not folder.exists():
        return None
    try:
        model, info = _verified(spec, seed, folder, ctx.device)
    except Damaged as e:
        move_aside(folder, str(e))
        return None
    return Checkpoint(model, seed, key, file_sha256(folder / "model.safetensors"), info)


def save(spec: RunSpec, seed: int, model: Any, info: dict[str, Any], ctx: RunContext) -> Checkpoint:
    key = spec.key(seed)
    folder = ctx.cache_root / "models" / key
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        safetensors.torch.save_model(model, str(tmp / "model.safetensors"))
        (tmp / "run.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return Checkpoint(model, seed, key, file_sha256(folder / "model.safetensors"), info, trained=True)


def train_or_load(spec: RunSpec, seeds: list[int], ctx: RunContext) -> list[Checkpoint]:
    """One checkpoint per seed: cached ones load, the missing ones train and are saved.

    Stackable models train all missing seeds together (the run context may split them over
    worker processes); others train one seed at a time and save each as soon as it is done, so
    an interrupted run keeps every finished seed. run.json records which backend computed the
    steps, how many processes and threads (like the thread count, the backend is not part of
    the cache key: docs/design.md).
    """
    found = {s: load(spec, s, ctx) for s in seeds}
    missing = [s for s in seeds if found[s] is None]
    groups = ([missing] if missing else []) if stackable(spec.model) else [[s] for s in missing]
    if missing:  # before any training: a cache that cannot be written is one line now, not after minutes
        ensure_writable(ctx.cache_root / "models", "the model cache", hint="--cache or SPARSEBENCH_CACHE")
    task = spec.make_task()
    for group in groups:
        result = train(task, spec.model, spec.model_config, spec.train, group, ctx)
        for seed, model, loss in zip(group, result.models, result.final_loss):
            if not (math.isfinite(loss) and finite(model)):
                raise UserError(f"training diverged: seed {seed} of {spec.task} on {spec.model} ended with "
                                f"{'a non-finite loss' if not math.isfinite(loss) else 'non-finite weights'} "
                                f"(train.lr={spec.train.lr:g}); lower train.lr")
        # Seeds are split into `processes` contiguous parts whose sizes differ by at most one.
        size, extra = divmod(len(group), result.processes)
        for i, (seed, model, loss) in enumerate(zip(group, result.models, result.final_loss)):
            together = size + 1 if i < extra * (size + 1) else size  # seeds in this one's batched module
            info = {**spec.describe(seed), "final_train_loss": loss, "train_seconds": result.seconds,
                    "trained_together": together, "processes": result.processes,
                    "threads": result.threads, "backend": result.backend, "device": str(ctx.device),
                    "sparsebench_version": sparsebench.__version__, "torch_version": torch.__version__}
            found[seed] = save(spec, seed, model, info, ctx)
    return [found[s] for s in seeds]  # type: ignore[misc]
