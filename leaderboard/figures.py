"""Publication figures (matplotlib, Agg backend): scaling curves from records, and one trained model's anatomy.

Scaling (`scaling_figure`): a metric (KL, false-positive rate) against width for
every solver of a task, mean ± std over seeds, with two fits per series drawn
through the seed means:

* exponential: log y = a + b·w   (dashed)  — the Bloom filter's law, y ∝ e^{b w}
* power law:   log y = a + b·log w (dotted) — JL's polynomial decay, y ∝ w^b

R² is computed for log y (the space both fits are least-squares in), so the two
are comparable; the legend gives both and marks the better one. A series needs
three widths with y > 0 to be fitted (two points fit any line exactly); zeros
cannot be shown on a log axis and are left out of the fit (the caption says how
many).

Model anatomy (`report`): the hash matrix E @ W_in with tokens sorted by their
fitted hash (diverging colormap centred at 0), the histogram of its entries
(bimodality), the histogram of top-k mass over held-out samples (log counts: the
false-positive cluster), and the output probability of non-members against the
number of their hash bits missing from the union U (the logit tiers).
"""

from __future__ import annotations

import io
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

METRIC_AXIS = {
    "kl": "KL(p* ‖ q)  [nats]",
    "tv": "total variation  ½‖p* − q‖₁",
    "fp_rate": "false-positive rate  [per non-member token]",
    "fp_per_sample": "false positives per sample  [tokens]",
    "topk_mass": "top-k mass  Σ_{i∈S} q_i",
}
STYLE = {"figure.dpi": 110, "savefig.dpi": 150, "font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9,
         "legend.fontsize": 7.5, "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False,
         "axes.spines.right": False}


LABEL_CHARS = 80  # longest label, title line or legend entry drawn from a record (longer ones are cut, with …)


def safe_text(s: Any, limit: int = LABEL_CHARS) -> str:
    """Text from records, made inert for matplotlib: control characters as visible escapes, at most `limit`
    characters per line (a long config in a label would make the figure too large to draw), `$` escaped
    (mathtext)."""
    from sparsebench.printable import visible

    lines = [visible(line) for line in str(s).split("\n")]
    lines = [line if len(line) <= limit else line[:limit - 1] + "…" for line in lines]
    return "\n".join(lines).replace("$", r"\$")


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------- fits

