"""Control explanations: wrong explanations derived from a fit, scored beside it on the same model.

A null (`nulls.py`) asks "does the probe score high on a model that learned nothing?"; a control
asks "does the probe score high for an explanation that is wrong, empty, or right for the wrong
units, on this very model?". An explanation counts on a probe only by its margin over the
strongest of both (docs/leaderboard.md). Built-ins:

- `answer-only`: names the target and nothing else: the best prediction of the model's outputs that
  reads only the target. Top-k family: the target set (and its probabilities) with one fitted floor
  for every other token; clause family: which clauses hold, each clause's logit one fitted value when
  it holds and another when it does not. Predicts no hidden units.
- `random-code`: every input gets a random code of the same density (the fit's own
  `random_code`); for Bloom, random hashes of each token's hash size, on both sides; for
  feature channels, each clause's codes on as many random units.
- `permuted-units`: the fit's code with its hidden units relabelled at random (`permuted_units`).
- `resampled`: the fit's own predictions, each given to another sample of the batch: every
  statistic of the explanation kept, its input-specificity lost.
- `reinit-W_E`, `reinit-W_in`, `reinit-W_out`, `reinit-W_U`, `reinit-W_OV`: the mechanism refitted to a copy of
  the model whose weight group is re-initialised in every layer (one group at a time; the model
  randomisation test): an explanation read off a model that no longer has what the fit should read.
  `W_OV` (the attention's value and output weights) exists for the transformer only.

A control returns a `Fitted` or `NotApplicable` (e.g. `permuted-units` for a fit without a code).
A *partial* control is wrong about one thing only (which units, which weights were read); when it
changes nothing a probe reads (less than the probe's `blind_below`, 1% of a predicted set: a refit
to other weights is never bitwise the fit), that probe cannot see what it gets wrong, and it is
recorded as invisible to that probe instead of as a tie (`explain.blind`). A tie with a control that is wrong
about everything (`answer-only`, `random-code`, `resampled`) stays a tie: the explanation adds
nothing over it. A plugin adds a control as one class and one entry point in the group
`sparsebench.controls`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from sparsebench.api import Batch, Fitted, NotApplicable, Recodable, Task
from sparsebench.build import make_model
from sparsebench.config import to_dict
from sparsebench.stats import kl_from, minimize_log_scalar


class Control(ABC):
    name: str = ""
    description: ClassVar[str]
    partial: ClassVar[bool] = False  # wrong about one thing only: a probe that cannot see it records no number

    @abstractmethod
    def make(self, fitted: Fitted, model: Any, task: Task, *, refit: Callable[[Any], Fitted],
             generator: torch.Generator) -> Fitted | NotApplicable:
        """The control explanation of `fitted` (of `model`). `refit(m)` fits the same mechanism to another
        model with the fit's own generator; `generator` draws the control's randomness."""


# ----- answer-only ---------------------------------------------------------------------------------

class AnswerOnlyFit(Fitted):
    """Predicts log p* on the target set and one fitted floor below it for every other token."""

    mechanism = "answer-only"
    why_not = "answer-only names the target and nothing else (no hidden units, no activations)"

    def __init__(self, task: Task, floor: float):
        self.task, self.floor = task, floor  # floor: logit of a non-member, relative to log p* of members

    def summary(self) -> dict[str, float | int | str]:
        return {"floor": self.floor}

    def predict_logits(self, batch: Batch) -> Tensor:
        tokens, p = batch.inputs["tokens"], batch.target  # [batch, k]
        out = torch.full((tokens.shape[0], self.task.n_outputs), self.floor, dtype=torch.float64, device=tokens.device)
        return out.scatter(-1, tokens, p.double().clamp_min(1e-30).log())

    def predict_candidates(self, batch: Batch) -> Tensor:
        tokens = batch.inputs["tokens"]
        return torch.zeros(tokens.shape[0], self.task.n_outputs, dtype=torch.bool,
                           device=tokens.device).scatter_(-1, tokens, True)


class ClauseAnswerOnlyFit(Fitted):
    """Clause family: each clause's logit is `on[c]` when the clause holds and `off[c]` when it does not."""

    mechanism = "answer-only"
    why_not = AnswerOnlyFit.why_not

    def __init__(self, on: Tensor, off: Tensor):
        self.on, self.off = on, off  # [K] float64 logits

    @classmethod
    def best(cls, logits: Tensor, target: Tensor) -> "ClauseAnswerOnlyFit":
        """The values minimising the summed Bernoulli KL(model || answer) on a batch (logits, target: [N, K]):
        per clause and label, the logit of the model's mean probability (a cross-entropy's minimiser). A label
        that never occurs in the batch gets the clause's mean over the whole batch."""
        p, y = torch.sigmoid(logits.double()), target.bool()  # [N, K]

        def mean_p(where: Tensor) -> Tensor:  # [K]: the model's mean probability over the samples `where` marks
            n = where.sum(0)
            return torch.where(n > 0, (p * where).sum(0) / n.clamp_min(1), p.mean(0)).clamp(1e-9, 1 - 1e-9)

        return cls(torch.logit(mean_p(y)), torch.logit(mean_p(~y)))

    def summary(self) -> dict[str, float | int | str]:
        return {"on_mean": float(self.on.mean()), "off_mean": float(self.off.mean())}

    def predict_logits(self, batch: Batch) -> Tensor:
        y = batch.target.bool()  # [batch, K]
        return torch.where(y, self.on.to(y.device), self.off.to(y.device))


