"""Make tasks, models, mechanisms and ticket detectors by their registered name: the one path the CLI and library share."""

from __future__ import annotations

from typing import Any

import torch

from sparsebench import registry
from sparsebench.api import Task


def make_task(name: str, config: dict[str, Any] | None = None) -> Task:
    cls = registry.tasks.get(name)
    task = cls(cls.make_config(config, "task"))
    task.name = name
    return task


def model_class(name: str) -> Any:
    return registry.models.get(name)


def make_mechanism(name: str, config: dict[str, Any] | None = None) -> Any:
    """Mechanism `name` with its config validated (errors name the field)."""
    cls = registry.mechanisms.get(name)
    mech = cls(cls.make_config(config or {}, "mechanism"))
    mech.name = name
    return mech


def make_detector(name: str, config: dict[str, Any] | None = None) -> Any:
    """Detector `name` with its config validated (errors name the field)."""
    cls = registry.detectors.get(name)
    det = cls(cls.make_config(config or {}, f"detector {name}"))
    det.name = name
    return det


def make_model_config(name: str, config: dict[str, Any] | None = None) -> Any:
    return model_class(name).make_config(config, "model")


def make_model(name: str, config: dict[str, Any] | None, task: Task, *,
               generator: torch.Generator | None = None) -> Any:
    """A freshly initialised model `name` for `task` (weights drawn from `generator`)."""
    cls = model_class(name)
    model = cls(cls.make_config(config, "model"), task, generator=generator)
    model.name = name
    return model
