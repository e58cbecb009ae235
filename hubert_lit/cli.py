"""``python -m hubert_lit fit|validate|test|predict``: the LightningCLI of the suite.

Configs compose left to right (``--config a.yaml --config b.yaml --model.lr=1e-4``; later wins). A config file
may name the files it extends with a top-level ``base:`` (a path or a list, relative to the file); they are
inserted as ``--config`` arguments in front of it (:func:`hubert_lit.run_config.expand_bases`), so
``--config configs/pretrain/vanilla_it1.yaml`` is the same as ``--config configs/pretrain/_base.yaml --config
configs/pretrain/_iter1.yaml --config configs/pretrain/vanilla_it1.yaml``. (jsonargparse's own nested ``config:``
key is not used: a nested group in the including file silently resets that whole group.)

On top of Lightning's options the suite adds:

* ``run.*``: ``run.name`` and ``run.root`` give the run folder ``<root>/<name>`` (checkpoints in
  ``<run dir>/checkpoints``, logs in ``<run dir>/csv/version_N`` and ``<run dir>/wandb``), the loggers to use
  (``csv``, ``wandb``; W&B offline by default) and the W&B project. One run folder is one run, however many
  launches it takes: ``run.resume=auto`` (default) continues from the run's newest checkpoint, so one command
  both starts and continues a run (an explicit ``--ckpt_path FILE`` wins); the W&B run id is kept in
  ``<run dir>/wandb_id`` and the CSV log continues in the last version folder (:mod:`hubert_lit.lit.loggers`).
  ``run.requeue_signal`` (SIGUSR1) saves, requeues and stops at a step boundary (:mod:`hubert_lit.lit.requeue`);
  ``run.progress`` shows a progress bar on a terminal and progress lines otherwise; ``run.target_global_batch_
  seconds`` sets ``trainer.accumulate_grad_batches`` from the world size. Setting ``trainer.logger`` yourself
  replaces the loggers.
* ``checkpoint.*``: the checkpoint callback (every ``every_n_train_steps``, plus ``last.ckpt``, which also holds
  the state of the last step of a fit however it ended), always present. Checkpoints are written atomically
  (:class:`~hubert_lit.lit.callbacks.AtomicCheckpointIO`), and carry every rank's RNG states
  (:class:`~hubert_lit.lit.callbacks.RNGStateCallback`, ``rng.*``) and the data-loader state, so a resumed run
  continues exactly.
* ``demo``: free-form stage settings of ``experiments/demo.py`` (ignored here).
* Under ``wandb agent`` (``WANDB_SWEEP_ID`` set) the run folder is ``<root>/<name>-<WANDB_RUN_ID>``.
* ``predict_out``, ``predict_layer``: ``predict`` writes the features of that encoder layer there, one ``.npz``
  per shard. With ``--ckpt_path <file>`` Lightning takes the model's settings from the checkpoint's saved
  hyperparameters (so ``predict --ckpt_path x.ckpt`` needs no model config).

Before anything is built the parsed config is checked across fields (label ``num_classes`` in the labels'
``meta.json`` against ``model.num_classes``, shard and label folders exist); problems exit with status 2 and a
message naming the key.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_info

from hubert_lit.atomic import TEMP_SUFFIX
from hubert_lit.checkpoint import (
    CONFIG_KEY,
    DATA_KEY,
    ResumePoint,
    checkpoint_step,
    resolve_resume,
    stale_hpc_checkpoints,
)
from hubert_lit.data.datamodule import ShardDataModule
from hubert_lit.data.fingerprint import fingerprint_differences
from hubert_lit.lit.base import HubertLightningModule
from hubert_lit.lit.callbacks import (
    AtomicCheckpointIO,
    DataFingerprint,
    FeatureWriter,
    RNGStateCallback,
    RunCheckpoint,
)
from hubert_lit.lit.loggers import (
    WANDB_MODES,
    AppendingCSVLogger,
    csv_version,
    is_global_zero_from_env,
    wandb_logger,
)
from hubert_lit.lit.pretrain import HubertPretrainModule
from hubert_lit.lit.progress import ProgressLog
from hubert_lit.lit.requeue import RequeueOnSignal
from hubert_lit.models import HubertConfig
from hubert_lit.run_config import RunConfigError, expand_bases

log = logging.getLogger(__name__)

LOGGER_NAMES = ("csv", "wandb")
RESUME_MODES = ("auto", "never")
PROGRESS_MODES = ("auto", "bar", "log", "none")


# Third-party warnings that say nothing actionable about a run of this suite (they would bury its own messages):
# Lightning 2.6 uses a deprecated pytree check; our
# IterableDataset's __len__ is exact by construction (every rank and worker has a planned batch count).
KNOWN_HARMLESS_WARNINGS = (
    "LightningCLI's args parameter is intended",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    "Your `IterableDataset` has `__len__` defined",
)


class ConfigError(ValueError):
    """A parsed config that is inconsistent across fields (checked before anything is built)."""


# ----------------------------------------------------------------------------------------------- base: expansion
def expand_config_bases(argv: list[str]) -> list[str]:
    """Insert ``--config <base>`` in front of every ``--config <file>`` whose file has a ``base:`` key."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        value = None
        if arg in ("--config", "-c") and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
        elif arg.startswith("--config="):
            value, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        paths = expand_bases(value)
        for p in paths[:-1]:
            out += ["--config", str(p)]
        out += ["--config", value]
        if len(paths) > 1:
            out.append("--base=null")  # expanded: the resolved/saved config must not expand it again
    return out


