"""`transformer`: a small TransformerLens 4 model reading the weighted set as a sequence (docs/science.md §1, §2).

The k input tokens form a sequence (in the task's random order); each token's
embedding is multiplied by its weight; the logits are read at the last position:

    e_i   = W_E[t_i]                                   (hook_embed: the raw embedding)
    r0_i  = w_i e_i (+ W_pos[i] if positional != "none")   (blocks.0.hook_resid_pre)
    ...   pre-norm attention + MLP blocks (TransformerLens-native, `boot_native`)
    z     = LN_final(r_L)[last] W_U + b_U              -> [batch, n_outputs]

Design decisions (docs/transformer.md has the reasoning):
- Weights scale the embedding right *after* every `hook_embed` hook has run (a
  forward hook on the embedding component, not a hook-point hook): `hook_embed`
  caches and patches the raw embedding `W_E[t]`, exactly like `mlp1`, and a user
  hook that replaces it still gets weighted. Weight 0 equals zeroing the token at
  `hook_embed`. `blocks.0.hook_resid_pre` shows the weighted embeddings.
- No positional embedding by default: the input is a set in random order, so a
  position signal is noise the net would have to learn to ignore. (The TL-native
  model only offers a learned table or rotary; "none" keeps the learned table at
  zero and frozen, so `hook_pos_embed` still fires, with zeros.)
- No normalisation by default: the MLP then reads the residual linearly, so
  `W_E @ W_in` is the token-to-hidden map of the direct path as in `mlp1`, and the
  Bloom construction and fits carry over without folding layer norms.
- The final norm and unembedding only see the last position (a pre-hook slices
  the residual before `ln_final`): the unembedding dominates the cost, and only
  the last position is read. `ln_final.*`, `unembed.*` and `hook_unembed` hooks
  therefore see `[batch, 1, ...]`; every hook inside the blocks sees `[batch, pos, ...]`.
- b_U is a learned bias (the native head has none; the Bloom construction needs one).

`transformer_lens` is imported lazily, inside the constructor, so importing this
module (e.g. for its config) stays cheap; booting the first model pays ~10 s.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal

import torch
from torch import Tensor, nn

from sparsebench.api import Model, Task
from sparsebench.config import check

_ACT_FNS = ("relu", "gelu", "gelu_new", "silu")


@dataclass(frozen=True)
class TransformerConfig:
    d_model: int = 64  # residual width d
    n_heads: int = 4  # attention heads per layer
    d_head: int = 16  # width of each head (n_heads * d_head need not equal d_model)
    d_mlp: int = 64  # MLP hidden width m
    n_layers: int = 1  # transformer blocks (attention + MLP), at least 1
    n_ctx: int = 64  # longest input set the model accepts (>= the task's k; probes may feed more tokens)
    normalization: Literal["none", "LN", "LNPre", "RMS", "RMSPre"] = "none"  # pre-norm type ("none": identity)
    positional: Literal["none", "learned", "rotary"] = "none"  # "none": the set order carries no signal
    attention: Literal["causal", "bidirectional"] = "causal"  # mask; the last position sees all tokens either way
    act_fn: Literal["relu", "gelu", "gelu_new", "silu"] = "relu"  # MLP activation
    bias_unembed: bool = True  # learn b_U (the Bloom construction needs it)
    init_scale: float = 1.0  # multiplies the init std (TL "gpt2" init: N(0, 0.8 / sqrt(d_model)))

    def __post_init__(self) -> None:
        for f in ("d_model", "n_heads", "d_head", "d_mlp", "n_layers", "n_ctx"):
            check("model", getattr(self, f) >= 1, f, f"must be at least 1 (got {getattr(self, f)})")
        check("model", self.init_scale > 0, "init_scale", f"must be > 0 (got {self.init_scale})")
        check("model", self.positional != "rotary" or self.d_head % 2 == 0, "d_head",
              f"must be even for rotary positions (got {self.d_head})")
        check("model", self.act_fn in _ACT_FNS, "act_fn", f"must be one of {', '.join(_ACT_FNS)} (got {self.act_fn!r})")


class Transformer(nn.Module, Model):
    """A TransformerLens-native transformer on a weighted token set; logits at the last position."""

    Config = TransformerConfig
    families = ("topk",)
    width_fields = ("d_model", "d_mlp")
    # "{layer}": every layer. W_OV is what the Bloom fit reads besides W_E and W_in (token_to_hidden).
    weight_groups = {"W_E": ("embed.weight",), "W_in": ("blocks.{layer}.mlp.in.weight",),
                     "W_out": ("blocks.{layer}.mlp.out.weight",), "W_U": ("unembed.weight",),
                     "W_OV": ("blocks.{layer}.attn.v.weight", "blocks.{layer}.attn.o.weight")}

    def __init__(self, config: TransformerConfig, task: Task | None = None, *, n_inputs: int | None = None,
                 n_outputs: int | None = None, generator: torch.Generator | None = None):
        super().__init__()
        from transformer_lens import TransformerBridgeConfig
        from transformer_lens.model_bridge import TransformerBridge

        self.config = config
        n_inputs = n_inputs if n_inputs is not None else task.n_inputs  # type: ignore[union-attr]
        n_outputs = n_outputs if n_outputs is not None else task.n_outputs  # type: ignore[union-attr]
        if task is not None:
            check("model", task.seq_len is not None and task.seq_len <= config.n_ctx, "n_ctx",
                  f"must be at least the task's sequence length {task.seq_len} (got {config.n_ctx})")
        # The bridge seeds its own scoped CPU generator: one draw from ours makes the init a
        # function of `generator` alone (the global RNG is neither used nor advanced).
        seed = None if generator is None else int(torch.randint(0, 2**62, (1,), generator=generator))
        c = config
        tl_cfg = TransformerBridgeConfig(
            d_model=c.d_model, d_head=c.d_head, n_heads=c.n_heads, d_mlp=c.d_mlp, n_layers=c.n_layers,
            n_ctx=c.n_ctx, d_vocab=n_inputs, d_vocab_out=n_outputs, act_fn=c.act_fn,
            normalization_type=None if c.normalization == "none" else c.normalization,
            positional_embedding_type="rotary" if c.positional == "rotary" else "standard",
            attention_dir=c.attention, init_mode="gpt2", initializer_range=c.init_scale * 0.8 / c.d_model**0.5,
            seed=seed, architecture=None, dtype=torch.float32)
        self.bridge = TransformerBridge.boot_native(tl_cfg)  # seeded: builds under fork_rng, global RNG untouched
        with torch.no_grad():
            if c.positional == "none":
                pos = self.bridge.pos_embed.original_component.weight  # [n_ctx, d_model]
                pos.zero_()
                pos.requires_grad_(False)
            head = self.bridge.unembed.original_component  # nn.Linear(d_model, n_outputs); its bias is a zero buffer
            head._buffers.pop("bias", None)
            head.bias = nn.Parameter(torch.zeros(n_outputs), requires_grad=c.bias_unembed)  # b_U [n_outputs]
        self._weights: Tensor | None = None  # [batch, pos]: the call's input weights, set only during a call
        self.bridge.embed.register_forward_hook(self._scale_embedding)
        self.bridge.ln_final.register_forward_pre_hook(self._keep_last_position)

    # The two permanent hooks on bridge components (not on hook points, so they run after all user hooks).
    def _scale_embedding(self, module: nn.Module, args: Any, out: Tensor) -> Tensor | None:
        """After hook_embed: [batch, pos, d_model] * weights [batch, pos, 1]."""
        if self._weights is None:
            return None
        w = self._weights
        if w.shape != out.shape[:2]:
            raise ValueError(f"weights shape {tuple(w.shape)} does not match tokens {tuple(out.shape[:2])}")
        return out * w.to(out.dtype).unsqueeze(-1)

    @staticmethod
    def _keep_last_position(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """Before ln_final: residual [batch, pos, d_model] -> [batch, 1, d_model]."""
        x, *rest = args
        return (x[:, -1:], *rest)

    @contextlib.contextmanager
    def _weighted(self, weights: Tensor) -> Iterator[None]:
        if self._weights is not None:
            raise RuntimeError("Transformer calls do not nest (a hook re-entered the model)")
        self._weights = weights
        try:
            yield
        finally:
            self._weights = None

    @staticmethod
    def _last(out: Any) -> Any:
        """Bridge logits [batch, 1, n_outputs] -> [batch, n_outputs]; other return types pass through."""
        return out[:, -1] if isinstance(out, Tensor) and out.dim() == 3 else out

    @property
    def n_layers(self) -> int:
        return self.config.n_layers

    @property
    def cfg(self) -> Any:
        return self.bridge.cfg  # the TransformerLens config

    def forward(self, tokens: Tensor, weights: Tensor) -> Tensor:
        """tokens [batch, set] long, weights [batch, set] -> logits [batch, n_outputs] (last position)."""
        with self._weighted(weights):
            return self._last(self.bridge(tokens))

    def run_with_hooks(self, tokens: Tensor, weights: Tensor,
                       fwd_hooks: list[tuple[str | Callable[[str], bool], Callable]] = (),  # type: ignore[assignment]
                       **kwargs: Any) -> Any:
        """TransformerLens `run_with_hooks` (hook fn(act, hook) may return a replacement) -> logits [batch, V]."""
        with self._weighted(weights):
            return self._last(self.bridge.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks), **kwargs))

    def run_with_cache(self, tokens: Tensor, weights: Tensor, **kwargs: Any) -> tuple[Any, Any]:
        """TransformerLens `run_with_cache` (names_filter=...) -> (logits [batch, V], cache [batch, pos, ...])."""
        with self._weighted(weights):
            out, cache = self.bridge.run_with_cache(tokens, **kwargs)
        return self._last(out), cache

    def to(self, *args: Any, **kwargs: Any) -> "Transformer":
        self.bridge.to(*args, print_details=False, **kwargs)  # also updates the bridge's cfg.device
        return super().to(*args, **kwargs)

    # Checkpoints (safetensors save_model/load_model) use the bridge's TransformerLens-format keys
    # ("embed.weight", "blocks.0.mlp.in.weight", "unembed.bias", ...): one key per tensor, none
    # shared, and no dependence on the bridge's internal `_original_component` paths. Nested
    # calls (a parent module's state_dict, with a prefix) keep the standard module-tree keys.
    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        if args or destination is not None or prefix:
            return super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        return self.bridge.state_dict(keep_vars=keep_vars)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self.bridge.load_state_dict(state_dict, strict=strict, assign=assign)

    @property
    def hook_dict(self) -> dict[str, Any]:
        return self.bridge.hook_dict

    # Weight views in TransformerLens shapes (stacked over layers).
    @property
    def W_E(self) -> Tensor:
        return self.bridge.W_E  # [n_inputs, d_model]

    @property
    def W_pos(self) -> Tensor:
        return self.bridge.W_pos  # [n_ctx, d_model] (zeros unless positional == "learned")

    @property
    def W_in(self) -> Tensor:
        return self.bridge.W_in  # [n_layers, d_model, d_mlp]

    @property
    def b_in(self) -> Tensor:
        return self.bridge.b_in  # [n_layers, d_mlp]

    @property
    def W_out(self) -> Tensor:
        return self.bridge.W_out  # [n_layers, d_mlp, d_model]

    @property
    def b_out(self) -> Tensor:
        return self.bridge.b_out  # [n_layers, d_model]

    @property
    def W_U(self) -> Tensor:
        return self.bridge.W_U  # [d_model, n_outputs]

    @property
    def b_U(self) -> Tensor:
        return self.bridge.unembed.original_component.bias  # [n_outputs]

    @property
    def W_OV(self) -> Tensor:
        """Each layer's OV circuit summed over heads, sum_h W_V^h W_O^h: [n_layers, d_model, d_model]."""
        return torch.einsum("lhde,lhem->ldm", self.bridge.W_V, self.bridge.W_O)

    def token_to_hidden(self, layer: int) -> Tensor:
        """The linear map from a token's embedding to layer `layer`'s MLP input, through the residual
        stream's direct path and every attention layer up to it: W_E (I + W_OV[0]) ... (I + W_OV[layer])
        W_in[layer], [n_inputs, d_mlp] (earlier MLPs and norms left out; docs/science.md §3.1).

        With one layer, token s adds w_s (1[s last] W_E W_in + P_s W_E W_OV W_in) to the MLP input at
        the readout position: every token goes through attention (weight P_s, about 1/k), only the last
        also directly, so averaged over positions a token contributes (w/k) W_E (I + W_OV) W_in."""
        M = self.W_E
        W_OV = self.W_OV
        for l in range(layer + 1):
            M = M + M @ W_OV[l]
        return M @ self.W_in[layer]

    @classmethod
    def stacked(cls, models: list["Transformer"]) -> Any:
        """N models (one config) as one `StackedTransformer` [inst, ...], for batched training."""
        from sparsebench.models.transformer_stacked import StackedTransformer

        return StackedTransformer(models)
