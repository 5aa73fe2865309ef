"""`StackedTransformer`: N `transformer` instances in one module, a leading instance dim on every weight.

`Transformer.stacked(models)` builds it and the plain trainer (`sparsebench.training`)
optimises it, exactly as it does `StackedMLP` for `mlp1`: every seed of a run trains in one
batched forward and backward. The math is the TransformerLens-native model's
(`TransformerBridge.boot_native`, `transformer_lens/model_bridge/sources/native/model.py`) as
the `Transformer` wrapper uses it, written with batched matmuls over the instance dim:

    x_s     = w_s W_E[t_s] (+ W_pos[s])                       [inst, batch, seq, d_model]
    per block l:
      x     = x + Attn_l(LN1_l(x))                           causal (or not) softmax(Q K^T / sqrt(d_head)) V W_O
      x     = x + MLP_l(LN2_l(x))                            act(x W_in + b_in) W_out + b_out
    z       = LN_final(x[:, :, -1]) W_U + b_U                 [inst, batch, n_outputs]

Only the last position is read out (the wrapper slices the residual before `ln_final`), so the
*last* block computes its query, attention output and MLP at the last position alone: keys and
values still come from every position, and nothing the readout sees changes (the bridge computes
the other positions and drops them). Earlier blocks run every position.

Weights are held under the bridge's own state-dict keys (`embed.weight`,
`blocks.0.attn.q.weight`, ..., `unembed.bias`; "." becomes "__" inside the ParameterDict)
in `nn.Linear` layout ([out, in]), each with a leading instance dim, and keep each weight's
`requires_grad` (the frozen positional table of `positional = "none"` stays frozen).
`unstack(template)` loads instance i back into a copy of a `Transformer` with
`load_state_dict(strict=True)`. No hooks: probes and mechanisms read the unstacked models.
tests/unit/test_transformer_stacked.py pins logits, losses and every gradient equal to the
bridge's per instance, for every normalisation, positional embedding, activation and mask.
"""

from __future__ import annotations

import copy
import math
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsebench.models.stack import param_key, stack_parameters

if TYPE_CHECKING:
    from sparsebench.models.transformer import Transformer

EPS = 1e-5  # the native model's LayerNorm / RMSNorm epsilon (TransformerBridgeConfig.eps)
ROTARY_BASE = 10000.0  # the native model's rotary base (TransformerBridgeConfig.rotary_base)

ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
}


def linear(x: Tensor, W: Tensor, b: Tensor) -> Tensor:
    """x [inst, ..., in], W [inst, out, in] (nn.Linear layout), b [inst, out] -> [inst, ..., out]."""
    n = x.shape[0]
    flat = x.reshape(n, -1, x.shape[-1])  # [inst, rows, in]
    out = torch.baddbmm(b.unsqueeze(1), flat, W.transpose(1, 2))  # [inst, rows, out]
    return out.view(*x.shape[:-1], W.shape[1])


def _per_instance(v: Tensor, x: Tensor) -> Tensor:
    """A per-instance vector v [inst, d] shaped to broadcast against x [inst, ..., d]."""
    return v.view(v.shape[0], *([1] * (x.dim() - 2)), v.shape[-1])


def rotary_tables(n_ctx: int, d_head: int) -> tuple[Tensor, Tensor]:
    """(cos, sin) [n_ctx, d_head] of the native model's RoPE (adjacent pairs rotate together)."""
    inv_freq = 1.0 / (ROTARY_BASE ** (torch.arange(0, d_head, 2).float() / d_head))
    freqs = torch.outer(torch.arange(n_ctx).float(), inv_freq)
    return freqs.cos().repeat_interleave(2, dim=-1), freqs.sin().repeat_interleave(2, dim=-1)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """RoPE on x [..., seq, heads, d_head] with tables [seq, d_head]: (x0, x1) -> (x0 c - x1 s, x1 c + x0 s)."""
    half = torch.stack((-x[..., 1::2], x[..., 0::2]), dim=-1).flatten(-2)
    return x * cos.unsqueeze(-2) + half * sin.unsqueeze(-2)


