"""The ticket pipeline's parts: stats helpers, masks and the translation, detectors, stacked retraining,
the ticket record, the tickets board and the claims."""

from __future__ import annotations

import pytest
import torch

from sparsebench import registry
from sparsebench.build import make_model, make_task
from sparsebench.context import RunContext
from sparsebench.stats import paired_diff_ci, sign_test_p
from sparsebench.tickets.claims import compare
from sparsebench.tickets.detectors import DetectionInput, average_ranks, make_detector
from sparsebench.tickets.masks import budget, clause_directions, jaccard, top_mask, translate
from sparsebench.tickets.retrain import Instance, evaluate_stacked, stack, train_stacked
from sparsebench.training import TrainConfig, init_models, seed_generator, train


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def task():
    return make_task("clause-dnf", {})


# ---- stats ----------------------------------------------------------------------------------------

def test_paired_comparisons_give_an_interval_a_sign_test_and_a_verdict():
    d = compare([1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 1.4, 2.6, 3.5, 4.4])
    assert (d.n, d.wins, d.losses) == (5, 5, 0) and d.sign_p == pytest.approx(0.0625) and d.verdict == "a"
    assert (d.mean, d.lo, d.hi) == pytest.approx(paired_diff_ci([1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 1.4, 2.6, 3.5, 4.4]))
    assert compare([1, 2, 3], [3, 2, 1]).verdict == "tie"
    assert compare([1.0], [0.0]).verdict == "tie", "one pair has no interval: never a win"
    assert compare([0, 0, 0], [1, 1.1, 0.9]).verdict == "b"
    missing = compare([1.0, None, 3.0, float("nan")], [0.0, 1.0, 2.0, 1.0])
    assert (missing.n, missing.wins) == (2, 2), "a pair with a missing value is dropped"
    assert sign_test_p(0, 0) == 1.0 and sign_test_p(10, 0) == pytest.approx(2 / 1024)
    assert sign_test_p(3, 3) == 1.0 and sign_test_p(1, 5) == pytest.approx(14 / 64)
    with pytest.raises(ValueError, match="equal lengths"):
        compare([1, 2], [1])


# ---- masks ----------------------------------------------------------------------------------------

def test_budgets_and_top_masks():
    assert budget(16, 16, 0.9) == 26 and budget(32, 16, 0.5) == 256 and budget(2, 2, 0.99) == 1
    scores = torch.tensor([[3.0, 1.0], [3.0, 2.0]])
    assert top_mask(scores, 2).tolist() == [[1.0, 0.0], [1.0, 0.0]]  # ties to the lower flat index
    assert jaccard(torch.tensor([1, 1, 0]), torch.tensor([0, 1, 1])) == pytest.approx(1 / 3)


def test_the_translation_walks_sites_in_order_with_a_quota(task):
    W1 = torch.randn(16, 16, generator=g(0))
    C0 = make_model("mlp2", {}, task).C0.detach()
    a = clause_directions(C0, task.variables, task.signs)  # [K, d]
    assert torch.allclose(a[0], C0[:, task.variables[0]] @ task.signs[0])
    scores = torch.zeros(16, 16)
    scores[3, 5], scores[7, 2] = 2.0, 1.0  # site (3, 5) first, then (7, 2), then the rest in flat order
    mask, filled = translate(scores, W1, C0, task.variables, task.signs, keep=3, quota=1)
    best = lambda h, c: int((W1[h] * a[c]).argmax())  # noqa: E731
    assert mask[3, best(3, 5)] == 1 and mask[7, best(7, 2)] == 1 and mask.sum() == 3 and filled == 0
    mask2, _ = translate(scores, W1, C0, task.variables, task.signs, keep=4, quota=2)
    assert mask2[3].sum() == 2 and mask2.sum() == 4
    full, filled = translate(torch.zeros(1, 16), W1[:1], C0, task.variables, task.signs, keep=16, quota=1)
    assert full.sum() == 16 and filled > 0, "sites ran out: the rest of the budget is filled by |W1|"


# ---- detectors ------------------------------------------------------------------------------------

def _input(task, step=50, keep=26, history=None):
    (model,) = init_models(task, "mlp2", {}, [0])
    init = {k: v.detach().clone() for k, v in model.state_dict().items()}
    later = {k: v + (0.3 * torch.randn(v.shape, generator=g(1)) if k.endswith("W1") else 0) for k, v in init.items()}
    final = {k: v + (0.6 * torch.randn(v.shape, generator=g(2)) if k.endswith("W1") else 0) for k, v in init.items()}

    def load(state):
        m = make_model("mlp2", {}, task)
        m.load_state_dict(state)
        return m

    return DetectionInput(task=task, step=step, budget=keep, init=init, at_step=later, final=final,
                          w1_history=history or {0: init["blocks.0.mlp.W1"], step: later["blocks.0.mlp.W1"]},
                          rho=0.2, near=1, load=load,
                          data=lambda n: task.sample(n, generator=seed_generator(0, "detect")),
                          generator=lambda name: seed_generator(0, name))


@pytest.mark.parametrize("name", registry.detectors.names())
def test_every_detector_scores_the_right_space_and_is_deterministic(task, name):
    det = make_detector(name)
    inp = _input(task)
    s, again = det.scores(inp), det.scores(inp)
    shape = (16, task.n_outputs) if s.space == "sites" else (16, 16)
    assert tuple(s.values.shape) == shape and torch.isfinite(s.values).all()
    assert torch.equal(s.values, again.values)
    assert det.kind in ("feature", "weight", "control", "reference")


