"""Suites: what `sparsebench evaluate` runs, as frozen dataclasses (read from TOML by `settings.load_suite`).

A suite lists the (task, model) pairs to train, the seeds, the width sweep,
the mechanisms (and their configs), the probes and nulls, and the evaluation
sizes. Built-in suites ship in `sparsebench/suites/`; `sparsebench evaluate
NAME` runs one, `sparsebench evaluate path/to/file.toml` runs yours (copy
`default.toml` to start). Unknown keys are errors, so a typo cannot silently
run something else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sparsebench.config import check
from sparsebench.training import TrainConfig


@dataclass(frozen=True)
class Run:
    task: str = "topk-uniform"  # registered task name
    model: str = "mlp1"  # registered model name
    task_config: dict[str, Any] = field(default_factory=dict)  # task config fields
    model_config: dict[str, Any] = field(default_factory=dict)  # model config fields (widths override)
    width_fields: tuple[str, ...] | None = None  # model fields set to each width; None: the model's own
    widths: tuple[int, ...] = ()  # this run's width sweep; empty = the suite's `widths`
    train: dict[str, Any] = field(default_factory=dict)  # per-run overrides of the suite's [train]


@dataclass(frozen=True)
class Suite:
    name: str = "custom"  # the suite's name (recorded)
    runs: tuple[Run, ...] = (Run(),)  # what to train
    seeds: tuple[int, ...] = (0, 1, 2)  # one model per seed; scores are reported across seeds
    widths: tuple[int, ...] = ()  # width sweep; empty = the model config as given
    mechanisms: tuple[str, ...] = ("bloom", "jl", "softmax-bottleneck")  # candidate explanations
    mechanism_config: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-mechanism config
    construct: bool = True  # also build each mechanism's exact construction at every width
    construct_widths: tuple[int, ...] = ()  # widths for constructions; empty = each run's trained widths
    probes: tuple[str, ...] = ()  # probes to run; empty = every registered probe
    probe_config: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-probe options (e.g. patch.reference)
    nulls: tuple[str, ...] = ()  # null models; empty = every registered baseline
    controls: tuple[str, ...] = ()  # control explanations; empty = every registered control
    validity_widths: tuple[int, ...] = ()  # constructions at these widths are also explained (probe validity)
    train: TrainConfig = TrainConfig()  # training settings shared by all runs
    eval_samples: int = 8192  # held-out samples for task metrics
    probe_samples: int = 2048  # held-out samples for probes (a fresh batch per seed)
    probe_chunks: int = 4  # the probe batch is scored in this many parts: the spread gives each score's CI

    def __post_init__(self) -> None:
        check("suite", len(self.runs) >= 1, "runs", "needs at least one run")
        check("suite", len(self.seeds) >= 1, "seeds", "needs at least one seed")
        check("suite", len(set(self.seeds)) == len(self.seeds), "seeds", f"repeats a seed: {list(self.seeds)}")
        check("suite", all(s >= 0 for s in self.seeds), "seeds", f"must be non-negative (got {list(self.seeds)})")
        check("suite", all(w >= 1 for w in self.widths), "widths", f"must be positive (got {list(self.widths)})")
        check("suite", all(w >= 1 for w in self.construct_widths), "construct_widths",
              f"must be positive (got {list(self.construct_widths)})")
        unknown = sorted(set(self.mechanism_config) - set(self.mechanisms))
        check("suite", not unknown, "mechanism_config",
              f"configures {unknown[0] if unknown else ''!r}, which is not among mechanisms "
              f"({', '.join(self.mechanisms) or 'none'})")
        check("suite", self.eval_samples >= 1, "eval_samples", "must be at least 1")
        check("suite", self.probe_samples >= 1, "probe_samples", "must be at least 1")
        check("suite", 1 <= self.probe_chunks <= self.probe_samples, "probe_chunks",
              f"must be in [1, probe_samples={self.probe_samples}] (got {self.probe_chunks})")
        check("suite", all(w >= 1 for w in self.validity_widths), "validity_widths",
              f"must be positive (got {list(self.validity_widths)})")
        unknown = sorted(set(self.probe_config) - set(self.probes)) if self.probes else []
        check("suite", not unknown, "probe_config",
              f"configures {unknown[0] if unknown else ''!r}, which is not among probes ({', '.join(self.probes)})")

