"""The benchmark's step breakdown (sparsebench/bench_parts.py): parts leave the model alone, the ceiling adds up."""

import pytest
import torch

from sparsebench.accel.bench_parts import PARTS, StepParts, ceiling
from sparsebench.build import make_task


@pytest.fixture(scope="module")
def parts():
    return StepParts(make_task("topk-uniform", {"V": 60, "k": 3}), d=8, m=8, batch=16, n=3)


def _snapshot(sp):
    return ({k: v.clone() for k, v in sp.module.state_dict().items()},
            {id(p): (None if p.grad is None else p.grad.clone()) for p in sp.module.parameters()},
            {k: v.clone() for s in sp.opt.state.values() for k, v in s.items()})


def test_timing_the_parts_leaves_weights_grads_and_optimiser_state_unchanged(parts):
    before = _snapshot(parts)
    times = parts.time(3, names=PARTS)
    after = _snapshot(parts)
    assert set(times) == set(PARTS) and all(t > 0 for t in times.values())
    for a, b in zip(before, after):
        assert a.keys() == b.keys()
        for k in a:
            assert (a[k] is None and b[k] is None) or torch.equal(a[k], b[k]), k


def test_the_whole_step_trains_the_model(parts):
    before = {k: v.clone() for k, v in parts.module.state_dict().items()}
    parts.time(2, names=("step",))
    assert any(not torch.equal(before[k], v) for k, v in parts.module.state_dict().items())


def test_loss_flops_and_ceiling(parts):
    assert parts.loss_flops() == 3 * 2 * 3 * 16 * 8 * 60
    times = {"sample": 1.0, "model": 2.0, "loss": 5.0, "optimiser": 0.5, "step": 10.0}
    # the loss's 5 s are replaced by its matmul FLOPs at the given rate: 10 - 5 + 4 / 2
    assert ceiling(times, loss_flops=4, bf16_rate=2.0) == pytest.approx(7.0)
