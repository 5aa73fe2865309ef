"""Self-consistency: each mechanism's own construction, fitted back, scores near perfect on every
probe that applies to it; an untrained model of the same shape scores near the null, far below."""

from __future__ import annotations

import pytest
import torch

from sparsebench import registry
from sparsebench.build import make_mechanism, make_model, make_task
from sparsebench.probes import NotApplicable

# Main scores a perfect explanation reaches (up to float error), per probe.
PERFECT = {"bimodality": 0.99, "mask-agreement": 0.99, "hidden-code": 0.99, "candidates": 0.99,
           "prediction": 0.99, "patch": 0.99}


@pytest.fixture(scope="module")
def task():
    return make_task("topk-uniform", {"V": 500, "k": 3})


def scores(mechanism: str, model, task) -> dict:
    fitted = make_mechanism(mechanism).fit(model, task, generator=torch.Generator().manual_seed(1))
    batch = task.held_out(2048)
    out = {}
    for name in registry.probes.names():
        probe = registry.probes.get(name)()
        r = probe.score(model, fitted, task, batch)
        out[name] = None if isinstance(r, NotApplicable) else r[probe.main]
    return out


@pytest.mark.parametrize("mechanism", ["bloom", "jl", "softmax-bottleneck"])
def test_construction_fitted_back_is_explained_perfectly(task, mechanism):
    model = make_mechanism(mechanism).construct(task, 32, generator=torch.Generator().manual_seed(0))
    got = scores(mechanism, model, task)
    applicable = {p: v for p, v in got.items() if v is not None}
    assert applicable, "a mechanism must be checkable by at least one probe"
    for probe, value in applicable.items():
        assert value >= PERFECT[probe], f"{mechanism} on its own construction: {probe} = {value:.4f}"


def test_bloom_on_an_untrained_model_scores_far_below_its_construction(task):
    untrained = make_model("mlp1", {"d_model": 32, "d_mlp": 32}, task, generator=torch.Generator().manual_seed(0))
    got = scores("bloom", untrained, task)
    # Measured on this setup: bimodality 0.62 (a Gaussian gives 2/pi), mask agreement 0.32, hidden-code MCC
    # 0.18, false-positive MCC about 0.01: far from the construction's 1.
    assert got["bimodality"] < 0.7 and got["mask-agreement"] < 0.5 and got["candidates"] < 0.2
    assert got["hidden-code"] < 0.4
    assert got["patch"] is None  # ablating its hidden layer costs an untrained model nothing: n/a
