"""Scoring explanations: chance-corrected probes, control explanations, rivals and margins, intervals."""

from __future__ import annotations

import math

import pytest
import torch

from sparsebench.api import Batch, NotApplicable
from sparsebench.baselines.controls import AnswerOnly, PermutedUnits, RandomCode, Resampled, ResampledFit
from sparsebench.build import make_mechanism, make_model, make_task
from sparsebench.explain import Rivals, blind, good, score_probe
from sparsebench.probes import Candidates, HiddenCode, Patch, PatchConfig, mcc
from sparsebench.stats import mean_ci, paired_diff_ci, t_quantile


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def task():
    return make_task("topk-uniform", {"V": 200, "k": 3})


@pytest.fixture(scope="module")
def built(task):
    """A Bloom construction, its fit, and a probe batch in chunks."""
    model = make_mechanism("bloom").construct(task, 32, generator=g(0)).eval()
    fitted = make_mechanism("bloom").fit(model, task, generator=g(1))
    return model, fitted, task.held_out(1024).split(4)


def test_mcc_is_chance_corrected():
    actual = torch.rand(4000, generator=g(0)) < 0.3
    assert mcc(actual, actual, "x")["mcc"] == pytest.approx(1.0)
    assert mcc(~actual, actual, "x")["mcc"] == pytest.approx(-1.0)
    assert mcc(torch.ones_like(actual), actual, "x")["mcc"] == 0.0  # "always on": no information
    assert mcc(torch.zeros_like(actual), actual, "x")["mcc"] == 0.0  # "never": no information
    assert abs(mcc(torch.rand(4000, generator=g(1)) < 0.3, actual, "x")["mcc"]) < 0.05  # a random guess
    assert isinstance(mcc(actual, torch.zeros_like(actual), "x"), NotApplicable)  # nothing to explain


def test_t_intervals():
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, rel=1e-5)
    assert t_quantile(0.975, 30) == pytest.approx(2.042272, rel=1e-5)
    m, lo, hi = mean_ci([1.0, 2.0, 3.0])
    assert (m, lo, hi) == pytest.approx((2.0, 2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), rel=1e-5)
    assert math.isnan(mean_ci([1.0])[1]) and math.isnan(mean_ci([])[0])
    d, lo, hi = paired_diff_ci([1.0, 2.0, 3.0], [0.5, 1.4, 2.6])
    assert d == pytest.approx(0.5) and lo < 0.5 < hi


def test_controls_are_wrong_in_the_way_they_say(task, built):
    model, fitted, chunks = built
    batch = chunks[0]
    refit = lambda m: make_mechanism("bloom").fit(m, task, generator=g(1))  # noqa: E731
    perm = PermutedUnits().make(fitted, model, task, refit=refit, generator=g(2))
    assert torch.equal(perm.predict_logits(batch), fitted.predict_logits(batch))  # outputs unchanged...
    assert not torch.equal(perm.hidden_active(batch), fitted.hidden_active(batch))  # ...units wrong
    rnd = RandomCode().make(fitted, model, task, refit=refit, generator=g(3))
    assert torch.equal(rnd.token_code().sum(1), fitted.token_code().sum(1))  # same size per token
    assert not torch.equal(rnd.token_code(), fitted.token_code())
    res = Resampled().make(fitted, model, task, refit=refit, generator=g(4))
    assert isinstance(res, ResampledFit)
    assert torch.equal(res.predict_logits(batch)[1], fitted.predict_logits(batch)[0])  # sample 1 gets sample 0's
    ans = AnswerOnly().make(fitted, model, task, refit=refit, generator=g(5))
    cand = ans.predict_candidates(batch)
    assert cand.sum(-1).eq(task.config.k).all()  # the members, nothing else
    assert ans.floor < 0 and not hasattr(ans, "hidden_active")


