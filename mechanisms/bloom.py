"""`bloom`: the Bloom-filter mechanism of the post (docs/science.md §3), as a construction and as a fit.

Construction (an `mlp1` with d = m = width): token t gets a hash H(t), an h-subset
of the m hidden units, all hashes distinct. With

    E[t] = (1/w_lo) 1_H(t),  W_in = I,  b_in = -1,  W_out = -I,  b_out = 0,
    W_U[:, t] = alpha 1_H(t),  b_U[t] = -alpha h,

the residual after the block is r1_j = min(x_j, 1) = 1[j in U], U the union of the
input tokens' hashes, and z_t = alpha (|H(t) ∩ U| - h) <= 0 with equality iff H(t) ⊆ U.
The top tier is the candidate set C = {t : H(t) ⊆ U}, which always contains S.
A hidden unit of the construction fires (post > 0) iff its bit is in U, almost surely
(when w_hi > w_lo: a unit covered once by a weight of exactly w_lo sits at post = 0).

Seed-independent choices: the hashes are a uniformly random set of V distinct
h-subsets (drawn with the caller's generator); h = 0 means the Bloom optimum
`task.optimal_hash_size(m)`, or, when that h has fewer than V distinct subsets
(C(m, h) < V, e.g. m = 16, k = 5, V = 1000), the smallest larger h that has enough
(the false-positive rate is unimodal in h, so this is the best feasible h).

Fit (to any model with `W_E`, `W_in`, `W_out`, `W_U`, `b_U`), at one MLP layer l (`layer`,
default the last one): the token-to-hidden map M (V x m) the model uses, `api.token_to_hidden`:
the linear path from a token's embedding to layer l's MLP input, W_E @ W_in[l] for `mlp1` and
W_E (I + W_OV[0]) ... (I + W_OV[l]) W_in[l] for a transformer (every token reaches the MLP through
attention, the last one also directly: docs/science.md §3.1). M is split into two clusters (one
global threshold); the MINORITY cluster is the hash. Trained models learn the complemented
code (docs/science.md §4: the hash is the negative cluster and a unit fires when its bit
is NOT in the union), so no sign is assumed: `sign` = +1 if the hash is the high
cluster (a unit fires iff its bit is in U, as in the construction), -1 if it is the
low cluster (a unit fires iff its bit is not in U). The sign is read off the weights
only; activations are never used to choose it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparsebench.api import Batch, Fitted, Mechanism, Task, last_position, token_to_hidden
from sparsebench.config import check
from sparsebench.errors import UserError
from sparsebench.models.mlp import MLP, MLPConfig
from sparsebench.stats import minimize_log_scalar, two_means

PRE_HOOK, POST_HOOK = "blocks.{layer}.mlp.hook_pre", "blocks.{layer}.mlp.hook_post"  # [batch, (pos,) d_mlp]


@dataclass(frozen=True)
class BloomConfig:
    h: int = 0  # hash size (bits per token); 0 = task.optimal_hash_size(m), raised until C(m, h) >= V
    alpha: float = 20.0  # logit scale of the construction; 20 puts the next tier e^-20 below the top one
    fit_samples: int = 2048  # samples (drawn with the fit generator) to fit alpha and calibrate activations
    layer: int = -1  # the MLP layer the fit reads (negative: from the last; -1 = the last, 0 for one layer)

    def __post_init__(self) -> None:
        check("mechanism", self.h >= 0, "h", f"must be >= 0 (0 = the Bloom optimum) (got {self.h})")
        check("mechanism", self.alpha > 0 and math.isfinite(self.alpha), "alpha",
              f"must be a finite number > 0 (got {self.alpha})")
        check("mechanism", self.fit_samples >= 16, "fit_samples", f"must be at least 16 (got {self.fit_samples})")


def _task_params(task: Task) -> tuple[int, int, float]:
    """(V, k, w_lo) of a weighted-set top-k task; a UserError for any other task."""
    cfg = task.config
    if not all(hasattr(cfg, f) for f in ("V", "k", "w_lo")) or task.n_inputs != task.n_outputs:
        raise UserError(f"mechanism bloom needs a top-k weighted-set task (config with V, k, w_lo and "
                        f"n_inputs == n_outputs); got {type(task).__name__}")
    return int(cfg.V), int(cfg.k), float(cfg.w_lo)


def resolve_hash_size(task: Task, m: int, h: int) -> int:
    """The hash size used at width m: `h` if given, else the best h with at least V distinct hashes."""
    if h:
        return h
    V, _, _ = _task_params(task)
    h = task.optimal_hash_size(m)  # type: ignore[attr-defined]
    while h < m // 2 and math.comb(m, h) < V:
        h += 1
    return h


def sample_hashes(V: int, m: int, h: int, generator: torch.Generator) -> Tensor:
    """V distinct h-subsets of [m], a uniformly random such set in random order: [V, m] bool.

    Few subsets (C(m, h) <= 4 V): enumerate them all and pick V by a random permutation.
    Otherwise draw each row uniformly and redraw duplicates until all rows differ
    (equivariant under relabelling the subsets, hence uniform over distinct sets).
    """
    total = math.comb(m, h)
    if total < V:
        raise ValueError(f"only C({m}, {h}) = {total} distinct hashes for V = {V} tokens")
    if total <= 4 * V:
        combos = torch.combinations(torch.arange(m), h) if h > 0 else torch.zeros(1, 0, dtype=torch.long)
        pick = combos[torch.randperm(total, generator=generator)[:V]]  # [V, h]
        return torch.zeros(V, m, dtype=torch.bool).scatter_(1, pick, True)
    code = torch.zeros(V, m, dtype=torch.bool)
    redo = torch.arange(V)
    while redo.numel():
        idx = torch.rand(redo.numel(), m, generator=generator).argsort(dim=1)[:, :h]
        code[redo] = torch.zeros(redo.numel(), m, dtype=torch.bool).scatter_(1, idx, True)
        _, inverse = torch.unique(code.to(torch.uint8), dim=0, return_inverse=True)
        first = torch.full((V,), V, dtype=torch.long).scatter_reduce(0, inverse, torch.arange(V), "amin")
        redo = torch.nonzero(first[inverse] != torch.arange(V)).flatten()  # all but the first of each group
    return code


def union(code: Tensor, batch: Batch) -> Tensor:
    """U: the union of the hashes of each sample's tokens (tokens with weight <= 0 excluded): [batch, m] bool."""
    tokens, weights = batch.inputs["tokens"], batch.inputs["weights"]
    member = code[tokens] & (weights > 0).unsqueeze(-1)  # [batch, set, m]
    return member.any(dim=-2)


