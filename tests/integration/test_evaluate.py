"""`sparsebench evaluate`: records written whole, skipped on rerun, bad input writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparsebench.context import RunContext
from sparsebench.evaluate import evaluate
from sparsebench.settings import suite_from_dict

CPU = RunContext.create("cpu", progress=False)

TINY = {
    "name": "tiny", "seeds": [0, 1], "widths": [16], "eval_samples": 1024, "probe_samples": 512,
    "train": {"steps": 150, "warmup": 10, "batch_size": 256},
    "runs": [{"task": "topk-uniform", "task_config": {"V": 100, "k": 3}}],
}
N_RECORDS = 2 + 3 * 2 + 3 * 2  # trained solutions + constructions (3 mechanisms x 2 seeds) + explanations


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("results")
    counts = evaluate(suite_from_dict(TINY), out, CPU)
    assert counts == {"written": N_RECORDS, "skipped": 0, "jobs": 4}
    return out


def records(out: Path) -> dict[str, dict]:
    return {str(p.relative_to(out)): json.loads(p.read_text()) for p in sorted(out.glob("*/*.json"))}


def test_every_record_is_complete(tiny_results):
    recs = records(tiny_results)
    assert len(recs) == N_RECORDS
    for path, r in recs.items():
        assert r["schema_version"] == 2 and Path(path).stem == r["id"] and path.startswith(r["kind"])
        assert r["task"]["name"] == "topk-uniform" and r["task"]["config"]["V"] == 100 and r["seed"] in (0, 1)
        prov = r["provenance"]
        assert {"sparsebench_version", "git_commit", "torch_version", "device", "wall_seconds", "date",
                "plugins", "python"} <= set(prov)
        assert "sparsebench" in prov["plugins"]
    trained = [r for r in recs.values() if r["kind"] == "solution" and r["solver"]["type"] == "trained"]
    assert len(trained) == 2
    for r in trained:
        assert len(r["checkpoint"]["sha256"]) == 64 and r["train"]["steps"] == 150
        assert {"kl", "tv", "topk_mass", "exact_set", "fp_rate"} <= set(r["metrics"])
    bloom_solutions = [r for r in recs.values() if r["kind"] == "solution" and r["solver"]["name"] == "bloom"]
    assert all({"fp_rate", "kl_limit"} <= set(r["theory"]) for r in bloom_solutions)


def test_every_probe_score_sits_next_to_its_controls_and_nulls(tiny_results):
    explanations = [r for r in records(tiny_results).values() if r["kind"] == "explanation"]
    assert sorted({r["mechanism"]["name"] for r in explanations}) == ["bloom", "jl", "softmax-bottleneck"]
    for r in explanations:
        assert r["mechanism"]["oracle"] == (r["mechanism"]["name"] == "softmax-bottleneck")
        assert set(r["nulls"]) == {"untrained", "shuffled"} and r["subject"] == "trained"
        assert {"answer-only", "random-code", "permuted-units", "resampled", "reinit-W_U"} <= set(r["controls"])
        for name, probe in r["probes"].items():
            if probe["status"] == "not_applicable":
                assert probe["reason"] and not probe["scores"]
                continue
            assert probe["main"] in probe["scores"] and probe["chunks"] == 4
            assert probe["ranked"] == (name not in ("bimodality", "mask-agreement"))
            main = probe["scores"][probe["main"]]
            seen = set(main["controls"]) | set(probe["control_notes"])
            assert seen == set(r["controls"]), name  # every control has a number or a note saying why not
            for score in probe["scores"].values():
                assert isinstance(score["value"], float) and len(score["ci"]) == 2
                if name in ("bimodality", "hidden-code", "patch", "prediction"):  # relabel-invariant
                    assert "shuffled" not in score["nulls"] and "shuffled" in probe["null_notes"]
                if score["controls"] or score["nulls"]:
                    assert isinstance(score["margin"], float) and score["rival"]
    bloom = next(r for r in explanations if r["mechanism"]["name"] == "bloom")
    from sparsebench import registry

    topk = {n for n in bloom["probes"] if "topk" in registry.probes.get(n).families}
    assert all(bloom["probes"][n]["status"] == "ok" for n in topk)  # every top-k probe scores Bloom
    assert all("not 'topk'" in p["reason"] for n, p in bloom["probes"].items() if n not in topk)  # the clause ones
    jl = next(r for r in explanations if r["mechanism"]["name"] == "jl")
    assert jl["probes"]["hidden-code"]["status"] == "not_applicable"


def test_rerun_skips_force_redoes_and_an_interrupted_run_resumes(tiny_results, tmp_path):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(tiny_results, out)
    suite = suite_from_dict(TINY)
    before = {p: p.stat().st_mtime_ns for p in out.glob("*/*.json")}
    assert evaluate(suite, out, CPU) == {"written": 0, "skipped": N_RECORDS, "jobs": 0}
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/*.json")} == before
    # An interrupted run: some records missing, a temporary file left behind. Only the missing are redone.
    lost = sorted(out.glob("explanation/*.json"))[:2]
    for p in lost:
        p.unlink()
    (out / "explanation" / ".x.json.tmp-1").mkdir()
    counts = evaluate(suite, out, CPU)
    assert counts["written"] == 2 and counts["skipped"] == N_RECORDS - 2
    assert all(p.exists() for p in lost)
    assert evaluate(suite, out, CPU, force=True)["written"] == N_RECORDS


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    from hostile import run_main  # restores the signal handlers and warning format main() sets

    return run_main(list(args), monkeypatch, capsys)


TINY_FLAGS = ["--seeds", "0", "--widths", "16", "--set", "task.V=100", "--set", "task.k=3", "--set", "train.steps=20",
              "--set", "train.warmup=2", "--no-progress", "--no-leaderboard"]


@pytest.mark.parametrize("extra,message", [
    (["--set", "mechanism.bloom.h=20"], "error: invalid mechanism config: h: must be <= m=16 (got 20)"),
    (["--set", "mechanism.bloom.alpha=0"], "error: invalid mechanism config: alpha: must be a finite number > 0 (got 0.0)"),
    (["--set", "mechanism.bloom.h=1"], "error: invalid mechanism config: h: C(m=16, h=1) = 16 distinct hashes "
                                       "< V=100 tokens; choose another h or a larger width"),
    (["--probe", "hidden-code", "--set", "model.n_layers=0"],
     "error: probe 'hidden-code' reads 'blocks.0.mlp.hook_post', which model 'mlp1' does not have"),
    (["--mechanism", "blom"], "error: unknown mechanism 'blom'; did you mean 'bloom'?"),
    (["--probe", "hiden-code"], "error: unknown probe 'hiden-code'; did you mean 'hidden-code'?"),
    (["--seeds", "0,x"], "error: --seeds expects comma-separated integers (got '0,x')"),
    (["no-such-suite"], "error: unknown suite 'no-such-suite'; built-in suites: clauses, default, tickets, "
                        "transformer, transformer-defaults"),
    (["--set", "mechanism.blom.alpha=3"], "error: invalid suite config: mechanism_config: configures 'blom', "
                                          "which is not among mechanisms (bloom, jl, softmax-bottleneck)"),
    (["--set", "runs=5"], "error: invalid suite config: runs: must be a list of tables ([[runs]]) (got 5)"),
    (["--set", "train=5"], "error: invalid train config: (all): must be a table of fields (got 5)"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(monkeypatch, capsys, tmp_path, extra, message):
    out = tmp_path / "results"
    code, stdout, stderr = run_cli(monkeypatch, capsys, "evaluate", *TINY_FLAGS, *extra, "--out", str(out))
    assert code == 2
    assert [ln for ln in stderr.splitlines() if ln.strip()] == [message]
    assert not out.exists()


def _same(a, b) -> bool:
    # Equal records; floats to 1e-6 relative (worker processes run torch on 1 thread, so a
    # least-squares fit may differ in the last bits from a 2-thread in-process run).
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return a == pytest.approx(b, rel=1e-6, abs=1e-9, nan_ok=True)
    return a == b


def assert_same_records(expected: Path, got: Path) -> None:
    local, other = records(expected), records(got)
    assert local.keys() == other.keys()
    for key in local:
        a, b = ({k: v for k, v in r[key].items() if k != "provenance"} for r in (local, other))
        assert _same(a, b), key


def test_records_from_ray_equal_the_in_process_ones(tiny_results, tmp_path):
    import os

    if os.environ.get("CI") is None:
        pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'sparsebench[ray]'")
    out = tmp_path / "ray"
    counts = evaluate(suite_from_dict(TINY), out, RunContext.create("cpu", progress=False, executor="ray"))
    assert counts["written"] == N_RECORDS
    assert_same_records(tiny_results, out)


def test_records_from_worker_processes_equal_the_in_process_ones(tiny_results, tmp_path):
    out = tmp_path / "workers"
    counts = evaluate(suite_from_dict(TINY), out, RunContext.create("cpu", progress=False, workers=2))
    assert counts == {"written": N_RECORDS, "skipped": 0, "jobs": 4}
    assert_same_records(tiny_results, out)


def test_a_lone_job_trains_its_seeds_in_the_spare_workers(tmp_path):
    """Fewer jobs than workers (the transformer suite is one job): the job's seeds are split over the spare
    workers instead of training in one while the others idle; the same training up to the last bits."""
    suite = suite_from_dict({**TINY, "construct": False})
    one = evaluate(suite, tmp_path / "one", RunContext.create("cpu", progress=False, cache=tmp_path / "c1"))
    two = evaluate(suite, tmp_path / "two", RunContext.create("cpu", progress=False, workers=2,
                                                              cache=tmp_path / "c2"))
    assert one == two == {"written": 2 + 3 * 2, "skipped": 0, "jobs": 1}
    runs = {c: [json.loads(p.read_text()) for p in (tmp_path / c).rglob("run.json")] for c in ("c1", "c2")}
    assert [r["processes"] for r in runs["c1"]] == [1, 1] and [r["processes"] for r in runs["c2"]] == [2, 2]
    # One instance per worker instead of two in one batched matmul: the sums round differently in the last
    # bits (training.train), so the solutions agree closely but not bitwise.
    a, b = records(tmp_path / "one"), records(tmp_path / "two")
    assert a.keys() == b.keys()
    for key in (k for k in a if k.startswith("solution/")):
        assert b[key]["metrics"] == pytest.approx(a[key]["metrics"], rel=1e-4, abs=1e-6), key


@pytest.mark.parametrize("name", ["default", "transformer", "clauses"])
def test_builtin_suites_load_and_validate(name):
    from sparsebench.evaluate import Plan
    from sparsebench.settings import load_suite

    suite = load_suite(name)
    assert len(suite.seeds) >= 3
    plan = Plan(suite)  # validates every config, mechanism width and probe before anything runs
    assert plan.jobs()


def test_workers_are_for_the_local_executor(tmp_path):
    from sparsebench.errors import UserError

    with pytest.raises(UserError, match="--workers is for the local executor"):
        evaluate(suite_from_dict(TINY), tmp_path / "x", RunContext.create("cpu", progress=False, executor="ray",
                                                                          workers=2))
    with pytest.raises(UserError, match="--workers must be at least 1"):
        evaluate(suite_from_dict(TINY), tmp_path / "x", RunContext.create("cpu", progress=False, workers=0))
    assert not (tmp_path / "x").exists()


def test_cli_widths_also_set_the_construction_sweep():
    from sparsebench.settings import apply_cli, load_suite

    s = apply_cli(load_suite("default"), task=None, model=None, mechanisms=None, probes=None, seeds=None,
                  widths=(24, 40), sets=[])
    assert s.widths == (24, 40) and s.construct_widths == () and all(r.widths == () for r in s.runs)


def test_out_must_be_a_folder(monkeypatch, capsys, tmp_path):
    out = tmp_path / "a-file"
    out.write_text("not a folder")
    code, _, stderr = run_cli(monkeypatch, capsys, "evaluate", *TINY_FLAGS, "--out", str(out))
    assert code == 2 and stderr.strip() == f"error: --out {out} exists and is not a folder"


def test_train_config_that_is_a_folder_or_not_a_table(monkeypatch, capsys, tmp_path):
    code, _, stderr = run_cli(monkeypatch, capsys, "train", "--config", str(tmp_path))
    assert code == 2 and stderr.strip() == f"error: config file {tmp_path} is a folder"
    code, _, stderr = run_cli(monkeypatch, capsys, "train", "--set", "task=5")
    assert code == 2 and stderr.strip() == "error: --set task=5: expected section.field with a section of task, model, train"
    toml = tmp_path / "t.toml"
    toml.write_text("task = 5\n")
    code, _, stderr = run_cli(monkeypatch, capsys, "train", "--config", str(toml))
    assert code == 2 and stderr.strip() == "error: [task] must be a table (got 5)"


def test_cli_flags_keep_matching_runs_and_explicit_values_win():
    from sparsebench.settings import apply_cli

    suite = suite_from_dict({"widths": [16, 24], "runs": [
        {"task": "topk-uniform", "task_config": {"V": 100}, "train": {"lr": 0.05}},
        {"task": "topk-conditional", "task_config": {"V": 100, "target": "softmax", "beta": 2.0}, "widths": [32]}]})
    s = apply_cli(suite, task="topk-conditional", model=None, mechanisms=None, probes=None, seeds=None, widths=None,
                  sets=["model.d_mlp=8", "train.lr=0.001"])
    (run,) = s.runs
    assert run.task_config == {"V": 100, "target": "softmax", "beta": 2.0} and run.widths == (32,)
    assert run.model_config["d_mlp"] == 8 and "d_mlp" not in run.width_fields  # explicit value leaves the sweep
    s = apply_cli(suite, task=None, model=None, mechanisms=None, probes=None, seeds=None, widths=None,
                  sets=["train.lr=0.001"])
    assert s.train.lr == 0.001 and s.runs[0].train["lr"] == 0.001  # a run's own override is overridden too
