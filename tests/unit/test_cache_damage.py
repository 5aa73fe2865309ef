"""A damaged cache entry is named, moved aside and retrained (issue 15, item 8); a diverged model is never
cached and never scored (item 4)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import safetensors.torch
import torch

from sparsebench.checkpoints import CacheWarning, RunSpec, train_or_load
from sparsebench.context import RunContext
from sparsebench.errors import UserError
from sparsebench.training import TrainConfig

TINY = TrainConfig(steps=5, warmup=1, batch_size=16)


def ctx(cache) -> RunContext:
    return RunContext.create("cpu", cache=cache, progress=False)


@pytest.fixture
def spec() -> RunSpec:
    return RunSpec.create("topk-uniform", {"V": 40, "k": 3}, "mlp1", {"d_model": 8, "d_mlp": 8}, TINY)


def _truncate(folder):
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _not_json(folder):
    (folder / "run.json").write_text("{not json")


def _foreign_run(folder):
    info = json.loads((folder / "run.json").read_text())
    info["seed"] = 99
    (folder / "run.json").write_text(json.dumps(info))


def _wrong_shape(folder):
    state = safetensors.torch.load_file(str(folder / "model.safetensors"))
    state["embed.W_E"] = torch.zeros(3, 3)
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))


def _nan_weights(folder):
    state = safetensors.torch.load_file(str(folder / "model.safetensors"))
    state["embed.W_E"][0, 0] = math.nan
    safetensors.torch.save_file(state, str(folder / "model.safetensors"))


def _missing_file(folder):
    (folder / "run.json").unlink()


def _fifo(folder):
    import os

    (folder / "run.json").unlink()
    os.mkfifo(folder / "run.json")  # reading it would block forever


@pytest.mark.parametrize("damage,why", [
    (_truncate, "model.safetensors cannot be read"),
    (_not_json, "run.json is not readable JSON"),
    (_foreign_run, "run.json describes another run (seed differs)"),
    (_wrong_shape, "model.safetensors does not fit the model"),
    (_nan_weights, "non-finite weights"),
    (_missing_file, "run.json is missing or not a regular file"),
    (_fifo, "run.json is missing or not a regular file"),
])
def test_a_damaged_entry_is_moved_aside_and_retrained(tmp_path, spec, damage, why):
    (first,) = train_or_load(spec, [0], ctx(tmp_path))
    folder = tmp_path / "models" / first.key
    damage(folder)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (again,) = train_or_load(spec, [0], ctx(tmp_path))
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(messages) == 1 and messages[0].startswith(f"damaged cache entry {folder}: {why}")
    assert messages[0].endswith("retraining")
    assert again.trained and again.sha256 == first.sha256  # retrained: the same weights again
    aside = [p.name for p in (tmp_path / "models").iterdir() if p.name.startswith(".damaged-")]
    assert len(aside) == 1 and aside[0].startswith(f".damaged-{first.key}-")
    (third,) = train_or_load(spec, [0], ctx(tmp_path))  # and the new entry loads
    assert not third.trained


def test_a_damaged_entry_that_cannot_be_moved_is_one_error(tmp_path, spec, monkeypatch):
    (first,) = train_or_load(spec, [0], ctx(tmp_path))
    _not_json(tmp_path / "models" / first.key)

    def refuse(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("sparsebench.checkpoints.os.replace", refuse)
    with pytest.raises(UserError, match=r"run.json is not readable JSON .*cannot be moved aside \(Permission "
                                        r"denied\): delete it$"):
        train_or_load(spec, [0], ctx(tmp_path))


def test_a_diverged_model_is_an_error_and_never_cached(tmp_path):
    lr = TrainConfig(steps=120, warmup=1, batch_size=16, lr=1e30)
    s = RunSpec.create("topk-uniform", {"V": 40, "k": 3}, "mlp1", {"d_model": 8, "d_mlp": 8}, lr)
    with pytest.raises(UserError, match=r"^training diverged: .* \(train.lr=1e\+30\); lower train.lr$"):
        train_or_load(s, [0, 1], ctx(tmp_path))
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())


def test_nan_weights_after_training_are_refused_even_with_a_finite_loss(tmp_path, spec, monkeypatch):
    # A step that leaves a finite loss but NaN weights (the last step blew up): still never cached.
    import sparsebench.checkpoints as ck

    real = ck.train

    def nan_train(*args, **kwargs):
        result = real(*args, **kwargs)
        with torch.no_grad():
            result.models[0].embed.W_E[0, 0] = math.nan
        return result

    monkeypatch.setattr(ck, "train", nan_train)
    with pytest.raises(UserError, match="^training diverged: seed 0 .* ended with non-finite weights"):
        train_or_load(spec, [0], ctx(tmp_path))
    assert not any((tmp_path / "models").iterdir())


def test_a_nan_model_has_no_perfect_metrics():
    from sparsebench.build import make_task

    task = make_task("topk-uniform", {"V": 40, "k": 3})
    batch = task.held_out(64)
    for bad in (math.nan, math.inf):
        logits = torch.zeros(64, 40)
        logits[3, 5] = bad
        m = task.metrics(logits, batch)
        assert set(m) == set(task.metric_directions) and all(math.isnan(v) for v in m.values())
