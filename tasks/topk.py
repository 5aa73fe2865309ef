"""The top-k tasks of the Bloom-filter post (docs/science.md §1).

A sample is a set S of k distinct tokens drawn uniformly from [V] with weights
w_i ~ U[w_lo, w_hi]; the model must put the target distribution on S:
uniform (`topk-uniform`) or a function of the weights (`topk-conditional`).
The target is kept sparse, aligned with the input tokens ([batch, k]), so no
batch x vocab target is ever built.

Sampling turns uniforms into samples with Floyd's algorithm, vectorised over the
batch: k steps of O(batch * k) work, exactly uniform k-subsets, then a random
order (the sequence form for transformers reads the set as a sequence).

False positives (one definition, used everywhere): a token j outside S is a
false positive of a sample when q_j >= FP_TIER * min_{i in S} q_i, FP_TIER = 1/2:
it sits in the model's top tier next to the true members (`TopKUniform.top_tier`,
which the behaviour probes use too). `fp_rate` divides the count by V - k, so it
is comparable with the Bloom formula's per-non-member rate.

Family "topk": inputs `tokens` and `weights` ([batch, k]), a target distribution on
the input tokens ([batch, k]); mechanisms and probes that understand this family
may rely on `top_tier` and `target_probs`.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from sparsebench.api import Batch, Task
from sparsebench.config import check
from sparsebench.errors import UserError
from sparsebench.stats import two_means

FP_TIER = 0.5  # a non-member is a false positive if q_j >= FP_TIER * min_{i in S} q_i


@dataclass(frozen=True)
class TopKUniformConfig:
    V: int = 1000  # vocabulary size (inputs and outputs)
    k: int = 5  # tokens per sample, 1 <= k <= V
    w_lo: float = 1.0  # lowest input weight (> 0)
    w_hi: float = 2.0  # highest input weight (>= w_lo)

    def __post_init__(self) -> None:
        where = "task"
        check(where, self.V >= 2, "V", f"must be at least 2 (got {self.V})")
        check(where, self.k >= 1, "k", f"must be at least 1 (got {self.k})")
        check(where, self.k <= self.V, "k", f"must be at most V={self.V} (got {self.k})")
        check(where, self.w_lo > 0, "w_lo", f"must be > 0 (got {self.w_lo})")
        check(where, self.w_lo <= self.w_hi, "w_hi", f"must be >= w_lo={self.w_lo} (got {self.w_hi})")


@dataclass(frozen=True)
class TopKConditionalConfig(TopKUniformConfig):
    target: str = "proportional"  # "proportional" (w_i / sum w), "softmax" (exp(beta w_i)), or "module:function"
    beta: float = 1.0  # inverse temperature of the "softmax" target

    def __post_init__(self) -> None:
        super().__post_init__()
        check("task", self.target in TARGETS or ":" in self.target, "target",
              f"must be one of {', '.join(TARGETS)} or 'module:function' (got {self.target!r})")


def _proportional(weights: Tensor, cfg: TopKConditionalConfig) -> Tensor:
    return weights / weights.sum(-1, keepdim=True)


def _softmax(weights: Tensor, cfg: TopKConditionalConfig) -> Tensor:
    return torch.softmax(cfg.beta * weights, dim=-1)


TARGETS: dict[str, Callable[[Tensor, TopKConditionalConfig], Tensor]] = {
    "proportional": _proportional,
    "softmax": _softmax,
}


def resolve_target(spec: str) -> Callable[[Tensor, TopKConditionalConfig], Tensor]:
    """A built-in target name, or 'module:function' taking (weights [..., k], config) -> probs [..., k]."""
    if spec in TARGETS:
        return TARGETS[spec]
    module, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"invalid task config: target: cannot import {spec!r} ({e})") from None


def floyd_sample(u: Tensor, V: int) -> Tensor:
    """k distinct tokens from [V] per row, uniformly; u: [..., k] uniforms in [0, 1) -> [..., k] long."""
    k = u.shape[-1]
    chosen = torch.empty(u.shape, dtype=torch.long, device=u.device)
    for i, j in enumerate(range(V - k, V)):
        t = (u[..., i] * (j + 1)).long().clamp_(max=j)  # uniform in [0, j]
        if i:
            taken = (chosen[..., :i] == t.unsqueeze(-1)).any(-1)
            t = torch.where(taken, torch.full_like(t, j), t)
        chosen[..., i] = t
    return chosen


METRICS: dict[str, str] = {  # the top-k metrics every top-k task reports, with their directions
    "kl": "lower", "tv": "lower", "topk_mass": "higher", "exact_set": "higher", "fp_per_sample": "lower",
    "fp_rate": "lower", "fp_any": "lower",
}


class TopKUniform(Task):
    """Put probability 1/k on each of the k input tokens."""

    Config = TopKUniformConfig
    version = 1
    family = "topk"
    # weight_leak: within-sample correlation of log q with the input weights; 0 is perfect (k > 1 only).
    metric_directions = {**METRICS, "weight_leak": "zero"}  # type: ignore[dict-item]

    @property
    def n_inputs(self) -> int:
        return self.config.V

    @property
    def n_outputs(self) -> int:
        return self.config.V

    @property
    def seq_len(self) -> int:
        return self.config.k

    def target_probs(self, weights: Tensor) -> Tensor:
        """Target probability of each input token: weights [..., k] -> [..., k]."""
        return torch.full_like(weights, 1.0 / self.config.k)

    def sample(self, n: int, *, generator: torch.Generator, device: torch.device | str = "cpu") -> Batch:
        return self._from_uniforms(self._uniforms(n, generator, device))

    def _uniforms(self, n: int, generator: torch.Generator, device: torch.device | str) -> Tensor:
        # All uniforms of a batch in one draw: k for the set, k for the order, k for the weights.
        # float64 keeps the token index unbiased for large V. Drawn on the generator's own device
        # and moved: any generator works with any device, and a CPU generator gives the same
        # samples whether the batch lands on the CPU or a GPU.
        u = torch.rand(n, 3 * self.config.k, generator=generator, device=generator.device, dtype=torch.float64)
        return u.to(device)

    def _from_uniforms(self, u: Tensor) -> Batch:
        """u: [..., n, 3k] uniforms -> a batch with the same leading dims (rows are independent, so a
        speed backend may transform several instances' uniforms at once: `accel.sampling`)."""
        c = self.config
        tokens = floyd_sample(u[..., : c.k], c.V)  # [..., n, k]
        # A random permutation per sample. Stable, so that tied uniforms (probability ~k^2 2^-54 per
        # sample) are ordered by position on every device and by the native sampler alike.
        order = u[..., c.k: 2 * c.k].argsort(dim=-1, stable=True)
        tokens = tokens.gather(-1, order)
        weights = (c.w_lo + (c.w_hi - c.w_lo) * u[..., 2 * c.k:]).float()  # [..., n, k]
        return Batch({"tokens": tokens, "weights": weights}, self.target_probs(weights))

    def sparse_kl_target(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(token index, target probability) of the sparse KL that `loss` computes: lets the trainer
        fuse the unembedding with the loss (sparsebench/fused.py). Used only while `loss` is this one."""
        return batch.inputs["tokens"], batch.target

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """KL(p* || softmax(logits)) per sample, using only the k target entries.

        logits: [..., batch, V]; returns [..., batch].
        """
        p = batch.target  # [..., batch, k]
        z_s = logits.gather(-1, batch.inputs["tokens"])  # [..., batch, k]
        lse = torch.logsumexp(logits.float(), dim=-1)
        entropy_term = torch.xlogy(p, p).sum(-1)
        return entropy_term - (p * z_s.float()).sum(-1) + lse

    def top_tier(self, logits: Tensor, batch: Batch) -> Tensor:
        """The model's top tier: the members S plus every token with q_j >= FP_TIER * min_S q. -> [batch, V] bool."""
        tokens = batch.inputs["tokens"]
        q = torch.softmax(logits.float(), dim=-1)
        min_in = q.gather(-1, tokens).min(-1, keepdim=True).values
        return (q >= FP_TIER * min_in).scatter(-1, tokens, True)

    @torch.no_grad()
    def metrics(self, logits: Tensor, batch: Batch) -> dict[str, float]:
        """KL, TV, top-k mass, exact-set accuracy and false positives, averaged over the batch."""
        k, V = self.config.k, self.config.V
        logits = logits.float()
        tokens, p = batch.inputs["tokens"], batch.target
        logq = torch.log_softmax(logits, dim=-1)  # [batch, V]
        if torch.isnan(logq).any():  # NaN or +inf logits: no number, never a perfect one (NaN fails every >=)
            return {m: math.nan for m in self.metric_directions}
        q = logq.exp()
        q_s = q.gather(-1, tokens)  # [batch, k]
        mass = q_s.sum(-1)
        in_s = torch.zeros_like(q, dtype=torch.bool).scatter_(-1, tokens, True)
        q_out = q.masked_fill(in_s, -1.0)
        max_out = q_out.max(-1).values
        min_in = q_s.min(-1).values
        fp = (q_out >= FP_TIER * min_in.unsqueeze(-1)).sum(-1).float()
        tv = 0.5 * ((p - q_s).abs().sum(-1) + (1 - mass).clamp(min=0))
        out = {
            "kl": self.loss(logits, batch).mean().item(),
            "tv": tv.mean().item(),
            "topk_mass": mass.mean().item(),
            "exact_set": (min_in > max_out).float().mean().item(),
            "fp_per_sample": fp.mean().item(),
            "fp_rate": (fp / max(V - k, 1)).mean().item(),
            "fp_any": (fp > 0).float().mean().item(),
        }
        if k > 1:
            name, ref = self._within_set_reference(batch)
            lq = logq.gather(-1, tokens)
            a, b = lq - lq.mean(-1, keepdim=True), ref - ref.mean(-1, keepdim=True)
            denom = (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)
            out[name] = ((a * b).sum(-1) / denom).mean().item()
        return out

    EXTRA_TOKENS = (1, 2, 5)  # finding 6: sets of k + j tokens (the uniform target only: "spread uniformly")
    uniform_target = True
    EXTRA_SAMPLES = 2048  # samples per set size for finding 6

    @torch.no_grad()
    def behaviour(self, model: Any, batch: Batch, *, generator: torch.Generator) -> dict[str, float]:
        """Descriptive numbers for the post's findings 4 and 6 (recorded, never ranked); docs/science.md §6.

        Finding 4, from the held-out `batch`: the top-k mass of each sample split into two clusters
        (exact 1-D two-means): `mass_split_r2` (1: two points), `mass_low_share` (samples in the low
        cluster), `mass_low_mean`, `mass_high_mean`, and how the low cluster lines up with false
        positives: `low_with_fp` and `high_with_fp` (share of each cluster's samples with at least one).
        Finding 6, from fresh sets of k + j tokens (j in EXTRA_TOKENS, weights as usual): `extra{j}_mass`
        (probability on the k + j given tokens) and `extra{j}_evenness` (min over max of their
        probabilities, averaged over samples: 1 is uniform over them), on EXTRA_SAMPLES fresh sets each.
        """
        k = self.config.k
        q = torch.softmax(model(**batch.inputs).float(), dim=-1)
        mass = q.gather(-1, batch.inputs["tokens"]).sum(-1).double()
        fp = self.top_tier(torch.log(q.clamp_min(1e-45)), batch).sum(-1) > k  # [batch]: any false positive
        out: dict[str, float] = {}
        if bool((mass == mass[0]).all()):
            out.update(mass_split_r2=float("nan"), mass_low_share=0.0)
        else:
            split = two_means(mass)
            low = mass <= split.threshold
            out.update(mass_split_r2=split.r2, mass_low_share=low.double().mean().item(), mass_low_mean=split.low_mean,
                       mass_high_mean=split.high_mean,
                       low_with_fp=fp[low].double().mean().item() if low.any() else float("nan"),
                       high_with_fp=fp[~low].double().mean().item() if (~low).any() else float("nan"))
        for j in self.EXTRA_TOKENS if self.uniform_target else ():
            if k + j > self.config.V:
                continue
            more = self._sets(self.EXTRA_SAMPLES, k + j, generator, batch.target.device)
            q = torch.softmax(model(**more.inputs).float(), dim=-1).gather(-1, more.inputs["tokens"])
            out[f"extra{j}_mass"] = q.sum(-1).mean().item()
            out[f"extra{j}_evenness"] = (q.min(-1).values / q.max(-1).values.clamp_min(1e-30)).mean().item()
        return out

    def _sets(self, n: int, size: int, generator: torch.Generator, device: torch.device | str) -> Batch:
        """n sets of `size` distinct tokens with the task's weights (any size; target uniform over the set)."""
        c = self.config
        u = torch.rand(n, 2 * size, generator=generator, dtype=torch.float64).to(device)
        tokens = floyd_sample(u[:, :size], c.V)
        weights = (c.w_lo + (c.w_hi - c.w_lo) * u[:, size:]).float()
        return Batch({"tokens": tokens, "weights": weights}, torch.full_like(weights, 1.0 / size))

    def _within_set_reference(self, batch: Batch) -> tuple[str, Tensor]:
        """Uniform task: correlate log q_i with the input weight w_i within each sample.

        The target ignores the weights, so any correlation is the weights leaking into
        the output (the post saw it dominate the remaining error): 0 is perfect.
        """
        return "weight_leak", batch.inputs["weights"]

    def bloom_fp_rate(self, m: int, h: int) -> float:
        """The Bloom filter's false-positive probability per non-member (docs/science.md §3)."""
        return (1 - (1 - h / m) ** self.config.k) ** h

    def optimal_hash_size(self, m: int) -> int:
        """The hash size h in [1, m] that minimises `bloom_fp_rate` (the standard formula) at width m.

        The textbook optimum (m / k) ln 2 is the large-k limit of this argmin; at small k
        it overshoots (k=5, m=128: 18 against 15), so the argmin itself is used. The
        standard formula treats a hash's h bits as independent draws; the exact rate
        for distinct bits is in `sparsebench.mechanisms.bloom.bloom_theory` (see docs/science.md).
        """
        return min(range(1, m + 1), key=lambda h: self.bloom_fp_rate(m, h))


class TopKConditional(TopKUniform):
    """Put the target distribution p(w) on the k input tokens (proportional to w by default)."""

    Config = TopKConditionalConfig
    version = 1
    uniform_target = False  # finding 6 is about the uniform target
    # target_corr: within-sample correlation of log q with the target's log p; 1 is perfect (k > 1 only).
    metric_directions = {**METRICS, "target_corr": "higher"}  # type: ignore[dict-item]

    def __init__(self, config: TopKConditionalConfig):
        super().__init__(config)
        self._target = resolve_target(config.target)

    def target_probs(self, weights: Tensor) -> Tensor:
        p = self._target(weights, self.config)
        if p.shape != weights.shape:
            raise UserError(f"target function {self.config.target!r} returned shape {tuple(p.shape)}, "
                            f"expected {tuple(weights.shape)}")
        return p

    def _within_set_reference(self, batch: Batch) -> tuple[str, Tensor]:
        """Conditional task: correlate log q_i with the target's log p_i (1 = the ratios are right)."""
        return "target_corr", batch.target.clamp_min(1e-12).log()
