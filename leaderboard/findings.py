"""The post's findings 4-6, measured from solution records (docs/science.md §4, §6.5).

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
