"""SD: two-speaker diarization with a unidirectional LSTM and permutation-invariant BCE (s3prl ``diarization``).

Frame labels are built at the upstream frame rate (s3prl's ``frame_shift: null``): frame ``t`` covers samples
``[320 t, 320 (t + 1))`` and a speaker is active in it when its centre ``320 t + 160`` lies inside one of the
speaker's reference segments. Speakers of a recording are given label columns in sorted order; PIT makes the
order irrelevant. For scoring, per-speaker probabilities are thresholded (``threshold``), median filtered
(``median_filter`` frames), turned back into segments on the same frame grid and compared with the reference
segments (exact sample times) by DER with collar 0, overlap included.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from hubert_lit.superb.heads import DiarizationLSTM, pit_bce_loss
from hubert_lit.superb.metrics import diarization_error
from hubert_lit.superb.tasks.base import DownstreamTask, Item
from hubert_lit.superb.tasks.config import TaskConfig

FRAME_SHIFT = 320  # samples per upstream frame (50 Hz)


def frame_labels(segments: list[list[Any]], speakers: list[str], num_frames: int) -> Tensor:
    """(num_frames, len(speakers)) 0/1 activity on the upstream frame grid (see the module docstring)."""
    labels = torch.zeros(num_frames, len(speakers))
    centres = torch.arange(num_frames) * FRAME_SHIFT + FRAME_SHIFT // 2
    column = {s: i for i, s in enumerate(speakers)}
    for speaker, start, end in segments:
        labels[(centres >= start) & (centres < end), column[speaker]] = 1.0
    return labels


def median_filter(active: Tensor, width: int) -> Tensor:
    """Median over a centred window of ``width`` (odd) frames along dim 0 of a (T, S) tensor, zero-padded at
    the edges (``scipy.signal.medfilt`` semantics)."""
    if width <= 1:
        return active
    half = width // 2
    padded = torch.nn.functional.pad(active.T[None].float(), (half, half))[0]  # (S, T + 2 half)
    return padded.unfold(-1, width, 1).median(dim=-1).values.T


def activity_segments(active: Tensor) -> list[tuple[str, float, float]]:
    """Segments ``(str(column), start, end)`` in samples of each column's runs of 1s."""
    segments = []
    for column in range(active.shape[1]):
        values = active[:, column].tolist()
        start = None
        for t, on in enumerate([*values, 0]):
            if on and start is None:
                start = t
            elif not on and start is not None:
                segments.append((str(column), float(start * FRAME_SHIFT), float(t * FRAME_SHIFT)))
                start = None
    return segments


class Diarization(DownstreamTask):
    croppable = False

    def __init__(self, config: TaskConfig, splits: dict[str, list[Item]], meta: dict[str, Any] | None = None):
        super().__init__(config, splits, meta)
        for split, items in splits.items():
            for item in items:
                segments = item.get("segments")
                if not isinstance(segments, list) or not segments:
                    raise ValueError(f"{config.task}/{split}: item {item.get('id')!r} has no 'segments' list")
                for seg in segments:
                    if len(seg) != 3 or not 0 <= seg[1] < seg[2]:
                        raise ValueError(
                            f"{config.task}/{split}: item {item['id']!r} has a bad segment {seg!r} "
                            "(expected [speaker, start, end] in samples, start < end)"
                        )
                speakers = {s for s, _, _ in segments}
                if len(speakers) > config.num_speakers:
                    raise ValueError(
                        f"{config.task}/{split}: item {item['id']!r} has {len(speakers)} speakers, "
                        f"the head has {config.num_speakers}"
                    )

    def build_head(self, dim: int) -> nn.Module:
        cfg = self.config
        return DiarizationLSTM(dim, cfg.hidden_dim, cfg.num_rnn_layers, cfg.num_speakers)

    def target(self, item: Item, split: str, num_frames: int) -> Tensor:
        speakers = sorted({s for s, _, _ in item["segments"]})
        speakers += [f"<none{i}>" for i in range(self.config.num_speakers - len(speakers))]
        return frame_labels(item["segments"], speakers, num_frames)

    def collate_targets(self, targets: list[Any], num_frames: int) -> Tensor:
        out = torch.zeros(len(targets), num_frames, self.config.num_speakers)
        for i, t in enumerate(targets):
            out[i, : t.shape[0]] = t
        return out

    def loss(self, head: nn.Module, x: Tensor, lengths: Tensor, targets: Tensor) -> Tensor:
        return pit_bce_loss(head(x, lengths), targets, lengths)[0]

    def predict(self, head: nn.Module, x: Tensor, lengths: Tensor) -> list[Tensor]:
        probs = torch.sigmoid(head(x, lengths).float()).cpu()
        return [p[: int(n)] for p, n in zip(probs, lengths)]

    def score(self, split: str, predictions: list[Any]) -> dict[str, float]:
        totals = {"total": 0.0, "missed": 0.0, "false_alarm": 0.0, "confusion": 0.0}
        for item, probs in zip(self.splits[split], predictions):
            active = median_filter((probs > self.config.threshold).float(), self.config.median_filter)
            reference = [(str(s), float(a), float(b)) for s, a, b in item["segments"]]
            for key, value in diarization_error(reference, activity_segments(active)).items():
                totals[key] += value
        total = totals["total"]
        return {
            "der": (totals["missed"] + totals["false_alarm"] + totals["confusion"]) / total,
            "missed": totals["missed"] / total,
            "false_alarm": totals["false_alarm"] / total,
            "confusion": totals["confusion"] / total,
        }
