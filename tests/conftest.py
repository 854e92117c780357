"""Shared pytest setup: every test writes into its own temporary outputs folder."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from typing import Callable

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


class StderrRecorder(io.TextIOBase):
    """A ``sys.stderr`` (inside ``with``) that keeps every write from any thread.

    Tests that watch another thread's messages use this, not ``capsys.readouterr()`` in a loop: that
    call reads then truncates its buffer, so a write landing between the two is lost and a loop waiting
    for it spins forever (a CI run hung 80 min on exactly that). Enter it inside the test body: pytest
    installs its own capture at the start of the call phase, over anything a fixture set.
    """

    def __init__(self) -> None:
        self.text, self._lock, self._saved = "", threading.Lock(), None

    def write(self, s: str) -> int:
        with self._lock:
            self.text += s
        return len(s)

    def __enter__(self) -> "StderrRecorder":
        self._saved, sys.stderr = sys.stderr, self
        return self

    def __exit__(self, *exc) -> None:
        sys.stderr = self._saved

    def wait_for(self, text: str, alive: Callable[[], bool], what: str, timeout: float = 60.0) -> str:
        """Poll until ``text`` was written; fail at once if ``alive()`` turns false, or after ``timeout``."""
        deadline = time.monotonic() + timeout
        while text not in self.text:
            assert alive(), f"{what} ended without writing {text!r}; stderr: {self.text[-2000:]}"
            assert time.monotonic() < deadline, f"{what} wrote no {text!r} in {timeout} s; stderr: {self.text[-2000:]}"
            time.sleep(0.01)
        return self.text


@pytest.fixture
def stderr_recorder() -> StderrRecorder:
    """A fresh :class:`StderrRecorder`; use it as ``with stderr_recorder:`` around the threads it watches."""
    return StderrRecorder()
