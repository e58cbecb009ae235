"""Downstream heads of the SUPERB tasks (s3prl's designs, widths set per task in the task configs).

Every head takes the weighted-sum features ``x`` (B, T, D) and the valid frame counts ``lengths`` (B,).

* :class:`UtteranceClassifier` (KS, IC, SID, ER): ``Linear(D, hidden)`` -> mean over valid frames -> ``Linear``
  to the classes; IC's three label groups are slices of one output (``group_sizes``).
* :class:`FrameLinear` (PR): one linear layer per frame, CTC over phones.
* :class:`RecurrentCTC` (ASR, SF): ``Linear(D, proj)`` -> bidirectional LSTM stack -> linear, CTC over characters.
* :class:`XVector` + :class:`AMSoftmax` (ASV): TDNN layers, statistics pooling (mean and standard deviation
  over valid frames), an embedding layer; additive-margin softmax loss on the embeddings.
* :class:`DiarizationLSTM` (SD): unidirectional LSTM -> linear -> one logit per speaker and frame;
  :func:`pit_bce_loss` is the permutation-invariant BCE.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def valid_mask(lengths: Tensor, num_frames: int) -> Tensor:
    """(B, T) bool, True on the first ``lengths[b]`` frames."""
    return torch.arange(num_frames, device=lengths.device)[None, :] < lengths[:, None]


def masked_mean(x: Tensor, lengths: Tensor) -> Tensor:
    """Mean of ``x`` (B, T, D) over the valid frames of each row -> (B, D)."""
    mask = valid_mask(lengths, x.shape[1]).to(x.dtype)[..., None]
    return (x * mask).sum(1) / lengths.clamp(min=1)[:, None].to(x.dtype)


class UtteranceClassifier(nn.Module):
    """Linear -> mean pooling -> linear; ``group_sizes`` splits the logits into label groups (IC)."""

    def __init__(self, input_dim: int, hidden_dim: int, group_sizes: Sequence[int]):
        super().__init__()
        if not group_sizes or min(group_sizes) < 1:
            raise ValueError(f"group_sizes must be positive class counts, got {list(group_sizes)}")
        self.group_sizes = list(group_sizes)
        self.projector = nn.Linear(input_dim, hidden_dim)
        self.classifier = nn.Linear(hidden_dim, sum(self.group_sizes))

    def forward(self, x: Tensor, lengths: Tensor) -> list[Tensor]:
        """One (B, classes) logit tensor per group."""
        pooled = masked_mean(self.projector(x), lengths)
        return list(torch.split(self.classifier(pooled), self.group_sizes, dim=-1))


class FrameLinear(nn.Module):
    """One linear layer applied to every frame (PR)."""

    def __init__(self, input_dim: int, num_outputs: int):
        super().__init__()
        self.linear = nn.Linear(input_dim, num_outputs)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.linear(x)


class RecurrentCTC(nn.Module):
    """Linear projection -> ``num_layers`` bidirectional LSTM layers (dropout between) -> linear (ASR, SF)."""

    def __init__(
        self,
        input_dim: int,
        proj_dim: int,
        hidden_dim: int,
        num_layers: int,
        dropout: float,
        num_outputs: int,
    ):
        super().__init__()
        self.proj = nn.Linear(input_dim, proj_dim)
        self.lstm = nn.LSTM(
            proj_dim,
            hidden_dim,
            num_layers=num_layers,
            bidirectional=True,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden_dim, num_outputs)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        packed = pack_padded_sequence(self.proj(x), lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = self.lstm(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return self.out(self.dropout(y))


class XVector(nn.Module):
    """x-vector: Linear(D, channels) -> TDNN (dilated Conv1d + ReLU + BatchNorm) -> statistics pooling ->
    Linear to the embedding (ASV)."""

    def __init__(
        self,
        input_dim: int,
        channels: int,
        pooled_channels: int,
        embedding_dim: int,
        kernels: Sequence[int] = (5, 3, 3, 1),
        dilations: Sequence[int] = (1, 2, 3, 1),
    ):
        super().__init__()
        if len(kernels) != len(dilations):
            raise ValueError(f"kernels {list(kernels)} and dilations {list(dilations)} differ in length")
        self.connector = nn.Linear(input_dim, channels)
        layers = []
        for i, (k, d) in enumerate(zip(kernels, dilations)):
            out = pooled_channels if i == len(kernels) - 1 else channels
            layers.append(
                nn.Sequential(
                    nn.Conv1d(channels, out, k, dilation=d, padding=d * (k - 1) // 2),
                    nn.ReLU(),
                    nn.BatchNorm1d(out),
                )
            )
        self.tdnn = nn.ModuleList(layers)
        self.embedding = nn.Linear(2 * pooled_channels, embedding_dim)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        """Utterance embeddings (B, embedding_dim)."""
        mask = valid_mask(lengths, x.shape[1])
        h = self.connector(x).masked_fill(~mask[..., None], 0.0).transpose(1, 2)  # (B, C, T)
        for layer in self.tdnn:
            h = layer(h).masked_fill(~mask[:, None, :], 0.0)  # same padding: frame count unchanged
        h = h.transpose(1, 2)
        mean = masked_mean(h, lengths)
        var = masked_mean((h - mean[:, None, :]) ** 2, lengths)
        return self.embedding(torch.cat([mean, var.clamp(min=1e-6).sqrt()], dim=-1))


class AMSoftmax(nn.Module):
    """Additive-margin softmax: ``CE(s * (cos(theta) - m * onehot))`` with normalised embeddings and weights."""

    def __init__(self, embedding_dim: int, num_classes: int, scale: float = 30.0, margin: float = 0.4):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_normal_(self.weight)
        self.scale, self.margin = scale, margin

    def cosine(self, embeddings: Tensor) -> Tensor:
        return F.normalize(embeddings, dim=-1) @ F.normalize(self.weight, dim=-1).t()

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        cos = self.cosine(embeddings)
        margin = F.one_hot(labels, cos.shape[-1]).to(cos.dtype) * self.margin
        return F.cross_entropy(self.scale * (cos - margin), labels)


class DiarizationLSTM(nn.Module):
    """Unidirectional LSTM -> linear: one logit per (frame, speaker) (SD)."""

    def __init__(self, input_dim: int, hidden_dim: int, num_layers: int, num_speakers: int):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden_dim, num_layers=num_layers, batch_first=True)
        self.out = nn.Linear(hidden_dim, num_speakers)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = self.lstm(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])
        return self.out(y)


def pit_bce_loss(logits: Tensor, labels: Tensor, lengths: Tensor) -> tuple[Tensor, list[tuple[int, ...]]]:
    """Permutation-invariant BCE: per utterance, the speaker order of ``labels`` (B, T, S) that gives the lowest
    mean BCE over its valid frames; returns the mean of those minima and the chosen permutations."""
    mask = valid_mask(lengths, logits.shape[1]).to(logits.dtype)[..., None]
    frames = lengths.clamp(min=1).to(logits.dtype) * logits.shape[-1]
    per_perm = []
    perms = list(itertools.permutations(range(labels.shape[-1])))
    for perm in perms:
        bce = F.binary_cross_entropy_with_logits(logits, labels[..., list(perm)], reduction="none")
        per_perm.append((bce * mask).sum(dim=(1, 2)) / frames)
    losses = torch.stack(per_perm, dim=1)  # (B, P)
    best = losses.argmin(dim=1)
    return losses.gather(1, best[:, None]).mean(), [perms[int(i)] for i in best]
