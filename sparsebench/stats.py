"""Small numerical helpers shared by mechanisms and probes.

- `two_means`: the exact 1-D two-cluster split (k-means with k=2 is exact in 1-D:
  the optimal split is contiguous in sorted order, so scanning every split point
  finds the global optimum).
- `minimize_log_scalar`: golden-section search of a unimodal function of a
  positive scale, in log space (used to fit logit scales such as Bloom's alpha).
- `kl_logits`: KL(softmax(a) || softmax(b)) per sample.
- Reading models: `input_sum` (the weighted sum of input embeddings) and
  `final_residual` (the last block's residual at the readout position).
- `ResidualFit`: the base of explanations that predict the final residual.
- Across seeds: `mean_ci` (mean and a t-based confidence interval), `paired_diff_ci`
  (the mean paired difference with its t interval, and a sign test), built on
  `t_ppf` (Student's t quantile, computed here: no SciPy dependency).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from sparsebench.api import Batch, Fitted, last_position


@dataclass(frozen=True)
class TwoMeans:
    threshold: float  # midpoint between the largest low value and the smallest high value
    low_mean: float  # mean of the low cluster
    high_mean: float  # mean of the high cluster
    r2: float  # between-cluster / total sum of squares (1 = two points; one Gaussian gives 2/pi ~ 0.64)
    minority_is_high: bool  # the high cluster has fewer members than the low one (ties: False)
    n_high: int  # members of the high cluster

    def minority_mask(self, values: Tensor) -> Tensor:
        """Bool mask (same shape as `values`) of the minority cluster."""
        v = values.detach().double()  # compare in the precision the threshold was computed in
        return v > self.threshold if self.minority_is_high else v <= self.threshold


def two_means(values: Tensor) -> TwoMeans:
    """Exact two-cluster split of the entries of `values` (any shape), maximising the between-cluster SS.

    Sort once, then every split point i (low = the i smallest) has between-cluster
    SS = n1 n2 / n (mean1 - mean2)^2 from cumulative sums: O(n log n), no Python loop.
    Computed in float64. Needs at least two distinct values.
    """
    v = values.detach().reshape(-1).to(torch.float64).cpu()
    n = v.numel()
    if n < 2:
        raise ValueError(f"two_means needs at least 2 values (got {n})")
    s, _ = v.sort()
    if s[0] == s[-1]:
        raise ValueError("two_means needs at least two distinct values (all values are equal)")
    c = s.cumsum(0)
    total = c[-1]
    n1 = torch.arange(1, n, dtype=torch.float64)  # low-cluster sizes 1..n-1
    n2 = n - n1
    mean1 = c[:-1] / n1
    mean2 = (total - c[:-1]) / n2
    between = n1 * n2 / n * (mean1 - mean2) ** 2
    between = torch.where(s[1:] > s[:-1], between, torch.full_like(between, -1.0))  # split only between distinct values
    i = int(between.argmax())
    tss = float(((v - v.mean()) ** 2).sum())
    n_low = i + 1
    return TwoMeans(
        threshold=float((s[i] + s[i + 1]) / 2),
        low_mean=float(mean1[i]),
        high_mean=float(mean2[i]),
        r2=float(between[i]) / tss,
        minority_is_high=(n - n_low) < n_low,
        n_high=n - n_low,
    )


def minimize_log_scalar(f: Callable[[float], float], lo: float, hi: float, iters: int = 28) -> tuple[float, float]:
    """Minimise f over [lo, hi] (lo > 0) by golden-section search in log space: (argmin, min).

    Exact for unimodal f (e.g. a cross-entropy in a logit scale, which is convex in the
    scale). A coarse grid first keeps it sane when f is not quite unimodal. The result
    may be an endpoint: callers should say so if that matters.
    """
    a, b = math.log(lo), math.log(hi)
    n = 9  # coarse grid points; golden section then shrinks the bracket by 0.618^iters
    grid = [a + (b - a) * i / (n - 1) for i in range(n)]
    vals = [f(math.exp(g)) for g in grid]
    j = min(range(n), key=vals.__getitem__)
    a, b = grid[max(j - 1, 0)], grid[min(j + 1, n - 1)]
    best = (math.exp(grid[j]), vals[j])
    g = (math.sqrt(5) - 1) / 2
    x1, x2 = b - g * (b - a), a + g * (b - a)
    f1, f2 = f(math.exp(x1)), f(math.exp(x2))
    for _ in range(iters):
        if f1 <= f2:
            b, x2, f2 = x2, x1, f1
            x1 = b - g * (b - a)
            f1 = f(math.exp(x1))
        else:
            a, x1, f1 = x1, x2, f2
            x2 = a + g * (b - a)
            f2 = f(math.exp(x2))
    for x, fx in ((x1, f1), (x2, f2)):
        if fx < best[1]:
            best = (math.exp(x), fx)
    return best


def kl_logits(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(softmax(p_logits) || softmax(q_logits)) over the last dim: [..., V] -> [...].

    Computed in float64 (returned as float64): scale fits compare KLs that differ by
    e^-alpha, far below float32 resolution when the two distributions nearly agree.
    """
    lp = torch.log_softmax(p_logits.double(), dim=-1)
    lq = torch.log_softmax(q_logits.double(), dim=-1)
    return (lp.exp() * (lp - lq)).sum(-1)


