"""The second seed's claims (TICKETS.md, "Claims a suite can test"), tested on ticket records.

Each claim has a check fixed in advance (below, and in docs/science.md §7.6), computed
from the records alone, paired over seeds with t intervals (`compare`: `stats.paired_diff_ci`,
95%, with the sign test beside it),
and reported as "reproduced", "partly reproduced", "not reproduced" or "not tested" (the
records it needs are missing), with the numbers. The tickets board shows the result,
and the integration tests assert whatever it measured.

The main group is (width, sparsity, detection step) of the records that have all three
init modes: the built-in suite's (16, 0.9, 150). "Feature" and "weight" detectors are the
records' detector kinds; references (the dense-final magnitude oracle, OBS, dense) and
controls (random) are never counted as either.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Iterable

from sparsebench.records import TicketRecord
from sparsebench.stats import mean_ci, paired_diff_ci, sign_test_p

ORACLE = "final-magnitude"  # the dense-final magnitude mask (IMP-style oracle)
STATIC = "feature-static"  # the feature-space detector claims 3 follows (fixed in advance: the prototype's best)
MAGNITUDE = "magnitude"  # checkpoint magnitude


@dataclass
class Claim:
    number: int
    claim: str  # what the paper states [paper]
    check: str  # how it is tested here [reading]
    status: str = "not tested"  # "reproduced" | "partly reproduced" | "not reproduced" | "not tested"
    summary: str = ""  # one line with the numbers
    numbers: dict[str, Any] = field(default_factory=dict)  # everything the summary rests on


@dataclass(frozen=True)
class Paired:
    """a - b paired over seeds (pair i = the same seed): the mean difference and its 95% t interval."""

    mean: float  # mean of a - b over the complete pairs (NaN without any)
    lo: float  # the interval (NaN for fewer than two pairs)
    hi: float
    n: int  # complete pairs (a pair with a missing value is dropped)
    wins: int  # pairs with a > b
    losses: int  # pairs with a < b
    sign_p: float  # two-sided exact sign test (ties left out)

    @property
    def verdict(self) -> str:
        """"a" if the interval lies above 0, "b" if below, "tie" otherwise (fewer than two pairs included)."""
        return "a" if self.lo > 0 else "b" if self.hi < 0 else "tie"


def compare(a: list[Any], b: list[Any]) -> Paired:
    """Paired comparison of equal-length per-seed values (None and NaN: that pair is dropped)."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths (got {len(a)} and {len(b)})")
    pairs = [(x, y) for x, y in zip(map(_nan, a), map(_nan, b)) if not (math.isnan(x) or math.isnan(y))]
    mean, lo, hi = paired_diff_ci([x for x, _ in pairs], [y for _, y in pairs])
    wins, losses = sum(x > y for x, y in pairs), sum(x < y for x, y in pairs)
    return Paired(mean, lo, hi, len(pairs), wins, losses, sign_test_p(wins, losses))


def _fmt(d: Paired, digits: int = 3) -> str:
    ci = "n/a" if math.isnan(d.lo) else f"[{d.lo:+.{digits}f}, {d.hi:+.{digits}f}]"
    return f"{d.mean:+.{digits}f} {ci} (n={d.n}, {d.wins}-{d.losses})"


def _pd(d: Paired) -> dict[str, Any]:
    return {"mean": d.mean, "lo": d.lo, "hi": d.hi, "n": d.n, "wins": d.wins, "losses": d.losses, "sign_p": d.sign_p}


class Table:
    """Records indexed by (width, sparsity, step, init, detector) -> {seed: record}."""

    def __init__(self, records: Iterable[TicketRecord]):
        self.by: dict[tuple[Any, ...], dict[int, TicketRecord]] = defaultdict(dict)
        self.kinds: dict[str, str] = {}
        for r in records:
            self.by[(r.width, r.sparsity, r.detection_step, r.init_mode, r.detector.name)][r.seed] = r
            self.kinds[r.detector.name] = r.detector.kind

    def get(self, width: int, sparsity: float, step: int, init: str, det: str) -> dict[int, TicketRecord]:
        return self.by.get((width, sparsity, step, init, det), {})

    def detectors(self, width: int, sparsity: float, step: int, init: str, kinds: tuple[str, ...]) -> list[str]:
        return sorted(k[4] for k in self.by if k[:4] == (width, sparsity, step, init) and self.kinds[k[4]] in kinds)

    def main_group(self) -> tuple[int, float, int] | None:
        """(width, sparsity, step) with all three init modes and the most records (ties: smallest width, step)."""
        count: dict[tuple[int, float, int], set[str]] = defaultdict(set)
        size: dict[tuple[int, float, int], int] = defaultdict(int)
        for (w, s, e, init, _), recs in self.by.items():
            if s > 0:
                count[(w, s, e)].add(init)
                size[(w, s, e)] += len(recs)
        full = [g for g, inits in count.items() if len(inits) == 3]
        return min(full, key=lambda g: (-size[g], g[0], g[2])) if full else None


