"""LightningDataModule over webdataset tar shards and k-means label files, with exact mid-epoch resume."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from torchdata.stateful_dataloader import StatefulDataLoader

from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.data.batching import BatchBudget
from hubert_lit.data.dataset import ShardBatchDataset
from hubert_lit.data.label_files import load_label_meta


class ShardLoader(StatefulDataLoader):
    """StatefulDataLoader for :class:`ShardBatchDataset` that sets the dataset's epoch before each pass.

    Lightning calls ``set_epoch`` only on samplers, which an iterable dataset does not have, so each new pass
    takes its epoch from ``epoch_fn`` (the DataModule passes the Trainer's epoch) and then calls
    ``on_epoch_start(epoch)``. A state saved after the last batch of an epoch (Lightning does not fetch past
    ``len(loader)``, so the iterator never reports itself finished) is marked complete: loading it makes the
    next pass start the following epoch afresh. That epoch comes from the state, not from ``epoch_fn``,
    because on resume Lightning creates the iterator before it advances its own epoch counter.
    """

    def __init__(
        self,
        dataset: ShardBatchDataset,
        *args: Any,
        epoch_fn: Callable[[], int] | None = None,
        on_epoch_start: Callable[[int], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, *args, **kwargs)
        self._epoch_fn = epoch_fn
        self._on_epoch_start = on_epoch_start
        self._next_epoch: int | None = None

    def _get_iterator(self):
        if self._next_epoch is not None:
            epoch, self._next_epoch = self._next_epoch, None
        else:
            epoch = self._epoch_fn() if self._epoch_fn is not None else self.dataset.epoch
        self.dataset.set_epoch(epoch)
        if self._on_epoch_start is not None:
            self._on_epoch_start(epoch)
        return super()._get_iterator()

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # _num_yielded: batches the current iterator has returned (a DataLoader iterator attribute).
        done = self._iterator is not None and self._iterator._num_yielded >= len(self)
        return {"loader": state, "epoch": self.dataset.epoch, "epoch_complete": done}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "loader" not in state_dict:  # a plain StatefulDataLoader state
            super().load_state_dict(state_dict)
        elif state_dict["epoch_complete"]:
            self._next_epoch = state_dict["epoch"] + 1
            super().load_state_dict({})
        else:
            super().load_state_dict(state_dict["loader"])


class ShardDataModule(pl.LightningDataModule):
    """HuBERT pretraining data from shard folders (``python -m hubert_lit shard``) and label folders
    (``python -m hubert_lit label``).

    Batches are dicts with ``waveforms`` (B, L) float32, ``lengths`` (B,) int64, ``ids`` and, when labels are
    configured, ``labels`` (B, T) int64 at 50 Hz (padding -100).

    Training: the shard order is shuffled by ``(seed, epoch)`` before the split by rank and worker; batches
    are planned from ``index.json`` so every rank yields the same number of batches (the few batches that do
    not divide evenly among ranks are dropped and reported each epoch); crops use random offsets seeded by
    ``(seed, epoch, batch)`` so a resumed run sees exactly the batches of an uninterrupted one. Validation and
    test: index order, offset-0 crops, padding (``pad`` is ignored), every utterance exactly once across
    ranks.

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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        max_samples = None if max_batch_seconds is None else round(max_batch_seconds * SAMPLE_RATE)
        self.budget = BatchBudget(max_samples=max_samples, batch_size=batch_size)
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {num_workers}")
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

    # ------------------------------------------------------------------------------------------ setup

    def _rank_and_world(self) -> tuple[int, int]:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        return 0, 1

    def _dataset(
        self, shards: str, labels: str | None, train: bool, rank: int, world: int
    ) -> ShardBatchDataset:
        hp = self.hparams
        return ShardBatchDataset(
            shards,
            labels,
            train=train,
            budget=self.budget,
            max_sample_size=hp.max_sample_size,
            min_sample_size=hp.min_sample_size,
            pad=hp.pad if train else True,
            sort_window=hp.sort_window,
            seed=hp.seed,
            rank=rank,
            world_size=world,
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
            self.predict_dataset = ShardBatchDataset(
                hp.predict_shards,
                None,
                train=False,
                budget=self.budget,
                max_sample_size=None,
                min_sample_size=400,
                pad=True,
                sort_window=hp.sort_window,
                seed=hp.seed,
                rank=rank,
                world_size=world,
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

    def _start_train_epoch(self, epoch: int) -> None:
        if epoch > 0:
            stats = self.train_dataset.epoch_stats(epoch)
            if stats["dropped_batches"]:
                rank_zero_info(
                    f"train epoch {epoch}: {stats['dropped_batches']} batches ({stats['dropped_utterances']} "
                    "utterances) dropped to give every rank the same count"
                )

    # ------------------------------------------------------------------------------------------ loaders

    def _loader(self, dataset: ShardBatchDataset, train: bool) -> ShardLoader:
        hp = self.hparams
        extra = {"prefetch_factor": hp.prefetch_factor} if hp.num_workers > 0 else {}
        return ShardLoader(
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
            on_epoch_start=self._start_train_epoch if train else None,
            **extra,
        )

    def train_dataloader(self) -> ShardLoader:
        if self.train_dataset is None:
            self.setup("fit")
        return self._loader(self.train_dataset, True)

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
