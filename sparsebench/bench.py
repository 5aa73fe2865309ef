"""`sparsebench bench`: training throughput of the sparsebench trainer against a plain PyTorch loop.

Everything is measured in one run and interleaved: each repeat times a large fp32
matmul (the machine's reference FLOP rate *now*), the plain loop, and the trainer
at N = 1, 4, 16 instances, one after the other, so a noisy neighbour slows all of
them alike. Figures are medians over repeats of per-repeat values (ratios are
taken within a repeat, then the median is taken).

FLOPs are counted from the model's matmuls only (embedding sums, softmax and the
optimiser are not counted, so the figure is a lower bound on the work done):

    forward per sample = 2 * (n_layers * 2 * d * m + d * V)
    training step      = 3 * forward * batch * instances   (backward = 2 x forward)

The plain loop is what a blog post would write: an `nn.Module` (Embedding, two
Linear layers, Linear unembedding), AdamW with default settings, the full
log-softmax and `F.kl_div` against a dense [batch, V] target, one model at a time.
It draws its batches with the same task sampler as the trainer, so the comparison
measures the training machinery, not the sampler.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import typer

REGIMES: dict[str, dict[str, int]] = {
    # overhead-bound: small widths and batch
    "small": dict(V=500, k=5, d=32, m=32, batch=256, steps=48),
    # the suite's default training size
    "default": dict(V=2000, k=5, d=64, m=64, batch=1024, steps=6),
}
INSTANCES = (1, 4, 16)


def forward_flops(V: int, d: int, m: int, n_layers: int = 1) -> int:
    """Matmul FLOPs of one sample's forward pass through mlp1 (multiply-adds count 2)."""
    return 2 * (n_layers * 2 * d * m + d * V)


def matmul_rate(n: int = 2048, reps: int = 3) -> float:
    """FLOP/s of an n x n fp32 matmul (best of `reps`, after one warm-up)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
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
                   fused: bool | None = None) -> Any:
    """The sparsebench trainer's loop on an N-instance StackedMLP; returns run(steps)."""
    import torch

    from sparsebench.training import TrainConfig, _optimise, init_models, use_fused

    models = init_models(task, "mlp1", {"d_model": d, "d_mlp": m}, list(range(n)))
    module = type(models[0]).stacked(models)
    device = torch.device("cpu")
    on = use_fused(task, module, device, fused)

    def run(steps: int) -> None:
        cfg = TrainConfig(steps=steps, batch_size=batch, warmup=0, precision=precision)  # type: ignore[arg-type]
        _optimise(module, task, cfg, list(range(n)), device, progress=False, stacked=True, fused=on)

    return run


def bench(
    repeats: int = typer.Option(5, help="Interleaved repeats; figures are medians over them."),
    steps: Optional[int] = typer.Option(None, help="Timed steps per measurement at N=1 (N instances run "
                                        "max(2, steps/N) steps, the same samples). Default: 48 small, 6 default."),
    regime: str = typer.Option("both", help="small (V=500, d=m=32, batch 256), default (V=2000, d=m=64, "
                               "batch 1024), or both."),
    threads: int = typer.Option(1, help="torch intra-op threads for every loop. 1 is the fair and fastest "
                                "setting for tiny models (use processes for more cores; see docs/performance.md)."),
    bf16: bool = typer.Option(False, help="Also time the trainer with bf16 matmuls in the fused loss (N=16)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Save all figures to this JSON file."),
) -> dict[str, Any]:
    """Training throughput: plain PyTorch loop vs the sparsebench trainer, and % of the matmul FLOP rate."""
    import torch

    if regime not in ("small", "default", "both"):
        raise typer.BadParameter(f"regime must be small, default or both (got {regime!r})")
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _bench(repeats, steps, regime, bf16, json_path)
    finally:
        torch.set_num_threads(old_threads)


def _bench(repeats: int, steps: int | None, regime: str, bf16: bool, json_path: Path | None) -> dict[str, Any]:
    import torch

    from sparsebench.build import make_task

    names = ["small", "default"] if regime == "both" else [regime]
    report: dict[str, Any] = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                              "repeats": repeats, "regimes": {}}
    for name in names:
        r = REGIMES[name]
        task = make_task("topk-uniform", {"V": r["V"], "k": r["k"]})
        n_steps = steps or r["steps"]
        fwd = forward_flops(r["V"], r["d"], r["m"])
        runners: dict[str, tuple[Any, int, int]] = {  # label -> (run, instances, steps)
            "plain": (plain_runner(task, r["V"], r["k"], r["d"], r["m"], r["batch"]), 1, n_steps)}
        for n in INSTANCES:
            runners[f"sparsebench N={n}"] = (trainer_runner(task, r["d"], r["m"], r["batch"], n), n,
                                             max(2, n_steps // n))
        if bf16:
            n = INSTANCES[-1]
            runners[f"sparsebench N={n} bf16"] = (trainer_runner(task, r["d"], r["m"], r["batch"], n, "bf16"), n,
                                                  max(2, n_steps // n))
        for run, _, s in runners.values():  # warm-up: allocator, kernels, first-call costs
            run(max(1, s // 4))
        rows: dict[str, dict[str, list[float]]] = {k: {"samples_s": [], "vs_plain": [], "of_matmul": []}
                                                   for k in runners}
        mm_rates: list[float] = []
        for _ in range(repeats):
            mm = matmul_rate()
            mm_rates.append(mm)
            plain_sps = None
            for label, (run, n, s) in runners.items():
                sps = n * r["batch"] * s / _timed(lambda: run(s))
                plain_sps = sps if label == "plain" else plain_sps
                rows[label]["samples_s"].append(sps)
                rows[label]["vs_plain"].append(sps / plain_sps)  # type: ignore[operator]
                rows[label]["of_matmul"].append(3 * fwd * sps / mm)
        med = {label: {k: statistics.median(v) for k, v in row.items()} for label, row in rows.items()}
        report["regimes"][name] = {
            "config": {**r, "steps": n_steps}, "forward_flops_per_sample": fwd, "matmul_gflops": statistics.median(mm_rates) / 1e9,
            "median": med, "raw": rows}
    _print(report)
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2))
    return report


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for name, reg in report["regimes"].items():
        c = reg["config"]
        table = Table(title=f"{name}: V={c['V']} k={c['k']} d={c['d']} m={c['m']} batch={c['batch']}, "
                            f"{report['threads']} thread(s); fp32 matmul {reg['matmul_gflops']:.0f} GFLOP/s "
                            f"(median of {report['repeats']})")
        for col in ("loop", "samples/s", "x plain", "GFLOP/s", "% of matmul"):
            table.add_column(col, justify="left" if col == "loop" else "right")
        for label, m in reg["median"].items():
            gf = 3 * reg["forward_flops_per_sample"] * m["samples_s"] / 1e9
            table.add_row(label, f"{m['samples_s']:,.0f}", f"{m['vs_plain']:.2f}", f"{gf:.1f}",
                          f"{100 * m['of_matmul']:.0f}%")
        console.print(table)
    console.print("FLOPs: 3 x forward matmul FLOPs, forward = 2 (2 d m + d V) per sample; medians of "
                  "per-repeat values, all timed interleaved in this run.")