def paired(a: dict[int, TicketRecord], b: dict[int, TicketRecord], key: str, where: str = "metrics") -> Paired:
    """a - b over the seeds both have, for metric `key` (where: "metrics" or "tickets")."""
    seeds = sorted(set(a) & set(b))
    return compare([getattr(a[s], where).get(key) for s in seeds], [getattr(b[s], where).get(key) for s in seeds])


def _nan(x: Any) -> float:
    return math.nan if x is None else float(x)


def evaluate_claims(records: Iterable[TicketRecord]) -> list[Claim]:
    t = Table(records)
    main = t.main_group()
    return [claim1(t, main), claim2(t, main), claim3(t, main), claim4(t, main), claim5(t, main), claim6(t, main)]


def claim1(t: Table, main: tuple[int, float, int] | None) -> Claim:
    c = Claim(1, "Family recall is consistently higher than same-site recall (Fig. 17).",
              "At the main group, for every detector and init mode: the paired 95% CI of family - same-site recall "
              "lies above 0. (Family >= same-site holds by definition; the claim is that it is strictly higher.)")
    if main is None:
        return c
    w, s, e = main
    rows = {}
    for init in ("rewind-0", "rewind-e", "fresh"):
        for det in t.detectors(w, s, e, init, ("feature", "weight", "control", "reference")):
            recs = t.get(w, s, e, init, det)
            seeds = sorted(recs)
            d = compare([recs[x].tickets.get("family_recall") for x in seeds],
                        [recs[x].tickets.get("same_site_recall") for x in seeds])
            rows[f"{det}/{init}"] = d
    above = [k for k, d in rows.items() if d.lo > 0]
    c.numbers = {"main": list(main), "groups": {k: _pd(d) for k, d in rows.items()}, "above": len(above)}
    gaps = [d.mean for d in rows.values()]
    c.status = ("reproduced" if len(above) == len(rows) else "partly reproduced" if above else "not reproduced")
    c.summary = (f"family - same-site recall > 0 (CI) in {len(above)}/{len(rows)} detector × init groups; "
                 f"mean gap {min(gaps):+.2f} to {max(gaps):+.2f}")
    return c


def claim2(t: Table, main: tuple[int, float, int] | None) -> Claim:
    c = Claim(2, "Feature-space probes beat weight-space detectors on exact code recovery (and accuracy) (abstract).",
              "At the main group, rewind to θ0: the feature-space detector with the most exact codes (by mean) against "
              "every weight-space detector, paired over seeds on exact codes; reproduced if every CI lies above 0. "
              "The same on balanced accuracy is reported beside it.")
    if main is None:
        return c
    w, s, e = main
    feats = t.detectors(w, s, e, "rewind-0", ("feature",))
    weights = t.detectors(w, s, e, "rewind-0", ("weight",))
    if not feats or not weights:
        return c
    mean = lambda det, key, where: mean_ci([_nan(getattr(r, where).get(key))  # noqa: E731
                                            for r in t.get(w, s, e, "rewind-0", det).values()])[0]
    out: dict[str, Any] = {"main": list(main)}
    verdicts = {}
    for key, where in (("exact_codes", "tickets"), ("bal_acc", "metrics")):
        best = max(feats, key=lambda f: mean(f, key, where))
        diffs = {wd: paired(t.get(w, s, e, "rewind-0", best), t.get(w, s, e, "rewind-0", wd), key, where)
                 for wd in weights}
        out[key] = {"feature": best, "against": {wd: _pd(d) for wd, d in diffs.items()}}
        verdicts[key] = (best, diffs)
    c.numbers = out
    best, diffs = verdicts["exact_codes"]
    beaten = [wd for wd, d in diffs.items() if d.lo > 0]
    lost = [wd for wd, d in diffs.items() if d.hi < 0]
    c.status = "reproduced" if len(beaten) == len(diffs) else ("partly reproduced" if beaten else "not reproduced")
    abest, adiffs = verdicts["bal_acc"]
    abeaten = [wd for wd, d in adiffs.items() if d.lo > 0]
    c.summary = (f"exact codes: {best} beats {len(beaten)}/{len(diffs)} weight-space detectors"
                 + (f" (not: {', '.join(sorted(set(diffs) - set(beaten)))}" + (f"; {', '.join(lost)} better" if lost
                                                                                else "") + ")"
                    if len(beaten) < len(diffs) else "")
                 + f"; balanced accuracy: {abest} beats {len(abeaten)}/{len(adiffs)}")
    return c


