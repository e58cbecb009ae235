"""Batch planning, cropping and collation for HuBERT pretraining batches.

Everything here is pure (no I/O, no torch.distributed): the plan of an epoch is computed from the shard index
alone, so every rank and every DataLoader worker derives the same plan without communicating.

Planning (:func:`plan_epoch`):

1. Utterances shorter than ``min_sample_size`` are dropped (and listed, so they can be counted).
2. Each shard's utterances are cut into consecutive *windows* of at most ``sort_window`` utterances (fixed
   boundaries, the same every epoch). Within a window the utterances are sorted by length (longest first; ties
   broken randomly per epoch) and packed greedily into batches, so each batch holds utterances of similar
   length and crop-to-shortest loses little audio. Batch cost follows fairseq's ``max_tokens``: the longest
   cropped length in the batch times the number of utterances, which bounds the memory of padded batches too.
3. Training shuffles the shard order by ``(seed, epoch)`` and the batch order inside each window; validation
   keeps index order. The epoch's batch list is the concatenation, shard by shard and window by window.

Because windows never change and packing depends only on the multiset of lengths in a window, the number of
batches of an epoch does not depend on the epoch; each rank's share (:func:`split_for_rank`) is therefore the
same every epoch, which is what ``len(dataloader)`` must report to Lightning.

Ranks take the epoch's batches interleaved (global batch g on rank ``g mod world_size``, :func:`rank_share`) and
workers take their rank's batches interleaved too (:func:`split_for_worker`), so the epoch is one sequence of
global batches consumed ``world_size`` at a time: a position in it means the same thing for any number of ranks
and workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from hubert_lit.constants import FRAME_RATE, LABEL_PAD, SAMPLE_RATE
from hubert_lit.data.label_files import expected_label_frames, model_frames


@dataclass(frozen=True)
class Utterance:
    """An utterance as the planner sees it: ``position`` is its ordinal in its shard's tar."""

    id: str
    shard: str
    num_samples: int
    position: int


@dataclass(frozen=True)
class PlannedBatch:
    """One batch of an epoch plan.

    ``index`` is the batch's position in the epoch's global batch list (it seeds the random crops, so crops do
    not depend on the rank or worker that produces the batch); ``window`` identifies the window the rows come
    from (rows of one window are read together).
    """

    index: int
    window: int
    rows: tuple[Utterance, ...]


@dataclass(frozen=True)
class EpochPlan:
    """All batches of one epoch, before the split by rank, plus what planning left out."""

    epoch: int
    batches: tuple[PlannedBatch, ...]
    too_short: tuple[Utterance, ...]

    @property
    def num_utterances(self) -> int:
        return sum(len(b.rows) for b in self.batches)


@dataclass(frozen=True)
class BatchBudget:
    """Batch size rule: ``max_samples`` (total cropped audio, fairseq's max_tokens) or a fixed
    ``batch_size``."""

    max_samples: int | None = None
    batch_size: int | None = None

    def __post_init__(self) -> None:
        if (self.max_samples is None) == (self.batch_size is None):
            raise ValueError("set exactly one of max_batch_seconds and batch_size")
        if self.max_samples is not None and self.max_samples <= 0:
            raise ValueError(f"max_batch_seconds must be positive, got {self.max_samples / SAMPLE_RATE} s")
        if self.batch_size is not None and self.batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")


def cropped_length(num_samples: int, max_sample_size: int | None) -> int:
    """Length of an utterance after cropping long utterances to ``max_sample_size`` (None: no cropping)."""
    return num_samples if max_sample_size is None else min(num_samples, max_sample_size)


def pack_sorted(lengths: Sequence[int], budget: BatchBudget) -> list[list[int]]:
    """Group positions of ``lengths`` (sorted longest first) into consecutive batches that respect ``budget``.

    With ``max_samples`` a batch grows while ``longest length x count <= max_samples`` (a single utterance
    always gets a batch, alone if it exceeds the budget by itself).
    """
    batches: list[list[int]] = []
    if budget.batch_size is not None:
        return [
            list(range(i, min(i + budget.batch_size, len(lengths))))
            for i in range(0, len(lengths), budget.batch_size)
        ]
    current: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        if current and max(longest, n) * (len(current) + 1) > budget.max_samples:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


