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


def pack_rows(x: Tensor, shift: Tensor | None, threshold: float, panels: bool, out: Tensor) -> None:
    """Fallback of ``torch.ops.hubert_lit_bits.pack_rows`` (see csrc/binary_kernels.h: PackRowsArgs)."""
    bits = decide(_as_4d(x), shift, threshold).flatten(0, 1)  # (batches, rows, k)
    k = bits.shape[-1]
    if panels:
        result = _to_panels(bits)
    else:
        words = _words(bits)
        result = _as_uint32_bits(torch.nn.functional.pad(words, (0, 2 * row_words(k) - words.shape[-1])))
    out.view(torch.int32).view(-1).copy_(result.reshape(-1))


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
