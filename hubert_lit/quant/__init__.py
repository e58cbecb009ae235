"""BiT binarization (Liu et al. 2022): quantizers, quantized layers, :func:`binarize`, the quant spec and bit packing."""

from hubert_lit.quant.binarize import (
    activation_quantizers,
    apply_stored_spec,
    binarize,
    calibrating_scales,
    dequantize,
    quantization_plan,
    quantized_layers,
    requantize,
)
from hubert_lit.quant.modules import ActivationQuantizer, BinaryConv1d, BinaryLinear
from hubert_lit.quant.spec import QuantSpec

__all__ = [
    "ActivationQuantizer",
    "BinaryConv1d",
    "BinaryLinear",
    "QuantSpec",
    "activation_quantizers",
    "apply_stored_spec",
    "binarize",
    "calibrating_scales",
    "dequantize",
    "quantization_plan",
    "quantized_layers",
    "requantize",
]
