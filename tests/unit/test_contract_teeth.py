"""The contract checks fail on vacuous plugins, not only on broken ones (tests/contract/checks.py)."""

from __future__ import annotations

import copy

import pytest

from contract.checks import check_null, check_probe, check_task
from sparsebench import registry
from sparsebench.probes import NotApplicable, Probe
from sparsebench.tasks.topk import TopKUniform


@pytest.fixture
def fresh(monkeypatch):
    """A registry that holds the installed entries plus whatever the test registers (restored afterwards)."""
    def make(kind: str) -> registry.Registry:
        reg = registry.Registry(kind)
        monkeypatch.setattr(registry, kind, reg)
        monkeypatch.setitem(registry.REGISTRIES, kind, reg)
        return reg

    return make


class IdentityNull:
    """A 'null' that is the model itself, copied: every score on it equals the model's."""

    description = "a copy"
    relabels_inputs = False

    def make(self, trained, task, *, seed, generator):
        return copy.deepcopy(trained)


class NeverApplies(Probe):
    level = "behaviour"
    main = "x"
    directions = {"x": "higher"}

    def score(self, model, fitted, task, batch):
        return NotApplicable("never")


class UndirectedMetric(TopKUniform):
    metric_directions = {"kl": "lower"}  # but metrics() returns tv, topk_mass, ... as well


def test_a_null_identical_to_its_model_fails(fresh):
    fresh("baselines").register("copy", IdentityNull)
    with pytest.raises(AssertionError, match="it is no null"):
        check_null("copy")
    check_null("shuffled")  # a real null passes


def test_a_probe_that_never_gives_a_number_fails(fresh):
    fresh("probes").register("never", NeverApplies)
    with pytest.raises(AssertionError, match="tests nothing"):
        check_probe("never")


def test_a_metric_without_a_direction_fails(fresh):
    fresh("tasks").register("undirected", UndirectedMetric)
    with pytest.raises(AssertionError, match="no declared direction"):
        check_task("undirected")
