"""The stacked transformer's residual stream with a cheaper last-block attention (the fused step's, CPU).

The readout reads the last position only, so the last block's attention has one query. For one
query q the keys and values of the other positions need not be built at all:

    score_s = q . (W_K h_s + b_K) = (W_K^T q) . h_s + q . b_K          (per head)
    sum_s P_s (W_V h_s + b_V)    = W_V (sum_s P_s h_s) + b_V           (the pattern sums to 1)

so per head one [d_head] x [d_head, d_model] product turns q into a vector over the residual,
the scores are dot products with the block's normalised inputs h_s, and the value projection
runs once, on the pattern-weighted input. The same function as
`StackedTransformer.attention(..., last_only=True)` in another order of summation (tested to
float precision, values and gradients); it drops the keys' and values' projections at every
position (forward and backward), about a third of the residual's time at the transformer
suite's size. Rotary positions rotate each key by its position, so they keep the module's own
attention.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sparsebench.models.transformer_stacked import StackedTransformer, linear


def one_query_attention(module: StackedTransformer, layer: int, h: Tensor) -> Tensor:
    """Block `layer`'s attention output at the last position from its normalised input h [inst, batch, seq,
    d_model] -> [inst, batch, d_model] (see the module docstring)."""
    c, pre = module.config, f"blocks.{layer}.attn."
    n, b, _, d = h.shape
    H, dh = c.n_heads, c.d_head
    q = linear(h[:, :, -1], module.p(pre + "q.weight"), module.p(pre + "q.bias")).view(n, b, H, dh)
    W_K = module.p(pre + "k.weight").view(n, H, dh, d)  # nn.Linear layout, heads split: [inst, H, dh, d]
    qk = torch.einsum("nbhe,nhed->nbhd", q, W_K)  # W_K^T q per head: [inst, batch, H, d_model]
    qb = (q * module.p(pre + "k.bias").view(n, 1, H, dh)).sum(-1)  # q . b_K: [inst, batch, H]
    scores = ((qk.unsqueeze(2) * h.unsqueeze(3)).sum(-1) + qb.unsqueeze(2)) / module.scale  # [inst, batch, seq, H]
    pattern = torch.softmax(scores, dim=2)
    mixed = (pattern.unsqueeze(-1) * h.unsqueeze(3)).sum(2)  # sum_s P_s h_s: [inst, batch, H, d_model]
    W_V = module.p(pre + "v.weight").view(n, H, dh, d)
    z = torch.einsum("nbhd,nhed->nbhe", mixed, W_V) + module.p(pre + "v.bias").view(n, 1, H, dh)
    return linear(z.reshape(n, b, H * dh), module.p(pre + "o.weight"), module.p(pre + "o.bias"))


def residual(module: StackedTransformer, tokens: Tensor, weights: Tensor) -> Tensor:
    """`module.residual(tokens, weights)` with the last block's attention from `one_query_attention`
    (rotary models: the module's own): [inst, batch, d_model]."""
    if module.config.positional == "rotary":
        return module.residual(tokens, weights)
    return module.residual(tokens, weights, last_attention=one_query_attention)
