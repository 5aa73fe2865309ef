"""The leaderboard: loading (bad files skipped with a warning), board math, ranking, n/a, renderers, escaping."""

from __future__ import annotations

import copy
import csv
import html
import io
import json
import math
import re
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest

from sparsebench import records
from sparsebench.errors import UserError
from sparsebench.leaderboard import boards, explanations, frames, render, synthetic, validity
from sparsebench.leaderboard.build import build_boards
from sparsebench.records import (CheckpointInfo, ExplanationRecord, MechanismInfo, ModelInfo, ProbeResult,
                                 RecordWarning, Score, SolutionRecord, Solver, TaskInfo, record_id, to_json)
from sparsebench.stats import mean_ci

TASK = TaskInfo(**synthetic.TASK)
DIRS = {frames._task_cols(synthetic.solution_records(widths=(16,), seeds=(0,))[0])["task_key"]:
        dict(synthetic.DIRECTIONS)}


def pairs(recs):
    """Records as (path, record) pairs, as `records.load` returns them."""
    return [(Path(f"{r.id}.json"), r) for r in recs]


def sol_frame(recs):
    return frames.solutions_frame(pairs(recs))


def exp_frame(recs):
    return frames.explanations_frame(pairs(recs))


def sol_rec(solver, width, seed, kl, fp_rate=0.01, stype="construction", config=None, train=None, date="2026",
            oracle=False, width_fields=("d_model", "d_mlp")):
    rid = record_id({"solver": solver, "cfg": config, "train": train, "seed": seed, "width": width, "date": date})
    model = ModelInfo(name=solver, config=config or {}, width_fields=list(width_fields)) if stype == "trained" else None
    return SolutionRecord(
        schema_version=2, kind="solution", id=rid, task=TASK, width=width, seed=seed, eval=synthetic.EVAL,
        solver=Solver(type=stype, name=solver, config=config or {}, oracle=oracle), model=model, train=train,
        checkpoint=None, metrics={"kl": kl, "tv": kl / 2, "fp_rate": fp_rate, "topk_mass": 1 - kl / 10},
        provenance=synthetic.PROVENANCE.model_copy(update={"date": date}))


def exp_rec(mech, seed, probes, model_cfg=None, oracle=False, nulls=None):
    cfg = model_cfg or {"d_model": 64, "d_mlp": 64}
    rid = record_id({"mechanism": mech, "cfg": cfg, "seed": seed})
    return ExplanationRecord(
        schema_version=2, kind="explanation", id=rid, task=TASK, width=64, seed=seed, eval=synthetic.EVAL,
        model=ModelInfo(name="mlp1", config=cfg, width_fields=["d_model", "d_mlp"]), train=synthetic.TRAIN,
        checkpoint=CheckpointInfo(key="k", sha256="s"), mechanism=MechanismInfo(name=mech, config={}, oracle=oracle),
        nulls=nulls or {}, probes=probes, provenance=synthetic.PROVENANCE)


NA = ProbeResult(status="not_applicable", reason="predicts no hidden code")


# ---------------------------------------------------------------------------- loading

def test_load_skips_bad_files_with_a_warning_naming_each(tmp_path):
    good = synthetic.solution_records(widths=(16,), seeds=(0,))
    synthetic.write_records(tmp_path / "a", good)
    first = to_json(good[0])
    (tmp_path / "a" / "trunc.json").write_text(json.dumps(first)[:40])
    (tmp_path / "a" / "garbage.json").write_bytes(b"\xff\xfe not json")
    (tmp_path / "a" / "future.json").write_text(json.dumps({**first, "schema_version": 99}))
    (tmp_path / "a" / "list.json").write_text("[1, 2]")
    (tmp_path / "a" / "nokind.json").write_text(json.dumps({**first, "kind": "mystery"}))
    nested = tmp_path / "b" / "deep" / "er"
    synthetic.write_records(nested, synthetic.explanation_records(seeds=(0,)))
    (tmp_path / "a" / ".x.json.tmp-123").mkdir()
    (tmp_path / "a" / ".x.json.tmp-123" / "payload").write_text("{")  # an interrupted write: ignored silently
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        recs = records.load([tmp_path / "a", tmp_path / "b"])
    msgs = [str(w.message) for w in caught if issubclass(w.category, RecordWarning)]
    for name in ("trunc.json", "garbage.json", "future.json", "list.json", "nokind.json"):
        assert sum(name in m for m in msgs) == 1, (name, msgs)
    assert len(msgs) == 5
    assert any("schema_version 99" in m for m in msgs)
    assert len(recs) == len(good) + len(synthetic.explanation_records(seeds=(0,)))


