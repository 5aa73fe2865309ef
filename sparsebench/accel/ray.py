"""Run an evaluation's jobs as Ray tasks (`sparsebench evaluate --executor ray`).

The jobs are the same calls the in-process executor makes (`evaluate.run_job`);
each becomes one Ray task that returns its records, and the driver writes
them, so results are identical and the results folder needs no shared file
system. Ray is an optional extra: `pip install 'sparsebench[ray]'`. With
`--ray-address` the jobs go to an existing cluster; without, a local Ray
instance is started for the run and stopped after it.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

from sparsebench.errors import UserError


def _in_worker(fn: Callable[..., Any], *call: Any) -> Any:
    # One CPU per task: torch would otherwise start a thread per core in every task and oversubscribe.
    # Ray reuses its worker processes, so the set-up is the same as the local workers' and idempotent.
    from sparsebench.accel.workers import init_worker

    init_worker()
    return fn(*call)


def map_on_ray(fn: Callable[..., Any], calls: list[tuple[Any, ...]], address: str | None,
               gpu: bool) -> Iterator[Any]:
    """`fn(*call)` for every call as one Ray task each (one CPU, and one GPU if `gpu`); results as they finish."""
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs Ray: pip install 'sparsebench[ray]'") from None
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise UserError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}") from None
    try:
        task = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0)(_in_worker)
        pending = [task.remote(fn, *call) for call in calls]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()
