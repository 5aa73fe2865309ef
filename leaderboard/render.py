"""Render the boards: terminal (rich), Markdown, CSV and one self-contained HTML page.

The boards become a list of display `Table`s once (`board_tables`), and each
format renders those, so every format shows the same numbers. CSV is the
exception: it is the tidy numeric data (one row per aggregated entry, a `board`
column telling which), for analysis rather than reading.

Numbers: mean ± spread (sample std over seeds) to 4 / 2 significant digits, `n`
seeds beside; one seed shows no ± (a spread of one seed does not exist). The
best value at a width is marked ★ (terminal, HTML: also bold; Markdown: bold).
Not-applicable probes show "n/a", never a number.

HTML: one page that opens on the scaling figures (the post's headline), then one
section per board, each with a short "how to read this" (`GUIDES`); every table
scrolls inside its own box and sorts by a click on a header; a bar of filters
(task, model, mechanism) hides the rows and figures of other ones, read from each
row's facets (`Table.add_row`). Everything is inline (CSS, a small vanilla-JS
sorter and filter, figures as base64 PNG), nothing is fetched, and every string
that came from a record goes through `html.escape` (task, solver, mechanism and
probe names are plugin-defined).

Every format is safe on its own, whatever the records hold: control characters
(ANSI/OSC escapes, carriage returns, bidirectional controls) become visible escapes
(`sparsebench.printable`) in the terminal, Markdown, CSV and HTML, so a Markdown
row never breaks and the terminal is never restyled; CSV text cells that a
spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, a tab or a
carriage return) get a leading `'` (OWASP's rule), numbers stay numbers.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any

from sparsebench.printable import visible

FORMATS = ("terminal", "markdown", "csv", "html")


@dataclass
class Cell:
    text: str
    sort: float | str | None = None  # the value a sortable table sorts by (None: the text)
    best: bool = False


class Row(list):
    """A table row (a list of Cells) with its facets: what the HTML page's filters match it by."""

    def __init__(self, cells: list[Cell], facets: dict[str, tuple[str, ...]]):
        super().__init__(cells)
        self.facets = facets


FACETS = ("task", "model", "mechanism")  # what the HTML page filters rows and figures by


@dataclass
class Table:
    board: str  # "solutions" | "explanations" | "validity" (or a page's own, e.g. "report")
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    note: str = ""

    def add_row(self, cells: list[Cell], **facets: str | tuple[str, ...]) -> None:
        """Append a row; `facets` (task, model, mechanism: a name or several) say which filters it answers to.
        A row without a facet is shown whatever that filter says."""
        self.rows.append(Row(cells, {k: (v,) if isinstance(v, str) else tuple(v) for k, v in facets.items() if v}))


@dataclass
class Image:
    """A figure embedded in the HTML page (PNG bytes), in the section of its board, with facets like a row's."""

    caption: str
    png: bytes
    board: str = "scaling"
    facets: dict[str, tuple[str, ...]] = field(default_factory=dict)


