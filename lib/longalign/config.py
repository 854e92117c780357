"""Profiles: ``configs/<profile>.yaml`` maps each notebook (by file stem) to its papermill parameters.

``cpu`` is the default laptop profile, ``paper`` the 8-GPU reproduction, ``test`` the tiny profile
the test suite runs under nbval. ``run_all.sh`` hands each notebook its own section via
:func:`write_notebook_params`; a test checks every section's keys against the notebook's
``parameters`` cell, because papermill only warns about unknown names.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import yaml

from longalign import paths

PROFILES = ("cpu", "paper", "test")


def load_profile(profile: str) -> dict[str, dict[str, Any]]:
    """The whole profile: notebook stem -> parameter dict."""
    path = paths.CONFIGS / f"{profile}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no profile {profile!r}: {path} does not exist (known: {', '.join(PROFILES)})")
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ValueError(f"{path}: expected a mapping of notebook name -> parameter mapping")
    return data


def notebook_params(profile: str, notebook: str) -> dict[str, Any]:
    """Parameters of one notebook (stem such as ``03_training_methods``) under ``profile``."""
    return dict(load_profile(profile).get(Path(notebook).stem, {}))


def write_notebook_params(profile: str, notebook: str, dest: str | Path) -> Path:
    """Write one notebook's section as a standalone YAML for ``papermill -f``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(notebook_params(profile, notebook), sort_keys=False), encoding="utf-8")
    return dest


def parameters_cell(notebook_path: str | Path) -> dict[str, Any]:
    """Names and literal values of a notebook's ``parameters``-tagged cell (typed literals only)."""
    nb = json.loads(Path(notebook_path).read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return _literal_assignments("".join(cell["source"]), notebook_path)
    raise ValueError(f"{notebook_path}: no code cell tagged 'parameters'")


def _literal_assignments(source: str, where: str | Path) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for node in ast.parse(source).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (node.targets[0] if isinstance(node, ast.Assign) else None)
        if not isinstance(target, ast.Name) or node.value is None:
            raise ValueError(f"{where}: parameters cell line {node.lineno} is not a simple `name: type = literal`")
        values[target.id] = ast.literal_eval(node.value)
    return values
