"""The two bit-packed operand types of the popcount GEMMs.

* :class:`BitRows`, the left operand (activations): one row of ``k`` bits per output row, ``ceil(k / 64)``
  uint64 words per row; bit ``i`` of a row is bit ``i % 64`` of word ``i // 64``.
* :class:`BitPanels`, the right operand (weights, keys, values): ``n`` columns of ``k`` bits, interleaved in
  panels of :data:`PANEL` columns so that one 512-bit load holds the same 32-bit word of 16 columns: word ``j``
  (bits ``32 j .. 32 j + 31``) of column ``c`` is ``words[..., c // 16, j, c % 16]`` (uint32).

A bit is 1 for ``+1`` (signed sites) or for ``a`` (unsigned ``{0, a}`` sites). Bits beyond ``k`` and columns
beyond ``n`` are zero, which is what makes them contribute nothing to either GEMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

PANEL = 16  # columns per panel (csrc/binary_kernels.h: kPanel)


def row_words(k: int) -> int:
    """uint64 words per packed row of ``k`` bits."""
    return (k + 63) // 64


def panel_words(k: int) -> int:
    """uint32 words per packed column of ``k`` bits."""
    return (k + 31) // 32


def panel_count(n: int) -> int:
    """Panels holding ``n`` columns."""
    return (n + PANEL - 1) // PANEL


@dataclass(frozen=True)
class BitRows:
    """Left operand: ``words`` is ``(*lead, ceil(k / 64))`` uint64; ``k`` is the number of valid bits per row."""

    words: Tensor
    k: int

    def __post_init__(self) -> None:
        if self.words.dtype != torch.uint64 or self.words.dim() < 1:
            raise ValueError(f"BitRows.words must be a uint64 tensor (..., words), got {self.words.dtype}")
        if self.words.shape[-1] != row_words(self.k):
            raise ValueError(
                f"{self.k} bits need {row_words(self.k)} words per row, got {self.words.shape[-1]}"
            )

    @property
    def lead_shape(self) -> torch.Size:
        """Shape of the rows (everything but the word axis)."""
        return self.words.shape[:-1]


@dataclass(frozen=True)
class BitPanels:
    """Right operand: ``words`` is ``(*batch, ceil(n / 16), ceil(k / 32), 16)`` uint32 for ``n`` columns of ``k`` bits."""

    words: Tensor
    k: int
    n: int

    def __post_init__(self) -> None:
        expected = (panel_count(self.n), panel_words(self.k), PANEL)
        if self.words.dtype != torch.uint32 or tuple(self.words.shape[-3:]) != expected:
            raise ValueError(
                f"BitPanels.words for {self.n} columns of {self.k} bits must be uint32 (..., {expected}), "
                f"got {self.words.dtype} {tuple(self.words.shape)}"
            )

    @property
    def batch_shape(self) -> torch.Size:
        """Batch dimensions (empty for a weight)."""
        return self.words.shape[:-3]
