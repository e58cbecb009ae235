"""Swappable HuBERT encoders: vanilla Transformer (HuBERT Base), Sparseformer (the same layer with a
block-sparse layout), Conformer-S and Squeezeformer-XS.

Every encoder maps ``(x: (B, T, D), lengths: (B,))`` to a list of ``num_layers + 1`` hidden states of shape
``(B, T, D)``: index 0 is the input to block 1, index i the output of block i. ``forward(x, lengths,
num_layers=n)`` runs only blocks 1..n and returns the first n + 1 of those states. Outputs at valid frames do not
depend on padding (eval mode). ``padded`` (optional) tells the attention mask whether any row is padded, so it need
not read ``lengths`` back (see :class:`~hubert_lit.models.attention.AttentionMask`). The convolutional positional
embedding of the Transformer family lives in the front end (``frontend.py``), not here; Conformer and
Squeezeformer use relative positions inside attention.

LayerDrop (training, ``layerdrop > 0``) has two forms with the same distribution. By default each block draws
``torch.rand(()) < layerdrop`` on the host when it is reached and a dropped block is not computed (a host read
per block, so not for a compiled graph). A caller that passes ``layer_keep`` (a bool tensor ``(num_layers,)``,
e.g. from :func:`draw_layer_keep`, drawn once per step) gets a fixed graph: every block is computed and a dropped
block's output is discarded with ``torch.where`` (inside a compiled graph without ``layer_keep``, the draw is made
in the graph). That costs the dropped blocks' compute (``layerdrop`` of the encoder on average: 5 % for the
Transformer presets, nothing for Conformer-S and Squeezeformer-XS, whose layerdrop is 0) and gives their
parameters zero gradients instead of none, so DDP needs no ``find_unused_parameters`` (AdamW then still decays
those parameters' moments and applies weight decay, where a skipped block leaves them untouched).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from hubert_lit.config_dicts import parse_fields
from hubert_lit.models.attention import BACKENDS, AttentionMask, MultiHeadAttention
from hubert_lit.models.layers import (
    ConvolutionModule,
    FeedForward,
    RelativePositionalEncoding,
    ScaleBias,
    TimeRecovery,
    TimeReduction,
    reduced_lengths,
)
from hubert_lit.models.sparsity import SparsityConfig

KINDS = ("transformer", "conformer", "squeezeformer")
DEFAULT_ACTIVATION = {"transformer": "gelu", "conformer": "swish", "squeezeformer": "swish"}


@dataclass
class EncoderConfig:
    """Encoder hyperparameters. The defaults are HuBERT Base's Transformer (12/768/12, FFN 3072, post-LN).

    ``activation=None`` picks the family's FFN activation (GELU for the Transformer, Swish otherwise).
    ``time_reduce_idx`` / ``time_recover_idx`` (Squeezeformer only; 0-based "before block i") set the
    half-rate span; ``None`` for both disables the reduction. ``sparsity`` adds a block-sparse layout to every
    attention layer. ``attention_backend`` is "auto" (SDPA, or FlexAttention on CUDA for sparse layouts of at
    least ``flex_min_length`` frames), "sdpa", "flex" or "math".
    """

    kind: str = "transformer"
    num_layers: int = 12
    dim: int = 768
    num_heads: int = 12
    ffn_dim: int = 3072
    activation: str | None = None
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    layerdrop: float = 0.05
    layer_norm_first: bool = False
    conv_kernel_size: int = 31
    sparsity: SparsityConfig | None = None
    time_reduce_idx: int | None = 7
    time_recover_idx: int | None = 15
    time_reduction_kernel_size: int = 5
    attention_backend: str = "auto"
    flex_min_length: int = 4096

    def __post_init__(self) -> None:
        if isinstance(self.sparsity, dict):
            self.sparsity = SparsityConfig.from_dict(self.sparsity)
        if self.kind not in KINDS:
            raise ValueError(f"encoder kind must be one of {KINDS}, got {self.kind!r}")
        for name in ("num_layers", "dim", "num_heads", "ffn_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"encoder {name} must be >= 1, got {getattr(self, name)}")
        if self.dim % self.num_heads != 0:
            raise ValueError(f"encoder dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        for name in ("dropout", "attention_dropout", "activation_dropout", "layerdrop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"encoder {name} must be in [0, 1), got {getattr(self, name)}")
        if self.attention_backend not in BACKENDS:
            raise ValueError(f"attention_backend must be one of {BACKENDS}, got {self.attention_backend!r}")
        if self.kind != "transformer" and self.dim % 2 != 0:
            raise ValueError(f"relative positional encoding needs an even dim, got {self.dim}")
        if self.kind != "transformer" and self.conv_kernel_size % 2 != 1:
            raise ValueError(f"conv_kernel_size must be odd for 'same' padding, got {self.conv_kernel_size}")
        if self.kind == "squeezeformer" and (self.time_reduce_idx is None) != (self.time_recover_idx is None):
            raise ValueError("set both time_reduce_idx and time_recover_idx, or neither (no time reduction)")
        if self.kind == "squeezeformer" and self.time_reduce_idx is not None:
            if not 0 <= self.time_reduce_idx < self.time_recover_idx < self.num_layers:
                raise ValueError(
                    f"need 0 <= time_reduce_idx ({self.time_reduce_idx}) < time_recover_idx "
                    f"({self.time_recover_idx}) < num_layers ({self.num_layers})"
                )

    @property
    def ffn_activation(self) -> str:
        return self.activation or DEFAULT_ACTIVATION[self.kind]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EncoderConfig:
        return cls(**parse_fields(cls, data, "encoder config"))


def _attention(cfg: EncoderConfig, relative: bool) -> MultiHeadAttention:
    return MultiHeadAttention(
        cfg.dim,
        cfg.num_heads,
        cfg.attention_dropout,
        relative_positions=relative,
        backend=cfg.attention_backend,
        flex_min_length=cfg.flex_min_length,
    )


def _feed_forward(cfg: EncoderConfig) -> FeedForward:
    return FeedForward(cfg.dim, cfg.ffn_dim, cfg.ffn_activation, cfg.activation_dropout, cfg.dropout)


def _num_blocks(layers: nn.ModuleList, num_layers: int | None) -> int:
    """How many blocks to run: all of them, or the first ``num_layers`` (early exit for feature extraction)."""
    if num_layers is None:
        return len(layers)
    if not 0 <= num_layers <= len(layers):
        raise ValueError(f"num_layers must be in [0, {len(layers)}], got {num_layers}")
    return num_layers


def draw_layer_keep(num_layers: int, layerdrop: float, device: torch.device | None = None) -> Tensor:
    """One step's LayerDrop draw (on the host by default): a bool tensor ``(num_layers,)``, True = the block runs."""
    return torch.rand(num_layers, device=device) >= layerdrop


