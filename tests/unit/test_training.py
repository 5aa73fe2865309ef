"""The trainer: batched seeds equal separate runs, worker processes, determinism, the lr schedule."""

from __future__ import annotations

import math

import pytest
import torch

from sparsebench.api import Batch
from sparsebench.build import make_task
from sparsebench.context import RunContext
from sparsebench.models.mlp import MLP
from sparsebench.training import AutogradStep, TrainConfig, init_models, lr_factor, optimise, seed_generator, train

MODEL = {"d_model": 8, "d_mlp": 8}
CFG = TrainConfig(steps=12, batch_size=32, lr=1e-2, warmup=3)


def ctx(backend: str = "auto", workers: int = 1) -> RunContext:
    return RunContext.create("cpu", progress=False, backend=backend, workers=workers)


def stacked_batch(task, n: int, seeds: range) -> Batch:
    return Batch.stack([task.sample(n, generator=seed_generator(s, "data")) for s in seeds])


@pytest.fixture(scope="module")
def task():
    return make_task("topk-uniform", {"V": 40, "k": 3})


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_three_seeds_together_equal_three_separate_runs(task, backend):
    seeds = [0, 1, 2]
    together = train(task, "mlp1", MODEL, CFG, seeds, ctx(backend))
    assert together.backend == ("fused" if backend == "auto" else "torch")
    for i, seed in enumerate(seeds):
        alone = train(task, "mlp1", MODEL, CFG, [seed], ctx(backend))
        a, b = _params(together.models[i]), _params(alone.models[0])
        assert a.keys() == b.keys()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5, msg=f"seed {seed}: {name}")
        assert together.final_loss[i] == pytest.approx(alone.final_loss[0], rel=1e-4)
    # The seeds really differ (otherwise the check above is vacuous).
    assert not torch.equal(together.models[0].W_U, together.models[1].W_U)


def test_seeds_split_over_worker_processes_equal_one_process(task):
    # The real thing: two spawned single-threaded processes, each training its share as one batch.
    seeds = [0, 1, 2, 3, 4]
    here = train(task, "mlp1", MODEL, CFG, seeds, ctx())
    split = train(task, "mlp1", MODEL, CFG, seeds, ctx(workers=2))
    assert (here.processes, split.processes) == (1, 2)
    assert len(split.models) == len(seeds)
    for i, seed in enumerate(seeds):
        a, b = _params(here.models[i]), _params(split.models[i])
        for name in a:
            torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=f"seed {seed}: {name}")
        assert split.final_loss[i] == pytest.approx(here.final_loss[i], rel=1e-5)
        assert not split.models[i].training


def test_entries_registered_at_run_time_are_refused_by_workers(task, monkeypatch):
    # A spawned worker sees only installed plugins, so it could not build "my-mlp": say so up front.
    from sparsebench import registry
    from sparsebench.errors import UserError

    fresh = registry.Registry("models")
    fresh.register("my-mlp", MLP)
    monkeypatch.setattr(registry, "models", fresh)
    monkeypatch.setitem(registry.REGISTRIES, "models", fresh)
    with pytest.raises(UserError, match="^model 'my-mlp' was registered at run time"):
        train(task, "my-mlp", MODEL, CFG, [0, 1], ctx(workers=2))
    assert len(train(task, "my-mlp", MODEL, CFG, [0, 1], ctx()).models) == 2


def test_a_single_seed_starts_no_processes(task):
    assert train(task, "mlp1", MODEL, CFG, [0], ctx(workers=4)).processes == 1


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_same_config_and_seed_give_bitwise_identical_weights(task, backend):
    a = train(task, "mlp1", MODEL, CFG, [7, 8], ctx(backend))
    b = train(task, "mlp1", MODEL, CFG, [7, 8], ctx(backend))
    for ma, mb in zip(a.models, b.models):
        for (name, pa), (_, pb) in zip(ma.named_parameters(), mb.named_parameters()):
            assert torch.equal(pa, pb), name
    assert a.final_loss == b.final_loss


