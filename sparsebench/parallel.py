"""Several CPU cores for tiny models: one single-threaded worker process per core.

Intra-op threads barely help models this small (a [256 x 32] x [32 x 500] matmul is
over before a second thread is woken), and on a shared machine a 2-thread OpenMP
team spin-waits whenever one of its threads is descheduled. Independent processes,
each with one thread, have neither problem (docs/performance.md measures both), so
`train(..., workers=N)` splits the seeds and `evaluate --workers N` spreads the jobs
over such processes.

Workers are started with "spawn", not "fork": forking a process whose OpenMP or
MKL thread pool is already running can deadlock the child, and spawn behaves the
same on Linux, macOS and Windows. Each worker pays one import of torch (~2-4 s).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from typing import Sequence, TypeVar

T = TypeVar("T")


def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` spawned processes, each running torch on one thread."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1 (got {workers})")
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_one_thread)


def split(items: Sequence[T], parts: int) -> list[list[T]]:
    """`items` in at most `parts` contiguous groups whose sizes differ by at most one (none empty)."""
    parts = max(1, min(parts, len(items)))
    size, extra = divmod(len(items), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(list(items[start:end]))
        start = end
    return [g for g in out if g]
