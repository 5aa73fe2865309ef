"""The command line against hostile plugins, malformed records, damaged caches and planted libraries (issue 15,
items 1, 2, 3, 5, 8): one `warning: ...` or `error: ...` line each, the right exit code, nothing else broken."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from hostile import fake_dist, lines, run_cli
from sparsebench import records
from sparsebench.leaderboard import synthetic

TINY = ["--set", "train.steps=30", "--set", "train.warmup=3", "--set", "train.batch_size=64", "--set", "task.V=50",
        "--set", "task.k=3", "--set", "model.d_model=8", "--set", "model.d_mlp=8"]
EVAL_SETS = TINY[:10]  # training and task settings; evaluate sets the widths itself


@pytest.fixture(scope="module")
def hostile_site(tmp_path_factory) -> Path:
    """Installed plugins that misbehave in every way item 1 and 2 list."""
    root = tmp_path_factory.mktemp("site")
    fake_dist(root, "exits", {"mechanisms": {"exits": "exits_mod:M"}}, {"exits_mod": "import sys\nsys.exit(1)\n"})
    fake_dist(root, "interrupts", {"tasks": {"interrupts": "kbi_mod:T"}}, {"kbi_mod": "raise KeyboardInterrupt\n"})
    fake_dist(root, "plain", {"probes": {"plain": "plain_mod:Plain"}, "tasks": {"plain-task": "plain_mod:Plain"}},
              {"plain_mod": "class Plain:\n    pass\n"})
    fake_dist(root, "aaa-x", {"mechanisms": {"bloom": "aaa_x_evil:Bloom"}},
              {"aaa_x_evil": "from sparsebench.mechanisms.bloom import Bloom as _B\n"
                             "class Bloom(_B):\n    pass\n"})
    return root


EXPECTED_WARNINGS = [
    "warning: mechanism 'bloom' from aaa-x (aaa_x_evil:Bloom) refused: the name is a built-in of sparsebench; to "
    "use the plugin's instead, set SPARSEBENCH_ALLOW_OVERRIDE=bloom",
    "warning: mechanism plugin 'exits' (exits_mod:M, from exits) failed to load and is skipped: SystemExit: 1",
    "warning: probe plugin 'plain' (plain_mod:Plain, from plain) failed to load and is skipped: not a probe (Plain is "
    "not a subclass of sparsebench.probes.Probe)",
    "warning: task plugin 'interrupts' (kbi_mod:T, from interrupts) failed to load and is skipped: "
    "KeyboardInterrupt: ",
    "warning: task plugin 'plain-task' (plain_mod:Plain, from plain) failed to load and is skipped: not a task (Plain "
    "is not a subclass of sparsebench.api.Task)",
]


def test_broken_plugins_break_no_command(hostile_site, tmp_path):
    r = run_cli("list", cache=tmp_path / "cache", cwd=tmp_path, pythonpath=hostile_site)
    assert r.returncode == 0, r.stderr
    assert sorted(lines(r.stderr)) == sorted(EXPECTED_WARNINGS)
    assert "refused override" in r.stdout and r.stdout.count("failed to load") == 4
    assert "aaa-x" in r.stdout and "sparsebench.mechanisms.bloom:Bloom" in r.stdout  # the built-in is listed

    r = run_cli("evaluate", "--task", "topk-uniform", "--seeds", "0", "--widths", "8", "--no-progress",
                "--set", "eval_samples=256", "--set", "probe_samples=128", "--mechanism", "bloom", "--out", "res",
                *EVAL_SETS, cache=tmp_path / "cache", cwd=tmp_path, pythonpath=hostile_site)
    assert r.returncode == 0, r.stderr
    assert set(lines(r.stderr)) <= set(EXPECTED_WARNINGS), r.stderr
    recs = [records.read(p) for p in (tmp_path / "res").glob("*/*.json")]
    exp = [x for x in recs if x.kind == "explanation"]
    assert exp and all(x.mechanism.name == "bloom" and "plain" not in x.probes for x in exp)
    assert all(x.provenance.plugins.get("aaa-x") is None for x in recs)  # the refused plugin provided nothing

    r = run_cli("train", "--task", "plain-task", *TINY, "--no-progress", cache=tmp_path / "cache", cwd=tmp_path,
                pythonpath=hostile_site)
    assert r.returncode == 2
    assert lines(r.stderr)[-1] == ("error: task 'plain-task' failed to load: not a task (Plain is not a subclass of "
                                   "sparsebench.api.Task)")


def test_a_built_in_is_replaced_only_when_the_user_says_so(hostile_site, tmp_path):
    code = ("from sparsebench import registry; e = registry.mechanisms.entry('bloom'); "
            "print(e.source, e.obj.__module__)")
    import os
    import sys

    for allow, expected in (("", "sparsebench sparsebench.mechanisms.bloom"), ("bloom", "aaa-x aaa_x_evil")):
        path = os.pathsep.join(p for p in (str(hostile_site), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, "SPARSEBENCH_ALLOW_OVERRIDE": allow}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
        assert r.stdout.strip().splitlines()[-1] == expected, r.stderr


# ----------------------------------------------------------------------------- records

def _good(tmp_path: Path) -> list:
    recs = synthetic.solution_records(widths=(16, 24, 32), seeds=(0, 1)) + synthetic.explanation_records(seeds=(0, 1))
    synthetic.write_records(tmp_path / "res", recs)
    return recs


def _malformed(base_sol: dict, base_exp: dict) -> dict[str, str]:
    """The issue's malformed records, by file name: the JSON text of each."""
    def sol(**change):
        return json.dumps({**base_sol, **change})

    deep = "[" * 100_000 + "]" * 100_000
    return {
        "theory_list.json": sol(theory=[1]),
        "seed_list.json": sol(seed=[0, 1]),
        "nulls_list.json": json.dumps({**base_exp, "nulls": ["untrained"]}),
        "metric_width.json": sol(metrics={**base_sol["metrics"], "width": 1.0}),
        "deep.json": deep,
        "deep_in_config.json": sol(task={**base_sol["task"], "config": {"x": json.loads("[" * 500 + "]" * 500)}}),
        "long_name.json": sol(task={**base_sol["task"], "name": "t" * 5_000_000}),
        "long_config.json": sol(task={**base_sol["task"], "config": {"x": "c" * 5_000_000}}),
        "escape_name.json": sol(solver={**base_sol["solver"], "name": "\x1b]8;;http://evil\x07x"}),
        "not_a_record.json": "[1, 2, 3]",
        "truncated.json": sol()[:100],
    }