def test_feature_scores_follow_their_formulas(task):
    inp = _input(task)
    c0, ce = inp.codes(inp.init), inp.codes(inp.at_step)
    static = make_detector("feature-static").scores(inp).values
    torch.testing.assert_close(static, (-ce.distance + 0.1 * ce.margin).double())
    dynamic = make_detector("feature-dynamic").scores(inp).values
    torch.testing.assert_close(dynamic, ((c0.distance - ce.distance) + 0.1 * (ce.margin - c0.margin)).double())
    assert not make_detector("feature-dynamic").applies_at(0) and make_detector("feature-static").applies_at(0)
    assert average_ranks(torch.tensor([3.0, 1.0, 3.0])).tolist() == [2.5, 1.0, 2.5]


def test_synflow_is_the_gradient_of_the_synaptic_flow(task):
    inp = _input(task)
    s = inp.at_step
    W1 = s["blocks.0.mlp.W1"].abs().clone().requires_grad_()
    R = (s["unembed.W2"].abs() @ W1 @ s["embed.C0"].abs()).sum()  # 1ᵀ |W2| |W1| |C0| 1
    (grad,) = torch.autograd.grad(R, [W1])
    torch.testing.assert_close(make_detector("synflow").scores(inp).values, grad * W1.detach())


def test_grasp_uses_the_hessian_gradient_product(task):
    inp = _input(task)
    model = inp.load(inp.at_step).double()
    batch = inp.data(1024)
    x, y = batch.inputs["x"].double(), batch.target.double()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    theta = tuple(dict(model.named_parameters())[n].detach() for n in names)

    def loss(*params):
        out = torch.func.functional_call(model, dict(zip(names, params)), (x,))
        return torch.nn.functional.binary_cross_entropy_with_logits(out, y, reduction="none").sum(-1).mean()

    params = [t.clone().requires_grad_() for t in theta]
    g0 = tuple(d.detach() for d in torch.autograd.grad(loss(*params), params))
    _, hg = torch.autograd.functional.hvp(loss, theta, g0)  # H g by torch's own double-backward utility
    W1 = dict(zip(names, theta))["blocks.0.mlp.W1"]
    hg_W1 = hg[names.index("blocks.0.mlp.W1")]
    torch.testing.assert_close(make_detector("grasp").scores(inp).values.double(), W1 * hg_W1, rtol=1e-4,
                               atol=1e-5)


def test_early_bird_takes_the_first_stable_mask(task):
    W = torch.randn(16, 16, generator=g(0))
    moving = {t: torch.randn(16, 16, generator=g(t + 1)) for t in range(0, 40, 10)}
    stable = {t: W + 1e-3 * t for t in range(40, 110, 10)}
    inp = _input(task, step=100, history={**moving, **stable})
    s = make_detector("early-bird", {"window": 3}).scores(inp)
    assert s.info == {"eb_step": 70.0, "eb_converged": 1.0}  # 40, 50, 60 stable before 70
    assert torch.equal(s.values, stable[70].abs())
    early = make_detector("early-bird", {"window": 3}).scores(_input(task, step=30, history=moving))
    assert early.info["eb_converged"] == 0.0, "not stable by the detection step: magnitude at the step"


def test_random_masks_are_nested_and_shared_across_steps(task):
    det = make_detector("random")
    a, b = det.scores(_input(task, step=50)), det.scores(_input(task, step=500))
    assert torch.equal(a.values, b.values) and not det.uses_step
    assert (top_mask(a.values, 26) <= top_mask(a.values, 128)).all()


# ---- retraining -----------------------------------------------------------------------------------

def test_stacked_retraining_equals_one_mask_at_a_time_and_keeps_masks(task):
    (model,) = init_models(task, "mlp2", {}, [0])
    state = model.state_dict()
    masks = [top_mask(torch.rand(16, 16, generator=g(i)), 26) for i in range(3)]
    cfg = TrainConfig(steps=30, batch_size=64, warmup=3)
    ctx = RunContext.create("cpu", progress=False)
    together = stack(task, "mlp2", {}, [Instance(0, state, m) for m in masks])
    train_stacked(together, task, cfg, [0, 0, 0], ctx)
    for i, m in enumerate(masks):
        alone = stack(task, "mlp2", {}, [Instance(0, state, m)])
        train_stacked(alone, task, cfg, [0], ctx)
        for name, p in alone.params.items():
            torch.testing.assert_close(together.params[name][i], p[0], rtol=1e-5, atol=1e-6)
        W1 = together.p("blocks.0.mlp.W1")[i]
        assert (W1[m == 0] == 0).all() and (W1[m == 1] != 0).all()
    held = task.held_out(512)
    assert evaluate_stacked(together, task, held, chunk=2).shape == (3, 4)


def test_a_dense_mask_rewound_to_theta0_retrains_into_the_dense_model(task):
    cfg = TrainConfig(steps=40, batch_size=64, warmup=4)
    ctx = RunContext.create("cpu", progress=False)
    dense = train(task, "mlp2", {}, cfg, [3], ctx).models[0]
    (init,) = init_models(task, "mlp2", {}, [3])
    module = stack(task, "mlp2", {}, [Instance(3, init.state_dict(), torch.ones(16, 16))])
    train_stacked(module, task, cfg, [3], ctx)
    (back,) = module.unstack(init)
    for (name, p), q in zip(back.named_parameters(), dense.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)
