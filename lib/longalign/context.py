"""Context extension (paper Sec. 4.1): RoPE base scaling for any HF causal LM, continual-pretraining data, per-position loss.

The paper extends ChatGLM3-6B (8k) and Llama-2-7B/13B (4k) to 64k by multiplying the RoPE base by
200 (10,000 -> 2,000,000) and continuing pretraining on documents under 64k tokens for 10B tokens,
with a plain LM loss over packed long text (``longalign.train`` method ``pretrain``). This module
makes the extended model, its pretraining rows and token budget, and the per-position held-out
loss that shows whether the long positions were learnt; a released extended base (e.g. THUDM's
``LongAlign-7B-64k-base``) can be linked in instead of retraining it.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from longalign.data import corpus

PAPER_ROPE_FACTOR = 200.0  # 10,000 -> 2,000,000
PAPER_MAX_LEN = 65_536
PAPER_TOKENS = 10_000_000_000
CHATGLM_BASE = 10_000.0


def rope_base(config: Any) -> float:
    """The RoPE base (theta) of a config, whatever its layout (first layer type if per-type)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict):
        if "rope_theta" in params:
            return float(params["rope_theta"])
        nested = [v["rope_theta"] for v in params.values() if isinstance(v, dict) and "rope_theta" in v]
        if nested:
            return float(nested[0])
    if getattr(config, "rope_theta", None) is not None:
        return float(config.rope_theta)
    if getattr(config, "rope_ratio", None) is not None:
        return CHATGLM_BASE * float(config.rope_ratio)
    raise ValueError(f"{type(config).__name__}: no RoPE base found (rope_parameters / rope_theta / rope_ratio)")


def scale_rope_base(config: Any, factor: float, max_position: int | None = None) -> Any:
    """A copy of ``config`` with the RoPE base multiplied by ``factor`` and the position limit raised.

    Works on any layout: transformers 5.x ``rope_parameters`` (flat or per layer type), the older
    top-level ``rope_theta`` (+ ``rope_scaling``), and ChatGLM's ``rope_ratio`` (base = 10,000 x
    rope_ratio); raises ``max_position_embeddings`` (and ChatGLM's ``seq_length``).
    """
    if factor <= 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    config = copy.deepcopy(config)
    before = rope_base(config)
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and any("rope_theta" in v for v in [params, *params.values()] if isinstance(v, dict)):
        _scale_rope_parameters(params, factor)
    elif getattr(config, "rope_theta", None) is not None:
        config.rope_theta = float(config.rope_theta) * factor
    else:
        config.rope_ratio = float(config.rope_ratio) * factor
    if max_position is not None:
        _raise_max_position(config, max_position)
    assert abs(rope_base(config) - before * factor) <= 1e-6 * before * factor, "RoPE base was not scaled"
    return config


def _scale_rope_parameters(params: dict, factor: float) -> None:
    """Scale ``rope_theta`` in a flat or per-layer-type ``rope_parameters`` dict, in place."""
    if "rope_theta" in params:
        params["rope_theta"] = float(params["rope_theta"]) * factor
    for value in params.values():
        if isinstance(value, dict) and "rope_theta" in value:
            value["rope_theta"] = float(value["rope_theta"]) * factor


def _raise_max_position(config: Any, max_position: int) -> None:
    """Set every position limit the config has (Llama-style and ChatGLM-style) to ``max_position``."""
    for attr in ("max_position_embeddings", "seq_length"):
        if hasattr(config, attr):
            setattr(config, attr, int(max_position))
    if not hasattr(config, "max_position_embeddings"):
        config.max_position_embeddings = int(max_position)


