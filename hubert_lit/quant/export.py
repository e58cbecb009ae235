"""``python -m hubert_lit export``: write a quantized model with its weights packed 8 per byte.

A full-precision checkpoint is written as a plain model file instead (:func:`hubert_lit.models.save_model`:
config + weights, no optimizer or trainer state), the file to hand to ``evaluate`` or the s3prl upstream.

File format (``torch.save`` of a dict; :func:`hubert_lit.load_model` reads it through :func:`model_from_packed`)::

    {"format": "hubert-lit-packed/1",
     "config": {...} (HubertConfig.to_dict()),  "quant_spec": {...} (QuantSpec.to_dict()),
     "state_dict": {every full-precision entry: front end, norms, biases, activation scales and shifts, ...},
     "packed": {"<layer>": {"bits": b, "shape": [...], "codes": uint8 tensor (np.packbits of the b-bit codes,
                                                                            least significant bit first),
                            "step": float32 tensor (per tensor, or per output channel for convolutions)}}}

A weight is ``(code - 2**(b-1) + 1/2) * step``, the value the quantized layer computes in its forward pass, so the
reloaded model's outputs are identical (``torch.equal``) to the checkpoint's. The latent full-precision weights are
not stored: an exported file is for inference, not for further distillation.
"""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hubert_lit.atomic import atomic_torch_save
from hubert_lit.quant.binarize import binarize, quantized_layers
from hubert_lit.quant.spec import QuantSpec

PACKED_FORMAT = "hubert-lit-packed/1"


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2**bits)`` into bytes: ``bits`` bits per code, 8 bits per byte."""
    flat = codes.detach().cpu().numpy().astype(np.uint8).reshape(-1)
    if bits == 1:
        planes = flat
    else:
        planes = ((flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).reshape(-1)
    return torch.from_numpy(np.packbits(planes))


def unpack_codes(data: torch.Tensor, bits: int, shape: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack_codes`."""
    count = int(np.prod(shape))
    planes = np.unpackbits(data.cpu().numpy(), count=count * bits)
    if bits == 1:
        codes = planes
    else:
        codes = (planes.reshape(count, bits).astype(np.uint8) << np.arange(bits, dtype=np.uint8)).sum(
            axis=1, dtype=np.uint8
        )
    return torch.from_numpy(codes.astype(np.uint8)).reshape(shape)


def hubert_config_dict(model: nn.Module) -> dict[str, Any]:
    """The model's ``HubertConfig`` as a dict (error if the model has none)."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise ValueError(
            f"{type(model).__name__} has no HubertConfig (.config); only HuBERT models can be exported"
        )
    return config.to_dict()


def packed_payload(model: nn.Module) -> dict[str, Any]:
    """The export dict (see the module docstring) of a quantized ``model``."""
    spec = getattr(model, "quant_spec", None)
    if spec is None:
        raise ValueError(
            "the model is full precision; export packs quantized models (run a distillation first)"
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
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k not in skip}
    return {
        "format": PACKED_FORMAT,
        "config": hubert_config_dict(model),
        "quant_spec": spec.to_dict(),
        "state_dict": state,
        "packed": packed,
    }


def model_from_packed(payload: dict[str, Any], source: str = "<payload>") -> nn.Module:
    """Rebuild the quantized model of an export dict, in eval mode."""
    from hubert_lit.models.config import HubertConfig
    from hubert_lit.models.hubert import HubertModel

    if payload.get("format") != PACKED_FORMAT:
        raise ValueError(
            f"{source}: not a packed export (format {payload.get('format')!r}, expected {PACKED_FORMAT!r})"
        )
    for key in ("config", "quant_spec", "state_dict", "packed"):
        if key not in payload:
            raise ValueError(f"{source}: packed export lacks the key {key!r}")
    model = HubertModel(HubertConfig.from_dict(payload["config"]))
    binarize(model, QuantSpec.from_dict(payload["quant_spec"]))
    layers = dict(quantized_layers(model))
    if set(layers) != set(payload["packed"]):
        missing, extra = (
            sorted(set(layers) - set(payload["packed"])),
            sorted(set(payload["packed"]) - set(layers)),
        )
        raise ValueError(
            f"{source}: packed layers do not match the rebuilt model (missing {missing}, unexpected {extra})"
        )
    result = model.load_state_dict(payload["state_dict"], strict=False)
    expected_missing = {f"{n}.{p}" for n in layers for p in ("weight", "weight_is_quantized")}
    if set(result.missing_keys) != expected_missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: state_dict does not match the model: missing "
            f"{sorted(set(result.missing_keys) - expected_missing)}, unexpected "
            f"{sorted(result.unexpected_keys)}"
        )
    for name, layer in layers.items():
        entry = payload["packed"][name]
        shape = tuple(entry["shape"])
        if shape != tuple(layer.weight.shape) or entry["bits"] != layer.weight_bits:
            raise ValueError(
                f"{source}: packed layer {name!r} has shape {shape} / {entry['bits']} bits, the model "
                f"expects {tuple(layer.weight.shape)} / {layer.weight_bits} bits"
            )
        layer.load_quantized_weight(unpack_codes(entry["codes"], entry["bits"], shape), entry["step"])
    return model.eval()


def load_packed(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Read a file written by :func:`export_model`."""
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict):
        raise ValueError(f"{path}: expected a dict, got {type(payload).__name__}")
    return model_from_packed(payload, str(path))


