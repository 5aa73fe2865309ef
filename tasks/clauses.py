"""`clause-dnf`: Boolean clause tasks, the second seed's family (docs/science.md §7; ../shared/TICKETS.md).

Bebchuk & Shavit ("Toy Combinatorial Interpretability Models Reveal Lottery Tickets in
Early Feature Space") train two-layer ReLU networks on clause-structured Boolean
features [paper]. Their body is not available to us; every choice below that the
abstract and captions do not fix is our [reading] and a config field:

    x ∈ {0,1}^n, x_i ~ Bernoulli(x_prob)                        [reading: n = 16, x_prob = 1/2]
    K clauses, each over k distinct variables with a sign template  [reading: K = 16, k = 4]
        "4P"   = all k literals positive                           [paper: names 4P and 3N1P]
        "3N1P" = three negated literals and one positive one
    each clause is planted (its literals set so it holds) with probability p_plant,
    clauses in a random order per sample (a later one overwrites shared variables);
    y_c = [clause c holds on the final x], one logit per clause; loss BCE summed over clauses.

The clauses (variables, template, which position is positive) come from
`structure_seed`: they belong to the task, not to a training seed.

Sampling is vectorised: a variable's final value is the literal of the last planted
clause (in the sample's order) that contains it, else its Bernoulli draw; "last" is
the largest of per-clause uniform priorities, so no loop over clauses or samples.

Family "clauses": inputs `x` ([batch, n] float 0/1), targets `y` ([batch, K] float 0/1).
Mechanisms and probes of this family may rely on `variables` ([K, k] long), `signs`
([K, k] ±1: the template τ_c on the clause's variables, in `variables` order),
`template_names` and `labels(x)`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from sparsebench.api import Batch, Task
from sparsebench.config import check

TEMPLATE = re.compile(r"^(?:(\d+)N)?(?:(\d+)P)?$")  # "4P", "3N1P", "2N2P", "4N"


def parse_template(name: str, k: int) -> tuple[int, int]:
    """(negated, positive) literal counts of a template name such as "3N1P"; ValueError if malformed."""
    m = TEMPLATE.match(name)
    if not name or m is None:
        raise ValueError(f"template {name!r} is not of the form <a>N<b>P (e.g. 4P, 3N1P)")
    neg, pos = int(m.group(1) or 0), int(m.group(2) or 0)
    if neg + pos != k:
        raise ValueError(f"template {name!r} has {neg + pos} literals, not k={k}")
    return neg, pos


@dataclass(frozen=True)
class ClauseDNFConfig:
    n: int = 16  # input variables x ∈ {0,1}^n [reading]
    K: int = 16  # clauses = output logits [paper: 8 and 16 at H = 16]
    k: int = 4  # distinct variables per clause [reading]
    templates: tuple[str, ...] = ("4P", "3N1P")  # sign templates, "<negated>N<positive>P" [paper names these two]
    template_weights: tuple[float, ...] = (0.5, 0.5)  # share of clauses per template (largest remainder) [reading]
    p_plant: float = 0.3  # probability that a clause is planted in a sample [reading]
    x_prob: float = 0.5  # P(x_i = 1) before planting [reading]
    structure_seed: int = 0  # draws the clauses: part of the task, not of a training run

    def __post_init__(self) -> None:
        w = "task"
        check(w, self.n >= 1, "n", f"must be at least 1 (got {self.n})")
        check(w, self.K >= 1, "K", f"must be at least 1 (got {self.K})")
        check(w, 1 <= self.k <= self.n, "k", f"must be in [1, n={self.n}] (got {self.k})")
        check(w, len(self.templates) >= 1, "templates", "needs at least one template")
        for t in self.templates:
            try:
                parse_template(t, self.k)
            except ValueError as e:
                check(w, False, "templates", str(e))
        check(w, len(set(self.templates)) == len(self.templates), "templates", f"repeats one: {list(self.templates)}")
        check(w, len(self.template_weights) == len(self.templates), "template_weights",
              f"needs one weight per template ({len(self.templates)}), got {len(self.template_weights)}")
        check(w, all(x >= 0 for x in self.template_weights) and sum(self.template_weights) > 0, "template_weights",
              f"must be >= 0 with a positive sum (got {list(self.template_weights)})")
        check(w, 0 <= self.p_plant <= 1, "p_plant", f"must be in [0, 1] (got {self.p_plant})")
        check(w, 0 <= self.x_prob <= 1, "x_prob", f"must be in [0, 1] (got {self.x_prob})")
        check(w, self.structure_seed >= 0, "structure_seed", f"must be >= 0 (got {self.structure_seed})")


def template_counts(K: int, weights: tuple[float, ...]) -> list[int]:
    """Clauses per template: K split by `weights` with the largest-remainder rule (ties: earlier template)."""
    total = sum(weights)
    exact = [K * w / total for w in weights]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: K - sum(counts)]:
        counts[i] += 1
    return counts


class ClauseDNF(Task):
    """K Boolean clauses over n variables; predict which hold (multi-label)."""

    Config = ClauseDNFConfig
    version = 1
    family = "clauses"
    # bal_acc: mean of TPR and TNR pooled over every (sample, clause) bit (most labels are 0, so plain
    # bit accuracy flatters); exact: all K bits right.
    metric_directions = {"bal_acc": "higher", "bit_acc": "higher", "exact": "higher", "bce": "lower"}

    def __init__(self, config: ClauseDNFConfig):
        super().__init__(config)
        c = config
        g = torch.Generator().manual_seed(c.structure_seed)
        names = [t for t, m in zip(c.templates, template_counts(c.K, c.template_weights)) for _ in range(m)]
        names = [names[i] for i in torch.randperm(c.K, generator=g).tolist()]  # which clause gets which template
        variables, signs, seen = [], [], set()
        for name in names:
            neg, _ = parse_template(name, c.k)
            for _ in range(10_000):  # redraw a clause identical to an earlier one (same variables and signs)
                v = torch.randperm(c.n, generator=g)[: c.k].sort().values
                s = torch.ones(c.k, dtype=torch.long)
                s[torch.randperm(c.k, generator=g)[:neg]] = -1  # which positions are negated
                key = (tuple(v.tolist()), tuple(s.tolist()))
                if key not in seen:
                    break
            else:  # pragma: no cover - only for tiny n where K distinct clauses do not exist
                raise ValueError(f"cannot draw {c.K} distinct clauses over n={c.n} variables")
            seen.add(key)
            variables.append(v)
            signs.append(s)
        self.template_names: tuple[str, ...] = tuple(names)  # template of each clause
        self.variables = torch.stack(variables)  # [K, k] long: each clause's variables, ascending
        self.signs = torch.stack(signs).float()  # [K, k] ±1: the template τ_c on those variables
        self.literal = (self.signs > 0).float()  # [K, k]: the value each variable takes when the clause holds
        incidence = torch.zeros(c.K, c.n, dtype=torch.bool)
        incidence[torch.arange(c.K).unsqueeze(1), self.variables] = True
        self.incidence = incidence  # [K, n]: clause c contains variable i
        values = torch.zeros(c.K, c.n)
        values[torch.arange(c.K).unsqueeze(1), self.variables] = self.literal
        self.plant_values = values  # [K, n]: x_i when clause c is planted (where incidence)
        signed = torch.zeros(c.K, c.n)
        signed[torch.arange(c.K).unsqueeze(1), self.variables] = self.signs
        # Literals satisfied by x = x @ signed.T + (number of negated literals): clause c holds iff that is k.
        self._signed_t = signed.T.contiguous()  # [n, K]
        self._negated = (self.signs < 0).sum(1).float()  # [K]
        self._incidence_t = incidence.T.float().contiguous()  # [n, K]
        self._plant_flat = values.T.contiguous().reshape(-1)  # [n * K]: plant_values[c, i] at i * K + c

    @property
    def n_inputs(self) -> int:
        return self.config.n

    @property
    def n_outputs(self) -> int:
        return self.config.K

    def labels(self, x: Tensor) -> Tensor:
        """y_c = [clause c holds on x]: x [..., n] 0/1 -> [..., K] float 0/1 (exact: small integer sums)."""
        satisfied = x @ self._signed_t.to(x.device, x.dtype) + self._negated.to(x.device, x.dtype)
        return (satisfied == self.config.k).to(x.dtype)

    def sample(self, n: int, *, generator: torch.Generator, device: torch.device | str = "cpu") -> Batch:
        c = self.config
        # One draw per batch: n for x, K to plant, K for the planting order. Drawn on the generator's
        # device and moved, so a CPU generator gives the same samples on any device.
        u = torch.rand(n, c.n + 2 * c.K, generator=generator, device=generator.device).to(device)
        x0 = (u[:, : c.n] < c.x_prob).float()  # [n, vars]
        planted = u[:, c.n: c.n + c.K] < c.p_plant  # [n, K]
        # priority + 1: in (1, 2) for a planted clause (its order), 0 for one that is not planted.
        priority = (u[:, c.n + c.K:] + 1) * planted
        # The last planted clause (highest priority) containing a variable sets it: [n, vars, K] -> [n, vars].
        last, which = (priority.unsqueeze(1) * self._incidence_t.to(device)).max(-1)
        offsets = torch.arange(c.n, device=device) * c.K
        forced = self._plant_flat.to(device).take(which + offsets)  # plant_values[which[b, i], i]
        x = torch.where(last > 0, forced, x0)
        return Batch({"x": x}, self.labels(x))

    def loss(self, logits: Tensor, batch: Batch) -> Tensor:
        """BCE summed over clauses: logits [..., batch, K] -> [..., batch]."""
        return F.binary_cross_entropy_with_logits(logits.float(), batch.target, reduction="none").sum(-1)

    def output_kl(self, p_logits: Tensor, q_logits: Tensor) -> Tensor:
        """KL between the K independent Bernoulli outputs of two logit sets, summed over clauses: [..., batch].

        (The causal probe's `kl_to_clean` uses it: these outputs are not one softmax.)"""
        lp1, lp0 = F.logsigmoid(p_logits.double()), F.logsigmoid(-p_logits.double())
        lq1, lq0 = F.logsigmoid(q_logits.double()), F.logsigmoid(-q_logits.double())
        return (lp1.exp() * (lp1 - lq1) + lp0.exp() * (lp0 - lq0)).sum(-1)

    @torch.no_grad()
    def metrics(self, logits: Tensor, batch: Batch) -> dict[str, float]:
        """Balanced accuracy, bit accuracy, exact-vector accuracy and BCE over the batch (no instance dim)."""
        return {k: float(v) for k, v in zip(self.metric_directions, self.metrics_stacked(logits, batch).unbind(-1))}

    @torch.no_grad()
    def metrics_stacked(self, logits: Tensor, batch: Batch) -> Tensor:
        """The metrics for leading instance dims too: logits [..., batch, K] -> [..., 4] in metric order.

        bal_acc = (TPR + TNR) / 2 pooled over all bits; a class absent from the batch drops out (its
        rate is undefined) and the other rate is used alone.
        """
        y = batch.target.bool()
        pred = logits > 0
        right = pred == y
        pos, neg = y.sum((-2, -1)).float(), (~y).sum((-2, -1)).float()
        tpr = (right & y).sum((-2, -1)) / pos.clamp_min(1)
        tnr = (right & ~y).sum((-2, -1)) / neg.clamp_min(1)
        bal = torch.where((pos > 0) & (neg > 0), (tpr + tnr) / 2, torch.where(pos > 0, tpr, tnr))
        return torch.stack([bal, right.float().mean((-2, -1)), right.all(-1).float().mean(-1),
                            self.loss(logits, batch).mean(-1)], -1)
