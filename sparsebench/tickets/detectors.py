"""Ticket detectors: rank W1's coordinates (weight space) or feature-space sites, from the dense run.

A detector is a registered entry in the group `sparsebench.detectors` (built-ins in
pyproject.toml; a plugin adds `my-rule = "my_pkg:MyRule"` and is ranked with them). It
declares its `kind` ("feature", "weight", "control" or "reference": references are shown on
the tickets board but never ranked), whether its scores depend on the detection step
(`uses_step`), and returns `Scores`: over sites ([H, K], translated to a mask with the
suite's quota, `masks.translate`) or over W1's coordinates ([H, d], top-B). Higher = keep
first. It sees the dense run of one seed through `DetectionInput`; only references may
read the dense final weights (`final`).

Built-ins [paper: the list; reading: the formulas, TICKETS.md]:

| name | kind | score |
|---|---|---|
| feature-static | feature | site: -d_e + w m_e (w = 0.1) |
| feature-dynamic | feature | site: (d_0 - d_e) + w (m_e - m_0) (motion; not at step 0) |
| feature-combined | feature | site: rank(static) + rank(dynamic) (average ranks; not at step 0) |
| magnitude | weight | abs(W1_e) |
| snip | weight | abs(W1_e ⊙ dL/dW1) at θ_e on a detection batch (Lee et al. 2019) |
| grasp | weight | W1_e ⊙ (H g) at θ_e, H g the Hessian-gradient product over all weights (Wang et al. 2020; keeps the lowest -θ ⊙ Hg) |
| synflow | weight | abs(W1_e) · sum_k abs(W2_e[k, h]) · sum_j abs(C0[i, j]): the synaptic flow of the linearised net (Tanaka et al. 2020); iterating is moot with one masked layer (a coordinate's score does not depend on the others) |
| early-bird | weight | abs(W1_t*) at the first snapshot t* <= e where the top-B magnitude mask changed by less than eps of its size against each of the previous `window` snapshots (You et al. 2020); abs(W1_e) if none |
| random | control | uniform random (nested across sparsities; the same mask for every init mode) |
| final-magnitude | reference | abs(W1) of the dense final model (the IMP-style oracle) |
| obs | reference | W1_final² / [Σ⁻¹]_ii, Σ = E[z zᵀ] + damping (Optimal Brain Surgeon saliency) |
| dense | reference | keeps every coordinate (recorded at sparsity 0) |
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal

import torch
from torch import Tensor

from sparsebench import registry
from sparsebench.api import Batch, Configurable, Task
from sparsebench.config import check
from sparsebench.mechanisms.feature_channel import SiteCodes, site_codes
from sparsebench.models.mlp2 import C0_KEY, W1_KEY, W2_KEY
from sparsebench.tickets.masks import top_mask



@dataclass(frozen=True)
class Scores:
    space: Literal["sites", "weights"]  # sites: [H, K]; weights: [H, d] (W1's coordinates)
    values: Tensor  # higher = keep first
    info: dict[str, float] = field(default_factory=dict)  # what the detector reports (e.g. eb_step)


@dataclass
class DetectionInput:
    """What a detector may look at: one seed's dense run, at one detection step and budget."""

    task: Task  # the clause task (variables, signs, labels)
    step: int  # the detection step e
    budget: int  # coordinates the mask will keep
    init: dict[str, Tensor]  # state dict at θ0
    at_step: dict[str, Tensor]  # state dict at θ_e
    final: dict[str, Tensor]  # state dict of the dense final model (references only)
    w1_history: dict[int, Tensor]  # dense W1 [H, d] at every snapshot step <= e (step 0 and every `every` steps)
    rho: float  # row threshold factor of the site codes
    near: int  # near-code distance
    load: Callable[[dict[str, Tensor]], Any]  # state dict -> an mlp2 with those weights
    data: Callable[[int], Batch]  # n samples from this seed's detection stream (the same for every detector)
    generator: Callable[[str], torch.Generator]  # a generator for (this seed, name)

    def codes(self, state: dict[str, Tensor]) -> SiteCodes:
        """The site table of a state (C1 = W1 C0)."""
        C1 = state[W1_KEY].float() @ state[C0_KEY].float()
        return site_codes(C1, self.task.variables, self.task.signs, self.rho, self.near)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class NoConfig:
    pass


