"""Trained models shared by the integration tests (trained once per session, in the session cache)."""

from __future__ import annotations

import pytest

from sparsebench.checkpoints import RunSpec, train_or_load
from sparsebench.context import RunContext
from sparsebench.training import TrainConfig

# The small size: V=1000, k=5, widths 64, batch 1024, lr 1e-2, 2000 steps.
POST_SPEC = dict(task="topk-uniform", task_config={"V": 1000, "k": 5}, model="mlp1",
                 model_config={"d_model": 64, "d_mlp": 64},
                 train=TrainConfig(steps=2000, batch_size=1024, lr=1e-2, warmup=100))


@pytest.fixture(scope="session")
def post_spec() -> RunSpec:
    return RunSpec.create(**POST_SPEC)


@pytest.fixture(scope="session")
def post_models(post_spec):
    """Two seeds of the post's network, trained together."""
    return train_or_load(post_spec, [0, 1], RunContext.create("cpu", progress=False))
