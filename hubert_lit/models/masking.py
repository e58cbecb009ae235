"""HuBERT span masking, vectorised on the tensor's device.

Same distribution as fairseq's ``compute_mask_indices`` (``mask_selection=static``, overlaps allowed,
``require_same_masks=True``), written with batched torch ops instead of a Python loop per utterance:

1. per utterance with ``n`` valid frames, ``num_spans = max(min_masks, int(mask_prob * n / mask_length + u))``
   with one ``u ~ U[0, 1)`` per batch (probabilistic rounding; fairseq and torchaudio also share one draw across
   an unpadded batch, and draw per row only when given a padding mask);
2. span starts are drawn without replacement, uniformly from ``[0, n - mask_length)`` (at least one start);
   each span covers ``mask_length`` frames and spans may overlap; frames at or beyond ``n`` are never masked;
3. every row is randomly subsampled down to the smallest masked count in the batch, so all rows have the same
   number of masked frames. Rows without any valid frame (fewer than 400 samples) take no part in that minimum:
   fairseq would let one such row switch masking off for the whole batch.

The mask rate is therefore well below ``mask_prob``: about 50 % of the frames at ``mask_prob=0.8``,
``mask_length=10``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _select_random(candidates: Tensor, counts: Tensor, generator: torch.Generator | None) -> Tensor:
    """Per row, pick ``counts[b]`` of the True entries of ``candidates`` (B, T) uniformly without replacement."""
    keys = torch.rand(candidates.shape, device=candidates.device, generator=generator)
    keys = keys.masked_fill(~candidates, 2.0)  # non-candidates sort last
    order = keys.argsort(dim=1)
    ranks = torch.empty_like(order).scatter_(
        1, order, torch.arange(order.shape[1], device=order.device).expand_as(order)
    )
    return candidates & (ranks < counts[:, None])


def compute_span_mask(
    frame_lengths: Tensor,
    num_frames: int,
    mask_prob: float = 0.8,
    mask_length: int = 10,
    min_masks: int = 2,
    generator: torch.Generator | None = None,
    same_count: bool = True,
) -> Tensor:
    """Boolean (B, num_frames) span mask (True = masked) for utterances of ``frame_lengths`` valid frames.

    Args:
        frame_lengths: (B,) valid frames per utterance; padded frames are never masked.
        num_frames: padded length T of the batch.
        mask_prob: expected fraction of frames that start a span, times ``mask_length`` (fairseq semantics).
        mask_length: frames per span.
        min_masks: minimum number of spans per utterance.
        generator: optional ``torch.Generator`` on the same device as ``frame_lengths``.
        same_count: subsample every row to the batch's smallest masked count (fairseq ``require_same_masks``).
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    device = frame_lengths.device
    lengths = frame_lengths.to(torch.long).clamp(min=0, max=num_frames)
    batch = lengths.shape[0]
    if batch == 0 or num_frames == 0:
        return torch.zeros(batch, num_frames, dtype=torch.bool, device=device)

    # one rounding draw for the whole batch, as fairseq/torchaudio do for an unpadded batch
    u = torch.rand(1, device=device, generator=generator, dtype=torch.float64)
    num_spans = torch.floor(mask_prob * lengths.double() / mask_length + u).long().clamp(min=min_masks)
    num_starts = (lengths - mask_length).clamp(min=1)
    num_spans = torch.minimum(num_spans, num_starts)
    num_spans = torch.where(lengths > 0, num_spans, torch.zeros_like(num_spans))

    positions = torch.arange(num_frames, device=device)
    start_ok = positions[None, :] < num_starts[:, None]
    starts = _select_random(start_ok, num_spans, generator)

    # frame t is covered if a span starts in (t - mask_length, t]: difference of a running count of starts
    covered = starts.long().cumsum(dim=1)
    shifted = torch.zeros_like(covered)
    if mask_length < num_frames:
        shifted[:, mask_length:] = covered[:, :-mask_length]
    mask = (covered - shifted) > 0
    mask &= positions[None, :] < lengths[:, None]

    if same_count:
        # empty rows have nothing to mask; counting their 0 would leave the whole batch unmasked
        counts = mask.sum(dim=1).masked_fill(lengths == 0, num_frames)
        target = counts.min()
        mask = _select_random(mask, target.expand(batch), generator)
    return mask
