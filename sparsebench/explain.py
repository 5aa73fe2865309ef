"""Explain one model with one mechanism: fit, control explanations, null models, and every probe beside them.

What a score means depends on what it is compared with. For each probe, the explanation's score is
computed on independent parts ("chunks") of this seed's probe batch, and so is the score of

- every control explanation of the fit (`baselines/controls.py`), on the same model, and
- the mechanism refitted to every null model (`baselines/nulls.py`), on that null model.

The margin is the explanation's score minus the strongest of those rivals, turned by the score's
direction (+ is better), per chunk; its mean and t-interval over the chunks go into the record
(the boards then combine seeds). A rival the probe cannot see gets no number and a note:
- a null that only relabels input tokens, for a probe that cannot see such a relabelling
  (`relabel_invariant`), and
- a *partial* control (wrong about one thing only) that changes nothing the probe reads
  (`Probe.fit_reads`): e.g. permuting the hidden units of a Bloom fit leaves its predicted
  outputs as they were, so the behaviour probes cannot tell it from the fit, and only the probes
  that read hidden units test it. "Nothing" is "less than `ProbeConfig.blind_below`" (1% of a
  predicted set; any change to a number counts): a refit to re-initialised weights that finds the
  same code but for a few entries (the transformer's `reinit-W_OV`: 0.01-0.1% of its hidden code,
  docs/transformer.md) is the fit read off other weights, not a wrong explanation, and the share
  changed is written in the note. A tie with a control that is wrong about everything
  (answer-only) stays a tie, however close: the explanation adds nothing over it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from sparsebench.api import Batch, Fitted, NotApplicable, Task, applies
from sparsebench.config import to_dict
from sparsebench.probes import OWN_NULL, Probe
from sparsebench.records import ModelInfo, ProbeResult, Score
from sparsebench.stats import mean_ci

def good(value: float, direction: str) -> float:
    """A score turned so that larger is better ("higher", "lower", "zero": nearest 0)."""
    return value if direction == "higher" else (-abs(value) if direction == "zero" else -value)


def model_info(model: Any) -> ModelInfo:
    """The record's description of a model (trained or built by a construction)."""
    config = model.config if isinstance(model.config, dict) else to_dict(model.config)
    return ModelInfo(name=getattr(model, "name", type(model).__name__), config=config,
                     width_fields=list(getattr(type(model), "width_fields", ())))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and torch.equal(a.cpu(), b.cpu())
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _changed(a: Any, b: Any) -> float:
    """The share of `a` that `b` changes: for boolean tensors (sets), the entries in one and not the other over
    the entries of both (1 - Dice: 0 the same set, 1 disjoint); anything else, 0 if the same and 1 if not."""
    if isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype == torch.bool and a.shape == b.shape:
        a, b = a.cpu(), b.cpu()
        both = int(a.sum()) + int(b.sum())
        return int((a ^ b).sum()) / both if both else 0.0
    return 0.0 if _same(a, b) else 1.0


def changed_share(probe: Probe, fitted: Fitted, control: Fitted, task: Task, batch: Batch) -> float:
    """The largest share of anything `probe` reads of an explanation (`Probe.fit_reads`, on `batch`) that
    `control` changes; 1 if the probe reads nothing of a fit (it cannot tell what is unchanged)."""
    f, c = probe.fit_reads(fitted, task, batch), probe.fit_reads(control, task, batch)
    shares = [0.0 if f[k] is None and c[k] is None else 1.0 if f[k] is None or c[k] is None else _changed(f[k], c[k])
              for k in f]
    return max(shares) if shares else 1.0


def blind(probe: Probe, share: float) -> bool:
    """Whether a partial control that changes `share` of what `probe` reads (`changed_share`) is invisible to it:
    nothing changed, or less than the probe's `ProbeConfig.blind_below` (exactly nothing without that config)."""
    return share == 0.0 or share < float(getattr(probe.config, "blind_below", 0.0))


@dataclass
class Rivals:
    """What an explanation is compared with: control explanations (on the model) and refitted null models."""

    controls: dict[str, Fitted | NotApplicable]
    nulls: dict[str, tuple[Any, Fitted] | NotApplicable]
    relabelling: set[str]  # nulls that only relabel input tokens
    partial: set[str]  # controls wrong about one thing only (invisible to a probe that reads none of it)


def make_rivals(fitted: Fitted, model: Any, task: Task, controls: dict[str, Any], null_models: dict[str, Any],
                refit: Callable[[Any], Fitted], generator: Callable[[str], torch.Generator],
                relabelling: set[str]) -> Rivals:
    """Every control explanation of `fitted` and the mechanism refitted to every null model."""
    made = {name: c.make(fitted, model, task, refit=refit, generator=generator(f"control-{name}"))
            for name, c in controls.items()}
    nulls = {name: (nm if isinstance(nm, NotApplicable) else (nm, refit(nm))) for name, nm in null_models.items()}
    return Rivals(made, nulls, relabelling, {name for name, c in controls.items() if c.partial})


