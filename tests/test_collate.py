"""PackingCollator / PaddingCollator: positions, boundaries, 1/N_i weights, cu_seq_lens, padding."""

import numpy as np
import pytest
import torch

from longalign.collate import IGNORE_INDEX, PackingCollator, PaddingCollator


def features(seed: int = 0, n: int = 4) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(2, 12))
        ids = rng.integers(0, 50, length).tolist()
        labels = [t if rng.random() < 0.6 else IGNORE_INDEX for t in ids]
        labels[-1] = ids[-1]  # at least one target past position 0
        out.append({"input_ids": ids, "labels": labels, "length": length})
    return out


def test_packing_collator_layout():
    feats = features()
    batch = PackingCollator()(feats)
    lens = [len(f["input_ids"]) for f in feats]
    total = sum(lens)
    for key in ("input_ids", "labels", "position_ids", "loss_weights"):
        assert batch[key].shape == (1, total)
    assert batch["input_ids"][0].tolist() == [t for f in feats for t in f["input_ids"]]
    assert batch["position_ids"][0].tolist() == [p for n in lens for p in range(n)]
    cu = np.cumsum([0] + lens).tolist()
    assert batch["cu_seq_lens_q"].tolist() == cu and batch["cu_seq_lens_k"].tolist() == cu
    assert batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["max_length_q"] == batch["max_length_k"] == max(lens)
    assert batch["num_packs"] == 1 and batch["num_sequences"] == len(feats)
    labels, weights = batch["labels"][0], batch["loss_weights"][0]
    n_targets = 0
    for s, e, f in zip(cu[:-1], cu[1:], feats):
        assert labels[s] == IGNORE_INDEX  # nothing is predicted across a boundary
        assert labels[s + 1:e].tolist() == f["labels"][1:]
        n_i = sum(1 for y in f["labels"][1:] if y != IGNORE_INDEX)
        n_targets += n_i
        assert weights[s:e].sum().item() == pytest.approx(1.0)
        assert torch.all((weights[s:e] > 0) == (labels[s:e] != IGNORE_INDEX))
        assert torch.allclose(weights[s:e][labels[s:e] != IGNORE_INDEX], torch.tensor(1.0 / n_i))
    assert batch["num_target_tokens"] == n_targets


def test_packing_collator_pack_ids_zero_target_and_padding():
    feats = features(1, 3)
    feats.append({"input_ids": [1, 2, 3], "labels": [1, IGNORE_INDEX, IGNORE_INDEX]})  # no target after pos 0
    for f, pid in zip(feats, [7, 7, 9, 9]):
        f["pack_id"] = pid
    batch = PackingCollator(pad_to_multiple_of=16, pad_token_id=5)(feats)
    assert batch["num_packs"] == 2 and batch["num_sequences"] == 3
    real = sum(len(f["input_ids"]) for f in feats)
    assert batch["input_ids"].shape[1] % 16 == 0
    pad = batch["input_ids"].shape[1] - real
    assert batch["input_ids"][0, real:].tolist() == [5] * pad
    assert batch["labels"][0, real - 3:].eq(IGNORE_INDEX).all()
    assert batch["loss_weights"][0, real - 3:].eq(0).all()
    assert batch["cu_seq_lens_q"][-1].item() == real + pad
    assert batch["position_ids"][0, real:].tolist() == list(range(pad))
    assert batch["loss_weights"].sum().item() == pytest.approx(3.0)


def test_padding_collator():
    feats = features(2, 3)
    batch = PaddingCollator(pad_token_id=0, pad_to_multiple_of=8)(feats)
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width >= max(len(f["input_ids"]) for f in feats)
    for row, f in enumerate(feats):
        n = len(f["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == f["input_ids"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["labels"][row, n:].eq(IGNORE_INDEX).all()
        assert batch["labels"][row, 0] == IGNORE_INDEX
        assert batch["loss_weights"][row].sum().item() == pytest.approx(1.0)
    real = sum(len(f["input_ids"]) for f in feats)
    assert batch["padding_fraction"] == pytest.approx(1 - real / (3 * width))
    assert batch["num_sequences"] == 3 and batch["num_packs"] == 1


def test_collators_reject_bad_features():
    with pytest.raises(ValueError, match="empty batch"):
        PackingCollator()([])
    with pytest.raises(ValueError, match="feature 0"):
        PaddingCollator(0)([{"input_ids": [1, 2], "labels": [1]}])



@pytest.mark.parametrize("packed", [True, False])
def test_target_counts_are_each_sequences_target_count(packed):
    """``target_counts`` holds N_i (int64) on every target of sequence i and 0 elsewhere; loss_weights = 1/N_i there."""
    feats = features(3, 5)
    batch = PackingCollator(pad_to_multiple_of=16)(feats) if packed else PaddingCollator(0, 8)(feats)
    counts, labels = batch["target_counts"], batch["labels"]
    assert counts.dtype == torch.long and counts.shape == labels.shape
    cu = batch["cu_seq_lens_q"].tolist() if packed else None
    for k, f in enumerate(feats):
        seq = counts[0, cu[k]:cu[k + 1]] if packed else counts[k, :len(f["input_ids"])]
        n_i = sum(1 for y in f["labels"][1:] if y != IGNORE_INDEX)
        assert sorted(set(seq.tolist()) - {0}) == [n_i] and int((seq > 0).sum()) == n_i
    assert torch.equal(counts > 0, labels != IGNORE_INDEX)
    assert torch.allclose(batch["loss_weights"][counts > 0].double(), 1.0 / counts[counts > 0].double())
