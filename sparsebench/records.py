"""Result records: one typed schema for everything `evaluate` writes and the leaderboard reads.

A record is one JSON file, `<results>/<kind>/<id>.json`, written atomically. Its
shape is the pydantic model `Record` below (a `SolutionRecord`, an `ExplanationRecord`
or a `TicketRecord`, told apart by `kind`; a ticket record is one sparse ticket of
`sparsebench tickets`); `evaluate`, `tickets`, the leaderboard, the synthetic demo
records and `sparsebench validate` all go through it, and its JSON Schema is
published in docs/records.md (`json_schema()`; a test keeps the two equal). Unknown
fields are errors: a typo in a hand-made submission is caught, not ignored.

Versions: `SCHEMA_VERSION` is what this code writes. Older records are read by
`migrate` (schema 1 -> 2: family, metric and score directions, width fields,
statuses, filled in as schema-1 boards read them); a newer or unknown version
is named and skipped, never guessed at.

Ids: `record_id(identity)` hashes everything that determines a record's
numbers (configs, seed, width, mechanism, probe and null lists, evaluation
sizes), so a rerun finds its file and skips the work.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
import warnings
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints, TypeAdapter,
                      ValidationError, field_validator)

from sparsebench.config import stable_hash

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)  # schema 1 is read through `migrate`

Direction = Literal["higher", "lower", "zero"]  # which way a number is better ("zero": nearest 0)
Status = Literal["ok", "not_applicable"]
# A registered name (task, model, mechanism, probe, null, solver): short, printable, one line.
Name = Annotated[str, StringConstraints(min_length=1, max_length=120, pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")]
# A metric or score key: an identifier-like word, so it can never collide with a board's own columns.
Key = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]
# None: undefined. NaN and infinities are written as null, and read as null too: a file that holds `Infinity`
# (or 1e999) must not win a board.
Number = Annotated[Union[float, None], BeforeValidator(lambda v: None if isinstance(v, float) and not math.isfinite(v)
                                                       else v)]
Text = Annotated[str, StringConstraints(max_length=2000)]
Scalar = Union[float, int, Text, None]
CONFIG_CHARS = 20_000  # the longest a stored config may be, as canonical JSON
CONFIG_DEPTH = 16  # and its deepest nesting of lists and tables


def _depth(obj: Any) -> int:
    """Nesting depth of a JSON value, without recursion (a deep value must not crash the check)."""
    deepest, stack = 0, [(obj, 0)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > CONFIG_DEPTH:
            break
        if isinstance(v, dict):
            stack += [(x, d + 1) for x in v.values()]
        elif isinstance(v, (list, tuple)):
            stack += [(x, d + 1) for x in v]
    return deepest


def _small_config(d: dict[str, Any]) -> dict[str, Any]:
    """A config as stored in a record: at most CONFIG_CHARS of JSON and CONFIG_DEPTH levels (boards put configs
    in labels)."""
    from sparsebench.io import canonical_json

    if _depth(d) > CONFIG_DEPTH:
        raise ValueError(f"nested more than {CONFIG_DEPTH} levels deep")
    try:
        n = len(canonical_json(d))
    except (TypeError, ValueError, RecursionError):
        raise ValueError("not a JSON table") from None
    if n > CONFIG_CHARS:
        raise ValueError(f"too large ({n} characters of JSON; at most {CONFIG_CHARS})")
    return d


Config = Annotated[dict[str, Any], AfterValidator(_small_config)]  # a task, model, mechanism or training config

# Frame columns the leaderboard builds itself; a metric of this name would overwrite one.
RESERVED_KEYS = frozenset({"task", "width", "seed", "id", "date", "path", "solver", "model", "mechanism", "probe",
                           "score", "value", "status", "reason", "series", "label", "oracle", "kind", "family"})


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_reserved(d: Any) -> Any:
    names = [n for n, _ in d] if isinstance(d, list) else list(d)
    bad = sorted(set(names) & RESERVED_KEYS)
    if bad:
        raise ValueError(f"{bad[0]!r} is a reserved name (the leaderboard has a column of that name)")
    if len(set(names)) != len(names):
        raise ValueError(f"a name repeats: {names}")
    return d


class TaskInfo(_Strict):
    name: Name  # registered task name
    version: int  # the task's version (bumped when sampling, loss or metrics change meaning)
    family: Name  # its family (which models, mechanisms and probes understand it)
    config: Config  # its full config, defaults filled in
    # Every metric it reports, with its direction, as [name, direction] pairs in display order (a list:
    # the order of a JSON object's keys is not kept by every reader).
    metric_directions: list[tuple[Key, Direction]]

    _reserved = field_validator("metric_directions")(_no_reserved)

    @property
    def directions(self) -> dict[str, str]:
        """{metric: direction}, in display order."""
        return dict(self.metric_directions)


class ModelInfo(_Strict):
    name: Name  # registered model name
    config: Config  # its full config
    width_fields: list[Name]  # config fields a width sweep sets (the first is "the width")


class EvalInfo(_Strict):
    n_samples: int = Field(ge=1)  # held-out samples for task metrics
    probe_samples: int = Field(ge=1)  # held-out samples for probes
    seed: int  # the evaluation seed (never a training seed)


class CheckpointInfo(_Strict):
    key: Annotated[str, StringConstraints(max_length=128)]  # model cache key
    sha256: Annotated[str, StringConstraints(max_length=128)]  # hash of the weights file


class Provenance(_Strict):
    sparsebench_version: Text
    git_commit: Text | None
    torch_version: Text
    python: Text
    hostname: Text
    device: Text
    wall_seconds: float
    date: Text  # ISO 8601, UTC
    plugins: dict[Name, Text]  # every distribution that provides a registered entry, with its version


class _Envelope(_Strict):
    schema_version: Literal[2]
    id: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[0-9a-zA-Z_-]+$")]
    task: TaskInfo
    width: int = Field(ge=1)  # the model's width (its first width field; for constructions, as built)
    seed: int = Field(ge=0)
    eval: EvalInfo
    status: Status = "ok"  # "not_applicable": the solver or mechanism does not apply to this task family
    reason: Text = ""  # why, when not applicable
    provenance: Provenance


class Solver(_Strict):
    type: Literal["trained", "construction"]
    name: Name  # the model (trained) or the mechanism (construction)
    config: Config  # the model config, or the mechanism config
    oracle: bool = False  # given the answer: shown, never "best"
    built: dict[str, float] = {}  # what a construction chose when built (e.g. a tuned scale)


class SolutionRecord(_Envelope):
    """A model, trained or constructed, scored on the task's metrics (the solutions board)."""

    kind: Literal["solution"]
    solver: Solver
    model: ModelInfo | None  # the model that was scored (a construction's built model; None if not applicable)
    train: Config | None  # trained only: the training config
    checkpoint: CheckpointInfo | None  # trained only
    metrics: dict[Key, Number]  # every metric of the task's metric_directions
    theory: dict[Key, Number] = {}  # closed-form predictions where the solver has them
    behaviour: dict[Key, Number] = {}  # descriptive numbers (Task.behaviour): recorded, never ranked

    _reserved = field_validator("metrics", "theory", "behaviour")(_no_reserved)


