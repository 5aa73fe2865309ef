"""Values no run can use are one ConfigError naming the field, before anything is allocated (issue 15, items 4,
7, 9, 11): non-finite floats in every config, sizes that cannot fit in memory, typos, seeds of the wrong type."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from sparsebench import limits, registry
from sparsebench.checkpoints import RunSpec
from sparsebench.config import NONFINITE, from_dict
from sparsebench.errors import ConfigError, UserError
from sparsebench.settings import run_settings, seed_list, suite_from_dict
from sparsebench.suite import Suite
from sparsebench.training import TrainConfig


def _config_classes():
    from sparsebench.tickets.config import Cell, TicketSuite

    out = [("train", TrainConfig), ("suite", Suite), ("tickets", TicketSuite), ("tickets.cells", Cell)]
    for kind in ("tasks", "models", "mechanisms", "detectors"):
        for e in registry.REGISTRIES[kind]:
            out.append((f"{kind}:{e.name}", e.obj.Config))
    return out


def _float_fields(cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if hint is float or float in typing.get_args(hint):
            yield f


FLOAT_FIELDS = [(name, cls, f.name) for name, cls in _config_classes() for f in _float_fields(cls)
                if not f.metadata.get(NONFINITE)]


def test_every_built_in_float_field_is_covered():
    assert {("train", "lr"), ("train", "weight_decay"), ("tasks:topk-uniform", "w_hi"),
            ("tasks:topk-conditional", "beta"), ("models:mlp1", "init_scale"),
            ("mechanisms:bloom", "alpha"), ("tasks:clause-dnf", "template_weights"), ("tickets", "rho"),
            ("tickets.cells", "sparsities"), ("detectors:obs", "damping")} <= {(n, f) for n, _, f in FLOAT_FIELDS}


@pytest.mark.parametrize("name,cls,field", FLOAT_FIELDS, ids=[f"{n}.{f}" for n, _, f in FLOAT_FIELDS])
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, 10**400])
def test_no_float_field_of_any_config_takes_nan_or_infinity(name, cls, field, value):
    listed = typing.get_origin(typing.get_type_hints(cls)[field]) is tuple  # a list of floats: one bad item
    with pytest.raises(ConfigError) as e:
        from_dict(cls, {field: [value] if listed else value}, "x")
    assert e.value.field == field and "must be a finite number" in str(e.value)


def test_a_field_may_allow_non_finite_values_explicitly():
    @dataclasses.dataclass(frozen=True)
    class C:
        bound: float = dataclasses.field(default=math.inf, metadata={NONFINITE: True})

    assert from_dict(C, {"bound": -math.inf}, "x").bound == -math.inf


# ----------------------------------------------------------------------------- sizes

HUGE = 10**12


@pytest.mark.parametrize("task,model,train,where,field", [
    ({"V": HUGE}, {}, {}, "task", "V"),
    ({"V": 10**9, "k": 10**9}, {}, {}, "task", "k"),  # k is the larger multiple of its default
    ({}, {"d_model": 10**9}, {}, "model", "d_model"),
    ({}, {"d_mlp": HUGE}, {}, "model", "d_mlp"),
    ({}, {"n_layers": 10**9}, {}, "model", "n_layers"),
    ({}, {}, {"batch_size": HUGE}, "train", "batch_size"),
])
def test_sizes_that_cannot_fit_are_refused_naming_the_field(task, model, train, where, field):
    with pytest.raises(ConfigError) as e:
        RunSpec.create("topk-uniform", task, "mlp1", model, from_dict(TrainConfig, train, "train"))
    assert (e.value.where, e.value.field) == (where, field)
    assert "is too large: this run would need about" in e.value.detail and "more than this machine's" in e.value.detail


def test_the_size_bound_is_this_machines_memory(monkeypatch):
    from sparsebench.build import make_task, model_class

    task = make_task("topk-uniform", {"V": 1000})
    need = sum(b for _, b, _ in limits.run_terms(task, model_class("mlp1"), {"d_model": 64, "d_mlp": 64}, 1024))
    limits.check_run(task, model_class("mlp1"), {"d_model": 64, "d_mlp": 64}, TrainConfig(), limit=need)
    with pytest.raises(ConfigError, match="too large"):
        limits.check_run(task, model_class("mlp1"), {"d_model": 64, "d_mlp": 64}, TrainConfig(), limit=need - 1)
    monkeypatch.setattr(limits, "memory_bytes", lambda: need - 1)
    with pytest.raises(ConfigError, match="more than this machine's"):
        RunSpec.create("topk-uniform", {"V": 1000}, "mlp1", {"d_model": 64, "d_mlp": 64}, TrainConfig())


@pytest.mark.parametrize("data,field", [
    ({"eval_samples": 10**10}, "eval_samples"),
    ({"probe_samples": 10**12}, "probe_samples"),
    ({"widths": [10**9]}, "widths"),
    ({"construct_widths": [10**10]}, "construct_widths"),
])
def test_evaluation_sizes_that_cannot_fit_are_refused_before_any_work(data, field):
    from sparsebench.evaluate import Plan

    suite = suite_from_dict({"runs": [{"task_config": {"V": 50, "k": 3}}], "mechanisms": ["bloom"], **data})
    with pytest.raises(ConfigError) as e:
        Plan(suite)
    assert (e.value.where, e.value.field) == ("suite", field) and "is too large" in e.value.detail


# ----------------------------------------------------------------------------- settings

@pytest.mark.parametrize("value,message", [
    ("abc", "seeds must be a non-empty list of integers (got 'abc')"),
    ([1.5], "seeds must be non-negative integers (got 1.5)"),
    (5, "seeds must be a non-empty list of integers (got 5)"),
    ([True], "seeds must be non-negative integers (got True)"),
    ([-1], "seeds must be non-negative integers (got -1)"),
    ([], "seeds must be a non-empty list of integers (got [])"),
    ([1, 1], "seeds repeats a seed: [1, 1]"),
])
def test_seeds_of_the_wrong_type_are_one_error(value, message):
    with pytest.raises(UserError) as e:
        seed_list(value)
    assert str(e.value) == message


@pytest.mark.parametrize("data,message", [
    ({"tsak": {"V": 10}}, "unknown field; known fields: name, runs"),
    ({"V": 3}, "V: unknown field"),
    ({"train": {"stpes": 3}}, "invalid train config: stpes: unknown field"),
    ({"runs": [{"tsak": "x"}]}, "invalid suite.runs config: tsak: unknown field"),
])
def test_a_typo_in_a_suite_is_refused(data, message):
    with pytest.raises(ConfigError, match=message):
        suite_from_dict(data)


@pytest.mark.parametrize("sets,message", [
    (["tsak.V=10"], "--set tsak.V=10: expected section.field with a section of task, model, train; did you mean "
                    "'task'?"),
    (["V=3"], "--set V=3: expected section.field with a section of task, model, train"),
    (["task.V.x=3"], "--set task.V.x=3: expected section.field with a section of task, model, train"),
])
def test_a_typo_in_run_settings_is_refused(sets, message):
    with pytest.raises(UserError) as e:
        run_settings(None, sets)
    assert str(e.value) == message


def test_a_shortened_run_names_the_warmup_rule():
    with pytest.raises(ConfigError) as e:
        from_dict(TrainConfig, {"steps": 50}, "train")
    assert str(e.value) == ("invalid train config: warmup: must be in [0, steps=50] (got 100); set train.warmup "
                            "too when you shorten steps")


def test_an_empty_cache_variable_means_the_default(monkeypatch, tmp_path):
    from pathlib import Path

    from sparsebench.context import default_cache_root

    for value in ("", "  "):
        monkeypatch.setenv("SPARSEBENCH_CACHE", value)
        assert default_cache_root() == Path.home() / ".cache" / "sparsebench"
