"""Load result records (docs/records.md) from folders into pandas DataFrames.

Loading never stops the board: a file that is corrupt, truncated, not JSON, not
a record, or of a `schema_version` this code does not know is skipped with a
`RecordWarning` that names the file. Folders are searched recursively for
`*.json`; hidden entries (the `.tmp-*` folders of interrupted atomic writes,
dotfiles) are ignored. Several folders merge into one board; a record found
twice (same `id`, e.g. copied between machines) counts once.

Two flat frames come out:

* `solutions_frame`: one row per solution record (task, solver, width, seed,
  one column per metric, `theory_<name>` per closed-form prediction).
* `explanations_frame`: one row per (record, probe, score), with the value,
  `higher_is_better`, whether it is the probe's main score, and one
  `null_<name>` column per null baseline; a not-applicable probe is one row with
  `status="not_applicable"`, its reason, and no value.

Configs are kept as canonical JSON strings (`*_config` columns) so rows group
and compare exactly; `*_label` columns are short human forms.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable

from sparsebench.errors import UserError
from sparsebench.io import canonical_json

SUPPORTED_SCHEMA_VERSIONS = (1,)
KINDS = ("solution", "explanation")
_REQUIRED = {
    "solution": ("task", "width", "seed", "solver", "metrics"),
    "explanation": ("task", "width", "seed", "model", "mechanism", "probes"),
}


class RecordWarning(UserWarning):
    """A result file was skipped (the message names it and says why)."""


def _skip(path: Path, why: str) -> None:
    warnings.warn(f"skipped result file {path}: {why}", RecordWarning, stacklevel=3)


def _problem(rec: Any) -> str | None:
    """Why `rec` is not a usable record of a known schema, or None if it is."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    version = rec.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        return (f"unknown schema_version {version!r} (this sparsebench reads "
                f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))})")
    kind = rec.get("kind")
    if kind not in KINDS:
        return f"unknown kind {kind!r}"
    missing = [f for f in _REQUIRED[kind] if f not in rec]
    if missing:
        return f"missing field(s) {', '.join(missing)}"
    task = rec["task"]
    if not isinstance(task, dict) or not isinstance(task.get("name"), str):
        return "task must be an object with a name"
    if not isinstance(rec["width"], int) or isinstance(rec["width"], bool):
        return f"width must be an integer (got {rec['width']!r})"
    if kind == "solution":
        if not isinstance(rec["solver"], dict) or not isinstance(rec["solver"].get("name"), str):
            return "solver must be an object with a name"
        if not isinstance(rec["metrics"], dict):
            return "metrics must be an object"
    else:
        for f in ("model", "mechanism"):
            if not isinstance(rec[f], dict) or not isinstance(rec[f].get("name"), str):
                return f"{f} must be an object with a name"
        if not isinstance(rec["probes"], dict):
            return "probes must be an object"
    return None


def _json_files(folder: Path) -> list[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / f for f in sorted(files) if f.endswith(".json") and not f.startswith("."))
    return out


def load_records(paths: Iterable[str | os.PathLike]) -> list[dict[str, Any]]:
    """Every valid record under `paths` (folders searched recursively, or single files).

    A path that does not exist is a UserError (a typo should not give an empty
    board). Bad files are skipped with a RecordWarning. Duplicate ids keep the
    first copy. Each record gains a `_path` key (where it was read from).
    """
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise UserError(f"results path not found: {p} (run `sparsebench evaluate` first, or pass a folder)")
        files = [p] if p.is_file() else _json_files(p)
        for f in files:
            try:
                rec = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as e:
                _skip(f, f"unreadable ({type(e).__name__}: {e})")
                continue
            except json.JSONDecodeError as e:
                _skip(f, f"not valid JSON, corrupt or truncated ({e})")
                continue
            why = _problem(rec)
            if why:
                _skip(f, why)
                continue
            rid = rec.get("id") or canonical_json({k: v for k, v in rec.items() if k != "provenance"})
            if rid in seen:
                continue
            seen.add(rid)
            rec["_path"] = str(f)
            records.append(rec)
    return records