Interval = Union[tuple[float, float], None]  # a 95% confidence interval (None: fewer than two chunks)


class Score(_Strict):
    value: Number  # the score of the explanation on the model: mean over the probe batch's chunks
    ci: Interval = None  # t-interval over the chunks (independent parts of this seed's probe batch)
    direction: Direction
    nulls: dict[Name, Number] = {}  # the same score on each null model, its own refit (None: not defined there)
    controls: dict[Name, Number] = {}  # the same score for each control explanation on this model
    own_nulls: dict[Name, Number] = {}  # the probe's own references (e.g. patch's "resampled"): context, not rivals
    margin: Number = None  # value minus the strongest control or null, turned by the direction (+ is better)
    margin_ci: Interval = None  # t-interval of the per-chunk margins
    rival: Name | None = None  # which control or null was the strongest (on the mean)


class ProbeResult(_Strict):
    status: Status
    reason: Text = ""  # why not applicable
    level: Literal["weights", "activations", "behaviour", "causal", ""] = ""
    ranked: bool = True  # False: a model diagnostic (shown, never ranked)
    config: dict[str, Any] = {}  # the probe's options (e.g. patch's ablation reference)
    reads: list[Annotated[str, StringConstraints(max_length=200)]] = []  # hook names it read
    main: Key | None = None  # the score it is ranked by
    chunks: int = 0  # independent parts of the probe batch it was scored on (the CI's sample)
    scores: dict[Key, Score] = {}
    null_notes: dict[Name, Text] = {}  # why a null has no number for this probe
    control_notes: dict[Name, Text] = {}  # why a control has no number for this probe (n/a, or invisible to it)


class MechanismInfo(_Strict):
    name: Name
    config: Config
    oracle: bool = False  # given the answer: shown, never ranked


class ExplanationRecord(_Envelope):
    """One mechanism fitted to one model, every probe scored next to its controls and nulls.

    The model is a trained one (the explanations board) or a mechanism's exact construction, whose
    mechanism is known (`truth`): those records feed the probe validity board."""

    kind: Literal["explanation"]
    subject: Literal["trained", "construction"] = "trained"
    truth: Name | None = None  # construction: the mechanism that built the model (the right explanation)
    model: ModelInfo
    train: Config | None  # trained only
    checkpoint: CheckpointInfo | None  # trained only
    mechanism: MechanismInfo
    fit: dict[Key, Scalar] = {}  # Fitted.summary() of the model
    null_fits: dict[Name, dict[Key, Scalar]] = {}  # the same summary, fitted to each null model
    nulls: dict[Name, Text] = {}  # the null models used, with their descriptions (or why not applicable)
    controls: dict[Name, Text] = {}  # the control explanations used, with their descriptions (or why not)
    probes: dict[Name, ProbeResult] = {}


