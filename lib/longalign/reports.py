"""Tables the notebooks show, built from run and result records.

Notebooks 03 (training methods) and 07 (benchmarks) display these tables next to fixed prose:
every number a finding cites is a column here, computed once and unit-tested, instead of being
formatted into sentences inside the notebook.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from longalign import paths
from longalign.findings import SIM_TOLERANCE, speed_values
from longalign.records import load_records
from longalign.simulate import paper_fig5_relative

RANK_COLUMNS = ["method", "rank", "compute_s", "wait_s"]
RUN_COLUMNS = ["name", "method", "seed", "setting", "steps", "tokens", "tokens_per_s", "epoch_s", "padding_fraction",
               "wait_fraction", "final_loss_token", "final_loss_sequence"]


def process_setting(nproc: int) -> str:
    """The label of runs launched over ``nproc`` processes: "1 process", "2 processes"."""
    return f"{nproc} processes" if nproc > 1 else f"{nproc} process"


def rank_totals(rec: dict) -> list[dict]:
    """Per-rank compute and wait seconds of one run record, summed over its steps."""
    comp = np.array([r["compute_s"] for r in rec["log"]])
    wait = np.array([r["wait_s"] for r in rec["log"]])
    return [{"method": rec["method"], "rank": k, "compute_s": comp[:, k].sum(), "wait_s": wait[:, k].sum()}
            for k in range(comp.shape[1])]


def rank_table(records: Iterable[dict]) -> pd.DataFrame:
    """One row per (run, rank) of multi-process run records: method, rank, compute_s, wait_s."""
    return pd.DataFrame([row for rec in records for row in rank_totals(rec)], columns=RANK_COLUMNS)


def run_row(rec: dict, setting: str) -> dict:
    """One table row of a run record; throughput leaves out the warm-up step when the record has it."""
    wait = sum(sum(r["wait_s"]) for r in rec["log"])
    busy = sum(sum(r["compute_s"]) for r in rec["log"])
    speed = rec["tokens_per_s_steady"] or rec["tokens_per_s"]
    return {"name": rec["name"], "method": rec["method"], "seed": rec["seed"], "setting": setting,
            "steps": rec["steps"], "tokens": rec["tokens"], "tokens_per_s": speed,
            "epoch_s": rec["dataset_tokens"] / speed, "padding_fraction": rec["padding_fraction"],
            "wait_fraction": wait / (wait + busy) if wait + busy else 0.0,
            "final_loss_token": rec["final_loss_token"], "final_loss_sequence": rec["final_loss_sequence"]}


def run_table(runs: Iterable[tuple[dict, str]]) -> pd.DataFrame:
    """One row per (run record, launch setting) pair, see ``run_row``."""
    return pd.DataFrame([run_row(rec, setting) for rec, setting in runs], columns=RUN_COLUMNS)


def suite_of_runs(configs: Iterable) -> dict[str, str]:
    """Run name → data suite of every ``packing_weighted`` run config (its data file is mix-{suite}.jsonl)."""
    return {c.name(): str(c.data[0]).rsplit("mix-", 1)[1].removesuffix(".jsonl")
            for c in configs if c.method == "packing_weighted"}


def suite_table(evals: pd.DataFrame, suite_of: dict[str, str]) -> pd.DataFrame:
    """Held-out loss (mean, min, max over seeds) per data suite of the runs named in ``suite_of``."""
    picked = evals[evals["name"].isin(list(suite_of))].assign(suite=lambda d: d["name"].map(suite_of))
    return picked.groupby("suite")[["loss_token", "loss_sequence"]].agg(["mean", "min", "max"])


def throughput_table(runs: pd.DataFrame, log: pd.DataFrame, simulated_idle: dict[str, float], *,
                     setting: str, multi_setting: str | None) -> pd.DataFrame:
    """Per method: throughput in ``setting`` and its speed-up over naive, padding, per-step tokens,
    and in ``multi_setting`` (None: no multi-process runs) the epoch-time speed-up over naive and the
    measured idle share, next to the simulated idle share."""
    one = runs[runs["setting"] == setting].groupby("method")
    multi = runs[runs["setting"] == multi_setting].set_index("method") if multi_setting else runs.iloc[:0]
    out = pd.DataFrame({"tokens_per_s": one["tokens_per_s"].mean(), "padding_fraction": one["padding_fraction"].mean()})
    out["speedup"] = out["tokens_per_s"] / out["tokens_per_s"].get("naive", np.nan)
    steps = log.groupby("method")["tokens"]
    out["step_tokens_min"], out["step_tokens_max"] = steps.min(), steps.max()
    out["multi_speedup"] = multi["epoch_s"].get("naive", np.nan) / multi["epoch_s"] if len(multi) else np.nan
    out["multi_wait_fraction"] = multi["wait_fraction"] if len(multi) else np.nan
    out["simulated_idle_fraction"] = pd.Series(simulated_idle, dtype=float)
    return out.rename_axis("method")


def fig5_speedup_table(predicted: dict[str, float], source: str) -> pd.DataFrame:
    """naive/packing and naive/sorted time ratios: ``predicted`` (relative times, naive = 1) and the paper's Fig. 5."""
    rel = {source: predicted, **{f"paper Fig. 5, {model}": r for model, r in paper_fig5_relative().items()}}
    rows = {src: {"naive/packing": 1 / r["packing"], "naive/sorted": 1 / r["sorted"]} for src, r in rel.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("source")


def _main_evals(runs: pd.DataFrame, evals: pd.DataFrame, setting: str) -> pd.DataFrame:
    """The held-out evaluations of the runs listed in ``setting`` (the main methods × seeds runs)."""
    return evals[evals["name"].isin(runs.loc[runs["setting"] == setting, "name"])]


def _weighted_minus_plain(frame: pd.DataFrame, col: str) -> pd.Series:
    """Per seed: ``col`` of packing_weighted minus ``col`` of packing."""
    by_seed = {m: frame[frame["method"] == m].set_index("seed")[col] for m in ("packing_weighted", "packing")}
    return by_seed["packing_weighted"] - by_seed["packing"]


def loss_weighting_table(runs: pd.DataFrame, evals: pd.DataFrame, setting: str) -> pd.DataFrame:
    """Per seed, packing_weighted − packing: final training and held-out losses (negative = weighting better)."""
    main = _main_evals(runs, evals, setting)
    out = pd.DataFrame({"train_loss_sequence": _weighted_minus_plain(runs[runs["setting"] == setting], "final_loss_sequence"),
                        "heldout_loss_sequence": _weighted_minus_plain(main, "loss_sequence"),
                        "heldout_loss_token": _weighted_minus_plain(main, "loss_token")})
    out["weighting_better"] = out["heldout_loss_sequence"] < 0
    return out.rename_axis("seed")


def seed_spread_table(runs: pd.DataFrame, evals: pd.DataFrame, setting: str) -> pd.DataFrame:
    """Per method, the spread (max − min over seeds) of the held-out losses of the main runs."""
    main = _main_evals(runs, evals, setting)
    return main.groupby("method")[["loss_sequence", "loss_token"]].agg(lambda s: s.max() - s.min())


def judged_records(benchmark: str, judge_name: str, model_tags: Iterable[str]) -> pd.DataFrame:
    """The judged item records of ``model_tags`` under ``results/<benchmark>/<judge_name>/`` (empty when none)."""
    folder = paths.results_dir(benchmark) / judge_name
    df = load_records(folder) if any(folder.rglob("*.json")) else pd.DataFrame(columns=["model_tag"])
    return df[df["model_tag"].isin(list(model_tags))]


def long_chat_label(benchmark: str) -> str:
    """Results-table label of the long-chat benchmark: the official LongBench-Chat or the offline stand-in."""
    return "LongBench-Chat" if benchmark == "longbench_chat" else "LongBench-Chat (stand-in)"


def leaderboard_title(benchmark: str) -> str:
    """Leaderboard figure title naming whether ``benchmark`` is the official LongBench-Chat or a stand-in."""
    return f"{benchmark} ({'official LongBench-Chat' if benchmark == 'longbench_chat' else 'offline stand-in'})"


def speed_table(speed: dict) -> pd.DataFrame:
    """Per method of a ``results/speed`` record: measured vs simulated seconds and idle share, relative errors."""
    out = pd.DataFrame.from_dict(speed["methods"], orient="index").rename_axis("method")
    out["seconds_error"] = out["simulated_s"] / out["measured_s"] - 1
    out["idle_error"] = out["simulated_idle"] / out["measured_idle"] - 1
    return out[["measured_s", "simulated_s", "seconds_error", "measured_idle", "simulated_idle", "idle_error"]]


def speed_check(speed: dict, tolerance: float = SIM_TOLERANCE) -> pd.DataFrame:
    """The checked quantities (naive's idle share, naive/packing and naive/sorted time): measured, simulated, error, within.

    The values and the tolerance are finding 3's (:func:`longalign.findings.speed_values`); a method not run
    (test profile) gives NaN, which is never within tolerance.
    """
    nan = dict.fromkeys(("measured_s", "simulated_s", "measured_idle", "simulated_idle"), np.nan)
    methods = {m: speed["methods"].get(m, nan) for m in ("naive", "sorted", "packing")}
    meas, sim = (speed_values(methods, kind) for kind in ("measured", "simulated"))
    labels = {"naive_idle": "naive idle share", "naive/packing": "naive/packing time", "naive/sorted": "naive/sorted time"}
    out = pd.DataFrame({"measured": [meas[k] for k in labels], "simulated": [sim[k] for k in labels]},
                       index=pd.Index(list(labels.values()), name="quantity"))
    out["relative_error"] = out["simulated"] / out["measured"] - 1
    out["within_tolerance"] = out["relative_error"].abs() <= tolerance
    return out


def fig5_checked_table(predicted: dict[str, float], source: str, check: pd.DataFrame | None) -> pd.DataFrame:
    """:func:`fig5_speedup_table` with a ``w2_check`` column: whether the simulator passed the measured :func:`speed_check`."""
    out = fig5_speedup_table(predicted, source)
    if check is None:  # world_size 1: no multi-process measurement to check against
        verdict = "not checked (no multi-process runs)"
    else:
        # what the measurement checks is the schedule / synchronisation model (with CPU cost terms), not A800 costs
        verdict = (("within" if check["within_tolerance"].all() else "OUTSIDE")
                   + f" ±{SIM_TOLERANCE:.0%} of the measured run (schedule model, CPU cost terms)")
    out["w2_check"] = [verdict if src == source else "measured (paper)" for src in out.index]
    return out
