"""The native CPU kernel: a whole `mlp1` training step's forward and backward in one compiled call.

`csrc/mlp1_kl.c` computes, for stacked `mlp1` (one residual ReLU block) and a task with a sparse
KL target (`fused.sparse_kl`), the per-instance loss and the gradients of every weight in one
pass over blocks of 8 batch rows (the maths is in the C file's header), and for the trainer also
each instance's AdamW step (`AdamW`); `csrc/topk_sample.c` turns a top-k task's uniforms into its
batch (`topk_batch`, bitwise the task's own). It is the same arithmetic
as the torch path in fp32, summed in another order (and with a polynomial exp2), so weights trained
with it differ from the torch path's in the last bits, as they do across thread counts
(docs/performance.md).

Why: at the small sizes this suite trains, an eager-torch step is bound by per-op overhead and by
passes over [rows, V] tiles (docs/performance.md, "Where one worker's step goes"); one compiled
call removes both. It is opt-in (`sparsebench train/evaluate --backend native`, `bench` rows
"native"): x86-64 with AVX-512 (F and BW; BF16 for bf16 matmuls) and a C compiler (`$CC`, else `cc`).
`NativeStep` is the training step the run context's door hands out for it.

Build: compiled on first use in each process (about a second) into a fresh private temporary
folder, loaded with ctypes, and the folder removed. Never loaded from a shared or writable place
such as the model cache: a library planted there would run its code in every process that loads
it. Nothing is downloaded. `available()` says whether it can run here and why not.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import platform
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsebench.accel.fused import FusedStep, sparse_kl
from sparsebench.accel.sampling import CheckedSampler, native_topk_sampler
from sparsebench.api import Batch
from sparsebench.errors import UserError
from sparsebench.models.mlp import StackedMLP
from sparsebench.training import ADAM_EPS

# No -march=native: worker processes on other machines (Ray) may have other CPUs. No FMA contraction
# of plain C expressions: topk_sample.c must round as torch does (the kernel's FMAs are intrinsics).
FLAGS = ("-O3", "-mavx512f", "-mavx512bf16", "-mfma", "-ffp-contract=off", "-shared", "-fPIC")
SOURCES = ("mlp1_kl.c", "topk_sample.c")  # in sparsebench/accel/csrc, built into one library


@functools.lru_cache(maxsize=None)
def _cpu_reason(bf16: bool = False) -> str | None:
    """Why this CPU cannot run the kernel (in bf16 if asked), or None if it can."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"it needs an x86-64 CPU (this is {platform.machine()})"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "it reads the CPU's AVX-512 support from /proc/cpuinfo (Linux), which is not readable here"
    if " avx512f" not in flags or " avx512bw" not in flags:  # -mavx512bf16 implies AVX512BW code
        return "this CPU has no AVX-512 (F and BW)"
    if bf16 and " avx512_bf16" not in flags:
        return "this CPU has no AVX512-BF16 (the fp32 kernel runs; train.precision=bf16 trains with torch)"
    return None


def _build(folder: Path) -> Path:
    """Compile the kernel's sources into `folder` (which must be private to this process)."""
    compiler = os.environ.get("CC", "cc")
    if shutil.which(compiler) is None:
        raise UserError(f"no C compiler ({compiler!r} not found; set CC)")
    paths = []
    for name in SOURCES:
        paths.append(folder / name)
        paths[-1].write_text(resources.files("sparsebench.accel").joinpath("csrc", name).read_text())
    lib = folder / "sparsebench_native.so"
    done = subprocess.run([compiler, *FLAGS, "-o", str(lib), *map(str, paths), "-lm"], capture_output=True, text=True)
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["(no output)"])[0]
        raise UserError(f"{compiler} could not build {' '.join(SOURCES)}: {first}")
    return lib


@functools.lru_cache(maxsize=None)
def _library() -> ctypes.CDLL:
    """The loaded kernel, built on first use in this process (once per process)."""
    try:
        with tempfile.TemporaryDirectory(prefix="sparsebench-native-") as tmp:  # mode 0700, removed after loading
            lib = ctypes.CDLL(str(_build(Path(tmp))))
    except OSError as e:  # no writable temporary folder, a library the loader refuses
        raise UserError(f"cannot build or load the native kernel: {e}") from None
    fn = lib.sb_mlp1_kl
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_int] * 11 + [ctypes.c_void_p] * 22
    check = lib.sb_check_indices
    check.restype = ctypes.c_int
    check.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_int64] * 2
    sample = lib.sb_topk_from_uniforms
    sample.restype = ctypes.c_int
    sample.argtypes = [ctypes.c_int64, ctypes.c_int, ctypes.c_int64, ctypes.c_double, ctypes.c_double,
                       *[ctypes.c_void_p] * 3]
    return lib