def export_model(model: nn.Module, out: str | os.PathLike) -> int:
    """Write the packed export of ``model`` to ``out``; returns the file size in bytes."""
    out = Path(out)
    atomic_torch_save(packed_payload(model), out)
    return out.stat().st_size


def fp32_checkpoint_bytes(model: nn.Module) -> int:
    """Size of ``torch.save`` of the model's state_dict with every floating tensor in float32 (the FP baseline).

    For a quantized model the latent weights stand in for the full-precision weights and the quantizer entries
    are left out, so this is the size of the equivalent full-precision model.
    """
    keep = {}
    for key, value in model.state_dict().items():
        leaf = key.rsplit(".", 1)[-1]
        if ".input_quant." in key or leaf in ("weight_is_quantized",) or "_hook." in key:
            continue
        keep[key] = value.float() if value.is_floating_point() else value
    buffer = io.BytesIO()
    torch.save(keep, buffer)
    return buffer.getbuffer().nbytes


def verify_export(model: nn.Module, path: str | os.PathLike, seconds: float = 1.0) -> bool:
    """Reload ``path`` and check that its features equal ``model``'s on a random waveform (``torch.equal``)."""
    from hubert_lit import load_model

    reloaded = load_model(path)
    model = model.eval()
    generator = torch.Generator().manual_seed(0)
    samples = int(16000 * seconds)
    wave = torch.randn(1, samples, generator=generator)
    lengths = torch.tensor([samples])
    with torch.no_grad():
        ref, _ = model.extract_features(wave, lengths)
        got, _ = reloaded.extract_features(wave, lengths)
    return all(torch.equal(a, b) for a, b in zip(ref, got)) and len(ref) == len(got)


def _export_full_precision(model: nn.Module, args: argparse.Namespace) -> int:
    from hubert_lit.models import save_model

    save_model(model, args.out)
    params = sum(p.numel() for p in model.parameters())
    print(f"full-precision model: {params:,} parameters")
    print(f"checkpoint file      {_megabytes(args.checkpoint.stat().st_size):>12}  {args.checkpoint}")
    print(f"model file           {_megabytes(args.out.stat().st_size):>12}  {args.out}")
    if not args.no_verify:
        if not verify_export(model, args.out):
            print(f"error: {args.out} does not reproduce the checkpoint's outputs")
            return 1
        print("verified: the reloaded model file gives identical features")
    return 0


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hubert_lit export",
        description="Pack a quantized (BiT) model's binary weights 8 per byte into a file hubert_lit.load_model "
        "reads; prints its size next to the FP32 checkpoint's. A full-precision checkpoint becomes a plain model "
        "file (config + weights, no optimizer state).",
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        type=Path,
        help="a distillation or pretraining checkpoint (.ckpt) or a save_model file",
    )
    parser.add_argument(
        "--out", required=True, type=Path, help="output file (e.g. model.packed.pt, or model.pt for FP)"
    )
    parser.add_argument(
        "--no-verify",
        action="store_true",
        help="skip reloading the file and checking its outputs against the checkpoint's "
        "(1 s of random audio, exact equality)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from hubert_lit import load_model

    if not args.checkpoint.is_file():
        print(f"error: checkpoint {args.checkpoint} does not exist")
        return 2
    model = load_model(args.checkpoint)
    if getattr(model, "quant_spec", None) is None:
        return _export_full_precision(model, args)
    size = export_model(model, args.out)
    layers = list(quantized_layers(model))
    binary_params = sum(layer.weight.numel() for _, layer in layers)
    print(f"{model.quant_spec.name}: {len(layers)} quantized layers, {binary_params:,} quantized weights")
    print(f"checkpoint file      {_megabytes(args.checkpoint.stat().st_size):>12}  {args.checkpoint}")
    print(
        f"FP32 model state     {_megabytes(fp32_checkpoint_bytes(model)):>12}  (torch.save of the FP32 weights)"
    )
    print(f"packed export        {_megabytes(size):>12}  {args.out}")
    if not args.no_verify:
        if not verify_export(model, args.out):
            print(f"error: {args.out} does not reproduce the checkpoint's outputs")
            return 1
        print("verified: the reloaded export gives identical features")
    return 0
