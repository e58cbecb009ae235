"""Every file format of hubert-lit, and the one loader :func:`load_model`.

A file is read once, with ``torch.load(weights_only=True)`` (nothing in it can run code), and dispatched on its
content:

* **model file** (:func:`save_model`): ``{"format": "hubert-lit-model/1", "config": HubertConfig dict,
  "state_dict": {...}}``, plus ``"quant_spec"`` (a ``QuantSpec`` dict) for a binarized model. Config and weights
  only: the file to hand to ``evaluate``, ``profile`` or the s3prl upstream.
* **packed export** (:func:`save_packed`): the config, the quant spec and two entries,

  - ``"state_dict"``: every full-precision entry (front end, norms, biases, activation scales and shifts, ...);
  - ``"packed"``: ``{"<layer>": {"bits": b, "shape": [...], "codes": uint8 tensor, "step": float32 tensor}}``.

  ``codes`` are the b-bit weight codes packed by :func:`hubert_lit.quant.packing.pack_codes`; a weight is
  ``(code - 2**(b-1) + 1/2) * step`` (``step`` per tensor, or per output channel where the spec says so), the
  value the quantized layer computes, so a reloaded model's outputs equal the checkpoint's exactly. The latent
  full-precision weights are not stored: a packed file is for inference, not for further distillation.

  Two layouts hold those entries. :func:`packed_payload` returns them as plain dicts under
  ``{"format": "hubert-lit-packed/1", "config": {...}, "quant_spec": {...}, "state_dict": ..., "packed": ...}``,
  which is also what files written before the bundled layout hold. :func:`save_packed` writes
  ``"hubert-lit-packed/2"``: the same config and spec, with both entries bundled by
  :mod:`hubert_lit.tensor_bundle` into ``"tensors"`` (one flat tensor per dtype) and ``"index"`` (their names
  and shapes, compressed), so a file with ~1,400 small tensors does not carry ~130 bytes of pickle per tensor.
  The loader reads both layouts.

  Two export options change the content, not the layout: ``"full_precision_bits": 16`` marks a file whose
  ``state_dict`` floats are float16 (``export --full-precision-bits 16``: the front end, norms, biases,
  activation scales and shifts at 16 bits, Table 1's "16-bit + 1-bit" storage; ``step`` stays float32); the
  loader upcasts them to float32, so the model computes with the 16-bit values exactly. ``export --drop-head``
  leaves out the pretraining head (mask embedding, final projection, label embeddings) and stores
  ``num_classes: 0``: a feature-extraction model. Both apply to model files too.
* **Lightning checkpoint** of a suite module (``.ckpt``): Lightning's own keys plus :data:`CONFIG_KEY` (the
  resolved ``HubertConfig``), :data:`QUANT_SPEC_KEY` (binarized students), :data:`COUNTERS_KEY` (the module's
  counters), :data:`RNG_KEY` (every rank's random states) and :data:`DATA_KEY` (the fingerprint of the training
  data and epoch plan, :mod:`hubert_lit.data.fingerprint`); the model's weights are
  ``state_dict["model.*"]``, and a distillation checkpoint leaves the frozen teacher's ``teacher.*`` out.

``load_model(path, runtime="binary")`` loads any of them holding a binarized W1A1 model and converts it to the
binary runtime (:mod:`hubert_lit.quant.runtime`: bit-packed weights, popcount kernels, inference only); a model in
that runtime cannot be saved (save the simulated one).

Files written by earlier versions use the same formats and load unchanged (``tests/test_checkpoint.py`` loads
and resumes files written by hubert-lit 0.1.0).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hubert_lit.atomic import atomic_torch_save
from hubert_lit.models import HubertConfig, HubertModel
from hubert_lit.quant.binarize import apply_stored_spec, binarize, quantized_layers
from hubert_lit.quant.packing import pack_codes, unpack_codes
from hubert_lit.quant.runtime import RUNTIMES, is_binary_runtime, to_binary_runtime
from hubert_lit.quant.spec import QuantSpec
from hubert_lit.tensor_bundle import bundle, unbundle

MODEL_FORMAT = "hubert-lit-model/1"
PACKED_FORMAT = "hubert-lit-packed/2"  # what save_packed writes: the entries bundled (tensor_bundle)
PACKED_ENTRIES_FORMAT = "hubert-lit-packed/1"  # the entries as plain dicts: packed_payload, older files
PACKED_BUNDLED = ("state_dict", "packed")  # the entries a bundled file stores in "tensors" + "index"
FULL_PRECISION_BITS = (32, 16)  # what a file may store the parts kept in full precision at
HEAD_PREFIXES = ("mask_embedding", "final_proj.", "label_embeddings")  # the pretraining head's state entries

# Keys a suite LightningModule adds to Lightning's checkpoint dict.
CONFIG_KEY = "hubert_config"
QUANT_SPEC_KEY = "quant_spec"
COUNTERS_KEY = "hubert_lit_counters"
RNG_KEY = "hubert_lit_rng_states"
DATA_KEY = "hubert_lit_data"  # what the run trains on (hubert_lit.data.fingerprint), checked on resume
MODEL_PREFIX = "model."  # the HuBERT model's weights inside the module's state_dict
TEACHER_PREFIX = "teacher."  # a distillation module's frozen teacher (not stored)


# ----------------------------------------------------------------------------------------------- reading
def read_file(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with errors that name the file and say what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): an interrupted copy or a full disk?")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a readable checkpoint or model file ({err})") from err


def file_kind(payload: Any, source: str = "<payload>") -> str:
    """``"model"``, ``"packed"`` or ``"lightning"`` for a loaded file; ``ValueError`` naming ``source`` otherwise."""
    if isinstance(payload, Mapping):
        if payload.get("format") == MODEL_FORMAT:
            return "model"
        if payload.get("format") in (PACKED_FORMAT, PACKED_ENTRIES_FORMAT):
            return "packed"
        if CONFIG_KEY in payload and "state_dict" in payload:
            return "lightning"
        if "state_dict" in payload and "pytorch-lightning_version" in payload:
            raise ValueError(
                f"{source} is a Lightning checkpoint, but not of a hubert-lit module (no {CONFIG_KEY!r} entry)"
            )
        found = payload.get("format", sorted(map(str, payload))[:8])
    else:
        found = type(payload).__name__
    raise ValueError(
        f"{source} is not a hubert-lit model file (expected format {MODEL_FORMAT!r}, {PACKED_FORMAT!r} or "
        f"{PACKED_ENTRIES_FORMAT!r}, or a "
        f"hubert-lit Lightning checkpoint; found {found!r})"
    )


def _require(payload: Mapping[str, Any], keys: tuple[str, ...], what: str, source: str) -> None:
    missing = [k for k in keys if k not in payload]
    if missing:
        raise ValueError(f"{source}: {what} without {missing}")


def _config(data: Any, source: str) -> HubertConfig:
    try:
        return HubertConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{source}: bad model config ({err})") from err


def config_of(payload: Mapping[str, Any], source: str = "<payload>") -> tuple[HubertConfig, QuantSpec | None]:
    """The model config and quant spec (None: full precision) stored in a loaded file of any kind."""
    kind = file_kind(payload, source)
    if kind == "lightning":
        config, spec = payload[CONFIG_KEY], payload.get(QUANT_SPEC_KEY)
    else:
        _require(payload, ("config",), f"{payload['format']} file", source)
        config, spec = payload["config"], payload.get("quant_spec")
    return _config(config, source), None if spec is None else QuantSpec.from_dict(dict(spec))


def read_model_config(path: str | os.PathLike) -> tuple[HubertConfig, QuantSpec | None]:
    """The model config and quant spec of the model stored in ``path`` (any kind of suite file)."""
    return config_of(read_file(path), str(path))


def _upcast(state: Mapping[str, Any]) -> dict[str, Any]:
    """A stored state with float16 entries (``--full-precision-bits 16``) as float32."""
    return {
        k: v.float() if isinstance(v, torch.Tensor) and v.dtype == torch.float16 else v
        for k, v in state.items()
    }


def model_from_payload(payload: Mapping[str, Any], source: str = "<payload>") -> HubertModel:
    """Rebuild the model (eval mode) stored in a loaded file of any kind."""
    kind = file_kind(payload, source)
    if kind == "packed":
        return model_from_packed(payload, source)
    config, spec = config_of(payload, source)
    if kind == "lightning":
        state = {
            key[len(MODEL_PREFIX) :]: value
            for key, value in payload["state_dict"].items()
            if key.startswith(MODEL_PREFIX)
        }
        if not state:
            raise ValueError(f"{source}: no '{MODEL_PREFIX}*' weights in the checkpoint's state_dict")
    else:
        _require(payload, ("state_dict",), f"{MODEL_FORMAT} file", source)
        state = _upcast(payload["state_dict"])
    model = HubertModel(config)
    apply_stored_spec(model, spec)  # binarized: rebuild the quantized layers before loading their state
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{source}: weights do not match the stored config ({err})") from err
    return model.eval()


def load_model(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", runtime: str = "simulated"
) -> HubertModel:
    """Rebuild the model stored in ``path``, in eval mode, whatever kind of suite file it is (pretraining or
    distillation ``.ckpt``, model file, packed export).

    ``runtime="binary"`` (a binarized W1A1 model, on the CPU) runs it on the 1-bit popcount kernels for inference
    (:func:`hubert_lit.quant.runtime.to_binary_runtime`); the default ``"simulated"`` gives the model as
    trained, on ordinary float kernels.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    model = model_from_payload(read_file(path, map_location), str(path))
    if runtime == "binary":
        if model.quant_spec is None:
            raise ValueError(
                f"{path} holds a full-precision model; runtime='binary' needs a binarized (W1A1) model"
            )
        try:
            to_binary_runtime(model)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from err
    return model


