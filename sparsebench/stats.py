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
- Intervals over seeds and chunks: `mean_ci` (a t interval of a mean), `paired_diff_ci` (of a
  mean paired difference), both on `t_quantile` (Student's t, computed here: no SciPy), and
  `sign_test_p` (the exact two-sided sign test of a paired comparison).
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


def minimize_log_scalar(f: Callable[[float], float], lo: float, hi: float, iters: int = 20) -> tuple[float, float]:
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


# ----- intervals over seeds and chunks ---------------------------------------------------------


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with `df` degrees of freedom (p in (0.5, 1)), to ~1e-9.

    No scipy: the CDF is integrated from the density (Simpson's rule in the variable x = t / sqrt(df + t^2),
    which maps the whole line onto (-1, 1)) and inverted by bisection.
    """
    if not (0.5 < p < 1) or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1 (got p={p}, df={df})")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf_above_zero(t: float, n: int = 2000) -> float:  # P(0 < T < t)
        h = t / n
        dens = [math.exp(log_c - (df + 1) / 2 * math.log1p((i * h) ** 2 / df)) for i in range(n + 1)]
        return h / 3 * (dens[0] + dens[-1] + 4 * sum(dens[1:-1:2]) + 2 * sum(dens[2:-1:2]))

    lo, hi = 0.0, 1.0
    while 0.5 + cdf_above_zero(hi) < p:
        hi *= 2
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 + cdf_above_zero(mid) < p else (lo, mid)
    return (lo + hi) / 2


_T975: dict[int, float] = {}


def mean_ci(values: list[float] | Tensor, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper) of a t-interval for the mean of `values` (NaNs dropped); the bounds are NaN for
    fewer than two values (a spread of one value does not exist)."""
    xs = [float(v) for v in (values.tolist() if isinstance(values, Tensor) else values) if not math.isnan(float(v))]
    if not xs:
        return math.nan, math.nan, math.nan
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, math.nan, math.nan
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    key = (len(xs) - 1) if level == 0.95 else None
    if key is not None and key in _T975:
        t = _T975[key]
    else:
        t = t_quantile(0.5 + level / 2, len(xs) - 1)
        if key is not None:
            _T975[key] = t
    half = t * sd / math.sqrt(len(xs))
    return m, m - half, m + half


def paired_diff_ci(a: list[float], b: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lower, upper) of the t-interval of the paired differences a_i - b_i (pairs with a NaN dropped)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths (got {len(a)} and {len(b)})")
    return mean_ci([x - y for x, y in zip(a, b) if not (math.isnan(x) or math.isnan(y))], level)


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test: P(a split at least as uneven as wins : losses | a fair coin), ties left out."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)
