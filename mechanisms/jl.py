"""`jl`: linear (Johnson-Lindenstrauss) superposition, the post's contrast (docs/science.md §3).

Construction (an `mlp1` with d = width and the MLP off): a random Gaussian
embedding with unit-norm rows E (V x d), W_in = W_out = 0 and zero biases (d_mlp = 1,
so the hook names of mlp1 exist), W_U = alpha E^T, b_U = 0. Then z = alpha E x with
x = sum_i w_i E[t_i]: each member's logit is alpha (w_i + cross-talk), every other
token's is alpha * cross-talk of variance about sum w_i^2 / d, so the error falls only
polynomially in d. alpha = 0 tunes it: golden-section search (log scale) of the task
loss on samples drawn with the construction's generator, after the embedding.

Fit (the JL claim, read off a model): every token is read out by its own embedding from the
superposed input, z ≈ alpha W_E x with x = sum_i w_i W_E[t_i], and nothing else happens on the
way (the MLP adds nothing: the final residual is x). alpha minimises KL(model || softmax(alpha W_E x))
on one generator-drawn batch; `r2` is the squared correlation of the model's logits with W_E x
(each sample's logits centred) on a second one. The fit predicts logits alpha W_E x and offers the
final residual x as its idealised activation (`blocks.{L-1}.hook_resid_post`).

It is specific on purpose. A "best linear readout" (r ≈ A x + c, any A) explains every linear
model, so it scored as high on an untrained net or on a JL construction with its embedding rows
shuffled as on a real JL construction, and its margin over those nulls was about 0 on the very
model it describes (issue 13). The embedding-readout claim holds exactly on the construction
and fails on those nulls: the shuffled rows no longer match the readout, and an untrained net's
W_U is unrelated to its embedding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sparsebench.api import Batch, Mechanism, Task
from sparsebench.config import check
from sparsebench.errors import UserError
from sparsebench.models.mlp import MLP, MLPConfig
from sparsebench.stats import ResidualFit, input_sum, kl_from, kl_logits, minimize_log_scalar

ALPHA_RANGE = (1e-2, 1e3)  # search range of the tuned / fitted scale


@dataclass(frozen=True)
class JLConfig:
    alpha: float = 0.0  # logit scale of the construction; 0 = tune it on generator-drawn samples
    tune_samples: int = 1024  # samples used to tune alpha (construction) and to fit it (fit; twice: fit, then R^2)

    def __post_init__(self) -> None:
        check("mechanism", self.alpha >= 0 and math.isfinite(self.alpha), "alpha",
              f"must be a finite number >= 0 (0 = tune it) (got {self.alpha})")
        check("mechanism", self.tune_samples >= 16, "tune_samples", f"must be at least 16 (got {self.tune_samples})")


class JL(Mechanism):
    """Linear superposition: z = alpha E x with a random unit-norm embedding, no hidden code."""

    Config = JLConfig
    version = 1
    families = ("topk",)

    def validate(self, task: Task, width: int) -> None:
        check("mechanism", width >= 1, "width", f"must be at least 1 (got {width})")
        if task.n_inputs != task.n_outputs:
            raise UserError(f"mechanism jl reads tokens out with their own embedding: it needs "
                            f"n_inputs == n_outputs (got {task.n_inputs} and {task.n_outputs})")

    def why_not(self, model: Any) -> str | None:
        missing = [a for a in ("W_E", "W_U", "b_U") if not hasattr(model, a)]
        return f"{type(model).__name__} has no {', '.join(missing)} for the fit to read" if missing else None

    def construct(self, task: Task, width: int, *, generator: torch.Generator) -> MLP:
        self.validate(task, width)
        V, d = task.n_inputs, width
        E = torch.randn(V, d, generator=generator)
        E = E / E.norm(dim=-1, keepdim=True)  # [V, d] unit rows
        cfg = MLPConfig(d_model=d, d_mlp=1, n_layers=1)
        model = MLP(cfg, n_inputs=V, n_outputs=task.n_outputs, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            model.embed.W_E.copy_(E)
            for p in model.blocks[0].mlp.parameters():
                p.zero_()
            model.unembed.W_U.copy_(E.T)  # alpha = 1 for now
            model.unembed.b_U.zero_()
        alpha = self.config.alpha
        if alpha == 0:
            batch = task.sample(self.config.tune_samples, generator=generator)
            with torch.no_grad():
                z = model(**batch.inputs)  # alpha = 1 logits; the loss is convex in alpha
            alpha, _ = minimize_log_scalar(lambda a: task.loss(a * z, batch).mean().item(), *ALPHA_RANGE)
        with torch.no_grad():
            model.unembed.W_U.mul_(alpha)
        model.construction_info = {"alpha": alpha}  # the scale used (tuned or given), for the record
        model.name = "mlp1"
        model.eval()
        return model

    @torch.no_grad()
    def fit(self, model: Any, task: Task, *, generator: torch.Generator) -> "JLFit":
        device = model.W_E.device
        fit_b = task.sample(self.config.tune_samples, generator=generator, device=device)
        test_b = task.sample(self.config.tune_samples, generator=generator, device=device)
        fitted = JLFit(model, 1.0)
        base = fitted.readout(fit_b)  # W_E x, alpha = 1: [batch, V]
        kl = kl_from(model(**fit_b.inputs))
        fitted.alpha, _ = minimize_log_scalar(lambda a: kl(a * base).mean().item(), *ALPHA_RANGE)
        logits = model(**test_b.inputs).double()
        pred = fitted.readout(test_b)
        a, b = logits - logits.mean(-1, keepdim=True), pred - pred.mean(-1, keepdim=True)
        denom = (a.square().sum() * b.square().sum()).sqrt().item()
        fitted.r2 = ((a * b).sum().item() / denom) ** 2 if denom > 0 else float("nan")
        fitted.kl_fit = kl_logits(logits, fitted.predict_logits(test_b)).mean().item()
        fitted.mechanism = self.name or "jl"
        return fitted


class JLFit(ResidualFit):
    """Tokens read out by their own embedding from the superposed input: logits ≈ alpha W_E x; residual = x."""

    why_not = "jl predicts no hidden code (the MLP is off)"

    def __init__(self, model: Any, alpha: float):
        super().__init__(model)
        self.alpha = alpha  # the readout scale
        self.r2 = float("nan")  # held-out squared correlation of the model's centred logits with W_E x
        self.kl_fit = float("nan")  # held-out KL(model || prediction)
        if self.hook is None:
            self.why_not = "jl predicts no hidden code, and a 0-layer model has no residual hook to patch"

    def readout(self, batch: Batch) -> Tensor:
        """W_E x for every output token: [batch, V] (float64)."""
        x = input_sum(self.model, batch).double()  # [batch, d]
        return x @ self.model.W_E.detach().double().T

    def residual(self, batch: Batch) -> Tensor:
        """The input sum x: the final residual JL says the model carries (the MLP adds nothing)."""
        return input_sum(self.model, batch).float()

    def predict_logits(self, batch: Batch) -> Tensor:
        return (self.alpha * self.readout(batch)).to(self.model.W_E.dtype)

    def summary(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {"alpha_fit": self.alpha, "r2": self.r2, "kl_fit": self.kl_fit}
        if "alpha" in getattr(self.model, "construction_info", {}):  # fitted to a JL construction
            out["alpha_built"] = float(self.model.construction_info["alpha"])
        return out
