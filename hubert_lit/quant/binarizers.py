"""Weight and activation quantizers for BiT-style binarization (Liu et al. 2022, "BiT").

Weights (:func:`quantize_weight_codes` / :func:`dequantize_weight`): centre the latent weight on its mean and
quantize it with a uniform mid-rise quantizer of ``2**bits`` levels and no zero level. For one bit this is BiT's
``m * sign(W - mean(W))`` with ``m = mean(|W|)`` exactly; for more bits the step is ``kappa_bits * mean(|W|)``,
where ``kappa`` is the optimal uniform step for a Gaussian source (Max 1960, Table II), so every bit width shares
one formula. Statistics are taken over the whole tensor (Linear) or per output channel (convolutions). The
backward pass is BiT's plain identity straight-through estimator (no clipping, no gradient through the scale).

Activations (:func:`elastic_quantize`): BiT's elastic binarizer, an LSQ quantizer with a learnable scale ``alpha``.
Signed 1-bit outputs ``{-alpha, +alpha}`` (``alpha * sign(x)``, with ``sign(0) = +1`` so there are exactly two
values); unsigned outputs ``alpha * clamp(round(x / alpha), 0, 2**bits - 1)`` (``{0, alpha}`` for one bit); signed
multi-bit uses LSQ's ``[-2**(b-1), 2**(b-1) - 1]`` integer range. The input gradient passes inside the clipping range
only; the scale gradient follows the BiT paper (``sign(x)`` for signed 1-bit, LSQ otherwise) and is multiplied by
LSQ's ``1 / sqrt(numel * Qp)``.

Forward values are computed without the ``x + (q - x).detach()`` trick so they are bit-identical to what a packed
export reproduces.
"""

from __future__ import annotations

import math

import torch

# Optimal uniform-quantizer step for a unit Gaussian with 2**bits levels (Max 1960), divided by E|x| = sqrt(2/pi):
# step = KAPPA[bits] * mean(|W|). KAPPA[1] = 2 gives levels +-mean(|W|), i.e. BiT's BWN binarizer exactly.
_MAX_GAUSSIAN_STEP = {1: 1.596, 2: 0.9957, 3: 0.5860, 4: 0.3352}
WEIGHT_STEP_FACTOR = {1: 2.0} | {
    b: s / math.sqrt(2.0 / math.pi) for b, s in _MAX_GAUSSIAN_STEP.items() if b > 1
}
SUPPORTED_WEIGHT_BITS = tuple(sorted(WEIGHT_STEP_FACTOR))
SUPPORTED_ACTIVATION_BITS = (1, 2, 3, 4, 8)
_MIN_STEP = 1e-8
MIN_ALPHA = 1e-5  # BiT clamps the activation scale at 1e-5 in the forward pass


def check_bits(bits: int, supported: tuple[int, ...], what: str) -> None:
    """Raise a ValueError naming ``what`` if ``bits`` is not one of ``supported``."""
    if bits not in supported:
        raise ValueError(f"{what} must be one of {supported}, got {bits!r}")


def _reduce_dims(weight: torch.Tensor, per_channel: bool) -> tuple[int, ...] | None:
    return tuple(range(1, weight.dim())) if per_channel else None


