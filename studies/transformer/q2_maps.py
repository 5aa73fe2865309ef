"""Which token-to-hidden map carries the Bloom code? Post-hoc tests on saved transformers.

    python studies/transformer/q2_maps.py --runs conf_A_s012 conf_A_s345
    python studies/transformer/q2_maps.py --layer 1 --runs L2_A_s012 --name q2_L2_layer1

Loads studies/transformer/results/weights/<run>_seed<s>.pt (run.py --save-weights) into the sparsebench
transformer and, on task.held_out(8192), for layer 0:
  1. the codes (minority clusters) of D = W_E W_in, A = W_E W_OV W_in, S = D + A, per head
     A_h = W_E W_V^h W_O^h W_in: R^2, Jaccard between codes;
  2. where the D and A codes disagree: for an entry (t, j) in one code only, how often unit j
     is OFF in held-out samples that contain t (the complemented code: a hash bit switches the
     unit off), against entries in both codes and entries in neither;
  3. position: for entries of the A code, P(unit off | t is the last token) and
     P(unit off | t elsewhere), and how the variance of the MLP input splits between the direct
     term (w_last D[t_last]) and the attention term;
  4. the effective weights: D ~ beta A, mean attention of the last query on itself and on others;
  5. M_emp: a map-free per-token map, the least-squares fit pre[b] ~ sum_s w_s M[t_s] + c of the MLP
     input at the readout position over the held-out samples, its code, and M_emp ~ a D + b A;
  6. each map's hidden-unit test (precision/recall/MCC with the union of the k hashes) and the same
     with the last token's hash alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HELD_OUT, RESULTS, RunConfig, jaccard, save, task_of  # noqa: E402

from sparsebench.build import make_model  # noqa: E402
from sparsebench.stats import two_means  # noqa: E402


def code_of(M: torch.Tensor) -> tuple[torch.Tensor, float, int]:
    s = two_means(M)
    return s.minority_mask(M), s.r2, (1 if s.minority_is_high else -1)


def empirical_map(tokens: torch.Tensor, weights: torch.Tensor, pre: torch.Tensor, V: int) -> tuple[torch.Tensor, float]:
    """Least squares pre[b] ~ sum_s w_bs M[t_bs] + c over the held-out samples: (M [V, m], R^2 of the fit).

    A map-free estimate of each token's (position-averaged) contribution to the MLP input."""
    B = tokens.shape[0]
    X = torch.zeros(B, V + 1, dtype=torch.float64)
    X.scatter_add_(1, tokens, weights.double())
    X[:, V] = 1.0
    sol = torch.linalg.lstsq(X, pre).solution  # [V + 1, m]
    resid = pre - X @ sol
    r2 = 1 - (resid ** 2).sum().item() / ((pre - pre.mean(0)) ** 2).sum().item()
    return sol[:V], r2


