"""Every path the project writes or reads, built from one ROOT (showyourwork style).

``LONGALIGN_OUTPUTS`` redirects all outputs (tests point it at a temporary folder; ``run_all.sh`` points
it at ``outputs-<profile>/`` for every profile but cpu and paper, so their records never mix);
``LONGALIGN_CACHE`` redirects caches (tokenizers, converted models, API responses).
Nothing else in the project builds output paths by hand. Folders that hold prompts, answers or a
user's documents (``outputs/data``, the API response caches) are owner-only (0700, whatever the
umask), so that other accounts on a shared machine cannot read them; the files ``records`` and the
LLM client write there are 0600 (``records.owner_only``). Arrow folders that ``datasets`` writes
under ``outputs/data/tokenized`` keep its modes: the 0700 parent folder is their protection.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT: Path = Path(__file__).resolve().parents[2]
CONFIGS: Path = ROOT / "configs"
NOTEBOOKS: Path = ROOT / "notebooks"
SHARED: Path = ROOT.parent / "shared"  # reference material beside a checkout; optional, never required


def outputs() -> Path:
    """Root of everything the notebooks write (``outputs/`` unless ``LONGALIGN_OUTPUTS`` is set)."""
    return Path(os.environ.get("LONGALIGN_OUTPUTS", ROOT / "outputs")).resolve()


def profile_outputs(profile: str) -> Path:
    """The default outputs root of a profile: ``outputs/`` for cpu and paper, ``outputs-<profile>/`` otherwise.

    Finished runs and records are reused by name, so a profile that trains the same run names with
    other settings (cpu-long, test) gets its own root instead of meeting the cpu profile's records.
    """
    return ROOT / ("outputs" if profile in ("cpu", "paper") else f"outputs-{profile}")


def cache() -> Path:
    """Root of reusable caches (``~/.cache/longalign`` unless ``LONGALIGN_CACHE`` is set)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "longalign"
    return Path(os.environ.get("LONGALIGN_CACHE", default)).resolve()


def _sub(base: Path, *parts: str) -> Path:
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def private_dir(path: str | Path) -> Path:
    """``path`` created if needed and made owner-only (mode 0700, set explicitly so the umask cannot widen it)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def data_dir() -> Path:
    """``outputs/data`` (owner-only: built from a user's documents): constructed JSONL data and Arrow datasets."""
    return private_dir(outputs() / "data")


def models_dir() -> Path:
    """``outputs/models``: context-extended and trained checkpoints."""
    return _sub(outputs(), "models")


def runs_dir() -> Path:
    """``outputs/runs``: one JSON record (and checkpoints) per training run."""
    return _sub(outputs(), "runs")


def results_dir(kind: str) -> Path:
    """``outputs/results/<kind>``: one JSON record per judged item or grid cell."""
    return _sub(outputs(), "results", kind)


def figures_dir() -> Path:
    """``outputs/figures``: every figure as PNG and PDF."""
    return _sub(outputs(), "figures")


def shared_data(*parts: str) -> Path | None:
    """A file or folder under ``../shared/data`` if this checkout has one, else None."""
    path = SHARED.joinpath("data", *parts)
    return path if path.exists() else None