def test_a_partial_control_that_changes_nothing_a_probe_reads_is_invisible_to_it(task, built):
    model, fitted, chunks = built
    perm = fitted.permuted_units(torch.randperm(32, generator=g(0)))
    assert blind(Candidates(), fitted, perm, chunks[0])  # the outputs do not depend on unit names
    assert not blind(HiddenCode(), fitted, perm, chunks[0])
    rivals = Rivals(controls={"permuted-units": perm}, nulls={}, relabelling=set(), partial={"permuted-units"})
    cand = score_probe(Candidates(), model, fitted, rivals, task, chunks)
    assert "permuted-units" in cand.control_notes and not cand.scores["fp_mcc"].controls
    assert cand.scores["fp_mcc"].margin is None  # no rival with a number: no margin (a record stores NaN as null)
    hc = score_probe(HiddenCode(), model, fitted, rivals, task, chunks)
    s = hc.scores["mcc"]
    assert s.controls["permuted-units"] < 0.2 and s.margin == pytest.approx(s.value - s.controls["permuted-units"])
    assert s.rival == "permuted-units" and s.ci is not None and hc.chunks == 4


def test_a_tie_with_a_control_wrong_about_everything_stays_a_tie(task, built):
    model, fitted, chunks = built
    rivals = Rivals(controls={"copy": fitted}, nulls={}, relabelling=set(), partial=set())  # not partial
    r = score_probe(Candidates(), model, fitted, rivals, task, chunks)
    assert r.scores["fp_mcc"].margin == pytest.approx(0.0)  # the explanation adds nothing over it


def test_margin_turns_by_direction_and_picks_the_strongest_rival(task, built):
    model, fitted, chunks = built
    worse = fitted.random_code(g(7))
    rivals = Rivals(controls={"random-code": worse, "resampled": ResampledFit(fitted)}, nulls={},
                    relabelling=set(), partial=set())
    r = score_probe(Patch(), model, fitted, rivals, task, chunks)
    kl = r.scores["kl_to_clean"]  # lower is better
    best = max(good(v, "lower") for v in kl.controls.values())
    assert kl.margin == pytest.approx(good(kl.value, "lower") - best, abs=1e-9)
    assert r.config == {"reference": "mean"} and r.ranked


@pytest.mark.parametrize("reference", ["mean", "zero", "resample"])
def test_patch_recovers_everything_on_its_construction_for_every_reference(task, built, reference):
    model, fitted, chunks = built
    out = Patch(PatchConfig(reference=reference)).score(model, fitted, task, chunks[0])
    assert out["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    wrong = Patch(PatchConfig(reference=reference)).score(model, fitted.random_code(g(1)), task, chunks[0])
    assert -1.0 <= wrong["loss_recovered"] < 0.5  # clipped at -1, never rewarded above 1


def test_answer_only_explains_nothing_beyond_the_answer(task, built):
    model, fitted, chunks = built
    ans = AnswerOnly().make(fitted, model, task, refit=None, generator=g(0))
    out = Candidates().score(model, ans, task, chunks[0])
    assert out["fp_mcc"] == 0.0  # it predicts no false positive: no information about them
    assert Candidates().score(model, fitted, task, chunks[0])["fp_mcc"] > 0.99


def test_batches_split_into_independent_chunks(task):
    b = task.held_out(10)
    parts = b.split(3)
    assert [len(p) for p in parts] == [4, 3, 3]
    assert torch.equal(torch.cat([p.inputs["tokens"] for p in parts]), b.inputs["tokens"])
    assert isinstance(parts[0], Batch)


def test_random_models_make_reinit_controls(task):
    from sparsebench.baselines.controls import ReinitWU

    model = make_model("mlp1", {"d_model": 16, "d_mlp": 16}, task, generator=g(0))
    fitted = make_mechanism("bloom").fit(model, task, generator=g(1))
    seen = {}

    def refit(m):
        seen["model"] = m
        return make_mechanism("bloom").fit(m, task, generator=g(1))

    ReinitWU().make(fitted, model, task, refit=refit, generator=g(2))
    other = seen["model"]
    assert not torch.equal(other.W_U, model.W_U) and torch.equal(other.W_E, model.W_E)
    assert torch.equal(other.W_in, model.W_in)
