"""LightningDataModule over webdataset tar shards and k-means label files, with exact mid-epoch resume on any
number of ranks and loader workers.

The loader state (:meth:`ShardLoader.state_dict`) records the global position in the epoch's sequence of batches
(:mod:`hubert_lit.data.dataset`): how many batches all ranks together have consumed. Restored, the next pass
starts there, whatever the world size and ``num_workers`` are now:

* Batches in flight are not lost or repeated: the position counts the batches the loader has *delivered* to the
  training loop, so batches that workers had prefetched but not delivered when the checkpoint was written are
  simply produced again by the resumed run (planning and crops are deterministic).
* With W' ranks, step k of the resumed pass consumes global batches ``position + k * W' ... + W' - 1`` (batch
  ``position + k * W' + r`` on rank r). When the batches left in the epoch do not divide by W', the last
  ``(N - position) mod W'`` of them cannot fill a step and are left out, as the last ``N mod W`` batches of every
  epoch are; the next epoch starts afresh.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.data.batching import BatchBudget
from hubert_lit.data.dataset import ShardBatchDataset
from hubert_lit.data.fetch import RetryPolicy
from hubert_lit.data.fingerprint import PLAN_FIELDS, data_fingerprint
from hubert_lit.data.label_files import load_label_meta
from hubert_lit.data.shardio import load_index

LOADER_STATE_FORMAT = "hubert-lit-loader/2"

log = logging.getLogger(__name__)


class LoaderStateError(ValueError):
    """A saved data-loader state that cannot be resumed exactly; the message says what to do instead."""


@dataclass(frozen=True)
class LoaderPosition:
    """Where a training pass stands: ``position`` global batches of ``epoch`` consumed by all ranks together,
    ``steps`` of them delivered by this rank (Lightning's batch count of the epoch), ``complete`` once the epoch
    has no whole step left."""

    epoch: int
    position: int
    steps: int
    complete: bool


@dataclass(frozen=True)
class _Pass:
    epoch: int
    start: int  # global position of the pass's first batch
    steps_before: int  # batches this rank delivered in the epoch before the pass (resumed passes)
    length: int  # batches this rank delivers in the pass


class ShardLoader(DataLoader):
    """DataLoader for :class:`ShardBatchDataset` that sets each pass's epoch and start, and saves and restores the
    global position (module docs).

    Lightning calls ``set_epoch`` only on samplers, which an iterable dataset does not have, so each new pass takes
    its epoch from ``epoch_fn`` (the DataModule passes the Trainer's epoch) and then calls
    ``on_pass_start(epoch, start)``. A restored state decides the next pass instead: the rest of its epoch, or the
    following epoch afresh when the state was saved after the epoch's last step (on resume Lightning creates the
    iterator before it advances its own epoch counter, so that epoch must come from the state).

    ``steps_fn`` returns Lightning's count of batches already trained in the current epoch: Lightning reads
    ``len(loader)`` before it restores the loader's state and never runs an epoch past that length, so on resume
    the length must already allow for the restored pass (which, after a change of world size, may need more steps
    than a whole epoch has).
    """

    def __init__(
        self,
        dataset: ShardBatchDataset,
        *args: Any,
        epoch_fn: Callable[[], int] | None = None,
        on_pass_start: Callable[[int, int], None] | None = None,
        steps_fn: Callable[[], int] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, *args, **kwargs)
        self._epoch_fn = epoch_fn
        self._on_pass_start = on_pass_start
        self._steps_fn = steps_fn
        self._pending: LoaderPosition | None = None  # restored, not yet iterated
        self.restart_epoch_on_mismatch = False  # see load_state_dict
        self._pass: _Pass | None = None
        self._live = None  # the iterator of the current pass
        self._released: LoaderPosition | None = None  # the position when release() stopped the pass

    # ------------------------------------------------------------------------------------------ passes

    def _get_iterator(self):
        if self._pending is not None:
            resume, self._pending = self._pending, None
            if resume.complete:
                epoch, start, before = resume.epoch + 1, 0, 0
            else:
                epoch, start, before = resume.epoch, resume.position, resume.steps
        else:
            epoch = self._epoch_fn() if self._epoch_fn is not None else self.dataset.epoch
            start, before = 0, 0
        self.dataset.set_pass(epoch, start)
        if self._on_pass_start is not None:
            self._on_pass_start(epoch, start)
        self._pass = _Pass(epoch, start, before, self.dataset.pass_length(start))
        self._released = None
        self._live = super()._get_iterator()
        return self._live

    def release(self) -> None:
        """Stop the current pass's worker processes now (the end of a fit, or an exception); ``state_dict`` keeps
        reporting where the pass stood. Holding the iterator for :meth:`position` would otherwise keep its workers
        alive until the loader itself is collected, and the iterator's own shutdown then waits out each idle
        worker's 5 s status-check interval."""
        if self._live is None:
            return
        self._released = self.position()
        live, self._live = self._live, None
        shutdown = getattr(live, "_shutdown_workers", None)  # only multi-process iterators have workers
        if shutdown is not None:
            shutdown()

    def __len__(self) -> int:
        """Batches Lightning will take in the current (or next) pass, counted from the start of its epoch; a whole
        epoch's ``len(dataset)`` unless a resumed pass needs more."""
        base = len(self.dataset)
        if self._pending is not None:
            if self._pending.complete:
                return base
            return max(base, self._pending.steps + self.dataset.pass_length(self._pending.position))
        if self._pass is not None:
            return max(base, self._pass.steps_before + self._pass.length)
        done = self._steps_fn() if self._steps_fn is not None else 0
        if done > 0:  # about to be restored (see the class docs): an upper bound of what the state can need
            total = self.dataset.num_global_batches
            return max(base, done + (total - done) // self.dataset.world_size)
        return base

    def position(self) -> LoaderPosition:
        """Where the current pass stands (the restored position before the first batch)."""
        if self._live is not None and self._pass is not None:
            yielded = (
                self._live._num_yielded
            )  # batches the iterator has returned (a DataLoader iterator attribute)
            p = self._pass
            return LoaderPosition(
                p.epoch,
                p.start + yielded * self.dataset.world_size,
                p.steps_before + yielded,
                yielded >= p.length,
            )
        if self._pending is not None:
            return self._pending
        if self._released is not None:
            return self._released
        return LoaderPosition(self.dataset.epoch, self.dataset.start, 0, False)

    # ------------------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The global position (module docs) and what it refers to: the epoch's batch count and plan digest."""
        p = self.position()
        return {
            "format": LOADER_STATE_FORMAT,
            "epoch": p.epoch,
            "position": p.position,
            "steps": p.steps,
            "epoch_complete": p.complete,
            "world_size": self.dataset.world_size,
            "num_workers": self.num_workers,
            "num_batches": len(self.dataset.global_batches(p.epoch)),
            "plan": self.dataset.plan_digest(p.epoch),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Continue from a saved state (this version's, or one of 0.1.0 where it maps exactly); raises
        :class:`LoaderStateError` saying what to do when the saved position cannot be resumed exactly, unless
        ``restart_epoch_on_mismatch`` is set: then the saved epoch starts over on the data as it is now (the
        batches Lightning already counted in it stay counted)."""
        try:
            self._pending = self._restore(state_dict)
        except LoaderStateError as err:
            if not self.restart_epoch_on_mismatch:
                raise
            epoch = int(state_dict.get("epoch", self.dataset.epoch))
            steps = int(state_dict.get("steps", self._steps_fn() if self._steps_fn is not None else 0))
            log.warning("%s\n-> data change allowed: epoch %d starts over on the current data", err, epoch)
            self._pending = LoaderPosition(epoch, 0, steps, False)
        self._pass, self._live = None, None

    def _restore(self, state: dict[str, Any]) -> LoaderPosition:
        if state.get("format") == LOADER_STATE_FORMAT:
            epoch, position = int(state["epoch"]), int(state["position"])
            if state["epoch_complete"]:
                return LoaderPosition(epoch, 0, 0, True)
            plan = self.dataset.plan_digest(epoch)
            if state["plan"] != plan:
                raise LoaderStateError(
                    f"data-loader state: epoch {epoch} was saved at global batch {position} of "
                    f"{state['num_batches']} planned from other data or settings (plan {state['plan']}, this run "
                    f"plans {len(self.dataset.global_batches(epoch))} batches, plan {plan}): the shards, the batch "
                    "settings (max_batch_seconds / batch_size, max_sample_size, min_sample_size, sort_window) or "
                    "the data seed changed since the checkpoint, so the saved position means other batches now. "
                    f"Undo the change, or start epoch {epoch} over."
                )
            return LoaderPosition(epoch, position, int(state["steps"]), False)
        if "format" not in state and ("loader" in state or "dataset_state" in state or "_snapshot" in state):
            return self._restore_v010(state)
        raise LoaderStateError(
            f"data-loader state of an unknown format ({state.get('format', sorted(state)[:6])!r}); expected "
            f"{LOADER_STATE_FORMAT!r}. Start the epoch over."
        )

    def _restore_v010(self, state: dict[str, Any]) -> LoaderPosition:
        """A state of hubert-lit 0.1.0 (a StatefulDataLoader state around per-worker ``{"epoch", "yielded",
        "num_workers", "world_size"}``). Its ranks and workers took contiguous blocks of the plan, so only a
        single process reading the plan in order (world size 1, at most one worker) maps onto today's global
        position exactly; an end-of-epoch state maps in any case."""
        inner = state.get("loader", state)
        if "dataset_state" in inner:
            datasets = [inner["dataset_state"]]
        else:
            datasets = [w["dataset_state"] for w in inner["_snapshot"]["_worker_snapshots"].values()]
        epoch = int(state.get("epoch", datasets[0]["epoch"]))
        if state.get("epoch_complete"):
            return LoaderPosition(epoch, 0, 0, True)
        world, workers = int(datasets[0]["world_size"]), int(datasets[0]["num_workers"])
        if world == 1 and workers <= 1 and len(datasets) == 1:
            yielded = int(datasets[0]["yielded"])
            return LoaderPosition(epoch, yielded, yielded, yielded >= len(self.dataset.global_batches(epoch)))
        raise LoaderStateError(
            f"data-loader state written by hubert-lit 0.1.0 in the middle of epoch {epoch} with world_size={world} "
            f"and num_workers={workers}: that version gave each rank and worker a contiguous block of the epoch's "
            "batches, which does not map onto this version's single sequence of global batches. Resume from a "
            f"checkpoint saved at the end of an epoch, or start epoch {epoch} over."
        )


class ShardDataModule(pl.LightningDataModule):
    """HuBERT pretraining data from shard folders (``python -m hubert_lit shard``) and label folders
    (``python -m hubert_lit label``).

    Batches are dicts with ``waveforms`` (B, L) float32, ``lengths`` (B,) int64, ``ids``, ``skipped`` (int: the
    utterances planned for the batch that could not be read and were left out) and, when labels are configured,
    ``labels`` (B, T) int64 at 50 Hz (padding -100). B is 0 when every planned utterance of a batch was left out.

    Training: the shard order is shuffled by ``(seed, epoch)``; batches are planned from ``index.json`` into one
    sequence of global batches per epoch, of which rank r of W takes every W-th from the r-th, so every rank
    yields the same number of batches (the few that do not fill a last step of W batches are dropped and
    reported each epoch); crops use random offsets seeded by ``(seed, epoch, batch)``, so a run resumed with any
    number of ranks and workers sees exactly the batches of an uninterrupted one (module docs). Validation and
    test: index order, offset-0 crops, padding (``pad`` is ignored), every utterance exactly once across ranks.

    Shard and label folders may be local folders, ``http(s)://`` or fsspec URLs (``s3://``, ``gs://`` with the
    matching extra installed) or ``pipe:`` command templates (:mod:`hubert_lit.data.locations`).

    Args:
        train_shards: shard folder for training.
        val_shards: shard folder for validation (None: no validation).
        test_shards: shard folder for ``trainer.test`` (None: none).
        predict_shards: shard folder for ``trainer.predict`` (feature extraction for the next labelling
            iteration): every utterance of at least 400 samples, whole (never cropped), in shard order.
        train_labels: labels folder of ``train_shards`` (None: batches without ``labels``).
        val_labels: labels folder of ``val_shards``.
        test_labels: labels folder of ``test_shards``.
        max_batch_seconds: batch budget in seconds of audio per rank, counted like fairseq's ``max_tokens``
            (longest cropped utterance x batch size); HuBERT Base used 87.5 s per GPU. Exactly one of this and
            ``batch_size``.
        batch_size: fixed number of utterances per batch instead of ``max_batch_seconds``.
        max_sample_size: utterances longer than this many samples are cropped to it (fairseq: 250000).
        min_sample_size: utterances shorter than this many samples are left out and counted (fairseq: 32000).
        pad: training batch shape. False: crop every utterance to the batch's shortest (fairseq's default,
            no padding); True: keep each utterance (up to ``max_sample_size``) and zero-pad, see ``lengths``.
        sort_window: consecutive utterances of a shard sorted by length together before packing into batches;
            larger windows waste less audio to cropping but hold more undecoded audio in each worker.
        num_workers: DataLoader worker processes per rank (0: load in the training process). Workers start
            afresh each epoch (persistent workers would keep the previous epoch's plan).
        seed: seed of shard order, batch order and crop offsets (independent of the global seed).
        pin_memory: pin batches in page-locked memory (for GPU training).
        prefetch_factor: batches each worker prepares in advance (ignored with 0 workers).
        cache_dir: local folder that keeps a copy of every remote shard and labels file once it has been read,
            so later epochs do not download them again (None: stream them every epoch). Use a node-local disk;
            the ranks and workers of a node share it.
        fetch_retries: how many times a dropped or failed download of one file is resumed (range request) or
            restarted before its shard is reported and skipped.
        fetch_backoff: seconds to wait before the first retry, doubled for each further one (at most 30 s).
    """

    def __init__(
        self,
        train_shards: str | None = None,
        val_shards: str | None = None,
        test_shards: str | None = None,
        predict_shards: str | None = None,
        train_labels: str | None = None,
        val_labels: str | None = None,
        test_labels: str | None = None,
        max_batch_seconds: float | None = None,
        batch_size: int | None = None,
        max_sample_size: int = 250000,
        min_sample_size: int = 32000,
        pad: bool = False,
        sort_window: int = 256,
        num_workers: int = 2,
        seed: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int = 2,
        cache_dir: str | None = None,
        fetch_retries: int = 5,
        fetch_backoff: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        max_samples = None if max_batch_seconds is None else round(max_batch_seconds * SAMPLE_RATE)
        self.budget = BatchBudget(max_samples=max_samples, batch_size=batch_size)
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
        self.retry = RetryPolicy(retries=fetch_retries, backoff=fetch_backoff)
        for shards, labels, name in (
            (train_shards, train_labels, "train"),
            (val_shards, val_labels, "val"),
            (test_shards, test_labels, "test"),
        ):
            if labels is not None and shards is None:
                raise ValueError(f"{name}_labels is set but {name}_shards is not")
        self.train_dataset: ShardBatchDataset | None = None
        self.val_dataset: ShardBatchDataset | None = None
        self.test_dataset: ShardBatchDataset | None = None
        self.predict_dataset: ShardBatchDataset | None = None
        self._epoch = 0
        self._fingerprint: dict[str, Any] | None = None
        self._loaders: weakref.WeakSet[ShardLoader] = weakref.WeakSet()  # to stop their workers at the end
        # set by the CLI's --run.allow_data_change: a saved loader position that does not fit the current data
        # restarts its epoch instead of failing
        self.restart_epoch_on_mismatch = False

    # ------------------------------------------------------------------------------------------ labels

    def label_meta(self) -> dict[str, Any] | None:
        """``meta.json`` of the first configured labels folder (train, then val, then test), or None."""
        for labels in (self.hparams.train_labels, self.hparams.val_labels, self.hparams.test_labels):
            if labels is not None:
                return load_label_meta(labels)
        return None

    @property
    def num_classes(self) -> int | None:
        """Number of label classes (``meta.json``'s num_classes), for linking to the model's
        ``num_classes``."""
        meta = self.label_meta()
        return None if meta is None else meta["num_classes"]

    def _check_label_folders(self) -> None:
        metas = {}
        for name in ("train_labels", "val_labels", "test_labels"):
            if self.hparams[name] is not None:
                metas[name] = load_label_meta(self.hparams[name])
        pairs = {(m["label_rate"], m["num_classes"]) for m in metas.values()}
        if len(pairs) > 1:
            found = ", ".join(
                f"{k}: {m['label_rate']} Hz / {m['num_classes']} classes" for k, m in metas.items()
            )
            raise ValueError(f"label folders disagree on label_rate / num_classes ({found})")

    def fingerprint(self) -> dict[str, Any]:
        """What training reads (:mod:`hubert_lit.data.fingerprint`): the train index and labels meta and the epoch
        plan's settings. Read once (``index.json`` and ``meta.json``) and kept."""
        if self._fingerprint is None:
            hp = self.hparams
            if hp.train_shards is None:
                raise ValueError("ShardDataModule: train_shards is required for fit")
            if self.train_dataset is not None:
                index = self.train_dataset.index
            else:
                index = load_index(hp.train_shards, retry=self.retry)
            meta = None if hp.train_labels is None else load_label_meta(hp.train_labels)
            self._fingerprint = data_fingerprint(index, meta, {k: hp[k] for k in PLAN_FIELDS})
        return self._fingerprint

    # ------------------------------------------------------------------------------------------ setup

    def _rank_and_world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def _dataset(
        self, shards: str, labels: str | None, train: bool, rank: int, world: int, **lengths: Any
    ) -> ShardBatchDataset:
        """The dataset of one split; ``lengths`` overrides ``max_sample_size``/``min_sample_size``."""
        hp = self.hparams
        lengths = {"max_sample_size": hp.max_sample_size, "min_sample_size": hp.min_sample_size, **lengths}
        return ShardBatchDataset(
            shards,
            labels,
            train=train,
            budget=self.budget,
            **lengths,
            pad=hp.pad if train else True,
            sort_window=hp.sort_window,
            seed=hp.seed,
            rank=rank,
            world_size=world,
            cache_dir=hp.cache_dir,
            retry=self.retry,
        )

    def setup(self, stage: str | None = None) -> None:
        """Plan the datasets of ``stage`` for this process's rank (from torch.distributed, else the
        Trainer)."""
        hp = self.hparams
        self._check_label_folders()
        rank, world = self._rank_and_world()
        if stage in (None, "fit") and self.train_dataset is None:
            if hp.train_shards is None:
                raise ValueError("ShardDataModule: train_shards is required for fit")
            self.train_dataset = self._dataset(hp.train_shards, hp.train_labels, True, rank, world)
            self._report("train", self.train_dataset, 0)
        if stage in (None, "fit", "validate") and self.val_dataset is None and hp.val_shards is not None:
            self.val_dataset = self._dataset(hp.val_shards, hp.val_labels, False, rank, world)
            self._report("val", self.val_dataset, 0)
        if stage in (None, "test") and self.test_dataset is None and hp.test_shards is not None:
            self.test_dataset = self._dataset(hp.test_shards, hp.test_labels, False, rank, world)
            self._report("test", self.test_dataset, 0)
        if stage in (None, "predict") and self.predict_dataset is None and hp.predict_shards is not None:
            # Features for labels must cover whole utterances, short ones included: no crop, no length filter
            # beyond the one model frame that 400 samples make.
            self.predict_dataset = self._dataset(
                hp.predict_shards, None, False, rank, world, max_sample_size=None, min_sample_size=400
            )
            self._report("predict", self.predict_dataset, 0)

    @staticmethod
    def _report(name: str, dataset: ShardBatchDataset, epoch: int) -> None:
        s = dataset.epoch_stats(epoch)
        msg = (
            f"{name} data (epoch {epoch}): {s['utterances']} utterances, {s['seconds'] / 3600:.2f} h in "
            f"{s['batches']} batches, {s['batches_per_rank']} per rank x {dataset.world_size} rank(s); "
            f"{s['seconds_after_crop'] / 3600:.2f} h after cropping; "
            f"{s['too_short']} utterances shorter than min_sample_size left out "
            f"({s['too_short_seconds']:.1f} s)"
        )
        if s["dropped_batches"]:
            msg += (
                f"; {s['dropped_batches']} batches ({s['dropped_utterances']} utterances) dropped to give "
                "every rank the same count"
            )
        rank_zero_info(msg)

    # ------------------------------------------------------------------------------------------ epochs

    def set_epoch(self, epoch: int) -> None:
        """Epoch for the next training pass when no Trainer is attached (with a Trainer its epoch is used)."""
        self._epoch = int(epoch)

    def _current_epoch(self) -> int:
        if self.trainer is None:
            return self._epoch
        # The epoch Lightning gives samplers' set_epoch. Unlike trainer.current_epoch it is already right when
        # a run resumed from an end-of-epoch checkpoint creates its first iterator.
        return self.trainer.fit_loop.epoch_progress.current.processed

    def _steps_done(self) -> int:
        """Batches Lightning has trained in the current epoch (restored from a checkpoint on resume)."""
        if self.trainer is None:
            return 0
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.ready

    def _start_train_pass(self, epoch: int, start: int) -> None:
        ds = self.train_dataset
        if start > 0:
            total = len(ds.global_batches(epoch))
            left_out = (total - start) % ds.world_size
            rank_zero_info(
                f"train epoch {epoch} resumed at global batch {start} of {total}: {ds.pass_length(start)} more "
                f"batches per rank x {ds.world_size} rank(s)"
                + (
                    f"; the last {left_out} batch{'es do' if left_out > 1 else ' does'} not fill a step and "
                    f"{'are' if left_out > 1 else 'is'} left out"
                    if left_out
                    else ""
                )
            )
        elif epoch > 0:
            stats = ds.epoch_stats(epoch)
            if stats["dropped_batches"]:
                rank_zero_info(
                    f"train epoch {epoch}: {stats['dropped_batches']} batches ({stats['dropped_utterances']} "
                    "utterances) dropped to give every rank the same count"
                )

    # ------------------------------------------------------------------------------------------ loaders

    def _loader(self, dataset: ShardBatchDataset, train: bool) -> ShardLoader:
        hp = self.hparams
        extra = {"prefetch_factor": hp.prefetch_factor} if hp.num_workers > 0 else {}
        loader = ShardLoader(
            dataset,
            batch_size=None,  # the dataset yields whole batches
            num_workers=hp.num_workers,
            pin_memory=hp.pin_memory,
            # Every DataLoader iterator draws a base seed from its generator, by default the global torch one. A
            # private generator keeps iterator creation (each epoch, each validation) out of the training random
            # streams, so a run resumed from an end-of-epoch checkpoint replays them exactly. The dataset's own
            # randomness is seeded by (seed, epoch, batch) and does not use the worker seeds.
            generator=torch.Generator().manual_seed(hp.seed),
            epoch_fn=self._current_epoch if train else None,
            on_pass_start=self._start_train_pass if train else None,
            steps_fn=self._steps_done if train else None,
            **extra,
        )
        self._loaders.add(loader)
        return loader

    def _release_loaders(self) -> None:
        for loader in list(self._loaders):
            loader.release()

    def teardown(self, stage: str) -> None:
        """Stop the loaders' worker processes when the Trainer finishes ``stage``."""
        self._release_loaders()

    def on_exception(self, exception: BaseException) -> None:
        """Stop the loaders' worker processes when the run fails (Lightning drops its iterators then)."""
        self._release_loaders()

    def train_dataloader(self) -> ShardLoader:
        if self.train_dataset is None:
            self.setup("fit")
        loader = self._loader(self.train_dataset, True)
        loader.restart_epoch_on_mismatch = self.restart_epoch_on_mismatch
        return loader

    def val_dataloader(self) -> ShardLoader | list:
        if self.val_dataset is None and self.hparams.val_shards is not None:
            self.setup("validate")
        return [] if self.val_dataset is None else self._loader(self.val_dataset, False)

    def test_dataloader(self) -> ShardLoader:
        if self.test_dataset is None:
            self.setup("test")
        if self.test_dataset is None:
            raise ValueError("ShardDataModule: test_shards is not set")
        return self._loader(self.test_dataset, False)

    def predict_dataloader(self) -> ShardLoader:
        if self.predict_dataset is None:
            self.setup("predict")
        if self.predict_dataset is None:
            raise ValueError("ShardDataModule: predict_shards is not set")
        return self._loader(self.predict_dataset, False)
