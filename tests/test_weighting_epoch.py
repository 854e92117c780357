"""Epoch weights (longalign.weighting.epoch_weights / weight_share) against hand-computed plans."""

import numpy as np
import pytest

from longalign.weighting import epoch_weights, long_rows, weight_share


def test_sequence_objective_divides_each_step_by_its_own_m():
    # step 1: two padded rows over two ranks (M = 2); step 2: two micro-steps, four rows (M = 4)
    plan = [[[[[0]], [[1]]]], [[[[2]], [[3]]], [[[4]], [[5]]]]]
    w = epoch_weights(plan, [5, 6, 7, 8, 9, 10])
    assert w.tolist() == [0.5, 0.5, 0.25, 0.25, 0.25, 0.25]
    assert weight_share(w, np.array([True, False, False, False, False, True])) == pytest.approx(0.75 / 2)
    # a sequence without targets counts neither in M nor in the weights
    w0 = epoch_weights(plan, [5, 6, 7, 8, 9, 10], num_targets=[3, 3, 0, 2, 2, 2])
    assert w0.tolist() == pytest.approx([0.5, 0.5, 0.0, 1 / 3, 1 / 3, 1 / 3])


def test_pack_objective_is_eq3():
    # one step, two ranks: pack A = (0, 1) with N = 1, 3; pack B = (2,) with N = 4; K = 2
    plan = [[[[[0, 1]], [[2]]]]]
    w = epoch_weights(plan, [10, 10, 10], objective="pack", num_targets=[1, 3, 4])
    assert w.tolist() == pytest.approx([1 / 4 / 2, 3 / 4 / 2, 1 / 2])
    assert epoch_weights(plan, [1, 3, 4], objective="pack").tolist() == pytest.approx(w.tolist())  # N defaults to L
    with pytest.raises(ValueError, match="objective"):
        epoch_weights(plan, [1, 3, 4], objective="token")


def test_long_rows_reads_meta_kind():
    metas = ['{"kind": "long", "suite": "long10"}', {"kind": "short"}, "{}", None]
    assert long_rows(metas).tolist() == [True, False, False, False]
