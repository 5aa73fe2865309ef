"""`sparsebench bench`: training throughput of the sparsebench trainer against a plain PyTorch loop.

Everything is measured in one run and interleaved: each repeat times a large fp32
matmul (the machine's reference FLOP rate *now*, on one thread and on all cores),
the plain loop, and the trainer at N = 1, 4, 16 instances, one after the other, so
a noisy neighbour slows all of them alike. Figures are medians over repeats of
per-repeat values (ratios are taken within a repeat, then the median is taken).

Rows and their references:
- "plain" runs at torch's default thread count (all cores: what a user gets) and at
  one thread; "x plain" divides by the *faster* of the two in the same repeat.
- "sparsebench N=..." rows run in this process on one thread: "% of matmul" is
  against the one-thread matmul.
- "... P procs" rows split the N instances over P single-threaded worker
  processes (`accel.workers`, the same split as `--workers P` gives a run's seeds),
  timed from the driver: "% of matmul" is against the fp32 matmul on as many
  threads as there are processes (at most the core count).
- "bf16" rows run the fused loss's three matmuls in bf16 (`train.precision=bf16`);
  their "% of matmul" is still against the *fp32* matmul (the issue's reference);
  the bf16 matmul rate is printed too.
- "native" rows run each step's forward and backward as one compiled call
  (`--backend native`, `sparsebench.accel.native`; "native bf16" with bf16 matmuls). Where it
  cannot run (no AVX-512 or no C compiler) they are left out and the reason is printed.

FLOPs are counted from the model's matmuls only (embedding sums, softmax and the
optimiser are not counted, so the figure is a lower bound on the work done):

    forward per sample = 2 * (n_layers * 2 * d * m + d * V)
    training step      = 3 * forward * batch * instances   (backward = 2 x forward)

`--regime tickets` (and the default, `all`) adds the ticket pipeline's stacked sparse
retraining of 4 and 16 masks against one mask at a time (`bench_tickets.py`), timed
interleaved in the same run.

The plain loop is what a blog post would write: an `nn.Module` (Embedding, two
Linear layers, Linear unembedding), AdamW with default settings, the full
log-softmax and `F.kl_div` against a dense [batch, V] target, one model at a time.
It draws its batches with the task's own (torch) sampler, as the torch-path trainer rows
do; the native rows draw the same batches, bitwise, with the native sampler
(`native.topk_from_uniforms`), which is part of what `--backend native` speeds up. The
trainer rows run the trainer's own loop (`training.optimise`) with the step the run
context's door hands out ("auto": the fused step on the CPU; "native").
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from sparsebench.accel.bench_parts import NATIVE_PARTS, PARTS, StepParts, ceiling, summarise
from sparsebench.errors import UserError

REGIMES: dict[str, dict[str, int]] = {
    # overhead-bound: small widths and batch
    "small": dict(V=500, k=5, d=32, m=32, batch=256, steps=160, min_steps=40),
    # the suite's default training size
    "default": dict(V=2000, k=5, d=64, m=64, batch=1024, steps=32, min_steps=2),
}
INSTANCES = (1, 4, 16)
# --regime: one mlp1 regime, both, the tickets part (stacked sparse retraining: bench_tickets.py), or all three.
REGIME_CHOICES = ("small", "default", "both", "tickets", "all")
TICKET_STEPS = 100  # steps per mask in the tickets part (--steps overrides)


def trainer_steps(regime: dict[str, int], n_steps: int, n: int) -> int:
    """Steps per measurement for N instances: the plain loop's samples (n_steps / N steps), but at
    least `min_steps` (capped by n_steps). Each call of the trainer's loop builds its optimiser
    state and generators (~2 ms, once per training run in real use); in the small regime 40
    steps keep that a few per cent of a measurement instead of a fifth."""
    return max(min(regime["min_steps"], n_steps), n_steps // n, 2)


def forward_flops(V: int, d: int, m: int, n_layers: int = 1) -> int:
    """Matmul FLOPs of one sample's forward pass through mlp1 (multiply-adds count 2)."""
    return 2 * (n_layers * 2 * d * m + d * V)


