"""Train the sparsebench transformer on topk-uniform (all seeds batched) and analyse each seed's Bloom code.

    python studies/transformer/run.py --name r1x64_s5000 --seeds 0,1,2 --n-heads 1 --d-head 64 --steps 5000 --lr 5e-3

Every RunConfig field is a flag (see common.RunConfig). Writes studies/transformer/results/<name>.json with the
config, training time, and per seed: held-out metrics (task.held_out(8192)), and per layer the
maps D = W_E W_in, A = W_E W_OV W_in, S = D + A (two-means R^2, hash size, sign, hidden-unit
precision/recall/MCC, Bloom logit fit), attention statistics, and the W_out W_U code's R^2.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import HELD_OUT, add_args, analyze, config_from_args, save, summarize, task_of, train_batched  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--seeds", type=str, default="0")
    ap.add_argument("--save-weights", action="store_true", help="also save each seed's state dict (.pt)")
    add_args(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = config_from_args(args)
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"{args.name}: {asdict(cfg)} seeds {seeds}", flush=True)
    models, info = train_batched(cfg, seeds)
    print(f"trained {len(seeds)} seed(s) in {info['seconds_train']:.1f}s "
          f"({info['seconds_train'] / len(seeds):.1f}s per seed)", flush=True)
    task = task_of(cfg)
    held = task.held_out(HELD_OUT)
    runs = []
    t = time.perf_counter()
    for seed, model in zip(seeds, models):
        res = analyze(model, task, held)
        res["seed"] = seed
        runs.append(res)
        print(f"seed {seed}: {summarize(res)}", flush=True)
        if args.save_weights:
            os.makedirs(os.path.join(os.path.dirname(__file__), "results", "weights"), exist_ok=True)
            torch.save(model.state_dict(), os.path.join(os.path.dirname(__file__), "results", "weights",
                                                        f"{args.name}_seed{seed}.pt"))
    info["seconds_analysis"] = time.perf_counter() - t
    print("saved", save(args.name, {"name": args.name, "config": asdict(cfg), "seeds": seeds, "info": info,
                                    "runs": runs}))


if __name__ == "__main__":
    main()