# ----------------------------------------------------------------------------------------------- writing
def _check_savable(model: HubertModel) -> None:
    if is_binary_runtime(model):
        raise ValueError(
            "this model runs on the binary runtime, which keeps only packed weights; save the simulated model "
            "(loaded without runtime='binary') instead"
        )


def _stored(model: HubertModel, skip: set[str], full_precision_bits: int, drop_head: bool):
    """(config dict, state dict) to store: ``skip`` and, with ``drop_head``, the pretraining head left out (the
    config then says ``num_classes: 0``); floats at ``full_precision_bits``."""
    if full_precision_bits not in FULL_PRECISION_BITS:
        raise ValueError(
            f"full_precision_bits must be one of {FULL_PRECISION_BITS}, got {full_precision_bits}"
        )
    state = {}
    for key, value in model.state_dict().items():
        if key in skip or (drop_head and key.startswith(HEAD_PREFIXES)):
            continue
        value = value.detach().cpu()
        state[key] = value.half() if full_precision_bits == 16 and value.is_floating_point() else value
    config = model.config.replace(num_classes=0) if drop_head else model.config
    return config.to_dict(), state


def model_file_payload(
    model: HubertModel, full_precision_bits: int = 32, drop_head: bool = False
) -> dict[str, Any]:
    """The model-file dict of ``model`` (config, weights, and its quant spec when binarized); see the module
    docstring for the options."""
    _check_savable(model)
    config, state = _stored(model, set(), full_precision_bits, drop_head)
    payload: dict[str, Any] = {"format": MODEL_FORMAT, "config": config, "state_dict": state}
    if full_precision_bits != 32:
        payload["full_precision_bits"] = full_precision_bits
    if model.quant_spec is not None:
        payload["quant_spec"] = model.quant_spec.to_dict()
    return payload


