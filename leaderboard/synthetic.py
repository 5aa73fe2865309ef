"""Realistic synthetic result records (`sparsebench.records`, the current schema), for tests and demos.

The numbers follow the science, not a measurement: the Bloom construction's
false-positive rate falls exponentially in width (0.6185^(m/k)), JL's loss
polynomially, trained mlp1 in between, with seed noise. Nothing here reads or
trains a model. Every record is built through the record schema and its ids
through `records.record_id`, exactly as `evaluate` builds them.
"""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Any

from sparsebench.io import write_json
from sparsebench.records import (SCHEMA_VERSION, CheckpointInfo, EvalInfo, ExplanationRecord, MechanismInfo,
                                 ModelInfo, ProbeResult, Provenance, Score, SolutionRecord, Solver, TaskInfo,
                                 record_id, to_json)
from sparsebench.tasks.topk import TopKUniform

DIRECTIONS = dict(TopKUniform.metric_directions)
TASK = {"name": "topk-uniform", "version": 1, "family": "topk",
        "config": {"V": 1000, "k": 5, "w_lo": 1.0, "w_hi": 2.0}, "metric_directions": list(DIRECTIONS.items())}
TRAIN = {"steps": 2000, "batch_size": 1024, "lr": 0.01, "warmup": 100, "min_lr_frac": 0.0, "weight_decay": 0.0,
         "beta1": 0.9, "beta2": 0.999, "precision": "fp32"}
EVAL = EvalInfo(n_samples=8192, probe_samples=2048, seed=10000019)
PROVENANCE = Provenance(sparsebench_version="0.1.0", git_commit=None, torch_version="2.13.0+cpu", python="3.11.7",
                        hostname="synthetic", device="cpu", wall_seconds=1.0, date="2026-11-22T03:00:00+00:00",
                        plugins={"sparsebench": "0.1.0"})


def _mlp(w: int) -> ModelInfo:
    return ModelInfo(name="mlp1", width_fields=["d_model", "d_mlp"],
                     config={"d_model": w, "d_mlp": w, "n_layers": 1, "bias_in": True, "bias_out": True,
                             "bias_unembed": True, "embed": "learned", "init_scale": 1.0})


def _metrics(kl: float, fp_rate: float, k: int, V: int, rng: random.Random) -> dict[str, float]:
    fp = fp_rate * (V - k)
    mass = math.exp(-kl) * (1 - min(0.9, fp / (fp + k)))
    return {"kl": kl, "tv": min(1.0, 1 - mass + 0.02), "topk_mass": mass, "exact_set": math.exp(-fp),
            "fp_per_sample": fp, "fp_rate": fp_rate, "fp_any": 1 - math.exp(-fp),
            "weight_leak": 0.3 * rng.random()}


def solution_records(widths=(16, 24, 32, 48, 64), seeds=(0, 1, 2), task: dict[str, Any] | None = None,
                     rng_seed: int = 0) -> list[SolutionRecord]:
    task_info = TaskInfo(**(task or TASK))
    k, V = task_info.config["k"], task_info.config["V"]
    rng = random.Random(rng_seed)
    out = []
    for w in widths:
        h = max(1, round(w / k * math.log(2)))
        bloom_fp = (1 - (1 - h / w) ** k) ** h
        for seed in seeds:
            noise = lambda s=0.05: math.exp(rng.gauss(0, s))  # noqa: E731
            kl_bloom = math.log(1 + bloom_fp * (V - k) / k)
            solvers = [
                (Solver(type="construction", name="bloom", config={"alpha": 20.0}), None,
                 kl_bloom * noise(0.02), bloom_fp * noise(0.02), {"fp_rate": bloom_fp, "kl_limit": kl_bloom}),
                (Solver(type="construction", name="jl", config={"alpha": 0.0}), None,
                 3.0 * (w / 16) ** -0.8 * noise(), 0.02 * (w / 16) ** -1.1 * noise(), {}),
                (Solver(type="trained", name="mlp1", config=_mlp(w).config), TRAIN,
                 1.1 * kl_bloom * noise() + 0.05, 1.2 * bloom_fp * noise(), {}),
            ]
            for solver, train, kl, fpr, theory in solvers:
                rid = record_id({"synthetic": "solution", "solver": solver.model_dump(), "task": task_info.name,
                                 "config": task_info.config, "seed": seed, "width": w})
                out.append(SolutionRecord(
                    schema_version=SCHEMA_VERSION, kind="solution", id=rid, task=task_info, width=w, seed=seed,
                    eval=EVAL, solver=solver, model=_mlp(w) if train else None, train=train,
                    checkpoint=CheckpointInfo(key="k", sha256="s") if train else None,
                    metrics=_metrics(kl, fpr, k, V, rng), theory=theory, provenance=PROVENANCE))
    return out


