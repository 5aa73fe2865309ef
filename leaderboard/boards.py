"""The solutions board as a pure function of the record frames (see docs/leaderboard.md), and shared labels.

Solutions board
    Per task (name + version + config): every solver (a trained model config
    with its training config, or a mechanism's construction) at every width,
    each metric as mean, spread (sample standard deviation over seeds, ddof=1;
    undefined for one seed) and n (seeds). At each width the best solver per
    metric is flagged. Each metric's direction ("higher", "lower", "zero":
    nearest 0) and the metrics' order are the task's own, read from its records
    (`frames.metric_directions`).

    A trained solver's width fields (recorded with the model: e.g. `d_model`
    and `d_mlp` follow the width) are left out of its series key and shown as
    `w`, so one solver forms one series across widths; every other config field
    keeps its value.

The explanations board, its ranking and the probe validity board are in
`explanations.py` and `validity.py`.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np
import pandas as pd

from sparsebench.leaderboard.frames import config_label
from sparsebench.records import RecordWarning

ARROWS = {"lower": "↓", "higher": "↑", "zero": "→0"}


def metric_columns(df: pd.DataFrame, directions: dict[str, dict[str, str]]) -> list[str]:
    """The metrics of a solutions frame: every task's declared metrics in their order, then any other."""
    present = {c[len("metric_"):] for c in df.columns if c.startswith("metric_")}
    order: list[str] = []
    for dirs in directions.values():
        order += [m for m in dirs if m in present and m not in order]
    return order + sorted(present - set(order))


def goodness(values: pd.Series, direction: str) -> pd.Series:
    """Larger is better: the values turned by their direction ("higher", "lower", "zero")."""
    return values if direction == "higher" else (-values.abs() if direction == "zero" else -values)


def _spread(x: pd.Series) -> float:
    x = x.dropna()
    return float(x.std(ddof=1)) if len(x) > 1 else math.nan


def _differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for c in configs:
        keys += [k for k in c if k not in keys]
    return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1]


def task_label(name: str, config_json: str, version: Any = None) -> str:
    label = config_label(name, json.loads(config_json) if config_json else {})
    return label + (f" v{version}" if version not in (None, 1) else "")


# ---------------------------------------------------------------------------- solutions

def add_series(sol: pd.DataFrame) -> pd.DataFrame:
    """Add `series` (a key) and `label` (a short, unique-per-task name) to a solutions frame."""
    df = sol.copy()
    if df.empty:
        return df.assign(series=pd.Series(dtype=str), label=pd.Series(dtype=str))

    def norm(config: str, width_fields: str) -> str:  # width fields follow the width: shown as "w"
        c = json.loads(config)
        for f in filter(None, width_fields.split(",")):
            if f in c:
                c[f] = "w"
        return json.dumps(c, sort_keys=True)

    df["norm_config"] = [norm(c, w) for c, w in zip(df["solver_config"], df["width_fields"])]
    df["series"] = df["solver_type"] + "|" + df["solver"] + "|" + df["norm_config"] + "|" + df["train_config"]
    df["label"] = ""
    for _, idx in df.groupby(["task_key", "solver_type", "solver"], sort=False).groups.items():
        sub = df.loc[idx].drop_duplicates("series")
        labels = _labels(sub["solver"].iloc[0], list(sub["norm_config"]), list(sub["train_config"]))
        for series, label in zip(sub["series"], labels):
            df.loc[df["series"] == series, "label"] = label
    # The same name as a trained model and as a construction: say which is which.
    for _, idx in df.groupby("task_key", sort=False).groups.items():
        sub = df.loc[idx]
        clash = sub.groupby("label")["solver_type"].nunique()
        for lab in clash[clash > 1].index:
            m = df.index.isin(idx) & (df["label"] == lab)
            df.loc[m, "label"] = df.loc[m, "label"] + " [" + df.loc[m, "solver_type"] + "]"
    return df.drop(columns="norm_config")


def _dedupe_seeds(df: pd.DataFrame, keys: list[str], what: str) -> pd.DataFrame:
    """One record per (keys, seed): the newest (by provenance date) wins, with a warning."""
    dup = df.duplicated(keys + ["seed"], keep=False)
    if dup.any():
        n = int(df[dup].groupby(keys + ["seed"]).ngroups)
        warnings.warn(f"{n} {what} seed(s) had more than one record (different evaluation settings?); "
                      f"the newest record of each is used", RecordWarning, stacklevel=3)
        df = df.sort_values("date", kind="stable").drop_duplicates(keys + ["seed"], keep="last")
    return df


