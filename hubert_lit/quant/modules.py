"""Quantized drop-in modules: :class:`ActivationQuantizer`, :class:`BinaryLinear` and :class:`BinaryConv1d`.

``BinaryLinear`` / ``BinaryConv1d`` subclass ``nn.Linear`` / ``nn.Conv1d``, so the latent full-precision weight and
the bias keep their names and the modules keep every constructor argument (stride, padding, groups). The input
is quantized by an ``input_quant`` submodule (``nn.Identity`` for full-precision activations) and the weight by
:func:`~hubert_lit.quant.binarizers.quantize_weight` on every forward pass. Biases stay full precision (BiT).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from hubert_lit.quant.binarizers import (
    MIN_ALPHA,
    SUPPORTED_ACTIVATION_BITS,
    SUPPORTED_WEIGHT_BITS,
    activation_range,
    check_bits,
    dequantize_weight,
    elastic_quantize,
    initial_alpha,
    quantize_weight,
    quantize_weight_codes,
)

FULL_PRECISION_BITS = 32


class ActivationQuantizer(nn.Module):
    """BiT elastic activation quantizer: ``x + shift`` (per channel, learnable), then ``alpha * levels``.

    Args:
        bits: activation bits (1 gives ``{-alpha, +alpha}`` or ``{0, alpha}``).
        signed: symmetric set (``{-a, +a}``) or non-negative set (``{0, a}``; for post-ReLU / softmax inputs).
        channels: size of the learnable shift; ``None`` for sites without a fixed channel axis (attention
            probabilities), which then get no shift.
        channel_dim: the axis of ``x`` the shift runs along (-1 for ``(B, T, C)``, 1 for ``(B, C, T)``).
        keep_zeros: inputs that are exactly 0 stay 0 (before the shift). Used in front of depthwise convolutions,
            whose callers zero the padded frames: binarizing those zeros to ``+-alpha`` would let padding leak
            into valid frames, while a 0 behaves like the convolution's own zero padding.
        min_offset: (unsigned, more than one bit) subtract the tensor's minimum before quantizing and add it back
            after, as BiT's multi-bit unsigned quantizer does; the minimum is a constant of the batch (no gradient).

    ``alpha`` is initialised from the first batch seen in training mode (BiT: ``2 mean|x|`` signed, ``4 mean|x|``
    unsigned, averaged over ranks under torch.distributed). An eval-mode forward before that uses the same
    statistic of its own batch without storing it, so Lightning's sanity-check batch never sets ``alpha``. The
    ``initialized`` buffer is part of the state_dict, so a loaded model keeps its trained scales.
    """

    def __init__(
        self,
        bits: int = 1,
        signed: bool = True,
        channels: int | None = None,
        channel_dim: int = -1,
        keep_zeros: bool = False,
        min_offset: bool = False,
    ):
        super().__init__()
        check_bits(bits, SUPPORTED_ACTIVATION_BITS, "activation bits")
        self.bits = bits
        self.signed = signed
        self.channel_dim = channel_dim
        self.keep_zeros = keep_zeros
        self.min_offset = min_offset and not signed and bits > 1
        self.alpha = nn.Parameter(torch.tensor(1.0))
        self.shift = nn.Parameter(torch.zeros(channels)) if channels is not None else None
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized_seen = False  # host-side cache of ``initialized`` (avoids a device sync per call)

    def is_initialized(self) -> bool:
        """Whether ``alpha`` holds a data-initialised (or trained / loaded) value."""
        if not self._initialized_seen:
            self._initialized_seen = bool(self.initialized)
        return self._initialized_seen

    def _load_from_state_dict(self, *args, **kwargs):
        self._initialized_seen = False
        super()._load_from_state_dict(*args, **kwargs)

    @property
    def levels(self) -> tuple[int, int]:
        """Integer range (Qn, Qp) of the quantized values (in units of alpha)."""
        return activation_range(self.bits, self.signed)

    def extra_repr(self) -> str:
        shift = "none" if self.shift is None else f"{self.shift.numel()}@dim{self.channel_dim}"
        return (
            f"bits={self.bits}, signed={self.signed}, shift={shift}, keep_zeros={self.keep_zeros}, "
            f"min_offset={self.min_offset}"
        )

    def _shifted(self, x: Tensor) -> Tensor:
        if self.shift is None:
            return x
        if x.shape[self.channel_dim] != self.shift.numel():
            raise ValueError(
                f"activation quantizer expects {self.shift.numel()} channels on dim "
                f"{self.channel_dim}, got input of shape {tuple(x.shape)}"
            )
        shape = [1] * x.dim()
        shape[self.channel_dim] = -1
        return x + self.shift.view(shape).to(x.dtype)

    def _statistic_alpha(self, x: Tensor, nonzero: Tensor | None) -> Tensor:
        sample = x.detach().float()
        if nonzero is not None and bool(nonzero.any()):
            sample = sample[nonzero]
        alpha = initial_alpha(sample, self.bits, self.signed).clamp_min(MIN_ALPHA)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(alpha)
            alpha = alpha / dist.get_world_size()
        return alpha

    def forward(self, x: Tensor) -> Tensor:
        nonzero = (x != 0) if self.keep_zeros else None
        shifted = self._shifted(x)
        offset = shifted.detach().amin() if self.min_offset else None
        if offset is not None:
            shifted = shifted - offset
        alpha = self.alpha
        if not self.is_initialized():
            if self.training:
                with torch.no_grad():
                    self.alpha.copy_(self._statistic_alpha(shifted, nonzero))
                    self.initialized.fill_(True)
                self._initialized_seen = True
            else:
                alpha = self._statistic_alpha(shifted, nonzero)
        out = elastic_quantize(shifted, alpha, self.bits, self.signed)
        if offset is not None:
            out = out + offset
        return out * nonzero if nonzero is not None else out


def make_activation_quantizer(
    bits: int,
    signed: bool,
    channels: int | None = None,
    channel_dim: int = -1,
    keep_zeros: bool = False,
    min_offset: bool = False,
) -> nn.Module:
    """An :class:`ActivationQuantizer`, or ``nn.Identity`` when ``bits`` is 32 (full-precision activations)."""
    if bits == FULL_PRECISION_BITS:
        return nn.Identity()
    return ActivationQuantizer(bits, signed, channels, channel_dim, keep_zeros, min_offset)


class _QuantizedWeightMixin:
    """Weight handling shared by :class:`BinaryLinear` and :class:`BinaryConv1d`.

    ``weight_is_quantized`` (a state_dict buffer) is set by :meth:`freeze_weight`, which replaces the latent weight
    by its quantized value; the forward pass then uses the stored weight as is (an exported model has no latent
    weights, and re-quantizing an already quantized tensor is not bit-exact because of the float mean).
    """

    weight: nn.Parameter
    weight_bits: int
    per_channel: bool
    weight_is_quantized: Tensor

    def _init_quant(self, weight_bits: int, per_channel: bool, input_quant: nn.Module | None) -> None:
        check_bits(weight_bits, SUPPORTED_WEIGHT_BITS, "weight bits")
        self.weight_bits = weight_bits
        self.per_channel = per_channel
        self.input_quant = input_quant if input_quant is not None else nn.Identity()
        self.register_buffer("weight_is_quantized", torch.tensor(False, device=self.weight.device))
        self._frozen_seen: bool | None = None  # host-side cache of ``weight_is_quantized`` (no sync per call)

    def weight_frozen(self) -> bool:
        """Whether the stored weight is already its quantized value (read from the buffer once, then cached)."""
        if self._frozen_seen is None:
            self._frozen_seen = bool(self.weight_is_quantized)
        return self._frozen_seen

    def _load_from_state_dict(self, *args, **kwargs):
        self._frozen_seen = None
        super()._load_from_state_dict(*args, **kwargs)

    def quantized_weight(self) -> Tensor:
        """The weight used in the forward pass (straight-through gradient to the latent weight)."""
        if self.weight_frozen():
            return self.weight
        return quantize_weight(self.weight, self.weight_bits, self.per_channel)

    def weight_codes(self) -> tuple[Tensor, Tensor]:
        """Integer codes (uint8, weight shape) and the step (per tensor or per output channel), for export."""
        if self.weight_frozen():
            raise RuntimeError(
                "weight is already frozen to its quantized value; codes come from the latent weight"
            )
        return quantize_weight_codes(self.weight, self.weight_bits, self.per_channel)

    @torch.no_grad()
    def load_quantized_weight(self, codes: Tensor, step: Tensor) -> None:
        """Set the weight to ``dequantize(codes, step)`` and mark it as already quantized."""
        self.weight.copy_(
            dequantize_weight(codes, step, self.weight_bits, self.weight.dtype).view_as(self.weight)
        )
        self.weight_is_quantized.fill_(True)
        self._frozen_seen = True


class BinaryLinear(_QuantizedWeightMixin, nn.Linear):
    """``nn.Linear`` with quantized weights (one scale per tensor, as BiT) and a quantized input."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_bits: int = 1,
        input_quant: nn.Module | None = None,
        device=None,
        dtype=None,
    ):
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_quant(weight_bits, per_channel=False, input_quant=input_quant)

    @classmethod
    def from_float(cls, linear: nn.Linear, weight_bits: int, input_quant: nn.Module | None) -> BinaryLinear:
        """A BinaryLinear that shares ``linear``'s weight and bias parameters."""
        new = cls(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            weight_bits=weight_bits,
            input_quant=input_quant,
            device=linear.weight.device,
            dtype=linear.weight.dtype,
        )
        new.weight = linear.weight
        new.bias = linear.bias
        return new

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.input_quant(x), self.quantized_weight(), self.bias)


