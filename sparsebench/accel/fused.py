"""A fused unembedding + sparse-target KL loss with a hand-written backward (the CPU fast path).

For a model whose last op is the unembedding `z = r W_U + b_U` and a task whose
loss is `KL(p* || softmax(z))` with a sparse target (p* is zero except on k
indices per sample, e.g. the top-k tasks), the loss needs only `logsumexp(z)`
and the k target logits, and its gradient wrt the logits is `g = softmax(z) - p*`:

    loss_b    = sum_i p_bi log p_bi - sum_i p_bi z_b,t_bi + logsumexp_v z_bv
    dL/dW_U   = r^T g          dL/db_U = sum_b g_b          dL/dr = g W_U^T

`unembed_kl` computes the loss *and* these gradients in one pass over chunks of
(instance, batch rows), so each chunk's logits tile [rows, V] is written, turned
into `g` in place and consumed by the two gradient matmuls while it is still in
cache. No [batch, V] tensor is ever built (plain autograd builds several: logits,
log-softmax, its grad, the dense target). The forward returns the per-instance
*mean* loss ([inst]); because the upstream gradient is then one scalar per
instance, the gradients precomputed in the forward are exact after scaling by it.

Cost: 3 matmuls of 2*B*d*V FLOPs (z, r^T g, g W_U^T), the same as autograd's
forward + backward, and no recomputation. `tests/unit/test_training.py` checks
loss and gradients against plain autograd on the same math.

A task opts in by defining `sparse_kl_target(batch) -> (index [..., k] long,
probs [..., k])`, promising that `task.loss(logits, batch)` equals the KL above
for that sparse target. Tasks without it train through `task.loss` (the plain
path, always correct).

`FusedStep` is the training step the run context's door hands out for stacked
`mlp1` and stacked `transformer` on such a task (backend "fused", and "auto" on
the CPU): the residual stream (`mlp1`: through `bag_residual`, an embedding bag
with an index_add backward; `transformer`: `accel/transformer.py`, the stacked
model's own `residual` with its last block's one-query attention computed
without keys or values), the loss and its gradients
through `unembed_kl`, then torch's AdamW; a built-in top-k task's batches are
drawn for all instances at once (`sampling.torch_topk_sampler`, checked bitwise
against the task's `sample`).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsebench.accel.transformer import residual as stacked_transformer_residual
from sparsebench.accel.sampling import CheckedSampler, torch_topk_sampler
from sparsebench.api import Batch
from sparsebench.models.mlp import StackedMLP
from sparsebench.models.transformer_stacked import StackedTransformer
from sparsebench.training import AutogradStep

LOG2E = 1.4426950408889634  # log2(e)
LN2 = 0.6931471805599453  # ln(2)
CHUNK_BYTES = 1024 * 1024  # logits tile per chunk: about one core's L2 (1 MiB on Zen 4; docs/performance.md)


def supports_fused(task: Any) -> bool:
    """True if the task declares a sparse KL target (`sparse_kl_target`) the fused loss can use."""
    # The class that declares the sparse target must also be the one whose `loss` is in force:
    # a subclass that overrides `loss` (a plugin with another loss) trains through `task.loss`.
    owner = next((c for c in type(task).__mro__ if "sparse_kl_target" in vars(c)), None)
    return owner is not None and type(task).loss is owner.loss


def supports(module: torch.nn.Module, task: Any) -> bool:
    """Whether `FusedStep` computes this model on this task: stacked `mlp1` or `transformer`, and a sparse-KL task."""
    return isinstance(module, (StackedMLP, StackedTransformer)) and supports_fused(task)


def sparse_kl(task: Any, batch: Batch) -> tuple[Tensor, Tensor]:
    """(index, probs) of the task's sparse KL target for `batch` (see the module docstring)."""
    return task.sparse_kl_target(batch)


class _WeightedBag(torch.autograd.Function):
    """x_b = sum_i w_bi E[t_bi] (an embedding bag with per-sample weights) with an index_add backward.

    The forward is `F.embedding_bag`; its stock CPU backward sorts the indices and is 2-10x
    slower than one `index_add_` of the weighted output gradients, which is what this does.
    """

    @staticmethod
    def forward(ctx: Any, tokens: Tensor, weights: Tensor, E: Tensor) -> Tensor:
        # tokens, weights: [rows, set]; E: [n_embeddings, d] -> [rows, d]
        ctx.save_for_backward(tokens, weights, E)
        return F.embedding_bag(tokens, E, mode="sum", per_sample_weights=weights)

    @staticmethod
    def backward(ctx: Any, grad_x: Tensor) -> tuple[None, Tensor | None, Tensor | None]:
        tokens, weights, E = ctx.saved_tensors
        grad_w = grad_E = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.einsum("bd,bsd->bs", grad_x, E[tokens])
        if ctx.needs_input_grad[2]:
            rows = (grad_x.unsqueeze(1) * weights.unsqueeze(-1)).reshape(-1, E.shape[1])  # [rows * set, d]
            grad_E = torch.zeros_like(E).index_add_(0, tokens.reshape(-1), rows)
        return None, grad_w, grad_E