def matmul_rate(n: int = 2048, reps: int = 3, dtype: Any = None, threads: int = 1) -> float:
    """FLOP/s of an n x n matmul on `threads` threads (fp32 unless `dtype`; best of `reps`, after a warm-up)."""
    import torch

    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    out = torch.empty(n, n, dtype=dtype)
    with torch_threads(threads):
        torch.mm(a, b, out=out)
        best = min(_timed(lambda: torch.mm(a, b, out=out)) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn: Any) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def plain_runner(task: Any, V: int, k: int, d: int, m: int, batch: int) -> Any:
    """A one-model loop the way a blog author writes it; returns run(steps)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(V, d)
            self.fc_in = nn.Linear(d, m)
            self.fc_out = nn.Linear(m, d)
            self.unembed = nn.Linear(d, V)

        def forward(self, tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
            x = (self.embed(tokens) * weights.unsqueeze(-1)).sum(1)
            x = x + self.fc_out(F.relu(self.fc_in(x)))
            return self.unembed(x)

    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)

    def run(steps: int) -> None:
        for _ in range(steps):
            b = task.sample(batch, generator=gen)
            tokens, weights = b.inputs["tokens"], b.inputs["weights"]
            target = torch.zeros(batch, V).scatter_(1, tokens, 1.0 / k)
            loss = F.kl_div(F.log_softmax(model(tokens, weights), dim=-1), target, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()

    return run


def trainer_runner(task: Any, d: int, m: int, batch: int, n: int, precision: str = "fp32",
                   first_seed: int = 0, backend: str = "auto") -> Any:
    """The sparsebench trainer's loop on an N-instance StackedMLP; returns run(steps)."""
    from sparsebench.context import RunContext
    from sparsebench.training import TrainConfig, init_models, optimise

    seeds = list(range(first_seed, first_seed + n))
    models = init_models(task, "mlp1", {"d_model": d, "d_mlp": m}, seeds)
    module = type(models[0]).stacked(models)
    ctx = RunContext.create("cpu", progress=False, backend=backend)

    def run(steps: int) -> None:
        cfg = TrainConfig(steps=steps, batch_size=batch, warmup=0, precision=precision)  # type: ignore[arg-type]
        optimise(module, task, cfg, seeds, ctx)

    return run


