"""Dense training with snapshots, cached: θ0, every snapshot step, and the final model, per seed.

The seeds of one run train together as one stacked model through the plain trainer's own
loop (`training.optimise`, with a callback that copies the weights at the snapshot steps),
so the final weights are the ones `training.train` gives for the same spec and seed: the
final model also goes into the ordinary model cache (`checkpoints.save`), where
`sparsebench evaluate` finds it. The snapshots live in
`<cache>/tickets/<spec key>-<snapshot plan hash>/` (one safetensors file, keys
`step<t>/<parameter>`, written atomically like every checkpoint).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import safetensors.torch
import torch
from torch import Tensor

import sparsebench
from sparsebench.checkpoints import RunSpec, load as load_checkpoint, save as save_checkpoint
from sparsebench.config import stable_hash
from sparsebench.context import RunContext
from sparsebench.io import atomic_path
from sparsebench.training import init_models, optimise

SNAPSHOT_FORMAT = 1  # bump when the snapshot layout or the dense loop changes


@dataclass
class DenseRun:
    """One seed's dense run: full state dicts at `full` steps, W1 alone at `w1` steps."""

    seed: int
    full: dict[int, dict[str, Tensor]]  # step -> state dict (0 = θ0, the last = the final model)
    w1: dict[int, Tensor]  # step -> W1 [H, d] (for step-history detectors such as Early-Bird)
    final_loss: float  # mean training loss over the last 5% of steps


def snapshot_key(spec: RunSpec, seed: int, full: list[int], w1: list[int]) -> str:
    return f"{spec.key(seed)}-{stable_hash({'format': SNAPSHOT_FORMAT, 'full': full, 'w1': w1}, length=10)}"


def _load(folder: Any, seed: int) -> DenseRun | None:
    weights, info = folder / "snapshots.safetensors", folder / "run.json"
    if not (weights.exists() and info.exists()):
        return None
    flat = safetensors.torch.load_file(str(weights))
    full: dict[int, dict[str, Tensor]] = {}
    w1: dict[int, Tensor] = {}
    for key, t in flat.items():
        kind, step, name = key.split("/", 2)
        if kind == "full":
            full.setdefault(int(step), {})[name] = t
        else:
            w1[int(step)] = t
    return DenseRun(seed, dict(sorted(full.items())), dict(sorted(w1.items())),
                    json.loads(info.read_text())["final_train_loss"])


def dense_runs(spec: RunSpec, seeds: list[int], full_steps: list[int], w1_steps: list[int],
               ctx: RunContext) -> dict[int, DenseRun]:
    """Each seed's dense run with snapshots at `full_steps` (0 and spec.train.steps always included) and W1 at
    `w1_steps`; cached runs load, missing seeds train together."""
    T = spec.train.steps
    full = sorted({0, T, *full_steps})
    w1s = sorted(set(w1_steps))
    folders = {s: ctx.cache_root / "tickets" / snapshot_key(spec, s, full, w1s) for s in seeds}
    runs = {s: _load(folders[s], s) for s in seeds}
    missing = [s for s in seeds if runs[s] is None]
    if missing:
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
            snaps_w1[t] = stacked.p("blocks.0.mlp.W1").detach().cpu().clone()

    snapshot(0)
    losses, backend = optimise(stacked, task, spec.train, seeds, ctx, on_step=snapshot)
    out = {}
    for i, seed in enumerate(seeds):
        mask = {"blocks.0.mlp.mask": models[0].mask.detach().cpu()}
        run = DenseRun(seed, {t: {**{n: v[i] for n, v in s.items()}, **mask} for t, s in snaps_full.items()},
                       {t: w[i] for t, w in snaps_w1.items()}, losses[i])
        flat = {f"full/{t}/{n}": v.clone() for t, s in run.full.items() for n, v in s.items()}  # no shared storage
        flat |= {f"w1/{t}/W1": w.clone() for t, w in run.w1.items()}
        info = {**spec.describe(seed), "full_steps": full, "w1_steps": w1s, "final_train_loss": losses[i],
                "backend": backend, "threads": torch.get_num_threads(),
                "sparsebench_version": sparsebench.__version__, "torch_version": torch.__version__}
        with atomic_path(folders[seed]) as tmp:
            tmp.mkdir()
            safetensors.torch.save_file(flat, str(tmp / "snapshots.safetensors"))
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
