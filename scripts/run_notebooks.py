"""Run the numbered notebooks headless with papermill under one profile, showing progress, then index the outputs.

Each notebook gets its own parameter file ``configs/<profile>/<notebook>.yaml`` (what ``papermill -f``
reads; generated from ``configs/<profile>.yaml`` by ``scripts/write_param_files.py``); executed copies
go to ``outputs/notebooks/``. While a notebook runs, a progress line shows the cell, the elapsed time
and an estimate from the last run of that notebook under that profile (``outputs/run_times.json``).
A failing notebook stops the run with its name and the failing cell. The run ends with a table of
notebooks, status, times and figures, and ``outputs/INDEX.md``: the figures as images, then the
summary results, then the record folders with their counts, each with the notebook that wrote it
(attributed by comparing the outputs tree before and after each notebook, kept in
``outputs/made_by.json``). Last, ``outputs/results/findings.json`` checks the paper's findings against whatever
records exist (``longalign.findings``; a failed notebook leaves its findings marked missing) and its table is
printed. Notebooks run on the project's Jupyter kernel ``longalign`` (registered
inside ``.venv`` by ``scripts/setup_env.sh``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import nbformat
import papermill as pm

from longalign import config, findings, paths, profiles
from longalign.records import atomic_write_text

KERNEL = "longalign"  # the project's kernel; the machine's other kernels (python3, ...) are never used or changed
TIMES, MADE_BY, INDEX = "run_times.json", "made_by.json", "INDEX.md"
SKIP_TOP = ("notebooks",)  # executed notebooks are linked from the index, not listed file by file
RECORD_MIN = 3  # a folder with this many JSON files holds per-item records; fewer are summary files
SUMMARY_SUFFIXES = {".csv", ".md", ".jsonl", ".txt"}
TEXT_SUFFIXES = SUMMARY_SUFFIXES | {".json", ".png", ".pdf"}  # a folder with anything else is a model/dataset


class DeclaredParameterFilter(logging.Filter):
    """Drops papermill's "Passed unknown parameter: X" for names the parameters cell declares.

    Papermill's parameter inference cannot read ``X | None`` annotations, so it calls such declared
    parameters unknown; names the cell does not declare still warn, and ``check_parameters`` at the
    top of every notebook stops them.
    """

    def __init__(self, declared: set[str]):
        super().__init__()
        self.declared = declared

    def filter(self, record: logging.LogRecord) -> bool:
        """False for the unknown-parameter warning of a declared name; True for everything else."""
        msg = record.getMessage()
        return not (msg.startswith("Passed unknown parameter: ") and msg.split(": ", 1)[1] in self.declared)


class NotebookFailed(RuntimeError):
    """A notebook raised; the message names the notebook, the cell and the executed copy."""


def check_kernel(name: str = KERNEL) -> None:
    """Exit with what to run when the project's Jupyter kernel is not registered."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        sys.exit(f"run_notebooks: no Jupyter kernel {name!r}; run `bash scripts/setup_env.sh` (it registers it in .venv)")


def check_param_files(profile: str) -> None:
    """Exit naming the command when ``configs/<profile>/*.yaml`` no longer match ``configs/<profile>.yaml``."""
    stale = profiles.stale_param_files((profile,))
    if stale:
        sys.exit(f"run_notebooks: parameter files out of date with configs/{profile}.yaml: "
                 f"{', '.join('configs/' + s for s in stale)}; run `{profiles.REGENERATE}`")


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


