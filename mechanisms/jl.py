"""`jl`: linear (Johnson-Lindenstrauss) superposition, the post's contrast (docs/science.md §3).

Construction (an `mlp1` with d = width and the MLP off): a random Gaussian
embedding with unit-norm rows E (V x d), W_in = W_out = 0 and zero biases (d_mlp = 1,
so the hook names of mlp1 exist), W_U = alpha E^T, b_U = 0. Then z = alpha E x with
x = sum_i w_i E[t_i]: each member's logit is alpha (w_i + cross-talk), every other
token's is alpha * cross-talk of variance about sum w_i^2 / d, so the error falls only
polynomially in d. alpha = 0 tunes it: golden-section search (log scale) of the task
loss on samples drawn with the construction's generator, after the embedding.

Fit ("the best linear readout of the input"): least squares of the model's final
residual r (`blocks.{L-1}.hook_resid_post` at the readout position) on
x = sum_i w_i W_E[t_i], r ≈ A x + c, fitted on one generator-drawn batch and
scored (R^2) on a second one. It predicts logits (A x + c) W_U + b_U, i.e. it
treats the readout as linear (exact for mlp1; a transformer's final LayerNorm is
not modelled). For a model with 0 layers r = x and the fit is trivially exact.
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
from sparsebench.stats import ResidualFit, final_residual, input_sum, kl_logits, minimize_log_scalar

ALPHA_RANGE = (1e-2, 1e3)  # search range of the tuned / fitted scale


@dataclass(frozen=True)
class JLConfig:
    alpha: float = 0.0  # logit scale of the construction; 0 = tune it on generator-drawn samples
    tune_samples: int = 4096  # samples used to tune alpha (construction) and to fit A, c (fit)

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
        X = input_sum(model, fit_b).double()
        _, R = final_residual(model, fit_b)
        Xa = torch.cat([X, torch.ones_like(X[:, :1])], dim=1)  # [n, d+1]
        sol = torch.linalg.lstsq(Xa.cpu(), R.double().cpu()).solution.to(device)  # [d+1, d]
        fitted = JLFit(model, sol[:-1].float(), sol[-1].float())
        logits, R_test = final_residual(model, test_b)
        pred = fitted.residual(test_b)
        ss_res = ((R_test - pred) ** 2).sum().item()
        ss_tot = ((R_test - R_test.mean(0)) ** 2).sum().item()
        fitted.r2 = 1 - ss_res / ss_tot if ss_tot > 0 else float("nan")
        fitted.kl_fit = kl_logits(logits, fitted.predict_logits(test_b)).mean().item()
        fitted.mechanism = self.name or "jl"
        return fitted


class JLFit(ResidualFit):
    """The best linear readout of the input: final residual ≈ A x + c."""

    why_not = "jl predicts no hidden code (the MLP is off)"

    def __init__(self, model: Any, A: Tensor, c: Tensor):
        super().__init__(model)
        self.A = A  # [d, d]: r ≈ x @ A + c (row-vector convention)
        self.c = c  # [d]
        self.r2 = float("nan")  # held-out R^2 of the linear fit of the final residual
        self.kl_fit = float("nan")  # held-out KL(model || prediction)
        if self.hook is None:
            self.why_not = "jl predicts no hidden code, and a 0-layer model has no residual hook to patch"

    def residual(self, batch: Batch) -> Tensor:
        """A x + c: [batch, d_model]."""
        return input_sum(self.model, batch).float() @ self.A + self.c

    def summary(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {"r2": self.r2, "kl_fit": self.kl_fit}
        if "alpha" in getattr(self.model, "construction_info", {}):  # fitted to a JL construction
            out["alpha"] = float(self.model.construction_info["alpha"])
        return out
