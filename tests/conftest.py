"""Shared test setup: CPU only, one thread, an isolated model cache per test session."""

from __future__ import annotations

import os

import pytest
import torch

# One thread: these models are small, and on a shared 2-core machine one thread was as fast as two
# for training and several times faster for the tiny tensors of the mechanism tests.
torch.set_num_threads(1)


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
