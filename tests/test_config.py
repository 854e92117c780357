"""Profiles and the run-time parameter check: wrong types and unknown names fail, naming the parameter."""

from __future__ import annotations

import json
import re
import sys

import nbformat
import pytest

from longalign import config

PARAMETERS = """num_documents: int = 3
ratio: float = 0.5
name: str = "x"
flag: bool = False
sources: list[str] = ["a"]
weights: dict[str, float] = {"a": 1.0}
base_url: str | None = None
limit: int | None = 8
anything: list = []
legacy: str = None
"""


def _notebook(tmp_path, body: str = "print('ran with', num_documents)"):
    path = tmp_path / "99_params.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "longalign", "display_name": "LongAlign (.venv)", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell("# params"),
                nbformat.v4.new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(f"from longalign.config import check_parameters\n"
                                          f"check_parameters({str(path)!r}, globals())\n{body}")]
    nbformat.write(nb, path)
    return path


def _defaults(path) -> dict:
    return dict(config.parameters_cell(path))


@pytest.mark.parametrize("name,value", [
    ("num_documents", 7), ("ratio", 2), ("ratio", 0.25), ("name", ""), ("flag", True), ("sources", []),
    ("sources", ["b", "c"]), ("weights", {"b": 2}), ("base_url", "http://h"), ("base_url", None), ("limit", None), ("limit", 3), ("anything", [1, "a"]),
    ("legacy", "y")])
def test_values_of_the_declared_type_pass(tmp_path, name, value):
    path = _notebook(tmp_path)
    config.check_parameters(path, {**_defaults(path), name: value})


@pytest.mark.parametrize("name,value,expected", [
    ("num_documents", "abc", "int"), ("num_documents", "1024", "int"), ("num_documents", 1.5, "int"),
    ("num_documents", True, "int"), ("ratio", "0.5", "float"), ("ratio", False, "float"), ("name", 3, "str"),
    ("flag", 1, "bool"), ("flag", "false", "bool"), ("sources", "a", "list[str]"), ("sources", [1], "list[str]"),
    ("weights", {"a": "x"}, "dict[str, float]"), ("weights", [], "dict[str, float]"), ("base_url", 5, "str | None"),
    ("limit", "8", "int | None"), ("limit", 2.0, "int | None"), ("legacy", 5, "str")])
def test_wrong_types_fail_naming_parameter_type_and_value(tmp_path, name, value, expected):
    path = _notebook(tmp_path)
    message = f"parameter '{name}' must be {expected}, got {value!r} ({type(value).__name__})"
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        config.check_parameters(path, {**_defaults(path), name: value})
    assert "99_params" in str(err.value)


def test_limits_and_paths_spell_unset_as_none():
    assert config.check_limit(None) is None and config.check_limit(5, "n_items") == 5
    for bad in (0, -1, 2.5, True):  # 0 once meant "all": it must not silently mean all or nothing now
        with pytest.raises(ValueError, match="n_items must be a positive count or None"):
            config.check_limit(bad, "n_items")
    assert config.check_path(None) is None and str(config.check_path("a/b.json")) == "a/b.json"
    with pytest.raises(ValueError, match="test_cases_path is empty"):
        config.check_path("", "test_cases_path")


def test_unknown_names_fail_with_the_closest_known_name(tmp_path):
    path = _notebook(tmp_path)
    namespace = {**_defaults(path), "num_documnets": 5, "_": None, "In": None, "print": print, "config": config}
    del namespace["In"]
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) 'num_documnets' \(did you mean 'num_documents'\?\)"):
        config.check_parameters(path, namespace)
    # Under IPython only the names of papermill's injected cell count, not the notebook's own later variables.
    history = ["", "# Parameters\nnum_documents = 4\nnam = 'y'\n", "check_parameters(...)"]
    with pytest.raises(ValueError, match=r"'nam' \(did you mean 'name'\?\)"):
        config.check_parameters(path, {**_defaults(path), "In": history, "tokenizer": "t", "depths": [1]})
    config.check_parameters(path, {**_defaults(path), "In": history[:1], "tokenizer": "t", "depths": [1]})


def test_unsupported_annotation_is_reported(tmp_path):
    path = _notebook(tmp_path)
    nb = nbformat.read(path, as_version=4)
    nb.cells[1].source = "x: set = 1\n"
    nbformat.write(nb, path)
    with pytest.raises(ValueError, match="annotation 'set' is not supported"):
        config.check_parameters(path, {"x": 2})


@pytest.fixture()
def project_kernel(tmp_path, monkeypatch):
    """A ``longalign`` kernelspec for this interpreter, so the test runs whether or not setup_env.sh has registered it."""
    spec = tmp_path / "jupyter" / "kernels" / "longalign"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f",
                                                           "{connection_file}"],
                                                  "display_name": "LongAlign (.venv)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))


@pytest.mark.slow
def test_papermill_run_fails_naming_the_parameter(tmp_path, project_kernel):
    """The real path: papermill injects `-p num_documents abc` (a str) or a misspelt name; the notebook stops there."""
    import papermill as pm

    path = _notebook(tmp_path)
    for params, message in [({"num_documents": "abc"}, "parameter 'num_documents' must be int, got 'abc' (str)"),
                            ({"num_documnets": 5}, "'num_documnets' (did you mean 'num_documents'?)")]:
        with pytest.raises(pm.PapermillExecutionError) as err:
            pm.execute_notebook(str(path), str(tmp_path / "out.ipynb"), parameters=params, progress_bar=False)
        assert err.value.ename == "ValueError" and message in err.value.evalue
        assert "ran with " + str(params.get("num_documents", 3)) not in (tmp_path / "out.ipynb").read_text()
    pm.execute_notebook(str(path), str(tmp_path / "out.ipynb"), parameters={"num_documents": 9, "ratio": 1},
                        progress_bar=False)
    assert "ran with 9" in (tmp_path / "out.ipynb").read_text()
