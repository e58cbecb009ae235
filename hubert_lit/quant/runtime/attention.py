"""The binary runtime's attention: both attention products on the popcount kernels.

:class:`PackedAttention` replaces a :class:`~hubert_lit.models.attention.MultiHeadAttention` whose query, key and
value hooks are signed 1-bit quantizers and whose probability hook is an unsigned one (BiT W1A1). It computes what
the module's explicit path computes in eval mode:

* ``q k^T``: XNOR-popcount of the packed queries and keys per batch and head, scaled by ``a_q a_k / sqrt(d)``;
* relative positions (Conformer, Squeezeformer): ``(q + u) k^T + rel_shift((q + v) p^T)``. The content term
  splits into the binary ``q k^T`` and ``u k^T`` (one value per key and head); the position term stays a
  float32 matmul of the binarized queries with ``p = pos_hook(linear_pos(pos_emb))``, full precision under the
  default spec (binarized by the legacy ``binarize_relative_positions``, then through the simulated hook);
* masked softmax and the probability binarizer in one pass over the scores (``pack_softmax``: the bits, no
  probability tensor), then ``P V``: AND-popcount of the packed probabilities ``{0, a_p}`` and values, written
  straight into the ``(B, T, H, d)`` layout ``out_proj`` reads.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hubert_lit.models.attention import AttentionMask, MultiHeadAttention, relative_shift
from hubert_lit.quant import binary_kernels as bk
from hubert_lit.quant.modules import ActivationQuantizer
from hubert_lit.quant.runtime.layers import InferenceOnly, binary_alpha


def _is_binary(hook: nn.Module, signed: bool) -> bool:
    return isinstance(hook, ActivationQuantizer) and hook.bits == 1 and hook.signed == signed


def runs_binary(attention: MultiHeadAttention) -> bool:
    """Whether both attention products of ``attention`` are binary (W1A1 hooks on q, k, v and probabilities)."""
    return all(_is_binary(getattr(attention, f"{n}_hook"), True) for n in "qkv") and _is_binary(
        attention.prob_hook, False
    )


def _binarized(x: Tensor, alpha: Tensor, shift: Tensor) -> Tensor:
    """``(B, T, D)`` -> ``+-alpha``: the signed 1-bit quantizer's eval output, ``+alpha`` where ``x + shift >= 0``.
    (``copysign`` is ~10x faster than the quantizer's ``where`` on CPU; adding ``+0.0`` turns ``-0.0`` into
    ``+0.0``, which the quantizer maps to ``+alpha`` as well.)"""
    return torch.copysign(alpha, x + shift.reshape(-1) + 0.0)


class PackedAttention(InferenceOnly):
    """Multi-head self-attention with binary ``q k^T`` and ``P V`` (see the module docstring); same call as
    :class:`MultiHeadAttention`: ``(x (B, T, D), mask, pos_emb (1, 2T - 1, D) when relative) -> (B, T, D)``."""

    def __init__(self, attention: MultiHeadAttention, name: str = "attention"):
        super().__init__()
        if not runs_binary(attention):
            raise ValueError(f"{name}: its q/k/v and probability hooks are not 1-bit quantizers")
        heads, head_dim = attention.num_heads, attention.head_dim
        self.embed_dim, self.num_heads, self.head_dim = attention.embed_dim, heads, head_dim
        self.scaling = attention.scaling
        self.relative_positions = attention.relative_positions
        # projections as they are (PackedLinear after the conversion); the q/k hooks stay for the float terms
        self.q_proj, self.k_proj = attention.q_proj, attention.k_proj
        self.v_proj, self.out_proj = attention.v_proj, attention.out_proj
        alphas = {
            n: binary_alpha(getattr(attention, f"{n}_hook"), f"{name}.{n}_hook") for n in ("q", "k", "v")
        }
        prob_alpha = binary_alpha(attention.prob_hook, f"{name}.prob_hook")
        for n in ("q", "k", "v"):
            shift = getattr(attention, f"{n}_hook").shift.detach().float().reshape(heads, head_dim)
            self.register_buffer(f"{n}_shift", shift.contiguous().clone())
        self.prob_alpha = prob_alpha
        self.register_buffer("q_alpha", torch.tensor(alphas["q"]))
        self.register_buffer("k_alpha", torch.tensor(alphas["k"]))
        # a * b in float32, as the simulated float32 matmul multiplies its operands' levels
        self.score_scale = float(torch.tensor(alphas["q"]) * torch.tensor(alphas["k"]) * self.scaling)
        self.context_scale = float(torch.tensor(prob_alpha) * torch.tensor(alphas["v"]))
        if self.relative_positions:
            self.linear_pos, self.pos_hook = attention.linear_pos, attention.pos_hook
            self.register_buffer("pos_bias_u", attention.pos_bias_u.detach().float().clone())
            self.register_buffer("pos_bias_v", attention.pos_bias_v.detach().float().clone())

    def extra_repr(self) -> str:
        return f"dim={self.embed_dim}, heads={self.num_heads}, relative_positions={self.relative_positions}"

    def forward(self, x: Tensor, mask: AttentionMask, pos_emb: Tensor | None = None) -> Tensor:
        self.check_inference()
        batch, length, _ = x.shape
        if mask.length != length:
            raise ValueError(f"attention mask is for length {mask.length} but the input has length {length}")
        heads, head_dim = self.num_heads, self.head_dim

        def per_head(t: Tensor) -> Tensor:  # (B, T, D) -> a (B, H, T, d) view
            return t.view(batch, length, heads, head_dim).transpose(1, 2)

        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        scores = bk.xnor_bmm(*self.pack_scores(per_head(q), per_head(k)), self.score_scale)
        if self.relative_positions:
            scores += self._relative_terms(q, k, pos_emb, per_head)
        context = torch.empty(batch, length, heads, head_dim)
        operands = self.pack_probabilities(scores, mask), self.pack_values(per_head(v))
        bk.and_bmm(*operands, self.context_scale, out=context.transpose(1, 2))
        return self.out_proj(context.view(batch, length, self.embed_dim))

    def pack_scores(self, q: Tensor, k: Tensor) -> tuple[bk.BitRows, bk.BitPanels]:
        """The operands of ``q k^T`` from the ``(B, H, T, d)`` projections: the q and k hooks' signs, packed."""
        return bk.pack_signed(q, self.q_shift), bk.pack_signed_panels(k, self.k_shift)

    def pack_probabilities(self, scores: Tensor, mask: AttentionMask) -> bk.BitRows:
        """The probability hook's ``{0, 1}`` levels of ``softmax(scores)`` over the keys the mask allows, packed
        straight from the ``(B, H, T, T)`` scores (:func:`~hubert_lit.quant.binary_kernels.pack_softmax`)."""
        return bk.pack_softmax(scores, self.prob_alpha, None if mask.unmasked else mask.dense())

    def pack_values(self, v: Tensor) -> bk.BitPanels:
        """The right operand of ``P V``: the v hook's signs of the ``(B, H, T, d)`` values, packed by columns."""
        return bk.pack_signed_columns(v, self.v_shift)

    def _relative_terms(self, q: Tensor, k: Tensor, pos_emb: Tensor | None, per_head) -> Tensor:
        """``(u k^T + rel_shift((q + v) p^T)) / sqrt(d)`` in float32 from the binarized q and k, ``(B, H, T, T)``
        (``(B, H, 1, T)`` + ``(B, H, T, T)``)."""
        batch, length, _ = q.shape
        if pos_emb is None or pos_emb.shape[-2] != 2 * length - 1:
            got = None if pos_emb is None else tuple(pos_emb.shape)
            raise ValueError(f"relative attention needs pos_emb of shape (1, {2 * length - 1}, D), got {got}")
        p = self.pos_hook(self.linear_pos(pos_emb)).view(-1, 2 * length - 1, self.num_heads, self.head_dim)
        q_bin = _binarized(q, self.q_alpha, self.q_shift).view(batch, length, self.num_heads, self.head_dim)
        k_bin = per_head(_binarized(k, self.k_alpha, self.k_shift))
        position = relative_shift((q_bin + self.pos_bias_v).transpose(1, 2) @ p.permute(0, 2, 3, 1))
        content = (k_bin @ self.pos_bias_u.unsqueeze(-1)).transpose(-1, -2)  # u . k_j per head
        return (position + content) * self.scaling
