"""Inject a profile's parameters into copies of the notebooks (papermill --prepare-only) for nbval.

The test suite runs ``pytest --nbval-lax`` on these copies, in order 00 → 07, so every notebook is
executed end to end with the tiny ``test`` profile inside the one test command, on the project's
Jupyter kernel ``longalign`` (which nbval takes from the copies' metadata).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import papermill as pm

from longalign import config, paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--profile", default="test", choices=config.PROFILES)
    args = parser.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    for old in args.dest.glob("*.ipynb"):
        old.unlink()
    for nb in sorted(paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        params = config.notebook_params(args.profile, nb.stem)
        pm.execute_notebook(str(nb), str(args.dest / nb.name), parameters=params, prepare_only=True,
                            kernel_name="longalign", progress_bar=False)
        print(f"prepared {nb.name} with {len(params)} {args.profile} parameters")


if __name__ == "__main__":
    main()