def solutions_board(sol: pd.DataFrame, directions: dict[str, dict[str, str]]) -> pd.DataFrame:
    """Aggregate over seeds: one row per (task, series, width).

    Columns: task_key, task, task_label, series, label, solver_type, solver, width,
    n_seeds, and per metric `<m>_mean`, `<m>_std`, `<m>_n`, `<m>_best` (bool: best mean
    at this width for this task, in the task's direction for it; ties all flagged; a
    metric the task did not declare is never "best"); `theory_<t>_mean` where present.
    """
    if sol.empty:
        return pd.DataFrame()
    df = add_series(sol)
    keys = ["task_key", "series", "width"]
    df = _dedupe_seeds(df, keys, "solution")
    metrics = metric_columns(sol, directions)
    theory = sorted(c for c in df.columns if c.startswith("theory_"))
    rows = []
    for (tk, series, width), g in df.groupby(keys, sort=True):
        first = g.iloc[0]
        row = {"task_key": tk, "task": first["task"], "task_label": task_label(first["task"], first["task_config"],
                                                                              first["task_version"]),
               "series": series, "label": first["label"] + (" (oracle)" if first.get("oracle", False) else ""),
               "oracle": bool(first.get("oracle", False)), "solver_type": first["solver_type"],
               "solver": first["solver"], "solver_config": first["solver_config"],
               "train_config": first["train_config"], "width": int(width), "n_seeds": int(g["seed"].nunique())}
        for m in metrics:
            x = g[f"metric_{m}"].dropna() if f"metric_{m}" in g else pd.Series(dtype=float)
            row[f"{m}_mean"] = float(x.mean()) if len(x) else math.nan
            row[f"{m}_std"] = _spread(x)
            row[f"{m}_n"] = int(len(x))
        for t in theory:
            x = g[t].dropna()
            row[f"{t}_mean"] = float(x.mean()) if len(x) else math.nan
        rows.append(row)
    board = pd.DataFrame(rows)
    for m in metrics:
        # An oracle (given the answer) is shown but never "best": it is an upper bound, not a solver.
        dirs = board["task_key"].map(lambda tk: directions.get(tk, {}).get(m))
        good = pd.Series([goodness(pd.Series([v]), d).iloc[0] if d else math.nan
                          for v, d in zip(board[f"{m}_mean"], dirs)], index=board.index).where(~board["oracle"])
        best = good.groupby([board["task_key"], board["width"]]).transform("max")
        board[f"{m}_best"] = good.notna() & np.isclose(good, best, rtol=1e-12, atol=0.0)
    return board.sort_values(["task_label", "width", "kl_mean" if "kl" in metrics else "label", "label"],
                             kind="stable").reset_index(drop=True)


def best_at_width(board: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Who is best at each width: one row per (task, width, metric) with the winner(s) and value."""
    if board.empty:
        return pd.DataFrame(columns=["task_key", "task_label", "width", "metric", "best", "mean", "std"])
    metrics = metrics or [c[: -len("_best")] for c in board.columns if c.endswith("_best")]
    rows = []
    for (tk, width), g in board.groupby(["task_key", "width"], sort=True):
        for m in metrics:
            win = g[g[f"{m}_best"]]
            if win.empty:
                continue
            rows.append({"task_key": tk, "task_label": g["task_label"].iloc[0], "width": int(width), "metric": m,
                         "best": " = ".join(sorted(win["label"])), "mean": float(win[f"{m}_mean"].iloc[0]),
                         "std": float(win[f"{m}_std"].iloc[0])})
    return pd.DataFrame(rows)


def _labels(name: str, configs: list[str], trains: list[str]) -> list[str]:
    """One label per (config JSON, train JSON) series: `name` plus only the keys that differ among them."""
    cfgs = [json.loads(c) for c in configs]
    trs = [json.loads(t) if t else {} for t in trains]
    ck, tk = _differing_keys(cfgs), _differing_keys(trs)
    return [config_label(name, {**{k: c[k] for k in ck if k in c}, **{f"train.{k}": t[k] for k in tk if k in t}})
            for c, t in zip(cfgs, trs)]


GROUP_KEYS = ["task_key", "model", "model_config", "train_config"]  # one trained-model configuration


def label_groups(board: pd.DataFrame) -> None:
    """`group_label` (model + differing config) and `mech_label` (mechanism + differing config)."""
    board["group_label"] = ""
    for (tk, model), g in board.groupby(["task_key", "model"], sort=False):
        pairs = g[["model_config", "train_config"]].drop_duplicates()
        labels = _labels(model, list(pairs["model_config"]), list(pairs["train_config"]))
        for (_, p), lab in zip(pairs.iterrows(), labels):
            m = ((board["task_key"] == tk) & (board["model"] == model) & (board["model_config"] == p["model_config"])
                 & (board["train_config"] == p["train_config"]))
            board.loc[m, "group_label"] = lab
    board["mech_label"] = board["mechanism"]
    for (_, mech), g in board.groupby(GROUP_KEYS[:1] + ["mechanism"], sort=False):
        cfgs_json = list(dict.fromkeys(g["mechanism_config"]))
        cfgs = [json.loads(c) for c in cfgs_json]
        ck = _differing_keys(cfgs)
        for cj, c in zip(cfgs_json, cfgs):
            board.loc[g.index[g["mechanism_config"] == cj], "mech_label"] = config_label(mech, {k: c[k] for k in ck
                                                                                           if k in c})
