"""Retrieval at length: which data and length schedule get a tiny Llama copying natural text far back?

``bench_induction.py`` measures copying at 64 tokens. Needle retrieval (finding 1) and the extension
finding (5) need it at 256 tokens (notebook 02's pretraining length) and across more than 256 tokens
after the RoPE-base change to 2,048 (its extension). This measures, for the same tiny Llama (hidden
128, 2 layers), each step of a short-to-long schedule, every arm on held-out natural text:

- ``short``: 64 tokens, half repeated random sequences, half natural text with a repeated span
  (``bench_induction``'s ``mixed`` arm, run longer), scored on held-out natural text and repeated
  sequences (the transition);
- from its model, 256 tokens: ``mid_sparse`` keeps that mix; ``mid_dense`` adds natural text repeated
  with a random period (``copytasks.natural_repeat``: one third each);
- ``scratch_dense``: the dense mix at 256 tokens from scratch, as many tokens as ``short`` + ``mid``
  (does the 64-token stage matter?);
- from ``mid_dense``'s model, 2,048 tokens with the dense mix (periods up to 1,024): ``long_rope``
  with the RoPE base ×200 (notebook 02's extension), ``long_same_base`` without the base change.
  Both are scored on ``far`` copies (a span repeated >= 768 tokens after its source: beyond the
  pretraining length) and ``near`` ones (< 128 tokens back, placed beyond 768); each arm's step 0 is
  ``mid_dense``'s model with the base changed (or not) and no training.

``ours`` = ``long_rope``'s far-copy accuracy, ``baseline`` = ``long_same_base``'s.
"""

from __future__ import annotations

import copy
import tempfile
import time

import numpy as np
import torch
from common import held_examples as _held
from common import result

from longalign import context, models
from longalign.data import copytasks

HIDDEN, LAYERS, LR, LONG_LR, ALPHABET, FACTOR = 128, 2, 1e-3, 3e-4, 2000, 200.0
SHORT, MID, LONG = 64, 256, 2048
TOKENS_PER_STEP = 2048  # batch 32 x 64, 8 x 256, 1 x 2,048: the same tokens per step at every length
FAR, NEAR = 3 * MID, MID // 2
QUICK, FULL, EVERY = (200, 50, 20), (1500, 300, 150), 50  # steps at 64, 256 and 2,048 tokens; evaluations every 50


