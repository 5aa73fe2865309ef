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

`--regime tickets` (and the default, `all`, on the CPU) adds the ticket pipeline's stacked
sparse retraining of 4 and 16 masks against one mask at a time (`bench_tickets.py`), timed
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
    # the transformer suite's model: 1 layer, one head of 64, d_model = d_mlp = 64, V=1000, batch 1024
    "transformer": dict(V=1000, k=5, d=64, m=64, heads=1, d_head=64, batch=1024, steps=16, min_steps=2),
}
# --regime: one regime, both (small and default), the tickets part (stacked sparse retraining: bench_tickets.py,
# CPU only), or all (the three regimes and, on the CPU, the tickets part).
REGIME_CHOICES = ("small", "default", "transformer", "both", "tickets", "all")
INSTANCES = (1, 4, 16)
CUDA_STEPS = 64  # timed steps per measurement at N=1 on a GPU (steps are short there)
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


def transformer_forward_flops(V: int, k: int, d: int, m: int, heads: int, d_head: int) -> int:
    """Matmul FLOPs of one sample's forward pass through the 1-layer transformer, as much as its readout needs:
    keys and values at all k positions, the query, attention, output projection and MLP at the last one."""
    hd = heads * d_head
    return 2 * (k * 2 * d * hd + d * hd + 2 * k * hd + hd * d + 2 * d * m + d * V)


def regime_flops(r: dict[str, int]) -> int:
    """Forward matmul FLOPs per sample of a regime's model."""
    if "heads" in r:
        return transformer_forward_flops(r["V"], r["k"], r["d"], r["m"], r["heads"], r["d_head"])
    return forward_flops(r["V"], r["d"], r["m"])


def matmul_rate(n: int = 2048, reps: int = 3, dtype: Any = None, threads: int = 1, device: Any = "cpu") -> float:
    """FLOP/s of an n x n matmul on `threads` threads or on a GPU (fp32 unless `dtype`; best of `reps`, after a
    warm-up)."""
    import torch

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    out = torch.empty(n, n, dtype=dtype, device=device)
    with torch_threads(threads):
        torch.mm(a, b, out=out)
        best = min(_timed(lambda: torch.mm(a, b, out=out), device) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn: Any, device: Any = "cpu") -> float:
    """Seconds `fn()` takes; on a GPU, until its queued work has finished."""
    import torch

    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    t = time.perf_counter()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - t


