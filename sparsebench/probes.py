"""Hook-based probes: score a fitted explanation against a model (docs/science.md §5).

A probe is evidence only if a *wrong* explanation of the same model scores low. So every
ranked probe scores what the explanation claims, chance-corrected where a claim can be met by
chance, and is read next to control explanations (`baselines/controls.py`: answer-only, random
code, permuted units, model randomisation) and null models (`baselines/nulls.py`): an
explanation counts on a probe only by its margin over the strongest of them. Beating one's rivals
is not enough: each ranked probe also states the level at which its claim is met (`sufficient`),
and the explanations board counts the probe as explained only when the score reaches it.

Ranked probes (they test the explanation):
- `hidden-code` (activations): Matthews correlation of "unit active" with the explanation's
  predicted activity (at the layer it names, `hidden_hook`; layer 0 by default), pooled over units and samples (0 for any prediction that carries no
  information, e.g. "every unit always active").
- `candidates` (behaviour): the members of the target set are given, so only the false positives
  are scored: Matthews correlation, over non-member tokens, of the predicted false positives with
  the model's (0 for "no false positives", the answer alone).
- `prediction` (behaviour): share of the model's departure from uniform that the explanation's
  own output accounts for; the answer-only control sets its chance level.
- `patch` (causal): patch the explanation's idealised activation into the model; loss recovered
  against an ablation reference (mean, zero or resample: a recorded option), clipped to [-1, 1]:
  a patch cannot be better than the model it explains.
Model diagnostics (shown, never ranked: they read the model, not the claim): `bimodality`,
`mask-agreement`.

`hidden-code`, `prediction` and `patch` also understand the clause family (`tasks/clauses.py`);
its own probes, `code-recall` (ranked) and `code-count` (a diagnostic), are in `probes_clauses.py`.

Each probe declares the task families it understands, the hooks it reads, the capabilities of a
fitted explanation it reads (`reads_fit`, read by `fit_reads`: a partial control that changes
less of them than `ProbeConfig.blind_below` is invisible to it), its scores and their
directions, and the bar of its main score (`sufficient`; a config field,
`ProbeConfig.sufficient`, recorded with every score). `score` returns the scores, or
`NotApplicable` with a one-line reason; it never makes up a number. Probes read activations at
the readout position, so the same probe works on `mlp1` ([batch, d]) and on a transformer
([batch, pos, d]).
"""

from __future__ import annotations

import dataclasses
import math
import reprlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from sparsebench.api import (Batch, Direction, Fitted, HasTokenCode, NotApplicable, Patchable, PredictsCandidates,
                             PredictsHidden, PredictsOutputs, Task, last_position, token_to_hidden)
from sparsebench.config import check
from sparsebench.errors import ConfigError

MIN_ABLATION_GAP = 0.01  # nats: loss recovered is defined only if ablation costs at least this much
NO_BATCH = ("token_code", "output_code", "clause_codes")  # fit capabilities that take no batch
OWN_NULL = "@"  # a score key "name@ref" is the probe's own reference for score `name` (recorded as own_nulls)
SIGNED = (-1.0, 1.0)  # the values a Matthews correlation or a clipped share of an effect can take
SHARE = (0.0, 1.0)  # ... a precision, recall or F1
NATS = (0.0, math.inf)  # ... a KL divergence


@dataclass(frozen=True)
class ProbeConfig:
    """Options every ranked probe takes (a probe with more options subclasses it, e.g. `PatchConfig`)."""

    # {score: level}: the bar of each named score (`Probe.sufficient`), overriding the probe's own; the probe's
    # other bars stay. Once the probe is made it holds every bar in force, and is recorded so.
    sufficient: dict[str, float] = field(default_factory=dict)
    # A partial control (wrong about one thing only) that changes less than this share of what the probe reads
    # of an explanation (`Probe.fit_reads`; for a set, the entries in one and not the other over the entries of
    # both) is invisible to the probe: no number, a note. Our reading: 1%, under the resolution of the probes'
    # scores (a score moves by about the share changed; their intervals over chunks are 0.01-0.03 wide);
    # it exists because a refit from other weights is never bitwise the fit (docs/leaderboard.md). 0: exact only.
    blind_below: float = 0.01

    def __post_init__(self) -> None:
        check("probe", isinstance(self.blind_below, (int, float)) and not isinstance(self.blind_below, bool)
              and 0 <= self.blind_below < 1, "blind_below", f"must be a number in [0, 1) (got {self.blind_below!r})")


