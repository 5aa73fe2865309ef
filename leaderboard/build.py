"""Records to boards to text: what `sparsebench leaderboard` (and `evaluate`'s summary) runs.

`build_boards` loads typed records from folders and computes every board (solutions,
explanations, probe validity, findings, and the tickets board of `leaderboard/tickets.py`
when there are ticket records); `tables` makes the display tables of all of them;
`render_leaderboard` turns them into terminal text, Markdown, CSV or one HTML page;
`scaling_images` draws the scaling figures embedded in the HTML page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from sparsebench import records
from sparsebench.errors import UserError
from sparsebench.leaderboard import boards, explanations, figures, findings, frames, render, tickets, validity


def build_boards(results: list[Path], min_auroc: float = validity.MIN_AUROC) -> dict[str, Any]:
    """Load records under `results` and compute every board: the library form of the command."""
    try:
        recs = records.load(results)
    except FileNotFoundError as e:
        raise UserError(f"results path not found: {e.args[0]} (run `sparsebench evaluate` first, "
                        f"or pass a folder)") from None
    return boards_from(recs, min_auroc)


def boards_from(recs: list[tuple[Path, Any]], min_auroc: float = validity.MIN_AUROC) -> dict[str, Any]:
    """Every board of loaded records ((file, record) pairs): a pure function of the records."""
    directions = frames.metric_directions(recs)
    sol_frame = frames.solutions_frame(recs)
    sol = boards.solutions_board(sol_frame, directions)
    best = boards.best_at_width(sol)
    exp_frame = frames.explanations_frame(recs)
    valid = validity.validity_board(exp_frame, min_auroc)
    flags = {r["probe"]: r["valid"] for _, r in valid.iterrows()}
    exp_boards = explanations.build(exp_frame, flags)
    found = pd.concat([findings.learned_code(exp_frame, exp_boards["explanations"]), findings.findings(sol_frame)],
                      ignore_index=True)
    return {"records": recs, "directions": directions, "solutions": sol, "best": best,
            **exp_boards, "validity": valid, "min_auroc": min_auroc,
            "own_construction": validity.own_construction(exp_frame), "findings": found,
            "not_applicable": frames.not_applicable(recs), **tickets.build(recs)}


def tables(b: dict[str, Any]) -> list[render.Table]:
    """Every display table: the solutions and explanations boards, then the tickets board."""
    return render.board_tables(b) + tickets.ticket_tables(b)


def scaling_images(sol: Any) -> list[render.Image]:
    """Per task: KL and false-positive rate against width with fits, as PNGs for the HTML page, the task with the
    widest sweep first."""
    if sol is None or sol.empty:
        return []
    out = []
    for tk in sol.groupby("task_key", sort=False).size().sort_values(ascending=False, kind="stable").index:
        g = sol[sol["task_key"] == tk]
        fig = figures.scaling_figure(sol, tk)
        if fig is not None:
            label = g["task_label"].iloc[0]
            out.append(render.Image(
                f"{label}: KL and false-positive rate against width (mean ± std over seeds) with exponential "
                f"(dashed) and power-law (dotted) fits; ★ marks the better R² (of log y).", figures.to_png(fig),
                facets={"task": (label,)}))
    return out


def render_leaderboard(results: list[Path], format: str, b: dict[str, Any] | None = None) -> str:
    """The board under `results` in `format` (terminal text, markdown, csv, html) as a string.

    b: the boards of `results` if already built (`build_boards`), to build them once for several formats.
    """
    b = b if b is not None else build_boards(results)
    if format == "csv":
        return render.to_csv(b)
    shown = tables(b)
    if format == "markdown":
        return render.to_markdown(shown)
    if format == "html":
        n = len(b["records"])
        intro = (f"{n} record(s) from {', '.join(map(str, results))}. Spread = sample std over seeds (n = seeds); "
                 f"intervals are 95% t intervals. Ranking rules: see docs/leaderboard.md.")
        return render.to_html(shown, scaling_images(b["solutions"]) + tickets.figures(b), intro=intro)
    return render.to_terminal(shown)
