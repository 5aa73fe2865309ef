"""The post's findings 3-6, measured from the records (docs/science.md §4, §6.5).

- Finding 3 (hidden unit j is active iff j is not in the union of the input tokens' hashes, i.e. the
  trained net learned the Bloom code): per trained model configuration and width, from the Bloom
  fit's explanation records: it *holds* where the `hidden-code` MCC is at least 0.9 on every seed and
  above the same fit of the untrained null model on every seed. It asks whether training produced the
  code (a question for the nulls), not whether the Bloom explanation beats every rival explanation (the
  verdicts' question, shown beside it). The two-means R² of the token-to-hidden map the fit read is shown
  with its untrained null. A setting that did not learn the code is flagged here rather than left to be
  read off the scores.

- Finding 4 (false positives are a rare, separate low cluster of top-k mass): per solver and width,
  from the recorded `behaviour` (two-means split of each sample's top-k mass): it *holds* where the
  low cluster is rare (under 20% of samples), separate (split R² at least 0.8) and is the samples
  with false positives (at least 80% of the low cluster has one, at most 20% of the high cluster).
- Finding 5 (loss falls exponentially in width for Bloom, polynomially for JL): per solver with at
  least five widths, least-squares fits of log KL and log false-positive rate against w
  (exponential) and against log w (power law); the law with the better R² of log y wins.
- Finding 6 (with more than k input tokens the net still spreads mass uniformly over them): per
  solver and width, the mass on k + j given tokens and its evenness (min over max of their
  probabilities); it *holds* where the evenness is at least 0.8 for j = 1.

Thresholds are this suite's reading of the post's words (the post gives no numbers); they are
module constants, stated on the board beside every verdict.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from sparsebench.leaderboard.boards import add_series, task_label
from sparsebench.leaderboard.figures import fit_scaling

RARE, SEPARATE, CLUSTER_IS_FP, HIGH_HAS_NO_FP = 0.2, 0.8, 0.8, 0.2  # finding 4
EVEN = 0.8  # finding 6 (j = 1)
LEARNED_MCC = 0.9  # finding 3: hidden-code MCC of the Bloom fit on every seed
MIN_WIDTHS = 5  # finding 5


def _mean(g: pd.DataFrame, col: str) -> float:
    return float(g[col].mean()) if col in g and g[col].notna().any() else math.nan


def findings(frame: pd.DataFrame) -> pd.DataFrame:
    """From a solutions frame (`frames.solutions_frame`): rows finding, task_label, solver (the series label),
    width ("all" for finding 5), measure, value, holds."""
    if frame is None or frame.empty:
        return pd.DataFrame()
    sol = add_series(frame)
    sol["task_label"] = [task_label(n, c, v) for n, c, v in zip(sol["task"], sol["task_config"], sol["task_version"])]
    rows = []
    for (task_label_, label), g in sol.groupby(["task_label", "label"], sort=True):
        for width, gw in g.groupby("width", sort=True):
            low, r2 = _mean(gw, "behaviour_mass_low_share"), _mean(gw, "behaviour_mass_split_r2")
            low_fp, high_fp = _mean(gw, "behaviour_low_with_fp"), _mean(gw, "behaviour_high_with_fp")
            if not math.isnan(low):
                holds = (low < RARE and r2 >= SEPARATE and low_fp >= CLUSTER_IS_FP and
                         (math.isnan(high_fp) or high_fp <= HIGH_HAS_NO_FP))
                rows.append({"finding": 4, "task_label": task_label_, "solver": label, "width": str(width),
                             "measure": f"low cluster {low:.3f} of samples, split R² {r2:.2f}, with a false "
                                        f"positive: low {low_fp:.2f} / high {high_fp:.2f}",
                             "value": low, "holds": bool(holds)})
            even, mass = _mean(gw, "behaviour_extra1_evenness"), _mean(gw, "behaviour_extra1_mass")
            if not math.isnan(even):
                more = ", ".join(f"k+{j}: mass {_mean(gw, f'behaviour_extra{j}_mass'):.2f}, evenness "
                                 f"{_mean(gw, f'behaviour_extra{j}_evenness'):.2f}" for j in (1, 2, 5)
                                 if f"behaviour_extra{j}_mass" in gw)
                rows.append({"finding": 6, "task_label": task_label_, "solver": label, "width": str(width),
                             "measure": more, "value": even, "holds": bool(even >= EVEN)})
        widths = sorted(g["width"].unique())
        if len(widths) >= MIN_WIDTHS:
            expected = "power" if g["solver"].iloc[0] == "jl" else "exp"  # the post: JL polynomial, Bloom exponential
            for metric in ("kl", "fp_rate"):
                col = f"metric_{metric}"
                if col not in g:
                    continue
                means = g.groupby("width")[col].mean()
                fit = fit_scaling(np.array(means.index, dtype=float), means.to_numpy())
                if fit is None:
                    continue
                law = {"exp": "exponential", "power": "power law"}
                rows.append({"finding": 5, "task_label": task_label_, "solver": label, "width": "all",
                             "measure": f"{metric}: {law[fit['better']]} fits better (R² of log y: exponential "
                                        f"{fit['exp'][2]:.3f}, power law {fit['power'][2]:.3f}; {fit['n']} widths); "
                                        f"expected {law[expected]}",
                             "value": fit["exp"][2] - fit["power"][2], "holds": fit["better"] == expected})
    return pd.DataFrame(rows)


def learned_code(exp: pd.DataFrame, board: pd.DataFrame) -> pd.DataFrame:
    """Finding 3 per trained model configuration and width, from an explanations frame
    (`frames.explanations_frame`) and its board (`explanations.explanations_board`, for the labels)."""
    if exp is None or exp.empty or board is None or board.empty or "subject" not in exp:
        return pd.DataFrame()
    from sparsebench.leaderboard.boards import GROUP_KEYS

    df = exp[(exp["subject"] == "trained") & (exp["mechanism"] == "bloom") & (exp["status"] == "ok")]
    rows = []
    for key, g in df.groupby(GROUP_KEYS + ["width"], sort=True):
        mcc = g[(g["probe"] == "hidden-code") & (g["score"] == "mcc")]
        if mcc.empty:
            continue
        b = board[(board["mechanism"] == "bloom") & (board["probe"] == "hidden-code") & (board["score"] == "mcc")]
        for k, v in zip(GROUP_KEYS, key):
            b = b[b[k] == v]
        if b.empty:
            continue
        first = b.iloc[0]
        r2 = g[(g["probe"] == "bimodality") & (g["score"] == "r2")]
        null = r2["null_untrained"].mean() if "null_untrained" in r2 and r2["null_untrained"].notna().any() \
            else math.nan
        low = float(mcc["value"].min())
        untrained = mcc["null_untrained"] if "null_untrained" in mcc else pd.Series([math.nan] * len(mcc))
        above = bool((mcc["value"].to_numpy() > untrained.fillna(math.inf).to_numpy()).all())
        rows.append({"finding": 3, "task_label": first["task_label"], "solver": first["group_label"],
                     "width": str(key[-1]),
                     "measure": f"hidden-code MCC {mcc['value'].mean():.3f} (lowest seed {low:.3f}, {len(mcc)} "
                                f"seeds; untrained null {untrained.mean():.3f}; Bloom's verdict over every rival: "
                                f"{first['outcome']}); R² of the token-to-hidden map {r2['value'].mean():.3f} "
                                f"(untrained null {null:.3f})",
                     "value": low, "holds": bool(low >= LEARNED_MCC and above)})
    return pd.DataFrame(rows)