def misses(code: Tensor, U: Tensor) -> Tensor:
    """|H(t) \\ U| for every token t: [batch, V] float (0 exactly for candidates)."""
    return (~U).to(torch.float32) @ code.to(torch.float32).T


def _minority(values: Tensor) -> tuple[Tensor, bool, float]:
    """(minority-cluster mask, whether it is the high cluster, two-means R^2) of a weight matrix.

    A constant matrix (e.g. a zeroed MLP) has no clusters: an empty mask, R^2 = 0.
    """
    if values.numel() < 2 or bool((values == values.reshape(-1)[0]).all()):
        return torch.zeros_like(values, dtype=torch.bool), True, 0.0
    split = two_means(values)
    return split.minority_mask(values), split.minority_is_high, split.r2


def fit_scale(logits: Tensor, miss: Tensor) -> tuple[float, float]:
    """(alpha, mean KL(model || softmax(-alpha * miss))) minimising that KL; alpha in [1e-2, 1e3].

    The prediction's logits take integer values -alpha * c, so with n_c(sample) tokens at
    each miss count c, log-sum-exp = log sum_c n_c e^{-alpha c}: each evaluation costs
    O(batch * m), not O(batch * V). Float64 throughout (KLs near 0 differ by e^-alpha).
    """
    lp = torch.log_softmax(logits.double(), dim=-1)
    p = lp.exp()
    neg_entropy = (p * lp).sum(-1).mean().item()
    miss_l = miss.round().long()
    p_dot_miss = (p * miss_l.double()).sum(-1)  # [batch]
    counts = torch.zeros(miss.shape[0], int(miss_l.max()) + 1, dtype=torch.float64)
    counts.scatter_add_(1, miss_l.cpu(), torch.ones_like(miss_l, dtype=torch.float64).cpu())  # [batch, c]
    log_counts = counts.log().to(p.device)
    c = torch.arange(counts.shape[1], dtype=torch.float64, device=p.device)

    def kl(a: float) -> float:
        lse = torch.logsumexp(log_counts - a * c, dim=-1)
        return neg_entropy + (a * p_dot_miss + lse).mean().item()

    return minimize_log_scalar(kl, 1e-2, 1e3)


