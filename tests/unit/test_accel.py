"""The speed door (`sparsebench.accel`): backends are chosen once and only where they apply, the fused
loss equals autograd, fast samplers prove themselves bitwise, and the science path imports no speed code."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch

from sparsebench.accel.fused import bag_residual, supports_fused, unembed_kl, unembed_kl_reference
from sparsebench.accel.sampling import CheckedSampler, reference_sample, torch_topk_sampler
from sparsebench.api import Batch
from sparsebench.build import make_task
from sparsebench.context import RunContext
from sparsebench.errors import UserError
from sparsebench.models.mlp import MLP, StackedMLP
from sparsebench.tasks.topk import TopKUniform
from sparsebench.training import TrainConfig, init_models, seed_generator, train

MODEL = {"d_model": 8, "d_mlp": 8}
CFG = TrainConfig(steps=12, batch_size=32, lr=1e-2, warmup=3)
PACKAGE = Path(__file__).resolve().parents[2] / "sparsebench"


@pytest.fixture(scope="module")
def task():
    return make_task("topk-uniform", {"V": 40, "k": 3})


def ctx(backend: str = "auto", workers: int = 1) -> RunContext:
    return RunContext.create("cpu", progress=False, backend=backend, workers=workers)


# ---- the door ----

def test_the_door_refuses_unknown_choices_before_any_work():
    with pytest.raises(UserError, match="--backend must be one of auto, torch, fused, native"):
        ctx("fast")
    with pytest.raises(UserError, match="--workers must be at least 1"):
        ctx(workers=0)
    with pytest.raises(UserError, match="--workers is for the local executor"):
        RunContext.create("cpu", workers=2, executor="ray")
    with pytest.raises(UserError, match="--executor must be one of local, ray"):
        RunContext.create("cpu", executor="slurm")


def test_backends_apply_only_where_they_cover_the_model(task):
    stacked = MLP.stacked(init_models(task, "mlp1", MODEL, [0, 1]))
    assert ctx("torch").accel.step(stacked, task, CFG) is None
    assert ctx("auto").accel.step(stacked, task, CFG).backend == "fused"
    gpu = RunContext(device=torch.device("cuda"), backend="auto")  # never run: only the choice is asked
    assert gpu.accel.step(stacked, task, CFG) is None  # auto: fused on the CPU only
    single = init_models(task, "mlp1", MODEL, [0])[0]
    assert ctx("fused").accel.step(single, task, CFG) is None  # not a stacked model


def test_fused_and_plain_training_agree(task):
    a = train(task, "mlp1", MODEL, CFG, [3], ctx("fused"))
    b = train(task, "mlp1", MODEL, CFG, [3], ctx("torch"))
    for (name, pa), (_, pb) in zip(a.models[0].named_parameters(), b.models[0].named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-4, msg=name)


def _imports(path: Path) -> set[str]:
    """Every sparsebench module a file imports when it runs, at module level or inside functions (imports
    under `if TYPE_CHECKING:` are for annotations only and never execute, so they are left out)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.startswith("sparsebench")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


def _package_files() -> dict[str, Path]:
    root = PACKAGE.parent
    mapped = {"sparsebench": root / "sparsebench", "sparsebench.tasks": root / "tasks",
              "sparsebench.mechanisms": root / "mechanisms", "sparsebench.baselines": root / "baselines",
              "sparsebench.leaderboard": root / "leaderboard"}
    files = {}
    for pkg, folder in mapped.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("").parts
            name = ".".join([pkg, *[p for p in rel if p != "__init__"]])
            files[name] = f
    return files


def test_the_science_path_imports_no_speed_code():
    files = _package_files()
    science = [m for m in files if m.split(".")[1:2] and m.split(".")[1] in
               ("training", "evaluate", "checkpoints", "models", "tasks", "probes", "api", "records", "mechanisms",
                "baselines", "suite", "settings", "build")]
    assert science
    for name in science:
        speed = sorted(m for m in _imports(files[name]) if m.startswith("sparsebench.accel"))
        assert not speed, f"{name} imports speed code: {speed}"


def test_no_import_cycles_between_modules():
    files = _package_files()
    graph = {name: {m for m in _imports(path) if m in files and m != name} for name, path in files.items()}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            if seen.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in seen:
                visit(nxt, path + [nxt])
        seen[node] = 2

    for name in sorted(graph):
        if name not in seen:
            visit(name, [name])


# ---- fast samplers ----

@pytest.mark.parametrize("name,config", [("topk-uniform", {"V": 40, "k": 3}),
                                         ("topk-conditional", {"V": 9, "k": 9, "target": "softmax"})])
