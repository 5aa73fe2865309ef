"""`sparsebench evaluate`: train or load, construct, fit, probe, and write one record per evaluation.

The suite becomes a list of jobs (one per trained (run, width), one per
construction (task, width, mechanism)). Each job knows the ids of the records it
will write before it runs, so a job whose records all exist is skipped: rerunning
an interrupted evaluation loses nothing and redoes nothing (`--force` redoes).
Everything is validated before the first job runs, so bad input writes nothing.
Jobs return records to the driver, which writes each file atomically: the run
context decides where jobs run (in this process, worker processes, Ray), and
the records are the same wherever they ran.

A mechanism or probe that does not understand a task's family is recorded as
not applicable (with the reason), never an error; a model that cannot read a
task's inputs is bad input.
"""

from __future__ import annotations

import datetime
import functools
import json
import platform
import subprocess
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import sparsebench
from sparsebench import limits, registry
from sparsebench.api import EVAL_SEED, NotApplicable, Task, applies
from sparsebench.build import make_mechanism, make_model, make_task, model_class
from sparsebench.checkpoints import RunSpec, train_or_load
from sparsebench.config import from_dict, to_dict
from sparsebench.context import RunContext
from sparsebench.errors import ConfigError, UserError
from sparsebench.explain import make_rivals, model_info, score_probe
from sparsebench.io import ensure_writable, write_json
from sparsebench.probes import model_hook_names
from sparsebench.records import (CheckpointInfo, EvalInfo, ExplanationRecord, MechanismInfo, ModelInfo, Provenance,
                                 SolutionRecord, Solver, TaskInfo, record_id, to_json)
from sparsebench.suite import Run, Suite
from sparsebench.training import TrainConfig, seed_generator


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


def provenance(device: torch.device, seconds: float) -> Provenance:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return Provenance(**_static_provenance(), device=str(device), wall_seconds=round(seconds, 3), date=now)


def task_info(task: Task) -> TaskInfo:
    return TaskInfo(name=task.name, version=task.version, family=task.family, config=task.config_dict(),
                    metric_directions=list(task.metric_directions.items()))