def test_load_merges_folders_and_counts_a_copied_record_once(tmp_path):
    recs = synthetic.solution_records(widths=(16, 32), seeds=(0,))
    synthetic.write_records(tmp_path / "m1", recs)
    synthetic.write_records(tmp_path / "m2", recs[:2])
    assert len(records.load([tmp_path / "m1", tmp_path / "m2"])) == len(recs)


def test_missing_results_path_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        build_boards([tmp_path / "nope"])


# ---------------------------------------------------------------------------- solutions board

def test_solutions_board_mean_spread_n_and_best_at_width():
    recs = [sol_rec("bloom", 16, s, kl) for s, kl in enumerate([1.0, 2.0, 3.0])]
    recs += [sol_rec("jl", 16, s, kl) for s, kl in enumerate([1.5, 1.7])]
    recs += [sol_rec("bloom", 32, 0, 0.5), sol_rec("jl", 32, 0, 0.9)]
    b = boards.solutions_board(sol_frame(recs), DIRS)
    row = b[(b.label == "bloom") & (b.width == 16)].iloc[0]
    assert row.kl_mean == pytest.approx(2.0)
    assert row.kl_std == pytest.approx(1.0)  # sample std (ddof=1) of 1, 2, 3
    assert row.kl_n == 3 and row.n_seeds == 3
    jl16 = b[(b.label == "jl") & (b.width == 16)].iloc[0]
    assert jl16.kl_mean == pytest.approx(1.6) and jl16.kl_best and not row.kl_best
    # higher is better for topk_mass: bloom 16 has 1 - 0.2 = 0.8 mean vs jl 0.84
    assert jl16.topk_mass_best and not row.topk_mass_best
    one = b[(b.label == "bloom") & (b.width == 32)].iloc[0]
    assert one.n_seeds == 1 and math.isnan(one.kl_std) and one.kl_best
    best = boards.best_at_width(b)
    got = {(r.width, r.metric): r.best for r in best.itertuples()}
    assert got[(16, "kl")] == "jl" and got[(32, "kl")] == "bloom"


def test_ties_are_all_flagged_best():
    b = boards.solutions_board(sol_frame([sol_rec("a", 8, 0, 1.0), sol_rec("b", 8, 0, 1.0)]), DIRS)
    assert b.kl_best.all()
    assert boards.best_at_width(b, ["kl"]).iloc[0].best == "a = b"


def test_width_fields_from_the_record_form_one_series():
    recs = []
    for w in (16, 32, 64):
        for d_mlp in (w, 128):  # d_mlp follows the width, or is fixed at 128 (then not a width field)
            cfg = {"d_model": w, "d_mlp": d_mlp, "n_layers": 1}
            fields = ("d_model", "d_mlp") if d_mlp == w else ("d_model",)
            recs.append(sol_rec("mlp1", w, 0, 1.0 / d_mlp, stype="trained", config=cfg, train={"lr": 0.01},
                                width_fields=fields))
    recs.append(sol_rec("mlp1", 16, 0, 0.3, stype="trained", config={"d_model": 16, "d_mlp": 16, "n_layers": 2},
                        train={"lr": 0.01}))
    b = boards.solutions_board(sol_frame(recs), DIRS)
    labels = set(b.label)
    assert "mlp1(d_mlp=w, n_layers=1)" in labels and "mlp1(d_mlp=128, n_layers=1)" in labels
    assert b.groupby("label").width.nunique().max() == 3


