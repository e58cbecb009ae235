"""Save, requeue and stop at a step boundary when the cluster announces the end of the job (SLURM's SIGUSR1).

Lightning's own SLURM handler saves *inside* the signal handler, at whatever point of a step the signal lands
(mid-forward, with loader batches in flight, the optimizer and the step counter not yet advanced); it also calls
``Trainer.save_checkpoint`` (a collective barrier) and ``logger.finalize("finished")`` (which ends the W&B run)
from the handler. A run resumed from such a checkpoint is not the run that was interrupted. Here the handler only
sets a flag; at the next step boundary where the ranks compare flags (every ``check_every`` steps: one scalar
all-reduce, none in a single process) every rank saves ``last.ckpt`` exactly as a periodic checkpoint is saved,
rank 0 requeues the job (``scontrol requeue``) and the fit ends normally. The requeued job continues from that
checkpoint (:func:`hubert_lit.checkpoint.resolve_resume`), bit-identical to an uninterrupted run.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` takes (``<array job>_<task>`` for array jobs), or None outside SLURM."""
    array_job, array_task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        job = f"{array_job}_{array_task}"
    else:
        job = os.environ.get("SLURM_JOB_ID")
    if job is not None and not re.fullmatch(r"[0-9_]+", job):
        raise ValueError(f"SLURM job id {job!r} is not a number")
    return job


class RequeueOnSignal(Callback):
    """On ``signal_name``: save ``last.ckpt`` at the next agreed step boundary, requeue the SLURM job, stop.

    Args:
        signal_name: the signal that announces the end (``sbatch --signal=SIGUSR1@90``).
        check_every: steps between the ranks' comparisons of the flag (1 in a single process, where it costs
            nothing); the save happens at most this many steps after the signal reached every rank.
        requeue: run ``scontrol requeue <job id>`` (under SLURM) after saving.
    """

    def __init__(self, signal_name: str = "SIGUSR1", check_every: int = 10, requeue: bool = True) -> None:
        if not hasattr(signal, signal_name):
            raise ValueError(f"unknown signal {signal_name!r}")
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.signal_name, self.check_every, self.requeue = signal_name, check_every, requeue
        self._received = False
        self._previous: Any = None
        self.stopped_at: int | None = None

    def _handler(self, signum: int, frame: Any) -> None:
        self._received = True  # only a flag: everything else happens at a step boundary

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # Installed before Trainer.fit registers Lightning's own handlers, which then leave this signal alone.
        if stage == "fit" and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(getattr(signal, self.signal_name), self._handler)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self._previous is not None:
            signal.signal(getattr(signal, self.signal_name), self._previous)
            self._previous = None

    def _agreed(self, trainer: pl.Trainer, batch_idx: int) -> bool:
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return False  # inside an accumulation window: not a step boundary
        if trainer.world_size == 1:
            return self._received
        if trainer.global_step % self.check_every:
            return False
        flag = torch.tensor(float(self._received), device=trainer.strategy.root_device)
        return bool(trainer.strategy.reduce(flag, reduce_op="sum") > 0)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self._agreed(trainer, batch_idx):
            return
        from hubert_lit.lit.callbacks import RunCheckpoint

        saver = next((c for c in trainer.callbacks if isinstance(c, RunCheckpoint)), None)
        if saver is None:
            raise RuntimeError(f"{self.signal_name} received but no RunCheckpoint callback saves the run")
        path = saver.save_now(trainer, reason=f"{self.signal_name} received")
        self.stopped_at = trainer.global_step
        job = slurm_job_id()
        if self.requeue and job is not None and trainer.is_global_zero:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
            if result.returncode == 0:
                log.info("requeued SLURM job %s; it resumes from %s", job, path)
            else:
                log.warning(
                    "scontrol requeue %s failed (%s): %s", job, result.returncode, result.stderr.strip()
                )
        trainer.should_stop = True
