"""Typed result records (`sparsebench.records`) as flat pandas DataFrames for the boards.

Three frames come out:

* `solutions_frame`: one row per solution record (task, solver, width, seed,
  one column per metric, `theory_<name>` per closed-form prediction), and
  `metric_directions`: each task's declared metrics, in its order, with the
  direction that is better (read from the records, never guessed).
* `explanations_frame`: one row per (record, probe, score), with the value and
  its interval over the probe batch's chunks, the direction, whether it is the
  probe's main score and whether the probe is ranked, the margin over the
  strongest rival (and which), the probe's bar for the score (`sufficient`;
  NaN: none), one `control_<name>` column per control explanation, one
  `null_<name>` column per null model and one `own_<name>` column per
  probe-own reference; `subject` says whether the model was trained
  or a construction (then `truth` names its mechanism). A not-applicable probe
  or mechanism is one row with `status="not_applicable"`, its reason, and no value.
* `scores_frame`: every record as tidy rows, one per number (metrics, theory, behaviour, probe scores), with
  configs flattened into one column per field: the table `sparsebench export` writes (docs/export.md).

The boards' frames keep configs as canonical JSON strings (`*_config` columns) so rows group
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
                       "margin_hi": mhi, "rival": sc.rival or "", "sufficient": _num(sc.sufficient)}
                row.update({f"control_{n}": _num(v) for n, v in sc.controls.items()})
                row.update({f"null_{n}": _num(v) for n, v in sc.nulls.items()})
                row.update({f"own_{n}": _num(v) for n, v in sc.own_nulls.items()})
                rows.append(row)
    return pd.DataFrame(rows)



# `scores_frame`'s fixed columns, in order (docs/export.md): who was scored, then one number, then where from.
# After them: `control_<name>`, `null_<name>`, `own_<name>` (that score for each rival), then `<section>.<field>` per
# config field (sections task, model, train, mechanism, built, eval).
RECORD_COLUMNS = ("id", "kind", "task", "task_version", "family", "subject", "truth", "model", "mechanism", "oracle",
                  "width", "seed")
NUMBER_COLUMNS = ("block", "probe", "score", "value", "value_lo", "value_hi", "direction", "is_main", "ranked",
                  "margin", "margin_lo", "margin_hi", "rival", "status", "reason", "notes")
PROVENANCE_COLUMNS = ("sparsebench_version", "git_commit", "device", "date")
SCORE_COLUMNS = RECORD_COLUMNS + NUMBER_COLUMNS + PROVENANCE_COLUMNS
SOLUTION_BLOCKS = {"metric_": "metrics", "theory_": "theory", "behaviour_": "behaviour"}  # by solutions_frame prefix


def _record_columns(rec: SolutionRecord | ExplanationRecord) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a record's rows of `scores_frame` share: who was scored and provenance; its configs as
    `<section>.<field>`."""
    if isinstance(rec, SolutionRecord):  # a trained model, or a construction (its mechanism is the truth)
        trained = rec.solver.type == "trained"
        who = {"subject": rec.solver.type, "truth": "" if trained else rec.solver.name, "mechanism": "",
               "model": rec.model.name if rec.model else (rec.solver.name if trained else ""),
               "oracle": rec.solver.oracle}
        configs = {"model": rec.model.config if rec.model else (rec.solver.config if trained else {}),
                   "mechanism": {} if trained else rec.solver.config, "built": rec.solver.built}
    else:
        who = {"subject": rec.subject, "truth": rec.truth or "", "model": rec.model.name,
               "mechanism": rec.mechanism.name, "oracle": rec.mechanism.oracle}
        configs = {"model": rec.model.config, "mechanism": rec.mechanism.config}
    configs = {"task": rec.task.config, **configs, "train": rec.train or {}, "eval": rec.eval.model_dump()}
    p = rec.provenance
    return {"id": rec.id, "kind": rec.kind, "task": rec.task.name, "task_version": rec.task.version,
            "family": rec.task.family, **who, "width": rec.width, "seed": rec.seed,
            "sparsebench_version": p.sparsebench_version, "git_commit": p.git_commit or "", "device": p.device,
            "date": p.date}, {f"{section}.{k}": v for section, config in configs.items() for k, v in config.items()}


