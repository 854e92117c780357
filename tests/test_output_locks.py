"""Every results writer takes its folder's write lock: while another process holds it, the writer waits, then resumes."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from longalign import paths, records
from longalign.eval import longbench_chat, mtbench, scaling
from longalign.eval.judge import Judge, JudgeRequest, judge_sweep, sweep_dir


def _fake_generate(model, tokenizer, prompts, **kw):
    return [f"answer {p if isinstance(p, str) else p[-1]['content']}" for p in prompts]


def _judge() -> tuple[Any, Callable[[], Any]]:
    reqs = [JudgeRequest("a/b", "", "cat", "cat"), JudgeRequest("a_b", "", "dog", "cat")]
    return sweep_dir("b", "overlap", "m"), lambda: judge_sweep(Judge("overlap"), reqs, benchmark="b", model_tag="m",
                                                               runs=1)


def _longbench_chat() -> tuple[Any, Callable[[], Any]]:
    items = [{"id": "x/1", "prompt": "p1"}, {"id": "x_1", "prompt": "p2"}]
    return longbench_chat.answers_dir("b", "m"), lambda: longbench_chat.generate_answers(
        None, None, items, benchmark="b", model_tag="m", max_new_tokens=4)


def _mtbench() -> tuple[Any, Callable[[], Any]]:
    qs = [{"question_id": 1, "category": "math", "turns": ["q1a", "q1b"]},
          {"question_id": 2, "category": "writing", "turns": ["q2a", "q2b"]}]
    return paths.results_dir("answers") / "mtbench" / "m", lambda: mtbench.generate_answers(None, None, qs,
                                                                                            model_tag="m")


def _scaling(monkeypatch) -> tuple[Any, Callable[[], Any]]:
    from longalign import train

    monkeypatch.setattr(scaling, "variant_config", lambda v, data, defaults: v["name"])
    monkeypatch.setattr(train, "launch_runs", lambda cfgs, **kw: [{"name": c} for c in cfgs])
    monkeypatch.setattr(scaling, "evaluate_variant", lambda name, run, *a, **kw: {"name": name})
    variants = [{"name": "s"}, {"name": "l"}]
    return paths.results_dir("scaling"), lambda: scaling.run_scaling(variants, [], {}, [], [], eval_max_len=8)


HOLDER = "import sys; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); print('held', flush=True); sys.stdin.read()"


@contextlib.contextmanager
def _held_by_another_process(lock: Path) -> Iterator[None]:
    """A second Python process holds ``lock`` until the block ends (it exits when its stdin closes)."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held", "the holder process could not take the lock"
        yield
    finally:
        proc.stdin.close()
        proc.wait(30)


@pytest.mark.parametrize("writer", ["judge", "longbench_chat", "mtbench", "scaling"])
def test_writer_waits_for_the_folder_lock_then_writes(writer, monkeypatch, stderr_recorder):
    import longalign.eval.generate as gen

    monkeypatch.setattr(gen, "generate", _fake_generate)
    folder, write = _scaling(monkeypatch) if writer == "scaling" else globals()[f"_{writer}"]()
    done: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: done.update(result=write()))
    with stderr_recorder, _held_by_another_process(records.lock_path(folder)):
        thread.start()
        err = stderr_recorder.wait_for("another process is writing", thread.is_alive, f"{writer} (it must wait)")
        assert str(folder) in err and not list(folder.rglob("*.json")), "nothing may be written while it waits"
    thread.join(60)
    assert "result" in done and len(list(folder.rglob("*.json"))) == 2  # after the release, every record once
