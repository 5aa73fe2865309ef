"""Hook-based probes: score a fitted explanation against a model (docs/science.md §5).

Each probe declares the task families it understands, the hook names it reads,
the capabilities of a fitted explanation it needs (`api.PredictsOutputs`, ...),
its main score and each score's direction. `score` returns the scores, or a
`NotApplicable` with a one-line reason when the explanation makes no such
prediction (e.g. JL predicts no hidden code): a probe never makes up a number.
Probes read activations at the readout position, so the same probe works on
`mlp1` ([batch, d]) and on a transformer ([batch, pos, d]).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from sparsebench.api import (Batch, Direction, Fitted, HasTokenCode, Patchable, PredictsCandidates, PredictsHidden,
                             PredictsOutputs, Task, last_position)

MIN_ABLATION_GAP = 0.01  # nats: loss recovered is defined only if mean ablation costs at least this much
OWN_NULL = "@"  # a score key "name@null" is the probe's own null for score `name` (recorded under its nulls)


@dataclass(frozen=True)
class NotApplicable:
    reason: str  # one line: why this probe has no number for this (model, mechanism)


class Probe(ABC):
    """A named set of scores for (model, fitted explanation, task, evaluation batch)."""

    level: ClassVar[str]  # "weights", "activations", "behaviour" or "causal"
    reads: ClassVar[tuple[str, ...]] = ()  # hook names read through run_with_cache / run_with_hooks
    main: ClassVar[str]  # the score the leaderboard ranks by
    directions: ClassVar[dict[str, Direction]]  # every score this probe reports, with the better direction
    families: ClassVar[tuple[str, ...]] = ("topk",)  # task families it understands
    # True if relabelling the input tokens (permuting the rows of W_E) cannot change the score: it reads
    # only the model's internal computation (weights statistics, activations vs a fit of the same model,
    # within-model loss ratios), never the correspondence between input and output tokens.
    relabel_invariant: ClassVar[bool] = False
    name: str = ""

    @abstractmethod
    def score(self, model: Any, fitted: Fitted, task: Task, batch: Batch) -> dict[str, float] | NotApplicable:
        ...


def cannot(fitted: Fitted, what: str) -> NotApplicable:
    """Not applicable: the explanation does not predict `what` (its own reason if it gives one)."""
    return NotApplicable(fitted.why_not or f"{fitted.mechanism} predicts no {what}")


def _f1(pred: Tensor, actual: Tensor, what: str) -> dict[str, float] | NotApplicable:
    """Precision, recall and F1 of boolean `pred` against boolean `actual` (pooled over all entries).

    Undefined (not applicable) when nothing is predicted or nothing is actually `what`.
    """
    n_pred, n_actual = pred.sum().item(), actual.sum().item()
    if n_pred == 0 or n_actual == 0:
        side = "predicted" if n_pred == 0 else "observed"
        return NotApplicable(f"nothing {side} {what}: precision and recall are undefined")
    tp = (pred & actual).sum().item()
    p, r = tp / n_pred, tp / n_actual
    return {"precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-12)}


def model_hook_names(model: Any, batch: Batch) -> set[str]:
    """Every hook name the model answers (from its hook_dict, else from one cached forward)."""
    names = getattr(model, "hook_dict", None)
    if names:
        return set(names)
    with torch.no_grad():
        _, cache = model.run_with_cache(**{k: v[:1] for k, v in batch.inputs.items()})
    return set(cache.keys())


class Bimodality(Probe):
    """Weights: how well E @ W_in splits into two clusters (two-means R^2); the code's footprint."""

    level = "weights"
    relabel_invariant = True
    main = "r2"
    directions = {"r2": "higher", "code_density": "lower"}

    def score(self, model, fitted, task, batch):
        from sparsebench.stats import two_means

        if not isinstance(fitted, HasTokenCode):
            return cannot(fitted, "binary token code")
        with torch.no_grad():
            M = (model.W_E @ model.W_in[0]).float()
        split = two_means(M.flatten())
        code = fitted.token_code()
        return {"r2": float(split.r2), "code_density": code.float().mean().item()}


class MaskAgreement(Probe):
    """Weights: Jaccard of the hash mask of E @ W_in with the (transposed) mask of W_out @ W_U."""

    level = "weights"
    main = "jaccard"
    directions = {"jaccard": "higher"}

    def score(self, model, fitted, task, batch):
        if not isinstance(fitted, HasTokenCode):
            return cannot(fitted, "token code")
        a, b = fitted.token_code(), fitted.output_code()
        inter = (a & b).sum().item()
        return {"jaccard": inter / max((a | b).sum().item(), 1)}


class HiddenCode(Probe):
    """Activations: is hidden unit j active exactly when the mechanism says (e.g. j in the union)?"""

    level = "activations"
    families = ("topk", "clauses")
    relabel_invariant = True
    reads = ("blocks.0.mlp.hook_post",)
    main = "f1"
    directions = {"precision": "higher", "recall": "higher", "f1": "higher"}

    def score(self, model, fitted, task, batch):
        predicted = fitted.hidden_active(batch) if isinstance(fitted, PredictsHidden) else None
        if predicted is None:
            return cannot(fitted, "hidden code")
        with torch.no_grad():
            _, cache = model.run_with_cache(**batch.inputs, names_filter=list(self.reads))
        post = last_position(cache[self.reads[0]]).float()  # [batch, d_mlp]
        # "Active" relative to each unit's scale, so a unit idling at a tiny positive value
        # (a bias that has not quite reached 0) still counts as off.
        active = post > 1e-3 * post.amax(0, keepdim=True).clamp_min(1e-6)
        return _f1(predicted.to(active.device), active, "active")


