"""Per-seed Markdown tables from the records of `sparsebench evaluate` (what docs/transformer.md quotes).

    .venv/bin/python studies/transformer/library_tables.py RESULTS [RESULTS ...]

For every trained model in the folders: held-out metrics (the solution record) and the Bloom fit
(its summary, and each ranked probe's value with the strongest rival and the margin over it).
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

PROBES = (("hidden-code", "mcc"), ("candidates", "fp_mcc"), ("prediction", "kl_explained"),
          ("patch", "loss_recovered"))


def _records(folder: str) -> list[dict]:
    return [json.loads(Path(p).read_text()) for p in glob.glob(os.path.join(folder, "**", "*.json"), recursive=True)
            if os.path.basename(os.path.dirname(p)) in ("solution", "explanation")]


def _who(r: dict) -> str:
    """The model in a few words, e.g. 'transformer 1x64, init 0.5, 1 layer · 5000 steps'."""
    cfg = r["model"]["config"]
    shape = f" {cfg['n_heads']}x{cfg['d_head']}, init {cfg['init_scale']:g}, {cfg['n_layers']} layer" \
        f"{'s' if cfg['n_layers'] > 1 else ''}" if "n_heads" in cfg else ""
    return f"{r['model']['name']}{shape} · {r['train']['steps']} steps"


def main(folders: list[str]) -> None:
    rows: dict[tuple[str, int], dict] = defaultdict(dict)
    for folder in folders:
        for r in _records(folder):
            if r.get("subject", "trained") != "trained":
                continue
            if r["kind"] == "solution" and r["solver"]["type"] == "trained":
                rows[(_who(r), r["seed"])]["metrics"] = r["metrics"]
            elif r["kind"] == "explanation" and r["mechanism"]["name"] == "bloom" and r["status"] == "ok":
                layer = r["mechanism"]["config"].get("layer", -1)
                rows[(_who(r), r["seed"])][f"bloom@{layer}"] = r
    print("| model | seed | KL | top-k mass | exact set | fp/sample | weight leak |")
    print("|---|---|---|---|---|---|---|")
    for (who, seed), d in sorted(rows.items()):
        m = d.get("metrics")
        if m:
            print(f"| {who} | {seed} | {m['kl']:.4f} | {m['topk_mass']:.3f} | {m['exact_set']:.3f} | "
                  f"{m['fp_per_sample']:.2f} | {m['weight_leak']:.3f} |")
    print()
    print("| model | seed | fit layer | R² (map) | h | sign | R² out | " +
          " | ".join(f"{p} {s} (strongest rival: value; margin [95% CI over chunks])" for p, s in PROBES) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(PROBES))
    for (who, seed), d in sorted(rows.items()):
        for key in sorted(k for k in d if k.startswith("bloom@")):
            r = d[key]
            f = r["fit"]
            cells = []
            for probe, score in PROBES:
                pr = r["probes"].get(probe, {})
                sc = (pr.get("scores") or {}).get(score)
                if not sc:
                    cells.append("n/a")
                    continue
                rivals = {**sc.get("controls", {}), **{f"null {k}": v for k, v in sc.get("nulls", {}).items()}}
                rival = sc.get("rival")
                rv = rivals.get(rival, rivals.get(f"null {rival}")) if rival else None
                ci = sc.get("margin_ci") or [float("nan")] * 2
                cells.append(f"{sc['value']:.3f} ({rival}: {rv:.3f}; {sc['margin']:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}])"
                             if rival and rv is not None else f"{sc['value']:.3f}")
            print(f"| {who} | {seed} | {f.get('layer', 0)} | {f['r2']:.3f} | {f['h_mean']:.2f} | {f['sign']:+d} | "
                  f"{f['r2_out']:.3f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
