"""Export a checkpoint for inference: a binarized model as a packed file (8 one-bit weights per byte), a
full-precision one as a plain model file (config + weights, no optimizer or trainer state). Options: the parts kept
in full precision at 16 bits, and the pretraining head left out. File formats: :mod:`hubert_lit.checkpoint`."""

from __future__ import annotations

import copy
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hubert_lit.checkpoint import load_model, save_model, save_packed
from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.models import HubertModel
from hubert_lit.profile.counters import storage
from hubert_lit.quant.binarize import quantized_layers


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_checkpoint` wrote."""

    out: Path
    packed: bool  # False: a full-precision model file
    spec_name: str | None  # e.g. "W1A1"
    parameters: int
    quantized_layers: int
    quantized_weights: int
    checkpoint_bytes: int
    fp32_bytes: int  # torch.save of the equivalent FP32 weights
    file_bytes: int
    verified: bool | None  # None: not checked
    full_precision_bits: int = 32
    head_dropped: bool = False
    paper_storage_bytes: float | None = (
        None  # Table 1's "16-bit + 1-bit" storage of the model (binarized only)
    )


def fp32_state_bytes(model: HubertModel) -> int:
    """Size of ``torch.save`` of the model's state_dict with every floating tensor in float32 (the FP baseline).

    For a binarized model the latent weights stand in for the full-precision weights and the quantizer entries
    are left out, so this is the size of the equivalent full-precision model.
    """
    keep = {}
    for key, value in model.state_dict().items():
        leaf = key.rsplit(".", 1)[-1]
        if ".input_quant." in key or leaf == "weight_is_quantized" or "_hook." in key:
            continue
        keep[key] = value.float() if value.is_floating_point() else value
    buffer = io.BytesIO()
    torch.save(keep, buffer)
    return buffer.getbuffer().nbytes


def rounded_copy(model: HubertModel, full_precision_bits: int) -> HubertModel:
    """``model``, or a copy whose stored float parameters and buffers went through ``full_precision_bits`` (16:
    float16 and back), i.e. the model an export with those bits holds. Quantized layers' latent weights are not
    stored (their codes and steps are), so they are left as they are."""
    if full_precision_bits == 32:
        return model
    rounded = copy.deepcopy(model)
    latent = {f"{name}.weight" for name, _ in quantized_layers(rounded)}
    with torch.no_grad():
        for key, value in rounded.state_dict().items():
            if key not in latent and value.is_floating_point():
                value.copy_(value.half().float())
    return rounded


def verify_export(
    model: HubertModel, path: str | os.PathLike, seconds: float = 1.0, full_precision_bits: int = 32
) -> bool:
    """Reload ``path`` and check that its features equal those of ``model`` (with its full-precision parts at
    ``full_precision_bits``) on a random waveform (``torch.equal``)."""
    reloaded = load_model(path)
    model = rounded_copy(model, full_precision_bits).eval()
    generator = torch.Generator().manual_seed(0)
    samples = int(SAMPLE_RATE * seconds)
    wave = torch.randn(1, samples, generator=generator)
    lengths = torch.tensor([samples])
    with torch.no_grad():
        ref, _ = model.extract_features(wave, lengths)
        got, _ = reloaded.extract_features(wave, lengths)
    return len(ref) == len(got) and all(torch.equal(a, b) for a, b in zip(ref, got))


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    verify: bool = True,
    full_precision_bits: int = 32,
    drop_head: bool = False,
) -> ExportReport:
    """Write the inference file of the model in ``checkpoint`` (any file :func:`hubert_lit.load_model` reads) to
    ``out``: packed when the model is binarized, a plain model file otherwise. ``full_precision_bits=16`` stores
    what is not binary at 16 bits, ``drop_head`` leaves out the pretraining head. ``verify`` reloads the file and
    compares its features with the checkpoint's (with the same 16-bit rounding)."""
    checkpoint, out = Path(checkpoint), Path(out)
    model = load_model(checkpoint)
    layers = list(quantized_layers(model))
    packed = model.quant_spec is not None
    if packed:
        save_packed(model, out, full_precision_bits, drop_head)
    else:
        save_model(model, out, full_precision_bits, drop_head)
    return ExportReport(
        out=out,
        packed=packed,
        spec_name=model.quant_spec.name if packed else None,
        parameters=sum(p.numel() for p in model.parameters()),
        quantized_layers=len(layers),
        quantized_weights=sum(layer.weight.numel() for _, layer in layers),
        checkpoint_bytes=checkpoint.stat().st_size,
        fp32_bytes=fp32_state_bytes(model),
        file_bytes=out.stat().st_size,
        verified=verify_export(model, out, full_precision_bits=full_precision_bits) if verify else None,
        full_precision_bits=full_precision_bits,
        head_dropped=drop_head,
        paper_storage_bytes=storage(model).paper_bytes if packed else None,
    )
