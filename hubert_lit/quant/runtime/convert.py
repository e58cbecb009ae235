"""``to_binary_runtime(model)``: swap a binarized model's W1A1 layers and attention for the popcount-kernel modules.

The conversion replaces modules in place and changes no model code: the encoders call the replacements exactly as
they called the simulated layers. What changes:

* every 1-bit :class:`~hubert_lit.quant.BinaryLinear` -> :class:`PackedLinear`;
* every pointwise 1-bit :class:`~hubert_lit.quant.BinaryConv1d` -> :class:`PackedPointwiseConv1d`;
* every attention module with 1-bit q/k/v/probability hooks -> :class:`PackedAttention`.

Depthwise convolutions (not GEMMs) stay simulated layers, their weights frozen at their quantized values so they
are not re-quantized on every call. Everything full precision (front end, positional embeddings, norms, softmax,
the relative-position term under the default spec) runs as before.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from hubert_lit.models.attention import MultiHeadAttention
from hubert_lit.quant import binary_kernels as bk
from hubert_lit.quant.binarize import activation_quantizers, quantized_layers
from hubert_lit.quant.binary_kernels import extension
from hubert_lit.quant.modules import BinaryConv1d, BinaryLinear
from hubert_lit.quant.runtime.attention import PackedAttention, runs_binary
from hubert_lit.quant.runtime.layers import (
    InferenceOnly,
    PackedLinear,
    PackedPointwiseConv1d,
    binary_alpha,
    is_pointwise,
)

RUNTIMES = ("simulated", "binary")
_fallback_warned = False


def is_binary_runtime(model: nn.Module) -> bool:
    """True when ``model`` runs on the binary kernels (it holds runtime modules)."""
    return any(isinstance(m, InferenceOnly) for m in model.modules())


def kernels_ready() -> bool:
    """True when the compiled kernels can run the binary runtime. Otherwise say once per process why not, and that
    models keep running simulated (the kernel layer's own fallback warning is folded into this one)."""
    global _fallback_warned
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        state = extension.load()
    if state.available and bk.kernels_in_use():
        return True
    if not _fallback_warned:
        _fallback_warned = True
        reason = state.reason if not state.available else "forced by binary_kernels.use_fallback()"
        warnings.warn(
            f"hubert_lit binary runtime: binary kernels unavailable ({reason}); running the simulated model "
            "instead (same outputs within float32 rounding, no speed-up)",
            RuntimeWarning,
            stacklevel=3,
        )
    return False


def _split(name: str) -> tuple[str, str]:
    parent, _, child = name.rpartition(".")
    return parent, child


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, child = _split(name)
    setattr(model.get_submodule(parent), child, new)


def _check_convertible(model: nn.Module) -> None:
    spec = getattr(model, "quant_spec", None)
    if spec is None:
        raise ValueError(
            "the binary runtime runs binarized (W1A1) models; this model is full precision (binarize and distil "
            "it first, or load it with runtime='simulated')"
        )
    if (spec.weight_bits, spec.activation_bits) != (1, 1):
        raise ValueError(
            f"the binary runtime runs W1A1 models (1-bit weights and activations), not {spec.name}"
        )
    for param in model.parameters():
        if param.device.type != "cpu" or param.dtype != torch.float32:
            raise ValueError(
                f"the binary runtime runs float32 models on the CPU, got {param.dtype} on {param.device}"
            )
    for name, quant in activation_quantizers(model):
        binary_alpha(quant, name)  # raises for uninitialised scales, naming the site


def to_binary_runtime(model: nn.Module) -> nn.Module:
    """Convert a binarized (W1A1) model, in place, to run on the popcount kernels; returns it in eval mode.

    The result is for inference only: weights are bit-packed (their float copies are dropped), and ``train()`` or a
    training-mode forward raise. When the kernels cannot be used (no compiler, ``HUBERT_LIT_BINARY_KERNELS=0``,
    inside ``binary_kernels.use_fallback()``), one warning per process says so and the model stays simulated.
    A model already converted is returned as is.
    """
    if is_binary_runtime(model):
        return model
    _check_convertible(model)
    model.eval()
    if not kernels_ready():
        return model
    with torch.no_grad():
        for name, layer in list(quantized_layers(model)):
            if isinstance(layer, BinaryLinear):
                _replace(model, name, PackedLinear(layer, name))
            elif isinstance(layer, BinaryConv1d) and is_pointwise(layer):
                _replace(model, name, PackedPointwiseConv1d(layer, name))
            elif not layer.weight_frozen():  # depthwise: simulated, but quantized once rather than per call
                layer.load_quantized_weight(*layer.weight_codes())
        for name, module in list(model.named_modules()):
            if isinstance(module, MultiHeadAttention) and runs_binary(module):
                _replace(model, name, PackedAttention(module, name))
    return model
