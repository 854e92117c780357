"""The main job's driver: progress lines with estimates from the last run, a failing notebook stops with its name
and cell, no kernel TCP warning, a closing table, and an index that leads with the figures."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from longalign import paths

spec = importlib.util.spec_from_file_location("run_notebooks", paths.ROOT / "scripts" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_notebooks)

TCP_WARNING = "Kernel is running over TCP without encryption"


@pytest.fixture()
def project_kernel(tmp_path, monkeypatch):
    """A ``longalign`` kernelspec for this interpreter (as ``ipykernel install`` writes it), whether or not
    setup_env.sh has registered one."""
    spec_dir = tmp_path / "jupyter" / "kernels" / "longalign"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "LongAlign (.venv)", "language": "python",
        "metadata": {"supported_encryption": ["curve"]}}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))


def _notebook(path: Path, *sources: str) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "longalign", "display_name": "LongAlign (.venv)", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {path.stem}"),
                nbformat.v4.new_code_cell("x: int = 1", metadata={"tags": ["parameters"]}),
                *[nbformat.v4.new_code_cell(s) for s in sources]]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_failing_notebook_names_notebook_and_cell(tmp_path, project_kernel):
    path = _notebook(tmp_path / "99_broken.ipynb", "raise RuntimeError('boom')")
    stream = io.StringIO()
    with pytest.raises(run_notebooks.NotebookFailed) as err:
        run_notebooks.run_one(path, {}, tmp_path / "out", stream=stream)
    message = str(err.value)
    assert "FAILED 99_broken.ipynb at cell 2" in message and "RuntimeError: boom" in message
    assert "[99_broken] FAILED in" in stream.getvalue()


def test_select_rejects_unknown_prefix():
    with pytest.raises(SystemExit, match="no notebook matches"):
        run_notebooks.select(["99"])
    assert [nb.stem[:2] for nb in run_notebooks.select(["00"])] == ["00"]


def test_progress_line_estimates_from_the_last_run():
    last = {"seconds": 100.0, "cells": [10.0, 20.0, 30.0, 40.0]}
    progress = run_notebooks.Progress("03_x", total=4, last=last, stream=io.StringIO())
    progress.finish(ok=True)  # stops the heartbeat; the line is computed from the fields set below
    progress.start, progress.cell, progress.cell_start = 0.0, 1, 12.0
    # In cell 2 for 5 s of its 20 s last time, cells 3-4 took 70 s: 15 + 70 = 85 s left.
    assert progress.line(now=17.0) == "[03_x] cell 2/4 · 17s elapsed · ~1m25s left (last run 1m40s)"
    progress.last = {"seconds": 100.0, "cells": [50.0]}  # notebook changed: fall back to the total
    assert progress.line(now=151.0) == "[03_x] cell 2/4 · 2m31s elapsed · past last run's 1m40s"
    progress.last = None
    assert progress.line(now=17.0) == "[03_x] cell 2/4 · 17s elapsed"


def test_progress_reports_every_cell_and_records_cell_times(tmp_path, project_kernel):
    path = _notebook(tmp_path / "98_tiny.ipynb", "import time; time.sleep(0.3)", "y = x + 1")
    stream = io.StringIO()
    record = run_notebooks.run_one(path, {"x": 2}, tmp_path / "out", last={"seconds": 9.0}, stream=stream, gap=0.0)
    lines = stream.getvalue().splitlines()
    total = 5  # markdown, parameters, papermill's injected cell, two code cells
    assert [re.match(r"\[98_tiny\] cell (\d)/5 ", s).group(1) for s in lines[:-1]] == ["1", "2", "3", "4", "5"]
    assert all("(last run 9s)" in s or "past last run" in s for s in lines[:-1])
    assert lines[-1].startswith("[98_tiny] done in ") and len(record["cells"]) == total
    assert record["cells"][3] >= 0.3 and abs(sum(record["cells"]) - record["seconds"]) < 0.05
    executed = nbformat.read(tmp_path / "out" / "98_tiny.ipynb", as_version=4)
    assert "x = 2" in executed.cells[2].source


@pytest.mark.slow
def test_kernel_tcp_warning_is_gone_and_errors_still_show(tmp_path, project_kernel):
    """The kernel's own stderr reaches the terminal: run the driver in a child process and read it."""
    path = _notebook(tmp_path / "97_warn.ipynb", "import sys; print('real problem', file=sys.__stderr__)")
    code = ("import importlib.util, sys; s = importlib.util.spec_from_file_location('r', sys.argv[1]); "
            "r = importlib.util.module_from_spec(s); s.loader.exec_module(r); "
            "r.kernel_config = r.kernel_config if sys.argv[3] == 'on' else (lambda: None); "
            "r.run_one(r.Path(sys.argv[2]), {}, r.Path(sys.argv[2]).parent / 'out')")
    script = str(paths.ROOT / "scripts" / "run_notebooks.py")
    runs = {mode: subprocess.run([sys.executable, "-c", code, script, str(path), mode], capture_output=True,
                                 text=True, timeout=120, env=os.environ) for mode in ("on", "off")}
    assert runs["on"].returncode == 0, runs["on"].stderr
    assert TCP_WARNING not in runs["on"].stderr and "real problem" in runs["on"].stderr
    assert TCP_WARNING in runs["off"].stderr  # the control: without encryption ipykernel does warn


