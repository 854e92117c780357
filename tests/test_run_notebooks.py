"""The main job's driver: a failing notebook stops with its name and cell; the index names each file's notebook."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import nbformat
import pytest

from longalign import paths

spec = importlib.util.spec_from_file_location("run_notebooks", paths.ROOT / "scripts" / "run_notebooks.py")
run_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_notebooks)


def test_failing_notebook_names_notebook_and_cell(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# broken"), nbformat.v4.new_code_cell("x: int = 1", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("raise RuntimeError('boom')")]
    path = tmp_path / "99_broken.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(SystemExit) as err:
        run_notebooks.run_one(path, "test", tmp_path)
    message = str(err.value)
    assert "FAILED 99_broken.ipynb at cell" in message and "RuntimeError: boom" in message


def test_select_rejects_unknown_prefix():
    with pytest.raises(SystemExit, match="no notebook matches"):
        run_notebooks.select(["99"])
    assert [nb.stem[:2] for nb in run_notebooks.select(["00"])] == ["00"]


@pytest.mark.slow
def test_index_attributes_outputs(tmp_path):
    env_out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(paths.ROOT / "scripts" / "run_notebooks.py"), "--profile", "test", "00"],
                          env={**__import__("os").environ, "LONGALIGN_OUTPUTS": str(env_out)},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    index = (env_out / "INDEX.md").read_text()
    assert "| `figures/00_block_mask.png` | `00_packing_explained.ipynb` |" in index
    assert (env_out / "notebooks" / "00_packing_explained.ipynb").is_file()
