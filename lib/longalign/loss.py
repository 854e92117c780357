"""The training loss: LongAlign's loss weighting (paper Eq. 2/3/4) as the trainer computes it.

Eq. 2 averages each sequence's token-mean loss over the step's M sequences; Eq. 3 (plain packing)
averages each pack's token mean over the K packs, which favours sequences with many target tokens;
Eq. 4 weights packed tokens by K/(N_i M) so that packing gives Eq. 2 back. Each micro-batch here
yields sums (Σ CE, Σ CE/N_i, Σ CE/N_pack) and :func:`objective` divides them by totals counted over
the whole optimizer step, so the update is exact for any packing, accumulation and world size.
N_i arrives as the collators' integer ``target_counts`` because HF Trainer casts float inputs to
bf16 under DeepSpeed. :func:`linear_cross_entropy` takes the loss from hidden states chunk by chunk,
never making the ``[T, vocab]`` logits.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from longalign.collate import IGNORE_INDEX

CE_CHUNK_SIZE = 4096  # target rows per logits chunk: 4096 x 32k vocab x fp32 = 0.5 GiB live, not T x V
VARLEN_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def target_weights(batch: dict[str, Any], valid: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Per-target weights of the three loss sums: ``ce`` 1, ``seq`` 1/N_i and (packed) ``pack`` 1/N_pack.

    Label t+1 is predicted from position t (``IGNORE_INDEX`` = not a target); the collators already
    set the first label of every sequence to -100, so nothing is predicted across a pack boundary.
    ``pack`` needs the per-token ``pack_ids`` that ``train.collate_micro_batch`` adds to packed rows.
    """
    # integer N_i, not the collator's float 1/N_i: under DeepSpeed, Trainer casts float inputs to bf16
    n_i = batch["target_counts"][:, 1:][valid].double()
    weights = {"ce": torch.ones_like(n_i, dtype=dtype), "seq": (1.0 / n_i).to(dtype)}
    if "pack_ids" in batch:  # Eq. 3: every pack's token mean
        pack = batch["pack_ids"][:, 1:][valid]
        weights["pack"] = 1.0 / torch.bincount(pack).to(dtype)[pack]
    return {k: w.to(batch["labels"].device) for k, w in weights.items()}


