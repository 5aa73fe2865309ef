"""`sparsebench tickets`: plan the variants of a tickets suite, run the missing ones, write one record each.

A *variant* is (width, seed, detector, sparsity, detection step, init mode): one
`TicketRecord`, whose id hashes everything that determines its numbers, so a rerun
skips what exists (`--force` redoes) and an interrupted run resumes. Everything is
validated before any work (bad input: one `error:` line, nothing written).

One job per width (and share of the seeds, one share per `--workers` process): the seeds'
dense runs with snapshots (`dense.py`, cached) -> every needed mask
(detector scores at the variant's step and budget -> `masks.py`) -> every distinct
retraining instance (the same seed, mask and initial weights train once: a step-independent
detector's mask retrained from θ0 or a fresh init serves every step's record, and two
detectors that chose the same mask share it) trained as one stacked model
(`retrain.py`) -> metrics, code counts, recalls against the dense final model, Jaccard
to the dense-final magnitude mask -> records, returned to the driver, which writes each
atomically. A job's work does not depend on the other jobs, so the records are the same
whether one process or several ran them.
"""

from __future__ import annotations

import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsebench import limits
from sparsebench.api import EVAL_SEED, applies
from sparsebench.build import make_model, make_task, model_class
from sparsebench.checkpoints import RunSpec
from sparsebench.config import to_dict
from sparsebench.context import RunContext
from sparsebench.errors import ConfigError, UserError
from sparsebench.io import ensure_writable, write_json
from sparsebench.mechanisms.feature_channel import SiteCodes, site_codes
from sparsebench.records import (DetectorInfo, EvalInfo, ModelInfo, TicketRecord, record_id, to_json)
from sparsebench.tickets.config import TicketSuite
from sparsebench.tickets.dense import DenseRun, dense_runs
from sparsebench.models.mlp2 import C0_KEY, MASK_KEY, W1_KEY
from sparsebench.tickets.detectors import DetectionInput, Detector, make_detector
from sparsebench.tickets.masks import budget, jaccard, top_mask, translate
from sparsebench.tickets.retrain import Instance, evaluate_stacked, feature_codes, stack, train_stacked
from sparsebench.training import seed_generator

KINDS = ("feature", "weight", "control", "reference")  # a detector's kind (references: shown, never ranked)
MAX_STACK = 512  # instances per stacked model (bounds memory; each chunk trains on the same data)
# Ticket metrics, in display order, with their directions (recorded with every record).
TICKET_DIRECTIONS: dict[str, str] = {
    "exact_codes": "higher",  # exact codes (d = 0) of the retrained sparse model
    "covered": "higher",  # clauses with at least one exact code
    "same_site_recall": "higher",  # dense-final exact codes recovered on the same (row, clause)
    "family_recall": "higher",  # dense-final exact codes whose clause has an exact code on any row
    "jaccard_oracle": "higher",  # Jaccard of the mask with the dense-final magnitude mask at the same sparsity
    "near_codes": "higher",  # near codes (d <= near) of the retrained model
    "near_frac_final_codes": "higher",  # of its final exact sites, the share near a code at retraining start
    "near_frac_other": "lower",  # of its other sites, the share near a code at retraining start
}


@dataclass(frozen=True)
class Variant:
    width: int
    seed: int
    detector: str
    sparsity: float  # 0.0 for a detector that keeps all
    step: int  # detection step (the board's group)
    init_mode: str

    def init_source(self) -> tuple[Any, ...]:
        return {"rewind-0": ("theta", 0), "rewind-e": ("theta", self.step), "fresh": ("fresh",)}[self.init_mode]


