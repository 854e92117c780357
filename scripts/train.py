"""Command-line entry point for ``longalign.train.run_training`` (run directly, under torchrun or deepspeed).

One launch may train several configs in sequence (one process group, e.g. all methods x seeds):

    python scripts/train.py --config-json '{"method": "packing_weighted", "data": ["outputs/data/mix-long10.jsonl"]}'
    torchrun --nproc_per_node 2 scripts/train.py --config-file runs.json      # a JSON list of TrainConfig dicts
    torchrun --nproc_per_node 8 scripts/train.py --profile paper --method packing_weighted --seed 0

``--profile P`` builds the run configs of notebook 03 from ``configs/P.yaml`` (section
``03_training_methods``), so the paper runs are exactly the notebook's (8xA800, ZeRO-3 + CPU offload).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from longalign import config, paths
from longalign.train import TrainConfig, run_training, training_run_configs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-json", action="append", default=[], help="a TrainConfig as JSON (repeatable)")
    p.add_argument("--config-file", help="a JSON file holding a TrainConfig dict or a list of them")
    p.add_argument("--profile", choices=config.PROFILES, help="take notebook 03's runs from configs/<profile>.yaml")
    p.add_argument("--method", action="append", help="with --profile: only these methods")
    p.add_argument("--seed", type=int, action="append", help="with --profile: only these seeds")
    p.add_argument("--suite", action="append", help="with --profile: only these data suites")
    p.add_argument("--overwrite", action="store_true", help="retrain even if a record exists")
    return p.parse_args(argv)


def configs_from_args(args: argparse.Namespace) -> list[TrainConfig]:
    """Every TrainConfig the arguments name, in order."""
    cfgs = [TrainConfig.from_dict(json.loads(s)) for s in args.config_json]
    if args.config_file:
        data = json.loads(open(args.config_file, encoding="utf-8").read())
        cfgs += [TrainConfig.from_dict(d) for d in (data if isinstance(data, list) else [data])]
    if args.profile:
        params = config.notebook_params(args.profile, "03_training_methods")
        for cfg in training_run_configs(params, paths.outputs()):
            keep = ((not args.method or cfg.method in args.method) and (not args.seed or cfg.seed in args.seed)
                    and (not args.suite or any(cfg.name().startswith(f"{s}-") for s in args.suite)))
            cfgs.append(cfg) if keep else None
    if not cfgs:
        raise SystemExit("nothing to train: give --config-json, --config-file or --profile")
    return cfgs


def main(argv: list[str] | None = None) -> int:
    """Train every named config; print one summary line per run."""
    args = parse_args(argv)
    for cfg in configs_from_args(args):
        rec = run_training(cfg, overwrite=args.overwrite)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps({k: rec.get(k) for k in ("name", "method", "seed", "world_size", "steps", "wall_s",
                                                    "tokens_per_s", "final_loss_token", "final_loss_sequence")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
