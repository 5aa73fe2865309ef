"""`mlp1`: the Bloom-filter post's residual ReLU network (docs/science.md §2), with TransformerLens hooks.

    x    = sum_i w_i E[t_i]                      (the weighted sum of token embeddings)
    pre  = x W_in + b_in;  post = ReLU(pre)
    r1   = x + post W_out + b_out                (repeated for each layer)
    z    = r1 W_U + b_U

`MLP` is the model probes and mechanisms look at: a `HookedRootModule`, so
`run_with_cache` (returning a TransformerLens `ActivationCache`) and `run_with_hooks`
work with TransformerLens hook names, and `cfg` is a TransformerLens config, so TL's
cache tools (`cache["post", 0]`, `cache.accumulated_resid()`) work as on a transformer.
`StackedMLP` holds N independent instances in a leading dimension (the toy-models
-of-superposition idiom) and is what the trainer optimises: one batched step
trains many seeds at once. The two share their initialisation (a stacked model is
built from N `MLP`s) and `tests/unit/test_training.py` pins their forwards equal.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class MLPConfig:
    d_model: int = 64  # residual width d
    d_mlp: int = 64  # hidden width m
    n_layers: int = 1  # residual MLP blocks (the post uses 1)
    bias_in: bool = True  # learn b_in (the Bloom construction needs it: b_in = -1)
    bias_out: bool = True  # learn b_out
    bias_unembed: bool = True  # learn b_U
    embed: Literal["learned", "fixed"] = "learned"  # "fixed": frozen random unit-norm rows (JL-style)
    init_scale: float = 1.0  # multiplies every initial weight's standard deviation

    def __post_init__(self) -> None:
        for f in ("d_model", "d_mlp"):
            check("model", getattr(self, f) >= 1, f, f"must be at least 1 (got {getattr(self, f)})")
        check("model", self.n_layers >= 0, "n_layers", f"must be >= 0 (got {self.n_layers})")
        check("model", self.init_scale > 0, "init_scale", f"must be > 0 (got {self.init_scale})")


def _param(t: Tensor, trainable: bool = True) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=trainable)


class MLPBlock(nn.Module):
    def __init__(self, cfg: MLPConfig, generator: torch.Generator | None):
        super().__init__()
        d, m, s = cfg.d_model, cfg.d_mlp, cfg.init_scale
        self.W_in = _param(torch.randn(d, m, generator=generator) * s / d**0.5)  # [d_model, d_mlp]
        self.b_in = _param(torch.zeros(m), cfg.bias_in)  # [d_mlp]
        self.W_out = _param(torch.randn(m, d, generator=generator) * s / m**0.5)  # [d_mlp, d_model]
        self.b_out = _param(torch.zeros(d), cfg.bias_out)  # [d_model]
        self.hook_pre = HookPoint()  # [batch, d_mlp]
        self.hook_post = HookPoint()  # [batch, d_mlp]

    def forward(self, x: Tensor) -> Tensor:
        post = self.hook_post(F.relu(self.hook_pre(x @ self.W_in + self.b_in)))
        return post @ self.W_out + self.b_out


class Block(nn.Module):
    def __init__(self, cfg: MLPConfig, generator: torch.Generator | None):
        super().__init__()
        self.mlp = MLPBlock(cfg, generator)
        self.hook_resid_pre = HookPoint()  # [batch, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, d_model]
        self.hook_resid_post = HookPoint()  # [batch, d_model]

    def forward(self, x: Tensor) -> Tensor:
        x = self.hook_resid_pre(x)
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(x)))


class Embed(nn.Module):
    def __init__(self, cfg: MLPConfig, n_inputs: int, generator: torch.Generator | None):
        super().__init__()
        E = torch.randn(n_inputs, cfg.d_model, generator=generator)
        if cfg.embed == "fixed":
            E = E / E.norm(dim=-1, keepdim=True)
        else:
            E = E * cfg.init_scale / cfg.d_model**0.5
        self.W_E = _param(E, cfg.embed == "learned")  # [n_inputs, d_model]


class Unembed(nn.Module):
    def __init__(self, cfg: MLPConfig, n_outputs: int, generator: torch.Generator | None):
        super().__init__()
        d = cfg.d_model
        self.W_U = _param(torch.randn(d, n_outputs, generator=generator) * cfg.init_scale / d**0.5)  # [d, V]
        self.b_U = _param(torch.zeros(n_outputs), cfg.bias_unembed)  # [n_outputs]


class MLP(HookedRootModule, Model):
    """The residual ReLU MLP on a weighted token set; logits over the output vocabulary."""

    Config = MLPConfig
    families = ("topk",)
    width_fields = ("d_model", "d_mlp")
    weight_groups = {"W_E": ("embed.W_E",), "W_in": ("blocks.{layer}.mlp.W_in",), "W_out": ("blocks.{layer}.mlp.W_out",),
                     "W_U": ("unembed.W_U",)}

    def __init__(self, config: MLPConfig, task: Task | None = None, *, n_inputs: int | None = None,
                 n_outputs: int | None = None, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        n_inputs = n_inputs if n_inputs is not None else task.n_inputs  # type: ignore[union-attr]
        n_outputs = n_outputs if n_outputs is not None else task.n_outputs  # type: ignore[union-attr]
        self.embed = Embed(config, n_inputs, generator)
        self.blocks = nn.ModuleList(Block(config, generator) for _ in range(config.n_layers))
        self.unembed = Unembed(config, n_outputs, generator)
        self.hook_embed = HookPoint()  # [batch, set, d_model]: each input token's embedding
        # TransformerLens's view of this model (no attention, no norm), for ActivationCache's tools.
        self.cfg = TransformerLensConfig(d_model=config.d_model, d_head=config.d_model, n_layers=config.n_layers,
                                         n_ctx=1, n_heads=0, d_mlp=config.d_mlp, d_vocab=n_inputs, attn_only=False,
                                         act_fn="relu", normalization_type=None)
        self.cfg.d_vocab_out = n_outputs
        self.setup()

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Tensor, ActivationCache]:
        """TransformerLens `run_with_cache` (names_filter=...) -> (logits, ActivationCache)."""
        logits, cache = super().run_with_cache(*args, **kwargs)
        return logits, ActivationCache(cache, self)

    def forward(self, tokens: Tensor, weights: Tensor) -> Tensor:
        """tokens, weights: [batch, set] -> logits [batch, n_outputs]."""
        emb = self.hook_embed(self.embed.W_E[tokens])  # [batch, set, d_model]
        x = torch.einsum("bs,bsd->bd", weights.to(emb.dtype), emb)
        for block in self.blocks:
            x = block(x)
        return x @ self.unembed.W_U + self.unembed.b_U

    # Weight views in TransformerLens shapes (stacked over layers).
    @property
    def W_E(self) -> Tensor:
        return self.embed.W_E  # [n_inputs, d_model]

    @property
    def W_in(self) -> Tensor:
        return torch.stack([b.mlp.W_in for b in self.blocks])  # [n_layers, d_model, d_mlp]

    @property
    def b_in(self) -> Tensor:
        return torch.stack([b.mlp.b_in for b in self.blocks])  # [n_layers, d_mlp]

    @property
    def W_out(self) -> Tensor:
        return torch.stack([b.mlp.W_out for b in self.blocks])  # [n_layers, d_mlp, d_model]

    @property
    def b_out(self) -> Tensor:
        return torch.stack([b.mlp.b_out for b in self.blocks])  # [n_layers, d_model]

    @property
    def W_U(self) -> Tensor:
        return self.unembed.W_U  # [d_model, n_outputs]

    @property
    def b_U(self) -> Tensor:
        return self.unembed.b_U  # [n_outputs]

    def token_to_hidden(self, layer: int) -> Tensor:
        """The map from a token's embedding to layer `layer`'s MLP input through the residual stream
        (earlier MLPs left out): W_E @ W_in[layer], [n_inputs, d_mlp] (docs/science.md §3.1)."""
        return self.embed.W_E @ self.blocks[layer].mlp.W_in

    @classmethod
    def stacked(cls, models: list["MLP"]) -> "StackedMLP":
        return StackedMLP(models)


class StackedMLP(nn.Module):
    """N independent `MLP`s with a leading instance dim, for batched training (no hooks)."""

    def __init__(self, models: list[MLP]):
        super().__init__()
        self.config = models[0].config
        self.n_instances = len(models)
        self.params = stack_parameters([dict(m.named_parameters()) for m in models])  # names mirror MLP's

    def p(self, name: str) -> Tensor:
        return self.params[param_key(name)]

    def residual(self, tokens: Tensor, weights: Tensor) -> Tensor:
        """tokens, weights: [inst, batch, set] -> final residual r1 [inst, batch, d_model] (before W_U)."""
        W_E = self.p("embed.W_E")  # [inst, n_inputs, d_model]
        inst = torch.arange(W_E.shape[0], device=tokens.device).view(-1, 1, 1)
        x = torch.einsum("nbs,nbsd->nbd", weights.to(W_E.dtype), W_E[inst, tokens])  # sum_i w_i E[t_i]
        return self.run_blocks(x)

    def run_blocks(self, x: Tensor) -> Tensor:
        """The residual MLP blocks on the input sum x [inst, batch, d_model] -> r1 [inst, batch, d_model]."""
        for layer in range(self.config.n_layers):
            pre = torch.baddbmm(self.p(f"blocks.{layer}.mlp.b_in").unsqueeze(1), x,
                                self.p(f"blocks.{layer}.mlp.W_in"))  # [inst, batch, d_mlp]
            x = x + torch.baddbmm(self.p(f"blocks.{layer}.mlp.b_out").unsqueeze(1), F.relu(pre),
                                  self.p(f"blocks.{layer}.mlp.W_out"))
        return x

    def unembed_params(self) -> tuple[Tensor, Tensor]:
        """(W_U [inst, d_model, n_outputs], b_U [inst, n_outputs]): the unembedding."""
        return self.p("unembed.W_U"), self.p("unembed.b_U")

    def forward(self, tokens: Tensor, weights: Tensor) -> Tensor:
        """tokens, weights: [inst, batch, set] -> logits [inst, batch, n_outputs]."""
        W_U, b_U = self.unembed_params()
        return torch.baddbmm(b_U.unsqueeze(1), self.residual(tokens, weights), W_U)

    def unstack(self, template: MLP) -> list[MLP]:
        """Split into N `MLP`s shaped like `template` (whose weights are overwritten in copies)."""
        return unstack_parameters(template, self.p, self.n_instances)
