"""The leaderboard: loading (bad files skipped with a warning), board math, ranking, n/a, renderers, escaping."""

from __future__ import annotations

import copy
import csv
import html
import io
import json
import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from sparsebench import records
from sparsebench.errors import UserError
from sparsebench.leaderboard import boards, frames, render, synthetic
from sparsebench.leaderboard.build import build_boards
from sparsebench.records import (CheckpointInfo, ExplanationRecord, MechanismInfo, ModelInfo, ProbeResult,
                                 RecordWarning, Score, SolutionRecord, Solver, TaskInfo, record_id, to_json)

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


def ok(main, value, nulls, direction="higher", extra=None, own=None):
    scores = {main: Score(value=value, direction=direction, nulls=nulls, own_nulls=own or {}), **(extra or {})}
    return ProbeResult(status="ok", main=main, scores=scores)


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
    assert len(recs) == len(good) + 2  # 2 mechanisms x 1 seed


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

def _exp_board():
    recs = []
    for seed, (f1, n1, n2) in enumerate([(0.9, 0.4, 0.5), (0.8, 0.3, 0.6), (1.0, 0.5, 0.4)]):
        recs.append(exp_rec("bloom", seed, {
            "hidden-code": ok("f1", f1, {"untrained": n1, "shuffled": n2},
                              extra={"recall": Score(value=0.7, direction="higher")}),
            "patch": ok("kl", 0.2, {"untrained": 1.0}, direction="lower")}))
        recs.append(exp_rec("jl", seed, {"hidden-code": NA, "patch": ok("kl", 0.5, {"untrained": 1.0},
                                                                        direction="lower")}))
        recs.append(exp_rec("noise", seed, {"hidden-code": ok("f1", 0.95, {"untrained": 0.9}),
                                            "patch": ok("kl", 0.1, {"untrained": 0.15}, direction="lower")}))
    return boards.explanations_board(exp_frame(recs))


def test_explanations_aggregate_over_seeds_beside_nulls():
    b = _exp_board()
    r = b[(b.mechanism == "bloom") & (b.probe == "hidden-code") & (b.score == "f1")].iloc[0]
    assert r.value_mean == pytest.approx(0.9) and r.value_std == pytest.approx(0.1) and r.n == 3
    assert r.null_untrained_mean == pytest.approx(0.4) and r.null_shuffled_mean == pytest.approx(0.5)
    # margin per seed vs the strongest null: 0.9-0.5, 0.8-0.6, 1.0-0.5
    assert r.margin_mean == pytest.approx(np.mean([0.4, 0.2, 0.5]))
    assert r.is_main and not b[(b.mechanism == "bloom") & (b.score == "recall")].iloc[0].is_main
    p = b[(b.mechanism == "bloom") & (b.probe == "patch")].iloc[0]
    assert p.margin_mean == pytest.approx(0.8)  # lower is better: null 1.0 - value 0.2


