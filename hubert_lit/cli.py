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
  (``csv``, ``wandb``; W&B offline by default) and the W&B project. Setting ``trainer.logger`` yourself replaces
  these loggers.
* ``checkpoint.*``: the ModelCheckpoint (every ``every_n_train_steps`` plus ``last.ckpt``), always present.
  Checkpoints are written atomically (:class:`~hubert_lit.lit.callbacks.AtomicCheckpointIO`), and carry every
  rank's RNG states (:class:`~hubert_lit.lit.callbacks.RNGStateCallback`, ``rng.*``) and the data-loader state,
  so ``--ckpt_path last`` resumes exactly.
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

import logging
import os
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from hubert_lit.data.datamodule import ShardDataModule
from hubert_lit.lit.base import HubertLightningModule
from hubert_lit.lit.callbacks import AtomicCheckpointIO, FeatureWriter, RNGStateCallback
from hubert_lit.lit.pretrain import HubertPretrainModule
from hubert_lit.run_config import RunConfigError, expand_bases

log = logging.getLogger(__name__)

LOGGER_NAMES = ("csv", "wandb")
WANDB_MODES = ("offline", "online", "disabled")


# Third-party warnings that say nothing actionable about a run of this suite (they would bury its own messages):
# torchdata 0.11 calls a deprecated torch API on every loader; Lightning 2.6 uses a deprecated pytree check; our
# IterableDataset's __len__ is exact by construction (every rank and worker has a planned batch count).
KNOWN_HARMLESS_WARNINGS = (
    "LightningCLI's args parameter is intended",
    "'set_vital' is deprecated",
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


# ----------------------------------------------------------------------------------------------- CLI
class HubertLightningCLI(LightningCLI):
    """LightningCLI with the suite's run folder, loggers, checkpointing, RNG capture and config checks."""

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
            help=f"W&B mode, one of {WANDB_MODES}; offline needs no account (upload later with `wandb sync`).",
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
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.every_n_train_steps": 1000,
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": -1,
                "checkpoint.filename": "step{step:08d}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(RNGStateCallback, "rng")

    def before_instantiate_classes(self) -> None:
        cfg = self.config.get(str(self.subcommand), self.config)
        try:
            check_config(cfg, str(self.subcommand))
            run = cfg.run
            for name in run.loggers:
                if name not in LOGGER_NAMES:
                    raise ConfigError(f"run.loggers: unknown logger {name!r}; choose from {LOGGER_NAMES}")
            if run.wandb_mode not in WANDB_MODES:
                raise ConfigError(f"run.wandb_mode must be one of {WANDB_MODES}, got {run.wandb_mode!r}")
            if self.subcommand == "predict" and not cfg.get("predict_out"):
                raise ConfigError("predict needs --predict_out DIR (where the features are written)")
        except ConfigError as err:
            self.parser.error(str(err))  # exits with status 2, before anything is built
        if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
            # launched by `wandb agent`: every sweep run gets its own folder
            cfg.run.name = f"{cfg.run.name}-{os.environ['WANDB_RUN_ID']}"
        run_dir = Path(cfg.run.root) / cfg.run.name
        if cfg.trainer.get("default_root_dir") is None:
            cfg.trainer.default_root_dir = str(run_dir)
        if cfg.checkpoint.get("dirpath") is None:
            cfg.checkpoint.dirpath = str(run_dir / "checkpoints")

    def after_instantiate_classes(self) -> None:
        cfg = self.config.get(str(self.subcommand), self.config)
        layer = cfg.get("predict_layer")
        if layer is not None and not 0 <= layer <= self.model.model.num_layers:
            self.parser.error(f"predict_layer must be in [0, {self.model.model.num_layers}], got {layer}")
        self.model.predict_layer = layer

    def _loggers(self, cfg: Namespace) -> list[Logger]:
        run_dir = Path(cfg.run.root) / cfg.run.name
        loggers: list[Logger] = []
        for name in cfg.run.loggers:
            if name == "csv":
                loggers.append(CSVLogger(save_dir=str(run_dir), name="csv"))
            elif (
                name == "wandb"
                and cfg.run.wandb_mode != "disabled"
                and os.environ.get("WANDB_MODE") != "disabled"
            ):
                run_dir.mkdir(parents=True, exist_ok=True)
                loggers.append(
                    WandbLogger(
                        project=cfg.run.wandb_project,
                        name=cfg.run.name,
                        save_dir=str(run_dir),
                        offline=cfg.run.wandb_mode == "offline",
                        log_model=False,
                    )
                )
        return loggers

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
        if self.subcommand == "predict":
            callbacks = self._get(self.config_init, "trainer").get("callbacks") or []
            kwargs["callbacks"] = [*callbacks, FeatureWriter(cfg.predict_out)]
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