class _Outputs:
    """A model whose plain forward remembers its logits per batch object: every rival is scored on the same
    chunks of the same model, so the model's own outputs are computed once per chunk, not once per rival.
    Everything else (hooks, weights, attributes) goes to the model itself."""

    def __init__(self, model: Any):
        self._model, self._seen = model, {}

    def __call__(self, **inputs: Tensor) -> Tensor:
        key = tuple(id(v) for v in inputs.values())
        if key not in self._seen:
            with torch.no_grad():
                self._seen[key] = (list(inputs.values()), self._model(**inputs))  # keeps the inputs alive
        return self._seen[key][1]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _chunked(probe: Probe, model: Any, fitted: Fitted, task: Task, chunks: list[Batch]) -> list[Any]:
    return [probe.score(model, fitted, task, c) for c in chunks]


def _values(results: list[Any], key: str) -> list[float]:
    return [float(r[key]) if isinstance(r, dict) and key in r else math.nan for r in results]


def _reason(results: list[Any]) -> str:
    return next((r.reason for r in results if isinstance(r, NotApplicable)), "not applicable")


def _ci(values: list[float]) -> tuple[float, tuple[float, float] | None]:
    m, lo, hi = mean_ci(values)
    return m, (None if math.isnan(lo) else (lo, hi))


def score_probe(probe: Probe, model: Any, fitted: Fitted, rivals: Rivals, task: Task,
                chunks: list[Batch]) -> ProbeResult:
    """One probe's result for an explanation, beside its rivals (see the module docstring)."""
    why = applies(probe, task)
    if why:
        return ProbeResult(status="not_applicable", ranked=probe.ranked, reason=f"probe {probe.name} {why}")
    model = _Outputs(model)
    own = _chunked(probe, model, fitted, task, chunks)
    if not any(isinstance(r, dict) for r in own):
        return ProbeResult(status="not_applicable", ranked=probe.ranked, reason=_reason(own))
    rival_results: dict[str, tuple[str, list[Any]]] = {}  # name -> ("control" | "null", per-chunk results)
    control_notes, null_notes = {}, {}
    for name, c in rivals.controls.items():
        if isinstance(c, NotApplicable):
            control_notes[name] = c.reason
        elif name in rivals.partial and blind(probe, share := changed_share(probe, fitted, c, task, chunks[0])):
            control_notes[name] = ("changes nothing this probe reads: invisible to it, no number" if share == 0 else
                                   f"changes {share:.2%} of what this probe reads (under blind_below "
                                   f"{probe.config.blind_below:g}): invisible to it, no number")
        else:
            rival_results[name] = ("control", _chunked(probe, model, c, task, chunks))
    for name, n in rivals.nulls.items():
        if isinstance(n, NotApplicable):
            null_notes[name] = n.reason
        elif probe.relabel_invariant and name in rivals.relabelling:
            null_notes[name] = "only relabels input tokens, which this probe cannot see: not a null for it"
        else:
            rival_results[name] = ("null", _chunked(probe, _Outputs(n[0]), n[1], task, chunks))
    for name, (kind, results) in rival_results.items():
        if not any(isinstance(r, dict) for r in results):
            (control_notes if kind == "control" else null_notes)[name] = _reason(results)
    scores = {}
    bars = probe.bars()
    for key, direction in probe.directions.items():
        vals = _values(own, key)
        if all(math.isnan(v) for v in vals):
            continue
        value, ci = _ci(vals)
        by_rival = {name: _values(res, key) for name, (_, res) in rival_results.items()}
        by_rival = {name: v for name, v in by_rival.items() if not all(math.isnan(x) for x in v)}
        margins = []
        for i, v in enumerate(vals):
            best = [good(r[i], direction) for r in by_rival.values() if not math.isnan(r[i])]
            margins.append(good(v, direction) - max(best) if best and not math.isnan(v) else math.nan)
        means = {name: mean_ci(v)[0] for name, v in by_rival.items()}
        margin, margin_ci = _ci(margins) if by_rival else (math.nan, None)
        first = next(r for r in own if isinstance(r, dict))
        own_refs = {k.split(OWN_NULL)[1]: mean_ci(_values(own, k))[0] for k in first
                    if OWN_NULL in k and k.split(OWN_NULL)[0] == key}
        scores[key] = Score(value=value, ci=ci, direction=direction,
                            controls={n: means[n] for n, (kind, _) in rival_results.items()
                                      if kind == "control" and n in means},
                            nulls={n: means[n] for n, (kind, _) in rival_results.items() if kind == "null" and n in means},
                            own_nulls=own_refs, margin=margin, margin_ci=margin_ci,
                            rival=max(means, key=lambda n: good(means[n], direction)) if means else None,
                            sufficient=bars.get(key))
    return ProbeResult(status="ok", level=probe.level, ranked=probe.ranked, reads=list(probe.reads),
                       config=to_dict(probe.config) if probe.config is not None else {}, main=probe.main,
                       chunks=len(chunks), scores=scores, null_notes=null_notes, control_notes=control_notes)
