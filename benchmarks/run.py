"""Run the performance benchmarks side by side and print one JSON line per target.

    python benchmarks/run.py --quick --json          # a few minutes on the 2-core CPU box
    python benchmarks/run.py --only packing,attention

Each line: name, ours, baseline, ratio (ours / baseline), goal, unit, met, details. Every result is
also written (with the machine and library versions) to outputs/results/benchmarks/<name>.json.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

from longalign import paths, records  # noqa: E402

BENCHES = ("packing", "balance", "weights", "throughput", "attention", "memory", "induction", "length")


def main(argv: list[str] | None = None) -> int:
    """Parse flags, run the selected benchmarks, print and record their lines."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few repeats (a few minutes)")
    ap.add_argument("--json", action="store_true", help="print JSON lines only (default adds a summary table)")
    ap.add_argument("--only", default=",".join(BENCHES), help=f"comma-separated subset of {BENCHES}")
    args = ap.parse_args(argv)
    wanted = [b.strip() for b in args.only.split(",") if b.strip()]
    unknown = sorted(set(wanted) - set(BENCHES))
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {BENCHES}")
    lines = []
    for name in wanted:
        t0 = time.perf_counter()
        line = importlib.import_module(f"bench_{name}").run(args.quick)
        line["seconds"] = round(time.perf_counter() - t0, 1)
        line["mode"] = "quick" if args.quick else "full"
        records.write_record(paths.results_dir("benchmarks") / f"{line['name']}.json", {**line, "machine": machine()})
        print(json.dumps(line), flush=True)
        lines.append(line)
    if not args.json:
        _table(lines)
    return 0


def _table(lines: list[dict]) -> None:
    print(f"\n{'target':<18} {'ours':>12} {'baseline':>12} {'ratio':>8}  met  goal")
    for r in lines:
        print(f"{r['name']:<18} {r['ours']:>12.4g} {r['baseline']:>12.4g} {r['ratio'] or 0:>8.3f}  "
              f"{'yes' if r['met'] else 'NO ':<4} {r['goal']}")


if __name__ == "__main__":
    sys.exit(main())
