"""Command-line entry point for ``longalign.train.run_training`` (run directly, under torchrun or deepspeed).

One launch may train several configs in sequence (one process group, e.g. all methods x seeds):

    python scripts/train.py --config-json '{"method": "packing_weighted", "data": ["outputs/data/mix-long10.jsonl"]}'
    torchrun --nproc_per_node 2 scripts/train.py --config-file runs.json      # a JSON list of TrainConfig dicts
    torchrun --nproc_per_node 8 scripts/train.py --profile paper --method packing_weighted --seed 0

``--profile P`` builds the run configs of notebook 03 from ``configs/P.yaml`` (section
``03_training_methods``, over the notebook's parameters cell) through the same
``training_run_configs`` / ``config_from_params``, so the paper runs are exactly the notebook's (8xA800, ZeRO-3 + CPU offload).
It trains the runs on the profile's main ``suite`` (``{method}-seed{seed}``), narrowed by ``--method``
and ``--seed``: the paper command above is exactly one run. The data-suite runs of the notebook
(``{suite}-packing_weighted-seed{seed}``) are trained only when asked for with ``--suite``:

    torchrun --nproc_per_node 8 scripts/train.py --profile paper --suite long0 --suite long5 --suite longalpaca
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from longalign import config, paths
from longalign.dist import is_main
from longalign.train import TrainConfig, run_training, training_run_configs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-json", action="append", default=[], help="a TrainConfig as JSON (repeatable)")
    p.add_argument("--config-file", help="a JSON file holding a TrainConfig dict or a list of them")
    p.add_argument("--profile", choices=config.PROFILES, help="take notebook 03's runs from configs/<profile>.yaml")
    p.add_argument("--method", action="append", help="with --profile: only these methods")
    p.add_argument("--seed", type=int, action="append", help="with --profile: only these seeds")
    p.add_argument("--suite", action="append",
                   help="with --profile: the runs on these data suites (default: the profile's main suite only)")
    p.add_argument("--overwrite", action="store_true", help="retrain even if a record exists")
    return p.parse_args(argv)


def configs_from_args(args: argparse.Namespace) -> list[TrainConfig]:
    """Every TrainConfig the arguments name, in order."""
    cfgs = [TrainConfig.from_dict(json.loads(s)) for s in args.config_json]
    if args.config_file:
        data = json.loads(open(args.config_file, encoding="utf-8").read())
        cfgs += [TrainConfig.from_dict(d) for d in (data if isinstance(data, list) else [data])]
    if args.profile:
        params = profile_params(args.profile)
        suites = set(args.suite or [params["suite"]])
        for cfg in training_run_configs(params, paths.outputs()):
            keep = ((not args.method or cfg.method in args.method) and (not args.seed or cfg.seed in args.seed)
                    and run_suite(cfg) in suites)
            cfgs.append(cfg) if keep else None
    if not cfgs:
        raise SystemExit("nothing to train: give --config-json, --config-file or --profile")
    return cfgs


def profile_params(profile: str) -> dict:
    """Notebook 03's parameters under ``profile``: the parameters cell's defaults, the profile's values over them."""
    return {**config.parameters_cell(paths.NOTEBOOKS / "03_training_methods.ipynb"),
            **config.notebook_params(profile, "03_training_methods")}


def run_suite(cfg: TrainConfig) -> str:
    """The data suite of a notebook-03 run (its data file is ``mix-{suite}.jsonl``)."""
    return Path(cfg.data[0]).stem.removeprefix("mix-")


def main(argv: list[str] | None = None) -> int:
    """Train every named config; print one summary line per run."""
    args = parse_args(argv)
    for cfg in configs_from_args(args):
        rec = run_training(cfg, overwrite=args.overwrite)
        if is_main():
            print(json.dumps({k: rec.get(k) for k in ("name", "method", "seed", "world_size", "steps", "wall_s",
                                                    "tokens_per_s", "final_loss_token", "final_loss_sequence")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
