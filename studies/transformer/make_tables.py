"""Markdown tables from studies/transformer/results/*.json (run.py outputs).

    python studies/transformer/make_tables.py                       # every run
    python studies/transformer/make_tables.py s2k_ s5k_             # runs whose name starts with any of these
    python studies/transformer/make_tables.py --detail conf_        # one row per seed and layer, every map's numbers
    python studies/transformer/make_tables.py --per-seed conf_      # one row per seed (last layer): metrics and the S map

Summary rows: per-seed values joined by '/', then the mean (and std over seeds when there are 3+).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
DEFAULTS = dict(n_heads=1, d_head=64, d_mlp=64, n_layers=1, init_scale=1.0, batch_size=1024, lr=5e-3, warmup=100,
                min_lr_frac=0.0, weight_decay=0.0, beta2=0.999)


def load(prefixes: list[str]) -> list[dict]:
    out = []
    for path in sorted(glob.glob(os.path.join(HERE, "*.json"))):
        name = os.path.basename(path)[:-5]
        if prefixes and not any(name.startswith(p) for p in prefixes):
            continue
        with open(path) as f:
            d = json.load(f)
        if "runs" in d and "config" in d:
            out.append(d)
    return out


def fmt(vals: list[float], digits: int = 3) -> str:
    s = "/".join(f"{v:.{digits}f}" for v in vals)
    if len(vals) > 1:
        m = statistics.mean(vals)
        s += f" (**{m:.{digits}f}**" + (f" ± {statistics.stdev(vals):.{digits}f})" if len(vals) > 2 else ")")
    return s


def recipe(c: dict) -> str:
    bits = [f"{c['n_heads']}x{c['d_head']}", f"lr {c['lr']:g}"]
    for k in ("d_mlp", "init_scale", "batch_size", "warmup", "min_lr_frac", "weight_decay", "beta2", "n_layers"):
        if c[k] != DEFAULTS[k]:
            bits.append(f"{k} {c[k]:g}")
    return ", ".join(bits)


def signs(lay: list[dict]) -> str:
    return "/".join("%+d%+d" % (x["D"]["sign"], x["A"]["sign"]) for x in lay)


def summary(runs: list[dict]) -> str:
    head = ("| run | recipe | steps | s/seed | KL | top-k mass | R² D | R² A | R² S | h (A) | sign D/A | "
            "MCC D | MCC A | MCC S |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d in runs:
        c, rs = d["config"], d["runs"]
        L = c["n_layers"] - 1
        lay = [r[f"layer{L}"] for r in rs]
        sec = d["info"]["seconds_train"] / len(rs)
        lines.append(
            f"| {d['name']} | {recipe(c)} | {c['steps']} | {sec:.0f} | {fmt([r['metrics']['kl'] for r in rs])} | "
            f"{fmt([r['metrics']['topk_mass'] for r in rs])} | {fmt([x['D']['r2'] for x in lay])} | "
            f"{fmt([x['A']['r2'] for x in lay])} | {fmt([x['S']['r2'] for x in lay])} | "
            f"{fmt([x['A']['h_mean'] for x in lay], 1)} | "
            f"{signs(lay)} | "
            f"{fmt([x['D']['activity']['mcc'] for x in lay])} | {fmt([x['A']['activity']['mcc'] for x in lay])} | "
            f"{fmt([x['S']['activity']['mcc'] for x in lay])} |")
    return "\n".join(lines)


def detail(runs: list[dict]) -> str:
    head = ("| run | seed | layer | map | R² | h mean ± sd | sign | distinct | empty | precision | recall | MCC | "
            "Jaccard(out code) | Bloom fit KL | KL | mass | attn self/other |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d in runs:
        for r in d["runs"]:
            for key in sorted(k for k in r if k.startswith("layer")):
                lay = r[key]
                for name in ("D", "A", "S"):
                    x = lay[name]
                    a = x["activity"]
                    kl_fit = f"{x['kl_fit']:.3f}" if "kl_fit" in x else ""
                    lines.append(
                        f"| {d['name']} | {r['seed']} | {key[5:]} | {name} | {x['r2']:.3f} | "
                        f"{x['h_mean']:.2f} ± {x['h_std']:.2f} | {x['sign']:+d} | {x['n_distinct']} | "
                        f"{x['n_empty']} | {a['precision']:.3f} | {a['recall']:.3f} | {a['mcc']:.3f} | "
                        f"{x['jaccard_out']:.3f} | {kl_fit} | {r['metrics']['kl']:.4f} | "
                        f"{r['metrics']['topk_mass']:.3f} | {lay['attn_last_self']:.2f}/{lay['attn_last_other']:.2f} |")
    return "\n".join(lines)


def per_seed(runs: list[dict]) -> str:
    """One row per seed of the last layer: metrics, then R^2 / hash / hidden-unit test of each map."""
    head = ("| run | seed | KL | top-k mass | exact set | fp/sample | weight leak | R² D / A / S | h ± sd (S) | sign | "
            "precision / recall / MCC (S) | MCC D / A | Bloom fit KL (S) | R² W_out W_U |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for d in runs:
        L = d["config"]["n_layers"] - 1
        for r in d["runs"]:
            m, lay = r["metrics"], r[f"layer{L}"]
            S = lay["S"]
            a = S["activity"]
            lines.append(
                f"| {d['name']} | {r['seed']} | {m['kl']:.4f} | {m['topk_mass']:.3f} | {m['exact_set']:.3f} | "
                f"{m['fp_per_sample']:.2f} | {m['weight_leak']:.3f} | "
                f"{lay['D']['r2']:.3f} / {lay['A']['r2']:.3f} / {S['r2']:.3f} | {S['h_mean']:.2f} ± {S['h_std']:.2f} | "
                f"{S['sign']:+d} | {a['precision']:.3f} / {a['recall']:.3f} / {a['mcc']:.3f} | "
                f"{lay['D']['activity']['mcc']:.3f} / {lay['A']['activity']['mcc']:.3f} | "
                f"{S.get('kl_fit', float('nan')):.3f} | {lay['r2_out']:.3f} |")
    return "\n".join(lines)


def merge(runs: list[dict]) -> list[dict]:
    """Runs with the same config (different seeds) as one run, seeds in order; seconds per seed averaged."""
    groups: dict[str, dict] = {}
    for d in runs:
        key = json.dumps(d["config"], sort_keys=True)
        if key not in groups:
            groups[key] = {**d, "runs": [], "info": {"seconds_train": 0.0}, "name": d["name"], "_n": 0}
        g = groups[key]
        g["runs"] += d["runs"]
        g["info"]["seconds_train"] += d["info"]["seconds_train"]
        if d["name"] != g["name"] and "+" not in g["name"]:
            g["name"] = g["name"] + " + " + d["name"]
    return list(groups.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("prefixes", nargs="*")
    ap.add_argument("--detail", action="store_true")
    ap.add_argument("--per-seed", action="store_true")
    ap.add_argument("--merge", action="store_true", help="merge runs of the same config (seeds) into one row")
    args = ap.parse_args()
    runs = load(args.prefixes)
    if args.merge:
        runs = merge(runs)
    print(detail(runs) if args.detail else per_seed(runs) if args.per_seed else summary(runs))


if __name__ == "__main__":
    main()
