"""Run an evaluation's jobs as Ray tasks (`sparsebench evaluate --executor ray`).

The jobs are the same ones the in-process executor runs (`evaluate.run_job`);
each becomes one Ray task that returns its records, and the driver writes
them, so results are identical and the results folder needs no shared file
system. Ray is an optional extra: `pip install 'sparsebench[ray]'`. With
`--ray-address` the jobs go to an existing cluster; without, a local Ray
instance is started for the run and stopped after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import torch

from sparsebench.errors import UserError


def _job_in_worker(plan: Any, job: Any, device: str, cache: str | None, skip: set[str], kernel: str) -> list:
    # One CPU per task: torch would otherwise start a thread per core in every task and oversubscribe.
    # Ray reuses its worker processes, so the set-up is the same as the local workers' and idempotent.
    from sparsebench.evaluate import run_job
    from sparsebench.parallel import init_worker

    init_worker()
    return run_job(plan, job, torch.device(device), Path(cache) if cache else None, False, skip, kernel)


def run_on_ray(plan: Any, todo: list, device: torch.device, cache: Path | None,
               address: str | None, kernel: str = "torch") -> Iterator[list]:
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
        task = ray.remote(num_cpus=1, num_gpus=1 if device.type == "cuda" else 0)(_job_in_worker)
        pending = [task.remote(plan, job, str(device), str(cache) if cache else None, skip, kernel)
                   for job, skip in todo]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield ray.get(done[0])
    finally:
        if started:
            ray.shutdown()
