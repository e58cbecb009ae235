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

import functools
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


def kernels_in_use() -> bool:
    """True when calls made now run the compiled kernels: the extension is available (building it on first call)
    and no :func:`use_fallback` block is active."""
    return not _force_fallback and extension.kernels_available()


def _ops():
    if not _force_fallback and extension.kernels_available():
        return torch.ops.hubert_lit_bits
    return reference


def _packable(x: Tensor) -> Tensor:
    """``x`` with at most 4 dims (further leading dims merged) and a contiguous last dim, as the kernels take it."""
    if x.dtype != torch.float32:
        raise TypeError(f"binary kernels pack float32 tensors, got {x.dtype}")
    if x.dim() == 0:
        raise ValueError("cannot pack a 0-d tensor")
    if x.dim() > 4:
        x = x.flatten(0, x.dim() - 4)  # copies only when the leading dims cannot be merged
    if x.shape[-1] > 1 and x.stride(-1) != 1:
        x = x.contiguous()
    return x


def _checked_shift(shift: Tensor | None, x: Tensor, length: int) -> Tensor | None:
    """``shift`` if it is ``(length,)`` or ``(H, length)`` with ``H`` the size of ``x``'s dim -3 (or 1)."""
    if shift is None:
        return None
    heads = x.shape[-3] if x.dim() >= 3 else 1
    if (
        shift.shape[-1:] != (length,)
        or shift.dim() > 2
        or (shift.dim() == 2 and shift.shape[0] not in (1, heads))
    ):
        raise ValueError(
            f"shift must be ({length},) or ({heads}, {length}) (one row per index of dim -3), "
            f"got {tuple(shift.shape)}"
        )
    return shift if shift.dtype == torch.float32 and shift.is_contiguous() else shift.float().contiguous()


def unsigned_threshold(alpha: float | Tensor) -> float:
    """The smallest float32 ``t`` that the elastic quantizer maps to ``a`` (``round(t / a) >= 1`` with
    ``a = max(alpha, 1e-5)``), found with the quantizer's own float ops.

    ``fl(v / a)`` is non-decreasing in ``v``, so ``v >= t`` is exactly the quantizer's decision for every float
    ``v``: the kernels compare instead of dividing.
    """
    a = torch.as_tensor(alpha, dtype=torch.float32).detach().reshape(-1)
    if a.numel() != 1:
        raise ValueError("alpha must be a single value")
    return _threshold_of(float(a))


@functools.lru_cache(maxsize=4096)
def _threshold_of(alpha: float) -> float:
    a = torch.tensor(alpha, dtype=torch.float32).clamp_min(MIN_ALPHA)
    # floats around a / 2, in order (positive floats order like their bit patterns)
    centre = (0.5 * a).view(torch.int32)
    candidates = (centre + torch.arange(-16, 17, dtype=torch.int32)).view(torch.float32)
    levels = torch.round(candidates / a).clamp(0, 1)
    if not (levels[0] == 0 and levels[-1] == 1 and bool((levels.diff() >= 0).all())):
        raise RuntimeError(f"no unsigned threshold found near alpha / 2 for alpha = {float(a)}")
    return float(candidates[int(torch.nonzero(levels)[0])])


def _pack_rows(x: Tensor, shift: Tensor | None, threshold: float) -> BitRows:
    k = x.shape[-1]
    words = torch.empty((*x.shape[:-1], row_words(k)), dtype=torch.uint64)
    x = _packable(x)
    _ops().pack_rows(x, _checked_shift(shift, x, k), threshold, False, words)
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


def pack_softmax(scores: Tensor, alpha: float | Tensor, allowed: Tensor | None = None) -> BitRows:
    """The unsigned ``{0, a}`` quantizer's bits of ``softmax(scores)`` over the last dim, without writing the
    probabilities: ``(..., n)`` float32 scores (at most 4 dims) -> rows of ``n`` bits, bit = ``p >= t`` with ``t``
    as in :func:`pack_unsigned`. Entries where ``allowed`` (bool, the scores' dims, dim -3 of size 1 or the
    scores') is False are left out, as a ``-inf`` score would be.

    One pass over the scores: row max, ``exp`` and its sum in registers and L1, then the decisions. The kernels'
    float32 ``exp`` (a polynomial) and summation order are their own, identical on every path and in the
    fallback, so a probability within an ulp or two of ``t`` may be decided differently from ``torch.softmax``.
    """
    if scores.dtype != torch.float32:
        raise TypeError(f"binary kernels pack float32 tensors, got {scores.dtype}")
    if not 1 <= scores.dim() <= 4:
        raise ValueError(f"softmax scores must have 1 to 4 dims, got {scores.dim()}")
    n = scores.shape[-1]
    if allowed is not None:
        expected = (
            (*scores.shape[:-3], None, *scores.shape[-2:]) if scores.dim() >= 3 else tuple(scores.shape)
        )
        if (
            allowed.dim() != scores.dim()
            or any(e is not None and a != e for a, e in zip(allowed.shape, expected))
            or (scores.dim() >= 3 and allowed.shape[-3] not in (1, scores.shape[-3]))
        ):
            raise ValueError(
                f"allowed must be a bool mask of the scores' shape {tuple(scores.shape)} (dim -3 may be 1), "
                f"got {tuple(allowed.shape)}"
            )
        allowed = allowed.contiguous()
    words = torch.empty((*scores.shape[:-1], row_words(n)), dtype=torch.uint64)
    _ops().softmax_pack(scores.contiguous(), allowed, unsigned_threshold(alpha), words)
    return BitRows(words, n)