class TicketPlan:
    """A validated tickets suite: tasks, specs per width, detectors, variants and their record ids."""

    def __init__(self, suite: TicketSuite):
        self.suite = suite
        self.task = make_task(suite.task, suite.task_config)
        cls = model_class(suite.model)
        why = applies(cls, self.task)
        if why:
            raise UserError(f"model {suite.model!r} cannot train on task {suite.task!r}: it {why}")
        self.width_field = cls.width_fields[0]
        self.detectors: dict[str, Detector] = {n: make_detector(n, suite.detector_config.get(n))
                                               for n in suite.all_detectors()}
        for name, det in self.detectors.items():
            why = applies(det, self.task)
            if why:
                raise UserError(f"detector {name!r} {why}")
            if det.kind not in KINDS:
                raise UserError(f"detector {name!r} has kind {det.kind!r}; a detector's kind is one of "
                                f"{', '.join(KINDS)}")
        limits.check_samples(self.task, {"eval_samples": (suite.eval_samples, TicketSuite.eval_samples)}, "tickets")
        self.cells = [suite.cell(c) for c in suite.cells]
        default_width = cls.width_of(to_dict(cls.make_config(suite.model_config, "model")))
        self.cell_widths = [c.width or default_width for c in self.cells]
        self.specs: dict[int, RunSpec] = {}
        for w in self.cell_widths:
            if w not in self.specs:
                cfg = {**suite.model_config, self.width_field: w}
                self.specs[w] = RunSpec.create(suite.task, suite.task_config, suite.model, cfg, suite.train)
                try:  # the retraining stacks up to MAX_STACK instances: its batches must fit too
                    limits.check_run(self.task, cls, self.specs[w].model_config, suite.retrain, instances=MAX_STACK)
                except ConfigError as e:
                    raise ConfigError("retrain" if e.where == "train" else e.where, e.field, e.detail) from None
                model = make_model(suite.model, self.specs[w].model_config, self.task)
                missing = [k for k in (W1_KEY, MASK_KEY, C0_KEY) if k not in model.state_dict()]
                if missing:
                    raise UserError(f"model {suite.model!r} has no {missing[0]!r}: the ticket pipeline needs an "
                                    f"mlp2-like model with a W1 mask")

    def variants(self) -> list[Variant]:
        out: dict[Variant, None] = {}
        for c, w in zip(self.cells, self.cell_widths):
            names = list(c.detectors) if c.detectors else list(self.detectors)
            for step in c.steps:
                for sparsity in c.sparsities:
                    for init in c.init_modes:
                        if init == "rewind-e" and step == 0:
                            continue  # θ_0: the same as rewind-0
                        for name in names:
                            det = self.detectors[name]
                            if det.applies_at(step):
                                s = 0.0 if det.keeps_all else float(sparsity)
                                for seed in self.suite.seeds:
                                    out[Variant(w, seed, name, s, step, init)] = None
        return list(out)

    def registry_names(self) -> dict[str, list[str]]:
        """Every registered entry the plan uses, by registry kind (worker processes need them installed)."""
        return {"tasks": [self.suite.task], "models": [self.suite.model], "detectors": list(self.detectors)}

    def eval_info(self) -> EvalInfo:
        """Held-out sizes: the retrained models' metrics use eval_samples (tickets have no probe batch: the same)."""
        return EvalInfo(n_samples=self.suite.eval_samples, probe_samples=self.suite.eval_samples, seed=EVAL_SEED)

    def record_id(self, v: Variant) -> str:
        s, spec, det = self.suite, self.specs[v.width], self.detectors[v.detector]
        return record_id({**spec.describe(v.seed), "kind": "ticket", "retrain": to_dict(s.retrain),
                          "detector": v.detector, "detector_config": det.config_dict(), "sparsity": v.sparsity,
                          "step": v.step, "init_mode": v.init_mode, "quota": s.quota, "rho": s.rho, "near": s.near,
                          "snapshot_every": s.snapshot_every, "eval": self.eval_info().model_dump()})

    def snapshot_plan(self, width: int) -> tuple[list[int], list[int]]:
        """(full snapshot steps, W1 snapshot steps) of the dense runs at `width`: from the whole suite, not only
        what is left to do, so a rerun finds the same cached runs."""
        steps = sorted({s for c, w in zip(self.cells, self.cell_widths) if w == width for s in c.steps})
        every = self.suite.snapshot_every
        return steps, sorted(set(range(0, max(steps) + 1, every)) | set(steps))


# ----------------------------------------------------------------------------- running