def run(quick: bool) -> dict:
    """The short-to-long schedule, its ablations and the extension; copy accuracy per arm."""
    (short_steps, mid_steps, long_steps), every = QUICK if quick else FULL, EVERY
    tok = models.cpu_tokenizer()
    stream = np.array([i for text in models.offline_texts(1_500_000) for i in tok(text)["input_ids"]])
    split = int(len(stream) * 0.9)
    train, held_out = stream[:split], stream[split:]
    alphabet = copytasks.frequent_tokens(train, ALPHABET)
    held = {n: _held(lambda r, n=n: copytasks.natural_copy(r, held_out, n)) for n in (SHORT, MID)}
    far = _held(lambda r: copytasks.distant_copy(r, held_out, LONG, (FAR, LONG)), n=16)
    near = _held(lambda r: copytasks.distant_copy(r, held_out, LONG, (8, NEAR), after=FAR), n=16)
    fresh = lambda length: models.tiny_llama(models.tiny_llama_config(len(tok), hidden=HIDDEN, layers=LAYERS,  # noqa: E731
                                                                      max_position=length), seed=0)
    arms, model = {}, fresh(SHORT)
    # at 64 tokens also held-out repeated random sequences: their copy accuracy marks the abrupt transition
    repeats = _held(lambda r: copytasks.repeated_sequence(r, alphabet, SHORT))
    arms["short"] = _stage(model, _mix(alphabet, train, SHORT, dense=False), SHORT, short_steps, LR, every,
                           {"natural": held[SHORT], "repeated": repeats})
    sparse = _at_length(copy.deepcopy(model), MID)  # both 256-token arms start from the same 64-token model
    arms["mid_sparse"] = _stage(sparse, _mix(alphabet, train, MID, dense=False), MID, mid_steps, LR, every, held[MID])
    dense = _at_length(model, MID)
    arms["mid_dense"] = _stage(dense, _mix(alphabet, train, MID, dense=True), MID, mid_steps, LR, every, held[MID])
    arms["scratch_dense"] = _stage(fresh(MID), _mix(alphabet, train, MID, dense=True), MID, short_steps + mid_steps,
                                   LR, every, held[MID])
    for name, factor in (("long_rope", FACTOR), ("long_same_base", 1.0)):  # both extend the dense 256-token model
        arms[name] = _stage(_extended(dense, tok, factor), _mix(alphabet, train, LONG, dense=True), LONG, long_steps,
                            LONG_LR, max(1, every // 2), {"far": far, "near": near}, warmup=5)
    ours, base = (arms[n]["evals"][-1]["far"] for n in ("long_rope", "long_same_base"))
    return result("retrieval_length", ours, base, "far copies (>= 768 tokens back) after RoPE x200 above the same base",
                  "copy accuracy", ours > base, model=f"Llama hidden {HIDDEN}, {LAYERS} layers, vocab {len(tok)}",
                  lengths=[SHORT, MID, LONG], tokens_per_step=TOKENS_PER_STEP, lr=LR, long_lr=LONG_LR, rope_factor=FACTOR,
                  far_min_distance=FAR, near_max_distance=NEAR, torch_threads=torch.get_num_threads(), arms=arms)


def _mix(alphabet: np.ndarray, train: np.ndarray, length: int, dense: bool):
    """The example maker of a stage: random repeats + natural spans (sparse), plus natural repeats (dense)."""
    kinds = [lambda r: copytasks.repeated_sequence(r, alphabet, length), lambda r: copytasks.natural_copy(r, train, length)]
    if dense:  # periods up to half the length: at 2,048 tokens copies reach back up to 1,024
        kinds.append(lambda r: copytasks.natural_repeat(r, train, length, period=(16, max(128, length // 2))))
    return lambda r: kinds[int(r.integers(len(kinds)))](r)


def _stage(model, make, length: int, steps: int, lr: float, every: int, held, warmup: int = 20) -> dict:
    """Train ``model`` on ``make`` at ``length`` (the same tokens per step at every length); its evaluation rows."""
    t0 = time.perf_counter()
    evaluate = (lambda m: _scores(m, held)) if isinstance(held, dict) else (lambda m: copytasks.copy_accuracy(m, held))
    evals = copytasks.train_copies(model, make, steps=steps, batch_size=TOKENS_PER_STEP // length, lr=lr, every=every,
                                   evaluate=evaluate, warmup=warmup)
    return {"length": length, "steps": steps, "evals": evals, "seconds": round(time.perf_counter() - t0, 1)}


def _scores(model, held: dict) -> dict:
    """Copy accuracy on each named held-out set (``name``) and on its other tokens (``name_other``)."""
    out = {}
    for name, examples in held.items():
        acc = copytasks.copy_accuracy(model, examples)
        out[name], out[f"{name}_other"] = acc["copy"], acc["other"]
    return out


def _at_length(model, length: int):
    """``model`` allowed ``length`` positions (RoPE is computed, so only the config limit changes)."""
    model.config.max_position_embeddings = length
    return model


def _extended(model, tokenizer, factor: float):
    """``model`` saved and reloaded through ``context.extend_model`` (notebook 02's path) with the base x ``factor``."""
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(f"{tmp}/src")
        tokenizer.save_pretrained(f"{tmp}/src")
        context.extend_model(f"{tmp}/src", f"{tmp}/ext", factor=factor, max_position=LONG)
        return AutoModelForCausalLM.from_pretrained(f"{tmp}/ext")
