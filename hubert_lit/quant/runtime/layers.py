"""Inference-only layers of the binary runtime: bit-packed weights, activations packed once per call, popcount GEMMs
with the scale and bias epilogue fused (:mod:`hubert_lit.quant.binary_kernels`).

:class:`PackedLinear` replaces a W1A1 :class:`~hubert_lit.quant.BinaryLinear`, :class:`PackedPointwiseConv1d` a
pointwise :class:`~hubert_lit.quant.BinaryConv1d`. Each keeps only what inference needs: the weight bits (no float
copy), one float32 scale per output column (``a * step / 2``), the bias and the input quantizer's shift. Signed
``{-a, a}`` inputs run XNOR-popcount GEMMs, unsigned ``{0, a}`` ones (after a ReLU) AND-popcount GEMMs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hubert_lit.quant import binary_kernels as bk
from hubert_lit.quant.binarizers import MIN_ALPHA
from hubert_lit.quant.modules import ActivationQuantizer, BinaryConv1d, BinaryLinear

TRAINING_ERROR = (
    "{name} belongs to the binary runtime, which is for inference only (its weights are bit-packed and have no "
    "gradient); train the simulated model instead (hubert_lit.load_model(path) without runtime='binary')"
)


class InferenceOnly(nn.Module):
    """Base of the runtime modules: built in eval mode; ``train(True)`` and a forward in training mode raise."""

    def __init__(self) -> None:
        super().__init__()
        self.training = False

    def train(self, mode: bool = True) -> InferenceOnly:
        if mode:
            raise RuntimeError(TRAINING_ERROR.format(name=type(self).__name__))
        return super().train(False)

    def check_inference(self) -> None:
        """Raise if the module was switched to training mode behind ``train``'s back."""
        if self.training:
            raise RuntimeError(TRAINING_ERROR.format(name=type(self).__name__))


def binary_alpha(quant: ActivationQuantizer, name: str) -> float:
    """The activation scale ``a`` a 1-bit quantizer uses in eval mode (clamped as in its forward pass)."""
    if quant.bits != 1:
        raise ValueError(f"{name}: the binary runtime needs 1-bit activations, got {quant.bits} bits")
    if not quant.is_initialized():
        raise ValueError(
            f"{name}: the activation scale was never initialised (no training batch has passed this quantizer), "
            "so evaluation would use each batch's own statistic; the binary runtime needs a trained model"
        )
    return float(quant.alpha.detach().float().clamp_min(MIN_ALPHA))


def binary_weight(layer: BinaryLinear | BinaryConv1d, name: str) -> tuple[Tensor, Tensor]:
    """1-bit weight codes ``(out, in[, 1])`` (1 = ``+step / 2``) and the step (one value, or one per output channel)
    of a quantized layer, from its latent weight or, for a loaded packed export, from its frozen ``+-step / 2``."""
    if layer.weight_bits != 1:
        raise ValueError(f"{name}: the binary runtime needs 1-bit weights, got {layer.weight_bits} bits")
    if not layer.weight_frozen():
        codes, step = layer.weight_codes()
        return codes, step.detach().float()
    weight = layer.weight.detach().float()
    half = weight.abs().flatten(1) if layer.per_channel else weight.abs().reshape(1, -1)
    if not bool((half == half[:, :1]).all()):
        raise ValueError(f"{name}: the frozen weight does not take two values +-step/2 per scale group")
    return (weight > 0).to(torch.uint8), 2 * half[:, 0]