def claim3(t: Table, main: tuple[int, float, int] | None) -> Claim:
    c = Claim(3, "Feature-space detectors are competitive early; checkpoint magnitude catches up later (Fig. 26).",
              f"Rewind to θ0, balanced accuracy, gap = {STATIC} - {MAGNITUDE} per seed. Competitive early: at the "
              "earliest detection step > 0 the gap's CI upper end is >= 0 (not significantly worse). Catches up: "
              "gap(earliest) - gap(latest) has a CI above 0.")
    if main is None:
        return c
    w, s, _ = main
    steps = sorted({k[2] for k in t.by if k[0] == w and k[1] == s and k[2] > 0 and k[3] == "rewind-0"
                    and k[4] in (STATIC, MAGNITUDE)})
    steps = [e for e in steps if t.get(w, s, e, "rewind-0", STATIC) and t.get(w, s, e, "rewind-0", MAGNITUDE)]
    if len(steps) < 2:
        return c
    gaps = {e: paired(t.get(w, s, e, "rewind-0", STATIC), t.get(w, s, e, "rewind-0", MAGNITUDE), "bal_acc")
            for e in steps}
    early, late = steps[0], steps[-1]
    seeds = sorted(set(t.get(w, s, early, "rewind-0", STATIC)) & set(t.get(w, s, late, "rewind-0", STATIC)))

    def gap(e: int, seed: int) -> float:
        return (t.get(w, s, e, "rewind-0", STATIC)[seed].metrics["bal_acc"]  # type: ignore[operator]
                - t.get(w, s, e, "rewind-0", MAGNITUDE)[seed].metrics["bal_acc"])

    closing = compare([gap(early, x) for x in seeds], [gap(late, x) for x in seeds])
    competitive = gaps[early].hi >= 0 if not math.isnan(gaps[early].hi) else False
    catches_up = closing.lo > 0
    c.numbers = {"steps": steps, "gap": {str(e): _pd(d) for e, d in gaps.items()}, "closing": _pd(closing)}
    c.status = ("reproduced" if competitive and catches_up else
                "partly reproduced" if competitive or catches_up else "not reproduced")
    c.summary = (f"gap {STATIC} - {MAGNITUDE}: " + ", ".join(f"step {e}: {gaps[e].mean:+.3f}" for e in steps)
                 + f"; early gap {_fmt(gaps[early])}; gap(step {early}) - gap(step {late}) {_fmt(closing)}")
    return c


def claim4(t: Table, main: tuple[int, float, int] | None) -> Claim:
    c = Claim(4, "The dense-final oracle is strongest under rewind and loses its edge under fresh init (Fig. 23).",
              f"Main group, balanced accuracy. Edge = {ORACLE} - the best ranked detector (by mean, feature, weight or "
              "control) of that init mode, per seed. Strongest under rewind: edge CI above 0 (rewind-0 and rewind-e "
              "separately). Loses its edge: edge(rewind) - edge(fresh) has a CI above 0.")
    if main is None or not t.get(*main, "fresh", ORACLE):
        return c
    w, s, e = main

    def edges(init: str) -> tuple[str, dict[int, float]]:
        ranked = t.detectors(w, s, e, init, ("feature", "weight", "control"))
        best = max(ranked, key=lambda d: mean_ci([_nan(r.metrics["bal_acc"]) for r in t.get(w, s, e, init, d).values()])[0])
        o, b = t.get(w, s, e, init, ORACLE), t.get(w, s, e, init, best)
        return best, {x: _nan(o[x].metrics["bal_acc"]) - _nan(b[x].metrics["bal_acc"]) for x in sorted(set(o) & set(b))}

    out: dict[str, Any] = {"main": list(main)}
    fresh_best, fresh = edges("fresh")
    out["fresh"] = {"best": fresh_best, "edge": _pd(mean_diff(fresh))}
    parts = []
    ok_strong, ok_loses = [], []
    for init in ("rewind-0", "rewind-e"):
        if not t.get(w, s, e, init, ORACLE):
            continue
        best, ed = edges(init)
        seeds = sorted(set(ed) & set(fresh))
        strong = mean_diff(ed)
        loses = compare([ed[x] for x in seeds], [fresh[x] for x in seeds])
        out[init] = {"best": best, "edge": _pd(strong), "edge_minus_fresh": _pd(loses)}
        ok_strong.append(strong.lo > 0)
        ok_loses.append(loses.lo > 0)
        parts.append(f"{init}: edge over {best} {_fmt(strong)}, minus fresh edge {_fmt(loses)}")
    c.numbers = out
    hits = sum(ok_strong) + sum(ok_loses)
    c.status = ("reproduced" if hits == len(ok_strong) + len(ok_loses) else
                "partly reproduced" if hits else "not reproduced")
    c.summary = "; ".join(parts) + f"; fresh: edge over {fresh_best} {_fmt(mean_diff(fresh))}"
    return c


