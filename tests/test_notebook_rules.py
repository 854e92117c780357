"""Every notebook follows the project's notebook rules, and every profile matches its parameters.

papermill only warns about unknown parameter names, so a typo in configs/*.yaml would silently run
the default: this test turns it into a failure.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from longalign import config, paths

NOTEBOOKS = sorted(paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
IDS = [nb.stem for nb in NOTEBOOKS]


def _cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text(encoding="utf-8"))["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def test_notebooks_exist():
    assert [nb.stem[:2] for nb in NOTEBOOKS] == [f"{i:02d}" for i in range(len(NOTEBOOKS))], "numbered 00, 01, ..."
    assert len(NOTEBOOKS) >= 1


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_header_cell(nb):
    first = _cells(nb)[0]
    text = _source(first)
    assert first["cell_type"] == "markdown" and text.startswith("# "), "H1 title first"
    assert "Inputs:" in text and "Outputs:" in text, "Inputs:/Outputs: lines in the first cell"
    assert len([line for line in text.splitlines() if line.strip()]) >= 3, "title + one-line summary + I/O"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_parameters_cell_is_typed_literals(nb):
    code = [c for c in _cells(nb) if c["cell_type"] == "code"]
    assert "parameters" in code[0].get("metadata", {}).get("tags", []), "first code cell tagged parameters"
    for node in ast.parse(_source(code[0])).body:
        assert isinstance(node, ast.AnnAssign), f"line {node.lineno}: parameters are `name: type = literal`"
        ast.literal_eval(node.value)


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_stripped_and_thin(nb):
    for i, cell in enumerate(_cells(nb)):
        if cell["cell_type"] != "code":
            continue
        assert not cell.get("outputs") and cell.get("execution_count") is None, f"cell {i}: commit outputs stripped"
        tree = ast.parse(_python_only(_source(cell)))
        for node in ast.walk(tree):
            assert not isinstance(node, ast.ClassDef), f"cell {i}: no classes in notebooks"
            if isinstance(node, ast.FunctionDef):
                length = node.end_lineno - node.lineno + 1
                assert length <= 12, f"cell {i}: function {node.name} is {length} lines; move it to lib/"


@pytest.mark.parametrize("profile", config.PROFILES)
def test_profile_keys_match_parameters(profile):
    sections = config.load_profile(profile)
    assert set(sections) <= set(IDS), f"configs/{profile}.yaml names unknown notebooks {set(sections) - set(IDS)}"
    for nb in NOTEBOOKS:
        declared = config.parameters_cell(nb)
        given = sections.get(nb.stem, {})
        unknown = set(given) - set(declared)
        assert not unknown, f"configs/{profile}.yaml [{nb.stem}] has keys the notebook does not declare: {unknown}"
        for key, value in given.items():
            assert _compatible(declared[key], value), f"{profile}/{nb.stem}.{key}: {value!r} vs default {declared[key]!r}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_parameters_are_checked_first(nb):
    code = [c for c in _cells(nb) if c["cell_type"] == "code"]
    lines = [line for line in _source(code[1]).splitlines() if line.strip()]
    assert lines[:2] == ["from longalign.config import check_parameters",
                         f'check_parameters("{nb.stem}", globals())  # a mistyped or unknown parameter stops here, by name']


@pytest.mark.parametrize("profile", config.PROFILES)
def test_profile_values_pass_the_runtime_check(profile):
    """What check_parameters will say at run time, for every profile section and the notebooks' own defaults."""
    sections = config.load_profile(profile)
    for nb in NOTEBOOKS:
        config.check_parameters(nb, {**config.parameters_cell(nb), **sections.get(nb.stem, {})})


# A str parameter with one of these name endings is a location or a name: unset is None, never "".
UNSET_NAMES = ("_path", "_dir", "_url", "_model", "_root")
TINY_OVERRIDES = paths.ROOT / "tests" / "fixtures" / "paper" / "tiny_overrides.yaml"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_unset_is_none_in_parameters_cells(nb):
    """One spelling of "unset": `X | None = None`, never "" for a path/name or 0 for a count, limit or cap."""
    annotations = config.parameter_annotations(nb)
    bad = unset_misspellings(annotations, config.parameters_cell(nb), defaults=True)
    assert not bad, f"{nb.stem}: {bad}"


@pytest.mark.parametrize("source", [*config.PROFILES, "tiny_overrides"])
def test_unset_is_none_in_profiles(source):
    sections = (yaml.safe_load(TINY_OVERRIDES.read_text(encoding="utf-8")) if source == "tiny_overrides"
                else config.load_profile(source))
    for nb in NOTEBOOKS:
        bad = unset_misspellings(config.parameter_annotations(nb), sections.get(nb.stem, {}))
        assert not bad, f"{source} [{nb.stem}]: {bad}"


def test_unset_rule_flags_the_old_spellings():
    """The rule above can fail: the spellings this project used before (and a None default typed `str`)."""
    source = ('judge_model: str = ""\nlimit: int | None = 0\ncap: float | None = 0.0\nbase_url: str = None\n'
              'root: str | None = ""\nname: str = ""\nn_items: int | None = 8\nsave_steps: int = 0\nx: str | None = None\n')
    tree = ast.parse(source).body
    annotations = {n.target.id: n.annotation for n in tree}
    values = {n.target.id: ast.literal_eval(n.value) for n in tree}
    assert unset_misspellings(annotations, values, defaults=True) == [
        "judge_model = '' (use None)", "limit = 0 (use None)", "cap = 0.0 (use None)",
        "base_url = None needs an `X | None` annotation", "root = '' (use None)"]


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=IDS)
def test_project_kernel(nb):
    """The notebooks run on the project's own kernel, never the machine-wide ``python3``."""
    spec = json.loads(nb.read_text(encoding="utf-8"))["metadata"]["kernelspec"]
    assert spec == {"display_name": "LongAlign (.venv)", "language": "python", "name": "longalign"}


def unset_misspellings(annotations: dict[str, ast.expr], values: dict, defaults: bool = False) -> list[str]:
    """Values that spell "unset" as "" or 0 where None is the spelling (and, for ``defaults``, None typed without it)."""
    bad = []
    for name, value in values.items():
        optional = name in annotations and _allows_none(annotations[name])
        zero = type(value) in (int, float) and value == 0
        if (optional and (value == "" or zero)) or (value == "" and name.endswith(UNSET_NAMES)):
            bad.append(f"{name} = {value!r} (use None)")
        elif defaults and value is None and not optional:
            bad.append(f"{name} = None needs an `X | None` annotation")
    return bad


def _allows_none(annotation: ast.expr) -> bool:
    """Whether an annotation such as ``int | None`` admits None."""
    if isinstance(annotation, ast.BinOp) and isinstance(annotation.op, ast.BitOr):
        return _allows_none(annotation.left) or _allows_none(annotation.right)
    return isinstance(annotation, ast.Constant) and annotation.value is None


def _python_only(source: str) -> str:
    """Blank out IPython magics and shell escapes (lines starting with % or !), which are not Python."""
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in source.splitlines())


def _compatible(default, value) -> bool:
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, (int, float)) and isinstance(value, (int, float)):
        return not (isinstance(default, int) and isinstance(value, float))
    return type(default) is type(value)
