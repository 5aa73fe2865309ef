"""The clause family: task clause-dnf, model mlp2, mechanism feature-channel, probes code-count and code-recall."""

from __future__ import annotations

import copy

import pytest
import torch

from sparsebench.baselines.controls import AnswerOnly, ClauseAnswerOnlyFit
from sparsebench.baselines.nulls import Shuffled, Untrained
from sparsebench.build import make_mechanism, make_model, make_task
from sparsebench.errors import ConfigError
from sparsebench.mechanisms.feature_channel import FeatureChannelFit, site_codes
from sparsebench.models.mlp2 import MLP2, hadamard
from sparsebench.probes import HiddenCode, Patch, Prediction
from sparsebench.probes_clauses import CodeCount, CodeRecall
from sparsebench.tasks.clauses import parse_template, template_counts
from sparsebench.training import TrainConfig, init_models, make_optimizer


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def task():
    return make_task("clause-dnf", {})


# ---- task -----------------------------------------------------------------------------------------

def test_clauses_come_from_the_structure_seed(task):
    again, other = make_task("clause-dnf", {}), make_task("clause-dnf", {"structure_seed": 1})
    assert torch.equal(task.variables, again.variables) and torch.equal(task.signs, again.signs)
    assert not torch.equal(task.variables, other.variables)
    assert task.template_names.count("4P") == task.template_names.count("3N1P") == 8  # half of each
    for name, signs in zip(task.template_names, task.signs):
        assert (signs < 0).sum().item() == parse_template(name, 4)[0]
    keys = {(tuple(v.tolist()), tuple(s.tolist())) for v, s in zip(task.variables, task.signs)}
    assert len(keys) == 16, "clauses are distinct"
    assert all((v.diff() > 0).all() for v in task.variables), "k distinct variables, ascending"


def test_sampling_plants_clauses_in_a_random_order_like_a_sequential_reference(task):
    n = 300
    batch = task.sample(n, generator=g(5))
    u = torch.rand(n, 16 + 32, generator=g(5))  # the sampler's one draw: x, plant, order
    x = (u[:, :16] < 0.5).float()
    for r in range(n):
        for c in sorted(range(16), key=lambda c: u[r, 32 + c].item()):
            if u[r, 16 + c] < 0.3:
                x[r, task.variables[c]] = task.literal[c]
    assert torch.equal(batch.inputs["x"], x)
    holds = torch.tensor([[bool((x[r, task.variables[c]] == task.literal[c]).all()) for c in range(16)]
                          for r in range(n)]).float()
    assert torch.equal(batch.target, holds), "labels are recomputed from the final x"


def test_sampling_is_deterministic_and_the_label_rate_is_as_documented(task):
    a, b = task.sample(20000, generator=g(1)), task.sample(20000, generator=g(1))
    assert torch.equal(a.inputs["x"], b.inputs["x"])
    assert 0.15 < a.target.mean().item() < 0.25  # ~80% of labels are 0: why balanced accuracy is the metric
    none = make_task("clause-dnf", {"p_plant": 0.0}).sample(20000, generator=g(1))
    assert abs(none.target.mean().item() - 1 / 16) < 0.01  # an unplanted clause holds with probability 2^-4


def test_metrics_and_their_directions(task):
    batch = task.sample(512, generator=g(2))
    perfect = task.metrics(40 * (batch.target - 0.5), batch)
    assert perfect["bal_acc"] == perfect["bit_acc"] == perfect["exact"] == 1.0 and perfect["bce"] < 1e-6
    zeros = task.metrics(torch.full_like(batch.target, -5.0), batch)  # always "no": high bit accuracy, TPR 0
    assert zeros["bal_acc"] == pytest.approx(0.5) and zeros["bit_acc"] > 0.75
    assert list(task.metric_directions) == ["bal_acc", "bit_acc", "exact", "bce"]
    assert task.metric_directions["bce"] == "lower"
    logits = torch.randn(3, 512, 16, generator=g(3))
    stacked = task.metrics_stacked(logits, type(batch)({"x": batch.inputs["x"].expand(3, -1, -1)},
                                                       batch.target.expand(3, -1, -1)))
    assert stacked[1].tolist() == pytest.approx(list(task.metrics(logits[1], batch).values()))
    assert task.output_kl(logits[0], logits[0]).abs().max() < 1e-9


def test_template_counts_and_config_errors():
    assert template_counts(16, (0.5, 0.5)) == [8, 8] and template_counts(5, (1, 1, 1)) == [2, 2, 1]
    with pytest.raises(ConfigError, match="templates"):
        make_task("clause-dnf", {"templates": ["5P"]})
    with pytest.raises(ConfigError, match="template_weights"):
        make_task("clause-dnf", {"template_weights": [1.0]})
    with pytest.raises(ConfigError, match="k: must be in"):
        make_task("clause-dnf", {"n": 3})
    with pytest.raises(ConfigError, match="p_plant"):
        make_task("clause-dnf", {"p_plant": 1.5})
    assert make_task("clause-dnf", {"templates": ["2N2P"], "template_weights": [1.0]}).template_names[0] == "2N2P"


