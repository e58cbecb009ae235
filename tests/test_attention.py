"""The shared attention module: naive references, path equivalence, hooks and padding."""

import math

import pytest
import torch
from torch import nn

from hubert_lit.models.attention import AttentionMask, MultiHeadAttention
from hubert_lit.models.layers import RelativePositionalEncoding
from hubert_lit.models.sparsity import SparsityConfig, make_layout

SPARSE = SparsityConfig(
    pattern="fixed",
    block=2,
    num_local_blocks=2,
    num_global_blocks=1,
    different_layout_per_head=True,
    num_different_global_patterns=2,
)


def _module(relative: bool, backend: str = "sdpa", dim: int = 8, heads: int = 2) -> MultiHeadAttention:
    attn = MultiHeadAttention(dim, heads, dropout=0.0, relative_positions=relative, backend=backend)
    if relative:  # non-trivial position biases
        with torch.no_grad():
            attn.pos_bias_u.normal_()
            attn.pos_bias_v.normal_()
    return attn.eval()


def _naive_rel_pe(rel: int, dim: int) -> torch.Tensor:
    """Sinusoid of relative position ``rel``: [sin(rel w_0), cos(rel w_0), sin(rel w_1), ...]."""
    out = torch.empty(dim)
    for k in range(dim // 2):
        w = 10000.0 ** (-2 * k / dim)
        out[2 * k] = math.sin(rel * w)
        out[2 * k + 1] = math.cos(rel * w)
    return out


def _naive(attn: MultiHeadAttention, x: torch.Tensor, lengths: torch.Tensor, sparsity=None) -> torch.Tensor:
    """Per-row loops: softmax over exactly the allowed keys of each valid query; padded rows left at 0."""
    batch, length, dim = x.shape
    heads, dk = attn.num_heads, attn.head_dim
    q, k, v = attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)
    out = torch.zeros(batch, length, dim)
    for b in range(batch):
        n = int(lengths[b])
        if sparsity is not None:
            layout = make_layout(sparsity, heads, math.ceil(n / sparsity.block))
        for h in range(heads):
            sl = slice(h * dk, (h + 1) * dk)
            for i in range(n):
                keys = [
                    j
                    for j in range(n)
                    if sparsity is None or layout[h, i // sparsity.block, j // sparsity.block]
                ]
                scores = []
                for j in keys:
                    s = (q[b, i, sl] + (attn.pos_bias_u[h] if attn.relative_positions else 0)) @ k[b, j, sl]
                    if attn.relative_positions:
                        p = attn.linear_pos(_naive_rel_pe(i - j, dim))[sl]
                        s = s + (q[b, i, sl] + attn.pos_bias_v[h]) @ p
                    scores.append(s / math.sqrt(dk))
                probs = torch.stack(scores).softmax(0)
                out[b, i, sl] = (probs[:, None] * v[b, keys, sl]).sum(0)
    return attn.out_proj(out)


def _valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    return x[torch.arange(x.shape[1])[None, :] < lengths[:, None]]


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("sparsity", [None, SPARSE])
@pytest.mark.parametrize("backend", ["sdpa", "math"])
@pytest.mark.parametrize("lengths", [[7, 4], [7, 7]])
def test_attention_matches_naive_per_row_softmax(relative, sparsity, backend, lengths):
    attn = _module(relative, backend)
    x = torch.randn(2, 7, 8)
    lengths = torch.tensor(lengths)
    mask = AttentionMask(lengths, 7, attn.num_heads, sparsity)
    pos = RelativePositionalEncoding(8)(7) if relative else None
    with torch.no_grad():
        got = attn(x, mask, pos)
        want = _naive(attn, x, lengths, sparsity)
    torch.testing.assert_close(_valid(got, lengths), _valid(want, lengths), atol=1e-5, rtol=1e-5)


class _Recorder(nn.Module):
    """A hook that is not nn.Identity: passes its input through and remembers it."""

    def __init__(self):
        super().__init__()
        self.seen = None

    def forward(self, x):
        self.seen = x
        return x


@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize("sparsity", [None, SPARSE])
def test_hooked_explicit_path_equals_fused_path(relative, sparsity):
    attn = _module(relative, "auto")
    x = torch.randn(2, 9, 8)
    lengths = torch.tensor([9, 5])
    mask = AttentionMask(lengths, 9, attn.num_heads, sparsity)
    pos = RelativePositionalEncoding(8)(9) if relative else None
    assert attn.select_backend(x, mask) == "sdpa"
    with torch.no_grad():
        fused = attn(x, mask, pos)
    names = ["q_hook", "k_hook", "v_hook", "prob_hook"] + (["pos_hook"] if relative else [])
    for name in names:
        setattr(attn, name, _Recorder())
    assert attn.select_backend(x, mask) == "math"
    with torch.no_grad():
        hooked = attn(x, mask, pos)
    torch.testing.assert_close(_valid(hooked, lengths), _valid(fused, lengths), atol=1e-5, rtol=1e-5)
    assert attn.q_hook.seen.shape == (2, 9, 8)
    probs = attn.prob_hook.seen
    assert probs.shape == (2, 2, 9, 9)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 9))
    assert (probs[1, :, :5, 5:] == 0).all()  # valid queries never attend to padded keys
    if relative:
        assert attn.pos_hook.seen.shape == (1, 17, 8)


