"""The contract every registered entry must keep, as plain functions (so a test can show they have teeth).

`test_registries.py` runs them over every registered task, model, mechanism, probe and null, so a
plugin installed in the environment is tested by `pytest tests/contract` for free. Each check fails
on a vacuous entry, not only a broken one: a null model identical to the model it stands for, a
probe that gives no number for any mechanism on any model, a metric without a direction.
"""

from __future__ import annotations

import re
from typing import Any

import safetensors.torch
import torch
from transformer_lens import ActivationCache

from sparsebench import registry
from sparsebench.api import DIRECTIONS, Batch, Fitted, Task, applies
from sparsebench.build import make_mechanism, make_model, make_task
from sparsebench.probes import OWN_NULL, NotApplicable
from sparsebench.records import RESERVED_KEYS

KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")  # a metric or score name a record can hold (records.Key)
SMALL = {"topk": {"V": 120, "k": 3}}  # small configs for the built-in families; other families use defaults
LAYER0_HOOKS = ("blocks.0.mlp.hook_pre", "blocks.0.mlp.hook_post", "blocks.0.hook_resid_post")


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def small_task(name: str) -> Task:
    cls = registry.tasks.get(name)
    try:
        return make_task(name, SMALL.get(getattr(cls, "family", ""), {}))
    except Exception:  # noqa: BLE001 - a plugin task of a built-in family with other fields: its defaults
        return make_task(name, {})


def tasks_for(entry: Any) -> list[Task]:
    """A small instance of every registered task whose family `entry` understands."""
    return [t for t in (small_task(n) for n in registry.tasks.names()) if applies(entry, t) is None]


def small_model(name: str, task: Task, seed: int = 0, width: int = 16) -> Any:
    cls = registry.models.get(name)
    return make_model(name, {f: width for f in cls.width_fields}, task, generator=g(seed))


def check_task(name: str) -> None:
    task = small_task(name)
    assert isinstance(task.family, str) and task.family, "a task names its family"
    dirs = task.metric_directions
    assert dirs, "a task declares its metrics, each with a direction"
    for metric, direction in dirs.items():
        assert direction in DIRECTIONS, f"metric {metric!r}: direction {direction!r} is not one of {DIRECTIONS}"
        assert KEY.match(metric) and metric not in RESERVED_KEYS, f"metric name {metric!r} cannot go in a record"
    a = task.sample(64, generator=g(3))
    b = task.sample(64, generator=g(3))
    assert isinstance(a, Batch) and len(a) == 64
    for key in a.inputs:
        assert torch.equal(a.inputs[key], b.inputs[key]), f"sampling is not deterministic in input {key!r}"
        assert a.inputs[key].shape[0] == 64
    assert not all(torch.equal(a.inputs[k], task.sample(64, generator=g(4)).inputs[k]) for k in a.inputs), \
        "another generator gives the same batch: sampling ignores its generator"
    logits = torch.randn(64, task.n_outputs, generator=g(1))
    loss = task.loss(logits, a)
    assert loss.shape == (64,) and torch.isfinite(loss).all()
    m = task.metrics(logits, a)
    assert m and set(m) <= set(dirs), f"metrics {sorted(set(m) - set(dirs))} have no declared direction"
    assert all(isinstance(v, float) for v in m.values())


def check_model(name: str, tmp_path: Any) -> None:
    cls = registry.models.get(name)
    assert cls.families, "a model names the task families it reads"
    assert cls.width_fields, "a model names the config fields a width sweep sets"
    tasks = tasks_for(cls)
    assert tasks, f"no registered task of families {cls.families}: nothing can train this model"
    task = tasks[0]
    fields = set(cls.Config.__dataclass_fields__)
    assert set(cls.width_fields) <= fields, f"width fields {cls.width_fields} are not all config fields"
    model = small_model(name, task)
    batch = task.sample(4, generator=g(0))
    logits, cache = model.run_with_cache(**batch.inputs)
    assert logits.shape == (4, task.n_outputs)
    assert isinstance(cache, ActivationCache), "run_with_cache returns a TransformerLens ActivationCache"
    assert int(model.cfg.n_layers) == int(model.n_layers) >= 1, "cfg is a TransformerLens config"
    assert set(LAYER0_HOOKS) <= set(cache.keys()), f"missing hooks {set(LAYER0_HOOKS) - set(cache.keys())}"
    assert torch.equal(cache["post", 0], cache["blocks.0.mlp.hook_post"]), "TL shorthand names work"
    zeroed = model.run_with_hooks(**batch.inputs, fwd_hooks=[("blocks.0.mlp.hook_post", lambda a, hook: a * 0)])
    assert zeroed.shape == logits.shape and not torch.allclose(zeroed, logits), "hooks must change the output"
    a, b, c = small_model(name, task, 5), small_model(name, task, 5), small_model(name, task, 6)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert any(not torch.equal(x, y) for x, y in zip(a.state_dict().values(), c.state_dict().values()))
    safetensors.torch.save_model(a, str(tmp_path / "m.safetensors"))
    safetensors.torch.load_model(c, str(tmp_path / "m.safetensors"))
    assert torch.equal(a(**batch.inputs), c(**batch.inputs))