@torch.no_grad()
def study_model(model, task, held, layer: int = 0) -> dict:
    sd = model.state_dict()
    E = sd["embed.weight"].double()
    p = f"blocks.{layer}."
    W_in = sd[p + "mlp.in.weight"].double().T
    Wv = sd[p + "attn.v.weight"].double().T  # [d, H*dh]
    Wo = sd[p + "attn.o.weight"].double().T  # [H*dh, d]
    H, dh = model.config.n_heads, model.config.d_head
    D = E @ W_in
    A = E @ Wv @ Wo @ W_in
    maps = {"D": D, "A": A, "S": D + A}
    names = [p + "mlp.hook_pre", p + "mlp.hook_post", p + "attn.hook_pattern", p + "hook_resid_pre", p + "hook_attn_out"]
    logits, cache = model.run_with_cache(**held.inputs, names_filter=lambda n: n in names)
    pre_act = cache[p + "mlp.hook_pre"][:, -1].double()
    M_emp, lin_r2 = empirical_map(held.inputs["tokens"], held.inputs["weights"], pre_act, E.shape[0])
    maps["M_emp"] = M_emp
    if H > 1:
        for h in range(H):
            sl = slice(h * dh, (h + 1) * dh)
            maps[f"A_head{h}"] = E @ Wv[:, sl] @ Wo[sl] @ W_in
    codes, out = {}, {"maps": {}}
    for name, M in maps.items():
        c, r2, sign = code_of(M)
        codes[name] = c
        out["maps"][name] = {"r2": r2, "sign": sign, "h_mean": c.sum(1).float().mean().item(), "norm": M.norm().item()}
    out["jaccard"] = {f"{a}-{b}": jaccard(codes[a], codes[b])
                      for a, b in (("D", "A"), ("D", "S"), ("A", "S"), ("M_emp", "D"), ("M_emp", "A"), ("M_emp", "S"))}
    out["empirical_linear_r2"] = lin_r2  # how much of the MLP input a per-token linear model explains
    # M_emp ~ a D + b A (+ c): theory for 1 layer: a = P(token is last) = 1/k, b = its mean attention = 1/k
    Y = M_emp.reshape(-1)
    Xr = torch.stack([D.reshape(-1), A.reshape(-1), torch.ones_like(Y)], 1)
    coef = torch.linalg.lstsq(Xr, Y.unsqueeze(1)).solution.squeeze(1)
    fit = Xr @ coef
    out["M_emp_on_D_A"] = {"a_D": coef[0].item(), "b_A": coef[1].item(),
                           "r2": 1 - ((Y - fit) ** 2).sum().item() / ((Y - Y.mean()) ** 2).sum().item()}
    out["corr_M_emp"] = {n: torch.corrcoef(torch.stack([Y, maps[n].reshape(-1)]))[0, 1].item() for n in ("D", "A", "S")}
    post = cache[p + "mlp.hook_post"][:, -1].double()
    umax = post.max(0).values
    off = ~((post > 1e-3 * umax) & (umax > 0))  # [B, m]
    tokens = held.inputs["tokens"]  # [B, k]
    B, k = tokens.shape
    V, m = D.shape
    # counts[t, j] = number of samples containing t where unit j is off; n_t = samples containing t
    onehot = torch.zeros(B, V, dtype=torch.float64).scatter_(1, tokens, 1.0)
    n_t = onehot.sum(0)  # [V]
    off_given_t = (onehot.T @ off.double()) / n_t.clamp_min(1).unsqueeze(1)  # [V, m]
    seen = (n_t > 0).unsqueeze(1).expand(V, m)
    from sparsebench.mechanisms.bloom import union
    from common import _prf
    for name, c in codes.items():
        U = union(c, held)
        pred = ~U if out["maps"][name]["sign"] < 0 else U
        out["maps"][name]["activity"] = _prf(pred, ~off)
        # the same test with the LAST token's hash alone instead of the union of all k hashes
        h_last = c[held.inputs["tokens"][:, -1]]  # [B, m]
        out["maps"][name]["activity_last_token_only"] = _prf(~h_last if out["maps"][name]["sign"] < 0 else h_last, ~off)
    cD, cA = codes["D"], codes["A"]
    groups = {"both": cD & cA, "A_only": cA & ~cD, "D_only": cD & ~cA, "neither": ~cD & ~cA}
    out["p_off_given_token"] = {g: {"entries": int((mask & seen).sum()),
                                    "p_off": off_given_t[mask & seen].mean().item() if (mask & seen).any() else None}
                                for g, mask in groups.items()}
    out["p_off_overall"] = off.double().mean().item()
    # position: entries of the A code, token last vs elsewhere
    last = torch.zeros(B, V, dtype=torch.float64).scatter_(1, tokens[:, -1:], 1.0)
    other = onehot - last
    p_last = (last.T @ off.double()) / last.sum(0).clamp_min(1).unsqueeze(1)
    p_other = (other.T @ off.double()) / other.sum(0).clamp_min(1).unsqueeze(1)
    ok_last = (last.sum(0) > 0).unsqueeze(1).expand(V, m)
    out["p_off_A_code_by_position"] = {"last": p_last[cA & ok_last].mean().item(), "other": p_other[cA & seen].mean().item()}
    # effective weights
    pattern = cache[p + "attn.hook_pattern"][:, :, -1].double()  # [B, H, k]
    Dc, Ac = D - D.mean(), A - A.mean()
    beta = ((Dc * Ac).sum() / (Ac ** 2).sum()).item()
    out["beta_D_on_A"] = beta
    out["attn_last_self"] = pattern[..., -1].mean().item()
    out["attn_last_other"] = pattern[..., :-1].mean().item()
    out["eff_last_over_other"] = (beta + out["attn_last_self"]) / out["attn_last_other"]
    d_pre = cache[p + "hook_resid_pre"][:, -1].double() @ W_in
    a_pre = cache[p + "hook_attn_out"][:, -1].double() @ W_in
    vd, va = d_pre.var(0).sum().item(), a_pre.var(0).sum().item()
    cov = ((d_pre - d_pre.mean(0)) * (a_pre - a_pre.mean(0))).sum().item() / (B - 1)
    tot = vd + va + 2 * cov
    out["pre_var_share"] = {"direct": vd / tot, "attn": va / tot, "2cov": 2 * cov / tot}
    # does the attention term alone (with the bias) already decide the units? ReLU gate agreement
    b_in = sd[p + "mlp.in.bias"].double()
    full = d_pre + a_pre + b_in
    attn_only = a_pre + b_in + d_pre.mean(0)  # the direct term replaced by its mean
    direct_only = d_pre + b_in + a_pre.mean(0)
    out["gate_agreement"] = {"attn_term_only": ((attn_only > 0) == (full > 0)).double().mean().item(),
                             "direct_term_only": ((direct_only > 0) == (full > 0)).double().mean().item()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--name", default="q2_maps")
    ap.add_argument("--layer", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = []
    for run in args.runs:
        with open(os.path.join(RESULTS, run + ".json")) as f:
            meta = json.load(f)
        cfg = RunConfig(**meta["config"])
        task = task_of(cfg)
        held = task.held_out(HELD_OUT)
        for seed in meta["seeds"]:
            path = os.path.join(RESULTS, "weights", f"{run}_seed{seed}.pt")
            model = make_model("transformer", cfg.model_cfg(), task)
            model.load_state_dict(torch.load(path), strict=True)
            model.eval()
            r = study_model(model, task, held, args.layer)
            r.update(run=run, seed=seed, layer=args.layer)
            results.append(r)
            mp = r["maps"]
            print(f"{run} seed {seed} layer {args.layer}: R2/MCC " + " ".join(
                f"{n} {v['r2']:.3f}/{v['activity']['mcc']:.3f}" for n, v in mp.items())
                  + f" | lin R2 {r['empirical_linear_r2']:.3f} M_emp~aD+bA {r['M_emp_on_D_A']} corr {r['corr_M_emp']}"
                  + f" | Jaccard {r['jaccard']} | P(off|t) " +
                  ", ".join(f"{g} {v['p_off']:.3f} (n={v['entries']})" if v["p_off"] is not None else f"{g} -"
                            for g, v in r["p_off_given_token"].items())
                  + f" | overall {r['p_off_overall']:.3f} | A-code off: last {r['p_off_A_code_by_position']['last']:.3f}"
                  f" other {r['p_off_A_code_by_position']['other']:.3f} | beta {r['beta_D_on_A']:.3f} "
                  f"P self {r['attn_last_self']:.3f} other {r['attn_last_other']:.3f} "
                  f"eff last/other {r['eff_last_over_other']:.2f} | var {r['pre_var_share']} | gate {r['gate_agreement']}",
                  flush=True)
    print("saved", save(args.name, {"runs": args.runs, "results": results}))


if __name__ == "__main__":
    main()
