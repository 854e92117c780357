"""Per-notebook parameter files ``configs/<profile>/<notebook>.yaml``, cut from ``configs/<profile>.yaml``.

papermill's ``-f`` injects every top-level key of a YAML file as a variable, so a whole profile
(notebook → parameters) cannot be handed to it as it is. The profile stays the one file to edit;
this module writes one file per notebook and profile, keeping the section's comments, which
``papermill notebooks/03_training_methods.ipynb out.ipynb -f configs/paper/03_training_methods.yaml``
reads as it is. ``python scripts/write_param_files.py`` regenerates them; a test fails while one is stale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from longalign import config, paths

REGENERATE = "python scripts/write_param_files.py"


def notebook_stems() -> list[str]:
    """Stems of the numbered notebooks, in order."""
    return [nb.stem for nb in sorted(paths.NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))]


def param_file(profile: str, notebook: str) -> Path:
    """Where one notebook's parameter file for ``profile`` lives."""
    return paths.CONFIGS / profile / f"{Path(notebook).stem}.yaml"


def read_param_file(profile: str, notebook: str) -> dict[str, Any]:
    """One notebook's parameters as papermill's ``-f`` reads them; exits naming the command when missing."""
    path = param_file(profile, notebook)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; generate it from configs/{profile}.yaml with `{REGENERATE}`")
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def render_param_file(profile: str, notebook: str) -> str:
    """Text of one notebook's parameter file: a header, then its profile section with comments."""
    stem = Path(notebook).stem
    section = config.load_profile(profile).get(stem, {})
    source = paths.CONFIGS / f"{profile}.yaml"
    body = "\n".join(_section_lines(source.read_text(encoding="utf-8"), stem)) + "\n"
    if not section:
        body = "{}\n"
    elif (yaml.safe_load(body) or {}) != section:
        # Flow style, anchors or odd indentation: fall back to a plain dump (values are what count).
        body = yaml.safe_dump(section, sort_keys=False, default_flow_style=None, width=100)
    header = (f"# Generated from configs/{profile}.yaml [{stem}] by `{REGENERATE}`: edit that file.\n"
              f"# papermill notebooks/{stem}.ipynb out.ipynb -f configs/{profile}/{stem}.yaml\n")
    base = config.extended_profile(profile)
    if base:  # the merged values; the comments live in the two profile files
        header += f"# configs/{base}.yaml with configs/{profile}.yaml's changes over it\n"
    return header + body


def _section_lines(text: str, stem: str) -> list[str]:
    """The raw lines of one top-level section of a profile, dedented; [] when it is absent or inline."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.split("#")[0].rstrip() == f"{stem}:"]
    if not starts:
        return []
    body: list[str] = []
    for line in lines[starts[0] + 1:]:
        if line.strip() and not line[0].isspace() and not line.startswith("#"):
            break
        body.append(line)
    while body and (not body[-1].strip() or body[-1].startswith("#")):
        body.pop()  # blank lines and column-0 comments just before the next section belong to it
    indents = [len(line) - len(line.lstrip()) for line in body if line.strip() and line[0].isspace()]
    cut = min(indents, default=0)
    return [line[cut:] if line[:cut].isspace() else line.strip() for line in body]


def expected_files(profiles: tuple[str, ...] = config.PROFILES) -> dict[Path, str]:
    """Every parameter file there should be (each profile × each numbered notebook) and its text."""
    return {param_file(p, stem): render_param_file(p, stem) for p in profiles for stem in notebook_stems()}


def stale_param_files(profiles: tuple[str, ...] = config.PROFILES) -> list[str]:
    """Parameter files that are missing, out of date, or left over (relative to ``configs/``)."""
    expected = expected_files(profiles)
    stale = [p for p, text in expected.items() if not p.is_file() or p.read_text(encoding="utf-8") != text]
    extra = [p for prof in profiles for p in sorted((paths.CONFIGS / prof).glob("*.yaml")) if p not in expected]
    return [str(p.relative_to(paths.CONFIGS)) for p in stale + extra]


def write_param_files(profiles: tuple[str, ...] = config.PROFILES) -> list[str]:
    """(Re)write every stale parameter file and delete left-over ones; returns what changed."""
    expected = expected_files(profiles)
    changed = stale_param_files(profiles)
    for rel in changed:
        path = paths.CONFIGS / rel
        if path in expected:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(expected[path], encoding="utf-8")
        else:
            path.unlink()
    return changed