def test_malformed_records_are_skipped_one_warning_each_on_every_format(tmp_path):
    good = _good(tmp_path)
    sol = next(r for r in good if r.kind == "solution")
    exp = next(r for r in good if r.kind == "explanation")
    bad = _malformed(records.to_json(sol), records.to_json(exp))
    for name, text in bad.items():
        (tmp_path / "res" / "bad").mkdir(exist_ok=True)
        (tmp_path / "res" / "bad" / name).write_text(text)
    for fmt in ("terminal", "markdown", "csv", "html"):
        r = run_cli("leaderboard", "res", "--format", fmt, "--out", f"board.{fmt}", cache=tmp_path / "c",
                    cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-2000:]
        warned = lines(r.stderr)
        assert len(warned) == len(bad), warned
        assert all(w.startswith(f"warning: skipped result file res/bad/") for w in warned)
        assert {w.split("res/bad/")[1].split(":")[0] for w in warned} == set(bad)
        assert all("\x1b" not in w and len(w) < 400 for w in warned)
        assert r.stdout == f"wrote board.{fmt}\n"
        text = (tmp_path / f"board.{fmt}").read_text()
        assert "Solutions" in text or fmt == "csv"
    r = run_cli("validate", "res", cache=tmp_path / "c", cwd=tmp_path)
    assert r.returncode == 2 and len(lines(r.stderr)) == len(bad)
    assert r.stdout.startswith(f"{len(good)} valid record(s), {len(bad)} bad file(s)")


def test_an_unreadable_folder_is_named_in_a_warning(tmp_path, monkeypatch):
    import os
    import warnings

    _good(tmp_path)
    hidden = tmp_path / "res" / "locked"
    hidden.mkdir()
    real = os.scandir

    def scandir(path="."):
        if Path(path) == hidden:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = records.load([tmp_path / "res"])
    assert recs
    assert [str(w.message) for w in caught] == [f"skipped result file {hidden}: unreadable folder (Permission denied)"]


# ----------------------------------------------------------------------------- the model cache

