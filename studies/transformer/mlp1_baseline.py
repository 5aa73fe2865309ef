"""The mlp1 reference on the same held-out batch: library trainer, default recipe, then the study's analysis.

    python studies/transformer/mlp1_baseline.py --seeds 0,1,2 --steps 2000

mlp1 (d_model = d_mlp = 64, 1 block) trained by `sparsebench.training.train` (all seeds stacked),
AdamW lr 1e-2, batch 1024, warm-up 100 + cosine. Measured on task.held_out(8192): task metrics,
the two-means fit of W_E @ W_in[0] and its prediction of hidden activity (as for the transformer).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HELD_OUT, map_report, save  # noqa: E402

from sparsebench.build import make_task  # noqa: E402
from sparsebench.context import RunContext  # noqa: E402
from sparsebench.training import TrainConfig, train  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=str, default="0,1,2")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--width", type=int, default=64)
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = [int(s) for s in args.seeds.split(",")]
    task = make_task("topk-uniform", {"V": 1000, "k": 5})
    t = time.perf_counter()
    res = train(task, "mlp1", {"d_model": args.width, "d_mlp": args.width}, TrainConfig(steps=args.steps, lr=args.lr),
                seeds, RunContext.create("cpu", progress=False))
    print(f"trained {len(seeds)} seeds in {res.seconds:.1f}s ({time.perf_counter() - t:.1f}s incl. init)")
    held = task.held_out(HELD_OUT)
    runs = []
    for seed, model in zip(seeds, res.models):
        with torch.no_grad():
            logits, cache = model.run_with_cache(**held.inputs, names_filter=["blocks.0.mlp.hook_post"])
            post = cache["blocks.0.mlp.hook_post"].double()
            if post.dim() == 3:
                post = post[:, -1]
            unit_max = post.max(0).values
            active = (post > 1e-3 * unit_max) & (unit_max > 0)
            r = map_report(model.W_E @ model.W_in[0], held, active, logits)
        r.pop("_code")
        m = task.metrics(logits, held)
        runs.append({"seed": seed, "metrics": m, "D": r, "active_frac": active.double().mean().item()})
        print(f"seed {seed}: KL {m['kl']:.4f} mass {m['topk_mass']:.3f} R2 {r['r2']:.3f} h {r['h_mean']:.2f} "
              f"sign {r['sign']:+d} P/R/MCC {r['activity']['precision']:.3f}/{r['activity']['recall']:.3f}/"
              f"{r['activity']['mcc']:.3f}", flush=True)
    out = {"args": vars(args), "seconds_train": res.seconds, "backend": res.backend, "runs": runs}
    print("saved", save(f"mlp1_w{args.width}_s{args.steps}", out))


if __name__ == "__main__":
    main()