def test_same_seed_twice_keeps_newest_with_warning():
    recs = [sol_rec("bloom", 16, 0, 1.0, date="2026-01-01"), sol_rec("bloom", 16, 0, 2.0, date="2026-02-01")]
    assert recs[0].id != recs[1].id
    with pytest.warns(RecordWarning, match="newest"):
        b = boards.solutions_board(sol_frame(recs), DIRS)
    assert b.iloc[0].kl_mean == 2.0 and b.iloc[0].n_seeds == 1


# ---------------------------------------------------------------------------- explanations board

def scored(value, margin, direction="higher", controls=None, nulls=None, margin_ci=None, rival=None):
    return Score(value=value, direction=direction, controls=controls or {}, nulls=nulls or {}, margin=margin,
                 margin_ci=margin_ci, rival=rival)


def probe(main, score, ranked=True, extra=None):
    return ProbeResult(status="ok", ranked=ranked, main=main, scores={main: score, **(extra or {})})


def _exp_board(valid=None):
    """bloom explains (margins well above 0), jl fails one probe, noise is at its controls; jl has no hidden code."""
    recs = []
    for seed, (v, m) in enumerate([(0.9, 0.5), (0.8, 0.45), (1.0, 0.55)]):
        recs.append(exp_rec("bloom", seed, {
            "hidden-code": probe("mcc", scored(v, m, controls={"random-code": v - m}),
                                 extra={"recall": Score(value=0.7, direction="higher")}),
            "patch": probe("loss_recovered", scored(1.0, 0.8 + 0.01 * seed, controls={"resampled": 0.2})),
            "bimodality": probe("r2", scored(0.97, 0.0), ranked=False)}))
        recs.append(exp_rec("jl", seed, {"hidden-code": NA,
                                         "patch": probe("loss_recovered", scored(0.4, -0.1 - 0.01 * seed)),
                                         "bimodality": NA}))
        recs.append(exp_rec("noise", seed, {
            "hidden-code": probe("mcc", scored(0.05 * (-1) ** seed, 0.02 * (-1) ** seed)),
            "patch": probe("loss_recovered", scored(0.2 + 0.05 * (-1) ** seed, 0.01 * (-1) ** seed)),
            "bimodality": NA}))
        recs.append(exp_rec("oracle", seed, {"patch": probe("loss_recovered", scored(1.0, 0.9))}, oracle=True))
    frame = exp_frame(recs)
    return explanations.build(frame, valid or {})


def test_explanations_aggregate_over_seeds_with_intervals():
    b = _exp_board()["explanations"]
    r = b[(b.mechanism == "bloom") & (b.probe == "hidden-code") & (b.score == "mcc")].iloc[0]
    assert r.value_mean == pytest.approx(0.9) and r.n == 3
    m, lo, hi = mean_ci([0.5, 0.45, 0.55])
    assert (r.margin_mean, r.margin_lo, r.margin_hi) == pytest.approx((m, lo, hi))
    assert r.outcome == "explains" and r.counted and r["control_random-code_mean"] == pytest.approx(0.4)
    noise = b[(b.mechanism == "noise") & (b.probe == "patch") & b.is_main].iloc[0]
    assert noise.outcome == "undecided"  # its margin's interval contains 0
    jl = b[(b.mechanism == "jl") & (b.probe == "patch") & b.is_main].iloc[0]
    assert jl.outcome == "fails"
    diag = b[(b.mechanism == "bloom") & (b.probe == "bimodality")].iloc[0]
    assert not diag.ranked and not diag.counted


