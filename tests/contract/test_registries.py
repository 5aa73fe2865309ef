"""Contract tests: every registered task, model, mechanism, probe, null and detector (installed plugins included).

A new plugin is tested by these for free once it is installed: they only use the public interfaces
(the checks, and why each one fails on a vacuous entry, are in `checks.py`).
"""

from __future__ import annotations

import pytest

from sparsebench import registry
from sparsebench.build import make_task
from sparsebench.errors import ConfigError

from .checks import check_control, check_detector, check_mechanism, check_model, check_null, check_probe, check_task


@pytest.mark.parametrize("name", registry.tasks.names())
def test_task(name):
    check_task(name)


@pytest.mark.parametrize("name", registry.tasks.names())
def test_unknown_task_config_field_is_named(name):
    with pytest.raises(ConfigError, match="no_such_field"):
        make_task(name, {"no_such_field": 1})


@pytest.mark.parametrize("name", registry.models.names())
def test_model(name, tmp_path):
    check_model(name, tmp_path)


@pytest.mark.parametrize("name", registry.mechanisms.names())
def test_mechanism_constructs_and_fits(name):
    check_mechanism(name)


@pytest.mark.parametrize("name", registry.probes.names())
def test_probe_scores_something_and_says_why_not_otherwise(name):
    check_probe(name)


@pytest.mark.parametrize("name", registry.baselines.names())
def test_null_is_a_new_and_different_model(name):
    check_null(name)


@pytest.mark.parametrize("name", registry.controls.names())
def test_control_is_a_wrong_explanation(name):
    check_control(name)


@pytest.mark.parametrize("name", registry.detectors.names())
def test_detector_scores_its_space(name):
    check_detector(name)
