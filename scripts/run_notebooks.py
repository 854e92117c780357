"""Run the numbered notebooks headless with papermill under one profile, then index the outputs.

Each notebook gets its own section of ``configs/<profile>.yaml`` (``papermill -f``); executed copies
go to ``outputs/notebooks/``. A failing notebook stops the run with its name and the failing cell.
At the end ``outputs/INDEX.md`` lists every figure and result file with the notebook that wrote it
(attributed by comparing the outputs tree before and after each notebook). Notebooks run on the
project's Jupyter kernel ``longalign`` (registered inside ``.venv`` by ``scripts/setup_env.sh``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import papermill as pm

from longalign import config, paths
from longalign.records import atomic_write_text

KERNEL = "longalign"  # the project's kernel; the machine's other kernels (python3, ...) are never used or changed


def _snapshot(root: Path) -> dict[str, float]:
    skip = ("notebooks",)
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*")
            if p.is_file() and not p.name.startswith(".") and p.relative_to(root).parts[0] not in skip}


def check_kernel(name: str = KERNEL) -> None:
    """Exit with what to run when the project's Jupyter kernel is not registered."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        sys.exit(f"run_notebooks: no Jupyter kernel {name!r}; run `bash scripts/setup_env.sh` (it registers it in .venv)")


def select(names: list[str]) -> list[Path]:
    """Notebooks to run: all numbered ones in order, or those whose stem starts with a given prefix."""
    found = sorted(paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    if not names:
        return found
    chosen = [nb for nb in found if any(nb.stem.startswith(n) for n in names)]
    missing = [n for n in names if not any(nb.stem.startswith(n) for nb in found)]
    if missing:
        sys.exit(f"run_notebooks: no notebook matches {missing}; have {[nb.stem for nb in found]}")
    return chosen


def run_one(nb: Path, profile: str, out_dir: Path) -> float:
    """Execute one notebook with its profile section; exit with the failing cell on error."""
    params = config.notebook_params(profile, nb.stem)
    start = time.time()
    try:
        pm.execute_notebook(str(nb), str(out_dir / nb.name), parameters=params, cwd=str(paths.NOTEBOOKS),
                            kernel_name=KERNEL, progress_bar=False, log_output=False)
    except pm.PapermillExecutionError as err:
        sys.exit(f"\nrun_notebooks: FAILED {nb.name} at cell {err.cell_index} (execution count {err.exec_count}): "
                 f"{err.ename}: {err.evalue}\n  executed copy: {out_dir / nb.name}\n  parameters: {params}")
    return time.time() - start


def write_index(made_by: dict[str, str], root: Path) -> Path:
    """``outputs/INDEX.md``: every figure and result file with the notebook that made it."""
    lines = ["# Outputs index", "", "| file | made by |", "|---|---|"]
    lines += [f"| `{f}` | `{nb}` |" for f, nb in sorted(made_by.items())]
    return atomic_write_text(root / "INDEX.md", "\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", choices=config.PROFILES)
    parser.add_argument("notebooks", nargs="*", help="prefixes such as 00 03 (default: all)")
    args = parser.parse_args()
    notebooks = select(args.notebooks)  # bad prefixes fail before anything is written
    check_kernel()
    root = paths.outputs()
    out_dir = root / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    made_by = _load_index(root)
    for nb in notebooks:
        print(f"run_notebooks: {nb.name} [{args.profile}] ...", flush=True)
        before = _snapshot(root)
        seconds = run_one(nb, args.profile, out_dir)
        after = _snapshot(root)
        made_by.update({f: nb.name for f, t in after.items() if before.get(f) != t})
        print(f"run_notebooks: {nb.name} done in {seconds:.0f} s", flush=True)
    index = write_index(made_by, root)
    print(f"run_notebooks: {len(made_by)} output files indexed in {index}")


def _load_index(root: Path) -> dict[str, str]:
    """Keep attributions of earlier runs (a subset run only updates its own notebooks' rows)."""
    index = root / "INDEX.md"
    if not index.is_file():
        return {}
    rows = [line.split("`") for line in index.read_text(encoding="utf-8").splitlines() if line.startswith("| `")]
    return {r[1]: r[3] for r in rows if len(r) >= 4 and (root / r[1]).exists()}


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
