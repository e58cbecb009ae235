"""Pure-PyTorch fallback of the C++ operators, with the same signatures and bit-identical results.

Used when the extension cannot be built (no compiler, ``HUBERT_LIT_BINARY_KERNELS=0``) and as the reference in the
tests. The GEMMs unpack the bits and multiply in float64: the dot products are integers of magnitude at most ``k``,
so they are exact; the epilogue then rounds exactly like the kernels (float32 multiply, then float32 add).
"""

from __future__ import annotations

import torch
from torch import Tensor

from hubert_lit.quant.binary_kernels.packed import PANEL, panel_count, panel_words, row_words

_SHIFTS = torch.arange(32, dtype=torch.int64)


def _as_4d(t: Tensor) -> Tensor:
    """A 1-D to 4-D tensor as (b0, b1, rows, cols), as the C++ operators read it."""
    return t.reshape((1,) * (4 - t.dim()) + tuple(t.shape))


def decide(x: Tensor, shift: Tensor | None, threshold: float) -> Tensor:
    """The bit of every element of a (b0, b1, rows, k) tensor, ``x + shift >= threshold``; ``shift`` is
    (k,), (1 or b1, k) or None."""
    if shift is None:
        return x >= threshold
    shift = shift.detach().reshape(-1, x.shape[-1])
    return x + shift[None, :, None, :] >= threshold


def _words(bits: Tensor) -> Tensor:
    """(..., k) bools -> (..., ceil(k / 32)) int64 words in [0, 2**32)."""
    k = bits.shape[-1]
    padded = torch.nn.functional.pad(bits.to(torch.int64), (0, 32 * panel_words(k) - k))
    return (padded.unflatten(-1, (-1, 32)) << _SHIFTS).sum(-1)


def _as_uint32_bits(words: Tensor) -> Tensor:
    """int64 values in [0, 2**32) -> int32 tensors with the same low 32 bits."""
    return words.to(torch.int32)  # C++20 conversion: modulo 2**32


def _to_panels(bits: Tensor) -> Tensor:
    """(batches, n, k) bools -> (batches, panels, words, 16) int32 panel words (zero padding columns)."""
    batches, n, _ = bits.shape
    words = _words(bits)
    words = torch.nn.functional.pad(words, (0, 0, 0, PANEL * panel_count(n) - n))
    return _as_uint32_bits(words.unflatten(1, (-1, PANEL)).transpose(-1, -2))


def _to_rows(bits: Tensor) -> Tensor:
    """(..., k) bools -> (..., 2 ceil(k / 64)) int32 words of the rows layout."""
    words = _words(bits)
    return _as_uint32_bits(
        torch.nn.functional.pad(words, (0, 2 * row_words(bits.shape[-1]) - words.shape[-1]))
    )


def pack_rows(x: Tensor, shift: Tensor | None, threshold: float, panels: bool, out: Tensor) -> None:
    """Fallback of ``torch.ops.hubert_lit_bits.pack_rows`` (see csrc/binary_kernels.h: PackRowsArgs)."""
    bits = decide(_as_4d(x), shift, threshold).flatten(0, 1)  # (batches, rows, k)
    result = _to_panels(bits) if panels else _to_rows(bits)
    out.view(torch.int32).view(-1).copy_(result.reshape(-1))


# csrc/binary_kernels.h: exp_poly and its constants, as float32 tensors so that every operation rounds to float32
_F32 = torch.float32
_LOG2E = torch.tensor(1.44269504088896341, dtype=_F32)
_LN2_HI = torch.tensor(0.693359375, dtype=_F32)
_LN2_LO = torch.tensor(-2.12194440e-4, dtype=_F32)
_EXP_MIN = -87.0
_EXP_COEFF = [torch.tensor(1.0, dtype=_F32) / k for k in (1, 1, 2, 6, 24, 120, 720, 5040)]
_SUM_LANES = 16


def exp_poly(x: Tensor) -> Tensor:
    """The kernels' float32 ``exp`` for ``x`` in [-87, 0], operation for operation (no fused multiply-add)."""
    n = torch.round(x * _LOG2E)  # half to even, as nearbyint
    r = x - n * _LN2_HI
    r = r - n * _LN2_LO
    p = torch.full_like(x, float(_EXP_COEFF[7]))
    for coeff in reversed(_EXP_COEFF[:7]):
        p = p * r + coeff
    scale = ((n.to(torch.int32) + 127) << 23).view(_F32)
    return p * scale