class Probe(ABC):
    """A named set of scores for (model, fitted explanation, task, evaluation batch)."""

    level: ClassVar[str]  # "weights", "activations", "behaviour" or "causal"
    reads: ClassVar[tuple[str, ...]] = ()  # hook names read through run_with_cache / run_with_hooks
    reads_fit: ClassVar[tuple[str, ...]] = ()  # capability methods of the fit it reads (api.Predicts*, ...)
    main: ClassVar[str]  # the score the leaderboard ranks by
    directions: ClassVar[dict[str, Direction]]  # every score this probe reports, with the better direction
    families: ClassVar[tuple[str, ...]] = ("topk",)  # task families it understands
    ranked: ClassVar[bool] = True  # False: a model diagnostic, shown but never ranked
    # True if relabelling the input tokens (permuting the rows of W_E) cannot change the score: it reads
    # only the model's internal computation (weights statistics, activations vs a fit of the same model,
    # within-model loss ratios), never the correspondence between input and output tokens.
    relabel_invariant: ClassVar[bool] = False
    Config: ClassVar[type | None] = None  # a frozen dataclass of options, recorded with every result
    # {score: level} at which the probe's claim is met: the absolute bar beside the relative margin. On the
    # explanations board a probe's outcome is "explains" only if the score's 95% interval reaches it (turned by
    # the direction) as well as beating every rival (docs/science.md §5.3). The levels are our reading, each
    # with its reason beside it; a suite overrides them (`probe_config = {patch = {sufficient = {...}}}`).
    # Ranked probes set one for their main score; diagnostics have none.
    sufficient: ClassVar[dict[str, float]] = {}
    bounds: ClassVar[dict[str, tuple[float, float]]] = {}  # the values a score can take (a bar outside is refused)
    name: str = ""

    def __init__(self, config: Any = None):
        config = config if config is not None else (self.Config() if self.Config else None)
        if isinstance(config, ProbeConfig):
            config = dataclasses.replace(config, sufficient={**self.sufficient, **self._bars(config.sufficient)})
        self.config = config

    def _bars(self, given: Any) -> dict[str, float]:
        """`given` ({score: level}) checked: known scores, finite numbers within the score's bounds."""
        if not isinstance(given, dict):
            raise ConfigError("probe", "sufficient", f"must be a table {{score = level}} (got {reprlib.repr(given)})")
        for score, level in given.items():
            shown = reprlib.repr(score).strip("'\"")  # a user's key, quoted back short
            where = f"sufficient.{shown}"
            check("probe", score in self.directions, where,
                  f"unknown score (this probe's scores: {', '.join(self.directions)})")
            check("probe", isinstance(level, (int, float)) and not isinstance(level, bool), where,
                  f"must be a number (got {reprlib.repr(level)})")
            check("probe", math.isfinite(level), where, f"must be a finite number (got {level})")
            lo, hi = self.bounds.get(score, (-math.inf, math.inf))
            check("probe", lo <= level <= hi, where, f"out of range: {score} lies in [{lo:g}, {hi:g}] (got {level:g})")
        return {score: float(level) for score, level in given.items()}

    def bars(self) -> dict[str, float]:
        """{score: level} in force: the config's (the probe's own, overridden), else the probe's own."""
        configured = getattr(self.config, "sufficient", None)
        return dict(configured) if isinstance(configured, dict) else dict(self.sufficient)

    @abstractmethod
    def score(self, model: Any, fitted: Fitted, task: Task, batch: Batch) -> dict[str, float] | NotApplicable:
        ...

    def fit_reads(self, fitted: Fitted, task: Task, batch: Batch) -> dict[str, Any]:
        """What this probe reads of an explanation on `batch`: {capability: its value, or None if the fit lacks
        it} for each of `reads_fit` (a probe that reads a derived quantity overrides this)."""
        out = {}
        for name in self.reads_fit:
            f = getattr(fitted, name, None)
            with torch.no_grad():
                out[name] = None if f is None else (f() if name in NO_BATCH else f(batch))
        return out


def cannot(fitted: Fitted, what: str) -> NotApplicable:
    """Not applicable: the explanation does not predict `what` (its own reason if it gives one)."""
    return NotApplicable(fitted.why_not or f"{fitted.mechanism} predicts no {what}")


