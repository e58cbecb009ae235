"""Run configs -> the model they train, without Lightning.

The YAML files under ``configs/`` come in three shapes that describe a model:

* a **model config** (``configs/model/*.yaml``): a ``HubertConfig`` dict (it has an ``encoder`` key);
* a **pretraining config** (``configs/pretrain/*.yaml``, ``configs/demo.yaml``): ``model:`` holds the
  :class:`~hubert_lit.lit.pretrain.HubertPretrainModule` arguments (``preset`` or ``model_config``,
  ``overrides``, ``num_classes``);
* a **distillation config** (``configs/distill/*.yaml``): ``model: {class_path: ...BiTDistillModule, init_args:
  {teacher, weight_bits, activation_bits, ...}}``. The student is the teacher's architecture, binarized with the
  spec of ``init_args``. The teacher is read from its file when it exists; otherwise (a config read before its
  chain has run) from the config under the same ``configs/`` folder whose ``run.root``/``run.name`` writes that
  file, recursively (W1A1 -> W1A2 -> iteration 2).

A file may name the files it extends with a top-level ``base:`` (a path or a list, relative to the file);
:func:`expand_bases` lists them in the order ``fit`` applies them, later files winning. Files that describe no
model (``_*.yaml`` fragments, ``trainer/``, ``sweeps/``, ``superb/``) are refused with :class:`RunConfigError`
naming the file, never given a default preset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hubert_lit.models import HubertConfig
from hubert_lit.models.config import make_config
from hubert_lit.quant.spec import DEFAULT_FULL_PRECISION, QuantSpec

PRETRAIN_CLASS = "HubertPretrainModule"
DISTILL_CLASS = "BiTDistillModule"
_QUANT_SPEC_ARGS = tuple(f.name for f in dataclasses.fields(QuantSpec))


class RunConfigError(ValueError):
    """A run config that cannot be read, or that describes no model; the message names the file."""


@dataclass(frozen=True)
class RunModel:
    """The model a run config trains: its config, its quant spec (None: full precision) and where it came from.

    ``teacher`` is the teacher file a distillation config names (it need not exist yet); ``chain`` lists the
    config files that were read to resolve the model, starting with the one asked for.
    """

    config: HubertConfig
    quant_spec: QuantSpec | None
    kind: str  # "model" | "pretrain" | "distill"
    chain: tuple[Path, ...]
    teacher: Path | None = None

    def build(self):
        """The model (random weights), binarized when the run trains a binarized student."""
        from hubert_lit.models import HubertModel
        from hubert_lit.quant.binarize import binarize

        model = HubertModel(self.config)
        if self.quant_spec is not None:
            binarize(model, self.quant_spec)
        return model


# ----------------------------------------------------------------------------------------------- reading YAML
def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except OSError as err:
        raise RunConfigError(f"{path}: cannot read ({err.strerror})") from err
    except yaml.YAMLError as err:
        raise RunConfigError(f"{path}: not valid YAML ({err})") from err


def expand_bases(path: str | Path, _seen: tuple[Path, ...] = ()) -> list[Path]:
    """``path`` preceded by the files its ``base:`` key names (recursively, depth first), in applying order."""
    path = Path(path).resolve()
    if path in _seen:
        raise RunConfigError(
            f"{path}: 'base' files include each other: {' -> '.join(map(str, (*_seen, path)))}"
        )
    if not path.is_file():
        if _seen:
            raise RunConfigError(f"{_seen[-1]}: base config {path} does not exist")
        raise RunConfigError(f"{path}: config file not found")
    data = _read_yaml(path)
    bases = data.get("base") if isinstance(data, Mapping) else None
    if bases is None:
        return [path]
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise RunConfigError(f"{path}: 'base' must be a path or a list of paths, got {bases!r}")
    out: list[Path] = []
    for base in bases:
        out += expand_bases(path.parent / base, (*_seen, path))
    return [*out, path]


def _merge_model(current: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """jsonargparse's composition of ``model:``: a new ``class_path`` starts afresh, the same (or none) merges
    ``init_args`` key by key; plain arguments are replaced key by key (dict-valued ones as a whole)."""
    if "class_path" in new and new.get("class_path") != current.get("class_path"):
        return {"class_path": new["class_path"], "init_args": dict(new.get("init_args") or {})}
    out = dict(current)
    for key, value in new.items():
        if key == "init_args":
            out["init_args"] = {**(out.get("init_args") or {}), **(value or {})}
        else:
            out[key] = value
    return out


def load_run_config(path: str | Path) -> dict[str, Any]:
    """The file and its ``base:`` files composed as ``fit`` composes them (sections merged key by key)."""
    merged: dict[str, Any] = {}
    for file in expand_bases(path):
        data = _read_yaml(file) or {}
        if not isinstance(data, Mapping):
            raise RunConfigError(f"{file}: expected a mapping at the top level, got {type(data).__name__}")
        for key, value in data.items():
            if key == "base":
                continue
            if key == "model" and isinstance(value, Mapping) and isinstance(merged.get("model"), Mapping):
                merged["model"] = _merge_model(merged["model"], value)
            elif isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
    return merged


# ----------------------------------------------------------------------------------------------- the model
def _class_name(class_path: Any, path: Path) -> str:
    name = str(class_path).rsplit(".", 1)[-1]
    if name not in (PRETRAIN_CLASS, DISTILL_CLASS):
        raise RunConfigError(
            f"{path}: model.class_path {class_path!r} is not a hubert-lit module ({PRETRAIN_CLASS} or {DISTILL_CLASS})"
        )
    return name


def pretrain_model_config(
    preset: str | None,
    num_classes: int,
    overrides: Mapping[str, Any] | None = None,
    model_config: Mapping[str, Any] | None = None,
) -> HubertConfig:
    """The HubertConfig :class:`~hubert_lit.lit.pretrain.HubertPretrainModule` builds from its arguments:
    ``model_config`` when given (a full ``HubertConfig.to_dict()``), else the preset; ``overrides`` apply to
    either, and ``num_classes`` always wins."""
    if model_config is not None:
        return HubertConfig.from_dict(dict(model_config)).replace(
            **{**(overrides or {}), "num_classes": num_classes}
        )
    return make_config(preset, num_classes, **(overrides or {}))


def _pretrain_config(args: Mapping[str, Any], path: Path) -> HubertConfig:
    if args.get("model_config") is None and args.get("preset") is None:
        raise RunConfigError(
            f"{path}: describes no model (no model.preset or model.model_config; a '_*.yaml' file is a fragment "
            "that other configs extend)"
        )
    try:
        return pretrain_model_config(
            args.get("preset"),
            int(args.get("num_classes") or 0),
            args.get("overrides"),
            args.get("model_config"),
        )
    except (TypeError, ValueError) as err:
        raise RunConfigError(f"{path}: {err}") from err


def student_spec(init_args: Mapping[str, Any], path: Path) -> QuantSpec:
    """The ``QuantSpec`` of a distillation module's arguments (missing ones take ``QuantSpec``'s defaults, which
    are also :class:`~hubert_lit.lit.distill.BiTDistillModule`'s)."""
    values = {k: init_args[k] for k in _QUANT_SPEC_ARGS if init_args.get(k) is not None}
    values.setdefault("full_precision", DEFAULT_FULL_PRECISION)
    try:
        return QuantSpec(**values)
    except (TypeError, ValueError) as err:
        raise RunConfigError(f"{path}: model.init_args: {err}") from err