def mean_diff(values: dict[int, float]) -> Paired:
    """A one-sample 'paired' difference against 0 (values per seed)."""
    v = [values[k] for k in sorted(values)]
    return compare(v, [0.0] * len(v))


def claim5(t: Table, main: tuple[int, float, int] | None) -> Claim:
    c = Claim(5, "Survival of oracle-supported sites falls with initial distance and with row load (Fig. 5).",
              f"Oracle-supported sites [reading] = the dense final model's exact codes (the oracle mask is read off "
              f"that model); survival = the {ORACLE} ticket (rewind to θ0, main group) has an exact code on the same "
              "site. Per seed: survival rate of sites near a code at θ0 (d0 <= 1) minus far (d0 >= 2), and of rows "
              "with load at θ0 <= the pooled median minus above it; reproduced if both paired CIs lie above 0.")
    if main is None:
        return c
    recs = t.get(*main, "rewind-0", ORACLE)
    if not recs:
        return c
    pooled = [row for r in recs.values() for row in r.sites]
    if not pooled:
        return c
    loads = sorted(row[3] for row in pooled)
    median = loads[len(loads) // 2]

    def split(pred: Any) -> tuple[list[float], list[float]]:
        a, b = [], []
        for seed in sorted(recs):
            rows = recs[seed].sites
            yes, no = [r[4] for r in rows if pred(r)], [r[4] for r in rows if not pred(r)]
            a.append(sum(yes) / len(yes) if yes else math.nan)
            b.append(sum(no) / len(no) if no else math.nan)
        return a, b

    near, far = split(lambda r: r[2] <= 1)
    light, heavy = split(lambda r: r[3] <= median)
    by_distance, by_load = compare(near, far), compare(light, heavy)
    rate = {dist: [r[4] for r in pooled if r[2] == dist] for dist in range(5)}
    c.numbers = {"sites": len(pooled), "load_median": median, "distance": _pd(by_distance), "load": _pd(by_load),
                 "survival_by_d0": {str(k): [sum(v) / len(v), len(v)] for k, v in rate.items() if v}}
    hits = (by_distance.lo > 0) + (by_load.lo > 0)
    c.status = "reproduced" if hits == 2 else "partly reproduced" if hits else "not reproduced"
    c.summary = (f"{len(pooled)} sites; survival near - far at θ0 {_fmt(by_distance)}; light - heavy rows "
                 f"(load <= {median}) {_fmt(by_load)}; pooled survival by d0: "
                 + ", ".join(f"{k}: {v[0]:.2f} (n={v[1]})" for k, v in c.numbers["survival_by_d0"].items()))
    return c


def claim6(t: Table, main: tuple[int, float, int] | None) -> Claim:
    c = Claim(6, "A random 32×16 net at 50% W1 sparsity beats the dense 16×16 (Fig. 6).",
              "Random mask at width 32, sparsity 0.5, rewind to θ0 against the dense reference at width 16 (retrained "
              "from θ0: the dense model itself), paired by seed on balanced accuracy (BCE reported too); reproduced "
              "if the CI lies above 0.")
    wide = {k: v for k, v in t.by.items() if k[0] == 32 and k[1] == 0.5 and k[3] == "rewind-0" and k[4] == "random"}
    dense = {k: v for k, v in t.by.items() if k[0] == 16 and k[1] == 0.0 and k[3] == "rewind-0" and k[4] == "dense"}
    if not wide or not dense:
        return c
    a, b = next(iter(wide.values())), next(iter(dense.values()))
    acc, bce = paired(a, b, "bal_acc"), paired(b, a, "bce")
    c.numbers = {"bal_acc": _pd(acc), "bce_dense_minus_random": _pd(bce),
                 "random32": mean_ci([_nan(r.metrics["bal_acc"]) for r in a.values()])[0],
                 "dense16": mean_ci([_nan(r.metrics["bal_acc"]) for r in b.values()])[0]}
    c.status = "reproduced" if acc.lo > 0 else "not reproduced"
    c.summary = (f"balanced accuracy random 32×16 @ 50% {c.numbers['random32']:.5f} vs dense 16×16 "
                 f"{c.numbers['dense16']:.5f}: difference {_fmt(acc, 5)}; BCE dense - random {_fmt(bce)}")
    return c