class Bloom(Mechanism):
    """Bloom filter: hidden units = union of hashes; logits = alpha (|H(t) ∩ U| - |H(t)|)."""

    Config = BloomConfig
    version = 2  # 2: the fit reads api.token_to_hidden at `layer` (a transformer's attention path included)
    families = ("topk",)

    def validate(self, task: Task, width: int) -> None:
        V, _, _ = _task_params(task)
        m = width
        check("mechanism", m >= 1, "width", f"must be at least 1 (got {m})")
        h = resolve_hash_size(task, m, self.config.h)
        field = "h" if self.config.h else "width"  # an automatic h that does not fit is the width's fault
        check("mechanism", h <= m, field, f"must be <= m={m} (got {h})")
        check("mechanism", math.comb(m, h) >= V, field,
              f"C(m={m}, h={h}) = {math.comb(m, h)} distinct hashes < V={V} tokens; "
              f"{'choose another h or a larger width' if self.config.h else 'width too small for distinct hashes'}")

    def why_not(self, model: Any) -> str | None:
        missing = [a for a in ("W_E", "W_in", "W_out", "W_U") if not hasattr(model, a)]
        if missing:
            return f"{type(model).__name__} has no {', '.join(missing)} for the fit to read"
        n = int(getattr(model, "n_layers", 0))
        if not -n <= self.config.layer < n:
            return f"bloom reads MLP layer {self.config.layer}, but the model has {n} layer(s)"
        return None

    def layer_of(self, model: Any) -> int:
        """The MLP layer the fit reads on `model` (`layer`, counted from the end when negative)."""
        return self.config.layer % int(model.n_layers)

    def construct(self, task: Task, width: int, *, generator: torch.Generator) -> MLP:
        self.validate(task, width)
        V, _, w_lo = _task_params(task)
        m = width
        h = resolve_hash_size(task, m, self.config.h)
        a = self.config.alpha
        code = sample_hashes(V, m, h, generator).to(torch.float32)  # [V, m]
        cfg = MLPConfig(d_model=m, d_mlp=m, n_layers=1)
        model = MLP(cfg, n_inputs=V, n_outputs=task.n_outputs, generator=torch.Generator().manual_seed(0))
        eye = torch.eye(m)
        with torch.no_grad():
            model.embed.W_E.copy_(code / w_lo)
            blk = model.blocks[0].mlp
            blk.W_in.copy_(eye)
            blk.b_in.fill_(-1.0)
            blk.W_out.copy_(-eye)
            blk.b_out.zero_()
            model.unembed.W_U.copy_(a * code.T)
            model.unembed.b_U.copy_(-a * code.sum(1))
        model.name = "mlp1"
        model.eval()
        model.construction_info = {"h": h, "alpha": a}  # what was built, for the record
        return model

    def theory(self, task: Task, width: int) -> dict[str, float]:
        """Closed-form scores of the construction at `width` (alpha -> infinity), for a record's "theory".

        fp_rate and kl_limit are exact expectations over hash tables and samples (see
        `bloom_theory`); fp_rate_formula is docs/science.md's textbook approximation.
        """
        self.validate(task, width)
        V, k, _ = _task_params(task)
        h = resolve_hash_size(task, width, self.config.h)
        return {"h": h, **bloom_theory(V, k, width, h)}

    @torch.no_grad()
    def fit(self, model: Any, task: Task, *, generator: torch.Generator) -> "BloomFit":
        if int(getattr(model, "n_layers", 0)) < 1:
            raise UserError("mechanism bloom needs a model with at least one MLP layer (n_layers >= 1)")
        why = self.why_not(model)
        if why:
            raise UserError(why)
        layer = self.layer_of(model)
        device = model.W_E.device
        M = token_to_hidden(model, layer).detach().float().cpu()  # [V, m]
        code, high, r2 = _minority(M)  # [V, m] bool: the hash of each token
        sign = 1 if high else -1
        N = (model.W_out[layer] @ model.W_U).detach().float().cpu()  # [m, V]
        out_code, _, r2_out = _minority(N)
        fitted = BloomFit(model, code.to(device), out_code.T.contiguous().to(device), sign, r2, r2_out, layer)

        batch = task.sample(self.config.fit_samples, generator=generator, device=device)
        logits = model(**batch.inputs)
        fitted.alpha_fit, fitted.kl_fit = fit_scale(logits, fitted.misses(batch))
        fitted.mechanism = self.name or "bloom"
        return fitted


