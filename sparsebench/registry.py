"""One registry per plugin group, filled from entry points.

Built-ins and third-party plugins arrive the same way: an entry point in the
group `sparsebench.<kind>` (tasks, models, mechanisms, probes, baselines, controls, detectors) whose
name is the one name used everywhere (CLI, records, leaderboard). Entries are
discovered in name order (so the order never depends on install order), and
imported when a registry is first used. A plugin that fails to import (whatever it
raises: an exception, `SystemExit`, a `KeyboardInterrupt` of its own) or that
registers something of the wrong kind (a task that is not an `api.Task`, ...) is
named in a warning, listed by `sparsebench list` as failed, and skipped; the rest
keep working. A real Ctrl-C during loading still stops the program: the signal is
recorded (`sparsebench.interrupts`), which a plugin's own exception is not.

Built-in names are protected: an entry point from another distribution that uses a
name `sparsebench` itself provides is refused with a warning, whatever the sort
order, unless the user names it in `SPARSEBENCH_ALLOW_OVERRIDE` (comma-separated
names; `kind:name`, e.g. `mechanisms:bloom`, limits it to one group), when the
plugin's entry replaces the built-in. Library code and the CLI use the same
registries, so a plugin installed is a plugin usable from both.
"""

from __future__ import annotations

import difflib
import os
import re
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, Iterator, TypeVar

from sparsebench import interrupts
from sparsebench.errors import UserError

T = TypeVar("T")
# Every plugin group: kind (entry-point group `sparsebench.<kind>`) -> what one entry of it is called.
GROUPS = {"tasks": "task", "models": "model", "mechanisms": "mechanism", "probes": "probe", "baselines": "baseline",
          "controls": "control", "detectors": "detector"}
BUILTIN = "sparsebench"  # the distribution whose entries are the built-ins
ALLOW_OVERRIDE = "SPARSEBENCH_ALLOW_OVERRIDE"  # env var: built-in names a plugin may replace ("bloom,jl")
# A usable name: one printable line, as the record schema requires of every name it stores.
_NAME = re.compile(r"^[^\x00-\x1f\x7f-\x9f]{1,120}$")


