"""The interfaces every task, model, mechanism and probe implements.

A task poses the problem (sampling, loss, metrics) and names its *family* (the
shape of its inputs and targets: "topk" for a weighted token set with a
distribution over it as target, "clauses" for Boolean inputs with multi-label
outputs, a plugin's own); a model answers it and exposes TransformerLens hooks;
a mechanism is a candidate explanation that can both *construct* an exact
solution and *fit* itself to a trained model; a probe scores a fitted
explanation against a model through its weights and hooks.

Nothing here assumes one family. Models are called `model(**batch.inputs)`;
each task declares the direction of each of its metrics; each model declares
which config fields a width sweep sets; each mechanism and probe declares the
families it understands, and what a fitted explanation can predict is a set of
small capability protocols (`PredictsOutputs`, `PredictsHidden`, ...) that a
probe asks for, so a plugin mechanism offers what it can and the rest of its
probes are recorded as not applicable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor

from sparsebench.config import from_dict, to_dict

EVAL_SEED = 10_000_019  # held-out samples come from this seed, never a training seed

Direction = Literal["higher", "lower", "zero"]  # which way a metric is better ("zero": nearest 0)
DIRECTIONS: tuple[str, ...] = ("higher", "lower", "zero")


@dataclass(frozen=True)
class Batch:
    """A batch of samples. Leading dims may include an instance dim: [*inst, batch, ...]."""

    inputs: dict[str, Tensor]  # what the model is called with: model(**inputs)
    target: Tensor  # the task's target, [*inst, batch, ...] (e.g. probabilities of the input tokens)

    def to(self, device: torch.device | str) -> "Batch":
        return Batch({k: v.to(device) for k, v in self.inputs.items()}, self.target.to(device))

    def instance(self, i: int) -> "Batch":
        """Instance `i` of a stacked batch (drops the leading instance dim)."""
        return Batch({k: v[i] for k, v in self.inputs.items()}, self.target[i])

    @staticmethod
    def stack(batches: list["Batch"]) -> "Batch":
        """One batch per instance -> one batch with a leading instance dim [inst, batch, ...]."""
        return Batch({k: torch.stack([b.inputs[k] for b in batches]) for k in batches[0].inputs},
                     torch.stack([b.target for b in batches]))

    def split(self, parts: int) -> list["Batch"]:
        """The batch cut into `parts` contiguous, nearly equal pieces along the sample dim (no instance dim)."""
        idx = torch.arange(self.target.shape[0]).tensor_split(parts)
        return [Batch({k: v[i] for k, v in self.inputs.items()}, self.target[i]) for i in idx if len(i)]

    def __len__(self) -> int:
        return self.target.shape[-2] if self.target.dim() >= 2 else self.target.shape[0]


class Configurable:
    """A class configured by a frozen dataclass `Config` defined next to it."""

    Config: ClassVar[type]
    name: str = ""  # the registry name, set by `build`

    @classmethod
    def make_config(cls, data: dict[str, Any] | None, where: str | None = None) -> Any:
        return from_dict(cls.Config, data, where or cls.__name__)

    def config_dict(self) -> dict[str, Any]:
        return to_dict(self.config)  # type: ignore[attr-defined]


class Task(Configurable, ABC):
    """A task: fresh samples, a loss to train on, metrics (each with its direction) to compare on."""

    version: ClassVar[int] = 1  # bump when sampling, loss or metrics change meaning
    family: ClassVar[str]  # input/target family: which models, mechanisms and probes understand it
    # Every metric `metrics` returns, in display order, with the direction that is better.
    metric_directions: ClassVar[dict[str, Direction]]

    def __init__(self, config: Any):
        self.config = config

    @property
    @abstractmethod
    def n_inputs(self) -> int:
        """Size of the input space (rows of a model's embedding W_E)."""

    @property
    @abstractmethod
    def n_outputs(self) -> int:
        """Logits per sample."""

    @property
    def seq_len(self) -> int | None:
        """Tokens per sample for sequence models (None: the task's inputs are not a sequence)."""
        return None

    @abstractmethod
    def sample(self, n: int, *, generator: torch.Generator, device: torch.device | str = "cpu") -> Batch:
        """Draw `n` fresh samples onto `device` with `generator` (vectorised, no loop over samples).

        This is the only way the suite draws a task's data: training stacks one `sample` per
        instance. A faster sampler may exist only in a speed backend that proves itself bitwise
        equal to this method (`sparsebench.accel.sampling`)."""

    @abstractmethod
    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """Per-sample loss, shape logits.shape[:-1]; training minimises its mean."""

    @abstractmethod
    def metrics(self, logits: Tensor, batch: Batch) -> dict[str, float]:
        """Every metric of `metric_directions`, averaged over the batch (no instance dim)."""

    def output_kl(self, p_logits: Tensor, q_logits: Tensor) -> Tensor:
        """KL(output of p_logits || output of q_logits) per sample, in float64: [..., n_outputs] -> [...].

        The probes compare outputs through it. Default: the logits are one softmax distribution; a task
        whose outputs are something else (e.g. independent Bernoullis, one per label) overrides it."""
        lp = torch.log_softmax(p_logits.double(), dim=-1)
        lq = torch.log_softmax(q_logits.double(), dim=-1)
        return (lp.exp() * (lp - lq)).sum(-1)

    def behaviour(self, model: Any, batch: Batch, *, generator: torch.Generator) -> dict[str, float]:
        """Descriptive numbers about a model's behaviour on the held-out `batch` (and fresh samples drawn with
        `generator`), recorded with its solution but never ranked (e.g. the shape of a distribution).
        None by default."""
        return {}

    def held_out(self, n: int, *, seed: int = EVAL_SEED, device: torch.device | str = "cpu") -> Batch:
        """A fixed evaluation batch from a seed no training run uses (drawn on the CPU: the same on any device)."""
        return self.sample(n, generator=torch.Generator().manual_seed(seed), device=device)


@runtime_checkable
class SparseModel(Protocol):
    """What probes and mechanisms may rely on in a model (every built-in model provides it).

    Called as `model(**batch.inputs)`. Hook names follow TransformerLens (`hook_embed`,
    `blocks.{l}.hook_resid_pre`, `blocks.{l}.mlp.hook_pre`, `blocks.{l}.mlp.hook_post`,
    `blocks.{l}.hook_mlp_out`, `blocks.{l}.hook_resid_post`); `run_with_cache` returns a
    TransformerLens `ActivationCache` and `cfg` is a TransformerLens config, so TL's own
    tools (`cache["post", 0]`, `cache.accumulated_resid()`) work. Weight views have
    TransformerLens shapes. `config` is the model's own frozen sparsebench config.
    """

    config: Any  # the model's frozen sparsebench config
    cfg: Any  # its TransformerLens config (n_layers, d_model, d_mlp, ...)
    n_layers: int

    def __call__(self, **inputs: Tensor) -> Tensor: ...  # -> logits [batch, n_outputs]
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


class Model(Configurable):
    """Class-level declarations every registered model makes (mixed into its nn.Module class)."""

    families: ClassVar[tuple[str, ...]]  # task families whose inputs it reads
    # Config fields a width sweep sets to the width (e.g. ("d_model", "d_mlp")); the first one is
    # what the suite calls the model's width.
    width_fields: ClassVar[tuple[str, ...]]
    # Named weight groups (state-dict keys) that model-randomisation controls re-initialise one at a time,
    # e.g. {"W_in": ("blocks.{layer}.mlp.W_in",), ...} ("{layer}": in every layer); empty: those controls
    # do not apply to this model.
    weight_groups: ClassVar[dict[str, tuple[str, ...]]] = {}

    @classmethod
    def width_of(cls, config: dict[str, Any]) -> int:
        """The width of a model config: its first width field."""
        return int(config[cls.width_fields[0]])


@dataclass(frozen=True)
class NotApplicable:
    """No number, and why: a probe, control or null that does not apply to this (model, explanation)."""

    reason: str  # one line


def last_position(act: Tensor) -> Tensor:
    """Sequence models cache [batch, pos, ...]; set models cache [batch, ...]. Keep the readout position."""
    return act[:, -1] if act.dim() == 3 else act


def token_to_hidden(model: Any, layer: int = 0) -> Tensor:
    """The linear map from an input token's embedding to MLP layer `layer`'s input: [n_inputs, d_mlp].

    A model that routes tokens through more than its residual stream says how
    (`model.token_to_hidden(layer)`: a transformer adds its attention path, docs/science.md §3.1);
    otherwise it is `W_E @ W_in[layer]` (for `mlp1`, exactly the map its first MLP reads).
    """
    own = getattr(model, "token_to_hidden", None)
    return own(layer) if callable(own) else model.W_E @ model.W_in[layer]


class Fitted(ABC):
    """One mechanism's explanation of one model. What it predicts is declared by the capability
    protocols below that its class implements; a probe asks for the ones it needs and records
    "not applicable" (with `why_not`) when they are missing or return None for this model."""

    mechanism: str = ""  # registry name of the mechanism that produced this
    why_not: str = ""  # one line: what this explanation does not predict (for 'not applicable')

    @abstractmethod
    def summary(self) -> dict[str, float | int | str]:
        """Scalars describing the fit (e.g. mean hash size, sign, scale) for the record."""


@runtime_checkable
class PredictsOutputs(Protocol):
    """The explanation's own output for a batch."""

    def predict_logits(self, batch: Batch) -> Tensor | None:
        """[batch, n_outputs] logits (None: not for this model)."""


@runtime_checkable
class PredictsCandidates(Protocol):
    """A top-k-family explanation that names its predicted top tier directly (e.g. Bloom's candidate set)."""

    def predict_candidates(self, batch: Batch) -> Tensor:
        """[batch, n_outputs] bool: the members plus the predicted false positives."""


@runtime_checkable
class PredictsHidden(Protocol):
    """Which hidden units of one MLP layer the explanation says are active (layer 0, unless the fit names
    the hook of its units in an attribute `hidden_hook`, e.g. "blocks.1.mlp.hook_post")."""

    def hidden_active(self, batch: Batch) -> Tensor | None:
        """[batch, d_mlp] bool (None: not for this model)."""


@runtime_checkable
class HasTokenCode(Protocol):
    """A binary code over hidden units read off the input side (and the output side) of the weights."""

    def token_code(self) -> Tensor:
        """[n_inputs, d_mlp] bool."""

    def output_code(self) -> Tensor:
        """[n_outputs, d_mlp] bool (the output side's code, transposed to the input's layout)."""


@runtime_checkable
class HasClauseCodes(Protocol):
    """A clause-family explanation that names which hidden units carry which clauses (feature channels)."""

    def clause_codes(self) -> tuple[Tensor, Tensor]:
        """(exact [d_mlp, n_outputs] bool, near [d_mlp, n_outputs] bool): unit h carries clause c."""


@runtime_checkable
class Patchable(Protocol):
    """An idealised activation at one hook, for causal probes."""

    def ideal_activation(self, batch: Batch) -> tuple[str, Tensor] | None:
        """(hook name, the activation the explanation says that hook carries at the readout position)."""


@runtime_checkable
class Recodable(Protocol):
    """An explanation that assigns codes over hidden units; control explanations swap in wrong ones of the
    same statistics (`baselines/controls.py`)."""

    def permuted_units(self, perm: Tensor) -> Fitted:
        """The same explanation with its hidden units relabelled by `perm` ([d_mlp] long): wrong units."""

    def random_code(self, generator: torch.Generator) -> Fitted:
        """The same explanation with a random code of the same density per input: wrong content."""


class Mechanism(Configurable, ABC):
    """A candidate explanation that can build an exact solution and fit itself to a model."""

    version: ClassVar[int] = 1
    families: ClassVar[tuple[str, ...]]  # task families it can construct for and fit on
    # True if its predictions are given the answer (the target): an upper bound, shown but never ranked.
    oracle: ClassVar[bool] = False

    def __init__(self, config: Any):
        self.config = config

    def validate(self, task: Task, width: int) -> None:
        """Raise a ConfigError (naming the field) if the mechanism cannot be built at `width`."""

    def why_not(self, model: Any) -> str | None:
        """None if `fit` can read this model, else a one-line reason (e.g. it lacks the weights the fit reads)."""
        return None

    @abstractmethod
    def construct(self, task: Task, width: int, *, generator: torch.Generator) -> Any:
        """A model with exact weights whose width (its first `width_fields` entry) is `width`."""

    @abstractmethod
    def fit(self, model: Any, task: Task, *, generator: torch.Generator) -> Fitted:
        """Read the mechanism's parameters off a (trained) model."""


def applies(entry: Any, task: Task) -> str | None:
    """None if a mechanism, probe or model class understands `task`'s family, else a one-line reason."""
    families = getattr(entry, "families", ())
    if task.family in families:
        return None
    return f"understands task families {', '.join(families) or 'none'}, not {task.family!r}"
