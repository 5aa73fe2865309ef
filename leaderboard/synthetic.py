"""Realistic synthetic result records (docs/records.md, schema 1), for tests and demos.

The numbers follow the science, not a measurement: the Bloom construction's
false-positive rate falls exponentially in width (0.6185^(m/k)), JL's loss
polynomially, trained mlp1 in between, with seed noise. Nothing here reads or
trains a model.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path
from typing import Any

from sparsebench.io import write_json

TASK = {"name": "topk-uniform", "version": 1, "config": {"V": 1000, "k": 5, "w_lo": 1.0, "w_hi": 2.0}}
TRAIN = {"steps": 2000, "batch_size": 1024, "lr": 0.01, "warmup": 100, "min_lr_frac": 0.0, "weight_decay": 0.0,
         "beta1": 0.9, "beta2": 0.999, "precision": "fp32"}


def _mlp_cfg(w: int) -> dict[str, Any]:
    return {"d_model": w, "d_mlp": w, "n_layers": 1, "bias_in": True, "bias_out": True, "bias_unembed": True,
            "embed": "learned", "init_scale": 1.0}


def _envelope(kind: str, what: dict[str, Any], seed: int, width: int, task: dict[str, Any]) -> dict[str, Any]:
    rid = hashlib.sha256(json.dumps({**what, "task": task, "seed": seed, "width": width, "kind": kind},
                                    sort_keys=True).encode()).hexdigest()[:20]
    return {"schema_version": 1, "kind": kind, "id": rid, "task": task, "width": width, "seed": seed,
            "eval": {"n_samples": 8192, "seed": 10000019},
            "provenance": {"sparsebench_version": "0.1.0", "git_commit": None, "torch_version": "2.13.0+cpu",
                           "device": "cpu", "wall_seconds": 1.0, "date": "2026-11-22T03:00:00+00:00",
                           "plugins": {"sparsebench": "0.1.0"}, "python": "3.11.7", "hostname": "synthetic"}}


def _metrics(kl: float, fp_rate: float, k: int, V: int, rng: random.Random) -> dict[str, float]:
    fp = fp_rate * (V - k)
    mass = math.exp(-kl) * (1 - min(0.9, fp / (fp + k)))
    return {"kl": kl, "tv": min(1.0, 1 - mass + 0.02), "topk_mass": mass, "exact_set": math.exp(-fp),
            "fp_per_sample": fp, "fp_rate": fp_rate, "fp_any": 1 - math.exp(-fp),
            "weight_leak": 0.3 * rng.random()}


def solution_records(widths=(16, 24, 32, 48, 64), seeds=(0, 1, 2), task: dict[str, Any] | None = None,
                     rng_seed: int = 0) -> list[dict[str, Any]]:
    task = task or TASK
    k, V = task["config"]["k"], task["config"]["V"]
    rng = random.Random(rng_seed)
    out = []
    for w in widths:
        h = max(1, round(w / k * math.log(2)))
        bloom_fp = (1 - (1 - h / w) ** k) ** h
        for seed in seeds:
            noise = lambda s=0.05: math.exp(rng.gauss(0, s))  # noqa: E731
            kl_bloom = math.log(1 + bloom_fp * (V - k) / k)
            solvers = [
                ({"type": "construction", "name": "bloom", "config": {"alpha": 20.0}}, None,
                 kl_bloom * noise(0.02), bloom_fp * noise(0.02), {"fp_rate": bloom_fp, "kl_limit": kl_bloom}),
                ({"type": "construction", "name": "jl", "config": {"alpha": "fit"}}, None,
                 3.0 * (w / 16) ** -0.8 * noise(), 0.02 * (w / 16) ** -1.1 * noise(), {}),
                ({"type": "trained", "name": "mlp1", "config": _mlp_cfg(w)}, TRAIN,
                 1.1 * kl_bloom * noise() + 0.05, 1.2 * bloom_fp * noise(), {}),
            ]
            for solver, train, kl, fpr, theory in solvers:
                rec = _envelope("solution", {"solver": solver, "train": train}, seed, w, task)
                rec.update(solver=solver, train=train,
                           checkpoint={"key": "k", "sha256": "s"} if train else None,
                           metrics=_metrics(kl, fpr, k, V, rng), theory=theory)
                out.append(rec)
    return out


def explanation_records(width: int = 64, seeds=(0, 1, 2), task: dict[str, Any] | None = None,
                        rng_seed: int = 1) -> list[dict[str, Any]]:
    task = task or TASK
    rng = random.Random(rng_seed)
    out = []
    for seed in seeds:
        j = lambda x, s=0.01: min(1.0, max(0.0, x + rng.gauss(0, s)))  # noqa: E731
        probes_by_mech = {
            "bloom": {
                "hidden-code": {"status": "ok", "reads": ["blocks.0.mlp.hook_post"], "main": "f1", "scores": {
                    "f1": {"value": j(0.99), "higher_is_better": True,
                           "nulls": {"untrained": j(0.41, 0.03), "shuffled": j(0.52, 0.03)}},
                    "precision": {"value": j(0.99), "higher_is_better": True,
                                  "nulls": {"untrained": j(0.40, 0.03), "shuffled": j(0.5, 0.03)}}}},
                "mask-agreement": {"status": "ok", "reads": [], "main": "jaccard", "scores": {
                    "jaccard": {"value": j(0.998, 0.001), "higher_is_better": True,
                                "nulls": {"untrained": j(0.12, 0.02), "shuffled": j(0.13, 0.02)}}}},
                "patch-loss": {"status": "ok", "reads": ["blocks.0.mlp.hook_post"], "main": "kl_to_model",
                               "scores": {"kl_to_model": {"value": 0.2 + rng.gauss(0, 0.02),
                                                          "higher_is_better": False,
                                                          "nulls": {"untrained": 2.5 + rng.gauss(0, 0.1)}}}},
            },
            "jl": {
                "hidden-code": {"status": "not_applicable", "reason": "jl predicts no hidden code"},
                "mask-agreement": {"status": "not_applicable", "reason": "jl predicts no hidden code"},
                "patch-loss": {"status": "ok", "reads": ["blocks.0.hook_resid_post"], "main": "kl_to_model",
                               "scores": {"kl_to_model": {"value": 1.9 + rng.gauss(0, 0.1),
                                                          "higher_is_better": False,
                                                          "nulls": {"untrained": 2.5 + rng.gauss(0, 0.1)}}}},
            },
        }
        for mech, probes in probes_by_mech.items():
            what = {"model": {"name": "mlp1", "config": _mlp_cfg(width)}, "mechanism": {"name": mech}}
            rec = _envelope("explanation", what, seed, width, task)
            rec.update(model={"name": "mlp1", "config": _mlp_cfg(width)}, train=TRAIN,
                       checkpoint={"key": f"ck{seed}", "sha256": "s"}, mechanism={"name": mech, "config": {}},
                       fit={"h_mean": 8.1, "sign": -1, "alpha": 6.2} if mech == "bloom" else {}, probes=probes)
            out.append(rec)
    return out


def write_records(folder: str | Path, records: list[dict[str, Any]]) -> list[Path]:
    """Write records as `<folder>/<kind>/<id>.json` (the layout `sparsebench evaluate` uses)."""
    paths = []
    for rec in records:
        p = Path(folder) / rec["kind"] / f"{rec['id']}.json"
        write_json(p, rec)
        paths.append(p)
    return paths


def demo_records(evil: bool = True) -> list[dict[str, Any]]:
    """A full demo board; with `evil`, also a plugin task whose name is an HTML/JS injection."""
    recs = solution_records() + explanation_records()
    if evil:
        bad = {"name": "<script>alert(1)</script>", "version": 1, "config": {"V": 200, "k": 3, "w_lo": 1.0,
                                                                              "w_hi": 2.0}}
        recs += solution_records(widths=(8, 16, 24), seeds=(0, 1), task=bad, rng_seed=5)
        recs += explanation_records(width=16, seeds=(0,), task=bad)
    return recs
