"""Can N TransformerLens bridges train as one via torch.func (functional_call + vmap)? Try it, check, time it.

Stacks the parameters of N bridge models (the library's init for seeds 0..N-1),
and runs `vmap(functional_call(bridge, params, tokens))` with the weight-scaling
hook reading the vmapped weights. Reports whether forward and gradients work and
match the N separate models, and the time per step against the loop over models.

    python studies/transformer/vmap_bridge.py --n 4
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import torch
from torch.func import functional_call, grad, stack_module_state, vmap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sparsebench.api import Batch  # noqa: E402
from common import RunConfig, init_models, save, task_of  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = RunConfig(n_heads=1, d_head=64)
    task = task_of(cfg)
    models = init_models(cfg, task, list(range(args.n)))
    base = models[0]
    params, buffers = stack_module_state([m.bridge for m in models])
    trainable = {k: v for k, v in params.items() if v.requires_grad}
    frozen = {k: v for k, v in params.items() if not v.requires_grad}
    gens = [torch.Generator().manual_seed(7 + i) for i in range(args.n)]
    batch = Batch.stack([task.sample(args.batch, generator=g) for g in gens])
    tok, w, p = batch.inputs["tokens"], batch.inputs["weights"], batch.target
    out: dict = {"n": args.n, "batch": args.batch}

    def one_loss(tp, fp, bufs, tokens, weights, probs):
        with base._weighted(weights):
            z = functional_call(base.bridge, {**tp, **fp, **bufs}, (tokens,))[:, -1]
        return (torch.xlogy(probs, probs).sum(-1) - (probs * z.gather(-1, tokens)).sum(-1)
                + torch.logsumexp(z, -1)).mean()

    def ref_losses():
        with torch.no_grad():
            return torch.stack([task.loss(m(tok[i], w[i]), type(batch)({"tokens": tok[i], "weights": w[i]}, p[i]))
                                .mean() for i, m in enumerate(models)])

    ref = ref_losses()  # before any vmap call
    ref_grads = []  # also before any vmap call
    for i, m in enumerate(models):
        m.zero_grad()
        sub = type(batch)({"tokens": tok[i], "weights": w[i]}, p[i])
        task.loss(m(tok[i], w[i]), sub).mean().backward()
        ref_grads.append({n_: q.grad.clone() for n_, q in m.bridge.named_parameters() if q.grad is not None})
    t = time.perf_counter()
    for _ in range(args.reps):
        for i, m in enumerate(models):
            m.zero_grad()
            sub = type(batch)({"tokens": tok[i], "weights": w[i]}, p[i])
            task.loss(m(tok[i], w[i]), sub).mean().backward()
    out["loop_grad_s_per_step"] = (time.perf_counter() - t) / args.reps
    try:
        losses = vmap(one_loss, in_dims=(0, 0, 0, 0, 0, 0))(trainable, frozen, buffers, tok, w, p)
        out["forward_ok"] = True
        out["loss_rel"] = float((losses.detach() - ref).abs().max() / ref.abs().max())
        print("vmap forward runs; loss rel diff vs the models", out["loss_rel"], flush=True)
    except Exception as e:  # noqa: BLE001 - the point is to report what fails
        out["forward_ok"] = False
        out["forward_error"] = "".join(traceback.format_exception_only(type(e), e)).strip()
        print("vmap forward FAILED:", out["forward_error"], flush=True)
        traceback.print_exc()
    try:  # does a plain call of the bridge still work after the vmapped call?
        again = ref_losses()
        out["bridge_ok_after_vmap"] = bool(torch.equal(again, ref))
        print("plain bridge call after vmap: same losses", out["bridge_ok_after_vmap"], flush=True)
    except Exception as e:  # noqa: BLE001
        out["bridge_ok_after_vmap"] = False
        out["bridge_error_after_vmap"] = "".join(traceback.format_exception_only(type(e), e)).strip()
        print("plain bridge call after vmap FAILED:", out["bridge_error_after_vmap"].splitlines()[0][:200], flush=True)
        # which module attributes hold a leaked tensor?
        leaked = []  # parameters that functional_call did not swap back after the vmapped call
        for mname, mod in base.bridge.named_modules():
            for pname, val in mod._parameters.items():
                if val is not None and not isinstance(val, torch.nn.Parameter):
                    leaked.append(f"{mname}._parameters[{pname!r}]")
        out["leaked_attributes"] = leaked
        print(f"{len(leaked)} parameters left as vmapped tensors, e.g.", leaked[:2], flush=True)
    if out.get("forward_ok"):
        try:
            g_fn = vmap(grad(one_loss), in_dims=(0, 0, 0, 0, 0, 0))
            g = g_fn(trainable, frozen, buffers, tok, w, p)
            worst = 0.0
            for i in range(args.n):
                for name, gr in ref_grads[i].items():
                    if name in g and not name.endswith("k._original_component.bias"):
                        d = float((g[name][i] - gr).abs().max() / gr.abs().max().clamp_min(1e-30))
                        worst = max(worst, d)
            out["grad_ok"] = True
            out["grad_rel_max"] = worst
            print("vmap grad works; worst rel diff", worst, flush=True)
            # time: vmapped grad vs a loop of bridge forward+backward
            for _ in range(2):
                g_fn(trainable, frozen, buffers, tok, w, p)
            t = time.perf_counter()
            for _ in range(args.reps):
                g_fn(trainable, frozen, buffers, tok, w, p)
            out["vmap_grad_s_per_step"] = (time.perf_counter() - t) / args.reps
            print(f"per step (N={args.n}, forward+grad only): vmap {out['vmap_grad_s_per_step']:.3f}s, "
                  f"loop over bridges {out['loop_grad_s_per_step']:.3f}s", flush=True)
        except Exception as e:  # noqa: BLE001
            out["grad_ok"] = False
            out["grad_error"] = "".join(traceback.format_exception_only(type(e), e)).strip()
            print("vmap grad FAILED:", out["grad_error"], flush=True)
            traceback.print_exc()
    print("saved", save(f"vmap_bridge_n{args.n}", out))


if __name__ == "__main__":
    main()
