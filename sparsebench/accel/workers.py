"""Several CPU cores for tiny models: one single-threaded worker process per core.

Intra-op threads barely help models this small (a [256 x 32] x [32 x 500] matmul is
over before a second thread is woken), and on a shared machine a 2-thread OpenMP
team spin-waits whenever one of its threads is descheduled. Independent processes,
each with one thread, have neither problem (docs/performance.md measures both), so
with `RunContext.workers = N` training splits a run's seeds (`train_split`) and
`evaluate` spreads its jobs (`map_jobs`) over such processes.

Workers are started with "spawn", not "fork": forking a process whose OpenMP or
MKL thread pool is already running can deadlock the child, and spawn behaves the
same on Linux, macOS and Windows. Each worker pays one import of torch (~2-4 s).

Workers never outlive their driver. On Linux each asks the kernel to kill it when the
driver dies (`prctl(PR_SET_PDEATHSIG, SIGKILL)`, so even a SIGKILLed driver leaves no
worker training); workers ignore Ctrl-C, which the driver handles by stopping them
all at once (SIGTERM of the CLI likewise: `sparsebench.interrupts`); and the driver
starts no worker once a Ctrl-C has been recorded, even one that other code swallowed.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

from tqdm.auto import tqdm

from sparsebench import interrupts
from sparsebench.errors import UserError

T = TypeVar("T")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc mallopt() parameters (malloc.h)
MMAP_BYTES = 32 * 1024 * 1024  # blocks below this come from the heap (32 MiB: the cap on older 64-bit glibc)
TRIM_BYTES = 256 * 1024 * 1024  # free heap above this is returned to the OS


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed blocks below 32 MiB for reuse instead of giving them back.

    A training step frees and reallocates the same 0.1-1 MiB tensors (gradients, logits
    tiles) every step. By default glibc gives such memory back to the OS (fresh mmaps for
    large blocks, trimming the heap top for the rest), and the next step faults the pages
    in again, zeroed: 600-1000 minor page faults per small-regime step at 8-16 instances
    here, against 3-8 when kept, and 9-18% more samples/s (docs/performance.md). Both
    settings are needed: each alone disables glibc's adaptive threshold and leaves the
    other path faulting (measured: more faults than the default). The cost is that a
    process keeps up to its peak heap. Process-wide, so it is called by processes
    sparsebench owns (the CLI, worker processes), not on import.
    Returns whether it applied (False off glibc: macOS, Windows, musl).
    """
    import ctypes
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")  # glibc's soname on every Linux it supports
        return bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
    except (OSError, AttributeError):
        return False


def init_worker() -> None:
    """Set up a worker process: torch on one thread, freed memory kept for reuse."""
    import torch

    torch.set_num_threads(1)
    keep_freed_memory()


PR_SET_PDEATHSIG = 1  # prctl(2) option: the signal this process gets when its parent dies


def die_with_parent(parent_pid: int) -> bool:
    """Ask Linux to SIGKILL this process when its parent (`parent_pid`) dies; exit now if it already has.

    Returns whether the kernel took the request (False elsewhere: macOS, Windows). The signal follows the
    parent *thread* that started this process, so pools are started from the thread that uses them.
    """
    import ctypes
    import platform

    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        ok = libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)
    return ok