def _linfit(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Least squares y = a + b x; returns (a, b, R²) (R² = 1 for a perfect or constant fit)."""
    b, a = np.polyfit(x, y, 1)
    ss_res = float(np.sum((y - (a + b * x)) ** 2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return float(a), float(b), (1.0 - ss_res / ss_tot) if ss_tot > 0 else 1.0


def fit_scaling(widths, values) -> dict[str, Any] | None:
    """Exponential and power-law fits of values (> 0) against widths; None if fewer than 3 usable points.

    Returns {"exp": (a, b, r2), "power": (a, b, r2), "better": "exp"|"power", "n": points, "dropped": k}.
    exp: log y = a + b w; power: log y = a + b log w.
    """
    w = np.asarray(widths, dtype=float)
    y = np.asarray(values, dtype=float)
    keep = np.isfinite(y) & (y > 0) & np.isfinite(w) & (w > 0)
    dropped = int((~keep).sum())
    w, y = w[keep], y[keep]
    if len(np.unique(w)) < 3:
        return None
    ly = np.log(y)
    e, p = _linfit(w, ly), _linfit(np.log(w), ly)
    return {"exp": e, "power": p, "better": "exp" if e[2] >= p[2] else "power", "n": int(len(w)),
            "dropped": dropped}


def series_colors(labels) -> dict[str, Any]:
    cmap = plt.get_cmap("tab10")
    return {lab: cmap(i % 10) for i, lab in enumerate(sorted(set(labels)))}


def scaling_figure(board, task_key: str, metrics=("kl", "fp_rate"), title: str | None = None):
    """One panel per metric: mean ± std over seeds against width, with exp and power-law fits per series.

    `board` is `boards.solutions_board(...)`. Returns a matplotlib Figure (None if no metric is present).
    """
    from matplotlib.lines import Line2D

    g = board[board["task_key"] == task_key]
    metrics = [m for m in metrics if f"{m}_mean" in g.columns and g[f"{m}_mean"].notna().any()]
    if g.empty or not metrics:
        return None
    colors = series_colors(g["label"])
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
        for ax, m in zip(axes[0], metrics):
            dropped_total = 0
            for label, s in g.groupby("label", sort=True):
                s = s.sort_values("width")
                x, y, e = s["width"].to_numpy(float), s[f"{m}_mean"].to_numpy(float), s[f"{m}_std"].to_numpy(float)
                c = colors[label]
                pos = y > 0
                fit = fit_scaling(x, y)
                name = f"{safe_text(label)} ({s['solver_type'].iloc[0]})"
                if fit:
                    (ae, be, re), (ap, bp, rp) = fit["exp"], fit["power"]
                    mark_e, mark_p = ("★", "") if fit["better"] == "exp" else ("", "★")
                    name += f"\n  exp R²={re:.3f}{mark_e}, power R²={rp:.3f}{mark_p}"
                    xx = np.linspace(x[pos].min(), x[pos].max(), 100)
                    ax.plot(xx, np.exp(ae + be * xx), ls="--", lw=1.0, color=c, alpha=0.8)
                    ax.plot(xx, np.exp(ap + bp * np.log(xx)), ls=":", lw=1.3, color=c, alpha=0.9)
                    dropped_total += fit["dropped"]
                else:
                    dropped_total += int((~pos).sum())
                yerr = np.where(np.isfinite(e), e, 0.0)
                lower = np.minimum(yerr, y * 0.999)  # keep error bars above 0 on the log axis
                ax.errorbar(x[pos], y[pos], yerr=[lower[pos], yerr[pos]], marker="o", ms=4, lw=1.2, capsize=2.5,
                            color=c, label=name, ls="-" if not fit else "none")
            ax.set_yscale("log")
            ax.set_xlabel("width d  [residual dimensions = hidden units]")
            ax.set_ylabel(METRIC_AXIS.get(m, safe_text(m)))
            ax.set_title(safe_text(m) + (f"  ({dropped_total} zero value(s) not shown)" if dropped_total else ""))
            handles, labels = ax.get_legend_handles_labels()
            handles += [Line2D([], [], color="0.3", ls="--", lw=1.0), Line2D([], [], color="0.3", ls=":", lw=1.3)]
            labels += ["exp fit: log y linear in w", "power fit: log y linear in log w"]
            ax.legend(handles, labels, loc="best", frameon=False)
        fig.suptitle(safe_text(title or g["task_label"].iloc[0]) + "\nmean ± std over seeds; ★ = better fit (R² of log y)",
                     fontsize=10)
        fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------- one model's anatomy

def sort_tokens_by_code(code: np.ndarray) -> np.ndarray:
    """Token order sorting hashes lexicographically (unit 0 most significant): equal hashes are adjacent."""
    code = np.asarray(code, dtype=bool)
    if code.ndim != 2 or code.shape[1] == 0:
        return np.arange(len(code))
    return np.lexsort(code.T[::-1])[::-1]


def hash_matrix_figure(M: np.ndarray, code: np.ndarray, sign: int | None = None, title: str = ""):
    """E @ W_in (tokens × hidden units), tokens sorted by hash; colours centred at 0."""
    from matplotlib.colors import TwoSlopeNorm

    order = sort_tokens_by_code(code)
    lim = float(np.nanmax(np.abs(M))) or 1.0
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.0, 5.0))
        im = ax.imshow(M[order], aspect="auto", cmap="RdBu_r", interpolation="nearest",
                       norm=TwoSlopeNorm(vcenter=0.0, vmin=-lim, vmax=lim))
        ax.set_xlabel("hidden unit j")
        ax.set_ylabel(f"token t (sorted by fitted hash H(t); {M.shape[0]} tokens)")
        sign_txt = "" if sign is None else (" — hash = " + ("high" if sign > 0 else "low") + " cluster")
        ax.set_title(safe_text(title or "effective token→hidden map E @ W_in") + sign_txt)
        fig.colorbar(im, ax=ax, label="(E @ W_in)[t, j]")
        fig.tight_layout()
    return fig


def entries_histogram_figure(M: np.ndarray, code: np.ndarray, title: str = ""):
    """Histogram of E @ W_in entries, split by the fitted hash (bimodality)."""
    M, code = np.asarray(M), np.asarray(code, dtype=bool)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        bins = np.linspace(M.min(), M.max(), 120)
        ax.hist(M[~code], bins=bins, color="tab:gray", alpha=0.8, label=f"not in hash ({(~code).sum()} entries)")
        ax.hist(M[code], bins=bins, color="tab:red", alpha=0.8, label=f"in hash H(t) ({code.sum()} entries)")
        ax.set_yscale("log")
        ax.set_xlabel("(E @ W_in)[t, j]")
        ax.set_ylabel("count (log scale)")
        ax.set_title(safe_text(title or "entries of E @ W_in: two clusters = a binary code"))
        ax.legend(frameon=False)
        fig.tight_layout()
    return fig


def topk_mass_figure(mass: np.ndarray, k: int, title: str = ""):
    """Histogram of the top-k mass Σ_{i∈S} q_i over held-out samples, log counts."""
    mass = np.asarray(mass, dtype=float)
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        ax.hist(mass, bins=np.linspace(0, 1, 101), color="tab:blue")
        ax.set_yscale("log")
        ax.set_xlabel(f"top-k mass  Σ_(i∈S) q_i   (k = {k})")
        ax.set_ylabel("samples (log scale)")
        ax.set_title(safe_text(title or f"top-k mass over {len(mass)} held-out samples") +
                     f"\nmedian {np.median(mass):.3f}; {np.mean(mass < 0.5) * 100:.2f}% of samples below 0.5")
        fig.tight_layout()
    return fig


def tiers_figure(q_members: np.ndarray, q_by_miss: dict[int, np.ndarray], title: str = ""):
    """Output probability q_t against |H(t) \\ U| (hash bits of t missing from the union), boxplots + means.

    `q_by_miss[L]` holds q_t of non-members with L missing bits (L = 0: the predicted false positives).
    """
    levels = sorted(q_by_miss)
    data = [np.asarray(q_members, dtype=float)] + [np.asarray(q_by_miss[L], dtype=float) for L in levels]
    names = ["members\n(t ∈ S)"] + [f"{L}" for L in levels]
    floor = 1e-12
    data = [np.clip(d, floor, 1.0) if len(d) else np.array([np.nan]) for d in data]
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(6.5, 4.0))
        ax.boxplot(data, showfliers=False, whis=(5, 95), widths=0.6)
        ax.set_xticks(range(1, len(names) + 1), names)
        means = [np.nanmean(d) for d in data]
        ax.plot(range(1, len(data) + 1), means, "D", color="tab:red", ms=4, label="mean")
        for i, d in enumerate(data, start=1):
            n = int(np.isfinite(d).sum())
            ax.annotate(f"n={n}", (i, 1.5), ha="center", fontsize=6.5, annotation_clip=False)
        ax.set_yscale("log")
        ax.set_ylim(floor, 3.0)
        ax.set_xlabel("non-members: hash bits missing from the union, |H(t) \\ U|  (0 = predicted false positive)")
        ax.set_ylabel("output probability q_t  (log scale)")
        ax.set_title(safe_text(title or "logit tiers: probability against hash overlap with U") +
                     "\nboxes: quartiles, whiskers 5–95%")
        ax.legend(frameon=False, loc="lower left")
        fig.tight_layout()
    return fig


def tier_data(q: np.ndarray, miss: np.ndarray, in_set: np.ndarray, max_per_level: int = 50_000,
              seed: int = 0) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Split probabilities q [n, V] into members and non-members by missing-bit count (subsampled per level)."""
    rng = np.random.default_rng(seed)
    members = q[in_set]
    out: dict[int, np.ndarray] = {}
    qn, mn = q[~in_set], np.rint(miss[~in_set]).astype(int)
    for L in np.unique(mn):
        v = qn[mn == L]
        if len(v) > max_per_level:
            v = rng.choice(v, max_per_level, replace=False)
        out[int(L)] = v
    if len(members) > max_per_level:
        members = rng.choice(members, max_per_level, replace=False)
    return members, out


__all__ = ["fit_scaling", "scaling_figure", "hash_matrix_figure", "entries_histogram_figure", "topk_mass_figure",
           "tiers_figure", "tier_data", "to_png", "safe_text"]
