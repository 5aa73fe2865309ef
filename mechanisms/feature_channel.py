"""`feature-channel`: clause codes in the feature space C1 = W1 C0 (docs/science.md §7; ../shared/TICKETS.md).

Bebchuk & Shavit read a two-layer ReLU network on clause tasks as "feature channels": a
hidden unit h computes clause c when its row of the feature-space representation,
read on the clause's variables, carries the clause's sign template [paper]. The
distances below are our [reading] of "combinatorial distances" (the body is not
available to us):

    site (h, c): the local vector v = C1[h, vars_c] (k entries), template τ_c ∈ {±1}^k
    row threshold θ_h = rho · max_i |C1[h, i]|                       (rho = 0.2; always recorded)
    distance d(h, c) = #{j : sign(v_j) ≠ τ_j or |v_j| < θ_h}  ∈ 0..k
    exact code: d = 0;  near code: d <= near (1);  margin ⟨v, τ⟩ / max_i |C1[h, i]|
    row load: near codes in row h;  clauses covered: clauses with at least one exact code

Construction (H >= K, an `mlp2` with a Hadamard C0): row c of C1 is a·τ_c on the
clause's variables (0 elsewhere), W1 = C1 C0⁺, b1 = -(p_c - 1)·a (p_c positive
literals: -3a for 4P, 0 for 3N1P), so pre_c = a exactly when clause c holds and
<= 0 otherwise; W2[c, c] = beta / a, b2 = -beta / 2 gives logits ±beta/2. Units
c >= K are zero. Every clause is computed and coded: balanced accuracy 1.0.

Fit (any model with TransformerLens views W_E, W_in: C1 = (W_E @ W_in[0])ᵀ): the site
table above, plus, on generator-drawn samples, a least-squares read-out per unit of
its activation on "a clause coded on it holds" (for the causal probe) and per clause
of the model's logit on "the clause holds" (for the predicted outputs).

What the explanation claims, and which probe tests it (docs/science.md §7): unit h is
active exactly when a clause coded on it holds (`hidden-code`); the clauses the model
decides are carried by their coded units (`code-recall`); the activations it predicts
can replace the model's (`patch`); its outputs (`prediction`: at the exact construction the
outputs are the answer itself, so there it ties the answer-only control). Its wrong
versions are the controls (`baselines/controls.py`): the same codes on permuted units, each
clause's codes on random units, the refit to a model with re-initialised weights, and the
answer alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparsebench.api import Batch, Fitted, Mechanism, Task
from sparsebench.config import check
from sparsebench.errors import UserError
from sparsebench.models.mlp2 import MLP2, MLP2Config

POST_HOOK = "blocks.0.mlp.hook_post"  # [batch, H]


@dataclass(frozen=True)
class SiteCodes:
    """Every site (h, c) of one or more models (leading instance dims allowed)."""

    distance: Tensor  # [..., H, K] long: d(h, c) in 0..k
    margin: Tensor  # [..., H, K] float: ⟨v, τ⟩ / max_i |C1[h, i]| (0 for a zero row)
    near_max: int  # a near code has distance <= near_max

    @property
    def exact(self) -> Tensor:
        return self.distance == 0  # [..., H, K] bool

    @property
    def near(self) -> Tensor:
        return self.distance <= self.near_max  # [..., H, K] bool

    @property
    def row_load(self) -> Tensor:
        return self.near.sum(-1)  # [..., H]: near codes per row

    @property
    def covered(self) -> Tensor:
        return self.exact.any(-2)  # [..., K]: clauses with at least one exact code


def site_codes(C1: Tensor, variables: Tensor, signs: Tensor, rho: float, near: int = 1) -> SiteCodes:
    """The site table of C1 [..., H, n] for clauses (variables [K, k], signs [K, k] ±1)."""
    C1 = C1.detach().float()
    v = C1[..., variables.to(C1.device)]  # [..., H, K, k]
    tau = signs.to(C1.device, C1.dtype)
    scale = C1.abs().amax(-1)  # [..., H]
    small = v.abs() < (rho * scale)[..., None, None]
    wrong = (torch.sign(v) != tau) | small
    margin = (v * tau).sum(-1) / scale.clamp_min(torch.finfo(C1.dtype).tiny)[..., None]
    return SiteCodes(wrong.sum(-1), margin, near)


def task_clauses(task: Task) -> tuple[Tensor, Tensor, tuple[str, ...]]:
    """(variables [K, k], signs [K, k], template names) of a clause-family task; a UserError otherwise."""
    if not all(hasattr(task, a) for a in ("variables", "signs", "labels")):
        raise UserError(f"mechanism feature-channel needs a clause task (variables, signs, labels); "
                        f"got {type(task).__name__}")
    return task.variables, task.signs, tuple(getattr(task, "template_names", ()))


def feature_space(model: Any) -> Tensor:
    """C1 = (W_E @ W_in[0])ᵀ: [H, n] (for mlp2 exactly (W1 ⊙ M) C0)."""
    return (model.W_E @ model.W_in[0]).detach().float().T


@dataclass(frozen=True)
class FeatureChannelConfig:
    rho: float = 0.2  # row threshold θ_h = rho · max|C1[h]| [reading]
    near: int = 1  # a near code has distance <= near [reading]
    a: float = 1.0  # construction: the code's magnitude in C1 (pre-activation of a unit whose clause holds)
    beta: float = 20.0  # construction: logits ±beta/2 (20 puts each clause's BCE near 5e-5)
    fit_samples: int = 2048  # fit: samples (from the fit generator) for the activation and logit read-outs

    def __post_init__(self) -> None:
        check("mechanism", 0 <= self.rho < 1, "rho", f"must be in [0, 1) (got {self.rho})")
        check("mechanism", self.near >= 0, "near", f"must be >= 0 (got {self.near})")
        for f in ("a", "beta"):
            v = getattr(self, f)
            check("mechanism", v > 0 and math.isfinite(v), f, f"must be a finite number > 0 (got {v})")
        check("mechanism", self.fit_samples >= 16, "fit_samples", f"must be at least 16 (got {self.fit_samples})")


class FeatureChannel(Mechanism):
    """Clause codes in C1: a unit computes a clause when its feature-space row carries the clause's template."""

    Config = FeatureChannelConfig
    version = 1
    families = ("clauses",)

    def why_not(self, model: Any) -> str | None:
        missing = [a for a in ("W_E", "W_in") if not hasattr(model, a)]
        return f"{type(model).__name__} has no {', '.join(missing)} for the fit to read" if missing else None

    def validate(self, task: Task, width: int) -> None:
        task_clauses(task)
        K = task.n_outputs
        check("mechanism", width >= K, "width",
              f"the exact construction needs one hidden unit per clause: width (H) must be >= K={K} (got {width})")

    def construct(self, task: Task, width: int, *, generator: torch.Generator) -> MLP2:
        self.validate(task, width)
        variables, signs, _ = task_clauses(task)
        a, beta = self.config.a, self.config.beta
        K, n = task.n_outputs, task.n_inputs
        model = MLP2(MLP2Config(d_hidden=width, embed="hadamard"), n_inputs=n, n_outputs=K,
                     generator=torch.Generator().manual_seed(0))
        C0 = model.C0.detach()  # [d, n], orthonormal columns
        C1 = torch.zeros(width, n)
        C1[torch.arange(K).unsqueeze(1), variables] = a * signs
        positives = (signs > 0).sum(1).float()  # [K]
        with torch.no_grad():
            model.blocks[0].mlp.W1.copy_(C1 @ torch.linalg.pinv(C0))  # [H, d]: W1 C0 = C1
            model.blocks[0].mlp.b1.zero_()
            model.blocks[0].mlp.b1[:K] = -(positives - 1) * a
            model.unembed.W2.zero_()
            model.unembed.W2[torch.arange(K), torch.arange(K)] = beta / a
            model.unembed.b2.fill_(-beta / 2)
        model.name = "mlp2"
        model.construction_info = {"a": a, "beta": beta}
        return model.eval()

    @torch.no_grad()
    def fit(self, model: Any, task: Task, *, generator: torch.Generator) -> "FeatureChannelFit":
        variables, signs, _ = task_clauses(task)
        if int(getattr(model, "n_layers", 0)) < 1:
            raise UserError("mechanism feature-channel needs a model with a hidden layer (n_layers >= 1)")
        codes = site_codes(feature_space(model), variables, signs, self.config.rho, self.config.near)
        device = model.W_E.device
        batch = task.sample(self.config.fit_samples, generator=generator, device=device)
        logits, cache = model.run_with_cache(**batch.inputs, names_filter=[POST_HOOK])
        fitted = FeatureChannelFit(task, codes, self.config.rho, cache[POST_HOOK].float(), logits.float(),
                                   batch.target.float())
        fitted.mechanism = self.name or "feature-channel"
        return fitted


