"""eval.scaling: variant → TrainConfig mapping, and the scaling figure from records."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from longalign import paths
from longalign.eval import scaling
from longalign.plots.scaling import plot_scaling

DEFAULTS = dict(model="tiny", method="packing_weighted", max_len=256, max_steps=2, layers=2, heads=2,
                deepspeed="configs/deepspeed/zero3_offload.json")


def test_tiny_variant_sets_overrides_and_name():
    cfg = scaling.variant_config({"name": "h64", "hidden": 64}, ["d.jsonl"], DEFAULTS)
    assert cfg.name() == "scale-h64" and cfg.model == "tiny" and cfg.data == ["d.jsonl"]
    assert cfg.model_overrides == {"hidden": 64, "layers": 2, "heads": 2}
    assert cfg.deepspeed == str(paths.ROOT / "configs/deepspeed/zero3_offload.json")
    cfg.validate()


def test_pretrained_variant_drops_tiny_shape_and_overrides_fields():
    cfg = scaling.variant_config({"name": "big", "model": "some/hub-model", "method": "sorted", "max_len": 1024},
                                 ["d.jsonl"], DEFAULTS)
    assert cfg.model == "some/hub-model" and cfg.method == "sorted" and cfg.max_len == 1024
    assert cfg.model_overrides == {}


def test_variant_errors():
    with pytest.raises(ValueError, match="name"):
        scaling.variant_config({"hidden": 64}, [], DEFAULTS)
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['hiden'\]"):
        scaling.variant_config({"name": "x", "hiden": 64}, [], DEFAULTS)
    with pytest.raises(ValueError, match="empty"):
        scaling.evaluate_variant("x", {}, [], [], max_len=8, qa_max_new_tokens=1)


def test_plot_scaling_from_records():
    df = pd.DataFrame([{"name": n, "params": p, "final_loss_token": l, "heldout_loss_token": l + 0.1, "qa_score": q}
                       for n, p, l, q in (("b", 2e6, 5.0, 1.5), ("a", 1e6, 6.0, 1.2))])
    fig = plot_scaling(df)
    xs = fig.axes[0].lines[0].get_xdata()
    assert list(xs) == [1e6, 2e6] and fig.axes[0].get_xscale() == "log"
    plt.close(fig)


def test_seeded_variants_names_and_seeds():
    from longalign.eval.scaling import seeded_variants

    got = seeded_variants([{"name": "h128", "hidden": 128}, {"name": "b", "hidden": 64, "seed": 7}], seed=3, num_seeds=2)
    assert [(v["name"], v["seed"]) for v in got] == [("h128", 3), ("b", 7), ("h128-seed4", 4), ("b-seed8", 8)]
    assert all(v["hidden"] in (128, 64) for v in got)
    assert [v["name"] for v in seeded_variants([{"name": "x"}], 0, 1)] == ["x"]  # one seed: names unchanged
    with pytest.raises(ValueError, match="num_seeds"):
        seeded_variants([{"name": "x"}], 0, 0)


def test_scaling_figure_averages_seeds():
    import pandas as pd

    from longalign.plots.scaling import plot_scaling

    df = pd.DataFrame({"name": ["a-seed1", "a", "b"], "params": [10, 10, 30], "final_loss_token": [5.0, 6.0, 4.0],
                       "heldout_loss_token": [5.5, 6.5, 4.5], "qa_score": [1.0, 1.0, 2.0]})
    fig = plot_scaling(df)
    lines = fig.axes[0].get_lines()
    assert list(lines[1].get_ydata()) == [6.0, 4.5]  # held-out loss: one point per size, the mean over seeds
    assert [t.get_text() for t in fig.axes[0].texts] == ["a (n=2)", "b (n=1)"]
