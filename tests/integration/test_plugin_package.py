"""A third-party plugin package, built and installed in a temporary folder, is listed and usable."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "sparsebench-example-plugin"
version = "0.3.1"

[project.entry-points."sparsebench.tasks"]
topk-evens = "sb_example_plugin:TopKEvens"
broken-task = "sb_example_plugin_missing:Nope"
"""

MODULE = '''
"""A plugin task: top-k over the even tokens only."""
from dataclasses import dataclass

import torch

from sparsebench.api import Batch
from sparsebench.config import check
from sparsebench.tasks.topk import TopKUniform, floyd_sample


@dataclass(frozen=True)
class EvensConfig:
    V: int = 64  # vocabulary size
    k: int = 3  # tokens per sample
    w_lo: float = 1.0  # lowest weight
    w_hi: float = 2.0  # highest weight

    def __post_init__(self):
        check("task", self.V % 2 == 0, "V", "must be even")


class TopKEvens(TopKUniform):
    Config = EvensConfig

    def sample(self, n, *, generator, device="cpu"):
        c = self.config
        u = torch.rand(n, 2 * c.k, generator=generator, device=device, dtype=torch.float64)
        tokens = 2 * floyd_sample(u[:, : c.k], c.V // 2)
        weights = (c.w_lo + (c.w_hi - c.w_lo) * u[:, c.k:]).float()
        return Batch({"tokens": tokens, "weights": weights}, self.target_probs(weights))
'''


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("plugin_src")
    (src / "pyproject.toml").write_text(textwrap.dedent(PYPROJECT))
    (src / "sb_example_plugin.py").write_text(textwrap.dedent(MODULE))
    site = tmp_path_factory.mktemp("plugin_site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(src)], check=True)
    return site


def _cli(site: Path, *args: str, tmp: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site), "SPARSEBENCH_CACHE": str(tmp / "cache")}
    return subprocess.run([sys.executable, "-m", "sparsebench", *args], capture_output=True, text=True, env=env,
                          cwd=tmp, timeout=300)


def test_plugin_is_listed_with_its_distribution(plugin_site, tmp_path):
    r = _cli(plugin_site, "list", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if "topk-evens" in ln)
    assert "sparsebench-example-plugin" in line and "0.3.1" in line
    assert "topk-uniform" in r.stdout  # the built-ins keep working next to it
    # The broken entry point is named in a warning; nothing else breaks.
    assert "broken-task" in r.stderr and "failed to load" in r.stderr


def test_plugin_task_trains_from_the_cli(plugin_site, tmp_path):
    r = _cli(plugin_site, "train", "--task", "topk-evens", "--no-progress", "--set", "train.steps=20",
             "--set", "train.warmup=2", "--set", "train.batch_size=32", "--set", "model.d_model=8",
             "--set", "model.d_mlp=8", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "seed 0: trained" in r.stdout
    bad = _cli(plugin_site, "train", "--task", "topk-evens", "--set", "task.V=63", tmp=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == \
        "error: invalid task config: V: must be even"