class Candidates(Probe):
    """Behaviour: the mechanism's predicted top tier against the model's, and whose false positives."""

    level = "behaviour"
    main = "f1"
    directions = {"precision": "higher", "recall": "higher", "f1": "higher", "fp_explained": "higher"}

    def score(self, model, fitted, task, batch):
        tokens = batch.inputs["tokens"]
        if isinstance(fitted, PredictsCandidates):
            predicted = fitted.predict_candidates(batch)
        else:
            logits = fitted.predict_logits(batch) if isinstance(fitted, PredictsOutputs) else None
            if logits is None:
                return cannot(fitted, "outputs")
            predicted = task.top_tier(logits, batch)
        with torch.no_grad():
            actual = task.top_tier(model(**batch.inputs), batch)
        predicted = predicted.to(actual.device)
        out = _f1(predicted, actual, "in the top tier")
        if isinstance(out, NotApplicable):
            return out
        members = torch.zeros_like(actual).scatter_(-1, tokens, True)
        model_fp = actual & ~members
        n_fp = model_fp.sum().item()
        # Of the model's false positives, the share the mechanism predicted (None-free: if the
        # model has none, the score is undefined and left out rather than invented).
        if n_fp:
            out["fp_explained"] = (model_fp & predicted).sum().item() / n_fp
        return out


class Prediction(Probe):
    """Behaviour: how much of the model's output distribution the mechanism's own prediction explains.

    kl = KL(model || prediction). Raw KL is not comparable across models (a near-uniform
    untrained model is trivially close to a flat prediction), so the main score is
    kl_explained = 1 - KL(model || prediction) / KL(model || uniform): the share of the
    model's departure from uniform that the prediction accounts for. It is left out
    (not applicable) when the model is itself within 1e-3 nats of uniform.
    """

    level = "behaviour"
    main = "kl_explained"
    directions = {"kl_explained": "higher", "kl": "lower"}

    def score(self, model, fitted, task, batch):
        logits = fitted.predict_logits(batch) if isinstance(fitted, PredictsOutputs) else None
        if logits is None:
            return cannot(fitted, "outputs")
        with torch.no_grad():
            m = torch.log_softmax(model(**batch.inputs).double(), -1)
        f = torch.log_softmax(logits.double().to(m.device), -1)
        p = m.exp()
        kl = (p * (m - f)).sum(-1).mean().item()
        kl_uniform = ((p * m).sum(-1) + math.log(m.shape[-1])).mean().item()
        if kl_uniform <= 1e-3:
            return NotApplicable("the model's output is uniform to within 1e-3 nats: nothing to explain")
        return {"kl_explained": 1 - kl / kl_uniform, "kl": kl}


class Patch(Probe):
    """Causal: patch the mechanism's idealised activation in; loss recovered vs mean ablation.

    Its own null ("resampled"): the same idealised activations, each paired with another
    sample of the batch (rows rolled by one). It keeps every statistic of the explanation
    but its input-specificity, and applies to any model where ablation costs something.
    """

    level = "causal"
    families = ("topk", "clauses")
    relabel_invariant = True  # a ratio of the model's own losses: a relabelled model recovers the same share
    main = "loss_recovered"
    directions = {"loss_recovered": "higher", "kl_to_clean": "lower"}
    reads = ()  # the hook comes from the mechanism (Patchable.ideal_activation)

    def score(self, model, fitted, task, batch):
        ideal = fitted.ideal_activation(batch) if isinstance(fitted, Patchable) else None
        if ideal is None:
            return cannot(fitted, "idealised activation")
        hook_name, value = ideal
        if hook_name not in model_hook_names(model, batch):
            return NotApplicable(f"the model has no hook {hook_name!r} to patch")
        with torch.no_grad():
            clean_logits, cache = model.run_with_cache(**batch.inputs, names_filter=[hook_name])
            act = cache[hook_name]
            mean = last_position(act).mean(0, keepdim=True)

            def replace(new: Tensor):
                def hook(activation: Tensor, hook: Any = None) -> Tensor:
                    out = activation.clone()
                    if out.dim() == 3:
                        out[:, -1] = new.to(out.dtype).expand_as(out[:, -1])
                    else:
                        out[:] = new.to(out.dtype).expand_as(out)
                    return out
                return hook

            patched = model.run_with_hooks(**batch.inputs, fwd_hooks=[(hook_name, replace(value))])
            resampled = model.run_with_hooks(**batch.inputs, fwd_hooks=[(hook_name, replace(value.roll(1, 0)))])
            ablated = model.run_with_hooks(**batch.inputs, fwd_hooks=[(hook_name, replace(mean))])
            l_clean, l_patch, l_abl, l_resampled = (task.loss(x.float(), batch).mean().item()
                                                    for x in (clean_logits, patched, ablated, resampled))
            gap = l_abl - l_clean
            if gap < MIN_ABLATION_GAP:
                # Loss recovered is a ratio over this gap: with nothing lost there is nothing to recover,
                # and a tiny or negative gap (ablation helps an untrained model) makes the ratio noise.
                return NotApplicable(f"mean-ablating {hook_name} changes the loss by {gap:+.3g} nats "
                                     f"(< {MIN_ABLATION_GAP}): nothing to recover")
            output_kl = getattr(task, "output_kl", None)  # a task whose outputs are not one softmax says how
            if output_kl is not None:
                kl = output_kl(clean_logits.float(), patched.float()).mean().item()
            else:
                c = torch.log_softmax(clean_logits.float(), -1)
                p = torch.log_softmax(patched.float(), -1)
                kl = (c.exp() * (c - p)).sum(-1).mean().item()
        return {"loss_recovered": (l_abl - l_patch) / gap, "kl_to_clean": kl,
                f"loss_recovered{OWN_NULL}resampled": (l_abl - l_resampled) / gap}
