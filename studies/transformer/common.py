"""Shared pieces of the transformer Bloom study: config, batched trainer, analysis of trained models.

Training: `train_batched` trains one sparsebench `transformer` per seed with the
library's trainer: the library's init (seed_generator(seed, "init")), all seeds in
one `StackedTransformer` on each seed's own data stream (seed_generator(seed, "data")),
AdamW, linear warm-up + cosine to min_lr_frac. The trained weights come back as
TransformerLens models, and every measurement runs on those bridge models.

Analysis (`analyze`): held-out metrics (task.metrics on `task.held_out(8192)`),
and for each token-to-hidden map of each layer
    D = W_E W_in[l]                  (direct path)
    A = W_E W_OV[l] W_in[l]          (through attention; W_OV = sum_h W_V^h W_O^h)
    S = D + A                        (position-averaged contribution, times k: see STUDY.md)
the two-means R^2, the minority-cluster hash (size, sign), and how well
"unit active" (post > 1e-3 * the unit's max over the held-out batch) is predicted by
"unit not in U" (sign -1) / "unit in U" (sign +1), U = union of the k tokens' hashes:
precision, recall, MCC over all (sample, unit) pairs; plus the Bloom logit fit
(alpha, KL(model || softmax(-alpha * misses))) with that map's code.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from sparsebench.build import make_model, make_task
from sparsebench.mechanisms.bloom import fit_scale, misses, union
from sparsebench.stats import two_means
from sparsebench.training import TrainConfig, seed_generator, train

HELD_OUT = 8192
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


@dataclass
class RunConfig:
    # model (sparsebench `transformer`)
    d_model: int = 64
    n_heads: int = 1
    d_head: int = 64
    d_mlp: int = 64
    n_layers: int = 1
    init_scale: float = 1.0
    # training
    steps: int = 2000
    batch_size: int = 1024
    lr: float = 5e-3
    warmup: int = 100
    min_lr_frac: float = 0.0
    weight_decay: float = 0.0
    beta2: float = 0.999
    # task
    V: int = 1000
    k: int = 5

    def model_cfg(self) -> dict[str, Any]:
        return dict(d_model=self.d_model, n_heads=self.n_heads, d_head=self.d_head, d_mlp=self.d_mlp,
                    n_layers=self.n_layers, init_scale=self.init_scale)

    def train_cfg(self) -> TrainConfig:
        return TrainConfig(steps=self.steps, batch_size=self.batch_size, lr=self.lr, warmup=self.warmup,
                           min_lr_frac=self.min_lr_frac, weight_decay=self.weight_decay, beta2=self.beta2)


def add_args(parser: Any) -> None:
    for f in fields(RunConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)


def config_from_args(args: Any) -> RunConfig:
    return RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig)})


def task_of(cfg: RunConfig) -> Any:
    return make_task("topk-uniform", {"V": cfg.V, "k": cfg.k})


def init_models(cfg: RunConfig, task: Any, seeds: list[int]) -> list[Any]:
    return [make_model("transformer", cfg.model_cfg(), task, generator=seed_generator(s, "init")) for s in seeds]


def train_batched(cfg: RunConfig, seeds: list[int], *, progress: bool = False) -> tuple[list[Any], dict[str, Any]]:
    """Train one model per seed with the library's trainer (`sparsebench.training.train`): all seeds in one
    `StackedTransformer`, the fused step on the CPU, each seed on its own data stream; returns (the bridge
    models, info). (The study's original runs used a hand-written batched module, `tfast.py`, on the branch
    `tstudy`; the library's `StackedTransformer` is its successor, exact against the bridge: see README.md.)"""
    from sparsebench.context import RunContext

    task = task_of(cfg)
    ctx = RunContext.create("cpu", progress=progress)
    res = train(task, "transformer", cfg.model_cfg(), cfg.train_cfg(), seeds, ctx)
    info = {"seconds_train": res.seconds, "final_train_loss": res.final_loss, "threads": res.threads,
            "backend": res.backend}
    return res.models, info


# ----- analysis ------------------------------------------------------------------------------------


def _prf(pred: Tensor, actual: Tensor) -> dict[str, float]:
    pred, actual = pred.bool(), actual.bool()
    tp = float((pred & actual).sum())
    fp = float((pred & ~actual).sum())
    fn = float((~pred & actual).sum())
    tn = float((~pred & ~actual).sum())
    prec = tp / (tp + fp) if tp + fp else float("nan")
    rec = tp / (tp + fn) if tp + fn else float("nan")
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = (tp * tn - fp * fn) / den if den else float("nan")
    return {"precision": prec, "recall": rec, "mcc": mcc}


def map_report(M: Tensor, batch: Any, active: Tensor, logits: Tensor | None) -> dict[str, Any]:
    """Two-means fit of a token-to-hidden map M [V, m] and its prediction of hidden activity [B, m]."""
    M = M.detach().double()
    split = two_means(M)
    code = split.minority_mask(M)  # [V, m] bool
    sign = 1 if split.minority_is_high else -1
    sizes = code.sum(1).float()
    U = union(code, batch)  # [B, m]
    pred = U if sign > 0 else ~U
    out = {
        "r2": split.r2,
        "sign": sign,
        "h_mean": sizes.mean().item(),
        "h_std": sizes.std().item(),
        "minority_frac": code.float().mean().item(),
        "n_distinct": int(torch.unique(code.to(torch.uint8), dim=0).shape[0]),
        "n_empty": int((sizes == 0).sum()),
        "low_mean": split.low_mean,
        "high_mean": split.high_mean,
        "activity": _prf(pred, active),
        "mcc_not_in_U": _prf(~U, active)["mcc"],
    }
    if logits is not None:
        alpha, kl = fit_scale(logits, misses(code, U))
        out["alpha_fit"], out["kl_fit"] = alpha, kl
    out["_code"] = code
    return out


def jaccard(a: Tensor, b: Tensor) -> float:
    return float((a & b).sum()) / max(1.0, float((a | b).sum()))


@torch.no_grad()
def analyze(model: Any, task: Any, held: Any) -> dict[str, Any]:
    L = model.config.n_layers
    names = [f"blocks.{l}.{h}" for l in range(L)
             for h in ("mlp.hook_post", "attn.hook_pattern", "hook_resid_pre", "hook_attn_out")]
    logits, cache = model.run_with_cache(**held.inputs, names_filter=lambda n: n in names)
    res: dict[str, Any] = {"metrics": task.metrics(logits, held)}
    sd = model.state_dict()
    E = sd["embed.weight"].double()  # [V, d]
    W_U = sd["unembed.weight"].double().T  # [d, V]
    k = task.config.k
    for l in range(L):
        p = f"blocks.{l}."
        W_in = sd[p + "mlp.in.weight"].double().T  # [d, m]
        W_OV = sd[p + "attn.v.weight"].double().T @ sd[p + "attn.o.weight"].double().T  # [d, d], summed over heads
        post = cache[p + "mlp.hook_post"][:, -1].double()  # [B, m] at the readout position
        unit_max = post.max(0).values
        active = (post > 1e-3 * unit_max) & (unit_max > 0)
        pattern = cache[p + "attn.hook_pattern"][:, :, -1].double()  # [B, H, S]: the last query
        D = E @ W_in
        A = E @ W_OV @ W_in
        maps = {"D": D, "A": A, "S": D + A}
        if l > 0:  # the linear part of every attention path into this layer (MLPs of earlier layers left out)
            P = torch.eye(E.shape[1], dtype=E.dtype)
            for j in range(l + 1):
                q = f"blocks.{j}."
                P = P @ (torch.eye(E.shape[1], dtype=E.dtype)
                         + sd[q + "attn.v.weight"].double().T @ sd[q + "attn.o.weight"].double().T)
            maps["Slin"] = E @ P @ W_in
        lay: dict[str, Any] = {
            "active_frac": active.double().mean().item(),
            "dead_units": int((unit_max <= 0).sum()),
            "attn_last_self": pattern[..., -1].mean().item(),
            "attn_last_other": pattern[..., :-1].mean().item(),
            "attn_last_max": pattern.max(-1).values.mean().item(),
            "norm_D": D.norm().item(), "norm_A": A.norm().item(),
            "corr_D_A": torch.corrcoef(torch.stack([D.reshape(-1), A.reshape(-1)]))[0, 1].item(),
            # least-squares D ~ beta A (centred): the last token then enters with about (beta + P_self) A,
            # every other token with P_other A
            "beta_D_on_A": ((D - D.mean()) * (A - A.mean())).sum().item() / ((A - A.mean()) ** 2).sum().item(),
        }
        lay["eff_last"] = lay["beta_D_on_A"] + lay["attn_last_self"]
        # The MLP input at the readout position = resid_pre (for layer 0: w_last E[t_last], the direct path)
        # + attn_out (the attention path, biases included): how the variance of W_in^T r splits.
        d_pre = cache[p + "hook_resid_pre"][:, -1].double() @ W_in  # [B, m]
        a_pre = cache[p + "hook_attn_out"][:, -1].double() @ W_in
        vd, va = d_pre.var(0).sum().item(), a_pre.var(0).sum().item()
        cov = ((d_pre - d_pre.mean(0)) * (a_pre - a_pre.mean(0))).sum().item() / (d_pre.shape[0] - 1)
        tot = vd + va + 2 * cov
        lay["pre_var_share"] = {"direct": vd / tot, "attn": va / tot, "2cov": 2 * cov / tot}
        out_map = (sd[p + "mlp.out.weight"].double().T @ W_U)  # [m, V]
        osplit = two_means(out_map)
        out_code = osplit.minority_mask(out_map).T  # [V, m]
        lay["r2_out"] = osplit.r2
        for name, M in maps.items():
            r = map_report(M, held, active, logits)
            code = r.pop("_code")
            r["jaccard_out"] = jaccard(code, out_code)
            lay[name] = r
        res[f"layer{l}"] = lay
    return res


def summarize(res: dict[str, Any]) -> str:
    m = res["metrics"]
    parts = [f"KL {m['kl']:.4f} mass {m['topk_mass']:.3f} exact {m['exact_set']:.3f} fp {m['fp_per_sample']:.2f}"]
    for key, lay in res.items():
        if not key.startswith("layer"):
            continue
        bits = []
        for name in ("D", "A", "S"):
            r = lay[name]
            bits.append(f"{name}: R2 {r['r2']:.3f} h {r['h_mean']:.1f} s{r['sign']:+d} "
                        f"MCC {r['activity']['mcc']:.3f}")
        parts.append(f"{key} [{'; '.join(bits)}] attn self {lay['attn_last_self']:.2f}")
    return " | ".join(parts)


def save(name: str, payload: dict[str, Any]) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name + ".json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=1, default=float)
    return path
