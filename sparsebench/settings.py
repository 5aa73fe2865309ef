"""Settings: every way a user says what to run, parsed in one place.

Convention (every command): a TOML file given with `--config` holds sections `[task]`,
`[model]`, `[train]` (each with a `name` where it names a registry entry, plus that
entry's config fields, and a top-level `seeds` list for `train`); flags such as
`--task`, `--model`, `--seed` override it; and `--set section.field=value` overrides a
single field (the value is read as TOML: `--set task.k=5`, `--set train.lr=3e-3`,
`--set model.embed=fixed`, a bare word is a string). `sparsebench evaluate` takes a
suite instead (a built-in name or a TOML file, `sparsebench/suites/`), edited by its
flags and by `--set task.F=`, `model.F=`, `train.F=`, `mechanism.NAME.F=` or a suite
field.

Everything is strict: an unknown section, field or suite key, a value of the wrong
type, or a file that is not UTF-8 TOML is one `UserError` naming it, so a typo never
silently runs the defaults.
"""

from __future__ import annotations

import copy
import difflib
import sys
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from sparsebench.build import model_class
from sparsebench.checkpoints import RunSpec
from sparsebench.config import check, from_dict, to_dict
from sparsebench.errors import UserError
from sparsebench.suite import Run, Suite
from sparsebench.training import TrainConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

RUN_SECTIONS = ("task", "model", "train")  # the sections of a `train`/`report` settings file
RUN_KEYS = (*RUN_SECTIONS, "seeds")  # and its top-level keys
MAX_CONFIG_BYTES = 10_000_000  # a settings file is a few KB (and --config /dev/zero must end)


def _hint(name: str, known: list[str], what: str = "known") -> str:
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; {what}: {', '.join(known)}"


def load_toml(path: str | Path) -> dict[str, Any]:
    """Read a TOML file; a missing, unreadable, non-UTF-8 or malformed file is a UserError."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise UserError(f"config file {path} is larger than {MAX_CONFIG_BYTES // 1_000_000} MB: not a settings file")
        return tomllib.loads(raw.decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"config file {path} is a folder") from None
    except OSError as e:
        raise UserError(f"cannot read config file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"config file {path} is not UTF-8 text (byte {e.start}): not a TOML file?") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse `--set section.field=value`; the value is read as TOML, else as a string."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set expects section.field=value (got {text!r})")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return key.strip().split("."), value


def apply_overrides(base: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of nested dict `base` with each `--set a.b=v` applied."""
    out = copy.deepcopy(base)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {text}: {part!r} is not a section")
        node[path[-1]] = value
    return out


# ----------------------------------------------------------------------------- train / report

def run_settings(config: Path | None, sets: list[str] | None, **flags: Any) -> dict[str, Any]:
    """Merge a TOML file, then flags ("section.field" -> value; None = not given), then --set overrides;
    unknown sections and keys are refused (a typo must not train the defaults)."""
    data = load_toml(config) if config else {}
    where = f"config file {config}" if config else "settings"
    for key in data:
        if key not in RUN_KEYS:
            raise UserError(f"{where}: unknown section or key {key!r}{_hint(key, list(RUN_KEYS))}")
    for text in sets or []:
        path, _ = parse_override(text)
        if path[0] not in RUN_SECTIONS or len(path) != 2:
            raise UserError(f"--set {text}: expected section.field with a section of "
                            f"{', '.join(RUN_SECTIONS)}{_hint(path[0], list(RUN_SECTIONS)) if len(path) == 2 else ''}")
    for key, value in flags.items():
        if value is not None:
            section, field = key.split(".")
            data.setdefault(section, {})[field] = value
    return apply_overrides(data, sets or [])


def _section(data: dict[str, Any], name: str, default_name: str) -> tuple[str, dict[str, Any]]:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise UserError(f"[{name}] must be a table (got {section!r})")
    section = dict(section)
    entry = section.pop("name", default_name)
    if not isinstance(entry, str):
        raise UserError(f"[{name}] name must be a string (got {entry!r})")
    return entry, section


def run_spec(data: dict[str, Any]) -> RunSpec:
    """The RunSpec that merged settings describe ([task], [model], [train]); validates every field."""
    task_name, task_cfg = _section(data, "task", "topk-uniform")
    model_name, model_cfg = _section(data, "model", "mlp1")
    train_cfg = from_dict(TrainConfig, data.get("train", {}), "train")
    return RunSpec.create(task_name, task_cfg, model_name, model_cfg, train_cfg)


def seed_list(value: Any, where: str = "seeds") -> list[int]:
    """A list of distinct non-negative integer seeds (a UserError naming `where` otherwise)."""
    if not isinstance(value, (list, tuple)) or not value:
        raise UserError(f"{where} must be a non-empty list of integers (got {value!r})")
    for s in value:
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise UserError(f"{where} must be non-negative integers (got {s!r})")
    if len(set(value)) != len(value):
        raise UserError(f"{where} repeats a seed: {list(value)}")
    return list(value)