def loss_sums(logits: torch.Tensor, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Σ CE, Σ CE/N_i and Σ CE/N_pack over the micro-batch's targets, from full logits (graph kept).

    Keys ``ce``, ``seq`` and (with ``pack_ids``) ``pack``, in at least float32.
    """
    labels = batch["labels"][:, 1:]
    valid = labels != IGNORE_INDEX
    logit = logits[:, :-1][valid]
    if logit.dtype in (torch.bfloat16, torch.float16):
        logit = logit.float()
    ce = F.cross_entropy(logit, labels[valid], reduction="none")
    return {k: (ce * w).sum() for k, w in target_weights(batch, valid, ce.dtype).items()}


def loss_sums_from_hidden(hidden: torch.Tensor, lm_head_weight: torch.Tensor, batch: dict[str, Any], method: str,
                          chunk_size: int) -> dict[str, torch.Tensor]:
    """The same sums from final hidden states, chunked (no [T, V] logits); only the objective's sum keeps a graph."""
    labels = batch["labels"][:, 1:]
    valid = labels != IGNORE_INDEX
    weights = target_weights(batch, valid, torch.promote_types(hidden.dtype, torch.float32))
    key = objective_term(method)[0]
    total, ce = linear_cross_entropy(hidden[:, :-1][valid], lm_head_weight, labels[valid], weights[key], chunk_size)
    return {k: total if k == key else (ce * w).sum() for k, w in weights.items()}


def objective_term(method: str) -> tuple[str, str]:
    """(loss sum, step total) of the method: Σ CE / N targets, Σ CE/N_pack / K packs, or Σ CE/N_i / M sequences."""
    return {"pretrain": ("ce", "targets"), "packing": ("pack", "packs")}.get(method, ("seq", "sequences"))


def objective(method: str, sums: dict[str, torch.Tensor], totals: dict[str, float], world_size: int) -> torch.Tensor:
    """This rank's share of the step objective, scaled by ``world_size`` to undo the gradient mean.

    ``totals`` are counted over every micro-step on every rank (``targets`` N, ``packs`` K,
    ``sequences`` M; ``batching.PackedBatchSampler.step_totals`` gives them). Each micro-step adds
    ``world_size · sums[key] / total`` with no division by the number of micro-steps, so the step
    sums to exactly Eq. 2 (``1/M Σ_i L_i/N_i``, = Eq. 4) for any grouping of sequences into packs,
    rows, micro-steps and ranks; Eq. 3 for ``packing`` (``Σ CE/N_pack / K``); the token mean for
    ``pretrain``.
    """
    key, total = objective_term(method)
    return sums[key] * (world_size / max(totals[total], 1.0))


def forward_loss_sums(model: torch.nn.Module, batch: dict[str, Any], method: str, ce_chunk_size: int = 0,
                      varlen: bool = False) -> tuple[dict[str, torch.Tensor], Any]:
    """One forward of a micro-batch and its loss sums: from full logits, or (``ce_chunk_size`` > 0) chunked.

    The chunked path runs the whole (possibly DDP / DeepSpeed-wrapped) model, so wrappers and
    ZeRO-3 hooks see a normal forward; a pre-hook on the output head keeps the final hidden
    states and hands the head one position only, then the head weight (gathered under ZeRO-3)
    turns only the target rows into logits, one chunk at a time (:func:`linear_cross_entropy`).
    """
    fwd = {k: batch[k] for k in ("input_ids", "position_ids", "attention_mask") if k in batch}
    if varlen:
        fwd.update({k: batch[k] for k in VARLEN_KEYS if k in batch})
    if ce_chunk_size <= 0:
        out = model(**fwd, use_cache=False)
        return loss_sums(out.logits, batch), out
    head = check_chunked_ce(_unwrap(model))
    captured: dict[str, torch.Tensor] = {}
    # prepend: see the head's input before ZeRO-3's own pre-hook wraps it for the head's backward
    hook = head.register_forward_pre_hook(_keep_hidden(captured, tuple(batch["input_ids"].shape)), prepend=True)
    try:
        out = model(**fwd, use_cache=False)
    finally:
        hook.remove()
    with _gathered(head.weight) as weight:
        return loss_sums_from_hidden(captured["h"], weight, batch, method, ce_chunk_size), out


def _keep_hidden(captured: dict[str, torch.Tensor], batch_shape: tuple[int, int]):
    """Head pre-hook: store the [B, T, H] hidden states, pass the head only the last position."""
    def hook(_module, args):
        h = args[0]
        if tuple(h.shape[:2]) == batch_shape:
            seq_dim = 1
        elif tuple(h.shape[:2]) == batch_shape[::-1]:  # sequence-first models (ChatGLM)
            seq_dim = 0
        else:
            raise ValueError(f"output head input {tuple(h.shape)} does not match the batch {batch_shape}: "
                             "use ce_chunk_size 0 for this model")
        captured["h"] = h if seq_dim == 1 else h.transpose(0, 1)
        return (h.narrow(seq_dim, h.size(seq_dim) - 1, 1), *args[1:])
    return hook


def output_head(model: torch.nn.Module) -> torch.nn.Module | None:
    """``get_output_embeddings()``, else the one Linear with vocabulary-sized outputs (remote code, e.g. ChatGLM3)."""
    head = model.get_output_embeddings()
    if isinstance(head, torch.nn.Linear):
        return head
    vocab = {getattr(model.config, k, None) for k in ("vocab_size", "padded_vocab_size")} - {None}
    found = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features in vocab]
    return found[0] if len(found) == 1 else head


