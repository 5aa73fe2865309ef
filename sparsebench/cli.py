"""The `sparsebench` command line: list, train, evaluate, tickets, leaderboard, export, validate, report,
bench.

Each command is a thin wrapper: it parses its settings (`sparsebench.settings`: a TOML
file, flags, `--set section.field=value`), makes one `RunContext` (device, cache, workers,
speed backend, progress), and calls the library function that does the work. Command
bodies import their modules when they run, so `sparsebench --help` does not pay for torch.
Bad input prints one line, `error: ...`, and exits with code 2; warnings print one line each.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any, Optional

import typer

from sparsebench.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Benchmark superposition mechanisms: tasks, models, mechanisms, probes, leaderboards.")

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML file with [task], [model], [train] sections.")
SetOpt = typer.Option(None, "--set", "-s", help="Override one field: section.field=value (repeatable).")
DeviceOpt = typer.Option("auto", "--device", help="'auto' (CUDA if present, else CPU), 'cpu', 'cuda', 'cuda:1'...")
CacheOpt = typer.Option(None, "--cache", help="Model cache folder [default: $SPARSEBENCH_CACHE or ~/.cache/sparsebench].")
BackendOpt = typer.Option("auto", "--backend", help="Training step: 'auto' (fused where it applies on the CPU), "
                          "'torch' (plain autograd), 'fused', or 'native' (a compiled CPU kernel for one-block "
                          "mlp1 on sparse-KL tasks: x86-64 AVX-512 and a C compiler; docs/performance.md).")
ProgressOpt = typer.Option(True, "--progress/--no-progress", help="Show progress bars.")


def _context(device: str, cache: Optional[Path], progress: bool, workers: int = 1, backend: str = "auto",
             executor: str = "local", ray_address: Optional[str] = None) -> Any:
    from sparsebench import interrupts
    from sparsebench.context import RunContext

    interrupts.check()  # a Ctrl-C during the imports above (torch swallows one that hits its numpy import)
    return RunContext.create(device, cache=cache, progress=progress, workers=workers, backend=backend,
                             executor=executor, ray_address=ray_address)


@app.command("list")
def list_cmd() -> None:
    """Print every registered entry (tasks, models, mechanisms, probes, nulls, controls, detectors) and its source."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from sparsebench import registry
    from sparsebench.printable import visible

    def row(*cells: str, status: str = "") -> list[Text]:  # plain text, never rich markup: names come from plugins
        return [Text(visible(c), style=status if i == 2 else "") for i, c in enumerate(cells)]

    table = Table("kind", "name", "from", "version", "object")
    for kind, reg in registry.REGISTRIES.items():
        for e in reg:
            obj = f"{getattr(e.obj, '__module__', '?')}:{getattr(e.obj, '__qualname__', type(e.obj).__name__)}"
            source = f"{e.source} (replaces the built-in)" if e.name in reg.replaced else e.source
            table.add_row(*row(reg.singular, e.name, source, e.version, obj))
        for name, why in reg.failed.items():
            table.add_row(*row(reg.singular, name, "failed to load", "", why, status="red"))
        for name, why in reg.refused.items():
            table.add_row(*row(reg.singular, name, "refused override", "", why, status="red"))
    Console(width=160).print(table)


@app.command()
def train(
    config: Optional[Path] = ConfigOpt,
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Task name [default: topk-uniform]."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name [default: mlp1]."),
    seed: Optional[list[int]] = typer.Option(None, "--seed", help="Seed (repeatable) [default: 0]."),
    set_: Optional[list[str]] = SetOpt,
    device: str = DeviceOpt,
    cache: Optional[Path] = CacheOpt,
    progress: bool = ProgressOpt,
    workers: int = typer.Option(1, "--workers", "-w", help="CPU, batched models (mlp1): split the seeds over "
                                "this many single-threaded processes (one per core is fastest; no progress bar)."),
    backend: str = BackendOpt,
) -> None:
    """Train models (one per seed, batched together where the model allows) or load them from the cache."""
    import time

    import torch

    from sparsebench.checkpoints import train_or_load
    from sparsebench.printable import visible
    from sparsebench.settings import run_settings, run_spec, seed_list

    data = run_settings(config, set_, **{"task.name": task, "model.name": model})
    seeds = seed_list(list(seed) if seed else data.get("seeds", [0]), "--seed" if seed else "seeds")
    spec = run_spec(data)
    ctx = _context(device, cache, progress, workers, backend)
    start = time.perf_counter()
    checkpoints = train_or_load(spec, seeds, ctx)
    elapsed = time.perf_counter() - start
    task_obj = spec.make_task()
    held = task_obj.held_out(4096, device=ctx.device)
    for ck in checkpoints:
        with torch.no_grad():
            m = task_obj.metrics(ck.model(**held.inputs), held)
        how = "trained" if ck.trained else "loaded"
        summary = " ".join(f"{k}={v:.4g}" for k, v in m.items())
        typer.echo(visible(f"seed {ck.seed}: {how} {ctx.cache_root / 'models' / ck.key}  held-out {summary}"))
    typer.echo(f"{len(seeds)} model(s) in {elapsed:.1f}s on {ctx.device}")


