"""The model cache: keys, loading instead of retraining, per-seed saving for unstackable models."""

from __future__ import annotations

import torch

from sparsebench.checkpoints import RunSpec, train_or_load
from sparsebench.context import RunContext
from sparsebench.models.mlp import MLP
from sparsebench.training import TrainConfig

TINY_TRAIN = TrainConfig(steps=5, warmup=1, batch_size=16)


def ctx(cache, workers: int = 1) -> RunContext:
    return RunContext.create("cpu", cache=cache, progress=False, workers=workers)


def spec(model: str, model_config: dict) -> RunSpec:
    return RunSpec.create("topk-uniform", {"V": 40, "k": 3}, model, model_config, TINY_TRAIN)


def test_stackable_seeds_train_together_and_load_next_time(tmp_path):
    s = spec("mlp1", {"d_model": 8, "d_mlp": 8})
    first = train_or_load(s, [0, 1], ctx(tmp_path))
    assert [c.info["trained_together"] for c in first] == [2, 2]
    again = train_or_load(s, [1, 0], ctx(tmp_path))
    assert [c.sha256 for c in again] == [first[1].sha256, first[0].sha256]
    assert torch.equal(again[0].model.W_E, first[1].model.W_E)


def test_seeds_trained_in_worker_processes_record_their_split(tmp_path):
    s = spec("mlp1", {"d_model": 8, "d_mlp": 8})
    cks = train_or_load(s, [0, 1, 2], ctx(tmp_path, workers=2))
    assert [(c.info["trained_together"], c.info["processes"]) for c in cks] == [(2, 2), (2, 2), (1, 2)]
    assert [c.key for c in cks] == [s.key(i) for i in range(3)]  # the split is not part of the key


def test_keys_hash_every_config_and_the_seed():
    a, b = spec("mlp1", {"d_model": 8, "d_mlp": 8}), spec("mlp1", {"d_model": 8, "d_mlp": 16})
    assert a.key(0) != a.key(1) and a.key(0) != b.key(0)
    assert a.key(0) == spec("mlp1", {"d_mlp": 8, "d_model": 8}).key(0)


class OneAtATime(MLP):
    """mlp1 without a batched form: the trainer trains its seeds one at a time."""

    stacked = None


def test_unstackable_models_save_each_seed_as_it_finishes(tmp_path, monkeypatch):
    from sparsebench import registry

    fresh = registry.Registry("models")
    fresh.register("one-at-a-time", OneAtATime)
    monkeypatch.setattr(registry, "models", fresh)
    monkeypatch.setitem(registry.REGISTRIES, "models", fresh)
    s = spec("one-at-a-time", {"d_model": 8, "d_mlp": 8})
    cks = train_or_load(s, [0, 1], ctx(tmp_path))
    assert [c.info["trained_together"] for c in cks] == [1, 1]
    assert len(list((tmp_path / "models").iterdir())) == 2
    again = train_or_load(s, [2, 3], ctx(tmp_path, workers=2))
    assert [c.info["processes"] for c in again] == [1, 1]  # one seed at a time: nothing to split