def constructions(name: str) -> list[tuple[Task, Any]]:
    """(task, model) for a mechanism's exact construction on every task of its families (first width that fits)."""
    mech = make_mechanism(name)
    out = []
    for task in tasks_for(mech):
        for width in (32, 48, 64, 96):
            try:
                mech.validate(task, width)
            except Exception:  # noqa: BLE001 - too small for this mechanism: try the next width
                continue
            out.append((task, mech.construct(task, width, generator=g(0)).eval()))
            break
        else:
            raise AssertionError(f"mechanism {name} cannot be built on {task.name} at any width up to 96")
    return out


def check_mechanism(name: str) -> None:
    mech = make_mechanism(name)
    assert mech.families, "a mechanism names the task families it understands"
    built = constructions(name)
    assert built, f"no registered task of families {mech.families}"
    for task, model in built:
        batch = task.sample(16, generator=g(1))
        assert model(**batch.inputs).shape == (16, task.n_outputs)
        fresh = [small_model(n, task) for n in registry.models.names()
                 if applies(registry.models.get(n), task) is None]
        for target in (model, *fresh):
            fitted = mech.fit(target, task, generator=g(2))
            assert isinstance(fitted, Fitted)
            summary = fitted.summary()
            assert all(isinstance(v, (int, float, str)) for v in summary.values())
            assert all(KEY.match(k) for k in summary), f"fit summary keys {list(summary)} cannot go in a record"


def check_probe_result(probe: Any, result: Any) -> bool:
    """Whether `result` is a number-bearing result (True) or a proper 'not applicable' (False)."""
    if isinstance(result, NotApplicable):
        assert result.reason and "\n" not in result.reason
        return False
    own, scores = {k for k in result if OWN_NULL in k}, {k for k in result if OWN_NULL not in k}
    assert probe.main in scores and scores <= set(probe.directions), f"scores {scores} vs {set(probe.directions)}"
    assert all(probe.directions[k] in DIRECTIONS and KEY.match(k) for k in scores)
    assert {k.split(OWN_NULL)[0] for k in own} <= scores  # a probe's own null belongs to one of its scores
    assert all(isinstance(v, float) for v in result.values())
    return True


def check_probe(name: str) -> None:
    probe = registry.probes.get(name)()
    assert probe.families, "a probe names the task families it understands"
    scored = 0
    for mech_name in registry.mechanisms.names():
        for task, model in constructions(mech_name):
            if applies(probe, task):
                continue
            batch = task.sample(64, generator=g(1))
            for target in (model, small_model(next(n for n in registry.models.names()
                                                   if applies(registry.models.get(n), task) is None), task)):
                fitted = make_mechanism(mech_name).fit(target, task, generator=g(2))
                scored += check_probe_result(probe, probe.score(target, fitted, task, batch))
    assert scored, (f"probe {name} gives no number for any registered mechanism on its construction or a fresh "
                    f"model: it tests nothing")


def check_null(name: str) -> None:
    null_cls = registry.baselines.get(name)
    for task in tasks_for_any_model():
        model_name = next(n for n in registry.models.names() if applies(registry.models.get(n), task) is None)
        model = small_model(model_name, task)
        model.name = model_name
        before = {k: v.clone() for k, v in model.state_dict().items()}
        null = null_cls().make(model, task, seed=0, generator=g(0))
        assert null is not model
        assert {k: v.shape for k, v in null.state_dict().items()} == {k: v.shape for k, v in before.items()}
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "a null modified its input"
        batch = task.sample(32, generator=g(1))
        with torch.no_grad():
            same = torch.equal(null(**batch.inputs), model(**batch.inputs))
        assert not same, f"null {name} computes exactly what the model computes: it is no null"