class Detector(Configurable, ABC):
    """Ranks W1's coordinates or feature-space sites for a ticket mask (see the module docstring)."""

    Config: ClassVar[type] = NoConfig
    kind: ClassVar[Literal["feature", "weight", "control", "reference"]]
    uses_step: ClassVar[bool] = True  # its scores depend on the detection step (else one mask per seed)
    keeps_all: ClassVar[bool] = False  # keeps every coordinate (the dense reference; recorded at sparsity 0)
    families: ClassVar[tuple[str, ...]] = ("clauses",)  # task families it understands

    def __init__(self, config: Any = None):
        self.config = config if config is not None else self.Config()

    def applies_at(self, step: int) -> bool:
        """Whether the detector is defined at detection step `step` (motion needs step > 0)."""
        return True

    @abstractmethod
    def scores(self, inp: DetectionInput) -> Scores:
        ...


def make_detector(name: str, config: dict[str, Any] | None = None) -> Detector:
    """Detector `name` with its config validated (errors name the field)."""
    cls = registry.detectors.get(name)
    det = cls(cls.make_config(config or {}, f"detector {name}"))
    det.name = name
    return det


# ----- feature space -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureConfig:
    margin_weight: float = 0.1  # w: the margin term's weight (ties between equal distances) [reading]

    def __post_init__(self) -> None:
        check("detector", math.isfinite(self.margin_weight), "margin_weight", "must be a finite number")


def average_ranks(x: Tensor) -> Tensor:
    """Ranks of the entries of x (1 = lowest; ties share their average rank), same shape."""
    flat = x.reshape(-1).double()
    less = (flat.unsqueeze(0) < flat.unsqueeze(1)).sum(1).double()
    equal = (flat.unsqueeze(0) == flat.unsqueeze(1)).sum(1).double()
    return (less + (equal + 1) / 2).view_as(x)


class FeatureStatic(Detector):
    """Sites already near their code at step e: -d_e + w m_e."""

    Config = FeatureConfig
    kind = "feature"

    def scores(self, inp: DetectionInput) -> Scores:
        c = inp.codes(inp.at_step)
        return Scores("sites", -c.distance.double() + self.config.margin_weight * c.margin.double())


class FeatureDynamic(Detector):
    """Sites moving toward their code between θ0 and θ_e: (d_0 - d_e) + w (m_e - m_0)."""

    Config = FeatureConfig
    kind = "feature"

    def applies_at(self, step: int) -> bool:
        return step > 0

    def scores(self, inp: DetectionInput) -> Scores:
        c0, ce = inp.codes(inp.init), inp.codes(inp.at_step)
        s = (c0.distance - ce.distance).double() + self.config.margin_weight * (ce.margin - c0.margin).double()
        return Scores("sites", s)


class FeatureCombined(Detector):
    """Static and dynamic together: the sum of their average ranks."""

    Config = FeatureConfig
    kind = "feature"

    def applies_at(self, step: int) -> bool:
        return step > 0

    def scores(self, inp: DetectionInput) -> Scores:
        static = FeatureStatic(self.config).scores(inp).values
        dynamic = FeatureDynamic(self.config).scores(inp).values
        return Scores("sites", average_ranks(static) + average_ranks(dynamic))


# ----- weight space ------------------------------------------------------------------------------


class Magnitude(Detector):
    """abs(W1) at the detection step."""

    kind = "weight"

    def scores(self, inp: DetectionInput) -> Scores:
        return Scores("weights", inp.at_step[W1_KEY].abs())


@dataclass(frozen=True)
class DataConfig:
    samples: int = 1024  # detection-batch samples (from the seed's detection stream)

    def __post_init__(self) -> None:
        check("detector", self.samples >= 1, "samples", f"must be at least 1 (got {self.samples})")


def _loss_and_params(inp: DetectionInput, samples: int) -> tuple[Tensor, Any]:
    model = inp.load(inp.at_step)
    batch = inp.data(samples)
    return inp.task.loss(model(**batch.inputs), batch).mean(), model


class SNIP(Detector):
    """Connection sensitivity abs(W1 ⊙ dL/dW1) at θ_e."""

    Config = DataConfig
    kind = "weight"

    def scores(self, inp: DetectionInput) -> Scores:
        with torch.enable_grad():
            loss, model = _loss_and_params(inp, self.config.samples)
            W1 = model.blocks[0].mlp.W1
            (g,) = torch.autograd.grad(loss, [W1])
        return Scores("weights", (W1.detach() * g).abs())


class GraSP(Detector):
    """Gradient-signal preservation: W1 ⊙ (H g) at θ_e (keeps the lowest -θ ⊙ Hg)."""

    Config = DataConfig
    kind = "weight"

    def scores(self, inp: DetectionInput) -> Scores:
        with torch.enable_grad():
            loss, model = _loss_and_params(inp, self.config.samples)
            params = [p for p in model.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, params, create_graph=True)
            flow = sum((g * g.detach()).sum() for g in grads)
            W1 = model.blocks[0].mlp.W1
            (hg,) = torch.autograd.grad(flow, [W1])
        return Scores("weights", W1.detach() * hg)