def _layer_keep(encoder: nn.Module, layer_keep: Tensor | None, x: Tensor) -> Tensor | None:
    """The caller's draw, or inside a compiled graph without one a draw made in the graph (no host read)."""
    if layer_keep is None and torch.compiler.is_compiling() and encoder.training and encoder.layerdrop > 0:
        return draw_layer_keep(len(encoder.layers), encoder.layerdrop, x.device)
    return layer_keep


def _run_block(encoder: nn.Module, index: int, layer_keep: Tensor | None, block, x: Tensor, *args) -> Tensor:
    """Block ``index`` with LayerDrop in training (see the module docstring for its two forms)."""
    if not (encoder.training and encoder.layerdrop > 0):
        return block(x, *args)
    if layer_keep is None:
        return x if bool(torch.rand(()) < encoder.layerdrop) else block(x, *args)
    return torch.where(layer_keep[index], block(x, *args), x)


# ---------------------------------------------------------------------------------------------------------
# Transformer (HuBERT / wav2vec 2.0) and Sparseformer


class TransformerLayer(nn.Module):
    """wav2vec 2.0 / HuBERT encoder layer (torchaudio ``EncoderLayer`` structure and names).

    post-LN: ``x = LN(x + drop(MHA(x)))``, ``x = final_LN(x + FFN(x))``;
    pre-LN:  ``x = x + drop(MHA(LN(x)))``, ``x = x + FFN(final_LN(x))``.
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attention = _attention(cfg, relative=False)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layer_norm = nn.LayerNorm(cfg.dim)
        self.layer_norm_first = cfg.layer_norm_first
        self.feed_forward = _feed_forward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: Tensor, mask: AttentionMask) -> Tensor:
        if self.layer_norm_first:
            x = x + self.dropout(self.attention(self.layer_norm(x), mask))
            return x + self.feed_forward(self.final_layer_norm(x))
        x = self.layer_norm(x + self.dropout(self.attention(x, mask)))
        return self.final_layer_norm(x + self.feed_forward(x))


class TransformerEncoder(nn.Module):
    """Stack of :class:`TransformerLayer` with the encoder LayerNorm (torchaudio ``Transformer`` minus the
    positional convolution): applied to the input for post-LN, to the last state for pre-LN."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.sparsity = cfg.sparsity
        self.num_heads = cfg.num_heads
        self.layer_norm_first = cfg.layer_norm_first
        self.layerdrop = cfg.layerdrop
        self.layer_norm = nn.LayerNorm(cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.num_layers))
        self.apply(_init_bert_params)

    def forward(
        self,
        x: Tensor,
        lengths: Tensor,
        num_layers: int | None = None,
        *,
        padded: bool | None = None,
        layer_keep: Tensor | None = None,
    ) -> list[Tensor]:
        """``x``: (B, T, D), ``lengths``: (B,) -> ``num_layers + 1`` states (all blocks when None)."""
        count = _num_blocks(self.layers, num_layers)
        layer_keep = _layer_keep(self, layer_keep, x)
        mask = AttentionMask(lengths, x.shape[1], self.num_heads, self.sparsity, padded)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        states = [x]
        for i, layer in enumerate(self.layers[:count]):
            x = _run_block(self, i, layer_keep, layer, x, mask)
            states.append(x)
        if self.layer_norm_first and count == len(self.layers):
            states[-1] = self.layer_norm(states[-1])
        return states