def extend_model(source: str | Path, dest: str | Path, factor: float = PAPER_ROPE_FACTOR,
                 max_position: int = PAPER_MAX_LEN) -> Path:
    """Save ``source`` (HF folder or hub id) with a scaled RoPE base at ``dest`` (model + tokenizer).

    Only the config changes: the rotary frequencies are a non-persistent buffer, recomputed from the
    config on load.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = scale_rope_base(AutoConfig.from_pretrained(source, trust_remote_code=True), factor, max_position)
    model = AutoModelForCausalLM.from_pretrained(source, config=config, trust_remote_code=True, dtype="auto")
    dest = Path(dest)
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(source, trust_remote_code=True).save_pretrained(dest)
    return dest


def corpus_texts(sources: list[str], max_chars: int, skips: Counter | None = None) -> list[str]:
    """Deduplicated texts of ``sources`` (notebook 01's specs and reader), in order, until ``max_chars`` characters.

    A user's own documents are files or folders of text, JSONL(.gz) with ``text``, or JSON lists;
    duplicates and bad files are counted in ``skips``.
    """
    skips = skips if skips is not None else corpus.Skips()
    counts = {spec: 0 for spec in sources}
    docs = (doc for spec in sources for doc in _counted(spec, counts, skips))
    texts, total = [], 0
    for doc in corpus.iter_dedupe(docs, skips):
        texts.append(doc["text"])
        total += len(doc["text"])
        if total >= max_chars:
            break
    corpus.require_documents(texts, "documents for continual pretraining", counts, skips)
    return texts


def _counted(spec: str, counts: dict[str, int], skips: Counter | None) -> Iterator[dict[str, Any]]:
    for doc in corpus.load_source(spec, skips):
        counts[spec] += 1
        yield doc


def steps_for_tokens(tokens: int, max_len: int, per_device_batch: int, nproc: int) -> int:
    """Optimizer steps that feed ``tokens`` tokens in packs of ``max_len`` (``per_device_batch`` x ``nproc`` per step)."""
    if min(tokens, max_len, per_device_batch, nproc) <= 0:
        raise ValueError(f"tokens, max_len, per_device_batch and nproc must be > 0, got {tokens}, {max_len}, "
                         f"{per_device_batch}, {nproc}")
    return math.ceil(tokens / (max_len * per_device_batch * nproc))


def long_steps_for(steps: int | None, tokens: int | None, max_len: int, per_device_batch: int, nproc: int) -> int:
    """``steps`` when given, else the steps that feed the ``tokens`` budget (notebook 02's long_steps / long_tokens)."""
    if steps is not None:
        return steps
    if tokens is None:
        raise ValueError("long_steps and long_tokens are both None: give the steps, or a token budget to derive them from")
    return steps_for_tokens(tokens, max_len, per_device_batch, nproc)


def pretrain_dataset(texts: Iterable[str], tokenizer: Any, max_len: int, min_len: int = 16, path: str | Path | None = None):
    """LM rows (input_ids, labels = input_ids, length): each document + EOS cut into pieces of <= max_len.

    With ``path`` the rows stream into an Arrow file there and come back memory-mapped, so the
    paper's 10B-token budget never sits in memory as Python lists of token ids.
    """
    import datasets

    pieces = _lm_pieces(texts, tokenizer, max_len, min_len)
    if path is not None:
        return _write_arrow(pieces, Path(path), min_len)
    rows: dict[str, list] = {"input_ids": [], "labels": [], "length": []}
    for piece in pieces:
        rows["input_ids"].append(piece)
        rows["labels"].append(list(piece))
        rows["length"].append(len(piece))
    if not rows["length"]:
        raise ValueError(f"no document yields a piece of >= {min_len} tokens")
    return datasets.Dataset.from_dict(rows)


def _lm_pieces(texts: Iterable[str], tokenizer: Any, max_len: int, min_len: int, batch: int = 64) -> Iterator[list[int]]:
    """Token pieces of <= ``max_len`` (each document + EOS, cut from the left), tokenized ``batch`` documents at a time."""
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    texts = iter(texts)
    while chunk := list(itertools.islice(texts, batch)):
        for ids in tokenizer(chunk, add_special_tokens=False)["input_ids"]:
            ids = ids + eos
            for start in range(0, len(ids), max_len):
                piece = ids[start:start + max_len]
                if len(piece) >= min_len:
                    yield piece


def _write_arrow(pieces: Iterator[list[int]], path: Path, min_len: int):
    """Write LM rows to an Arrow file (via a temporary name, so a killed run leaves no half file) and map it."""
    import datasets
    from datasets.arrow_writer import ArrowWriter

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    rows = 0
    with ArrowWriter(path=str(tmp)) as writer:
        for piece in pieces:
            writer.write({"input_ids": piece, "labels": piece, "length": len(piece)})
            rows += 1
        if rows:  # finalize refuses an empty file
            writer.finalize()
    if not rows:
        tmp.unlink(missing_ok=True)
        raise ValueError(f"no document yields a piece of >= {min_len} tokens")
    tmp.replace(path)
    return datasets.Dataset.from_file(str(path))


def link_released_base(model: str, dest: str | Path) -> Path:
    """Make ``dest`` (``outputs/models/<extended_name>``, what notebook 03 reads) a link to a released extended base.

    A local HF folder is linked as is; a hub id is downloaded once into the Hugging Face cache and its
    snapshot folder linked, so no weights are copied. An existing ``dest`` must already point there.
    """
    source = Path(model).expanduser()
    source = source if source.is_dir() else _download(model)
    if not (source / "config.json").is_file():
        raise FileNotFoundError(f"released_base {model!r}: {source} has no config.json (give an HF model folder or hub id)")
    dest = Path(dest)
    if dest.is_symlink() or dest.exists():
        if dest.resolve() == source.resolve():
            return dest
        raise FileExistsError(f"{dest} already holds another model ({dest.resolve()}); remove it or change extended_name")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.symlink_to(source.resolve(), target_is_directory=True)
    return dest


def _download(model: str) -> Path:
    """The hub snapshot of ``model`` (safetensors only when the repo has them, never both weight formats)."""
    from huggingface_hub import HfApi, snapshot_download

    try:
        files = HfApi().list_repo_files(model)
    except Exception:  # noqa: BLE001 — offline (HF_HUB_OFFLINE): the cache answers, or snapshot_download names the error
        files = []
    skip = ["*.msgpack", "*.h5", "*.ot", "*.onnx"] + (["*.bin", "*.pth"] if any(f.endswith(".safetensors") for f in files) else [])
    return Path(snapshot_download(model, ignore_patterns=skip))


def eval_windows(texts: Iterable[str], tokenizer: Any, length: int, max_windows: int) -> torch.Tensor:
    """Up to ``max_windows`` non-overlapping windows of exactly ``length`` tokens from the documents."""
    windows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        windows += [ids[s:s + length] for s in range(0, len(ids) - length + 1, length)]
        if len(windows) >= max_windows:
            break
    if not windows:
        raise ValueError(f"no held-out document has {length} tokens; lower the evaluation length or add text")
    return torch.tensor(windows[:max_windows], dtype=torch.long)


@torch.no_grad()
def per_position_loss(model: torch.nn.Module, windows: torch.Tensor, batch_size: int = 2) -> np.ndarray:
    """Mean next-token CE at each position 1..L-1 over the windows ``[N, L]`` (one sequence per row)."""
    model.eval()
    total = torch.zeros(windows.shape[1] - 1, dtype=torch.float64)
    for start in range(0, windows.shape[0], batch_size):
        ids = windows[start:start + batch_size]
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        ce = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
        total += ce.sum(0).double()
    return (total / windows.shape[0]).numpy()
