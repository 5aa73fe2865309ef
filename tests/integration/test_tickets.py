"""The ticket pipeline end to end: a tiny suite through the CLI, bad input, a plugin detector ranked on the
board, and the built-in `tickets` suite, whose measured claims are asserted as they came out (docs/science.md §7)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sparsebench import records, registry
from sparsebench.context import RunContext
from sparsebench.records import TicketRecord
from sparsebench.tickets.config import load_ticket_suite, suite_from_dict
from sparsebench.tickets.pipeline import run_tickets

TINY = """
kind = "tickets"
name = "tiny"
seeds = [0, 1]
detection_steps = [20]
eval_samples = 1024
[train]
steps = 60
warmup = 5
[retrain]
steps = 40
warmup = 4
[[cells]]
[[cells]]
width = 20
sparsities = [0.5]
init_modes = ["rewind-0"]
detectors = ["random", "dense"]
"""


def cli(*args: str, cache: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPARSEBENCH_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "sparsebench", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def tickets_in(folder: Path) -> list[TicketRecord]:
    return [r for _, r in records.load([folder]) if isinstance(r, TicketRecord)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny.toml").write_text(TINY)
    r = cli("tickets", "tiny.toml", "--out", "res", "--no-progress", cache=root / "cache", cwd=root)
    assert r.returncode == 0, r.stderr
    return root, r


def test_the_cli_writes_one_valid_record_per_variant_and_resumes(tiny):
    root, first = tiny
    recs = tickets_in(root / "res")
    n_det = len(registry.detectors.names())
    # width 16: every detector, 3 init modes (dynamic and combined apply at step 20), dense at sparsity 0; width 20: 2
    assert len(recs) == 2 * (3 * n_det + 2) and f"{len(recs)} record(s) written" in first.stdout
    assert cli("validate", "res", cache=root / "cache", cwd=root).returncode == 0
    again = cli("tickets", "tiny.toml", "--out", "res", "--no-progress", "--no-leaderboard", cache=root / "cache",
                cwd=root)
    assert again.returncode == 0 and "0 record(s) written" in again.stdout
    for r in recs:
        assert r.detector.kind in ("feature", "weight", "control", "reference")
        density = r.detector_info["density"]
        assert density == (1.0 if r.detector.name == "dense" else pytest.approx(1 - r.sparsity, abs=0.01))


def test_the_boards_show_tickets_in_every_format(tiny):
    root, first = tiny
    assert "Claims of the second seed" in first.stdout and "Tickets ranking" in first.stdout
    md = (root / "res" / "leaderboard.md").read_text()
    assert "## Tickets ranking" in md and "## Paired comparisons" in md and "| ref | final-magnitude |" in md
    html = (root / "res" / "leaderboard.html").read_text()
    assert "Tickets ranking" in html and "family recall against same-site recall" in html
    csv = cli("leaderboard", "res", "--format", "csv", cache=root / "cache", cwd=root).stdout
    assert "ticket_pairs" in csv.splitlines()[-1] or "ticket_pairs" in csv
    term = cli("leaderboard", "res", cache=root / "cache", cwd=root)
    assert term.returncode == 0 and "Tickets ranking" in term.stdout and "Paired comparisons" not in term.stdout


@pytest.mark.parametrize("sets,message", [
    (["--set", "detectors=['magnitud']"], "error: unknown detector 'magnitud'; did you mean 'magnitude'?"),
    (["--set", "detection_steps=[100]"], "error: invalid tickets config: detection_steps: step 100 is not before "
                                          "the end of dense training (train.steps = 60)"),
    (["--set", "sparsities=[1.0]"], "error: invalid tickets.cells config: sparsities: must be in (0, 1) (got [1.0])"),
    (["--set", "model=mlp1"], "error: model 'mlp1' cannot train on task 'clause-dnf': it understands task families "
                              "topk, not 'clauses'"),
    (["--set", "quota=0"], "error: invalid tickets config: quota: must be at least 1 (got 0)"),
])
def test_bad_input_is_one_error_before_any_work(tmp_path, sets, message):
    from sparsebench.errors import UserError

    (tmp_path / "tiny.toml").write_text(TINY)
    with pytest.raises(UserError) as e:
        suite = load_ticket_suite(str(tmp_path / "tiny.toml"), [sets[1]])
        run_tickets(suite, tmp_path / "res", RunContext.create("cpu", progress=False, cache=tmp_path / "cache"))
    assert f"error: {e.value}" == message
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()


def test_the_cli_says_it_in_one_line_with_exit_2(tmp_path):
    (tmp_path / "tiny.toml").write_text(TINY)
    r = cli("tickets", "tiny.toml", "--out", "res", "--set", "quota=0", cache=tmp_path / "cache", cwd=tmp_path)
    assert r.returncode == 2 and [ln for ln in r.stderr.splitlines() if ln.strip()] == [
        "error: invalid tickets config: quota: must be at least 1 (got 0)"]
    assert not (tmp_path / "res").exists() and not (tmp_path / "cache").exists()


def test_records_from_two_workers_equal_the_one_process_ones(tiny, tmp_path):
    root, _ = tiny
    suite = suite_from_dict(_tiny_dict())
    run_tickets(suite, tmp_path, RunContext.create("cpu", progress=False, workers=2, cache=root / "cache2"))
    one = {r.id: r for r in tickets_in(root / "res")}
    two = {r.id: r for r in tickets_in(tmp_path)}
    assert set(one) == set(two)
    for i, r in one.items():
        assert (r.metrics, r.tickets, r.sites, r.detector_info) == (two[i].metrics, two[i].tickets, two[i].sites,
                                                                   two[i].detector_info)


def test_suites_of_the_other_kind_are_refused(tmp_path):
    r = cli("evaluate", "tickets", cache=tmp_path, cwd=tmp_path)
    assert r.returncode == 2 and "is a tickets suite: run it with `sparsebench tickets tickets`" in r.stderr
    r = cli("tickets", "default", cache=tmp_path, cwd=tmp_path)
    assert r.returncode == 2 and "is not a tickets suite" in r.stderr


def test_a_plugin_detector_is_ranked_with_the_built_ins(tmp_path, monkeypatch):
    import torch

    from sparsebench.leaderboard.build import build_boards
    from sparsebench.models.mlp2 import W1_KEY
    from sparsebench.tickets.detectors import Detector, Scores

    class LastRow(Detector):  # keeps the coordinates of the last rows first
        kind = "weight"

        def scores(self, inp):
            W1 = inp.at_step[W1_KEY]
            return Scores("weights", torch.arange(W1.numel(), dtype=torch.float32).view_as(W1))

    monkeypatch.setitem(registry.detectors._load(), "last-row", registry.Entry("last-row", LastRow, "test", "0"))
    suite = suite_from_dict({**_tiny_dict(), "detectors": ["last-row", "magnitude", "final-magnitude"], "cells": [{}]})
    run_tickets(suite, tmp_path, RunContext.create("cpu", progress=False))
    board = build_boards([tmp_path])["tickets"]
    mine = board[board["detector"] == "last-row"]
    assert len(mine) == 3 and mine["rank"].notna().all(), "a plugin's detector is ranked like a built-in"
    assert board[board["detector"] == "final-magnitude"]["rank"].isna().all(), "a reference is never ranked"


def test_a_damaged_snapshot_entry_is_moved_aside_and_retrained(tmp_path):
    from sparsebench.checkpoints import CacheWarning

    suite = suite_from_dict({**_tiny_dict(), "seeds": [0], "detectors": ["magnitude"], "cells": [{}]})
    ctx = RunContext.create("cpu", progress=False, cache=tmp_path / "cache")
    run_tickets(suite, tmp_path / "a", ctx)
    (entry,) = (tmp_path / "cache" / "tickets").iterdir()
    weights = entry / "snapshots.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])  # cut short, as by a full disk
    with pytest.warns(CacheWarning, match="damaged cache entry .*snapshots.safetensors cannot be read"):
        run_tickets(suite, tmp_path / "b", ctx)
    assert [p.name for p in (tmp_path / "cache" / "tickets").iterdir() if p.name.startswith(".damaged-")]
    a, b = ({r.id: r.metrics for r in tickets_in(tmp_path / name)} for name in "ab")
    assert a == b and len(a) == 3, "retrained into the same run"


@pytest.mark.parametrize("where", ["dense", "retrain"])
def test_a_run_that_diverges_is_an_error_and_is_never_cached(tmp_path, monkeypatch, where):
    import math

    from sparsebench.errors import UserError
    from sparsebench.tickets import dense, pipeline

    if where == "dense":
        real = dense.optimise
        monkeypatch.setattr(dense, "optimise", lambda *a, **k: ([math.nan] * len(a[3]), real(*a, **k)[1]))
    else:
        real = pipeline.train_stacked
        monkeypatch.setattr(pipeline, "train_stacked", lambda *a, **k: real(*a, **k) * math.nan)
    suite = suite_from_dict({**_tiny_dict(), "seeds": [0], "detectors": ["magnitude"], "cells": [{}]})
    with pytest.raises(UserError, match=f"{'training' if where == 'dense' else 'retraining'} diverged"):
        run_tickets(suite, tmp_path / "res", RunContext.create("cpu", progress=False, cache=tmp_path / "cache"))
    assert not list((tmp_path / "res").glob("ticket/*.json"))
    assert (where == "retrain") == any((tmp_path / "cache" / "tickets").glob("*")), "a diverged run is not cached"


def _tiny_dict():
    import tomllib

    return tomllib.loads(TINY)


# ---- the built-in suite ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    """The built-in `tickets` suite, run once in two worker processes (about 2.5 CPU minutes; an empty cache)."""
    out = tmp_path_factory.mktemp("tickets")
    counts = run_tickets(load_ticket_suite("tickets"), out, RunContext.create("cpu", progress=False, workers=2))
    return out, counts, tickets_in(out)


def test_builtin_suite_is_complete(builtin):
    out, counts, recs = builtin
    assert counts["written"] == len(recs) == counts["variants"]
    assert {r.seed for r in recs} == set(range(8))
    assert {r.width for r in recs} == {16, 32}
    assert {r.detection_step for r in recs} == {50, 150, 500, 1500}


def test_builtin_dense_reference_reproduces_the_dense_model(builtin):
    _, _, recs = builtin
    dense = [r for r in recs if r.detector.name == "dense" and r.init_mode == "rewind-0"]
    assert dense
    for r in dense:  # retrained from θ0 on the same data stream with the same recipe: the dense model itself
        assert r.tickets["same_site_recall"] == 1.0 and r.tickets["family_recall"] == 1.0
        assert r.metrics["bal_acc"] == pytest.approx(r.dense["bal_acc"], abs=1e-6)
        assert r.tickets["exact_codes"] == r.dense["exact_codes"]


def test_builtin_claims_come_out_as_measured(builtin):
    """The outcomes reported in docs/science.md §7.6 (asserted as measured, whichever way they came out)."""
    from sparsebench.tickets.claims import evaluate_claims

    _, _, recs = builtin
    claims = {c.number: c for c in evaluate_claims(recs)}
    status = {n: c.status for n, c in claims.items()}
    assert status == EXPECTED_STATUS, json.dumps({n: c.summary for n, c in claims.items()}, indent=1)
    # Claim 1 holds in every detector × init group; the gap is large.
    assert claims[1].numbers["above"] == len(claims[1].numbers["groups"]) == 33
    # Claim 2: feature-static wins on balanced accuracy against every weight-space detector, not on exact codes.
    acc = claims[2].numbers["bal_acc"]
    assert acc["feature"] == "feature-static" and all(d["lo"] > 0 for d in acc["against"].values())
    codes = claims[2].numbers["exact_codes"]["against"]
    assert codes["snip"]["lo"] <= 0 < codes["magnitude"]["lo"]
    # Claim 6: the random 32 x 16 at 50% beats the dense 16 x 16 in every seed.
    assert claims[6].numbers["bal_acc"]["wins"] == 8 and claims[6].numbers["bal_acc"]["lo"] > 0


EXPECTED_STATUS = {1: "reproduced", 2: "partly reproduced", 3: "partly reproduced", 4: "partly reproduced",
                   5: "not reproduced", 6: "reproduced"}
