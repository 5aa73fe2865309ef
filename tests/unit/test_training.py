"""The trainer: batched seeds equal separate runs, determinism, the fused loss, the lr schedule."""

from __future__ import annotations

import math

import pytest
import torch

from sparsebench.build import make_task
from sparsebench.fused import supports_fused, unembed_kl, unembed_kl_reference
from sparsebench.models.mlp import MLP, StackedMLP
from sparsebench.tasks.topk import TopKUniform
from sparsebench.training import TrainConfig, init_models, lr_factor, seed_generator, train, use_fused

CPU = torch.device("cpu")
MODEL = {"d_model": 8, "d_mlp": 8}
CFG = TrainConfig(steps=12, batch_size=32, lr=1e-2, warmup=3)


@pytest.fixture(scope="module")
def task():
    return make_task("topk-uniform", {"V": 40, "k": 3})


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
def test_three_seeds_together_equal_three_separate_runs(task, fused):
    seeds = [0, 1, 2]
    together = train(task, "mlp1", MODEL, CFG, seeds, device=CPU, progress=False, fused=fused)
    for i, seed in enumerate(seeds):
        alone = train(task, "mlp1", MODEL, CFG, [seed], device=CPU, progress=False, fused=fused)
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
    here = train(task, "mlp1", MODEL, CFG, seeds, device=CPU, progress=False)
    split = train(task, "mlp1", MODEL, CFG, seeds, device=CPU, progress=False, workers=2)
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
        train(task, "my-mlp", MODEL, CFG, [0, 1], device=CPU, progress=False, workers=2)
    assert len(train(task, "my-mlp", MODEL, CFG, [0, 1], device=CPU, progress=False).models) == 2


def test_a_single_seed_starts_no_processes(task):
    assert train(task, "mlp1", MODEL, CFG, [0], device=CPU, progress=False, workers=4).processes == 1


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "generic"])
def test_same_config_and_seed_give_bitwise_identical_weights(task, fused):
    a = train(task, "mlp1", MODEL, CFG, [7, 8], device=CPU, progress=False, fused=fused)
    b = train(task, "mlp1", MODEL, CFG, [7, 8], device=CPU, progress=False, fused=fused)
    for ma, mb in zip(a.models, b.models):
        for (name, pa), (_, pb) in zip(ma.named_parameters(), mb.named_parameters()):
            assert torch.equal(pa, pb), name
    assert a.final_loss == b.final_loss


def test_fused_and_generic_training_agree(task):
    a = train(task, "mlp1", MODEL, CFG, [3], device=CPU, progress=False, fused=True)
    b = train(task, "mlp1", MODEL, CFG, [3], device=CPU, progress=False, fused=False)
    for (name, pa), (_, pb) in zip(a.models[0].named_parameters(), b.models[0].named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-4, msg=name)


def test_training_lowers_the_loss(task):
    cfg = TrainConfig(steps=150, batch_size=128, lr=1e-2, warmup=10)
    res = train(task, "mlp1", {"d_model": 16, "d_mlp": 16}, cfg, [0], device=CPU, progress=False)
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
    batch = task.sample_stacked(16, generators=[seed_generator(s, "data") for s in range(3)])
    with torch.no_grad():
        out = stacked(**batch.inputs)
        for i, m in enumerate(models):
            torch.testing.assert_close(out[i], m(**batch.instance(i).inputs), rtol=1e-5, atol=1e-5)
    # unstack returns the same weights (round trip)
    for m, u in zip(models, stacked.unstack(models[0])):
        for (name, a), (_, b) in zip(m.named_parameters(), u.named_parameters()):
            assert torch.equal(a, b), name


def test_stacked_embedding_backward_matches_autograd(task):
    models = init_models(task, "mlp1", MODEL, [0, 1])
    stacked = MLP.stacked(models).double()
    batch = task.sample_stacked(8, generators=[seed_generator(s, "data") for s in range(2)])
    tokens, weights = batch.inputs["tokens"], batch.inputs["weights"].double().requires_grad_()
    W_E = stacked.p("embed.W_E")
    torch.autograd.gradcheck(lambda w, E: StackedMLP.residual(_with(stacked, E), tokens, w),
                             (weights, W_E.detach().clone().requires_grad_()))


def _with(stacked: StackedMLP, E: torch.Tensor) -> StackedMLP:
    """`stacked` with its embedding replaced by E (for gradcheck)."""
    class View:
        config = stacked.config

        def p(self, name: str) -> torch.Tensor:
            return E if name == "embed.W_E" else stacked.p(name)

    return View()  # type: ignore[return-value]


# ---- the fused unembedding + sparse KL ----

def _problem(N, B, d, V, k, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(N, B, d, generator=g, dtype=dtype, requires_grad=True)
    W = (torch.randn(N, d, V, generator=g, dtype=dtype) * 2).requires_grad_()
    b = torch.randn(N, V, generator=g, dtype=dtype, requires_grad=True)
    index = torch.stack([torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(B)]) for _ in range(N)])
    probs = torch.softmax(torch.randn(N, B, k, generator=g, dtype=dtype), -1)
    return r, W, b, index, probs


@pytest.mark.parametrize("chunk_bytes", [64, 4 * 50 * 7, 4 * 50 * 20 * 2, 1 << 30],
                         ids=["row", "rows", "instances", "whole"])
