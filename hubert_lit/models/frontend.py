"""Front end of HuBERT: waveform conv feature extractor, feature projection and conv positional embedding.

Two waveform feature extractors share one implementation (:class:`ConvFeatureExtractor`), differing only in their
list of ``(channels, kernel, stride)`` convolutions:

* ``wav2vec2``: the wav2vec 2.0 / HuBERT extractor (fairseq ``conv_feature_layers``): 7 convs of 512 channels,
  kernels 10,3,3,3,3,2,2, strides 5,2,2,2,2,2,2 (4,200,448 parameters in ``group_norm`` mode).
* ``fastconv``: the paper's "+FastConv" front end. The paper does not define it; **our reading** is SEW's compact
  extractor WFE-C with ``c=64, l=1`` (Wu et al. 2022, asappresearch/sew): 13 convs 64@k10s5, 128@k3s2,
  128@k1s1, 128@k3s2, 128@k1s1, 256@k3s2, 256@k1s1, 256@k3s2, 256@k1s1, 512@k2s2, 512@k1s1, 512@k2s2,
  512@k1s1 (1,843,968 parameters, 7.5x fewer MACs). It keeps the 320-sample stride, the 400-sample receptive
  field and the 512-d output, so it is a drop-in replacement.

Both give ``floor((n - 400) / 320) + 1`` frames for ``n`` samples.

Padding never changes a valid frame: in ``group_norm`` mode the per-channel statistics after the first conv cover
only the frames computed from valid samples (torchaudio and fairseq normalise over the padded length too, so they
agree with us only on unpadded input), ``layer_norm`` mode normalises each frame on its own, and padded positions
are zeroed after every conv so no later layer sees padding garbage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ConvSpec = tuple[int, int, int]  # (out_channels, kernel, stride)

FRONTENDS = ("wav2vec2", "fastconv")
EXTRACTOR_MODES = ("group_norm", "layer_norm")


def wav2vec2_conv_layers(dim: int = 512) -> list[ConvSpec]:
    """The wav2vec 2.0 / HuBERT conv stack with ``dim`` channels (fairseq default 512)."""
    return [(dim, 10, 5)] + [(dim, 3, 2)] * 4 + [(dim, 2, 2)] * 2


def fastconv_conv_layers(dim: int = 512, extra_layers: int = 1) -> list[ConvSpec]:
    """SEW's compact extractor WFE-C (our reading of "+FastConv") with output width ``dim`` = 8c.

    ``extra_layers`` is SEW's ``l``: the number of 1x1 convs after each strided conv but the first.
    """
    if dim % 8:
        raise ValueError(f"fastconv needs conv_dim divisible by 8 (8 * SEW's c), got {dim}")
    c = dim // 8
    layers: list[ConvSpec] = [(c, 10, 5)]
    for width, kernel in ((2 * c, 3), (2 * c, 3), (4 * c, 3), (4 * c, 3), (8 * c, 2), (8 * c, 2)):
        layers.append((width, kernel, 2))
        layers += [(width, 1, 1)] * extra_layers
    return layers


def conv_layers_for(frontend: str, dim: int = 512, extra_layers: int = 1) -> list[ConvSpec]:
    """The conv list of a named front end (``"wav2vec2"`` or ``"fastconv"``)."""
    if frontend == "wav2vec2":
        return wav2vec2_conv_layers(dim)
    if frontend == "fastconv":
        return fastconv_conv_layers(dim, extra_layers)
    raise ValueError(f"unknown frontend {frontend!r}; expected one of {FRONTENDS}")


def conv_output_lengths(lengths: Tensor, layers: Sequence[ConvSpec]) -> Tensor:
    """Valid output frames of an unpadded conv stack: ``floor((n - k) / s) + 1`` per layer, never negative."""
    for _, kernel, stride in layers:
        lengths = torch.clamp(torch.div(lengths - kernel, stride, rounding_mode="floor") + 1, min=0)
    return lengths


def conv_output_length(num_samples: int, layers: Sequence[ConvSpec]) -> int:
    """:func:`conv_output_lengths` for one Python int (no tensor, so nothing to read back)."""
    for _, kernel, stride in layers:
        num_samples = max((num_samples - kernel) // stride + 1, 0)
    return num_samples


def lengths_to_padding_mask(lengths: Tensor, max_len: int) -> Tensor:
    """Boolean ``(B, max_len)`` mask, True on padded positions."""
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


class MaskedGroupNorm(nn.Module):
    """``GroupNorm(C, C)`` (one group per channel) whose statistics use only each utterance's valid frames.

    Computed in fp32 like fairseq's ``Fp32GroupNorm``. On an unpadded input it equals ``nn.GroupNorm(C, C)``.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x``: (B, C, T); ``valid``: (B, T) bool, True on frames computed from valid samples."""
        xf = x.float()
        w = valid[:, None, :].to(xf.dtype)
        count = w.sum(-1, keepdim=True).clamp(min=1.0)
        mean = (xf * w).sum(-1, keepdim=True) / count
        var = ((xf - mean).square() * w).sum(-1, keepdim=True) / count
        y = (xf - mean) * torch.rsqrt(var + self.eps)
        y = y * self.weight.float()[None, :, None] + self.bias.float()[None, :, None]
        return y.to(x.dtype)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a (B, C, T) tensor, in fp32 (fairseq ``Fp32LayerNorm`` + transposes)."""

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:
        """``valid`` is accepted for a uniform interface and unused: each frame is normalised on its own."""
        y = F.layer_norm(
            x.transpose(1, 2).float(),
            self.normalized_shape,
            self.weight.float() if self.weight is not None else None,
            self.bias.float() if self.bias is not None else None,
            self.eps,
        )
        return y.transpose(1, 2).to(x.dtype)


class ConvBlock(nn.Module):
    """Conv1d -> optional norm -> GELU, for one entry of the conv stack."""

    def __init__(self, in_channels: int, spec: ConvSpec, norm: nn.Module | None, bias: bool):
        super().__init__()
        out_channels, kernel, stride = spec
        self.kernel_size = kernel
        self.stride = stride
        self.conv = nn.Conv1d(in_channels, out_channels, kernel, stride=stride, bias=bias)
        self.norm = norm
        nn.init.kaiming_normal_(self.conv.weight)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """(B, C_in, L) and valid lengths -> (B, C_out, T) with padded frames zeroed, and output lengths."""
        x = self.conv(x)
        lengths = conv_output_lengths(lengths, [(0, self.kernel_size, self.stride)])
        valid = ~lengths_to_padding_mask(lengths, x.shape[-1])
        if self.norm is not None:
            x = self.norm(x, valid)
        return F.gelu(x) * valid[:, None, :].to(x.dtype), lengths


class ConvFeatureExtractor(nn.Module):
    """Strided conv stack from a raw 16 kHz waveform to (B, T, C) frames, padding-invariant.

    Args:
        layers: ``(out_channels, kernel, stride)`` per conv.
        mode: ``"group_norm"`` (one per-channel GroupNorm after the first conv, HuBERT Base) or
            ``"layer_norm"`` (a LayerNorm after every conv, HuBERT Large).
        conv_bias: whether the convs have a bias (False in HuBERT).
    """

    def __init__(self, layers: Sequence[ConvSpec], mode: str = "group_norm", conv_bias: bool = False):
        super().__init__()
        if mode not in EXTRACTOR_MODES:
            raise ValueError(f"unknown extractor_mode {mode!r}; expected one of {EXTRACTOR_MODES}")
        self.layers_spec = [tuple(spec) for spec in layers]
        blocks = []
        in_channels = 1
        for i, spec in enumerate(self.layers_spec):
            if mode == "layer_norm":
                norm: nn.Module | None = ChannelLayerNorm(spec[0])
            elif i == 0:
                norm = MaskedGroupNorm(spec[0])
            else:
                norm = None
            blocks.append(ConvBlock(in_channels, spec, norm, conv_bias))
            in_channels = spec[0]
        self.conv_layers = nn.ModuleList(blocks)
        self.output_dim = in_channels

    def output_lengths(self, lengths: Tensor) -> Tensor:
        """Frames produced for ``lengths`` valid samples."""
        return conv_output_lengths(lengths, self.layers_spec)

    def output_length(self, num_samples: int) -> int:
        """Frames produced for ``num_samples`` valid samples (a Python int)."""
        return conv_output_length(num_samples, self.layers_spec)

    def forward(self, waveforms: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """``waveforms`` (B, L) and valid ``lengths`` (B,) -> features (B, T, C) and frame lengths (B,).

        Padded frames of the output are zero.
        """
        if waveforms.ndim != 2:
            raise ValueError(f"waveforms must be (batch, samples), got shape {tuple(waveforms.shape)}")
        x = waveforms.unsqueeze(1)
        lengths = lengths.to(device=waveforms.device, dtype=torch.long)
        for block in self.conv_layers:
            x, lengths = block(x, lengths)
        return x.transpose(1, 2), lengths


class FeatureProjection(nn.Module):
    """LayerNorm(conv_dim) -> Linear(conv_dim, dim) -> Dropout (fairseq ``layer_norm``/``post_extract_proj``)."""

    def __init__(self, in_features: int, out_features: int, dropout: float):
        super().__init__()
        self.layer_norm = nn.LayerNorm(in_features)
        self.projection = nn.Linear(in_features, out_features)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.dropout(self.projection(self.layer_norm(x)))


class ConvPositionalEmbedding(nn.Module):
    """wav2vec 2.0 convolutional positional embedding; returns ``gelu(conv(x))`` for the caller to add to ``x``.

    Grouped Conv1d(dim, dim, kernel, padding=kernel // 2) with weight norm over dim=2 (the kernel axis), the last
    output frame dropped for an even kernel, then GELU. Padded frames are zeroed first, so valid frames never
    depend on how much padding follows them.
    """

    def __init__(self, dim: int, kernel_size: int = 128, groups: int = 16):
        super().__init__()
        if dim % groups:
            raise ValueError(f"pos_conv_groups={groups} must divide the encoder width {dim}")
        self.kernel_size = kernel_size
        conv = nn.Conv1d(dim, dim, kernel_size, padding=kernel_size // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4.0 / (kernel_size * dim)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.num_remove = 1 if kernel_size % 2 == 0 else 0

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``x`` (B, T, D), ``padding_mask`` (B, T) True on padded frames -> (B, T, D)."""
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        y = self.conv(x.transpose(1, 2))
        if self.num_remove:
            y = y[..., : -self.num_remove]
        return F.gelu(y).transpose(1, 2)


class GradMultiply(torch.autograd.Function):
    """Identity in the forward pass; multiplies the gradient by ``scale`` in the backward pass."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return grad * ctx.scale, None
