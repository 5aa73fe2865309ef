"""Hostile and broken plugins (issue 15, items 1 and 2): one bad entry point never breaks the others, a wrong
kind is refused at load, a built-in name cannot be taken over unless the user says so, and a real Ctrl-C while
plugins load still stops the program."""

from __future__ import annotations

import uuid
import warnings

import pytest

from hostile import fake_dist
from sparsebench import interrupts, registry
from sparsebench.errors import UserError
from sparsebench.mechanisms.bloom import Bloom
from sparsebench.registry import PluginWarning, Registry


@pytest.fixture
def plugins(tmp_path, monkeypatch):
    """Install fake distributions into a folder on sys.path; module names are unique per test."""
    root = tmp_path / "site"
    tag = uuid.uuid4().hex[:8]
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv("SPARSEBENCH_ALLOW_OVERRIDE", raising=False)

    def install(name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]) -> str:
        modules = {f"{m}_{tag}": src for m, src in modules.items()}
        eps = {g: {k: v.replace(":", f"_{tag}:", 1) for k, v in e.items()} for g, e in entry_points.items()}
        fake_dist(root, name, eps, modules)
        return tag

    return install


def load(kind: str) -> tuple[Registry, list[str]]:
    reg = Registry(kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg.names()
    return reg, [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]


@pytest.mark.parametrize("body,why", [
    ("import sys\nsys.exit(3)", "SystemExit: 3"),
    ("import sys\nsys.exit()", "SystemExit"),
    ("raise KeyboardInterrupt('plugin says stop')", "KeyboardInterrupt: plugin says stop"),
    ("raise ImportError('no such thing')", "ImportError: no such thing"),
    ("raise MemoryError()", "MemoryError"),
])
def test_a_plugin_that_exits_or_interrupts_at_import_is_named_and_skipped(plugins, body, why):
    plugins("bad-plugin", {"mechanisms": {"exits": "badmod:M"}}, {"badmod": body})
    reg, warned = load("mechanisms")
    assert {"bloom", "jl", "softmax-bottleneck"} <= set(reg.names())  # the built-ins still load
    assert "exits" not in reg.names() and reg.failed["exits"].startswith(why)
    assert len([w for w in warned if "'exits'" in w]) == 1
    assert "failed to load and is skipped" in warned[0] and "from bad-plugin" in warned[0]
    with pytest.raises(UserError, match="^mechanism 'exits' failed to load: " + why):
        reg.get("exits")


@pytest.mark.parametrize("kind,body,why", [
    ("probes", "class Plain:\n    pass", "not a probe (Plain is not a subclass of sparsebench.probes.Probe)"),
    ("tasks", "def Plain():\n    pass", "not a task (Plain is not a subclass of sparsebench.api.Task)"),
    ("mechanisms", "class Plain:\n    families = ('topk',)",
     "not a mechanism (Plain is not a subclass of sparsebench.api.Mechanism)"),
    ("models", "class Plain:\n    pass", "not a model (Plain has no Config dataclass)"),
    ("models", "import dataclasses\nclass Plain:\n    @dataclasses.dataclass\n    class Config:\n        d: int = 1\n"
               "    families = 'topk'\n    width_fields = ('d',)", "not a model (Plain.families is not a tuple"),
    ("baselines", "Plain = 42", "not a baseline (int is not a null-model class with a make method"),
])
def test_an_entry_of_the_wrong_kind_is_refused_at_load(plugins, kind, body, why):
    plugins("wrong-kind", {kind: {"plain": "plainmod:Plain"}}, {"plainmod": body})
    reg, warned = load(kind)
    assert "plain" not in reg.names() and reg.failed["plain"].startswith(why)
    assert any("'plain'" in w and why in w for w in warned)


def test_register_refuses_a_wrong_kind_too():
    with pytest.raises(TypeError, match="not a probe"):
        Registry("probes").register("plain", type("Plain", (), {}))


def test_a_plugin_cannot_take_a_builtin_name(plugins, monkeypatch):
    # "aaa_x" sorts before "sparsebench": entries used to be taken in (name, module path) order.
    plugins("aaa-x", {"mechanisms": {"bloom": "aaa_x_evil:Bloom", "mine": "aaa_x_evil:Bloom"}},
            {"aaa_x_evil": "from sparsebench.mechanisms.bloom import Bloom as _B\nclass Bloom(_B):\n    pass\n"})
    reg, warned = load("mechanisms")
    assert reg.get("bloom") is Bloom and reg.entry("bloom").source == "sparsebench"
    assert reg.entry("mine").source == "aaa-x"  # its other entries still load
    assert "bloom" in reg.refused and "SPARSEBENCH_ALLOW_OVERRIDE=bloom" in reg.refused["bloom"]
    [line] = [w for w in warned if "'bloom'" in w]
    assert line.startswith("mechanism 'bloom' from aaa-x (aaa_x_evil_") and "refused: the name is a built-in" in line

    for allow in ("bloom", "jl, mechanisms:bloom"):
        monkeypatch.setenv("SPARSEBENCH_ALLOW_OVERRIDE", allow)
        reg, warned = load("mechanisms")
        assert reg.get("bloom") is not Bloom and reg.entry("bloom").source == "aaa-x"
        assert reg.replaced["bloom"].startswith("sparsebench") and any("is replaced by aaa-x" in w for w in warned)
    monkeypatch.setenv("SPARSEBENCH_ALLOW_OVERRIDE", "tasks:bloom")  # another group's name: not this one
    assert load("mechanisms")[0].get("bloom") is Bloom


def test_a_plugin_with_an_unprintable_entry_name_is_refused(plugins):
    plugins("odd-names", {"probes": {"x" * 121: "oddmod:P"}}, {"oddmod": "from sparsebench.probes import Bimodality as P"})
    reg, _ = load("probes")
    assert reg.failed["x" * 121].startswith("its name must be one printable line")


@pytest.fixture
def restore_interrupts(monkeypatch):
    """A library process: the CLI's handlers not installed (whatever an earlier test ran in this process)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    monkeypatch.setattr(interrupts, "_installed", False)
    interrupts.reset()
    yield
    interrupts.reset()
    signal.signal(signal.SIGINT, previous)


def test_a_real_ctrl_c_while_plugins_load_still_stops(plugins, restore_interrupts):
    # The signal arrives during a plugin's import; the plugin even swallows its KeyboardInterrupt (as torch
    # does when its numpy import is interrupted). The registry must still stop, and not call it a plugin fault.
    plugins("slow", {"probes": {"slow": "slowmod:P"}},
            {"slowmod": "import os, signal, time\ntry:\n    os.kill(os.getpid(), signal.SIGINT)\n"
                        "    time.sleep(5)\nexcept BaseException:\n    pass\n"
                        "from sparsebench.probes import Bimodality as P\n"})
    with pytest.raises(KeyboardInterrupt):
        Registry("probes").names()
    assert interrupts.received() is None  # a library process keeps no memory of it after the loading
    interrupts.check()  # and so raises nothing later


def test_a_real_ctrl_c_is_told_apart_from_a_plugins_own(plugins, restore_interrupts):
    plugins("kbi", {"probes": {"own": "ownmod:P"}}, {"ownmod": "raise KeyboardInterrupt"})
    reg, _ = load("probes")  # the plugin's own: skipped, not a stop
    assert reg.failed["own"] == "KeyboardInterrupt: "


def test_the_cli_shows_refused_overrides_and_failures(plugins, monkeypatch):
    plugins("aaa-x", {"mechanisms": {"bloom": "aaa_y:Bloom"}, "probes": {"plain": "aaa_y:Plain"}},
            {"aaa_y": "class Bloom:\n    pass\nclass Plain:\n    pass\n"})
    for kind in ("mechanisms", "probes"):
        reg, _ = load(kind)
        monkeypatch.setattr(registry, kind, reg)
        monkeypatch.setitem(registry.REGISTRIES, kind, reg)
    from typer.testing import CliRunner

    from sparsebench.cli import app

    out = CliRunner().invoke(app, ["list"]).output
    assert "refused override" in out and "failed to load" in out and "not a probe" in out