def run_tickets(suite: TicketSuite, out: Path, ctx: RunContext | None = None, *, force: bool = False) -> dict[str, int]:
    """Run the suite's missing variants in `ctx` (default: this process, the CPU); write records under `out`.
    Returns counts of written and skipped records.

    On the CPU the work runs on one torch thread (restored afterwards): the models are overhead-bound, and
    a thread count changes reduction orders, hence the weights in the last bits and then chaotically; on one
    thread the records are bitwise the same on any machine with this torch build, whatever its cores."""
    ctx = ctx or RunContext.create("cpu")
    threads = torch.get_num_threads()
    if ctx.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return _run_tickets(suite, out, ctx, force)
    finally:
        torch.set_num_threads(threads)


def _run_tickets(suite: TicketSuite, out: Path, ctx: RunContext, force: bool) -> dict[str, int]:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    plan = TicketPlan(suite)
    variants = plan.variants()
    ids = {v: plan.record_id(v) for v in variants}
    existing = set() if force else {p.stem for p in (out / "ticket").glob("*.json")} if out.exists() else set()
    todo = [v for v in variants if ids[v] not in existing]
    if todo:  # before any work: a results folder that cannot be written is one line now, not after the training
        ensure_writable(out, "the results folder", hint="--out")
    # One job per width and share of the seeds (one share per worker: the seeds of a share train stacked).
    job_ctx = ctx.single() if ctx.workers > 1 else ctx
    calls = []
    for w in plan.specs:
        seeds = sorted({v.seed for v in todo if v.width == w})
        for share in _shares(seeds, ctx.workers) if seeds else []:
            calls.append((plan, w, share, [v for v in todo if v.width == w and v.seed in share], job_ctx))
    written = 0
    # closing: an exception here (Ctrl-C while writing) stops the worker processes now, not at exit
    with closing(ctx.accel.map_jobs(run_job, calls, plan.registry_names(), desc="tickets")) as results:
        for records in results:
            for rel, data in records:
                write_json(out / rel, data)
                written += 1
    return {"written": written, "skipped": len(variants) - len(todo), "variants": len(variants)}