@app.command()
def evaluate(
    suite: str = typer.Argument("default", help="A built-in suite name or a TOML file (copy the default's)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Evaluate this task instead of the suite's runs."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Evaluate this model instead of the suite's."),
    mechanism: Optional[list[str]] = typer.Option(None, "--mechanism", help="Mechanism to evaluate (repeatable)."),
    probe: Optional[list[str]] = typer.Option(None, "--probe", help="Probe to run (repeatable) [default: all]."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2."),
    widths: Optional[str] = typer.Option(None, "--widths", help="Comma-separated widths, e.g. 24,32,48,64."),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override: task.F=, model.F=, train.F=, "
                                             "mechanism.NAME.F=, or a suite field (repeatable)."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder."),
    force: bool = typer.Option(False, "--force", help="Redo evaluations whose records exist."),
    device: str = DeviceOpt,
    cache: Optional[Path] = CacheOpt,
    executor: str = typer.Option("local", "--executor", help="'local' (in-process) or 'ray'."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Address of an existing Ray cluster."),
    workers: int = typer.Option(1, "--workers", "-w", help="Local executor: run the jobs in this many "
                                "single-threaded processes (one per core is fastest; 1 = in this process)."),
    backend: str = BackendOpt,
    board: bool = typer.Option(True, "--leaderboard/--no-leaderboard", help="Render the boards afterwards."),
    progress: bool = ProgressOpt,
) -> None:
    """Run a suite (default: the built-in 'default'): train or load, construct, fit, probe, write records."""
    import time

    from sparsebench.evaluate import evaluate as run_suite
    from sparsebench.settings import apply_cli, csv_ints, load_suite

    s = apply_cli(load_suite(suite), task=task, model=model, mechanisms=mechanism, probes=probe,
                  seeds=csv_ints(seeds, "--seeds"), widths=csv_ints(widths, "--widths"), sets=set_ or [])
    ctx = _context(device, cache, progress, workers, backend, executor, ray_address)
    start = time.perf_counter()
    counts = run_suite(s, out, ctx, force=force)
    typer.echo(f"suite {s.name!r}: {counts['written']} record(s) written, {counts['skipped']} already there, "
               f"{counts['jobs']} job(s) run in {time.perf_counter() - start:.1f}s -> {out}")
    if board:
        _write_boards(out)


@app.command()
def tickets(
    suite: str = typer.Argument("tickets", help="A built-in tickets suite name or a TOML file (copy tickets.toml)."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Comma-separated seeds, e.g. 0,1,2,3,4."),
    set_: Optional[list[str]] = typer.Option(None, "--set", "-s", help="Override a suite field: FIELD=, train.F=, "
                                             "retrain.F=, task_config.F=, model_config.F= (repeatable)."),
    out: Path = typer.Option(Path("results"), "--out", "-o", help="Results folder (records under ticket/)."),
    force: bool = typer.Option(False, "--force", help="Redo variants whose records exist."),
    device: str = DeviceOpt,
    cache: Optional[Path] = CacheOpt,
    workers: int = typer.Option(1, "--workers", "-w", help="Split each width's seeds over this many single-threaded "
                                "processes (one per core is fastest; the records are the same for any number)."),
    board: bool = typer.Option(True, "--leaderboard/--no-leaderboard", help="Render the boards afterwards."),
    progress: bool = ProgressOpt,
) -> None:
    """Lottery tickets (the second seed): dense runs with snapshots, detectors, masks, stacked sparse retraining, records."""
    import time

    from sparsebench.settings import csv_ints
    from sparsebench.tickets.config import load_ticket_suite
    from sparsebench.tickets.pipeline import run_tickets

    s = load_ticket_suite(suite, set_ or [], csv_ints(seeds, "--seeds"))
    ctx = _context(device, cache, progress, workers, backend="auto")
    start = time.perf_counter()
    counts = run_tickets(s, out, ctx, force=force)
    typer.echo(f"tickets suite {s.name!r}: {counts['written']} record(s) written, {counts['skipped']} already there, "
               f"in {time.perf_counter() - start:.1f}s -> {out}")
    if board:
        _write_boards(out)


def _write_out(path: Path, text: str, what: str) -> None:
    """Write a user-named output file atomically; a place that cannot be written is one UserError."""
    from sparsebench.io import write_text

    try:
        write_text(path, text)
    except OSError as e:
        raise UserError(f"cannot write {what} {path}: {e.strerror or e}") from None


def _write_boards(out: Path) -> None:
    """Write leaderboard.md and leaderboard.html next to the records; print the summary tables.

    The terminal gets the summaries (best solver at each width, the explanations ranking, probe
    validity, and for ticket records the claims and the tickets rankings); the full boards are in the files.
    """
    from rich.console import Console

    from sparsebench.leaderboard import render
    from sparsebench.leaderboard.build import build_boards, render_leaderboard, tables

    b = build_boards([out])
    for name, fmt in (("leaderboard.md", "markdown"), ("leaderboard.html", "html")):
        _write_out(out / name, render_leaderboard([out], fmt, b), "the board")
    summary = [t for t in tables(b) if t.title.startswith(("Best at each width", "Explanations ranking",
                                                           "Probe validity", "Claims of the second seed",
                                                           "Tickets ranking"))]
    typer.echo(render.to_terminal(summary, width=max(Console().width, 120)), nl=False)
    typer.echo(f"full boards: {out / 'leaderboard.md'} and {out / 'leaderboard.html'}")


@app.command()
def leaderboard(
    results: Optional[list[Path]] = typer.Argument(
        None, help="Result folders (searched recursively for *.json) or files; several merge [default: results]."),
    format: str = typer.Option("terminal", "--format", "-f", help="terminal | markdown | csv | html."),
    out: Optional[Path] = typer.Option(
        None, "--out", "-o", help="Write to this file (atomically) instead of stdout; html defaults to "
                                  "leaderboard.html."),
    min_auroc: float = typer.Option(0.9, "--min-auroc", help="A ranked probe whose AUROC on exact constructions "
                                    "is below this is left out of the rankings (docs/leaderboard.md)."),
) -> None:
    """Rank result records: the solutions board, the explanations board (probes vs controls and nulls), validity."""
    from sparsebench.leaderboard.build import build_boards, render_leaderboard
    from sparsebench.leaderboard.render import FORMATS
    from sparsebench.records import RecordWarning

    fmt = format.strip().lower()
    if not 0.5 <= min_auroc <= 1:
        raise UserError(f"--min-auroc must be in [0.5, 1] (got {min_auroc})")
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    if out is not None and out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name")
    paths = list(results) if results else [Path("results")]
    warnings.simplefilter("always", RecordWarning)
    if fmt == "terminal" and out is None:
        from rich.console import Console

        from sparsebench.leaderboard import render
        from sparsebench.leaderboard.build import tables

        shown = [t for t in tables(build_boards(paths, min_auroc)) if not t.title.startswith("Paired comparisons")]
        render.print_tables(Console(), shown)  # the tickets' paired comparisons: in the other formats
        return
    text = render_leaderboard(paths, fmt, build_boards(paths, min_auroc))
    if out is None and fmt == "html":
        out = Path("leaderboard.html")
    if out is None:
        typer.echo(text, nl=not text.endswith("\n"))
        return
    _write_out(out, text, "--out")
    typer.echo(f"wrote {out}")


@app.command()
def export(
    results: list[Path] = typer.Argument(..., help="Result folders (searched recursively for *.json) or files; "
                                         "several merge."),
    out: Path = typer.Option(..., "--out", "-o", help="The Parquet file to write (atomically)."),
) -> None:
    """Write every record as one tidy Parquet table, one row per score (columns: docs/export.md)."""
    from sparsebench.io import atomic_path
    from sparsebench.leaderboard.frames import scores_frame
    from sparsebench.records import RecordWarning, load

    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name")
    warnings.simplefilter("always", RecordWarning)
    try:
        recs = load(results)
    except FileNotFoundError as e:
        raise UserError(f"results path not found: {e.args[0]}") from None
    if not recs:
        raise UserError(f"no records under {', '.join(map(str, results))}")
    table = scores_frame(recs)
    try:
        with atomic_path(out) as tmp:
            table.to_parquet(tmp, index=False)
    except OSError as e:
        raise UserError(f"cannot write --out {out}: {e.strerror or e}") from None
    typer.echo(f"wrote {out}: {len(table)} row(s) from {len(recs)} record(s)")


@app.command()
def validate(
    results: Optional[list[Path]] = typer.Argument(None, help="Record files or folders (searched recursively "
                                                   "for *.json)."),
    schema: bool = typer.Option(False, "--schema", help="Print the records' JSON Schema instead (docs/records.md)."),
) -> None:
    """Check result records as a submission is checked: one line per bad file; exit code 2 if any is bad."""
    import json

    from sparsebench import records
    from sparsebench.printable import visible

    if schema:
        typer.echo(json.dumps(records.json_schema(), indent=1, sort_keys=True))
        return
    if not results:
        raise UserError("validate needs record files or folders (or --schema)")
    bad = good = 0
    for path in results:
        if not path.exists():
            raise UserError(f"not found: {path}")
        problems: list[tuple[Path, str]] = []
        files = [path] if path.is_file() else records.json_files(path, problems)
        for f in files:
            try:
                records.read(f)
                good += 1
            except ValueError as e:
                problems.append((f, str(e)))
        for f, why in problems:
            print(visible(f"{f}: {why}"), file=sys.stderr)
        bad += len(problems)
    typer.echo(f"{good} valid record(s), {bad} bad file(s) (schema version {records.SCHEMA_VERSION}; "
               f"docs/records.md)")
    if bad:
        raise typer.Exit(2)


@app.command()
def report(
    config: Optional[Path] = ConfigOpt,
    set_: Optional[list[str]] = SetOpt,
    seed: int = typer.Option(0, "--seed", help="Which seed's model to draw."),
    out: Path = typer.Option(Path("report"), "--out", "-o", help="Output folder for the PNGs (and report.html)."),
    html: bool = typer.Option(False, "--html/--no-html", help="Also write one self-contained report.html."),
    results: Optional[list[Path]] = typer.Option(
        None, "--results", help="Also draw scaling curves (KL, false positives vs width) from these record folders."),
    n_samples: int = typer.Option(4096, "--samples", help="Held-out samples for the histograms and tiers."),
    device: str = DeviceOpt,
    cache: Optional[Path] = CacheOpt,
) -> None:
    """Pictures of one trained model: hash matrix, its entries, top-k mass, logit tiers (trains it if not cached)."""
    from sparsebench.report import make_report
    from sparsebench.settings import run_settings, run_spec, seed_list

    spec = run_spec(run_settings(config, set_))
    seed_list([seed], "--seed")
    typer.echo(make_report(spec, seed, _context(device, cache, True), out, html=html, results=results,
                           n_samples=n_samples))


@app.command()
def bench(
    repeats: int = typer.Option(5, help="Interleaved repeats; figures are medians over them."),
    steps: Optional[int] = typer.Option(None, help="Timed steps per measurement at N=1 (N instances run "
                                        "steps/N steps, the same samples, but at least 40 (small regime) or 2). "
                                        "Default: 160 small, 32 default, 16 transformer, 100 per mask tickets; "
                                        "64 on a GPU."),
    regime: str = typer.Option("all", help="small (mlp1, V=500, d=m=32, batch 256), default (mlp1, V=2000, "
                               "d=m=64, batch 1024), transformer (1 layer, one head of 64, V=1000, d=m=64, batch "
                               "1024), both (small and default), tickets (stacked sparse retraining of 4 and 16 "
                               "masks against one mask at a time; CPU only), or all."),
    processes: int = typer.Option(0, help="Worker processes for the multi-process rows "
                                  "[default: one per core; 1 skips those rows]."),
    device: str = typer.Option("cpu", "--device", help="'cpu', or 'cuda' / 'cuda:N': the plain loops and the "
                               "trainer on the GPU (default and transformer regimes), fp32 and bf16 autocast."),
    peak_tflops: Optional[float] = typer.Option(None, help="GPU only: the card's nominal dense bf16 TFLOP/s, for "
                                                "the '% bf16 peak' column."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Save all figures to this JSON file."),
) -> None:
    """Training throughput: plain loops (PyTorch; TransformerLens for the transformer) vs the sparsebench trainer."""
    from sparsebench.accel.bench import run_bench

    run_bench(repeats=repeats, steps=steps, regime=regime, processes=processes, json_path=json_path, device=device,
              peak_tflops=peak_tflops)


def main() -> None:
    """Entry point: run the app; user errors become one line on stderr and exit code 2.

    Ctrl-C exits with 130 and SIGTERM with 143, both after the same clean shutdown (queued jobs
    cancelled, worker processes stopped, nothing partial written: `sparsebench.interrupts`).
    """
    import signal

    from sparsebench import interrupts

    interrupts.install()  # first: a Ctrl-C from here on is recorded, whatever swallows its exception

    from sparsebench.accel.workers import keep_freed_memory
    from sparsebench.errors import one_line_warnings
    from sparsebench.printable import visible
    from sparsebench.registry import PluginWarning

    keep_freed_memory()  # this process is ours: reuse freed tensors' pages (sparsebench.accel.workers)
    one_line_warnings()  # one line per warning, no source echo, control characters made visible
    warnings.simplefilter("always", PluginWarning)
    try:
        app()  # typer reports usage errors itself (exit code 2)
    except UserError as e:
        print(f"error: {visible(e)}", file=sys.stderr)
        sys.exit(2)
    except SystemExit:
        if interrupts.received() == signal.SIGTERM:
            sys.exit(128 + signal.SIGTERM)
        raise
    except KeyboardInterrupt:  # outside a command (typer turns one inside into exit code 130)
        sys.exit(128 + (interrupts.received() or signal.SIGINT))