class DetectorInfo(_Strict):
    name: Name  # registered detector name
    config: Config  # its full config
    kind: Literal["feature", "weight", "control", "reference"]  # references are shown, never ranked
    uses_step: bool  # its mask depends on the detection step (else the same mask is recorded at every step)


class TicketRecord(_Envelope):
    """One sparse ticket: a detector's mask at a sparsity and detection step, retrained from an init mode
    (the tickets board). `width` is the model's width (H), `seed` the dense run's seed."""

    kind: Literal["ticket"]
    model: ModelInfo  # the model (its width field set to `width`)
    train: Config  # the dense training config
    retrain: Config  # the sparse retraining config
    detector: DetectorInfo
    sparsity: float = Field(ge=0, lt=1)  # share of W1's coordinates masked (0: the dense reference)
    detection_step: int = Field(ge=0)  # the dense step the detector read (the board's group)
    init_mode: Literal["rewind-0", "rewind-e", "fresh"]  # where W1_init came from: θ0, θ_e, a fresh draw
    quota: int = Field(ge=1)  # q of the site-to-mask translation
    rho: float  # row threshold factor of the site codes
    metrics: dict[Key, Number]  # the task's metrics of the retrained sparse model (directions: task.metric_directions)
    # Ticket metrics (exact codes, recalls, Jaccard to the oracle, ...), with their directions, in display order.
    tickets: dict[Key, Number]
    ticket_directions: list[tuple[Key, Direction]]
    dense: dict[Key, Number] = {}  # the same seed's dense final model: its metrics and code counts (context)
    detector_info: dict[Key, Scalar] = {}  # what the detector reported (e.g. Early-Bird's step), filled coordinates
    # One row per exact code of the dense final model: [h, c, d0, load0, same_site, family] (d0 and load0 its
    # distance and row load at θ0; same_site / family: 1 if recovered by the retrained ticket).
    sites: list[tuple[int, int, int, int, int, int]] = []

    _reserved = field_validator("metrics", "tickets")(_no_reserved)


Record = Annotated[Union[SolutionRecord, ExplanationRecord, TicketRecord], Field(discriminator="kind")]
AnyRecord = Union[SolutionRecord, ExplanationRecord, TicketRecord]  # one record, whatever its kind
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Record)


def record_id(identity: dict[str, Any]) -> str:
    """The id of the record whose numbers `identity` determines (a 20-hex-digit hash)."""
    return stable_hash({"schema": SCHEMA_VERSION, **identity}, length=20)


def to_json(record: AnyRecord) -> dict[str, Any]:
    """The record as a JSON-ready dict (what `io.write_json` writes)."""
    return record.model_dump(mode="json")


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a record (published in docs/records.md)."""
    return _ADAPTER.json_schema()


# ----------------------------------------------------------------------------- migration

_V1_DIRECTION = {"topk_mass": "higher", "exact_set": "higher", "target_corr": "higher", "weight_leak": "zero"}


def _v1_scores(probes: Any, model_nulls: dict[str, Any]) -> Any:
    if not isinstance(probes, dict):
        return probes
    out = {}
    for name, pr in probes.items():
        if not isinstance(pr, dict):
            out[name] = pr
            continue
        pr = dict(pr)
        if pr.get("status") == "ok" and isinstance(pr.get("scores"), dict):
            scores = {}
            for key, sc in pr["scores"].items():
                if not isinstance(sc, dict):
                    scores[key] = sc
                    continue
                sc = dict(sc)
                sc["direction"] = "higher" if sc.pop("higher_is_better", True) else "lower"
                nulls = sc.get("nulls") if isinstance(sc.get("nulls"), dict) else {}
                # A probe's own null (patch's "resampled") was mixed into `nulls` in schema 1.
                sc["nulls"] = {k: v for k, v in nulls.items() if k in model_nulls}
                sc["own_nulls"] = {k: v for k, v in nulls.items() if k not in model_nulls}
                scores[key] = sc
            pr["scores"] = scores
        out[name] = pr
    return out


def migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A schema-1 record as schema 2: fill in what schema 1 left implicit, as schema-1 boards read it."""
    if data.get("schema_version") != 1:
        return data
    out = {k: v for k, v in data.items()}
    out["schema_version"] = 2
    task = dict(out.get("task") or {})
    metrics = out.get("metrics") if isinstance(out.get("metrics"), dict) else {}
    task.setdefault("family", "topk")  # schema 1 had only the top-k family
    task.setdefault("metric_directions", [[m, _V1_DIRECTION.get(m, "lower")] for m in metrics])
    out["task"] = task
    model = out.get("model")
    if isinstance(model, dict):
        out["model"] = {"width_fields": ["d_model", "d_mlp"], **model}
    if out.get("kind") == "solution":
        solver = out.get("solver") if isinstance(out.get("solver"), dict) else {}
        if solver.get("type") == "trained" and model is None:
            out["model"] = {"name": solver.get("name"), "config": solver.get("config"),
                            "width_fields": ["d_model", "d_mlp"]}
        out.setdefault("model", None)
    if out.get("kind") == "explanation":
        out["probes"] = _v1_scores(out.get("probes"), out.get("nulls") if isinstance(out.get("nulls"), dict) else {})
    return out