def plain_runner(task: Any, V: int, k: int, d: int, m: int, batch: int, device: Any = "cpu",
                 precision: str = "fp32") -> Any:
    """A one-model loop the way a blog author writes it; returns run(steps)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from sparsebench.training import autocast

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
    device = torch.device(device)
    model = Net().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator(device=device).manual_seed(0)

    def run(steps: int) -> None:
        for _ in range(steps):
            b = task.sample(batch, generator=gen, device=device)
            tokens, weights = b.inputs["tokens"], b.inputs["weights"]
            target = torch.zeros(batch, V, device=device).scatter_(1, tokens, 1.0 / k)
            with autocast(device, precision):
                logits = model(tokens, weights)
            loss = F.kl_div(F.log_softmax(logits.float(), dim=-1), target, reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()

    return run


def transformer_config(r: dict[str, int]) -> dict[str, int]:
    """The `transformer` model config of a regime."""
    return {"d_model": r["d"], "d_mlp": r["m"], "n_heads": r["heads"], "d_head": r["d_head"]}


def plain_transformer_runner(task: Any, r: dict[str, int], device: Any = "cpu", precision: str = "fp32") -> Any:
    """A one-model TransformerLens loop: the `transformer` model (its TransformerLens bridge, hooks and all),
    default AdamW, `task.loss` on its logits; returns run(steps)."""
    import torch

    from sparsebench.build import make_model
    from sparsebench.training import autocast

    device = torch.device(device)
    model = make_model("transformer", transformer_config(r), task, generator=torch.Generator().manual_seed(0))
    model = model.to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    gen = torch.Generator(device=device).manual_seed(0)

    def run(steps: int) -> None:
        for _ in range(steps):
            b = task.sample(r["batch"], generator=gen, device=device)
            with autocast(device, precision):
                logits = model(**b.inputs)
            loss = task.loss(logits.float(), b).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

    return run


def trainer_runner(task: Any, d: int, m: int, batch: int, n: int, precision: str = "fp32",
                   first_seed: int = 0, backend: str = "auto", model: str = "mlp1",
                   model_cfg: dict[str, int] | None = None, device: Any = "cpu") -> Any:
    """The sparsebench trainer's loop on N stacked instances of `model` (StackedMLP, StackedTransformer);
    returns run(steps)."""
    from sparsebench.context import RunContext
    from sparsebench.training import TrainConfig, init_models, optimise

    seeds = list(range(first_seed, first_seed + n))
    models = init_models(task, model, model_cfg or {"d_model": d, "d_mlp": m}, seeds)
    module = type(models[0]).stacked(models)
    ctx = RunContext.create(device, progress=False, backend=backend)
    module = module.to(ctx.device)

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
              json_path: Path | None = None, device: str = "cpu", peak_tflops: float | None = None) -> dict[str, Any]:
    """Run the benchmark (see the module docstring), print its tables, and return (and save) the figures.

    device "cuda" times the plain loops and the trainer on the GPU (the default and transformer regimes; no
    thread, process or native rows) against the GPU's measured bf16 matmul rate, and against `peak_tflops`
    (the card's nominal dense bf16 peak) when given."""
    import torch

    from sparsebench.context import resolve_device

    if regime not in REGIME_CHOICES:
        raise UserError(f"--regime must be one of {', '.join(REGIME_CHOICES)} (got {regime!r})")
    if repeats < 1:
        raise UserError(f"--repeats must be at least 1 (got {repeats})")
    if steps is not None and steps < 1:
        raise UserError(f"--steps must be at least 1 (got {steps})")
    if processes < 0:
        raise UserError(f"--processes must be >= 0 (got {processes})")
    if peak_tflops is not None and not peak_tflops > 0:
        raise UserError(f"--peak-tflops must be > 0 (got {peak_tflops})")
    if json_path is not None and json_path.is_dir():
        raise UserError(f"--json {json_path} is a folder; give a file name")
    if json_path is not None:  # before minutes of measuring, not after
        from sparsebench.io import ensure_writable

        ensure_writable(json_path.parent, "the --json folder")
    dev = resolve_device(device)
    if dev.type == "cuda" and regime in ("small", "tickets"):  # the small regime measures CPU overhead
        raise UserError(f"--regime {regime} measures the CPU; on a GPU use default, transformer, both or all")
    names = {"both": ["small", "default"], "all": ["small", "default", "transformer"], "tickets": []}.get(
        regime, [regime])
    if dev.type == "cuda":
        names = [n for n in names if n != "small"]
    tickets = regime in ("tickets", "all") and dev.type == "cpu"
    cores = torch.get_num_threads()  # torch's default: one thread per core
    with torch_threads(1):
        return _bench(repeats, steps, names, tickets, cores, processes or cores, json_path, dev, peak_tflops)


BF16_REF = f"bf16, {_threads(1)}"
GPU_REF, GPU_FP32 = "bf16, GPU", "fp32, GPU"  # the GPU's measured matmul rates


def _ref(threads: int) -> str:
    """Name of the fp32 reference matmul on `threads` threads."""
    return f"fp32, {_threads(threads)}"


def _bench(repeats: int, steps: int | None, names: list[str], tickets: bool, cores: int, procs: int,
           json_path: Path | None, device: Any, peak_tflops: float | None) -> dict[str, Any]:
    import torch

    from sparsebench.accel import native
    from sparsebench.io import write_json

    has_native, why_not = native.available()
    report: dict[str, Any] = {"cores": cores, "processes": procs, "torch": torch.__version__, "device": str(device),
                              "repeats": repeats, "native": has_native or why_not, "regimes": {}}
    if device.type == "cuda":
        report["gpu"] = torch.cuda.get_device_name(device)
        report["peak_tflops"] = peak_tflops
    for name in names:
        if device.type == "cuda" or name == "transformer":
            report["regimes"][name] = _plain_vs_trainer(name, REGIMES[name], repeats, steps, cores, device,
                                                        peak_tflops)
        else:
            report["regimes"][name] = _mlp1_cpu(REGIMES[name], repeats, steps, cores, procs, has_native)
    if tickets:
        from sparsebench.accel.bench_tickets import bench_tickets

        report["tickets"] = bench_tickets(repeats, steps or TICKET_STEPS)
    _print(report)
    if json_path is not None:
        write_json(json_path, report)
    return report


def _interleave(runners: dict[str, tuple[Any, int, int, str]], plains: list[str], refs: dict[str, Any],
                repeats: int, batch: int, fwd: int, device: Any, after: Any = None) -> tuple[dict, dict]:
    """Time every runner (label -> (run, instances, steps, reference matmul)) once per repeat, one after the
    other, with the reference matmul rates (name -> a call returning FLOP/s) measured in the same repeat.
    Returns (rows: label -> samples_s / vs_plain / of_matmul per repeat, matmul rates per repeat).
    `after(mm)` runs at the end of each repeat (the step parts of the mlp1 CPU regimes)."""
    for run, _, s, _ in runners.values():  # warm-up: allocator, kernels, first-call costs
        run(max(1, s // 4))
    rows = {k: {"samples_s": [], "vs_plain": [], "of_matmul": []} for k in runners}
    mm: dict[str, list[float]] = {k: [] for k in refs}
    for _ in range(repeats):
        for key, rate in refs.items():
            mm[key].append(rate())
        sps = {label: n * batch * s / _timed(lambda: run(s), device) for label, (run, n, s, _) in runners.items()}
        best_plain = max(sps[label] for label in plains)
        for label, (_, _, _, ref) in runners.items():
            rows[label]["samples_s"].append(sps[label])
            rows[label]["vs_plain"].append(sps[label] / best_plain)
            rows[label]["of_matmul"].append(3 * fwd * sps[label] / mm[ref][-1])
        if after is not None:
            after(mm, best_plain)
    return rows, mm


def _plain_vs_trainer(name: str, r: dict[str, int], repeats: int, steps: int | None, cores: int, device: Any,
                      peak_tflops: float | None) -> dict[str, Any]:
    """One regime as plain one-model loops against the trainer at N = 1, 4, 16: the transformer regime on the
    CPU, and every regime on a GPU."""
    import torch

    from sparsebench.build import make_task

    task = make_task("topk-uniform", {"V": r["V"], "k": r["k"]})
    cuda = device.type == "cuda"
    n_steps = steps or (CUDA_STEPS if cuda else r["steps"])
    fwd = regime_flops(r)
    model = "transformer" if "heads" in r else "mlp1"
    model_cfg = transformer_config(r) if model == "transformer" else {"d_model": r["d"], "d_mlp": r["m"]}

    def plain(precision: str = "fp32") -> Any:
        if model == "transformer":
            return plain_transformer_runner(task, r, device, precision)
        return plain_runner(task, r["V"], r["k"], r["d"], r["m"], r["batch"], device, precision)

    def trainer(n: int, precision: str = "fp32", backend: str = "auto") -> Any:
        return trainer_runner(task, r["d"], r["m"], r["batch"], n, precision, backend=backend, model=model,
                              model_cfg=model_cfg, device=device)

    runners: dict[str, tuple[Any, int, int, str]] = {}
    if cuda:
        refs = {GPU_REF: lambda: matmul_rate(8192, dtype=torch.bfloat16, device=device),
                GPU_FP32: lambda: matmul_rate(8192, device=device)}
        plains = ["plain", "plain bf16"]
        runners["plain"] = (plain(), 1, n_steps, GPU_FP32)
        runners["plain bf16"] = (plain("bf16"), 1, n_steps, GPU_REF)
        for n in INSTANCES:
            runners[f"sparsebench N={n}"] = (trainer(n), n, trainer_steps(r, n_steps, n), GPU_FP32)
            runners[f"sparsebench N={n} bf16"] = (trainer(n, "bf16"), n, trainer_steps(r, n_steps, n), GPU_REF)
    else:
        refs = {_ref(t): (lambda t=t: matmul_rate(threads=t)) for t in sorted({1, cores})}
        plains = [f"plain, {_threads(t)}" for t in sorted({cores, 1}, reverse=True)]
        base = plain()
        for label, t in zip(plains, sorted({cores, 1}, reverse=True)):
            runners[label] = (with_threads(base, t), 1, n_steps, _ref(t))
        for n in INSTANCES:
            runners[f"sparsebench N={n}"] = (trainer(n), n, trainer_steps(r, n_steps, n), _ref(1))
        n = INSTANCES[-1]  # the plain step (task.loss on full logits) on the same batched model
        runners[f"sparsebench N={n}, plain step"] = (trainer(n, backend="torch"), n, trainer_steps(r, n_steps, n),
                                                       _ref(1))
    rows, mm = _interleave(runners, plains, refs, repeats, r["batch"], fwd, device)
    med = {label: {k: statistics.median(v) for k, v in row.items()} for label, row in rows.items()}
    out = {"config": {**r, "steps": n_steps, "model": model}, "forward_flops_per_sample": fwd,
           "matmul_gflops": {k: statistics.median(v) / 1e9 for k, v in mm.items()},
           "reference": {label: ref for label, (_, _, _, ref) in runners.items()}, "median": med, "raw": rows}
    if cuda and peak_tflops:
        out["of_peak"] = {label: 3 * fwd * m["samples_s"] / (peak_tflops * 1e12) for label, m in med.items()}
    return out


def _mlp1_cpu(r: dict[str, int], repeats: int, steps: int | None, cores: int, procs: int,
              has_native: bool) -> dict[str, Any]:
    """An mlp1 regime on the CPU: plain loops, the trainer (torch path, bf16, native, worker processes) and
    the step's parts (bench_parts.py)."""
    import torch

    from sparsebench.accel import native
    from sparsebench.build import make_task

    native_precisions = [p for p in ("fp32", "bf16") if has_native and native.available(bf16=p == "bf16")[0]]
    n_max = INSTANCES[-1]
    task = make_task("topk-uniform", {"V": r["V"], "k": r["k"]})
    n_steps = steps or r["steps"]
    fwd = forward_flops(r["V"], r["d"], r["m"])
    plain = plain_runner(task, r["V"], r["k"], r["d"], r["m"], r["batch"])
    # Reference matmuls: fp32 on each thread count a row uses (processes use at most `cores`), bf16 for show.
    refs = {_ref(t): (lambda t=t: matmul_rate(threads=t)) for t in sorted({1, cores, min(procs, cores)})}
    refs[BF16_REF] = lambda: matmul_rate(dtype=torch.bfloat16)
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

    def time_parts(mm: dict[str, list[float]], best_plain: float) -> None:
        times = parts.time(trainer_steps(r, n_steps, n_max))
        ceil_sps = n_max * r["batch"] / (waves * ceiling(times, parts.loss_flops(), mm[BF16_REF][-1]))
        part_runs.append({**times, "ceiling_samples_s": ceil_sps, "ceiling_vs_plain": ceil_sps / best_plain})

    pools: list[ProcessRunner] = []
    try:
        variants = [("fp32", "auto", ""), ("bf16", "auto", " bf16")] + [
            (p, "native", " native bf16" if p == "bf16" else " native") for p in native_precisions]
        for precision, backend, tag in variants if procs > 1 else ():
            pools.append(ProcessRunner(r, n_max, procs, precision, backend))
            runners[f"sparsebench N={n_max}{tag}, {procs} procs"] = (
                pools[-1], n_max, trainer_steps(r, n_steps, n_max), _ref(min(procs, cores)))
        rows, mm = _interleave(runners, list(plains), refs, repeats, r["batch"], fwd, "cpu", time_parts)
    finally:
        for pool in pools:
            pool.close()
    med = {label: {k: statistics.median(v) for k, v in row.items()} for label, row in rows.items()}
    return {"config": {**r, "steps": n_steps, "model": "mlp1"}, "forward_flops_per_sample": fwd,
            "matmul_gflops": {k: statistics.median(v) / 1e9 for k, v in mm.items()},
            "reference": {label: ref for label, (_, _, _, ref) in runners.items()},
            "median": med, "raw": rows,
            "step_parts": {"instances": share, "processes": workers, "waves": waves,
                           "loss_flops": parts.loss_flops(), **summarise(part_runs), "raw": part_runs}}


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    import sys

    console = Console(width=None if sys.stdout.isatty() else 120)  # files and pipes get whole rows
    where = f"{report['gpu']} ({report['device']})" if "gpu" in report else "CPU"
    for name, reg in report["regimes"].items():
        c, g = reg["config"], reg["matmul_gflops"]
        rates = ", ".join(f"{k} {v:,.0f}" for k, v in g.items())
        model = c.get("model", "mlp1") + (f" {c['heads']}x{c['d_head']} heads" if "heads" in c else "")
        table = Table(title=f"{name} on {where}: {model}, V={c['V']} k={c['k']} d={c['d']} m={c['m']} "
                            f"batch={c['batch']}; matmul GFLOP/s: {rates} (medians of {report['repeats']})")
        peak = reg.get("of_peak")
        cols = ("loop", "samples/s", "x plain", "GFLOP/s", "% matmul") + (("% bf16 peak",) if peak else ())
        for col in cols:
            table.add_column(col, justify="left" if col == "loop" else "right", no_wrap=True)
        for label, m in reg["median"].items():
            gf = 3 * reg["forward_flops_per_sample"] * m["samples_s"] / 1e9
            table.add_row(label, f"{m['samples_s']:,.0f}", f"{m['vs_plain']:.2f}", f"{gf:.1f}",
                          f"{100 * m['of_matmul']:.{2 if 'gpu' in report else 0}f}%",
                          *((f"{100 * peak[label]:.3f}%",) if peak else ()))
        console.print(table)
        if "step_parts" in reg:
            console.print(_parts_table(reg))
    if "tickets" in report:
        from sparsebench.accel.bench_tickets import table

        console.print(table(report["tickets"]))
    if report["native"] is not True and report["regimes"] and "gpu" not in report:
        console.print(f"native rows left out: {report['native']}", markup=False)  # a compiler's message
    if "gpu" in report:
        console.print("x plain: against the faster plain loop (fp32 or bf16 autocast) of the same repeat. % matmul: "
                      "of the GPU's measured 8192^3 matmul rate (bf16 rows: bf16; others: fp32); % bf16 peak: of "
                      "--peak-tflops. FLOPs: 3 x forward matmul FLOPs per sample. Medians of per-repeat values, "
                      "all timed interleaved, each measurement between two torch.cuda.synchronize().")
        return
    if not report["regimes"]:
        return
    console.print("x plain: against the faster plain loop of the same repeat. % matmul: of the fp32 matmul on "
                  "as many cores as the row uses (rows without 'procs' or 'threads' use 1). FLOPs: 3 x forward "
                  "matmul FLOPs: mlp1 2 (2 d m + d V) per sample; the transformer counts keys and values at all "
                  "k positions and the rest at the last one. 'plain' for the transformer: its TransformerLens "
                  "bridge, one model, task.loss, AdamW; 'plain step': the trainer's batched model with the plain "
                  "autograd step (no fused loss). Medians of per-repeat values, all timed interleaved.")


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