def available(bf16: bool = False) -> tuple[bool, str]:
    """(True, "") if the native kernel (with bf16 matmuls if asked) runs here, else (False, the reason)."""
    reason = _cpu_reason(bf16)
    if reason is not None:
        return False, reason
    try:
        _library()
    except UserError as e:
        return False, str(e)
    return True, ""


def supports(module: torch.nn.Module, precision: str = "fp32") -> bool:
    """Whether the kernel computes this model: stacked `mlp1` with exactly one block and fp32 weights
    (and, for precision "bf16", a CPU with AVX512-BF16)."""
    return (isinstance(module, StackedMLP) and module.config.n_layers == 1
            and all(p.dtype == torch.float32 for p in module.parameters())
            and (precision == "fp32" or available(bf16=True)[0]))


_PARAMS = ("embed.W_E", "blocks.0.mlp.W_in", "blocks.0.mlp.b_in", "blocks.0.mlp.W_out", "blocks.0.mlp.b_out",
           "unembed.W_U", "unembed.b_U")


@functools.lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(threads, thread_name_prefix="sparsebench-native")


def _shapes(tokens: Tensor, weights: Tensor, params: list[Tensor], index: Tensor, probs: Tensor) -> tuple[int, ...]:
    """(N, B, S, Vin, d, m, V, k), after checking that every shape agrees (the kernel trusts them)."""
    if tokens.dim() != 3 or index.dim() != 3:
        raise ValueError("native kernel: tokens and index must be [instances, batch, set]")
    N, B, S = tokens.shape
    k = index.shape[2]
    _, Vin, d = params[0].shape
    m, V = params[1].shape[2], params[5].shape[2]
    expected = [(N, Vin, d), (N, d, m), (N, m), (N, m, d), (N, d), (N, d, V), (N, V)]
    if [tuple(p.shape) for p in params] != expected or weights.shape != tokens.shape \
            or index.shape != probs.shape or tuple(index.shape[:2]) != (N, B):
        raise ValueError(f"native kernel: shapes disagree: tokens {tuple(tokens.shape)}, weights "
                         f"{tuple(weights.shape)}, index {tuple(index.shape)}, probs {tuple(probs.shape)}, "
                         f"weights of the model {[tuple(p.shape) for p in params]}")
    return N, B, S, Vin, d, m, V, k


_NO_ADAM = (None, None, None)  # the kernel's AdamW arguments (hyper-parameters, moments) for no step