# ---- model ----------------------------------------------------------------------------------------

def test_the_token_to_hidden_view_is_the_feature_space(task):
    for embed in ("hadamard", "random", "learned"):
        m = make_model("mlp2", {"embed": embed}, task, generator=g(0))
        with torch.no_grad():
            m.blocks[0].mlp.mask.copy_((torch.rand(16, 16, generator=g(1)) < 0.5).float())
        C1 = (m.blocks[0].mlp.W1 * m.mask) @ m.C0
        torch.testing.assert_close(m.W_E @ m.W_in[0], C1.T)
        x = task.sample(8, generator=g(2)).inputs["x"]
        logits = m(x)
        torch.testing.assert_close(logits, torch.relu(x @ C1.T + m.b_in[0]) @ m.W_out[0] @ m.W_U + m.b_U)
        assert m.C0.requires_grad == (embed == "learned")
    H = hadamard(16) / 4
    torch.testing.assert_close(H @ H.T, torch.eye(16))
    with pytest.raises(ConfigError, match="d_embed"):
        make_model("mlp2", {"d_embed": 12}, task)


def test_a_masked_coordinate_gets_no_gradient_and_stays_zero(task):
    (m,) = init_models(task, "mlp2", {}, [0])
    mask = (torch.rand(16, 16, generator=g(4)) < 0.2).float()
    with torch.no_grad():
        m.blocks[0].mlp.mask.copy_(mask)
        m.blocks[0].mlp.W1.mul_(mask)
    opt = make_optimizer([p for p in m.parameters() if p.requires_grad], TrainConfig(weight_decay=0.01))
    for i in range(20):
        b = task.sample(64, generator=g(10 + i))
        loss = task.loss(m(**b.inputs), b).mean()
        opt.zero_grad()
        loss.backward()
        assert (m.blocks[0].mlp.W1.grad[mask == 0] == 0).all()
        opt.step()
    W1 = m.blocks[0].mlp.W1.detach()
    assert (W1[mask == 0] == 0).all() and (W1[mask == 1] != 0).all()


def test_stacked_instances_compute_what_each_model_computes(task, tmp_path):
    models = init_models(task, "mlp2", {"embed": "random"}, [0, 1, 2])
    with torch.no_grad():
        models[1].blocks[0].mlp.mask.copy_((torch.rand(16, 16, generator=g(0)) < 0.3).float())
    stacked = MLP2.stacked(models)
    x = torch.stack([task.sample(32, generator=g(s)).inputs["x"] for s in range(3)])
    out = stacked(x)
    for i, m in enumerate(models):
        torch.testing.assert_close(out[i], m(x[i]))
    for a, b in zip(stacked.unstack(models[0]), models):
        assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    again = type(stacked).from_states(models[0], [m.state_dict() for m in models])
    torch.testing.assert_close(again(x), out)
    import safetensors.torch

    safetensors.torch.save_model(models[1], str(tmp_path / "m.safetensors"))  # the mask is saved with the weights
    fresh = make_model("mlp2", {"embed": "random"}, task)
    safetensors.torch.load_model(fresh, str(tmp_path / "m.safetensors"))
    assert torch.equal(fresh.mask, models[1].mask)


def test_the_nulls_apply_to_mlp2(task):
    m = make_model("mlp2", {}, task, generator=g(0))
    m.name = "mlp2"
    shuffled = Shuffled().make(m, task, seed=0, generator=g(1))
    assert not torch.equal(shuffled.C0, m.C0) and torch.equal(shuffled.C0.sort(1).values, m.C0.sort(1).values)
    x = task.sample(64, generator=g(2)).inputs["x"]
    assert not torch.equal(shuffled(x), m(x)), "permuting Hadamard columns relabels the inputs: another model"
    untrained = Untrained().make(m, task, seed=0, generator=g(1))
    assert not torch.equal(untrained(x), m(x))


# ---- mechanism ------------------------------------------------------------------------------------

def test_site_codes_by_hand():
    variables, signs = torch.tensor([[0, 1, 2, 3]]), torch.tensor([[1.0, 1.0, -1.0, 1.0]])
    C1 = torch.tensor([[1.0, 0.5, -0.8, 0.9, 0.0],    # exact: every sign right, every entry >= 0.2
                       [1.0, 0.1, -0.8, 0.9, 0.0],    # one entry below the row threshold: distance 1
                       [1.0, -0.5, 0.8, 0.9, 0.0],    # two signs wrong: distance 2
                       [0.0, 0.0, 0.0, 0.0, 0.0]])    # a zero row: distance 4
    codes = site_codes(C1, variables, signs, rho=0.2)
    assert codes.distance[:, 0].tolist() == [0, 1, 2, 4]
    assert codes.exact[:, 0].tolist() == [True, False, False, False]
    assert codes.row_load.tolist() == [1, 1, 0, 0] and codes.covered.tolist() == [True]
    assert codes.margin[0, 0].item() == pytest.approx((1 + 0.5 + 0.8 + 0.9) / 1.0)