class SynFlow(Detector):
    """Synaptic flow of the linearised network: abs(W1) · (sum_k abs(W2[k, h])) · (sum_j abs(C0[i, j]))."""

    kind = "weight"

    def scores(self, inp: DetectionInput) -> Scores:
        s = inp.at_step
        out = s[W2_KEY].abs().sum(0)  # [H]
        into = s[C0_KEY].abs().sum(1)  # [d]
        return Scores("weights", s[W1_KEY].abs() * out.unsqueeze(1) * into.unsqueeze(0))


@dataclass(frozen=True)
class EarlyBirdConfig:
    eps: float = 0.1  # the mask is "stable" when it changed by less than eps · 2B coordinates
    window: int = 5  # ... against each of the previous `window` snapshots

    def __post_init__(self) -> None:
        check("detector", 0 < self.eps <= 1, "eps", f"must be in (0, 1] (got {self.eps})")
        check("detector", self.window >= 1, "window", f"must be at least 1 (got {self.window})")


class EarlyBird(Detector):
    """The magnitude mask at the first stable snapshot (Early-Bird tickets), else at the detection step."""

    Config = EarlyBirdConfig
    kind = "weight"

    def scores(self, inp: DetectionInput) -> Scores:
        steps = sorted(t for t in inp.w1_history if t <= inp.step)
        masks = [top_mask(inp.w1_history[t].abs(), inp.budget) for t in steps]
        w = self.config.window
        for j in range(w, len(steps)):
            change = max((masks[j] != masks[j - i]).sum().item() for i in range(1, w + 1)) / (2 * inp.budget)
            if change < self.config.eps:
                return Scores("weights", inp.w1_history[steps[j]].abs(), {"eb_step": float(steps[j]),
                                                                         "eb_converged": 1.0})
        return Scores("weights", inp.at_step[W1_KEY].abs(), {"eb_step": float(inp.step), "eb_converged": 0.0})


# ----- controls and references -------------------------------------------------------------------


class Random(Detector):
    """Uniform random scores (the same for every step, init mode and sparsity of a seed: nested masks)."""

    kind = "control"
    uses_step = False

    def scores(self, inp: DetectionInput) -> Scores:
        W1 = inp.init[W1_KEY]
        return Scores("weights", torch.rand(W1.shape, generator=inp.generator("detector-random")))


class FinalMagnitude(Detector):
    """abs(W1) of the dense final model: the IMP-style oracle (a reference: it sees the end of training)."""

    kind = "reference"
    uses_step = False

    def scores(self, inp: DetectionInput) -> Scores:
        return Scores("weights", inp.final[W1_KEY].abs())


@dataclass(frozen=True)
class OBSConfig:
    samples: int = 4096  # samples to estimate Σ = E[z zᵀ]
    damping: float = 1e-4  # Σ + damping · mean(diag Σ) · I before inverting

    def __post_init__(self) -> None:
        check("detector", self.samples >= 1, "samples", f"must be at least 1 (got {self.samples})")
        check("detector", self.damping >= 0, "damping", f"must be >= 0 (got {self.damping})")


class OBS(Detector):
    """Optimal Brain Surgeon saliency of the dense final W1: w² / [Σ⁻¹]_ii, Σ = E[z zᵀ] (a reference)."""

    Config = OBSConfig
    kind = "reference"
    uses_step = False

    def scores(self, inp: DetectionInput) -> Scores:
        x = inp.data(self.config.samples).inputs["x"].double()
        z = x @ inp.final[C0_KEY].double().T  # [N, d]
        sigma = z.T @ z / z.shape[0]
        sigma = sigma + self.config.damping * sigma.diagonal().mean() * torch.eye(sigma.shape[0], dtype=sigma.dtype)
        inv_diag = torch.linalg.inv(sigma).diagonal()  # [d]
        return Scores("weights", (inp.final[W1_KEY].double() ** 2 / inv_diag.unsqueeze(0)).float())


class Dense(Detector):
    """Keeps every coordinate: the dense network retrained the same way (a reference, at sparsity 0)."""

    kind = "reference"
    uses_step = False
    keeps_all = True

    def scores(self, inp: DetectionInput) -> Scores:
        return Scores("weights", torch.ones_like(inp.init[W1_KEY]))