class Plan:
    """A validated suite: run specs per width, mechanisms, probes, nulls, and every record id."""

    def __init__(self, suite: Suite):
        self.suite = suite
        self.mechanisms = {m: make_mechanism(m, suite.mechanism_config.get(m, {})) for m in suite.mechanisms}
        self.probes = {p: make_probe(p, suite.probe_config.get(p)) for p in (suite.probes or registry.probes.names())}
        unknown = sorted(set(suite.probe_config) - set(self.probes))
        if unknown:
            raise UserError(f"invalid suite config: probe_config: configures {unknown[0]!r}, which is not among "
                            f"the probes ({', '.join(self.probes)})")
        self.nulls = {n: registry.baselines.get(n)() for n in (suite.nulls or registry.baselines.names())}
        self.controls = {c: registry.controls.get(c)() for c in (suite.controls or registry.controls.names())}
        for name, obj in (*self.nulls.items(), *self.controls.items()):
            obj.name = name
        self.tasks = [make_task(run.task, run.task_config) for run in suite.runs]
        self.specs = {(i, w): self.spec(run, w) for i, run in enumerate(suite.runs) for w in self.widths(i)}
        self._check_sizes()
        self._check_probes_against_models()
        if suite.construct:
            for i, task in enumerate(self.tasks):
                for w in self.construct_widths(i):
                    for mech in self.mechanisms.values():
                        if applies(mech, task) is None:
                            mech.validate(task, w)

    def registry_names(self) -> dict[str, list[str]]:
        """Every registered entry this plan uses, by registry kind."""
        runs = self.suite.runs
        return {"tasks": [r.task for r in runs], "models": [r.model for r in runs],
                "mechanisms": list(self.mechanisms), "probes": list(self.probes), "baselines": list(self.nulls),
                "controls": list(self.controls)}

    def width_fields(self, run: int) -> tuple[str, ...]:
        """The model fields the run's width sweep sets (its own, else the model's declaration)."""
        r = self.suite.runs[run]
        return tuple(r.width_fields) if r.width_fields is not None else tuple(model_class(r.model).width_fields)

    def widths(self, run: int) -> list[int | None]:
        """The run's width sweep (its own, else the suite's); [None] = the model config as given."""
        if not self.width_fields(run):
            return [None]
        return list(self.suite.runs[run].widths or self.suite.widths) or [None]

    def width(self, run: int, width: int | None) -> int:
        """The width of the run's model at a sweep point (None: the model config's own)."""
        spec = self.specs[(run, width)]
        return width if width is not None else model_class(spec.model).width_of(spec.model_config)

    def construct_widths(self, run: int) -> list[int]:
        """Widths at which the mechanisms' constructions are built for this run's task."""
        if self.suite.construct_widths:
            return list(self.suite.construct_widths)
        return [self.width(run, w) for w in self.widths(run)]

    def spec(self, run: Run, width: int | None) -> RunSpec:
        model_cfg = dict(run.model_config)
        if width is not None:
            fields = run.width_fields if run.width_fields is not None else model_class(run.model).width_fields
            model_cfg.update({f: width for f in fields})
        train = from_dict(TrainConfig, {**to_dict(self.suite.train), **run.train}, "train")
        try:
            return RunSpec.create(run.task, run.task_config, run.model, model_cfg, train)
        except ConfigError as e:  # a model too wide to fit: name the sweep that asked for it
            if width is not None and e.where == "model" and e.field in model_cfg and model_cfg[e.field] == width \
                    and "too large" in e.detail:
                raise ConfigError("suite", "widths", e.detail) from None
            raise

    def _check_sizes(self) -> None:
        """Evaluation sizes and construction widths that cannot fit in memory: refused before any work
        (the trained models' sizes are checked by `RunSpec.create`)."""
        defaults = {f: Suite.__dataclass_fields__[f].default for f in ("eval_samples", "probe_samples")}
        for i, task in enumerate(self.tasks):
            limits.check_samples(task, {f: (getattr(self.suite, f), defaults[f]) for f in defaults})
            if self.suite.construct and self.mechanisms:
                run = self.suite.runs[i]
                for w in self.construct_widths(i):
                    cfg = {**self.specs[next(k for k in self.specs if k[0] == i)].model_config,
                           **{f: w for f in self.width_fields(i)}}
                    try:
                        limits.check_run(task, model_class(run.model), cfg)
                    except ConfigError as e:
                        field = "construct_widths" if self.suite.construct_widths else "widths"
                        raise ConfigError("suite", field, e.detail) from None

    def _check_probes_against_models(self) -> None:
        """A probe that reads a hook the model lacks is bad input: say so before anything runs."""
        for (i, _), spec in self.specs.items():
            task = spec.make_task()
            model = make_model(spec.model, spec.model_config, task)
            batch = task.sample(2, generator=torch.Generator().manual_seed(0))
            hooks = model_hook_names(model, batch)
            for name, probe in self.probes.items():
                missing = [h for h in probe.reads if h not in hooks]
                if applies(probe, task) is None and missing:
                    raise UserError(f"probe {name!r} reads {missing[0]!r}, which model "
                                    f"{self.suite.runs[i].model!r} does not have")

    # Record ids: hashes of everything that determines a record's numbers.
    def eval_info(self) -> EvalInfo:
        return EvalInfo(n_samples=self.suite.eval_samples, probe_samples=self.suite.probe_samples, seed=EVAL_SEED)

    def _scoring(self, m: str) -> dict[str, Any]:
        """What determines an explanation record's numbers besides the model: mechanism, probes, rivals."""
        return {"kind": "explanation", "mechanism": m, "mechanism_config": self.mechanisms[m].config_dict(),
                "probes": {p: to_dict(probe.config) if probe.config is not None else {}
                           for p, probe in sorted(self.probes.items())},
                "nulls": sorted(self.nulls), "controls": sorted(self.controls), "chunks": self.suite.probe_chunks,
                "probe_seed": probe_seed(0)}

    def trained_ids(self, run: int, width: int | None, seed: int) -> dict[str, str]:
        spec = self.specs[(run, width)]
        base = {**spec.describe(seed), "eval": self.eval_info().model_dump()}
        ids = {"solution": record_id({**base, "kind": "solution"})}
        for m in self.mechanisms:
            ids[f"explanation/{m}"] = record_id({**base, **self._scoring(m)})
        return ids

    def _built(self, run: int, width: int, mechanism: str, seed: int) -> dict[str, Any]:
        task = self.tasks[run]
        return {"task": task.name, "version": task.version, "task_config": task.config_dict(),
                "mechanism": mechanism, "config": self.mechanisms[mechanism].config_dict(), "width": width,
                "seed": seed, "eval": self.eval_info().model_dump()}

    def construction_id(self, run: int, width: int, mechanism: str, seed: int) -> str:
        return record_id({"kind": "solution", **self._built(run, width, mechanism, seed)})

    def validity_ids(self, run: int, width: int, truth: str, seed: int) -> dict[str, str]:
        """Ids of the explanation records of every mechanism on `truth`'s construction (probe validity)."""
        if width not in self.suite.validity_widths:
            return {}
        built = self._built(run, width, truth, seed)
        return {m: record_id({**built, **self._scoring(m), "subject": "construction"}) for m in self.mechanisms}

    def jobs(self) -> list[Job]:
        jobs = [Job("trained", i, w) for i in range(len(self.suite.runs)) for w in self.widths(i)]
        if self.suite.construct:
            by_task: dict[Any, tuple[int, set[int]]] = {}  # task -> (first run using it, union of widths)
            for i, task in enumerate(self.tasks):
                key = (task.name, json.dumps(task.config_dict(), sort_keys=True))
                first, widths = by_task.get(key, (i, set()))
                by_task[key] = (first, widths | set(self.construct_widths(i)))
            for first, widths in by_task.values():
                jobs += [Job("construction", first, w, m) for w in sorted(widths) for m in self.mechanisms]
        return jobs

    def record_paths(self, job: Job) -> list[str]:
        if job.kind == "construction":
            out = []
            for s in self.suite.seeds:
                out.append(f"solution/{self.construction_id(job.run, job.width, job.mechanism, s)}.json")  # type: ignore[arg-type]
                out += [f"explanation/{rid}.json" for rid in
                        self.validity_ids(job.run, job.width, job.mechanism, s).values()]  # type: ignore[arg-type]
            return out
        out = []
        for s in self.suite.seeds:
            for key, rid in self.trained_ids(job.run, job.width, s).items():
                out.append(f"{key.split('/')[0]}/{rid}.json")
        return out


