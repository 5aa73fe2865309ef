"""Signals and worker processes (issue 15, items 6 and 12): SIGTERM and SIGKILL of the driver leave no worker
running, and a Ctrl-C is never lost, not even one whose KeyboardInterrupt some code swallowed (torch swallows
one that arrives while it imports numpy: the driver then started its workers and trained for minutes)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hostile import group_processes, wait_for, workers_of

LONG = ["--set", "task.V=100", "--set", "task.k=3", "--set", "train.steps=200000", "--set", "train.batch_size=256"]
COMMANDS = {
    "evaluate": ["evaluate", "--workers", "2", "--no-progress", "--no-leaderboard", "--task", "topk-uniform",
                 "--seeds", "0,1", "--widths", "16,24", "--mechanism", "bloom", *LONG],
    "train": ["train", "--workers", "2", "--no-progress", "--seed", "0", "--seed", "1", *LONG],
    # one job for two workers: the job's worker trains its seeds in two workers of its own (evaluate.evaluate)
    "evaluate-one-job": ["evaluate", "--workers", "2", "--no-progress", "--no-leaderboard", "--task", "topk-uniform",
                         "--seeds", "0,1", "--widths", "16", "--set", "construct=false", "--mechanism", "bloom", *LONG],
}
SPAWNED = {"evaluate": 2, "train": 2, "evaluate-one-job": 3}  # worker processes in the driver's group, all levels


def spawned(pgid: int) -> list[dict]:
    return [p for p in group_processes(pgid) if "spawn_main" in p["cmd"]]


def start(tmp_path: Path, args: list[str], code: str | None = None) -> subprocess.Popen:
    env = {**os.environ, "SPARSEBENCH_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "sparsebench", *args]
    return subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)


def nothing_partial(tmp_path: Path) -> None:
    assert not [p for p in tmp_path.glob("results/**/*") if p.is_file() and not p.name.startswith(".")
                and ".tmp-" not in str(p)]
    models = tmp_path / "cache" / "models"
    assert not (models.exists() and [p for p in models.iterdir() if not p.name.startswith(".")])


def stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_no_worker_outlives_a_terminated_or_killed_driver(tmp_path, command, sig):
    # `timeout 10 sparsebench evaluate --workers 2` sends SIGTERM to the driver alone; an OOM killer SIGKILL.
    proc = start(tmp_path, COMMANDS[command])
    try:
        assert wait_for(lambda: len(spawned(proc.pid)) == SPAWNED[command] or proc.poll() is not None, 180), \
            "no workers"
        assert proc.poll() is None, proc.communicate()
        workers = [w["pid"] for w in spawned(proc.pid)]
        os.kill(proc.pid, sig)  # the driver only, not its process group
        proc.wait(timeout=60)
        assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGKILL)
        if sig == signal.SIGTERM:
            assert b"Traceback" not in proc.stderr.read()
        gone = wait_for(lambda: not group_processes(proc.pid), 20)
        assert gone, f"left running: {group_processes(proc.pid)} (workers were {workers})"
    finally:
        stop(proc)
    nothing_partial(tmp_path)


# The Ctrl-C lands while the driver is busy before its workers start (in the issue: importing torch), and that
# code swallows the KeyboardInterrupt. Here the busy code is made deterministic: the suite's planning waits and
# swallows, as torch's numpy import does.
SWALLOWS = """
import sys, time
from pathlib import Path
import sparsebench.evaluate as ev

plan = ev.Plan.__init__

def busy(self, suite):
    Path("busy").touch()
    try:
        time.sleep(120)
    except BaseException:  # swallowed
        pass
    plan(self, suite)

ev.Plan.__init__ = busy
sys.argv = ["sparsebench", *sys.argv[1:]]
from sparsebench.cli import main
main()
"""


def test_a_swallowed_ctrl_c_still_stops_the_driver_before_any_worker_starts(tmp_path):
    proc = start(tmp_path, COMMANDS["evaluate"], code=SWALLOWS)
    try:
        assert wait_for(lambda: (tmp_path / "busy").exists() or proc.poll() is not None, 180)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the Ctrl-C was lost: the driver went on ({len(workers_of(proc.pid))} workers running)")
        assert proc.returncode == 130
        assert wait_for(lambda: not group_processes(proc.pid), 20), group_processes(proc.pid)
    finally:
        stop(proc)
    nothing_partial(tmp_path)
    assert not (tmp_path / "cache" / "models").exists()  # no worker ever started a job


def test_a_ctrl_c_while_workers_start_stops_them(tmp_path):
    # As soon as the first worker process exists (it is still importing torch), not once both are training.
    proc = start(tmp_path, COMMANDS["evaluate"])
    try:
        assert wait_for(lambda: len(workers_of(proc.pid)) >= 1 or proc.poll() is not None, 180, interval=0.02)
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("the driver waited for its workers' jobs instead of stopping them")
        assert proc.returncode == 130
        assert wait_for(lambda: not group_processes(proc.pid), 20), group_processes(proc.pid)
    finally:
        stop(proc)
    nothing_partial(tmp_path)