def weight_statistics(
    weight: torch.Tensor, bits: int, per_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Centre and step of the weight quantizer, shaped to broadcast against ``weight`` (no gradient).

    Centre = mean(W), step = ``WEIGHT_STEP_FACTOR[bits] * mean(|W|)``; per output channel (dim 0) when
    ``per_channel``, else one scalar for the tensor.
    """
    check_bits(bits, SUPPORTED_WEIGHT_BITS, "weight bits")
    w = weight.detach()
    dims = _reduce_dims(w, per_channel)
    if dims is None:
        centre, mean_abs = w.mean(), w.abs().mean()
    else:
        centre, mean_abs = w.mean(dim=dims, keepdim=True), w.abs().mean(dim=dims, keepdim=True)
    step = (WEIGHT_STEP_FACTOR[bits] * mean_abs).clamp_min(_MIN_STEP)
    return centre, step


def quantize_weight_codes(
    weight: torch.Tensor, bits: int, per_channel: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes in ``[0, 2**bits)`` (uint8, same shape as ``weight``) and the step (broadcastable)."""
    centre, step = weight_statistics(weight, bits, per_channel)
    half = 2 ** (bits - 1)
    codes = (torch.floor((weight.detach() - centre) / step) + half).clamp_(0, 2**bits - 1)
    return codes.to(torch.uint8), step


def dequantize_weight(codes: torch.Tensor, step: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    """Weight values ``(code - 2**(bits-1) + 1/2) * step``: ``+-step/2`` for one bit (= ``+-mean|W|``)."""
    offset = 2 ** (bits - 1) - 0.5
    return (codes.to(dtype) - offset) * step.to(dtype)


class _WeightSTE(torch.autograd.Function):
    """Forward: the quantized weight exactly; backward: identity (BiT's BWN straight-through estimator)."""

    @staticmethod
    def forward(ctx, weight: torch.Tensor, bits: int, per_channel: bool) -> torch.Tensor:
        codes, step = quantize_weight_codes(weight, bits, per_channel)
        return dequantize_weight(codes, step, bits, weight.dtype)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output, None, None


def quantize_weight(weight: torch.Tensor, bits: int = 1, per_channel: bool = False) -> torch.Tensor:
    """Quantized weight with a straight-through gradient to the latent full-precision ``weight``."""
    return _WeightSTE.apply(weight, bits, per_channel)


def activation_range(bits: int, signed: bool) -> tuple[int, int]:
    """LSQ integer range (Qn, Qp); signed 1-bit is the sign binarizer, reported as (-1, 1)."""
    check_bits(bits, SUPPORTED_ACTIVATION_BITS, "activation bits")
    if not signed:
        return 0, 2**bits - 1
    if bits == 1:
        return -1, 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def initial_alpha(x: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """BiT's data-dependent initial scale: ``2 mean|x| / sqrt(Qp)`` (signed) or ``4 mean|x| / sqrt(Qp)`` (unsigned).

    Qp is taken as 1 for signed 1-bit (BiT's convention).
    """
    _, qp = activation_range(bits, signed)
    factor = 2.0 if signed else 4.0
    return factor * x.detach().abs().mean() / math.sqrt(max(qp, 1))


def _levels(x: torch.Tensor, a: torch.Tensor, qn: int, qp: int, signed_binary: bool) -> torch.Tensor:
    if signed_binary:
        return torch.where(x >= 0, 1.0, -1.0).to(x.dtype)
    return torch.round(x / a).clamp_(qn, qp)


class _ElasticQuant(torch.autograd.Function):
    """BiT elastic (LSQ) quantizer; see the module docstring for the gradients.

    Only the input and the scale are saved; the levels are recomputed in the backward pass (one activation-sized
    tensor per site instead of three).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
        qn, qp = activation_range(bits, signed)
        a = alpha.clamp_min(MIN_ALPHA).to(x.dtype)
        ctx.signed_binary = signed and bits == 1
        ctx.qn, ctx.qp = qn, qp
        ctx.alpha_dtype, ctx.alpha_shape = alpha.dtype, alpha.shape
        ctx.save_for_backward(x, a)
        return _levels(x, a, qn, qp, ctx.signed_binary) * a

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        x, a = ctx.saved_tensors
        qn, qp = ctx.qn, ctx.qp
        q = x / a
        levels = _levels(x, a, qn, qp, ctx.signed_binary)
        inside = (q >= qn) & (q <= qp)
        grad_x = grad_output * inside
        if ctx.signed_binary:
            d_alpha = levels
        else:
            d_alpha = torch.where(inside, levels - q, torch.where(q < qn, float(qn), float(qp)))
        grad_scale = 1.0 / math.sqrt(grad_output.numel() * max(qp, 1))
        grad_alpha = (grad_output * d_alpha).sum() * grad_scale
        return grad_x, grad_alpha.reshape(ctx.alpha_shape).to(ctx.alpha_dtype), None, None


def elastic_quantize(
    x: torch.Tensor, alpha: torch.Tensor, bits: int = 1, signed: bool = True
) -> torch.Tensor:
    """Quantize activations to ``alpha`` times LSQ integer levels (``{-a, +a}`` / ``{0, a}`` for one bit)."""
    return _ElasticQuant.apply(x, alpha, bits, signed)