# ----------------------------------------------------------------------------------------------- checks
def _data_dirs(data: Namespace) -> dict[str, Any]:
    """The folder-valued ``data.*`` settings: key -> path (or list of paths)."""
    return {
        key: data.get(key)
        for key in (
            "train_shards",
            "val_shards",
            "test_shards",
            "predict_shards",
            "train_labels",
            "val_labels",
            "test_labels",
            "labels",
        )
        if data.get(key) is not None
    }


# Data stages whose batches a module trains or evaluates on (with labels), per subcommand.
LABELLED_STAGES = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


def _module_class(class_path: str) -> type[HubertLightningModule]:
    """The LightningModule class a ``model.class_path`` names (already validated by jsonargparse)."""
    import importlib

    module_name, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module_name), name)
    if not (isinstance(cls, type) and issubclass(cls, HubertLightningModule)):
        raise ConfigError(f"model.class_path: {class_path} is not a hubert-lit module")
    return cls


def check_config(cfg: Namespace, subcommand: str) -> None:
    """Cross-field checks of a parsed ``cfg`` of ``subcommand``; raises :class:`ConfigError`."""
    from hubert_lit.data.label_files import load_label_meta
    from hubert_lit.data.locations import is_local

    data = cfg.get("data")
    model = cfg.get("model")
    module: type[HubertLightningModule] = HubertPretrainModule
    if model is not None and model.get("init_args") is not None:  # model named by class_path (subclass mode)
        module = _module_class(str(model.get("class_path")))
        model = model.init_args
    if model is not None and data is not None and module.requires_labels(model):
        # A module that trains on the batch's "labels" would otherwise build everything and then stop at its
        # first step with a bare KeyError.
        for stage in LABELLED_STAGES.get(subcommand, ()):
            if data.get(f"{stage}_shards") is not None and data.get(f"{stage}_labels") is None:
                raise ConfigError(
                    f"data.{stage}_labels is not set: {module.__name__} needs the labels folder of "
                    f"data.{stage}_shards (write one with `python -m hubert_lit label`)"
                )
    if data is not None:
        for key, value in _data_dirs(data).items():
            for path in value if isinstance(value, list) else [value]:
                if not is_local(str(path)):  # a URL or pipe: the DataModule reads its index.json at setup
                    continue
                if not Path(path).is_dir():
                    raise ConfigError(f"data.{key}: folder {path} does not exist")
                if key.endswith("_shards") and not (Path(path) / "index.json").is_file():
                    raise ConfigError(
                        f"data.{key}: {path} has no index.json (write shards with `python -m hubert_lit shard`)"
                    )
        label_keys = [k for k in _data_dirs(data) if k.endswith("labels")]
        metas = {}
        for key in label_keys:
            try:
                metas[key] = load_label_meta(data.get(key))
            except (FileNotFoundError, ValueError) as err:
                raise ConfigError(f"data.{key}: {err}") from err
        classes = {k: m["num_classes"] for k, m in metas.items()}
        if len(set(classes.values())) > 1:
            raise ConfigError(f"label folders disagree on num_classes: {classes}")
        if model is not None and classes:
            (k_labels,) = set(classes.values())
            if model.get("num_classes") is None:
                model.num_classes = k_labels
            elif model.num_classes != k_labels:
                key = next(iter(classes))
                raise ConfigError(
                    f"model.num_classes={model.num_classes} but data.{key} ({data.get(key)}/meta.json) has "
                    f"num_classes={k_labels}; set model.num_classes to {k_labels} (or leave it unset)"
                )
    if model is not None and module is HubertPretrainModule:
        from hubert_lit.run_config import pretrain_model_config

        try:  # the architecture, before anything is built: a bad preset or override names the key
            pretrain_model_config(
                model.get("preset"),
                model.get("num_classes") or 1,
                model.get("overrides"),
                model.get("model_config"),
            )
        except (TypeError, ValueError) as err:
            given = f"model.preset={model.get('preset')!r}"
            if model.get("overrides"):
                given += f", model.overrides={model.get('overrides')!r}"
            raise ConfigError(f"model: {err} ({given})") from err
    if model is not None and module is not HubertPretrainModule and model.get("teacher") is not None:
        if not Path(model.teacher).is_file():
            raise ConfigError(f"model.teacher: file not found: {model.teacher}")
    if model is not None and model.get("num_classes") is None and subcommand in ("fit", "validate", "test"):
        raise ConfigError("model.num_classes is not set and no labels folder is configured to take it from")
    if subcommand == "fit":
        trainer = cfg.get("trainer")
        max_steps = model.get("max_steps") if model is not None else None
        if max_steps is None and (trainer.get("max_steps") in (None, -1)):
            raise ConfigError("set trainer.max_steps (or model.max_steps): the LR schedule decays to 0 there")
        if model is not None and model.get("warmup_steps") is not None:
            total = max_steps if max_steps is not None else trainer.get("max_steps")
            if not 0 <= model.warmup_steps < total:
                raise ConfigError(
                    f"model.warmup_steps={model.warmup_steps} must be in [0, {total}) (the LR steps)"
                )


