"""Building blocks shared by the encoder families: feed-forward, convolution module, scale-bias, time
reduction/recovery and the sinusoidal relative positional encoding.

Every module that mixes information across time takes a ``valid`` mask ``(B, T)`` (True = real frame) and
zeroes padded frames before its convolutions, so outputs at valid frames never depend on the padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {"gelu": nn.GELU, "swish": nn.SiLU, "relu": nn.ReLU}


def make_activation(name: str) -> nn.Module:
    """Return a fresh activation module for ``name`` ("gelu", "swish" or "relu")."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class FeedForward(nn.Module):
    """Position-wise feed-forward: Linear(d, f) -> activation -> dropout -> Linear(f, d) -> dropout.

    Parameter names follow torchaudio's ``wav2vec2.components.FeedForward``.
    """

    def __init__(
        self,
        dim: int,
        ffn_dim: int,
        activation: str = "gelu",
        activation_dropout: float = 0.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.intermediate_dense = nn.Linear(dim, ffn_dim)
        self.activation = make_activation(activation)
        self.intermediate_dropout = nn.Dropout(activation_dropout)
        self.output_dense = nn.Linear(ffn_dim, dim)
        self.output_dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        x = self.intermediate_dropout(self.activation(self.intermediate_dense(x)))
        return self.output_dropout(self.output_dense(x))


class MaskedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d over ``(B, C, T)`` whose training statistics use valid frames only.

    Plain BatchNorm pools padded frames into the batch statistics, so a valid frame's output would depend on
    how much padding its batch has (pytorch/audio#4205). In eval mode the running statistics are used, exactly
    as in ``nn.BatchNorm1d``; the state_dict is identical to ``nn.BatchNorm1d``'s.
    """

    def forward(self, x: Tensor, valid: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if valid is None or not self.training or not self.track_running_stats:
            return super().forward(x)
        dtype = x.dtype
        x = x.float()  # statistics in fp32, as nn.BatchNorm under autocast
        m = valid[:, None, :].float()  # (B, 1, T)
        count = m.sum().clamp_min(1.0)
        mean = (x * m).sum(dim=(0, 2)) / count
        var = (((x - mean[None, :, None]) * m) ** 2).sum(dim=(0, 2)) / count
        with torch.no_grad():
            self.num_batches_tracked += 1
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
            unbiased = var * (count / (count - 1).clamp_min(1.0))
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
            self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)
        y = (x - mean[None, :, None]) * torch.rsqrt(var[None, :, None] + self.eps)
        if self.affine:
            y = y * self.weight[None, :, None] + self.bias[None, :, None]
        return y.to(dtype)


class ConvolutionModule(nn.Module):
    """Conformer / Squeezeformer convolution module on ``(B, T, D)`` (no LayerNorm inside; the block owns it).

    pointwise Conv1d d -> 2d -> GLU (Conformer) or Swish (Squeezeformer, then the depthwise conv runs on 2d
    channels) -> zero padded frames -> depthwise Conv1d (odd kernel, 'same' padding) -> BatchNorm (valid frames
    only) -> Swish -> pointwise Conv1d -> d -> dropout.
    """

    def __init__(self, dim: int, kernel_size: int, use_glu: bool = True, dropout: float = 0.0):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"conv_kernel_size must be odd for 'same' padding, got {kernel_size}")
        inner = dim if use_glu else 2 * dim
        self.pointwise_conv1 = nn.Conv1d(dim, 2 * dim, kernel_size=1)
        self.pointwise_activation = nn.GLU(dim=1) if use_glu else nn.SiLU()
        self.depthwise_conv = nn.Conv1d(inner, inner, kernel_size, padding=kernel_size // 2, groups=inner)
        self.batch_norm = MaskedBatchNorm1d(inner)
        self.activation = nn.SiLU()
        self.pointwise_conv2 = nn.Conv1d(inner, dim, kernel_size=1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        y = self.pointwise_activation(self.pointwise_conv1(x.transpose(1, 2)))
        y = y.masked_fill(~valid[:, None, :], 0.0)
        y = self.activation(self.batch_norm(self.depthwise_conv(y), valid))
        y = self.pointwise_conv2(y).transpose(1, 2)
        return self.dropout(y)


class ScaleBias(nn.Module):
    """Learnable per-channel ``x * scale + bias`` (Squeezeformer's adaptive scaling; init 1 and 0)."""

    def __init__(self, dim: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.bias


def reduced_lengths(lengths: Tensor) -> Tensor:
    """Valid frames after the stride-2 time reduction: ceil(n / 2), i.e. the frames kept by ``mask[:, ::2]``."""
    return torch.div(lengths + 1, 2, rounding_mode="floor")


class TimeReduction(nn.Module):
    """Squeezeformer time reduction (official TF code): zero padded frames, right-pad time by
    ``kernel_size - stride``, depthwise Conv1d (stride 2, 'valid') then pointwise Conv1d; output length
    ceil(T / 2). Output frame t reads input frames 2t .. 2t + kernel_size - 1 (zeros past the end).
    """

    def __init__(self, dim: int, kernel_size: int = 5, stride: int = 2):
        super().__init__()
        if stride != 2:
            raise ValueError(f"only stride 2 is supported (recovery repeats each frame twice), got {stride}")
        self.kernel_size = kernel_size
        self.stride = stride
        self.depthwise_conv = nn.Conv1d(dim, dim, kernel_size, stride=stride, groups=dim)
        self.pointwise_conv = nn.Conv1d(dim, dim, kernel_size=1)

    def forward(self, x: Tensor, valid: Tensor) -> Tensor:
        """``x``: (B, T, D), ``valid``: (B, T) -> (B, ceil(T / 2), D)."""
        out_len = (x.shape[1] + 1) // 2
        y = x.masked_fill(~valid[..., None], 0.0).transpose(1, 2)
        # Right padding: kernel_size - stride frames for even T (as the TF code), one more for odd T so that the
        # last half-rate frame is a real conv output (TF zero-fills it instead).
        y = F.pad(y, (0, self.stride * (out_len - 1) + self.kernel_size - y.shape[-1]))
        y = self.pointwise_conv(self.depthwise_conv(y))
        return y.transpose(1, 2)


class TimeRecovery(nn.Module):
    """Squeezeformer time recovery (Temporal U-Net): repeat each frame twice, crop to the saved length,
    Linear(d, d), then add the activation saved before the reduction."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, dim)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        """``x``: (B, T', D) at half rate, ``skip``: (B, T, D) -> (B, T, D)."""
        up = x.repeat_interleave(2, dim=1)[:, : skip.shape[1]]
        return skip + self.linear(up)


class RelativePositionalEncoding(nn.Module):
    """Sinusoidal encodings of the relative positions T-1, T-2, ..., -(T-1) (Transformer-XL / ESPnet order).

    Computed on the fly for each length (no stored table, so nothing length-dependent enters the
    state_dict). Returns ``(1, 2T - 1, dim)``; index ``k`` encodes the relative position ``T - 1 - k``.
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        if dim % 2 != 0:
            raise ValueError(f"relative positional encoding needs an even dim, got {dim}")
        self.dim = dim
        self.base = base

    def forward(
        self, length: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32
    ) -> Tensor:
        positions = torch.arange(length - 1, -length, -1, device=device, dtype=torch.float32)
        inv_freq = torch.exp(
            torch.arange(0, self.dim, 2, device=device, dtype=torch.float32)
            * (-math.log(self.base) / self.dim)
        )
        angles = positions[:, None] * inv_freq[None, :]  # (2T-1, dim/2)
        pe = torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(2 * length - 1, self.dim)
        return pe.to(dtype)[None]
