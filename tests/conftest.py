"""Shared test setup: CPU only, few threads, an isolated model cache per test session."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Tests never read or fill the user's model cache."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("SPARSEBENCH_CACHE")
    os.environ["SPARSEBENCH_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SPARSEBENCH_CACHE", None)
    else:
        os.environ["SPARSEBENCH_CACHE"] = old


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