def test_the_stacked_sampler_equals_the_tasks_own_sample_bitwise(name, config):
    task = make_task(name, config)
    ours, theirs = ([seed_generator(s, "data") for s in range(3)] for _ in range(2))
    fast = torch_topk_sampler(task, 7, "cpu")
    for _ in range(3):  # the generators move on: three batches in a row
        a, b = fast(ours), reference_sample(task, 7, theirs, "cpu")
        assert all(torch.equal(a.inputs[k], b.inputs[k]) for k in b.inputs) and torch.equal(a.target, b.target)


def test_a_checked_sampler_refuses_a_fast_sampler_that_differs(task):
    def wrong(gens):  # one token off in the first sample
        batch = reference_sample(task, 4, gens, "cpu")
        tokens = batch.inputs["tokens"].clone()
        tokens[0, 0, 0] = (tokens[0, 0, 0] + 1) % task.config.V
        return Batch({**batch.inputs, "tokens": tokens}, batch.target)

    with pytest.raises(RuntimeError, match="differs from its sample"):
        CheckedSampler(task, 4, "cpu", wrong)([seed_generator(0, "data")])
    right = CheckedSampler(task, 4, "cpu", torch_topk_sampler(task, 4, "cpu"))
    gens = [seed_generator(0, "data")]
    first = right(gens)
    assert right.checked and torch.equal(first.inputs["tokens"],
                                         reference_sample(task, 4, [seed_generator(0, "data")], "cpu").inputs["tokens"])


def test_a_subclass_is_never_sampled_by_a_fast_sampler(task):
    class Evens(TopKUniform):  # a plugin that draws its data its own way
        def sample(self, n, *, generator, device="cpu"):
            batch = super().sample(n, generator=generator, device=device)
            return Batch({**batch.inputs, "tokens": batch.inputs["tokens"] * 0}, batch.target)

    assert torch_topk_sampler(Evens(task.config), 4, "cpu") is None
    stacked = MLP.stacked(init_models(task, "mlp1", MODEL, [0, 1]))
    step = ctx("fused").accel.step(stacked, Evens(task.config), CFG)
    assert step.backend == "fused" and step.sampler is None
    assert int(step.sample([seed_generator(s, "data") for s in (0, 1)]).inputs["tokens"].abs().sum()) == 0


# ---- the fused unembedding + sparse KL ----

def test_stacked_embedding_backward_matches_autograd(task):
    models = init_models(task, "mlp1", MODEL, [0, 1])
    stacked = MLP.stacked(models).double()
    batch = reference_sample(task, 8, [seed_generator(s, "data") for s in range(2)], "cpu")
    tokens, weights = batch.inputs["tokens"], batch.inputs["weights"].double().requires_grad_()
    W_E = stacked.p("embed.W_E")
    torch.autograd.gradcheck(lambda w, E: bag_residual(_with(stacked, E), tokens, w),
                             (weights, W_E.detach().clone().requires_grad_()))
    with torch.no_grad():  # and the bag equals the plain residual
        torch.testing.assert_close(bag_residual(stacked, tokens, weights), stacked.residual(tokens, weights))


def _with(stacked: StackedMLP, E: torch.Tensor) -> StackedMLP:
    """`stacked` with its embedding replaced by E (for gradcheck)."""
    class View:
        config = stacked.config

        def p(self, name: str) -> torch.Tensor:
            return E if name == "embed.W_E" else stacked.p(name)

        def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
            return StackedMLP.run_blocks(self, x)  # type: ignore[arg-type]

    return View()  # type: ignore[return-value]



def _problem(N, B, d, V, k, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = torch.randn(N, B, d, generator=g, dtype=dtype, requires_grad=True)
    W = (torch.randn(N, d, V, generator=g, dtype=dtype) * 2).requires_grad_()
    b = torch.randn(N, V, generator=g, dtype=dtype, requires_grad=True)
    index = torch.stack([torch.stack([torch.randperm(V, generator=g)[:k] for _ in range(B)]) for _ in range(N)])
    probs = torch.softmax(torch.randn(N, B, k, generator=g, dtype=dtype), -1)
    return r, W, b, index, probs


@pytest.mark.parametrize("chunk_bytes", [64, 4 * 50 * 7, 4 * 50 * 20 * 2, 1 << 30],
                         ids=["row", "rows", "instances", "whole"])
def test_fused_loss_and_grads_equal_autograd(chunk_bytes):
    r, W, b, index, probs = _problem(N=3, B=20, d=6, V=50, k=4)
    up = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)  # a non-trivial upstream gradient
    fused = unembed_kl(r, W, b, index, probs, chunk_bytes=chunk_bytes)
    ref = unembed_kl_reference(r, W, b, index, probs)
    torch.testing.assert_close(fused, ref, rtol=1e-10, atol=1e-10)
    g_fused = torch.autograd.grad((fused * up).sum(), (r, W, b))
    g_ref = torch.autograd.grad((ref * up).sum(), (r, W, b))
    for name, a, c in zip(("r", "W_U", "b_U"), g_fused, g_ref):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-10, msg=name)