class BloomFit(Fitted):
    """A Bloom filter read off a model: hashes, output code, sign, fitted logit scale.

    Predicts everything the probes ask for: a token code (`api.HasTokenCode`), the hidden units'
    activity (`PredictsHidden`), the candidate set and logits (`PredictsCandidates`,
    `PredictsOutputs`) and an idealised hidden layer (`Patchable`); controls can swap its codes
    for wrong ones (`Recodable`)."""

    why_not = "bloom needs a model with an MLP layer"

    def __init__(self, model: Any, code: Tensor, out_code: Tensor, sign: int, r2: float, r2_out: float,
                 layer: int = 0):
        self.model = model
        self.code = code  # [V, m] bool: H(t)
        self.out_code = out_code  # [V, m] bool: minority mask of W_out[layer] @ W_U, transposed
        self.sign = sign  # +1: hash = high cluster of the token-to-hidden map, unit fires iff in U; -1: iff NOT
        self.r2 = r2  # two-means R^2 of the token-to-hidden map (bimodality)
        self.r2_out = r2_out  # two-means R^2 of W_out[layer] @ W_U
        self.layer = layer  # the MLP layer whose units the code names
        self.hidden_hook = POST_HOOK.format(layer=layer)  # where those units are (the hidden-code probe reads it)
        self.alpha_fit = float("nan")  # logit scale minimising KL(model || prediction) on the fit batch
        self.kl_fit = float("nan")  # that KL

    def summary(self) -> dict[str, float | int | str]:
        sizes = self.code.sum(1).float()
        return {
            "h_mean": sizes.mean().item(),
            "h_std": sizes.std().item() if sizes.numel() > 1 else 0.0,
            "sign": self.sign,
            "r2": self.r2,
            "r2_out": self.r2_out,
            "alpha_fit": self.alpha_fit,
            "kl_fit": self.kl_fit,
            "n_distinct_hashes": int(torch.unique(self.code.to(torch.uint8), dim=0).shape[0]),
            "n_empty_hashes": int((sizes == 0).sum()),
            "layer": self.layer,
        }

    def token_code(self) -> Tensor:
        return self.code

    def output_code(self) -> Tensor:
        return self.out_code

    def union(self, batch: Batch) -> Tensor:
        """U, the union of the sample's hashes: [batch, m] bool."""
        return union(self.code, batch)

    def misses(self, batch: Batch) -> Tensor:
        """|H_out(t) \\ U| for every output token: how many of its output-side bits the union misses [batch, V].

        The readout is read off the output side (`out_code`, from W_out @ W_U), the union off the input side
        (`code`, from the token-to-hidden map): an explanation that got either side wrong predicts wrong outputs."""
        return misses(self.out_code, self.union(batch))

    def hidden_active(self, batch: Batch) -> Tensor:
        U = self.union(batch)
        return U if self.sign > 0 else ~U

    def predict_candidates(self, batch: Batch) -> Tensor:
        return self.misses(batch) == 0

    def predict_logits(self, batch: Batch) -> Tensor:
        return -self.alpha_fit * self.misses(batch)

    def _with_codes(self, code: Tensor, out_code: Tensor) -> "BloomFit":
        """This fit with other codes (for control explanations): same sign, scale and statistics."""
        other = BloomFit(self.model, code, out_code, self.sign, self.r2, self.r2_out, self.layer)
        other.alpha_fit, other.kl_fit, other.mechanism = self.alpha_fit, float("nan"), self.mechanism
        return other

    def permuted_units(self, perm: Tensor) -> "BloomFit":
        """The hashes with hidden unit j called perm[j], on both sides (`api.Recodable`)."""
        perm = perm.to(self.code.device)
        return self._with_codes(self.code[:, perm], self.out_code[:, perm])

    def random_code(self, generator: torch.Generator) -> "BloomFit":
        """A random hash of the same size for every token, the same on both sides (`api.Recodable`)."""
        sizes = self.code.sum(1).cpu()  # [V]
        m = self.code.shape[1]
        order = torch.rand(self.code.shape[0], m, generator=generator).argsort(dim=1)  # a random ranking per token
        code = order.argsort(dim=1) < sizes.unsqueeze(1)  # the `size` first units of that ranking
        code = code.to(self.code.device)
        return self._with_codes(code, code.clone())

    def ideal_activation(self, batch: Batch) -> tuple[str, Tensor]:
        """The hidden layer with the ReLU's gate replaced by the predicted union gate: [batch, d_mlp].

        post = gate * pre, gate = hidden_active (U, or its complement for sign -1). ReLU is
        linear on its open side, so this differs from the model only where the gate is
        wrong: it tests exactly "the active units are the union of the hashes". On the
        construction it is exact (gate = U gives ReLU(x - 1), the overflow hook_post carries).
        """
        pre_hook = PRE_HOOK.format(layer=self.layer)
        with torch.no_grad():
            _, cache = self.model.run_with_cache(**batch.inputs, names_filter=[pre_hook])
        pre = last_position(cache[pre_hook]).float()  # [batch, d_mlp]
        return self.hidden_hook, pre * self.hidden_active(batch).to(pre.device)


