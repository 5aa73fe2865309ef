"""The seed's phenomenon appears in a really trained mlp1 (docs/science.md §4, findings 1, 2 and 4).

Thresholds were set from measurements at this size (2 seeds, CPU): two-means R^2
of E @ W_in 0.969-0.975 (one Gaussian gives ~0.64), hash sizes ~8 of 64 units,
held-out top-k mass 0.81-0.82, KL 0.42-0.44. The margins leave room for seed
and platform noise, not for a missing mechanism.
"""

from __future__ import annotations

import torch

from sparsebench.stats import two_means


def test_hash_matrix_is_bimodal_with_sparse_hashes(post_models):
    for ck in post_models:
        M = (ck.model.W_E @ ck.model.W_in[0]).detach()  # [V, m]
        split = two_means(M.flatten())
        assert split.r2 > 0.93, f"seed {ck.seed}: E @ W_in not bimodal (R^2={split.r2:.3f})"
        # Whichever sign the hash takes, it is the minority cluster: a sparse code per token.
        hash_sizes = split.minority_mask(M).sum(-1).float()
        assert 4 <= hash_sizes.mean() <= 16, hash_sizes.mean()
        assert (hash_sizes > 0).float().mean() > 0.99, "almost every token must have a non-empty hash"
        # Control: the same statistic at initialisation is Gaussian-like.
        assert split.r2 - 0.64 > 0.25


def test_output_mask_is_the_transposed_hash(post_models):
    for ck in post_models:
        m = ck.model
        code_in = two_means((m.W_E @ m.W_in[0]).detach())
        code_out = two_means((m.W_out[0] @ m.W_U).detach())
        a = code_in.minority_mask((m.W_E @ m.W_in[0]).detach())  # [V, m]
        b = code_out.minority_mask((m.W_out[0] @ m.W_U).detach()).T  # [V, m]
        jaccard = (a & b).sum().item() / (a | b).sum().item()
        assert jaccard > 0.9, f"seed {ck.seed}: Jaccard {jaccard:.3f}"


def test_held_out_top_k_mass_is_high_and_false_positives_are_a_rare_cluster(post_spec, post_models):
    task = post_spec.make_task()
    held = task.held_out(8192)
    for ck in post_models:
        with torch.no_grad():
            logits = ck.model(**held.inputs)
        m = task.metrics(logits, held)
        assert m["topk_mass"] > 0.75 and m["kl"] < 0.55, m
        # Finding 4: top-k mass has a main cluster near the top and a separate low cluster.
        q = torch.softmax(logits, -1)
        mass = q.gather(-1, held.inputs["tokens"]).sum(-1)
        assert (mass > 0.7).float().mean() > 0.6
        assert ((mass > 0.3) & (mass < 0.5)).float().mean() < 0.15


def test_hidden_units_fire_on_the_complemented_union(post_spec, post_models):
    """Finding 3, with the sign trained nets choose: unit j is active iff j is NOT in the union."""
    from sparsebench import registry
    from sparsebench.probes import HiddenCode, Candidates

    task = post_spec.make_task()
    batch = task.held_out(2048)
    bloom = registry.mechanisms.get("bloom")(registry.mechanisms.get("bloom").Config())
    for ck in post_models:
        fitted = bloom.fit(ck.model, task, generator=torch.Generator().manual_seed(0))
        assert fitted.summary()["sign"] == -1  # the complemented code (SCIENCE.md §4)
        hc = HiddenCode().score(ck.model, fitted, task, batch)
        assert hc["precision"] > 0.97 and hc["recall"] > 0.97, hc
        # Finding 4: the model's false positives are the tokens whose hash the union covers.
        cand = Candidates().score(ck.model, fitted, task, batch)
        assert cand["fp_recall"] > 0.9, cand
