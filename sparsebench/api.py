"""The interfaces every task, model, mechanism and probe implements.

A task poses the problem (sampling, loss, metrics); a model answers it and
exposes TransformerLens hooks; a mechanism is a candidate explanation that can
both *construct* an exact solution and *fit* itself to a trained model; a probe
scores a fitted explanation against a model through its weights and hooks.
Nothing here assumes top-k: a Boolean clause task or a two-layer network fits
the same shapes (inputs are a dict of tensors, targets are the task's own).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

from sparsebench.config import from_dict, to_dict

EVAL_SEED = 10_000_019  # held-out samples come from this seed, never a training seed


@dataclass(frozen=True)
class Batch:
    """A batch of samples. Leading dims may include an instance dim: [*inst, batch, ...]."""

    inputs: dict[str, Tensor]  # what the model is called with: model(**inputs)
    target: Tensor  # the task's target, e.g. [*, batch, set] probabilities of the input tokens

    def to(self, device: torch.device | str) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, self.target.to(device))

    def instance(self, i: int) -> "Batch":
        """Instance `i` of a stacked batch (drops the leading instance dim)."""
        return Batch({k: v[i] for k, v in self.inputs.items()}, self.target[i])

    def __len__(self) -> int:
        return self.target.shape[-2]


class Configurable:
    """A class configured by a frozen dataclass `Config` defined next to it."""

    Config: ClassVar[type]
    name: str = ""  # the registry name, set by `create`

    @classmethod
    def make_config(cls, data: dict[str, Any] | None, where: str | None = None) -> Any:
        return from_dict(cls.Config, data, where or cls.__name__)

    def config_dict(self) -> dict[str, Any]:
        return to_dict(self.config)  # type: ignore[attr-defined]


class Task(Configurable, ABC):
    """A sparse-output task: samples, a loss to train on, metrics to compare on."""

    version: ClassVar[int] = 1  # bump when sampling, loss or metrics change meaning
    family: ClassVar[str] = "weighted-set"  # input/target shape family (probes check it)

    def __init__(self, config: Any):
        self.config = config

    @property
    @abstractmethod
    def n_inputs(self) -> int:
        """Size of the input vocabulary (rows of the embedding)."""

    @property
    @abstractmethod
    def n_outputs(self) -> int:
        """Size of the output vocabulary (logits per sample)."""

    @property
    @abstractmethod
    def seq_len(self) -> int:
        """Tokens per sample (the sequence length for transformers)."""

    @abstractmethod
    def sample(self, n: int, *, generator: torch.Generator, device: torch.device | str = "cpu") -> Batch:
        """Draw `n` fresh samples onto `device` with `generator` (on any device; vectorised, no loop over samples)."""

    def sample_stacked(self, n: int, *, generators: list[torch.Generator],
                       device: torch.device | str = "cpu") -> Batch:
        """One batch per generator, stacked on a leading instance dim: [inst, n, ...]."""
        parts = [self.sample(n, generator=g, device=device) for g in generators]
        return Batch({k: torch.stack([p.inputs[k] for p in parts]) for k in parts[0].inputs},
                     torch.stack([p.target for p in parts]))

    @abstractmethod
    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """Per-sample loss, shape logits.shape[:-1]; training minimises its mean."""

    @abstractmethod
    def metrics(self, logits: Tensor, batch: Batch) -> dict[str, float]:
        """Every metric of the task, averaged over the batch (no instance dim)."""

    def held_out(self, n: int, *, seed: int = EVAL_SEED, device: torch.device | str = "cpu") -> Batch:
        """A fixed evaluation batch from a seed no training run uses (drawn on the CPU: the same on any device)."""
        return self.sample(n, generator=torch.Generator().manual_seed(seed), device=device)


@runtime_checkable
class SparseModel(Protocol):
    """What probes and mechanisms may rely on (both mlp1 and the transformer provide it).

    Hook names follow TransformerLens: `hook_embed`, `blocks.{l}.hook_resid_pre`,
    `blocks.{l}.mlp.hook_pre`, `blocks.{l}.mlp.hook_post`, `blocks.{l}.hook_mlp_out`,
    `blocks.{l}.hook_resid_post`. Weight views follow TransformerLens shapes.
    """

    config: Any  # the model's frozen config
    n_layers: int

    def __call__(self, tokens: Tensor, weights: Tensor) -> Tensor: ...  # -> logits [batch, n_outputs]
    def run_with_cache(self, *args: Any, **kwargs: Any) -> tuple[Tensor, Any]: ...
    def run_with_hooks(self, *args: Any, **kwargs: Any) -> Tensor: ...

    @property
    def W_E(self) -> Tensor: ...  # [n_inputs, d_model]
    @property
    def W_in(self) -> Tensor: ...  # [n_layers, d_model, d_mlp]
    @property
    def b_in(self) -> Tensor: ...  # [n_layers, d_mlp]
    @property
    def W_out(self) -> Tensor: ...  # [n_layers, d_mlp, d_model]
    @property
    def W_U(self) -> Tensor: ...  # [d_model, n_outputs]
    @property
    def b_U(self) -> Tensor: ...  # [n_outputs]


def last_position(act: Tensor) -> Tensor:
    """Sequence models cache [batch, pos, ...]; set models cache [batch, ...]. Keep the readout position."""
    return act[:, -1] if act.dim() == 3 else act


class Fitted(ABC):
    """One mechanism's explanation of one model: what it predicts, for probes to check.

    Each capability returns None when the mechanism makes no such prediction; a
    probe that needs it then records "not applicable" with `why_not`, never a number.
    """

    mechanism: str = ""  # registry name of the mechanism that produced this

    @abstractmethod
    def summary(self) -> dict[str, float | int | str]:
        """Scalars describing the fit (e.g. mean hash size, sign, scale) for the record."""

    def predict_logits(self, batch: Batch) -> Tensor | None:
        """The mechanism's own logits for the batch: [batch, n_outputs]."""
        return None

    def token_code(self) -> Tensor | None:
        """Per-token binary code over hidden units (e.g. Bloom hashes): [n_inputs, d_mlp] bool."""
        return None

    def output_code(self) -> Tensor | None:
        """The code read off the output side (e.g. the mask of W_out @ W_U, transposed): [n_outputs, d_mlp] bool."""
        return None

    def hidden_active(self, batch: Batch) -> Tensor | None:
        """Which hidden units (layer 0) the mechanism says fire: [batch, d_mlp] bool."""
        return None

    def predict_candidates(self, batch: Batch) -> Tensor | None:
        """The mechanism's predicted top tier (members plus predicted false positives): [batch, n_outputs] bool."""
        return None

    def ideal_activation(self, batch: Batch) -> tuple[str, Tensor] | None:
        """(hook name, idealised activation at that hook) for a causal patch, readout position only."""
        return None

    why_not: str = ""  # one line: what this mechanism does not predict (for 'not applicable')


class Mechanism(Configurable, ABC):
    """A candidate explanation that can build an exact solution and fit itself to a model."""

    version: ClassVar[int] = 1
    oracle: ClassVar[bool] = False  # True if its predictions are given the answer (the target set): an upper bound

    def __init__(self, config: Any):
        self.config = config

    def validate(self, task: Task, width: int) -> None:
        """Raise a ConfigError (naming the field) if the mechanism cannot be built at `width`."""

    @abstractmethod
    def construct(self, task: Task, width: int, *, generator: torch.Generator) -> Any:
        """A model of the same family with exact weights (width = residual width d)."""

    @abstractmethod
    def fit(self, model: Any, task: Task, *, generator: torch.Generator) -> Fitted:
        """Read the mechanism's parameters off a (trained) model."""
