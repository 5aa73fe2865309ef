"""Helpers for the hostile-input tests (issue 15): fake installed plugins, mutated records, a CLI runner.

A fake plugin is a real installed distribution as `importlib.metadata` sees one (a
`NAME-1.0.dist-info` folder with `METADATA` and `entry_points.txt`) plus its modules,
in a folder put on `sys.path` (unit tests) or `PYTHONPATH` (CLI tests): the registry
meets it exactly as it meets a pip-installed package.
"""

from __future__ import annotations

import copy
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any


def fake_dist(root: Path, name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]) -> Path:
    """Install distribution `name` into folder `root`: {group: {entry name: "module:attr"}}, {module: source}."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = []
    for group, entries in entry_points.items():
        lines.append(f"[sparsebench.{group}]")
        lines += [f"{k} = {v}" for k, v in entries.items()]
        lines.append("")
    (info / "entry_points.txt").write_text("\n".join(lines))
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
    return root


def run_cli(*args: str, cache: Path, cwd: Path, env: dict[str, str] | None = None, timeout: int = 600,
            pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """`python -m sparsebench ARGS` with its own cache (and a plugin folder on PYTHONPATH)."""
    full = {k: v for k, v in os.environ.items() if k != "SPARSEBENCH_ALLOW_OVERRIDE"}
    full.update({"SPARSEBENCH_CACHE": str(cache), **(env or {})})
    if pythonpath is not None:
        full["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run([sys.executable, "-m", "sparsebench", *args], capture_output=True, text=True, env=full,
                          cwd=cwd, timeout=timeout)


def lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if ln.strip()]


# ----------------------------------------------------------------------------- record mutations

def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (tuple of keys/indices) into a JSON value."""
    out = [prefix]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _deep(depth: int) -> Any:
    v: Any = 0
    for _ in range(depth):
        v = [v]
    return v


def _odd_value(rng: random.Random) -> Any:
    """A value of a type or size that a record field does not expect."""
    choices = [
        None, True, False, 0, -1, 2**70, -2**70, 1.5, float("nan"), float("inf"), "", "x" * rng.choice([1, 200, 5000]),
        "\x1b]8;;http://evil\x07click\x1b]8;;\x07", "=HYPERLINK(\"x\")", "a\rb\nc", "\u202e", [], [0, 1], {}, {"a": 1},
        {"width": 1}, [[1]], {"": None}, _deep(rng.choice([5, 50, 400])), "1e400", "-0.5",
    ]
    return copy.deepcopy(rng.choice(choices))


def mutate(record: dict[str, Any], rng: random.Random, n: int | None = None) -> Any:
    """A copy of `record` with 1-3 random mutations: a field deleted, its value swapped for an odd one, a key
    added, or a reserved/odd key injected."""
    rec = copy.deepcopy(record)
    for _ in range(n or rng.randint(1, 3)):
        paths = [p for p in _paths(rec) if p]
        if not paths:
            return _odd_value(rng)
        path = rng.choice(paths)
        parent = rec
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        op = rng.random()
        if op < 0.3 and isinstance(parent, dict):
            del parent[last]
        elif op < 0.8:
            parent[last] = _odd_value(rng)
        elif isinstance(parent, dict):
            parent[rng.choice(["width", "kind", "zz", "x" * 300, "\x1b[31m", "1bad", "metric_kl"])] = _odd_value(rng)
        else:
            parent.append(_odd_value(rng))
    return rec


def run_main(args: list[str], monkeypatch: Any, capsys: Any) -> tuple[int, str, str]:
    """`sparsebench ARGS` in this process (no torch import per call): (exit code, stdout, stderr). The CLI's
    process-wide settings (signal handlers, warning format) are restored afterwards."""
    import signal
    import warnings

    from sparsebench import cli, interrupts

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setattr(sys, "argv", ["sparsebench", *args])
    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)
    monkeypatch.setattr(interrupts, "_installed", interrupts._installed)
    capsys.readouterr()
    code = 0
    with warnings.catch_warnings():
        try:
            cli.main()
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            for s, h in saved.items():
                signal.signal(s, h)
            interrupts.reset()
    out = capsys.readouterr()
    return code, out.out, out.err


class read_only:
    """Make a folder unwritable, even for root (`chattr +i` on Linux filesystems that have it; else chmod)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def __enter__(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            done = subprocess.run(["chattr", "+i", str(self.folder)], capture_output=True)
            if done.returncode != 0:
                import pytest

                pytest.skip("running as root on a filesystem without chattr +i: no folder is read-only")
        else:
            self.folder.chmod(0o555)
        return self.folder

    def __exit__(self, *exc: Any) -> None:
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(self.folder)], capture_output=True)
        else:
            self.folder.chmod(0o755)


# ----------------------------------------------------------------------------- processes

def group_processes(pgid: int) -> list[dict[str, Any]]:
    """Live (not zombie) processes of process group `pgid`: pid, ppid, state, cmdline (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        state, ppid, pgrp = fields[0], int(fields[1]), int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            out.append({"pid": int(entry.name), "ppid": ppid, "state": state, "cmd": cmd})
    return out


def workers_of(pid: int) -> list[dict[str, Any]]:
    """The spawned worker processes (multiprocessing's spawn_main) whose parent is `pid`."""
    return [p for p in group_processes(os.getpgid(pid)) if p["ppid"] == pid and "spawn_main" in p["cmd"]]


def wait_for(condition: Any, timeout: float, interval: float = 0.2) -> bool:
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