def _init_bert_params(module: nn.Module) -> None:
    # fairseq init_bert_params / torchaudio _init_transformer_params: N(0, 0.02) weights, zero biases.
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------------------
# Conformer


class ConformerLayer(nn.Module):
    """Conformer block: ½ FFN -> rel-pos MHSA -> conv module -> ½ FFN -> LayerNorm, every module pre-LN."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.ffn1_layer_norm = nn.LayerNorm(cfg.dim)
        self.ffn1 = _feed_forward(cfg)
        self.attention_layer_norm = nn.LayerNorm(cfg.dim)
        self.attention = _attention(cfg, relative=True)
        self.attention_dropout = nn.Dropout(cfg.dropout)
        self.conv_layer_norm = nn.LayerNorm(cfg.dim)
        self.conv = ConvolutionModule(cfg.dim, cfg.conv_kernel_size, use_glu=True, dropout=cfg.dropout)
        self.ffn2_layer_norm = nn.LayerNorm(cfg.dim)
        self.ffn2 = _feed_forward(cfg)
        self.final_layer_norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: Tensor, mask: AttentionMask, pos_emb: Tensor) -> Tensor:
        x = x + 0.5 * self.ffn1(self.ffn1_layer_norm(x))
        x = x + self.attention_dropout(self.attention(self.attention_layer_norm(x), mask, pos_emb))
        x = x + self.conv(self.conv_layer_norm(x), mask.valid)
        x = x + 0.5 * self.ffn2(self.ffn2_layer_norm(x))
        return self.final_layer_norm(x)


class ConformerEncoder(nn.Module):
    """Stack of :class:`ConformerLayer` sharing one relative positional encoding per forward."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.sparsity = cfg.sparsity
        self.num_heads = cfg.num_heads
        self.layerdrop = cfg.layerdrop
        self.pos_encoding = RelativePositionalEncoding(cfg.dim)
        self.layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.num_layers))

    def forward(
        self,
        x: Tensor,
        lengths: Tensor,
        num_layers: int | None = None,
        *,
        padded: bool | None = None,
        layer_keep: Tensor | None = None,
    ) -> list[Tensor]:
        """``x``: (B, T, D), ``lengths``: (B,) -> ``num_layers + 1`` states (all blocks when None)."""
        count = _num_blocks(self.layers, num_layers)
        layer_keep = _layer_keep(self, layer_keep, x)
        mask = AttentionMask(lengths, x.shape[1], self.num_heads, self.sparsity, padded)
        pos_emb = self.pos_encoding(x.shape[1], x.device, x.dtype)
        states = [x]
        for i, layer in enumerate(self.layers[:count]):
            x = _run_block(self, i, layer_keep, layer, x, mask, pos_emb)
            states.append(x)
        return states


# ---------------------------------------------------------------------------------------------------------
# Squeezeformer


