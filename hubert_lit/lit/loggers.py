"""The run's loggers: one CSV log and one W&B run per run folder, whatever the number of launches.

A job that is requeued, killed and relaunched, or continued by hand, is one run: the W&B run id is written to
``<run dir>/wandb_id`` at the first launch and reused by every later one (W&B resumes the run), and the CSV log
continues in the version folder of the run's last launch. Lightning's own CSV writer deletes an existing
``metrics.csv``, and its W&B logger starts a new run on every launch.
"""

from __future__ import annotations

import csv
import os
import re
import secrets
from pathlib import Path

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from hubert_lit.atomic import atomic_write

WANDB_ID_FILE = "wandb_id"
WANDB_MODES = ("offline", "online", "disabled", "env")
_VERSION = re.compile(r"version_(\d+)")


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer, except that an existing ``metrics.csv`` is continued instead of deleted."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(header)  # new metrics rewrite the header over the union


class AppendingCSVLogger(CSVLogger):
    """``CSVLogger`` writing to a given version folder and appending to its ``metrics.csv``."""

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def csv_version(csv_dir: Path, resuming: bool) -> int:
    """The version folder of this launch: the last one when the run continues, a new one otherwise."""
    versions = [int(m.group(1)) for p in csv_dir.glob("version_*") if (m := _VERSION.fullmatch(p.name))]
    if not versions:
        return 0
    return max(versions) if resuming else max(versions) + 1


def is_global_zero_from_env() -> bool:
    """Whether this process will be global rank 0, from the launcher's variables (before torch.distributed
    exists): torchrun's ``RANK``, SLURM's ``SLURM_PROCID``, Lightning's ``NODE_RANK`` / ``LOCAL_RANK``."""
    return all(
        os.environ.get(name, "0") == "0" for name in ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")
    )


def wandb_run_id(run_dir: Path) -> str:
    """The run's W&B id: the sweep agent's, else ``<run dir>/wandb_id`` (written at the first launch)."""
    agent = os.environ.get("WANDB_RUN_ID")
    if agent:
        return agent
    path = run_dir / WANDB_ID_FILE
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    if is_global_zero_from_env():  # the other ranks never log to W&B
        atomic_write(path, lambda f: f.write(f"{run_id}\n".encode()))
    return run_id


def wandb_logger(run_dir: Path, name: str, project: str, mode: str) -> WandbLogger | None:
    """The run's W&B logger, resuming its run; None when W&B is disabled (``mode`` or ``WANDB_MODE=disabled``).

    ``mode`` is the config's ``run.wandb_mode`` and wins over an inherited ``WANDB_MODE`` (a cluster profile's
    ``export WANDB_MODE=offline`` does not silently turn an online run offline); ``mode="env"`` defers to
    ``WANDB_MODE``, and ``WANDB_MODE=disabled`` always disables W&B (tests, quick runs).
    """
    if mode == "env":
        mode = os.environ.get("WANDB_MODE", "offline")
    if mode == "disabled" or os.environ.get("WANDB_MODE") == "disabled":
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    sweep = os.environ.get("WANDB_SWEEP_ID")
    return WandbLogger(
        project=project,
        name=name,
        save_dir=str(run_dir),
        id=wandb_run_id(run_dir),
        resume="allow",
        group=f"sweep-{sweep}" if sweep else None,
        mode=mode,
        log_model=False,
    )