def mcc(pred: Tensor, actual: Tensor, what: str) -> dict[str, float] | NotApplicable:
    """Matthews correlation of boolean `pred` with boolean `actual` (pooled over all entries), with precision,
    recall and F1. A constant prediction carries no information: MCC 0 (precision/recall left out when
    undefined). Not applicable when `actual` is constant: there is nothing to explain."""
    n = pred.numel()
    tp = int((pred & actual).sum())
    n_pred, n_act = int(pred.sum()), int(actual.sum())
    if n_act in (0, n):
        return NotApplicable(f"the model has {'no' if n_act == 0 else 'only'} {what} here: nothing to explain")
    fp, fn = n_pred - tp, n_act - tp
    tn = n - tp - fp - fn
    denom = math.sqrt(float(n_pred) * n_act * (n - n_act) * (n - n_pred))
    out = {"mcc": (tp * tn - fp * fn) / denom if denom > 0 else 0.0, "recall": tp / n_act}
    if n_pred:
        out["precision"] = tp / n_pred
        out["f1"] = 2 * tp / (n_pred + n_act)
    return out


def active_units(post: Tensor) -> Tensor:
    """[batch, d_mlp] bool: which units of a post-ReLU activation ([batch, d_mlp]) are on. "On" is relative to
    each unit's scale over the batch, so a unit idling at a tiny positive value (a bias that has not quite
    reached 0) still counts as off."""
    post = post.float()
    return post > 1e-3 * post.amax(0, keepdim=True).clamp_min(1e-6)


def model_hook_names(model: Any, batch: Batch) -> set[str]:
    """Every hook name the model answers (from its hook_dict, else from one cached forward)."""
    names = getattr(model, "hook_dict", None)
    if names:
        return set(names)
    with torch.no_grad():
        _, cache = model.run_with_cache(**{k: v[:1] for k, v in batch.inputs.items()})
    return set(cache.keys())


# ----- model diagnostics (not ranked) --------------------------------------------------------------

class Bimodality(Probe):
    """Diagnostic: how well the token-to-hidden map splits into two clusters (two-means R^2), and the fitted
    code's density. The map is `api.token_to_hidden` at the fit's layer (`W_E @ W_in[0]` for mlp1)."""

    level = "weights"
    ranked = False
    relabel_invariant = True
    reads_fit = ("token_code",)
    main = "r2"
    directions = {"r2": "higher", "code_density": "lower"}

    def score(self, model, fitted, task, batch):
        from sparsebench.stats import two_means

        if not isinstance(fitted, HasTokenCode):
            return cannot(fitted, "binary token code")
        with torch.no_grad():
            M = token_to_hidden(model, getattr(fitted, "layer", 0)).float()
        if bool((M == M.reshape(-1)[0]).all()):
            return NotApplicable("the token-to-hidden map is constant: it has no clusters")
        return {"r2": float(two_means(M.flatten()).r2), "code_density": fitted.token_code().float().mean().item()}


class MaskAgreement(Probe):
    """Diagnostic: Jaccard of the code read off the input side with the code read off the output side."""

    level = "weights"
    ranked = False
    reads_fit = ("token_code", "output_code")
    main = "jaccard"
    directions = {"jaccard": "higher"}

    def score(self, model, fitted, task, batch):
        if not isinstance(fitted, HasTokenCode):
            return cannot(fitted, "token code")
        a, b = fitted.token_code(), fitted.output_code()
        inter = (a & b).sum().item()
        return {"jaccard": inter / max((a | b).sum().item(), 1)}


# ----- ranked probes --------------------------------------------------------------------------------

class HiddenCode(Probe):
    """Activations: is hidden unit j active exactly when the explanation says (MCC, chance-corrected)?"""

    level = "activations"
    families = ("topk", "clauses")
    relabel_invariant = True
    reads = ("blocks.0.mlp.hook_post",)
    reads_fit = ("hidden_active",)
    main = "mcc"
    directions = {"mcc": "higher", "precision": "higher", "recall": "higher", "f1": "higher"}
    bounds = {"mcc": SIGNED, "precision": SHARE, "recall": SHARE, "f1": SHARE}
    # Our reading: the claim "unit j is active exactly when the explanation says" is met at MCC 0.8 (0 is chance,
    # 1 every unit exactly as said), the level we ask of a fraction of an effect, so one standard holds throughout.
    sufficient = {"mcc": 0.8}
    Config = ProbeConfig

    def score(self, model, fitted, task, batch):
        predicted = fitted.hidden_active(batch) if isinstance(fitted, PredictsHidden) else None
        if predicted is None:
            return cannot(fitted, "hidden code")
        hook = getattr(fitted, "hidden_hook", self.reads[0])  # the layer whose units the fit names
        if hook not in model_hook_names(model, batch):
            return NotApplicable(f"the model has no hook {hook!r} for the units the explanation names")
        with torch.no_grad():
            _, cache = model.run_with_cache(**batch.inputs, names_filter=[hook])
        active = active_units(last_position(cache[hook]))
        return mcc(predicted.to(active.device), active, "active units")


