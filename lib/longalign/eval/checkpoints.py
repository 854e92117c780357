"""Models under evaluation: the one loader (dtype / device policy), training-run lookup and model tags.

Every evaluation notebook loads its models here, so a 6B checkpoint is never run in fp32 on a CPU
when a GPU is present (bf16 on CUDA, else fp32 on the CPU). A model is named by ``smollm2``, an HF
path / hub id, a checkpoint folder, or ``run:NAME`` for the final checkpoint of a run that notebook
03 wrote (``outputs/runs/{run}.json``, ``outputs/runs/{run}/checkpoint-N``); results are filed
under its :func:`model_tag`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from longalign import models, paths
from longalign.records import read_record

RUN_PREFIX = "run:"


def eval_placement(dtype: torch.dtype | None = None, device: str | None = None) -> tuple[torch.dtype, str]:
    """(dtype, device) to evaluate in: bf16 on CUDA when there is a GPU, else fp32 on CPU; None = the policy."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32), device


def load_for_eval(name_or_path: str | Path, dtype: torch.dtype | None = None, device: str | None = None):
    """(model, tokenizer) in eval mode for a model name, path, checkpoint folder or ``run:NAME``."""
    source = resolve(name_or_path)
    dtype, device = eval_placement(dtype, device)
    model = models.load_causal_lm(source, dtype=dtype)
    return (model if device == "cpu" else model.to(device)).eval(), models.load_tokenizer(source)


def resolve(name_or_path: str | Path) -> str:
    """What to load: the final checkpoint folder for ``run:NAME``, else the name / path itself."""
    spec = str(name_or_path)
    if spec.startswith(RUN_PREFIX):
        return str(run_checkpoints(spec[len(RUN_PREFIX):])[-1]["path"])
    return spec


def model_tag(name: str | Path) -> str:
    """A folder-safe tag: ``{run}-step{N}`` for ``run:NAME`` (its final step), else the last path component."""
    spec = str(name)
    if spec.startswith(RUN_PREFIX):
        run = spec[len(RUN_PREFIX):]
        return f"{run}-step{run_checkpoints(run)[-1]['step']}"
    tag = Path(spec.rstrip("/")).name or spec
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in tag)


def run_record(run: str) -> dict[str, Any]:
    """The run record ``outputs/runs/{run}.json``; a missing one names the notebook that writes it."""
    path = paths.runs_dir() / f"{run}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebooks/03_training_methods.ipynb first "
                                f"(it writes the runs and their checkpoints)")
    return read_record(path)


def _recorded(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """``[{"step", "path"}]`` of a record's checkpoints whose folder exists (absolute paths, by step)."""
    found = [{"step": int(c["step"]), "path": paths.outputs() / c["path"]} for c in rec.get("checkpoints", [])]
    return sorted((c for c in found if c["path"].is_dir()), key=lambda c: c["step"])


def run_checkpoints(run: str) -> list[dict[str, Any]]:
    """``[{"step", "path"}]`` (absolute paths, by step) of a run's loadable checkpoints (with ``config.json``)."""
    ckpts = [c for c in _recorded(run_record(run)) if (c["path"] / "config.json").is_file()]
    if not ckpts:
        raise FileNotFoundError(f"run {run!r} has no checkpoints on disk: rerun notebooks/03_training_methods.ipynb "
                                f"with save_steps > 0 to get intermediate checkpoints")
    return ckpts


def final_checkpoints(runs_dir: str | Path | None = None, pattern: str | list[str] = "*") -> dict[str, Path]:
    """Run name -> last checkpoint of every fine-tuning run in ``outputs/runs/*.json`` whose name matches ``pattern``.

    Continual-pretraining runs (notebook 02, method ``pretrain``) are base models, not chat models,
    so they are left out of the chat benchmarks. ``pattern`` is a glob on the run name, or a list of
    globs (a run matching any is kept), e.g. ``["naive-seed[01]", "long*-seed[01]"]``.
    """
    folder = Path(runs_dir) if runs_dir is not None else paths.runs_dir()
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    found = {}
    for path in sorted({p for glob in patterns for p in folder.glob(f"{glob}.json")}):
        rec = read_record(path)
        ckpts = _recorded(rec) if rec.get("method") != "pretrain" else []
        if ckpts:
            found[path.stem] = ckpts[-1]["path"]
    return found


def list_runs() -> list[str]:
    """Names of the finished runs under ``outputs/runs`` (one ``{name}.json`` record each), sorted."""
    return sorted(p.stem for p in paths.runs_dir().glob("*.json"))
