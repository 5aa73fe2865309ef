"""Probes of the clause family (docs/science.md §7): do the hidden units a fitted code names carry the
clauses the model decides, and how many codes does the model's feature space hold.

Both read the explanation's `clause_codes()` (`api.HasClauseCodes`, which the `feature-channel` fit
offers) and are not applicable to any other explanation. Like every probe they are scored beside the
control explanations and the null models (`sparsebench.explain`).

- `code-recall` (behaviour, ranked): Matthews correlation, pooled over samples and clauses, of "a unit
  coded for clause c is active" with "the model says clause c holds" (logit > 0). Chance-corrected: 0
  for codes on units that do not carry the clause (permuted units, random sites, a re-initialised
  W_in) and for no codes at all (an uncovered clause predicts "never"); 1 when every decision of the
  model is carried by its coded units, as in the exact construction. `recall` is the share of the
  model's "holds" decisions that a coded unit carries.
- `code-count` (weights, a model diagnostic: shown, never ranked): how many codes the model's feature
  space holds (clauses covered, exact and near codes). It reads the model, not a claim about it (a
  control with the same codes on other units has the same counts); the untrained null gives the count
  that chance leaves at initialisation.
"""

from __future__ import annotations

from typing import Any

import torch

from sparsebench.api import Batch, Fitted, HasClauseCodes, NotApplicable, Task, last_position
from sparsebench.probes import Probe, active_units, cannot, mcc


class CodeCount(Probe):
    """Diagnostic: clauses covered (share with at least one exact code), exact and near codes."""

    level = "weights"
    ranked = False
    reads_fit = ("clause_codes",)
    main = "covered"
    families = ("clauses",)
    directions = {"covered": "higher", "exact_codes": "higher", "near_codes": "higher"}

    def score(self, model: Any, fitted: Fitted, task: Task, batch: Batch) -> dict[str, float] | NotApplicable:
        if not isinstance(fitted, HasClauseCodes):
            return cannot(fitted, "clause codes")
        exact, near = fitted.clause_codes()  # [H, K] bool each
        return {"covered": exact.any(0).float().mean().item(), "exact_codes": float(exact.sum()),
                "near_codes": float(near.sum())}


class CodeRecall(Probe):
    """Behaviour: are the model's clause decisions carried by the units coded for them (MCC, chance-corrected)?"""

    level = "behaviour"
    reads = ("blocks.0.mlp.hook_post",)
    reads_fit = ("clause_codes",)
    main = "mcc"
    families = ("clauses",)
    directions = {"mcc": "higher", "precision": "higher", "recall": "higher", "f1": "higher"}

    def score(self, model: Any, fitted: Fitted, task: Task, batch: Batch) -> dict[str, float] | NotApplicable:
        if not isinstance(fitted, HasClauseCodes):
            return cannot(fitted, "clause codes")
        exact, _ = fitted.clause_codes()  # [H, K] bool
        with torch.no_grad():
            logits, cache = model.run_with_cache(**batch.inputs, names_filter=list(self.reads))
        active = active_units(last_position(cache[self.reads[0]]))  # [batch, H]
        carried = (active.float() @ exact.to(active.device).float()) > 0  # [batch, K]: a coded unit of c is on
        return mcc(carried, last_position(logits).float() > 0, "clauses decided to hold")
