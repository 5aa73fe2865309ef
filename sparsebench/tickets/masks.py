"""From detector scores to W1 masks: budgets, top-B masks, and the site-to-mask translation.

A mask keeps `budget(H, d, s) = round((1 - s) H d)` coordinates of W1 (H × d). Weight-space
scores ([H, d], higher = keep first) keep their top B coordinates (stable sort: ties go to
the lower flat index). Feature-space scores rank *sites* (h, c) ([H, K]); the translation
[reading, TICKETS.md] walks the sites in score order and keeps, for each, the q coordinates
i of row h with the largest alignment W1_e[h, i] · a_c[i], where a_c = C0[:, vars_c] τ_c is
the clause's template written in C0's coordinates; coordinates already kept add nothing,
and the walk stops when B coordinates are kept (the last site may add fewer than q). If
the sites run out first, the rest of the budget is filled by |W1_e| (reported as `filled`).
"""

from __future__ import annotations

import torch
from torch import Tensor


def budget(H: int, d: int, sparsity: float) -> int:
    """Coordinates a mask keeps at `sparsity` (at least 1)."""
    return max(1, round((1 - sparsity) * H * d))


def top_mask(scores: Tensor, keep: int) -> Tensor:
    """[H, d] 0/1 float mask of the `keep` highest scores (stable: ties to the lower flat index)."""
    flat = scores.detach().reshape(-1).float()
    order = torch.sort(flat, descending=True, stable=True).indices[:keep]
    mask = torch.zeros_like(flat)
    mask[order] = 1.0
    return mask.view_as(scores)


def clause_directions(C0: Tensor, variables: Tensor, signs: Tensor) -> Tensor:
    """a_c = C0[:, vars_c] τ_c for every clause: [K, d]."""
    return torch.einsum("dkj,kj->kd", C0.detach().float()[:, variables], signs.float())


def translate(site_scores: Tensor, W1: Tensor, C0: Tensor, variables: Tensor, signs: Tensor, keep: int,
              quota: int) -> tuple[Tensor, int]:
    """(mask [H, d], coordinates filled by |W1| after the sites ran out): see the module docstring.

    site_scores: [H, K] (higher first; ties in (h, c) flat order); W1: [H, d] at the detection step.
    """
    H, K = site_scores.shape
    d = W1.shape[1]
    align = W1.detach().float().unsqueeze(1) * clause_directions(C0, variables, signs).unsqueeze(0)  # [H, K, d]
    best = torch.sort(align, dim=-1, descending=True, stable=True).indices[..., :quota]  # [H, K, q]
    order = torch.sort(site_scores.detach().reshape(-1).float(), descending=True, stable=True).indices.tolist()
    mask = torch.zeros(H * d)
    kept = 0
    best_flat = best.view(H * K, -1).tolist()
    for site in order:
        h = site // K
        for i in best_flat[site]:
            j = h * d + i
            if mask[j] == 0:
                mask[j] = 1.0
                kept += 1
                if kept == keep:
                    return mask.view(H, d), 0
    filled = keep - kept
    rest = W1.detach().abs().reshape(-1).float().masked_fill(mask.bool(), -1.0)
    mask[torch.sort(rest, descending=True, stable=True).indices[:filled]] = 1.0
    return mask.view(H, d), filled


def jaccard(a: Tensor, b: Tensor) -> float:
    """|a ∩ b| / |a ∪ b| of two 0/1 masks (1.0 for two empty masks)."""
    a, b = a.bool(), b.bool()
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 1.0
