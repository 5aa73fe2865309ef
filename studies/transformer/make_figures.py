"""The figures of docs/transformer.md, drawn from the study's results and the library's own measurements.

    .venv/bin/python studies/transformer/make_figures.py [--suite RESULTS] [--layers RESULTS] [--bench BENCH.json]

Reads studies/transformer/results/*.json (the study's runs: run.py, q2_maps.py, mlp1_baseline.py) and,
when given, the records of `sparsebench evaluate transformer` (--suite) and of the 2-layer suite
(--layers, evaluated with `mechanism.bloom.layer` 0 and 1), and a `sparsebench bench --regime transformer
--json` file (--bench). Writes PNGs to docs/img/ (each figure is a pure function of those files).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
IMG = HERE.parents[1] / "docs" / "img"
CHANCE_R2 = 2 / 3.141592653589793  # two-means R^2 of one Gaussian


def _load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def _label(cfg: dict) -> str:
    bits = [f"{cfg['n_heads']}x{cfg['d_head']}", f"lr {cfg['lr']:g}", f"wu {cfg['warmup']}"]
    if cfg["init_scale"] != 1.0:
        bits.append(f"init {cfg['init_scale']:g}")
    if cfg["min_lr_frac"]:
        bits.append(f"min {cfg['min_lr_frac']:g}")
    if cfg["beta2"] != 0.999:
        bits.append(f"b2 {cfg['beta2']:g}")
    if cfg["batch_size"] != 1024:
        bits.append(f"batch {cfg['batch_size']}")
    if cfg["d_mlp"] != 64:
        bits.append(f"d_mlp {cfg['d_mlp']}")
    return ", ".join(bits)


def screen() -> None:
    """2000-step screen: KL and R^2 of S per recipe (mean of 2 seeds), sorted by KL."""
    rows = []
    for path in sorted(glob.glob(str(RESULTS / "s2k_*.json"))):
        d = json.loads(Path(path).read_text())
        kl = statistics.mean(r["metrics"]["kl"] for r in d["runs"])
        r2 = statistics.mean(r["layer0"]["S"]["r2"] for r in d["runs"])
        mcc = statistics.mean(r["layer0"]["S"]["activity"]["mcc"] for r in d["runs"])
        rows.append((kl, r2, mcc, _label(d["config"])))
    rows.sort()
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.32 * len(rows) + 1.5), sharey=True)
    y = range(len(rows))
    for ax, i, title in zip(axes, (0, 1, 2), ("held-out KL (lower is better)", "R² of S = W_E (I + W_OV) W_in",
                                              "hidden-unit MCC of S's code")):
        ax.barh(list(y), [r[i] for r in rows], color=["tab:green" if r[1] > 0.85 else "tab:gray" for r in rows])
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    axes[1].axvline(CHANCE_R2, color="k", ls=":", lw=1, label="one Gaussian (chance)")
    axes[1].axvline(0.9, color="tab:red", ls="--", lw=1, label="0.9")
    axes[1].legend(fontsize=8, loc="lower right")
    axes[0].set_yticks(list(y), [r[3] for r in rows], fontsize=8)
    axes[0].invert_yaxis()
    fig.suptitle("2000-step screen (1 layer, d_model = 64 unless stated; mean of seeds 0, 1)", fontsize=11)
    fig.tight_layout()
    _save(fig, "transformer_screen.png")


def _suite_per_seed(folder: str) -> dict[int, dict]:
    """Per seed of a `sparsebench evaluate transformer` results folder: held-out KL, Bloom R^2 and hidden MCC."""
    out: dict[int, dict] = {}
    for path in glob.glob(os.path.join(folder, "**", "*.json"), recursive=True):
        r = json.loads(Path(path).read_text())
        if r.get("kind") == "solution" and r["solver"]["type"] == "trained":
            out.setdefault(r["seed"], {})["kl"] = r["metrics"]["kl"]
        elif r.get("kind") == "explanation" and r["mechanism"]["name"] == "bloom" and r["status"] == "ok" \
                and r.get("subject", "trained") == "trained":
            s = out.setdefault(r["seed"], {})
            s["r2"] = r["probes"]["bimodality"]["scores"]["r2"]["value"]
            s["mcc"] = r["probes"]["hidden-code"]["scores"]["mcc"]["value"]
    return out


def recipe(suite: str | None) -> None:
    """Per seed: R^2 of D, A, S and held-out KL for recipes A and B, mlp1 at 2000 and 5000 steps, the library."""
    series = {}
    for rec, names in (("A", ["conf_A_s012", "conf_A_s345"]), ("B (the recipe)", ["conf_B_s012", "conf_B_s345"])):
        runs = [r for n in names for r in _load(n)["runs"]]
        series[rec] = {m: [r["layer0"][m]["r2"] for r in runs] for m in ("D", "A", "S")}
        series[rec]["kl"] = [r["metrics"]["kl"] for r in runs]
    for steps in (2000, 5000):
        runs = _load(f"mlp1_w64_s{steps}")["runs"]
        series[f"mlp1, {steps} steps"] = {"D": [r["D"]["r2"] for r in runs], "kl": [r["metrics"]["kl"] for r in runs]}
    if suite:
        per = _suite_per_seed(suite)
        if per:
            seeds = sorted(per)
            series["B, library suite"] = {"S": [per[s]["r2"] for s in seeds], "kl": [per[s]["kl"] for s in seeds]}
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4))
    marks = {"D": "v", "A": "^", "S": "o"}
    for i, (name, s) in enumerate(series.items()):
        for m, mk in marks.items():
            if m in s:
                a1.scatter([i + {"D": -0.2, "A": 0, "S": 0.2}[m]] * len(s[m]), s[m], marker=mk, s=22,
                           label=f"{m}" if i == 0 else None, color={"D": "tab:blue", "A": "tab:orange",
                                                                    "S": "tab:green"}[m])
        a2.scatter([i] * len(s["kl"]), s["kl"], s=22, color="tab:purple")
    for ax in (a1, a2):
        ax.set_xticks(range(len(series)), list(series), rotation=15, fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    a1.axhline(0.9, color="tab:red", ls="--", lw=1)
    a1.set_title("two-means R² per seed (mlp1: W_E W_in)", fontsize=10)
    a1.legend(fontsize=8, title="map", title_fontsize=8)
    a2.set_title("held-out KL per seed (lower is better)", fontsize=10)
    fig.suptitle("1 head of 64, 5000 steps, lr 1e-2 with a 500-step warm-up (A; B adds init 0.5, cosine to 0.1)",
                 fontsize=11)
    fig.tight_layout()
    _save(fig, "transformer_recipe.png")


def maps() -> None:
    """Which map carries the code: gate agreement and variance share per converged model (q2_conf)."""
    rows = [r for r in _load("q2_conf")["results"]]
    labels = [f"{r['run'].replace('conf_', '').split('_s')[0]} s{r['seed']}" for r in rows]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 3.8))
    x = range(len(rows))
    a1.bar([i - 0.2 for i in x], [r["gate_agreement"]["attn_term_only"] for r in rows], 0.4,
           label="attention term alone")
    a1.bar([i + 0.2 for i in x], [r["gate_agreement"]["direct_term_only"] for r in rows], 0.4,
           label="direct term alone")
    a1.set_ylim(0.5, 1)
    a1.set_title("share of ReLU gates (sample, unit) the term decides as the model does", fontsize=10)
    a1.legend(fontsize=8)
    shares = [r["pre_var_share"] for r in rows]
    bottom = [0.0] * len(rows)
    for key, name in (("attn", "attention term"), ("direct", "direct term"), ("2cov", "2 cov")):
        vals = [s[key] for s in shares]
        a2.bar(list(x), vals, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, vals)]
    a2.set_title("variance of the MLP input at the readout position", fontsize=10)
    a2.legend(fontsize=8)
    for ax in (a1, a2):
        ax.set_xticks(list(x), labels, rotation=60, fontsize=7)
    fig.tight_layout()
    _save(fig, "transformer_maps.png")


def layers(folder: str | None) -> None:
    """Two layers: R^2 and hidden-unit MCC of each map per layer (the study's q2_L2_layer{0,1}), and the library's."""
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.6))
    for layer, color in ((0, "tab:gray"), (1, "tab:green")):
        res = _load(f"q2_L2_layer{layer}")["results"]
        for j, m in enumerate(("D", "A", "S", "M_emp")):
            r2 = [r["maps"][m]["r2"] for r in res]
            mcc = [r["maps"][m]["activity"]["mcc"] for r in res]
            xs = [j + (0.15 if layer else -0.15)] * len(res)
            a1.scatter(xs, r2, color=color, s=18, label=f"layer {layer}" if j == 0 else None)
            a2.scatter(xs, mcc, color=color, s=18, label=f"layer {layer}" if j == 0 else None)
    if folder:
        for layer, marker in ((0, "x"), (1, "+")):
            per = _suite_per_seed(os.path.join(folder, f"layer{layer}"))
            if per:
                a1.scatter([4] * len(per), [p["r2"] for p in per.values()], marker=marker, color="k", s=40,
                           label=f"library fit, layer {layer}")
                a2.scatter([4] * len(per), [p["mcc"] for p in per.values()], marker=marker, color="k", s=40)
    for ax, title in ((a1, "two-means R² of the map"), (a2, "hidden-unit MCC (union of the k hashes)")):
        ax.set_xticks(range(5), ["D", "A", "S", "M_emp", "library\n(linear path)"], fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    a1.axhline(CHANCE_R2, color="k", ls=":", lw=1)
    a1.legend(fontsize=8)
    fig.suptitle("Two layers (recipe A, 3 seeds): the last layer carries the complemented code", fontsize=11)
    fig.tight_layout()
    _save(fig, "transformer_layers.png")


def speed(bench: str | None) -> None:
    """Samples per second of the transformer regime of `sparsebench bench` (medians)."""
    if not bench:
        return
    rep = json.loads(Path(bench).read_text())
    reg = rep["regimes"]["transformer"]
    labels = list(reg["median"])
    vals = [reg["median"][k]["samples_s"] for k in labels]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.2))
    ax.barh(range(len(labels)), vals, color=["tab:gray" if k.startswith("plain") else "tab:green" for k in labels])
    for i, (k, v) in enumerate(zip(labels, vals)):
        ax.text(v, i, f" {reg['median'][k]['vs_plain']:.2f}x", va="center", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("instance-samples per second (median)")
    ax.set_title(f"transformer regime, {rep.get('device', 'cpu')}: trainer vs the plain TransformerLens loop",
                 fontsize=10)
    fig.tight_layout()
    _save(fig, "transformer_speed.png")


def _save(fig, name: str) -> None:
    IMG.mkdir(parents=True, exist_ok=True)
    fig.savefig(IMG / name, dpi=110)
    plt.close(fig)
    print("wrote", IMG / name)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--suite", help="results folder of `sparsebench evaluate transformer`")
    ap.add_argument("--layers", help="folder with layer0/ and layer1/ results of the 2-layer suite")
    ap.add_argument("--bench", help="JSON of `sparsebench bench --regime transformer --json`")
    args = ap.parse_args()
    screen()
    recipe(args.suite)
    maps()
    layers(args.layers)
    speed(args.bench)


if __name__ == "__main__":
    main()