def save_model(
    model: HubertModel, path: str | os.PathLike, full_precision_bits: int = 32, drop_head: bool = False
) -> None:
    """Write ``model`` as a model file, atomically (temporary file + ``os.replace``)."""
    atomic_torch_save(model_file_payload(model, full_precision_bits, drop_head), path)


# ----------------------------------------------------------------------------------------------- packed exports
def packed_payload(
    model: HubertModel, full_precision_bits: int = 32, drop_head: bool = False
) -> dict[str, Any]:
    """The packed export of a binarized ``model`` with its entries as plain dicts (``hubert-lit-packed/1``, see
    the module docstring); :func:`save_packed` bundles them."""
    _check_savable(model)
    spec = model.quant_spec
    if spec is None:
        raise ValueError(
            "the model is full precision; packing needs a binarized model (run a distillation first)"
        )
    packed: dict[str, Any] = {}
    skip: set[str] = set()
    for name, layer in quantized_layers(model):
        codes, step = layer.weight_codes()
        packed[name] = {
            "bits": layer.weight_bits,
            "shape": list(layer.weight.shape),
            "codes": pack_codes(codes, layer.weight_bits),
            "step": step.detach().cpu().float().clone(),
        }
        skip.update({f"{name}.weight", f"{name}.weight_is_quantized"})
    config, state = _stored(model, skip, full_precision_bits, drop_head)
    payload = {
        "format": PACKED_ENTRIES_FORMAT,
        "config": config,
        "quant_spec": spec.to_dict(),
        "state_dict": state,
        "packed": packed,
    }
    if full_precision_bits != 32:
        payload["full_precision_bits"] = full_precision_bits
    return payload


