"""The tickets suite: what `sparsebench tickets` runs, as frozen dataclasses read from TOML.

A tickets suite names one task and model (the model's width field is set per cell),
the seeds, the dense training and the sparse retraining, and a list of *cells*: each
cell crosses its detection steps, sparsities, init modes and detectors at one width
(an empty list in a cell means the suite's). Built-in: `sparsebench/suites/tickets.toml`
(`kind = "tickets"`); copy it to make your own. Unknown keys are errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from sparsebench.config import check, from_dict, to_dict
from sparsebench.errors import UserError
from sparsebench.training import TrainConfig

INIT_MODES = ("rewind-0", "rewind-e", "fresh")  # W1_init: θ0, θ_e (the detection step), a fresh random draw


@dataclass(frozen=True)
class Cell:
    width: int = 0  # H (the model's width field); 0 = the model config's
    steps: tuple[int, ...] = ()  # detection steps; empty = the suite's
    sparsities: tuple[float, ...] = ()  # W1 sparsities; empty = the suite's
    init_modes: tuple[str, ...] = ()  # of INIT_MODES; empty = the suite's
    detectors: tuple[str, ...] = ()  # registered detector names; empty = the suite's

    def __post_init__(self) -> None:
        w = "tickets.cells"
        check(w, self.width >= 0, "width", f"must be >= 0 (0 = the model config's) (got {self.width})")
        check(w, all(s >= 0 for s in self.steps), "steps", f"must be >= 0 (got {list(self.steps)})")
        check(w, all(0 < s < 1 for s in self.sparsities), "sparsities", f"must be in (0, 1) (got {list(self.sparsities)})")
        bad = [m for m in self.init_modes if m not in INIT_MODES]
        check(w, not bad, "init_modes", f"must be among {', '.join(INIT_MODES)} (got {bad[0] if bad else ''!r})")


@dataclass(frozen=True)
class TicketSuite:
    name: str = "custom"  # the suite's name
    kind: str = "tickets"  # marks a tickets suite (an `evaluate` suite has no kind)
    task: str = "clause-dnf"  # registered task (family "clauses")
    task_config: dict[str, Any] = field(default_factory=dict)  # its config fields
    model: str = "mlp2"  # registered model with a W1 mask
    model_config: dict[str, Any] = field(default_factory=dict)  # its config fields (a cell's width overrides)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)  # one dense run per seed; >= 5 for the board's intervals
    train: TrainConfig = TrainConfig(steps=2000, batch_size=256)  # dense training
    retrain: TrainConfig = TrainConfig(steps=2000, batch_size=256)  # sparse retraining (every instance)
    detection_steps: tuple[int, ...] = (150,)  # default steps of a cell
    sparsities: tuple[float, ...] = (0.9,)  # default sparsities of a cell
    init_modes: tuple[str, ...] = INIT_MODES  # default init modes of a cell
    detectors: tuple[str, ...] = ()  # default detectors of a cell; empty = every registered one
    detector_config: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-detector config
    quota: int = 1  # q: W1 coordinates kept per site by the translation [reading]
    rho: float = 0.2  # row threshold factor of the site codes [reading]
    near: int = 1  # near-code distance [reading]
    snapshot_every: int = 10  # W1 snapshots every this many dense steps (Early-Bird's history)
    eval_samples: int = 8192  # held-out samples for the retrained models' metrics
    cells: tuple[Cell, ...] = (Cell(),)  # what to retrain

    def __post_init__(self) -> None:
        w = "tickets"
        check(w, self.kind == "tickets", "kind", f"must be 'tickets' (got {self.kind!r})")
        check(w, len(self.seeds) >= 1 and len(set(self.seeds)) == len(self.seeds) and min(self.seeds) >= 0, "seeds",
              f"must be distinct non-negative integers (got {list(self.seeds)})")
        check(w, len(self.cells) >= 1, "cells", "needs at least one cell")
        for f in ("quota", "snapshot_every", "eval_samples"):
            check(w, getattr(self, f) >= 1, f, f"must be at least 1 (got {getattr(self, f)})")
        check(w, 0 <= self.rho < 1 and math.isfinite(self.rho), "rho", f"must be in [0, 1) (got {self.rho})")
        check(w, self.near >= 0, "near", f"must be >= 0 (got {self.near})")
        Cell(steps=self.detection_steps, sparsities=self.sparsities, init_modes=self.init_modes)  # same checks
        check(w, len(self.detection_steps) >= 1 and len(self.sparsities) >= 1 and len(self.init_modes) >= 1,
              "detection_steps", "detection_steps, sparsities and init_modes need at least one value each")
        for cell in self.cells:
            for s in cell.steps or self.detection_steps:
                check(w, s < self.train.steps, "detection_steps",
                      f"step {s} is not before the end of dense training (train.steps = {self.train.steps})")
        unknown = sorted(set(self.detector_config) - set(self.all_detectors()))
        check(w, not unknown, "detector_config", f"configures {unknown[0] if unknown else ''!r}, which no cell uses")

    def cell(self, c: Cell) -> Cell:
        """A cell with the suite's defaults filled in."""
        return replace(c, steps=c.steps or self.detection_steps, sparsities=c.sparsities or self.sparsities,
                       init_modes=c.init_modes or self.init_modes, detectors=c.detectors or self.detectors)

    def all_detectors(self) -> list[str]:
        """Every detector some cell names (empty lists: all registered)."""
        from sparsebench import registry

        names: list[str] = []
        for c in self.cells:
            for d in (c.detectors or self.detectors or tuple(registry.detectors.names())):
                if d not in names:
                    names.append(d)
        return names


def suite_from_dict(data: dict[str, Any], default_name: str = "custom") -> TicketSuite:
    data = dict(data)
    cells = data.pop("cells", [{}])
    check("tickets", isinstance(cells, list) and all(isinstance(c, dict) for c in cells), "cells",
          f"must be a list of tables ([[cells]]) (got {cells!r})")
    data["cells"] = tuple(from_dict(Cell, c, "tickets.cells") for c in cells)
    for k in ("train", "retrain"):  # the suite's defaults (batch 256), then the file's fields
        section = data.get(k, {})
        check("tickets", isinstance(section, dict), k, f"must be a table ([{k}]) (got {section!r})")
        data[k] = from_dict(TrainConfig, {**to_dict(TicketSuite.train), **section}, k)
    data.setdefault("name", default_name)
    data.setdefault("kind", "tickets")
    return from_dict(TicketSuite, data, "tickets")


def load_ticket_suite(name_or_path: str, sets: list[str] | None = None, seeds: tuple[int, ...] | None = None) -> TicketSuite:
    """A built-in tickets suite by name, or a TOML file; `--set field=value` / `train.F=` / `retrain.F=` edits."""
    from sparsebench.settings import apply_overrides, load_toml, suite_path

    path = suite_path(name_or_path)
    data = load_toml(path)
    if data.get("kind") != "tickets":
        raise UserError(f"suite {name_or_path!r} is not a tickets suite (no kind = \"tickets\"): "
                        f"run it with `sparsebench evaluate {name_or_path}`")
    data = apply_overrides(data, sets or [])
    if seeds:
        data["seeds"] = list(seeds)
    return suite_from_dict(data, default_name=path.stem)