@pytest.mark.parametrize("width", [16, 24])
def test_the_construction_computes_and_codes_every_clause(task, width):
    mech = make_mechanism("feature-channel")
    model = mech.construct(task, width, generator=g(0))
    held = task.held_out(8192)
    with torch.no_grad():
        metrics = task.metrics(model(**held.inputs), held)
    assert metrics["bal_acc"] == 1.0 and metrics["exact"] == 1.0
    fit = mech.fit(model, task, generator=g(1))
    s = fit.summary()
    assert s["covered"] == 16 and s["exact_codes"] == 16 and s["units_coded"] == 16
    batch = task.sample(1024, generator=g(2))
    perfect = {"mcc": 1.0, "precision": 1.0, "recall": 1.0, "f1": 1.0}
    assert HiddenCode().score(model, fit, task, batch) == perfect
    assert CodeRecall().score(model, fit, task, batch) == perfect
    patch = Patch().score(model, fit, task, batch)
    assert patch["loss_recovered"] == pytest.approx(1.0, abs=1e-6) and patch["kl_to_clean"] < 1e-6
    assert Prediction().score(model, fit, task, batch)["kl_explained"] == pytest.approx(1.0, abs=1e-6)
    count = CodeCount().score(model, fit, task, batch)
    assert (count["covered"], count["exact_codes"]) == (1.0, 16.0) and count["near_codes"] >= 16


def test_the_construction_needs_one_unit_per_clause(task):
    with pytest.raises(ConfigError, match=r"width: .*H\) must be >= K=16 \(got 12\)"):
        make_mechanism("feature-channel").construct(task, 12, generator=g(0))


def test_controls_keep_the_statistics_and_break_the_content(task):
    mech = make_mechanism("feature-channel")
    model = mech.construct(task, 16, generator=g(0))
    fit = mech.fit(model, task, generator=g(1))
    perm = torch.roll(torch.arange(16), 1)
    wrong = fit.permuted_units(perm)
    assert torch.equal(wrong.exact[perm], fit.exact) and wrong.exact.sum() == fit.exact.sum()
    rand = fit.random_code(g(3))
    assert isinstance(rand, FeatureChannelFit) and torch.equal(rand.exact.sum(0), fit.exact.sum(0))
    assert not torch.equal(rand.exact, fit.exact) and not torch.equal(rand.exact, fit.random_code(g(4)).exact)
    batch = task.sample(1024, generator=g(2))
    for control in (wrong, rand):  # the right statistics on the wrong units: chance level
        assert abs(HiddenCode().score(model, control, task, batch)["mcc"]) < 0.3
        assert abs(CodeRecall().score(model, control, task, batch)["mcc"]) < 0.3
        assert Patch().score(model, control, task, batch)["loss_recovered"] < 0.5
    with pytest.raises(ValueError, match="permutation"):
        fit.permuted_units(torch.zeros(16, dtype=torch.long))


def test_answer_only_for_clauses_is_the_best_prediction_from_the_target_alone(task):
    model = make_model("mlp2", {}, task, generator=g(0))
    fit = AnswerOnly().make(None, model, task, refit=None, generator=g(5))
    batch = task.sample(AnswerOnly.fit_samples, generator=g(5))  # the control's own fit batch
    with torch.no_grad():
        out = model(**batch.inputs)

    def kl(on, off):
        return task.output_kl(out, ClauseAnswerOnlyFit(on, off).predict_logits(batch)).mean().item()

    best = kl(fit.on, fit.off)
    step = torch.zeros(16, dtype=torch.float64)
    step[3] = 0.1
    for d in (step, -step):  # any other value of a clause's "holds" or "does not hold" logit is worse
        assert kl(fit.on + d, fit.off) > best and kl(fit.on, fit.off + d) > best
    other = type(batch)(batch.inputs, 1 - batch.target)
    assert not torch.equal(fit.predict_logits(other), fit.predict_logits(batch)), "it reads the target..."
    assert not hasattr(fit, "hidden_active") and not hasattr(fit, "clause_codes"), "...and nothing else"


def test_probes_say_not_applicable_for_an_explanation_without_clause_codes(task):
    class NoCodes:
        mechanism, why_not = "x", "x has no clause codes"

    batch = task.sample(64, generator=g(0))
    model = make_model("mlp2", {}, task, generator=g(0))
    assert CodeCount().score(model, NoCodes(), task, batch).reason == "x has no clause codes"
    assert CodeRecall().score(model, NoCodes(), task, batch).reason == "x has no clause codes"
    fit = make_mechanism("feature-channel").fit(copy.deepcopy(model), task, generator=g(1))
    assert fit.summary()["exact_codes"] > 0, "chance leaves some exact codes at initialisation"
    assert CodeRecall().score(model, fit, task, batch)["mcc"] < 0.1, "...which carry none of its decisions"
