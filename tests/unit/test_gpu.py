"""Training on CUDA, in fp32 and with bf16 autocast (skipped on machines without a GPU)."""

from __future__ import annotations

import math

import pytest
import torch

from sparsebench.build import make_task
from sparsebench.training import TrainConfig, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA: GPU training paths (fp32 and bf16 autocast)")

MODEL = {"d_model": 16, "d_mlp": 16}


@pytest.fixture(scope="module")
def task():
    return make_task("topk-uniform", {"V": 100, "k": 3})


def _held_out_kl(task, model):
    batch = task.held_out(512, device="cuda")
    with torch.no_grad():
        return task.loss(model(**batch.inputs).float(), batch).mean().item()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_short_cuda_training_learns(task, precision):
    cfg = TrainConfig(steps=200, batch_size=256, lr=1e-2, warmup=10, precision=precision)
    res = train(task, "mlp1", MODEL, cfg, [0, 1], device=torch.device("cuda"), progress=False)
    assert len(res.models) == 2
    for model, loss in zip(res.models, res.final_loss):
        assert next(model.parameters()).device.type == "cuda"
        assert next(model.parameters()).dtype == torch.float32  # bf16 is autocast only: weights stay fp32
        assert math.isfinite(loss)
        assert _held_out_kl(task, model) < 0.8 * math.log(100 / 3)


def test_cuda_batched_equals_separate(task):
    cfg = TrainConfig(steps=20, batch_size=64, warmup=2)
    dev = torch.device("cuda")
    together = train(task, "mlp1", MODEL, cfg, [0, 1], device=dev, progress=False)
    alone = train(task, "mlp1", MODEL, cfg, [1], device=dev, progress=False)
    torch.testing.assert_close(together.models[1].W_U, alone.models[0].W_U, rtol=1e-4, atol=1e-4)


def test_cuda_fused_loss_matches_generic(task):
    cfg = TrainConfig(steps=20, batch_size=64, warmup=2)
    dev = torch.device("cuda")
    a = train(task, "mlp1", MODEL, cfg, [0], device=dev, progress=False, fused=True)
    b = train(task, "mlp1", MODEL, cfg, [0], device=dev, progress=False, fused=False)
    torch.testing.assert_close(a.models[0].W_U, b.models[0].W_U, rtol=1e-3, atol=1e-3)


def test_bf16_stays_close_to_fp32(task):
    dev = torch.device("cuda")
    base = dict(steps=100, batch_size=256, lr=1e-2, warmup=10)
    fp32 = train(task, "mlp1", MODEL, TrainConfig(**base), [0], device=dev, progress=False)
    bf16 = train(task, "mlp1", MODEL, TrainConfig(**base, precision="bf16"), [0], device=dev, progress=False)
    a, b = _held_out_kl(task, fp32.models[0]), _held_out_kl(task, bf16.models[0])
    assert abs(a - b) < 0.1 * a + 0.05