class Candidates(Probe):
    """Behaviour: the model's false positives against the explanation's (members given; MCC over non-members).

    A false positive of the model is a non-member in its top tier (`task.top_tier`); the explanation's are
    the non-members it puts in its own top tier (`predict_candidates`, else the top tier of its logits).
    `tier_f1` (the whole top tier, members included) is kept for reference: the members are given, so it
    credits the answer alone (0.83 for answer-only on a trained mlp1, issue 13).
    """

    level = "behaviour"
    reads_fit = ("predict_candidates", "predict_logits")
    main = "fp_mcc"
    directions = {"fp_mcc": "higher", "fp_precision": "higher", "fp_recall": "higher", "tier_f1": "higher"}
    bounds = {"fp_mcc": SIGNED, "fp_precision": SHARE, "fp_recall": SHARE, "tier_f1": SHARE}
    # Our reading: 0.8, as for every MCC of a code. False positives are rare (0.2% to 5% of non-members for a
    # trained mlp1 at widths 64 to 32), and for a rare event the MCC is close to sqrt(precision * recall) (true
    # negatives dominate; in the default suite's records the two agree to 0.01 at widths >= 32), so fp_mcc 0.8
    # asks that about 80% of the model's false positives are predicted and about 80% of the predicted ones are
    # the model's: the same "80% of the effect" as the fraction-of-effect probes. Rarity is no reason for a lower
    # level: the MCC is chance-corrected (0 for "none" or a random guess), and the small counts widen the
    # interval, which must itself reach the level.
    sufficient = {"fp_mcc": 0.8}
    Config = ProbeConfig

    @staticmethod
    def predicted(fitted: Fitted, task: Task, batch: Batch) -> Tensor | None:
        """[batch, n_outputs] bool: the explanation's top tier (None if it predicts no outputs)."""
        if isinstance(fitted, PredictsCandidates):
            return fitted.predict_candidates(batch)
        logits = fitted.predict_logits(batch) if isinstance(fitted, PredictsOutputs) else None
        return None if logits is None else task.top_tier(logits, batch)

    def fit_reads(self, fitted, task, batch):
        with torch.no_grad():
            return {"top tier": self.predicted(fitted, task, batch)}

    def score(self, model, fitted, task, batch):
        predicted = self.predicted(fitted, task, batch)
        if predicted is None:
            return cannot(fitted, "outputs")
        with torch.no_grad():
            actual = task.top_tier(model(**batch.inputs), batch)
        predicted = predicted.to(actual.device)
        members = torch.zeros_like(actual).scatter_(-1, batch.inputs["tokens"], True)
        others = ~members
        out = mcc(predicted[others], actual[others], "false positives")
        if isinstance(out, NotApplicable):
            return out
        tier = 2 * (predicted & actual).sum().item() / max(predicted.sum().item() + actual.sum().item(), 1)
        return {"fp_mcc": out["mcc"], "fp_recall": out["recall"], "tier_f1": tier,
                **({"fp_precision": out["precision"]} if "precision" in out else {})}


class Prediction(Probe):
    """Behaviour: how much of the model's output distribution the explanation's own prediction explains.

    kl = KL(model || prediction), between output distributions as the task defines them
    (`Task.output_kl`: one softmax for the top-k family, K independent Bernoullis for clauses).
    Raw KL is not comparable across models (a near-uniform untrained model is trivially close to
    a flat prediction), so the main score is kl_explained = 1 - KL(model || prediction) /
    KL(model || uniform), uniform = all-zero logits: the share of the model's departure from
    uniform that the prediction accounts for. Its chance level is the answer-only control's
    (naming the target already explains most of it). Left out (not applicable) when the model is
    itself within 1e-3 nats of uniform.
    """

    level = "behaviour"
    families = ("topk", "clauses")
    relabel_invariant = True  # the explanation is refitted to the relabelled model, which it then explains alike
    reads_fit = ("predict_logits",)
    main = "kl_explained"
    directions = {"kl_explained": "higher", "kl": "lower"}
    bounds = {"kl_explained": (-math.inf, 1.0), "kl": NATS}
    # Our reading: the explanation accounts for at least 80% of the model's departure from uniform.
    sufficient = {"kl_explained": 0.8}
    Config = ProbeConfig

    def score(self, model, fitted, task, batch):
        logits = fitted.predict_logits(batch) if isinstance(fitted, PredictsOutputs) else None
        if logits is None:
            return cannot(fitted, "outputs")
        with torch.no_grad():
            m = model(**batch.inputs)
        kl = task.output_kl(m, logits.to(m.device)).mean().item()
        kl_uniform = task.output_kl(m, torch.zeros_like(m)).mean().item()  # all-zero logits: the uniform output
        if kl_uniform <= 1e-3:
            return NotApplicable("the model's output is uniform to within 1e-3 nats: nothing to explain")
        return {"kl_explained": 1 - kl / kl_uniform, "kl": kl}


