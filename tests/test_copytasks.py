"""Synthetic copy tasks (longalign.data.copytasks): masks mark exactly the copied tokens; accuracy is checked with oracles."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from longalign.data import copytasks

ALPHABET = np.arange(100, 400)


def _copy_source(ids: np.ndarray, mask: np.ndarray) -> int:
    """The single look-back distance d with ids[t] == ids[t - d] on every masked t (the copy's offset)."""
    ts = np.flatnonzero(mask)
    offsets = [d for d in range(1, len(ids)) if all(t - d >= 0 and ids[t] == ids[t - d] for t in ts)]
    assert offsets, "masked tokens are not a copy of earlier tokens"
    return offsets[0]


def test_fixed_offset_copy_repeats_first_half():
    ids, mask = copytasks.fixed_offset_copy(np.random.default_rng(0), ALPHABET, 64)
    assert np.array_equal(ids[32:], ids[:32]) and set(ids) <= set(ALPHABET)
    assert mask.sum() == 31 and not mask[:33].any()  # the first copied token is not predictable
    assert _copy_source(ids, mask) == 32


@pytest.mark.parametrize("seed", range(20))
def test_content_copy_places_one_span_later(seed):
    ids, mask = copytasks.content_copy(np.random.default_rng(seed), ALPHABET, 128, span=(8, 32))
    ts = np.flatnonzero(mask)
    k = len(ts) + 1
    assert 8 <= k <= 32 and np.array_equal(ts, np.arange(ts[0], ts[0] + len(ts)))  # one contiguous span
    d = _copy_source(ids, mask)
    assert ts[0] - 1 - d >= 0 and ts[0] - 1 - d + k <= 64  # the source lies in the first half, before the copy
    assert d >= k  # source and copy do not overlap


def test_content_copy_offsets_vary():
    """Unlike fixed_offset, the look-back distance changes from example to example (position alone cannot copy)."""
    rng = np.random.default_rng(0)
    offsets = {_copy_source(*copytasks.content_copy(rng, np.arange(1000, 9000), 128)) for _ in range(30)}
    assert len(offsets) > 10


@pytest.mark.parametrize("seed", range(10))
def test_repeated_sequence_is_periodic_and_masks_every_copy(seed):
    ids, mask = copytasks.repeated_sequence(np.random.default_rng(seed), ALPHABET, 64, period=(8, 24))
    k = int(np.flatnonzero(mask)[0]) - 1  # the first masked token is the second of the first copy
    assert 8 <= k <= 24 and set(ids) <= set(ALPHABET)
    assert all(ids[t] == ids[t - k] for t in range(k, 64))  # a copy of the token one period back
    assert mask.sum() == 64 - k - 1 and not mask[:k + 1].any()
    assert _copy_source(ids, mask) <= k  # (a shorter look-back fits only if the random sequence repeats itself)


def test_repeated_sequence_periods_vary():
    rng = np.random.default_rng(0)
    periods = {int(np.flatnonzero(copytasks.repeated_sequence(rng, np.arange(1000, 9000), 64)[1])[0]) - 1 for _ in range(40)}
    assert len(periods) > 8


def test_natural_copy_keeps_the_window_outside_the_copy():
    stream = np.arange(10_000)  # every token distinct: the copy is the only repetition
    ids, mask = copytasks.natural_copy(np.random.default_rng(3), stream, 64)
    start = ids[0]
    copied = np.zeros(64, bool)
    copied[np.flatnonzero(mask)[0] - 1:np.flatnonzero(mask)[-1] + 1] = True
    assert np.array_equal(ids[~copied], np.arange(start, start + 64)[~copied])
    assert len(set(ids)) == 64 - copied.sum()
    assert stream[0] == 0  # the stream itself is not modified


class _Oracle(torch.nn.Module):
    """Predicts ids[t + 1] = ids[t + 1 - d]: a perfect fixed-offset copier (and a poor LM elsewhere)."""

    def __init__(self, d: int, vocab: int = 400):
        super().__init__()
        self.d, self.vocab = d, vocab

    def forward(self, input_ids):
        pad = torch.zeros_like(input_ids[:, :self.d - 1])  # token 0 is outside ALPHABET: no wrap-around hits
        nxt = torch.cat([pad, input_ids[:, :input_ids.shape[1] - self.d + 1]], dim=1)
        return SimpleNamespace(logits=torch.nn.functional.one_hot(nxt, self.vocab).float())


def test_copy_accuracy_separates_copy_from_other_tokens():
    rng = np.random.default_rng(0)
    examples = [copytasks.fixed_offset_copy(rng, ALPHABET, 64) for _ in range(8)]
    acc = copytasks.copy_accuracy(_Oracle(32), examples)
    assert acc["copy"] == 1.0 and acc["other"] < 0.05
    wrong = copytasks.copy_accuracy(_Oracle(31), examples)  # one position off: copies nothing
    assert wrong["copy"] < 0.05


def test_frequent_tokens_orders_by_count():
    stream = np.array([5, 5, 5, 2, 2, 9])
    assert list(copytasks.frequent_tokens(stream, 2)) == [5, 2]


def test_bench_induction_train_writes_what_findings_reads(tmp_path, monkeypatch):
    """benchmarks/bench_induction.py's per-task record (3 steps) has the fields longalign.findings.retrieval_why quotes."""
    import sys

    from longalign import findings, paths
    from longalign.records import write_record

    monkeypatch.syspath_prepend(str(paths.ROOT / "benchmarks"))
    bench = __import__("bench_induction")
    held = bench._held(lambda r: copytasks.content_copy(r, ALPHABET, bench.LENGTH), n=4)
    task = bench._train(lambda r: copytasks.content_copy(r, ALPHABET, bench.LENGTH), held, vocab=400, steps=3, every=2)
    assert [e["step"] for e in task["evals"]] == [0, 2] and task["first_step_copy_ge_0.5"] is None
    repeated = bench._train(lambda r: copytasks.repeated_sequence(r, ALPHABET, bench.LENGTH), held, vocab=400, steps=3,
                            every=2, transfer={"content": held, "natural": held})
    assert set(repeated["evals"][-1]["transfer"]) == {"content", "natural"}
    details = {"model": "m", "steps": 3, "tokens": 3 * bench.BATCH * bench.LENGTH,
               "tasks": {"fixed_offset": task, "content": task, "natural": task, "repeated": repeated, "mixed": task}}
    write_record(paths.outputs() / findings.INDUCTION_RECORD, {"details": details})
    why = findings.retrieval_why(paths.outputs())
    assert "copying by content not learnt" in why and "trained on repeated random sequences instead" in why
    assert "kept 50/50 in a mix with natural text, copying in natural text is not learnt" in why
    sys.modules.pop("bench_induction", None)