def test_a_damaged_cache_entry_is_one_warning_and_retrained(tmp_path):
    first = run_cli("train", *TINY, "--no-progress", cache=tmp_path / "cache", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    [entry] = list((tmp_path / "cache" / "models").iterdir())
    weights = entry / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    again = run_cli("train", *TINY, "--no-progress", cache=tmp_path / "cache", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    [line] = lines(again.stderr)
    assert line.startswith(f"warning: damaged cache entry {entry}: model.safetensors cannot be read (")
    assert line.endswith("retraining") and ": trained " in again.stdout
    assert (entry / "model.safetensors").stat().st_size > 1000
    third = run_cli("train", *TINY, "--no-progress", cache=tmp_path / "cache", cwd=tmp_path)
    assert third.returncode == 0 and not third.stderr.strip() and ": loaded " in third.stdout


def test_a_model_with_infinite_logits_is_never_scored(tmp_path):
    # Finite weights so large that the logits overflow: the cache accepts it, evaluate must refuse to score it.
    import safetensors.torch
    import torch

    args = ["--task", "topk-uniform", "--seeds", "0", "--widths", "8", "--mechanism", "bloom", "--no-progress",
            "--no-leaderboard", "--set", "construct=false", "--set", "eval_samples=256", "--set", "probe_samples=128",
            *EVAL_SETS]
    first = run_cli("train", *TINY, "--no-progress", cache=tmp_path / "cache", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    [entry] = list((tmp_path / "cache" / "models").iterdir())
    state = safetensors.torch.load_file(str(entry / "model.safetensors"))
    state = {k: torch.full_like(v, 3e38) for k, v in state.items()}
    safetensors.torch.save_file(state, str(entry / "model.safetensors"))
    r = run_cli("evaluate", *args, cache=tmp_path / "cache", cwd=tmp_path)
    assert r.returncode == 2
    assert lines(r.stderr) == ["error: the trained mlp1 (seed 0) on topk-uniform gives NaN or infinite logits "
                               "(training diverged?); no record written: lower train.lr or train.init_scale"]
    assert not list((tmp_path / "results").glob("*/*.json"))


def test_a_diverging_run_is_one_error_and_nothing_is_written(tmp_path):
    r = run_cli("evaluate", "--task", "topk-uniform", "--seeds", "0,1", "--widths", "8", "--mechanism", "jl",
                "--mechanism", "softmax-bottleneck", "--no-progress", "--set", "train.lr=1e30", *EVAL_SETS,
                "--set", "train.steps=200", cache=tmp_path / "cache", cwd=tmp_path)
    assert r.returncode == 2
    assert lines(r.stderr) == ["error: training diverged: the loss of seed 0 of topk-uniform is not finite at step "
                               "100 (train.lr=1e+30); lower train.lr"]
    assert not any(r.solver.type == "trained" for r in map(records.read, (tmp_path / "results").glob("*/*.json")))
    models = tmp_path / "cache" / "models"
    assert not (models.exists() and [p for p in models.iterdir() if not p.name.startswith(".")])


# ----------------------------------------------------------------------------- the native kernel

PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *path = getenv("SB_PLANTED_MARKER");
    FILE *f = fopen(path ? path : "/tmp/sb-planted-marker", "w");
    if (f) { fputs("ran", f); fclose(f); }
}
"""


def test_a_library_planted_in_the_cache_is_never_loaded(tmp_path):
    from sparsebench.accel import native

    ok, why = native.available()
    if not ok or shutil.which("cc") is None:
        pytest.skip(f"the native kernel cannot run here: {why}")
    cache = tmp_path / "cache"
    (cache / "native").mkdir(parents=True)
    src = tmp_path / "planted.c"
    src.write_text(PLANTED)
    lib = cache / "native" / "planted.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(lib), str(src)], check=True)
    # Every name a kernel was ever loaded under from there (the old loader used mlp1_kl-<hash of the sources>.so).
    from sparsebench.config import stable_hash
    from importlib import resources

    sources = {n: resources.files("sparsebench.accel").joinpath("csrc", n).read_text() for n in native.SOURCES}
    names = [f"mlp1_kl-{stable_hash({'sources': sources, 'flags': native.FLAGS, 'cc': 'cc'})}.so",
             "mlp1_kl.so", "sparsebench_native.so"]
    for name in names:
        shutil.copy(lib, cache / "native" / name)
    marker = tmp_path / "marker"
    r = run_cli("train", "--backend", "native", *TINY, "--no-progress", "--seed", "0", "--seed", "1", cache=cache,
                cwd=tmp_path, env={"SB_PLANTED_MARKER": str(marker)})
    assert r.returncode == 0, r.stderr
    assert not marker.exists(), "a library from the cache folder was loaded"
