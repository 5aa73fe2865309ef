"""The `sparsebench` command line: list, train, evaluate, leaderboard, report, bench.

Settings convention (every command that takes configs): a TOML file given with
`--config` holds sections `[task]`, `[model]`, `[train]` (each with a `name` where
the section names a registry entry, plus that entry's config fields); flags
such as `--task`, `--model`, `--seed` override it, and `--set section.field=value`
overrides any single field (the value is read as TOML: `--set task.k=5`,
`--set train.lr=3e-3`, `--set model.embed=fixed`). Bad input prints one line,
`error: ...`, and exits with code 2.
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
KernelOpt = typer.Option("torch", "--kernel", help="'torch', or 'native': a compiled CPU kernel for the whole "
                         "training step of one-block mlp1 on sparse-KL tasks (x86-64 AVX-512 and a C compiler; "
                         "docs/performance.md).")


def _settings(config: Optional[Path], sets: Optional[list[str]], **flags: Any) -> dict[str, Any]:
    """Merge a TOML file, then flags ("section.field" -> value; None = not given), then --set overrides."""
    from sparsebench.config import apply_overrides, load_toml

    data = load_toml(config) if config else {}
    for key, value in flags.items():
        if value is not None:
            section, field = key.split(".")
            data.setdefault(section, {})[field] = value
    return apply_overrides(data, sets or [])


def run_spec(data: dict[str, Any]) -> Any:
    """The RunSpec that merged settings describe ([task], [model], [train]); validates every field."""
    from sparsebench.checkpoints import RunSpec
    from sparsebench.config import from_dict
    from sparsebench.training import TrainConfig

    task_name, task_cfg = _section(data, "task", "topk-uniform")
    model_name, model_cfg = _section(data, "model", "mlp1")
    train_cfg = from_dict(TrainConfig, data.get("train", {}), "train")
    return RunSpec.create(task_name, task_cfg, model_name, model_cfg, train_cfg)


def _section(data: dict[str, Any], name: str, default_name: str) -> tuple[str, dict[str, Any]]:
    section = data.get(name, {})
    if not isinstance(section, dict):
        raise UserError(f"[{name}] must be a table (got {section!r})")
    section = dict(section)
    return section.pop("name", default_name), section


@app.command("list")
def list_cmd() -> None:
    """Print every registered task, model, mechanism, probe and baseline, and where it came from."""
    from rich.console import Console
    from rich.table import Table

    from sparsebench import registry

    table = Table("kind", "name", "from", "version", "object")
    for kind, reg in registry.REGISTRIES.items():
        for e in reg:
            obj = f"{getattr(e.obj, '__module__', '?')}:{getattr(e.obj, '__qualname__', type(e.obj).__name__)}"
            table.add_row(reg.singular, e.name, e.source, e.version, obj)
        for name, why in reg.failed.items():
            table.add_row(reg.singular, name, "[red]failed to load[/red]", "", why)
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
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    workers: int = typer.Option(1, "--workers", "-w", help="CPU, batched models (mlp1): split the seeds over "
                                "this many single-threaded processes (one per core is fastest; no progress bar)."),
    kernel: str = KernelOpt,
) -> None:
    """Train models (one per seed, batched together where the model allows) or load them from the cache."""
    import time

    import torch

    from sparsebench.build import resolve_device
    from sparsebench.checkpoints import cache_root, train_or_load
    from sparsebench.native import check_kernel

    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    data = _settings(config, set_, **{"task.name": task, "model.name": model})
    seeds = list(seed) if seed else list(data.get("seeds", [0]))
    spec = run_spec(data)
    dev = resolve_device(device)
    check_kernel(kernel, dev)
    start = time.perf_counter()
    checkpoints = train_or_load(spec, seeds, device=dev, cache=cache, progress=progress, workers=workers,
                                kernel=kernel)
    elapsed = time.perf_counter() - start
    task_obj = spec.make_task()
    held = task_obj.held_out(4096, device=dev)
    for ck in checkpoints:
        with torch.no_grad():
            m = task_obj.metrics(ck.model(**held.inputs), held)
        how = "trained" if ck.trained else "loaded"
        summary = " ".join(f"{k}={v:.4g}" for k, v in m.items())
        typer.echo(f"seed {ck.seed}: {how} {cache_root(cache) / 'models' / ck.key}  held-out {summary}")
    typer.echo(f"{len(seeds)} model(s) in {elapsed:.1f}s on {dev}")


def _register_optional_commands() -> None:
    """Commands defined next to the code they drive (evaluate, leaderboard, report, bench); registered once."""
    if any(c.name == "evaluate" for c in app.registered_commands):
        return
    from sparsebench.evaluate import evaluate_command

    app.command("evaluate")(evaluate_command)
    from sparsebench.bench import bench
    from sparsebench.leaderboard.cli import leaderboard, report

    app.command("leaderboard")(leaderboard)
    app.command("report")(report)
    app.command("bench")(bench)


def _format_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                    line: Any = None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def main() -> None:
    """Entry point: run the app; user errors become one line on stderr and exit code 2."""
    from sparsebench.parallel import keep_freed_memory
    from sparsebench.registry import PluginWarning

    keep_freed_memory()  # this process is ours: reuse freed tensors' pages (sparsebench.parallel)
    warnings.showwarning = _format_warning  # one line per warning, no source echo
    warnings.simplefilter("always", PluginWarning)
    _register_optional_commands()
    try:
        app()  # typer reports usage errors itself (exit code 2)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
