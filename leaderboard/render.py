"""Render the boards: terminal (rich), Markdown, CSV and one self-contained HTML page.

The boards become a list of display `Table`s once (`board_tables`), and each
format renders those, so every format shows the same numbers. CSV is the
exception: it is the tidy numeric data (one row per aggregated entry, a `board`
column telling which), for analysis rather than reading.

Numbers: mean ± spread (sample std over seeds) to 4 / 2 significant digits, `n`
seeds beside; one seed shows no ± (a spread of one seed does not exist). The
best value at a width is marked ★ (terminal, HTML: also bold; Markdown: bold).
Not-applicable probes show "n/a", never a number.

HTML: everything inline (CSS, a small vanilla-JS table sorter, figures as base64
PNG), no network access, and every string that came from a record goes through
`html.escape` (task, solver, mechanism and probe names are plugin-defined).

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


@dataclass
class Table:
    board: str  # "solutions" | "explanations"
    title: str
    columns: list[str]
    rows: list[list[Cell]] = field(default_factory=list)
    note: str = ""


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


def _num(x: Any) -> float | None:
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
                row.append(Cell(txt + (" ★" if r[f"{m}_best"] else ""), _num(r[f"{m}_mean"]), bool(r[f"{m}_best"])))
            for c in theory:
                row.append(Cell(fmt_num(r[c]), _num(r[c])))
            t.rows.append(row)
        tables.append(t)
        bw = best[best["task_key"] == tk] if best is not None and not best.empty else None
        if bw is not None and not bw.empty:
            ms = [m for m in metrics if m in set(bw["metric"])]
            t2 = Table("solutions", f"Best at each width: {label}", ["width"] + ms,
                       note="winner (mean over seeds) per metric")
            for width, gw in bw.groupby("width", sort=True):
                by = {r["metric"]: r for _, r in gw.iterrows()}
                t2.rows.append([Cell(str(width), width)] + [
                    Cell(f"{by[m]['best']} ({fmt_num(by[m]['mean'], 3)})", by[m]["best"]) if m in by else Cell("")
                    for m in ms])
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
        t.rows.append([Cell(f"{r['finding']}: {FINDINGS[r['finding']]}", r["finding"]), Cell(r["task_label"]),
                       Cell(r["solver"]), Cell(str(r["width"])), Cell(r["measure"]),
                       Cell("yes" if r["holds"] else "no", r["holds"], bool(r["holds"]))])
    return [t]


def fmt_ci(mean: float, lo: float, hi: float) -> str:
    """`mean [lo, hi]` (a 95% interval), or the mean alone when there is no interval."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return fmt_num(mean)
    return f"{fmt_num(mean)} [{fmt_num(lo, 3)}, {fmt_num(hi, 3)}]"


