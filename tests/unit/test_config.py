"""Config loading: strict fields, types, overrides, stable hashes."""

from __future__ import annotations

import pytest

from sparsebench.config import from_dict, stable_hash
from sparsebench.settings import apply_overrides, parse_override
from sparsebench.errors import ConfigError, UserError
from sparsebench.training import TrainConfig


def test_from_dict_accepts_defaults_and_widens_ints():
    cfg = from_dict(TrainConfig, {"lr": 1, "steps": 10.0, "warmup": 0}, "train")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.steps == 10 and isinstance(cfg.steps, int)


@pytest.mark.parametrize("data,field", [
    ({"steps": 1.5}, "steps"), ({"lr": "fast"}, "lr"), ({"lr": -1.0}, "lr"), ({"precision": "fp8"}, "precision"),
    ({"warmup": 5000}, "warmup"), ({"stepz": 3}, "stepz"), ({"steps": True}, "steps"),
])
def test_bad_train_configs_name_the_field(data, field):
    with pytest.raises(ConfigError) as e:
        from_dict(TrainConfig, data, "train")
    assert e.value.field == field
    assert str(e.value).startswith("invalid train config: " + field)


def test_overrides_parse_toml_values():
    assert parse_override("task.k=5") == (["task", "k"], 5)
    assert parse_override("train.lr=3e-3") == (["train", "lr"], 0.003)
    assert parse_override("model.embed=fixed") == (["model", "embed"], "fixed")
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert apply_overrides({"task": {"k": 1}}, ["task.k=3", "model.d_mlp=8"]) == {"task": {"k": 3},
                                                                                 "model": {"d_mlp": 8}}
    with pytest.raises(UserError):
        parse_override("no-equals-sign")


def test_stable_hash_ignores_key_order_but_not_values():
    assert stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 1.5})


def test_config_errors_survive_a_process_boundary():
    # Worker processes send exceptions back pickled; the one-line message must arrive intact.
    import pickle

    from sparsebench.errors import ConfigError

    err = pickle.loads(pickle.dumps(ConfigError("task", "k", "must be at least 1 (got 0)")))
    assert isinstance(err, ConfigError)
    assert str(err) == "invalid task config: k: must be at least 1 (got 0)"
    assert (err.where, err.field) == ("task", "k")
