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


@pytest.mark.parametrize("seed", range(10))
def test_natural_repeat_tiles_a_chunk_of_the_stream(seed):
    stream = np.arange(10_000)  # distinct tokens: the chunk and its period can be read back
    ids, mask = copytasks.natural_repeat(np.random.default_rng(seed), stream, 256, period=(16, 128))
    k = int(np.flatnonzero(mask)[0]) - 1
    assert 16 <= k <= 128 and np.array_equal(ids[:k], np.arange(ids[0], ids[0] + k))  # a contiguous chunk of the text
    assert all(ids[t] == ids[t - k] for t in range(k, 256)) and mask.sum() == 256 - k - 1
    assert _copy_source(ids, mask) == k  # distinct tokens: one period back is the only source


def test_natural_repeat_period_is_capped_at_half_the_length():
    rng = np.random.default_rng(0)
    periods = {int(np.flatnonzero(copytasks.natural_repeat(rng, np.arange(10_000), 64, period=(16, 1000))[1])[0]) - 1
               for _ in range(50)}
    assert max(periods) <= 32 and min(periods) >= 16


@pytest.mark.parametrize("seed", range(20))
def test_distant_copy_respects_distance_and_placement(seed):
    stream = np.arange(10_000)
    ids, mask = copytasks.distant_copy(np.random.default_rng(seed), stream, 512, (100, 300), after=200)
    ts = np.flatnonzero(mask)
    k, dst = len(ts) + 1, int(ts[0]) - 1
    d = _copy_source(ids, mask)
    assert 8 <= k <= 32 and 100 <= d < 300 and dst >= 200 and dst + k <= 512
    assert len(set(ids)) == 512 - k  # only the copy repeats anything


def test_distant_copy_refuses_what_cannot_fit():
    with pytest.raises(ValueError, match="fits in 64 tokens"):
        copytasks.distant_copy(np.random.default_rng(0), np.arange(10_000), 64, (60, 100))
    with pytest.raises(ValueError, match="distance"):
        copytasks.distant_copy(np.random.default_rng(0), np.arange(10_000), 512, (4, 6), span=(8, 8))


def test_train_copies_evaluates_every_and_at_the_end_and_counts_tokens():
    from longalign import models

    model = models.tiny_llama(models.tiny_llama_config(400, hidden=32, layers=1, heads=2, max_position=32), seed=0)
    before = [p.detach().clone() for p in model.parameters()]
    seen = []
    make = lambda r: copytasks.repeated_sequence(r, ALPHABET, 32)  # noqa: E731
    evals = copytasks.train_copies(model, make, steps=5, batch_size=3, lr=1e-3, every=2,
                                   evaluate=lambda m: seen.append(m.training) or {"x": 1.0})
    assert [e["step"] for e in evals] == [0, 2, 4, 5] and [e["tokens"] for e in evals] == [0, 192, 384, 480]
    assert all(e["x"] == 1.0 for e in evals) and len(seen) == 4
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # it trained


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
    assert [e["step"] for e in task["evals"]] == [0, 2, 3] and task["first_step_copy_ge_0.5"] is None
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


def test_bench_length_stages_and_extension(monkeypatch):
    """benchmarks/bench_length.py: each stage trains at its length with the same tokens per step; the extension scales the RoPE base."""
    import sys

    from longalign import context, models, paths

    monkeypatch.syspath_prepend(str(paths.ROOT / "benchmarks"))
    bench = __import__("bench_length")
    stream = np.arange(100, 400).repeat(40)
    np.random.default_rng(0).shuffle(stream)
    rng = np.random.default_rng(1)
    sparse, dense = bench._mix(ALPHABET, stream, 64, dense=False), bench._mix(ALPHABET, stream, 64, dense=True)
    assert all(len(sparse(rng)[0]) == 64 for _ in range(10))
    periodic = sum(_is_periodic(dense(rng)[0]) for _ in range(60))
    assert 25 <= periodic <= 55  # random and natural repeats (2/3), natural spans (1/3) mostly not periodic
    tok = models.cpu_tokenizer()
    model = models.tiny_llama(models.tiny_llama_config(len(tok), hidden=32, layers=1, heads=2, max_position=64), seed=0)
    held = [copytasks.natural_copy(np.random.default_rng(2), stream, 64) for _ in range(2)]
    stage = bench._stage(model, sparse, 64, steps=2, lr=1e-3, every=1, held=held)
    assert stage["length"] == 64 and [e["tokens"] for e in stage["evals"]] == [0, 2048, 4096] and "copy" in stage["evals"][-1]
    ext = bench._extended(model, tok, 200.0)
    assert context.rope_base(ext.config) == 200.0 * context.rope_base(model.config)
    assert ext.config.max_position_embeddings == bench.LONG
    scores = bench._scores(ext, {"far": held})
    assert set(scores) == {"far", "far_other"}
    sys.modules.pop("bench_length", None)


def _is_periodic(ids: np.ndarray) -> bool:
    """Whether ``ids`` repeats with some period <= half its length (a repeated-sequence example)."""
    return any(np.array_equal(ids[k:], ids[:-k]) for k in range(1, len(ids) // 2 + 1))
