"""Dense training with snapshots, cached: θ0, every snapshot step, and the final model, per seed.

The seeds of one run train together as one stacked model through the plain trainer's own
loop (`training.optimise`, with a callback that copies the weights at the snapshot steps),
so the final weights are the ones `training.train` gives for the same spec and seed: the
final model also goes into the ordinary model cache (`checkpoints.save`), where
`sparsebench evaluate` finds it. The snapshots live in
`<cache>/tickets/<spec key>-<snapshot plan hash>/` (one safetensors file, keys
`full/<t>/<parameter>` and `w1/<t>/W1`, and a run.json, written atomically like every
checkpoint). Like the model cache, nothing there is trusted: an entry whose run.json does
not describe this run, or whose weights are unreadable, of the wrong names or shapes, or
not finite, is moved aside with a warning and retrained (`checkpoints.move_aside`). A
dense run that diverges is an error and is never cached.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

import sparsebench
from sparsebench.build import make_model
from sparsebench.checkpoints import Damaged, RunSpec, first_line, load as load_checkpoint, move_aside, read_run_json
from sparsebench.checkpoints import save as save_checkpoint
from sparsebench.config import stable_hash
from sparsebench.context import RunContext
from sparsebench.errors import UserError
from sparsebench.io import atomic_path, ensure_writable
from sparsebench.models.mlp2 import MASK_KEY, W1_KEY
from sparsebench.training import init_models, optimise

SNAPSHOT_FORMAT = 1  # bump when the snapshot layout or the dense loop changes
SNAPSHOTS = "snapshots.safetensors"  # the file of an entry (beside its run.json)


@dataclass
class DenseRun:
    """One seed's dense run: full state dicts at `full` steps, W1 alone at `w1` steps."""

    seed: int
    full: dict[int, dict[str, Tensor]]  # step -> state dict (0 = θ0, the last = the final model)
    w1: dict[int, Tensor]  # step -> W1 [H, d] (for step-history detectors such as Early-Bird)
    final_loss: float  # mean training loss over the last 5% of steps


def snapshot_key(spec: RunSpec, seed: int, full: list[int], w1: list[int]) -> str:
    return f"{spec.key(seed)}-{stable_hash({'format': SNAPSHOT_FORMAT, 'full': full, 'w1': w1}, length=10)}"


def _describe(spec: RunSpec, seed: int, full: list[int], w1s: list[int]) -> dict[str, Any]:
    return {**spec.describe(seed), "full_steps": full, "w1_steps": w1s}


def _load(spec: RunSpec, seed: int, full: list[int], w1s: list[int], folder: Path) -> DenseRun | None:
    """The cached dense run, or None if there is none; a damaged entry is moved aside (with a warning)."""
    if not folder.exists():
        return None
    try:
        return _verified(spec, seed, full, w1s, folder)
    except Damaged as e:
        move_aside(folder, str(e))
        return None


def _verified(spec: RunSpec, seed: int, full: list[int], w1s: list[int], folder: Path) -> DenseRun:
    info = read_run_json(folder, (SNAPSHOTS,), _describe(spec, seed, full, w1s))
    loss = info.get("final_train_loss")
    if not isinstance(loss, (int, float)) or not math.isfinite(loss):
        raise Damaged("run.json has no finite final_train_loss")
    try:
        flat = safetensors.torch.load_file(str(folder / SNAPSHOTS))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        raise Damaged(f"{SNAPSHOTS} cannot be read ({type(e).__name__}: {first_line(e)})") from None
    shapes = {k: v.shape for k, v in make_model(spec.model, spec.model_config, spec.make_task()).state_dict().items()}
    want = {f"full/{t}/{n}": shape for t in full for n, shape in shapes.items()}
    want |= {f"w1/{t}/W1": shapes[W1_KEY] for t in w1s}
    if set(flat) != set(want) or any(flat[k].shape != want[k] for k in want):
        raise Damaged(f"{SNAPSHOTS} does not hold the snapshots of this run (names or shapes differ)")
    if not all(bool(torch.isfinite(t).all()) for t in flat.values()):
        raise Damaged("non-finite weights")
    runs: dict[int, dict[str, Tensor]] = {t: {n: flat[f"full/{t}/{n}"] for n in shapes} for t in full}
    return DenseRun(seed, runs, {t: flat[f"w1/{t}/W1"] for t in w1s}, float(loss))