@contextmanager
def torch_threads(threads: int) -> Iterator[None]:
    """torch on `threads` intra-op threads inside the block (restored afterwards)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def with_threads(run: Any, threads: int) -> Any:
    """`run(steps)` with torch on `threads` intra-op threads."""

    def wrapped(steps: int) -> None:
        with torch_threads(threads):
            run(steps)

    return wrapped


def _threads(n: int) -> str:
    return f"{n} thread{'s' if n > 1 else ''}"


def _worker(conn: Any, regime: dict[str, int], n: int, first_seed: int, precision: str, backend: str,
            parent: int | None = None) -> None:
    """A benchmark worker process: build its share of the instances, then run steps on request."""
    from sparsebench.accel.workers import die_with_parent, init_worker
    from sparsebench.build import make_task

    if parent is not None:
        die_with_parent(parent)  # a killed benchmark leaves no worker behind
    init_worker()  # as training's worker processes are set up
    task = make_task("topk-uniform", {"V": regime["V"], "k": regime["k"]})
    run = trainer_runner(task, regime["d"], regime["m"], regime["batch"], n, precision, first_seed, backend)
    conn.send("ready")
    while (steps := conn.recv()) is not None:
        run(steps)
        conn.send("done")


class ProcessRunner:
    """N instances split over P single-threaded processes (as `--workers P` splits a run's seeds).

    run(steps) starts every worker on `steps` steps and returns when all are done, so its
    wall time is the machine's time for N instances. Workers live for the whole benchmark.
    """

    def __init__(self, regime: dict[str, int], n: int, processes: int, precision: str = "fp32",
                 backend: str = "auto"):
        import multiprocessing

        from sparsebench.accel.workers import split

        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        for share in split(list(range(n)), processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, regime, len(share), share[0], precision, backend,
                                                     os.getpid()), daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for c in self.conns:
            c.recv()  # "ready": imports and set-up are not timed

    def __call__(self, steps: int) -> None:
        for c in self.conns:
            c.send(steps)
        for c in self.conns:
            c.recv()

    def close(self) -> None:
        """Stop every worker, even ones that died or hang (after Ctrl-C they may be gone already)."""
        for c in self.conns:
            try:
                c.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
                p.join()


def run_bench(repeats: int = 5, steps: int | None = None, regime: str = "all", processes: int = 0,
              json_path: Path | None = None) -> dict[str, Any]:
    """Run the benchmark (see the module docstring), print its tables, and return (and save) the figures."""
    import torch

    if regime not in REGIME_CHOICES:
        raise UserError(f"--regime must be one of {', '.join(REGIME_CHOICES)} (got {regime!r})")
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1 (got {repeats})")
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1 (got {steps})")
    if processes < 0:
        raise UserError(f"--processes must be >= 0 (got {processes})")
    if json_path is not None and json_path.is_dir():
        raise UserError(f"--json {json_path} is a folder; give a file name")
    if json_path is not None:  # before minutes of measuring, not after
        from sparsebench.io import ensure_writable

        ensure_writable(json_path.parent, "the --json folder")
    cores = torch.get_num_threads()  # torch's default: one thread per core
    with torch_threads(1):
        return _bench(repeats, steps, regime, cores, processes or cores, json_path)


BF16_REF = f"bf16, {_threads(1)}"


def _ref(threads: int) -> str:
    """Name of the fp32 reference matmul on `threads` threads."""
    return f"fp32, {_threads(threads)}"


def _bench(repeats: int, steps: int | None, regime: str, cores: int, procs: int,
           json_path: Path | None) -> dict[str, Any]:
    import torch

    from sparsebench.accel import native
    from sparsebench.build import make_task
    from sparsebench.io import write_json

    names = {"both": ["small", "default"], "all": ["small", "default"], "tickets": []}.get(regime, [regime])
    has_native, why_not = native.available()
    native_precisions = [p for p in ("fp32", "bf16") if has_native and native.available(bf16=p == "bf16")[0]]
    report: dict[str, Any] = {"cores": cores, "processes": procs, "torch": torch.__version__,
                              "repeats": repeats, "native": has_native or why_not, "regimes": {}}
    n_max = INSTANCES[-1]
    for name in names:
        r = REGIMES[name]
        task = make_task("topk-uniform", {"V": r["V"], "k": r["k"]})
        n_steps = steps or r["steps"]
        fwd = forward_flops(r["V"], r["d"], r["m"])
        plain = plain_runner(task, r["V"], r["k"], r["d"], r["m"], r["batch"])
        # Reference matmuls: fp32 on each thread count a row uses (processes use at most `cores`), bf16 for show.
        refs = {_ref(t): t for t in sorted({1, cores, min(procs, cores)})}
        # label -> (run, instances, steps, reference matmul)
        plains = {f"plain, {_threads(t)}": t for t in sorted({cores, 1}, reverse=True)}
        runners: dict[str, tuple[Any, int, int, str]] = {
            label: (with_threads(plain, t), 1, n_steps, _ref(t)) for label, t in plains.items()}
        for n in INSTANCES:
            runners[f"sparsebench N={n}"] = (trainer_runner(task, r["d"], r["m"], r["batch"], n), n,
                                             trainer_steps(r, n_steps, n), _ref(1))
        runners[f"sparsebench N={n_max} bf16"] = (trainer_runner(task, r["d"], r["m"], r["batch"], n_max, "bf16"),
                                                  n_max, trainer_steps(r, n_steps, n_max), _ref(1))
        for precision in native_precisions:
            runners[f"sparsebench N={n_max} native{' bf16' if precision == 'bf16' else ''}"] = (
                trainer_runner(task, r["d"], r["m"], r["batch"], n_max, precision, backend="native"), n_max,
                trainer_steps(r, n_steps, n_max), _ref(1))
        # One worker's share of the N=16 step, split into parts (sparsebench/bench_parts.py). With more
        # workers than cores they take turns: `waves` rounds of steps per step of N=16.
        workers = min(procs, n_max)
        share, waves = -(-n_max // workers), -(-workers // cores)
        parts = StepParts(task, r["d"], r["m"], r["batch"], share, native=tuple(native_precisions))
        part_runs: list[dict[str, float]] = []
        pools: list[ProcessRunner] = []
        try:
            variants = [("fp32", "auto", ""), ("bf16", "auto", " bf16")] + [
                (p, "native", " native bf16" if p == "bf16" else " native") for p in native_precisions]
            for precision, backend, tag in variants if procs > 1 else ():
                pools.append(ProcessRunner(r, n_max, procs, precision, backend))
                runners[f"sparsebench N={n_max}{tag}, {procs} procs"] = (
                    pools[-1], n_max, trainer_steps(r, n_steps, n_max), _ref(min(procs, cores)))
            for run, _, s, _ in runners.values():  # warm-up: allocator, kernels, first-call costs
                run(max(1, s // 4))
            rows = {k: {"samples_s": [], "vs_plain": [], "of_matmul": []} for k in runners}
            mm: dict[str, list[float]] = {**{k: [] for k in refs}, BF16_REF: []}
            for _ in range(repeats):
                for key, t in refs.items():
                    mm[key].append(matmul_rate(threads=t))
                mm[BF16_REF].append(matmul_rate(dtype=torch.bfloat16))
                sps = {label: n * r["batch"] * s / _timed(lambda: run(s))
                       for label, (run, n, s, _) in runners.items()}
                best_plain = max(sps[label] for label in plains)
                times = parts.time(trainer_steps(r, n_steps, n_max))
                ceil_sps = n_max * r["batch"] / (waves * ceiling(times, parts.loss_flops(), mm[BF16_REF][-1]))
                part_runs.append({**times, "ceiling_samples_s": ceil_sps, "ceiling_vs_plain": ceil_sps / best_plain})
                for label, (_, _, _, ref) in runners.items():
                    rows[label]["samples_s"].append(sps[label])
                    rows[label]["vs_plain"].append(sps[label] / best_plain)
                    rows[label]["of_matmul"].append(3 * fwd * sps[label] / mm[ref][-1])
        finally:
            for pool in pools:
                pool.close()
        med = {label: {k: statistics.median(v) for k, v in row.items()} for label, row in rows.items()}
        report["regimes"][name] = {
            "config": {**r, "steps": n_steps}, "forward_flops_per_sample": fwd,
            "matmul_gflops": {k: statistics.median(v) / 1e9 for k, v in mm.items()},
            "reference": {label: ref for label, (_, _, _, ref) in runners.items()},
            "median": med, "raw": rows,
            "step_parts": {"instances": share, "processes": workers, "waves": waves,
                           "loss_flops": parts.loss_flops(), **summarise(part_runs), "raw": part_runs}}
    if regime in ("tickets", "all"):
        from sparsebench.accel.bench_tickets import bench_tickets

        report["tickets"] = bench_tickets(repeats, steps or TICKET_STEPS)
    _print(report)
    if json_path is not None:
        write_json(json_path, report)
    return report


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    import sys

    console = Console(width=None if sys.stdout.isatty() else 120)  # files and pipes get whole rows
    for name, reg in report["regimes"].items():
        c, g = reg["config"], reg["matmul_gflops"]
        rates = ", ".join(f"{k} {v:.0f}" for k, v in g.items())
        table = Table(title=f"{name}: V={c['V']} k={c['k']} d={c['d']} m={c['m']} batch={c['batch']}; "
                            f"matmul GFLOP/s: {rates} (medians of {report['repeats']})")
        for col in ("loop", "samples/s", "x plain", "GFLOP/s", "% matmul"):
            table.add_column(col, justify="left" if col == "loop" else "right", no_wrap=True)
        for label, m in reg["median"].items():
            gf = 3 * reg["forward_flops_per_sample"] * m["samples_s"] / 1e9
            table.add_row(label, f"{m['samples_s']:,.0f}", f"{m['vs_plain']:.2f}", f"{gf:.1f}",
                          f"{100 * m['of_matmul']:.0f}%")
        console.print(table)
        console.print(_parts_table(reg))
    if "tickets" in report:
        from sparsebench.accel.bench_tickets import table

        console.print(table(report["tickets"]))
    if report["native"] is not True and report["regimes"]:
        console.print(f"native rows left out: {report['native']}", markup=False)  # a compiler's message
    if not report["regimes"]:
        return
    console.print("x plain: against the faster plain loop of the same repeat. % matmul: of the fp32 matmul on "
                  "as many cores as the row uses (rows without 'procs' or 'threads' use 1). FLOPs: 3 x forward "
                  "matmul FLOPs, forward = 2 (2 d m + d V) per sample. Medians of per-repeat values, all timed "
                  "interleaved.")


def _parts_table(reg: dict[str, Any]) -> Any:
    """Where one worker's step goes, and the ceiling of a perfect loss kernel (bench_parts.py)."""
    from rich.table import Table

    sp = reg["step_parts"]
    procs = f" over {sp['processes']} procs" if sp["processes"] > 1 else ""
    table = Table(title=f"N={INSTANCES[-1]}{procs}: one worker's step ({sp['instances']} instances, 1 thread), "
                        f"ms (medians)")
    table.add_column("part", no_wrap=True)
    for col in ("ms", "% of step"):
        table.add_column(col, justify="right")
    for name in (*PARTS, "step"):
        table.add_row(name, f"{1e3 * sp[name]:.2f}", f"{100 * sp[name] / sp['step']:.0f}%")
    other = sp["step"] - sum(sp[p] for p in PARTS)
    table.add_row("step - parts (glue, cache misses, noise)", f"{1e3 * other:.2f}",
                  f"{100 * other / sp['step']:.0f}%")
    for name in NATIVE_PARTS:
        if name in sp:
            table.add_row(name, f"{1e3 * sp[name]:.2f}", f"{100 * sp[name] / sp['step']:.0f}%")
    table.caption = (f"ceiling: loss at the bf16 matmul rate doing only its matmuls, the rest as measured: "
                     f"{sp['ceiling_samples_s']:,.0f} samples/s = {sp['ceiling_vs_plain']:.2f}x plain")
    return table
