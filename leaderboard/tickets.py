"""The tickets board: ticket records (`sparsebench tickets`) to rankings, paired comparisons, claims, figures.

Groups: (task, model, width, sparsity, detection step, init mode). In each group every
detector's metrics are shown as the mean over seeds with a t-based 95% confidence
interval (`stats.mean_ci`; n seeds beside). Ranking rule (docs/leaderboard.md):

* detectors are ranked by mean sparse balanced accuracy (`bal_acc`, higher is better);
  references (the dense-final magnitude oracle, OBS, dense: kind "reference") are shown
  with rank "ref" and never ranked; controls (random) are ranked, as the bar to clear;
  the dense reference (recorded at sparsity 0) is shown in every sparse group of the same
  task, model, width, step and init mode;
* "beats" lists the detectors it beats on balanced accuracy, paired over seeds at the same
  group: the 95% t interval of the per-seed difference lies above 0 (`tickets.claims.compare`);
  a difference whose interval contains 0 is a tie and is not listed;
* the paired-comparisons table shows, for balanced accuracy and exact codes, each detector
  against the top-ranked one and against `random` (every pair is in the CSV).

One record per (group, detector, seed): if a seed has two, the newest is used, with a warning.
The claims table (`sparsebench.tickets.claims`) tests the paper's claims on the same records.
`build` adds three entries to the boards (`leaderboard.build.build_boards`): `tickets` (the
board) and `ticket_pairs` (every pair), both in the CSV, and `ticket_claims`.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import pandas as pd

from sparsebench.io import canonical_json
from sparsebench.leaderboard.render import Cell, Image, Table, as_number, fmt_num
from sparsebench.records import RecordWarning, TicketRecord
from sparsebench.stats import mean_ci
from sparsebench.tickets.claims import compare, evaluate_claims

RANK_METRIC = "bal_acc"  # the board ranks by sparse balanced accuracy
SHOWN = ("bal_acc", "exact_codes", "covered", "same_site_recall", "family_recall", "jaccard_oracle")
PAIRED = ("bal_acc", "exact_codes")  # metrics of the paired comparisons
GROUP = ["task_key", "model_key", "width", "sparsity", "step", "init_mode"]
INIT_ORDER = {"rewind-0": 0, "rewind-e": 1, "fresh": 2}
LABELS = {"bal_acc": "bal. acc.", "exact_codes": "exact codes", "covered": "clauses covered",
          "same_site_recall": "same-site recall", "family_recall": "family recall", "jaccard_oracle": "Jaccard oracle"}


def tickets_frame(records: list[tuple[Any, Any]]) -> pd.DataFrame:
    """One row per ticket record: group keys, detector, seed, `m_<metric>` (task and ticket metrics)."""
    rows = []
    for path, rec in records:
        if not isinstance(rec, TicketRecord):
            continue
        t, m = rec.task, rec.model
        model_cfg = {k: v for k, v in m.config.items() if k not in m.width_fields}
        row = {"task_key": canonical_json({"name": t.name, "version": t.version, "config": t.config}),
               "task": t.name, "task_config": canonical_json(t.config),
               "model_key": canonical_json({"name": m.name, "config": model_cfg}), "model": m.name,
               "width": rec.width, "sparsity": rec.sparsity, "step": rec.detection_step, "init_mode": rec.init_mode,
               "detector": rec.detector.name, "kind": rec.detector.kind, "uses_step": rec.detector.uses_step,
               "seed": rec.seed, "id": rec.id, "date": rec.provenance.date, "path": str(path)}
        row.update({f"m_{k}": (math.nan if v is None else float(v)) for k, v in rec.metrics.items()})
        row.update({f"m_{k}": (math.nan if v is None else float(v)) for k, v in rec.tickets.items()})
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    keys = GROUP + ["detector", "seed"]
    dup = df.duplicated(keys, keep=False)
    if dup.any():
        warnings.warn(f"{int(df[dup].groupby(keys).ngroups)} ticket seed(s) had more than one record; the newest "
                      f"record of each is used", RecordWarning, stacklevel=2)
        df = df.sort_values("date", kind="stable").drop_duplicates(keys, keep="last")
    return df.reset_index(drop=True)


def _seeds(g: pd.DataFrame, metric: str) -> dict[int, float]:
    col = f"m_{metric}"
    return dict(zip(g["seed"], g[col])) if col in g else {}


def tickets_board(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(board, pairs). board: one row per (group, detector) with n, `<m>_mean/_lo/_hi` for the shown metrics,
    rank (NaN for references), beats (";"-joined). pairs: one row per (group, metric, a, b) with every pair."""
    if df.empty:
        return pd.DataFrame(), pd.DataFrame()
    df = _dense_beside_sparse(df)
    rows, pairs = [], []
    for key, g in df.groupby(GROUP, sort=False):
        by_det = {d: gd for d, gd in g.groupby("detector", sort=False)}
        base = dict(zip(GROUP, key))
        stats = {}
        for det, gd in by_det.items():
            row = {**base, "detector": det, "kind": gd["kind"].iloc[0], "n": int(gd["seed"].nunique()),
                   "task": gd["task"].iloc[0], "task_config": gd["task_config"].iloc[0], "model": gd["model"].iloc[0]}
            for m in SHOWN:
                mean, lo, hi = mean_ci(gd[f"m_{m}"].tolist() if f"m_{m}" in gd else [])
                row.update({f"{m}_mean": mean, f"{m}_lo": lo, f"{m}_hi": hi})
            stats[det] = row
        for metric in PAIRED:
            for a in by_det:
                for b in by_det:
                    if a == b:
                        continue
                    sa, sb = _seeds(by_det[a], metric), _seeds(by_det[b], metric)
                    common = sorted(set(sa) & set(sb))
                    d = compare([sa[s] for s in common], [sb[s] for s in common])
                    pairs.append({**base, "metric": metric, "a": a, "b": b, "mean": d.mean, "lo": d.lo, "hi": d.hi,
                                  "n": d.n, "wins": d.wins, "losses": d.losses, "sign_p": d.sign_p,
                                  "verdict": {"a": "a better", "b": "b better"}.get(d.verdict, "tie")})
        ranked = sorted((d for d in stats if stats[d]["kind"] != "reference"),
                        key=lambda d: (-_nan_low(stats[d][f"{RANK_METRIC}_mean"]), d))
        for det, row in stats.items():
            row["rank"] = ranked.index(det) + 1 if det in ranked else math.nan
            rows.append(row)
    board = pd.DataFrame(rows)
    pairs_df = pd.DataFrame(pairs, columns=[*GROUP, "metric", "a", "b", "mean", "lo", "hi", "n", "wins", "losses",
                                            "sign_p", "verdict"])
    beats = pairs_df[(pairs_df["metric"] == RANK_METRIC) & (pairs_df["verdict"] == "a better")]
    won = beats.groupby(GROUP + ["a"])["b"].apply(lambda s: "; ".join(sorted(s))).to_dict()
    board["beats"] = [won.get(tuple(r[k] for k in GROUP) + (r["detector"],), "") for _, r in board.iterrows()]
    board["init_order"] = board["init_mode"].map(INIT_ORDER)
    board = board.sort_values(["task_key", "model_key", "width", "sparsity", "step", "init_order", "rank", "detector"],
                              na_position="last", kind="stable").drop(columns="init_order")
    return board.reset_index(drop=True), pairs_df


