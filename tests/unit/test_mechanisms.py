"""The built-in mechanisms: constructions are exact, fits recover what was built, bad configs name their field."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from sparsebench import registry
from sparsebench.api import Fitted, HasTokenCode, PredictsHidden
from sparsebench.errors import ConfigError, UserError
from sparsebench.mechanisms.bloom import Bloom, BloomFit, bloom_theory, sample_hashes, union_size_pmf
from sparsebench.mechanisms.bottleneck import BottleneckOracle, SoftmaxBottleneck
from sparsebench.mechanisms.jl import JL
from sparsebench.models.mlp import MLP, MLPConfig
from sparsebench.stats import kl_logits, minimize_log_scalar, two_means
from sparsebench.tasks.topk import TopKConditional, TopKConditionalConfig, TopKUniform, TopKUniformConfig

V, K = 300, 4


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def task() -> TopKUniform:
    return TopKUniform(TopKUniformConfig(V=V, k=K))


@pytest.fixture(scope="module")
def ctask() -> TopKConditional:
    return TopKConditional(TopKConditionalConfig(V=V, k=K))


@pytest.fixture(scope="module")
def bloom_model(task):
    return Bloom(Bloom.Config(h=5)).construct(task, 32, generator=g(0))


# ----- stats ------------------------------------------------------------------------------------


def test_two_means_is_the_exact_optimum():
    x = torch.randn(40, generator=g(1)) ** 3
    tm = two_means(x)
    s = x.double().sort().values
    best = max(range(1, 40), key=lambda i: i * (40 - i) / 40 * (s[:i].mean() - s[i:].mean()).item() ** 2)
    assert tm.n_high == 40 - best
    assert (x.double() > tm.threshold).sum().item() == tm.n_high


def test_two_means_bimodal_vs_gaussian():
    big = torch.Generator().manual_seed(2)
    bimodal = torch.cat([torch.randn(9000, generator=big) * 0.02, 1 + torch.randn(1000, generator=big) * 0.02])
    tm = two_means(bimodal)
    assert tm.r2 > 0.99 and tm.minority_is_high and tm.n_high == 1000
    assert abs(tm.low_mean) < 0.01 and abs(tm.high_mean - 1) < 0.01
    gauss = two_means(torch.randn(200_000, generator=big))
    assert abs(gauss.r2 - 2 / math.pi) < 0.005  # one Gaussian: between/total = 2/pi
    flipped = two_means(-bimodal)
    assert not flipped.minority_is_high and flipped.minority_mask(-bimodal).sum().item() == 1000


def test_two_means_rejects_constant():
    with pytest.raises(ValueError):
        two_means(torch.ones(10))


def test_minimize_log_scalar_finds_minimum():
    x, fx = minimize_log_scalar(lambda a: (math.log(a) - math.log(7.3)) ** 2, 1e-2, 1e3)
    assert abs(x / 7.3 - 1) < 5e-4 and fx < 1e-6  # 20 golden-section steps after the coarse grid


# ----- registry and configs ---------------------------------------------------------------------


def test_entry_points_register_the_builtins():
    assert registry.mechanisms.get("bloom") is Bloom
    assert registry.mechanisms.get("jl") is JL
    assert registry.mechanisms.get("softmax-bottleneck") is SoftmaxBottleneck


@pytest.mark.parametrize("cls,data,field", [
    (Bloom, {"alpha": 0.0}, "alpha"),
    (Bloom, {"alpha": -1.0}, "alpha"),
    (Bloom, {"h": -1}, "h"),
    (Bloom, {"hh": 3}, "hh"),
    (JL, {"alpha": -0.5}, "alpha"),
    (SoftmaxBottleneck, {"s": -1.0}, "s"),
])
def test_bad_config_names_field(cls, data, field):
    with pytest.raises(ConfigError) as e:
        cls.make_config(data, "mechanism")
    assert e.value.field == field and f"{field}:" in str(e.value)


def test_bloom_validate_errors(task):
    with pytest.raises(ConfigError) as e:
        Bloom(Bloom.Config(h=80)).validate(task, 64)
    assert e.value.field == "h" and str(e.value) == "invalid mechanism config: h: must be <= m=64 (got 80)"
    with pytest.raises(ConfigError) as e:  # C(16, 2) = 120 < 300 distinct hashes
        Bloom(Bloom.Config(h=2)).validate(task, 16)
    assert e.value.field == "h" and "C(m=16, h=2) = 120" in str(e.value)
    with pytest.raises(ConfigError) as e:  # automatic h: no h at width 8 has 300 subsets (C(8,4) = 70)
        Bloom(Bloom.Config()).validate(task, 8)
    assert e.value.field == "width"
    Bloom(Bloom.Config()).validate(task, 16)  # the optimum h=2 is raised to a feasible h


def test_bottleneck_validate(task):
    with pytest.raises(ConfigError) as e:
        SoftmaxBottleneck(SoftmaxBottleneck.Config()).validate(task, K - 1)
    assert e.value.field == "width"
    with pytest.warns(UserWarning, match="sign-rank"):
        SoftmaxBottleneck(SoftmaxBottleneck.Config()).validate(task, 2 * K - 1)


# ----- Bloom ------------------------------------------------------------------------------------


@pytest.mark.parametrize("m,h", [(12, 4), (32, 5)])  # enumeration path (C=495 <= 4V) and rejection path
def test_sample_hashes_distinct(m, h):
    code = sample_hashes(V, m, h, g(3))
    assert code.shape == (V, m) and (code.sum(1) == h).all()
    assert torch.unique(code.to(torch.uint8), dim=0).shape[0] == V


def test_bloom_construction_weights_and_shapes(task, bloom_model):
    m = bloom_model
    assert isinstance(m, MLP) and m.config.d_model == m.config.d_mlp == 32
    code = m.W_E > 0
    assert torch.equal(m.W_E, code.float() / task.config.w_lo)
    assert torch.equal(m.W_in[0], torch.eye(32)) and torch.equal(m.W_out[0], -torch.eye(32))
    assert (m.b_in == -1).all() and (m.b_out == 0).all()
    assert torch.equal(m.W_U, 20.0 * code.float().T) and torch.equal(m.b_U, -20.0 * 5 * torch.ones(V))
    b = task.sample(64, generator=g(4))
    assert m(**b.inputs).shape == (64, V)


def test_bloom_construction_no_false_negatives(task, bloom_model):
    b = task.sample(512, generator=g(5))
    with torch.no_grad():
        z = bloom_model(**b.inputs)
    code = bloom_model.W_E > 0
    U = code[b.inputs["tokens"]].any(1)
    z_expected = 20.0 * ((U.float() @ code.float().T) - 5)
    assert torch.allclose(z, z_expected, atol=1e-4)
    assert z.gather(1, b.inputs["tokens"]).abs().max() < 1e-4  # every member of S gets logit 0
    assert z.max() < 1e-4  # and nothing is above the members
    met = task.metrics(z, b)
    assert met["topk_mass"] > 0.0 and abs(met["kl"] - (z > -1).sum(1).float().div(K).log().mean().item()) < 1e-4


def test_bloom_fit_recovers_construction(task, bloom_model):
    fit = Bloom(Bloom.Config()).fit(bloom_model, task, generator=g(6))
    assert isinstance(fit, BloomFit) and isinstance(fit, Fitted)
    code = bloom_model.W_E > 0
    assert torch.equal(fit.token_code(), code) and torch.equal(fit.output_code(), code)
    s = fit.summary()
    assert s["sign"] == 1 and s["r2"] == pytest.approx(1.0) and s["h_mean"] == 5 and s["h_std"] == 0
    assert s["n_distinct_hashes"] == V and s["alpha_fit"] == pytest.approx(20.0, rel=1e-3)
    b = task.sample(256, generator=g(7))
    _, cache = bloom_model.run_with_cache(**b.inputs)
    post = cache["blocks.0.mlp.hook_post"]
    assert torch.equal(fit.hidden_active(b), post > 0)  # the construction fires iff the bit is in U
    with torch.no_grad():
        z = bloom_model(**b.inputs)
    assert torch.equal(fit.predict_candidates(b), z > -1)
    assert kl_logits(z, fit.predict_logits(b)).max() < 1e-6
    name, ideal = fit.ideal_activation(b)
    # Gate patching: post = gate * pre with gate = U. The construction's hook_post is the overflow
    # ReLU(x - 1), which is exactly that (x >= 1 on U, pre = -1 off U).
    assert name == "blocks.0.mlp.hook_post"
    assert torch.allclose(ideal, post, atol=1e-5)


def complemented(model: MLP) -> MLP:
    """The same Bloom filter with complemented bits, as trained models learn it (docs/science.md §4).

    d_model = 2m: E' = [-E, 0]; W_in = [I; 0], b_in = +1, so post_j = ReLU(1 - x_j) = 1[j not in U];
    W_out writes post into the second half; W_U reads -alpha * 1_H there: z_t = -alpha |H(t) minus U|.
    """
    m = model.config.d_mlp
    code = (model.W_E > 0).float()
    alpha = model.W_U.max().item()
    out = MLP(MLPConfig(d_model=2 * m, d_mlp=m), n_inputs=code.shape[0], n_outputs=code.shape[0],
              generator=g(0))
    eye, zero = torch.eye(m), torch.zeros(m, m)
    with torch.no_grad():
        out.embed.W_E.copy_(torch.cat([-model.W_E, torch.zeros_like(model.W_E)], 1))
        out.blocks[0].mlp.W_in.copy_(torch.cat([eye, zero], 0))
        out.blocks[0].mlp.b_in.fill_(1.0)
        out.blocks[0].mlp.W_out.copy_(torch.cat([zero, eye], 1))
        out.blocks[0].mlp.b_out.zero_()
        out.unembed.W_U.copy_(torch.cat([torch.zeros_like(code.T), -alpha * code.T], 0))
        out.unembed.b_U.zero_()
    return out


def test_bloom_fit_complemented_code(task, bloom_model):
    comp = complemented(bloom_model)
    b = task.sample(256, generator=g(8))
    with torch.no_grad():
        assert torch.allclose(comp(**b.inputs), bloom_model(**b.inputs), atol=1e-4)  # same function
    fit = Bloom(Bloom.Config()).fit(comp, task, generator=g(9))
    code = bloom_model.W_E > 0
    assert torch.equal(fit.token_code(), code) and torch.equal(fit.output_code(), code)
    assert fit.summary()["sign"] == -1
    _, cache = comp.run_with_cache(**b.inputs)
    post = cache["blocks.0.mlp.hook_post"]
    assert torch.equal(fit.hidden_active(b), post > 0)  # sign -1: a unit fires iff its bit is NOT in U
    assert torch.equal(fit.hidden_active(b), ~fit.union(b))
    name, ideal = fit.ideal_activation(b)
    assert name == "blocks.0.mlp.hook_post" and torch.allclose(ideal, post, atol=1e-5)  # gate = not U: exact


def test_bloom_fit_on_random_model_is_not_bimodal(task):
    rnd = MLP(MLPConfig(d_model=32, d_mlp=32), task, generator=g(10))
    s = Bloom(Bloom.Config()).fit(rnd, task, generator=g(11)).summary()
    assert s["r2"] < 0.8  # a random Gaussian map: about 2/pi, far from the construction's 1


def test_bloom_fit_on_jl_construction_is_degenerate_not_an_error(task):
    jl = JL(JL.Config(alpha=3.0)).construct(task, 16, generator=g(30))  # the MLP is zero: W_E @ W_in = 0
    fit = Bloom(Bloom.Config()).fit(jl, task, generator=g(31))
    s = fit.summary()
    assert s["r2"] == 0.0 and s["r2_out"] == 0.0 and s["h_mean"] == 0 and s["n_empty_hashes"] == V
    assert fit.predict_candidates(task.sample(8, generator=g(32))).all()  # empty hashes: everything passes


def test_union_size_pmf_matches_enumeration():
    m, h, k = 6, 2, 3
    subsets = [frozenset(c) for c in itertools.combinations(range(m), h)]
    counts = [0.0] * (m + 1)
    perms = list(itertools.permutations(subsets, k))  # distinct, ordered draws
    for p in perms:
        counts[len(frozenset().union(*p))] += 1 / len(perms)
    assert torch.allclose(union_size_pmf(m, h, k, distinct=True), torch.tensor(counts, dtype=torch.float64))
    counts = [0.0] * (m + 1)
    prods = list(itertools.product(subsets, repeat=k))
    for p in prods:
        counts[len(frozenset().union(*p))] += 1 / len(prods)
    assert torch.allclose(union_size_pmf(m, h, k, distinct=False), torch.tensor(counts, dtype=torch.float64))


def test_bloom_theory_method(task):
    th = Bloom(Bloom.Config()).theory(task, 32)
    assert th["h"] == 5 and 0 < th["fp_rate"] < th["fp_rate_formula"] and th["kl_limit"] > 0


def test_bloom_theory_matches_enumeration():
    """V = C(m, h): every subset is a hash, so averaging over all k-sets S is the exact expectation."""
    m, h, k = 6, 2, 2
    subsets = [frozenset(c) for c in itertools.combinations(range(m), h)]
    Vt = len(subsets)
    fp = kl = 0.0
    pairs = list(itertools.combinations(subsets, k))
    for S in pairs:
        U = frozenset().union(*S)
        C = sum(1 for t in subsets if t <= U)
        fp += (C - k) / (Vt - k) / len(pairs)
        kl += math.log(C / k) / len(pairs)
    th = bloom_theory(Vt, k, m, h)
    assert th["fp_rate"] == pytest.approx(fp, rel=1e-9) and th["kl_limit"] == pytest.approx(kl, rel=1e-9)


# ----- JL ---------------------------------------------------------------------------------------


def test_jl_construction_and_fit(task):
    model = JL(JL.Config(tune_samples=512)).construct(task, 24, generator=g(12))
    assert isinstance(model, MLP) and model.config.d_model == 24
    assert torch.allclose(model.W_E.norm(dim=1), torch.ones(V))
    assert (model.W_in == 0).all() and (model.W_out == 0).all() and (model.b_U == 0).all()
    assert torch.allclose(model.W_U, model.construction_info["alpha"] * model.W_E.T)
    assert 1.0 < model.construction_info["alpha"] < 100.0
    b = task.sample(128, generator=g(13))
    with torch.no_grad():
        z = model(**b.inputs)
    x = torch.einsum("bs,bsd->bd", b.inputs["weights"], model.W_E[b.inputs["tokens"]])
    assert torch.allclose(z, model.construction_info["alpha"] * x @ model.W_E.T, atol=1e-4)
    fit = JL(JL.Config(tune_samples=512)).fit(model, task, generator=g(14))
    assert fit.summary()["r2"] > 0.999999
    assert not isinstance(fit, (PredictsHidden, HasTokenCode)) and "MLP is off" in fit.why_not
    assert torch.allclose(fit.predict_logits(b), z, atol=1e-3)
    name, r = fit.ideal_activation(b)
    assert name == "blocks.0.hook_resid_post" and torch.allclose(r, x, atol=1e-4)


def test_jl_tuned_alpha_is_optimal(task):
    mech = JL(JL.Config(tune_samples=1024))
    model = mech.construct(task, 24, generator=g(15))
    b = task.sample(1024, generator=g(16))
    with torch.no_grad():
        z = model(**b.inputs)
    base = task.loss(z, b).mean().item()
    for f in (0.8, 1.25):  # the tuned scale beats nearby scales on fresh samples
        assert task.loss(f * z, b).mean().item() > base


def test_jl_fit_on_nonlinear_model_has_r2_below_one(task):
    rnd = MLP(MLPConfig(d_model=16, d_mlp=64, init_scale=3.0), task, generator=g(17))
    with torch.no_grad():
        rnd.blocks[0].mlp.b_in.normal_(0, 1, generator=g(18))
    r2 = JL(JL.Config(tune_samples=1024)).fit(rnd, task, generator=g(19)).summary()["r2"]
    assert r2 < 0.99


# ----- softmax bottleneck -----------------------------------------------------------------------


def test_bottleneck_uniform_equal_logits(task):
    oracle = SoftmaxBottleneck(SoftmaxBottleneck.Config(s=3.0)).construct(task, 16, generator=g(20))
    assert isinstance(oracle, BottleneckOracle)
    b = task.sample(256, generator=g(21))
    logits, cache = oracle.run_with_cache(**b.inputs)
    assert logits.shape == (256, V) and cache["blocks.0.hook_resid_post"].shape == (256, 16)
    zS = logits.gather(1, b.inputs["tokens"]).double()
    assert (zS - 3.0).abs().max() < 1e-4  # exactly s on every member
    # minimum norm: r* lies in the row space of U_S
    r = cache["blocks.0.hook_resid_post"].double()
    U_S = oracle.W_U.T.double()[b.inputs["tokens"]]  # [b, k, d]
    proj = (torch.linalg.pinv(U_S) @ (U_S @ r.unsqueeze(-1))).squeeze(-1)
    assert torch.allclose(proj, r, atol=1e-5)


def test_bottleneck_conditional_exact_ratios(ctask):
    oracle = SoftmaxBottleneck(SoftmaxBottleneck.Config(s=2.0)).construct(ctask, 16, generator=g(22))
    b = ctask.sample(256, generator=g(23))
    with torch.no_grad():
        zS = oracle(**b.inputs).gather(1, b.inputs["tokens"]).double()
    logp = b.target.double().log()
    diff = (zS - zS[:, :1]) - (logp - logp[:, :1])
    assert diff.abs().max() < 1e-4  # within-set ratios p_i / p_j exactly
    assert (zS.min(1).values - 2.0).abs().max() < 1e-4  # the least likely member sits at s


def test_bottleneck_tuned_and_fit(task):
    mech = SoftmaxBottleneck(SoftmaxBottleneck.Config(tune_samples=512))
    oracle = mech.construct(task, 24, generator=g(24))
    assert 0.5 < oracle.s < 100
    fit = mech.fit(oracle, task, generator=g(25))
    s = fit.summary()
    assert s["s"] == pytest.approx(oracle.s, rel=1e-3) and s["cos_resid"] > 0.999999 and s["kl_fit"] < 1e-6
    assert not isinstance(fit, PredictsHidden)


def test_bottleneck_fit_uses_the_bias(task):
    model = MLP(MLPConfig(d_model=16, d_mlp=16), task, generator=g(26))
    with torch.no_grad():
        model.unembed.b_U.normal_(0, 2, generator=g(27))
    fit = SoftmaxBottleneck(SoftmaxBottleneck.Config(s=1.5)).fit(model, task, generator=g(28))
    b = task.sample(128, generator=g(29))
    zS = fit.predict_logits(b).gather(1, b.inputs["tokens"]).double()
    assert (zS - 1.5).abs().max() < 1e-4
    name, r = fit.ideal_activation(b)
    patched = model.run_with_hooks(**b.inputs, fwd_hooks=[(name, lambda a, hook: r)])
    assert torch.allclose(patched, fit.predict_logits(b), atol=1e-4)
    assert fit.summary()["cos_resid"] < 0.9  # a random model's residual does not point at r*


def test_bloom_needs_a_hidden_layer(task):
    flat = MLP(MLPConfig(d_model=16, n_layers=0), task, generator=g(0))
    with pytest.raises(UserError, match="n_layers"):
        Bloom(Bloom.Config()).fit(flat, task, generator=g(0))