class SqueezeformerLayer(nn.Module):
    """Squeezeformer block (MF/CF): each of MHSA, FFN, conv, FFN as ``LN(x + module(x * scale + bias))``.

    Full-step FFNs (fc_factor 1.0), Swish everywhere, conv module without GLU (depthwise conv on 2d channels).
    """

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.attention_scale = ScaleBias(cfg.dim)
        self.attention = _attention(cfg, relative=True)
        self.attention_dropout = nn.Dropout(cfg.dropout)
        self.attention_layer_norm = nn.LayerNorm(cfg.dim)
        self.ffn1_scale = ScaleBias(cfg.dim)
        self.ffn1 = _feed_forward(cfg)
        self.ffn1_layer_norm = nn.LayerNorm(cfg.dim)
        self.conv_scale = ScaleBias(cfg.dim)
        self.conv = ConvolutionModule(cfg.dim, cfg.conv_kernel_size, use_glu=False, dropout=cfg.dropout)
        self.conv_layer_norm = nn.LayerNorm(cfg.dim)
        self.ffn2_scale = ScaleBias(cfg.dim)
        self.ffn2 = _feed_forward(cfg)
        self.ffn2_layer_norm = nn.LayerNorm(cfg.dim)

    def forward(self, x: Tensor, mask: AttentionMask, pos_emb: Tensor) -> Tensor:
        attended = self.attention(self.attention_scale(x), mask, pos_emb)
        x = self.attention_layer_norm(x + self.attention_dropout(attended))
        x = self.ffn1_layer_norm(x + self.ffn1(self.ffn1_scale(x)))
        x = self.conv_layer_norm(x + self.conv(self.conv_scale(x), mask.valid))
        return self.ffn2_layer_norm(x + self.ffn2(self.ffn2_scale(x)))


class SqueezeformerEncoder(nn.Module):
    """Input LayerNorm, then :class:`SqueezeformerLayer` blocks; blocks ``time_reduce_idx ..
    time_recover_idx - 1`` run at half frame rate (Temporal U-Net). Their hidden states are returned repeated
    back to full rate (each frame twice, cropped to T)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.sparsity = cfg.sparsity
        self.num_heads = cfg.num_heads
        self.layerdrop = cfg.layerdrop
        self.reduce_idx = cfg.time_reduce_idx
        self.recover_idx = cfg.time_recover_idx
        self.pos_encoding = RelativePositionalEncoding(cfg.dim)
        self.pre_layer_norm = nn.LayerNorm(cfg.dim)
        self.layers = nn.ModuleList(SqueezeformerLayer(cfg) for _ in range(cfg.num_layers))
        if self.reduce_idx is not None:
            self.time_reduction = TimeReduction(cfg.dim, cfg.time_reduction_kernel_size)
            self.time_recovery = TimeRecovery(cfg.dim)

    def _context(self, x: Tensor, lengths: Tensor, padded: bool | None) -> tuple[AttentionMask, Tensor]:
        mask = AttentionMask(lengths, x.shape[1], self.num_heads, self.sparsity, padded)
        return mask, self.pos_encoding(x.shape[1], x.device, x.dtype)

    def forward(
        self,
        x: Tensor,
        lengths: Tensor,
        num_layers: int | None = None,
        *,
        padded: bool | None = None,
        layer_keep: Tensor | None = None,
    ) -> list[Tensor]:
        """``x``: (B, T, D), ``lengths``: (B,) -> ``num_layers + 1`` states (all blocks when None)."""
        count = _num_blocks(self.layers, num_layers)
        layer_keep = _layer_keep(self, layer_keep, x)
        length = x.shape[1]
        x = self.pre_layer_norm(x)
        mask, pos_emb = full = self._context(x, lengths, padded)
        states = [x]
        skip = None
        for i, layer in enumerate(self.layers[:count]):
            if i == self.reduce_idx:
                skip = x
                x = self.time_reduction(x, mask.valid)
                # unpadded at full rate -> unpadded at half rate; a padded row may fill all ceil(T / 2) frames
                mask, pos_emb = self._context(x, reduced_lengths(lengths), None if mask.padded else False)
            elif i == self.recover_idx:
                x = self.time_recovery(x, skip)
                mask, pos_emb = full
                skip = None
            x = _run_block(self, i, layer_keep, layer, x, mask, pos_emb)
            states.append(x if skip is None else x.repeat_interleave(2, dim=1)[:, :length])
        return states


def build_encoder(cfg: EncoderConfig) -> nn.Module:
    """Instantiate the encoder described by ``cfg``; ``forward(x, lengths)`` returns num_layers + 1 states."""
    if cfg.kind == "transformer":
        return TransformerEncoder(cfg)
    if cfg.kind == "conformer":
        return ConformerEncoder(cfg)
    return SqueezeformerEncoder(cfg)