@dataclass(frozen=True)
class PatchConfig(ProbeConfig):
    reference: Literal["mean", "zero", "resample"] = "mean"  # the ablation that defines "nothing recovered"

    def __post_init__(self) -> None:
        super().__post_init__()
        check("probe", self.reference in ("mean", "zero", "resample"), "reference",
              f"must be mean, zero or resample (got {self.reference!r})")


class Patch(Probe):
    """Causal: patch the explanation's idealised activation in; the share of the ablated loss it recovers.

    loss_recovered = (L_ablated - L_patched) / (L_ablated - L_clean), clipped to [-1, 1]: a patched model
    that beats the clean one is not explained better than perfectly, and one that loses more than the
    ablation is not a worse explanation for losing 1000 times more (margins stay on one scale);
    `loss_recovered_raw` keeps the value. `kl_to_clean` is the task's output KL (`Task.output_kl`).
    The ablation (`reference`): the batch mean of the activation, zeros, or each sample's activation
    replaced by another sample's (resample). (The idealised activations paired with the wrong samples,
    this probe's own reference before, is now the `resampled` control, beside every probe.)

    Why not an interchange intervention scored against the mechanism's predicted output: in these
    networks the union a Bloom filter computes is read out through the residual stream (the exact
    construction keeps it in `r1 = x - ReLU(x - 1)`, the hidden layer carries only the overflow), so a
    mechanism's high-level model does not predict what a partial patch of the hidden layer does to the
    output, and at a final-residual hook its prediction would be the model's own readout (trivially
    right). docs/science.md §5 has the details.
    """

    level = "causal"
    families = ("topk", "clauses")
    relabel_invariant = True  # a ratio of the model's own losses: a relabelled model recovers the same share
    reads_fit = ("ideal_activation",)
    main = "loss_recovered"
    directions = {"loss_recovered": "higher", "loss_recovered_raw": "higher", "kl_to_clean": "lower"}
    bounds = {"loss_recovered": SIGNED, "kl_to_clean": NATS}  # loss_recovered is clipped to [-1, 1]
    # Our reading: the explanation's activation recovers at least 80% of the loss the ablation costs.
    sufficient = {"loss_recovered": 0.8}
    Config = PatchConfig
    reads = ()  # the hook comes from the explanation (Patchable.ideal_activation)

    def score(self, model, fitted, task, batch):
        ideal = fitted.ideal_activation(batch) if isinstance(fitted, Patchable) else None
        if ideal is None:
            return cannot(fitted, "idealised activation")
        hook_name, value = ideal
        if hook_name not in model_hook_names(model, batch):
            return NotApplicable(f"the model has no hook {hook_name!r} to patch")
        with torch.no_grad():
            clean_logits, cache = model.run_with_cache(**batch.inputs, names_filter=[hook_name])
            act = last_position(cache[hook_name])
            ablation = {"mean": act.mean(0, keepdim=True), "zero": torch.zeros_like(act[:1]),
                        "resample": act.roll(1, 0)}[self.config.reference]

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
            ablated = model.run_with_hooks(**batch.inputs, fwd_hooks=[(hook_name, replace(ablation))])
            l_clean, l_patch, l_abl = (task.loss(x.float(), batch).mean().item()
                                       for x in (clean_logits, patched, ablated))
            gap = l_abl - l_clean
            if gap < MIN_ABLATION_GAP:
                # Loss recovered is a ratio over this gap: with nothing lost there is nothing to recover,
                # and a tiny or negative gap (ablation helps an untrained model) makes the ratio noise.
                return NotApplicable(f"{self.config.reference}-ablating {hook_name} changes the loss by "
                                     f"{gap:+.3g} nats (< {MIN_ABLATION_GAP}): nothing to recover")
            kl = task.output_kl(clean_logits, patched).mean().item()
        raw = (l_abl - l_patch) / gap
        return {"loss_recovered": min(max(raw, -1.0), 1.0), "loss_recovered_raw": raw, "kl_to_clean": kl}
