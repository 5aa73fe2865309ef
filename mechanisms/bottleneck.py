"""`softmax-bottleneck`: the Basri & Jacobs closed form (docs/science.md §3), an input-dependent oracle.

Given an unembedding U (V x d, rows u_t), a bias b and the target set S (k <= d),
the minimum-norm final residual that puts the target on S is

    r* = pinv(U_S) (s y - b_S),   y_i = 1 + (1/s) log(p_i / p_min),

so the logits on S are exactly s + log(p_i / p_min): equal for the uniform task,
the exact within-set ratios p_i / p_j for a conditional one. The target p comes
from the task (`task.target_probs(weights)`, the same as `batch.target`), so the
uniform and conditional tasks need no option.

The construction is an ORACLE, not a fixed network: r* needs the set S and a
pseudo-inverse per sample. It says what a d-dimensional residual with this U can
do at best (random Gaussian U, b = 0). `BottleneckOracle` is a `HookedRootModule`
whose final residual hook `blocks.0.hook_resid_post` carries r*, so probes can
read and patch it like a model's; it has no embedding or MLP weights.

The fit uses a model's own W_U and b_U (treating the readout as linear: exact for
mlp1; a transformer's final LayerNorm is not modelled), fits s to minimise
KL(model || prediction), and reports the cosine similarity between the model's
actual final residual and r*: whether a trained model's final residual points there.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from sparsebench.api import Batch, Mechanism, Task
from sparsebench.config import check
from sparsebench.errors import UserError
from sparsebench.stats import ResidualFit, final_residual, kl_from, kl_logits, minimize_log_scalar

S_RANGE = (1e-2, 1e3)  # search range of the tuned / fitted scale s


@dataclass(frozen=True)
class BottleneckConfig:
    s: float = 0.0  # logit margin scale of r* (members get s + log(p_i/p_min)); 0 = tune (construct) / fit
    tune_samples: int = 1024  # samples (drawn with the generator) used to tune or fit s

    def __post_init__(self) -> None:
        check("mechanism", self.s >= 0 and math.isfinite(self.s), "s",
              f"must be a finite number >= 0 (0 = tune it) (got {self.s})")
        check("mechanism", self.tune_samples >= 16, "tune_samples", f"must be at least 16 (got {self.tune_samples})")


def closed_form_parts(W_U: Tensor, b_U: Tensor, tokens: Tensor, p: Tensor) -> tuple[Tensor, Tensor]:
    """(r1, r0) with r*(s) = s r1 + r0 for every sample: each [batch, d_model], float64.

    r1 = pinv(U_S) 1_k, r0 = pinv(U_S) (log(p / p_min) - b_S); one batched pinv of
    [batch, k, d], no loop over samples.
    """
    U = W_U.detach().double().T  # [V, d]
    U_S = U[tokens]  # [batch, k, d]
    P = torch.linalg.pinv(U_S)  # [batch, d, k]
    logp = p.double().clamp_min(1e-300).log()
    shift = logp - logp.min(-1, keepdim=True).values - b_U.detach().double()[tokens]  # [batch, k]
    r1 = P.sum(-1)  # P @ 1_k
    r0 = (P @ shift.unsqueeze(-1)).squeeze(-1)
    return r1, r0


def _k_of(task: Task) -> int:
    k = getattr(task.config, "k", None)
    if k is None or not hasattr(task, "target_probs"):
        raise UserError(f"mechanism softmax-bottleneck needs a top-k task (config.k and target_probs); "
                        f"got {type(task).__name__}")
    return int(k)


class OracleBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hook_resid_post = HookPoint()  # [batch, d_model]: r*


class BottleneckOracle(HookedRootModule):
    """Input-dependent oracle readout: logits = U r* + b with r* the closed form per sample."""

    def __init__(self, task: Task, U: Tensor, s: float):
        super().__init__()
        self.task = task
        self.s = s  # logit scale (tuned or given)
        self.unembed = nn.Module()
        self.unembed.W_U = nn.Parameter(U.T.contiguous(), requires_grad=False)  # [d_model, V]
        self.unembed.b_U = nn.Parameter(torch.zeros(U.shape[0]), requires_grad=False)  # [V]
        self.blocks = nn.ModuleList([OracleBlock()])
        self.config = {"d_model": U.shape[1], "oracle": "softmax-bottleneck"}
        self.name = "softmax-bottleneck-oracle"
        self.setup()

    n_layers = 1

    @property
    def W_U(self) -> Tensor:
        return self.unembed.W_U

    @property
    def b_U(self) -> Tensor:
        return self.unembed.b_U

    def forward(self, tokens: Tensor, weights: Tensor) -> Tensor:
        """tokens, weights: [batch, k] -> logits [batch, V]."""
        p = self.task.target_probs(weights)  # type: ignore[attr-defined]
        r1, r0 = closed_form_parts(self.W_U, self.b_U, tokens, p)
        r = self.blocks[0].hook_resid_post((self.s * r1 + r0).to(self.W_U.dtype))
        return r @ self.W_U + self.b_U


class SoftmaxBottleneck(Mechanism):
    """Basri & Jacobs: the minimum-norm residual giving the target on S through the unembedding."""

    Config = BottleneckConfig
    version = 1
    families = ("topk",)
    oracle = True  # r* is computed from the target set S and its probabilities: an upper bound, not a circuit

    def validate(self, task: Task, width: int) -> None:
        k = _k_of(task)
        check("mechanism", width >= k, "width", f"must be >= k={k}: U_S needs full row rank (got {width})")
        if width < 2 * k:
            warnings.warn(f"softmax-bottleneck at width {width} < 2k = {2 * k}: below the sign-rank bound, "
                          f"no unembedding realises every top-{k} set", stacklevel=2)

    def why_not(self, model: Any) -> str | None:
        missing = [a for a in ("W_U", "b_U") if not hasattr(model, a)]
        return f"{type(model).__name__} has no {', '.join(missing)} for the fit to read" if missing else None

    def construct(self, task: Task, width: int, *, generator: torch.Generator) -> BottleneckOracle:
        self.validate(task, width)
        U = torch.randn(task.n_outputs, width, generator=generator) / math.sqrt(width)  # [V, d]
        oracle = BottleneckOracle(task, U, self.config.s or 1.0)
        if self.config.s == 0:
            batch = task.sample(self.config.tune_samples, generator=generator)
            r1, r0 = closed_form_parts(oracle.W_U, oracle.b_U, batch.inputs["tokens"], batch.target)
            a, c = (r1 @ oracle.W_U.double()), (r0 @ oracle.W_U.double())  # logits(s) = s a + c: convex loss
            oracle.s, _ = minimize_log_scalar(lambda s: task.loss(s * a + c, batch).mean().item(), *S_RANGE)
        oracle.construction_info = {"s": oracle.s}  # the scale used (tuned or given), for the record
        oracle.eval()
        return oracle

    @torch.no_grad()
    def fit(self, model: Any, task: Task, *, generator: torch.Generator) -> "BottleneckFit":
        _k_of(task)
        device = model.W_U.device
        batch = task.sample(self.config.tune_samples, generator=generator, device=device)
        logits, resid = final_residual(model, batch)
        W_U, b_U = model.W_U.detach().double(), model.b_U.detach().double()
        r1, r0 = closed_form_parts(W_U, b_U, batch.inputs["tokens"], batch.target)
        a, c = r1 @ W_U, r0 @ W_U + b_U
        if self.config.s > 0:
            s = self.config.s
        else:
            kl = kl_from(logits)
            s, _ = minimize_log_scalar(lambda s: kl(s * a + c).mean().item(), *S_RANGE)
        fitted = BottleneckFit(model, s)
        r_star = s * r1 + r0
        fitted.kl_fit = kl_logits(logits, s * a + c).mean().item()
        cos = torch.nn.functional.cosine_similarity(resid.double(), r_star, dim=-1)
        fitted.cos_mean, fitted.cos_std = cos.mean().item(), cos.std().item()
        fitted.norm_ratio = (resid.double().norm(dim=-1) / r_star.norm(dim=-1)).mean().item()
        fitted.mechanism = self.name or "softmax-bottleneck"
        return fitted


class BottleneckFit(ResidualFit):
    """The closed-form residual r* for a model's own unembedding, with a fitted scale s."""

    why_not = "softmax-bottleneck predicts only the final residual, no hidden code"

    def __init__(self, model: Any, s: float):
        super().__init__(model)
        self.s = s  # fitted (or given) scale
        self.kl_fit = float("nan")  # KL(model || prediction) on the fit batch
        self.cos_mean = float("nan")  # mean cosine(model's final residual, r*) on the fit batch
        self.cos_std = float("nan")  # its spread over samples
        self.norm_ratio = float("nan")  # mean |r_model| / |r*|
        self._parts: tuple[Any, tuple[Tensor, Tensor]] | None = None  # (batch key, (r1, r0)) of the last batch
        if self.hook is None:
            self.why_not = "softmax-bottleneck: a 0-layer model has no final residual hook to patch"

    def residual(self, batch: Batch) -> Tensor:
        """r* = pinv(U_S)(s y - b_S): [batch, d_model] (the last batch's pseudo-inverses are kept: probes ask
        for the same batch several times)."""
        tokens = batch.inputs["tokens"]
        key = (tokens.shape, hash(tokens.cpu().numpy().tobytes()), hash(batch.target.cpu().numpy().tobytes()))
        if self._parts is None or self._parts[0] != key:
            self._parts = (key, closed_form_parts(self.model.W_U, self.model.b_U, tokens, batch.target))
        r1, r0 = self._parts[1]
        return (self.s * r1 + r0).to(self.model.W_U.dtype)

    def summary(self) -> dict[str, float | int | str]:
        return {"s": self.s, "kl_fit": self.kl_fit, "cos_resid": self.cos_mean, "cos_resid_std": self.cos_std,
                "norm_ratio": self.norm_ratio}
