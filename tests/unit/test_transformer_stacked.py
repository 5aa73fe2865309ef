"""Transformer seeds trained together: `StackedTransformer` equals the TransformerLens bridge per instance.

Forward, loss and every gradient against N separate `Transformer`s for each option of the model
(norms, positions, activations, masks, layers); unstacking loads back with strict=True; the plain
trainer and the fused step train stacked seeds as N separate bridges would; and the token-to-hidden
map the Bloom fit reads is the MLP's input map.
"""

from __future__ import annotations

import pytest
import torch

from sparsebench.api import Batch, token_to_hidden
from sparsebench.build import make_model, make_task
from sparsebench.context import RunContext
from sparsebench.models.transformer import Transformer
from sparsebench.models.transformer_stacked import StackedTransformer
from sparsebench.training import TrainConfig, init_models, lr_factor, make_optimizer, seed_generator, train

V, K, BATCH, N = 40, 4, 32, 3
SMALL = {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 12}
OPTIONS = [{}, {"n_layers": 2}, {"normalization": "LN", "positional": "learned", "n_layers": 2},
           {"normalization": "RMSPre", "positional": "rotary", "attention": "bidirectional", "n_layers": 2},
           {"normalization": "RMS", "act_fn": "gelu_new"}, {"normalization": "LNPre", "act_fn": "silu",
                                                            "positional": "rotary"},
           {"act_fn": "gelu", "bias_unembed": False, "attention": "bidirectional"}]


@pytest.fixture(scope="module")
def task():
    return make_task("topk-uniform", {"V": V, "k": K})


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _models(task, config, n=N):
    """N models of `config`, moved off their init so no weight is special (zeros, ones)."""
    models = [make_model("transformer", config, task, generator=torch.Generator().manual_seed(s)) for s in range(n)]
    with torch.no_grad():
        for i, m in enumerate(models):
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(100 * i + p.numel())))
    return models


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_stacked_forward_loss_and_gradients_equal_the_bridge(task, options):
    models = _models(task, {**SMALL, **options})
    stacked = Transformer.stacked(models)
    assert isinstance(stacked, StackedTransformer) and stacked.n_instances == N
    batches = [task.sample(BATCH, generator=torch.Generator().manual_seed(10 + i)) for i in range(N)]
    both = Batch.stack(batches)
    logits = stacked(**both.inputs)  # [inst, batch, V]
    reference = torch.stack([m(**b.inputs) for m, b in zip(models, batches)])
    assert logits.shape == (N, BATCH, V)
    assert _rel(logits, reference) < 2e-6
    task.loss(logits, both).mean(-1).sum().backward()
    for m, b in zip(models, batches):
        task.loss(m(**b.inputs), b).mean().backward()
    largest = max(float(p.grad.abs().max()) for p in stacked.parameters() if p.grad is not None)
    for key in stacked.keys:
        theirs = [m.state_dict(keep_vars=True)[key] for m in models]
        mine = stacked.p(key)
        assert mine.requires_grad == theirs[0].requires_grad, key
        if not mine.requires_grad:
            assert mine.grad is None, key
            continue
        ref = torch.stack([t.grad for t in theirs])
        if key.endswith("attn.k.bias"):  # analytically zero (softmax ignores q . b_K): float noise on both sides
            assert float((mine.grad - ref).abs().max()) < 1e-6 * largest, key
        else:
            assert _rel(mine.grad, ref) < 5e-6, key


def test_unstack_round_trips_and_keeps_frozen_weights_frozen(task):
    models = _models(task, SMALL)
    parts = Transformer.stacked(models).unstack(models[0])
    batch = task.sample(8, generator=torch.Generator().manual_seed(1))
    for m, u in zip(models, parts):
        assert u is not m and u.state_dict().keys() == m.state_dict().keys()
        assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), u.state_dict().values()))
        assert torch.equal(u(**batch.inputs), m(**batch.inputs))
        assert not u.state_dict(keep_vars=True)["pos_embed.weight"].requires_grad
        _, cache = u.run_with_cache(**batch.inputs, names_filter=["blocks.0.mlp.hook_post"])
        assert cache["blocks.0.mlp.hook_post"].shape == (8, K, SMALL["d_mlp"])  # a whole bridge, hooks and all