def test_fused_loss_and_grads_equal_autograd(chunk_bytes):
    r, W, b, index, probs = _problem(N=3, B=20, d=6, V=50, k=4)
    up = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)  # a non-trivial upstream gradient
    fused = unembed_kl(r, W, b, index, probs, chunk_bytes=chunk_bytes)
    ref = unembed_kl_reference(r, W, b, index, probs)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-10)
    g_fused = torch.autograd.grad((fused * up).sum(), (r, W, b))
    g_ref = torch.autograd.grad((ref * up).sum(), (r, W, b))
    for name, a, c in zip(("r", "W_U", "b_U"), g_fused, g_ref):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10, msg=name)


def test_fused_loss_fp32_unstacked_and_without_bias():
    r, W, b, index, probs = _problem(N=1, B=33, d=5, V=70, k=3, dtype=torch.float32)
    r1, W1, i1, p1 = r[0].detach().requires_grad_(), W[0].detach().requires_grad_(), index[0], probs[0]
    fused = unembed_kl(r1, W1, None, i1, p1, chunk_bytes=4 * 70 * 8)
    ref = unembed_kl_reference(r1, W1, None, i1, p1)
    assert fused.dim() == 0
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    for a, c in zip(torch.autograd.grad(fused, (r1, W1)), torch.autograd.grad(ref, (r1, W1))):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)


def test_fused_loss_handles_extreme_logits():
    r, W, b, index, probs = _problem(N=2, B=10, d=4, V=30, k=2, dtype=torch.float32)
    with torch.no_grad():
        W.mul_(200.0)  # logits in the thousands: exp would overflow without the max shift
    fused = unembed_kl(r, W, b, index, probs)
    ref = unembed_kl_reference(r, W, b, index, probs)
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-3)


def test_fused_loss_bf16_matmuls_are_close():
    r, W, b, index, probs = _problem(N=2, B=64, d=16, V=200, k=5, dtype=torch.float32)
    with torch.no_grad():
        W.mul_(0.25)
    fused = unembed_kl(r, W, b, index, probs, mm_dtype=torch.bfloat16)
    ref = unembed_kl_reference(r, W, b, index, probs)
    torch.testing.assert_close(fused, ref, rtol=2e-2, atol=2e-2)
    gW = torch.autograd.grad(fused.sum(), W)[0]
    gW_ref = torch.autograd.grad(ref.sum(), W)[0]
    assert (gW - gW_ref).norm() / gW_ref.norm() < 2e-2


def test_fused_loss_equals_the_task_loss(task):
    models = init_models(task, "mlp1", MODEL, [0, 1])
    stacked = MLP.stacked(models)
    batch = task.sample_stacked(24, generators=[seed_generator(s, "data") for s in range(2)])
    index, probs = task.sparse_kl_target(batch)
    with torch.no_grad():
        fused = unembed_kl(stacked.residual(**batch.inputs), *stacked.unembed_params(), index, probs)
        generic = task.loss(stacked(**batch.inputs), batch).mean(-1)
    torch.testing.assert_close(fused, generic, rtol=1e-5, atol=1e-5)


def test_conditional_task_uses_the_fused_path_too():
    task = make_task("topk-conditional", {"V": 30, "k": 3})
    assert supports_fused(task)
    a = train(task, "mlp1", MODEL, CFG, [1], device=CPU, progress=False, fused=True)
    b = train(task, "mlp1", MODEL, CFG, [1], device=CPU, progress=False, fused=False)
    torch.testing.assert_close(a.models[0].W_U, b.models[0].W_U, rtol=1e-4, atol=1e-4)


class _SquaredErrorTask(TopKUniform):
    """A plugin-like task with its own loss: must train through task.loss, never the fused path."""

    calls = 0

    def loss(self, logits, batch):
        type(self).calls += 1
        q = torch.softmax(logits, -1).gather(-1, batch.inputs["tokens"])
        return ((q - batch.target) ** 2).sum(-1)


def test_tasks_with_their_own_loss_use_the_generic_path():
    task = _SquaredErrorTask(TopKUniform.Config(V=30, k=3))
    assert not supports_fused(task)
    models = init_models(task, "mlp1", MODEL, [0])
    assert not use_fused(task, MLP.stacked(models), CPU, fused=True)
    before = _SquaredErrorTask.calls
    res = train(task, "mlp1", MODEL, CFG, [0], device=CPU, progress=False)
    assert _SquaredErrorTask.calls - before == CFG.steps
    assert all(math.isfinite(x) for x in res.final_loss)


def test_tasks_can_declare_a_sparse_target():
    class Declared(_SquaredErrorTask):
        def sparse_kl_target(self, batch):
            return batch.inputs["tokens"], batch.target

    assert supports_fused(Declared(TopKUniform.Config(V=30, k=3)))


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


def test_optimizer_follows_the_schedule(task):
    """The lr the trainer's step gives the optimiser at step i is lr * lr_factor(i)."""
    from sparsebench.training import Step

    cfg = TrainConfig(steps=8, batch_size=8, lr=0.1, warmup=3)
    module = init_models(task, "mlp1", MODEL, [0])[0]
    step = Step(module, task, cfg, torch.device("cpu"), False)
    gen = seed_generator(0, "data")
    seen, update = [], step.opt.step

    def recorded() -> None:  # the lr in force when the update is taken
        seen.append(step.opt.param_groups[0]["lr"])
        update()

    step.opt.step = recorded
    for i in range(cfg.steps):
        step(task.sample(cfg.batch_size, generator=gen), i)
    assert seen == pytest.approx([0.1 * lr_factor(s, cfg) for s in range(cfg.steps)])
