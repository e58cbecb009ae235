"""Block-sparse layouts against hand-derived expectations (DeepSpeed FixedSparsityConfig semantics)."""

import pytest
import torch

from hubert_lit.models.sparsity import (
    SparsityConfig,
    attention_density,
    batch_layouts,
    make_layout,
    token_mask,
)


def _rows(*rows: str) -> torch.Tensor:
    return torch.tensor([[c == "1" for c in r] for r in rows])


def test_fixed_layout_single_pattern_with_short_last_window():
    # 6 blocks, windows {0..3} and {4,5}; summary = last block of each window (3), and for the short window
    # min(end + first, nb - g) = min(4 + 3, 5) = 5.
    cfg = SparsityConfig(pattern="fixed", block=1, num_local_blocks=4, num_global_blocks=1)
    expected = _rows("111101", "111101", "111101", "111101", "000111", "000111")
    layout = make_layout(cfg, 2, 6)
    assert layout.shape == (2, 6, 6)
    assert torch.equal(layout[0], expected) and torch.equal(layout[1], expected)


def test_fixed_layout_differs_per_head():
    # head h uses first = 4 - (1 + h % 2) * 1: heads 0 and 2 -> block 3 (short window: 5); head 1 -> block 2
    # (short window: min(4 + 2, 5) = 5).
    cfg = SparsityConfig(
        pattern="fixed",
        block=1,
        num_local_blocks=4,
        num_global_blocks=1,
        different_layout_per_head=True,
        num_different_global_patterns=2,
    )
    layout = make_layout(cfg, 3, 6)
    head0 = _rows("111101", "111101", "111101", "111101", "000111", "000111")
    head1 = _rows("111101", "111101", "111101", "111101", "001011", "001011")
    assert torch.equal(layout[0], head0)
    assert torch.equal(layout[1], head1)
    assert torch.equal(layout[2], head0)


def test_fixed_layout_two_global_blocks_and_horizontal():
    cfg = SparsityConfig(pattern="fixed", block=1, num_local_blocks=4, num_global_blocks=2)
    expected = _rows(
        "11110011", "11110011", "11110011", "11110011", "00111111", "00111111", "00111111", "00111111"
    )
    assert torch.equal(make_layout(cfg, 1, 8)[0], expected)
    horizontal = SparsityConfig(
        pattern="fixed", block=1, num_local_blocks=4, num_global_blocks=2, horizontal_global_attention=True
    )
    expected_h = _rows(
        "11110011", "11110011", "11111111", "11111111", "00111111", "00111111", "11111111", "11111111"
    )
    assert torch.equal(make_layout(horizontal, 1, 8)[0], expected_h)


def test_strided_and_local_layouts():
    strided = SparsityConfig(pattern="strided", block=1, num_local_blocks=2)
    expected = _rows("11101", "11110", "11111", "01111", "10111")
    assert torch.equal(make_layout(strided, 1, 5)[0], expected)
    local = SparsityConfig(pattern="local", block=1, num_local_blocks=2)
    expected = _rows("11000", "11100", "01110", "00111", "00011")
    assert torch.equal(make_layout(local, 2, 5)[1], expected)


def test_token_mask_uses_each_utterance_length_and_partial_blocks():
    cfg = SparsityConfig(pattern="fixed", block=2, num_local_blocks=2, num_global_blocks=1)
    lengths = torch.tensor([7, 3])
    mask = token_mask(cfg, 1, lengths, 7)
    # Utterance 0: 4 blocks {0,1},{2,3},{4,5},{6}; windows of 2 blocks, summary blocks 1 and 3.
    blocks = _rows("1101", "1101", "0111", "0111")
    blk = torch.arange(7) // 2
    assert torch.equal(mask[0, 0], blocks[blk[:, None], blk[None, :]])
    # Utterance 1: 2 blocks {0,1},{2} -> one window, dense over its 3 valid frames, nothing else.
    assert mask[1, 0, :3, :3].all() and not mask[1, 0, 3:].any() and not mask[1, 0, :, 3:].any()
    # The keys a valid query sees do not depend on the padded length.
    alone = token_mask(cfg, 1, torch.tensor([3]), 3)
    assert torch.equal(alone[0], mask[1, :, :3, :3])


def _fixed_configs():
    for local, glob in ((1, 1), (2, 1), (3, 1), (4, 1), (4, 2), (6, 3)):
        for patterns in range(1, local // glob + 1):
            for horizontal in (False, True):
                yield SparsityConfig("fixed", 3, local, glob, patterns > 1, patterns, horizontal)


@pytest.mark.parametrize(
    "cfg",
    [
        *_fixed_configs(),
        *(SparsityConfig(p, 2, local) for p in ("strided", "local") for local in (1, 2, 3, 5)),
    ],
    ids=str,
)
def test_batched_layouts_equal_the_per_utterance_layouts(cfg):
    """The tensor-op layouts of a batch (no value read back, so they compile) are make_layout's for each
    utterance's own length, zero-padded to the batch grid, for every length up to several windows."""
    lengths, length, heads = torch.arange(0, 41), 40, 4
    got = batch_layouts(cfg, heads, lengths, length)
    grid = -(-length // cfg.block)
    for b, n in enumerate(lengths.tolist()):
        blocks = -(-n // cfg.block)
        want = torch.zeros(heads, grid, grid, dtype=torch.bool)
        want[:, :blocks, :blocks] = make_layout(cfg, heads, blocks)
        assert torch.equal(got[b], want), n


def test_attention_density_counts_allowed_scores():
    cfg = SparsityConfig(pattern="fixed", block=1, num_local_blocks=4, num_global_blocks=1)
    assert attention_density(cfg, 2, 6) == pytest.approx(26 / 36)  # rows: 4 x 5 + 2 x 3 allowed
    assert attention_density(None, 2, 6) == 1.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pattern="dilated"), "pattern"),
        (dict(block=0), "block"),
        (dict(num_local_blocks=4, num_global_blocks=3), "divisible"),
        (dict(different_layout_per_head=True, num_different_global_patterns=5), "<="),
        (dict(num_different_global_patterns=2), "different_layout_per_head"),
        (dict(pattern="local", different_layout_per_head=True), "same layout"),
    ],
)
def test_invalid_sparsity_config_is_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparsityConfig(**kwargs)


def test_sparsity_config_dict_round_trip():
    cfg = SparsityConfig(pattern="strided", block=32, num_local_blocks=8)
    assert SparsityConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown sparsity config keys"):
        SparsityConfig.from_dict({"blocks": 3})