def _dense_beside_sparse(df: pd.DataFrame) -> pd.DataFrame:
    """Show a dense reference (sparsity 0) in every sparse group with the same other keys, not on its own."""
    other = [k for k in GROUP if k != "sparsity"]
    dense, sparse = df[df["sparsity"] == 0], df[df["sparsity"] > 0]
    if dense.empty or sparse.empty:
        return df
    levels = sparse[other + ["sparsity"]].drop_duplicates()
    copies = dense.drop(columns="sparsity").merge(levels, on=other, how="inner")
    alone = dense.merge(levels[other].drop_duplicates(), on=other, how="left", indicator=True)
    alone = alone[alone["_merge"] == "left_only"].drop(columns="_merge")
    return pd.concat([sparse, copies[df.columns], alone[df.columns]], ignore_index=True)


def _nan_low(x: float) -> float:
    return -math.inf if x is None or math.isnan(x) else x


def build(records: list[tuple[Any, Any]]) -> dict[str, Any]:
    """The boards' tickets entries of `records` (see the module docstring; empty without ticket records)."""
    df = tickets_frame(records)
    if df.empty:
        return {}
    board, pairs = tickets_board(df)
    claims = evaluate_claims([r for _, r in records if isinstance(r, TicketRecord)])
    return {"tickets": board, "ticket_pairs": pairs, "ticket_claims": claims}


