"""HuBERT: conv front end + swappable encoder + masked prediction of pseudo-labels.

Forward pass (fairseq ``HubertModel`` semantics):
waveform -> conv feature extractor -> GradMultiply(feature_grad_mult) -> feature penalty ``mean(conv_out^2)`` ->
LayerNorm + Linear(conv_dim, d) + dropout -> masked frames replaced by the mask embedding -> padded frames zeroed ->
``x + pos_conv(x)`` (transformer family only) -> encoder -> final_proj (d -> 256) -> cosine similarity with the
k label embeddings / 0.1 = the logits of every frame, beside the span mask and the targets.

The objective that combines them (cross-entropy on masked frames + ``pred_nomask_weight`` x unmasked frames +
``feature_pen_weight`` x penalty) is :func:`hubert_lit.lit.losses.hubert_objective`; the model computes no loss.

Shapes are fixed by the batch's shape alone: logits come for every frame (the loss weights them by the masks)
instead of for a data-dependent selection, and nothing in ``forward`` reads a value back to the host except the
input validation (``validate=True``, eager only; a caller that checked the batch on the host with
:meth:`HubertModel.check_inputs` passes ``validate=False``). So a training forward compiles into one graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubert_lit.constants import FRAME_WINDOW, LABEL_PAD
from hubert_lit.models.config import HubertConfig, make_config
from hubert_lit.models.encoders import build_encoder, draw_layer_keep
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
    """Everything one pretraining forward pass produces, at fixed shapes.

    ``logits`` are (B, T, k) for every frame; ``targets`` (B, T) their labels, ``LABEL_PAD`` on padded frames and
    frames without a label (None when no labels were given); ``mask`` the (B, T) span mask and ``valid`` the (B, T)
    non-padded frames. ``feature_penalty`` is the mean square of the conv features over the valid frames.
    :mod:`hubert_lit.lit.losses` turns these into the loss and its sums. The ``*_masked`` / ``*_unmasked``
    properties select rows (data-dependent shapes, a host read; for inspection, not for a training step).
    """

    logits: Tensor
    targets: Tensor | None
    mask: Tensor
    valid: Tensor
    feature_penalty: Tensor
    frame_lengths: Tensor
    hidden_states: list[Tensor] = field(default_factory=list)

    @property
    def labelled(self) -> Tensor:
        """(B, T) frames that count in the loss: valid, and labelled when targets were given."""
        return self.valid if self.targets is None else self.targets != LABEL_PAD

    @property
    def logits_masked(self) -> Tensor:
        """(N, k) logits of the masked labelled frames, in ``mask.nonzero()`` order."""
        return self.logits[self.labelled & self.mask]

    @property
    def logits_unmasked(self) -> Tensor:
        return self.logits[self.labelled & ~self.mask]

    @property
    def targets_masked(self) -> Tensor | None:
        return None if self.targets is None else self.targets[self.labelled & self.mask]

    @property
    def targets_unmasked(self) -> Tensor | None:
        return None if self.targets is None else self.targets[self.labelled & ~self.mask]


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
        return self.feature_extractor.output_length(num_samples)

    def compute_mask(
        self, frame_lengths: Tensor, num_frames: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """A span mask with this model's settings; pass it to several models' ``forward`` to share it."""
        c = self.config
        return compute_span_mask(
            frame_lengths, num_frames, c.mask_prob, c.mask_length, c.min_masks, generator
        )

    def draw_layer_keep(self) -> Tensor | None:
        """One step's LayerDrop draw made on the host (``forward(layer_keep=...)``), or None without LayerDrop."""
        layerdrop = self.config.encoder.layerdrop
        if not (self.training and layerdrop > 0):
            return None
        return draw_layer_keep(self.num_layers, layerdrop)

    # ------------------------------------------------------------------------------------------ validation
    def _check_shapes(
        self, waveforms: Tensor, lengths: Tensor | None, labels: Tensor | None, mask: Tensor | None
    ) -> int:
        """Checks on shapes only (free, also inside a compiled graph); returns the number of frames."""
        if waveforms.ndim != 2:
            raise ValueError(f"waveforms must be (batch, samples), got shape {tuple(waveforms.shape)}")
        if lengths is not None and lengths.shape != (waveforms.shape[0],):
            raise ValueError(f"lengths must have shape ({waveforms.shape[0]},), got {tuple(lengths.shape)}")
        num_frames = self.num_frames(waveforms.shape[1])
        if num_frames == 0:
            raise ValueError(
                f"waveforms have {waveforms.shape[1]} samples, fewer than one frame needs "
                f"({FRAME_WINDOW} samples = 25 ms at 16 kHz)"
            )
        if labels is not None:
            if labels.ndim != 2 or labels.shape[0] == 0:
                raise ValueError(f"labels must be (batch, frames), got shape {tuple(labels.shape)}")
            if labels.shape[1] < num_frames:
                raise ValueError(
                    f"labels have {labels.shape[1]} frames but the audio gives {num_frames} "
                    "(floor((samples - 400) / 320) + 1); pad labels with -100"
                )
        if mask is not None and mask.shape != (waveforms.shape[0], num_frames):
            raise ValueError(
                f"mask must have shape {(waveforms.shape[0], num_frames)} (batch, frames), "
                f"got {tuple(mask.shape)}"
            )
        return num_frames

    def check_inputs(
        self,
        waveforms: Tensor,
        lengths: Tensor | None,
        labels: Tensor | None = None,
        mask: Tensor | None = None,
    ) -> bool:
        """Validate a batch; returns whether any row has fewer frames than the batch (is padded for attention).

        Reads values back, so it is a host-device sync for tensors on a GPU: run it on the host copy of a batch
        (the Lightning modules do, before the batch moves to the device) and call ``forward(..., validate=False)``.
        """
        num_frames = self._check_shapes(waveforms, lengths, labels, mask)
        width = waveforms.shape[1]
        padded = False
        if lengths is not None:
            if bool((lengths > width).any()) or bool((lengths < 0).any()):
                raise ValueError(f"lengths must lie in [0, {width}], got {lengths.tolist()}")
            padded = bool((self.frame_lengths(lengths) < num_frames).any())
        if labels is not None:
            if labels.shape[1] > num_frames and bool((labels[:, num_frames:] != LABEL_PAD).any()):
                raise ValueError(
                    f"labels have {labels.shape[1]} frames but the audio gives {num_frames} "
                    "(floor((samples - 400) / 320) + 1); the extra frames hold labels"
                )
            used = labels[:, :num_frames][labels[:, :num_frames] != LABEL_PAD]
            if used.numel() and (int(used.min()) < 0 or int(used.max()) >= self.config.num_classes):
                raise ValueError(
                    f"labels must be in [0, {self.config.num_classes}) or {LABEL_PAD}, "
                    f"got range [{int(used.min())}, {int(used.max())}]"
                )
        if mask is not None and lengths is not None:
            frame_lengths = self.frame_lengths(lengths.to(mask.device))
            if bool((mask.bool() & lengths_to_padding_mask(frame_lengths, num_frames)).any()):
                raise ValueError(
                    "mask covers padded frames; masks must lie within each utterance's frame length"
                )
        return padded

    def _prepare(
        self,
        waveforms: Tensor,
        lengths: Tensor | None,
        labels: Tensor | None,
        mask: Tensor | None,
        validate: bool,
    ) -> tuple[Tensor, bool]:
        """Validate as asked; returns the lengths on the device and whether any row is padded (without
        validation: whether ``lengths`` were given)."""
        if validate and not torch.compiler.is_compiling():
            padded = self.check_inputs(waveforms, lengths, labels, mask)
        else:
            self._check_shapes(waveforms, lengths, labels, mask)
            padded = lengths is not None
        if lengths is None:
            lengths = torch.full(
                (waveforms.shape[0],), waveforms.shape[1], dtype=torch.long, device=waveforms.device
            )
        return lengths.to(waveforms.device), padded

    # ------------------------------------------------------------------------------------------ forward
    def _encoder_input(
        self, waveforms: Tensor, lengths: Tensor, mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Front end up to the encoder input: returns (x (B, T, d), frame lengths, feature penalty)."""
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

    def logits(self, x: Tensor) -> Tensor:
        """Cosine similarity of ``final_proj(x)`` (..., d) with every label embedding, / logit_temp -> (..., k).

        Computed in fp32 even under autocast (as fairseq does): a normalised matmul, the same softmax as fairseq's
        "positive + all negatives" formulation without materialising the (k + 1, N, 256) tensor.
        """
        with torch.autocast(device_type=x.device.type, enabled=False):
            proj = F.normalize(self.final_proj(x.float()), dim=-1)
            emb = F.normalize(self.label_embeddings.float(), dim=-1)
            return proj @ emb.t() / self.config.logit_temp

    def _frame_logits(self, last: Tensor, masked: Tensor, unmasked: Tensor) -> Tensor:
        """(B, T, k) logits of the last states ``last`` (B, T, d).

        Every frame's, at fixed shapes, in a compiled graph or on an accelerator (no host sync). In eager mode on
        CPU, where selecting rows costs nothing, only the rows the loss and the accuracies use are computed (the
        masked ones, the unmasked ones without a graph when their weight is 0) and scattered into frame order,
        which keeps the head's gradients bit for bit those of earlier versions: one matmul over all frames
        sums them in another order. The other frames' logits are 0 there; the losses never use them.
        """
        if torch.compiler.is_compiling() or last.device.type != "cpu":
            # padded frames' states are meaningless: zero them so that their (unused) logits stay finite
            return self.logits(last.masked_fill(~(masked | unmasked)[..., None], 0.0))
        logits = last.new_zeros(*last.shape[:2], self.config.num_classes, dtype=torch.float32)
        logits[masked] = self.logits(last[masked])
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.config.pred_nomask_weight > 0):
            logits[unmasked] = self.logits(last[unmasked])
        return logits

    def forward(
        self,
        waveforms: Tensor,
        lengths: Tensor | None = None,
        labels: Tensor | None = None,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        layer_keep: Tensor | None = None,
        validate: bool = True,
    ) -> HubertOutput:
        """Masked-prediction pass.

        Args:
            waveforms: (B, L) float, 16 kHz.
            lengths: (B,) valid samples per row; None when no row is padded.
            labels: (B, T) int64 cluster ids at 50 Hz, ``-100`` where there is no label (padding).
            mask: optional (B, T) bool span mask (True = masked) to use as given, e.g. shared by a teacher and a
                student; by default one is drawn with :meth:`compute_mask` (using ``generator`` if given).
            layer_keep: one step's LayerDrop draw (:meth:`draw_layer_keep`); None draws per block (eager).
            validate: check the inputs' values (a host read; skipped inside a compiled graph). With False a
                ``lengths`` tensor is taken as padded (pass None for a batch without padding).
        """
        if self.final_proj is None:
            raise RuntimeError("this model has no pretraining head (num_classes=0); use extract_features")
        lengths, padded = self._prepare(waveforms, lengths, labels, mask, validate)
        device = waveforms.device
        frame_lengths = self.frame_lengths(lengths)
        num_frames = self.num_frames(waveforms.shape[1])
        if mask is None:
            mask = self.compute_mask(frame_lengths, num_frames, generator)
        else:
            mask = mask.to(device=device, dtype=torch.bool)
        x, frame_lengths, penalty = self._encoder_input(waveforms, lengths, mask)
        hidden_states = self.encoder(x, frame_lengths, padded=padded, layer_keep=layer_keep)
        valid = ~lengths_to_padding_mask(frame_lengths, num_frames)
        targets = None
        if labels is not None:
            targets = labels.to(device)[:, :num_frames].long().masked_fill(~valid, LABEL_PAD)
        labelled = valid if targets is None else targets != LABEL_PAD
        logits = self._frame_logits(hidden_states[-1], labelled & mask, labelled & ~mask)
        return HubertOutput(logits, targets, mask, valid, penalty, frame_lengths, hidden_states)

    def extract_features(
        self,
        waveforms: Tensor,
        lengths: Tensor | None = None,
        layer: int | None = None,
        *,
        validate: bool = True,
    ) -> tuple[list[Tensor], Tensor]:
        """Hidden states without masking: ``(states, frame_lengths)``.

        ``states[0]`` is the encoder input (after projection, positional embedding and the encoder's own input
        processing), ``states[i]`` the output of block ``i``. With ``layer`` given, only blocks ``1..layer`` run and
        ``layer + 1`` tensors are returned. Padded frames are zero. Dropout and LayerDrop follow ``self.training``
        (call ``.eval()`` for features). ``lengths`` and ``validate`` as in :meth:`forward`.
        """
        if layer is not None and not 0 <= layer <= self.num_layers:
            raise ValueError(f"layer must be in [0, {self.num_layers}], got {layer}")
        lengths, padded = self._prepare(waveforms, lengths, None, None, validate)
        x, frame_lengths, _ = self._encoder_input(waveforms, lengths, None)
        states = self.encoder(x, frame_lengths, num_layers=layer, padded=padded)
        padding = lengths_to_padding_mask(frame_lengths, x.shape[1])[..., None]
        return [h.masked_fill(padding, 0.0) for h in states], frame_lengths


def build_hubert(name: str | HubertConfig, num_classes: int | None = None, **overrides: Any) -> HubertModel:
    """Build a :class:`HubertModel` from a preset name (see ``PRESETS``) or a config.

    ``overrides`` set any :class:`HubertConfig` field; encoder fields go in ``encoder={...}`` (merged into the
    preset's encoder) or dotted keys, e.g. ``build_hubert("vanilla", 500, **{"encoder.num_layers": 6})``.
    """
    return HubertModel(make_config(name, num_classes, **overrides))