def check_chunked_ce(model: torch.nn.Module) -> torch.nn.Linear:
    """The model's output head; ValueError if logits are not plain ``head(hidden)`` (chunked CE would be wrong)."""
    head, conf = output_head(model), model.config
    problems = [msg for bad, msg in [
        (not isinstance(head, torch.nn.Linear) or head.bias is not None, "the output head is not a bias-free Linear"),
        (getattr(conf, "final_logit_softcapping", None) is not None, "it soft-caps its logits"),
        (getattr(conf, "logit_scale", None) not in (None, 1.0), "it scales its logits"),
    ] if bad]
    if problems:
        raise ValueError(f"ce_chunk_size > 0 needs logits = lm_head(hidden), but for {type(model).__name__} "
                         f"{'; '.join(problems)}: use ce_chunk_size 0")
    return head


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The HF model inside DDP / DeepSpeed engine wrappers."""
    while isinstance(getattr(model, "module", None), torch.nn.Module):
        model = model.module
    return model


@contextlib.contextmanager
def _gathered(param: torch.nn.Parameter):
    """The full parameter: ZeRO-3 partitions it outside its module's forward, so gather it read-only there."""
    if not hasattr(param, "ds_id"):
        yield param
        return
    import deepspeed  # optional dependency: only ZeRO-3 parameters (with ds_id) reach this line
    with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
        yield param


class _ChunkedLinearCE(torch.autograd.Function):
    """(Σ_j w_j · CE_j, CE) of logits h_j @ Wᵀ, gradients computed chunk-wise in forward (no logits kept)."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, weights, chunk_size, need_grad):
        acc = torch.promote_types(hidden.dtype, torch.float32)
        w_acc = weight.to(acc)
        grad_h = torch.zeros_like(hidden, dtype=acc) if need_grad else None
        grad_w = torch.zeros_like(w_acc) if need_grad else None
        ce = torch.empty(hidden.size(0), dtype=acc, device=hidden.device)
        for start in range(0, hidden.size(0), chunk_size):
            rows = slice(start, start + chunk_size)
            h, y, wt = hidden[rows].to(acc), targets[rows], weights[rows].to(acc)
            logits = h @ w_acc.T
            lse = torch.logsumexp(logits, dim=-1)
            ce[rows] = lse - logits.gather(1, y[:, None]).squeeze(1)
            if need_grad:  # d/dlogits of w·CE = w·(softmax − onehot)
                dlogits = torch.exp(logits - lse[:, None])
                dlogits[torch.arange(y.numel(), device=y.device), y] -= 1.0
                dlogits *= wt[:, None]
                grad_h[rows] = dlogits @ w_acc
                grad_w += dlogits.T @ h
            del logits
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(ce)
        return (weights.to(acc) * ce).sum(), ce

    @staticmethod
    def backward(ctx, grad_out, _grad_ce):
        grad_h, grad_w = ctx.saved_tensors
        gh = (grad_h * grad_out).to(ctx.dtypes[0]) if ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_out).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
                         chunk_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ_j w_j·CE(h_j Wᵀ, y_j), detached per-row CE) over rows of ``hidden`` [n, H], chunk by chunk.

    Same value and gradients as ``F.cross_entropy(hidden @ weight.T, targets, reduction="none")``
    weighted and summed, in >= float32, but only one chunk's [chunk, V] logits ever exist: the
    gradients w.r.t. ``hidden`` and ``weight`` are computed in the forward pass and kept (n·H +
    V·H numbers), so backward needs neither the logits nor ``weight``'s data (which is why it
    works on a ZeRO-3 parameter gathered only for the forward).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    with torch.autocast(hidden.device.type, enabled=False):  # the math runs in >= float32, as documented
        return _ChunkedLinearCE.apply(hidden, weight, targets, weights, chunk_size, need_grad)
