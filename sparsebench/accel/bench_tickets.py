"""`sparsebench bench`, tickets part: stacked sparse retraining against one mask at a time, in the same run.

The ticket pipeline retrains many masks of one dense run; `tickets.retrain` stacks them
into one batched `StackedMLP2` that draws one batch per seed per step for all of them.
The reference is what one would write without it: a plain `nn.Module` (a fixed C0, two
`nn.Linear` layers, W1 multiplied by its mask), `torch.optim.Adam`, BCE-with-logits,
trained one mask after the other, each drawing its batch with the task's own sampler.
Both run the same number of steps per mask (`steps`) on the same task and shapes
(clause-dnf defaults, H = 16, batch 256, 90% sparse random masks), one thread,
interleaved within each repeat; the figure is the median over repeats of the per-repeat
ratio (loop time / stacked time), i.e. the stacked retraining's speed-up at N masks.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

TICKETS = dict(H=16, batch=256, sparsity=0.9)  # the ticket suite's retraining shapes
MASKS = (4, 16)  # masks retrained together


def _masks(n: int, H: int, d: int, sparsity: float) -> list[Any]:
    import torch

    from sparsebench.tickets.masks import budget, top_mask

    g = torch.Generator().manual_seed(0)
    return [top_mask(torch.rand(H, d, generator=g), budget(H, d, sparsity)) for _ in range(n)]


def plain_loop(task: Any, masks: list[Any], H: int, batch: int) -> Any:
    """One masked two-layer net per mask, trained one after the other; returns run(steps per mask)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from sparsebench.models.mlp2 import MLP2Config, input_code

    C0 = input_code(MLP2Config(d_hidden=H), task.n_inputs, None)
    d, K = C0.shape[0], task.n_outputs

    class Net(nn.Module):
        def __init__(self, mask: torch.Tensor) -> None:
            super().__init__()
            self.register_buffer("C0", C0)
            self.register_buffer("mask", mask)
            self.fc1 = nn.Linear(d, H)
            self.fc2 = nn.Linear(H, K)
            with torch.no_grad():
                self.fc1.weight.mul_(mask)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(F.linear(x @ self.C0.T, self.fc1.weight * self.mask, self.fc1.bias))
            return self.fc2(h)

    torch.manual_seed(0)
    nets = [Net(m) for m in masks]
    opts = [torch.optim.Adam(n.parameters(), lr=1e-2) for n in nets]
    gen = torch.Generator().manual_seed(0)

    def run(steps: int) -> None:
        for net, opt in zip(nets, opts):
            for _ in range(steps):
                b = task.sample(batch, generator=gen)
                loss = F.binary_cross_entropy_with_logits(net(b.inputs["x"]), b.target, reduction="sum") / batch
                opt.zero_grad()
                loss.backward()
                opt.step()

    return run


def stacked_runner(task: Any, masks: list[Any], H: int, batch: int) -> Any:
    """All masks as one stacked model (`tickets.retrain`), one seed's data shared; returns run(steps)."""
    from sparsebench.context import RunContext
    from sparsebench.tickets.retrain import Instance, stack, train_stacked
    from sparsebench.training import TrainConfig, init_models

    (model,) = init_models(task, "mlp2", {"d_hidden": H}, [0])
    state = model.state_dict()
    module = stack(task, "mlp2", {"d_hidden": H}, [Instance(0, state, m) for m in masks])
    ctx = RunContext.create("cpu", progress=False)

    def run(steps: int) -> None:
        train_stacked(module, task, TrainConfig(steps=steps, batch_size=batch, warmup=0), [0] * len(masks), ctx)

    return run


def bench_tickets(repeats: int, steps: int) -> dict[str, Any]:
    """{masks: {"loop_s", "stacked_s", "speedup"} medians, plus the raw per-repeat values}."""
    from sparsebench.build import make_task

    task = make_task("clause-dnf", {})
    H, batch, sparsity = TICKETS["H"], TICKETS["batch"], TICKETS["sparsity"]
    d = task.n_inputs  # a Hadamard C0 of n = 16 inputs has d = 16
    runners = {n: (plain_loop(task, _masks(n, H, d, sparsity), H, batch),
                   stacked_runner(task, _masks(n, H, d, sparsity), H, batch)) for n in MASKS}
    for loop, stacked in runners.values():  # warm-up
        loop(max(1, steps // 10))
        stacked(max(1, steps // 10))
    raw: dict[int, dict[str, list[float]]] = {n: {"loop_s": [], "stacked_s": [], "speedup": []} for n in MASKS}
    for _ in range(repeats):
        for n, (loop, stacked) in runners.items():
            t0 = time.perf_counter()
            loop(steps)
            t1 = time.perf_counter()
            stacked(steps)
            t2 = time.perf_counter()
            raw[n]["loop_s"].append(t1 - t0)
            raw[n]["stacked_s"].append(t2 - t1)
            raw[n]["speedup"].append((t1 - t0) / (t2 - t1))
    return {"config": {**TICKETS, "steps": steps, "repeats": repeats},
            "median": {str(n): {k: statistics.median(v) for k, v in r.items()} for n, r in raw.items()},
            "raw": {str(n): r for n, r in raw.items()}}


def table(report: dict[str, Any]) -> Any:
    from rich.table import Table

    c = report["config"]
    t = Table(title=f"tickets: sparse retraining of N masks (clause-dnf, mlp2 H={c['H']}, batch {c['batch']}, "
                    f"{c['sparsity']:.0%} sparse, {c['steps']} steps per mask; medians of {c['repeats']})")
    for col in ("masks", "one at a time (s)", "stacked (s)", "x one at a time"):
        t.add_column(col, justify="right", no_wrap=True)
    for n, m in report["median"].items():
        t.add_row(n, f"{m['loop_s']:.3f}", f"{m['stacked_s']:.3f}", f"{m['speedup']:.2f}")
    t.caption = ("one at a time: a plain nn.Module + Adam per mask, one after the other; stacked: "
                 "sparsebench.tickets.retrain (all masks in one batched model, one batch per step shared); "
                 "ratio per repeat, then the median")
    return t