def _config_column(values: list[Any]) -> Any:
    """A config column Parquet can store, typed: integers (nullable), floats, booleans or text when its values
    share that type (ints and floats together are floats), otherwise each value as canonical JSON text (lists,
    tables, a field whose type differs between tasks). A record without the field has a null."""
    import pandas as pd

    kinds = {type(v) for v in values if v is not None}
    dtype = {frozenset({int}): "Int64", frozenset({float}): "float64", frozenset({int, float}): "float64",
             frozenset({bool}): "boolean", frozenset({str}): "string", frozenset(): "string"}.get(frozenset(kinds))
    if dtype is None:
        return pd.array([None if v is None else canonical_json(v) for v in values], dtype="string")
    return pd.array(values, dtype=dtype)


def scores_frame(records: list[tuple[Any, Any]]):
    """Every record as tidy rows, one per number: the table `sparsebench export` writes (docs/export.md).

    Solution records give one row per metric, closed-form prediction and behaviour number (`block`: "metrics",
    "theory", "behaviour"), read from `solutions_frame`; explanation records one row per probe score ("probes"),
    with its interval, margin and every rival's value, as `explanations_frame` has them. A record or probe that does
    not apply is one row with `status` "not_applicable" and no value. The record's columns repeat on each of its
    rows. Unlike the boards, nothing is aggregated over seeds.
    """
    import pandas as pd

    by_id = {rec.id: rec for _, rec in records}
    rows: list[dict[str, Any]] = []
    sol = solutions_frame(records)
    for _, r in sol.iterrows():
        directions = by_id[r["id"]].task.directions
        for col in sol.columns:
            prefix = next((p for p in SOLUTION_BLOCKS if col.startswith(p)), None)
            if prefix is None or pd.isna(r[col]):
                continue
            block, name = SOLUTION_BLOCKS[prefix], col[len(prefix):]
            rows.append({"id": r["id"], "block": block, "probe": "", "score": name, "value": r[col],
                         "direction": directions.get(name, "") if block != "behaviour" else "",
                         "is_main": False, "ranked": block == "metrics", "status": "ok", "reason": ""})
    rows += [{"id": rec.id, "block": "metrics", "probe": "", "score": "", "value": math.nan, "direction": "",
              "status": rec.status, "reason": rec.reason}
             for rec in by_id.values() if isinstance(rec, SolutionRecord) and rec.status != "ok"]
    exp = explanations_frame(records)
    if not exp.empty:
        keep = [c for c in exp.columns
                if c == "id" or c in NUMBER_COLUMNS or c.startswith(("control_", "null_", "own_"))]
        rows += [{**r, "block": "probes", **({} if r["status"] == "ok" else {"direction": ""})}
                 for r in exp[keep].to_dict("records")]
    if not rows:
        return pd.DataFrame(columns=list(SCORE_COLUMNS))
    shared = {i: _record_columns(rec) for i, rec in by_id.items()}
    out = pd.DataFrame([{**shared[r["id"]][0], **r} for r in rows])
    rivals = sorted(c for c in out.columns if c.startswith(("control_", "null_", "own_")))
    out = out.reindex(columns=[*SCORE_COLUMNS, *rivals])
    configs = sorted({k for _, config in shared.values() for k in config})
    out = out.assign(**{k: _config_column([shared[i][1].get(k) for i in out["id"]]) for k in configs})
    text = [c for c in SCORE_COLUMNS if out[c].dtype == object or str(out[c].dtype) in ("str", "string")]
    out[text] = out[text].fillna("")  # text that does not apply is "", as in every frame; a missing number is NaN
    return out