def _touch(root: Path, rel: str, text: str = "{}") -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


OUTPUT_TREE = ["figures/00_a.png", "figures/00_a.pdf", "figures/03_b.png", "results/tables/07_x.csv",
               "data/long.summary.json", "results/packing/one.json", "data/tokenized/mix/data-00000.arrow",
               "data/tokenized/mix/dataset_info.json", "data/tokenized/mix/state.json",
               *[f"results/needle/smollm2/L{n}_D10.json" for n in (500, 1000, 2000, 4000)],
               *[f"runs/{m}-seed0.json" for m in ("naive", "sorted", "packing")],
               *[f"runs/naive-seed0/checkpoint-{s}/{f}" for s in (2, 4)
                 for f in ("config.json", "generation_config.json", "trainer_state.json", "model.safetensors",
                           "merges.txt")]]


def test_index_leads_with_figures_then_summaries_then_record_folders(tmp_path):
    root = tmp_path / "outputs"
    for rel in OUTPUT_TREE:
        _touch(root, rel)
    _touch(root, "data/long.jsonl", '{"a": 1}\n{"a": 2}\n{"a": 3}\n')
    _touch(root, "notebooks/00_a.ipynb")
    made_by = {"figures/00_a.png": "00_a.ipynb", "figures/03_b.png": "03_b.ipynb", "data/long.jsonl": "01_d.ipynb",
               **{f"runs/{m}-seed0.json": "03_b.ipynb" for m in ("naive", "sorted", "packing")}}
    text = run_notebooks.write_index(made_by, root).read_text()
    figures, summary, records = (text.index(h) for h in ("## Figures", "## Summary results", "## Record folders"))
    assert figures < summary < records
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert images == ["figures/00_a.png", "figures/03_b.png"] and all((root / i).is_file() for i in images)
    assert "### 00_a" in text and "[PDF](figures/00_a.pdf)" in text and "`figures/00_a.pdf`" not in text
    listed = re.findall(r"^\| \[`([^`]+)`\]", text[summary:records], flags=re.M)
    assert listed == ["data/long.jsonl", "data/long.summary.json", "results/packing/one.json",
                      "results/tables/07_x.csv"]
    assert "| [`data/long.jsonl`](data/long.jsonl) | 3 rows | `01_d` |" in text
    rows = dict(re.findall(r"^\| \[`([^`]+)/`\]\([^)]*\) \| ([^|]+) \|", text[records:], flags=re.M))
    assert rows == {"data/tokenized": "3 files", "results/needle": "4 JSON records", "runs": "3 JSON records",
                    "runs/naive-seed0": "2 checkpoints, 10 files"}
    assert "| [`runs/`](runs/) | 3 JSON records | `03_b` |" in text and "notebooks/00_a" not in text


def test_main_writes_findings_and_indexes_them_after_a_failed_notebook(tmp_path, monkeypatch, capsys):
    root = tmp_path / "outputs"
    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(root))
    for k in range(3):  # three JSON files beside findings.json would make results/ a record folder
        _touch(root, f"results/x{k}.json")
    def crash(*_args, **_kwargs):
        raise RuntimeError("kernel died")  # not a cell error: run_all must still return so findings get written

    monkeypatch.setattr(run_notebooks, "run_one", crash)
    monkeypatch.setattr(run_notebooks, "check_kernel", lambda *a: None)
    monkeypatch.setattr(run_notebooks, "check_param_files", lambda *a: None)
    monkeypatch.setattr(run_notebooks.profiles, "read_param_file", lambda *a: {})
    monkeypatch.setattr(sys, "argv", ["run_notebooks.py", "00"])
    with pytest.raises(SystemExit, match="FAILED 00_packing_explained.ipynb: RuntimeError: kernel died"):
        run_notebooks.main()
    entries = json.loads((root / "results" / "findings.json").read_text())
    assert len(entries) == 7 and not any(e["holds"] for e in entries)
    index = (root / "INDEX.md").read_text()
    summary = index[index.index("## Summary results"):index.index("## Record folders")]
    assert "| [`results/findings.json`](results/findings.json) |" in summary and "`run_notebooks`" in summary
    out = capsys.readouterr().out
    assert "| finding | paper | this run | holds |" in out and re.search(r"^00_packing_explained +FAILED", out, re.M)