def _bridge_loop(task, config, cfg, seed):
    """One seed trained the plain TransformerLens way: the bridge, task.loss, autograd, AdamW (the trainer's
    settings and schedule), on the seed's own data stream."""
    (model,) = init_models(task, "transformer", config, [seed])
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    gen = seed_generator(seed, "data")
    for i in range(cfg.steps):
        batch = task.sample(cfg.batch_size, generator=gen)
        loss = task.loss(model(**batch.inputs), batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = cfg.lr * lr_factor(i, cfg)
        opt.step()
    return model


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_seeds_trained_together_equal_bridges_trained_alone(task, backend):
    """The recipe's model and schedule, briefly: the trainer's batched seeds (plain step, and the fused step
    the CPU's door hands out) against each seed trained alone on the bridge."""
    config = {"d_model": 16, "d_mlp": 16, "n_heads": 1, "d_head": 16, "init_scale": 0.5}
    cfg = TrainConfig(steps=12, batch_size=64, lr=1e-2, warmup=5, min_lr_frac=0.1)
    res = train(task, "transformer", config, cfg, [0, 1], RunContext.create("cpu", progress=False, backend=backend))
    assert res.backend == ("fused" if backend == "auto" else "torch")
    held = task.held_out(256)
    for seed, model in zip([0, 1], res.models):
        alone = _bridge_loop(task, config, cfg, seed)
        assert isinstance(model, Transformer) and not model.training
        for key, value in alone.state_dict().items():
            if key.endswith("attn.k.bias"):  # Adam turns its float-noise gradient into lr-sized steps either way
                continue
            torch.testing.assert_close(model.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)
        with torch.no_grad():
            torch.testing.assert_close(model(**held.inputs), alone(**held.inputs), rtol=1e-4, atol=1e-4)


def test_token_to_hidden_is_the_mlp_input_map(task):
    """A one-token input attends to itself with weight 1, so the MLP's input is w S[t] + a constant, where
    S = W_E (I + W_OV) W_in: the map the Bloom fit reads (and W_E @ W_in[0] for mlp1)."""
    (model,) = _models(task, {**SMALL, "n_heads": 3, "d_head": 5}, n=1)
    W_OV = sum(model.bridge.W_V[0, h] @ model.bridge.W_O[0, h] for h in range(3))
    S = model.W_E @ (torch.eye(SMALL["d_model"]) + W_OV) @ model.W_in[0]
    torch.testing.assert_close(token_to_hidden(model, 0), S)
    tokens = torch.arange(V).view(V, 1)
    with torch.no_grad():
        pre = {}
        for w in (1.0, 2.0):
            _, cache = model.run_with_cache(tokens, torch.full((V, 1), w), names_filter=["blocks.0.mlp.hook_pre"])
            pre[w] = cache["blocks.0.mlp.hook_pre"][:, 0]  # [V, d_mlp]
    torch.testing.assert_close(pre[2.0] - pre[1.0], S, rtol=1e-4, atol=1e-5)
    mlp = make_model("mlp1", {"d_model": 8, "d_mlp": 8, "n_layers": 2}, task, generator=torch.Generator().manual_seed(0))
    for layer in (0, 1):
        torch.testing.assert_close(token_to_hidden(mlp, layer), mlp.W_E @ mlp.W_in[layer])


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "defaults")
def test_fused_steps_one_query_attention_equals_the_models(task, options):
    """The CPU's fused step computes the last block's attention without keys or values (accel/transformer.py):
    the same residual stream and gradients as the stacked model's own (which equals the bridge's, above)."""
    from sparsebench.accel import transformer as fast

    stacked = Transformer.stacked(_models(task, {**SMALL, **options}))
    batch = Batch.stack([task.sample(BATCH, generator=torch.Generator().manual_seed(20 + i)) for i in range(N)])
    # the residual stream stops before the unembedding, so its weights get no gradient here
    names = [k for k in stacked.keys if stacked.p(k).requires_grad and not k.startswith("unembed.")]
    params = [stacked.p(k) for k in names]
    grads = []
    for residual in (stacked.residual, lambda **b: fast.residual(stacked, **b)):
        r = residual(**batch.inputs)
        grads.append((r.detach(), torch.autograd.grad((r * r.detach().sin()).sum(), params)))
    (r_model, g_model), (r_fast, g_fast) = grads
    assert _rel(r_fast, r_model) < 2e-6
    largest = max(float(g.abs().max()) for g in g_model)
    for name, a, b in zip(names, g_fast, g_model):
        if name.endswith("attn.k.bias"):  # analytically zero: float noise on both sides
            assert float((a - b).abs().max()) < 1e-6 * largest, name
        else:
            assert _rel(a, b) < 5e-6, name
