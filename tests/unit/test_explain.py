"""Scoring explanations: chance-corrected probes, control explanations, rivals and margins, intervals."""

from __future__ import annotations

import math

import pytest
import torch

from sparsebench.api import Batch, Fitted, NotApplicable
from sparsebench.baselines.controls import AnswerOnly, PermutedUnits, RandomCode, Resampled, ResampledFit
from sparsebench.build import make_mechanism, make_model, make_task
from sparsebench.explain import Rivals, blind, changed_share, good, score_probe
from sparsebench.probes import Candidates, HiddenCode, Patch, PatchConfig, ProbeConfig, mcc
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
    assert changed_share(Candidates(), fitted, perm, task, chunks[0]) == 0  # outputs do not depend on unit names
    assert blind(Candidates(), 0.0)
    assert changed_share(HiddenCode(), fitted, perm, task, chunks[0]) > 0.5 and not blind(HiddenCode(), 0.6)
    rivals = Rivals(controls={"permuted-units": perm}, nulls={}, relabelling=set(), partial={"permuted-units"})
    cand = score_probe(Candidates(), model, fitted, rivals, task, chunks)
    assert "permuted-units" in cand.control_notes and not cand.scores["fp_mcc"].controls
    assert cand.scores["fp_mcc"].margin is None  # no rival with a number: no margin (a record stores NaN as null)
    hc = score_probe(HiddenCode(), model, fitted, rivals, task, chunks)
    s = hc.scores["mcc"]
    assert s.controls["permuted-units"] < 0.2 and s.margin == pytest.approx(s.value - s.controls["permuted-units"])
    assert s.rival == "permuted-units" and s.ci is not None and hc.chunks == 4


class Flipped(Fitted):
    """The fit with the first `n` entries of its predicted hidden code flipped: a stand-in for a refit to other
    weights that finds the same code but for a few entries."""

    mechanism = "flipped"

    def __init__(self, fitted: Fitted, n: int):
        self.fitted, self.n = fitted, n

    def summary(self):
        return {}

    def hidden_active(self, batch):
        h = self.fitted.hidden_active(batch).clone()
        flat = h.view(-1)
        flat[: self.n] = ~flat[: self.n]
        return h