def test_not_applicable_is_never_a_number():
    b = _exp_board()["explanations"]
    na = b[(b.mechanism == "jl") & (b.probe == "hidden-code")]
    assert len(na) == 1
    r = na.iloc[0]
    assert r.status == "n/a" and r.n == 0 and "hidden code" in r.reason and r.outcome == "n/a"
    assert math.isnan(r.get("value_mean", math.nan)) and math.isnan(r.get("margin_mean", math.nan))
    tables = render.explanation_tables(_exp_board() | {"validity": None})
    md = render.to_markdown(tables)
    line = next(ln for ln in md.splitlines() if ln.startswith("| jl | hidden-code"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4:6] == ["n/a", "n/a"]  # value, margin
    assert not any(re.fullmatch(r"-?\d+(\.\d+)?(e[-+]?\d+)?( \[.*)?", c) for c in cells[4:6])


def test_verdicts_and_the_copeland_ranking():
    b = _exp_board()
    rk = b["ranking"].set_index("mechanism")
    assert rk.loc["bloom", "verdict"] == "explains" and rk.loc["jl", "verdict"] == "no"
    assert rk.loc["noise", "verdict"] == "no"
    # bloom beats jl and noise on patch (paired intervals above 0); jl and noise have only patch in common:
    # noise's values 0.25/0.15/0.25 against jl's 0.4: jl wins that pair.
    pw = b["pairwise"]
    bj = pw[(pw.a == "bloom") & (pw.b == "jl")].iloc[0]
    assert bj.winner == "a" and bj["diff"] == pytest.approx(0.6)
    assert (rk.loc["bloom", "won"], rk.loc["bloom", "lost"]) == (2, 0)
    assert rk.loc["bloom", "rank"] == 1 and rk.loc["jl", "rank"] == 2 and rk.loc["noise", "rank"] == 3
    assert rk.loc["oracle", "oracle"] and math.isnan(rk.loc["oracle", "rank"])  # shown, never ranked


def test_equal_records_are_ties_not_wins():
    recs = [exp_rec(m, seed, {"p": probe("s", scored(0.5 + 0.01 * seed, 0.1 + 0.01 * seed))})
            for m in ("a", "b") for seed in range(3)]
    b = explanations.build(exp_frame(recs), {})
    assert set(b["pairwise"].winner) == {"tie"}
    assert list(b["ranking"]["rank"]) == [1.0, 1.0]


def test_a_probe_invalid_on_constructions_is_not_counted():
    b = _exp_board(valid={"hidden-code": False, "patch": True})
    rk = b["ranking"].set_index("mechanism")
    assert "hidden-code" not in rk.loc["bloom", "outcomes"] and "patch: explains" in rk.loc["bloom", "outcomes"]
    hc = b["explanations"]
    assert not hc[(hc.probe == "hidden-code") & (hc.mechanism == "bloom") & hc.is_main].iloc[0].counted
    assert rk.loc["bloom", "unvalidated"] == ""
    assert _exp_board()["ranking"].set_index("mechanism").loc["bloom", "unvalidated"] == "hidden-code, patch"


def barred(value, margin, bar, direction="higher"):
    """A score with a chunk interval, its margin well away from 0, and the probe's bar."""
    return Score(value=value, ci=(value - 0.01, value + 0.01), direction=direction, margin=margin,
                 margin_ci=(margin - 0.02, margin + 0.02), sufficient=bar)


def test_beating_every_rival_below_the_bar_is_not_explaining():
    """The bar beside the margin (the default suite's numbers): JL's linear readout recovers 43% of a trained
    mlp1's loss and beats its own degraded copies on patch and candidates; it explains nothing."""
    recs = []
    for seed, d in enumerate((-0.01, 0.0, 0.01)):
        recs.append(exp_rec("jl", seed, {"patch": probe("loss_recovered", barred(0.43 + d, 0.49 + d, 0.8)),
                                         "candidates": probe("fp_mcc", barred(0.14 + d, 0.06 + d, 0.8))}))
        recs.append(exp_rec("bloom", seed, {"patch": probe("loss_recovered", barred(1.0, 1.46 + d, 0.8)),
                                            "candidates": probe("fp_mcc", barred(0.71 + d, 0.67 + d, 0.8))}))
        # exactly at the bar on every seed (interval [0.8, 0.8]): the bar is met
        recs.append(exp_rec("at-bar", seed, {"patch": probe("loss_recovered", barred(0.8, 0.3 + d, 0.8))}))
        # mean at the bar, interval across it: not shown to reach it
        recs.append(exp_rec("across", seed, {"patch": probe("loss_recovered", barred(0.8 + 2 * d, 0.3 + d, 0.8))}))
        # below the bar and below a rival: fails, as before
        recs.append(exp_rec("loser", seed, {"patch": probe("loss_recovered", barred(0.2 + d, -0.3 + d, 0.8))}))
    b = explanations.build(exp_frame(recs), {})
    board = b["explanations"].set_index(["mechanism", "probe"])
    outcome = board["outcome"].to_dict()
    assert outcome[("jl", "patch")] == "insufficient" and board.loc[("jl", "patch"), "margin_lo"] > 0
    assert outcome[("jl", "candidates")] == "insufficient"
    assert board.loc[("jl", "patch"), "sufficient"] == 0.8
    assert outcome[("bloom", "patch")] == "explains" and outcome[("bloom", "candidates")] == "insufficient"
    assert outcome[("at-bar", "patch")] == "explains"
    assert outcome[("across", "patch")] == "insufficient"
    assert outcome[("loser", "patch")] == "fails"
    rk = b["ranking"].set_index("mechanism")
    assert rk.loc["jl", "verdict"] == "no"
    assert rk.loc["jl", "outcomes"] == "candidates: insufficient, patch: insufficient"
    assert rk.loc["bloom", "verdict"] == "partly" and rk.loc["at-bar", "verdict"] == "explains"
    assert rk.loc["across", "verdict"] == "no" and rk.loc["loser", "verdict"] == "no"
    # the pairwise comparisons and ranks do not read the bar: bloom still beats jl on both probes
    pw = b["pairwise"]
    assert set(pw[(pw.a == "bloom") & (pw.b == "jl")].winner) == {"a"} and rk.loc["bloom", "rank"] == 1
    md = render.to_markdown(render.explanation_tables(b | {"validity": None}))
    line = next(ln for ln in md.splitlines() if ln.startswith("| jl | patch"))
    assert "~ insufficient (bar ≥ 0.8)" in line
    assert "insufficient = beats every rival but does not reach the bar" in md


def test_a_bar_is_reached_by_the_whole_interval_turned_by_direction():
    assert explanations.reaches(0.8, 0.9, 0.8, "higher") and not explanations.reaches(0.79, 0.9, 0.8, "higher")
    assert explanations.reaches(0.01, 0.1, 0.1, "lower") and not explanations.reaches(0.01, 0.11, 0.1, "lower")
    assert explanations.reaches(-0.05, 0.04, 0.05, "zero") and not explanations.reaches(-0.06, 0.0, 0.05, "zero")
    assert not explanations.reaches(math.nan, math.nan, 0.0, "higher")  # no interval: not shown to reach it


def test_a_record_without_a_bar_is_judged_by_its_margin_alone():
    recs = [exp_rec("old", seed, {"patch": probe("loss_recovered", barred(0.4, 0.3, None))}) for seed in range(3)]
    b = explanations.build(exp_frame(recs), {})
    r = b["explanations"].iloc[0]
    assert math.isnan(r.sufficient) and r.outcome == "explains"
    # seeds that disagree on the bar: the strictest counts
    recs += [exp_rec("mixed", seed, {"patch": probe("loss_recovered", barred(0.85, 0.3, bar))})
             for seed, bar in enumerate((0.8, 0.9, None))]
    board = explanations.build(exp_frame(recs), {})["explanations"].set_index("mechanism")
    assert board.loc["mixed", "sufficient"] == 0.9 and board.loc["mixed", "outcome"] == "insufficient"


def test_validity_auroc_is_computed_from_construction_records():
    def built(mech, truth, seed, value, controls):
        rid = record_id({"m": mech, "t": truth, "s": seed})
        return ExplanationRecord(
            schema_version=2, kind="explanation", id=rid, task=TASK, width=32, seed=seed, eval=synthetic.EVAL,
            subject="construction", truth=truth, model=ModelInfo(name="mlp1", config={}, width_fields=[]),
            train=None, checkpoint=None, mechanism=MechanismInfo(name=mech, config={}),
            probes={"good": probe("s", scored(value, 0.1, controls=controls)),
                    "blind": probe("s", scored(0.5, 0.0, controls={"c": 0.5}))},
            provenance=synthetic.PROVENANCE)

    recs = [built("bloom", "bloom", 0, 0.9, {"c": 0.1}), built("jl", "bloom", 0, 0.3, {"c": 0.95}),
            built("jl", "jl", 0, 0.8, {"c": 0.2}), built("bloom", "jl", 0, 0.1, {})]
    v = validity.validity_board(exp_frame(recs)).set_index("probe")
    # On bloom's construction the right score 0.9 meets wrong 0.3, 0.1 (controls) and 0.95 (jl's control): 2 of 3;
    # on jl's, 0.8 meets 0.1, 0.2: 2 of 2. AUROC = 4/5.
    assert v.loc["good", "pairs"] == 5 and v.loc["good", "auroc"] == pytest.approx(0.8) and not v.loc["good", "valid"]
    assert v.loc["blind", "auroc"] == pytest.approx(0.5)  # ties count half: it cannot tell right from wrong
    own = validity.own_construction(exp_frame(recs)).set_index(["truth", "probe"])
    assert own.loc[("bloom", "good"), "beats_all"] and not own.loc[("bloom", "blind"), "beats_all"]


# ---------------------------------------------------------------------------- renderers

def _all_boards():
    with tempfile.TemporaryDirectory() as tmp:
        synthetic.write_records(tmp, synthetic.demo_records(evil=True))
        return build_boards([Path(tmp)])


def _parse_markdown(md: str) -> list[list[list[str]]]:
    tables, cur = [], None
    for ln in md.splitlines():
        if ln.startswith("|"):
            cells = [html.unescape(c.strip().strip("*").replace("\\|", "|")) for c in
                     re.split(r"(?<!\\)\|", ln.strip()[1:-1])]
            if cur is None:
                cur = []
                tables.append(cur)
            if not set("".join(cells)) <= set("-"):
                cur.append(cells)
        else:
            cur = None
    return tables


def test_markdown_parses_back():
    b = _all_boards()
    sol = b["solutions"]
    tables = render.board_tables(b)
    parsed = _parse_markdown(render.to_markdown(tables))
    assert len(parsed) == len(tables)
    for t, p in zip(tables, parsed):
        assert p[0] == t.columns
        assert len(p) - 1 == len(t.rows)
        assert all(len(r) == len(t.columns) for r in p)
        for row_cells, row in zip(p[1:], t.rows):
            assert [c.rstrip(" ★") for c in row_cells] == [c.text.rstrip(" ★") for c in row]
    first = tables[0]
    kl_col = next(i for i, c in enumerate(first.columns) if c.startswith("kl"))
    mean = float(parsed[0][1][kl_col].split(" ± ")[0])
    assert mean == pytest.approx(sol.iloc[0].kl_mean, rel=1e-3)


def test_pipes_in_names_are_escaped_in_markdown():
    t = render.Table("solutions", "a|b", ["x|y", "z"], [[render.Cell("1|2"), render.Cell("3")]])
    parsed = _parse_markdown(render.to_markdown([t]))
    assert parsed == [[["x|y", "z"], ["1|2", "3"]]]


def test_csv_parses_back_to_the_numbers():
    import pandas as pd

    b = _all_boards()
    sol = b["solutions"]
    text = render.to_csv(b)
    df = pd.read_csv(io.StringIO(text))
    assert {"solutions", "explanations", "ranking", "validity"} <= set(df.board)
    s = df[df.board == "solutions"].reset_index(drop=True)
    assert len(s) == len(sol)
    np.testing.assert_allclose(s.kl_mean.to_numpy(), sol.kl_mean.to_numpy(), rtol=1e-12)
    assert "<script>alert(1)</script>" in set(s.task)  # CSV holds the raw name (it is data, not markup)
    rows = list(csv.reader(io.StringIO(text)))
    assert all(len(r) == len(rows[0]) for r in rows)


def test_html_escapes_every_record_string():
    page = render.to_html(render.board_tables(_all_boards()), [render.Image("cap <b>x</b>", b"\x89PNG")])
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert page.count("<script>") == 1  # only the sorter
    assert "<b>x</b>" not in page
    assert "http://" not in page and "https://" not in page  # no CDN: self-contained
    assert 'src="data:image/png;base64,' in page


def test_terminal_renders_every_table():
    tables = render.board_tables(_all_boards())
    text = render.to_terminal(tables, width=250)
    for t in tables:
        assert t.title[:40] in text
    assert "n/a" in text and "★" in text


def test_terminal_text_is_returned_not_displayed_inside_a_notebook(monkeypatch, capsys):
    import rich.console

    monkeypatch.setattr(rich.console, "_is_jupyter", lambda: True)  # what rich sees in a Jupyter kernel
    tables = render.board_tables(_all_boards())
    text = render.to_terminal(tables, width=250)
    assert tables[0].title[:40] in text
    assert capsys.readouterr().out == ""


def test_unknown_format_is_one_line_user_error(tmp_path):
    from sparsebench.cli import leaderboard

    with pytest.raises(UserError, match="unknown --format 'pdf'"):
        leaderboard([tmp_path], format="pdf", out=None, min_auroc=0.9)


def test_cli_writes_each_format_atomically(tmp_path, capsys):
    from sparsebench.cli import leaderboard

    synthetic.write_records(tmp_path / "results", synthetic.demo_records(evil=False))
    for fmt, name in (("markdown", "b.md"), ("csv", "b.csv"), ("html", "b.html"), ("terminal", "b.txt")):
        leaderboard([tmp_path / "results"], format=fmt, out=tmp_path / name, min_auroc=0.9)
        assert (tmp_path / name).stat().st_size > 100
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    leaderboard([tmp_path / "results"], format="markdown", out=None, min_auroc=0.9)
    assert "| width | solver |" in capsys.readouterr().out


# ---------------------------------------------------------------------------- fits

def test_fit_scaling_tells_exponential_from_power_law():
    from sparsebench.leaderboard.figures import fit_scaling

    w = np.array([16, 24, 32, 48, 64, 96])
    f = fit_scaling(w, 3.0 * np.exp(-0.1 * w))
    assert f["better"] == "exp" and f["exp"][1] == pytest.approx(-0.1) and f["exp"][2] == pytest.approx(1.0)
    g = fit_scaling(w, 5.0 * w ** -1.5)
    assert g["better"] == "power" and g["power"][1] == pytest.approx(-1.5)
    assert fit_scaling([16, 32], [1.0, 0.5]) is None
    h = fit_scaling(w, np.r_[0.0, np.exp(-0.1 * w[1:])])
    assert h["dropped"] == 1 and h["n"] == 5


def test_scaling_figure_draws_with_hostile_names():
    from sparsebench.leaderboard import figures

    recs = synthetic.solution_records(task={**synthetic.TASK, "name": "$x$ <b> $\\frac{"})
    b = boards.solutions_board(sol_frame(recs), frames.metric_directions(pairs(recs)))
    fig = figures.scaling_figure(b, b.task_key.iloc[0])
    png = figures.to_png(fig)
    assert png[:4] == b"\x89PNG"


def test_figures_leave_the_matplotlib_backend_alone():
    """A notebook's inline backend must survive importing the figures and drawing one (no pyplot, no use())."""
    code = ("import matplotlib; matplotlib.use('svg'); import sys; import numpy as np; "
            "from sparsebench.leaderboard import figures; "
            "figures.to_png(figures.topk_mass_figure(np.random.rand(100), 5)); "
            "print(matplotlib.get_backend(), 'matplotlib.pyplot' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["svg", "False"]


def test_the_page_opens_on_the_widest_sweep():
    from sparsebench.leaderboard.build import scaling_images

    recs = synthetic.solution_records(widths=(8, 16, 24), seeds=(0,), task={**synthetic.TASK, "name": "narrow"}) + \
        synthetic.solution_records(seeds=(0,))
    b = boards.solutions_board(sol_frame(recs), frames.metric_directions(pairs(recs)))
    assert [i.facets["task"][0].split("(")[0] for i in scaling_images(b)] == ["topk-uniform", "narrow"]


def test_copy_of_records_not_mutated():
    recs = synthetic.explanation_records(seeds=(0,))
    before = copy.deepcopy(recs)
    explanations.build(exp_frame(recs), {})
    assert recs == before
