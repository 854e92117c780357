"""Shared pytest setup: every test writes into its own temporary outputs folder."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DS_ACCELERATOR", "cpu")


@pytest.fixture(autouse=True)
def _isolated_outputs(tmp_path, monkeypatch):
    """Point ``longalign.paths.outputs()`` at a per-test folder so tests never touch ``outputs/``."""
    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(tmp_path / "outputs"))
    yield


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread beats two threads fighting over a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
