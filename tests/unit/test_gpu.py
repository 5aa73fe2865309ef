"""The CUDA path: `mlp1` and the transformer train with batched seeds, in fp32 and with bf16 autocast, without
a host synchronisation per step; the probes and `evaluate` run on the GPU. Marked `gpu`; skipped (with the
reason) where there is no CUDA device. `scripts/gpu-check.sh` runs them on a GPU machine.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from sparsebench.build import make_mechanism, make_task
from sparsebench.context import RunContext
from sparsebench.training import AutogradStep, TrainConfig, init_models, lr_factor, seed_generator, train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(),
                                 reason="needs CUDA: the GPU training, probe and evaluate paths")]

FAMILIES = {  # small configs of the two top-k model families (mlp1, the transformer)
    "mlp1": {"d_model": 16, "d_mlp": 16},
    "transformer": {"d_model": 16, "d_mlp": 16, "n_heads": 1, "d_head": 16, "init_scale": 0.5},
}


@pytest.fixture(scope="module")
def task():
    return make_task("topk-uniform", {"V": 100, "k": 3})


@pytest.fixture(scope="module")
def cuda():
    return RunContext.create("cuda", progress=False)


def _held_out_kl(task, model):
    batch = task.held_out(512, device="cuda")
    with torch.no_grad():
        return task.loss(model(**batch.inputs).float(), batch).mean().item()


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_short_cuda_training_learns(task, cuda, family, precision):
    cfg = TrainConfig(steps=300, batch_size=256, lr=1e-2, warmup=30, precision=precision)
    res = train(task, family, FAMILIES[family], cfg, [0, 1], cuda)
    assert len(res.models) == 2 and res.backend == "torch"  # the plain step: autocast, batched seeds
    for model, loss in zip(res.models, res.final_loss):
        assert next(model.parameters()).device.type == "cuda"
        assert next(model.parameters()).dtype == torch.float32  # bf16 is autocast only: weights stay fp32
        assert math.isfinite(loss)
        assert _held_out_kl(task, model) < 0.8 * math.log(100 / 3)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_cuda_seeds_together_equal_seeds_alone(task, cuda, family):
    cfg = TrainConfig(steps=20, batch_size=64, warmup=2)
    together = train(task, family, FAMILIES[family], cfg, [0, 1], cuda)
    alone = train(task, family, FAMILIES[family], cfg, [1], cuda)
    held = task.held_out(256, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(together.models[1](**held.inputs), alone.models[0](**held.inputs),
                                   rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_training_steps_never_wait_for_the_gpu(task, family, precision):
    """No host synchronisation inside the step loop: torch raises on any synchronising call."""
    cfg = TrainConfig(steps=5, batch_size=64, warmup=1, precision=precision)
    models = init_models(task, family, FAMILIES[family], [0, 1])
    module = type(models[0]).stacked(models).to("cuda")
    step = AutogradStep(module, task, cfg, torch.device("cuda"))
    gens = [seed_generator(s, "data", "cuda") for s in (0, 1)]
    step(step.sample(gens), cfg.lr)  # first call: optimiser state, kernels, allocator
    torch.cuda.synchronize()
    tail = torch.zeros(2, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for i in range(1, cfg.steps):
            tail += step(step.sample(gens), cfg.lr * lr_factor(i, cfg)).reshape(-1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(tail).all()


def test_bf16_stays_close_to_fp32(task, cuda):
    base = dict(steps=200, batch_size=256, lr=1e-2, warmup=20)
    for family, config in FAMILIES.items():
        fp32 = train(task, family, config, TrainConfig(**base), [0], cuda)
        bf16 = train(task, family, config, TrainConfig(**base, precision="bf16"), [0], cuda)
        a, b = _held_out_kl(task, fp32.models[0]), _held_out_kl(task, bf16.models[0])
        assert abs(a - b) < 0.1 * a + 0.05, (family, a, b)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_probes_score_a_bloom_fit_on_the_gpu(task, cuda, family):
    from sparsebench.probes import Bimodality, Candidates, HiddenCode, Patch, Prediction

    cfg = TrainConfig(steps=300, batch_size=256, lr=1e-2, warmup=30)
    (model,) = train(task, family, FAMILIES[family], cfg, [0], cuda).models
    fitted = make_mechanism("bloom").fit(model, task, generator=torch.Generator(device="cuda").manual_seed(0))
    batch = task.held_out(512, device="cuda")
    for probe in (Bimodality(), HiddenCode(), Candidates(), Prediction(), Patch()):
        out = probe.score(model, fitted, task, batch)
        if isinstance(out, dict):
            assert all(math.isfinite(v) for v in out.values()), (type(probe).__name__, out)
        else:  # not applicable is allowed (e.g. no false positives), never an error
            assert out.reason, type(probe).__name__


def test_evaluate_writes_records_on_the_gpu(tmp_path, cuda):
    from sparsebench.evaluate import evaluate
    from sparsebench.settings import suite_from_dict

    suite = suite_from_dict({
        "name": "gpu-tiny", "seeds": [0, 1], "widths": [16], "eval_samples": 1024, "probe_samples": 512,
        "construct": False, "train": {"steps": 150, "warmup": 10, "batch_size": 256, "precision": "bf16"},
        "runs": [{"task": "topk-uniform", "task_config": {"V": 100, "k": 3}},
                 {"task": "topk-uniform", "model": "transformer", "task_config": {"V": 100, "k": 3},
                  "model_config": {"n_heads": 1, "d_head": 16}}]})
    counts = evaluate(suite, tmp_path, cuda)
    assert counts["written"] > 0 and counts["jobs"] == 2
    recs = [json.loads(p.read_text()) for p in tmp_path.glob("*/*.json")]
    assert {r["model"]["name"] for r in recs if r["kind"] == "solution"} == {"mlp1", "transformer"}
    assert all(r["provenance"]["device"].startswith("cuda") for r in recs)
    bloom = [r for r in recs if r["kind"] == "explanation" and r["mechanism"]["name"] == "bloom"]
    assert len(bloom) == 4 and all(r["status"] == "ok" for r in bloom)


def test_bench_refuses_its_cpu_only_parts_on_the_gpu():
    from sparsebench.accel.bench import run_bench
    from sparsebench.errors import UserError

    for regime in ("small", "tickets"):  # CPU overhead and the CPU ticket retraining: nothing to time on a GPU
        with pytest.raises(UserError, match="measures the CPU"):
            run_bench(regime=regime, device="cuda")