@pytest.mark.slow
def test_run_all_stops_at_a_failure_records_times_and_tables(tmp_path, monkeypatch, project_kernel, capsys):
    notebooks, configs, root = tmp_path / "notebooks", tmp_path / "configs", tmp_path / "outputs"
    write_png = f"open({str(root / 'figures' / '00_ok.png')!r}, 'wb').write(b'png')"
    _notebook(notebooks / "00_ok.ipynb", f"import os; os.makedirs({str(root / 'figures')!r}, exist_ok=True)",
              write_png)
    _notebook(notebooks / "01_bad.ipynb", "assert x == 1, 'x must be 1'")
    _notebook(notebooks / "02_never.ipynb")
    for stem, text in (("00_ok", "{}\n"), ("01_bad", "x: 2\n"), ("02_never", "{}\n")):
        _touch(configs, f"t/{stem}.yaml", text)
    monkeypatch.setattr(paths, "NOTEBOOKS", notebooks)
    monkeypatch.setattr(paths, "CONFIGS", configs)
    chosen = run_notebooks.select([])
    rows, failure = run_notebooks.run_all(chosen, "t", root)
    assert [r["status"] for r in rows] == ["ok", "FAILED", "not run"]
    assert "FAILED 01_bad.ipynb" in failure and "x must be 1" in failure
    times = json.loads((root / "run_times.json").read_text())["t"]
    assert list(times) == ["00_ok"] and times["00_ok"]["seconds"] == rows[0]["seconds"]
    made_by = run_notebooks.load_made_by(root)
    assert made_by == {"figures/00_ok.png": "00_ok.ipynb"}
    table = run_notebooks.summary_table(rows, made_by, root).splitlines()
    assert table[1].split()[:2] == ["00_ok", "ok"] and table[1].endswith("figures/00_ok.png")
    assert table[2].split()[:2] == ["01_bad", "FAILED"] and table[3].split()[:3] == ["02_never", "not", "run"]
    capsys.readouterr()
    rows, failure = run_notebooks.run_all(chosen[:1], "t", root)  # the second run is estimated from the first
    assert failure is None and "(last run " in capsys.readouterr().out
    assert rows[0]["last"]["seconds"] == times["00_ok"]["seconds"]


@pytest.mark.slow
def test_index_attributes_outputs(tmp_path, project_kernel):
    env_out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(paths.ROOT / "scripts" / "run_notebooks.py"), "--profile", "test", "00"],
                          env={**os.environ, "LONGALIGN_OUTPUTS": str(env_out)},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = (env_out / "INDEX.md").read_text()
    assert "### 00_packing_explained" in index and "![00_block_mask](figures/00_block_mask.png)" in index
    assert (env_out / "notebooks" / "00_packing_explained.ipynb").is_file()
    assert re.search(r"^00_packing_explained +ok .*figures/00_block_mask\.png", proc.stdout, flags=re.M), proc.stdout
    assert TCP_WARNING not in proc.stderr


def test_each_profile_but_cpu_and_paper_writes_its_own_outputs_root(monkeypatch, tmp_path):
    monkeypatch.delenv("LONGALIGN_OUTPUTS", raising=False)
    assert run_notebooks.outputs_root("cpu-long") == paths.ROOT / "outputs-cpu-long"
    assert os.environ["LONGALIGN_OUTPUTS"] == str(paths.ROOT / "outputs-cpu-long")  # the kernels inherit it
    monkeypatch.delenv("LONGALIGN_OUTPUTS")
    assert run_notebooks.outputs_root("cpu") == paths.ROOT / "outputs"
    assert paths.profile_outputs("paper") == paths.ROOT / "outputs" and paths.profile_outputs("test").name == "outputs-test"
    monkeypatch.setenv("LONGALIGN_OUTPUTS", str(tmp_path))  # an explicit root wins
    assert run_notebooks.outputs_root("cpu-long") == tmp_path.resolve()


def test_unknown_parameter_warning_is_dropped_only_for_declared_names():
    quiet = run_notebooks.DeclaredParameterFilter({"output_dir", "seed"})
    make = lambda msg: logging.LogRecord("papermill", logging.WARNING, __file__, 1, msg, None, None)
    assert not quiet.filter(make("Passed unknown parameter: output_dir"))  # declared `str | None`: not unknown
    assert quiet.filter(make("Passed unknown parameter: outptu_dir"))  # a real typo still warns
    assert quiet.filter(make("Executing notebook with kernel: longalign"))