def test_a_partial_control_that_changes_less_than_the_probe_can_see_is_invisible_to_it(task, built):
    model, fitted, chunks = built
    active = int(fitted.hidden_active(chunks[0]).sum())
    few, many = Flipped(fitted, 3), Flipped(fitted, active // 10)
    share = changed_share(HiddenCode(), fitted, few, task, chunks[0])
    assert 0 < share < 0.01 and blind(HiddenCode(), share)  # the default blind_below: 1%
    assert not blind(HiddenCode(ProbeConfig(blind_below=0)), share)  # 0: exactly nothing
    assert not blind(HiddenCode(), changed_share(HiddenCode(), fitted, many, task, chunks[0]))  # ~10%: visible
    rivals = Rivals(controls={"few": few, "many": many}, nulls={}, relabelling=set(), partial={"few", "many"})
    r = score_probe(HiddenCode(), model, fitted, rivals, task, chunks)
    assert "under blind_below 0.01" in r.control_notes["few"] and set(r.scores["mcc"].controls) == {"many"}
    # Wrong about everything: a near-copy is a rival, however close (the explanation adds nothing over it).
    full = score_probe(HiddenCode(), model, fitted, Rivals(controls={"few": few}, nulls={}, relabelling=set(),
                                                           partial=set()), task, chunks)
    assert not full.control_notes and full.scores["mcc"].rival == "few"
    assert abs(full.scores["mcc"].margin) < 0.01


def test_any_change_to_a_number_a_probe_reads_is_visible(task, built):
    from sparsebench.explain import _changed

    x = torch.randn(4, 5, generator=g(0))
    y = x.clone()
    y[0, 0] += 1e-6
    assert _changed(x, x.clone()) == 0 and _changed(x, y) == 1.0
    a = torch.zeros(10, dtype=torch.bool)
    a[:4] = True
    b = a.clone()
    b[4] = True  # one entry more: 1 in one set only, 4 + 5 entries in both
    assert _changed(a, b) == pytest.approx(1 / 9) and _changed(a, torch.zeros_like(a)) == 1.0


def test_blind_below_is_checked():
    from sparsebench.errors import ConfigError

    for bad in (-0.1, 1.0, "x", True):
        with pytest.raises(ConfigError, match="blind_below"):
            ProbeConfig(blind_below=bad)
    with pytest.raises(ConfigError, match="blind_below"):
        PatchConfig(blind_below=2)


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
    assert r.config == {"reference": "mean", "sufficient": {"loss_recovered": 0.8}, "blind_below": 0.01}
    assert r.ranked


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


# ----- the bar: the level at which a probe's claim is met ---------------------------------------------------

def test_every_ranked_probe_states_a_bar_for_its_main_score_and_diagnostics_none():
    from sparsebench import registry

    for name in registry.probes.names():
        cls = registry.probes.get(name)
        if not cls.ranked:
            assert cls.sufficient == {}, f"{name} is a diagnostic: it claims nothing, so it has no bar"
            continue
        assert cls.main in cls.sufficient, f"{name} states no bar for its main score {cls.main}"
        for score, level in cls.sufficient.items():
            lo, hi = cls.bounds.get(score, (-math.inf, math.inf))
            assert score in cls.directions and lo < level <= hi, (name, score, level)


def test_a_suite_overrides_the_bar_and_every_score_records_the_one_in_force(task, built):
    from sparsebench.evaluate import make_probe

    model, fitted, chunks = built
    rivals = Rivals(controls={"random-code": fitted.random_code(g(7))}, nulls={}, relabelling=set(), partial=set())
    default = score_probe(make_probe("candidates", None), model, fitted, rivals, task, chunks)
    assert default.scores["fp_mcc"].sufficient == 0.8 and default.config == {"sufficient": {"fp_mcc": 0.8}, "blind_below": 0.01}
    assert default.scores["fp_recall"].sufficient is None  # a score without a bar
    mine = score_probe(make_probe("candidates", {"sufficient": {"fp_mcc": 0.6}}), model, fitted, rivals, task, chunks)
    assert mine.scores["fp_mcc"].sufficient == 0.6 and mine.config == {"sufficient": {"fp_mcc": 0.6}, "blind_below": 0.01}
    patch = make_probe("patch", {"reference": "zero", "sufficient": {"kl_to_clean": 0.05}})
    assert patch.bars() == {"loss_recovered": 0.8, "kl_to_clean": 0.05}  # the probe's own bars stay


def test_another_bar_is_another_record():
    from sparsebench.evaluate import Plan
    from sparsebench.settings import suite_from_dict

    base = {"runs": [{"task_config": {"V": 50, "k": 3}}], "mechanisms": ["bloom"], "probes": ["patch"],
            "widths": [8], "seeds": [0]}
    ids = [Plan(suite_from_dict({**base, "probe_config": cfg})).trained_ids(0, 8, 0)["explanation/bloom"]
           for cfg in ({}, {"patch": {"sufficient": {"loss_recovered": 0.8}}},
                       {"patch": {"sufficient": {"loss_recovered": 0.9}}})]
    assert ids[0] == ids[1] != ids[2]  # the default written out is the default; a rerun with 0.9 is not skipped


@pytest.mark.parametrize("probe,bars,field,message", [
    ("candidates", {"fp_mcc": math.nan}, "sufficient.fp_mcc", "must be a finite number (got nan)"),
    ("candidates", {"fp_mcc": math.inf}, "sufficient.fp_mcc", "must be a finite number (got inf)"),
    ("candidates", {"fp_mcc": 1.5}, "sufficient.fp_mcc", "out of range: fp_mcc lies in [-1, 1] (got 1.5)"),
    ("patch", {"kl_to_clean": -0.1}, "sufficient.kl_to_clean", "out of range: kl_to_clean lies in [0, inf]"),
    ("hidden-code", {"mc": 0.8}, "sufficient.mc", "unknown score (this probe's scores: mcc, precision, recall, f1)"),
    ("prediction", {"kl_explained": "high"}, "sufficient.kl_explained", "must be a number (got 'high')"),
    ("prediction", {"kl_explained": True}, "sufficient.kl_explained", "must be a number (got True)"),
    ("code-recall", [0.8], "sufficient", "must be a table"),
])
def test_a_bad_bar_is_one_error_naming_the_field(probe, bars, field, message):
    from sparsebench.errors import ConfigError
    from sparsebench.evaluate import make_probe

    with pytest.raises(ConfigError) as e:
        make_probe(probe, {"sufficient": bars})
    assert (e.value.where, e.value.field) == ("suite", f"probe_config.{probe}.{field}")
    assert e.value.detail.startswith(message), e.value.detail
    assert str(e.value).startswith(f"invalid suite config: probe_config.{probe}.{field}: ")


def test_a_diagnostic_takes_no_bar():
    from sparsebench.errors import UserError
    from sparsebench.evaluate import make_probe

    with pytest.raises(UserError, match="probe 'bimodality' takes no options"):
        make_probe("bimodality", {"sufficient": {"r2": 0.9}})
