"""Block-sparse attention layouts (Sparseformer) and the token-level masks built from them.

A layout is a boolean ``(num_heads, nb, nb)`` grid over blocks of ``block`` frames: ``layout[h, r, c]`` says
whether queries in block ``r`` may attend to keys in block ``c``. All patterns are bidirectional (encoder).

* ``fixed``: Child et al.'s fixed pattern at block granularity with DeepSpeed ``FixedSparsityConfig``
  semantics. The blocks are cut into windows of ``num_local_blocks``; a query attends to its whole window
  plus, in every window, ``num_global_blocks`` "summary" blocks. For head ``h`` the summary blocks start at
  ``num_local_blocks - (1 + h % num_different_global_patterns) * num_global_blocks`` inside each window (by
  default the last block). A short last window gets its own summary block at
  ``min(end + first, nb - num_global_blocks)``. With ``horizontal_global_attention`` the summary blocks also
  attend to everything.
* ``strided``: Child et al.'s strided pattern at block granularity with stride ``l = num_local_blocks``:
  block ``r`` attends to ``c`` when ``|r - c| < l`` or ``(r - c) mod l == 0``. Same for every head.
* ``local``: DeepSpeed ``LocalSlidingWindowSparsityConfig`` (bidirectional): block ``r`` attends to blocks
  ``r - w .. r + w`` with ``w = num_local_blocks // 2``. Same for every head.

Layouts are built per utterance from its own valid length, ``nb = ceil(length / block)`` (a partial last block
is fine), so the keys a valid query sees never depend on how much padding its batch has. :func:`make_layout`
builds one layout with Python loops (the readable reference); the batched masks (:func:`batch_layouts`,
:func:`token_mask`) compute the same layouts with tensor ops from the lengths, without reading them back.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from hubert_lit.config_dicts import parse_fields

PATTERNS = ("fixed", "strided", "local")


@dataclass(frozen=True)
class SparsityConfig:
    """Block-sparse attention pattern (see the module docstring for the exact rules)."""

    pattern: str = "fixed"
    block: int = 64
    num_local_blocks: int = 4
    num_global_blocks: int = 1
    different_layout_per_head: bool = False
    num_different_global_patterns: int = 1
    horizontal_global_attention: bool = False

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"sparsity.pattern must be one of {PATTERNS}, got {self.pattern!r}")
        for name in ("block", "num_local_blocks", "num_global_blocks", "num_different_global_patterns"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"sparsity.{name} must be >= 1, got {getattr(self, name)}")
        if self.pattern == "fixed":
            if self.num_local_blocks % self.num_global_blocks != 0:
                raise ValueError(
                    f"sparsity.num_local_blocks ({self.num_local_blocks}) must be divisible by "
                    f"sparsity.num_global_blocks ({self.num_global_blocks})"
                )
            max_patterns = self.num_local_blocks // self.num_global_blocks
            if self.num_different_global_patterns > max_patterns:
                raise ValueError(
                    f"sparsity.num_different_global_patterns ({self.num_different_global_patterns}) must be <= "
                    f"num_local_blocks // num_global_blocks ({max_patterns})"
                )
            if self.num_different_global_patterns > 1 and not self.different_layout_per_head:
                raise ValueError(
                    "sparsity.num_different_global_patterns > 1 requires different_layout_per_head=True"
                )
        else:
            if self.different_layout_per_head or self.num_different_global_patterns != 1:
                raise ValueError(
                    f"sparsity.pattern {self.pattern!r} uses the same layout for every head: set "
                    "different_layout_per_head=False and num_different_global_patterns=1"
                )
            if self.horizontal_global_attention or self.num_global_blocks != 1:
                raise ValueError(
                    f"sparsity.pattern {self.pattern!r} has no global blocks: set num_global_blocks=1 and "
                    "horizontal_global_attention=False"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SparsityConfig:
        return cls(**parse_fields(cls, data, "sparsity config"))


def _fixed_layout(cfg: SparsityConfig, head: int, nb: int) -> Tensor:
    layout = torch.zeros(nb, nb, dtype=torch.bool)
    local, glob = cfg.num_local_blocks, cfg.num_global_blocks
    for start in range(0, nb, local):
        layout[start : start + local, start : start + local] = True
    first = local - (1 + head % cfg.num_different_global_patterns) * glob
    end = nb - nb % local
    starts = list(range(first, end, local))
    if end < nb:  # short last window: its own summary blocks, clipped to the grid
        starts.append(max(0, min(end + first, nb - glob)))
    for s in starts:
        layout[:, s : s + glob] = True
        if cfg.horizontal_global_attention:
            layout[s : s + glob, :] = True
    return layout


def _strided_layout(cfg: SparsityConfig, nb: int) -> Tensor:
    idx = torch.arange(nb)
    diff = idx[:, None] - idx[None, :]
    stride = cfg.num_local_blocks
    return (diff.abs() < stride) | (diff.remainder(stride) == 0)


def _local_layout(cfg: SparsityConfig, nb: int) -> Tensor:
    idx = torch.arange(nb)
    return (idx[:, None] - idx[None, :]).abs() <= cfg.num_local_blocks // 2


@functools.lru_cache(maxsize=512)
def make_layout(cfg: SparsityConfig, num_heads: int, num_blocks: int) -> Tensor:
    """Boolean block layout ``(num_heads, num_blocks, num_blocks)`` on CPU. Cached: treat it as read-only."""
    if num_blocks == 0:
        return torch.zeros(num_heads, 0, 0, dtype=torch.bool)
    if cfg.pattern == "fixed":
        if cfg.different_layout_per_head:
            return torch.stack([_fixed_layout(cfg, h, num_blocks) for h in range(num_heads)])
        return _fixed_layout(cfg, 0, num_blocks)[None].expand(num_heads, -1, -1).clone()
    layout = _strided_layout(cfg, num_blocks) if cfg.pattern == "strided" else _local_layout(cfg, num_blocks)
    return layout[None].expand(num_heads, -1, -1).clone()


def ceil_div(a, b):
    """``ceil(a / b)`` for ints or integer tensors, without floats (exact, and traceable with symbolic sizes)."""
    return -(-a // b)


def _block_grid(cfg: SparsityConfig, num_heads: int, num_blocks: Tensor, grid: int) -> Tensor:
    """Layouts of utterances with ``num_blocks[b]`` blocks each on a ``grid x grid`` block grid: ``(B, H or 1,
    grid, grid)``, zero outside each utterance's own blocks; equal to :func:`make_layout` per utterance.

    Written with tensor ops only (no value is read back to the host), so it runs inside a compiled graph and
    costs no device sync. The head axis is 1 when every head shares the layout.
    """
    idx = torch.arange(grid, device=num_blocks.device)
    rows, cols = idx[:, None], idx[None, :]
    nb = num_blocks.to(torch.long).view(-1, 1, 1, 1)
    inside = (rows < nb) & (cols < nb)
    local = cfg.num_local_blocks
    if cfg.pattern == "strided":
        diff = rows - cols
        return inside & ((diff.abs() < local) | (diff.remainder(local) == 0))
    if cfg.pattern == "local":
        return inside & ((rows - cols).abs() <= local // 2)
    glob = cfg.num_global_blocks
    heads = torch.arange(num_heads if cfg.different_layout_per_head else 1, device=num_blocks.device)
    first = (local - (1 + heads % cfg.num_different_global_patterns) * glob).view(1, -1, 1, 1)
    end = nb - nb % local  # blocks in full windows
    # a short last window gets its own summary blocks at min(end + first, nb - glob), clipped at 0
    last = torch.minimum(end + first, nb - glob).clamp(min=0)

    def summary(i: Tensor) -> Tensor:
        in_full_window = (i < end) & (i % local >= first) & (i % local < first + glob)
        return in_full_window | ((end < nb) & (i >= last) & (i < last + glob))

    allowed = (rows // local == cols // local) | summary(cols)
    if cfg.horizontal_global_attention:
        allowed = allowed | summary(rows)
    return inside & allowed


def batch_layouts(cfg: SparsityConfig, num_heads: int, lengths: Tensor, length: int) -> Tensor:
    """Per-utterance layouts ``(B, H, nb, nb)`` with ``nb = ceil(length / block)``, each built from the
    utterance's own valid length and zero-padded to the batch grid (no value read back from ``lengths``)."""
    grid = _block_grid(cfg, num_heads, ceil_div(lengths, cfg.block), ceil_div(length, cfg.block))
    return grid.expand(-1, num_heads, -1, -1)


def token_mask(cfg: SparsityConfig, num_heads: int, lengths: Tensor, length: int) -> Tensor:
    """Token-level mask ``(B, H or 1, T, T)``: True where a valid query may attend to a valid key (the head axis
    is 1 when every head has the same layout)."""
    layouts = _block_grid(cfg, num_heads, ceil_div(lengths, cfg.block), ceil_div(length, cfg.block))
    blk = torch.arange(length, device=lengths.device) // cfg.block
    mask = layouts[:, :, blk[:, None], blk[None, :]]
    valid = torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]
    return mask & valid[:, None, :, None] & valid[:, None, None, :]


def attention_density(cfg: SparsityConfig | None, num_heads: int, length: int) -> float:
    """Fraction of the ``T x T`` score matrix (averaged over heads) a ``length``-frame utterance computes;
    1.0 for dense attention. Useful for "effective attention FLOPs = dense FLOPs x density"."""
    if cfg is None or length == 0:
        return 1.0
    lengths = torch.tensor([length])
    return token_mask(cfg, num_heads, lengths, length).float().mean().item()