def save_packed(
    model: HubertModel, path: str | os.PathLike, full_precision_bits: int = 32, drop_head: bool = False
) -> int:
    """Write the packed export of ``model`` to ``path`` atomically (``hubert-lit-packed/2``); returns the file
    size in bytes."""
    atomic_torch_save(bundled_packed(packed_payload(model, full_precision_bits, drop_head)), path)
    return Path(path).stat().st_size


def bundled_packed(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A ``hubert-lit-packed/1`` dict in the ``/2`` layout that :func:`save_packed` writes."""
    tensors, index = bundle({key: payload[key] for key in PACKED_BUNDLED})
    rest = {key: value for key, value in payload.items() if key not in PACKED_BUNDLED}
    return {**rest, "format": PACKED_FORMAT, "tensors": tensors, "index": index}


def packed_entries(payload: Mapping[str, Any], source: str = "<payload>") -> Mapping[str, Any]:
    """A packed export of either layout as a ``hubert-lit-packed/1`` dict."""
    if payload.get("format") != PACKED_FORMAT:
        return payload
    _require(payload, ("tensors", "index"), PACKED_FORMAT + " file", source)
    entries = unbundle(payload["tensors"], payload["index"], source)
    if set(entries) != set(PACKED_BUNDLED):
        raise ValueError(f"{source}: the bundle holds {sorted(entries)}, expected {list(PACKED_BUNDLED)}")
    rest = {key: value for key, value in payload.items() if key not in ("tensors", "index")}
    return {**rest, **entries, "format": PACKED_ENTRIES_FORMAT}


def model_from_packed(payload: Mapping[str, Any], source: str = "<payload>") -> HubertModel:
    """Rebuild the binarized model of a packed export (either layout), in eval mode."""
    payload = packed_entries(payload, source)
    _require(payload, ("config", "quant_spec", "state_dict", "packed"), "packed export", source)
    model = HubertModel(_config(payload["config"], source))
    binarize(model, QuantSpec.from_dict(dict(payload["quant_spec"])))
    layers = dict(quantized_layers(model))
    if set(layers) != set(payload["packed"]):
        missing, extra = (
            sorted(set(layers) - set(payload["packed"])),
            sorted(set(payload["packed"]) - set(layers)),
        )
        raise ValueError(
            f"{source}: packed layers do not match the rebuilt model (missing {missing}, unexpected {extra})"
        )
    result = model.load_state_dict(_upcast(payload["state_dict"]), strict=False)
    expected_missing = {f"{n}.{p}" for n in layers for p in ("weight", "weight_is_quantized")}
    if set(result.missing_keys) != expected_missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: state_dict does not match the model: missing "
            f"{sorted(set(result.missing_keys) - expected_missing)}, unexpected {sorted(result.unexpected_keys)}"
        )
    for name, layer in layers.items():
        entry = payload["packed"][name]
        shape = tuple(entry["shape"])
        if shape != tuple(layer.weight.shape) or entry["bits"] != layer.weight_bits:
            raise ValueError(
                f"{source}: packed layer {name!r} has shape {shape} / {entry['bits']} bits, the model expects "
                f"{tuple(layer.weight.shape)} / {layer.weight_bits} bits"
            )
        layer.load_quantized_weight(unpack_codes(entry["codes"], entry["bits"], shape), entry["step"])
    return model.eval()


# ----------------------------------------------------------------------------------------------- Lightning
def module_entries(model: HubertModel, counters: Mapping[str, int]) -> dict[str, Any]:
    """What a suite LightningModule adds to its checkpoint dict: the model config (so :func:`load_model` needs no
    preset), the quant spec of a binarized model and the module's counters."""
    entries: dict[str, Any] = {CONFIG_KEY: model.config.to_dict(), COUNTERS_KEY: dict(counters)}
    if model.quant_spec is not None:
        entries[QUANT_SPEC_KEY] = model.quant_spec.to_dict()
    return entries


def module_counters(checkpoint: Mapping[str, Any]) -> dict[str, int]:
    """The counters :func:`module_entries` stored (empty for a checkpoint without them)."""
    return {k: int(v) for k, v in checkpoint.get(COUNTERS_KEY, {}).items()}


# ----------------------------------------------------------------------------------------------- resuming
HPC_PATTERN = "hpc_ckpt_*.ckpt"  # what Lightning's own SLURM handler wrote (hubert-lit 0.1.0 runs)


@dataclass(frozen=True)
class ResumePoint:
    """The checkpoint a run continues from: its path, optimizer step, and Lightning/hubert-lit entries other than
    the weights and optimizer state (hyperparameters, loop and loader state, ...), for checks before resuming."""

    path: Path
    step: int
    entries: dict[str, Any]


def checkpoint_step(path: str | os.PathLike) -> tuple[int, dict[str, Any]]:
    """``global_step`` and the non-weight entries of a Lightning checkpoint, read lazily (memory-mapped: the
    tensors are not loaded). ``ValueError`` naming the file when it is empty, damaged or not a checkpoint."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise ValueError(f"{path} cannot be read: damaged, truncated or not a checkpoint ({err})") from err
    if not isinstance(payload, Mapping) or not isinstance(payload.get("global_step"), int):
        raise ValueError(f"{path} is not a Lightning checkpoint (no global_step)")
    keep = (
        "hyper_parameters",
        "datamodule_hyper_parameters",
        "loops",
        CONFIG_KEY,
        QUANT_SPEC_KEY,
        COUNTERS_KEY,
        DATA_KEY,
    )
    return payload["global_step"], {k: payload[k] for k in keep if k in payload}


def run_checkpoints(run_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike) -> list[Path]:
    """Every checkpoint a run may continue from: ``last*.ckpt`` and the periodic ones in its checkpoint folder,
    and Lightning's ``hpc_ckpt_*.ckpt`` in the run folder."""
    checkpoint_dir, run_dir = Path(checkpoint_dir), Path(run_dir)
    found = sorted(checkpoint_dir.glob("*.ckpt")) if checkpoint_dir.is_dir() else []
    found += sorted(run_dir.glob(HPC_PATTERN)) if run_dir.is_dir() else []
    return found


def resolve_resume(
    run_dir: str | os.PathLike, checkpoint_dir: str | os.PathLike, warn=None
) -> ResumePoint | None:
    """The newest state of a run: the checkpoint with the highest ``global_step`` among :func:`run_checkpoints`
    (on a tie, ``last.ckpt``), or None for a run that has none. Files that cannot be read are skipped with a
    message to ``warn`` (a damaged ``last.ckpt`` falls back to the newest intact checkpoint)."""
    best: ResumePoint | None = None
    for path in run_checkpoints(run_dir, checkpoint_dir):
        try:
            step, entries = checkpoint_step(path)
        except (OSError, ValueError) as err:
            if warn is not None:
                warn(f"skipping {path} as a resume point: {err}")
            continue
        preferred = best is None or step > best.step or (step == best.step and path.name == "last.ckpt")
        if preferred:
            best = ResumePoint(path, step, entries)
    return best


def stale_hpc_checkpoints(run_dir: str | os.PathLike, resume: ResumePoint | None) -> list[Path]:
    """Lightning's ``hpc_ckpt_*`` files of ``run_dir`` that are not the resume point (hubert-lit no longer writes
    them: a requeue saves at a step boundary into the checkpoint folder)."""
    keep = None if resume is None else resume.path.resolve()
    return [p for p in sorted(Path(run_dir).glob(HPC_PATTERN)) if p.resolve() != keep]