# ----------------------------------------------------------------------------- suites

def builtin_suites() -> dict[str, Path]:
    folder = resources.files("sparsebench") / "suites"
    return {Path(str(p)).stem: Path(str(p)) for p in folder.iterdir() if str(p).endswith(".toml")}


def suite_path(name_or_path: str) -> Path:
    """The TOML file of a built-in suite (any kind) by name, or `name_or_path` itself if it names a .toml file."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        return path
    suites = builtin_suites()
    if name_or_path not in suites:
        raise UserError(f"unknown suite {name_or_path!r}{_hint(name_or_path, sorted(suites), 'built-in suites')}")
    return suites[name_or_path]


def load_suite(name_or_path: str) -> Suite:
    """A built-in suite by name, or a TOML file by path."""
    path = suite_path(name_or_path)
    data = load_toml(path)
    if data.get("kind") == "tickets":
        raise UserError(f"suite {name_or_path!r} is a tickets suite: run it with `sparsebench tickets {name_or_path}`")
    return suite_from_dict(data, default_name=path.stem)


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


def csv_ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    """`--seeds 0,1,2` -> (0, 1, 2); None if the flag was not given."""
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise UserError(f"{flag} expects comma-separated integers (got {text!r})") from None


def _run_tables(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The run tables of a suite dict being edited (`--set runs=...` may have put anything there)."""
    runs = data.get("runs")
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []


def apply_cli(suite: Suite, *, task: str | None, model: str | None, mechanisms: list[str] | None,
              probes: list[str] | None, seeds: tuple[int, ...] | None, widths: tuple[int, ...] | None,
              sets: list[str]) -> Suite:
    """Flags override the suite: --task/--model replace the runs, --set edits any field.

    `--set task.k=7` and `--set model.d_mlp=32` apply to every run (a model field set this way is
    taken out of the width sweep); `--set train.lr=3e-3` to training, runs' own overrides included;
    `--set mechanism.bloom.alpha=30` to a mechanism; any other key is a top-level suite field.
    """
    runs = list(suite.runs)
    if task or model:
        # Keep the suite's runs that match (with their configs, widths and training); only when
        # none does, make one run from the first run's settings for whichever names still match.
        matching = [r for r in runs if (task is None or r.task == task) and (model is None or r.model == model)]
        if matching:
            runs = matching
        else:
            base = runs[0]
            same_task, same_model = (task or base.task) == base.task, (model or base.model) == base.model
            runs = [Run(task=task or base.task, model=model or base.model,
                        task_config=base.task_config if same_task else {},
                        model_config=base.model_config if same_model else {},
                        width_fields=base.width_fields if same_model else None)]
    data: dict[str, Any] = {k: v for k, v in vars(suite).items() if k not in ("runs", "train")}
    data["train"] = to_dict(suite.train)
    data["runs"] = [vars(r) | {"widths": list(r.widths)} for r in runs]
    data["mechanism_config"] = {k: dict(v) for k, v in suite.mechanism_config.items()}
    for text in sets:
        path, value = parse_override(text)
        head = path[0]
        if head in ("task", "model") and len(path) == 2:
            for r in _run_tables(data):
                r[f"{head}_config"] = {**r[f"{head}_config"], path[1]: value}
                if head == "model":  # an explicit value wins over the sweep: the field leaves it
                    own = r.get("width_fields")
                    own = own if own is not None else model_class(r.get("model", "mlp1")).width_fields
                    r["width_fields"] = [f for f in own if f != path[1]]
        elif head == "train" and len(path) == 2:
            data["train"][path[1]] = value
            for r in _run_tables(data):  # and over a run's own training overrides
                if path[1] in r["train"]:
                    r["train"] = {**r["train"], path[1]: value}
        elif head == "mechanism" and len(path) == 3:
            data["mechanism_config"].setdefault(path[1], {})[path[2]] = value
        elif len(path) == 1:
            data[head] = value
        else:
            raise UserError(f"--set {text}: expected task.F, model.F, train.F, mechanism.NAME.F or a suite field")
    for key, value in (("mechanisms", mechanisms), ("probes", probes), ("seeds", seeds), ("widths", widths)):
        if value:
            data[key] = list(value)
    if widths and not any(t.split("=")[0].strip() == "construct_widths" for t in sets):
        data["construct_widths"] = []  # --widths sets the construction sweep too, unless it is set explicitly
        for r in _run_tables(data):
            r["widths"] = []
    for key in ("seeds", "widths", "construct_widths", "mechanisms", "probes", "nulls"):
        if isinstance(data.get(key), tuple):
            data[key] = list(data[key])
    return suite_from_dict(data, default_name=suite.name)  # validates whatever --set put in

