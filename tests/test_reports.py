"""The notebook tables of longalign.reports, checked against values worked out by hand on tiny records."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from longalign import paths, records, reports


def _run(name, method, seed, *, compute, wait):
    """A run record with per-step, per-rank compute and wait seconds."""
    log = [{"compute_s": c, "wait_s": w} for c, w in zip(compute, wait)]
    return {"name": name, "method": method, "seed": seed, "steps": len(log), "tokens": 300, "log": log,
            "tokens_per_s": 40.0, "tokens_per_s_steady": 50.0, "dataset_tokens": 1000,
            "padding_fraction": 0.1, "final_loss_token": 2.0, "final_loss_sequence": 2.5}


def test_process_setting_labels():
    assert [reports.process_setting(n) for n in (1, 2, 8)] == ["1 process", "2 processes", "8 processes"]


def test_rank_table_sums_each_rank_over_steps():
    rec = _run("a", "naive", 0, compute=[[1.0, 2.0], [3.0, 0.5]], wait=[[0.0, 1.0], [0.25, 2.0]])
    table = reports.rank_table([rec])
    assert table.to_dict("records") == [{"method": "naive", "rank": 0, "compute_s": 4.0, "wait_s": 0.25},
                                        {"method": "naive", "rank": 1, "compute_s": 2.5, "wait_s": 3.0}]
    assert list(reports.rank_table([]).columns) == reports.RANK_COLUMNS
    assert list(reports.run_table([]).columns) == reports.RUN_COLUMNS


def test_run_table_row_values():
    rec = _run("a", "packing", 1, compute=[[1.0, 2.0], [3.0, 2.0]], wait=[[0.0, 1.0], [1.0, 1.0]])
    row = reports.run_table([(rec, "2 processes")]).iloc[0]
    assert row["setting"] == "2 processes" and row["tokens_per_s"] == 50.0
    assert row["epoch_s"] == pytest.approx(1000 / 50)
    assert row["wait_fraction"] == pytest.approx(3 / (3 + 8))
    unsteady = reports.run_row({**rec, "tokens_per_s_steady": None}, "1 process")
    assert unsteady["tokens_per_s"] == 40.0 and unsteady["epoch_s"] == pytest.approx(25.0)
    idle = reports.run_row({**rec, "log": [{"compute_s": [0.0], "wait_s": [0.0]}]}, "1 process")
    assert idle["wait_fraction"] == 0.0


def test_suite_table_groups_held_out_loss_by_suite():
    configs = [SimpleNamespace(method="packing_weighted", data=["out/data/mix-long5.jsonl"], name=lambda: "long5-pw-seed0"),
               SimpleNamespace(method="packing_weighted", data=["out/data/mix-long5.jsonl"], name=lambda: "long5-pw-seed1"),
               SimpleNamespace(method="packing_weighted", data=["out/data/mix-long10.jsonl"], name=lambda: "long10-pw"),
               SimpleNamespace(method="naive", data=["out/data/mix-long5.jsonl"], name=lambda: "naive-seed0")]
    suite_of = reports.suite_of_runs(configs)
    assert suite_of == {"long5-pw-seed0": "long5", "long5-pw-seed1": "long5", "long10-pw": "long10"}
    evals = pd.DataFrame({"name": ["long5-pw-seed0", "long5-pw-seed1", "long10-pw", "naive-seed0"],
                          "loss_token": [1.0, 3.0, 5.0, 9.0], "loss_sequence": [2.0, 4.0, 6.0, 9.0]})
    table = reports.suite_table(evals, suite_of)
    assert table.loc["long5", ("loss_token", "mean")] == 2.0 and table.loc["long5", ("loss_sequence", "max")] == 4.0
    assert table.loc["long10", ("loss_token", "min")] == 5.0 and list(table.index) == ["long10", "long5"]


def _runs_frame():
    """Two seeds of naive and packing in one process, and one seed of each in two processes."""
    rows = [("naive-seed0", "naive", 0, "1 process", 100.0, 10.0, 0.0, 3.0, 0.2),
            ("naive-seed1", "naive", 1, "1 process", 300.0, 10.0, 0.0, 3.5, 0.4),
            ("packing-seed0", "packing", 0, "1 process", 400.0, 5.0, 0.0, 2.0, 0.0),
            ("packing-seed1", "packing", 1, "1 process", 600.0, 5.0, 0.0, 2.5, 0.0),
            ("packing_weighted-seed0", "packing_weighted", 0, "1 process", 500.0, 5.0, 0.0, 1.5, 0.0),
            ("packing_weighted-seed1", "packing_weighted", 1, "1 process", 500.0, 5.0, 0.0, 2.75, 0.0),
            ("naive-seed0-w2", "naive", 0, "2 processes", 50.0, 60.0, 0.5, 3.0, 0.2),
            ("packing-seed0-w2", "packing", 0, "2 processes", 200.0, 20.0, 0.1, 2.0, 0.0)]
    cols = ["name", "method", "seed", "setting", "tokens_per_s", "epoch_s", "wait_fraction", "final_loss_sequence",
            "padding_fraction"]
    return pd.DataFrame(rows, columns=cols)


def test_throughput_table_columns():
    log = pd.DataFrame({"method": ["naive", "naive", "packing", "packing_weighted"], "tokens": [7, 30, 64, 64]})
    table = reports.throughput_table(_runs_frame(), log, {"naive": 0.4, "packing": 0.05, "packing_weighted": 0.05},
                                     setting="1 process", multi_setting="2 processes")
    assert table.loc["naive", "tokens_per_s"] == 200.0 and table.loc["packing", "speedup"] == pytest.approx(2.5)
    assert table.loc["naive", "padding_fraction"] == pytest.approx(0.3)
    assert (table.loc["naive", "step_tokens_min"], table.loc["naive", "step_tokens_max"]) == (7, 30)
    assert table.loc["packing", "multi_speedup"] == pytest.approx(3.0) and table.loc["naive", "multi_speedup"] == 1.0
    assert table.loc["naive", "multi_wait_fraction"] == 0.5 and pd.isna(table.loc["packing_weighted", "multi_speedup"])
    assert table.loc["naive", "simulated_idle_fraction"] == 0.4
    single = reports.throughput_table(_runs_frame(), log, {}, setting="1 process", multi_setting="4 processes")
    assert single["multi_speedup"].isna().all()
    none = reports.throughput_table(_runs_frame(), log, {}, setting="1 process", multi_setting=None)
    assert none["multi_wait_fraction"].isna().all() and none.loc["packing", "speedup"] == pytest.approx(2.5)


def test_fig5_speedup_table_inverts_relative_times():
    table = reports.fig5_speedup_table({"naive": 1.0, "packing": 0.25, "sorted": 0.5}, "simulator")
    assert table.loc["simulator"].to_dict() == {"naive/packing": 4.0, "naive/sorted": 2.0}
    assert table.loc["paper Fig. 5, ChatGLM3-6B-64k", "naive/packing"] == pytest.approx(45.4 / 20.5)
    assert table.loc["paper Fig. 5, Llama-2-7B-64k", "naive/sorted"] == pytest.approx(41.2 / 23.3)


def _evals():
    names = ["packing-seed0", "packing-seed1", "packing_weighted-seed0", "packing_weighted-seed1", "long5-pw-seed0"]
    return pd.DataFrame({"name": names, "method": ["packing", "packing", "packing_weighted", "packing_weighted",
                                                   "packing_weighted"],
                         "seed": [0, 1, 0, 1, 0], "loss_sequence": [3.0, 3.5, 2.5, 3.75, 0.0],
                         "loss_token": [2.0, 2.0, 2.25, 1.5, 0.0]})


def test_loss_weighting_table_per_seed_differences():
    table = reports.loss_weighting_table(_runs_frame(), _evals(), "1 process")
    assert table["train_loss_sequence"].tolist() == [-0.5, 0.25]
    assert table["heldout_loss_sequence"].tolist() == [-0.5, 0.25]  # the suite run (seed 0, loss 0) is left out
    assert table["heldout_loss_token"].tolist() == [0.25, -0.5]
    assert table["weighting_better"].tolist() == [True, False] and table.index.name == "seed"


def test_seed_spread_table():
    table = reports.seed_spread_table(_runs_frame(), _evals(), "1 process")
    assert table.loc["packing", "loss_sequence"] == 0.5 and table.loc["packing_weighted", "loss_sequence"] == 1.25
    assert table.loc["packing_weighted", "loss_token"] == 0.75 and "naive" not in table.index


def test_judged_records_keeps_the_named_models(tmp_path, monkeypatch):
    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(tmp_path))
    assert reports.judged_records("bench", "overlap", ["m1"]).empty
    folder = paths.results_dir("bench") / "overlap"
    for tag, item in (("m1", "a"), ("m2", "a"), ("m1", "b")):
        records.write_record(folder / tag / f"{item}-run0.json", {"model_tag": tag, "item_id": item, "score": 5.0})
    found = reports.judged_records("bench", "overlap", ["m1"])
    assert sorted(found["item_id"]) == ["a", "b"] and set(found["model_tag"]) == {"m1"}


def test_benchmark_labels():
    assert reports.long_chat_label("longbench_chat") == "LongBench-Chat"
    assert reports.long_chat_label("heldout_longqa") == "LongBench-Chat (stand-in)"
    assert reports.leaderboard_title("heldout_longqa") == "heldout_longqa (offline stand-in)"
    assert reports.leaderboard_title("longbench_chat") == "longbench_chat (official LongBench-Chat)"