# ---------------------------------------------------------------------------- labels

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
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    return math.nan


def _task_key(rec: dict[str, Any]) -> str:
    t = rec["task"]
    return _cj({"name": t["name"], "version": t.get("version"), "config": t.get("config") or {}})


def _date(rec: dict[str, Any]) -> str:
    prov = rec.get("provenance")
    return str(prov.get("date") or "") if isinstance(prov, dict) else ""


# ---------------------------------------------------------------------------- frames

def solutions_frame(records: list[dict[str, Any]]):
    """One row per solution record (see the module docstring)."""
    import pandas as pd

    rows = []
    for rec in records:
        if rec.get("kind") != "solution":
            continue
        t, s = rec["task"], rec["solver"]
        row: dict[str, Any] = {
            "task": t["name"], "task_version": t.get("version"), "task_config": _cj(t.get("config")),
            "task_key": _task_key(rec),
            "solver_type": s.get("type", "trained" if rec.get("train") else "construction"),
            "solver": s["name"], "solver_config": _cj(s.get("config")), "oracle": bool(s.get("oracle", False)),
            "train_config": _cj(rec.get("train")) if rec.get("train") else "",
            "width": int(rec["width"]), "seed": rec["seed"], "id": rec.get("id", ""),
            "date": _date(rec), "path": rec.get("_path", ""),
        }
        for k, v in (rec.get("metrics") or {}).items():
            row[str(k)] = _num(v)
        for k, v in (rec.get("theory") or {}).items():
            row[f"theory_{k}"] = _num(v)
        rows.append(row)
    return pd.DataFrame(rows)


def explanations_frame(records: list[dict[str, Any]]):
    """One row per (explanation record, probe, score) (see the module docstring)."""
    import pandas as pd

    rows = []
    for rec in records:
        if rec.get("kind") != "explanation":
            continue
        t, m, mech = rec["task"], rec["model"], rec["mechanism"]
        base = {
            "task": t["name"], "task_version": t.get("version"), "task_config": _cj(t.get("config")),
            "task_key": _task_key(rec),
            "model": m["name"], "model_config": _cj(m.get("config")),
            "train_config": _cj(rec.get("train")) if rec.get("train") else "",
            "width": int(rec["width"]), "seed": rec["seed"],
            "mechanism": mech["name"], "mechanism_config": _cj(mech.get("config")),
            "oracle": bool(mech.get("oracle", False)),
            "id": rec.get("id", ""), "date": _date(rec), "path": rec.get("_path", ""),
        }
        for probe, pr in sorted(rec["probes"].items()):
            if not isinstance(pr, dict):
                continue
            status = str(pr.get("status", "ok"))
            scores = pr.get("scores") if isinstance(pr.get("scores"), dict) else {}
            main = pr.get("main")
            if status != "ok" or not scores:
                rows.append({**base, "probe": probe, "status": status if status != "ok" else "no_scores",
                             "reason": str(pr.get("reason", "")), "score": main or "", "is_main": True,
                             "value": math.nan, "higher_is_better": True})
                continue
            if main not in scores:
                main = sorted(scores)[0]
            for sname, sc in sorted(scores.items()):
                if not isinstance(sc, dict):
                    sc = {"value": sc}
                row = {**base, "probe": probe, "status": "ok", "reason": "", "score": sname,
                       "is_main": sname == main, "value": _num(sc.get("value")),
                       "higher_is_better": bool(sc.get("higher_is_better", True))}
                model_nulls = rec.get("nulls")  # the null *models*; a probe may add its own nulls
                for nname, nv in (sc.get("nulls") or {}).items():
                    row[f"null_{nname}"] = _num(nv)
                    # Margins are taken over null models only (when the record names them): a probe's
                    # own null (patch's "resampled") is context, on another scale, not a rival model.
                    if isinstance(model_nulls, dict) and nname not in model_nulls:
                        row[f"ownnull_{nname}"] = True
                rows.append(row)
    return pd.DataFrame(rows)
