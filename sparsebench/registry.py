"""One registry per plugin group, filled from entry points.

Built-ins and third-party plugins arrive the same way: an entry point in the
group `sparsebench.<kind>` (tasks, models, mechanisms, probes, baselines, detectors) whose
name is the one name used everywhere (CLI, records, leaderboard). Entries are
discovered in name order (so the order never depends on install order), and
imported when a registry is first used. A plugin that fails to import is named
in a warning and skipped; the rest keep working. Library code and the CLI use
the same registries, so a plugin installed is a plugin usable from both.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Generic, Iterator, TypeVar

from sparsebench.errors import UserError

T = TypeVar("T")
GROUPS = ("tasks", "models", "mechanisms", "probes", "baselines", "detectors")


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

    @property
    def group(self) -> str:
        return f"sparsebench.{self.kind}"

    @property
    def singular(self) -> str:
        return {"tasks": "task", "models": "model", "mechanisms": "mechanism", "probes": "probe",
                "baselines": "baseline", "detectors": "detector"}.get(self.kind, self.kind)

    def _load(self) -> dict[str, Entry[T]]:
        if self._entries is not None:
            return self._entries
        entries: dict[str, Entry[T]] = {}
        eps = sorted(metadata.entry_points(group=self.group), key=lambda ep: (ep.name, ep.value))
        for ep in eps:
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else "unknown"
            if ep.name in entries:
                if entries[ep.name].source != dist or entries[ep.name].obj is None:
                    warnings.warn(f"{self.singular} {ep.name!r} from {dist} ignored: "
                                  f"already provided by {entries[ep.name].source}", PluginWarning, stacklevel=2)
                continue
            try:
                obj = ep.load()
            except Exception as e:  # noqa: BLE001 - any failure of a plugin must not stop the rest
                self.failed[ep.name] = f"{type(e).__name__}: {e}"
                warnings.warn(f"{self.singular} plugin {ep.name!r} ({ep.value}, from {dist}) failed to load "
                              f"and is skipped: {type(e).__name__}: {e}", PluginWarning, stacklevel=2)
                continue
            entries[ep.name] = Entry(ep.name, obj, dist, version)
        self._entries = entries
        return entries

    def register(self, name: str, obj: T, *, source: str = "runtime", version: str = "") -> None:
        """Register `obj` under `name` from code (tests, notebooks); duplicates are an error."""
        entries = self._load()
        if name in entries:
            raise ValueError(f"{self.singular} {name!r} is already registered (by {entries[name].source})")
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


tasks: Registry[Any] = Registry("tasks")
models: Registry[Any] = Registry("models")
mechanisms: Registry[Any] = Registry("mechanisms")
probes: Registry[Any] = Registry("probes")
baselines: Registry[Any] = Registry("baselines")
detectors: Registry[Any] = Registry("detectors")  # ticket detectors (sparsebench.tickets.detectors)
REGISTRIES = {r.kind: r for r in (tasks, models, mechanisms, probes, baselines, detectors)}


def plugin_versions() -> dict[str, str]:
    """Every distribution that provides an entry, with its version (for provenance)."""
    out: dict[str, str] = {}
    for reg in REGISTRIES.values():
        for e in reg:
            out[e.source] = e.version
    return dict(sorted(out.items()))