def test_training_lowers_the_loss(task):
    cfg = TrainConfig(steps=150, batch_size=128, lr=1e-2, warmup=10)
    res = train(task, "mlp1", {"d_model": 16, "d_mlp": 16}, cfg, [0], ctx())
    model = res.models[0]
    batch = task.held_out(512)
    with torch.no_grad():
        kl = task.loss(model(**batch.inputs), batch).mean().item()
    assert kl < 0.8 * math.log(task.config.V / task.config.k)  # well below an untrained, uniform output
    assert res.final_loss[0] == pytest.approx(kl, rel=0.3)


@pytest.mark.parametrize("n_layers", [0, 1, 2])
def test_analysis_mlp_forward_equals_stacked_forward_per_instance(task, n_layers):
    cfg = {"d_model": 8, "d_mlp": 6, "n_layers": n_layers}
    models = init_models(task, "mlp1", cfg, [0, 1, 2])
    stacked = MLP.stacked(models)
    batch = stacked_batch(task, 16, range(3))
    with torch.no_grad():
        out = stacked(**batch.inputs)
        for i, m in enumerate(models):
            torch.testing.assert_close(out[i], m(**batch.instance(i).inputs), rtol=1e-5, atol=1e-5)
    # unstack returns the same weights (round trip)
    for m, u in zip(models, stacked.unstack(models[0])):
        for (name, a), (_, b) in zip(m.named_parameters(), u.named_parameters()):
            assert torch.equal(a, b), name


# ---- the learning-rate schedule ----

def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=110, warmup=10, lr=1.0, min_lr_frac=0.1)
    f = [lr_factor(s, cfg) for s in range(cfg.steps)]
    assert f[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])  # linear warm-up, reaching 1
    assert f[10] == pytest.approx(1.0)  # the cosine starts at the peak
    assert f[60] == pytest.approx(0.1 + 0.9 * 0.5)  # halfway: the mean of peak and floor
    assert lr_factor(cfg.steps, cfg) == pytest.approx(0.1)  # ends at min_lr_frac
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # monotone decay after warm-up
    for s in (20, 45, 80):
        t = (s - 10) / 100
        assert f[s] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def test_lr_schedule_without_warmup():
    cfg = TrainConfig(steps=50, warmup=0, lr=1.0)
    assert lr_factor(0, cfg) == pytest.approx(1.0)
    assert lr_factor(25, cfg) == pytest.approx(0.5)


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_optimizer_follows_the_schedule(task, monkeypatch, backend):
    """The lr in force when the optimiser takes update i is lr * lr_factor(i), on the plain and the fused step."""
    cfg = TrainConfig(steps=8, batch_size=8, lr=0.1, warmup=3)
    module = MLP.stacked(init_models(task, "mlp1", MODEL, [0]))
    seen = []
    real = torch.optim.AdamW.step

    def recorded(opt, *args, **kwargs):  # the lr in force when the update is taken
        seen.append(opt.param_groups[0]["lr"])
        return real(opt, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", recorded)
    _, used = optimise(module, task, cfg, [0], ctx(backend))
    assert used == ("fused" if backend == "auto" else "torch")
    assert seen == pytest.approx([0.1 * lr_factor(s, cfg) for s in range(cfg.steps)])


def test_plain_step_draws_each_instance_from_the_tasks_own_sample(task):
    step = AutogradStep(MLP.stacked(init_models(task, "mlp1", MODEL, [0, 1])), task, CFG, torch.device("cpu"))
    batch = step.sample([seed_generator(s, "data") for s in (0, 1)])
    for i, s in enumerate((0, 1)):
        alone = task.sample(CFG.batch_size, generator=seed_generator(s, "data"))
        assert torch.equal(batch.instance(i).inputs["tokens"], alone.inputs["tokens"])
        assert torch.equal(batch.instance(i).target, alone.target)
