"""Bad input through the command line is one `error: ...` line, exit code 2, no traceback, and nothing written
(issue 15, items 4, 7, 9, 11). Run in this process (`hostile.run_main`), so each case costs no torch import."""

from __future__ import annotations

import pytest

from hostile import lines, read_only, run_main

TINY = ["--set", "train.steps=30", "--set", "train.warmup=3", "--set", "train.batch_size=64", "--set", "task.V=50",
        "--set", "task.k=3", "--set", "model.d_model=8", "--set", "model.d_mlp=8"]
TINY_EVAL = ["evaluate", "--task", "topk-uniform", "--no-progress", "--no-leaderboard", "--seeds", "0", "--widths", "8", "--mechanism", "bloom",
             "--set", "task.V=50", "--set", "task.k=3", "--set", "train.steps=30", "--set", "train.warmup=3",
             "--set", "train.batch_size=64", "--set", "eval_samples=256", "--set", "probe_samples=128"]


@pytest.fixture
def cli(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SPARSEBENCH_CACHE", str(tmp_path / "cache"))

    def run(*args: str) -> tuple[int, list[str], str]:
        code, out, err = run_main(list(args), monkeypatch, capsys)
        return code, lines(err), out

    return run


def nothing_written(tmp_path) -> bool:
    models = tmp_path / "cache" / "models"
    return not (models.exists() and any(models.iterdir())) and not list(tmp_path.glob("results/*/*.json"))


@pytest.mark.parametrize("args,message", [
    (["train", "--set", "task.name=123"], "error: [task] name must be a string (got 123)"),
    (["train", "--set", "tsak.V=10"], "error: --set tsak.V=10: expected section.field with a section of task, "
                                      "model, train; did you mean 'task'?"),
    (["train", "--set", "V=3"], "error: --set V=3: expected section.field with a section of task, model, train"),
    (["train", "--set", "train.lr=inf"], "error: invalid train config: lr: must be a finite number (got inf)"),
    (["train", "--set", "train.lr=nan"], "error: invalid train config: lr: must be a finite number (got nan)"),
    (["train", "--set", "train.weight_decay=inf"],
     "error: invalid train config: weight_decay: must be a finite number (got inf)"),
    (["train", "--set", "model.init_scale=inf"], "error: invalid model config: init_scale: must be a finite number "
                                                 "(got inf)"),
    (["train", "--set", "task.w_hi=inf"], "error: invalid task config: w_hi: must be a finite number (got inf)"),
    (["train", "--set", "task.w_lo=-inf"], "error: invalid task config: w_lo: must be a finite number (got -inf)"),
    (["train", "--set", "train.steps=50"], "error: invalid train config: warmup: must be in [0, steps=50] (got 100); "
                                           "set train.warmup too when you shorten steps"),
    (["evaluate", "--set", "V=3"], "error: invalid suite config: V: unknown field; known fields: name, runs, seeds, "
                                   "widths, mechanisms, mechanism_config, construct, construct_widths, probes, "
                                   "probe_config, nulls, controls, validity_widths, train, eval_samples, "
                                   "probe_samples, probe_chunks"),
    (["evaluate", "--set", "tsak.V=10"], "error: --set tsak.V=10: expected task.F, model.F, train.F, "
                                         "mechanism.NAME.F or a suite field"),
    (["evaluate", "--set", "mechanism.bloom.alpha=inf"], "error: invalid mechanism config: alpha: must be a finite "
                                                         "number (got inf)"),
    (["evaluate", "--seeds", "0,-1"], "error: invalid suite config: seeds: must be non-negative (got [0, -1])"),
    (["evaluate", "--seeds", "a,b"], "error: --seeds expects comma-separated integers (got 'a,b')"),
    (["train", "--seed", "-1"], "error: --seed must be non-negative integers (got -1)"),
    (["bench", "--steps", "-1"], "error: --steps must be at least 1 (got -1)"),
    (["bench", "--steps", "0"], "error: --steps must be at least 1 (got 0)"),
])
def test_bad_values_are_one_line(cli, tmp_path, args, message):
    code, err, _ = cli(*args)
    assert (code, err) == (2, [message])
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("args,start", [
    (["train", "--set", "task.V=1000000000000"], "error: invalid task config: V: 1000000000000 is too large: this "
                                                 "run would need about "),
    (["train", "--set", "task.V=100000000"], "error: invalid task config: V: 100000000 is too large"),
    (["train", "--set", "model.d_mlp=1000000000"], "error: invalid model config: d_mlp: 1000000000 is too large"),
    (["train", "--set", "train.batch_size=10000000000"], "error: invalid train config: batch_size: 10000000000 is "
                                                         "too large"),
    (["evaluate", "--set", "eval_samples=10000000000"], "error: invalid suite config: eval_samples: 10000000000 is "
                                                        "too large"),
    (["evaluate", "--widths", "1000000000"], "error: invalid suite config: widths: 1000000000 is too large"),
    (["report", "--set", "task.V=1000000000000"], "error: invalid task config: V: 1000000000000 is too large"),
])
def test_sizes_that_cannot_fit_are_one_line_before_any_allocation(cli, tmp_path, args, start):
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    code, err, _ = cli(*args)
    assert code == 2 and len(err) == 1 and err[0].startswith(start), err
    assert "more than this machine's" in err[0]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: nothing big was allocated
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("content,message", [
    (b"\xff\xfe[task]\n", "error: config file bad.toml is not UTF-8 text (byte 0): not a TOML file?"),
    (b"[task\n", "error: config file bad.toml is not valid TOML: "),
    (b'seeds = "abc"\n', "error: seeds must be a non-empty list of integers (got 'abc')"),
    (b"seeds = [1.5]\n", "error: seeds must be non-negative integers (got 1.5)"),
    (b"seeds = 5\n", "error: seeds must be a non-empty list of integers (got 5)"),
    (b"[tsak]\nV = 10\n", "error: config file bad.toml: unknown section or key 'tsak'; did you mean 'task'?"),
    (b"[task]\nname = 123\n", "error: [task] name must be a string (got 123)"),
    (b"[task]\nV = 2026-01-01\n", "error: invalid task config: V: must be an integer (got datetime.date(2026, 1, 1))"),
])
def test_bad_config_files_are_one_line(cli, tmp_path, content, message):
    (tmp_path / "bad.toml").write_bytes(content)
    code, err, _ = cli("train", "--config", "bad.toml", "--no-progress")
    assert code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert nothing_written(tmp_path)


def test_a_typo_in_a_suite_file_is_one_line(cli, tmp_path):
    (tmp_path / "s.toml").write_text("seeds = [0]\n[tsak]\nV = 10\n")
    code, err, _ = cli("evaluate", "s.toml")
    assert code == 2 and err == ["error: invalid suite config: tsak: unknown field; known fields: name, runs, seeds, "
                                 "widths, mechanisms, mechanism_config, construct, construct_widths, probes, "
                                 "probe_config, nulls, controls, validity_widths, train, eval_samples, probe_samples, "
                                 "probe_chunks"]


def test_output_paths_of_the_wrong_kind_are_one_line(cli, tmp_path):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "afolder").mkdir()
    code, err, _ = cli("report", "--out", "afile", *TINY)
    assert (code, err) == (2, ["error: --out afile exists and is not a folder"]) and nothing_written(tmp_path)
    code, err, _ = cli("leaderboard", str(tmp_path), "--out", "afolder")
    assert (code, err) == (2, ["error: --out afolder is a folder; give a file name"])
    code, err, _ = cli("evaluate", "--out", "afile", *TINY_EVAL[1:])
    assert (code, err) == (2, ["error: --out afile exists and is not a folder"]) and nothing_written(tmp_path)


