"""`sparsebench evaluate`: train or load, construct, fit, probe, and write one record per evaluation.

The suite becomes a list of jobs (one per trained (run, width), one per
construction (task, width, mechanism)). Each job knows the ids of the records it
will write before it runs, so a job whose records all exist is skipped: rerunning
an interrupted evaluation loses nothing and redoes nothing (`--force` redoes).
Everything is validated before the first job runs, so bad input writes nothing.
Jobs return records to the driver, which writes each file atomically: the same
jobs run in-process or as Ray tasks (`--executor ray`).
"""

from __future__ import annotations

import datetime
import functools
import json
import platform
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import typer

import sparsebench
from sparsebench import registry
from sparsebench.api import EVAL_SEED
from sparsebench.build import make_mechanism, make_model, make_task, resolve_device
from sparsebench.checkpoints import RunSpec, train_or_load
from sparsebench.config import from_dict, stable_hash, to_dict
from sparsebench.errors import UserError
from sparsebench.io import write_json
from sparsebench.native import check_kernel
from sparsebench.probes import OWN_NULL, NotApplicable, model_hook_names
from sparsebench.suite import Run, Suite
from sparsebench.training import TrainConfig, seed_generator

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Job:
    kind: str  # "trained" (train/load a run at a width, then score and explain it) or "construction"
    run: int  # index of the run in the suite (for a construction: the run whose task it uses)
    width: int | None  # the width of the sweep, None = model config as given
    mechanism: str | None = None  # construction jobs: which mechanism


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(sparsebench.__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.lru_cache(maxsize=1)
def _static_provenance() -> dict[str, Any]:
    return {"sparsebench_version": sparsebench.__version__, "git_commit": _git_commit(),
            "torch_version": torch.__version__, "python": platform.python_version(),
            "hostname": platform.node(), "plugins": registry.plugin_versions()}


def provenance(device: torch.device, seconds: float) -> dict[str, Any]:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {**_static_provenance(), "device": str(device), "wall_seconds": round(seconds, 3), "date": now}


class Plan:
    """A validated suite: run specs per width, mechanisms, probes, nulls, and every record id."""

    def __init__(self, suite: Suite):
        self.suite = suite
        self.mechanisms = {m: make_mechanism(m, suite.mechanism_config.get(m, {})) for m in suite.mechanisms}
        self.probes = {p: registry.probes.get(p)() for p in (suite.probes or registry.probes.names())}
        self.nulls = {n: registry.baselines.get(n)() for n in (suite.nulls or registry.baselines.names())}
        for name, obj in (*self.probes.items(), *self.nulls.items()):
            obj.name = name
        self.tasks = [make_task(run.task, run.task_config) for run in suite.runs]
        self.specs = {(i, w): self.spec(run, w) for i, run in enumerate(suite.runs) for w in self.widths(i)}
        self._check_probes_against_models()
        if suite.construct:
            for i, task in enumerate(self.tasks):
                for w in self.construct_widths(i):
                    for mech in self.mechanisms.values():
                        mech.validate(task, w)

    def registry_names(self) -> dict[str, list[str]]:
        """Every registered entry this plan uses, by registry kind."""
        runs = self.suite.runs
        return {"tasks": [r.task for r in runs], "models": [r.model for r in runs],
                "mechanisms": list(self.mechanisms), "probes": list(self.probes), "baselines": list(self.nulls)}

    def widths(self, run: int) -> list[int | None]:
        """The run's width sweep (its own, else the suite's); [None] = the model config as given."""
        return list(self.suite.runs[run].widths or self.suite.widths) or [None]

    def construct_widths(self, run: int) -> list[int]:
        """Widths at which the mechanisms' constructions are built for this run's task."""
        if self.suite.construct_widths:
            return list(self.suite.construct_widths)
        return [w if w is not None else self._width(self.specs[(run, w)]) for w in self.widths(run)]

    def spec(self, run: Run, width: int | None) -> RunSpec:
        model_cfg = dict(run.model_config)
        if width is not None:
            model_cfg.update({f: width for f in run.width_fields})
        train = from_dict(TrainConfig, {**to_dict(self.suite.train), **run.train}, "train")
        return RunSpec.create(run.task, run.task_config, run.model, model_cfg, train)

    @staticmethod
    def _width(spec: RunSpec) -> int:
        return int(spec.model_config.get("d_model", 0))

    def _check_probes_against_models(self) -> None:
        """A probe that reads a hook the model lacks is bad input: say so before anything runs."""
        for (i, w), spec in self.specs.items():
            run = self.suite.runs[i]
            task = spec.make_task()
            model = make_model(spec.model, spec.model_config, task)
            batch = task.sample(2, generator=torch.Generator().manual_seed(0))
            hooks = model_hook_names(model, batch)
            for name, probe in self.probes.items():
                if task.family not in probe.families:
                    raise UserError(f"probe {name!r} does not apply to task {run.task!r} "
                                    f"(family {task.family!r}; it understands {', '.join(probe.families)})")
                missing = [h for h in probe.reads if h not in hooks]
                if missing:
                    raise UserError(f"probe {name!r} reads {missing[0]!r}, which model {run.model!r} does not have")

    # Record ids: hashes of everything that determines a record's numbers.
    def _eval_block(self) -> dict[str, Any]:
        return {"n_samples": self.suite.eval_samples, "probe_samples": self.suite.probe_samples, "seed": EVAL_SEED}

    def trained_ids(self, run: int, width: int | None, seed: int) -> dict[str, str]:
        spec = self.specs[(run, width)]
        base = {"schema": SCHEMA_VERSION, **spec.describe(seed), "eval": self._eval_block()}
        ids = {"solution": stable_hash({**base, "kind": "solution"})}
        for m, mech in self.mechanisms.items():
            ids[f"explanation/{m}"] = stable_hash({**base, "kind": "explanation", "mechanism": m,
                                                   "mechanism_config": mech.config_dict(),
                                                   "probes": sorted(self.probes), "nulls": sorted(self.nulls)})
        return ids

    def construction_id(self, run: int, width: int, mechanism: str, seed: int) -> str:
        task = self.task(run)
        return stable_hash({"schema": SCHEMA_VERSION, "kind": "solution", "task": task.name, "version": task.version,
                            "task_config": task.config_dict(), "mechanism": mechanism,
                            "config": self.mechanisms[mechanism].config_dict(), "width": width, "seed": seed,
                            "eval": self._eval_block()})

    def jobs(self) -> list[Job]:
        jobs = [Job("trained", i, w) for i in range(len(self.suite.runs)) for w in self.widths(i)]
        if self.suite.construct:
            by_task: dict[Any, tuple[int, set[int]]] = {}  # task -> (first run using it, union of widths)
            for i in range(len(self.suite.runs)):
                task = self.task(i)
                key = (task.name, json.dumps(task.config_dict(), sort_keys=True))
                first, widths = by_task.get(key, (i, set()))
                by_task[key] = (first, widths | set(self.construct_widths(i)))
            for first, widths in by_task.values():
                jobs += [Job("construction", first, w, m) for w in sorted(widths) for m in self.mechanisms]
        return jobs

    def task(self, run: int) -> Any:
        return self.tasks[run]

    def record_paths(self, job: Job) -> list[str]:
        if job.kind == "construction":
            return [f"solution/{self.construction_id(job.run, job.width, job.mechanism, s)}.json"  # type: ignore[arg-type]
                    for s in self.suite.seeds]
        out = []
        for s in self.suite.seeds:
            for key, rid in self.trained_ids(job.run, job.width, s).items():
                out.append(f"{key.split('/')[0]}/{rid}.json")
        return out


def _task_block(task: Any) -> dict[str, Any]:
    return {"name": task.name, "version": task.version, "config": task.config_dict()}


def _score_probes(plan: Plan, model: Any, fitted: Any, nulls: dict[str, tuple[Any, Any]], task: Any,
                  batch: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, probe in plan.probes.items():
        result = probe.score(model, fitted, task, batch)
        if isinstance(result, NotApplicable):
            out[name] = {"status": "not_applicable", "reason": result.reason}
            continue
        # A relabelling null (e.g. shuffled) is no null for a relabel-invariant probe: left out, not scored.
        blind = {n for n in nulls if probe.relabel_invariant and plan.nulls[n].relabels_inputs}
        null_results = {n: (None if n in blind else probe.score(nm, nf, task, batch)) for n, (nm, nf) in nulls.items()}
        notes = {n: r.reason for n, r in null_results.items() if isinstance(r, NotApplicable)}
        scores = {}
        for key, value in result.items():
            if OWN_NULL in key:
                continue
            scores[key] = {"value": value, "higher_is_better": probe.higher_is_better.get(key, True),
                           "nulls": {n: (r.get(key) if isinstance(r, dict) else None)
                                     for n, r in null_results.items()}}
        for key, value in result.items():  # the probe's own nulls (e.g. patch's "resampled")
            if OWN_NULL in key:
                score, null = key.split(OWN_NULL)
                scores[score]["nulls"][null] = value
        out[name] = {"status": "ok", "level": probe.level, "reads": list(probe.reads), "main": probe.main,
                     "scores": scores}
        notes |= {n: "only relabels input tokens, which this probe cannot see: not a null for it" for n in blind}
        if notes:
            out[name]["null_notes"] = notes  # why a null has no number
    return out


def run_trained(plan: Plan, job: Job, device: torch.device, cache: Path | None, progress: bool,
                skip: set[str], kernel: str = "torch") -> list[tuple[str, dict[str, Any]]]:
    """Train or load every seed of (run, width); write its solution and explanation records."""
    spec = plan.specs[(job.run, job.width)]
    task = spec.make_task()
    width = job.width if job.width is not None else plan._width(spec)
    checkpoints = train_or_load(spec, list(plan.suite.seeds), device=device, cache=cache, progress=progress,
                                kernel=kernel)
    held = task.held_out(plan.suite.eval_samples, seed=EVAL_SEED, device=device)
    probe_batch = task.held_out(plan.suite.probe_samples, seed=EVAL_SEED + 1, device=device)
    out = []
    for ck in checkpoints:
        ids = plan.trained_ids(job.run, job.width, ck.seed)
        common = {"schema_version": SCHEMA_VERSION, "task": _task_block(task), "width": width, "seed": ck.seed,
                  "eval": plan._eval_block(), "model": {"name": spec.model, "config": spec.model_config},
                  "train": to_dict(spec.train), "checkpoint": {"key": ck.key, "sha256": ck.sha256}}
        if f"solution/{ids['solution']}.json" not in skip:
            start = time.perf_counter()
            with torch.no_grad():
                metrics = task.metrics(ck.model(**held.inputs), held)
            out.append((f"solution/{ids['solution']}.json", {
                **common, "kind": "solution", "id": ids["solution"],
                "solver": {"type": "trained", "name": spec.model, "config": spec.model_config},
                "metrics": metrics, "theory": {}, "provenance": provenance(device, time.perf_counter() - start)}))
        null_models = {n: null.make(ck.model, task, seed=ck.seed, generator=seed_generator(ck.seed, f"null-{n}"))
                       for n, null in plan.nulls.items()}
        for m, mech in plan.mechanisms.items():
            path = f"explanation/{ids[f'explanation/{m}']}.json"
            if path in skip:
                continue
            start = time.perf_counter()
            fitted = mech.fit(ck.model, task, generator=seed_generator(ck.seed, "fit"))
            nulls = {n: (nm, mech.fit(nm, task, generator=seed_generator(ck.seed, "fit")))
                     for n, nm in null_models.items()}
            probes = _score_probes(plan, ck.model, fitted, nulls, task, probe_batch)
            out.append((path, {
                **common, "kind": "explanation", "id": ids[f"explanation/{m}"],
                "mechanism": {"name": m, "config": mech.config_dict(), "oracle": type(mech).oracle},
                "fit": fitted.summary(), "null_fits": {n: nf.summary() for n, (_, nf) in nulls.items()},
                "nulls": {n: plan.nulls[n].description for n in null_models},
                "probes": probes, "provenance": provenance(device, time.perf_counter() - start)}))
    return out


def run_construction(plan: Plan, job: Job, device: torch.device, skip: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Build the mechanism's exact solution at this width for every seed and score it on the task."""
    task = plan.task(job.run)
    mech = plan.mechanisms[job.mechanism]  # type: ignore[index]
    held = task.held_out(plan.suite.eval_samples, seed=EVAL_SEED, device=device)
    out = []
    for seed in plan.suite.seeds:
        rid = plan.construction_id(job.run, job.width, job.mechanism, seed)  # type: ignore[arg-type]
        if f"solution/{rid}.json" in skip:
            continue
        start = time.perf_counter()
        model = mech.construct(task, job.width, generator=seed_generator(seed, f"construct-{job.mechanism}"))
        model = model.to(device).eval()
        with torch.no_grad():
            metrics = task.metrics(model(**held.inputs), held)
        theory = mech.theory(task, job.width) if hasattr(mech, "theory") else {}
        out.append((f"solution/{rid}.json", {
            "schema_version": SCHEMA_VERSION, "kind": "solution", "id": rid, "task": _task_block(task),
            "width": job.width, "seed": seed, "eval": plan._eval_block(),
            "solver": {"type": "construction", "name": job.mechanism, "config": mech.config_dict(),
                       "oracle": type(mech).oracle, "built": built_summary(model)},
            "train": None, "checkpoint": None, "metrics": metrics, "theory": theory,
            "provenance": provenance(device, time.perf_counter() - start)}))
    return out


def built_summary(model: Any) -> dict[str, float]:
    """Scalars a construction chose when it was built (e.g. a tuned logit scale), for the record."""
    return {k: float(v) for k, v in getattr(model, "construction_info", {}).items()}


def run_job(plan: Plan, job: Job, device: torch.device, cache: Path | None, progress: bool,
            skip: set[str], kernel: str = "torch") -> list[tuple[str, dict[str, Any]]]:
    if job.kind == "construction":
        return run_construction(plan, job, device, skip)
    return run_trained(plan, job, device, cache, progress, skip, kernel)


def evaluate(suite: Suite, out: Path, *, device: str = "auto", cache: Path | None = None, force: bool = False,
             progress: bool = True, executor: str = "local", ray_address: str | None = None,
             workers: int = 1, kernel: str = "torch") -> dict[str, int]:
    """Run the suite; write records under `out`. Returns counts of written and skipped records.

    kernel: what trains models that are not cached (`training.train`); like the thread count it
    changes trained weights only in the last bits, and it is recorded in each model's run.json.

    workers > 1 (local executor): run the jobs in that many single-threaded processes
    (`sparsebench.parallel`); the records are the same as in-process, and this driver writes them.
    """
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    if workers > 1 and executor != "local":
        raise UserError("--workers is for the local executor; Ray places jobs on the cluster's CPUs itself")
    plan = Plan(suite)  # validates everything before any work
    if workers > 1:
        from sparsebench.parallel import require_installed

        require_installed(plan.registry_names())
    dev = resolve_device(device)
    check_kernel(kernel, dev)
    jobs = plan.jobs()
    existing = set() if force else {str(p.relative_to(out)) for p in out.glob("*/*.json")} if out.exists() else set()
    paths = [(j, set(plan.record_paths(j))) for j in jobs]
    todo = [(j, existing & p) for j, p in paths if not p <= existing]
    skipped = sum(len(existing & p) for _, p in paths)
    written = 0
    for records in _execute(plan, todo, dev, cache, progress, executor, ray_address, workers, kernel):
        for rel, record in records:
            write_json(out / rel, record)
            written += 1
    return {"written": written, "skipped": skipped, "jobs": len(todo)}


def _execute(plan: Plan, todo: list[tuple[Job, set[str]]], dev: torch.device, cache: Path | None, progress: bool,
             executor: str, ray_address: str | None, workers: int = 1,
             kernel: str = "torch") -> Iterator[list[tuple[str, dict[str, Any]]]]:
    if executor == "local" and workers > 1 and todo:
        from concurrent.futures import as_completed

        from tqdm.auto import tqdm

        from sparsebench.parallel import worker_pool

        # Even one job goes to a worker: every model of a --workers run then trains on one thread.
        workers = min(workers, len(todo))
        with worker_pool(workers) as pool:  # jobs go out in plan order: the long training jobs first
            futures = [pool.submit(run_job, plan, job, dev, cache, False, skip, kernel) for job, skip in todo]
            for future in tqdm(as_completed(futures), total=len(futures), desc=f"evaluate ({workers} processes)",
                               disable=not progress, leave=False):
                yield future.result()
    elif executor == "local":
        from tqdm.auto import tqdm

        for job, skip in tqdm(todo, desc="evaluate", disable=not progress, leave=False):
            yield run_job(plan, job, dev, cache, progress, skip, kernel)
    elif executor == "ray":
        from sparsebench.ray_executor import run_on_ray

        yield from run_on_ray(plan, todo, dev, cache, ray_address, kernel)
    else:
        raise UserError(f"unknown executor {executor!r}; choose 'local' or 'ray'")


def _csv_ints(text: str | None, flag: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(x) for x in text.replace(" ", "").split(",") if x)
    except ValueError:
        raise UserError(f"{flag} expects comma-separated integers (got {text!r})") from None


def _run_tables(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The run tables of a suite dict being edited (`--set runs=...` may have put anything there)."""
    runs = data.get("runs")
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []


def apply_cli(suite: Suite, *, task: str | None, model: str | None, mechanisms: list[str] | None,
              probes: list[str] | None, seeds: tuple[int, ...] | None, widths: tuple[int, ...] | None,
              sets: list[str]) -> Suite:
    """Flags override the suite: --task/--model replace the runs, --set edits any field.

    `--set task.k=7` and `--set model.d_mlp=32` apply to every run (a model field set this way is
    taken out of the width sweep); `--set train.lr=3e-3` to training, runs' own overrides included;
    `--set mechanism.bloom.alpha=30` to a mechanism; any other key is a top-level suite field.
    """
    from sparsebench.config import parse_override
    from sparsebench.suite import suite_from_dict

    runs = list(suite.runs)
    if task or model:
        # Keep the suite's runs that match (with their configs, widths and training); only when
        # none does, make one run from the first run's settings for whichever names still match.
        matching = [r for r in runs if (task is None or r.task == task) and (model is None or r.model == model)]
        if matching:
            runs = matching
        else:
            base = runs[0]
            same_task, same_model = (task or base.task) == base.task, (model or base.model) == base.model
            runs = [Run(task=task or base.task, model=model or base.model,
                        task_config=base.task_config if same_task else {},
                        model_config=base.model_config if same_model else {},
                        width_fields=base.width_fields if same_model else ("d_model", "d_mlp"))]
    data: dict[str, Any] = {k: v for k, v in vars(suite).items() if k not in ("runs", "train")}
    data["train"] = to_dict(suite.train)
    data["runs"] = [vars(r) | {"width_fields": list(r.width_fields), "widths": list(r.widths)} for r in runs]
    data["mechanism_config"] = {k: dict(v) for k, v in suite.mechanism_config.items()}
    for text in sets:
        path, value = parse_override(text)
        head = path[0]
        if head in ("task", "model") and len(path) == 2:
            for r in _run_tables(data):
                r[f"{head}_config"] = {**r[f"{head}_config"], path[1]: value}
                if head == "model" and path[1] in r["width_fields"]:  # an explicit value wins over the sweep
                    r["width_fields"] = [f for f in r["width_fields"] if f != path[1]]
        elif head == "train" and len(path) == 2:
            data["train"][path[1]] = value
            for r in _run_tables(data):  # and over a run's own training overrides
                if path[1] in r["train"]:
                    r["train"] = {**r["train"], path[1]: value}
        elif head == "mechanism" and len(path) == 3:
            data["mechanism_config"].setdefault(path[1], {})[path[2]] = value
        elif len(path) == 1:
            data[head] = value
        else:
            raise UserError(f"--set {text}: expected task.F, model.F, train.F, mechanism.NAME.F or a suite field")
    for key, value in (("mechanisms", mechanisms), ("probes", probes), ("seeds", seeds), ("widths", widths)):
        if value:
            data[key] = list(value)
    if widths and not any(t.split("=")[0].strip() == "construct_widths" for t in sets):
        data["construct_widths"] = []  # --widths sets the construction sweep too, unless it is set explicitly
        for r in _run_tables(data):
            r["widths"] = []
    for key in ("seeds", "widths", "construct_widths", "mechanisms", "probes", "nulls"):
        if isinstance(data[key], tuple):
            data[key] = list(data[key])
    return suite_from_dict(data, default_name=suite.name)  # validates whatever --set put in


def evaluate_command(
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
    device: str = typer.Option("auto", "--device", help="'auto', 'cpu', 'cuda', ..."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Model cache folder."),
    executor: str = typer.Option("local", "--executor", help="'local' (in-process) or 'ray'."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Address of an existing Ray cluster."),
    workers: int = typer.Option(1, "--workers", "-w", help="Local executor: run the jobs in this many "
                                "single-threaded processes (one per core is fastest; 1 = in this process)."),
    kernel: str = typer.Option("torch", "--kernel", help="'torch', or 'native': a compiled CPU kernel for the whole "
                               "training step of one-block mlp1 on sparse-KL tasks (docs/performance.md)."),
    board: bool = typer.Option(True, "--leaderboard/--no-leaderboard", help="Render the boards afterwards."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Run a suite (default: the built-in 'default'): train or load, construct, fit, probe, write records."""
    from sparsebench.suite import load_suite

    s = apply_cli(load_suite(suite), task=task, model=model, mechanisms=mechanism, probes=probe,
                  seeds=_csv_ints(seeds, "--seeds"), widths=_csv_ints(widths, "--widths"), sets=set_ or [])
    start = time.perf_counter()
    counts = evaluate(s, out, device=device, cache=cache, force=force, progress=progress, executor=executor,
                      ray_address=ray_address, workers=workers, kernel=kernel)
    print(f"suite {s.name!r}: {counts['written']} record(s) written, {counts['skipped']} already there, "
          f"{counts['jobs']} job(s) run in {time.perf_counter() - start:.1f}s -> {out}")
    if board:
        render_boards(out)


def render_boards(out: Path) -> None:
    """Write leaderboard.md and leaderboard.html next to the records; print the summary tables.

    The terminal gets the two summaries (best solver at each width, the explanations
    ranking); the full boards with every probe beside its nulls are in the files.
    """
    from rich.console import Console

    from sparsebench.io import write_text
    from sparsebench.leaderboard import render
    from sparsebench.leaderboard.cli import build_boards, render_leaderboard

    b = build_boards([out])
    for name, fmt in (("leaderboard.md", "markdown"), ("leaderboard.html", "html")):
        write_text(out / name, render_leaderboard([out], fmt, b))
    tables = render.board_tables(b["solutions"], b["best"], b["explanations"], b["ranking"])
    summary = [t for t in tables if t.title.startswith(("Best at each width", "Explanations ranking"))]
    print(render.to_terminal(summary, width=max(Console().width, 120)), end="")
    print(f"full boards: {out / 'leaderboard.md'} and {out / 'leaderboard.html'}")