def kl_from(p_logits: Tensor) -> Callable[[Tensor], Tensor]:
    """q_logits -> KL(softmax(p_logits) || softmax(q_logits)) per sample, with p's terms computed once.

    For scale searches, which evaluate many q against one fixed p (float64, like `kl_logits`).
    """
    lp = torch.log_softmax(p_logits.double(), dim=-1)
    p = lp.exp()
    neg_entropy = (p * lp).sum(-1)
    return lambda q_logits: neg_entropy - (p * torch.log_softmax(q_logits.double(), dim=-1)).sum(-1)


# ----- reading models -------------------------------------------------------------------------


def input_sum(model: Any, batch: Batch) -> Tensor:
    """x = sum_i w_i W_E[t_i]: the weighted sum of the input tokens' embeddings, [batch, d_model].

    For `mlp1` this is exactly `blocks.0.hook_resid_pre`; for a sequence model it is
    the embedding-level summary of the input (positional embeddings excluded).
    """
    tokens, weights = batch.inputs["tokens"], batch.inputs["weights"]
    W_E = model.W_E.detach()
    return torch.einsum("bs,bsd->bd", weights.to(W_E.dtype), W_E[tokens])


def final_residual_hook(model: Any) -> str | None:
    """Name of the final residual hook (`blocks.{L-1}.hook_resid_post`), None for a 0-layer model."""
    n = int(model.n_layers)
    return f"blocks.{n - 1}.hook_resid_post" if n > 0 else None


@torch.no_grad()
def final_residual(model: Any, batch: Batch) -> tuple[Tensor, Tensor]:
    """(logits [batch, V], final residual at the readout position [batch, d_model]).

    A 0-layer model's final residual is its input sum (see `input_sum`).
    """
    name = final_residual_hook(model)
    if name is None:
        return model(**batch.inputs), input_sum(model, batch)
    logits, cache = model.run_with_cache(**batch.inputs, names_filter=lambda n: n == name)
    return logits, last_position(cache[name])


class ResidualFit(Fitted):
    """An explanation that predicts the final residual (`residual`); the logits and the patch follow from it."""

    def __init__(self, model: Any):
        self.model = model
        self.hook = final_residual_hook(model)  # where the idealised residual goes (None for 0 layers)

    def residual(self, batch: Batch) -> Tensor:
        """The predicted final residual at the readout position: [batch, d_model]."""
        raise NotImplementedError

    def predict_logits(self, batch: Batch) -> Tensor:
        return self.residual(batch) @ self.model.W_U.detach() + self.model.b_U.detach()

    def ideal_activation(self, batch: Batch) -> tuple[str, Tensor] | None:
        return None if self.hook is None else (self.hook, self.residual(batch))


# ----- across seeds: means, confidence intervals, paired comparisons --------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1 + num * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), x in [0, 1]."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1) / (a + b + 2):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1 - math.exp(log_front) * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t with `df` degrees of freedom (bisection on `t_cdf`, to 1e-12)."""
    if not 0 < q < 1 or df <= 0:
        raise ValueError(f"t_ppf needs 0 < q < 1 and df > 0 (got q={q}, df={df})")
    if q < 0.5:
        return -t_ppf(1 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


@dataclass(frozen=True)
class MeanCI:
    mean: float  # sample mean (NaN when there are no values)
    lo: float  # lower end of the t interval (NaN for fewer than two values)
    hi: float  # upper end
    n: int  # values used (NaNs dropped)
    sd: float  # sample standard deviation, ddof = 1 (NaN for fewer than two values)


def _finite(values: Any) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def mean_ci(values: Any, level: float = 0.95) -> MeanCI:
    """Mean and two-sided t confidence interval at `level` of `values` (NaNs and None dropped)."""
    x = _finite(values)
    n = len(x)
    if n == 0:
        return MeanCI(math.nan, math.nan, math.nan, 0, math.nan)
    mean = sum(x) / n
    if n < 2:
        return MeanCI(mean, math.nan, math.nan, n, math.nan)
    sd = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    half = t_ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return MeanCI(mean, mean - half, mean + half, n, sd)


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test: P(a split at least this uneven | fair coin), ties left out."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


@dataclass(frozen=True)
class PairedDiff:
    mean: float  # mean of a - b over the pairs
    lo: float  # t interval of that mean (NaN for fewer than two pairs)
    hi: float
    n: int  # complete pairs used
    wins: int  # pairs with a > b
    losses: int  # pairs with a < b
    sign_p: float  # two-sided sign test p-value (ties left out)

    @property
    def verdict(self) -> str:
        """"a" if the interval lies above 0, "b" if below, "tie" otherwise (including too few pairs)."""
        if self.lo > 0:
            return "a"
        if self.hi < 0:
            return "b"
        return "tie"


def paired_diff_ci(a: Any, b: Any, level: float = 0.95) -> PairedDiff:
    """Paired comparison of `a` and `b` (equal-length sequences, pair i = the same seed): the mean
    difference a - b with its t interval at `level`, and the sign test. Pairs with a NaN are dropped."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"paired_diff_ci needs pairs: {len(a)} values against {len(b)}")
    pairs = [(float(x), float(y)) for x, y in zip(a, b) if x is not None and y is not None
             and not math.isnan(float(x)) and not math.isnan(float(y))]
    ci = mean_ci([x - y for x, y in pairs], level)
    wins = sum(x > y for x, y in pairs)
    losses = sum(x < y for x, y in pairs)
    return PairedDiff(ci.mean, ci.lo, ci.hi, ci.n, wins, losses, sign_test_p(wins, losses))
