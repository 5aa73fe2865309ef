"""Sizes that cannot fit are refused before anything is allocated.

A vocabulary of 10^12, a width of 10^9 or 10^10 evaluation samples would otherwise be
found out by the allocator: after minutes, or after gigabytes (V = 10^8 allocated
3.6 GB before failing), with a traceback. `check_run` and `check_samples` estimate
the bytes of the largest tensors a run holds at once and compare the total with this
machine's physical memory, a generous bound: a run refused here could not have
finished. The estimate, in float32 (4 bytes) elements:

- weights: (n_inputs + n_outputs) x d_model for the embedding and unembedding, plus
  n_layers x (2 d_model d_mlp + 4 d_model^2 for attention, where the model has
  heads), each held four times in training (weights, gradients, two AdamW moments);
- training: batch_size x n_outputs logits, three times (logits, softmax, gradient),
  and batch_size x k inputs (int64 tokens and weights);
- evaluation and probes: samples x n_outputs logits, three times (logits, log-softmax,
  probabilities).

The refusal names the field that contributes most: within the largest term, the
field that is the largest multiple of its default (`task.V`, `model.d_model`,
`train.batch_size`, `eval_samples`, ...).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from sparsebench.errors import ConfigError

FLOAT = 4  # bytes of a float32 element
TRAIN_COPIES = 4  # weights, gradients and AdamW's two moments
LOGIT_COPIES = 3  # logits, their softmax (or log-softmax) and its gradient (or exp)


def memory_bytes() -> int:
    """This machine's physical memory (1 TiB where the platform does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return 1 << 40


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"


def _defaults(config_cls: Any) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(config_cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
    return out


def _blame(fields: list[tuple[str, str, int, Any]]) -> tuple[str, str, int]:
    """(where, field, value) of the field that is the largest multiple of its default."""
    def ratio(item: tuple[str, str, int, Any]) -> float:
        _, _, value, default = item
        return value / default if isinstance(default, int) and default > 0 else float(value)

    where, name, value, _ = max(fields, key=ratio)
    return where, name, value


def _refuse(terms: list[tuple[str, int, list[tuple[str, str, int, Any]]]], limit: int | None) -> None:
    """Raise a ConfigError if the terms' total exceeds `limit` (default: this machine's memory)."""
    limit = memory_bytes() if limit is None else limit
    total = sum(b for _, b, _ in terms)
    if total <= limit:
        return
    what, _, fields = max(terms, key=lambda t: t[1])
    where, name, value = _blame([f for f in fields if f[2] > 1] or fields)
    raise ConfigError(where, name, f"{value} is too large: this run would need about {human(total)} of memory "
                                   f"(mostly {what}), more than this machine's {human(limit)}")


def _int_fields(config: dict[str, Any]) -> dict[str, int]:
    return {k: v for k, v in config.items() if isinstance(v, int) and not isinstance(v, bool)}


def run_terms(task: Any, model_cls: Any, model_config: dict[str, Any], batch_size: int | None = None,
              instances: int = 1, train_defaults: dict[str, Any] | None = None) -> list[tuple[str, int, list]]:
    """The memory terms of a model of `model_cls` on `task` (and its training at `batch_size`)."""
    task_cfg = _int_fields(task.config_dict())
    task_defaults = _defaults(type(task.config))
    n_in, n_out = int(task.n_inputs), int(task.n_outputs)
    # the task field that sets the vocabulary (the largest int field: V for the top-k tasks)
    vocab = [("task", k, v, task_defaults.get(k)) for k, v in task_cfg.items() if v == max(task_cfg.values())]
    cfg = _int_fields(model_config)
    model_defaults = _defaults(model_cls.Config) if dataclasses.is_dataclass(getattr(model_cls, "Config", None)) \
        else {}
    widths = [f for f in getattr(model_cls, "width_fields", ()) if f in cfg] or sorted(cfg, key=cfg.get)[-1:]
    d = max((cfg[f] for f in widths), default=1)
    m = cfg.get("d_mlp", d)
    layers = cfg.get("n_layers", 1)
    heads = cfg.get("n_heads", 0) * cfg.get("d_head", 0)
    model_fields = [("model", f, cfg[f], model_defaults.get(f)) for f in cfg]
    terms = [
        (f"the embedding and unembedding (({n_in} + {n_out}) x {d})", FLOAT * TRAIN_COPIES * (n_in + n_out) * d,
         vocab + [f for f in model_fields if f[1] in widths]),
        ("the hidden layers", FLOAT * TRAIN_COPIES * layers * (2 * d * m + 4 * d * heads), model_fields),
    ]
    if batch_size is not None:
        k = int(getattr(task, "seq_len", None) or 1)
        batch = ("train", "batch_size", batch_size, (train_defaults or {}).get("batch_size"))
        terms += [
            (f"the training logits (batch_size {batch_size} x {n_out})",
             FLOAT * LOGIT_COPIES * instances * batch_size * n_out, [batch, *vocab]),
            (f"the training inputs (batch_size {batch_size} x {k})", 12 * instances * batch_size * k,
             [batch, *[("task", f, v, task_defaults.get(f)) for f, v in task_cfg.items()]]),
        ]
    return terms


def check_run(task: Any, model_cls: Any, model_config: dict[str, Any], train: Any = None, *,
              instances: int = 1, limit: int | None = None) -> None:
    """Refuse (ConfigError naming the field) a model, and its training, that cannot fit in memory."""
    defaults = _defaults(type(train)) if train is not None else None
    _refuse(run_terms(task, model_cls, model_config, getattr(train, "batch_size", None), instances, defaults),
            limit)


def check_samples(task: Any, samples: dict[str, tuple[int, Any]], where: str = "suite", *,
                  limit: int | None = None) -> None:
    """Refuse evaluation sizes ({field: (samples, default)}) whose samples x n_outputs logits cannot fit."""
    n_out = int(task.n_outputs)
    terms = [(f"{name} {n} x {n_out} logits", FLOAT * LOGIT_COPIES * n * n_out, [(where, name, n, default)])
             for name, (n, default) in samples.items()]
    _refuse(terms, limit)