def test_a_read_only_results_folder_fails_before_any_training(cli, tmp_path):
    with read_only(tmp_path / "ro") as ro:
        code, err, _ = cli(*TINY_EVAL, "--out", str(ro / "results"))
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: cannot write to the results folder {ro / 'results'}: ") and "(set --out)" in err[0]
    assert nothing_written(tmp_path)  # no model was trained first


def test_a_read_only_cache_fails_before_any_training(cli, tmp_path):
    with read_only(tmp_path / "ro") as ro:
        code, err, _ = cli(*TINY_EVAL, "--cache", str(ro))
        code2, err2, _ = cli("train", *TINY, "--no-progress", "--cache", str(ro))
        code3, err3, _ = cli("report", *TINY, "--cache", str(ro), "--out", "rep")
    for c, e in ((code, err), (code2, err2), (code3, err3)):
        assert c == 2 and len(e) == 1 and e[0].startswith(f"error: cannot write to the model cache {ro / 'models'}: ")
    assert not (tmp_path / "results").exists() and not (tmp_path / "rep").exists()


def test_an_unwritable_leaderboard_file_is_one_line(cli, tmp_path):
    from sparsebench.leaderboard import synthetic

    synthetic.write_records(tmp_path / "r", synthetic.solution_records(widths=(16,), seeds=(0,)))
    with read_only(tmp_path / "ro") as ro:
        code, err, _ = cli("leaderboard", str(tmp_path / "r"), "--format", "markdown", "--out", str(ro / "b.md"))
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: cannot write --out {ro / 'b.md'}: ")


