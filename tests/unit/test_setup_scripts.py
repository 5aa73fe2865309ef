"""scripts/quietly.sh, which the set-up scripts print through: one line per step, the output in a log, failures and
interruptions reported with the log's path."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

QUIETLY = Path(__file__).resolve().parents[2] / "scripts" / "quietly.sh"


def run(tmp_path: Path, steps: str) -> subprocess.CompletedProcess:
    (tmp_path / ".venv").mkdir(exist_ok=True)
    return subprocess.run(["bash", "-c", f"set -euo pipefail; . {QUIETLY}; {steps}"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)


def test_a_step_is_one_line_and_its_output_goes_to_the_log(tmp_path):
    r = run(tmp_path, "quietly 'saying hello' echo hello from the tool")
    assert r.returncode == 0
    assert r.stdout.splitlines() == ["setup: saying hello ... done (0s)"] and r.stderr == ""
    assert "hello from the tool" in (tmp_path / ".venv" / "setup.log").read_text()


def test_a_failed_step_names_the_log_and_shows_its_end(tmp_path):
    r = run(tmp_path, "quietly 'failing' bash -c 'echo the reason >&2; exit 3'; echo not reached")
    assert r.returncode == 1 and "not reached" not in r.stdout
    assert "setup: failing ... FAILED; the full output is in .venv/setup.log" in r.stderr
    assert "the reason" in r.stderr


def test_sigterm_stops_the_step_too(tmp_path):
    (tmp_path / ".venv").mkdir()
    proc = subprocess.Popen(["bash", "-c", f". {QUIETLY}; quietly 'waiting' bash -c 'echo $$ > pid; exec sleep 60'"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid_file = tmp_path / "pid"
    step = None
    try:
        deadline = time.monotonic() + 20
        while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        step = int(pid_file.read_text())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 130
        assert "setup: waiting ... interrupted; the output so far is in .venv/setup.log" in err
        assert not _alive(step), "the step went on running after the script was stopped"
    finally:  # a failing run must not leave either process behind
        proc.kill()
        if step is not None and _alive(step):
            os.kill(step, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
