"""Records to boards to text: what `sparsebench leaderboard` (and `evaluate`'s summary) runs.

`build_boards` loads typed records from folders and computes the boards (solutions,
explanations, and the tickets board of `leaderboard/tickets.py` when there are ticket records);
`render_leaderboard` turns them into terminal text, Markdown, CSV or one HTML
page; `scaling_pngs` draws the scaling figures embedded in the HTML page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sparsebench import records
from sparsebench.errors import UserError
from sparsebench.leaderboard import boards, figures, frames, render, tickets


def build_boards(results: list[Path]) -> dict[str, Any]:
    """Load records under `results` and compute both boards: the library form of the command."""
    try:
        recs = records.load(results)
    except FileNotFoundError as e:
        raise UserError(f"results path not found: {e.args[0]} (run `sparsebench evaluate` first, "
                        f"or pass a folder)") from None
    directions = frames.metric_directions(recs)
    sol = boards.solutions_board(frames.solutions_frame(recs), directions)
    best = boards.best_at_width(sol)
    exp = boards.explanations_board(frames.explanations_frame(recs))
    rank = boards.explanation_ranking(exp)
    return {"records": recs, "directions": directions, "solutions": sol, "best": best, "explanations": exp,
            "ranking": rank, "not_applicable": frames.not_applicable(recs), "tickets": tickets.build(recs)}


def tables(b: dict[str, Any]) -> list[render.Table]:
    """Every display table: the solutions and explanations boards, then the tickets board."""
    return render.board_tables(b) + tickets.ticket_tables(b.get("tickets"))


def scaling_pngs(sol: Any) -> list[tuple[str, bytes]]:
    """(caption, PNG) per task: KL and false-positive rate against width with fits."""
    if sol is None or sol.empty:
        return []
    out = []
    for tk, g in sol.groupby("task_key", sort=False):
        fig = figures.scaling_figure(sol, tk)
        if fig is not None:
            out.append((f"{g['task_label'].iloc[0]}: KL and false-positive rate against width (mean ± std over "
                        f"seeds) with exponential (dashed) and power-law (dotted) fits; ★ marks the better R² "
                        f"(of log y).", figures.to_png(fig)))
    return out


def render_leaderboard(results: list[Path], format: str, b: dict[str, Any] | None = None) -> str:
    """The board under `results` in `format` (terminal text, markdown, csv, html) as a string.

    b: the boards of `results` if already built (`build_boards`), to build them once for several formats.
    """
    b = b if b is not None else build_boards(results)
    if format == "csv":
        import pandas as pd

        parts = [render.tidy_frame(b["solutions"], b["explanations"], b["ranking"]), tickets.tidy(b.get("tickets"))]
        parts = [p for p in parts if not p.empty] or parts[:1]
        return pd.concat(parts, ignore_index=True, sort=False).to_csv(index=False)
    all_tables = tables(b)
    if format == "markdown":
        return render.to_markdown(all_tables)
    if format == "html":
        n = len(b["records"])
        intro = (f"{n} record(s) from {', '.join(map(str, results))}. Spread = sample std over seeds (n = seeds); "
                 f"the tickets board shows 95% t intervals. Ranking rules: see docs/leaderboard.md.")
        return render.to_html(all_tables, scaling_pngs(b["solutions"]) + tickets.figures(b.get("tickets")),
                              intro=intro)
    return render.to_terminal(all_tables)
