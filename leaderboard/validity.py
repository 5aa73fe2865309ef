"""The probe validity board: does a probe tell the right explanation from the wrong ones, where the truth is known?

Every mechanism's exact construction has a known mechanism (`truth` in its explanation records).
Each probe's main score is compared, within each construction (same truth, width, seed):

- the right explanation: the truth's own fit;
- the wrong ones: every other mechanism's fit (oracles excepted: given the answer, they explain
  any model that solves the task, so they are no wrong explanation of one) and every control
  explanation of every fit (the truth's included: answer-only, random code, permuted units, ...).

AUROC = P(the right one scores better than a wrong one), ties counting half, over all such pairs
(in the score's direction). A ranked probe whose AUROC is below `min_auroc`, or that has no pair
at all, is flagged invalid and left out of the explanations ranking. A second check, per (truth,
probe): does the right explanation beat every control and null on its own construction (its
recorded margin above 0 on every seed)?
"""

from __future__ import annotations

import math

import pandas as pd

from sparsebench.explain import good

MIN_AUROC = 0.9  # below this a probe cannot tell right from wrong on constructions well enough to rank by it


def _pairs(exp: pd.DataFrame) -> pd.DataFrame:
    """(probe, right, wrong) good-turned value pairs from the construction records' main scores."""
    built = exp[(exp["subject"] == "construction") & exp["is_main"] & (exp["status"] == "ok")]
    control_cols = [c for c in built.columns if c.startswith("control_")]
    rows = []
    for (probe, truth, width, seed, tk), g in built.groupby(["probe", "truth", "width", "seed", "task_key"]):
        direction = str(g["direction"].iloc[0])
        right = g[g["mechanism"] == truth]
        if right.empty or math.isnan(right["value"].iloc[0]):
            continue
        r = good(float(right["value"].iloc[0]), direction)
        wrong = [float(v) for v in g[(g["mechanism"] != truth) & ~g["oracle"]]["value"] if not math.isnan(v)]
        for _, row in g.iterrows():  # every control of every fit
            wrong += [float(row[c]) for c in control_cols if not pd.isna(row[c])]
        rows += [{"probe": probe, "truth": truth, "right": r, "wrong": good(w, direction)} for w in wrong]
    return pd.DataFrame(rows, columns=["probe", "truth", "right", "wrong"])


def validity_board(exp: pd.DataFrame, min_auroc: float = MIN_AUROC) -> pd.DataFrame:
    """One row per probe: ranked, AUROC over construction pairs, pairs, constructions (truths), valid.

    `valid` is True/False for probes with pairs, None (unknown) for probes without any; a diagnostic
    (unranked) probe is reported too but never counted.
    """
    columns = ["probe", "ranked", "auroc", "pairs", "truths", "valid"]
    if exp.empty or "subject" not in exp.columns or not (exp["probe"] != "").any():
        return pd.DataFrame(columns=columns)
    pairs = _pairs(exp)
    ranked = exp[exp["probe"] != ""].groupby("probe")["ranked"].first()
    rows = []
    for probe, is_ranked in ranked.items():
        p = pairs[pairs["probe"] == probe]
        if p.empty:
            rows.append({"probe": probe, "ranked": bool(is_ranked), "auroc": math.nan, "pairs": 0, "truths": "",
                         "valid": None})
            continue
        wins = (p["right"] > p["wrong"]).sum() + 0.5 * (p["right"] == p["wrong"]).sum()
        auroc = float(wins / len(p))
        rows.append({"probe": probe, "ranked": bool(is_ranked), "auroc": auroc, "pairs": int(len(p)),
                     "truths": ", ".join(sorted(set(p["truth"]))), "valid": auroc >= min_auroc})
    return pd.DataFrame(rows).sort_values(["ranked", "probe"], ascending=[False, True]).reset_index(drop=True)


def own_construction(exp: pd.DataFrame) -> pd.DataFrame:
    """Per (truth, probe): the right explanation's margin over its controls and nulls on its own construction.

    Columns: truth, probe, ranked, seeds, margin_mean, margin_min (over seeds), rival (the most frequent
    strongest rival), beats_all (margin above 0 on every seed; NaN when no rival had a number).
    """
    if exp.empty or "subject" not in exp.columns:
        return pd.DataFrame()
    own = exp[(exp["subject"] == "construction") & exp["is_main"] & (exp["status"] == "ok")
              & (exp["mechanism"] == exp["truth"])]
    rows = []
    for (truth, probe), g in own.groupby(["truth", "probe"]):
        m = g["margin"].dropna()
        rows.append({"truth": truth, "probe": probe, "ranked": bool(g["ranked"].iloc[0]), "seeds": int(len(g)),
                     "margin_mean": float(m.mean()) if len(m) else math.nan,
                     "margin_min": float(m.min()) if len(m) else math.nan,
                     "rival": g["rival"].mode().iloc[0] if g["rival"].astype(bool).any() else "",
                     "beats_all": bool((m > 0).all()) if len(m) == len(g) and len(m) else math.nan})
    return pd.DataFrame(rows)
