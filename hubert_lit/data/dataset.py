"""Iterable dataset that streams planned batches out of webdataset tar shards.

Every rank, and every DataLoader worker inside it, computes the epoch's batch plan from ``index.json`` (see
:mod:`hubert_lit.data.batching`). The plan is one sequence of global batches: from a pass's start position
``start``, rank r of W takes global batches ``start + r, start + r + W, ...`` and worker w of n takes every n-th of
those from the w-th, so the loader delivers the rank's batches in order whatever the worker count. A pass is set
with :meth:`ShardBatchDataset.set_pass`; the loader (:class:`hubert_lit.data.datamodule.ShardLoader`) counts the
batches it delivers and turns them into a global position, which is all a resumed run needs, with any number of
ranks and workers.

Each worker reads the shards its batches need in plan order, each shard at most once per pass, front to back
(members other workers need are skipped without being decoded; a tar on the local disk is seeked over them).
Utterances that cannot be used are left out of their batch and counted, never silently: a member that does not
decode, a shard that breaks off (truncated tar, download failed after its retries), a labels file that cannot be
downloaded. Each is reported with a :class:`ShardDecodeWarning` naming the utterance or shard, listed in
:attr:`ShardBatchDataset.decode_failures`, and counted in the batch's ``skipped``. The number of batches never
changes, so ranks stay in step; a batch whose utterances all failed is delivered with no rows (B = 0).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator
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
    equalize_for_ranks,
    plan_crops,
    plan_epoch,
    rank_share,
    split_for_worker,
)
from hubert_lit.data.fetch import DEFAULT_RETRY, FetchError, RetryPolicy
from hubert_lit.data.label_files import LabelFolder
from hubert_lit.data.shardio import Sample, ShardFormatError, ShardIndex, decode_flac, load_index


class ShardDecodeWarning(UserWarning):
    """Shard data could not be read or decoded; the utterances named were left out of their batches."""


class _ShardReader:
    """Raw FLAC bytes of the utterances one worker needs in a pass, each shard opened at most once and read
    forward; ``fetch`` is called window by window in plan order."""

    def __init__(self, index: ShardIndex, todo: list[PlannedBatch]) -> None:
        self._index = index
        self._keep: dict[str, set[str]] = {}
        self._position: dict[str, int] = {}  # ordinal in its tar of every utterance this worker needs
        for planned in todo:
            for u in planned.rows:
                self._keep.setdefault(u.shard, set()).add(u.id)
                self._position[u.id] = u.position
        self._opened: set[str] = set()
        self._shard: str | None = None
        self._samples: Iterator[Sample] | None = None
        self._ahead: Sample | None = None  # read past the current window: belongs to a later fetch
        self.error: str | None = None  # why the current shard stopped, once it has

    def close(self) -> None:
        if self._samples is not None:
            self._samples.close()
        self._samples = None

    def _open(self, shard: str) -> None:
        if shard in self._opened:
            raise RuntimeError(f"internal: shard {shard!r} requested again after another shard in one pass")
        self.close()
        self._opened.add(shard)
        self._shard, self._ahead, self.error = shard, None, None
        try:
            self._samples = self._index.read_shard(shard, decode=False, keep=self._keep.get(shard, set()))
        except ShardFormatError as err:
            self._samples, self.error = None, str(err)

    def _next(self) -> Sample | None:
        if self._ahead is not None:
            sample, self._ahead = self._ahead, None
            return sample
        if self._samples is None or self.error is not None:
            return None
        try:
            return next(self._samples)
        except StopIteration:  # the tar's end: utterances still wanted are simply not in it
            self._samples = None
        except (ShardFormatError, OSError) as err:
            self.error = f"the shard broke off before it: {err}"
        return None

    def fetch(self, shard: str, rows: list[Utterance]) -> tuple[dict[str, bytes], dict[str, str]]:
        """Raw bytes of ``rows`` (all of one window of ``shard``) and, for those that could not be read, why."""
        if shard != self._shard:
            self._open(shard)
        wanted = {u.id for u in rows}
        last = max(self._position[u.id] for u in rows)
        found: dict[str, bytes] = {}
        while len(found) < len(wanted):
            sample = self._next()
            if sample is None:
                break
            if self._position[sample.id] > last:
                self._ahead = sample  # a later window's utterance: the ones still wanted are not in the tar
                break
            if sample.id in wanted:
                found[sample.id] = sample.audio
        failed = {}
        for u in rows:
            if u.id not in found:
                failed[u.id] = self.error or (
                    f"not found at its index position {u.position} in {self._index.shard_where(shard)}"
                )
        return found, failed


class _LabelStore:
    """Labels of the shard being read (one ``.labels.npz`` in memory at a time), checked against the audio."""

    def __init__(self, folder: LabelFolder, label_rate: int, num_classes: int) -> None:
        self.folder, self.label_rate, self.num_classes = folder, label_rate, num_classes
        self._shard: str | None = None
        self._labels: dict[str, np.ndarray] = {}
        self.error: str | None = None  # why the current shard's labels could not be downloaded

    def load(self, shard: str) -> None:
        if shard == self._shard:
            return
        self._shard, self._labels, self.error = shard, {}, None
        try:
            self._labels = self.folder.shard_labels(shard)
        except FileNotFoundError:
            raise  # a labels folder without this shard's file is a configuration error, not a network one
        except FetchError as err:
            self.error = f"its labels file could not be downloaded ({err})"

    def get(self, utt: Utterance) -> np.ndarray:
        source = self.folder.describe(utt.shard)
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


def plan_digest(batches: list[PlannedBatch]) -> str:
    """A short hash of which utterances make up each batch, in order: two runs with the same digest plan the
    same epoch (a saved position means the same batches)."""
    digest = hashlib.sha256()
    for b in batches:
        digest.update("\0".join(u.id for u in b.rows).encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


class ShardBatchDataset(IterableDataset):
    """Batches (contract 4 dicts) of one rank, planned from a shard folder's index and read from its tars.

    Args:
        shard_dir: shard folder (``index.json`` + ``shard-*.tar``, written by ``python -m hubert_lit shard``): a
            local folder, an ``http(s)://`` or fsspec URL or a ``pipe:`` template
            (:mod:`hubert_lit.data.locations`).
        label_dir: labels folder (``meta.json`` + ``<shard>.labels.npz``, local or remote) or None for
            audio-only batches.
        train: True shuffles shards and batches per epoch, crops at random offsets and drops the few batches
            that do not make a whole step of ``world_size`` batches; False keeps index order, crops from offset 0
            and keeps every utterance (ranks get equal counts by splitting batches).
        budget: batch size rule (total audio or fixed count).
        max_sample_size: longer utterances are cropped to this many samples (None: never crop; an utterance
            longer than the batch budget then gets a batch of its own).
        min_sample_size: shorter utterances are left out (listed in :meth:`epoch_stats`).
        pad: False = crop every utterance of a batch to the shortest (fairseq); True = keep each one up to
            ``max_sample_size`` and zero-pad, with ``lengths`` giving the valid samples.
        sort_window: utterances of a shard sorted by length together before packing into batches.
        seed: base seed of shard order, batch order and crop offsets.
        rank, world_size: this process's rank and the number of ranks.
        cache_dir: local folder that keeps a copy of remote shard and label files once read (None: none).
        retry: how often a dropped download is resumed before its shard is given up.
    """

    def __init__(
        self,
        shard_dir: str | os.PathLike,
        label_dir: str | os.PathLike | None = None,
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
        cache_dir: str | os.PathLike | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
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
        self.index = load_index(shard_dir, cache_dir=cache_dir, retry=retry)
        self.labels: LabelFolder | None = None
        self.label_rate: int | None = None
        self.num_classes: int | None = None
        if label_dir is not None:
            self.labels = LabelFolder.open(label_dir, cache_dir=cache_dir, retry=retry)
            self.label_rate, self.num_classes = (
                self.labels.meta["label_rate"],
                self.labels.meta["num_classes"],
            )
            missing = self.labels.missing(self.index.shard_names)
            if missing:
                raise FileNotFoundError(
                    f"{self.labels.location}: no labels file for shard(s) {', '.join(missing[:5])}"
                    + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                    + f" of {self.index.source}"
                )
        self.train, self.budget, self.pad = train, budget, pad
        self.max_sample_size, self.min_sample_size = max_sample_size, min_sample_size
        self.sort_window, self.seed = sort_window, seed
        self.rank, self.world_size = rank, world_size
        # (utterance id, shard, reason) of every utterance this process could not use
        self.decode_failures: list[tuple[str, str, str]] = []
        self._shards = _shard_utterances(self.index)
        self._epoch, self._start = 0, 0
        self._plans: dict[int, tuple[EpochPlan, list[PlannedBatch], str]] = {}
        self._length = len(self.rank_batches(0))
        if self._length == 0:
            raise ValueError(
                f"{self.index.source}: no batches for rank {rank} of {world_size} "
                f"({self.epoch_stats(0)['utterances']} utterances of at least {min_sample_size} samples)"
            )

    # ------------------------------------------------------------------------------------------ planning

    def _plan(self, epoch: int) -> tuple[EpochPlan, list[PlannedBatch], str]:
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
            batches = list(plan.batches) if self.train else equalize_for_ranks(plan.batches, self.world_size)
            # keep one epoch: plans of big corpora are not small
            self._plans = {epoch: (plan, batches, plan_digest(batches))}
        return self._plans[epoch]

    def global_batches(self, epoch: int) -> list[PlannedBatch]:
        """The epoch's sequence of global batches, all ranks together (validation: after equalizing)."""
        return self._plan(epoch)[1]

    def plan_digest(self, epoch: int) -> str:
        """:func:`plan_digest` of ``epoch``'s global batches."""
        return self._plan(epoch)[2]

    def rank_batches(self, epoch: int, start: int = 0) -> list[PlannedBatch]:
        """This rank's batches of ``epoch`` in a pass from global position ``start``, in delivery order."""
        batches = self.global_batches(epoch)
        if self.train:
            return rank_share(batches, self.rank, self.world_size, start)
        return batches[start + self.rank :: self.world_size]

    @property
    def num_global_batches(self) -> int:
        """Global batches per epoch, all ranks together (the same every epoch)."""
        if not self._plans:
            self._plan(self._epoch)
        return len(next(iter(self._plans.values()))[1])

    def pass_length(self, start: int) -> int:
        """Batches this rank delivers in a pass from global position ``start`` (the same in every epoch)."""
        total = self.num_global_batches
        if self.train:
            return max(0, total - start) // self.world_size
        return len(range(start + self.rank, total, self.world_size))

    def epoch_stats(self, epoch: int) -> dict[str, Any]:
        """What planning ``epoch`` kept and left out, over all ranks (for reporting)."""
        plan, batches, _ = self._plan(epoch)
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
        dropped = batches[self.world_size * (len(batches) // self.world_size) :] if self.train else []
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
        """Batches this rank yields in a whole epoch, all workers together (the same every epoch, on every
        rank)."""
        return self._length

    # ------------------------------------------------------------------------------------------ passes

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass a whole epoch ``epoch`` (shard order, batch order and crops depend on it)."""
        self.set_pass(epoch, 0)

    def set_pass(self, epoch: int, start: int) -> None:
        """Make the next pass epoch ``epoch`` from global batch ``start`` on (``start`` = batches all ranks
        together have already consumed)."""
        if not 0 <= start <= len(self.global_batches(epoch)):
            raise ValueError(f"start must be in [0, {len(self.global_batches(epoch))}], got {start}")
        self._epoch, self._start = int(epoch), int(start)

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def start(self) -> int:
        """Global position at which the next pass starts."""
        return self._start

    # ------------------------------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self._epoch
        todo = split_for_worker(self.rank_batches(epoch, self._start), worker, num_workers)
        return self._generate(todo, epoch)

    def _generate(self, todo: list[PlannedBatch], epoch: int) -> Iterator[dict[str, Any]]:
        reader = _ShardReader(self.index, todo)
        labels = None
        if self.labels is not None:
            labels = _LabelStore(self.labels, self.label_rate, self.num_classes)
        warned: set[tuple[str, str]] = set()  # (shard, reason) of shard-wide failures already reported
        try:
            start = 0
            while start < len(todo):
                end = start
                while end < len(todo) and todo[end].window == todo[start].window:
                    end += 1
                group = todo[start:end]
                rows = list({u.id: u for b in group for u in b.rows}.values())
                shard = rows[0].shard
                raw, failed = reader.fetch(shard, rows)
                shard_errors = {reader.error}
                if labels is not None:
                    labels.load(shard)
                    if labels.error is not None:
                        shard_errors.add(labels.error)
                        failed.update({u.id: labels.error for u in rows if u.id not in failed})
                for why in shard_errors - {None}:
                    if (shard, why) not in warned and why in failed.values():
                        warned.add((shard, why))
                        self._warn_shard(shard, why)
                for planned in group:
                    yield self._make_batch(planned, raw, failed, epoch, labels, shard_errors)
                start = end
        finally:
            reader.close()

    def _warn_shard(self, shard: str, why: str) -> None:
        warnings.warn(
            f"shard {shard!r} ({self.index.shard_where(shard)}): {why}; its remaining utterances in this pass are "
            "left out of their batches",
            ShardDecodeWarning,
            stacklevel=3,
        )

    def _report(self, utt: Utterance, reason: str, warn: bool = True) -> None:
        self.decode_failures.append((utt.id, utt.shard, reason))
        if warn:
            warnings.warn(
                f"utterance {utt.id!r} of shard {utt.shard!r} ({self.index.shard_where(utt.shard)}) left out of "
                f"its batch: {reason} [decode failure {len(self.decode_failures)} in this process]",
                ShardDecodeWarning,
                stacklevel=3,
            )

    def _make_batch(
        self,
        planned: PlannedBatch,
        raw: dict[str, bytes],
        failed: dict[str, str],
        epoch: int,
        labels: _LabelStore | None,
        shard_errors: set[str | None],
    ) -> dict[str, Any]:
        rows, audio = [], []
        for utt in planned.rows:
            if utt.id in failed:
                # a shard-wide failure was warned about once; a single missing member is warned about here
                self._report(utt, failed[utt.id], warn=failed[utt.id] not in shard_errors)
                continue
            name = f"{self.index.shard_where(utt.shard)}: member '{utt.id}.flac'"
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
        skipped = len(planned.rows) - len(rows)
        if not rows:
            return collate([], [], None if labels is None else [], skipped)
        rng = np.random.default_rng([self.seed, epoch, 2, planned.index]) if self.train else None
        crops = plan_crops(
            [len(a) for a in audio], pad=self.pad, max_sample_size=self.max_sample_size, rng=rng
        )
        waves = [a[c.offset : c.offset + c.length] for a, c in zip(audio, crops)]
        frame_labels = None
        if labels is not None:
            frame_labels = [crop_labels(labels.get(u), self.label_rate, c) for u, c in zip(rows, crops)]
        return collate([u.id for u in rows], waves, frame_labels, skipped)