def checkpoint_dir(run: Mapping[str, Any]) -> Path:
    """Where a run config writes its checkpoints (``checkpoint.dirpath``, else ``<run.root>/<run.name>/checkpoints``)."""
    section = run.get("checkpoint") or {}
    if section.get("dirpath"):
        return Path(section["dirpath"])
    names = run.get("run") or {}
    return Path(names.get("root", "runs")) / str(names.get("name", "default")) / "checkpoints"


def configs_root(path: Path) -> Path:
    """The ``configs/`` folder ``path`` lies in (its own folder when it lies in none)."""
    for parent in path.resolve().parents:
        if parent.name == "configs":
            return parent
    return path.resolve().parent


def configs_writing(teacher: Path, root: Path) -> list[Path]:
    """Run configs under ``root`` whose checkpoints go where ``teacher`` lies."""
    wanted = teacher.parent.resolve()
    found = []
    for candidate in sorted(root.rglob("*.yaml")):
        if candidate.name.startswith("_"):
            continue
        try:
            run = load_run_config(candidate)
        except RunConfigError:
            continue
        if isinstance(run.get("model"), Mapping) and checkpoint_dir(run).resolve() == wanted:
            found.append(candidate)
    return found


def _teacher_model(teacher: Path, path: Path, chain: tuple[Path, ...]) -> RunModel:
    if teacher.is_file():
        from hubert_lit.checkpoint import read_model_config

        try:
            config, spec = read_model_config(teacher)
        except (OSError, ValueError) as err:
            raise RunConfigError(f"{path}: model.init_args.teacher: {err}") from err
        return RunModel(config, spec, "file", (*chain, teacher.resolve()))
    writers = configs_writing(teacher, configs_root(path))
    if not writers:
        raise RunConfigError(
            f"{path}: the teacher {teacher} does not exist, and no config under {configs_root(path)} writes it "
            "(set run.root/run.name of the teacher's config accordingly, or point model.init_args.teacher at a file)"
        )
    models = [model_of_config(w, chain) for w in writers]
    if len({(m.config.to_dict().__repr__(), repr(m.quant_spec)) for m in models}) > 1:
        raise RunConfigError(
            f"{path}: the teacher {teacher} is written by configs of different models: {', '.join(map(str, writers))}"
        )
    return models[0]


def model_of_config(path: str | Path, _chain: tuple[Path, ...] = ()) -> RunModel:
    """The model the run config ``path`` trains (see the module docstring); :class:`RunConfigError` otherwise."""
    path = Path(path)
    if path.resolve() in _chain:
        raise RunConfigError(
            f"{path}: teacher configs form a cycle: {' -> '.join(map(str, (*_chain, path)))}"
        )
    chain = (*_chain, path.resolve())
    run = load_run_config(path)
    if "encoder" in run and "model" not in run:
        try:
            return RunModel(HubertConfig.from_dict(run), None, "model", chain)
        except (TypeError, ValueError) as err:
            raise RunConfigError(f"{path}: {err}") from err
    model = run.get("model")
    if not isinstance(model, Mapping):
        raise RunConfigError(
            f"{path}: describes no model (no 'model' section and no 'encoder': a trainer, sweep or task config?)"
        )
    if "class_path" not in model or _class_name(model["class_path"], path) == PRETRAIN_CLASS:
        args = model.get("init_args", model) if "class_path" in model else model
        return RunModel(_pretrain_config(args, path), None, "pretrain", chain)
    init_args = model.get("init_args") or {}
    teacher = init_args.get("teacher")
    if not teacher:
        raise RunConfigError(f"{path}: model.init_args.teacher is not set (the model to distil)")
    teacher = Path(teacher)
    source = _teacher_model(teacher, path, chain)
    config = source.config.replace(encoder={"layerdrop": 0.0})  # as BiTDistillModule builds its student
    return RunModel(
        config, student_spec(init_args, path), "distill", (*chain, *source.chain[len(chain) :]), teacher
    )