# ----------------------------------------------------------------------------------------------- batch size
def _dotted(data: dict[str, Any], key: str) -> Any:
    for part in key.split("."):
        data = data[part]
    return data


def world_size_of(trainer: Namespace) -> int:
    """Processes a Trainer config will run: ``num_nodes`` x ``devices`` (``auto``/-1: the visible GPUs, or 1)."""
    devices = trainer.get("devices", "auto")
    if isinstance(devices, (list, tuple)):
        count = len(devices)
    elif isinstance(devices, str) and devices.strip().isdigit():
        count = int(devices)
    elif isinstance(devices, int) and devices > 0:
        count = devices
    else:
        import torch

        gpu = trainer.get("accelerator") in ("gpu", "cuda", "auto") and torch.cuda.is_available()
        count = torch.cuda.device_count() if gpu else 1
    return count * int(trainer.get("num_nodes") or 1)


def accumulation_for(target_seconds: float, batch_seconds: float, world: int) -> tuple[int, float]:
    """Gradient accumulation that brings ``world`` ranks of ``batch_seconds`` closest to ``target_seconds`` of
    audio per optimizer step, and the effective batch (seconds) it gives."""
    accumulate = max(1, round(target_seconds / (world * batch_seconds)))
    return accumulate, accumulate * world * batch_seconds


