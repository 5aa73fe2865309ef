"""The native kernel (`--kernel native`): the same loss and gradients as autograd, training that
matches the torch path, bitwise independence of threads and processes, and clear errors."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch

from sparsebench.accel import native
from sparsebench.accel.fused import bag_residual, unembed_kl_reference
from sparsebench.accel.sampling import native_topk_sampler, reference_sample
from sparsebench.build import make_task
from sparsebench.context import RunContext
from sparsebench.errors import UserError
from sparsebench.training import TrainConfig, init_models, lr_factor, seed_generator, train

OK, WHY = native.available()
pytestmark = pytest.mark.skipif(not OK, reason=f"the native kernel cannot run here: {WHY}")
CPU = torch.device("cpu")


def _problem(task_name: str, V: int, k: int, d: int, m: int, B: int, n: int, **model: object):
    """A stacked mlp1 with perturbed weights (non-zero biases) and one batch."""
    task = make_task(task_name, {"V": V, "k": k})
    cfg = {"d_model": d, "d_mlp": m, **model}
    module = type(init_models(task, "mlp1", cfg, [0])[0]).stacked(init_models(task, "mlp1", cfg, list(range(n))))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    batch = reference_sample(task, B, [seed_generator(s, "data") for s in range(n)], "cpu")
    return task, module, batch


def ctx(backend: str = "native", workers: int = 1) -> RunContext:
    return RunContext.create("cpu", progress=False, backend=backend, workers=workers)


def _native(task, module, batch, bf16: bool = False) -> torch.Tensor:
    index, probs = task.sparse_kl_target(batch)
    return native.mlp1_kl(module, batch.inputs["tokens"], batch.inputs["weights"], index, probs, bf16=bf16)


def _reference(task, module, batch, up: torch.Tensor):
    """Per-instance mean loss and the gradients of (loss * up).sum(), in float64 autograd (the sparse
    KL written with plain ops; test_training.py checks it equals task.loss)."""
    ref = copy.deepcopy(module).double()
    index, probs = task.sparse_kl_target(batch)
    W_U, b_U = ref.unembed_params()
    loss = unembed_kl_reference(bag_residual(ref, **batch.inputs), W_U, b_U, index, probs.double())  # [inst]
    grads = torch.autograd.grad((loss * up.double()).sum(), [p for p in ref.parameters() if p.requires_grad])
    return loss.detach(), grads


SHAPES = {  # V, k, d, m, B, n: the suite's small size, and ragged sizes that exercise every masked tail
    "small": (500, 5, 32, 32, 256, 3),
    "ragged": (37, 3, 20, 24, 13, 2),  # odd V, a partial last block of rows
    "wide": (70, 1, 48, 40, 9, 1),  # more than 32 outputs in every narrow matmul
    "tiny": (5, 1, 17, 5, 3, 2),  # odd d, fewer rows than one block
}


@pytest.mark.parametrize("task_name", ["topk-uniform", "topk-conditional"])
@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_loss_and_every_gradient_equal_autograd(task_name, shape):
    task, module, batch = _problem(task_name, *SHAPES[shape])
    n = SHAPES[shape][-1]
    up = torch.linspace(0.5, 2.0, n)  # a non-trivial upstream gradient per instance
    loss = _native(task, module, batch)
    params = [p for p in module.parameters() if p.requires_grad]
    grads = torch.autograd.grad((loss * up).sum(), params)
    ref_loss, ref_grads = _reference(task, module, batch, up)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-5)
    names = [name for name, p in module.named_parameters() if p.requires_grad]
    assert len(names) == 7
    for name, a, b in zip(names, grads, ref_grads):
        scale = b.abs().max().item()
        assert scale > 0, name  # every gradient is non-trivial, so the comparison means something
        torch.testing.assert_close(a.double(), b, rtol=0, atol=2e-5 * scale, msg=name)


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_bf16_matmuls_stay_close_to_fp32(shape):
    if not native.available(bf16=True)[0]:
        pytest.skip(f"no bf16 kernel here: {native.available(bf16=True)[1]}")
    task, module, batch = _problem("topk-conditional", *SHAPES[shape])
    params = [p for p in module.parameters() if p.requires_grad]
    up = torch.ones(SHAPES[shape][-1])
    ref_loss, ref_grads = _reference(task, module, batch, up)
    errors = {}
    for bf16 in (False, True):
        loss = _native(task, module, batch, bf16=bf16)
        grads = torch.autograd.grad(loss.sum(), params)
        errors[bf16] = max((a.double() - b).norm().item() / b.norm().item() for a, b in zip(grads, ref_grads))
        torch.testing.assert_close(loss.double(), ref_loss, rtol=2e-2, atol=2e-2)
    # bf16 rounding shows (so the bf16 path really ran), and stays at bf16's precision
    assert errors[False] < 1e-5 < errors[True] < 2e-2, errors


def test_frozen_embedding_and_no_biases():
    task, module, batch = _problem("topk-uniform", 60, 4, 16, 16, 24, 2, embed="fixed", bias_in=False,
                                   bias_out=False, bias_unembed=False)
    params = [p for p in module.parameters() if p.requires_grad]
    assert len(params) == 3  # W_in, W_out, W_U
    grads = torch.autograd.grad(_native(task, module, batch).sum(), params)
    _, ref_grads = _reference(task, module, batch, torch.ones(2))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=2e-5 * b.abs().max().item())


def test_the_trainers_step_fills_grad_in_place_with_the_same_numbers():
    task, module, batch = _problem("topk-conditional", *SHAPES["ragged"], embed="fixed")
    trainable = [p for p in module.parameters() if p.requires_grad]
    loss = _native(task, module, batch)
    grads = torch.autograd.grad(loss.sum(), trainable)
    twin = copy.deepcopy(module)
    index, probs = task.sparse_kl_target(batch)
    step = native.train_step(twin, batch.inputs["tokens"], batch.inputs["weights"], index, probs)
    assert torch.equal(step, loss.detach()) and not step.requires_grad
    assert twin.p("embed.W_E").grad is None  # frozen: no gradient
    twin_trainable = [p for p in twin.parameters() if p.requires_grad]
    for p, g in zip(twin_trainable, grads):
        assert torch.equal(p.grad, g)
    # The next step overwrites the same buffers (no zeroing, no new memory).
    buffers = [p.grad.data_ptr() for p in twin_trainable]
    native.train_step(twin, batch.inputs["tokens"], batch.inputs["weights"], index, probs)
    assert [p.grad.data_ptr() for p in twin_trainable] == buffers
    assert all(torch.equal(p.grad, g) for p, g in zip(twin_trainable, grads))


@pytest.mark.parametrize("shape", ["small", "ragged"])
def test_adamw_in_the_kernel_equals_torch_adamw_on_its_gradients(shape):
    # Three steps with a changing lr and weight decay, one weight frozen: the kernel's own AdamW step
    # against torch.optim.AdamW (fused) given the same weights and the kernel's own gradients.
    task, module, batch = _problem("topk-conditional", *SHAPES[shape], embed="fixed")
    twin, start = copy.deepcopy(module), copy.deepcopy(module)
    trainable = [p for p in twin.parameters() if p.requires_grad]
    betas, wd = (0.8, 0.95), 0.1
    opt = torch.optim.AdamW(trainable, lr=1.0, betas=betas, weight_decay=wd, eps=1e-8, fused=True)
    adamw = native.AdamW(module, betas=betas, weight_decay=wd, eps=1e-8)
    index, probs = task.sparse_kl_target(batch)
    eps = torch.finfo(torch.float32).eps
    for lr in (0.05, 0.02, 0.01):
        with torch.no_grad():
            for a, b in zip(module.parameters(), twin.parameters()):
                b.copy_(a)  # the same weights before the step (they drift apart by ulps otherwise)
        native.train_step(module, batch.inputs["tokens"], batch.inputs["weights"], index, probs, adamw=adamw, lr=lr)
        for a, b in zip(module.parameters(), twin.parameters()):
            b.grad = None if a.grad is None else a.grad.clone()  # the gradients the kernel stepped with
        opt.param_groups[0]["lr"] = lr
        opt.step()
        # The same update in another order: a few ulps of the weight (or of lr, for weights near 0; a
        # wrong update is off by ~0.1 lr), and of each moment.
        for name in native._PARAMS[1:]:
            a, b = module.p(name).detach(), twin.p(name).detach()
            assert ((a - b).abs() <= 16 * eps * b.abs().clamp(min=lr)).all(), name
            state = opt.state[twin.p(name)]
            for mine, theirs in zip(adamw.moments[native._PARAMS.index(name)], (state["exp_avg"], state["exp_avg_sq"])):
                assert ((mine - theirs).abs() <= 8 * eps * theirs.abs() + 1e-30).all(), name
    assert adamw.steps == 3 and adamw.moments[0] is None
    assert torch.equal(module.p("embed.W_E"), start.p("embed.W_E"))  # frozen weights are not stepped
    assert (module.p("unembed.W_U") - start.p("unembed.W_U")).abs().mean() > 1e-2  # three steps of ~lr


def test_the_trainers_native_step_follows_the_schedule():
    # The native step: one kernel call per step with AdamW at the lr it is given (the trainer gives
    # lr * lr_factor(i)), bitwise the same as calling the kernel by hand.
    task, module, batch = _problem("topk-uniform", *SHAPES["ragged"])
    twin = copy.deepcopy(module)
    cfg = TrainConfig(steps=4, batch_size=13, lr=0.05, warmup=2, weight_decay=0.01)
    step = ctx().accel.step(module, task, cfg)
    assert isinstance(step, native.NativeStep)
    adamw = native.AdamW(twin, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    index, probs = task.sparse_kl_target(batch)
    for i in range(cfg.steps):
        lr = cfg.lr * lr_factor(i, cfg)
        loss = step(batch, lr)
        ref = native.train_step(twin, batch.inputs["tokens"], batch.inputs["weights"], index, probs,
                                adamw=adamw, lr=lr)
        assert torch.equal(loss, ref)
    assert step.opt is None and step.adamw.steps == cfg.steps
    for (name, p), q in zip(module.named_parameters(), twin.parameters()):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("name,config", [
    ("topk-uniform", {"V": 500, "k": 5}),
    ("topk-conditional", {"V": 37, "k": 9, "w_lo": 0.3, "w_hi": 2.7}),
    ("topk-conditional", {"V": 6, "k": 6, "target": "softmax", "beta": 3.0}),  # k = V: every token
])
def test_the_native_sampler_draws_the_tasks_own_batches(name, config):
    task = make_task(name, config)
    ours, theirs = ([seed_generator(s, "data") for s in range(3)] for _ in range(2))
    for n in (256, 7, 1):  # the generators move on: three batches in a row
        fast = native_topk_sampler(task, n, native.topk_from_uniforms)
        a, b = reference_sample(task, n, theirs, "cpu"), fast(ours)
        for key in ("tokens", "weights"):
            assert a.inputs[key].dtype == b.inputs[key].dtype and torch.equal(a.inputs[key], b.inputs[key]), key
        assert torch.equal(a.target, b.target)


@pytest.mark.parametrize("k", [4, 40])  # torch's unstable sort breaks ties by position only up to 16
def test_the_native_sampler_breaks_order_ties_by_position_as_the_task_does(k):
    task = make_task("topk-uniform", {"V": 500, "k": k})
    u = torch.rand(500, 3 * k, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u[:, k:2 * k] = torch.randint(0, 2, (500, k), generator=torch.Generator().manual_seed(1)).double() / 2  # ties
    expected = task._from_uniforms(u).inputs["tokens"]
    tokens, weights = torch.empty(500, k, dtype=torch.long), torch.empty(500, k)
    native._library().sb_topk_from_uniforms(500, k, 500, 1.0, 1.0, u.data_ptr(), tokens.data_ptr(), weights.data_ptr())
    assert torch.equal(tokens, expected)


def test_tasks_that_sample_their_own_way_keep_their_sampler():
    from sparsebench.tasks.topk import TopKUniform

    class Shifted(TopKUniform):
        def _from_uniforms(self, u):
            return super()._from_uniforms(u)

    task = Shifted(make_task("topk-uniform", {"V": 20, "k": 2}).config)
    assert native_topk_sampler(task, 8, native.topk_from_uniforms) is None  # a subclass: its own sample
    module = type(init_models(task, "mlp1", MODEL, [0])[0]).stacked(init_models(task, "mlp1", MODEL, [0, 1]))
    step = ctx().accel.step(module, task, CFG)
    assert isinstance(step, native.NativeStep) and step.sampler is None  # the kernel, but the task's own data


def test_adamw_refuses_other_weights_and_a_bad_batch_changes_nothing():
    task, module, batch = _problem("topk-uniform", *SHAPES["tiny"])
    _, other, _ = _problem("topk-uniform", *SHAPES["tiny"])  # the same shapes, other weights
    adamw = native.AdamW(module)
    index, probs = task.sparse_kl_target(batch)
    args = (batch.inputs["tokens"], batch.inputs["weights"])
    with pytest.raises(ValueError, match="not the weights"):
        native.train_step(other, *args, index, probs, adamw=adamw, lr=0.1)
    before = copy.deepcopy(module)
    bad = index.clone()
    bad[-1, -1, -1] = 5  # V = 5: the last instance's last target
    with pytest.raises(IndexError, match="out of range"):
        native.train_step(module, *args, bad, probs, adamw=adamw, lr=0.1)
    with pytest.raises(ValueError, match="shapes disagree"):
        native.train_step(module, *args, index, probs[..., :0], adamw=adamw, lr=0.1)
    assert adamw.steps == 0 and all(p.grad is None for p in module.parameters())
    assert all(torch.equal(p, q) for p, q in zip(module.parameters(), before.parameters()))
    module.p("embed.W_E").requires_grad_(False)  # frozen after the optimiser was built
    with pytest.raises(ValueError, match="frozen or unfrozen"):
        native.train_step(module, *args, index, probs, adamw=adamw, lr=0.1)
    assert copy.deepcopy(adamw).steps == 0  # no raw pointers kept: it copies (and pickles)


def test_a_nan_logit_makes_the_loss_nan_at_once():
    task, module, batch = _problem("topk-uniform", 30, 2, 16, 16, 10, 1)
    index, _ = task.sparse_kl_target(batch)
    outside = sorted(set(range(30)) - set(index.flatten().tolist()))[0]  # no sample's target
    with torch.no_grad():
        module.p("unembed.W_U")[0, :, outside] = float("nan")
    for bf16 in (False, True) if native.available(bf16=True)[0] else (False,):
        assert torch.isnan(_native(task, module, batch, bf16=bf16)).all()


def test_extreme_logits_stay_finite():
    task, module, batch = _problem("topk-uniform", 30, 2, 16, 16, 10, 2)
    with torch.no_grad():
        module.p("unembed.W_U").mul_(200.0)  # logits in the thousands
    loss = _native(task, module, batch)
    grads = torch.autograd.grad(loss.sum(), [p for p in module.parameters() if p.requires_grad])
    ref_loss, ref_grads = _reference(task, module, batch, torch.ones(2))
    assert torch.isfinite(loss).all() and all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-4, atol=1e-2)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a.double(), b, rtol=0, atol=1e-4 * b.abs().max().item())


def test_without_grad_mode_only_the_loss_is_computed():
    task, module, batch = _problem("topk-uniform", *SHAPES["ragged"])
    with_grad = _native(task, module, batch)
    with torch.no_grad():
        without = _native(task, module, batch)
    assert with_grad.requires_grad and not without.requires_grad
    assert torch.equal(with_grad.detach(), without)


def test_out_of_range_indices_raise():
    task, module, batch = _problem("topk-uniform", *SHAPES["ragged"])
    index, probs = task.sparse_kl_target(batch)
    bad = index.clone()
    bad[0, 0, 0] = 37  # V = 37
    with pytest.raises(IndexError, match="out of range"):
        native.mlp1_kl(module, batch.inputs["tokens"], batch.inputs["weights"], bad, probs)


def test_inputs_that_disagree_are_refused_before_the_kernel_runs():
    # The kernel trusts the shapes it is given: a mismatch must never reach it.
    task, module, batch = _problem("topk-uniform", *SHAPES["ragged"])
    index, probs = task.sparse_kl_target(batch)
    tokens, weights = batch.inputs["tokens"], batch.inputs["weights"]
    with pytest.raises(ValueError, match="shapes disagree"):
        native.mlp1_kl(module, tokens.repeat(3, 1, 1), weights.repeat(3, 1, 1), index.repeat(3, 1, 1),
                       probs.repeat(3, 1, 1))  # 6 instances of data for a 2-instance model
    with pytest.raises(ValueError, match="shapes disagree"):
        native.mlp1_kl(module, tokens, weights, index[:, :5], probs[:, :5])  # fewer target rows
    with pytest.raises(ValueError, match="detach"):
        native.mlp1_kl(module, tokens, weights.clone().requires_grad_(), index, probs)


def test_a_second_backward_is_refused():
    task, module, batch = _problem("topk-uniform", *SHAPES["tiny"])
    loss = _native(task, module, batch).sum()
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        loss.backward()


def test_weights_of_another_dtype_are_refused():
    task, module, batch = _problem("topk-uniform", *SHAPES["ragged"])
    with pytest.raises(TypeError, match="float32"):
        _native(task, copy.deepcopy(module).double(), batch)


def test_instances_split_over_threads_give_bitwise_the_same_numbers():
    task, module, batch = _problem("topk-uniform", *SHAPES["small"])
    params = [p for p in module.parameters() if p.requires_grad]
    results = []
    old = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            loss = _native(task, module, batch)
            results.append((loss.detach(), torch.autograd.grad(loss.sum(), params)))
    finally:
        torch.set_num_threads(old)
    for loss, grads in results[1:]:
        assert torch.equal(loss, results[0][0])
        assert all(torch.equal(a, b) for a, b in zip(grads, results[0][1]))


MODEL = {"d_model": 16, "d_mlp": 16}
CFG = TrainConfig(steps=40, batch_size=64, lr=1e-2, warmup=5)


def test_training_with_the_native_kernel_matches_torch():
    task = make_task("topk-uniform", {"V": 50, "k": 3})
    torch_run = train(task, "mlp1", MODEL, CFG, [0, 1], ctx("auto"))
    native_run = train(task, "mlp1", MODEL, CFG, [0, 1], ctx())
    assert (torch_run.backend, native_run.backend) == ("fused", "native")
    for a, b in zip(torch_run.models, native_run.models):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            torch.testing.assert_close(q, p, rtol=1e-3, atol=1e-4, msg=name)
    assert native_run.final_loss == pytest.approx(torch_run.final_loss, rel=1e-4)
    # and the weights moved: the comparison is not between two initialisations
    init = init_models(task, "mlp1", MODEL, [0])[0]
    assert not torch.allclose(init.W_U, native_run.models[0].W_U, atol=1e-2)


def test_bf16_training_reaches_the_same_loss():
    task = make_task("topk-conditional", {"V": 200, "k": 4})
    cfg = TrainConfig(steps=150, batch_size=128, lr=1e-2, warmup=10)
    model = {"d_model": 32, "d_mlp": 32}
    fp32 = train(task, "mlp1", model, cfg, [0, 1], ctx())
    bf16 = train(task, "mlp1", model, dataclasses.replace(cfg, precision="bf16"), [0, 1], ctx())
    assert bf16.backend == "native"
    held = task.held_out(512)
    start = task.loss(init_models(task, "mlp1", model, [0])[0](**held.inputs), held).mean().item()
    for a, c in zip(fp32.final_loss, bf16.final_loss):
        assert a < 0.9 * start  # training moved the loss: the comparison is not vacuous
        assert c == pytest.approx(a, rel=2e-2)


def test_seeds_split_over_worker_processes_equal_one_process():
    # Each instance is computed alone, its AdamW step included (see the threads test), so the
    # split does not change a bit (the torch path agrees to float tolerance only: torch's fused
    # AdamW rounds a few elements differently when the stacked tensors change size).
    task = make_task("topk-uniform", {"V": 50, "k": 3})
    seeds = [0, 1, 2]
    here = train(task, "mlp1", MODEL, CFG, seeds, ctx())
    split = train(task, "mlp1", MODEL, CFG, seeds, ctx(workers=2))
    assert (split.processes, split.backend) == (2, "native")
    for a, b in zip(here.models, split.models):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            assert torch.equal(q, p), name
    assert here.final_loss == split.final_loss


def test_models_the_kernel_does_not_cover_train_on_the_next_backend():
    task = make_task("topk-uniform", {"V": 50, "k": 3})
    two_blocks = train(task, "mlp1", {**MODEL, "n_layers": 2}, CFG, [0, 1], ctx())
    assert two_blocks.backend == "fused"


def test_the_native_backend_is_checked_before_any_work():
    with pytest.raises(UserError, match="CPU only"):
        RunContext(device=torch.device("cuda"), backend="native").accel  # noqa: B018
    RunContext.create("cpu", backend="native")  # runs here (the module is skipped otherwise)


def test_cli_records_the_backend_and_reports_a_missing_compiler(tmp_path):
    env = {**os.environ, "SPARSEBENCH_CACHE": str(tmp_path / "cache")}
    sets = ["task.V=40", "task.k=3", "model.d_model=8", "model.d_mlp=8", "train.steps=5", "train.warmup=1"]
    args = [sys.executable, "-m", "sparsebench", "train", "--no-progress", "--backend", "native",
            *[a for s in sets for a in ("--set", s)]]
    ok = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    (run_json,) = (tmp_path / "cache" / "models").glob("*/run.json")
    assert json.loads(run_json.read_text())["backend"] == "native"
    assert not (tmp_path / "cache" / "native").exists()  # the library is never kept in the cache
    # No compiler: one clear line, exit 2, no model written.
    env = {**env, "SPARSEBENCH_CACHE": str(tmp_path / "empty"), "CC": "no-such-compiler"}
    bad = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2
    assert bad.stderr.strip() == ("error: --backend native cannot run here: no C compiler ('no-such-compiler' not "
                                  "found; set CC)")
    assert not (tmp_path / "empty" / "models").exists()