def _init_pool_worker(parent_pid: int) -> None:
    """A pool worker: dies with the driver, leaves Ctrl-C to the driver (which stops it), one-line warnings,
    then `init_worker`."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import warnings

    from sparsebench.errors import one_line_warnings
    from sparsebench.registry import PluginWarning

    one_line_warnings()
    warnings.simplefilter("ignore", PluginWarning)  # the driver loaded the same plugins and said so already
    init_worker()


@contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of `workers` spawned processes, each running torch on one thread.

    On an error, Ctrl-C or SIGTERM in the driver, queued jobs are cancelled and the workers stopped at
    once: a job's results reach disk only through the driver (records) or an atomic rename
    (checkpoints), so the unfinished jobs are simply redone on a rerun. Workers ignore Ctrl-C (without
    that, each would catch its KeyboardInterrupt as a job failure and go on with the next job) and die
    with the driver. No pool starts after a recorded Ctrl-C (`interrupts.check`): a signal that arrived
    while the driver was still importing torch, which swallows it, must not let the workers start.
    Scripts that use it must start under `if __name__ == "__main__":`, as spawn requires.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1 (got {workers})")
    interrupts.check()
    before = set(multiprocessing.active_children())
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_pool_worker, initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        _stop_workers(pool, before)
        raise
    pool.shutdown(wait=True)


def _stop_workers(pool: ProcessPoolExecutor, before: Iterable[Any] = ()) -> None:
    """Cancel the queued jobs and terminate every worker at once, including one whose start was interrupted
    before the pool registered it (it is already among this process's children, which exit would join)."""
    procs = list((getattr(pool, "_processes", None) or {}).values())  # before shutdown, which forgets them
    known = set(before)
    procs += [p for p in multiprocessing.active_children() if p not in known and p not in procs]
    if hasattr(pool, "terminate_workers"):  # Python >= 3.14
        pool.terminate_workers()
    else:
        pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        proc.terminate()


def require_installed(uses: dict[str, Iterable[str]]) -> None:
    """Refuse entries registered at run time ({registry kind: names}): spawned workers cannot see them."""
    from sparsebench import registry

    for kind, names in uses.items():
        reg = registry.REGISTRIES[kind]
        for name in names:
            if name in reg and reg.entry(name).source == "runtime":
                raise UserError(f"{reg.singular} {name!r} was registered at run time, which "
                                f"worker processes cannot see: use one worker, or install it as a plugin package")


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


def train_split(train: Callable[..., Any], ctx: Any, task: Any, model_name: str, model_cfg: dict[str, Any],
                cfg: Any, seeds: list[int], workers: int) -> Any:
    """`train(task, model_name, model_cfg, cfg, group, ctx.single())` for groups of the seeds, one group per
    single-threaded worker process; the trained weights come back as state dicts (plain tensors) and are
    loaded into freshly built models here. Returns a `training.TrainResult` over all seeds in order."""
    from sparsebench.training import TrainResult, init_models

    require_installed({"tasks": [getattr(task, "name", "")], "models": [model_name]})
    groups = split(seeds, workers)
    start = time.perf_counter()
    with worker_pool(len(groups)) as pool:
        futures = [pool.submit(_train_states, train, task, model_name, model_cfg, cfg, g, ctx.single())
                   for g in groups]
        results = [f.result() for f in futures]
    models, losses = [], []
    for group, (states, group_losses, backend) in zip(groups, results):
        for model, state in zip(init_models(task, model_name, model_cfg, group), states):
            model.load_state_dict(state)
            models.append(model.eval())
        losses += group_losses
    return TrainResult(models, losses, time.perf_counter() - start, processes=len(groups), threads=1,
                       backend=backend)


def _train_states(train: Callable[..., Any], task: Any, model_name: str, model_cfg: dict[str, Any], cfg: Any,
                  seeds: list[int], ctx: Any) -> tuple[list[dict[str, Any]], list[float], str]:
    """Worker side of `train_split`."""
    result = train(task, model_name, model_cfg, cfg, seeds, ctx)
    return [m.state_dict() for m in result.models], result.final_loss, result.backend


def map_jobs(fn: Callable[..., T], calls: list[tuple[Any, ...]], workers: int, progress: bool,
             desc: str) -> Iterator[T]:
    """`fn(*call)` for every call, in `workers` worker processes (results as they complete) or, with one
    worker, in this process in order."""
    if workers <= 1:
        for call in tqdm(calls, desc=desc, disable=not progress, leave=False):
            yield fn(*call)
        return
    workers = min(workers, len(calls))
    with worker_pool(workers) as pool:  # calls go out in order: put the long ones first
        futures = [pool.submit(fn, *call) for call in calls]
        interrupts.check()
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"{desc} ({workers} processes)",
                           disable=not progress, leave=False):
            result = future.result()
            interrupts.check()
            yield result