def bag_residual(module: StackedMLP, tokens: Tensor, weights: Tensor) -> Tensor:
    """`module.residual(tokens, weights)` with the input sum through `_WeightedBag`: [inst, batch, d_model]."""
    W_E = module.p("embed.W_E")  # [inst, n_inputs, d_model]
    n, V, d = W_E.shape
    offset = torch.arange(n, device=tokens.device).view(n, 1, 1) * V
    x = _WeightedBag.apply((tokens + offset).flatten(0, 1), weights.to(W_E.dtype).flatten(0, 1),
                           W_E.reshape(n * V, d))  # sum_i w_i E[t_i]: [inst * batch, d_model]
    return module.run_blocks(x.view(n, tokens.shape[1], d))


class FusedStep(AutogradStep):
    """The training step with the fused unembedding + sparse KL (see the module docstring)."""

    backend = "fused"

    def __init__(self, module: torch.nn.Module, task: Any, cfg: Any, device: torch.device):
        super().__init__(module, task, cfg, device, stacked=True)
        fast = torch_topk_sampler(task, cfg.batch_size, device)
        self.sampler = CheckedSampler(task, cfg.batch_size, device, fast) if fast is not None else None

    def sample(self, generators: list[torch.Generator]) -> Batch:
        return self.sampler(generators) if self.sampler is not None else super().sample(generators)

    def loss(self, batch: Batch) -> Tensor:
        index, probs = sparse_kl(self.task, batch)
        W_U, b_U = self.module.unembed_params()  # type: ignore[operator]
        if isinstance(self.module, StackedMLP):
            r = bag_residual(self.module, **batch.inputs)  # [inst, batch, d_model]
        else:
            r = stacked_transformer_residual(self.module, **batch.inputs)  # type: ignore[arg-type]
        mm_dtype = torch.bfloat16 if self.cfg.precision == "bf16" else None
        return unembed_kl(r, W_U, b_U, index, probs, mm_dtype=mm_dtype)


