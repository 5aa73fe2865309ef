"""Probes of the clause family (docs/science.md §7): how many clauses a fitted code covers, and whether
the clauses the model computes are the ones its codes cover.

Both ask the fitted explanation for `clause_codes()` (the `HasClauseCodes` capability, which the
`feature-channel` fit offers) and record "not applicable" for any other explanation. Like every
probe they are scored next to the null models (`untrained`, `shuffled`), whose codes are refitted.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

from sparsebench.api import Batch, Fitted, Task
from sparsebench.probes import NotApplicable, Probe, cannot

COMPUTED_BAL_ACC = 0.95  # a model "computes" clause c when its per-clause balanced accuracy on the batch is at least this


@runtime_checkable
class HasClauseCodes(Protocol):
    """Exact and near clause codes on the hidden units."""

    def clause_codes(self) -> tuple[Tensor, Tensor]:
        """(exact [H, K] bool, near [H, K] bool)."""


class CodeCount(Probe):
    """Weights: how many clauses the fitted code covers (a clause is covered by at least one exact code)."""

    level = "weights"
    main = "covered"
    families = ("clauses",)
    directions = {"covered": "higher", "exact_codes": "higher", "near_codes": "higher"}

    def score(self, model: Any, fitted: Fitted, task: Task, batch: Batch) -> dict[str, float] | NotApplicable:
        if not isinstance(fitted, HasClauseCodes):
            return cannot(fitted, "clause codes")
        exact, near = fitted.clause_codes()
        return {"covered": exact.any(0).float().mean().item(), "exact_codes": float(exact.sum()),
                "near_codes": float(near.sum())}


def per_clause_balanced_accuracy(logits: Tensor, target: Tensor) -> Tensor:
    """[K]: (TPR + TNR) / 2 of each clause over the batch (a class absent from the batch drops out)."""
    y, pred = target.bool(), logits > 0
    pos, neg = y.sum(0).float(), (~y).sum(0).float()
    tpr = (pred & y).sum(0) / pos.clamp_min(1)
    tnr = (~pred & ~y).sum(0) / neg.clamp_min(1)
    return torch.where((pos > 0) & (neg > 0), (tpr + tnr) / 2, torch.where(pos > 0, tpr, tnr))


class CodeRecall(Probe):
    """Behaviour: of the task's clauses, the share that the model computes *and* the code covers.

    recall = |computed ∩ covered| / K (the main score: 1 when every clause is computed through an exact
    code; an untrained model computes none and scores 0); precision = |computed ∩ covered| / |covered|
    (how many coded clauses the model really computes); f1 of the two. "Computed" = per-clause balanced
    accuracy >= COMPUTED_BAL_ACC on the probe batch.
    """

    level = "behaviour"
    main = "recall"
    families = ("clauses",)
    directions = {"recall": "higher", "precision": "higher", "f1": "higher"}

    def score(self, model: Any, fitted: Fitted, task: Task, batch: Batch) -> dict[str, float] | NotApplicable:
        if not isinstance(fitted, HasClauseCodes):
            return cannot(fitted, "clause codes")
        exact, _ = fitted.clause_codes()
        with torch.no_grad():
            computed = per_clause_balanced_accuracy(model(**batch.inputs).float(), batch.target) >= COMPUTED_BAL_ACC
        covered = exact.any(0).to(computed.device)
        both = (computed & covered).sum().item()
        recall = both / covered.numel()
        out = {"recall": recall}
        if covered.any():
            precision = both / covered.sum().item()
            out["precision"] = precision
            out["f1"] = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        return out
