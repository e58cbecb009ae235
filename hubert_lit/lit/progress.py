"""Progress of a fit as plain log lines, for jobs without a terminal (a SLURM ``.out`` file, ``make demo``'s log).

Every ``every_n_steps`` optimizer steps rank 0 prints one line::

    step 1200/250000 (0.5%) | loss 4.213 | masked acc 0.231 | lr 4.88e-04 | 811 audio-s/s | elapsed 0:42:10 | ETA 3d 04:11

Values are the last logged ones (``train/loss``, ``train/masked_acc`` or the student's for distillation,
``train/lr``, ``train/audio_sec_per_sec``); the ETA extrapolates this launch's step rate to ``max_steps``.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

# (label, logged keys in order of preference, format)
FIELDS = (
    ("loss", ("train/loss",), "{:.3f}"),
    ("masked acc", ("train/masked_acc", "train/student_masked_acc"), "{:.3f}"),
    ("lr", ("train/lr",), "{:.2e}"),
    ("audio-s/s", ("train/audio_sec_per_sec",), "{:.0f}"),
)


def format_duration(seconds: float) -> str:
    """``3d 04:11:05`` / ``0:42:10``."""
    seconds = int(max(seconds, 0))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours:d}:{minutes:02d}:{secs:02d}" if not days else f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


class ProgressLog(Callback):
    """Print a progress line on rank 0 every ``every_n_steps`` optimizer steps (and at the end of the fit)."""

    def __init__(self, every_n_steps: int = 50, stream: Any = None) -> None:
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.stream = stream
        self._start: float | None = None
        self._start_step = 0
        self._last_printed = -1

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start, self._start_step = time.perf_counter(), trainer.global_step

    def line(self, trainer: pl.Trainer) -> str:
        step, total = trainer.global_step, trainer.max_steps
        parts = [
            f"step {step}/{total} ({100 * step / total:.1f}%)" if total and total > 0 else f"step {step}"
        ]
        metrics = trainer.callback_metrics
        for label, keys, fmt in FIELDS:
            key = next((k for k in keys if k in metrics), None)
            if key is not None:
                value = float(metrics[key])
                parts.append(f"{label} {fmt.format(value) if math.isfinite(value) else value}")
        elapsed = time.perf_counter() - (self._start or time.perf_counter())
        parts.append(f"elapsed {format_duration(elapsed)}")
        done = step - self._start_step
        if total and total > 0 and done > 0:
            parts.append(f"ETA {format_duration(elapsed / done * (total - step))}")
        return " | ".join(parts)

    def _print(self, trainer: pl.Trainer) -> None:
        if trainer.is_global_zero and trainer.global_step != self._last_printed:
            self._last_printed = trainer.global_step
            print(self.line(trainer), file=self.stream or sys.stdout, flush=True)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step > 0 and trainer.global_step % self.every_n_steps == 0:
            self._print(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._print(trainer)
