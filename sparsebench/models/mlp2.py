"""`mlp2`: the two-layer ReLU network of the second seed (docs/science.md §7), with TransformerLens hooks.

    z      = C0 x                 C0: d × n, the input code (Hadamard, random-fixed or learned)
    pre    = (W1 ⊙ M) z + b1      W1: H × d, M: H × d 0/1 mask (all ones: dense)
    h      = ReLU(pre)
    logits = W2 h + b2            W2: K × H

The feature-space representation is C1 = (W1 ⊙ M) C0 (H × n) [paper: `C1 = W1 C0`]. In
TransformerLens shapes `W_E = C0ᵀ` ([n, d]), `W_in[0] = (W1 ⊙ M)ᵀ` ([d, H]), so
`W_E @ W_in[0]` is exactly `C1ᵀ`: the token-to-hidden map the top-k probes read. The
block writes straight into the K logits: `W_out[0] = W2ᵀ`, `W_U` the identity, `b_U = b2`.

C0 [reading where the paper is silent]: "hadamard" = the first n columns of the d × d
Sylvester Hadamard matrix scaled by 1/√d (orthonormal columns; d a power of two, by
default n rounded up), fixed; "random" = N(0, 1/d) entries drawn from the init
generator, fixed; "learned" = the same draw, trained. A fixed C0 is a frozen parameter
(so `W_E` is a view of it, saved with the weights, and the `shuffled` null can permute it).

The mask M is a buffer saved with the weights (safetensors), applied as W1 ⊙ M in the
forward pass, so a masked entry gets zero gradient; sparse retraining zeroes W1 under the
mask first, and with zero gradients AdamW leaves it at zero. `StackedMLP2` holds N
instances (each with its own mask) in a leading dim, for the batched trainer and the
ticket pipeline's retraining of many masks at once; `tests/unit/test_mlp2.py` pins
its forward equal to the instances'.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.config.transformer_lens_config import TransformerLensConfig
from transformer_lens.hook_points import HookPoint

from sparsebench.api import Model, Task
from sparsebench.config import check
from sparsebench.models.stack import param_key, stack_parameters, unstack_parameters


# State-dict names of the paper's matrices (what the ticket pipeline reads and writes in snapshots and masks).
C0_KEY, W1_KEY, MASK_KEY, W2_KEY = "embed.C0", "blocks.0.mlp.W1", "blocks.0.mlp.mask", "unembed.W2"


@dataclass(frozen=True)
class MLP2Config:
    d_hidden: int = 16  # H: hidden ReLU units (the width) [paper: 16, and 32 for the expansion]
    d_embed: int = 0  # d: rows of C0; 0 = n for "random"/"learned", n rounded up to a power of two for "hadamard"
    embed: Literal["hadamard", "random", "learned"] = "hadamard"  # C0 [paper: these three kinds]
    init_scale: float = 1.0  # multiplies the standard deviation of W1 (N(0, 1/d)) and W2 (N(0, 1/H))
    bias_hidden: bool = True  # learn b1 (the exact construction needs it: -3a for 4P clauses)
    bias_out: bool = True  # learn b2

    def __post_init__(self) -> None:
        check("model", self.d_hidden >= 1, "d_hidden", f"must be at least 1 (got {self.d_hidden})")
        check("model", self.d_embed >= 0, "d_embed", f"must be >= 0 (0 = automatic) (got {self.d_embed})")
        if self.embed == "hadamard" and self.d_embed:
            check("model", self.d_embed & (self.d_embed - 1) == 0, "d_embed",
                  f"must be a power of two for a Hadamard C0 (got {self.d_embed})")
        check("model", self.init_scale > 0 and math.isfinite(self.init_scale), "init_scale",
              f"must be a finite number > 0 (got {self.init_scale})")

    def embed_dim(self, n: int) -> int:
        """d for n input variables."""
        if self.d_embed:
            return self.d_embed
        return 1 << max(n - 1, 0).bit_length() if self.embed == "hadamard" else n


def hadamard(d: int) -> Tensor:
    """The d × d Sylvester Hadamard matrix (entries ±1; d a power of two)."""
    h = torch.ones(1, 1)
    while h.shape[0] < d:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def input_code(cfg: MLP2Config, n: int, generator: torch.Generator | None) -> Tensor:
    """C0: [d, n] (see the module docstring)."""
    d = cfg.embed_dim(n)
    if cfg.embed == "hadamard":
        if d < n:
            raise ValueError(f"a Hadamard C0 needs d >= n (d={d}, n={n})")
        return hadamard(d)[:, :n] / math.sqrt(d)
    return torch.randn(d, n, generator=generator) / math.sqrt(d)


class Embed2(nn.Module):
    def __init__(self, cfg: MLP2Config, n: int, generator: torch.Generator | None):
        super().__init__()
        self.C0 = nn.Parameter(input_code(cfg, n, generator), requires_grad=cfg.embed == "learned")  # [d, n]


class MLPBlock2(nn.Module):
    def __init__(self, cfg: MLP2Config, d: int, generator: torch.Generator | None):
        super().__init__()
        H, s = cfg.d_hidden, cfg.init_scale
        self.W1 = nn.Parameter(torch.randn(H, d, generator=generator) * s / math.sqrt(d))  # [H, d]
        self.b1 = nn.Parameter(torch.zeros(H), requires_grad=cfg.bias_hidden)  # [H]
        self.register_buffer("mask", torch.ones(H, d))  # [H, d] 0/1: W1's kept coordinates
        self.hook_pre = HookPoint()  # [batch, H]
        self.hook_post = HookPoint()  # [batch, H]

    @property
    def W1_eff(self) -> Tensor:
        return self.W1 * self.mask  # [H, d]

    def forward(self, z: Tensor) -> Tensor:
        return self.hook_post(F.relu(self.hook_pre(z @ self.W1_eff.T + self.b1)))


class Block2(nn.Module):
    def __init__(self, cfg: MLP2Config, d: int, generator: torch.Generator | None):
        super().__init__()
        self.mlp = MLPBlock2(cfg, d, generator)
        self.hook_resid_pre = HookPoint()  # [batch, d]: z = C0 x
        self.hook_resid_post = HookPoint()  # [batch, H]: h (no residual stream: the block's output is h)

    def forward(self, z: Tensor) -> Tensor:
        return self.hook_resid_post(self.mlp(self.hook_resid_pre(z)))


class Unembed2(nn.Module):
    def __init__(self, cfg: MLP2Config, K: int, generator: torch.Generator | None):
        super().__init__()
        H, s = cfg.d_hidden, cfg.init_scale
        self.W2 = nn.Parameter(torch.randn(K, H, generator=generator) * s / math.sqrt(H))  # [K, H]
        self.b2 = nn.Parameter(torch.zeros(K), requires_grad=cfg.bias_out)  # [K]


class MLP2(HookedRootModule, Model):
    """x ∈ {0,1}^n -> K clause logits through one hidden ReLU layer on the input code C0 x."""

    Config = MLP2Config
    families = ("clauses",)
    width_fields = ("d_hidden",)
    n_layers = 1
    # What the model-randomisation controls re-initialise (`baselines/controls.py`). W_U is the identity (the
    # block writes straight into the K logits): there is no W_U weight to re-initialise.
    weight_groups = {"W_E": (C0_KEY,), "W_in": (W1_KEY,), "W_out": (W2_KEY,)}

    def __init__(self, config: MLP2Config, task: Task | None = None, *, n_inputs: int | None = None,
                 n_outputs: int | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        n = n_inputs if n_inputs is not None else task.n_inputs  # type: ignore[union-attr]
        K = n_outputs if n_outputs is not None else task.n_outputs  # type: ignore[union-attr]
        d = config.embed_dim(n)
        if config.embed == "hadamard" and d < n:
            check("model", False, "d_embed", f"must be >= n={n} for a Hadamard C0 (got {d})")
        self.embed = Embed2(config, n, generator)
        self.blocks = nn.ModuleList([Block2(config, d, generator)])
        self.unembed = Unembed2(config, K, generator)
        self.hook_embed = HookPoint()  # [batch, d]: z = C0 x
        self.cfg = TransformerLensConfig(d_model=d, d_head=d, n_layers=1, n_ctx=1, n_heads=0, d_mlp=config.d_hidden,
                                         d_vocab=n, attn_only=False, act_fn="relu", normalization_type=None)
        self.cfg.d_vocab_out = K
        self.setup()

    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Tensor, ActivationCache]:
        """TransformerLens `run_with_cache` (names_filter=...) -> (logits, ActivationCache)."""
        logits, cache = super().run_with_cache(*args, **kwargs)
        return logits, ActivationCache(cache, self)

    def forward(self, x: Tensor) -> Tensor:
        """x: [batch, n] 0/1 -> logits [batch, K]."""
        z = self.hook_embed(x.to(self.embed.C0.dtype) @ self.embed.C0.T)  # [batch, d]
        h = self.blocks[0](z)  # [batch, H]
        return h @ self.unembed.W2.T + self.unembed.b2

    # The paper's matrices.
    @property
    def C0(self) -> Tensor:
        return self.embed.C0  # [d, n]

    @property
    def W1(self) -> Tensor:
        return self.blocks[0].mlp.W1_eff  # [H, d], the mask applied

    @property
    def mask(self) -> Tensor:
        return self.blocks[0].mlp.mask  # [H, d]

    @property
    def C1(self) -> Tensor:
        return self.W1 @ self.C0  # [H, n]: the feature-space representation

    # Weight views in TransformerLens shapes.
    @property
    def W_E(self) -> Tensor:
        return self.embed.C0.T  # [n, d]: a view of the parameter

    @property
    def W_in(self) -> Tensor:
        return self.W1.T.unsqueeze(0)  # [1, d, H]

    @property
    def b_in(self) -> Tensor:
        return self.blocks[0].mlp.b1.unsqueeze(0)  # [1, H]

    @property
    def W_out(self) -> Tensor:
        return self.unembed.W2.T.unsqueeze(0)  # [1, H, K]

    @property
    def b_out(self) -> Tensor:
        return torch.zeros_like(self.unembed.b2).unsqueeze(0)  # [1, K]: b2 is b_U

    @property
    def W_U(self) -> Tensor:
        return torch.eye(self.unembed.W2.shape[0], dtype=self.unembed.W2.dtype, device=self.unembed.W2.device)  # [K, K]

    @property
    def b_U(self) -> Tensor:
        return self.unembed.b2  # [K]

    @classmethod
    def stacked(cls, models: list["MLP2"]) -> "StackedMLP2":
        return StackedMLP2(models)


class StackedMLP2(nn.Module):
    """N independent `MLP2`s (each with its own mask) in a leading instance dim, for batched training (no hooks)."""

    def __init__(self, models: list[MLP2]):
        super().__init__()
        self.config = models[0].config
        self.n_instances = len(models)
        self.params = stack_parameters([dict(m.named_parameters()) for m in models])
        self.register_buffer("mask", torch.stack([m.mask for m in models]))  # [inst, H, d]

    @classmethod
    def from_states(cls, template: MLP2, states: list[dict[str, Tensor]]) -> "StackedMLP2":
        """N instances shaped like `template` from N state dicts (parameters and mask), without N module copies."""
        out = cls([template])
        out.n_instances = len(states)
        with torch.no_grad():
            for name, param in template.named_parameters():
                out.params[param_key(name)] = nn.Parameter(
                    torch.stack([s[name].to(param.dtype) for s in states]), requires_grad=param.requires_grad)
            out.mask = torch.stack([s[MASK_KEY].to(template.mask.dtype) for s in states])
        return out

    def p(self, name: str) -> Tensor:
        return self.params[param_key(name)]

    def forward(self, x: Tensor) -> Tensor:
        """x: [inst, batch, n] -> logits [inst, batch, K]."""
        C0 = self.p(C0_KEY)  # [inst, d, n]
        z = torch.bmm(x.to(C0.dtype), C0.transpose(1, 2))  # [inst, batch, d]
        W1 = self.p(W1_KEY) * self.mask  # [inst, H, d]
        h = F.relu(torch.baddbmm(self.p("blocks.0.mlp.b1").unsqueeze(1), z, W1.transpose(1, 2)))  # [inst, batch, H]
        return torch.baddbmm(self.p("unembed.b2").unsqueeze(1), h, self.p(W2_KEY).transpose(1, 2))

    def unstack(self, template: MLP2) -> list[MLP2]:
        """Split into N `MLP2`s shaped like `template` (whose weights and mask are overwritten in copies)."""
        out = unstack_parameters(template, self.p, self.n_instances)
        with torch.no_grad():
            for m, mask in zip(out, self.mask):
                m.blocks[0].mlp.mask.copy_(mask)
        return out
