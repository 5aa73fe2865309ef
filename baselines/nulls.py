"""Null models: every probe score is recorded next to the same probe on these.

- `untrained`: the same architecture and config at its initial weights for the
  same seed (what the pipeline finds in a model that learned nothing).
- `shuffled`: the trained model with its input-embedding rows permuted, so each
  token gets another token's code. Weight statistics (bimodality) survive, the
  token-to-output correspondence does not: it separates "the weights look like
  a code" from "the code explains what the model does". Probes that cannot see
  a relabelling of the inputs (`Probe.relabel_invariant`) record no value for it.

A null takes the trained model and returns a new model; it never modifies its input.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any

import torch

from sparsebench import registry
from sparsebench.api import Task
from sparsebench.build import make_model
from sparsebench.config import to_dict
from sparsebench.training import seed_generator


class Null(ABC):
    name: str = ""
    description: str = ""
    relabels_inputs: bool = False  # only relabels input tokens: relabel-invariant probes score it like the model

    def why_not(self, trained: Any) -> str | None:
        """None if this null can be made of `trained`, else a one-line reason."""
        return None

    @abstractmethod
    def make(self, trained: Any, task: Task, *, seed: int, generator: torch.Generator) -> Any:
        """A null model shaped like `trained` (on the same device)."""


class Untrained(Null):
    description = "same architecture and config, initial weights of the same seed"

    def why_not(self, trained):
        if getattr(trained, "name", "") not in registry.models:
            return f"{type(trained).__name__} is not a registered model: it has no initial weights"
        return None

    def make(self, trained, task, *, seed, generator):
        device = next(trained.parameters()).device
        model = make_model(trained.name, to_dict(trained.config), task, generator=seed_generator(seed, "init"))
        return model.to(device).eval()


class Shuffled(Null):
    description = "trained weights with the input-embedding rows permuted"
    relabels_inputs = True  # a permutation of W_E's rows

    def why_not(self, trained):
        return None if hasattr(trained, "W_E") else f"{type(trained).__name__} has no embedding W_E to shuffle"

    def make(self, trained, task, *, seed, generator):
        model = copy.deepcopy(trained)
        with torch.no_grad():
            W_E = model.W_E
            perm = torch.randperm(W_E.shape[0], generator=generator).to(W_E.device)
            W_E.copy_(W_E[perm])  # advanced indexing copies: no aliasing
        if torch.equal(model.W_E, trained.W_E):
            raise RuntimeError(f"{type(trained).__name__}.W_E is not a view of its parameter; cannot shuffle")
        return model.eval()