def _probe(main: str, value: float, margin: float, rival: str, level: str, ranked: bool = True,
           direction: str = "higher", controls: dict[str, float] | None = None,
           nulls: dict[str, float] | None = None) -> ProbeResult:
    score = Score(value=value, ci=(value - 0.01, value + 0.01), direction=direction,  # type: ignore[arg-type]
                  controls=controls or {}, nulls=nulls or {}, margin=margin, margin_ci=(margin - 0.02, margin + 0.02),
                  rival=rival, sufficient=0.8 if ranked else None)  # the built-in probes' bar
    return ProbeResult(status="ok", level=level, ranked=ranked, main=main, chunks=4,  # type: ignore[arg-type]
                       scores={main: score})


def _explanation(mech: str, seed: int, width: int, task_info: TaskInfo, probes: dict[str, ProbeResult],
                 subject: str = "trained", truth: str | None = None) -> ExplanationRecord:
    rid = record_id({"synthetic": "explanation", "mechanism": mech, "task": task_info.name, "subject": subject,
                     "truth": truth, "config": task_info.config, "seed": seed, "width": width})
    trained = subject == "trained"
    return ExplanationRecord(
        schema_version=SCHEMA_VERSION, kind="explanation", id=rid, task=task_info, width=width, seed=seed,
        eval=EVAL, subject=subject, truth=truth, model=_mlp(width), train=TRAIN if trained else None,  # type: ignore[arg-type]
        checkpoint=CheckpointInfo(key=f"ck{seed}", sha256="s") if trained else None,
        mechanism=MechanismInfo(name=mech, config={}), fit={"h_mean": 8.1, "sign": -1} if mech == "bloom" else {},
        nulls={"untrained": "initial weights", "shuffled": "embedding rows permuted"},
        controls={"answer-only": "the target alone", "random-code": "random hashes"}, probes=probes,
        provenance=PROVENANCE)


def explanation_records(width: int = 64, seeds=(0, 1, 2), task: dict[str, Any] | None = None,
                        rng_seed: int = 1) -> list[ExplanationRecord]:
    """Bloom explains the trained model on every ranked probe, JL fails; plus each on its own construction."""
    task_info = TaskInfo(**(task or TASK))
    rng = random.Random(rng_seed)
    out = []
    for seed in seeds:
        j = lambda x, s=0.01: min(1.0, max(-1.0, x + rng.gauss(0, s)))  # noqa: E731
        na = ProbeResult(status="not_applicable", reason="jl predicts no hidden code")
        hv, pv, jp = j(0.98), j(0.90), j(0.74)
        out.append(_explanation("bloom", seed, width, task_info, {
            "hidden-code": _probe("mcc", hv, hv - 0.18, "untrained", "activations",
                                  controls={"random-code": 0.0}, nulls={"untrained": 0.18}),
            "prediction": _probe("kl_explained", pv, pv - 0.78, "answer-only", "behaviour",
                                 controls={"answer-only": 0.78, "random-code": 0.39}, nulls={"untrained": 0.0}),
            "bimodality": _probe("r2", j(0.97), 0.0, "random-code", "weights", ranked=False,
                                 controls={"random-code": 0.97})}))
        out.append(_explanation("jl", seed, width, task_info, {
            "hidden-code": na, "bimodality": na,
            "prediction": _probe("kl_explained", jp, jp - 0.78, "answer-only", "behaviour",
                                 controls={"answer-only": 0.78}, nulls={"untrained": 0.0})}))
        for truth in ("bloom", "jl"):  # the probe validity board's records
            for mech in ("bloom", "jl"):
                right = mech == truth
                out.append(_explanation(mech, seed, width, task_info, {
                    "prediction": _probe("kl_explained", j(1.0 if right else 0.6), j(0.3 if right else -0.1),
                                         "answer-only", "behaviour", controls={"answer-only": 0.7}),
                    "hidden-code": (_probe("mcc", j(0.99), 0.8, "untrained", "activations",
                                           controls={"random-code": 0.0}) if mech == "bloom" and right else na)},
                    subject="construction", truth=truth))
    return out


def write_records(folder: str | Path, records: list[SolutionRecord | ExplanationRecord]) -> list[Path]:
    """Write records as `<folder>/<kind>/<id>.json` (the layout `sparsebench evaluate` uses)."""
    paths = []
    for rec in records:
        p = Path(folder) / rec.kind / f"{rec.id}.json"
        write_json(p, to_json(rec))
        paths.append(p)
    return paths


def demo_records(evil: bool = True) -> list[SolutionRecord | ExplanationRecord]:
    """A full demo board; with `evil`, also a plugin task whose name is an HTML/JS injection."""
    recs: list[Any] = solution_records() + explanation_records()
    if evil:
        bad = {**TASK, "name": "<script>alert(1)</script>", "config": {"V": 200, "k": 3, "w_lo": 1.0, "w_hi": 2.0}}
        recs += solution_records(widths=(8, 16, 24), seeds=(0, 1), task=bad, rng_seed=5)
        recs += explanation_records(width=16, seeds=(0,), task=bad)
    return recs
