"""The command line: help everywhere, one-line errors with exit 2, caching, safe interruption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = ["--set", "train.steps=30", "--set", "train.warmup=3", "--set", "train.batch_size=64",
        "--set", "task.V=50", "--set", "task.k=3", "--set", "model.d_model=8", "--set", "model.d_mlp=8"]


def cli(*args: str, cache: Path, cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARSEBENCH_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "sparsebench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=timeout)


@pytest.mark.parametrize("command", ["", "list", "train", "evaluate", "tickets", "leaderboard", "export", "validate",
                                     "report",
                                     "bench"])
def test_help_on_every_command(command, tmp_path):
    r = cli(*([command] if command else []), "--help", cache=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout


@pytest.mark.parametrize("args,message", [
    (["train", "--task", "topk-unifrom"], "error: unknown task 'topk-unifrom'; did you mean 'topk-uniform'?"),
    (["train", "--set", "task.k=0"], "error: invalid task config: k: must be at least 1 (got 0)"),
    (["train", "--set", "task.k=2000"], "error: invalid task config: k: must be at most V=1000 (got 2000)"),
    (["train", "--set", "task.w_lo=0"], "error: invalid task config: w_lo: must be > 0 (got 0.0)"),
    (["train", "--set", "task.w_lo=3"], "error: invalid task config: w_hi: must be >= w_lo=3.0 (got 2.0)"),
    (["train", "--set", "task.V=100.5"], "error: invalid task config: V: must be an integer (got 100.5)"),
    (["train", "--set", "task.colour=1"], "error: invalid task config: colour: unknown field; known fields: V, k, "
                                           "w_lo, w_hi"),
    (["train", "--set", "train.lr=-1"], "error: invalid train config: lr: must be a finite number > 0 (got -1.0)"),
    (["train", "--model", "mlp9"], "error: unknown model 'mlp9'; did you mean 'mlp2'?"),
    (["train", "--model", "mlp2"], "error: model 'mlp2' cannot train on task 'topk-uniform': it understands task "
                                   "families clauses, not 'topk'"),
    (["train", "--config", "missing.toml"], "error: config file not found: missing.toml"),
    (["train", "--workers", "0"], "error: --workers must be at least 1 (got 0)"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    r = cli(*args, cache=tmp_path, cwd=tmp_path)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [message]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_train_from_toml_then_load_from_cache(tmp_path):
    (tmp_path / "run.toml").write_text(
        '[task]\nname = "topk-uniform"\nV = 50\nk = 3\n\n[model]\nname = "mlp1"\nd_model = 8\nd_mlp = 8\n\n'
        '[train]\nsteps = 30\nwarmup = 3\nbatch_size = 64\n')
    first = cli("train", "--config", "run.toml", "--seed", "0", "--seed", "1", "--no-progress", cache=tmp_path,
                cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(": trained ") == 2
    second = cli("train", "--config", "run.toml", "--seed", "1", "--no-progress", cache=tmp_path, cwd=tmp_path)
    assert second.returncode == 0 and "seed 1: loaded" in second.stdout
    # The same settings given as flags hit the same cache entry (keys hash full, normalised configs).
    third = cli("train", "--seed", "1", "--no-progress", *TINY, cache=tmp_path, cwd=tmp_path)
    assert "seed 1: loaded" in third.stdout, third.stdout + third.stderr
    ckpts = [p for p in (tmp_path / "models").iterdir()]
    assert len(ckpts) == 2 and all((p / "model.safetensors").exists() and (p / "run.json").exists() for p in ckpts)


def test_killed_training_leaves_no_checkpoint_and_reruns(tmp_path):
    args = ["train", "--no-progress", "--set", "train.steps=100000", "--set", "task.V=50", "--set", "task.k=3",
            "--set", "model.d_model=8", "--set", "model.d_mlp=8", "--set", "train.batch_size=64"]
    env = {**os.environ, "SPARSEBENCH_CACHE": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "sparsebench", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    time.sleep(12)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    models = tmp_path / "models"
    visible = [p for p in models.iterdir() if not p.name.startswith(".")] if models.exists() else []
    assert visible == [], "a killed run must not leave a checkpoint"


def test_report_draws_every_figure_of_one_model(tmp_path):
    r = cli("report", *TINY, "--out", str(tmp_path / "rep"), "--html", cache=tmp_path, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("hash_matrix.png", "entries_histogram.png", "topk_mass.png", "tiers.png", "report.html"):
        assert (tmp_path / "rep" / name).stat().st_size > 1000, name
    info = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert info["train"]["steps"] == 30 and info["task"]["config"]["V"] == 50


def test_bench_measures_every_loop_against_the_plain_one(tmp_path):
    # A smoke run (1 repeat, few steps): every row is measured, the figures hang together, the JSON is whole.
    out = tmp_path / "bench.json"
    r = cli("bench", "--regime", "small", "--repeats", "1", "--steps", "16", "--processes", "2",
            "--json", str(out), cache=tmp_path, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    report = json.loads(out.read_text())
    small = report["regimes"]["small"]
    med, ref = small["median"], small["reference"]
    plains = [label for label in med if label.startswith("plain")]
    assert len(plains) == (1 if report["cores"] == 1 else 2)
    assert max(med[p]["vs_plain"] for p in plains) == 1.0
    assert {"sparsebench N=1", "sparsebench N=4", "sparsebench N=16", "sparsebench N=16 bf16",
            "sparsebench N=16, 2 procs", "sparsebench N=16 bf16, 2 procs"} <= set(med)
    mm = small["matmul_gflops"]
    assert all(v > 0 for v in mm.values())
    fwd = small["forward_flops_per_sample"]
    assert fwd == 2 * (2 * 32 * 32 + 32 * 500)
    for label, m in med.items():
        assert m["samples_s"] > 0, label
        # One repeat: the stored ratio is exactly this row's FLOP rate over its reference matmul's.
        assert m["of_matmul"] == pytest.approx(3 * fwd * m["samples_s"] / (mm[ref[label]] * 1e9), rel=1e-9)
        assert label in r.stdout
    assert ref["sparsebench N=16, 2 procs"] == ("fp32, 2 threads" if report["cores"] >= 2 else "fp32, 1 thread")
    assert ref["sparsebench N=16"] == ref["sparsebench N=16 bf16"] == "fp32, 1 thread"
    # The step breakdown is one worker's share (16 instances over 2 processes). With one repeat its
    # ceiling is exactly N x batch samples over (step - loss + loss matmul FLOPs at the bf16 rate),
    # in as many rounds as the processes need cores.
    parts, cfg = small["step_parts"], small["config"]
    assert parts["instances"] == 8 and parts["processes"] == 2
    assert parts["waves"] == (1 if report["cores"] >= 2 else 2)
    assert parts["loss_flops"] == 3 * 2 * 8 * cfg["batch"] * cfg["d"] * cfg["V"]
    assert all(parts[k] > 0 for k in ("sample", "model", "loss", "optimiser", "step"))
    assert parts["raw"] == [{k: parts[k] for k in parts["raw"][0]}]  # one repeat: its values are the medians
    ideal = parts["step"] - parts["loss"] + parts["loss_flops"] / (mm["bf16, 1 thread"] * 1e9)
    assert parts["ceiling_samples_s"] == pytest.approx(16 * cfg["batch"] / (parts["waves"] * ideal), rel=1e-9)
    assert parts["ceiling_vs_plain"] == pytest.approx(
        parts["ceiling_samples_s"] / max(med[p]["samples_s"] for p in plains), rel=1e-9)
    assert "ceiling" in r.stdout and "one worker's step" in r.stdout
    # The native kernel's rows and parts, where it runs (and the reason printed where it does not).
    from sparsebench.accel import native

    if report["native"] is True:
        assert {"sparsebench N=16 native", "sparsebench N=16 native, 2 procs"} <= set(med)
        assert all(parts[k] > 0 for k in ("sample, native", "model + loss, native", "step, native"))
        if native.available(bf16=True)[0]:
            assert {"sparsebench N=16 native bf16", "sparsebench N=16 native bf16, 2 procs"} <= set(med)
            assert parts["model + loss, native bf16"] > 0
    else:
        assert not any("native" in label for label in med)
        assert f"native rows left out: {report['native']}" in r.stdout


def test_ctrl_c_stops_every_worker_at_once(tmp_path):
    # Ctrl-C reaches the whole process group. Each worker would treat its KeyboardInterrupt as one
    # failed job and start the next queued one, so the driver must stop them itself. No fixed sleep: the
    # signal goes out once both workers exist (on a loaded machine that took over 10 s), and the driver
    # gets 30 s to stop, where waiting for a job would take minutes. (Resuming a partly written folder is
    # tested in test_evaluate.py; a Ctrl-C while the driver still imports: tests/integration/test_signals.py.)
    from hostile import group_processes, wait_for, workers_of

    args = ["evaluate", "--workers", "2", "--no-progress", "--no-leaderboard", "--task", "topk-uniform",
            "--seeds", "0,1", "--widths", "16,24,32", "--set", "task.V=100", "--set", "task.k=3",
            "--set", "train.steps=200000", "--set", "train.batch_size=256", "--mechanism", "bloom",
            "--out", str(tmp_path / "res")]  # every training job takes minutes
    env = {**os.environ, "SPARSEBENCH_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "sparsebench", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        assert wait_for(lambda: len(workers_of(proc.pid)) == 2 or proc.poll() is not None, 180), "no workers"
        assert proc.poll() is None, proc.communicate()
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail("the driver waited for its workers' jobs instead of stopping them")
        assert proc.returncode == 130
        # no worker survives the driver (allow init a moment to reap them)
        assert wait_for(lambda: not group_processes(proc.pid), 15), group_processes(proc.pid)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not list((tmp_path / "res").glob("*/*.json")), "no training job had finished"
    models = tmp_path / "cache" / "models"
    assert not (models.exists() and [p for p in models.iterdir() if not p.name.startswith(".")])


def test_bench_transformer_row_against_the_transformer_lens_loop(tmp_path):
    # The transformer regime: the batched trainer at N = 1, 4, 16 and a plain one-model TransformerLens loop,
    # measured in the same run.
    out = tmp_path / "bench.json"
    r = cli("bench", "--regime", "transformer", "--repeats", "1", "--steps", "2", "--json", str(out),
            cache=tmp_path, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    reg = json.loads(out.read_text())["regimes"]["transformer"]
    med, ref = reg["median"], reg["reference"]
    assert reg["config"]["model"] == "transformer" and "step_parts" not in reg
    assert {"plain, 1 thread", "sparsebench N=1", "sparsebench N=4", "sparsebench N=16",
            "sparsebench N=16, plain step"} <= set(med)
    assert max(m["vs_plain"] for label, m in med.items() if label.startswith("plain")) == 1.0
    assert reg["forward_flops_per_sample"] == 2 * (5 * 2 * 64 * 64 + 64 * 64 + 2 * 5 * 64 + 64 * 64 + 2 * 64 * 64
                                                   + 64 * 1000)
    for label, m in med.items():
        assert m["samples_s"] > 0 and label in r.stdout
        assert m["of_matmul"] == pytest.approx(3 * reg["forward_flops_per_sample"] * m["samples_s"]
                                               / (reg["matmul_gflops"][ref[label]] * 1e9), rel=1e-9)


def test_bench_refuses_a_missing_gpu_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    r = cli("bench", "--device", "cuda", "--repeats", "1", cache=tmp_path, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1
