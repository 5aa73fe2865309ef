"""The `sparsebench leaderboard` and `sparsebench report` commands (registered in sparsebench/cli.py).

Plain functions with typer annotations; heavy libraries are imported inside the
bodies so `sparsebench --help` stays fast.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Optional

import typer

from sparsebench.errors import UserError
from sparsebench.io import write_bytes, write_text
from sparsebench.leaderboard.render import FORMATS


def build_boards(results: list[Path]) -> dict[str, Any]:
    """Load records under `results` and compute both boards: the library form of the command."""
    from sparsebench.leaderboard import boards, records

    recs = records.load_records(results)
    sol = boards.solutions_board(records.solutions_frame(recs))
    best = boards.best_at_width(sol)
    exp = boards.explanations_board(records.explanations_frame(recs))
    rank = boards.explanation_ranking(exp)
    return {"records": recs, "solutions": sol, "best": best, "explanations": exp, "ranking": rank}


def scaling_pngs(sol) -> list[tuple[str, bytes]]:
    """(caption, PNG) per task: KL and false-positive rate against width with fits."""
    if sol is None or sol.empty:
        return []
    from sparsebench.leaderboard import figures

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
    from sparsebench.leaderboard import render

    b = b if b is not None else build_boards(results)
    if format == "csv":
        return render.to_csv(b["solutions"], b["explanations"], b["ranking"])
    tables = render.board_tables(b["solutions"], b["best"], b["explanations"], b["ranking"])
    if format == "markdown":
        return render.to_markdown(tables)
    if format == "html":
        n = len(b["records"])
        intro = (f"{n} record(s) from {', '.join(map(str, results))}. Spread = sample std over seeds (n = seeds). "
                 f"Ranking rule: see docs/leaderboard.md.")
        return render.to_html(tables, scaling_pngs(b["solutions"]), intro=intro)
    return render.to_terminal(tables)


def leaderboard(
    results: Optional[list[Path]] = typer.Argument(
        None, help="Result folders (searched recursively for *.json) or files; several merge [default: results]."),
    format: str = typer.Option("terminal", "--format", "-f", help="terminal | markdown | csv | html."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Write to this file (atomically) instead of stdout; html defaults to "
                                  "leaderboard.html."),
) -> None:
    """Rank result records: the solutions board (metrics against width) and the explanations board (probes vs nulls)."""
    from sparsebench.leaderboard.records import RecordWarning

    fmt = format.strip().lower()
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    paths = list(results) if results else [Path("results")]
    warnings.simplefilter("always", RecordWarning)
    if fmt == "terminal" and out is None:
        from rich.console import Console

        from sparsebench.leaderboard import render

        b = build_boards(paths)
        render.print_tables(Console(), render.board_tables(b["solutions"], b["best"], b["explanations"], b["ranking"]))
        return
    text = render_leaderboard(paths, fmt)
    if out is None and fmt == "html":
        out = Path("leaderboard.html")
    if out is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    write_text(out, text)
    typer.echo(f"wrote {out}")


# ---------------------------------------------------------------------------- report

def model_anatomy(model: Any, task: Any, fitted: Any, n_samples: int, device: Any) -> dict[str, Any]:
    """Arrays behind the report figures: E @ W_in, the hash code, top-k mass, tier data, and metrics."""
    import torch

    from sparsebench.leaderboard.figures import tier_data
    from sparsebench.mechanisms.bloom import misses, union

    with torch.no_grad():
        M = (model.W_E @ model.W_in[0]).detach().float().cpu().numpy()
        code_t = fitted.token_code().bool()
        code = code_t.cpu().numpy()
        batch = task.held_out(n_samples, device=device)
        logits = model(**batch.inputs).float()
        metrics = task.metrics(logits, batch)
        q = torch.softmax(logits, dim=-1)
        in_set = torch.zeros_like(q, dtype=torch.bool).scatter_(-1, batch.inputs["tokens"], True)
        mass = (q * in_set).sum(-1)
        miss = misses(code_t, union(code_t, batch))  # [n, V]: |H(t) \ U|
    members, by_miss = tier_data(q.cpu().numpy(), miss.cpu().numpy(), in_set.cpu().numpy())
    return {"M": M, "code": code, "mass": mass.cpu().numpy(), "members": members, "by_miss": by_miss,
            "metrics": metrics}


def report(
    config: Optional[Path] = typer.Option(None, "--config", "-c",
                                          help="TOML file with [task], [model], [train] sections."),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s",
                                             help="Override one field: section.field=value (repeatable)."),
    seed: int = typer.Option(0, "--seed", help="Which seed's model to draw."),
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Output folder for the PNGs (and report.html)."),
    html: bool = typer.Option(False, "--html/--no-html", help="Also write one self-contained report.html."),
    results: Optional[list[Path]] = typer.Option(
        None, "--results", help="Also draw scaling curves (KL, false positives vs width) from these record folders."),
    n_samples: int = typer.Option(4096, "--samples", help="Held-out samples for the histograms and tiers."),
    device: str = typer.Option("auto", "--device", help="'auto', 'cpu', 'cuda', ..."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Model cache folder."),
) -> None:
    """Pictures of one trained model: hash matrix, its entries, top-k mass, logit tiers (trains it if not cached)."""
    import json

    import torch

    from sparsebench.build import make_mechanism, resolve_device
    from sparsebench.checkpoints import train_or_load
    from sparsebench.cli import _settings, run_spec
    from sparsebench.config import to_dict
    from sparsebench.leaderboard import figures, render

    if n_samples < 1:
        raise UserError(f"--samples must be at least 1 (got {n_samples})")
    spec = run_spec(_settings(config, set_))
    dev = resolve_device(device)
    (ck,) = train_or_load(spec, [seed], device=dev, cache=cache)
    task = spec.make_task()
    fitted = make_mechanism("bloom").fit(ck.model, task, generator=torch.Generator(device=dev).manual_seed(seed))
    if fitted.token_code() is None:
        raise UserError("the bloom fit gave no token code for this model")
    a = model_anatomy(ck.model, task, fitted, n_samples, dev)
    summary = {k: (v if isinstance(v, (int, str)) else float(v)) for k, v in fitted.summary().items()}
    k = int(getattr(task.config, "k", 0)) or int(task.seq_len)
    who = f"{spec.task} · {spec.model} · seed {seed}"
    figs = [
        ("hash_matrix.png", f"{who}: E @ W_in, tokens sorted by fitted hash (colour centred at 0).",
         figures.hash_matrix_figure(a["M"], a["code"], int(summary.get("sign", 0)) or None,
                                    title=f"E @ W_in — {who}")),
        ("entries_histogram.png", f"{who}: entries of E @ W_in by fitted hash membership "
                                  f"(two-means R² = {summary.get('r2', float('nan')):.3f}).",
         figures.entries_histogram_figure(a["M"], a["code"], title=f"entries of E @ W_in — {who}")),
        ("topk_mass.png", f"{who}: top-k mass over {n_samples} held-out samples (log counts).",
         figures.topk_mass_figure(a["mass"], k, title=f"top-k mass — {who}")),
        ("tiers.png", f"{who}: q_t against hash bits missing from the union (members separately).",
         figures.tiers_figure(a["members"], a["by_miss"], title=f"logit tiers — {who}")),
    ]
    pngs = [(name, cap, figures.to_png(fig)) for name, cap, fig in figs]
    if results:
        from sparsebench.leaderboard.records import RecordWarning

        warnings.simplefilter("always", RecordWarning)
        for i, (cap, png) in enumerate(scaling_pngs(build_boards(list(results))["solutions"])):
            pngs.append((f"scaling_{i}.png", cap, png))
    out.mkdir(parents=True, exist_ok=True)
    for name, _, png in pngs:
        write_bytes(out / name, png)
    info = {"task": {"name": spec.task, "config": spec.task_config}, "model": {"name": spec.model,
            "config": spec.model_config}, "train": to_dict(spec.train), "seed": seed,
            "checkpoint": {"key": ck.key, "sha256": ck.sha256}, "bloom_fit": summary,
            "held_out": {"n_samples": n_samples, **a["metrics"]}, "figures": [p[0] for p in pngs]}
    write_text(out / "report.json", json.dumps(info, indent=2, sort_keys=True) + "\n")
    if html:
        table = render.Table("report", f"Bloom fit and held-out metrics: {who}", ["quantity", "value"],
                             [[render.Cell(str(kk)), render.Cell(render.fmt_num(v) if isinstance(v, float) else str(v),
                                                                 v if isinstance(v, (int, float)) else None)]
                              for kk, v in {**summary, **a["metrics"]}.items()])
        page = render.to_html([table], [(cap, png) for _, cap, png in pngs], title=f"sparsebench report: {who}")
        write_text(out / "report.html", page)
    typer.echo(f"wrote {len(pngs)} figure(s){' and report.html' if html else ''} to {out}/ "
               f"(hash sign {summary.get('sign')}, mean hash size {summary.get('h_mean', float('nan')):.2f}, "
               f"held-out KL {a['metrics'].get('kl', float('nan')):.4g})")
