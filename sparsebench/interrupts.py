"""Ctrl-C and SIGTERM: remembered, so that no library can swallow them, and told apart from a plugin's.

Python turns SIGINT into a `KeyboardInterrupt` raised wherever the main thread happens
to be, and some code swallows it: torch imports numpy from C and, if that import
fails for any reason, clears the error and goes on (a Ctrl-C during `import torch`
simply vanished, and `evaluate --workers 2` then started its workers and trained
for minutes). A plugin module may also raise `KeyboardInterrupt` (or `SystemExit`)
itself at import, which must not stop the program.

So the processes sparsebench owns (the CLI) install `install()`: SIGINT and SIGTERM
are *recorded*, then raised as `KeyboardInterrupt` (SIGTERM as `Terminated`, a
subclass, so a `timeout` or a job scheduler gets the same clean shutdown as Ctrl-C:
queued jobs cancelled, worker processes stopped, nothing partial written). Before
anything that is expensive to undo (starting worker processes, each training job),
`check()` raises again if a signal was recorded, even if its first exception was
swallowed. `received()` tells a real signal from a `KeyboardInterrupt` raised by
code; `recording()` gives the same knowledge for a moment in processes that did not
call `install()` (library users: the registry loads plugins inside it).
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

_received: int | None = None  # the first SIGINT/SIGTERM this process got (None: none)
_installed = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that the same clean shutdown runs (exit status 143)."""


def _raise(signum: int) -> None:
    if signum == signal.SIGTERM:
        raise Terminated()
    raise KeyboardInterrupt()


def _handler(signum: int, frame: Any) -> None:
    global _received
    if _received is None:
        _received = signum
    _raise(signum)


def install() -> None:
    """Record SIGINT and SIGTERM before raising them (call once, from the main thread of a process we own)."""
    global _installed
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    _installed = True


def received() -> int | None:
    """The signal number of the first SIGINT or SIGTERM recorded in this process, or None."""
    return _received


def check() -> None:
    """Raise again (KeyboardInterrupt, or Terminated) if a signal was recorded: its first exception may have
    been swallowed by code that catches everything."""
    if _received is not None:
        _raise(_received)


def reset() -> None:
    """Forget a recorded signal (tests)."""
    global _received
    _received = None


@contextmanager
def recording() -> Iterator[None]:
    """Within this block SIGINT is recorded as `install` does, also in a process that did not call it; there,
    the record lasts only as long as the block (a library user who catches a Ctrl-C goes on as before). A
    no-op outside the main thread (Python cannot set handlers there) or under someone else's handler."""
    global _received
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _installed:  # keep ours, whatever the block (a plugin's import) does to the handlers
        try:
            yield
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                if signal.getsignal(sig) is not _handler:
                    signal.signal(sig, _handler)
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is not signal.default_int_handler:
        yield
        return
    before = _received
    signal.signal(signal.SIGINT, _handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _received = before
