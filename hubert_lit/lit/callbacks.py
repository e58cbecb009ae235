"""Trainer plug-ins for pretraining: atomic checkpoint files, exact RNG replay on resume, feature dumps.

* :class:`AtomicCheckpointIO` writes every checkpoint to a temporary file *in the target folder*, fsyncs it and
  renames it over the destination. Lightning's own ``_atomic_save`` writes through an fsspec transaction whose
  temporary file lives in the system temp folder; when that is a different file system from the checkpoint
  folder (node-local ``/tmp`` vs. shared storage on a cluster), the final ``shutil.move`` degrades to a copy
  straight into the destination, so a job killed mid-copy leaves a truncated ``last.ckpt``.
* :class:`RNGStateCallback` stores the torch (CPU and CUDA), NumPy and Python random states of every rank in the
  checkpoint and puts them back right before the first training step after a resume, so dropout, LayerDrop
  and masking replay exactly. Validation runs under a fixed seed and leaves the training RNG untouched, so
  validation batches get the same masks at every evaluation and a resumed run (which skips the validation the
  interrupted run may have done) stays in step with an uninterrupted one.
* :class:`FeatureWriter` is the prediction writer of ``python -m hubert_lit predict``: one ``.npz`` per shard,
  utterance id -> (frames, dim) features of the chosen layer.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import BasePredictionWriter, Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from hubert_lit.atomic import atomic_torch_save, atomic_write
from hubert_lit.checkpoint import DATA_KEY, RNG_KEY

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- checkpoints
def _is_local_path(path: str | os.PathLike) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are atomic (temp file in the same folder + ``os.replace``) and
    whose reads never unpickle code.

    Remote URLs (``s3://`` ...) go through Lightning's fsspec path unchanged. Every read uses
    ``torch.load(weights_only=True)``, whatever the caller asks: Lightning defaults to ``weights_only=False`` for
    an ``http(s)://`` ``ckpt_path``, and a checkpoint is a user's file (suite checkpoints hold only tensors,
    numbers, strings and containers, so they need nothing more).
    """

    def load_checkpoint(
        self, path, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} does not support storage_options, got {storage_options!r}"
            )
        if not _is_local_path(path):
            super().save_checkpoint(checkpoint, path)
            return
        path = Path(str(path).removeprefix("file://"))
        try:
            atomic_torch_save(checkpoint, path)
        except OSError as err:
            previous = None if err.errno != errno.ENOSPC or path.exists() else _newest_checkpoint(path.parent)
            if previous is None:
                raise
            raise OSError(
                errno.ENOSPC, f"no space left on device writing {path} (previous checkpoint {previous} kept)"
            ) from err


def _newest_checkpoint(folder: Path) -> Path | None:
    found = [p for p in folder.glob("*.ckpt") if p.is_file() and p.stat().st_size > 0]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` (every ``every_n_train_steps`` plus ``last.ckpt``) that also saves the end of a fit.

    Lightning saves only on its step trigger, so a fit that stops at a ``max_steps`` not divisible by the
    interval, on ``max_time``, an early stop or a requeue would leave ``last.ckpt`` at the last periodic step. Here
    ``last.ckpt`` always holds the state of the last step taken, and the closing log line says which step that is.
    """

    def save_now(self, trainer: pl.Trainer, reason: str) -> Path:
        """Write ``last.ckpt`` now (every rank calls this: saving is a collective); returns its path."""
        path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        if self._last_global_step_saved != trainer.global_step or self.last_model_path != str(path):
            trainer.save_checkpoint(path, self.save_weights_only)
            self.last_model_path = str(path)
            self._last_global_step_saved = trainer.global_step
        rank_zero_info(f"{reason}: saved the state of step {trainer.global_step} to {path}")
        return path

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.save_last and trainer.global_step > 0 and not trainer.sanity_checking:
            self.save_now(trainer, reason="fit ended")


# ----------------------------------------------------------------------------------------------- RNG states
def collect_rng_states() -> dict[str, Any]:
    """The torch CPU, CUDA (when initialised), NumPy and Python global random states of this process.

    Only tensors, ints, floats, strings and tuples, so checkpoints still load with ``torch.load(weights_only=True)``
    (Lightning's default).
    """
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (
            str(name),
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_states`."""
    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def seed_all(seed: int) -> None:
    """Seed the torch (all devices), NumPy and Python global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class DataFingerprint(Callback):
    """Writes the DataModule's :meth:`~hubert_lit.data.datamodule.ShardDataModule.fingerprint` (what the run trains
    on) into every checkpoint, for the CLI's check when the run is resumed."""

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "fingerprint"):
            checkpoint[DATA_KEY] = datamodule.fingerprint()