class AnswerOnly(Control):
    description = "names the target and nothing else (the best prediction of the outputs from the target alone)"
    fit_samples = 1024  # samples (drawn with the control's generator) to fit the floor or the clause logits

    def make(self, fitted, model, task, *, refit, generator):
        if task.family not in ("topk", "clauses"):
            return NotApplicable(f"answer-only is defined for the top-k and clause families (not {task.family!r})")
        device = next(model.parameters()).device if any(True for _ in model.parameters()) else "cpu"
        batch = task.sample(self.fit_samples, generator=generator, device=device)
        with torch.no_grad():
            logits = model(**batch.inputs)
        if task.family == "clauses":
            return ClauseAnswerOnlyFit.best(logits, batch.target)
        kl = kl_from(logits)
        probe = AnswerOnlyFit(task, 0.0)
        base = probe.predict_logits(batch)
        members = probe.predict_candidates(batch)
        # The floor (in nats below log p*) that minimises KL(model || answer): the best answer-only prediction.
        depth, _ = minimize_log_scalar(lambda d: kl(base.masked_fill(~members, -d)).mean().item(), 1e-2, 1e3)
        return AnswerOnlyFit(task, -depth)


# ----- wrong codes -------------------------------------------------------------------------------

class RandomCode(Control):
    description = "a random code of the same density per input (the fit's statistics, not its content)"

    def make(self, fitted, model, task, *, refit, generator):
        if not isinstance(fitted, Recodable):
            return NotApplicable(f"{fitted.mechanism} has no code over hidden units to randomise")
        return fitted.random_code(generator)


class PermutedUnits(Control):
    description = "the fit's code with its hidden units relabelled at random (right code, wrong units)"
    partial = True

    def make(self, fitted, model, task, *, refit, generator):
        if not isinstance(fitted, Recodable) or not hasattr(model, "W_in") or int(getattr(model, "n_layers", 0)) < 1:
            return NotApplicable(f"{fitted.mechanism} has no code over hidden units to permute")
        m = model.W_in.shape[-1]
        perm = torch.randperm(m, generator=generator)
        while m > 1 and bool((perm == torch.arange(m)).all()):  # never the identity
            perm = torch.randperm(m, generator=generator)
        return fitted.permuted_units(perm)


# ----- wrong pairing -----------------------------------------------------------------------------

def _rolled(batch: Batch) -> Batch:
    """The batch with every sample moved one place on: row i holds sample i - 1."""
    return Batch({k: v.roll(1, 0) for k, v in batch.inputs.items()}, batch.target.roll(1, 0))


class ResampledFit(Fitted):
    """A fit whose every per-sample prediction is the one it makes for another sample of the batch."""

    BATCHED = ("hidden_active", "predict_logits", "predict_candidates", "ideal_activation")

    def __init__(self, inner: Fitted):
        self.inner = inner
        self.mechanism = inner.mechanism
        # What it lacks is what has no per-sample prediction to re-pair (e.g. a clause code, read with the
        # model's own activations): the control does not apply to a probe that reads only that.
        self.why_not = "resampled re-pairs the fit's per-sample predictions, and this probe reads none of them"

    def summary(self) -> dict[str, float | int | str]:
        return self.inner.summary()

    def __getattr__(self, name: str) -> Any:  # only what the inner fit offers (so capability checks stay true)
        if name in ResampledFit.BATCHED:
            method = getattr(self.inner, name)
            return lambda batch: method(_rolled(batch))
        if name in ("token_code", "output_code"):
            return getattr(self.inner, name)
        raise AttributeError(name)


class Resampled(Control):
    description = "the fit's own predictions paired with the wrong samples (all its statistics, none of its specificity)"

    def make(self, fitted, model, task, *, refit, generator):
        return ResampledFit(fitted)


# ----- model randomisation -------------------------------------------------------------------------

class Reinit(Control):
    """The mechanism refitted to the model with one weight group re-initialised (drawn as the model's init)."""

    group: ClassVar[str]
    partial = True

    def make(self, fitted, model, task, *, refit, generator):
        keys = getattr(type(model), "weight_groups", {}).get(self.group)
        name = getattr(model, "name", "")
        if not keys or not name:
            return NotApplicable(f"{type(model).__name__} names no weight group {self.group!r} to re-initialise")
        layers = range(int(getattr(model, "n_layers", 1)))
        keys = [k.format(layer=layer) for k in keys for layer in (layers if "{layer}" in k else [0])]
        fresh = make_model(name, to_dict(model.config), task, generator=generator)
        new = copy.deepcopy(model)
        target, source = new.state_dict(), fresh.state_dict()
        with torch.no_grad():
            for key in keys:
                target[key].copy_(source[key].to(target[key].device))
        return refit(new.eval())


class ReinitWE(Reinit):
    group = "W_E"
    description = "the mechanism refitted to the model with its embedding W_E re-initialised"


class ReinitWIn(Reinit):
    group = "W_in"
    description = "the mechanism refitted to the model with W_in re-initialised"


class ReinitWOut(Reinit):
    group = "W_out"
    description = "the mechanism refitted to the model with W_out re-initialised"


class ReinitWU(Reinit):
    group = "W_U"
    description = "the mechanism refitted to the model with W_U re-initialised"


class ReinitWOV(Reinit):
    group = "W_OV"
    description = "the mechanism refitted to the model with its attention's W_V and W_O re-initialised"
