"""The `transformer` model: shapes, TransformerLens hooks, weight scaling, init, checkpoints, training."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from sparsebench.api import SparseModel
from sparsebench.build import make_model, make_task
from sparsebench.errors import ConfigError
from sparsebench.models.transformer import Transformer, TransformerConfig

V, K, BATCH = 40, 4, 6
SMALL = {"d_model": 16, "n_heads": 2, "d_head": 8, "d_mlp": 16}
HOOKS = ["hook_embed", "blocks.0.hook_resid_pre", "blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post",
         "blocks.0.hook_mlp_out", "blocks.0.hook_resid_post"]


@pytest.fixture(scope="module")
def task():
    return make_task("topk-uniform", {"V": V, "k": K})


@pytest.fixture(scope="module")
def model(task):
    return make_model("transformer", SMALL, task, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def batch(task):
    return task.sample(BATCH, generator=torch.Generator().manual_seed(1))


def test_forward_shape_and_protocol(model, batch):
    logits = model(**batch.inputs)
    assert logits.shape == (BATCH, V) and torch.isfinite(logits).all()
    assert isinstance(model, SparseModel) and model.name == "transformer" and model.n_layers == 1
    d, m = SMALL["d_model"], SMALL["d_mlp"]
    shapes = {"W_E": (V, d), "W_in": (1, d, m), "b_in": (1, m), "W_out": (1, m, d), "b_out": (1, d),
              "W_U": (d, V), "b_U": (V,)}
    for name, shape in shapes.items():
        assert tuple(getattr(model, name).shape) == shape, name


def test_run_with_cache_has_tl_hooks(model, batch):
    logits, cache = model.run_with_cache(tokens=batch.inputs["tokens"], weights=batch.inputs["weights"],
                                         names_filter=lambda n: n in HOOKS)
    torch.testing.assert_close(logits, model(**batch.inputs))
    width = {"mlp.hook_pre": SMALL["d_mlp"], "mlp.hook_post": SMALL["d_mlp"]}
    for name in HOOKS:
        d = next((v for k, v in width.items() if name.endswith(k)), SMALL["d_model"])
        assert tuple(cache[name].shape) == (BATCH, K, d), name
    # hook_embed holds the raw embedding (as in mlp1); the weights show from resid_pre on.
    emb = model.W_E[batch.inputs["tokens"]]
    torch.testing.assert_close(cache["hook_embed"], emb)
    torch.testing.assert_close(cache["blocks.0.hook_resid_pre"], emb * batch.inputs["weights"].unsqueeze(-1))


def test_run_with_hooks_patches(model, batch):
    clean = model(**batch.inputs)
    same = model.run_with_hooks(**batch.inputs, fwd_hooks=[("blocks.0.mlp.hook_post", lambda a, hook: a)])
    assert torch.equal(same, clean)
    zeroed = model.run_with_hooks(**batch.inputs, fwd_hooks=[("blocks.0.mlp.hook_post", lambda a, hook: a * 0)])
    assert zeroed.shape == clean.shape and not torch.allclose(zeroed, clean)
    assert torch.equal(model(**batch.inputs), clean), "hooks must not outlive the call"


def test_weights_scale_embeddings(model, batch):
    tokens, weights = batch.inputs["tokens"], batch.inputs["weights"]
    clean = model(tokens, weights)
    assert not torch.allclose(model(tokens, weights * 1.5), clean)
    w0 = weights.clone()
    w0[:, 1] = 0

    def drop(act, hook):  # remove token 1's contribution at hook_embed; the weights still apply after it
        act = act.clone()
        act[:, 1] = 0
        return act

    torch.testing.assert_close(model(tokens, w0), model.run_with_hooks(tokens, weights, fwd_hooks=[("hook_embed", drop)]))
    # A user hook on hook_embed sees the raw embedding: replacing it by W_E[t] changes nothing.
    ident = model.run_with_hooks(tokens, weights, fwd_hooks=[("hook_embed", lambda a, hook: model.W_E[tokens])])
    torch.testing.assert_close(ident, clean)


def test_deterministic_init_from_generator(task):
    def build(seed):
        return Transformer(TransformerConfig(**SMALL), task, generator=torch.Generator().manual_seed(seed))

    state = torch.get_rng_state()
    a, b, c = build(7).state_dict(), build(7).state_dict(), build(8).state_dict()
    assert torch.equal(torch.get_rng_state(), state), "init must not use the global RNG"
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["embed.weight"], c["embed.weight"])
    assert not torch.equal(a["blocks.0.mlp.in.weight"], c["blocks.0.mlp.in.weight"])
    assert (a["pos_embed.weight"] == 0).all(), "positional='none' keeps the table at zero"


def test_safetensors_round_trip(task, batch, tmp_path):
    src = make_model("transformer", SMALL, task, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for p in src.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    path = str(tmp_path / "model.safetensors")
    safetensors.torch.save_model(src, path)
    dst = make_model("transformer", SMALL, task, generator=torch.Generator().manual_seed(4))
    safetensors.torch.load_model(dst, path, device="cpu")
    for (name, p), q in zip(src.named_parameters(), dst.parameters()):
        assert torch.equal(p, q) and p.requires_grad == q.requires_grad, name
    assert torch.equal(src(**batch.inputs), dst(**batch.inputs))
    other = make_model("transformer", {**SMALL, "normalization": "LN"}, task)
    with pytest.raises(RuntimeError):
        safetensors.torch.load_model(other, path, device="cpu")


@pytest.mark.parametrize("field, value", [("d_model", 0), ("n_heads", 0), ("d_mlp", -1), ("n_layers", 0),
                                          ("init_scale", 0.0), ("normalization", "batch"), ("positional", "sin")])
def test_invalid_config_names_field(field, value):
    with pytest.raises(ConfigError) as err:
        Transformer.make_config({field: value}, "model")
    assert err.value.field == field


def test_n_ctx_must_cover_task(task):
    with pytest.raises(ConfigError) as err:
        make_model("transformer", {**SMALL, "n_ctx": K - 1}, task)
    assert err.value.field == "n_ctx"


def test_options_build_and_run(task, batch):
    for extra in ({"normalization": "LN", "positional": "learned", "n_layers": 2},
                  {"normalization": "RMSPre", "positional": "rotary", "attention": "bidirectional"}):
        m = make_model("transformer", {**SMALL, **extra}, task, generator=torch.Generator().manual_seed(0))
        assert m(**batch.inputs).shape == (BATCH, V)
        assert m.W_in.shape[0] == m.n_layers == extra.get("n_layers", 1)


def test_a_few_training_steps_reduce_loss(task):
    model = make_model("transformer", SMALL, task, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    g = torch.Generator().manual_seed(5)
    held = task.held_out(256)
    with torch.no_grad():
        before = task.loss(model(**held.inputs), held).mean().item()
    model.train()
    for _ in range(25):
        b = task.sample(64, generator=g)
        loss = task.loss(model(**b.inputs), b).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = task.loss(model(**held.inputs), held).mean().item()
    assert after < before - 0.1, (before, after)
    assert (model.W_pos == 0).all(), "the frozen positional table must stay zero"


@pytest.mark.parametrize("name", ["mlp1", "transformer"])
def test_transformer_lens_cache_tools_work_on_every_model(name):
    """run_with_cache gives an ActivationCache and every model has a TL cfg, so TL's own tools work alike."""
    from transformer_lens import ActivationCache

    task = make_task("topk-uniform", {"V": 30, "k": 3})
    cfg = {"d_model": 8, "d_mlp": 8, "n_layers": 2}
    model = make_model(name, cfg if name == "mlp1" else {**cfg, "n_heads": 2, "d_head": 4}, task,
                       generator=torch.Generator().manual_seed(0))
    batch = task.sample(5, generator=torch.Generator().manual_seed(1))
    _, cache = model.run_with_cache(**batch.inputs)
    assert isinstance(cache, ActivationCache) and model.cfg.n_layers == 2
    assert torch.equal(cache["post", 1], cache["blocks.1.mlp.hook_post"])
    assert torch.equal(cache["resid_post", -1], cache["blocks.1.hook_resid_post"])
    stack = cache.accumulated_resid()  # [layers + 1, batch, (pos,) d_model]
    assert stack.shape[0] == 3 and stack.shape[-1] == 8
    assert torch.allclose(stack[-1], cache["blocks.1.hook_resid_post"])