def tasks_for_any_model() -> list[Task]:
    """One small task per family some registered model reads."""
    out, seen = [], set()
    for n in registry.tasks.names():
        t = small_task(n)
        if t.family not in seen and any(applies(registry.models.get(m), t) is None for m in registry.models.names()):
            seen.add(t.family)
            out.append(t)
    return out


def check_control(name: str) -> None:
    """A control gives a wrong explanation, or says why not, for every mechanism's fit on its construction and
    on a small model of every registered model class that reads the task (a model-randomisation control needs
    a model with its weight group, e.g. the transformer's W_OV); a control that is wrong about everything (not
    `partial`) must differ from the fit on some capability."""
    from sparsebench.explain import _same
    from sparsebench.probes import NO_BATCH

    control = registry.controls.get(name)()
    assert isinstance(getattr(control, "description", None), str) and control.description
    made = 0
    for mech_name in registry.mechanisms.names():
        mech = make_mechanism(mech_name)
        targets = [(task, model) for task, built in constructions(mech_name)
                   for model in (built, *(small_model(n, task) for n in registry.models.names()
                                          if applies(registry.models.get(n), task) is None))]
        for task, model in targets:
            fitted = mech.fit(model, task, generator=g(2))
            result = control.make(fitted, model, task, refit=lambda m: mech.fit(m, task, generator=g(2)),
                                  generator=g(3))
            if isinstance(result, NotApplicable):
                assert result.reason and "\n" not in result.reason
                continue
            made += 1
            assert isinstance(result, Fitted)
            batch = task.sample(32, generator=g(4))
            names = ("hidden_active", "predict_logits", "predict_candidates", "ideal_activation", "token_code",
                     "clause_codes")
            differs = [n for n in names if hasattr(fitted, n) and hasattr(result, n) and not _same(
                getattr(fitted, n)() if n in NO_BATCH else getattr(fitted, n)(batch),
                getattr(result, n)() if n in NO_BATCH else getattr(result, n)(batch))]
            assert differs or control.partial, f"control {name} of {mech_name} is the fit itself: it tests nothing"
    assert made, f"control {name} applies to no registered mechanism's fit on any construction"


def check_detector(name: str) -> None:
    """A detector names its kind and families, and scores the right space with the right shape, deterministically,
    on a small dense run of every registered task it understands (a model that reads it, at init and perturbed)."""
    from sparsebench.build import make_detector
    from sparsebench.tickets.detectors import DetectionInput
    from sparsebench.tickets.masks import budget, top_mask
    from sparsebench.training import seed_generator

    det = make_detector(name)
    assert det.kind in ("feature", "weight", "control", "reference"), f"kind {det.kind!r}"
    assert det.families, "a detector names the task families it understands"
    tasks = tasks_for(det)
    assert tasks, f"no registered task of families {det.families}"
    for task in tasks:
        model_name = next(n for n in registry.models.names() if applies(registry.models.get(n), task) is None)
        model = small_model(model_name, task)
        init = {k: v.detach().clone() for k, v in model.state_dict().items()}
        later = {k: v + 0.1 * torch.randn(v.shape, generator=g(1)) if v.is_floating_point() and "mask" not in k
                 else v for k, v in init.items()}
        W1 = init["blocks.0.mlp.W1"]
        keep = budget(*W1.shape, 0.9)

        def load(state: dict) -> Any:
            m = small_model(model_name, task)
            m.load_state_dict(state)
            return m

        inp = DetectionInput(task=task, step=10, budget=keep, init=init, at_step=later, final=later,
                             w1_history={0: W1, 10: later["blocks.0.mlp.W1"]}, rho=0.2, near=1, load=load,
                             data=lambda n: task.sample(n, generator=g(2)), generator=lambda s: seed_generator(0, s))
        a, b = det.scores(inp), det.scores(inp)
        want = (W1.shape[0], task.n_outputs) if a.space == "sites" else tuple(W1.shape)
        assert a.space in ("sites", "weights") and tuple(a.values.shape) == want, (a.space, tuple(a.values.shape))
        assert torch.isfinite(a.values).all() and torch.equal(a.values, b.values), "scores must be finite, repeatable"
        if a.space == "weights":
            assert top_mask(a.values, keep).sum() == keep