# ----- closed-form predictions for the construction ----------------------------------------------


def _log_comb_prefix(a: int, n: int) -> Tensor:
    """log C(a, j) for j = 0..n (float64; -inf where j > a): [n + 1]."""
    i = torch.arange(n, dtype=torch.float64)
    rem = float(a) - i
    terms = torch.where(rem > 0, rem.clamp_min(1).log() - (i + 1).log(), torch.full_like(i, -math.inf))
    return torch.cat([torch.zeros(1, dtype=torch.float64), terms.cumsum(0)])


def union_size_pmf(m: int, h: int, k: int, distinct: bool = True) -> Tensor:
    """P(|U| = u), u = 0..m, for the union of k uniformly random h-subsets of [m]: [m + 1] float64.

    distinct=True: the k subsets are drawn without replacement (the construction's
    hashes are distinct); False: independently. Exact (a Markov chain on |U|; the
    i subsets drawn so far all lie inside U, which is all distinctness needs).
    """
    total = math.comb(m, h)
    pmf = [0.0] * (m + 1)
    pmf[0] = 1.0
    for i in range(k):
        denom = total - (i if distinct else 0)
        new = [0.0] * (m + 1)
        for u, pu in enumerate(pmf):
            if pu == 0.0:
                continue
            for j in range(0, min(h, m - u) + 1):
                ways = math.comb(m - u, j) * math.comb(u, h - j)
                if j == 0 and distinct:
                    ways -= i
                if ways > 0:
                    new[u + j] += pu * (ways / denom)
        pmf = new
    return torch.tensor(pmf, dtype=torch.float64)


def bloom_theory(V: int, k: int, m: int, h: int) -> dict[str, float]:
    """What the construction (alpha -> infinity) should score, exactly, over random hash tables and samples.

    - fp_rate_formula: the textbook (1 - (1 - h/m)^k)^h of docs/science.md §3, which treats
      the h bits of a query hash as independent (it is slightly low for h-subsets).
    - fp_rate_indep: exact per-non-member rate for independent uniform h-subset hashes,
      E[C(|U|, h)] / C(m, h).
    - fp_rate: exact for this construction (V distinct hashes): given U, the V - k
      non-member hashes are a uniform draw without replacement from the C(m, h) - k
      subsets other than the members', C(|U|, h) - k of which lie inside U.
    - kl_limit = E[log(|C| / k)], tv_limit = E[(|C| - k) / |C|], fp_per_sample = E[|C| - k],
      with |C| - k hypergeometric given |U| (exact).
    """
    total = math.comb(m, h)
    n, N = V - k, total - k
    p_u = union_size_pmf(m, h, k, distinct=True)
    p_u_ind = union_size_pmf(m, h, k, distinct=False)
    fp = kl = tv = 0.0
    fp_ind = 0.0
    x = torch.arange(n + 1, dtype=torch.float64)
    lc_N = _log_comb_prefix(N, n)[n]
    for u in range(m + 1):
        fp_ind += float(p_u_ind[u]) * (math.comb(u, h) / total)
        pu = float(p_u[u])
        if pu == 0.0:
            continue
        K = math.comb(u, h) - k  # non-member subsets inside U
        fp += pu * (K / N if N > 0 else 0.0)
        logpmf = _log_comb_prefix(K, n) + _log_comb_prefix(N - K, n).flip(0) - lc_N  # x = 0..n
        pmf = logpmf.exp()
        pmf = pmf / pmf.sum()
        kl += pu * float((pmf * torch.log((k + x) / k)).sum())
        tv += pu * float((pmf * x / (k + x)).sum())
    return {
        "fp_rate_formula": (1 - (1 - h / m) ** k) ** h,
        "fp_rate_indep": fp_ind,
        "fp_rate": fp,
        "fp_per_sample": fp * n,
        "kl_limit": kl,
        "tv_limit": tv,
    }
