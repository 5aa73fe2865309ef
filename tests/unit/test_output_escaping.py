"""Output escaping (issue 15, items 10 and 11): CSV formulas, terminal escapes, Markdown rows, warning and error
lines, long labels in figures. Each renderer is safe on its own, even on records that bypassed the schema."""

from __future__ import annotations

import csv
import io
import re

import pytest

from sparsebench import records
from sparsebench.errors import format_warning_line
from sparsebench.leaderboard import render, synthetic
from sparsebench.printable import visible

OSC = "\x1b]8;;http://evil.example\x07click\x1b]8;;\x07"  # an OSC 8 hyperlink
ANSI = "\x1b[2J\x1b[31mred"  # clear the screen, then red
FORMULAS = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+cmd", "-2+3", "@SUM(1)"]


def _rename(rec, name):
    """A record with a solver or mechanism renamed, bypassing the schema (defence in depth)."""
    if isinstance(rec, records.SolutionRecord):
        return rec.model_copy(update={"solver": rec.solver.model_copy(update={"name": name})})
    return rec.model_copy(update={"mechanism": rec.mechanism.model_copy(update={"name": name})})


@pytest.fixture(scope="module")
def hostile_boards(tmp_path_factory):
    sols = synthetic.solution_records(widths=(16, 24, 32), seeds=(0, 1))
    exps = synthetic.explanation_records(width=64, seeds=(0, 1))
    names = FORMULAS + [f"a{ANSI}", f"b{OSC}", "c\rd\ne", "\u202eevil"]
    sols = [_rename(r, names[i % len(names)]) if r.solver.type == "construction" else r for i, r in enumerate(sols)]
    sols = [r.model_copy(update={"metrics": {**r.metrics, "weight_leak": -0.5}}) for r in sols]  # negative numbers
    exps = [_rename(r, names[i % len(names)]) for i, r in enumerate(exps)]
    folder = tmp_path_factory.mktemp("hostile")
    from sparsebench.leaderboard.build import boards_from

    return boards_from([(folder / f"{r.id}.json", r) for r in sols + exps])  # names no file would pass


CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_csv_text_cells_never_start_a_formula_but_numbers_stay_numbers(hostile_boards):
    b = hostile_boards
    text = render.to_csv(b)
    rows = list(csv.reader(io.StringIO(text)))
    header, body = rows[0], rows[1:]
    assert all(len(r) == len(header) for r in body)
    cells = [c for r in body for c in r]
    for name in FORMULAS:
        assert any(c.startswith("'" + name) for c in cells), name
    numeric = {i for i, h in enumerate(header) if h.endswith(("_mean", "_std")) or h in ("width", "n_seeds")}
    for r in body:
        for i, c in enumerate(r):
            if i in numeric or c == "":
                continue
            if re.fullmatch(r"-?\d+(\.\d+)?(e[-+]?\d+)?", c):
                continue  # a number, negative ones included, is left alone
            assert not c.startswith(("=", "+", "-", "@", "\t", "\r")), c
    assert any(re.fullmatch(r"-\d.*", c) for c in cells), "some negative numbers remain numbers"
    assert not CONTROL.search(text)


def test_csv_text_rule():
    assert render.csv_text("=1+1") == "'=1+1" and render.csv_text("-x") == "'-x" and render.csv_text("\tq") == "'\\tq"
    assert render.csv_text(-0.5) == -0.5 and render.csv_text("safe") == "safe"


def test_the_terminal_never_gets_an_escape_sequence(hostile_boards):
    text = render.to_terminal(render.board_tables(hostile_boards), width=250)
    assert "\x1b" not in text and "\r" not in text and "\u202e" not in text and "\x07" not in text
    assert "\\x1b" in text  # shown, not hidden


def test_terminal_rendering_prints_nothing_itself(hostile_boards, capsys):
    render.to_terminal(render.board_tables(hostile_boards))
    assert capsys.readouterr().out == ""  # it used to print while recording (the summary appeared twice)


def test_markdown_rows_never_break(hostile_boards):
    text = render.to_markdown(render.board_tables(hostile_boards))
    assert not CONTROL.search(text) and "\r" not in text
    for line in text.split("\n"):
        if line.startswith("|"):
            assert line.endswith("|") and not line.endswith("\\|"), line
    tables = render.board_tables(hostile_boards)
    rows = [ln for ln in text.split("\n") if ln.startswith("|") and not ln.startswith("|---")]
    assert len(rows) == sum(len(t.rows) + 1 for t in tables)


def test_html_has_no_raw_control_characters(hostile_boards):
    page = render.to_html(render.board_tables(hostile_boards))
    assert not CONTROL.search(page.replace("\n", ""))


def test_warning_and_error_lines_show_escapes(capsys, monkeypatch):
    format_warning_line(f"skipped result file x{ANSI}\ny.json: bad", UserWarning, "f.py", 1)
    err = capsys.readouterr().err
    assert err == "warning: skipped result file x\\x1b[2J\\x1b[31mred\\ny.json: bad\n"

    from sparsebench import cli
    from sparsebench.errors import UserError

    def boom():
        raise UserError(f"unknown task 'a{OSC}'")

    from hostile import run_main

    monkeypatch.setattr(cli, "app", boom)
    code, _, err = run_main([], monkeypatch, capsys)  # restores what main() sets process-wide
    assert code == 2
    assert err == "error: unknown task 'a\\x1b]8;;http://evil.example\\x07click\\x1b]8;;\\x07'\n"


def test_visible_escapes_every_control_character_and_keeps_the_rest():
    assert visible("a\x00b\x1bc\x7fd\x9fe\u202ef\u2028g") == "a\\x00b\\x1bc\\x7fd\\x9fe\\u202ef\\u2028g"
    assert visible("ok ünïcödé ★ ±") == "ok ünïcödé ★ ±"
    assert visible("a\nb", keep="\n") == "a\nb"


def test_long_labels_are_cut_in_figures():
    from sparsebench.leaderboard import boards, figures, frames

    task = {**synthetic.TASK, "config": {**synthetic.TASK["config"], "target": "x" * 19_000}}
    recs = synthetic.solution_records(widths=(16, 24, 32), seeds=(0,), task=task)
    pairs = [(f"{r.id}.json", r) for r in recs]
    b = boards.solutions_board(frames.solutions_frame(pairs), frames.metric_directions(pairs))
    png = figures.to_png(figures.scaling_figure(b, b.task_key.iloc[0]))
    assert png[:4] == b"\x89PNG"
    assert figures.safe_text("y" * 5_000_000).endswith("…") and len(figures.safe_text("y" * 5_000_000)) == 80


def test_a_config_too_large_to_show_is_refused_by_the_schema():
    rec = records.to_json(synthetic.solution_records(widths=(16,), seeds=(0,))[0])
    rec["task"]["config"]["x"] = "a" * 5_000_000
    with pytest.raises(ValueError, match=r"^task.config: Value error, too large \(5000"):
        records.parse(rec)


def test_the_leaderboard_command_with_out_prints_only_its_line(tmp_path, capsys):
    from sparsebench.cli import leaderboard

    synthetic.write_records(tmp_path / "r", synthetic.demo_records(evil=False))
    leaderboard([tmp_path / "r"], format="terminal", out=tmp_path / "b.txt", min_auroc=0.9)
    assert capsys.readouterr().out == f"wrote {tmp_path / 'b.txt'}\n"
    assert "Solutions" in (tmp_path / "b.txt").read_text()
