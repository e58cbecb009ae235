"""Iterable dataset that streams planned batches out of webdataset tar shards.

Each rank, and each DataLoader worker inside it, computes the epoch's batch plan from ``index.json`` (see
:mod:`hubert_lit.data.batching`), takes its contiguous share, reads the needed members sequentially from the
tar files and yields finished batches. Its state (epoch, batches yielded by this worker) is a few integers, so
a :class:`torchdata.stateful_dataloader.StatefulDataLoader` can resume mid-epoch exactly. The state does not
depend on the rank (every rank has the same batch counts), so the single copy Lightning stores in a checkpoint
(rank 0's) restores every rank.

Members that cannot be read or decoded are reported with a :class:`ShardDecodeWarning` naming the utterance
and the shard, counted in :attr:`ShardBatchDataset.decode_failures`, and left out of their batch (the batch
shrinks; the number of batches never changes). A batch whose members all fail raises, naming them: that means
a damaged shard, which should be rebuilt rather than trained around.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.data.batching import (
    BatchBudget,
    EpochPlan,
    PlannedBatch,
    Utterance,
    check_label_length,
    collate,
    crop_labels,
    cropped_length,
    plan_crops,
    plan_epoch,
    split_for_rank,
    split_for_worker,
)
from hubert_lit.data.label_files import (
    labels_path,
    load_label_meta,
    load_shard_labels,
)
from hubert_lit.data.shardio import ShardFormatError, ShardIndex, decode_flac, iter_shard, load_index


class ShardDecodeWarning(UserWarning):
    """A shard member could not be read or decoded; the utterance was left out of its batch."""


class _MemberReader:
    """Reads raw FLAC bytes of chosen utterances, moving forward through one shard tar at a time."""

    def __init__(self, index: ShardIndex) -> None:
        self._index = index
        self._shard: str | None = None
        self._samples: Iterator | None = None
        self._position = 0  # ordinal of the next sample the open iterator yields
        self._error: str | None = None

    def _open(self, shard: str) -> None:
        self.close()
        self._shard, self._position, self._error = shard, 0, None
        self._samples = iter_shard(self._index.shard_path(shard), decode=False)

    def close(self) -> None:
        if self._samples is not None:
            self._samples.close()
        self._samples = None

    def fetch(self, shard: str, rows: list[Utterance]) -> tuple[dict[str, bytes], dict[str, str]]:
        """Raw bytes of ``rows`` (all in ``shard``) and, for the ones that could not be read, the reason."""
        rows = sorted(rows, key=lambda u: u.position)
        if self._shard != shard or self._samples is None or rows[0].position < self._position:
            self._open(shard)
        wanted = {u.id for u in rows}
        found: dict[str, bytes] = {}
        last = rows[-1].position
        while self._error is None and self._position <= last:
            try:
                sample = next(self._samples)
            except StopIteration:
                self._error = "the tar file ends before it"
                break
            except (ShardFormatError, OSError) as err:
                self._error = f"the shard became unreadable before it ({err})"
                break
            self._position += 1
            if sample.id in wanted:
                found[sample.id] = sample.audio
        path = self._index.shard_path(shard)
        failed = {}
        for u in rows:
            if u.id not in found:
                failed[u.id] = self._error or f"not found at its index position {u.position} in {path}"
        return found, failed


class _LabelStore:
    """Labels of the shard being read (one ``.labels.npz`` in memory at a time), checked against the audio."""

    def __init__(self, label_dir: Path, label_rate: int, num_classes: int) -> None:
        self.label_dir, self.label_rate, self.num_classes = label_dir, label_rate, num_classes
        self._shard: str | None = None
        self._labels: dict[str, np.ndarray] = {}

    def get(self, utt: Utterance) -> np.ndarray:
        if utt.shard != self._shard:
            self._labels, self._shard = load_shard_labels(self.label_dir, utt.shard), utt.shard
        source = str(labels_path(self.label_dir, utt.shard))
        if utt.id not in self._labels:
            raise KeyError(f"{source}: no labels for utterance {utt.id!r}")
        labels = self._labels[utt.id]
        check_label_length(labels, utt.num_samples, self.label_rate, utt.id, source)
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"{source}: utterance {utt.id!r} has labels in [{labels.min()}, {labels.max()}], "
                f"outside [0, {self.num_classes}) of meta.json's num_classes"
            )
        return labels


def _shard_utterances(index: ShardIndex) -> list[tuple[str, list[Utterance]]]:
    by_shard: dict[str, list[Utterance]] = {s.name: [] for s in index.shards}
    for u in index.utterances:
        group = by_shard[u.shard]
        group.append(Utterance(u.id, u.shard, u.num_samples, len(group)))
    return list(by_shard.items())


class ShardBatchDataset(IterableDataset):
    """Batches (contract 4 dicts) of one rank, planned from a shard folder's index and read from its tars.

    Args:
        shard_dir: folder with ``index.json`` and ``shard-*.tar`` (written by ``python -m hubert_lit shard``).
        label_dir: labels folder (``meta.json`` + ``<shard>.labels.npz``) or None for audio-only batches.
        train: True shuffles shards and batches per epoch, crops at random offsets and drops the few batches
            that do not divide evenly among ranks; False keeps index order, crops from offset 0 and keeps
            every utterance (ranks get equal counts by splitting batches).
        budget: batch size rule (total audio or fixed count).
        max_sample_size: longer utterances are cropped to this many samples (None: never crop; an utterance
            longer than the batch budget then gets a batch of its own).
        min_sample_size: shorter utterances are left out (listed in :meth:`epoch_stats`).
        pad: False = crop every utterance of a batch to the shortest (fairseq); True = keep each one up to
            ``max_sample_size`` and zero-pad, with ``lengths`` giving the valid samples.
        sort_window: utterances of a shard sorted by length together before packing into batches.
        seed: base seed of shard order, batch order and crop offsets.
        rank, world_size: this process's rank and the number of ranks.
    """

    def __init__(
        self,
        shard_dir: str | Path,
        label_dir: str | Path | None = None,
        *,
        train: bool,
        budget: BatchBudget,
        max_sample_size: int | None = 250000,
        min_sample_size: int = 32000,
        pad: bool = False,
        sort_window: int = 256,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if min_sample_size < 400:
            raise ValueError(f"min_sample_size must be >= 400 (one model frame), got {min_sample_size}")
        if max_sample_size is not None and max_sample_size < min_sample_size:
            raise ValueError(
                f"max_sample_size ({max_sample_size}) must be >= min_sample_size ({min_sample_size})"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        self.index = load_index(shard_dir)
        self.label_dir = Path(label_dir) if label_dir is not None else None
        self.label_rate: int | None = None
        self.num_classes: int | None = None
        if self.label_dir is not None:
            meta = load_label_meta(self.label_dir)
            self.label_rate, self.num_classes = meta["label_rate"], meta["num_classes"]
            missing = [s.name for s in self.index.shards if not labels_path(self.label_dir, s.name).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{self.label_dir}: no labels file for shard(s) {', '.join(missing[:5])}"
                    + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                    + f" of {self.index.directory}"
                )
        self.train, self.budget, self.pad = train, budget, pad
        self.max_sample_size, self.min_sample_size = max_sample_size, min_sample_size
        self.sort_window, self.seed = sort_window, seed
        self.rank, self.world_size = rank, world_size
        # (utterance id, shard, reason) of every member this process could not use
        self.decode_failures: list[tuple[str, str, str]] = []
        self._shards = _shard_utterances(self.index)
        self._epoch = 0
        self._resume: dict[str, int] | None = None
        self._progress: list[int] | None = None  # [epoch, batches yielded] of the running iteration
        self._worker_count = 1
        self._plans: dict[int, tuple[EpochPlan, list[PlannedBatch], list[PlannedBatch]]] = {}
        self._length: int | None = None
        self._length = len(self.rank_batches(0))
        if self._length == 0:
            raise ValueError(
                f"{self.index.directory}: no batches for rank {rank} of {world_size} "
                f"({self.epoch_stats(0)['utterances']} utterances of at least {min_sample_size} samples)"
            )

    # ------------------------------------------------------------------------------------------ planning

    def _plan(self, epoch: int) -> tuple[EpochPlan, list[PlannedBatch], list[PlannedBatch]]:
        if epoch not in self._plans:
            plan = plan_epoch(
                self._shards,
                epoch=epoch,
                seed=self.seed,
                shuffle=self.train,
                budget=self.budget,
                max_sample_size=self.max_sample_size,
                min_sample_size=self.min_sample_size,
                sort_window=self.sort_window,
            )
            mine, dropped = split_for_rank(
                plan.batches, self.rank, self.world_size, drop_remainder=self.train
            )
            if (
                self._length is not None and len(mine) != self._length
            ):  # guaranteed by planning; never hang DDP
                raise RuntimeError(
                    f"epoch {epoch}: {len(mine)} batches for rank {self.rank}, not {self._length}"
                )
            self._plans = {epoch: (plan, mine, dropped)}  # keep one epoch: plans of big corpora are not small
        return self._plans[epoch]

    def rank_batches(self, epoch: int) -> list[PlannedBatch]:
        """This rank's planned batches of ``epoch``, in plan order (workers deliver them interleaved)."""
        return self._plan(epoch)[1]

    def epoch_stats(self, epoch: int) -> dict[str, Any]:
        """What planning ``epoch`` kept and left out, over all ranks (for reporting)."""
        plan, _, dropped = self._plan(epoch)
        kept = sum(u.num_samples for b in plan.batches for u in b.rows)
        if self.pad:
            cropped = sum(
                cropped_length(u.num_samples, self.max_sample_size) for b in plan.batches for u in b.rows
            )
        else:
            cropped = sum(
                len(b.rows) * cropped_length(min(u.num_samples for u in b.rows), self.max_sample_size)
                for b in plan.batches
            )
        return {
            "epoch": epoch,
            "utterances": plan.num_utterances,
            "too_short": len(plan.too_short),
            "too_short_seconds": sum(u.num_samples for u in plan.too_short) / SAMPLE_RATE,
            "batches": len(plan.batches),
            "batches_per_rank": len(self.rank_batches(epoch)),
            "dropped_batches": len(dropped),
            "dropped_utterances": sum(len(b.rows) for b in dropped),
            "seconds": kept / SAMPLE_RATE,
            "seconds_after_crop": cropped / SAMPLE_RATE,
        }

    def __len__(self) -> int:
        """Batches this rank yields per epoch, all workers together (the same every epoch, on every rank)."""
        return self._length

    # ------------------------------------------------------------------------------------------ state

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration (shard order, batch order and crops depend on it)."""
        self._epoch = int(epoch)

    @property
    def epoch(self) -> int:
        return self._epoch

    def state_dict(self) -> dict[str, int]:
        """Epoch and number of batches this worker has yielded in it."""
        epoch, yielded = self._progress if self._progress is not None else (self._epoch, 0)
        return {
            "epoch": epoch,
            "yielded": yielded,
            "num_workers": self._worker_count,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume from :meth:`state_dict`: the next iteration continues that epoch after the yielded
        batches."""
        if state.get("world_size", self.world_size) != self.world_size:
            raise ValueError(
                f"data-loader state was saved with world_size={state['world_size']}, this run has "
                f"{self.world_size}; the batch plan depends on it, so a mid-epoch resume is not possible"
            )
        self._resume = {
            "epoch": int(state["epoch"]),
            "yielded": int(state["yielded"]),
            "num_workers": int(state.get("num_workers", 0)),
        }
        self._epoch = int(state["epoch"])

    # ------------------------------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        self._worker_count = num_workers
        return self._generate(worker, num_workers)

    def _generate(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        epoch, skip = self._epoch, 0
        if self._resume is not None:
            resume, self._resume = self._resume, None
            if resume["num_workers"] not in (0, num_workers):
                raise ValueError(
                    f"data-loader state was saved with num_workers={resume['num_workers']}, this loader has "
                    f"{num_workers}; resume with the same number of workers"
                )
            epoch, skip = resume["epoch"], resume["yielded"]
        todo = split_for_worker(self.rank_batches(epoch), worker, num_workers)[skip:]
        self._progress = [epoch, skip]
        reader = _MemberReader(self.index)
        labels = None
        if self.label_dir is not None:
            labels = _LabelStore(self.label_dir, self.label_rate, self.num_classes)
        try:
            start = 0
            while start < len(todo):
                end = start
                while end < len(todo) and todo[end].window == todo[start].window:
                    end += 1
                group = todo[start:end]
                rows = list({u.id: u for b in group for u in b.rows}.values())
                raw, failed = reader.fetch(rows[0].shard, rows)
                for planned in group:
                    batch = self._make_batch(planned, raw, failed, epoch, labels)
                    self._progress[1] += 1
                    yield batch
                start = end
        finally:
            reader.close()

    def _report(self, utt: Utterance, reason: str) -> None:
        self.decode_failures.append((utt.id, utt.shard, reason))
        warnings.warn(
            f"utterance {utt.id!r} of shard {utt.shard!r} ({self.index.shard_path(utt.shard)}) left out of "
            f"its batch: {reason} [decode failure {len(self.decode_failures)} in this process]",
            ShardDecodeWarning,
            stacklevel=2,
        )

    def _make_batch(
        self,
        planned: PlannedBatch,
        raw: dict[str, bytes],
        failed: dict[str, str],
        epoch: int,
        labels: _LabelStore | None,
    ) -> dict[str, Any]:
        rows, audio = [], []
        for utt in planned.rows:
            if utt.id in failed:
                self._report(utt, failed[utt.id])
                continue
            name = f"{self.index.shard_path(utt.shard)}: member '{utt.id}.flac'"
            try:
                wave = decode_flac(raw[utt.id], name)
            except ShardFormatError as err:
                self._report(utt, str(err))
                continue
            if len(wave) != utt.num_samples:
                self._report(utt, f"decoded {len(wave)} samples but index.json says {utt.num_samples}")
                continue
            rows.append(utt)
            audio.append(wave)
        if not rows:
            raise RuntimeError(
                f"every utterance of a batch failed to decode ({', '.join(u.id for u in planned.rows)}) in "
                f"shard {planned.rows[0].shard!r}: the shard is damaged; rebuild it with "
                "`python -m hubert_lit shard`"
            )
        rng = np.random.default_rng([self.seed, epoch, 2, planned.index]) if self.train else None
        crops = plan_crops(
            [len(a) for a in audio], pad=self.pad, max_sample_size=self.max_sample_size, rng=rng
        )
        waves = [a[c.offset : c.offset + c.length] for a, c in zip(audio, crops)]
        frame_labels = None
        if labels is not None:
            frame_labels = [crop_labels(labels.get(u), self.label_rate, c) for u, c in zip(rows, crops)]
        return collate([u.id for u in rows], waves, frame_labels)
