"""`sparsebench report`: one trained model's anatomy as figures (hash matrix, its entries, top-k mass, tiers).

Trains (or loads) one seed of a run, fits `bloom` to it, and writes PNGs, a JSON
summary and optionally one self-contained HTML page. It reads a single model,
not records; the scaling curves from records are the leaderboard's figures,
added with `--results`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from sparsebench import limits
from sparsebench.api import token_to_hidden
from sparsebench.build import make_mechanism
from sparsebench.checkpoints import RunSpec, train_or_load
from sparsebench.config import to_dict
from sparsebench.context import RunContext
from sparsebench.errors import UserError
from sparsebench.io import atomic_path, write_text
from sparsebench.leaderboard import figures, render
from sparsebench.leaderboard.build import build_boards, scaling_images
from sparsebench.mechanisms.bloom import misses, union
from sparsebench.records import RecordWarning


def model_anatomy(model: Any, task: Any, fitted: Any, n_samples: int, device: Any) -> dict[str, Any]:
    """Arrays behind the report figures: the token-to-hidden map the fit reads (E @ W_in for mlp1), the hash code,
    top-k mass, tier data, and metrics."""
    with torch.no_grad():
        M = token_to_hidden(model, getattr(fitted, "layer", 0)).detach().float().cpu().numpy()
        code_t = fitted.token_code().bool()
        code = code_t.cpu().numpy()
        batch = task.held_out(n_samples, device=device)
        logits = model(**batch.inputs).float()
        metrics = task.metrics(logits, batch)
        q = torch.softmax(logits, dim=-1)
        in_set = torch.zeros_like(q, dtype=torch.bool).scatter_(-1, batch.inputs["tokens"], True)
        mass = (q * in_set).sum(-1)
        miss = misses(code_t, union(code_t, batch))  # [n, V]: |H(t) \ U|
    members, by_miss = figures.tier_data(q.cpu().numpy(), miss.cpu().numpy(), in_set.cpu().numpy())
    return {"M": M, "code": code, "mass": mass.cpu().numpy(), "members": members, "by_miss": by_miss,
            "metrics": metrics}


def make_report(spec: RunSpec, seed: int, ctx: RunContext, out: Path, *, html: bool = False,
                results: list[Path] | None = None, n_samples: int = 4096) -> str:
    """Write the report folder `out` (whole or not at all); returns a one-line summary."""
    if n_samples < 1:
        raise UserError(f"--samples must be at least 1 (got {n_samples})")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    task = spec.make_task()
    limits.check_samples(task, {"--samples": (n_samples, 4096)}, "report")
    if task.family != "topk":
        raise UserError(f"report draws a Bloom fit, which needs a top-k task (task {spec.task!r} is of family "
                        f"{task.family!r})")
    (ck,) = train_or_load(spec, [seed], ctx)
    fitted = make_mechanism("bloom").fit(ck.model, task, generator=torch.Generator(device=ctx.device).manual_seed(seed))
    a = model_anatomy(ck.model, task, fitted, n_samples, ctx.device)
    summary = {k: (v if isinstance(v, (int, str)) else float(v)) for k, v in fitted.summary().items()}
    k = int(getattr(task.config, "k", 0)) or int(task.seq_len or 1)
    who = f"{spec.task} · {spec.model} · seed {seed}"
    name = "E (I + W_OV) W_in" if hasattr(ck.model, "W_OV") else "E @ W_in"  # the map the fit read
    figs = [
        ("hash_matrix.png", f"{who}: {name}, tokens sorted by fitted hash (colour centred at 0).",
         figures.hash_matrix_figure(a["M"], a["code"], int(summary.get("sign", 0)) or None,
                                    title=f"{name} — {who}")),
        ("entries_histogram.png", f"{who}: entries of {name} by fitted hash membership "
                                  f"(two-means R² = {summary.get('r2', float('nan')):.3f}).",
         figures.entries_histogram_figure(a["M"], a["code"], title=f"entries of {name} — {who}")),
        ("topk_mass.png", f"{who}: top-k mass over {n_samples} held-out samples (log counts).",
         figures.topk_mass_figure(a["mass"], k, title=f"top-k mass — {who}")),
        ("tiers.png", f"{who}: q_t against hash bits missing from the union (members separately).",
         figures.tiers_figure(a["members"], a["by_miss"], title=f"logit tiers — {who}")),
    ]
    pngs = [(name, cap, figures.to_png(fig)) for name, cap, fig in figs]
    if results:
        warnings.simplefilter("always", RecordWarning)
        for i, img in enumerate(scaling_images(build_boards(list(results))["solutions"])):
            pngs.append((f"scaling_{i}.png", img.caption, img.png))
    info = {"task": {"name": spec.task, "config": spec.task_config}, "model": {"name": spec.model,
            "config": spec.model_config}, "train": to_dict(spec.train), "seed": seed,
            "checkpoint": {"key": ck.key, "sha256": ck.sha256}, "bloom_fit": summary,
            "held_out": {"n_samples": n_samples, **a["metrics"]}, "figures": [p[0] for p in pngs]}
    with atomic_path(out, replace_dir=True) as tmp:  # the folder appears whole, or not at all
        tmp.mkdir()
        for name, _, png in pngs:
            (tmp / name).write_bytes(png)
        (tmp / "report.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if html:
            table = render.Table("report", f"Bloom fit and held-out metrics: {who}", ["quantity", "value"],
                                 [[render.Cell(str(kk)), render.Cell(render.fmt_num(v) if isinstance(v, float)
                                                                     else str(v), v if isinstance(v, (int, float))
                                                                     else None)]
                                  for kk, v in {**summary, **a["metrics"]}.items()])
            page = render.to_html([table], [render.Image(cap, png, board="report") for _, cap, png in pngs],
                                  title=f"sparsebench report: {who}")
            write_text(tmp / "report.html", page)
    return (f"wrote {len(pngs)} figure(s){' and report.html' if html else ''} to {out}/ "
            f"(hash sign {summary.get('sign')}, mean hash size {summary.get('h_mean', float('nan')):.2f}, "
            f"held-out KL {a['metrics'].get('kl', float('nan')):.4g})")