class PluginWarning(UserWarning):
    """A plugin could not be loaded (it is skipped; everything else works)."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str  # the one name of this entry (CLI, records, leaderboard)
    obj: T  # the registered class or object
    source: str  # distribution that provided it ("sparsebench", a plugin, or "runtime")
    version: str  # that distribution's version


class Registry(Generic[T]):
    """Name -> entry for one plugin group, with 'did you mean' errors."""

    def __init__(self, kind: str):
        self.kind = kind  # e.g. "tasks"; the entry-point group is "sparsebench.tasks"
        self._entries: dict[str, Entry[T]] | None = None
        self.failed: dict[str, str] = {}  # entry name -> why it could not load
        self.refused: dict[str, str] = {}  # a plugin's entry refused because the name is a built-in's -> why
        self.replaced: dict[str, str] = {}  # built-in name -> the built-in a plugin replaced (allowed override)

    @property
    def group(self) -> str:
        return f"sparsebench.{self.kind}"

    @property
    def singular(self) -> str:
        return GROUPS.get(self.kind, self.kind)

    def _load(self) -> dict[str, Entry[T]]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, Entry[T]] = {}
        eps = sorted(metadata.entry_points(group=self.group), key=lambda ep: (ep.name, ep.value))
        builtin = {ep.name for ep in eps if _dist(ep)[0] == BUILTIN}
        allowed = allowed_overrides(self.kind)
        # The built-ins first, then the plugins (each in name order): a plugin never wins a name by sorting first.
        for ep in sorted(eps, key=lambda ep: _dist(ep)[0] != BUILTIN):
            dist, version = _dist(ep)
            override = dist != BUILTIN and ep.name in builtin
            if override and ep.name not in allowed:
                self.refused[ep.name] = (f"{ep.value} from {dist} would replace the built-in; allow it with "
                                         f"{ALLOW_OVERRIDE}={ep.name}")
                warnings.warn(f"{self.singular} {ep.name!r} from {dist} ({ep.value}) refused: the name is a "
                              f"built-in of sparsebench; to use the plugin's instead, set {ALLOW_OVERRIDE}={ep.name}",
                              PluginWarning, stacklevel=2)
                continue
            taken = ep.name in (self.replaced if override else (*entries, *self.failed))
            if taken:
                first = entries[ep.name].source if ep.name in entries else "an entry that failed to load"
                if first != dist:
                    warnings.warn(f"{self.singular} {ep.name!r} from {dist} ignored: already provided by {first}",
                                  PluginWarning, stacklevel=2)
                continue
            obj, why = self._load_one(ep)
            if why is not None:
                self.failed.setdefault(ep.name, why)
                warnings.warn(f"{self.singular} plugin {ep.name!r} ({ep.value}, from {dist}) failed to load "
                              f"and is skipped: {why}", PluginWarning, stacklevel=2)
                continue
            if override:  # allowed by the user: the plugin's entry replaces the built-in loaded before it
                old = entries.get(ep.name)
                self.replaced[ep.name] = f"{old.source} {old.version}" if old else BUILTIN
                warnings.warn(f"{self.singular} {ep.name!r}: the built-in is replaced by {dist}'s {ep.value} "
                              f"({ALLOW_OVERRIDE})", PluginWarning, stacklevel=2)
            entries[ep.name] = Entry(ep.name, obj, dist, version)
        self._entries = dict(sorted(entries.items()))
        return self._entries

    def _load_one(self, ep: metadata.EntryPoint) -> tuple[Any, str | None]:
        """Import one entry point: (object, None), or (None, why it cannot be used)."""
        if not _NAME.match(ep.name):
            return None, "its name must be one printable line of at most 120 characters"
        with interrupts.recording():
            try:
                obj = ep.load()
            except BaseException as e:  # noqa: BLE001 - a plugin's SystemExit or KeyboardInterrupt too
                if isinstance(e, KeyboardInterrupt) and interrupts.received() is not None:
                    raise  # a real Ctrl-C (or SIGTERM) while loading: stop
                if not isinstance(e, (Exception, SystemExit, KeyboardInterrupt)):
                    raise  # GeneratorExit and the like are not a plugin's doing
                return None, _short(f"{type(e).__name__}: {e}")
            interrupts.check()  # a real Ctrl-C the plugin's import swallowed
        why = check_entry(self.kind, obj)
        return (None, f"not a {self.singular} ({why})") if why else (obj, None)

    def register(self, name: str, obj: T, *, source: str = "runtime", version: str = "") -> None:
        """Register `obj` under `name` from code (tests, notebooks); duplicates and wrong kinds are an error."""
        entries = self._load()
        if name in entries:
            raise ValueError(f"{self.singular} {name!r} is already registered (by {entries[name].source})")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{self.singular} name {name!r} must be one printable line of at most 120 characters")
        why = check_entry(self.kind, obj)
        if why:
            raise TypeError(f"{self.singular} {name!r}: not a {self.singular} ({why})")
        entries[name] = Entry(name, obj, source, version)

    def entry(self, name: str) -> Entry[T]:
        entries = self._load()
        if name in entries:
            return entries[name]
        if name in self.failed:
            raise UserError(f"{self.singular} {name!r} failed to load: {self.failed[name]}")
        close = difflib.get_close_matches(name, list(entries), n=1, cutoff=0.6)
        hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(entries) or 'none'}"
        raise UserError(f"unknown {self.singular} {name!r}{hint}")

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self) -> list[str]:
        return list(self._load())

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(list(self._load().values()))

    def __contains__(self, name: str) -> bool:
        return name in self._load()


def _short(text: str, limit: int = 300) -> str:
    """A plugin's message, cut to `limit` characters (it goes into one warning line)."""
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def _dist(ep: metadata.EntryPoint) -> tuple[str, str]:
    """(distribution name, version) of an entry point ("unknown" where it has none)."""
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.name, dist.version


