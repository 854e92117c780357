"""Profiles: ``configs/<profile>.yaml`` maps each notebook (by file stem) to its papermill parameters.

``cpu`` is the default laptop profile, ``paper`` the 8-GPU reproduction, ``test`` the tiny profile
the test suite runs under nbval, ``cpu-long`` the cpu profile with longer training for the findings that
do not fit in the 30-minute main job. A profile may start with ``extends: <profile>``: it then holds only
the parameters it changes, each replacing the whole value of that parameter in the base profile. Each section is also written as ``configs/<profile>/<notebook>.yaml``
(``scripts/write_param_files.py``) for plain ``papermill -f``; a test checks every section's keys
against the notebook's ``parameters`` cell, because papermill only warns about unknown names.

At run time every notebook calls :func:`check_parameters` first thing after its parameters: a value
of the wrong type (``-p num_documents abc``, ``max_len: "1024"``) or a name the parameters cell
does not declare (papermill injects it anyway) fails there, naming the parameter.
"""

from __future__ import annotations

import ast
import difflib
import json
from pathlib import Path
from typing import Any

import yaml

from longalign import paths

PROFILES = ("cpu", "paper", "test", "cpu-long")
EXTENDS = "extends"  # top-level key of a profile that overrides another one parameter by parameter


def load_profile(profile: str, _seen: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """The whole profile: notebook stem -> parameter dict (an ``extends`` base merged under it)."""
    path = paths.CONFIGS / f"{profile}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no profile {profile!r}: {path} does not exist (known: {', '.join(PROFILES)})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    base = data.pop(EXTENDS, None) if isinstance(data, dict) else None
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected a mapping of notebook name -> parameter mapping")
    if base is None:
        return data
    if not isinstance(base, str) or base in (*_seen, profile):
        raise ValueError(f"{path}: '{EXTENDS}: {base}' must name another profile, without a cycle")
    parent = load_profile(base, (*_seen, profile))
    return {stem: {**parent.get(stem, {}), **data.get(stem, {})} for stem in {**parent, **data}}  # base's order first


def extended_profile(profile: str) -> str | None:
    """The profile that ``profile`` extends (its ``extends`` key), None for a self-contained one."""
    data = yaml.safe_load((paths.CONFIGS / f"{profile}.yaml").read_text(encoding="utf-8")) or {}
    return data.get(EXTENDS) if isinstance(data, dict) else None


def notebook_params(profile: str, notebook: str) -> dict[str, Any]:
    """Parameters of one notebook (stem such as ``03_training_methods``) under ``profile``."""
    return dict(load_profile(profile).get(Path(notebook).stem, {}))


def parameters_cell(notebook_path: str | Path) -> dict[str, Any]:
    """Names and literal values of a notebook's ``parameters``-tagged cell (typed literals only)."""
    return _literal_assignments(_parameters_source(Path(notebook_path)), notebook_path)


def check_parameters(notebook: str | Path, namespace: dict[str, Any]) -> None:
    """Fail (ValueError naming the parameter) on a parameter of the wrong type or one the notebook does not declare.

    ``notebook`` is a stem under ``notebooks/`` or a path; ``namespace`` the notebook's ``globals()``.
    Types come from the annotations of the ``parameters`` cell: int, float (an int is accepted), str,
    bool, list[...], dict[...], tuple, ``X | None``; the cell's own default always passes.
    """
    path = _notebook_path(notebook)
    declared = parameter_annotations(path)
    defaults = parameters_cell(path)
    for name, annotation in declared.items():
        if name not in namespace:
            raise ValueError(f"{path.stem}: parameter {name!r} is not set; run the parameters cell first")
        value, default = namespace[name], defaults[name]
        if (type(value) is type(default) and value == default) or _matches(value, annotation, path):
            continue
        raise ValueError(f"{path.stem}: parameter {name!r} must be {ast.unparse(annotation)}, got {value!r:.200} "
                         f"({type(value).__name__}); fix the papermill -p/-y/-f value or the configs/<profile>.yaml entry")
    unknown = sorted(set(_injected_names(namespace)) - set(declared))
    if unknown:
        hints = [f"{n!r}" + "".join(f" (did you mean {m!r}?)" for m in difflib.get_close_matches(n, declared, 1))
                 for n in unknown]
        raise ValueError(f"{path.stem}: unknown parameter(s) {', '.join(hints)}; the notebook declares "
                         f"{', '.join(declared)}")


def check_limit(limit: int | None, name: str = "limit") -> int | None:
    """``limit`` when it is None (no limit) or a positive count; else a ValueError naming ``name``.

    None is the one spelling of "no limit" in parameters and library calls: a 0 (the old "all") raises
    instead of silently meaning everything or nothing.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0):
        raise ValueError(f"{name} must be a positive count or None (no limit), got {limit!r}")
    return limit


def check_path(path: str | Path | None, name: str = "path") -> Path | None:
    """``Path(path)``, or None when unset; an empty string raises (None is the one spelling of "not given")."""
    if path is None:
        return None
    if not str(path).strip():
        raise ValueError(f"{name} is empty: give a file path, or None when there is none")
    return Path(path)


def parameter_annotations(notebook_path: str | Path) -> dict[str, ast.expr]:
    """The type annotation (AST) of each name of a notebook's ``parameters`` cell."""
    source = _parameters_source(Path(notebook_path))
    return {node.target.id: node.annotation for node in ast.parse(source).body
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}


def _notebook_path(notebook: str | Path) -> Path:
    path = Path(notebook)
    if path.suffix == ".ipynb" or path.is_file():
        return path
    return paths.NOTEBOOKS / f"{path.name}.ipynb"


_SCALARS = {"int": int, "float": (int, float), "str": str, "bool": bool, "list": list, "dict": dict, "tuple": tuple}


def _matches(value: Any, ann: ast.expr, where: Path) -> bool:
    """Whether ``value`` fits the annotation ``ann`` (bools are not numbers here)."""
    if isinstance(ann, ast.Constant) and ann.value is None:
        return value is None
    if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
        return _matches(value, ann.left, where) or _matches(value, ann.right, where)
    if isinstance(ann, ast.Name) and ann.id in _SCALARS:
        if isinstance(value, bool) and ann.id != "bool":
            return False
        return isinstance(value, _SCALARS[ann.id])
    if isinstance(ann, ast.Subscript) and isinstance(ann.value, ast.Name) and ann.value.id in ("list", "dict"):
        args = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
        if ann.value.id == "list":
            return isinstance(value, list) and all(_matches(v, args[0], where) for v in value)
        return isinstance(value, dict) and len(args) == 2 and all(
            _matches(k, args[0], where) and _matches(v, args[1], where) for k, v in value.items())
    raise ValueError(f"{where}: parameters cell annotation {ast.unparse(ann)!r} is not supported; use int, float, "
                     f"str, bool, list[...], dict[...], tuple or X | None")


# Names IPython puts into every namespace; they are never parameters.
_IPYTHON_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def _injected_names(namespace: dict[str, Any]) -> list[str]:
    """Names papermill injected: those its ``# Parameters`` cell assigns (IPython), else every plain value."""
    history = namespace.get("In")
    if isinstance(history, list):
        injected = [src for src in history if isinstance(src, str) and src.lstrip().startswith("# Parameters")]
        if not injected:
            return []
        return [t.id for node in ast.parse(injected[-1]).body if isinstance(node, ast.Assign)
                for t in node.targets if isinstance(t, ast.Name)]
    return [n for n, v in namespace.items() if not n.startswith("_") and n not in _IPYTHON_NAMES
            and not (callable(v) or type(v).__name__ == "module")]


def _parameters_source(notebook_path: Path) -> str:
    nb = json.loads(notebook_path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return "".join(cell["source"])
    raise ValueError(f"{notebook_path}: no code cell tagged 'parameters'")


def _literal_assignments(source: str, where: str | Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for node in ast.parse(source).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if not isinstance(target, ast.Name) or node.value is None:
            raise ValueError(f"{where}: parameters cell line {node.lineno} is not a simple `name: type = literal`")
        values[target.id] = ast.literal_eval(node.value)
    return values