def dense_runs(spec: RunSpec, seeds: list[int], full_steps: list[int], w1_steps: list[int],
               ctx: RunContext) -> dict[int, DenseRun]:
    """Each seed's dense run with snapshots at `full_steps` (0 and spec.train.steps always included) and W1 at
    `w1_steps`; cached runs load, missing seeds train together."""
    T = spec.train.steps
    full = sorted({0, T, *full_steps})
    w1s = sorted(set(w1_steps))
    folders = {s: ctx.cache_root / "tickets" / snapshot_key(spec, s, full, w1s) for s in seeds}
    runs = {s: _load(spec, s, full, w1s, folders[s]) for s in seeds}
    missing = [s for s in seeds if runs[s] is None]
    if missing:  # before any training: a cache that cannot be written is one line now, not after minutes
        for sub in ("tickets", "models"):
            ensure_writable(ctx.cache_root / sub, "the model cache", hint="--cache or SPARSEBENCH_CACHE")
        runs.update(_train(spec, missing, full, w1s, folders, ctx))
    return runs  # type: ignore[return-value]


def _train(spec: RunSpec, seeds: list[int], full: list[int], w1s: list[int], folders: dict[int, Any],
           ctx: RunContext) -> dict[int, DenseRun]:
    task = spec.make_task()
    models = init_models(task, spec.model, spec.model_config, seeds)
    stacked = type(models[0]).stacked(models).to(ctx.device)
    names = [n for n, _ in models[0].named_parameters()]
    snaps_full: dict[int, dict[str, Tensor]] = {}
    snaps_w1: dict[int, Tensor] = {}
    full_set, w1_set = set(full), set(w1s)

    def snapshot(t: int) -> None:
        if t in full_set:
            snaps_full[t] = {n: stacked.p(n).detach().cpu().clone() for n in names}
        if t in w1_set:
            snaps_w1[t] = stacked.p(W1_KEY).detach().cpu().clone()

    snapshot(0)
    losses, backend = optimise(stacked, task, spec.train, seeds, ctx, on_step=snapshot)
    for i, seed in enumerate(seeds):  # a diverged run must never be cached (nor retrained from)
        weights = [s[n][i] for s in snaps_full.values() for n in names] + [w[i] for w in snaps_w1.values()]
        if not (math.isfinite(losses[i]) and all(bool(torch.isfinite(w).all()) for w in weights)):
            raise UserError(f"training diverged: seed {seed} of {spec.task} on {spec.model} ended with "
                            f"{'a non-finite loss' if not math.isfinite(losses[i]) else 'non-finite weights'} "
                            f"(train.lr={spec.train.lr:g}); lower train.lr")
    out = {}
    for i, seed in enumerate(seeds):
        mask = {MASK_KEY: models[0].mask.detach().cpu()}
        run = DenseRun(seed, {t: {**{n: v[i] for n, v in s.items()}, **mask} for t, s in snaps_full.items()},
                       {t: w[i] for t, w in snaps_w1.items()}, losses[i])
        flat = {f"full/{t}/{n}": v.clone() for t, s in run.full.items() for n, v in s.items()}  # no shared storage
        flat |= {f"w1/{t}/W1": w.clone() for t, w in run.w1.items()}
        info = {**_describe(spec, seed, full, w1s), "final_train_loss": losses[i],
                "backend": backend, "threads": torch.get_num_threads(),
                "sparsebench_version": sparsebench.__version__, "torch_version": torch.__version__}
        with atomic_path(folders[seed]) as tmp:
            tmp.mkdir()
            safetensors.torch.save_file(flat, str(tmp / SNAPSHOTS))
            (tmp / "run.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if load_checkpoint(spec, seed, ctx) is None:  # the final model, where `evaluate` looks for it
            model = models[i]
            model.load_state_dict(run.full[spec.train.steps])
            save_checkpoint(spec, seed, model.eval(), {**spec.describe(seed), "final_train_loss": losses[i],
                                                       "trained_together": len(seeds), "processes": 1,
                                                       "threads": torch.get_num_threads(), "backend": backend,
                                                       "device": str(ctx.device),
                                                       "sparsebench_version": sparsebench.__version__,
                                                       "torch_version": torch.__version__}, ctx)
        out[seed] = run
    return out