class _UnembedKL(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, r: Tensor, W: Tensor, b: Tensor | None, index: Tensor, probs: Tensor,
                chunk_bytes: int, mm_dtype: torch.dtype | None) -> Tensor:
        # r [N, B, d], W [N, d, V], b [N, V] or None, index/probs [N, B, k]  ->  mean loss per instance [N]
        N, B, d = r.shape
        V = W.shape[-1]
        want_grad = any(ctx.needs_input_grad[:3])  # grad mode is off inside forward; ask autograd
        grad_r = torch.empty_like(r) if ctx.needs_input_grad[0] else None
        grad_W = torch.zeros_like(W) if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros(N, V, dtype=r.dtype, device=r.device) if b is not None and ctx.needs_input_grad[2] \
            else None
        probs = probs.to(r.dtype)
        neg_probs = -probs
        loss_sum = torch.xlogy(probs, probs).sum((-1, -2))  # [N]: the entropy term, summed over the batch
        # Work in base 2: exp2 is ~3x cheaper than exp on the CPU, and log2(e) folds into W_U and b_U,
        # so z2 = z * log2(e) comes straight out of the matmul and softmax(z) = 2^(z2 - max) / sum.
        Wm = (W * LOG2E).to(mm_dtype or W.dtype)
        bm = b * LOG2E if b is not None else torch.zeros(N, V, dtype=r.dtype, device=r.device)
        rm = r if mm_dtype is None else r.to(mm_dtype)
        Wt = W.transpose(1, 2) if mm_dtype is None else W.to(mm_dtype).transpose(1, 2)
        # Chunk shape: `group` instances x `rows` batch rows, with group * rows * V * 4 bytes ~ chunk_bytes.
        rows = max(1, min(B, chunk_bytes // (4 * V)))
        group = max(1, min(N, chunk_bytes // (4 * V * rows))) if rows == B else 1
        for n0 in range(0, N, group):
            n1 = min(N, n0 + group)
            for s0 in range(0, B, rows):
                s1 = min(B, s0 + rows)
                r_c = rm[n0:n1, s0:s1]  # [g, rows, d]
                if mm_dtype is None:
                    z = torch.baddbmm(bm[n0:n1].unsqueeze(1), r_c, Wm[n0:n1])  # [g, rows, V], base-2 logits
                else:
                    z = torch.bmm(r_c, Wm[n0:n1]).to(r.dtype).add_(bm[n0:n1].unsqueeze(1))
                idx = index[n0:n1, s0:s1]
                p = probs[n0:n1, s0:s1]
                m = z.amax(-1, keepdim=True)  # [g, rows, 1]
                zs = (p * z.gather(-1, idx)).sum(-1)  # [g, rows]
                z.sub_(m).exp2_()  # unnormalised softmax, in place
                s = z.sum(-1, keepdim=True)
                # logsumexp(z) = ln 2 * (m + log2 s); the target term is p . z = ln 2 * (p . z2)
                loss_sum[n0:n1] += LN2 * (m.squeeze(-1) + s.squeeze(-1).log2() - zs).sum(-1)
                if not want_grad:
                    continue
                z.div_(s)  # softmax
                z.scatter_add_(-1, idx, neg_probs[n0:n1, s0:s1])  # g = softmax - p*
                gm = z if mm_dtype is None else z.to(mm_dtype)
                if grad_W is not None:
                    grad_W[n0:n1].baddbmm_(r_c.transpose(1, 2), gm) if mm_dtype is None else \
                        grad_W[n0:n1].add_(torch.bmm(r_c.transpose(1, 2), gm))
                if grad_r is not None:
                    torch.bmm(gm, Wt[n0:n1], out=grad_r[n0:n1, s0:s1]) if mm_dtype is None else \
                        grad_r[n0:n1, s0:s1].copy_(torch.bmm(gm, Wt[n0:n1]))
                if grad_b is not None:
                    grad_b[n0:n1] += z.sum(1)
        ctx.save_for_backward(grad_r, grad_W, grad_b)
        ctx.batch = B
        return loss_sum / B

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grad_r, grad_W, grad_b = ctx.saved_tensors
        if grad_r is None and grad_W is None and grad_b is None and any(ctx.needs_input_grad[:3]):
            raise RuntimeError("unembed_kl: gradients were not computed in the forward (grad mode was off)")
        c = grad_out / ctx.batch  # [N]: d(mean loss)/d(sum over the batch)
        gr = grad_r * c.view(-1, 1, 1) if grad_r is not None else None
        gW = grad_W * c.view(-1, 1, 1) if grad_W is not None else None
        gb = grad_b * c.view(-1, 1) if grad_b is not None else None
        return gr, gW, gb, None, None, None, None


def unembed_kl(r: Tensor, W_U: Tensor, b_U: Tensor | None, index: Tensor, probs: Tensor, *,
               chunk_bytes: int = CHUNK_BYTES, mm_dtype: torch.dtype | None = None) -> Tensor:
    """Mean over the batch of KL(p* || softmax(r W_U + b_U)), per instance, with a fused chunked backward.

    r: [*inst, B, d]; W_U: [*inst, d, V]; b_U: [*inst, V] or None; index, probs: [*inst, B, k]
    (p* is `probs` on `index`, zero elsewhere; probs sum to 1). Returns [*inst] (a scalar without an
    instance dim). `mm_dtype=torch.bfloat16` runs the three matmuls in bf16 (softmax and sums stay fp32).
    """
    stacked = r.dim() == 3
    if not stacked:
        r, W_U, index, probs = r.unsqueeze(0), W_U.unsqueeze(0), index.unsqueeze(0), probs.unsqueeze(0)
        b_U = b_U.unsqueeze(0) if b_U is not None else None
    out = _UnembedKL.apply(r, W_U, b_U, index, probs, chunk_bytes, mm_dtype)
    return out if stacked else out[0]


def unembed_kl_reference(r: Tensor, W_U: Tensor, b_U: Tensor | None, index: Tensor, probs: Tensor) -> Tensor:
    """The same quantity with plain autograd ops (for tests): full logits, logsumexp, gather."""
    z = r @ W_U if r.dim() == 2 else torch.bmm(r, W_U)
    if b_U is not None:
        z = z + b_U.unsqueeze(-2)
    loss = torch.xlogy(probs, probs).sum(-1) - (probs * z.gather(-1, index)).sum(-1) + torch.logsumexp(z, -1)
    return loss.mean(-1)
