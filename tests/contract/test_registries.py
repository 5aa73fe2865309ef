"""Contract tests: every registered task, model, mechanism, probe and null (plugins included).

A new plugin is tested by these for free: they only use the public interfaces.
"""

from __future__ import annotations


import pytest
import safetensors.torch
import torch

from sparsebench import registry
from sparsebench.api import Batch, Fitted, SparseModel, Task
from sparsebench.build import make_mechanism, make_model, make_task
from sparsebench.errors import ConfigError
from sparsebench.probes import OWN_NULL, NotApplicable

HOOKS = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post",
         "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]
SMALL_TASK = {"V": 120, "k": 3}  # fields every built-in top-k task accepts; plugins fall back to defaults


def small_task(name: str) -> Task:
    try:
        return make_task(name, SMALL_TASK)
    except ConfigError:
        return make_task(name, {})


def small_model(name: str, task: Task, seed: int = 0):
    cfg = {"d_model": 16, "d_mlp": 16}
    if name == "transformer":
        cfg.update(n_heads=2, d_head=8)
    return make_model(name, cfg, task, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", registry.tasks.names())
class TestTask:
    def test_sampling_is_vectorised_deterministic_and_well_shaped(self, name):
        task = small_task(name)
        a = task.sample(64, generator=torch.Generator().manual_seed(3))
        b = task.sample(64, generator=torch.Generator().manual_seed(3))
        assert isinstance(a, Batch) and len(a) == 64
        for key in a.inputs:
            assert torch.equal(a.inputs[key], b.inputs[key])
            assert a.inputs[key].shape[0] == 64
        stacked = task.sample_stacked(8, generators=[torch.Generator().manual_seed(s) for s in (1, 2)])
        single = task.sample(8, generator=torch.Generator().manual_seed(2))
        assert torch.equal(stacked.instance(1).inputs["tokens"], single.inputs["tokens"])

    def test_loss_and_metrics(self, name):
        task = small_task(name)
        batch = task.sample(32, generator=torch.Generator().manual_seed(0))
        logits = torch.randn(32, task.n_outputs, generator=torch.Generator().manual_seed(1))
        loss = task.loss(logits, batch)
        assert loss.shape == (32,) and torch.isfinite(loss).all() and (loss >= -1e-5).all()
        m = task.metrics(logits, batch)
        assert {"kl", "tv", "topk_mass", "exact_set", "fp_rate"} <= set(m)
        assert all(isinstance(v, float) for v in m.values())

    def test_unknown_config_field_is_named(self, name):
        with pytest.raises(ConfigError, match="no_such_field"):
            make_task(name, {"no_such_field": 1})


@pytest.mark.parametrize("name", registry.models.names())
class TestModel:
    def test_forward_hooks_and_weight_views(self, name):
        task = small_task("topk-uniform")
        model = small_model(name, task)
        batch = task.sample(4, generator=torch.Generator().manual_seed(0))
        assert isinstance(model, SparseModel)  # the protocol probes and mechanisms rely on
        logits, cache = model.run_with_cache(**batch.inputs)
        assert logits.shape == (4, task.n_outputs)
        assert set(HOOKS) <= set(cache.keys())
        assert model.W_E.shape[0] == task.n_inputs and model.W_U.shape[-1] == task.n_outputs
        assert model.W_in.shape[0] == model.n_layers == model.W_out.shape[0]
        zeroed = model.run_with_hooks(**batch.inputs, fwd_hooks=[("blocks.0.mlp.hook_post", lambda a, hook: a * 0)])
        assert zeroed.shape == logits.shape and not torch.allclose(zeroed, logits)

    def test_init_is_deterministic_and_checkpoints_round_trip(self, name, tmp_path):
        task = small_task("topk-uniform")
        a, b, c = small_model(name, task, 5), small_model(name, task, 5), small_model(name, task, 6)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        assert not torch.equal(a.W_E, c.W_E)
        safetensors.torch.save_model(a, str(tmp_path / "m.safetensors"))
        safetensors.torch.load_model(c, str(tmp_path / "m.safetensors"))
        batch = task.sample(4, generator=torch.Generator().manual_seed(0))
        assert torch.equal(a(**batch.inputs), c(**batch.inputs))


def _mechanism(name: str):
    return make_mechanism(name)


@pytest.mark.parametrize("name", registry.mechanisms.names())
def test_mechanism_constructs_and_fits(name):
    task = small_task("topk-uniform")
    mech = _mechanism(name)
    mech.validate(task, 32)
    model = mech.construct(task, 32, generator=torch.Generator().manual_seed(0))
    batch = task.sample(16, generator=torch.Generator().manual_seed(1))
    assert model(**batch.inputs).shape == (16, task.n_outputs)
    for target in (model, small_model("mlp1", task)):
        fitted = mech.fit(target, task, generator=torch.Generator().manual_seed(2))
        assert isinstance(fitted, Fitted)
        assert all(isinstance(v, (int, float, str)) for v in fitted.summary().values())


@pytest.mark.parametrize("name", registry.probes.names())
def test_probe_scores_or_says_why_not(name):
    task = small_task("topk-uniform")
    model = small_model("mlp1", task)
    probe = registry.probes.get(name)()
    batch = task.sample(64, generator=torch.Generator().manual_seed(1))
    for mech in registry.mechanisms.names():
        fitted = _mechanism(mech).fit(model, task, generator=torch.Generator().manual_seed(2))
        result = probe.score(model, fitted, task, batch)
        if isinstance(result, NotApplicable):
            assert result.reason and "\n" not in result.reason
        else:
            own, scores = {k for k in result if OWN_NULL in k}, {k for k in result if OWN_NULL not in k}
            assert probe.main in scores and scores <= set(probe.higher_is_better)
            assert {k.split(OWN_NULL)[0] for k in own} <= scores  # a probe's own null belongs to one of its scores
            assert all(isinstance(v, float) for v in result.values())


@pytest.mark.parametrize("name", registry.baselines.names())
def test_null_is_a_new_model_of_the_same_shape(name):
    task = small_task("topk-uniform")
    model = small_model("mlp1", task)
    model.name = "mlp1"
    before = {k: v.clone() for k, v in model.state_dict().items()}
    null = registry.baselines.get(name)().make(model, task, seed=0, generator=torch.Generator().manual_seed(0))
    assert null is not model
    assert {k: v.shape for k, v in null.state_dict().items()} == {k: v.shape for k, v in before.items()}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a null must not modify its input"
