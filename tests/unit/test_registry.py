"""Registries: entry points, 'did you mean', plugins that fail to load."""

from __future__ import annotations

import warnings
from importlib import metadata

import pytest

from sparsebench import registry
from sparsebench.errors import UserError
from sparsebench.registry import PluginWarning, Registry


def test_builtins_register_through_entry_points():
    assert {"topk-uniform", "topk-conditional"} <= set(registry.tasks.names())
    assert {"mlp1", "transformer"} <= set(registry.models.names())
    assert {"bloom", "jl", "softmax-bottleneck"} <= set(registry.mechanisms.names())
    assert {"untrained", "shuffled"} <= set(registry.baselines.names())
    assert registry.tasks.entry("topk-uniform").source == "sparsebench"


def test_unknown_name_suggests_the_closest():
    with pytest.raises(UserError, match=r"^unknown task 'topk-unifrom'; did you mean 'topk-uniform'\?$"):
        registry.tasks.get("topk-unifrom")
    with pytest.raises(UserError, match="unknown mechanism 'zzz'; known: "):
        registry.mechanisms.get("zzz")


def test_register_rejects_duplicates():
    from sparsebench.tasks.topk import TopKUniform

    reg = Registry("tasks")
    reg.register("x-task", TopKUniform)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("x-task", TopKUniform)


def test_a_broken_plugin_is_named_and_skipped(monkeypatch):
    good = metadata.EntryPoint("good", "sparsebench.tasks.topk:TopKUniform", "sparsebench.tasks")
    bad = metadata.EntryPoint("broken", "no_such_module_xyz:Task", "sparsebench.tasks")
    monkeypatch.setattr(metadata, "entry_points", lambda group: [bad, good])
    reg = Registry("tasks")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = reg.names()
    assert names == ["good"]
    assert any(issubclass(w.category, PluginWarning) and "'broken'" in str(w.message) for w in caught)
    with pytest.raises(UserError, match="failed to load"):
        reg.get("broken")
