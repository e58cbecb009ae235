"""The one multi-head self-attention module used by every encoder.

It handles padding masks, absolute (nothing inside) or relative (Transformer-XL style) positions, and an
optional block-sparse layout. Three numerically equivalent execution paths:

* ``math``: explicit ``softmax(q k^T * scale + bias)`` matmuls. Used whenever a hook module (``q_hook``,
  ``k_hook``, ``v_hook``, ``pos_hook``, ``prob_hook``) is not an ``nn.Identity`` so the hooks (e.g. BiT
  binarizers) see the real projections and probabilities.
* ``sdpa``: fused ``F.scaled_dot_product_attention`` with a boolean mask, or an additive float mask that also
  carries the relative-position term.
* ``flex``: ``torch.nn.attention.flex_attention`` with a ``BlockMask`` (skips whole tiles outside the sparse
  layout); compiled on CUDA. ``auto`` picks it only on CUDA, for sparse layouts without relative positions,
  without attention dropout in training, and for sequences of at least ``flex_min_length`` frames: on an H100
  (bf16, fwd+bwd) it was slower than dense SDPA at 781 and 1563 frames and faster only at 4096.

Padded query rows attend to themselves only, so no row is ever fully masked (no NaN, even for empty
utterances); their outputs are meaningless and must be ignored downstream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubert_lit.models import sparsity as sparse
from hubert_lit.models.sparsity import SparsityConfig

BACKENDS = ("auto", "sdpa", "flex", "math")
FLEX_TILE = 128  # compiled FlexAttention needs tiles that are multiples of 128 on current torch


class AttentionMask:
    """Which keys each query may attend to; built once per encoder forward and shared by all layers.

    ``padded`` says whether any row is shorter than ``length``: ``False`` lets SDPA run without a mask (its
    flash kernel on CUDA) when there is no sparse layout either. ``None`` finds out from ``lengths``, which reads
    them back to the host (and checks their range); inside a compiled graph nothing is read and a padding mask is
    always built (correct for any lengths). Pass the flag when the host already knows it.
    """

    def __init__(
        self,
        lengths: Tensor,
        length: int,
        num_heads: int,
        sparsity: SparsityConfig | None = None,
        padded: bool | None = None,
    ):
        if lengths.ndim != 1 or lengths.dtype.is_floating_point:
            raise ValueError(
                f"lengths must be a 1-D integer tensor, got shape {tuple(lengths.shape)} "
                f"and dtype {lengths.dtype}"
            )
        if padded is None:
            padded = True if torch.compiler.is_compiling() else _check_lengths(lengths, length)
        self.lengths = lengths
        self.length = length
        self.num_heads = num_heads
        self.sparsity = sparsity
        self.padded = padded
        self.valid = torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]  # (B, T)
        # Nothing to mask: SDPA may then run without a mask (FlashAttention on CUDA).
        self.unmasked = sparsity is None and not padded
        self._dense: Tensor | None = None
        self._block_mask = None

    def dense(self) -> Tensor:
        """Boolean mask ``(B, H or 1, T, T)``, True = may attend."""
        if self._dense is None:
            eye = torch.eye(self.length, dtype=torch.bool, device=self.lengths.device)
            if self.sparsity is None:
                allowed = self.valid[:, None, None, :]
            else:
                allowed = sparse.token_mask(self.sparsity, self.num_heads, self.lengths, self.length)
            self._dense = allowed | eye
        return self._dense

    def block_mask(self):
        """FlexAttention ``BlockMask`` with the same semantics as :meth:`dense`."""
        if self._block_mask is None:
            from torch.nn.attention.flex_attention import create_block_mask

            lengths = self.lengths
            if self.sparsity is None:

                def mask_mod(b, h, q, kv):
                    return (kv < lengths[b]) | (q == kv)

                heads = None
            else:
                layouts = sparse.batch_layouts(self.sparsity, self.num_heads, lengths, self.length)
                block = self.sparsity.block

                def mask_mod(b, h, q, kv):
                    n = lengths[b]
                    inside = layouts[b, h, q // block, kv // block] & (q < n) & (kv < n)
                    return inside | (q == kv)

                heads = self.num_heads
            self._block_mask = create_block_mask(
                mask_mod,
                len(lengths),
                heads,
                self.length,
                self.length,
                device=lengths.device,
                BLOCK_SIZE=FLEX_TILE,
            )
        return self._block_mask


def _check_lengths(lengths: Tensor, length: int) -> bool:
    """Raise unless every length lies in ``[0, length]``; return whether any row is padded (one host read)."""
    low, high = torch.stack(lengths.aminmax()).tolist() if len(lengths) else (length, length)
    if low < 0 or high > length:
        raise ValueError(
            f"lengths must lie in [0, {length}] (the padded length), got min {low} and max {high}"
        )
    return low < length


def relative_shift(scores: Tensor) -> Tensor:
    """Map ``(..., T, 2T-1)`` scores against relative positions ``T-1 .. -(T-1)`` to ``(..., T, T)`` so that
    entry ``(i, j)`` holds the score for relative position ``i - j`` (Transformer-XL rel-shift)."""
    length = scores.shape[-2]
    ar = torch.arange(length, device=scores.device)
    index = (length - 1) - ar[:, None] + ar[None, :]
    return scores.gather(-1, index.expand(*scores.shape[:-2], length, length))


_compiled_flex = None


def _flex_attention(q: Tensor, k: Tensor, v: Tensor, block_mask, bias: Tensor | None, scale: float) -> Tensor:
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    fn = flex_attention
    if q.is_cuda and not torch.compiler.is_compiling():  # inside a compiled step the step's compile covers it
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention)
        fn = _compiled_flex
    score_mod = None
    if bias is not None:

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + bias[b, h, q_idx, kv_idx]

    return fn(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale)


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with separate q/k/v/out projections (torchaudio ``SelfAttention`` names).

    With ``relative_positions`` it adds ESPnet/NeMo ``RelPositionMultiHeadAttention`` parameters: ``linear_pos``
    (no bias), ``pos_bias_u`` and ``pos_bias_v`` (``(H, d_k)``), and scores
    ``((q + u) k^T + rel_shift((q + v) p^T)) / sqrt(d_k)`` with ``p = linear_pos(pos_emb)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        dropout: float = 0.0,
        relative_positions: bool = False,
        backend: str = "auto",
        flex_min_length: int = 4096,
    ):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if backend not in BACKENDS:
            raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
        self.embed_dim = dim
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.dropout = dropout
        self.backend = backend
        self.flex_min_length = flex_min_length
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.relative_positions = relative_positions
        if relative_positions:
            self.linear_pos = nn.Linear(dim, dim, bias=False)
            self.pos_bias_u = nn.Parameter(torch.zeros(num_heads, self.head_dim))
            self.pos_bias_v = nn.Parameter(torch.zeros(num_heads, self.head_dim))
            nn.init.xavier_uniform_(self.pos_bias_u)
            nn.init.xavier_uniform_(self.pos_bias_v)
        # Replaced by quantizers/binarizers (BiT); anything but nn.Identity forces the explicit path.
        # ``prob_hook`` sees the probabilities after attention dropout (what multiplies the values, as in BiT)
        # unless ``dropout_before_prob_hook`` is False (hubert-lit 0.1.0's order).
        self.dropout_before_prob_hook = True
        self.q_hook = nn.Identity()
        self.k_hook = nn.Identity()
        self.v_hook = nn.Identity()
        self.pos_hook = nn.Identity()
        self.prob_hook = nn.Identity()

    def hooked(self) -> bool:
        """True when any hook is a real module, i.e. the explicit matmul-softmax path must run."""
        hooks = (self.q_hook, self.k_hook, self.v_hook, self.pos_hook, self.prob_hook)
        return any(not isinstance(h, nn.Identity) for h in hooks)

    def select_backend(self, x: Tensor, mask: AttentionMask) -> str:
        """The execution path this call will take ("math", "sdpa" or "flex")."""
        if self.hooked() or self.backend == "math":
            return "math"
        drops = self.training and self.dropout > 0
        if self.backend == "flex":
            if drops:
                raise ValueError(
                    "attention backend 'flex' has no attention dropout; set attention_dropout=0 "
                    "or use backend 'auto'/'sdpa' for training"
                )
            needs_grad = x.requires_grad or any(p.requires_grad for p in self.parameters())
            if not x.is_cuda and torch.is_grad_enabled() and needs_grad:
                raise ValueError("attention backend 'flex' has no backward pass on CPU; use 'auto' or 'sdpa'")
            return "flex"
        if self.backend == "auto":
            use_flex = (
                x.is_cuda
                and mask.sparsity is not None
                and not self.relative_positions
                and not drops
                and x.shape[1] >= self.flex_min_length
            )
            return "flex" if use_flex else "sdpa"
        return "sdpa"

    def forward(self, x: Tensor, mask: AttentionMask, pos_emb: Tensor | None = None) -> Tensor:
        """``x``: (B, T, D); ``mask`` for length T; ``pos_emb``: (1, 2T-1, D) when relative. -> (B, T, D)."""
        batch, length, _ = x.shape
        if mask.length != length:
            raise ValueError(f"attention mask is for length {mask.length} but the input has length {length}")
        heads, head_dim = self.num_heads, self.head_dim
        q = self.q_hook(self.q_proj(x)).view(batch, length, heads, head_dim)
        k = self.k_hook(self.k_proj(x)).view(batch, length, heads, head_dim).transpose(1, 2)
        v = self.v_hook(self.v_proj(x)).view(batch, length, heads, head_dim).transpose(1, 2)
        bias = None  # relative-position scores, already scaled, (B, H, T, T)
        if self.relative_positions:
            if pos_emb is None or pos_emb.shape[-2] != 2 * length - 1:
                got = None if pos_emb is None else tuple(pos_emb.shape)
                raise ValueError(
                    f"relative attention needs pos_emb of shape (1, {2 * length - 1}, D), got {got}"
                )
            p = (
                self.pos_hook(self.linear_pos(pos_emb))
                .view(-1, 2 * length - 1, heads, head_dim)
                .transpose(1, 2)
            )
            q_v = (q + self.pos_bias_v).transpose(1, 2)
            bias = relative_shift(q_v @ p.transpose(-2, -1)) * self.scaling
            q = q + self.pos_bias_u
        q = q.transpose(1, 2)  # (B, H, T, d_k)

        backend = self.select_backend(x, mask)
        if backend == "math":
            out = self._explicit(q, k, v, mask.dense(), bias)
        elif backend == "sdpa":
            if mask.unmasked:
                attn_mask = bias
            else:
                allowed = mask.dense()
                attn_mask = allowed if bias is None else bias.masked_fill(~allowed, float("-inf"))
            dropout = self.dropout if self.training else 0.0
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=attn_mask, dropout_p=dropout, scale=self.scaling
            )
        else:
            out = _flex_attention(q, k, v, mask.block_mask(), bias, self.scaling)
        out = out.transpose(1, 2).reshape(batch, length, heads * head_dim)
        return self.out_proj(out)

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, bias: Tensor | None) -> Tensor:
        scores = (q @ k.transpose(-2, -1)) * self.scaling
        if bias is not None:
            scores = scores + bias
        probs = scores.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        if self.dropout_before_prob_hook:
            probs = self.prob_hook(F.dropout(probs, p=self.dropout, training=self.training))
        else:
            probs = F.dropout(self.prob_hook(probs), p=self.dropout, training=self.training)
        return probs @ v