def test_evaluate_prints_its_summary_once(cli, tmp_path):
    code, err, out = cli(*[a for a in TINY_EVAL if a != "--no-leaderboard"])
    assert code == 0, err
    assert out.count("Best at each width") == 1 and out.count("full boards:") == 1


# ---- sparsebench tickets ------------------------------------------------------------------------------------

TINY_TICKETS = ["tickets", "--no-progress", "--no-leaderboard", "--seeds", "0", "--set", "train.steps=40",
                "--set", "train.warmup=4", "--set", "retrain.steps=20", "--set", "retrain.warmup=2",
                "--set", "detection_steps=[10]", "--set", "detectors=['magnitude']", "--set", "cells=[{}]"]


def tickets_written(tmp_path) -> bool:
    return (tmp_path / "cache" / "tickets").exists() or bool(list(tmp_path.glob("results/ticket/*.json")))


@pytest.mark.parametrize("sets,message", [
    (["--set", "retrain.batch_size=1000000000000"], "error: invalid retrain config: batch_size: 1000000000000 is "
                                                     "too large: this run would need about "),
    (["--set", "model_config.d_hidden=100000000000"], "error: invalid model config: d_hidden: 100000000000 is too "
                                                      "large: this run would need about "),
    (["--set", "eval_samples=1000000000000"], "error: invalid tickets config: eval_samples: 1000000000000 is too "
                                              "large: this run would need about "),
    (["--set", "rho=nan"], "error: invalid tickets config: rho: must be a finite number (got nan)"),
    (["--set", "retrain.lr=inf"], "error: invalid retrain config: lr: must be a finite number (got inf)"),
])
def test_tickets_refuses_what_cannot_run_before_any_work(cli, tmp_path, sets, message):
    code, err, _ = cli(*TINY_TICKETS, *sets)
    assert code == 2 and len(err) == 1 and err[0].startswith(message), err
    assert nothing_written(tmp_path) and not tickets_written(tmp_path)


def test_tickets_with_a_read_only_results_folder_or_cache_fails_before_any_training(cli, tmp_path):
    with read_only(tmp_path / "ro") as ro:
        code, err, _ = cli(*TINY_TICKETS, "--out", str(ro / "results"))
        code2, err2, _ = cli(*TINY_TICKETS, "--cache", str(ro))
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: cannot write to the results folder {ro}")
    assert code2 == 2 and len(err2) == 1 and err2[0].startswith(f"error: cannot write to the model cache {ro}")
    assert nothing_written(tmp_path) and not tickets_written(tmp_path)