def test_fused_loss_fp32_unstacked_and_without_bias():
    r, W, b, index, probs = _problem(N=1, B=33, d=5, V=70, k=3, dtype=torch.float32)
    r1, W1, i1, p1 = r[0].detach().requires_grad_(), W[0].detach().requires_grad_(), index[0], probs[0]
    fused = unembed_kl(r1, W1, None, i1, p1, chunk_bytes=4 * 70 * 8)
    ref = unembed_kl_reference(r1, W1, None, i1, p1)
    assert fused.dim() == 0
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    for a, c in zip(torch.autograd.grad(fused, (r1, W1)), torch.autograd.grad(ref, (r1, W1))):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)


def test_fused_loss_handles_extreme_logits():
    r, W, b, index, probs = _problem(N=2, B=10, d=4, V=30, k=2, dtype=torch.float32)
    with torch.no_grad():
        W.mul_(200.0)  # logits in the thousands: exp would overflow without the max shift
    fused = unembed_kl(r, W, b, index, probs)
    ref = unembed_kl_reference(r, W, b, index, probs)
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused, ref, rtol=1e-4, atol=1e-3)


def test_fused_loss_bf16_matmuls_are_close():
    r, W, b, index, probs = _problem(N=2, B=64, d=16, V=200, k=5, dtype=torch.float32)
    with torch.no_grad():
        W.mul_(0.25)
    fused = unembed_kl(r, W, b, index, probs, mm_dtype=torch.bfloat16)
    ref = unembed_kl_reference(r, W, b, index, probs)
    torch.testing.assert_close(fused, ref, rtol=2e-2, atol=2e-2)
    gW = torch.autograd.grad(fused.sum(), W)[0]
    gW_ref = torch.autograd.grad(ref.sum(), W)[0]
    assert (gW - gW_ref).norm() / gW_ref.norm() < 2e-2


def test_fused_loss_equals_the_task_loss(task):
    models = init_models(task, "mlp1", MODEL, [0, 1])
    stacked = MLP.stacked(models)
    batch = reference_sample(task, 24, [seed_generator(s, "data") for s in range(2)], "cpu")
    index, probs = task.sparse_kl_target(batch)
    with torch.no_grad():
        fused = unembed_kl(bag_residual(stacked, **batch.inputs), *stacked.unembed_params(), index, probs)
        generic = task.loss(stacked(**batch.inputs), batch).mean(-1)
    torch.testing.assert_close(fused, generic, rtol=1e-5, atol=1e-5)


def test_conditional_task_uses_the_fused_path_too():
    task = make_task("topk-conditional", {"V": 30, "k": 3})
    assert supports_fused(task)
    a = train(task, "mlp1", MODEL, CFG, [1], ctx("fused"))
    b = train(task, "mlp1", MODEL, CFG, [1], ctx("torch"))
    assert (a.backend, b.backend) == ("fused", "torch")
    torch.testing.assert_close(a.models[0].W_U, b.models[0].W_U, rtol=1e-4, atol=1e-4)


class _SquaredErrorTask(TopKUniform):
    """A plugin-like task with its own loss: must train through task.loss, never the fused path."""

    calls = 0

    def loss(self, logits, batch):
        type(self).calls += 1
        q = torch.softmax(logits, -1).gather(-1, batch.inputs["tokens"])
        return ((q - batch.target) ** 2).sum(-1)


def test_tasks_with_their_own_loss_use_the_plain_path():
    task = _SquaredErrorTask(TopKUniform.Config(V=30, k=3))
    assert not supports_fused(task)
    models = init_models(task, "mlp1", MODEL, [0])
    assert ctx("fused").accel.step(MLP.stacked(models), task, CFG) is None
    before = _SquaredErrorTask.calls
    res = train(task, "mlp1", MODEL, CFG, [0], ctx("fused"))
    assert res.backend == "torch"
    assert _SquaredErrorTask.calls - before == CFG.steps
    assert all(math.isfinite(x) for x in res.final_loss)


def test_tasks_can_declare_a_sparse_target():
    class Declared(_SquaredErrorTask):
        def sparse_kl_target(self, batch):
            return batch.inputs["tokens"], batch.target

    assert supports_fused(Declared(TopKUniform.Config(V=30, k=3)))


