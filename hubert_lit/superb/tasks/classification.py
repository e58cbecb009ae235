"""Utterance classification tasks: KS (keywords), SID (speakers), prosody presets (SUPERB's ER slot) and IC.

Head: ``Linear(D, hidden)`` -> mean pooling -> linear, cross-entropy. IC predicts three label groups (action,
object, location) with one CE each (summed); an utterance counts as correct only if all three are right.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubert_lit.superb.heads import UtteranceClassifier
from hubert_lit.superb.metrics import accuracy
from hubert_lit.superb.tasks.base import DownstreamTask, Item, classes_of
from hubert_lit.superb.tasks.config import TaskConfig

LABEL_FIELDS = {
    "ks": ("label",),
    "sid": ("label",),
    "prosody": ("label",),
    "ic": ("action", "object", "location"),
}


class UtteranceClassification(DownstreamTask):
    """Classify each utterance into one label per field of ``LABEL_FIELDS[task]``."""

    def __init__(self, config: TaskConfig, splits: dict[str, list[Item]], meta: dict[str, Any] | None = None):
        super().__init__(config, splits, meta)
        if config.task not in LABEL_FIELDS:
            raise ValueError(f"{config.task} is not an utterance classification task")
        self.fields = LABEL_FIELDS[config.task]
        declared = self.meta.get("classes")
        if len(self.fields) == 1:
            declared = {self.fields[0]: declared} if declared is not None else {}
        self.classes = {
            key: classes_of(config.task, splits, key, declared=(declared or {}).get(key))
            for key in self.fields
        }
        self.index = {key: {c: i for i, c in enumerate(cs)} for key, cs in self.classes.items()}

    def build_head(self, dim: int) -> nn.Module:
        return UtteranceClassifier(dim, self.config.hidden_dim, [len(self.classes[k]) for k in self.fields])

    def target(self, item: Item, split: str, num_frames: int) -> tuple[int, ...]:
        return tuple(self.index[key][item[key]] for key in self.fields)

    def collate_targets(self, targets: list[Any], num_frames: int) -> Tensor:
        return torch.tensor(targets, dtype=torch.long)

    def loss(self, head: nn.Module, x: Tensor, lengths: Tensor, targets: Tensor) -> Tensor:
        logits = head(x, lengths)
        return sum(F.cross_entropy(group, targets[:, g]) for g, group in enumerate(logits))

    def predict(self, head: nn.Module, x: Tensor, lengths: Tensor) -> list[tuple[Any, ...]]:
        groups = [g.argmax(-1).tolist() for g in head(x, lengths)]
        return [
            tuple(self.classes[key][groups[g][b]] for g, key in enumerate(self.fields))
            for b in range(x.shape[0])
        ]

    def score(self, split: str, predictions: list[Any]) -> dict[str, float]:
        refs = [tuple(item[key] for key in self.fields) for item in self.splits[split]]
        metrics = {"accuracy": accuracy(refs, predictions)}
        if len(self.fields) > 1:
            for g, key in enumerate(self.fields):
                metrics[f"{key}_accuracy"] = accuracy([r[g] for r in refs], [p[g] for p in predictions])
        return metrics