def allowed_overrides(kind: str) -> set[str]:
    """Built-in names of group `kind` a plugin may replace: `$SPARSEBENCH_ALLOW_OVERRIDE`, comma-separated
    `name` (any group) or `kind:name` entries."""
    out = set()
    for item in os.environ.get(ALLOW_OVERRIDE, "").split(","):
        group, sep, name = item.strip().rpartition(":")
        if name and (not sep or group == kind):
            out.add(name)
    return out


def _is_class(obj: Any) -> bool:
    return isinstance(obj, type)


def _names(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and all(isinstance(v, str) for v in value)


def check_entry(kind: str, obj: Any) -> str | None:
    """None if `obj` can be used as an entry of group `kind`, else what is wrong (one line).

    Tasks and mechanisms must subclass `api.Task` / `api.Mechanism`, probes `probes.Probe`, ticket detectors
    `tickets.detectors.Detector`. Models are
    checked for what the core uses (no base class is required of them), and baselines and controls likewise
    (their base classes, `baselines.nulls.Null` and `baselines.controls.Control`, import this module's users).
    """
    import dataclasses

    what = getattr(obj, "__qualname__", None) or type(obj).__name__
    if kind in ("tasks", "mechanisms", "probes"):
        if kind == "probes":
            from sparsebench.probes import Probe as base
        else:
            from sparsebench import api

            base = api.Task if kind == "tasks" else api.Mechanism
        if not (_is_class(obj) and issubclass(obj, base)):
            return f"{what} is not a subclass of {base.__module__}.{base.__qualname__}"
        if kind != "probes" and not (hasattr(obj, "Config") and dataclasses.is_dataclass(obj.Config)):
            return f"{what} has no Config dataclass"
        if not _names(getattr(obj, "families", None) if kind != "tasks" else [getattr(obj, "family", None)]):
            return f"{what} declares no {'family' if kind == 'tasks' else 'families'}"
        return None
    if kind == "models":
        if not _is_class(obj):
            return f"{what} is not a class"
        if not (hasattr(obj, "Config") and dataclasses.is_dataclass(obj.Config)):
            return f"{what} has no Config dataclass"
        for attr in ("families", "width_fields"):
            if not _names(getattr(obj, attr, None)):
                return f"{what}.{attr} is not a tuple of names"
        if not callable(getattr(obj, "make_config", None)):
            return f"{what} has no make_config (mix in sparsebench.api.Model)"
        return None
    if kind == "baselines":
        if not (_is_class(obj) and callable(getattr(obj, "make", None))):
            return f"{what} is not a null-model class with a make method (sparsebench.baselines.nulls.Null)"
        return None
    if kind == "controls":
        if not (_is_class(obj) and callable(getattr(obj, "make", None))):
            return f"{what} is not a control class with a make method (baselines.controls.Control)"
        if not isinstance(getattr(obj, "partial", False), bool):
            return f"{what}.partial is not a bool"
        return None
    if kind == "detectors":
        from sparsebench.tickets.detectors import Detector

        if not (_is_class(obj) and issubclass(obj, Detector)):
            return f"{what} is not a subclass of sparsebench.tickets.detectors.Detector"
        if not dataclasses.is_dataclass(getattr(obj, "Config", None)):
            return f"{what} has no Config dataclass"
        if not _names(getattr(obj, "families", None)):
            return f"{what} declares no families"
        return None
    return None


REGISTRIES: dict[str, Registry[Any]] = {kind: Registry(kind) for kind in GROUPS}
tasks = REGISTRIES["tasks"]
models = REGISTRIES["models"]
mechanisms = REGISTRIES["mechanisms"]
probes = REGISTRIES["probes"]
baselines = REGISTRIES["baselines"]  # null models
controls = REGISTRIES["controls"]  # control explanations
detectors = REGISTRIES["detectors"]  # ticket detectors (sparsebench.tickets.detectors)


def plugin_versions() -> dict[str, str]:
    """Every distribution that provides an entry, with its version (for provenance)."""
    out: dict[str, str] = {}
    for reg in REGISTRIES.values():
        for e in reg:
            out[e.source] = e.version
    return dict(sorted(out.items()))