def probe_seed(seed: int) -> int:
    """The seed of a model seed's probe batch: every seed is scored on its own, independent batch."""
    return EVAL_SEED + 1 + 7919 * (seed + 1)


def make_probe(name: str, config: dict[str, Any] | None) -> Any:
    """Probe `name` with the suite's options for it (`probe_config.<name>`); a bad option is one error naming it."""
    cls = registry.probes.get(name)
    if config and getattr(cls, "Config", None) is None:
        raise UserError(f"invalid suite config: probe_config: probe {name!r} takes no options")
    try:
        probe = cls(from_dict(cls.Config, config or {}, "probe") if getattr(cls, "Config", None) else None)
    except ConfigError as e:
        raise ConfigError("suite", f"probe_config.{name}.{e.field}", e.detail) from None
    probe.name = name
    return probe


def _null_models(plan: Plan, model: Any, task: Task, seed: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, null in plan.nulls.items():
        why = null.why_not(model)
        out[n] = NotApplicable(why) if why else null.make(model, task, seed=seed,
                                                          generator=seed_generator(seed, f"null-{n}"))
    return out


def _explanation(plan: Plan, m: str, model: Any, null_models: dict[str, Any], task: Task, seed: int,
                 chunks: list[Any]) -> dict[str, Any]:
    """The fields of an explanation record: the fit, its rivals, every probe (`sparsebench.explain`)."""
    mech = plan.mechanisms[m]
    why = applies(mech, task) or mech.why_not(model)
    if why:
        return dict(status="not_applicable", reason=f"mechanism {m} {why}" if applies(mech, task) else why)

    def refit(target: Any) -> Any:
        return mech.fit(target, task, generator=seed_generator(seed, "fit"))

    fitted = refit(model)
    null_models = {n: (NotApplicable(f"{m} cannot read the null model: {mech.why_not(nm)}")
                       if not isinstance(nm, NotApplicable) and mech.why_not(nm) else nm)
                   for n, nm in null_models.items()}
    rivals = make_rivals(fitted, model, task, plan.controls, null_models, refit,
                         lambda stream: seed_generator(seed, stream),
                         {n for n, null in plan.nulls.items() if null.relabels_inputs})
    probes = {name: score_probe(probe, model, fitted, rivals, task, chunks) for name, probe in plan.probes.items()}
    return dict(fit=fitted.summary(),
                null_fits={n: nf[1].summary() for n, nf in rivals.nulls.items() if isinstance(nf, tuple)},
                nulls={n: (v.reason if isinstance(v, NotApplicable) else plan.nulls[n].description)
                       for n, v in null_models.items()},
                controls={c: (v.reason if isinstance(v, NotApplicable) else plan.controls[c].description)
                          for c, v in rivals.controls.items()},
                probes=probes)


def run_trained(plan: Plan, job: Job, ctx: RunContext, skip: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Train or load every seed of (run, width); return its solution and explanation records."""
    spec = plan.specs[(job.run, job.width)]
    task = spec.make_task()
    width = plan.width(job.run, job.width)
    checkpoints = train_or_load(spec, list(plan.suite.seeds), ctx)
    held = task.held_out(plan.suite.eval_samples, seed=EVAL_SEED, device=ctx.device)
    for ck in checkpoints:  # a model that cannot score must never reach a board (NaN logits score "perfect")
        finite_logits(ck.model, held, f"the trained {spec.model} (seed {ck.seed}) on {spec.task}",
                      "lower train.lr or train.init_scale")
    model_info = ModelInfo(name=spec.model, config=spec.model_config, width_fields=list(plan.width_fields(job.run)))
    out = []
    for ck in checkpoints:
        ids = plan.trained_ids(job.run, job.width, ck.seed)
        common = dict(schema_version=2, task=task_info(task), width=width, seed=ck.seed, eval=plan.eval_info(),
                      model=model_info, train=to_dict(spec.train),
                      checkpoint=CheckpointInfo(key=ck.key, sha256=ck.sha256))
        if f"solution/{ids['solution']}.json" not in skip:
            start = time.perf_counter()
            with torch.no_grad():
                metrics = task.metrics(ck.model(**held.inputs), held)
            behaviour = task.behaviour(ck.model, held, generator=seed_generator(ck.seed, "behaviour"))
            rec = SolutionRecord(**common, kind="solution", id=ids["solution"],
                                 solver=Solver(type="trained", name=spec.model, config=spec.model_config),
                                 metrics=metrics, behaviour=behaviour,
                                 provenance=provenance(ctx.device, time.perf_counter() - start))
            out.append((f"solution/{rec.id}.json", to_json(rec)))
        todo = [m for m in plan.mechanisms if f"explanation/{ids[f'explanation/{m}']}.json" not in skip]
        null_models = _null_models(plan, ck.model, task, ck.seed) if todo and any(
            applies(plan.mechanisms[m], task) is None for m in todo) else {}
        chunks = task.held_out(plan.suite.probe_samples, seed=probe_seed(ck.seed),
                               device=ctx.device).split(plan.suite.probe_chunks)
        for m in todo:
            start = time.perf_counter()
            mech_info = MechanismInfo(name=m, config=plan.mechanisms[m].config_dict(),
                                      oracle=type(plan.mechanisms[m]).oracle)
            fields = _explanation(plan, m, ck.model, null_models, task, ck.seed, chunks)
            rec = ExplanationRecord(**common, kind="explanation", id=ids[f"explanation/{m}"], mechanism=mech_info,
                                    **fields, provenance=provenance(ctx.device, time.perf_counter() - start))
            out.append((f"explanation/{rec.id}.json", to_json(rec)))
    return out


def run_construction(plan: Plan, job: Job, ctx: RunContext, skip: set[str]) -> list[tuple[str, dict[str, Any]]]:
    """Build the mechanism's exact solution at this width for every seed and score it on the task; at a
    validity width, also explain the construction with every mechanism (its mechanism is known)."""
    task = plan.tasks[job.run]
    mech = plan.mechanisms[job.mechanism]  # type: ignore[index]
    why = applies(mech, task)
    held = None if why else task.held_out(plan.suite.eval_samples, seed=EVAL_SEED, device=ctx.device)
    out = []
    for seed in plan.suite.seeds:
        rid = plan.construction_id(job.run, job.width, job.mechanism, seed)  # type: ignore[arg-type]
        validity = {m: v for m, v in plan.validity_ids(job.run, job.width, job.mechanism, seed).items()  # type: ignore[arg-type]
                    if f"explanation/{v}.json" not in skip}
        if f"solution/{rid}.json" in skip and not validity:
            continue
        start = time.perf_counter()
        common = dict(schema_version=2, task=task_info(task), width=job.width, seed=seed, eval=plan.eval_info(),
                      train=None, checkpoint=None)
        solver = dict(type="construction", name=job.mechanism, config=mech.config_dict(), oracle=type(mech).oracle)
        if why:
            rec = SolutionRecord(**common, kind="solution", id=rid, model=None, solver=Solver(**solver), metrics={},
                                 status="not_applicable", reason=f"mechanism {job.mechanism} {why}",
                                 provenance=provenance(ctx.device, time.perf_counter() - start))
            out.append((f"solution/{rid}.json", to_json(rec)))
            continue
        model = mech.construct(task, job.width, generator=seed_generator(seed, f"construct-{job.mechanism}"))
        model = model.to(ctx.device).eval()
        finite_logits(model, held, f"mechanism {job.mechanism}'s construction at width {job.width}",
                      "check the mechanism's config")
        if f"solution/{rid}.json" not in skip:
            with torch.no_grad():
                metrics = task.metrics(model(**held.inputs), held)  # type: ignore[union-attr]
            theory = mech.theory(task, job.width) if hasattr(mech, "theory") else {}
            behaviour = task.behaviour(model, held, generator=seed_generator(seed, "behaviour"))  # type: ignore[arg-type]
            rec = SolutionRecord(**common, kind="solution", id=rid, model=None,
                                 solver=Solver(**solver, built=built_summary(model)), metrics=metrics, theory=theory,
                                 behaviour=behaviour, provenance=provenance(ctx.device, time.perf_counter() - start))
            out.append((f"solution/{rid}.json", to_json(rec)))
        if validity:
            null_models = _null_models(plan, model, task, seed)  # the mechanism applies: so the task family
            chunks = task.held_out(plan.suite.probe_samples, seed=probe_seed(seed),
                                   device=ctx.device).split(plan.suite.probe_chunks)
            for m, vid in validity.items():
                start = time.perf_counter()
                mech_info = MechanismInfo(name=m, config=plan.mechanisms[m].config_dict(),
                                          oracle=type(plan.mechanisms[m]).oracle)
                fields = _explanation(plan, m, model, null_models, task, seed, chunks)
                rec = ExplanationRecord(**common, kind="explanation", id=vid, subject="construction",
                                        truth=job.mechanism, model=model_info(model), mechanism=mech_info, **fields,
                                        provenance=provenance(ctx.device, time.perf_counter() - start))
                out.append((f"explanation/{vid}.json", to_json(rec)))
    return out


def finite_logits(model: Any, batch: Any, what: str, hint: str) -> None:
    """Refuse a model with a NaN or +inf logit on `batch` (a UserError: no record is written). -inf is a
    legitimate logit (a token ruled out)."""
    with torch.no_grad():
        logits = model(**batch.inputs)
        ok = not bool((torch.isnan(logits) | torch.isposinf(logits)).any())
    if not ok:
        raise UserError(f"{what} gives NaN or infinite logits (training diverged?); no record written: {hint}")


def built_summary(model: Any) -> dict[str, float]:
    """Scalars a construction chose when it was built (e.g. a tuned logit scale), for the record."""
    return {k: float(v) for k, v in getattr(model, "construction_info", {}).items()}


def run_job(plan: Plan, job: Job, ctx: RunContext, skip: set[str]) -> list[tuple[str, dict[str, Any]]]:
    if job.kind == "construction":
        return run_construction(plan, job, ctx, skip)
    return run_trained(plan, job, ctx, skip)


def evaluate(suite: Suite, out: Path, ctx: RunContext | None = None, *, force: bool = False) -> dict[str, int]:
    """Run the suite in the run context `ctx` (default: this process, on the CPU); write records under
    `out`. Returns counts of written and skipped records, and of jobs run."""
    ctx = ctx or RunContext.create("cpu")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    plan = Plan(suite)  # validates everything before any work
    jobs = plan.jobs()
    existing = set() if force else {str(p.relative_to(out)) for p in out.glob("*/*.json")} if out.exists() else set()
    paths = [(j, set(plan.record_paths(j))) for j in jobs]
    todo = [(j, existing & p) for j, p in paths if not p <= existing]
    skipped = sum(len(existing & p) for _, p in paths)
    written = 0
    if todo:  # before any work: a folder that cannot be written is one line now, not after the training
        if any(j.kind == "trained" and not _all_cached(plan, j, ctx) for j, _ in todo):
            ensure_writable(ctx.cache_root / "models", "the model cache", hint="--cache or SPARSEBENCH_CACHE")
        ensure_writable(out, "the results folder", hint="--out")
    # Each job runs in one single-threaded worker; with fewer jobs than workers (the transformer suite is one
    # job), a job's seeds are split over the spare ones too (seed splits give the same weights: training.train).
    spare = max(1, ctx.workers // len(todo)) if todo and ctx.executor == "local" else 1
    calls = [(plan, job, ctx.single(spare) if ctx.workers > 1 or ctx.executor != "local" else ctx, skip)
             for job, skip in todo]
    # closing: an exception here (Ctrl-C while writing) stops the worker processes now, not at exit
    with closing(ctx.accel.map_jobs(run_job, calls, plan.registry_names())) as results:
        for records in results:
            for rel, record in records:
                write_json(out / rel, record)
                written += 1
    return {"written": written, "skipped": skipped, "jobs": len(todo)}


def _all_cached(plan: Plan, job: Job, ctx: RunContext) -> bool:
    """Whether every seed of a trained job has a cache entry (a read-only cache can serve it)."""
    spec = plan.specs[(job.run, job.width)]
    return all((ctx.cache_root / "models" / spec.key(s)).is_dir() for s in plan.suite.seeds)
