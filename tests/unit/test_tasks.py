"""The top-k tasks: sampling, targets, loss and metrics (docs/science.md §1)."""

from __future__ import annotations

import math

import pytest
import torch

from sparsebench.build import make_task
from sparsebench.errors import ConfigError, UserError
from sparsebench.tasks.topk import floyd_sample


def test_floyd_sample_gives_distinct_uniform_tokens(gen):
    V, k, n = 20, 5, 40_000
    tokens = floyd_sample(torch.rand(n, k, generator=gen, dtype=torch.float64), V)
    assert tokens.min() >= 0 and tokens.max() < V
    assert (tokens.sort(-1).values.diff(dim=-1) > 0).all(), "tokens within a sample must be distinct"
    counts = torch.bincount(tokens.flatten(), minlength=V).double()
    expected = n * k / V
    chi2 = ((counts - expected) ** 2 / expected).sum().item()
    assert chi2 < 60, f"token frequencies not uniform (chi2={chi2:.1f}, 19 dof)"


def test_every_pair_equally_likely(gen):
    # Uniform subsets, not just uniform marginals: all C(6,2)=15 pairs of a k=2 draw from V=6.
    tokens = floyd_sample(torch.rand(60_000, 2, generator=gen, dtype=torch.float64), 6).sort(-1).values
    pair_ids = tokens[:, 0] * 6 + tokens[:, 1]
    counts = torch.bincount(pair_ids, minlength=36).double()
    counts = counts[counts > 0]
    assert len(counts) == 15
    chi2 = ((counts - 4000) ** 2 / 4000).sum().item()
    assert chi2 < 45, chi2


def test_sample_shapes_order_and_weights(gen):
    task = make_task("topk-uniform", {"V": 50, "k": 4, "w_lo": 1.0, "w_hi": 2.0})
    b = task.sample(3000, generator=gen)
    assert b.inputs["tokens"].shape == (3000, 4) and b.inputs["tokens"].dtype == torch.long
    w = b.inputs["weights"]
    assert w.min() >= 1.0 and w.max() <= 2.0 and abs(w.mean().item() - 1.5) < 0.02
    assert torch.allclose(b.target, torch.full_like(b.target, 0.25))
    # Random order: the largest token is not always last (Floyd's raw order is biased).
    last_is_max = (b.inputs["tokens"].argmax(-1) == 3).float().mean().item()
    assert abs(last_is_max - 0.25) < 0.05


def test_same_generator_same_samples():
    task = make_task("topk-uniform", {"V": 100, "k": 5})
    a = task.sample(64, generator=torch.Generator().manual_seed(7))
    b = task.sample(64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a.inputs["tokens"], b.inputs["tokens"]) and torch.equal(a.inputs["weights"], b.inputs["weights"])


@pytest.mark.parametrize("target,check", [
    ("proportional", lambda w, p: torch.allclose(p, w / w.sum(-1, keepdim=True))),
    ("softmax", lambda w, p: torch.allclose(p, torch.softmax(2.0 * w, -1))),
])
def test_conditional_targets(gen, target, check):
    task = make_task("topk-conditional", {"V": 100, "k": 5, "target": target, "beta": 2.0})
    b = task.sample(100, generator=gen)
    assert check(b.inputs["weights"], b.target)
    assert torch.allclose(b.target.sum(-1), torch.ones(100))


def square_target(weights, cfg):
    """A plugin-style target function used by the test below."""
    p = weights**2
    return p / p.sum(-1, keepdim=True)


def test_conditional_target_from_a_plugin_function(gen):
    task = make_task("topk-conditional", {"V": 100, "k": 3, "target": f"{__name__}:square_target"})
    b = task.sample(10, generator=gen)
    w2 = b.inputs["weights"] ** 2
    assert torch.allclose(b.target, w2 / w2.sum(-1, keepdim=True))


def test_bad_target_function_is_a_user_error():
    with pytest.raises(UserError, match="target"):
        make_task("topk-conditional", {"target": "no_such_module:f"})


def _perfect_logits(task, batch, scale=50.0):
    """Logits that put exactly the target on S (up to e^-scale elsewhere)."""
    logits = torch.full((len(batch), task.n_outputs), -scale)
    return logits.scatter(-1, batch.inputs["tokens"], batch.target.log())