def _run(bf16: bool, want: bool, tokens: Tensor, weights: Tensor, params: list[Tensor], index: Tensor,
         probs: Tensor, grads: list[Tensor | None] | None, adam: tuple[Any, ...] = _NO_ADAM) -> Tensor:
    """One kernel call: per-instance mean loss [N] (float32); if `want`, the gradients of each
    instance's mean loss written into `grads` (contiguous float32 tensors shaped like `params`; None
    skips a weight); `adam` (from `AdamW._args`) makes each instance then take an AdamW step in place.
    Shapes and indices are checked first: a bad batch raises before any weight or gradient changes."""
    N, B, S, Vin, d, m, V, k = _shapes(tokens, weights, params, index, probs)
    params = [a.detach().contiguous() for a in params]  # (AdamW._args checked that updated ones are)
    index, probs = index.to(torch.long).contiguous(), probs.to(torch.float32).contiguous()
    tokens, weights = tokens.to(torch.long).contiguous(), weights.to(torch.float32).contiguous()
    lib = _library()
    if lib.sb_check_indices(tokens.numel(), tokens.data_ptr(), Vin, index.numel(), index.data_ptr(), V) != 0:
        raise IndexError(f"native kernel: a token or target index is out of range (inputs < {Vin}, outputs < {V})")
    outs = grads if want and grads is not None else [None] * 7
    loss = torch.empty(N, dtype=torch.float64)
    ptrs = [None if t is None else t.data_ptr() for t in (tokens, weights, *params, index, probs, loss, *outs)]

    def run(n0: int, n1: int) -> int:  # ctypes releases the GIL: calls on other instances run in parallel
        return lib.sb_mlp1_kl(n0, n1, B, S, Vin, d, m, V, k, int(want), int(bf16), *ptrs, *adam)

    threads = min(N, torch.get_num_threads())
    if threads > 1:
        bounds = [(N * i // threads, N * (i + 1) // threads) for i in range(threads)]
        status = min(f.result() for f in [_pool(threads).submit(run, *b) for b in bounds])
    else:
        status = run(0, N)
    if status != 0:
        raise MemoryError("native kernel: out of memory for its scratch buffers")
    return (loss / B).to(torch.float32)


class _Mlp1KL(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, bf16: bool, grad_mode: bool, tokens: Tensor, weights: Tensor, *args: Tensor) -> Tensor:
        # tokens, weights [N, B, S]; args = E [N, Vin, d], W_in [N, d, m], b_in [N, m], W_out [N, m, d],
        # b_out [N, d], W_U [N, d, V], b_U [N, V], index [N, B, k], probs [N, B, k]  ->  mean loss [N]
        want = grad_mode and any(ctx.needs_input_grad[4:11])  # (grad mode is always off in here)
        grads = [torch.empty_like(p, memory_format=torch.contiguous_format) if ctx.needs_input_grad[4 + i] else None
                 for i, p in enumerate(args[:7])] if want else None
        loss = _run(bf16, want, tokens, weights, list(args[:7]), args[7], args[8], grads)
        # The gradients of each instance's mean loss. Kept as a plain attribute and handed over in
        # backward (not save_for_backward): with no other reference left, autograd can make them the
        # parameters' .grad without a copy.
        ctx.grads = grads
        return loss

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        grads, ctx.grads = ctx.grads, None
        if grads is None:
            raise RuntimeError("native kernel: one backward per forward (its gradients were handed over already)")
        if not bool((grad_out == 1).all()):  # training backpropagates loss.sum(): all ones, nothing to scale
            c = grad_out.view(-1, 1, 1)  # [N]
            grads = [None if g is None else g * (c if g.dim() == 3 else c.view(-1, 1)) for g in grads]
        return (None, None, None, None, *grads, None, None)


def _checked(module: torch.nn.Module, *tensors: Tensor) -> list[Tensor]:
    params = [module.p(name) for name in _PARAMS]  # type: ignore[operator]
    if any(t.requires_grad for t in tensors):
        raise ValueError("native kernel: it gives no gradient for tokens, input weights or targets; detach them")
    if not all(t.is_cpu for t in (*params, *tensors)):
        raise ValueError("native kernel: every tensor must be on the CPU")
    if any(p.dtype != torch.float32 for p in params):
        raise TypeError("native kernel: the weights must be float32")
    return params


class AdamW:
    """torch.optim.AdamW's update (amsgrad off) taken inside the kernel call (`train_step(adamw=)`):
    each instance steps right after its gradients are computed, while they and its weights are in
    cache, instead of in a separate pass over every weight, gradient and moment of the stack
    (docs/performance.md). Same arithmetic as torch's, in another order (float32 throughout):
    weights agree to a few ulps per step (tests/unit/test_native.py).

    State: the moments of every trainable weight of `module` (zeros at first) and the step count.
    The learning rate is given per step, so any schedule works."""

    def __init__(self, module: torch.nn.Module, *, betas: tuple[float, float] = (0.9, 0.999),
                 weight_decay: float = 0.0, eps: float = 1e-8):
        params = [module.p(name) for name in _PARAMS]  # type: ignore[operator]
        if any(p.requires_grad and not p.is_contiguous() for p in params):
            raise ValueError("native AdamW: trainable weights must be contiguous (it updates them in place)")
        self.betas, self.weight_decay, self.eps, self.steps = betas, weight_decay, eps, 0
        # The weights it was built for (their memory, and which of them train), to refuse any others.
        self._weights = [(p.data_ptr(), p.shape, p.requires_grad) for p in params]
        # (exp_avg, exp_avg_sq) per weight, None for frozen ones, as torch.optim.AdamW's state
        self.moments = [(torch.zeros_like(p), torch.zeros_like(p)) if p.requires_grad else None for p in params]

    def _args(self, params: list[Tensor], lr: float) -> tuple[Any, ...]:
        """The kernel's AdamW arguments for the next step (`steps + 1`; the caller counts it once the
        step is taken)."""
        if [(p.data_ptr(), p.shape, p.requires_grad) for p in params] != self._weights:
            raise ValueError("native AdamW: these are not the weights this optimiser was built for "
                             "(another model, or weights frozen or unfrozen since)")
        b1, b2 = self.betas
        t = self.steps + 1
        hyper = (lr * self.weight_decay, 1 - b1, b2, 1 - b2, lr / (1 - b1**t), 1 / math.sqrt(1 - b2**t), self.eps)
        m, v = ((ctypes.c_void_p * 7)(*[mv[i].data_ptr() if mv else None for mv in self.moments]) for i in (0, 1))
        return (ctypes.c_double * 7)(*hyper), m, v


def train_step(module: torch.nn.Module, tokens: Tensor, weights: Tensor, index: Tensor, probs: Tensor, *,
               bf16: bool = False, adamw: AdamW | None = None, lr: float = 0.0) -> Tensor:
    """`mlp1_kl`'s forward and backward without autograd, for the trainer: every trainable weight's
    `.grad` is overwritten with the gradient of the sum over instances of their mean losses (the
    buffers are reused from step to step, so set_to_none zeroing is not needed). With `adamw`, each
    instance then takes an AdamW step at learning rate `lr` in the same call. Frozen weights get no
    gradient (none is computed). Returns the per-instance mean loss [N], detached.

    Bad input (shapes, indices, other weights than `adamw`'s) raises before anything changes."""
    params = _checked(module, tokens, weights, index, probs)
    adam = adamw._args(params, lr) if adamw is not None else _NO_ADAM
    grads: list[Tensor | None] = [p.grad if p.requires_grad else None for p in params]
    fresh = {}  # new .grad buffers, given to the weights only once the kernel has filled them
    for i, (p, g) in enumerate(zip(params, grads)):
        if p.requires_grad and (g is None or g.shape != p.shape or not g.is_contiguous()):
            grads[i] = fresh[i] = torch.empty_like(p, memory_format=torch.contiguous_format)
    loss = _run(bf16, True, tokens, weights, params, index, probs, grads, adam)
    for i, g in fresh.items():
        params[i].grad = g
    if adamw is not None:
        adamw.steps += 1
    return loss


def mlp1_kl(module: torch.nn.Module, tokens: Tensor, weights: Tensor, index: Tensor, probs: Tensor, *,
            bf16: bool = False) -> Tensor:
    """Per-instance mean over the batch of KL(p* || softmax(module(tokens, weights))) for stacked
    `mlp1` (`supports(module)`); p* is `probs` on `index`. Gradients reach every weight.
    bf16: the logits, dL/dr and dL/dW_U matmuls take bf16 operands (fp32 accumulation)."""
    params = _checked(module, tokens, weights, index, probs)
    return _Mlp1KL.apply(bf16, torch.is_grad_enabled(), tokens, weights, *params, index, probs)


def topk_from_uniforms(task: Any, u: Tensor) -> Batch:
    """A built-in top-k task's batch from its uniforms u [inst, n, 3k] (as `task._uniforms` draws them):
    `csrc/topk_sample.c` does Floyd's algorithm, the random order and the weights in one call instead
    of ~45 torch ops, bitwise as `task._from_uniforms` does (ties between two of a sample's order
    uniforms, probability ~k^2 2^-54, are broken by position as torch's stable argsort does)."""
    c = task.config
    inst, n = u.shape[0], u.shape[1]
    u = u.contiguous()
    tokens = torch.empty(inst, n, c.k, dtype=torch.long)
    weights = torch.empty(inst, n, c.k, dtype=torch.float32)
    status = _library().sb_topk_from_uniforms(inst * n, c.k, c.V, c.w_lo, c.w_hi - c.w_lo, u.data_ptr(),
                                              tokens.data_ptr(), weights.data_ptr())
    if status != 0:
        raise MemoryError("native sampler: out of memory")
    return Batch({"tokens": tokens, "weights": weights}, task.target_probs(weights))


class NativeStep(FusedStep):
    """The training step with the native kernel: one compiled call computes every instance's loss and
    gradients and takes its AdamW step (`AdamW`); a built-in top-k task's batches are drawn by the
    native sampler, checked bitwise against the task's own `sample` on the first batch."""

    backend = "native"

    def __init__(self, module: torch.nn.Module, task: Any, cfg: Any, device: torch.device):
        super().__init__(module, task, cfg, device)
        self.opt = None  # the kernel owns the optimiser state
        self.adamw = AdamW(module, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, eps=ADAM_EPS)
        fast = native_topk_sampler(task, cfg.batch_size, topk_from_uniforms)
        if fast is not None:
            self.sampler = CheckedSampler(task, cfg.batch_size, device, fast)

    def __call__(self, batch: Batch, lr: float) -> Tensor:
        index, probs = sparse_kl(self.task, batch)
        return train_step(self.module, batch.inputs["tokens"], batch.inputs["weights"], index, probs,
                          bf16=self.cfg.precision == "bf16", adamw=self.adamw, lr=lr)