def test_not_applicable_is_never_a_number():
    b = _exp_board()
    na = b[(b.mechanism == "jl") & (b.probe == "hidden-code")]
    assert len(na) == 1
    r = na.iloc[0]
    assert r.status == "n/a" and r.n == 0 and "hidden code" in r.reason
    assert math.isnan(r.value_mean) and math.isnan(r.margin_mean) and math.isnan(r.null_untrained_mean)
    assert math.isnan(r.probe_rank)
    tables = render.explanation_tables(b, boards.explanation_ranking(b))
    md = render.to_markdown(tables)
    line = next(ln for ln in md.splitlines() if ln.startswith("| jl | hidden-code"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[4:8] == ["n/a"] * 4  # value, two nulls, margin
    assert not any(re.fullmatch(r"-?\d+(\.\d+)?(e[-+]?\d+)?( ± .*)?", c) for c in cells[4:8])


def test_an_oracle_is_shown_but_never_best_or_ranked():
    recs = [sol_rec("bloom", 16, 0, 1.0), sol_rec("softmax-bottleneck", 16, 0, 0.1, oracle=True)]
    b = boards.solutions_board(sol_frame(recs), DIRS)
    assert "oracle" not in boards.metric_columns(sol_frame(recs), DIRS)
    oracle = b[b.solver == "softmax-bottleneck"].iloc[0]
    assert oracle.label.endswith("(oracle)") and not oracle.kl_best  # lower KL, yet not "best"
    assert b[b.solver == "bloom"].iloc[0].kl_best
    exps = [exp_rec("bloom", 0, {"hidden-code": ok("f1", 0.9, {"untrained": 0.3})}),
            exp_rec("softmax-bottleneck", 0, {"hidden-code": ok("f1", 0.99, {"untrained": 0.1})}, oracle=True)]
    rk = boards.explanation_ranking(boards.explanations_board(exp_frame(exps)))
    got = {r.mechanism: r.rank for r in rk.itertuples()}
    assert got["bloom"] == 1 and math.isnan(got["softmax-bottleneck"])


def test_a_probes_own_null_is_shown_but_not_used_for_the_margin():
    rec = exp_rec("bloom", 0, {"patch": ok("loss_recovered", 1.0, {"untrained": None}, own={"resampled": -3.0}),
                               "hidden-code": ok("f1", 0.9, {"untrained": 0.3})}, nulls={"untrained": "initial"})
    b = boards.explanations_board(exp_frame([rec]))
    patch = b[(b.probe == "patch") & b.is_main].iloc[0]
    assert patch.own_resampled_mean == pytest.approx(-3.0) and math.isnan(patch.margin_mean)
    hc = b[(b.probe == "hidden-code") & b.is_main].iloc[0]
    assert hc.margin_mean == pytest.approx(0.6)


def test_ranking_rule():
    b = _exp_board()
    # per probe, by main score: f1 bloom 0.9 < noise 0.95 -> noise first; kl (lower better) noise .1 < bloom .2 < jl .5
    pr = {(r.mechanism, r.probe): r.probe_rank for r in b[b.is_main].itertuples()}
    assert pr[("noise", "hidden-code")] == 1 and pr[("bloom", "hidden-code")] == 2
    assert (pr[("noise", "patch")], pr[("bloom", "patch")], pr[("jl", "patch")]) == (1, 2, 3)
    rk = boards.explanation_ranking(b)
    got = {r.mechanism: (r.rank, r.overall_margin, r.applicable, r.probes) for r in rk.itertuples()}
    # overall: mean margin over applicable probes. bloom (0.3667 + 0.8)/2, jl 0.5/1, noise (0.05 + 0.05)/2
    assert got["bloom"][1] == pytest.approx((np.mean([0.4, 0.2, 0.5]) + 0.8) / 2)
    assert got["jl"][1:] == (pytest.approx(0.5), 1, 2)
    assert got["noise"][1] == pytest.approx(0.05)
    assert [got[m][0] for m in ("bloom", "jl", "noise")] == [1, 2, 3]


def test_unranked_without_applicable_probes():
    recs = [exp_rec("bloom", 0, {"p": ok("f1", 0.9, {"untrained": 0.1})}), exp_rec("none", 0, {"p": NA})]
    b = boards.explanations_board(exp_frame(recs))
    rk = boards.explanation_ranking(b).set_index("mechanism")
    assert rk.loc["bloom", "rank"] == 1 and math.isnan(rk.loc["none", "rank"]) and rk.loc["none", "applicable"] == 0


# ---------------------------------------------------------------------------- renderers

def _all_boards():
    recs = pairs(synthetic.demo_records(evil=True))
    directions = frames.metric_directions(recs)
    sol = boards.solutions_board(frames.solutions_frame(recs), directions)
    exp = boards.explanations_board(frames.explanations_frame(recs))
    return {"records": recs, "directions": directions, "solutions": sol, "best": boards.best_at_width(sol),
            "explanations": exp, "ranking": boards.explanation_ranking(exp), "not_applicable": []}


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
    text = render.to_csv(sol, b["explanations"], b["ranking"])
    df = pd.read_csv(io.StringIO(text))
    assert set(df.board) == {"solutions", "explanations", "ranking"}
    s = df[df.board == "solutions"].reset_index(drop=True)
    assert len(s) == len(sol)
    np.testing.assert_allclose(s.kl_mean.to_numpy(), sol.kl_mean.to_numpy(), rtol=1e-12)
    assert "<script>alert(1)</script>" in set(s.task)  # CSV holds the raw name (it is data, not markup)
    rows = list(csv.reader(io.StringIO(text)))
    assert all(len(r) == len(rows[0]) for r in rows)


def test_html_escapes_every_record_string():
    page = render.to_html(render.board_tables(_all_boards()), [("cap <b>x</b>", b"\x89PNG")])
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


def test_unknown_format_is_one_line_user_error(tmp_path):
    from sparsebench.cli import leaderboard

    with pytest.raises(UserError, match="unknown --format 'pdf'"):
        leaderboard([tmp_path], format="pdf", out=None)


def test_cli_writes_each_format_atomically(tmp_path, capsys):
    from sparsebench.cli import leaderboard

    synthetic.write_records(tmp_path / "results", synthetic.demo_records(evil=False))
    for fmt, name in (("markdown", "b.md"), ("csv", "b.csv"), ("html", "b.html"), ("terminal", "b.txt")):
        leaderboard([tmp_path / "results"], format=fmt, out=tmp_path / name)
        assert (tmp_path / name).stat().st_size > 100
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    leaderboard([tmp_path / "results"], format="markdown", out=None)
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


def test_copy_of_records_not_mutated():
    recs = synthetic.explanation_records(seeds=(0,))
    before = copy.deepcopy(recs)
    boards.explanations_board(exp_frame(recs))
    assert recs == before
