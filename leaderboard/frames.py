"""Typed result records (`sparsebench.records`) as flat pandas DataFrames for the boards.

Two frames come out:

* `solutions_frame`: one row per solution record (task, solver, width, seed,
  one column per metric, `theory_<name>` per closed-form prediction), and
  `metric_directions`: each task's declared metrics, in its order, with the
  direction that is better (read from the records, never guessed).
* `explanations_frame`: one row per (record, probe, score), with the value and
  its interval over the probe batch's chunks, the direction, whether it is the
  probe's main score and whether the probe is ranked, the margin over the
  strongest rival (and which), one `control_<name>` column per control
  explanation, one `null_<name>` column per null model and one `own_<name>`
  column per probe-own reference; `subject` says whether the model was trained
  or a construction (then `truth` names its mechanism). A not-applicable probe
  or mechanism is one row with `status="not_applicable"`, its reason, and no value.

Configs are kept as canonical JSON strings (`*_config` columns) so rows group
and compare exactly; labels are made from them by `config_label`.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from sparsebench.io import canonical_json
from sparsebench.records import ExplanationRecord, SolutionRecord


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_fmt_value(x) for x in v) + "]"
    return str(v)


def config_label(name: str, config: dict[str, Any] | None, keys: Iterable[str] | None = None) -> str:
    """`name(a=1, b=2)` showing only `keys` (all keys if None); `name` alone if none to show."""
    config = config or {}
    keys = list(config) if keys is None else [k for k in keys if k in config]
    if not keys:
        return name
    return f"{name}(" + ", ".join(f"{k}={_fmt_value(config[k])}" for k in keys) + ")"


def _cj(obj: Any) -> str:
    return canonical_json(obj if obj is not None else {})


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _task_cols(rec: SolutionRecord | ExplanationRecord) -> dict[str, Any]:
    t = rec.task
    return {"task": t.name, "task_version": t.version, "task_config": _cj(t.config), "family": t.family,
            "task_key": _cj({"name": t.name, "version": t.version, "config": t.config})}


def metric_directions(records: list[tuple[Any, Any]]) -> dict[str, dict[str, str]]:
    """task_key -> {metric: direction}, in the task's declared order (first record of each task wins)."""
    out: dict[str, dict[str, str]] = {}
    for _, rec in records:
        key = _task_cols(rec)["task_key"]
        out.setdefault(key, rec.task.directions)
    return out


def solutions_frame(records: list[tuple[Any, Any]]):
    """One row per applicable solution record (see the module docstring)."""
    import pandas as pd

    rows = []
    for path, rec in records:
        if not isinstance(rec, SolutionRecord) or rec.status != "ok":
            continue
        s = rec.solver
        row: dict[str, Any] = {
            **_task_cols(rec), "solver_type": s.type, "solver": s.name, "solver_config": _cj(s.config),
            "oracle": s.oracle, "train_config": _cj(rec.train) if rec.train else "",
            "width_fields": ",".join(rec.model.width_fields) if rec.model else "",
            "width": rec.width, "seed": rec.seed, "id": rec.id, "date": rec.provenance.date, "path": str(path),
        }
        for k, v in rec.metrics.items():
            row[f"metric_{k}"] = _num(v)
        for k, v in rec.theory.items():
            row[f"theory_{k}"] = _num(v)
        for k, v in rec.behaviour.items():
            row[f"behaviour_{k}"] = _num(v)
        rows.append(row)
    return pd.DataFrame(rows)


def not_applicable(records: list[tuple[Any, Any]]) -> list[dict[str, str]]:
    """Solvers and mechanisms recorded as not applicable to a task: (task, what, reason), one per distinct case."""
    seen: dict[tuple[str, str], str] = {}
    for _, rec in records:
        if rec.status == "ok" or not isinstance(rec, (SolutionRecord, ExplanationRecord)):
            continue
        what = rec.solver.name if isinstance(rec, SolutionRecord) else rec.mechanism.name
        seen.setdefault((rec.task.name, what), rec.reason)
    return [{"task": t, "what": w, "reason": r} for (t, w), r in sorted(seen.items())]


def explanations_frame(records: list[tuple[Any, Any]]):
    """One row per (explanation record, probe, score) (see the module docstring)."""
    import pandas as pd

    rows = []
    for path, rec in records:
        if not isinstance(rec, ExplanationRecord):
            continue
        m = rec.model
        base = {
            **_task_cols(rec), "model": m.name, "model_config": _cj(m.config),
            "train_config": _cj(rec.train) if rec.train else "", "width": rec.width, "seed": rec.seed,
            "subject": rec.subject, "truth": rec.truth or "",
            "mechanism": rec.mechanism.name, "mechanism_config": _cj(rec.mechanism.config),
            "oracle": rec.mechanism.oracle, "id": rec.id, "date": rec.provenance.date, "path": str(path),
        }
        empty = {"value": math.nan, "direction": "higher", "ranked": True, "is_main": True, "margin": math.nan}
        if rec.status != "ok":
            rows.append({**base, **empty, "probe": "", "status": "not_applicable", "reason": rec.reason, "score": ""})
            continue
        for probe, pr in sorted(rec.probes.items()):
            if pr.status != "ok" or not pr.scores:
                rows.append({**base, **empty, "probe": probe, "status": "not_applicable", "reason": pr.reason,
                             "score": pr.main or "", "ranked": pr.ranked})
                continue
            main = pr.main if pr.main in pr.scores else sorted(pr.scores)[0]
            notes = "; ".join(f"{n}: {why}" for n, why in sorted({**pr.null_notes, **pr.control_notes}.items()))
            for sname, sc in sorted(pr.scores.items()):
                lo, hi = sc.ci if sc.ci else (math.nan, math.nan)
                mlo, mhi = sc.margin_ci if sc.margin_ci else (math.nan, math.nan)
                row = {**base, "probe": probe, "status": "ok", "reason": "", "notes": notes, "score": sname,
                       "is_main": sname == main, "ranked": pr.ranked, "value": _num(sc.value), "value_lo": lo,
                       "value_hi": hi, "direction": sc.direction, "margin": _num(sc.margin), "margin_lo": mlo,
                       "margin_hi": mhi, "rival": sc.rival or ""}
                row.update({f"control_{n}": _num(v) for n, v in sc.controls.items()})
                row.update({f"null_{n}": _num(v) for n, v in sc.nulls.items()})
                row.update({f"own_{n}": _num(v) for n, v in sc.own_nulls.items()})
                rows.append(row)
    return pd.DataFrame(rows)