def _windows(utterances: Sequence[Utterance], sort_window: int) -> list[list[Utterance]]:
    """Cut a shard's utterances into consecutive windows of near-equal size (at most ``sort_window``)."""
    if not utterances:
        return []
    count = -(-len(utterances) // sort_window)
    bounds = np.linspace(0, len(utterances), count + 1).round().astype(int)
    return [list(utterances[a:b]) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def plan_epoch(
    shards: Sequence[tuple[str, Sequence[Utterance]]],
    *,
    epoch: int,
    seed: int,
    shuffle: bool,
    budget: BatchBudget,
    max_sample_size: int | None,
    min_sample_size: int,
    sort_window: int,
) -> EpochPlan:
    """Plan every batch of one epoch from ``(shard name, utterances in tar order)`` pairs (module docs)."""
    if sort_window < 1:
        raise ValueError(f"sort_window must be >= 1, got {sort_window}")
    if (
        max_sample_size is not None
        and budget.max_samples is not None
        and budget.max_samples < max_sample_size
    ):
        raise ValueError(
            f"max_batch_seconds={budget.max_samples / SAMPLE_RATE} s cannot hold one utterance of "
            f"max_sample_size={max_sample_size} samples ({max_sample_size / SAMPLE_RATE} s)"
        )
    too_short: list[Utterance] = []
    windows: list[list[Utterance]] = []
    order = range(len(shards))
    if shuffle:
        order = np.random.default_rng([seed, epoch, 0]).permutation(len(shards))
    for s in order:
        _, utterances = shards[s]
        kept = []
        for u in utterances:
            (kept if u.num_samples >= min_sample_size else too_short).append(u)
        windows.extend(_windows(kept, sort_window))

    batches: list[PlannedBatch] = []
    for w, window in enumerate(windows):
        rng = np.random.default_rng([seed, epoch, 1, w])
        if shuffle:
            window = [window[i] for i in rng.permutation(len(window))]
        # Stable sort: equal lengths keep the (shuffled) order, so ties are broken randomly per epoch.
        window = sorted(window, key=lambda u: -cropped_length(u.num_samples, max_sample_size))
        groups = pack_sorted([cropped_length(u.num_samples, max_sample_size) for u in window], budget)
        if shuffle:
            groups = [groups[i] for i in rng.permutation(len(groups))]
        for group in groups:
            batches.append(PlannedBatch(len(batches), w, tuple(window[i] for i in group)))
    return EpochPlan(epoch, tuple(batches), tuple(too_short))


def equalize_for_ranks(batches: Sequence[PlannedBatch], world_size: int) -> list[PlannedBatch]:
    """Split the batches with the most rows in two until their count divides by ``world_size`` (validation:
    every utterance is seen once and the ranks stay in step), numbered afresh.

    Only when every batch holds a single utterance can the count still not divide (ranks then differ by one).
    """
    batches = list(batches)
    total = sum(len(b.rows) for b in batches)
    if total < world_size:
        raise ValueError(f"cannot give each of {world_size} ranks a batch: only {total} utterances")
    while len(batches) % world_size:
        i = max(range(len(batches)), key=lambda j: (len(batches[j].rows), -j))
        b = batches[i]
        if len(b.rows) < 2:
            break  # only single-utterance batches left: counts will differ by one
        half = len(b.rows) // 2
        batches[i : i + 1] = [
            PlannedBatch(b.index, b.window, b.rows[:half]),
            PlannedBatch(b.index, b.window, b.rows[half:]),
        ]
    # Re-number so indices stay unique after splitting (evaluation crops are deterministic anyway).
    return [PlannedBatch(i, b.window, b.rows) for i, b in enumerate(batches)]


def rank_share(
    batches: Sequence[PlannedBatch], rank: int, world_size: int, start: int = 0
) -> list[PlannedBatch]:
    """Rank ``rank``'s batches of the global list ``batches`` from global position ``start`` on: batch
    ``start + k * world_size + rank`` for every step k that all ``world_size`` ranks can fill, so every rank gets
    ``(len(batches) - start) // world_size`` batches and the last ``(len(batches) - start) % world_size`` are
    left out (they cannot make a step of ``world_size`` batches).

    With ``start = 0`` global batch g goes to rank ``g mod world_size``; step k of all ranks together consumes
    global batches ``start + k * world_size ... start + (k + 1) * world_size - 1`` whatever ``world_size`` is,
    which is what lets a run resume with another number of ranks.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if not 0 <= start <= len(batches):
        raise ValueError(f"start must be in [0, {len(batches)}], got {start}")
    steps = (len(batches) - start) // world_size
    return [batches[start + k * world_size + rank] for k in range(steps)]


def split_for_rank(
    batches: Sequence[PlannedBatch], rank: int, world_size: int, *, drop_remainder: bool
) -> tuple[list[PlannedBatch], list[PlannedBatch]]:
    """Rank ``rank``'s share of an epoch's ``batches`` (global batch g on rank g mod world_size), and the
    batches left out.

    ``drop_remainder=True`` (training): each rank gets ``len // world_size`` batches and the last
    ``len % world_size`` batches are dropped (returned second, so they can be reported).
    ``drop_remainder=False`` (validation): nothing is dropped; :func:`equalize_for_ranks` splits batches until
    the count divides evenly.
    """
    if drop_remainder:
        steps = len(batches) // world_size
        return rank_share(batches, rank, world_size), list(batches[steps * world_size :])
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    return equalize_for_ranks(batches, world_size)[rank::world_size], []


def split_for_worker(batches: Sequence[PlannedBatch], worker: int, num_workers: int) -> list[PlannedBatch]:
    """DataLoader worker ``worker``'s share of a rank's batches: every ``num_workers``-th from the ``worker``-th.

    The DataLoader takes one batch from each worker in turn, so the loader delivers the rank's batches in their
    own order whatever ``num_workers`` is; a resumed run may therefore use another worker count.
    """
    return list(batches[worker :: max(num_workers, 1)])


# ---------------------------------------------------------------------------------------------- crop &
# collate


@dataclass(frozen=True)
class Crop:
    """The part ``[offset, offset + length)`` of an utterance that goes into a batch."""

    offset: int
    length: int


def plan_crops(
    lengths: Sequence[int], *, pad: bool, max_sample_size: int | None, rng: np.random.Generator | None
) -> list[Crop]:
    """Crops for one batch of utterances with the given lengths.

    ``pad=False`` (fairseq's crop-to-shortest): every utterance is cropped to
    ``min(shortest, max_sample_size)``. ``pad=True``: each one is cropped to ``min(length, max_sample_size)``.
    ``max_sample_size=None`` never crops long utterances.
    Offsets are uniform random from ``rng``, or 0 when ``rng`` is None (deterministic evaluation crops).
    """
    target = cropped_length(min(lengths), max_sample_size)
    crops = []
    for n in lengths:
        size = cropped_length(n, max_sample_size) if pad else target
        offset = int(rng.integers(0, n - size + 1)) if rng is not None and n > size else 0
        crops.append(Crop(offset, size))
    return crops


def crop_labels(labels: np.ndarray, label_rate: int, crop: Crop) -> np.ndarray:
    """Labels of an audio crop at the model's 50 Hz frame rate: exactly ``floor((L - 400) / 320) + 1`` frames.

    The label offset is ``floor(offset * label_rate / 16000)``; 100 Hz labels keep every second label
    (fairseq's ``feat2tar_ratio``). A sequence one frame short (tolerated by the length check) is completed by
    repeating its last label.
    """
    step = label_rate // FRAME_RATE
    start = crop.offset * label_rate // SAMPLE_RATE
    frames = model_frames(crop.length)
    out = labels[start : start + step * frames : step]
    if len(out) < frames:
        if len(labels) == 0:
            raise ValueError("empty label sequence")
        out = np.concatenate([out, np.full(frames - len(out), labels[-1], dtype=labels.dtype)])
    return out


def check_label_length(
    labels: np.ndarray, num_samples: int, label_rate: int, utt_id: str, source: str
) -> None:
    """Raise if ``labels`` differ from the expected frame count of ``num_samples`` by more than one frame."""
    expected = expected_label_frames(num_samples, label_rate)
    if abs(len(labels) - expected) > 1:
        raise ValueError(
            f"{source}: utterance {utt_id!r} has {len(labels)} labels but {num_samples} samples need "
            f"{expected} at {label_rate} Hz (is meta.json's label_rate right, and were the labels made from "
            "these shards?)"
        )


def collate(
    ids: Sequence[str],
    waveforms: Sequence[np.ndarray],
    labels: Sequence[np.ndarray] | None,
    skipped: int = 0,
) -> dict[str, torch.Tensor | list[str] | int]:
    """Pad cropped waveforms (and their 50 Hz labels) into the batch dict of the brief's contract 4.

    Returns ``waveforms`` (B, L) float32 zero-padded, ``lengths`` (B,) int64, ``ids``, ``skipped`` (utterances
    planned for the batch but left out because they could not be read) and, when ``labels`` is given, ``labels``
    (B, T) int64 padded with -100 where T is the frame count of L samples. With no waveforms (every planned
    utterance was left out) the tensors have B = 0 rows and L = T = 0.
    """
    lengths = torch.tensor([len(w) for w in waveforms], dtype=torch.int64)
    batch_len = int(lengths.max()) if len(waveforms) else 0
    wave = torch.zeros(len(waveforms), batch_len, dtype=torch.float32)
    for i, w in enumerate(waveforms):
        wave[i, : len(w)] = torch.from_numpy(np.asarray(w, dtype=np.float32))
    batch: dict[str, torch.Tensor | list[str] | int] = {
        "waveforms": wave,
        "lengths": lengths,
        "ids": list(ids),
        "skipped": int(skipped),
    }
    if labels is not None:
        target = torch.full((len(labels), model_frames(batch_len)), LABEL_PAD, dtype=torch.int64)
        for i, lab in enumerate(labels):
            target[i, : len(lab)] = torch.from_numpy(lab.astype(np.int64))
        batch["labels"] = target
    return batch