def test_fully_padded_rows_give_finite_outputs_and_gradients():
    for backend in ("sdpa", "math"):
        attn = _module(True, backend)
        x = torch.randn(3, 6, 8, requires_grad=True)
        lengths = torch.tensor([6, 2, 0])
        out = attn(x, AttentionMask(lengths, 6, 2, SPARSE), RelativePositionalEncoding(8)(6))
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(x.grad).all()


def test_relative_positional_encoding_order():
    pe = RelativePositionalEncoding(6)(4)
    assert pe.shape == (1, 7, 6)
    for k in range(7):  # index k encodes relative position 3 - k
        torch.testing.assert_close(pe[0, k], _naive_rel_pe(3 - k, 6))


def test_attention_mask_rejects_bad_lengths():
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\]"):
        AttentionMask(torch.tensor([6]), 5, 2)
    with pytest.raises(ValueError, match="1-D integer"):
        AttentionMask(torch.tensor([5.0]), 5, 2)


def test_flex_backend_rejects_what_it_cannot_do():
    attn = MultiHeadAttention(8, 2, dropout=0.1, backend="flex").train()
    mask = AttentionMask(torch.tensor([4]), 4, 2)
    with pytest.raises(ValueError, match="no attention dropout"):
        attn(torch.randn(1, 4, 8), mask)
    attn.dropout = 0.0
    with pytest.raises(ValueError, match="no backward pass on CPU"):
        attn(torch.randn(1, 4, 8), mask)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention path is only used on CUDA")
@pytest.mark.parametrize("relative", [False, True])
@pytest.mark.parametrize(
    "sparsity",
    [
        None,
        SparsityConfig(
            pattern="fixed",
            block=64,
            num_local_blocks=4,
            different_layout_per_head=True,
            num_different_global_patterns=4,
        ),
    ],
)
def test_flex_path_equals_sdpa_on_cuda(relative, sparsity):
    attn = MultiHeadAttention(64, 4, relative_positions=relative, backend="flex").cuda().eval()
    if relative:
        with torch.no_grad():
            attn.pos_bias_u.normal_()
    length = 600
    x = torch.randn(3, length, 64, device="cuda")
    lengths = torch.tensor([600, 431, 77], device="cuda")
    mask = AttentionMask(lengths, length, 4, sparsity)
    pos = RelativePositionalEncoding(64)(length, device="cuda") if relative else None
    with torch.no_grad():
        flex = attn(x, mask, pos)
        attn.backend = "sdpa"
        dense = attn(x, mask, pos)
    torch.testing.assert_close(_valid(flex, lengths), _valid(dense, lengths), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("sparsity", [None, SparsityConfig(pattern="fixed", block=64, num_local_blocks=4)])
def test_flex_block_mask_equals_the_dense_mask_on_cpu(sparsity):
    """FlexAttention (eager on CPU, forward only) with the BlockMask built from the batched layouts gives the
    dense path's outputs on every valid frame, padded rows included."""
    attn = MultiHeadAttention(64, 4, backend="flex").eval()
    x, lengths = torch.randn(3, 300, 64), torch.tensor([300, 211, 77])
    mask = AttentionMask(lengths, 300, 4, sparsity)
    with torch.no_grad():
        flex = attn(x, mask)
        attn.backend = "sdpa"
        dense = attn(x, mask)
    torch.testing.assert_close(_valid(flex, lengths), _valid(dense, lengths), atol=1e-5, rtol=1e-5)
