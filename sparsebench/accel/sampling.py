"""Faster samplers for the built-in top-k tasks, each proving itself bitwise equal to the task's `sample`.

The trainer's plain path draws a stacked batch as
`Batch.stack([task.sample(n, generator=g) for g in generators])`: per instance, one draw
of uniforms and one vectorised transform (~45 small torch ops). For the built-in top-k
tasks, and only for exactly those classes (a subclass, such as a plugin that overrides
`sample`, may draw its data otherwise and always trains on its own `sample`), the
transform is row-independent, so every instance's uniforms can be transformed in one
call: in torch (`torch_topk_sampler`) or in C (`native.topk_from_uniforms`). Each draws
the uniforms with the task's own `_uniforms` from the same generators, so the batch is
the same one.

"The same" is checked, not assumed: a `CheckedSampler` draws its first batch twice, once
fast and once the plain way from copies of the generators, and raises unless the two are
bitwise equal; tests/unit/test_accel.py checks ragged sizes, k = V and tied order keys.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from sparsebench.api import Batch, Task
from sparsebench.tasks.topk import TopKConditional, TopKUniform

ACCELERATED = (TopKUniform, TopKConditional)  # exactly these classes, not their subclasses

Sampler = Callable[[list[torch.Generator]], Batch]


def reference_sample(task: Task, n: int, generators: list[torch.Generator], device: torch.device | str) -> Batch:
    """The plain stacked batch: one `task.sample` per generator ([inst, n, ...])."""
    return Batch.stack([task.sample(n, generator=g, device=device) for g in generators])


def torch_topk_sampler(task: Task, n: int, device: torch.device | str) -> Sampler | None:
    """Every instance's uniforms through one vectorised transform (None unless a built-in top-k task)."""
    if type(task) not in ACCELERATED:
        return None
    t: Any = task
    return lambda gens: t._from_uniforms(torch.stack([t._uniforms(n, g, device) for g in gens]))


def native_topk_sampler(task: Task, n: int, transform: Callable[[Any, torch.Tensor], Batch]) -> Sampler | None:
    """Every instance's uniforms through `transform` (the C sampler; CPU only), or None as above."""
    if type(task) not in ACCELERATED:
        return None
    t: Any = task
    return lambda gens: transform(t, torch.stack([t._uniforms(n, g, "cpu") for g in gens]))


def _copy(g: torch.Generator) -> torch.Generator:
    out = torch.Generator(device=g.device)
    out.set_state(g.get_state())
    return out


class CheckedSampler:
    """A fast sampler that proves itself on its first batch: bitwise equal to `reference_sample`."""

    def __init__(self, task: Task, n: int, device: torch.device | str, fast: Sampler):
        self.task, self.n, self.device, self.fast = task, n, device, fast
        self.checked = False

    def __call__(self, generators: list[torch.Generator]) -> Batch:
        if self.checked:
            return self.fast(generators)
        copies = [_copy(g) for g in generators]
        batch = self.fast(generators)
        ref = reference_sample(self.task, self.n, copies, self.device)
        same = ref.inputs.keys() == batch.inputs.keys() and all(
            torch.equal(ref.inputs[k].cpu(), batch.inputs[k].cpu()) for k in ref.inputs) and torch.equal(
            ref.target.cpu(), batch.target.cpu())
        if not same:
            raise RuntimeError(f"fast sampler for {type(self.task).__name__} differs from its sample(): "
                               f"a bug in sparsebench.accel.sampling; train with --backend torch")
        self.checked = True
        return batch