def conv1d_geometry(conv: nn.Conv1d) -> dict[str, Any]:
    """The constructor arguments that rebuild ``conv``'s shape (channels, kernel, stride, padding, groups, ...)."""
    return dict(
        in_channels=conv.in_channels,
        out_channels=conv.out_channels,
        kernel_size=conv.kernel_size[0],
        stride=conv.stride[0],
        padding=conv.padding if isinstance(conv.padding, str) else conv.padding[0],
        dilation=conv.dilation[0],
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )


class BinaryConv1d(_QuantizedWeightMixin, nn.Conv1d):
    """``nn.Conv1d`` (pointwise, depthwise or full; groups kept) with quantized weights: one scale and mean per
    output channel (``per_channel=True``) or per tensor, as a Linear."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding=0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        weight_bits: int = 1,
        input_quant: nn.Module | None = None,
        per_channel: bool = True,
        device=None,
        dtype=None,
    ):
        nn.Conv1d.__init__(
            self,
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
            padding_mode=padding_mode,
            device=device,
            dtype=dtype,
        )
        self._init_quant(weight_bits, per_channel=per_channel, input_quant=input_quant)

    @classmethod
    def from_float(
        cls, conv: nn.Conv1d, weight_bits: int, input_quant: nn.Module | None, per_channel: bool = True
    ) -> BinaryConv1d:
        """A BinaryConv1d with ``conv``'s geometry that shares its weight and bias parameters."""
        new = cls(
            **conv1d_geometry(conv),
            weight_bits=weight_bits,
            input_quant=input_quant,
            per_channel=per_channel,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
        )
        new.weight = conv.weight
        new.bias = conv.bias
        return new

    @property
    def is_depthwise(self) -> bool:
        """True when every group has one input channel (``groups == in_channels``)."""
        return self.groups == self.in_channels and self.groups > 1

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.input_quant(x), self.quantized_weight(), self.bias)