class StackedTransformer(nn.Module):
    """N independent `Transformer`s (one config) with a leading instance dim, for batched training."""

    def __init__(self, models: list["Transformer"]):
        super().__init__()
        self.config = c = models[0].config
        self.n_instances = len(models)
        states = [m.state_dict(keep_vars=True) for m in models]  # bridge keys -> the Parameters themselves
        self.keys = list(states[0])
        self.params = stack_parameters(states)
        self.act = ACTIVATIONS[c.act_fn]
        self.scale = math.sqrt(c.d_head)  # the native attention's score scale
        if c.positional == "rotary":
            cos, sin = rotary_tables(c.n_ctx, c.d_head)
            self.register_buffer("rot_cos", cos, persistent=False)  # [n_ctx, d_head]
            self.register_buffer("rot_sin", sin, persistent=False)

    def p(self, name: str) -> Tensor:
        """The stacked weight under the bridge's state-dict key `name`: [inst, *its shape]."""
        return self.params[param_key(name)]

    # ----- pieces ---------------------------------------------------------------------------------

    def norm(self, x: Tensor, prefix: str) -> Tensor:
        """The block's pre-norm `prefix` ("blocks.0.ln1", "ln_final", ...) on x [inst, ..., d_model]."""
        kind = self.config.normalization
        if kind == "none":
            return x
        if kind in ("LN", "LNPre"):
            x = x - x.mean(-1, keepdim=True)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
        if kind == "LN":
            x = x * _per_instance(self.p(prefix + ".weight"), x) + _per_instance(self.p(prefix + ".bias"), x)
        elif kind == "RMS":
            x = x * _per_instance(self.p(prefix + ".weight"), x)
        return x

    def embed(self, tokens: Tensor, weights: Tensor) -> Tensor:
        """tokens, weights [inst, batch, seq] -> the weighted embeddings (+ positions) [inst, batch, seq, d_model]."""
        W_E = self.p("embed.weight")  # [inst, n_inputs, d_model]
        n, V, d = W_E.shape
        rows = (tokens + torch.arange(n, device=tokens.device).view(n, 1, 1) * V).reshape(-1)
        # index_select's backward is one index_add (fancy indexing's is several times slower on the CPU)
        x = W_E.reshape(n * V, d).index_select(0, rows).view(*tokens.shape, d)  # W_E[t]: hook_embed
        x = x * weights.to(x.dtype).unsqueeze(-1)
        if self.config.positional == "learned":
            x = x + self.p("pos_embed.weight")[:, : tokens.shape[-1]].unsqueeze(1)  # [inst, 1, seq, d_model]
        return x

    def attention(self, layer: int, x: Tensor, last_only: bool) -> Tensor:
        """Block `layer`'s attention on its normalised input x [inst, batch, seq, d_model].

        Returns its output at every position [inst, batch, seq, d_model], or with `last_only` at the
        last position alone [inst, batch, d_model] (one query, which sees every position under either mask).
        """
        c, pre = self.config, f"blocks.{layer}.attn."
        n, b, s, _ = x.shape
        H, dh = c.n_heads, c.d_head
        k = linear(x, self.p(pre + "k.weight"), self.p(pre + "k.bias")).view(n, b, s, H, dh)
        v = linear(x, self.p(pre + "v.weight"), self.p(pre + "v.bias")).view(n, b, s, H, dh)
        xq = x[:, :, -1:] if last_only else x
        q = linear(xq, self.p(pre + "q.weight"), self.p(pre + "q.bias")).view(n, b, xq.shape[2], H, dh)
        if c.positional == "rotary":
            cos, sin = self.rot_cos[:s], self.rot_sin[:s]
            k, q = rotate(k, cos, sin), rotate(q, cos[-q.shape[2]:], sin[-q.shape[2]:])
        if last_only:
            # One query: elementwise products and sums instead of batch x heads tiny matmuls.
            scores = (q * k).sum(-1) / self.scale  # [inst, batch, seq (keys), heads]
            pattern = torch.softmax(scores, dim=2)
            z = (pattern.unsqueeze(-1) * v).sum(2).reshape(n, b, H * dh)  # [inst, batch, heads * d_head]
        else:
            scores = torch.einsum("nbqhe,nbkhe->nbhqk", q, k) / self.scale  # [inst, batch, heads, query, key]
            if c.attention == "causal":
                mask = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
                scores = scores.masked_fill(mask, float("-inf"))
            pattern = torch.softmax(scores, dim=-1)
            z = torch.einsum("nbhqk,nbkhe->nbqhe", pattern, v).reshape(n, b, s, H * dh)
        return linear(z, self.p(pre + "o.weight"), self.p(pre + "o.bias"))

    def mlp(self, layer: int, x: Tensor) -> Tensor:
        """Block `layer`'s MLP on its normalised input x [inst, ..., d_model] -> [inst, ..., d_model]."""
        pre = f"blocks.{layer}.mlp."
        post = self.act(linear(x, self.p(pre + "in.weight"), self.p(pre + "in.bias")))  # hook_post [inst, ..., d_mlp]
        return linear(post, self.p(pre + "out.weight"), self.p(pre + "out.bias"))

    # ----- the model ------------------------------------------------------------------------------

    def residual(self, tokens: Tensor, weights: Tensor,
                 last_attention: Callable[["StackedTransformer", int, Tensor], Tensor] | None = None) -> Tensor:
        """tokens, weights [inst, batch, seq] -> the normalised final residual at the last position
        [inst, batch, d_model] (what the unembedding reads).

        `last_attention(self, layer, h)`: another computation of the last block's attention at the last
        position, equal to `attention(layer, h, last_only=True)` (a speed backend's; None: that one)."""
        x = self.embed(tokens, weights)  # [inst, batch, seq, d_model]
        last = self.config.n_layers - 1
        for layer in range(self.config.n_layers):
            h = self.norm(x, f"blocks.{layer}.ln1")
            if layer == last:
                attn = last_attention(self, layer, h) if last_attention else self.attention(layer, h, last_only=True)
                x = x[:, :, -1] + attn  # [inst, batch, d_model]
            else:
                x = x + self.attention(layer, h, last_only=False)
            x = x + self.mlp(layer, self.norm(x, f"blocks.{layer}.ln2"))
        return self.norm(x, "ln_final")

    def unembed_params(self) -> tuple[Tensor, Tensor]:
        """(W_U [inst, d_model, n_outputs], b_U [inst, n_outputs]): the unembedding (W_U a transposed view)."""
        return self.p("unembed.weight").transpose(1, 2), self.p("unembed.bias")

    def forward(self, tokens: Tensor, weights: Tensor) -> Tensor:
        """tokens, weights [inst, batch, seq] -> logits [inst, batch, n_outputs] (last position)."""
        W_U, b_U = self.unembed_params()
        return torch.baddbmm(b_U.unsqueeze(1), self.residual(tokens, weights), W_U)

    def state_dicts(self) -> list[dict[str, Tensor]]:
        """One bridge-format state dict per instance (detached copies)."""
        return [{k: self.p(k)[i].detach().clone() for k in self.keys} for i in range(self.n_instances)]

    def unstack(self, template: "Transformer") -> list["Transformer"]:
        """Split into N `Transformer`s shaped like `template` (copies of it, loaded with strict=True)."""
        out = []
        for state in self.state_dicts():
            model = copy.deepcopy(template)
            model.load_state_dict(state, strict=True)
            out.append(model)
        return out