# ----------------------------------------------------------------------------- reading

class RecordWarning(UserWarning):
    """A result file was skipped (the message names it and says why)."""


def parse(data: Any) -> AnyRecord:
    """Validate decoded JSON as a record (migrating an older schema); ValueError naming the problem."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    version = data.get("schema_version")
    if isinstance(version, bool) or version not in READABLE_VERSIONS:
        shown = reprlib.repr(version)
        raise ValueError(f"unknown schema_version {shown} (this sparsebench reads "
                         f"{', '.join(map(str, READABLE_VERSIONS))})")
    try:
        migrated = migrate(data)
    except (TypeError, ValueError, AttributeError, KeyError):
        raise ValueError(f"schema-{version} record with fields of the wrong types, cannot be migrated") from None
    try:
        return _ADAPTER.validate_python(migrated)
    except RecursionError:
        raise ValueError("nested too deeply to be a record") from None
    except ValidationError as e:
        first = e.errors()[0]
        loc = list(first["loc"])
        if loc and loc[0] == data.get("kind"):  # the discriminated union's tag, not a field
            loc = loc[1:]
        where = _one_line(".".join(str(p) for p in loc) or "(record)")
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ValueError(f"{where}: {_one_line(first['msg'])}{more}") from None


def _one_line(text: str, limit: int = 160) -> str:
    """Part of a message quoted from a file: control characters shown as escapes, cut to `limit` characters."""
    from sparsebench.printable import visible

    text = visible(text)
    return text if len(text) <= limit else text[:limit] + "..."


MAX_BYTES = 10_000_000  # a record is a few KB; a larger file is not one (and /dev/zero must not be read whole)


def read(path: Path) -> AnyRecord:
    """One record file; ValueError naming the problem (unreadable, not a regular file, too large, not JSON, too
    deep, not a record)."""
    import stat

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a FIFO would block, a device never end
            raise ValueError("not a regular file")
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise ValueError(f"larger than {MAX_BYTES // 1_000_000} MB: not a record")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {_one_line(str(e))})") from None
    try:
        data = json.loads(text, parse_constant=lambda c: math.nan)
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON, corrupt or truncated ({e})") from None
    except RecursionError:
        raise ValueError("JSON nested too deeply to be a record") from None
    return parse(data)


def json_files(folder: Path, problems: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Every `*.json` under `folder`, recursively, in sorted order; hidden entries (the `.tmp-*` folders
    of interrupted atomic writes, dotfiles) are ignored. Unreadable subfolders go to `problems`."""
    out: list[Path] = []

    def failed(e: OSError) -> None:
        if problems is not None:
            problems.append((Path(e.filename or folder), f"unreadable folder ({e.strerror or e})"))

    for root, dirs, files in os.walk(folder, onerror=failed):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        out.extend(Path(root) / f for f in sorted(files) if f.endswith(".json") and not f.startswith("."))
    return out


def load(paths: Iterable[str | os.PathLike]) -> list[tuple[Path, AnyRecord]]:
    """Every valid record under `paths` (folders searched recursively, or single files), with its file.

    A path that does not exist raises FileNotFoundError (a typo should not give an empty board).
    A bad file or unreadable folder is skipped with a `RecordWarning` that names it. A record found
    twice (same id, e.g. copied between machines) counts once.
    """
    out: list[tuple[Path, AnyRecord]] = []
    seen: set[str] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(p)
        problems: list[tuple[Path, str]] = []
        files = [p] if p.is_file() else json_files(p, problems)
        for f in files:
            try:
                rec = read(f)
            except ValueError as e:
                problems.append((f, str(e)))
                continue
            if rec.id not in seen:
                seen.add(rec.id)
                out.append((f, rec))
        for f, why in problems:
            warnings.warn(f"skipped result file {f}: {why}", RecordWarning, stacklevel=2)
    return out