def _affine_fit(indicator: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    """Per column j, least squares values[:, j] ≈ slope_j · indicator[:, j] + offset_j: (slope, offset).

    A column whose indicator is constant on the batch gets slope 0 and the mean as offset.
    """
    ind = indicator.float()
    mi, mv = ind.mean(0), values.mean(0)
    var = ((ind - mi) ** 2).mean(0)
    cov = ((ind - mi) * (values - mv)).mean(0)
    slope = torch.where(var > 1e-12, cov / var.clamp_min(1e-12), torch.zeros_like(var))
    return slope, mv - slope * mi


class FeatureChannelFit(Fitted):
    """The site table of one model and what it predicts.

    - `hidden_active` (`api.PredictsHidden`): unit h fires iff some clause exactly coded on h holds.
    - `predict_logits` (`api.PredictsOutputs`): a covered clause's logit is an affine function of
      "the clause holds" (read off the model's logits on the fit batch); an uncovered clause gets
      the model's mean logit (the codes say nothing about it).
    - `ideal_activation` (`api.Patchable`): at `blocks.0.mlp.hook_post`, unit h's activation as an
      affine function of "a clause coded on h holds" (read off the fit batch); an uncoded unit is
      held at its mean.
    - `clause_codes` (for the `code-count` and `code-recall` probes): exact and near codes.
    - Controls (`api.Recodable`: wrong explanations with the same statistics): `permuted_units(perm)`
      says unit h's codes live on unit perm[h]; `random_code(generator)` puts each clause's exact codes
      on as many uniformly random units. Both refit the unit read-outs for the wrong codes on the same
      fit batch (the best read-out a wrong code can have: the strongest version of the control).
    """

    why_not = "feature-channel claims clause codes on hidden units (no token code, no candidate set)"

    def __init__(self, task: Task, codes: SiteCodes, rho: float, post: Tensor, logits: Tensor, target: Tensor,
                 exact: Tensor | None = None):
        self.task = task
        self.codes = codes
        self.rho = rho  # the row threshold factor the codes were read with
        self.read_off = exact is None  # True: the codes read off the model (False: a control's wrong codes)
        self.exact = codes.exact if exact is None else exact  # [H, K] bool: the explanation's exact codes
        self._post, self._logits, self._target = post, logits, target  # the fit batch: [N, H], [N, K], [N, K]
        self.unit_slope, self.unit_offset = _affine_fit(self._unit_indicator(target), post)  # [H], [H]
        covered = self.exact.any(0)
        slope, offset = _affine_fit(target, logits)
        self.clause_slope = torch.where(covered, slope, torch.zeros_like(slope))  # [K]
        self.clause_offset = torch.where(covered, offset, logits.mean(0))  # [K]

    def _unit_indicator(self, y: Tensor) -> Tensor:
        """[batch, H] bool: some clause exactly coded on unit h holds (y: [batch, K] 0/1)."""
        return (y.float() @ self.exact.T.to(y.device).float()) > 0

    def _labels(self, batch: Batch) -> Tensor:
        return self.task.labels(batch.inputs["x"])  # type: ignore[attr-defined]

    def hidden_active(self, batch: Batch) -> Tensor:
        return self._unit_indicator(self._labels(batch))

    def predict_logits(self, batch: Batch) -> Tensor:
        y = self._labels(batch).float()
        return y * self.clause_slope.to(y.device) + self.clause_offset.to(y.device)

    def ideal_activation(self, batch: Batch) -> tuple[str, Tensor]:
        ind = self.hidden_active(batch).float()
        return POST_HOOK, ind * self.unit_slope.to(ind.device) + self.unit_offset.to(ind.device)

    def clause_codes(self) -> tuple[Tensor, Tensor]:
        """(exact [H, K] bool, near [H, K] bool): the explanation's codes."""
        return self.exact, (self.codes.near if self.read_off else self.exact)  # a control claims exact codes only

    def _with_exact(self, exact: Tensor) -> "FeatureChannelFit":
        out = FeatureChannelFit(self.task, self.codes, self.rho, self._post, self._logits, self._target, exact)
        out.mechanism = self.mechanism
        return out

    def permuted_units(self, perm: Tensor) -> "FeatureChannelFit":
        """The same codes claimed for the wrong units: unit h's codes are said to live on unit perm[h]."""
        H = self.exact.shape[0]
        if sorted(perm.tolist()) != list(range(H)):
            raise ValueError(f"perm must be a permutation of range({H})")
        exact = torch.empty_like(self.exact)
        exact[perm.to(self.exact.device)] = self.exact
        return self._with_exact(exact)

    def random_code(self, generator: torch.Generator) -> "FeatureChannelFit":
        """Each clause's exact codes on as many uniformly random units: the same codes per clause (the same
        clauses covered), random sites."""
        H, K = self.exact.shape
        counts = self.exact.sum(0).cpu()  # [K]: exact codes per clause
        rank = torch.rand(H, K, generator=generator).argsort(0).argsort(0)  # [H, K]: a random order of units per clause
        return self._with_exact((rank < counts).to(self.exact.device))

    def summary(self) -> dict[str, float | int | str]:
        exact, near = self.clause_codes()
        load = near.sum(-1).float()
        margins = self.codes.margin[exact]
        return {
            "rho": self.rho,
            "exact_codes": int(exact.sum()),
            "near_codes": int(near.sum()),
            "covered": int(exact.any(0).sum()),
            "covered_frac": float(exact.any(0).float().mean()),
            "units_coded": int(exact.any(1).sum()),
            "row_load_mean": float(load.mean()),
            "row_load_max": int(load.max()) if load.numel() else 0,
            "margin_mean": float(margins.mean()) if margins.numel() else float("nan"),
        }