# ---------------------------------------------------------------------------- tables


def _ci(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    if mean is None or math.isnan(mean):
        return "n/a"
    if lo is None or math.isnan(lo):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def group_title(r: Any) -> str:
    cfg = json.loads(r["task_config"]) if r["task_config"] else {}
    task = r["task"] + (f"({', '.join(f'{k}={v}' for k, v in cfg.items() if k in ('n', 'K'))})" if cfg else "")
    model = json.loads(r["model_key"])
    extra = ", ".join(f"{k}={v}" for k, v in model["config"].items() if k == "embed")
    return (f"{task} · {model['name']}({extra}) H={r['width']} · sparsity {r['sparsity']:g} · step {r['step']} · "
            f"{r['init_mode']}")


def ticket_tables(b: dict[str, Any]) -> list[Table]:
    """Display tables of the boards `b`: claims, then per group the ranking and the paired comparisons."""
    if b.get("tickets") is None:
        return []
    tables = [claims_table(b["ticket_claims"])]
    board, pairs = b["tickets"], b["ticket_pairs"]
    for key, g in board.groupby(GROUP, sort=False):
        title = group_title(g.iloc[0])
        cols = ["rank", "detector", "kind", "seeds"] + [f"{LABELS[m]} ↑" for m in SHOWN] + ["beats (bal. acc.)"]
        tab = Table("tickets", f"Tickets ranking: {title}", cols,
                    note="mean [95% t interval] over seeds; ranked by balanced accuracy; ref = reference, shown but "
                         "never ranked; beats = paired 95% interval of the per-seed difference above 0")
        for _, r in g.iterrows():
            rank = "ref" if r["kind"] == "reference" else str(int(r["rank"]))
            row = [Cell(rank, r["rank"] if not math.isnan(r["rank"]) else None), Cell(r["detector"]),
                   Cell(r["kind"]), Cell(str(r["n"]), r["n"])]
            for m in SHOWN:
                digits = 1 if m in ("exact_codes", "covered") else 3
                row.append(Cell(_ci(r[f"{m}_mean"], r[f"{m}_lo"], r[f"{m}_hi"], digits), as_number(r[f"{m}_mean"]),
                                best=rank == "1" and m == RANK_METRIC))
            row.append(Cell(r["beats"]))
            tab.rows.append(row)
        tables.append(tab)
        top = g[g["rank"] == 1]["detector"].tolist()
        gp = pairs[(pairs[GROUP] == pd.Series(dict(zip(GROUP, key)))).all(axis=1)] if not pairs.empty else pairs
        refs = [d for d in (top[:1] + ["random"]) if d in set(g["detector"])]
        shown = gp[gp["b"].isin(refs) & (gp["a"] != gp["b"])]
        if shown.empty:
            continue
        tp = Table("tickets", f"Paired comparisons: {title}",
                   ["metric", "detector", "against", "mean difference [95% CI]", "pairs", "wins-losses", "sign p",
                    "verdict"],
                   note="per seed: detector minus the other at the same group; verdict from the interval "
                        "(every pair is in the CSV)")
        for _, r in shown.sort_values(["metric", "b", "mean"], ascending=[True, True, False], kind="stable").iterrows():
            tp.rows.append([Cell(LABELS[r["metric"]]), Cell(r["a"]), Cell(r["b"]),
                            Cell(_ci(r["mean"], r["lo"], r["hi"]), as_number(r["mean"])),
                            Cell(str(r["n"]), r["n"]), Cell(f"{r['wins']}-{r['losses']}"),
                            Cell(fmt_num(r["sign_p"], 2), as_number(r["sign_p"])), Cell(r["verdict"])])
        tables.append(tp)
    return tables


def claims_table(claims: list[Any]) -> Table:
    tab = Table("tickets", "Claims of the second seed (Bebchuk & Shavit), tested on these records",
                ["#", "claim [paper]", "outcome", "numbers (paired over seeds, 95% t intervals)"],
                note="checks and their reading: docs/science.md §7; 'not tested' = the records it needs are missing")
    for c in claims:
        tab.rows.append([Cell(str(c.number), c.number), Cell(c.claim), Cell(c.status), Cell(c.summary)])
    return tab


# ---------------------------------------------------------------------------- figures


def figures(b: dict[str, Any]) -> list[Image]:
    """The tickets board's figures (in its section of the HTML page): per (task, model, width, sparsity, step) family against same-site
    recall, and per (task, model, width, sparsity, init mode) with several steps, accuracy and exact codes
    against the step."""
    board = b.get("tickets")
    if board is None:
        return []
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    from sparsebench.leaderboard.figures import STYLE, safe_text, to_png

    out = []
    colors = {"feature": "tab:green", "weight": "tab:blue", "control": "tab:gray", "reference": "tab:red"}
    for _, g in board.groupby(["task_key", "model_key", "width", "sparsity"], sort=False):
        first = g.iloc[0]
        label = f"{first['task']} · {first['model']} H={first['width']} · sparsity {first['sparsity']:g}"
        for step, gs in g.groupby("step", sort=True):
            inits = [i for i in INIT_ORDER if i in set(gs["init_mode"])]
            with matplotlib.rc_context(STYLE):
                fig = Figure(figsize=(4.4 * len(inits), 4.3))
                axes = fig.subplots(1, len(inits), squeeze=False)
                for ax, init in zip(axes[0], inits):
                    for _, r in gs[gs["init_mode"] == init].iterrows():
                        c = colors.get(r["kind"], "k")
                        ax.errorbar(r["same_site_recall_mean"], r["family_recall_mean"],
                                    xerr=_err(r, "same_site_recall"), yerr=_err(r, "family_recall"), fmt="o",
                                    color=c, ms=4, alpha=0.85, elinewidth=0.5)
                        ax.annotate(safe_text(r["detector"]), (r["same_site_recall_mean"], r["family_recall_mean"]),
                                    fontsize=6, color=c, xytext=(3, 3), textcoords="offset points")
                    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
                    ax.set_xlim(-0.02, 1.05)
                    ax.set_ylim(-0.02, 1.05)
                    ax.set_xlabel("same-site recall")
                    ax.set_title(init)
                axes[0][0].set_ylabel("family recall")
                handles = [Line2D([], [], color=c, marker="o", ls="", label=k) for k, c in colors.items()]
                axes[0][-1].legend(handles=handles, loc="lower right")
                fig.suptitle(safe_text(f"{label} · step {step}"))
                out.append(Image(f"{label} · step {step}: family recall against same-site recall per detector and "
                                 f"init mode (mean ± 95% CI over seeds; colour = detector kind); above the diagonal = "
                                 f"the clause is recovered on another row", to_png(fig), board="tickets"))
        for init, gi in g.groupby("init_mode", sort=False):
            if gi["step"].nunique() < 2:
                continue
            with matplotlib.rc_context(STYLE):
                fig = Figure(figsize=(10, 4))
                axes = fig.subplots(1, 2)
                for det, gd in gi.groupby("detector", sort=True):
                    if gd["step"].nunique() < 2:
                        continue
                    gd = gd.sort_values("step")
                    for ax, m in zip(axes, ("bal_acc", "exact_codes")):
                        ax.errorbar(gd["step"], gd[f"{m}_mean"],
                                    yerr=[gd[f"{m}_mean"] - gd[f"{m}_lo"], gd[f"{m}_hi"] - gd[f"{m}_mean"]],
                                    marker="o", ms=3, capsize=2, lw=1, label=safe_text(det))
                for ax, m in zip(axes, ("bal_acc", "exact_codes")):
                    ax.set_xscale("log")
                    ax.set_xlabel("detection step")
                    ax.set_ylabel(LABELS[m])
                axes[1].legend(fontsize=7, ncol=2)
                fig.suptitle(safe_text(f"{label} · {init}"))
                out.append(Image(f"{label} · {init}: sparse balanced accuracy and exact codes against the detection "
                                 f"step per detector (mean ± 95% CI over seeds)", to_png(fig), board="tickets"))
    return out


def _err(r: Any, m: str) -> Any:
    lo, hi, mean = r[f"{m}_lo"], r[f"{m}_hi"], r[f"{m}_mean"]
    if lo is None or math.isnan(lo):
        return None
    return [[mean - lo], [hi - mean]]
