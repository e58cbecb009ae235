"""HuBERT: conv front end + swappable encoder + masked prediction of pseudo-labels.

Forward pass (fairseq ``HubertModel`` semantics):
waveform -> conv feature extractor -> GradMultiply(feature_grad_mult) -> feature penalty ``mean(conv_out^2)`` ->
LayerNorm + Linear(conv_dim, d) + dropout -> masked frames replaced by the mask embedding -> padded frames zeroed ->
``x + pos_conv(x)`` (transformer family only) -> encoder -> final_proj (d -> 256) -> cosine similarity with the
k label embeddings / 0.1 = the logits of the masked and unmasked frames, beside their targets.

The objective that combines them (cross-entropy on masked frames + ``pred_nomask_weight`` x unmasked frames +
``feature_pen_weight`` x penalty) is :func:`hubert_lit.lit.losses.hubert_objective`; the model computes no loss.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubert_lit.constants import FRAME_WINDOW, LABEL_PAD
from hubert_lit.models.config import HubertConfig, make_config
from hubert_lit.models.encoders import build_encoder
from hubert_lit.models.frontend import (
    ConvFeatureExtractor,
    ConvPositionalEmbedding,
    FeatureProjection,
    GradMultiply,
    conv_layers_for,
    lengths_to_padding_mask,
)
from hubert_lit.models.masking import compute_span_mask


@dataclass
class HubertOutput:
    """Everything one pretraining forward pass produces.

    ``logits_*`` are (N, k) rows for the masked / unmasked valid frames (row order = ``mask.nonzero()`` order);
    ``targets_*`` are their labels (None when no labels were given). ``feature_penalty`` is the mean square of the
    conv features over the valid frames. :mod:`hubert_lit.lit.losses` turns these into the loss and its sums.
    """

    logits_masked: Tensor
    logits_unmasked: Tensor
    targets_masked: Tensor | None
    targets_unmasked: Tensor | None
    feature_penalty: Tensor
    mask: Tensor
    frame_lengths: Tensor
    hidden_states: list[Tensor] = field(default_factory=list)


class HubertModel(nn.Module):
    """HuBERT around any encoder built by :func:`hubert_lit.models.encoders.build_encoder`.

    With ``config.num_classes == 0`` it is an inference-only model: no mask embedding, final projection or label
    embeddings (e.g. torchaudio ``hubert_base()``), usable through :meth:`extract_features` only.

    ``quant_spec`` is None for a full-precision model; :func:`hubert_lit.quant.binarize` sets it to the
    ``QuantSpec`` it applied, so files and tools can tell a binarized model (this module does not depend on it).
    """

    quant_spec: Any

    def __init__(self, config: HubertConfig):
        super().__init__()
        self.config = config
        self.quant_spec = None
        dim = config.encoder.dim
        conv_layers = conv_layers_for(config.frontend, config.conv_dim, config.fastconv_extra_layers)
        self.feature_extractor = ConvFeatureExtractor(conv_layers, config.extractor_mode, config.conv_bias)
        self.feature_projection = FeatureProjection(
            self.feature_extractor.output_dim, dim, config.dropout_input
        )
        self.pos_conv: ConvPositionalEmbedding | None = None
        if config.pos_conv_kernel > 0:
            self.pos_conv = ConvPositionalEmbedding(dim, config.pos_conv_kernel, config.pos_conv_groups)
        self.encoder = build_encoder(config.encoder)
        self.mask_embedding: nn.Parameter | None = None
        self.final_proj: nn.Linear | None = None
        self.label_embeddings: nn.Parameter | None = None
        if config.num_classes > 0:
            self.mask_embedding = nn.Parameter(torch.empty(dim).uniform_())
            self.final_proj = nn.Linear(dim, config.final_dim)
            self.label_embeddings = nn.Parameter(torch.empty(config.num_classes, config.final_dim).uniform_())

    @property
    def num_layers(self) -> int:
        return self.config.encoder.num_layers

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        """Valid 50 Hz frames for ``lengths`` samples: ``floor((n - 400) / 320) + 1`` (0 below 400 samples)."""
        return self.feature_extractor.output_lengths(lengths)

    def num_frames(self, num_samples: int) -> int:
        """Frames of a padded batch ``num_samples`` wide."""
        return int(self.frame_lengths(torch.tensor([num_samples]))[0])

    def compute_mask(
        self, frame_lengths: Tensor, num_frames: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """A span mask with this model's settings; pass it to several models' ``forward`` to share it."""
        c = self.config
        return compute_span_mask(
            frame_lengths, num_frames, c.mask_prob, c.mask_length, c.min_masks, generator
        )

    def _check_inputs(self, waveforms: Tensor, lengths: Tensor) -> None:
        if waveforms.ndim != 2:
            raise ValueError(f"waveforms must be (batch, samples), got shape {tuple(waveforms.shape)}")
        if lengths.shape != (waveforms.shape[0],):
            raise ValueError(f"lengths must have shape ({waveforms.shape[0]},), got {tuple(lengths.shape)}")
        if bool((lengths > waveforms.shape[1]).any()) or bool((lengths < 0).any()):
            raise ValueError(f"lengths must lie in [0, {waveforms.shape[1]}], got {lengths.tolist()}")
        if self.num_frames(waveforms.shape[1]) == 0:
            raise ValueError(
                f"waveforms have {waveforms.shape[1]} samples, fewer than one frame needs "
                f"({FRAME_WINDOW} samples = 25 ms at 16 kHz)"
            )

    def _encoder_input(
        self, waveforms: Tensor, lengths: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Front end up to the encoder input: returns (x (B, T, d), frame lengths, feature penalty)."""
        self._check_inputs(waveforms, lengths)
        mult = self.config.feature_grad_mult
        if mult > 0:
            features, frame_lengths = self.feature_extractor(waveforms, lengths)
            if mult != 1.0:
                features = GradMultiply.apply(features, mult)
        else:  # a frozen front end, as fairseq does for feature_grad_mult == 0
            with torch.no_grad():
                features, frame_lengths = self.feature_extractor(waveforms, lengths)
        padding = lengths_to_padding_mask(frame_lengths, features.shape[1])
        valid = (~padding).to(torch.float32)
        # padded frames are zero, so the mean over valid frames is a sum over all of them
        penalty = features.float().square().sum() / (valid.sum().clamp(min=1.0) * features.shape[-1])
        x = self.feature_projection(features)
        if mask is not None:
            x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)
        x = x.masked_fill(padding[..., None], 0.0)
        if self.pos_conv is not None:
            x = x + self.pos_conv(x, padding)
        return x, frame_lengths, penalty

    def _check_mask(self, mask: Tensor, frame_lengths: Tensor, num_frames: int) -> Tensor:
        if mask.shape != (frame_lengths.shape[0], num_frames):
            raise ValueError(
                f"mask must have shape {(frame_lengths.shape[0], num_frames)} (batch, frames), "
                f"got {tuple(mask.shape)}"
            )
        mask = mask.to(device=frame_lengths.device, dtype=torch.bool)
        if bool((mask & lengths_to_padding_mask(frame_lengths, num_frames)).any()):
            raise ValueError("mask covers padded frames; masks must lie within each utterance's frame length")
        return mask

    def _check_labels(self, labels: Tensor, num_frames: int) -> Tensor:
        if labels.ndim != 2 or labels.shape[0] == 0:
            raise ValueError(f"labels must be (batch, frames), got shape {tuple(labels.shape)}")
        if labels.shape[1] > num_frames and bool((labels[:, num_frames:] != LABEL_PAD).any()):
            raise ValueError(
                f"labels have {labels.shape[1]} frames but the audio gives {num_frames} "
                "(floor((samples - 400) / 320) + 1); the extra frames hold labels"
            )
        if labels.shape[1] < num_frames:
            raise ValueError(
                f"labels have {labels.shape[1]} frames but the audio gives {num_frames} "
                "(floor((samples - 400) / 320) + 1); pad labels with -100"
            )
        labels = labels[:, :num_frames].long()
        used = labels[labels != LABEL_PAD]
        if used.numel() and (int(used.min()) < 0 or int(used.max()) >= self.config.num_classes):
            raise ValueError(
                f"labels must be in [0, {self.config.num_classes}) or {LABEL_PAD}, "
                f"got range [{int(used.min())}, {int(used.max())}]"
            )
        return labels

    def logits(self, x: Tensor) -> Tensor:
        """Cosine similarity of ``final_proj(x)`` (N, d) with every label embedding, / logit_temp -> (N, k).

        Computed in fp32 even under autocast (as fairseq does): a normalised matmul, the same softmax as fairseq's
        "positive + all negatives" formulation without materialising the (k + 1, N, 256) tensor.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            proj = F.normalize(self.final_proj(x.float()), dim=-1)
            emb = F.normalize(self.label_embeddings.float(), dim=-1)
            return proj @ emb.t() / self.config.logit_temp

    def forward(
        self,
        waveforms: Tensor,
        lengths: Tensor,
        labels: Tensor | None = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> HubertOutput:
        """Masked-prediction pass.

        Args:
            waveforms: (B, L) float, 16 kHz.
            lengths: (B,) valid samples per row.
            labels: (B, T) int64 cluster ids at 50 Hz, ``-100`` where there is no label (padding).
            mask: optional (B, T) bool span mask (True = masked) to use as given, e.g. shared by a teacher and a
                student; by default one is drawn with :meth:`compute_mask` (using ``generator`` if given).
        """
        if self.final_proj is None:
            raise RuntimeError("this model has no pretraining head (num_classes=0); use extract_features")
        lengths = lengths.to(waveforms.device)
        frame_lengths = self.frame_lengths(lengths)
        num_frames = self.num_frames(waveforms.shape[1])
        if mask is None:
            mask = self.compute_mask(frame_lengths, num_frames, generator)
        else:
            mask = self._check_mask(mask, frame_lengths, num_frames)
        x, frame_lengths, penalty = self._encoder_input(waveforms, lengths, mask)
        hidden_states = self.encoder(x, frame_lengths)
        last = hidden_states[-1]

        valid = ~lengths_to_padding_mask(frame_lengths, num_frames)
        if labels is not None:
            labels = self._check_labels(labels.to(waveforms.device), num_frames)
            valid = valid & (labels != LABEL_PAD)
        sel_m, sel_u = valid & mask, valid & ~mask
        logits_m = self.logits(last[sel_m])
        if self.config.pred_nomask_weight > 0:
            logits_u = self.logits(last[sel_u])
        else:  # only for accuracy logging: no graph needed
            with torch.no_grad():
                logits_u = self.logits(last[sel_u])
        return HubertOutput(
            logits_masked=logits_m,
            logits_unmasked=logits_u,
            targets_masked=None if labels is None else labels[sel_m],
            targets_unmasked=None if labels is None else labels[sel_u],
            feature_penalty=penalty,
            mask=mask,
            frame_lengths=frame_lengths,
            hidden_states=hidden_states,
        )

    def extract_features(
        self, waveforms: Tensor, lengths: Tensor, layer: int | None = None
    ) -> tuple[list[Tensor], Tensor]:
        """Hidden states without masking: ``(states, frame_lengths)``.

        ``states[0]`` is the encoder input (after projection, positional embedding and the encoder's own input
        processing), ``states[i]`` the output of block ``i``. With ``layer`` given, only blocks ``1..layer`` run and
        ``layer + 1`` tensors are returned. Padded frames are zero. Dropout and LayerDrop follow ``self.training``
        (call ``.eval()`` for features).
        """
        if layer is not None and not 0 <= layer <= self.num_layers:
            raise ValueError(f"layer must be in [0, {self.num_layers}], got {layer}")
        lengths = lengths.to(waveforms.device)
        x, frame_lengths, _ = self._encoder_input(waveforms, lengths, None)
        if layer is None:
            states = self.encoder(x, frame_lengths)
        else:
            states = self.encoder(x, frame_lengths, num_layers=layer)
        padding = lengths_to_padding_mask(frame_lengths, x.shape[1])[..., None]
        return [h.masked_fill(padding, 0.0) for h in states], frame_lengths


def build_hubert(name: str | HubertConfig, num_classes: int | None = None, **overrides: Any) -> HubertModel:
    """Build a :class:`HubertModel` from a preset name (see ``PRESETS``) or a config.

    ``overrides`` set any :class:`HubertConfig` field; encoder fields go in ``encoder={...}`` (merged into the
    preset's encoder) or dotted keys, e.g. ``build_hubert("vanilla", 500, **{"encoder.num_layers": 6})``.
    """
    return HubertModel(make_config(name, num_classes, **overrides))