OUTCOME = {"explains": "✓ explains", "fails": "✗ fails", "undecided": "? undecided", "n/a": "n/a"}


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
            rk = ranking[(ranking[GROUP_KEYS] == list(key)).all(axis=1)] if ranking is not None else None
            if rk is not None and not rk.empty:
                t = Table("explanations", f"Explanations ranking: {title}",
                          ["rank", "mechanism", "verdict", "per probe (margin interval over every control and null)",
                           "pairs won / tied / lost"],
                          note="verdict: explains on every counted probe (margin's 95% interval above 0), partly, "
                               "or no; rank: pairs of mechanisms won minus lost, a pair won on more of the common "
                               "probes by a paired interval over seeds (equal ranks are ties); oracles are given "
                               "the answer: shown, never ranked")
                for _, r in rk.iterrows():
                    rank = "oracle" if r["oracle"] else ("–" if math.isnan(r["rank"]) else str(int(r["rank"])))
                    extra = f" (unvalidated: {r['unvalidated']})" if r["unvalidated"] else ""
                    t.rows.append([Cell(rank, _num(r["rank"])), Cell(r["mech_label"]), Cell(r["verdict"]),
                                   Cell(r["outcomes"] + extra),
                                   Cell(f"{r['won']} / {r['tied']} / {r['lost']}", r["copeland"])])
                tables.append(t)
            t = Table("explanations", f"Probe scores: {title}",
                      ["mechanism", "probe", "score", "seeds", "value [95% CI]", "margin [95% CI]", "strongest rival",
                       "outcome", "rivals (controls and nulls, strongest first)", "note"],
                      note="ranked probes first, then model diagnostics (never ranked); * = the probe's main score; "
                           "margin = value minus the strongest rival of each seed, + is better; intervals over "
                           "seeds (one seed: over its probe-batch chunks)")
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
                t.rows.append([
                    Cell(r["mech_label"]), Cell(r["probe"] or "(all)"), Cell(score), Cell(str(r["n"]), r["n"]),
                    Cell(fmt_ci(r.get("value_mean"), r.get("value_lo"), r.get("value_hi")) if ok else "n/a",
                         _num(r.get("value_mean"))),
                    Cell(fmt_ci(r.get("margin_mean"), r.get("margin_lo"), r.get("margin_hi")) if ok else "n/a",
                         _num(r.get("margin_mean")), ok and r["outcome"] == "explains" and r["is_main"]),
                    Cell(str(r.get("rival") or "") if ok else ""),
                    Cell(OUTCOME.get(r["outcome"], r["outcome"]) if r["is_main"] or not ok else ""),
                    Cell(_rivals(r, rival_cols) if ok else ""), Cell("; ".join(note))])
            tables.append(t)
            pp = pairs[(pairs[GROUP_KEYS] == list(key)).all(axis=1)] if pairs is not None and not pairs.empty else None
            if pp is not None and not pp.empty:
                t = Table("explanations", f"Pairwise: {title}", ["probe", "a", "b", "seeds", "a - b [95% CI]", "result"],
                          note="paired over seeds, main scores turned so + favours a; a result only when the "
                               "interval excludes 0")
                for _, r in pp.iterrows():
                    res = {"a": f"{r['a']} ≻ {r['b']}", "b": f"{r['b']} ≻ {r['a']}"}.get(r["winner"], "tie")
                    t.rows.append([Cell(r["probe"]), Cell(r["a"]), Cell(r["b"]), Cell(str(r["n"]), r["n"]),
                                   Cell(fmt_ci(r["diff"], r["lo"], r["hi"]), _num(r["diff"])), Cell(res)])
                tables.append(t)
    valid = b.get("validity")
    if valid is not None and not valid.empty:
        t = Table("explanations", "Probe validity (on exact constructions, where the mechanism is known)",
                  ["probe", "ranked", "AUROC", "pairs", "constructions of", "status"],
                  note=f"AUROC: how often the right explanation of a construction scores better than a wrong one "
                       f"(another mechanism's fit or a control), ties half; a ranked probe below "
                       f"{b.get('min_auroc', 0.9):g} is left out of the rankings")
        for _, r in valid.iterrows():
            status = ("diagnostic" if not r["ranked"] else "no construction records" if r["valid"] is None
                      else "valid" if r["valid"] else "INVALID: not counted")
            t.rows.append([Cell(r["probe"]), Cell("yes" if r["ranked"] else "no"),
                           Cell(fmt_num(r["auroc"], 3), _num(r["auroc"])), Cell(str(r["pairs"]), r["pairs"]),
                           Cell(r["truths"]), Cell(status)])
        tables.append(t)
    own = b.get("own_construction")
    if own is not None and not own.empty:
        t = Table("explanations", "Each mechanism on its own construction",
                  ["construction of", "probe", "seeds", "margin mean", "margin min", "strongest rival", "beats all"],
                  note="the right explanation's margin over every control and null; it must be above 0 on every seed")
        for _, r in own.iterrows():
            beats = "n/a (no rival)" if isinstance(r["beats_all"], float) else ("yes" if r["beats_all"] else "NO")
            t.rows.append([Cell(r["truth"]), Cell(r["probe"] + ("" if r["ranked"] else " (diagnostic)")),
                           Cell(str(r["seeds"]), r["seeds"]), Cell(fmt_num(r["margin_mean"]), _num(r["margin_mean"])),
                           Cell(fmt_num(r["margin_min"]), _num(r["margin_min"])), Cell(r["rival"]), Cell(beats)])
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

    console = Console(file=io.StringIO(), record=True, width=width or 200, force_terminal=False, highlight=False)
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


_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:2em auto;max-width:1400px;color:#222;
 padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right;white-space:nowrap}
td.text,th.text{text-align:left}th{background:#f3f3f3;cursor:pointer;user-select:none}
th[aria-sort=ascending]::after{content:" ▲"}th[aria-sort=descending]::after{content:" ▼"}
td.best{font-weight:bold;background:#e8f6e8}td.na{color:#999}
p.note{color:#555;font-size:.85em;margin:.2em 0}figure{display:inline-block;margin:1em}
figure img{max-width:680px;border:1px solid #eee}figcaption{font-size:.85em;color:#444;max-width:680px}
"""

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
})();
"""


def to_html(tables: list[Table], figures: list[tuple[str, bytes]] | None = None,
            title: str = "sparsebench leaderboard", intro: str = "") -> str:
    """One self-contained page. `figures`: (caption, PNG bytes) pairs, embedded as base64."""
    def e(text: Any) -> str:
        return html.escape(visible(text))

    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    if intro:
        parts.append(f'<p class="note">{e(intro)}</p>')
    if not tables and not figures:
        parts.append("<p>No records.</p>")
    for i, t in enumerate(tables):
        parts.append(f'<h2 id="t{i}">{e(t.title)}</h2>')
        if t.note:
            parts.append(f'<p class="note">{e(t.note)} · click a column header to sort</p>')
        parts.append(f'<table class="sortable" data-board="{e(t.board)}"><thead><tr>')
        for j, c in enumerate(t.columns):
            cls = "text" if t.rows and t.rows[0][j].sort is None else ""
            parts.append(f'<th class="{cls}" title="sort by {e(c)}">{e(c)}</th>')
        parts.append("</tr></thead><tbody>")
        for row in t.rows:
            parts.append("<tr>")
            for c in row:
                classes = ["best"] if c.best else []
                if c.sort is None:
                    classes.append("text")
                if c.text == "n/a":
                    classes.append("na")
                ds = "" if c.sort is None else f' data-sort="{e(str(c.sort))}"'
                parts.append(f'<td class="{" ".join(classes)}"{ds}>{e(c.text)}</td>')
            parts.append("</tr>")
        parts.append("</tbody></table>")
    if figures:
        parts.append("<h2>Figures</h2>")
        for caption, png in figures:
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{b64}">'
                         f"<figcaption>{e(caption)}</figcaption></figure>")
    parts.append(f"<script>{_JS}</script></body></html>")
    return "\n".join(parts)