def _shares(seeds: list[int], parts: int) -> list[list[int]]:
    """`seeds` in at most `parts` contiguous, non-empty groups whose sizes differ by at most one."""
    parts = max(1, min(parts, len(seeds)))
    size, extra = divmod(len(seeds), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        out.append(seeds[start:end])
        start = end
    return out


def run_job(plan: TicketPlan, width: int, seeds: list[int], todo: list[Variant],
            ctx: RunContext) -> list[tuple[str, dict[str, Any]]]:
    """One width and some seeds: their dense runs, masks, retraining and records (as JSON, for the driver to write).

    Every instance's arithmetic is its own (batched matmuls, elementwise AdamW), so a record does not depend on
    which other seeds shared its job: the records are the same for any number of workers (tested)."""
    threads = torch.get_num_threads()
    if ctx.device.type == "cpu":
        torch.set_num_threads(1)
    try:
        return [(f"ticket/{r.id}.json", to_json(r)) for r in _run_seeds(plan, width, seeds, todo, ctx)]
    finally:
        torch.set_num_threads(threads)


@dataclass
class _SeedView:
    """One seed's dense run at one width, with what every variant of it reads."""

    run: DenseRun
    init_codes: SiteCodes  # θ0's site table (distances for the survival table)
    final_codes: SiteCodes  # the dense final model's site table
    dense_metrics: dict[str, float]


def _run_seeds(plan: TicketPlan, width: int, seeds: list[int], todo: list[Variant],
               ctx: RunContext) -> list[TicketRecord]:
    suite, task, spec = plan.suite, plan.task, plan.specs[width]
    start = time.perf_counter()
    full_steps, w1_steps = plan.snapshot_plan(width)
    runs = dense_runs(spec, seeds, full_steps, w1_steps, ctx)
    template = make_model(spec.model, spec.model_config, task, generator=torch.Generator().manual_seed(0))
    held = task.held_out(suite.eval_samples, seed=EVAL_SEED)
    T = spec.train.steps
    views = {s: _seed_view(plan, template, runs[s], held) for s in seeds}

    masks: dict[tuple[Any, ...], tuple[Tensor, dict[str, float]]] = {}
    instances: dict[tuple[Any, ...], int] = {}
    inst_list: list[Instance] = []
    per_variant: list[tuple[Variant, int, Tensor, dict[str, float]]] = []
    for v in todo:
        det = plan.detectors[v.detector]
        mask_step = v.step if det.uses_step else None
        mkey = (v.seed, v.detector, mask_step, v.sparsity)
        if mkey not in masks:
            masks[mkey] = _mask(plan, det, views[v.seed].run, template, v, ctx)
        mask, info = masks[mkey]
        # Identical masks (e.g. Early-Bird before it converges is magnitude at the step) train once.
        tkey = (v.seed, mask.numpy().tobytes(), v.init_source())
        if tkey not in instances:
            instances[tkey] = len(inst_list)
            inst_list.append(Instance(v.seed, _init_state(plan, spec, runs[v.seed], v), mask))
        per_variant.append((v, instances[tkey], mask, info))

    metrics, final_codes, init_codes = [], [], []
    for lo in range(0, len(inst_list), MAX_STACK):
        chunk = inst_list[lo: lo + MAX_STACK]
        module = stack(task, spec.model, spec.model_config, chunk)
        init_codes.append(feature_codes(module, task, suite.rho, suite.near).distance)
        losses = train_stacked(module, task, suite.retrain, [i.seed for i in chunk], ctx, label=f"retrain H={width}")
        finite = torch.stack([torch.isfinite(p.detach()).flatten(1).all(1) for p in module.params.values()]).all(0)
        bad = int((~(finite & torch.isfinite(losses))).sum())  # a diverged ticket must never reach a board
        if bad:
            raise UserError(f"retraining diverged: {bad} of {len(chunk)} tickets at width {width} ended with a "
                            f"non-finite loss or weights (retrain.lr={suite.retrain.lr:g}); lower retrain.lr")
        module = module.cpu()
        metrics.append(evaluate_stacked(module, task, held))
        final_codes.append(feature_codes(module, task, suite.rho, suite.near).distance)
    metric_rows = torch.cat(metrics)
    final_d, init_d = torch.cat(final_codes), torch.cat(init_codes)
    seconds = (time.perf_counter() - start) / max(1, len(todo))

    from sparsebench.evaluate import provenance, task_info

    oracle = {}
    out = []
    for v, i, mask, info in per_variant:
        view = views[v.seed]
        okey = (v.seed, v.sparsity)
        if okey not in oracle:
            keep = budget(*mask.shape, v.sparsity) if v.sparsity > 0 else mask.numel()
            oracle[okey] = top_mask(view.run.full[T][W1_KEY].abs(), keep)
        tickets, sites = _ticket_metrics(final_d[i], init_d[i], view, mask, oracle[okey], suite.near)
        det = plan.detectors[v.detector]
        rec = TicketRecord(
            schema_version=2, kind="ticket", id=plan.record_id(v), task=task_info(task), width=width, seed=v.seed,
            eval=plan.eval_info(), provenance=provenance(ctx.device, seconds),
            model=ModelInfo(name=spec.model, config=spec.model_config, width_fields=[plan.width_field]),
            train=to_dict(spec.train), retrain=to_dict(suite.retrain),
            detector=DetectorInfo(name=v.detector, config=det.config_dict(), kind=det.kind, uses_step=det.uses_step),
            sparsity=v.sparsity, detection_step=v.step, init_mode=v.init_mode, quota=suite.quota, rho=suite.rho,
            metrics={k: float(x) for k, x in zip(task.metric_directions, metric_rows[i].tolist())},
            tickets=tickets, ticket_directions=list(TICKET_DIRECTIONS.items()), dense=view.dense_metrics,
            detector_info={**info, "density": float(mask.mean())}, sites=sites)
        out.append(rec)
    return out


def _seed_view(plan: TicketPlan, template: Any, run: DenseRun, held: Any) -> _SeedView:
    s, task = plan.suite, plan.task
    T = max(run.full)
    codes = {t: site_codes(run.full[t][W1_KEY].float() @ run.full[t][C0_KEY].float(), task.variables,
                           task.signs, s.rho, s.near) for t in (0, T)}
    model = _load(template, run.full[T])
    with torch.no_grad():
        m = task.metrics(model(**held.inputs), held)
    dense = {**m, "exact_codes": float(codes[T].exact.sum()), "covered": float(codes[T].covered.sum()),
             "near_codes": float(codes[T].near.sum())}
    return _SeedView(run, codes[0], codes[T], dense)


def _load(template: Any, state: dict[str, Tensor]) -> Any:
    import copy

    model = copy.deepcopy(template)
    model.load_state_dict(state)
    return model.eval()


def _mask(plan: TicketPlan, det: Detector, run: DenseRun, template: Any, v: Variant,
          ctx: RunContext) -> tuple[Tensor, dict[str, float]]:
    """The detector's mask for one variant (scores at the variant's step, translated or top-B)."""
    task, s = plan.task, plan.suite
    T = max(run.full)
    H, d = run.full[0][W1_KEY].shape
    if det.keeps_all:
        return torch.ones(H, d), {"filled": 0.0}
    keep = budget(H, d, v.sparsity)
    at = run.full[v.step]
    inp = DetectionInput(
        task=task, step=v.step, budget=keep, init=run.full[0], at_step=at, final=run.full[T],
        w1_history={t: w for t, w in run.w1.items() if t <= v.step}, rho=s.rho, near=s.near,
        load=lambda state: _load(template, state),
        data=lambda n: task.sample(n, generator=seed_generator(run.seed, "detect")),
        generator=lambda name: seed_generator(run.seed, name))
    scores = det.scores(inp)
    if scores.space == "sites":
        want = (H, task.n_outputs)
        if tuple(scores.values.shape) != want:
            raise UserError(f"detector {det.name!r} returned site scores of shape {tuple(scores.values.shape)}, "
                            f"expected {want}")
        mask, filled = translate(scores.values, at[W1_KEY], at[C0_KEY], task.variables, task.signs, keep, s.quota)
    else:
        if tuple(scores.values.shape) != (H, d):
            raise UserError(f"detector {det.name!r} returned weight scores of shape {tuple(scores.values.shape)}, "
                            f"expected {(H, d)}")
        mask, filled = top_mask(scores.values, keep), 0
    return mask, {**{k: float(x) for k, x in scores.info.items()}, "filled": float(filled)}


def _init_state(plan: TicketPlan, spec: RunSpec, run: DenseRun, v: Variant) -> dict[str, Tensor]:
    """W1_init and the rest: θ0, θ_e, or a fresh draw (a fixed C0 stays θ0's: the mask was read in its basis)."""
    if v.init_mode == "rewind-0":
        return run.full[0]
    if v.init_mode == "rewind-e":
        return run.full[v.step]
    fresh = make_model(spec.model, spec.model_config, plan.task,
                       generator=seed_generator(v.seed, "fresh-init")).state_dict()
    if spec.model_config.get("embed") != "learned":
        fresh[C0_KEY] = run.full[0][C0_KEY]
    return {k: t.detach().clone() for k, t in fresh.items()}


def _ticket_metrics(final_d: Tensor, init_d: Tensor, view: _SeedView, mask: Tensor, oracle: Tensor,
                    near: int) -> tuple[dict[str, float], list[tuple[int, int, int, int, int, int]]]:
    exact = final_d == 0  # [H, K]
    near_final = final_d <= near
    near_start = init_d <= near
    dense_exact = view.final_codes.exact
    n_dense = int(dense_exact.sum())
    covered = exact.any(0)  # [K]
    same = (dense_exact & exact).sum().item()
    family = (dense_exact & covered.unsqueeze(0)).sum().item()
    other = ~exact
    tickets = {
        "exact_codes": float(exact.sum()), "covered": float(covered.sum()),
        "same_site_recall": same / n_dense if n_dense else float("nan"),
        "family_recall": family / n_dense if n_dense else float("nan"),
        "jaccard_oracle": jaccard(mask, oracle), "near_codes": float(near_final.sum()),
        "near_frac_final_codes": float(near_start[exact].float().mean()) if exact.any() else float("nan"),
        "near_frac_other": float(near_start[other].float().mean()) if other.any() else float("nan"),
    }
    load0 = view.init_codes.row_load
    sites = [(h, c, int(view.init_codes.distance[h, c]), int(load0[h]), int(exact[h, c]), int(covered[c]))
             for h, c in dense_exact.nonzero().tolist()]
    return tickets, sites