class _PackedGemm(InferenceOnly):
    """Shared state of the packed layers: the weight panels, the fused epilogue and the input binarizer."""

    def __init__(self, layer: BinaryLinear | BinaryConv1d, name: str, in_features: int, out_features: int):
        super().__init__()
        quant = layer.input_quant
        if not isinstance(quant, ActivationQuantizer) or quant.keep_zeros:
            raise ValueError(f"{name}: not a layer with a binarized input the binary runtime can pack")
        codes, step = binary_weight(layer, name)
        self.name = name
        self.in_features, self.out_features = in_features, out_features
        self.signed = quant.signed
        self.alpha = binary_alpha(quant, f"{name}.input_quant")
        self._panels = bk.pack_weight(codes)
        self.register_buffer("weight_words", self._panels.words)
        self.register_buffer("scale", bk.column_scale(self.alpha, step.reshape(-1) / 2, out_features))
        bias = None if layer.bias is None else layer.bias.detach().float().contiguous().clone()
        self.register_buffer("bias", bias)
        shift = None if quant.shift is None else quant.shift.detach().float().contiguous().clone()
        self.register_buffer("input_shift", shift)

    @property
    def weight(self) -> bk.BitPanels:
        """The weight as the kernels' right operand (over the ``weight_words`` buffer)."""
        if self._panels.words is not self.weight_words:
            self._panels = bk.BitPanels(self.weight_words, self.in_features, self.out_features)
        return self._panels

    def extra_repr(self) -> str:
        kind = "XNOR (signed input)" if self.signed else "AND (unsigned input)"
        return f"in={self.in_features}, out={self.out_features}, {kind}, bias={self.bias is not None}"

    def pack_input(self, x: Tensor) -> bk.BitRows:
        """The input quantizer's decisions on ``(..., in)`` as bits: ``x + shift >= 0`` (signed) or ``>= a / 2``."""
        if self.signed:
            return bk.pack_signed(x, self.input_shift)
        return bk.pack_unsigned(x, self.alpha, self.input_shift)

    def integer_dots(self, x: Tensor) -> Tensor:
        """The GEMM's exact int32 dot products of the input levels (+-1 or 0/1) with the weight signs."""
        gemm = bk.xnor_gemm if self.signed else bk.and_gemm
        return gemm(self.pack_input(x), self.weight, None)

    def _gemm(self, x: Tensor) -> Tensor:
        """``(..., in)`` float32 -> ``(..., out)``: pack the input's bits, one popcount GEMM, fused epilogue."""
        gemm = bk.xnor_gemm if self.signed else bk.and_gemm
        return gemm(self.pack_input(x), self.weight, self.scale, self.bias)


class PackedLinear(_PackedGemm):
    """A W1A1 Linear on the popcount kernels: ``(..., in) -> (..., out)``."""

    def __init__(self, layer: BinaryLinear, name: str = "linear"):
        super().__init__(layer, name, layer.in_features, layer.out_features)

    def forward(self, x: Tensor) -> Tensor:
        self.check_inference()
        return self._gemm(x)


def is_pointwise(conv: BinaryConv1d) -> bool:
    """A kernel-1 convolution without grouping, stride, padding or dilation: a Linear over channels."""
    return (
        conv.kernel_size == (1,)
        and conv.groups == 1
        and conv.stride == (1,)
        and conv.dilation == (1,)
        and conv.padding in ((0,), "valid")
    )


class PackedPointwiseConv1d(_PackedGemm):
    """A W1A1 pointwise Conv1d on the popcount kernels: ``(B, C_in, T) -> (B, C_out, T)`` (a transposed view of
    the GEMM's ``(B, T, C_out)``, which the conv modules transpose back to a contiguous tensor)."""

    def __init__(self, conv: BinaryConv1d, name: str = "conv"):
        if not is_pointwise(conv):
            raise ValueError(
                f"{name}: only pointwise (kernel 1, ungrouped) convolutions run as popcount GEMMs"
            )
        super().__init__(conv, name, conv.in_channels, conv.out_channels)

    def forward(self, x: Tensor) -> Tensor:
        self.check_inference()
        return self._gemm(x.transpose(1, 2)).transpose(1, 2)

    def integer_dots(self, x: Tensor) -> Tensor:
        """As :meth:`PackedLinear.integer_dots`, for ``(B, C_in, T)`` -> ``(B, C_out, T)``."""
        return super().integer_dots(x.transpose(1, 2)).transpose(1, 2)