@pytest.mark.parametrize("name", ["topk-uniform", "topk-conditional"])
def test_metrics_of_a_perfect_and_a_uniform_predictor(gen, name):
    task = make_task(name, {"V": 200, "k": 5})
    b = task.sample(500, generator=gen)
    m = task.metrics(_perfect_logits(task, b), b)
    assert m["kl"] < 1e-6 and m["tv"] < 1e-6 and m["fp_rate"] == 0 and m["topk_mass"] > 0.999999
    u = task.metrics(torch.zeros(500, 200), b)
    # Uniform q: KL = log V + sum p log p; TV = 1 - k/V; every non-member is a false positive.
    expected_kl = math.log(200) + (b.target * b.target.log()).sum(-1).mean().item()
    assert u["kl"] == pytest.approx(expected_kl, rel=1e-4)
    assert u["tv"] == pytest.approx(1 - 5 / 200, rel=1e-5)
    assert u["fp_rate"] == pytest.approx(1.0) and u["topk_mass"] == pytest.approx(5 / 200)


def test_false_positive_definition(gen):
    task = make_task("topk-uniform", {"V": 10, "k": 2})
    b = task.sample(1, generator=gen)
    tokens = b.inputs["tokens"][0]
    others = [t for t in range(10) if t not in tokens.tolist()]
    logits = torch.full((1, 10), -30.0)
    logits[0, tokens] = 0.0
    logits[0, others[0]] = math.log(0.5)  # exactly at the tier boundary: counts
    logits[0, others[1]] = math.log(0.49)  # just below: does not
    m = task.metrics(logits, b)
    assert m["fp_per_sample"] == 1 and m["fp_rate"] == pytest.approx(1 / 8) and m["exact_set"] == 1


def test_loss_matches_dense_kl(gen):
    task = make_task("topk-conditional", {"V": 30, "k": 4})
    b = task.sample(16, generator=gen)
    logits = torch.randn(16, 30, generator=gen)
    dense = torch.zeros(16, 30).scatter(-1, b.inputs["tokens"], b.target)
    ref = torch.nn.functional.kl_div(torch.log_softmax(logits, -1), dense, reduction="none").sum(-1)
    assert torch.allclose(task.loss(logits, b), ref, atol=1e-5)


def test_weight_leak_metric_sees_leaking_weights(gen):
    task = make_task("topk-uniform", {"V": 100, "k": 5})
    b = task.sample(200, generator=gen)
    leaky = _perfect_logits(task, b).scatter(-1, b.inputs["tokens"], 0.3 * b.inputs["weights"])
    assert task.metrics(leaky, b)["weight_leak"] > 0.99
    assert abs(task.metrics(_perfect_logits(task, b), b).get("weight_leak", 0.0)) < 0.2


@pytest.mark.parametrize("cfg,field", [
    ({"k": 0}, "k"), ({"k": 2000, "V": 1000}, "k"), ({"w_lo": 0.0}, "w_lo"), ({"w_lo": -1.0}, "w_lo"),
    ({"w_lo": 3.0, "w_hi": 2.0}, "w_hi"), ({"V": 10.5}, "V"), ({"k": "five"}, "k"), ({"colour": 1}, "colour"),
])
def test_invalid_task_configs_name_the_field(cfg, field):
    with pytest.raises(ConfigError) as e:
        make_task("topk-uniform", cfg)
    assert e.value.field == field and field in str(e.value)


def test_bloom_formula_and_optimal_hash_size():
    task = make_task("topk-uniform", {"V": 1000, "k": 5})
    m, h = 64, task.optimal_hash_size(64)
    assert task.bloom_fp_rate(m, h) == pytest.approx((1 - (1 - h / m) ** 5) ** h)
    for m in (16, 24, 32, 48, 64, 128):
        h = task.optimal_hash_size(m)
        assert task.bloom_fp_rate(m, h) <= min(task.bloom_fp_rate(m, h - 1) if h > 1 else 1, task.bloom_fp_rate(m, h + 1))
        # The textbook (m/k) ln 2 is close but, at k=5, never below the exact optimum.
        assert 0 <= round(m / 5 * math.log(2)) - h <= max(1, m // 30), (m, h)
    # The rate falls exponentially in m: log-rate is linear in m with slope near ln(0.6185)/k.
    ms = [32, 64, 128, 256]
    logs = [math.log(task.bloom_fp_rate(m, task.optimal_hash_size(m))) for m in ms]
    slope = (logs[-1] - logs[0]) / (ms[-1] - ms[0])
    assert slope == pytest.approx(math.log(0.6185) / 5, rel=0.15)


def test_a_cpu_generator_serves_any_device():
    """Samples are drawn on the generator's device, then moved: same samples on any device."""
    task = make_task("topk-uniform", {"V": 100, "k": 5})
    b = task.sample(8, generator=torch.Generator().manual_seed(0), device="meta")
    assert b.inputs["tokens"].device.type == "meta" and b.inputs["tokens"].shape == (8, 5)
    assert torch.equal(task.held_out(8).inputs["tokens"], task.held_out(8, device="cpu").inputs["tokens"])