class RNGStateCallback(Callback):
    """Checkpoint every rank's RNG states and restore them before the first training step of a resumed run.

    Args:
        validation_seed: seed of the global generators during validation (then the training states are put
            back). Each rank adds its global rank, so ranks draw different masks.
    """

    def __init__(self, validation_seed: int = 1234) -> None:
        self.validation_seed = validation_seed
        self._pending: dict[str, Any] | None = None
        self._saved_for_validation: dict[str, Any] | None = None

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        states = collect_rng_states()
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, states)
        else:
            gathered = [states]
        checkpoint[RNG_KEY] = gathered

    def on_load_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict
    ) -> None:
        per_rank = checkpoint.get(RNG_KEY)
        if not per_rank:
            log.warning(
                "checkpoint has no RNG states (not written by hubert_lit?); the resumed run will not "
                "replay dropout/masking exactly"
            )
            return
        if len(per_rank) != trainer.world_size:
            log.warning(
                "checkpoint holds RNG states of %d ranks but this run has %d; random streams will differ from "
                "the original run",
                len(per_rank),
                trainer.world_size,
            )
        self._pending = per_rank[trainer.global_rank % len(per_rank)]

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # Applied here rather than at load time: creating the data iterator and the sanity check happen in
        # between and would otherwise shift the streams.
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Snapshot here, not in on_validation_start: Lightning creates the validation data iterator before that
        # hook, and every DataLoader iterator draws its base seed from the global torch generator.
        self._saved_for_validation = collect_rng_states()

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved_for_validation is None:  # validation outside a training step (sanity check, validate)
            self._saved_for_validation = collect_rng_states()
        seed_all(self.validation_seed + trainer.global_rank)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved_for_validation is not None:
            set_rng_states(self._saved_for_validation)
            self._saved_for_validation = None


# ----------------------------------------------------------------------------------------------- predict
def save_feature_npz(path: Path, features: dict[str, np.ndarray]) -> None:
    """Write ``{utterance id: array}`` as an ``np.savez``-style archive (one ``<id>.npy`` member), atomically."""

    def write(f) -> None:
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED) as zf:
            for utt_id, arr in features.items():
                with zf.open(f"{utt_id}.npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)

    atomic_write(path, write)


class FeatureWriter(BasePredictionWriter):
    """Write the features ``predict_step`` returns as ``<out_dir>/<shard name>.npz`` (utterance id -> array).

    ``predict_step`` returns a dict with ``"ids"`` (utterance ids) and ``"features"`` (list of (frames, dim)
    arrays); the shard of each utterance comes from the prediction's ``"shards"`` when given, else from the
    ``index`` of the predict data set (a :class:`~hubert_lit.data.dataset.ShardBatchDataset`). A shard is written
    (and its memory freed) as soon as every utterance this rank was planned to see in it has arrived (loader
    workers interleave batches, so arrival order alone does not tell); the rest at the end of the epoch. With
    several ranks each rank writes the utterances it saw as ``<shard>.rank<r>.npz``.

    Args:
        out_dir: output folder (created).
        dtype: stored dtype; ``float16`` halves the size.
    """

    def __init__(self, out_dir: str, dtype: str = "float32") -> None:
        super().__init__(write_interval="batch")
        if dtype not in ("float16", "float32"):
            raise ValueError(f"FeatureWriter.dtype must be 'float16' or 'float32', got {dtype!r}")
        self.out_dir = Path(out_dir)
        self.dtype = np.dtype(dtype)
        self._buffer: dict[str, dict[str, np.ndarray]] = defaultdict(dict)
        self._shard_of: dict[str, str] = {}
        self._expected: dict[str, set[str]] = {}
        self._written: set[str] = set()

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loaders = trainer.predict_dataloaders
        for loader in loaders if isinstance(loaders, list | tuple) else [loaders]:
            dataset = getattr(loader, "dataset", None)
            index = getattr(dataset, "index", None)
            if index is not None:
                self._shard_of.update({u.id: u.shard for u in index.utterances})
            if hasattr(dataset, "rank_batches"):
                for planned in dataset.rank_batches(0):
                    for utt in planned.rows:
                        self._expected.setdefault(utt.shard, set()).add(utt.id)

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        shards = prediction.get("shards") or [None] * len(prediction["ids"])
        for utt_id, shard, feats in zip(prediction["ids"], shards, prediction["features"], strict=True):
            shard = shard or self._shard_of.get(utt_id)
            if shard is None:
                raise ValueError(f"FeatureWriter: no shard known for utterance {utt_id!r}")
            if utt_id in self._buffer[shard] or shard in self._written:
                raise ValueError(f"FeatureWriter: utterance {utt_id!r} of shard {shard!r} predicted twice")
            self._buffer[shard][utt_id] = np.asarray(feats, dtype=self.dtype)
            if shard in self._expected and self._expected[shard] <= self._buffer[shard].keys():
                self._flush(trainer, [shard])

    def _flush(self, trainer: pl.Trainer, shards: list[str] | None = None) -> None:
        for shard in list(self._buffer) if shards is None else shards:
            feats = self._buffer.pop(shard)
            self._written.add(shard)
            if not feats:
                continue
            suffix = "" if trainer.world_size == 1 else f".rank{trainer.global_rank}"
            path = self.out_dir / f"{shard}{suffix}.npz"
            save_feature_npz(path, feats)
            log.info("wrote %d utterances to %s", len(feats), path)

    def on_predict_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush(trainer)
