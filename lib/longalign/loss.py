"""Losses for packed and padded training: LongAlign's loss weighting (paper Eq. 4) and metrics.

Labels are HF-aligned (``logits[:, t]`` predicts ``labels[:, t + 1]``, -100 = not a target) and
``loss_weights`` come from :mod:`longalign.collate` (1/N_i on the targets of sequence i).

API
---
- ``packed_loss(logits, labels, loss_weights, num_packs, num_sequences) -> Tensor`` —
  ``num_packs / num_sequences * Σ_t w_t · CE_t`` (shifted CE, computed in at least float32).
- ``packed_loss_from_hidden(hidden, lm_head_weight, labels, loss_weights, num_packs, num_sequences,
  chunk_size=4096) -> Tensor`` — the same value and gradients without materialising the [T, V]
  logits: only target positions are projected, chunk by chunk, and a custom autograd Function
  computes each chunk's gradients w.r.t. hidden and weight in the forward pass (so no chunk's
  logits are kept). Use with ``model.model(...)`` hidden states and ``model.lm_head.weight``
  (under DeepSpeed ZeRO-3 the weight is partitioned outside the module's forward: gather it with
  ``deepspeed.zero.GatheredParameters(..., modifier_rank=None)``, as ``train.forward_loss_sums`` does).
- ``linear_cross_entropy(hidden, weight, targets, weights, chunk_size) -> (Σ w·CE, CE)`` — the
  chunked kernel on already-selected rows; also returns each row's CE (detached) for logging.
- ``loss_sums(logits, labels, loss_weights) -> dict`` — detached sums for logging:
  ``ce_sum`` (Σ CE over targets), ``weighted_sum`` (Σ w·CE = Σ_i L_i/N_i), ``num_target_tokens``.
- ``token_mean_loss(logits, labels)`` and ``sequence_mean_loss(logits, labels, loss_weights,
  num_sequences)`` — the two metrics (mean CE per target token; mean over sequences of each
  sequence's mean CE).

How Eq. 4 maps onto micro-batches
---------------------------------
Paper: M sequences in K packs; each pack's loss is ``K/M · Σ_{i∈pack} L_i/N_i`` and the batch loss is
the MEAN of the K pack losses, which equals Eq. 2 (``1/M Σ_i L_i/N_i``). ``packed_loss`` of a row
holding several packs is the SUM of their pack losses. So for the exact Eq. 2 over an optimizer
step, pass ``num_packs`` = the number of micro-batch losses the trainer averages in that step
(GA steps × ranks; equal to K when each micro-batch is one pack, as in the paper) and
``num_sequences`` = M, the sequences with a target in the whole step (summed over GA and ranks).
``batching.PackedBatchSampler.step_totals(epoch)`` gives both numbers per step (tested in
``tests/test_loss.py``). With a micro-batch's own collator values and ``num_packs=1``,
``packed_loss`` is that micro-batch's per-sequence mean (the local approximation). Eq. 3 (no
weighting) is the token mean of each pack, i.e. ``token_mean_loss`` per pack, averaged over packs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def _shift(logits: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor | None = None):
    """Flatten (logits[:, :-1], labels[:, 1:], weights[:, 1:]); logits upcast to >= float32."""
    acc = torch.promote_types(logits.dtype, torch.float32)
    flat_logits = logits[:, :-1, :].reshape(-1, logits.size(-1)).to(acc)
    flat_labels = labels[:, 1:].reshape(-1).to(flat_logits.device)
    if loss_weights is None:
        return flat_logits, flat_labels, None
    return flat_logits, flat_labels, loss_weights[:, 1:].reshape(-1).to(flat_logits.device, acc)


def _token_ce(flat_logits: torch.Tensor, flat_labels: torch.Tensor) -> torch.Tensor:
    """Per-position cross-entropy, 0 where the label is -100."""
    return F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX, reduction="none")


def packed_loss(logits: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor,
                num_packs: int | float | torch.Tensor, num_sequences: int | float | torch.Tensor) -> torch.Tensor:
    """LongAlign's weighted loss (Eq. 4): num_packs / num_sequences · Σ_t w_t · CE_t."""
    flat_logits, flat_labels, w = _shift(logits, labels, loss_weights)
    return (w * _token_ce(flat_logits, flat_labels)).sum() * num_packs / num_sequences


@torch.no_grad()
def loss_sums(logits: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor) -> dict[str, float]:
    """Detached Σ CE, Σ w·CE and target count of a micro-batch (for token/sequence-mean logging)."""
    flat_logits, flat_labels, w = _shift(logits, labels, loss_weights)
    ce = _token_ce(flat_logits, flat_labels)
    return {"ce_sum": float(ce.sum()), "weighted_sum": float((w * ce).sum()),
            "num_target_tokens": int((flat_labels != IGNORE_INDEX).sum())}


def token_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over all target tokens (what an unweighted HF loss computes)."""
    flat_logits, flat_labels, _ = _shift(logits, labels)
    return F.cross_entropy(flat_logits, flat_labels, ignore_index=IGNORE_INDEX)


def sequence_mean_loss(logits: torch.Tensor, labels: torch.Tensor, loss_weights: torch.Tensor,
                       num_sequences: int | float | torch.Tensor) -> torch.Tensor:
    """Mean over sequences of each sequence's mean target CE (Eq. 2 within this batch)."""
    return packed_loss(logits, labels, loss_weights, 1, num_sequences)


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


def packed_loss_from_hidden(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor,
                            loss_weights: torch.Tensor, num_packs: int | float | torch.Tensor,
                            num_sequences: int | float | torch.Tensor, chunk_size: int = 4096) -> torch.Tensor:
    """packed_loss computed from final hidden states + lm_head weight, chunked (same value and grads)."""
    h = hidden[:, :-1, :].reshape(-1, hidden.size(-1))
    y = labels[:, 1:].reshape(-1).to(h.device)
    w = loss_weights[:, 1:].reshape(-1).to(h.device)
    keep = (y != IGNORE_INDEX) & (w != 0)  # other positions add nothing to loss or gradients
    total, _ = linear_cross_entropy(h[keep], lm_head_weight, y[keep], w[keep], chunk_size)
    return total * num_packs / num_sequences