def softmax_pack(scores: Tensor, allowed: Tensor | None, threshold: float, out: Tensor) -> None:
    """Fallback of ``torch.ops.hubert_lit_bits.softmax_pack`` (csrc/binary_kernels.h: SoftmaxPackArgs): the same
    max, exp, 16-lane sum and tree reduction, reciprocal and comparison, so the bits are identical."""
    s = _as_4d(scores)
    ok = torch.ones_like(s, dtype=torch.bool) if allowed is None else _as_4d(allowed).bool().expand_as(s)
    top = s.masked_fill(~ok, float("-inf")).amax(dim=-1, keepdim=True)
    x = s - top
    keep = ok & (x >= _EXP_MIN)  # also False for NaN (a row with nothing allowed)
    e = torch.where(keep, exp_poly(x.clamp(min=_EXP_MIN, max=0.0)), torch.zeros((), dtype=_F32))
    n = e.shape[-1]
    lanes = torch.nn.functional.pad(e, (0, -n % _SUM_LANES)).unflatten(-1, (-1, _SUM_LANES))
    total = torch.zeros_like(lanes[..., 0, :])
    for chunk in range(lanes.shape[-2]):  # lane l sums entries l, l + 16, ... in order
        total = total + lanes[..., chunk, :]
    width = _SUM_LANES // 2
    while width >= 1:
        total = total[..., :width] + total[..., width : 2 * width]
        width //= 2
    bits = (e * torch.reciprocal(total)) >= threshold
    out.view(torch.int32).view(-1).copy_(_to_rows(bits.flatten(0, 1)).reshape(-1))


def pack_cols(x: Tensor, shift: Tensor | None, threshold: float, out: Tensor) -> None:
    """Fallback of ``torch.ops.hubert_lit_bits.pack_cols``: columns of a (b0, b1, k, n) tensor."""
    bits = decide(_as_4d(x), shift, threshold).transpose(-1, -2).flatten(0, 1)  # (batches, n, k)
    out.view(torch.int32).view(-1).copy_(_to_panels(bits).reshape(-1))


def _bits_of_words(words: Tensor) -> Tensor:
    """uint32-pattern words (any integer dtype viewed as int32) -> (..., 32 * words) 0/1 int64."""
    values = words.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return ((values.unsqueeze(-1) >> _SHIFTS) & 1).flatten(-2)


def unpack_rows(words: Tensor, k: int) -> Tensor:
    """``BitRows.words`` (..., ceil(k / 64)) uint64 -> (..., k) bools."""
    return _bits_of_words(words.view(torch.int32))[..., :k].bool()


def unpack_panels(words: Tensor, k: int, n: int) -> Tensor:
    """``BitPanels.words`` (..., panels, words, 16) uint32 -> (..., n, k) bools (column c is row c)."""
    columns = words.view(torch.int32).transpose(-1, -2).flatten(-3, -2)  # (..., panels * 16, words)
    return _bits_of_words(columns)[..., :n, :k].bool()


def gemm(
    a: Tensor,
    b: Tensor,
    k: int,
    n: int,
    and_mode: bool,
    scale: Tensor | None,
    bias: Tensor | None,
    out: Tensor,
) -> None:
    """Fallback of ``torch.ops.hubert_lit_bits.gemm``: ``a`` rows words (1 or one batch per output batch),
    ``b`` panels, ``out`` (..., m, n) with up to 2 batch dims."""
    out = _as_4d(out) if out.dim() < 4 else out
    m = out.shape[-2]
    rows = unpack_rows(a.reshape(-1, m, row_words(k)), k).double()
    cols = unpack_panels(b.reshape(-1, panel_count(n), panel_words(k), PANEL), k, n).double()
    signed_cols = 2 * cols - 1
    dot = (rows if and_mode else 2 * rows - 1) @ signed_cols.transpose(-1, -2)  # exact integers
    dot = dot.reshape(-1, m, n).expand(out.shape[0] * out.shape[1], m, n).reshape(out.shape)
    if scale is None:
        out.copy_(dot.to(torch.int32))
        return
    value = dot.float() * scale
    if bias is not None:
        value = value + bias
    out.copy_(value)
