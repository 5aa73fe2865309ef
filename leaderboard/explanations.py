"""The explanations board: which mechanism explains a trained model, and by how much over what.

Per trained-model configuration (task, model name + config, train config), from the records of
every seed (each seed scored on its own probe batch):

* value: mean and 95% t-interval over seeds of each score;
* margin: the score minus the strongest rival of that seed (control explanations of the fit and
  the mechanism refitted to null models; `sparsebench.explain`), turned by the score's direction
  so + is better; mean and 95% t-interval over seeds (one seed: the interval over that seed's
  probe-batch chunks, from the record);
* on a probe, a mechanism *explains* the model when the margin's interval lies above 0, *fails*
  when it lies below, and is *undecided* otherwise.

Only ranked probes count (diagnostics are shown apart), and only those the probe validity board
found valid (`validity.py`; a probe without construction records to judge it is counted and
marked "unvalidated"). The verdict of a mechanism: "explains" if it explains on every counted
probe that applies to it, "partly" if on some, "no" if on none.

Ranking (non-oracle mechanisms): two mechanisms are compared on the counted probes that apply
to both. On a probe, A beats B when the paired t-interval over seeds of the difference of their
scores (turned by direction) lies above 0; with fewer than two seeds nothing is decided. A wins
the pair when it beats B on more of their common probes than B beats A; a pair with no winner
is a tie. Mechanisms are ranked by pairs won minus pairs lost (Copeland); equal scores share a
rank. No number is averaged over different probes or scales.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pandas as pd

from sparsebench.explain import good
from sparsebench.leaderboard.boards import GROUP_KEYS, label_groups, task_label
from sparsebench.stats import mean_ci, paired_diff_ci


def _interval(values: list[float], chunk_ci: tuple[float, float] | None) -> tuple[float, float, float]:
    m, lo, hi = mean_ci(values)
    if len(values) == 1 and chunk_ci is not None:
        lo, hi = chunk_ci
    return m, lo, hi


def _status(lo: float, hi: float) -> str:
    if math.isnan(lo):
        return "undecided"
    return "explains" if lo > 0 else ("fails" if hi < 0 else "undecided")


def explanations_board(exp: pd.DataFrame, valid: dict[str, bool | None] | None = None) -> pd.DataFrame:
    """Trained models only: one row per (group, mechanism, probe, score). See the module docstring.

    Columns: GROUP_KEYS, task_label, group_label, mech_label, width, mechanism, mechanism_config, oracle,
    probe, score, is_main, ranked, valid (True/False/None), counted, direction, status ("ok" or "n/a"),
    reason, n, value_mean/lo/hi, margin_mean/lo/hi, rival, outcome (explains/fails/undecided),
    `control_<c>_mean`, `null_<n>_mean`, notes.
    """
    if exp.empty:
        return pd.DataFrame()
    df = exp[exp["subject"] == "trained"] if "subject" in exp.columns else exp
    if df.empty:
        return pd.DataFrame()
    valid = valid or {}
    rival_cols = sorted(c for c in df.columns if c.startswith(("control_", "null_", "own_")))
    keys = GROUP_KEYS + ["mechanism", "mechanism_config", "probe"]
    rows = []
    for key, g in df.groupby(keys, sort=True):
        first = g.iloc[0]
        base = dict(zip(keys, key), task=first["task"], width=int(first["width"]), oracle=bool(first["oracle"]),
                    task_label=task_label(first["task"], first["task_config"], first["task_version"]),
                    ranked=bool(first["ranked"]), valid=valid.get(key[-1]))
        ok = g[g["status"] == "ok"]
        if ok.empty:
            rows.append({**base, "score": first["score"], "is_main": True, "direction": "higher", "status": "n/a",
                         "reason": "; ".join(sorted({r for r in g["reason"] if r})), "n": 0,
                         "outcome": "n/a"})
            continue
        for score, s in ok.groupby("score", sort=True):
            values = [float(v) for v in s["value"]]
            single = s.iloc[0]
            v, vlo, vhi = _interval(values, None if math.isnan(single["value_lo"]) else
                                    (single["value_lo"], single["value_hi"]))
            margins = [float(m) for m in s["margin"] if not math.isnan(m)]
            mm, mlo, mhi = _interval(margins, None if len(s) != 1 or math.isnan(single["margin_lo"]) else
                                     (single["margin_lo"], single["margin_hi"]))
            rows.append({**base, "score": score, "is_main": bool(single["is_main"]), "direction": single["direction"],
                         "status": "ok", "reason": "", "n": len(values), "value_mean": v, "value_lo": vlo,
                         "value_hi": vhi, "margin_mean": mm, "margin_lo": mlo, "margin_hi": mhi,
                         "rival": s["rival"].mode().iloc[0] if s["rival"].astype(bool).any() else "",
                         "outcome": _status(mlo, mhi) if margins else "undecided",
                         "notes": single.get("notes", ""),
                         **{f"{c}_mean": float(s[c].mean()) if s[c].notna().any() else math.nan for c in rival_cols}})
    board = pd.DataFrame(rows)
    board["counted"] = board["ranked"] & (board["valid"] != False) & ~board["oracle"]  # noqa: E712 - None counts
    label_groups(board)
    return board.sort_values(GROUP_KEYS + ["mech_label", "ranked", "probe", "is_main", "score"],
                             ascending=[True] * 5 + [False, True, False, True], kind="stable").reset_index(drop=True)


def pairwise(exp: pd.DataFrame, board: pd.DataFrame) -> pd.DataFrame:
    """Every pair of non-oracle mechanisms on every counted probe both apply to: the paired difference of their
    main scores over seeds (turned by direction; + favours `a`), its interval, and who wins ("a", "b" or "tie")."""
    if board.empty:
        return pd.DataFrame()
    main = board[board["is_main"] & board["counted"] & (board["status"] == "ok")]
    df = exp[(exp["subject"] == "trained") & exp["is_main"] & (exp["status"] == "ok")]
    rows = []
    for gkey, g in main.groupby(GROUP_KEYS, sort=False):
        recs = df[(df[GROUP_KEYS] == list(gkey)).all(axis=1)]
        for probe, pg in g.groupby("probe"):
            mechs = sorted(set(pg["mechanism"]))
            direction = str(pg["direction"].iloc[0])
            # One value per seed (records repeated across folders, already warned about, count once).
            by_mech = {m: recs[(recs["mechanism"] == m) & (recs["probe"] == probe)].groupby("seed")["value"].mean()
                       for m in mechs}
            for a, b in itertools.combinations(mechs, 2):
                seeds = sorted(set(by_mech[a].index) & set(by_mech[b].index))
                xa = [good(float(by_mech[a][s]), direction) for s in seeds]
                xb = [good(float(by_mech[b][s]), direction) for s in seeds]
                d, lo, hi = paired_diff_ci(xa, xb)
                winner = "tie" if math.isnan(lo) or lo <= 0 <= hi else ("a" if lo > 0 else "b")
                rows.append({**dict(zip(GROUP_KEYS, gkey)), "probe": probe, "a": a, "b": b, "n": len(seeds),
                             "diff": d, "lo": lo, "hi": hi, "winner": winner})
    return pd.DataFrame(rows)


def ranking(board: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Per (group, mechanism): verdict, the counted probes and their outcomes, pairs won/tied/lost, Copeland
    score and rank (oracles, and mechanisms no counted probe applies to: shown, never ranked)."""
    if board.empty:
        return pd.DataFrame()
    main = board[board["is_main"]]
    rows = []
    for gkey, g in main.groupby(GROUP_KEYS, sort=False):
        mechs = sorted(set(g["mechanism"]))
        gp = pairs[(pairs[GROUP_KEYS] == list(gkey)).all(axis=1)] if not pairs.empty else pairs
        for mech in mechs:
            mg = g[g["mechanism"] == mech]
            first = mg.iloc[0]
            counted = mg[mg["ranked"] & (mg["valid"] != False) & (mg["status"] == "ok")]  # noqa: E712
            outcomes = dict(zip(counted["probe"], counted["outcome"]))
            explains = sum(o == "explains" for o in outcomes.values())
            verdict = ("n/a" if not outcomes else "explains" if explains == len(outcomes)
                       else "partly" if explains else "no")
            won = lost = tied = 0
            for other in mechs:
                if other == mech or bool(g[g["mechanism"] == other]["oracle"].iloc[0]) or bool(first["oracle"]):
                    continue
                a, b = sorted((mech, other))
                pp = gp[(gp["a"] == a) & (gp["b"] == b)] if not gp.empty else gp
                mine = "a" if mech == a else "b"
                wins = int((pp["winner"] == mine).sum()) if not pp.empty else 0
                losses = int(((pp["winner"] != mine) & (pp["winner"] != "tie")).sum()) if not pp.empty else 0
                won, lost, tied = won + (wins > losses), lost + (losses > wins), tied + (wins == losses)
            rows.append({**dict(zip(GROUP_KEYS, gkey)), "mechanism": mech, "mech_label": first["mech_label"],
                         "task_label": first["task_label"], "group_label": first["group_label"],
                         "width": int(first["width"]), "oracle": bool(first["oracle"]), "verdict": verdict,
                         "outcomes": ", ".join(f"{p}: {o}" for p, o in sorted(outcomes.items())),
                         "won": won, "tied": tied, "lost": lost, "copeland": won - lost,
                         "unvalidated": ", ".join(sorted(p for p, v in zip(counted["probe"], counted["valid"])
                                                         if v is None))})
    rk = pd.DataFrame(rows)
    rk["rank"] = math.nan
    for _, g in rk.groupby(GROUP_KEYS, sort=False):
        ranked = g[~g["oracle"] & (g["verdict"] != "n/a")]  # nothing applies: nothing to rank by
        rk.loc[ranked.index, "rank"] = ranked["copeland"].rank(ascending=False, method="min")
    return rk.sort_values(GROUP_KEYS + ["rank", "mech_label"], na_position="last", kind="stable").reset_index(drop=True)


def build(exp: pd.DataFrame, valid: dict[str, bool | None]) -> dict[str, Any]:
    """The board, the pairwise comparisons and the ranking, for `leaderboard.build`."""
    board = explanations_board(exp, valid)
    pairs = pairwise(exp, board)
    return {"explanations": board, "pairwise": pairs, "ranking": ranking(board, pairs)}
