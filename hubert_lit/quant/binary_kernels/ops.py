"""Packing and popcount GEMMs: the public functions, dispatched to the C++ kernels or the PyTorch fallback.

Formulas (``k`` bits per dot product, bit 1 = ``+1`` for signed operands and ``1`` for unsigned ones):

* signed x signed (XNOR): ``dot = sum_i x_i w_i = k - 2 popcount(x XOR w)`` (matches count ``k - d``, mismatches
  ``d``).
* unsigned {0, 1} x signed (AND): with ``w_i = 2 b_i - 1``, ``dot = sum_i x_i (2 b_i - 1)
  = 2 popcount(x AND b) - popcount(x)``.
* epilogue: ``out = float32(dot) * scale[n] (+ bias[n])``, a float32 multiply then a float32 add. For a BiT
  layer ``scale = a * step / 2``: ``a`` is the activation scale (``{-a, a}`` or ``{0, a}``) and ``step / 2``
  the weight's (per tensor for Linears, per output channel for convolutions); :func:`column_scale` builds it.

Padding bits are zero in both operands, so they add nothing to either popcount.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import Tensor

from hubert_lit.quant.binarizers import MIN_ALPHA
from hubert_lit.quant.binary_kernels import extension, reference
from hubert_lit.quant.binary_kernels.packed import (
    PANEL,
    BitPanels,
    BitRows,
    panel_count,
    panel_words,
    row_words,
)

_force_fallback = False


@contextmanager
def use_fallback():
    """Run the pure-PyTorch fallback inside the block, even when the extension is available (tests, benchmarks)."""
    global _force_fallback
    previous, _force_fallback = _force_fallback, True
    try:
        yield
    finally:
        _force_fallback = previous


def _ops():
    if not _force_fallback and extension.kernels_available():
        return torch.ops.hubert_lit_bits
    return reference


def _as_4d(x: Tensor) -> Tensor:
    """View x as (b0, b1, rows, cols): b1 is the dimension just before the last two, b0 all the others."""
    x = x.detach()
    if x.dtype != torch.float32:
        raise TypeError(f"binary kernels pack float32 tensors, got {x.dtype}")
    if x.dim() < 1:
        raise ValueError("cannot pack a 0-d tensor")
    while x.dim() < 4:
        x = x.unsqueeze(0)
    if x.dim() > 4:
        x = x.flatten(0, x.dim() - 4)  # copies only when the leading dims cannot be merged
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    return x


def _shift_2d(shift: Tensor | None, x4: Tensor, length: int) -> Tensor | None:
    if shift is None:
        return None
    shift = shift.detach().to(torch.float32)
    if shift.dim() == 1:
        shift = shift.unsqueeze(0)
    if shift.dim() != 2 or shift.shape[1] != length or shift.shape[0] not in (1, x4.shape[1]):
        raise ValueError(
            f"shift must be ({length},) or ({x4.shape[1]}, {length}) (one row per index of dim -3), "
            f"got {tuple(shift.shape)}"
        )
    return shift.contiguous()


def unsigned_threshold(alpha: float | Tensor) -> float:
    """The smallest float32 ``t`` that the elastic quantizer maps to ``a`` (``round(t / a) >= 1`` with
    ``a = max(alpha, 1e-5)``), found with the quantizer's own float ops.

    ``fl(v / a)`` is non-decreasing in ``v``, so ``v >= t`` is exactly the quantizer's decision for every float
    ``v``: the kernels compare instead of dividing.
    """
    a = torch.as_tensor(alpha, dtype=torch.float32).detach().reshape(-1)
    if a.numel() != 1:
        raise ValueError("alpha must be a single value")
    a = a.clamp_min(MIN_ALPHA).reshape(())
    # floats around a / 2, in order (positive floats order like their bit patterns)
    centre = (0.5 * a).view(torch.int32)
    candidates = (centre + torch.arange(-16, 17, dtype=torch.int32)).view(torch.float32)
    levels = torch.round(candidates / a).clamp(0, 1)
    if not (levels[0] == 0 and levels[-1] == 1 and bool((levels.diff() >= 0).all())):
        raise RuntimeError(f"no unsigned threshold found near alpha / 2 for alpha = {float(a)}")
    return float(candidates[int(torch.nonzero(levels)[0])])


def _pack_rows(x: Tensor, shift: Tensor | None, threshold: float) -> BitRows:
    x4 = _as_4d(x)
    k = x4.shape[-1]
    words = torch.empty((*x.shape[:-1], row_words(k)), dtype=torch.uint64)
    _ops().pack_rows(x4, _shift_2d(shift, x4, k), threshold, False, words)
    return BitRows(words, k)


def pack_signed(x: Tensor, shift: Tensor | None = None) -> BitRows:
    """Pack signed activations ``(..., k)`` as rows: bit = ``x + shift >= 0`` (``sign(0) = +1``).

    ``shift`` is ``(k,)`` or ``(H, k)`` with one row per index of ``x``'s dim -3 (per-head shifts of
    ``(B, H, T, d)`` queries).
    """
    return _pack_rows(x, shift, 0.0)


def pack_unsigned(x: Tensor, alpha: float | Tensor, shift: Tensor | None = None) -> BitRows:
    """Pack unsigned ``{0, a}`` activations ``(..., k)``: bit = ``round((x + shift) / a)`` clamped to {0, 1},
    with ``a = max(alpha, 1e-5)`` as in the elastic quantizer."""
    return _pack_rows(x, shift, unsigned_threshold(alpha))


def pack_signed_panels(x: Tensor, shift: Tensor | None = None) -> BitPanels:
    """Pack signed ``(..., n, k)`` as a right operand: row ``c`` of ``x`` becomes column ``c`` (the keys of
    ``q k^T``). ``shift`` as in :func:`pack_signed`. Batch dims: ``x.shape[:-2]``."""
    x4 = _as_4d(x)
    n, k = x4.shape[-2:]
    words = torch.zeros((*x.shape[:-2], panel_count(n), panel_words(k), PANEL), dtype=torch.uint32)
    _ops().pack_rows(x4, _shift_2d(shift, x4, k), 0.0, True, words)
    return BitPanels(words, k, n)


def pack_signed_columns(x: Tensor, shift: Tensor | None = None) -> BitPanels:
    """Pack signed ``(..., k, n)`` as a right operand with the bits running down the rows: column ``c`` of ``x``
    is column ``c`` (the values of ``P V``). ``shift`` is ``(n,)`` or ``(H, n)`` (per index of dim -3)."""
    x4 = _as_4d(x)
    k, n = x4.shape[-2:]
    words = torch.empty((*x.shape[:-2], panel_count(n), panel_words(k), PANEL), dtype=torch.uint32)
    _ops().pack_cols(x4, _shift_2d(shift, x4, n), 0.0, words)
    return BitPanels(words, k, n)


def pack_weight(codes: Tensor) -> BitPanels:
    """Pack 1-bit weight codes (``quantize_weight_codes``: 1 = ``+step/2``, 0 = ``-step/2``) of shape ``(n, k)``
    (a Linear) or ``(n, k, 1)`` (a pointwise Conv1d) as the right operand. Done once, at load."""
    if codes.dim() == 3 and codes.shape[-1] == 1:
        codes = codes[..., 0]
    if codes.dim() != 2:
        raise ValueError(f"weight codes must be (out, in) or (out, in, 1), got {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) > 1:
        raise ValueError("pack_weight takes 1-bit codes (0 or 1)")
    return pack_signed_panels(codes.to(torch.float32) - 0.5)


def column_scale(alpha: float | Tensor, weight_scale: float | Tensor, n: int) -> Tensor:
    """``alpha * weight_scale`` as a float32 ``(n,)`` vector (per-tensor or per-output-channel weight scales)."""
    a = torch.as_tensor(alpha, dtype=torch.float32).detach().reshape(())
    w = torch.as_tensor(weight_scale, dtype=torch.float32).detach().reshape(-1)
    if w.numel() not in (1, n):
        raise ValueError(f"weight_scale must hold 1 or {n} values, got {w.numel()}")
    return (a * w).expand(n).contiguous()


def _scale_vector(scale: float | Tensor | None, n: int) -> Tensor | None:
    if scale is None:
        return None
    s = torch.as_tensor(scale, dtype=torch.float32).detach().reshape(-1)
    if s.numel() not in (1, n):
        raise ValueError(f"scale must hold 1 or {n} values, got {s.numel()}")
    return s.expand(n).contiguous()


def _bias_vector(bias: Tensor | None, n: int) -> Tensor | None:
    if bias is None:
        return None
    if bias.numel() != n:
        raise ValueError(f"bias must hold {n} values, got {bias.numel()}")
    return bias.detach().to(torch.float32).reshape(n).contiguous()


def _check_k(x: BitRows, w: BitPanels) -> None:
    if x.k != w.k:
        raise ValueError(f"operands have {x.k} and {w.k} bits per dot product")


def _as_out4(out: Tensor) -> Tensor:
    """View an output (..., m, n) as (b0, b1, m, n) without copying (raises if the leading dims cannot merge)."""
    while out.dim() < 4:
        out = out.unsqueeze(0)
    return out.view(-1, *out.shape[-3:]) if out.dim() > 4 else out


def _run_gemm(
    a: Tensor,
    w: BitPanels,
    and_mode: bool,
    scale: float | Tensor | None,
    bias: Tensor | None,
    out_shape: tuple[int, ...],
    out: Tensor | None,
) -> Tensor:
    """``a``: (batches or 1, m, words) uint64 rows; returns ``out`` (allocated when None) of ``out_shape``."""
    scale_vec, bias_vec = _scale_vector(scale, w.n), _bias_vector(bias, w.n)
    if bias_vec is not None and scale_vec is None:
        raise ValueError("a bias needs a scale")
    dtype = torch.int32 if scale_vec is None else torch.float32
    if out is None:
        out = torch.empty(out_shape, dtype=dtype)
    elif tuple(out.shape) != tuple(out_shape) or out.dtype != dtype:
        raise ValueError(f"out must be {dtype} {tuple(out_shape)}, got {out.dtype} {tuple(out.shape)}")
    _ops().gemm(a, w.words, w.k, w.n, and_mode, scale_vec, bias_vec, _as_out4(out))
    return out


def _gemm(x: BitRows, w: BitPanels, and_mode: bool, scale, bias) -> Tensor:
    _check_k(x, w)
    if w.batch_shape:
        raise ValueError(
            "xnor_gemm/and_gemm take an unbatched right operand (a weight); use xnor_bmm/and_bmm"
        )
    lead = x.lead_shape
    m = math.prod(lead)
    a = x.words.reshape(1, m, x.words.shape[-1])
    return _run_gemm(a, w, and_mode, scale, bias, (m, w.n), None).view(*lead, w.n)


def _bmm(x: BitRows, w: BitPanels, and_mode: bool, scale, bias, out: Tensor | None) -> Tensor:
    _check_k(x, w)
    batch = tuple(w.batch_shape)
    if tuple(x.lead_shape[:-1]) != batch:
        raise ValueError(f"batch shapes differ: rows {tuple(x.lead_shape[:-1])}, panels {batch}")
    m = x.lead_shape[-1]
    a = x.words.reshape(-1, m, x.words.shape[-1])
    return _run_gemm(a, w, and_mode, scale, bias, (*batch, m, w.n), out)


def xnor_gemm(x: BitRows, w: BitPanels, scale: float | Tensor | None, bias: Tensor | None = None) -> Tensor:
    """Signed x signed: ``(..., k) x (n columns) -> (..., n)`` float32 ``(k - 2 popcount(x XOR w)) * scale + bias``.

    ``scale`` is one value or one per column (:func:`column_scale`); ``None`` returns the int32 dot products.
    """
    return _gemm(x, w, False, scale, bias)


def and_gemm(x: BitRows, w: BitPanels, scale: float | Tensor | None, bias: Tensor | None = None) -> Tensor:
    """Unsigned {0, 1} x signed: ``(2 popcount(x AND w) - popcount(x)) * scale + bias``; ``None`` scale: int32 dots."""
    return _gemm(x, w, True, scale, bias)


def xnor_bmm(
    x: BitRows,
    w: BitPanels,
    scale: float | Tensor | None,
    bias: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Batched XNOR GEMM: rows ``(*batch, m, k)`` x panels ``(*batch, n, k)`` -> ``(*batch, m, n)`` (e.g. q k^T
    per batch and head). ``out`` may be a strided view (its last dim contiguous) to write into."""
    return _bmm(x, w, False, scale, bias, out)


def and_bmm(
    x: BitRows,
    w: BitPanels,
    scale: float | Tensor | None,
    bias: Tensor | None = None,
    out: Tensor | None = None,
) -> Tensor:
    """Batched AND GEMM (e.g. unsigned attention probabilities x signed values per batch and head)."""
    return _bmm(x, w, True, scale, bias, out)


def unpack(packed: BitRows | BitPanels) -> Tensor:
    """The bits as bools: ``(..., k)`` for rows, ``(..., n, k)`` for panels (column ``c`` as row ``c``)."""
    if isinstance(packed, BitRows):
        return reference.unpack_rows(packed.words, packed.k)
    return reference.unpack_panels(packed.words, packed.k, packed.n)
