"""Files appear whole or not at all: write to a temporary sibling, then rename."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator


@contextmanager
def atomic_path(path: str | os.PathLike, *, replace_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only on success.

    Works for files and for directories (the caller creates what it wants at the
    yielded path). A crash or kill leaves at most a hidden `.tmp-*` sibling, never a
    half-written `path`. A directory that already exists is kept (someone else finished
    the same one first, e.g. a cache entry) unless `replace_dir`, when the new one
    replaces it (the old one is moved aside, then removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    target = tmp / "payload"
    try:
        yield target
        if path.is_dir() and target.is_dir():
            if not replace_dir:
                return
            os.replace(path, tmp / "old")
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _finite(obj: Any) -> Any:
    """NaN and infinities become None: JSON has no such numbers, and readers must not meet them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented, strictly valid JSON (non-finite numbers as null), atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def canonical_json(obj: Any) -> str:
    """A stable text form of `obj` for hashing (sorted keys, no whitespace)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def ensure_writable(folder: str | os.PathLike, what: str, hint: str = "") -> None:
    """Create `folder` if needed and check that a file can be written in it; a UserError otherwise, so that
    a read-only results folder or cache is one line before any work, not a traceback after it."""
    from sparsebench.errors import UserError

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise UserError(f"cannot write to {what} {folder}: {e.strerror or e}{f' (set {hint})' if hint else ''}") \
            from None