# ----------------------------------------------------------------------------------------------- CLI
class HubertLightningCLI(LightningCLI):
    """LightningCLI with the suite's run folder, resume resolution, loggers, checkpointing, cluster requeue,
    progress lines, RNG capture and config checks."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument(
            "--run.name", type=str, default="default", help="Run name (folder, W&B run name)."
        )
        parser.add_argument("--run.root", type=str, default="runs", help="Folder holding the run folders.")
        parser.add_argument(
            "--run.loggers",
            type=list[str],
            default=["csv", "wandb"],
            help=f"Loggers when trainer.logger is not set: any of {LOGGER_NAMES}.",
        )
        parser.add_argument("--run.wandb_project", type=str, default="hubert-lit", help="W&B project.")
        parser.add_argument(
            "--run.wandb_mode",
            type=str,
            default="offline",
            help=f"W&B mode, one of {WANDB_MODES}; offline needs no account (upload later with `wandb sync`). "
            "It wins over an inherited WANDB_MODE; 'env' defers to WANDB_MODE; WANDB_MODE=disabled always "
            "disables W&B.",
        )
        parser.add_argument(
            "--run.resume",
            type=str,
            default="auto",
            help="fit: 'auto' continues the run from its newest checkpoint (last.ckpt, periodic or Lightning's "
            "hpc_ckpt_*, highest global step) when it has one, so one command starts and continues a run; "
            "'never' starts afresh. An explicit --ckpt_path FILE wins.",
        )
        parser.add_argument(
            "--run.allow_data_change",
            type=bool,
            default=False,
            help="fit: resume even though the training data changed since the checkpoint (other shards or labels, "
            "other batch settings); the change is logged and an epoch whose saved position no longer fits starts "
            "over. Without it such a resume stops before training and names what changed.",
        )
        parser.add_argument(
            "--run.progress",
            type=str,
            default="auto",
            help="'bar' (progress bar), 'log' (a progress line every run.progress_every steps, for jobs without a "
            "terminal), 'auto' (bar on a terminal, log lines otherwise) or 'none'.",
        )
        parser.add_argument(
            "--run.progress_every",
            type=int,
            default=50,
            help="Steps between progress lines (run.progress=log).",
        )
        parser.add_argument(
            "--run.requeue_signal",
            type=str | None,
            default="SIGUSR1",
            help="fit: signal announcing the end of the job (sbatch --signal=SIGUSR1@90): save last.ckpt at the "
            "next step boundary, requeue the SLURM job, stop. null: no handler.",
        )
        parser.add_argument(
            "--run.requeue_check_every",
            type=int,
            default=10,
            help="Steps between the ranks' comparisons of the requeue flag (one scalar all-reduce; single "
            "processes check every step).",
        )
        parser.add_argument(
            "--run.target_global_batch_seconds",
            type=float | None,
            default=None,
            help="Audio per optimizer step over all ranks; sets trainer.accumulate_grad_batches from the world "
            "size and data.max_batch_seconds, so a run on fewer GPUs keeps its effective batch.",
        )
        parser.add_argument(
            "--predict_out",
            type=str | None,
            default=None,
            help="predict: folder for the features of --predict_layer (<shard>.npz: utterance id -> array).",
        )
        parser.add_argument(
            "--predict_layer",
            type=int | None,
            default=None,
            help="predict: encoder layer whose output is written (0 = encoder input; default: the last).",
        )
        parser.add_argument(
            "--base",
            type=str | list[str] | None,
            default=None,
            help="Config files a config file extends (expanded by hubert_lit before parsing; relative to the file).",
        )
        parser.add_argument(
            "--demo",
            type=dict | None,
            default=None,
            help="Stage settings read by experiments/demo.py (ignored by training).",
        )
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.every_n_train_steps": 1000,
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": -1,
                "checkpoint.filename": "step{step:08d}",
                "checkpoint.auto_insert_metric_name": False,
                # last.ckpt is always this run's newest state, never a last-v1.ckpt beside a stale one
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(RNGStateCallback, "rng")

    def _check(self, cfg: Namespace) -> None:
        check_config(cfg, str(self.subcommand))
        run = cfg.run
        for name in run.loggers:
            if name not in LOGGER_NAMES:
                raise ConfigError(f"run.loggers: unknown logger {name!r}; choose from {LOGGER_NAMES}")
        choices = {"wandb_mode": WANDB_MODES, "resume": RESUME_MODES, "progress": PROGRESS_MODES}
        for key, allowed in choices.items():
            if run[key] not in allowed:
                raise ConfigError(f"run.{key} must be one of {allowed}, got {run[key]!r}")
        if self.subcommand == "predict" and not cfg.get("predict_out"):
            raise ConfigError("predict needs --predict_out DIR (where the features are written)")

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(str(self.subcommand), self.config)
        try:
            self._check(cfg)
            if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
                # launched by `wandb agent`: every sweep run gets its own folder
                cfg.run.name = f"{cfg.run.name}-{os.environ['WANDB_RUN_ID']}"
            run_dir = Path(cfg.run.root) / cfg.run.name
            if cfg.trainer.get("default_root_dir") is None:
                cfg.trainer.default_root_dir = str(run_dir)
            if cfg.checkpoint.get("dirpath") is None:
                cfg.checkpoint.dirpath = str(run_dir / "checkpoints")
            self._resuming = False
            self._resume_point: ResumePoint | None = None
            if self.subcommand == "fit":
                self._set_accumulation(cfg)
                self._resolve_resume(cfg, run_dir)
        except ConfigError as err:
            self.parser.error(str(err))  # exits with status 2, before anything is built

    def _set_accumulation(self, cfg: Namespace) -> None:
        target = cfg.run.get("target_global_batch_seconds")
        world = world_size_of(cfg.trainer)
        batch_seconds = cfg.data.get("max_batch_seconds") if cfg.get("data") is not None else None
        if target is None:
            if batch_seconds is not None:
                accumulate = int(cfg.trainer.get("accumulate_grad_batches") or 1)
                rank_zero_info(
                    f"effective batch: {world} rank(s) x {accumulate} accumulated x {batch_seconds} s = "
                    f"{world * accumulate * batch_seconds:.1f} s of audio per step"
                )
            return
        if batch_seconds is None:
            raise ConfigError(
                "run.target_global_batch_seconds needs data.max_batch_seconds (not data.batch_size)"
            )
        accumulate, effective = accumulation_for(target, batch_seconds, world)
        configured = cfg.trainer.get("accumulate_grad_batches")
        cfg.trainer.accumulate_grad_batches = accumulate
        message = (
            f"effective batch: {world} rank(s) x {accumulate} accumulated x {batch_seconds} s = {effective:.1f} s "
            f"of audio per step (run.target_global_batch_seconds={target})"
        )
        if configured not in (None, 1, accumulate):
            message += f"; trainer.accumulate_grad_batches={configured} replaced"
        if abs(effective - target) > 0.05 * target:
            log.warning(
                "%s: %.0f%% off the target (no integer accumulation fits)",
                message,
                100 * (effective / target - 1),
            )
        else:
            rank_zero_info(message)

    def _parse_ckpt_path(self) -> None:
        """Check an explicit ``--ckpt_path FILE`` before anything else reads it (missing, empty, damaged or
        foreign: exit 2 naming the file). ``fit`` keeps the run's own model config (a resumed run must match the
        checkpoint's architecture, checked after instantiation); ``validate``/``test``/``predict`` take the model's
        hyperparameters from the checkpoint, as Lightning does."""
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        explicit = self.config[subcommand].get("ckpt_path")
        if explicit in (None, "last") or "://" in str(explicit):
            return
        try:
            self._explicit_resume = self._explicit_point(Path(explicit))
        except ConfigError as err:
            self.parser.error(str(err))
        if subcommand != "fit":
            super()._parse_ckpt_path()

    def _resolve_resume(self, cfg: Namespace, run_dir: Path) -> None:
        """``ckpt_path``: an explicit file wins; ``last`` or ``run.resume=auto`` take the run's newest state."""
        explicit = cfg.get("ckpt_path")
        if explicit not in (None, "last") or (explicit is None and cfg.run.resume == "never"):
            self._resuming = explicit is not None
            if explicit is not None and "://" not in str(explicit):
                self._resume_point = getattr(self, "_explicit_resume", None) or self._explicit_point(
                    Path(explicit)
                )
            return
        if is_global_zero_from_env():  # temporary files of saves a kill interrupted
            for stale in sorted(Path(cfg.checkpoint.dirpath).glob(f".*.ckpt.*{TEMP_SUFFIX}")):
                stale.unlink()
                rank_zero_info(f"removed {stale}, left by an interrupted checkpoint save")
        point = resolve_resume(run_dir, cfg.checkpoint.dirpath, warn=log.warning)
        for stale in stale_hpc_checkpoints(run_dir, point) if is_global_zero_from_env() else []:
            stale.unlink()
            rank_zero_info(f"removed {stale}: hubert-lit saves requeue states as last.ckpt")
        if point is None:
            if explicit == "last":
                log.warning("--ckpt_path last: %s has no checkpoint yet; starting afresh", run_dir)
            cfg.ckpt_path = None
            return
        cfg.ckpt_path = str(point.path)
        self._resuming = True
        self._resume_point = point
        rank_zero_info(f"resuming from {point.path} at step {point.step}")

    @staticmethod
    def _explicit_point(path: Path) -> ResumePoint:
        """The checkpoint ``--ckpt_path`` names, checked before anything is built."""
        if not path.is_file():
            raise ConfigError(f"ckpt_path: file not found: {path}")
        try:
            step, entries = checkpoint_step(path)
        except ValueError as err:
            raise ConfigError(f"ckpt_path: {err}") from err
        if CONFIG_KEY not in entries:
            raise ConfigError(f"ckpt_path: {path} is not a hubert-lit checkpoint (no {CONFIG_KEY!r} entry)")
        return ResumePoint(path, step, entries)

    def _check_resume_model(self) -> None:
        """A resumed run trains the architecture its checkpoint was trained with (same shapes are not enough:
        4 heads of 16 dimensions and 2 of 32 hold the same weights)."""
        point = getattr(self, "_resume_point", None)
        if point is None or CONFIG_KEY not in point.entries:
            return
        stored = HubertConfig.from_dict(point.entries[CONFIG_KEY])
        changed = stored.architecture_differences(self.model.model.config)
        if changed:
            details = ", ".join(
                f"{k}: {_dotted(stored.architecture(), k)!r} -> {_dotted(self.model.model.config.architecture(), k)!r}"
                for k in changed
            )
            self.parser.error(
                f"{point.path} was trained with another architecture ({details}); resume with the same model "
                "config, or start a new run (--run.name, or --run.resume=never)"
            )

    def _check_resume_data(self, cfg: Namespace) -> None:
        """A resumed run trains on the data its checkpoint was trained on (same shards, labels and epoch plan),
        unless ``run.allow_data_change``."""
        point = getattr(self, "_resume_point", None)
        datamodule = getattr(self, "datamodule", None)
        if point is None or not hasattr(datamodule, "fingerprint"):
            return
        saved = point.entries.get(DATA_KEY)
        if saved is None:
            rank_zero_info(
                f"{point.path} records no data fingerprint (written by hubert-lit 0.1.0): the training data is not "
                "compared with the checkpoint's (the loader's saved position is still checked against its plan)"
            )
            return
        try:
            current = datamodule.fingerprint()
        except (OSError, ValueError) as err:
            self.parser.error(f"data: {err}")
        changed = fingerprint_differences(saved, current)
        if not changed:
            return
        if cfg.run.allow_data_change:
            log.warning(
                "resuming %s on changed training data (--run.allow_data_change): %s. An epoch whose saved "
                "position no longer fits the data starts over.",
                point.path,
                "; ".join(changed),
            )
            datamodule.restart_epoch_on_mismatch = True
            return
        self.parser.error(
            f"{point.path} was trained on other data: {'; '.join(changed)}. Resume with the data it was trained "
            "on, start a new run (--run.name, or --run.resume never), or pass --run.allow_data_change true to "
            "continue on the changed data on purpose."
        )

    def after_instantiate_classes(self) -> None:
        cfg = self.config.get(str(self.subcommand), self.config)
        if self.subcommand == "fit":
            self._check_resume_model()
            self._check_resume_data(cfg)
        layer = cfg.get("predict_layer")
        if layer is not None and not 0 <= layer <= self.model.model.num_layers:
            self.parser.error(f"predict_layer must be in [0, {self.model.model.num_layers}], got {layer}")
        self.model.predict_layer = layer

    def _loggers(self, cfg: Namespace) -> list[Logger]:
        run_dir = Path(cfg.run.root) / cfg.run.name
        loggers: list[Logger] = []
        for name in cfg.run.loggers:
            if name == "csv":
                version = csv_version(run_dir / "csv", resuming=getattr(self, "_resuming", False))
                loggers.append(AppendingCSVLogger(save_dir=str(run_dir), name="csv", version=version))
            elif name == "wandb":
                logger = wandb_logger(run_dir, cfg.run.name, cfg.run.wandb_project, cfg.run.wandb_mode)
                if logger is not None:
                    loggers.append(logger)
        return loggers

    def _progress(self, cfg: Namespace) -> str:
        mode = cfg.run.progress
        if mode == "auto":
            return "bar" if sys.stdout.isatty() else "log"
        return mode

    def instantiate_trainer(self, **kwargs: Any):
        cfg = self.config.get(str(self.subcommand), self.config)
        if cfg.trainer.get("logger") in (None, True):
            kwargs["logger"] = self._loggers(cfg) or False
        plugins = self._get(self.config_init, "trainer").get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, list) else [plugins]
        from lightning.fabric.plugins import CheckpointIO

        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        callbacks = list(self._get(self.config_init, "trainer").get("callbacks") or [])
        progress = self._progress(cfg)
        kwargs["enable_progress_bar"] = progress == "bar"
        if progress == "log" and self.subcommand == "fit":
            callbacks.append(ProgressLog(cfg.run.progress_every))
        if self.subcommand == "fit" and hasattr(getattr(self, "datamodule", None), "fingerprint"):
            callbacks.append(DataFingerprint())
        if self.subcommand == "fit" and cfg.run.get("requeue_signal"):
            callbacks.append(RequeueOnSignal(cfg.run.requeue_signal, cfg.run.requeue_check_every))
        if self.subcommand == "predict":
            callbacks.append(FeatureWriter(cfg.predict_out))
        kwargs["callbacks"] = callbacks
        return super().instantiate_trainer(**kwargs)


