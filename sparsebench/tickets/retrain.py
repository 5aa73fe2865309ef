"""Sparse retraining of many masks at once, and scoring the retrained models.

Every instance is (seed, initial weights, mask). They train as one `StackedMLP2` (a
leading instance dim), W1 ⊙ M in the forward pass so masked coordinates get zero
gradient and, zeroed before the first step, stay zero (AdamW with zero gradients and
zero weight moves nothing). Instances of the same seed see the same data: one batch per
distinct seed per step from that seed's "data" stream (the stream its dense run trained
on), shared by all its instances. So the variants of one seed differ only in their mask
and initial weights (paired comparisons across detectors), and a dense mask rewound to
θ0 retrains into the dense model itself. Instances never share arithmetic (batched
matmuls per instance, elementwise AdamW), so an instance trains the same alone or
among others: the stacking is only about speed, and `sparsebench bench` measures it
against one mask at a time.

The training step is the plain one (`training.AutogradStep`) unless the run context's
speed door (`ctx.accel.step`) offers a faster one for this model and task.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from sparsebench.api import Batch, Task
from sparsebench.build import make_model
from sparsebench.mechanisms.feature_channel import SiteCodes, site_codes
from sparsebench.models.mlp2 import C0_KEY, MASK_KEY, W1_KEY, StackedMLP2
from sparsebench.training import AutogradStep, TrainConfig, lr_factor, seed_generator

if TYPE_CHECKING:
    from sparsebench.context import RunContext


@dataclass
class Instance:
    seed: int  # whose data stream it trains on
    state: dict[str, Tensor]  # initial weights (mlp2 state dict); W1 is zeroed under the mask here
    mask: Tensor  # [H, d] 0/1


def stack(task: Task, model: str, model_config: dict[str, Any], instances: list[Instance]) -> StackedMLP2:
    """The instances as one stacked model, W1 ← W1_init ⊙ M."""
    template = make_model(model, model_config, task, generator=torch.Generator().manual_seed(0))
    states = [{**inst.state, W1_KEY: inst.state[W1_KEY] * inst.mask, MASK_KEY: inst.mask} for inst in instances]
    return StackedMLP2.from_states(template, states)


def shared_batch(task: Task, seeds: list[int], gens: dict[int, torch.Generator], n: int,
                 device: torch.device) -> Batch:
    """One batch per distinct seed, given to each instance of that seed: [inst, n, ...]."""
    order = list(gens)
    batch = Batch.stack([task.sample(n, generator=gens[s], device=device) for s in order])
    if len(order) == 1:
        return Batch({k: v.expand(len(seeds), *v.shape[1:]) for k, v in batch.inputs.items()},
                     batch.target.expand(len(seeds), *batch.target.shape[1:]))
    index = torch.tensor([order.index(s) for s in seeds], device=device)
    return Batch({k: v[index] for k, v in batch.inputs.items()}, batch.target[index])


def train_stacked(module: StackedMLP2, task: Task, cfg: TrainConfig, seeds: list[int], ctx: "RunContext",
                  stream: str = "data", label: str = "retrain") -> Tensor:
    """Train `module` in place; instance i draws its data from seed_generator(seeds[i], stream), one batch per
    distinct seed per step. Returns each instance's mean training loss over the last 5% of steps: [inst]."""
    module = module.to(ctx.device).train()
    step = ctx.accel.step(module, task, cfg) or AutogradStep(module, task, cfg, ctx.device)
    gens = {s: seed_generator(s, stream, ctx.device) for s in dict.fromkeys(seeds)}
    tail = max(1, cfg.steps // 20)
    tail_sum = torch.zeros(len(seeds), device=ctx.device)
    bar = tqdm(range(cfg.steps), desc=f"{label} x{len(seeds)}", disable=not ctx.progress, leave=False,
               mininterval=0.5)
    for i in bar:
        per_instance = step(shared_batch(task, seeds, gens, cfg.batch_size, ctx.device), cfg.lr * lr_factor(i, cfg))
        if i >= cfg.steps - tail:
            tail_sum += per_instance.reshape(-1)
    bar.close()
    return tail_sum / tail


@torch.no_grad()
def evaluate_stacked(module: StackedMLP2, task: Task, held: Batch, chunk: int = 64) -> Tensor:
    """The task's stacked metrics of every instance on one held-out batch: [inst, n_metrics]."""
    module.eval()
    out = []
    x, y = held.inputs["x"], held.target
    for start in range(0, module.n_instances, chunk):
        idx = slice(start, min(start + chunk, module.n_instances))
        sub = _slice(module, idx)
        n = sub.n_instances
        logits = sub(x.expand(n, *x.shape))
        out.append(task.metrics_stacked(logits, Batch({"x": x.expand(n, *x.shape)}, y.expand(n, *y.shape))))
    return torch.cat(out)


def _slice(module: StackedMLP2, idx: slice) -> StackedMLP2:
    """A view of instances `idx` of a stacked model (for scoring in chunks)."""
    view = StackedMLP2.__new__(StackedMLP2)
    torch.nn.Module.__init__(view)
    view.config = module.config
    view.params = torch.nn.ParameterDict({k: torch.nn.Parameter(v.detach()[idx], requires_grad=False)
                                          for k, v in module.params.items()})
    view.register_buffer("mask", module.mask[idx])
    view.n_instances = view.mask.shape[0]
    return view


def feature_codes(module: StackedMLP2, task: Task, rho: float, near: int) -> SiteCodes:
    """The site table of every instance: C1 = (W1 ⊙ M) C0 -> distances [inst, H, K]."""
    C1 = (module.p(W1_KEY) * module.mask) @ module.p(C0_KEY)  # [inst, H, n]
    return site_codes(C1, task.variables, task.signs, rho, near)  # type: ignore[attr-defined]
