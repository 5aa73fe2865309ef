"""An example sparsebench plugin: a top-k task with its own sampling, and a task family of its own.

- `topk-evens`: the built-in top-k task, but sets are drawn from the even tokens only. It overrides
  `sample` and nothing else, so whatever trains on it must see even tokens only.
- `threshold-bits` (family "bits"): x in {0,1}^n, K labels y_j = [at least 2 of x's bits in the j-th
  fixed subset are set]; loss BCE; metrics bit accuracy (higher), BCE (lower), exact-vector
  accuracy (higher). `bits-mlp` is a one-layer ReLU net for it with TransformerLens hooks.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.config.transformer_lens_config import TransformerLensConfig
from transformer_lens.hook_points import HookPoint

from sparsebench.api import Batch, Model, Task
from sparsebench.config import check
from sparsebench.tasks.topk import TopKUniform, floyd_sample


@dataclass(frozen=True)
class EvensConfig:
    V: int = 64  # vocabulary size (even)
    k: int = 3  # tokens per sample
    w_lo: float = 1.0  # lowest weight
    w_hi: float = 2.0  # highest weight

    def __post_init__(self):
        check("task", self.V % 2 == 0, "V", "must be even")


class TopKEvens(TopKUniform):
    Config = EvensConfig

    def sample(self, n, *, generator, device="cpu"):
        c = self.config
        u = torch.rand(n, 2 * c.k, generator=generator, dtype=torch.float64).to(device)
        tokens = 2 * floyd_sample(u[:, : c.k], c.V // 2)
        weights = (c.w_lo + (c.w_hi - c.w_lo) * u[:, c.k:]).float()
        return Batch({"tokens": tokens, "weights": weights}, self.target_probs(weights))


@dataclass(frozen=True)
class BitsConfig:
    n: int = 12  # input bits
    K: int = 6  # labels
    subset: int = 3  # bits per label's subset
    structure_seed: int = 0  # draws the subsets (part of the task, not of a training run)

    def __post_init__(self):
        check("task", 1 <= self.subset <= self.n, "subset", f"must be in [1, n={self.n}] (got {self.subset})")


class ThresholdBits(Task):
    Config = BitsConfig
    family = "bits"
    metric_directions = {"bit_acc": "higher", "bce": "lower", "exact": "higher"}

    def __init__(self, config):
        super().__init__(config)
        g = torch.Generator().manual_seed(config.structure_seed)
        self.subsets = torch.stack([torch.randperm(config.n, generator=g)[: config.subset] for _ in range(config.K)])

    @property
    def n_inputs(self):
        return self.config.n

    @property
    def n_outputs(self):
        return self.config.K

    def sample(self, n, *, generator, device="cpu"):
        x = (torch.rand(n, self.config.n, generator=generator) < 0.5).float()
        y = (x[:, self.subsets].sum(-1) >= 2).float()  # [n, K]
        return Batch({"x": x.to(device)}, y.to(device))

    def loss(self, logits, batch):
        return nn.functional.binary_cross_entropy_with_logits(logits, batch.target, reduction="none").sum(-1)

    @torch.no_grad()
    def metrics(self, logits, batch):
        pred = (logits > 0).float()
        right = pred == batch.target
        return {"bit_acc": right.float().mean().item(), "bce": self.loss(logits, batch).mean().item(),
                "exact": right.all(-1).float().mean().item()}


@dataclass(frozen=True)
class BitsMLPConfig:
    d_mlp: int = 16  # hidden width

    def __post_init__(self):
        check("model", self.d_mlp >= 1, "d_mlp", f"must be at least 1 (got {self.d_mlp})")


class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = nn.Module()
        self.mlp.hook_pre = HookPoint()  # [batch, d_mlp]
        self.mlp.hook_post = HookPoint()  # [batch, d_mlp]
        self.hook_resid_post = HookPoint()  # [batch, d_mlp]


class BitsMLP(HookedRootModule, Model):
    Config = BitsMLPConfig
    families = ("bits",)
    width_fields = ("d_mlp",)

    def __init__(self, config, task=None, *, generator=None):
        super().__init__()
        self.config = config
        n, K, m = task.n_inputs, task.n_outputs, config.d_mlp
        self.W_in = nn.Parameter(torch.randn(n, m, generator=generator) / n**0.5)  # [n, d_mlp]
        self.b_in = nn.Parameter(torch.zeros(m))  # [d_mlp]
        self.W_out = nn.Parameter(torch.randn(m, K, generator=generator) / m**0.5)  # [d_mlp, K]
        self.b_out = nn.Parameter(torch.zeros(K))  # [K]
        self.hook_embed = HookPoint()  # [batch, n]
        self.blocks = nn.ModuleList([_Block()])
        self.cfg = TransformerLensConfig(d_model=m, d_head=m, n_layers=1, n_ctx=1, d_mlp=m, d_vocab=n,
                                         normalization_type=None)
        self.setup()

    n_layers = 1

    def forward(self, x):
        b = self.blocks[0]
        post = b.mlp.hook_post(torch.relu(b.mlp.hook_pre(self.hook_embed(x) @ self.W_in + self.b_in)))
        return b.hook_resid_post(post) @ self.W_out + self.b_out

    def run_with_cache(self, *args, **kwargs):
        out, cache = super().run_with_cache(*args, **kwargs)
        return out, ActivationCache(cache, self)