def fmt_num(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 1e5 or abs(x) < 1e-3:
        return f"{x:.{max(digits - 1, 0)}e}"
    return f"{x:.{digits}g}"


def fmt_mean(mean: float, std: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    s = fmt_num(mean)
    if std is not None and not (isinstance(std, float) and math.isnan(std)):
        s += f" ± {fmt_num(std, 2)}"
    return s


def as_number(x: Any) -> float | None:
    """x as a float for sorting, None if it is no finite-or-infinite number (NaN, text, None)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


# ---------------------------------------------------------------------------- tables

def solution_tables(board, best, directions: dict[str, dict[str, str]]) -> list[Table]:
    """Per task: the full board (width × solver) and the best-at-width summary."""
    from sparsebench.leaderboard.boards import ARROWS

    if board is None or board.empty:
        return []
    all_metrics = [c[: -len("_mean")] for c in board.columns
                   if c.endswith("_mean") and not c.startswith("theory_") and f"{c[:-5]}_best" in board.columns]
    theory = [c for c in board.columns if c.startswith("theory_") and c.endswith("_mean")]
    tables = []
    for tk, g in board.groupby("task_key", sort=False):
        label = g["task_label"].iloc[0]
        dirs = directions.get(tk, {})
        metrics = [m for m in all_metrics if g[f"{m}_mean"].notna().any()]
        cols = ["width", "solver", "type", "seeds"] + [f"{m} {ARROWS.get(dirs.get(m, ''), '?')}" for m in metrics]
        cols += [f"{c[len('theory_'):-len('_mean')]} (theory)" for c in theory]
        t = Table("solutions", f"Solutions: {label}", cols,
                  note="mean ± std over seeds; ★ = best at this width; ↓ lower is better, ↑ higher, →0 nearest 0")
        for _, r in g.iterrows():
            row = [Cell(str(r["width"]), r["width"]), Cell(r["label"]), Cell(r["solver_type"]),
                   Cell(str(r["n_seeds"]), r["n_seeds"])]
            for m in metrics:
                txt = fmt_mean(r[f"{m}_mean"], r[f"{m}_std"])
                row.append(Cell(txt + (" ★" if r[f"{m}_best"] else ""), as_number(r[f"{m}_mean"]), bool(r[f"{m}_best"])))
            for c in theory:
                row.append(Cell(fmt_num(r[c]), as_number(r[c])))
            trained = r["solver_type"] == "trained"
            t.add_row(row, task=label, model=r["solver"] if trained else "", mechanism="" if trained else r["solver"])
        tables.append(t)
        bw = best[best["task_key"] == tk] if best is not None and not best.empty else None
        if bw is not None and not bw.empty:
            ms = [m for m in metrics if m in set(bw["metric"])]
            t2 = Table("solutions", f"Best at each width: {label}", ["width"] + ms,
                       note="winner (mean over seeds) per metric")
            for width, gw in bw.groupby("width", sort=True):
                by = {r["metric"]: r for _, r in gw.iterrows()}
                t2.add_row([Cell(str(width), width)] + [
                    Cell(f"{by[m]['best']} ({fmt_num(by[m]['mean'], 3)})", by[m]["best"]) if m in by else Cell("")
                    for m in ms], task=label)
            tables.append(t2)
    return tables


FINDINGS = {3: "hidden unit j is active iff j is not in the union: the trained net learned the Bloom code",
            4: "false positives are a rare, separate low cluster of top-k mass",
            5: "loss against width: exponential for Bloom (and trained nets), polynomial for JL",
            6: "with more than k input tokens, mass spreads uniformly over them"}


def findings_tables(f: Any) -> list[Table]:
    """The post's findings 3-6 as measured from the records (`leaderboard/findings.py`)."""
    if f is None or f.empty:
        return []
    from sparsebench.leaderboard import findings as fmod

    t = Table("solutions", "The post's findings, measured", ["finding", "task", "solver", "width", "measured", "holds"],
              note=f"3 holds where Bloom's hidden-code MCC is at least {fmod.LEARNED_MCC:g} and above its untrained "
                   f"null's on every seed; 4 holds where the low cluster is under {fmod.RARE:g} of samples, split R² at least "
                   f"{fmod.SEPARATE:g}, and it is the false positives ({fmod.CLUSTER_IS_FP:g}+ of it, at most "
                   f"{fmod.HIGH_HAS_NO_FP:g} of the rest); 5 compares fits over at least {fmod.MIN_WIDTHS} widths; "
                   f"6 holds where the evenness with k+1 tokens is at least {fmod.EVEN:g} (our reading of the post)")
    for _, r in f.iterrows():
        t.add_row([Cell(f"{r['finding']}: {FINDINGS[r['finding']]}", r["finding"]), Cell(r["task_label"]),
                   Cell(r["solver"]), Cell(str(r["width"])), Cell(r["measure"]),
                   Cell("yes" if r["holds"] else "no", r["holds"], bool(r["holds"]))], task=r["task_label"])
    return [t]


def fmt_ci(mean: float, lo: float, hi: float) -> str:
    """`mean [lo, hi]` (a 95% interval), or the mean alone when there is no interval."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return fmt_num(mean)
    return f"{fmt_num(mean)} [{fmt_num(lo, 3)}, {fmt_num(hi, 3)}]"


OUTCOME = {"explains": "✓ explains", "insufficient": "~ insufficient", "fails": "✗ fails",
           "undecided": "? undecided", "n/a": "n/a"}
BAR = {"higher": "≥ {}", "lower": "≤ {}", "zero": "|·| ≤ {}"}  # a probe's bar, shown beside its outcome


def _bar(r: Any) -> str:
    """' (bar ≥ 0.8)': the level at which the probe's claim is met, or '' when the record has none."""
    bar = r.get("sufficient")
    if bar is None or (isinstance(bar, float) and math.isnan(bar)):
        return ""
    return f" (bar {BAR.get(r.get('direction'), '{}').format(fmt_num(bar, 3))})"


def _rivals(r: Any, cols: list[str]) -> str:
    """Every rival's mean, strongest first: 'answer-only 0.78, random-code 0.39, null untrained 0'."""
    items = []
    for c in cols:
        v = r.get(c)
        if v is not None and not (isinstance(v, float) and math.isnan(v)):
            name = c[len("control_"):-len("_mean")] if c.startswith("control_") else \
                f"null {c[len('null_'):-len('_mean')]}"
            items.append((v, name))
    sign = -1 if r.get("direction") == "lower" else 1
    items.sort(key=lambda t: -sign * t[0] if r.get("direction") != "zero" else abs(t[0]))
    return ", ".join(f"{n} {fmt_num(v, 3)}" for v, n in items)


def explanation_tables(b: dict[str, Any]) -> list[Table]:
    """Per trained-model configuration: the ranking, every probe beside its rivals, the pairwise comparisons;
    then the probe validity board and each mechanism on its own construction."""
    from sparsebench.leaderboard.boards import ARROWS, GROUP_KEYS

    board, ranking, pairs = b.get("explanations"), b.get("ranking"), b.get("pairwise")
    tables = []
    if board is not None and not board.empty:
        rival_cols = sorted(c for c in board.columns if c.startswith(("control_", "null_")) and c.endswith("_mean"))
        for key, g in board.groupby(GROUP_KEYS, sort=False):
            first = g.iloc[0]
            title = f"{first['task_label']} · {first['group_label']} · width {first['width']}"
            group = {"task": first["task_label"], "model": first["model"]}
            rk = ranking[(ranking[GROUP_KEYS] == list(key)).all(axis=1)] if ranking is not None else None
            if rk is not None and not rk.empty:
                t = Table("explanations", f"Explanations ranking: {title}",
                          ["rank", "mechanism", "verdict",
                           "per probe (margin over every control and null; value against the bar)",
                           "pairs won / tied / lost"],
                          note="on a probe: explains = beats every control and null (margin's 95% interval above "
                               "0) and reaches the probe's bar (the value's 95% interval at or above the level at "
                               "which its claim is met: our reading, e.g. loss recovered 0.8); insufficient = "
                               "beats every rival but does not reach the bar; verdict: explains on every counted "
                               "probe, partly (on some), or no; rank: pairs of mechanisms won minus lost, a pair won "
                               "on more of the common probes by a paired interval over seeds (equal ranks are "
                               "ties); oracles are given the answer: shown, never ranked")
                for _, r in rk.iterrows():
                    rank = "oracle" if r["oracle"] else ("–" if math.isnan(r["rank"]) else str(int(r["rank"])))
                    extra = f" (unvalidated: {r['unvalidated']})" if r["unvalidated"] else ""
                    t.add_row([Cell(rank, as_number(r["rank"])), Cell(r["mech_label"]), Cell(r["verdict"]),
                               Cell(r["outcomes"] + extra),
                               Cell(f"{r['won']} / {r['tied']} / {r['lost']}", r["copeland"])],
                              **group, mechanism=r["mechanism"])
                tables.append(t)
            t = Table("explanations", f"Probe scores: {title}",
                      ["mechanism", "probe", "score", "seeds", "value [95% CI]", "margin [95% CI]", "strongest rival",
                       "outcome", "rivals (controls and nulls, strongest first)", "note"],
                      note="ranked probes first, then model diagnostics (never ranked); * = the probe's main score; "
                           "margin = value minus the strongest rival of each seed, + is better; bar = the level at "
                           "which the probe's claim is met (our reading; the value's interval must reach it, the "
                           "margin's must lie above 0); intervals over seeds (one seed: over its probe-batch chunks)")
            for _, r in g.iterrows():
                ok = r["status"] == "ok"
                arrow = ARROWS.get(r["direction"], "") if ok else ""
                score = f"{r['score']}{'*' if r['is_main'] and ok else ''} {arrow}".strip() if r["score"] else ""
                note = [] if r["ranked"] else ["diagnostic"]
                if r["ranked"] and r["valid"] is False:
                    note.append("invalid on constructions: not counted")
                elif r["ranked"] and r["valid"] is None:
                    note.append("unvalidated")
                if not ok:
                    note.append(str(r["reason"]))
                t.add_row([
                    Cell(r["mech_label"]), Cell(r["probe"] or "(all)"), Cell(score), Cell(str(r["n"]), r["n"]),
                    Cell(fmt_ci(r.get("value_mean"), r.get("value_lo"), r.get("value_hi")) if ok else "n/a",
                         as_number(r.get("value_mean"))),
                    Cell(fmt_ci(r.get("margin_mean"), r.get("margin_lo"), r.get("margin_hi")) if ok else "n/a",
                         as_number(r.get("margin_mean")), ok and r["outcome"] == "explains" and r["is_main"]),
                    Cell(str(r.get("rival") or "") if ok else ""),
                    Cell(OUTCOME.get(r["outcome"], r["outcome"]) + (_bar(r) if ok else "") if r["is_main"] or not ok
                         else ""),
                    Cell(_rivals(r, rival_cols) if ok else ""), Cell("; ".join(note))],
                    **group, mechanism=r["mechanism"])
            tables.append(t)
            pp = pairs[(pairs[GROUP_KEYS] == list(key)).all(axis=1)] if pairs is not None and not pairs.empty else None
            if pp is not None and not pp.empty:
                t = Table("explanations", f"Pairwise: {title}", ["probe", "a", "b", "seeds", "a - b [95% CI]", "result"],
                          note="paired over seeds, main scores turned so + favours a; a result only when the "
                               "interval excludes 0")
                for _, r in pp.iterrows():
                    res = {"a": f"{r['a']} ≻ {r['b']}", "b": f"{r['b']} ≻ {r['a']}"}.get(r["winner"], "tie")
                    t.add_row([Cell(r["probe"]), Cell(r["a"]), Cell(r["b"]), Cell(str(r["n"]), r["n"]),
                               Cell(fmt_ci(r["diff"], r["lo"], r["hi"]), as_number(r["diff"])), Cell(res)],
                              **group, mechanism=(r["a"], r["b"]))
                tables.append(t)
    valid = b.get("validity")
    if valid is not None and not valid.empty:
        t = Table("validity", "Probe validity (on exact constructions, where the mechanism is known)",
                  ["probe", "ranked", "AUROC", "pairs", "constructions of", "status"],
                  note=f"AUROC: how often the right explanation of a construction scores better than a wrong one "
                       f"(another mechanism's fit or a control), ties half; a ranked probe below "
                       f"{b.get('min_auroc', 0.9):g} is left out of the rankings")
        for _, r in valid.iterrows():
            status = ("diagnostic" if not r["ranked"] else "no construction records" if r["valid"] is None
                      else "valid" if r["valid"] else "INVALID: not counted")
            t.add_row([Cell(r["probe"]), Cell("yes" if r["ranked"] else "no"),
                           Cell(fmt_num(r["auroc"], 3), as_number(r["auroc"])), Cell(str(r["pairs"]), r["pairs"]),
                           Cell(r["truths"]), Cell(status)])
        tables.append(t)
    own = b.get("own_construction")
    if own is not None and not own.empty:
        t = Table("validity", "Each mechanism on its own construction",
                  ["construction of", "probe", "seeds", "margin mean", "margin min", "strongest rival", "beats all"],
                  note="the right explanation's margin over every control and null; it must be above 0 on every seed")
        for _, r in own.iterrows():
            beats = "n/a (no rival)" if isinstance(r["beats_all"], float) else ("yes" if r["beats_all"] else "NO")
            t.add_row([Cell(r["truth"]), Cell(r["probe"] + ("" if r["ranked"] else " (diagnostic)")),
                       Cell(str(r["seeds"]), r["seeds"]), Cell(fmt_num(r["margin_mean"]), as_number(r["margin_mean"])),
                       Cell(fmt_num(r["margin_min"]), as_number(r["margin_min"])), Cell(r["rival"]), Cell(beats)],
                      mechanism=r["truth"])
        tables.append(t)
    return tables


def board_tables(b: dict[str, Any]) -> list[Table]:
    """Every display table of the boards `b` (`leaderboard.build_boards`)."""
    tables = solution_tables(b["solutions"], b["best"], b["directions"]) + findings_tables(b.get("findings")) + \
        explanation_tables(b)
    if b.get("not_applicable"):
        t = Table("solutions", "Not applicable", ["task", "solver or mechanism", "why"],
                  note="recorded as not applicable to the task's family: no number exists for these")
        t.rows = [[Cell(r["task"]), Cell(r["what"]), Cell(r["reason"])] for r in b["not_applicable"]]
        tables.append(t)
    return tables


# ---------------------------------------------------------------------------- formats

def print_tables(console: Any, tables: list[Table]) -> None:
    """Print the tables on a rich console (best cells bold green, n/a dim)."""
    from rich.table import Table as RTable
    from rich.text import Text

    if not tables:
        console.print("no records")
    for t in tables:  # Text, not markup strings: names come from records and plugins
        rt = RTable(title=Text(visible(t.title), style="bold"), caption=Text(visible(t.note)) if t.note else None,
                    show_lines=False)
        for c in t.columns:
            rt.add_column(Text(visible(c)), overflow="fold")
        for row in t.rows:
            rt.add_row(*[Text(visible(c.text), style="bold green" if c.best else ("dim" if c.text == "n/a" else ""))
                         for c in row])
        console.print(rt)
        console.print()


def to_terminal(tables: list[Table], width: int | None = None) -> str:
    """The tables as plain text (rendered into a string: nothing is printed)."""
    import io

    from rich.console import Console

    # force_jupyter=False: inside a notebook rich would otherwise display the tables instead of returning them.
    console = Console(file=io.StringIO(), record=True, width=width or 200, force_terminal=False, force_jupyter=False,
                      highlight=False)
    print_tables(console, tables)
    return console.export_text(styles=False)


def _md_cell(s: str) -> str:
    """One Markdown table cell: control characters (newlines, carriage returns) shown as escapes, so a row
    never breaks; `|` escaped; `<`/`>` as entities."""
    s = visible(s)
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def to_markdown(tables: list[Table]) -> str:
    """GitHub-flavoured Markdown; `|` is escaped and `<`/`>` become entities (safe to paste anywhere)."""
    out = ["# sparsebench leaderboard", ""]
    if not tables:
        out.append("_no records_")
    for t in tables:
        out += [f"## {_md_cell(t.title)}", ""]
        if t.note:
            out += [f"_{_md_cell(t.note)}_", ""]
        out.append("| " + " | ".join(_md_cell(c) for c in t.columns) + " |")
        out.append("|" + "|".join("---" for _ in t.columns) + "|")
        for row in t.rows:
            out.append("| " + " | ".join(f"**{_md_cell(c.text)}**" if c.best else _md_cell(c.text)
                                         for c in row) + " |")
        out.append("")
    return "\n".join(out)


BOARDS = ("solutions", "explanations", "ranking", "pairwise", "validity", "own_construction", "findings", "tickets",
          "ticket_pairs")


def tidy_frame(b: dict[str, Any]):
    """The numeric data behind the boards as one long frame (`board` column: one of BOARDS)."""
    import pandas as pd

    parts = []
    for name in BOARDS:
        df = b.get(name)
        if df is not None and not df.empty:
            parts.append(df.assign(board=name))
    if not parts:
        return pd.DataFrame(columns=["board"])
    out = pd.concat(parts, ignore_index=True, sort=False)
    return out[["board"] + [c for c in out.columns if c != "board"]]


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what spreadsheets read as the start of a formula


def csv_text(value: Any) -> Any:
    """A CSV cell that no spreadsheet runs: text starting like a formula gets a leading `'` (OWASP), control
    characters become visible escapes. Numbers (-0.5 included) and missing values are left as they are."""
    if not isinstance(value, str):
        return value
    if value.startswith(FORMULA_START):
        value = "'" + value
    return visible(value)


def to_csv(b: dict[str, Any]) -> str:
    frame = tidy_frame(b)
    frame.columns = [csv_text(str(c)) for c in frame.columns]
    for c in frame.columns:
        if frame[c].dtype == object or str(frame[c].dtype) in ("string", "str"):
            frame[c] = frame[c].map(csv_text)
    return frame.to_csv(index=False)


# Each board's section on the HTML page, in page order: its heading and a short "how to read this".
# The scaling figures come first: they are the post's headline.
GUIDES = {
    "scaling": ("Scaling: loss against width",
                "Each point is one solver's mean over seeds at one width, on a log axis. Dashed: an exponential fit "
                "(log y linear in width); dotted: a power law (log y linear in log width); the legend gives R² of "
                "log y for both and stars the better. The post's claim: a Bloom filter's loss falls exponentially "
                "with width, JL superposition's only polynomially, and trained networks follow the Bloom filter."),
    "solutions": ("Solutions: every solver on the task's metrics",
                  "One row per solver and width: trained models (mean ± sample std over seeds, n = seeds) and each "
                  "mechanism's exact construction. ★ and bold: the best solver at that width for that metric "
                  "(↓ lower is better, ↑ higher, →0 nearest 0). (theory) columns are closed-form predictions. "
                  "An oracle is given the answer: shown, never starred."),
    "explanations": ("Explanations: which mechanism explains the trained models",
                     "Each mechanism is fitted to each trained model and every probe scores it beside its rivals: "
                     "control explanations (wrong explanations made from the fit: the answer alone, random codes, "
                     "permuted units, resampled inputs, refits to models with one weight re-initialised) and null "
                     "models (the mechanism refitted to an untrained or shuffled network). The margin is the score "
                     "minus the strongest rival, turned so that + is better, with a 95% interval over seeds: a "
                     "mechanism explains the model on a probe only when the whole interval is above 0 and the score's "
                     "own interval reaches the probe's bar (0.8 by default, our reading: e.g. at least 80% of the "
                     "loss recovered); beating the rivals below the bar is \"insufficient\". A margin near 0 means "
                     "a wrong explanation does as well. Verdict: explains (every counted probe), partly (some), no. Trust the ranked probes that the probe validity board "
                     "below found valid; diagnostics (bimodality, mask-agreement) describe the model, not the claim, "
                     "and never count; \"unvalidated\" means no construction records were there to check the probe. "
                     "Rank: pairs of mechanisms won minus lost on paired intervals over seeds (one seed decides "
                     "nothing)."),
    "validity": ("Probe validity: which probes to trust",
                 "On an exact construction the mechanism is known, so a probe can be checked: AUROC is how often the "
                 "right explanation of a construction scores better than a wrong one (another mechanism's fit, or a "
                 "control), ties half; 0.5 is chance. A ranked probe below the threshold is marked INVALID and left "
                 "out of every ranking. The second table checks that each mechanism beats every rival on its own "
                 "construction, on every seed."),
    "tickets": ("Tickets: which detector finds the lottery ticket",
                "The second seed (docs/science.md §7): each detector picks a sparse W1 mask from a dense mlp2 run at "
                "a detection step, the mask is retrained (rewound to θ0, to θe, or fresh), and the sparse network is "
                "scored. Mean with a 95% t interval over seeds; detectors are ranked per (task, sparsity, step, init "
                "mode); references (the dense-final magnitude oracle, OBS, the dense net) are shown, never ranked; a "
                "paired comparison wins only when its interval excludes 0. The claims table says which of the "
                "paper's claims these records reproduce."),
}

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1400px;color:#222;
 padding:0 1em 2em}
h1{font-size:1.6em;margin:.6em 0 .2em}h2{font-size:1.3em;margin:1.6em 0 .3em;border-bottom:2px solid #ddd}
h3{font-size:1.05em;margin:1.2em 0 .2em}
nav{position:sticky;top:0;z-index:3;background:#fff;border-bottom:1px solid #ddd;padding:.4em 0;font-size:.9em}
nav a{margin-right:1em}nav label{margin-left:1em}nav select{max-width:22em}
.guide{background:#f6f8fa;border-left:4px solid #8ab;padding:.5em .8em;margin:.4em 0 .8em;font-size:.9em;
 max-width:70em;line-height:1.4}
.scroll{overflow:auto;max-height:75vh;max-width:100%;border:1px solid #ddd;margin:.3em 0 1em}
table{border-collapse:collapse;font-size:.88em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;white-space:nowrap}
td.text,th.text{text-align:left}td.wrap{white-space:normal;min-width:18em;max-width:34em}
th{background:#f3f3f3;cursor:pointer;user-select:none;position:sticky;top:0;z-index:1}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
td.best{font-weight:bold;background:#e8f6e8}td.na{color:#999}
p.note{color:#555;font-size:.85em;margin:.2em 0}p.count{color:#777;font-size:.8em;margin:.1em 0}
figure{display:inline-block;margin:.5em 1em .5em 0;vertical-align:top}
figure img{max-width:100%;border:1px solid #eee}figcaption{font-size:.85em;color:#444;max-width:900px}
[hidden]{display:none!important}
"""

# Sorting (click a header: numbers numerically, n/a last) and filtering (rows and figures whose facets do not
# include the chosen task, model or mechanism are hidden; a table or figure with nothing left to show too).
_JS = """
(function(){
 function key(td){var s=td.getAttribute('data-sort');if(s===null)s=td.textContent;
  var n=parseFloat(s);return (s!==''&&!isNaN(n)&&isFinite(s))?{n:true,v:n}:{n:false,v:s.toLowerCase()};}
 function cmp(a,b){if(a.n&&b.n)return a.v-b.v;if(a.n)return -1;if(b.n)return 1;return a.v<b.v?-1:a.v>b.v?1:0;}
 document.querySelectorAll('table.sortable').forEach(function(table){
  var ths=table.tHead.rows[0].cells;
  Array.prototype.forEach.call(ths,function(th,i){th.addEventListener('click',function(){
   var asc=th.getAttribute('aria-sort')!=='ascending';
   Array.prototype.forEach.call(ths,function(h){h.removeAttribute('aria-sort');});
   th.setAttribute('aria-sort',asc?'ascending':'descending');
   var body=table.tBodies[0];var rows=Array.prototype.slice.call(body.rows);
   rows.sort(function(r1,r2){var k1=key(r1.cells[i]),k2=key(r2.cells[i]);
    /* missing values (n/a) always last */
    var e1=k1.v==='n/a'||k1.v==='',e2=k2.v==='n/a'||k2.v==='';if(e1!==e2)return e1?1:-1;
    var c=cmp(k1,k2);return asc?c:-c;});
   rows.forEach(function(r){body.appendChild(r);});});});});
 var selects=document.querySelectorAll('select[data-facet]');
 function shown(el){var f=el.getAttribute('data-facets');if(!f)return true;f=JSON.parse(f);
  for(var i=0;i<selects.length;i++){var name=selects[i].getAttribute('data-facet'),v=selects[i].value;
   if(v!==''&&f[name]&&f[name].indexOf(v)<0)return false;}return true;}
 function apply(){
  document.querySelectorAll('[data-facets]').forEach(function(el){el.hidden=!shown(el);});
  document.querySelectorAll('div.board-table').forEach(function(div){
   var rows=div.querySelectorAll('tbody tr'),n=0;
   rows.forEach(function(r){if(!r.hidden)n++;});
   div.hidden=rows.length>0&&n===0;
   var c=div.querySelector('p.count');if(c)c.textContent=n<rows.length?('showing '+n+' of '+rows.length+' rows'):'';});}
 selects.forEach(function(s){s.addEventListener('change',apply);});
 apply();
})();
"""


WRAP_CHARS = 40  # a cell longer than this wraps (lists of rivals, notes); shorter ones stay on one line


def _facet_attr(facets: dict[str, tuple[str, ...]]) -> str:
    """The facets as a data attribute (JSON, HTML-escaped) for the page's filters; "" when there are none."""
    if not facets:
        return ""
    return f' data-facets="{html.escape(json.dumps({k: [visible(x) for x in v] for k, v in facets.items()}))}"'


def to_html(tables: list[Table], images: list[Image] | None = None, title: str = "sparsebench leaderboard",
            intro: str = "") -> str:
    """One self-contained page: a section per board (the order of GUIDES, then any other), each opening on its
    "how to read this", its figures (base64 PNG) and tables (each scrolling inside its box, sortable), under a
    bar of filters by task, model and mechanism (only the facets the rows and figures have)."""
    def e(text: Any) -> str:
        return html.escape(visible(text))

    images = images or []
    boards = list(GUIDES) + [b for b in dict.fromkeys([t.board for t in tables] + [i.board for i in images])
                             if b not in GUIDES]
    boards = [b for b in boards if any(t.board == b for t in tables) or any(i.board == b for i in images)]
    values: dict[str, set[str]] = {f: set() for f in FACETS}
    for facets in [getattr(r, "facets", {}) for t in tables for r in t.rows] + [i.facets for i in images]:
        for f in FACETS:
            values[f].update(facets.get(f, ()))
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    if intro:
        parts.append(f'<p class="note">{e(intro)}</p>')
    links = "".join(f'<a href="#{e(b)}">{e(GUIDES[b][0].split(":")[0] if b in GUIDES else b)}</a>'
                    for b in boards) if len(boards) > 1 else ""
    filters = "".join(
        f'<label>{f} <select data-facet="{f}"><option value="">all</option>'
        + "".join(f'<option value="{e(v)}">{e(v)}</option>' for v in sorted(values[f])) + "</select></label>"
        for f in FACETS if values[f])
    if links or filters:
        parts.append(f"<nav>{links}{filters}</nav>")
    if not tables and not images:
        parts.append("<p>No records.</p>")
    n = 0
    for board in boards:
        heading, guide = GUIDES.get(board, ("", ""))
        parts.append(f'<section id="{e(board)}">' + (f"<h2>{e(heading)}</h2>" if heading else ""))
        if guide:
            parts.append(f'<div class="guide"><b>How to read this.</b> {e(guide)}</div>')
        for img in (i for i in images if i.board == board):
            b64 = base64.b64encode(img.png).decode("ascii")
            parts.append(f'<figure{_facet_attr(img.facets)}><img alt="{e(img.caption)}" '
                         f'src="data:image/png;base64,{b64}"><figcaption>{e(img.caption)}</figcaption></figure>')
        for t in (t for t in tables if t.board == board):
            parts.append(f'<div class="board-table"><h3 id="t{n}">{e(t.title)}</h3>')
            n += 1
            if t.note:
                parts.append(f'<p class="note">{e(t.note)} · click a column header to sort</p>')
            parts.append('<p class="count"></p>')
            parts.append(f'<div class="scroll"><table class="sortable" data-board="{e(t.board)}"><thead><tr>')
            for j, c in enumerate(t.columns):
                cls = "text" if t.rows and t.rows[0][j].sort is None else ""
                parts.append(f'<th class="{cls}" title="sort by {e(c)}">{e(c)}</th>')
            parts.append("</tr></thead><tbody>")
            for row in t.rows:
                parts.append(f"<tr{_facet_attr(getattr(row, 'facets', {}))}>")
                for c in row:
                    classes = ["best"] if c.best else []
                    if c.sort is None:
                        classes.append("text")
                    if len(c.text) > WRAP_CHARS:
                        classes.append("wrap")
                    if c.text == "n/a":
                        classes.append("na")
                    ds = "" if c.sort is None else f' data-sort="{e(str(c.sort))}"'
                    parts.append(f'<td class="{" ".join(classes)}"{ds}>{e(c.text)}</td>')
                parts.append("</tr>")
            parts.append("</tbody></table></div></div>")
        parts.append("</section>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts)
