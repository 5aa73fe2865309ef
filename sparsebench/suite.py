"""Suites: named TOML files that say what `sparsebench evaluate` runs.

A suite lists the (task, model) pairs to train, the seeds, the width sweep,
the mechanisms (and their configs), the probes and nulls, and the evaluation
sizes. Built-in suites ship in `sparsebench/suites/`; `sparsebench evaluate
NAME` runs one, `sparsebench evaluate path/to/file.toml` runs yours (copy
`default.toml` to start). Unknown keys are errors, so a typo cannot silently
run something else.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from sparsebench.config import check, from_dict, load_toml
from sparsebench.errors import UserError
from sparsebench.training import TrainConfig


@dataclass(frozen=True)
class Run:
    task: str = "topk-uniform"  # registered task name
    model: str = "mlp1"  # registered model name
    task_config: dict[str, Any] = field(default_factory=dict)  # task config fields
    model_config: dict[str, Any] = field(default_factory=dict)  # model config fields (widths override)
    width_fields: tuple[str, ...] = ("d_model", "d_mlp")  # model fields set to each width of the sweep
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
    nulls: tuple[str, ...] = ()  # null baselines; empty = every registered baseline
    train: TrainConfig = TrainConfig()  # training settings shared by all runs
    eval_samples: int = 8192  # held-out samples for task metrics
    probe_samples: int = 2048  # held-out samples for probes

    def __post_init__(self) -> None:
        check("suite", len(self.runs) >= 1, "runs", "needs at least one run")
        check("suite", len(self.seeds) >= 1, "seeds", "needs at least one seed")
        check("suite", len(set(self.seeds)) == len(self.seeds), "seeds", f"repeats a seed: {list(self.seeds)}")
        check("suite", all(w >= 1 for w in self.widths), "widths", f"must be positive (got {list(self.widths)})")
        check("suite", all(w >= 1 for w in self.construct_widths), "construct_widths",
              f"must be positive (got {list(self.construct_widths)})")
        unknown = sorted(set(self.mechanism_config) - set(self.mechanisms))
        check("suite", not unknown, "mechanism_config",
              f"configures {unknown[0] if unknown else ''!r}, which is not among mechanisms "
              f"({', '.join(self.mechanisms) or 'none'})")
        check("suite", self.eval_samples >= 1, "eval_samples", "must be at least 1")
        check("suite", self.probe_samples >= 1, "probe_samples", "must be at least 1")


def builtin_suites() -> dict[str, Path]:
    folder = resources.files("sparsebench") / "suites"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or a TOML file by path."""
    path = Path(name_or_path)
    if not path.suffix == ".toml":
        suites = builtin_suites()
        if name_or_path not in suites:
            import difflib

            close = difflib.get_close_matches(name_or_path, list(suites), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; built-in suites: {', '.join(sorted(suites))}"
            raise UserError(f"unknown suite {name_or_path!r}{hint}")
        path = suites[name_or_path]
    return suite_from_dict(load_toml(path), default_name=path.stem)


def suite_from_dict(data: dict[str, Any], default_name: str = "custom") -> Suite:
    data = dict(data)
    runs = data.pop("runs", [{}])
    check("suite", isinstance(runs, list) and all(isinstance(r, dict) for r in runs), "runs",
          f"must be a list of tables ([[runs]]) (got {runs!r})")
    runs = tuple(from_dict(Run, r, "suite.runs") for r in runs)
    train = from_dict(TrainConfig, data.pop("train", {}), "train")
    data.setdefault("name", default_name)
    suite = from_dict(Suite, data, "suite")
    return replace(suite, runs=runs, train=train)