def pack_signed_panels(x: Tensor, shift: Tensor | None = None) -> BitPanels:
    """Pack signed ``(..., n, k)`` as a right operand: row ``c`` of ``x`` becomes column ``c`` (the keys of
    ``q k^T``). ``shift`` as in :func:`pack_signed`. Batch dims: ``x.shape[:-2]``."""
    n, k = x.shape[-2:]
    words = torch.zeros((*x.shape[:-2], panel_count(n), panel_words(k), PANEL), dtype=torch.uint32)
    x = _packable(x)
    _ops().pack_rows(x, _checked_shift(shift, x, k), 0.0, True, words)
    return BitPanels(words, k, n)


def pack_signed_columns(x: Tensor, shift: Tensor | None = None) -> BitPanels:
    """Pack signed ``(..., k, n)`` as a right operand with the bits running down the rows: column ``c`` of ``x``
    is column ``c`` (the values of ``P V``). ``shift`` is ``(n,)`` or ``(H, n)`` (per index of dim -3)."""
    k, n = x.shape[-2:]
    words = torch.empty((*x.shape[:-2], panel_count(n), panel_words(k), PANEL), dtype=torch.uint32)
    x = _packable(x)
    _ops().pack_cols(x, _checked_shift(shift, x, n), 0.0, words)
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


def _is_ready(t: Tensor, n: int) -> bool:
    return t.dtype == torch.float32 and t.dim() == 1 and t.numel() == n and t.is_contiguous()


def _scale_vector(scale: float | Tensor | None, n: int) -> Tensor | None:
    if scale is None or (isinstance(scale, Tensor) and _is_ready(scale, n)):
        return scale
    s = torch.as_tensor(scale, dtype=torch.float32).detach().reshape(-1)
    if s.numel() not in (1, n):
        raise ValueError(f"scale must hold 1 or {n} values, got {s.numel()}")
    return s.expand(n).contiguous()


def _bias_vector(bias: Tensor | None, n: int) -> Tensor | None:
    if bias is None or _is_ready(bias, n):
        return bias
    if bias.numel() != n:
        raise ValueError(f"bias must hold {n} values, got {bias.numel()}")
    return bias.detach().to(torch.float32).reshape(n).contiguous()


def _check_k(x: BitRows, w: BitPanels) -> None:
    if x.k != w.k:
        raise ValueError(f"operands have {x.k} and {w.k} bits per dot product")


def _run_gemm(
    a: Tensor,
    w: BitPanels,
    and_mode: bool,
    scale: float | Tensor | None,
    bias: Tensor | None,
    out_shape: tuple[int, ...],
    out: Tensor | None,
) -> Tensor:
    """``a``: the rows' words (1 or one batch per output batch); returns ``out`` (allocated when None)."""
    scale_vec, bias_vec = _scale_vector(scale, w.n), _bias_vector(bias, w.n)
    if bias_vec is not None and scale_vec is None:
        raise ValueError("a bias needs a scale")
    dtype = torch.int32 if scale_vec is None else torch.float32
    if out is None:
        out = torch.empty(out_shape, dtype=dtype)
    elif tuple(out.shape) != tuple(out_shape) or out.dtype != dtype:
        raise ValueError(f"out must be {dtype} {tuple(out_shape)}, got {out.dtype} {tuple(out.shape)}")
    # the kernels take 2-D to 4-D outputs; view() raises rather than copy when more batch dims cannot merge
    target = out.view(-1, *out.shape[-3:]) if out.dim() > 4 else out
    _ops().gemm(a, w.words, w.k, w.n, and_mode, scale_vec, bias_vec, target)
    return out


def _gemm(x: BitRows, w: BitPanels, and_mode: bool, scale, bias) -> Tensor:
    _check_k(x, w)
    if w.batch_shape:
        raise ValueError(
            "xnor_gemm/and_gemm take an unbatched right operand (a weight); use xnor_bmm/and_bmm"
        )
    lead = x.lead_shape
    out = _run_gemm(x.words, w, and_mode, scale, bias, (math.prod(lead), w.n), None)
    return out.view(*lead, w.n) if len(lead) != 1 else out


def _bmm(x: BitRows, w: BitPanels, and_mode: bool, scale, bias, out: Tensor | None) -> Tensor:
    _check_k(x, w)
    batch = tuple(w.batch_shape)
    if tuple(x.lead_shape[:-1]) != batch:
        raise ValueError(f"batch shapes differ: rows {tuple(x.lead_shape[:-1])}, panels {batch}")
    return _run_gemm(x.words, w, and_mode, scale, bias, (*batch, x.lead_shape[-1], w.n), out)


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