def fmt_seconds(seconds: float) -> str:
    """Short human duration: ``45s``, ``2m31s``, ``1h02m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


# ----------------------------------------------------------------------------------------------- progress


class Progress:
    """Progress lines for one notebook, fed by nbclient's cell hooks and a heartbeat thread.

    On a terminal one line is rewritten in place every second; in a log (not a tty) a line is printed
    at a cell start at most every ``gap`` seconds, and every ``heartbeat`` seconds during a long cell.
    """

    def __init__(self, name: str, total: int, last: dict[str, Any] | None = None, stream: TextIO | None = None,
                 gap: float = 15.0, heartbeat: float = 60.0) -> None:
        self.name, self.total, self.last, self.gap, self.heartbeat = name, total, last, gap, heartbeat
        self.stream = stream or sys.stdout
        self.start = self.cell_start = time.monotonic()
        self.cell, self.cell_seconds = 0, []
        self._printed = -1e9
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._thread = threading.Thread(target=self._tick, daemon=True)
        self._thread.start()

    def on_cell_start(self, cell: Any = None, cell_index: int = 0, **_: Any) -> None:
        """nbclient hook: a cell is about to run (markdown cells count too, as in papermill)."""
        now = time.monotonic()
        if cell_index > self.cell:  # cell 0's time includes the kernel start: the cells add up to the whole run
            self.cell_seconds.append(now - self.cell_start)
            self.cell, self.cell_start = cell_index, now
        self.show(force=self._tty or cell_index == 0)

    def estimate(self, now: float) -> float | None:
        """Seconds left judged by the last run: its per-cell times when the cell count matches, else its total."""
        if not self.last:
            return None
        cells = self.last.get("cells") or []
        if len(cells) == self.total:
            return sum(cells[self.cell + 1:]) + max(cells[self.cell] - (now - self.cell_start), 0.0)
        return max(float(self.last["seconds"]) - (now - self.start), 0.0)

    def line(self, now: float | None = None) -> str:
        """``[03_training_methods] cell 12/40 · 2m31s elapsed · ~6m02s left (last run 8m20s)``."""
        now = time.monotonic() if now is None else now
        text = (f"[{self.name}] cell {min(self.cell + 1, self.total)}/{self.total} · "
                f"{fmt_seconds(now - self.start)} elapsed")
        left = self.estimate(now)
        if left is not None:
            last = fmt_seconds(self.last["seconds"])
            text += f" · ~{fmt_seconds(left)} left (last run {last})" if left > 0 else f" · past last run's {last}"
        return text

    def show(self, force: bool = False) -> None:
        """Print the current line (in place on a terminal; throttled in a log)."""
        with self._lock:
            now = time.monotonic()
            if not force and now - self._printed < self.gap:
                return
            self._printed = now
            self.stream.write(f"\r\033[K{self.line(now)}" if self._tty else self.line(now) + "\n")
            self.stream.flush()

    def _tick(self) -> None:
        while not self._stop.wait(1.0 if self._tty else self.heartbeat):
            self.show(force=True)

    def finish(self, ok: bool) -> dict[str, Any]:
        """Stop the heartbeat, print the closing line, return this run's timing record."""
        self._stop.set()
        self._thread.join()
        self.cell_seconds.append(time.monotonic() - self.cell_start)
        seconds = time.monotonic() - self.start
        end = "\n" if self._tty else ""
        self.stream.write(f"{end}[{self.name}] {'done' if ok else 'FAILED'} in {fmt_seconds(seconds)}\n")
        self.stream.flush()
        return {"seconds": round(seconds, 2), "cells": [round(s, 2) for s in self.cell_seconds],
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def kernel_config() -> Any:
    """Kernel-manager settings: CurveZMQ transport encryption when pyzmq and the kernelspec support it.

    ipykernel warns "Kernel is running over TCP without encryption" on every start unless the manager
    provisions Curve keys; jupyter_client only does so when asked (``transport_encryption``). Turning
    it on removes the cause of the warning rather than hiding the kernel's stderr.
    """
    import zmq
    from traitlets.config import Config

    return Config({"KernelManager": {"transport_encryption": "auto" if zmq.has("curve") else "disabled"}})


def run_one(nb: Path, params: dict[str, Any], out_dir: Path, last: dict[str, Any] | None = None,
            stream: TextIO | None = None, gap: float = 15.0) -> dict[str, Any]:
    """Execute one notebook with its parameters, showing progress; returns its timing record.

    ``gap``: least seconds between progress lines in a log. Raises NotebookFailed naming the notebook and cell.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    total = len(nbformat.read(nb, as_version=4).cells) + (1 if params else 0)  # + papermill's injected cell
    progress = Progress(nb.stem, total, last, stream, gap=gap)
    quiet = DeclaredParameterFilter(set(config.parameters_cell(nb)))
    logging.getLogger("papermill").addFilter(quiet)
    try:
        pm.execute_notebook(str(nb), str(out_dir / nb.name), parameters=params, cwd=str(paths.NOTEBOOKS),
                            kernel_name=KERNEL, progress_bar=False, log_output=False, config=kernel_config(),
                            on_cell_start=progress.on_cell_start)
    except pm.PapermillExecutionError as err:
        progress.finish(ok=False)
        raise NotebookFailed(f"FAILED {nb.name} at cell {err.cell_index} (execution count {err.exec_count}): "
                             f"{err.ename}: {err.evalue}\n  executed copy: {out_dir / nb.name}\n"
                             f"  parameters: {params}") from None
    except BaseException:
        progress.finish(ok=False)
        raise
    finally:
        logging.getLogger("papermill").removeFilter(quiet)
    return progress.finish(ok=True)


# ----------------------------------------------------------------------------------------------- bookkeeping


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return {}  # first run, or a file cut short by a crash: only estimates and attributions are lost


def load_times(root: Path, profile: str) -> dict[str, dict[str, Any]]:
    """Last recorded run of each notebook under ``profile`` (for the estimates)."""
    return _read_json(root / TIMES).get(profile, {})


def save_time(root: Path, profile: str, stem: str, record: dict[str, Any]) -> None:
    """Record one successful notebook run in ``outputs/run_times.json``."""
    times = _read_json(root / TIMES)
    times.setdefault(profile, {})[stem] = record
    atomic_write_text(root / TIMES, json.dumps(times, indent=1, sort_keys=True) + "\n")


def snapshot(root: Path) -> dict[str, float]:
    """Modification time of every output file (relative path), bookkeeping and executed notebooks excluded."""
    found = {}
    for p in root.rglob("*"):
        rel = p.relative_to(root)
        if p.is_file() and not any(part.startswith(".") for part in rel.parts) and rel.parts[0] not in SKIP_TOP \
                and str(rel) not in (TIMES, MADE_BY, INDEX):
            found[rel.as_posix()] = p.stat().st_mtime
    return found


def load_made_by(root: Path) -> dict[str, str]:
    """Attributions of earlier runs (a subset run only updates its own notebooks' files)."""
    return {f: nb for f, nb in _read_json(root / MADE_BY).items() if (root / f).exists()}


# ----------------------------------------------------------------------------------------------- index


def classify(files: list[str]) -> tuple[list[str], list[str], dict[str, list[str]]]:
    """Split output files into figures (PNG), summary files, and record folders (folder -> files).

    A folder holding a model, checkpoint or dataset (any file that is not JSON/CSV/Markdown/text/PNG/PDF)
    and a folder of ``RECORD_MIN`` or more JSON files are record folders, listed by their first two
    levels (``results/needle/``, ``runs/<run>/``); a PDF beside a PNG of the same name goes with the figure;
    ``results/findings.json`` is always a summary file.
    """
    by_dir: dict[str, list[str]] = defaultdict(list)
    for f in files:
        by_dir[str(Path(f).parent)].append(f)
    binary = {d for d, fs in by_dir.items() if any(Path(f).suffix not in TEXT_SUFFIXES for f in fs)}
    pngs = {f for f in files if f.endswith(".png")}
    figures, summary, folders = sorted(pngs), [], defaultdict(list)
    for f in sorted(files):
        path, parent = Path(f), str(Path(f).parent)
        if f in pngs or (path.suffix == ".pdf" and str(path.with_suffix(".png")) in pngs):
            continue
        json_count = sum(1 for g in by_dir[parent] if g.endswith(".json"))
        is_summary = path.suffix in SUMMARY_SUFFIXES or (
            path.suffix == ".json" and (json_count < RECORD_MIN or "summary" in path.name))
        if (is_summary and parent not in binary) or f == findings.FINDINGS_PATH:
            summary.append(f)
        else:
            folders["/".join(path.parts[:min(2, len(path.parts) - 1)]) or "."].append(f)
    return figures, summary, dict(folders)


def _describe_folder(files: list[str]) -> str:
    checkpoints = {part for f in files for part in Path(f).parts if part.startswith("checkpoint-")}
    jsons = sum(1 for f in files if f.endswith(".json"))
    if jsons == len(files):
        return f"{jsons} JSON records"
    return (f"{len(checkpoints)} checkpoints, " if checkpoints else "") + f"{len(files)} files"


def _describe_file(root: Path, rel: str) -> str:
    path = root / rel
    if path.suffix == ".jsonl":
        with path.open("rb") as fh:
            return f"{sum(1 for line in fh if line.strip())} rows"
    size = path.stat().st_size
    return f"{size / 1024:.1f} kB" if size >= 1024 else f"{size} B"


def _who(made_by: dict[str, str], files: list[str]) -> str:
    names = sorted({Path(made_by[f]).stem for f in files if f in made_by})
    return ", ".join(f"`{n}`" for n in names) or "(earlier run)"


def write_index(made_by: dict[str, str], root: Path) -> Path:
    """``outputs/INDEX.md``: figures embedded as images, then summary results, then record folders with counts."""
    figures, summary, folders = classify(sorted(snapshot(root)))
    lines = ["# Outputs", "", "Paths are relative to this folder. Executed notebooks: [`notebooks/`](notebooks/).", "",
             "## Figures", ""]
    groups: dict[str, list[str]] = defaultdict(list)
    for f in figures:
        groups[Path(made_by.get(f, "(earlier run)")).stem].append(f)
    for nb, figs in sorted(groups.items()):
        lines += [f"### {nb}", ""]
        for f in figs:
            pdf = Path(f).with_suffix(".pdf").as_posix()
            link = f" · [PDF]({pdf})" if (root / pdf).is_file() else ""
            lines += [f"![{Path(f).stem}]({f})", "", f"`{f}`{link}", ""]
    lines += ["## Summary results", "", "| file | size | made by |", "|---|---|---|"]
    lines += [f"| [`{f}`]({f}) | {_describe_file(root, f)} | {_who(made_by, [f])} |" for f in summary]
    lines += ["", "## Record folders", "", "| folder | contents | made by |", "|---|---|---|"]
    lines += [f"| [`{d}/`]({d}/) | {_describe_folder(fs)} | {_who(made_by, fs)} |" for d, fs in sorted(folders.items())]
    if not figures:
        lines.insert(lines.index("## Figures") + 2, "(none yet)\n")
    return atomic_write_text(root / INDEX, "\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------- main


def write_findings(root: Path) -> tuple[str, str | None]:
    """Write ``results/findings.json`` from the records under ``root``; (its Markdown table, the error if it failed).

    Attributed to this script in ``made_by.json`` so the index lists it under summary results.
    """
    try:
        path = findings.write_findings(root)
    except Exception as err:  # a corrupt record must not hide the notebook table or the index
        return "", f"findings not written: {type(err).__name__}: {err}"
    made_by = load_made_by(root)
    made_by[path.relative_to(root).as_posix()] = Path(__file__).name
    atomic_write_text(root / MADE_BY, json.dumps(made_by, indent=0, sort_keys=True) + "\n")
    return findings.markdown_table(json.loads(path.read_text(encoding="utf-8"))), None


def summary_table(rows: list[dict[str, Any]], made_by: dict[str, str], root: Path) -> str:
    """The closing table: notebook, status, time, last run, and where its figures are."""
    out = [f"{'notebook':<24} {'status':<8} {'time':>7} {'last run':>8}  figures (under {_shown(root)}/)"]
    for row in rows:
        figs = sorted(f for f, nb in made_by.items() if nb == row["nb"].name and f.endswith(".png"))
        time_s = fmt_seconds(row["seconds"]) if row.get("seconds") is not None else "-"
        last = fmt_seconds(row["last"]["seconds"]) if row.get("last") else "-"
        out.append(f"{row['nb'].stem:<24} {row['status']:<8} {time_s:>7} {last:>8}  {', '.join(figs) or '-'}")
    return "\n".join(out)


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def run_all(notebooks: list[Path], profile: str, root: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Run notebooks in order until one fails; returns a row per notebook and the failure, if any."""
    out_dir = root / "notebooks"
    made_by, last_times = load_made_by(root), load_times(root, profile)
    rows = [{"nb": nb, "status": "not run", "last": last_times.get(nb.stem)} for nb in notebooks]
    failure = None
    for row in rows:
        before = snapshot(root)
        try:
            record = run_one(row["nb"], profiles.read_param_file(profile, row["nb"].stem), out_dir, row["last"])
            row.update(status="ok", seconds=record["seconds"])
            save_time(root, profile, row["nb"].stem, record)
        except (NotebookFailed, KeyboardInterrupt) as err:
            row["status"] = "FAILED" if isinstance(err, NotebookFailed) else "stopped"
            failure = str(err) or "interrupted"
        except Exception as err:  # e.g. a dead kernel: still index what exists and check the findings
            row["status"] = "FAILED"
            failure = f"FAILED {row['nb'].name}: {type(err).__name__}: {err}"
        made_by.update({f: row["nb"].name for f, t in snapshot(root).items() if before.get(f) != t})
        atomic_write_text(root / MADE_BY, json.dumps(made_by, indent=0, sort_keys=True) + "\n")
        if failure:
            break
    return rows, failure


def outputs_root(profile: str) -> Path:
    """The profile's outputs root (``LONGALIGN_OUTPUTS`` when set), exported so that every kernel writes there."""
    os.environ.setdefault("LONGALIGN_OUTPUTS", str(paths.profile_outputs(profile)))
    return paths.outputs()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="cpu", choices=config.PROFILES)
    parser.add_argument("notebooks", nargs="*", help="prefixes such as 00 03 (default: all)")
    args = parser.parse_args()
    notebooks = select(args.notebooks)  # bad prefixes fail before anything is written
    check_param_files(args.profile)
    check_kernel()
    root = outputs_root(args.profile)
    rows, failure = run_all(notebooks, args.profile, root)
    table, findings_error = write_findings(root)  # after a failure too: findings of what exists
    index = write_index(load_made_by(root), root)
    print("\n" + summary_table(rows, load_made_by(root), root))
    print(f"\nPaper findings (computed from the records; {findings.FINDINGS_PATH}):\n\n{table}" if table else "")
    print(f"run_notebooks: index of figures, results and records in {_shown(index)}")
    if failure or findings_error:
        sys.exit(f"\nrun_notebooks: {failure or findings_error}")


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