def names_model_class(argv: list[str]) -> bool:
    """True when the (base-expanded) arguments name the model class: ``model: {class_path: ...}`` in a config file
    or ``--model.class_path`` / ``--model=<class>`` on the command line (e.g. ``hubert_lit.lit.distill.
    BiTDistillModule``). The CLI then runs in subclass mode (any :class:`~hubert_lit.lit.base.HubertLightningModule`);
    otherwise the model is HubertPretrainModule and configs give its arguments directly under ``model:``."""
    for i, arg in enumerate(argv):
        if arg == "--model" or arg.startswith(("--model=", "--model.class_path")):
            return True
        if arg in ("--config", "-c") and i + 1 < len(argv):
            path = Path(argv[i + 1])
        elif arg.startswith("--config="):
            path = Path(arg.split("=", 1)[1])
        else:
            continue
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
        if isinstance(data, dict) and isinstance(data.get("model"), dict) and "class_path" in data["model"]:
            return True
    return False


def lightning_main(argv: list[str] | None = None) -> int:
    """Run ``fit|validate|test|predict`` with ``argv`` (without the program name); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    for message in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    try:
        argv = expand_config_bases(argv)
    except (ConfigError, RunConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if argv and argv[0] == "predict" and not any(a.startswith("--return_predictions") for a in argv):
        argv.append("--return_predictions=false")  # features go to disk (FeatureWriter), not into memory
    try:
        subclass_mode = names_model_class(argv)
        HubertLightningCLI(
            HubertLightningModule if subclass_mode else HubertPretrainModule,
            ShardDataModule,
            subclass_mode_model=subclass_mode,
            args=argv,
            seed_everything_default=1337,
            save_config_kwargs={"overwrite": True},
            auto_configure_optimizers=False,
            parser_kwargs={"parser_mode": "yaml"},
        )
    except SystemExit as exc:  # argument errors (status 2) and --help/--print_config (status 0)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # surface the reason as the last line, after the traceback
        traceback.print_exc()
        print(f"error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    return 0


def build_sweep_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m hubert_lit sweep``."""
    parser = argparse.ArgumentParser(
        prog="python -m hubert_lit sweep",
        description="Offline dry run of a W&B sweep file: check it, expand its points (grid: all; random/Bayes: "
        "--samples seeded draws) into the exact commands `wandb agent` would run, print them and validate each "
        "in-process as --print_config would. ${envvar:NAME} macros take this shell's environment.",
    )
    parser.add_argument("sweep", type=Path, help="sweep file, e.g. configs/sweeps/encoders_grid.yaml")
    parser.add_argument(
        "--samples", type=int, default=3, help="draws of a random/Bayesian sweep (default: 3)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    parser.add_argument("--no-validate", action="store_true", help="only print the commands")
    return parser


def sweep_main(argv: list[str] | None = None) -> int:
    """``python -m hubert_lit sweep FILE``: print and validate the commands a W&B agent would run for the sweep
    file (:mod:`hubert_lit.sweeps`); exit status 2 when the file or any command is rejected."""
    import contextlib
    import io
    import shlex

    from hubert_lit.sweeps import SweepError, dry_run

    args = build_sweep_parser().parse_args(argv)

    def validate(suite_args: list[str]) -> int:
        with contextlib.redirect_stdout(io.StringIO()):
            return lightning_main([*suite_args, "--print_config"])

    try:
        commands = dry_run(args.sweep, args.samples, args.seed, None if args.no_validate else validate)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    failed = 0
    for argv_, status in commands:
        mark = {None: "", 0: "ok  "}.get(status, "FAIL")
        failed += status not in (None, 0)
        print(f"{mark}{' ' if mark else ''}{shlex.join(argv_)}")
    if failed:
        print(f"error: {failed} of {len(commands)} commands rejected (messages above)", file=sys.stderr)
        return 2
    return 0
