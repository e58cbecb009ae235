"""ASV: speaker verification with an x-vector trained by additive-margin softmax on the train speakers.

Dev and test speakers are unseen in training; each trial ``(label, enrollment id, test id)`` is scored by the
cosine similarity of the two utterance embeddings, and the metric is the EER over the split's trials (s3prl
``sv_voxceleb1`` with ``amsoftmax.yaml``; s3prl has no dev set and evaluates every saved checkpoint on test, we
select checkpoint and learning rate on our dev trials instead).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hubert_lit.superb.heads import AMSoftmax, XVector
from hubert_lit.superb.metrics import equal_error_rate
from hubert_lit.superb.tasks.base import DownstreamTask, Item, classes_of
from hubert_lit.superb.tasks.config import TaskConfig

Trial = tuple[int, str, str]


class VerificationHead(nn.Module):
    """x-vector embedder + AM-softmax classifier over the train speakers."""

    def __init__(self, dim: int, config: TaskConfig, num_speakers: int):
        super().__init__()
        self.xvector = XVector(dim, config.hidden_dim, config.pooled_dim, config.embedding_dim)
        self.amsoftmax = AMSoftmax(config.embedding_dim, num_speakers, config.am_scale, config.am_margin)

    def forward(self, x: Tensor, lengths: Tensor) -> Tensor:
        return self.xvector(x, lengths)


class SpeakerVerification(DownstreamTask):
    def __init__(
        self,
        config: TaskConfig,
        splits: dict[str, list[Item]],
        trials: dict[str, list[Trial]],
        meta: dict[str, Any] | None = None,
    ):
        super().__init__(config, splits, meta)
        self.speakers = classes_of(config.task, splits, "label", check=(), declared=self.meta.get("classes"))
        self.index = {s: i for i, s in enumerate(self.speakers)}
        if len(self.speakers) < 2:
            raise ValueError(f"{config.task}: training needs at least two speakers, got {self.speakers}")
        self.trials = trials
        for split in ("dev", "test"):
            if not trials.get(split):
                raise ValueError(f"{config.task}: no {split} trials")
            ids = {item["id"] for item in splits[split]}
            unknown = sorted({u for _, a, b in trials[split] for u in (a, b)} - ids)
            if unknown:
                raise ValueError(
                    f"{config.task}/{split}_trials: {len(unknown)} utterance ids are not in "
                    f"{split}.jsonl, e.g. {unknown[:3]}"
                )
            labels = {label for label, _, _ in trials[split]}
            if labels != {0, 1}:
                raise ValueError(
                    f"{config.task}/{split}_trials: needs target (1) and non-target (0) trials, "
                    f"found labels {sorted(labels)}"
                )

    def build_head(self, dim: int) -> nn.Module:
        return VerificationHead(dim, self.config, len(self.speakers))

    def target(self, item: Item, split: str, num_frames: int) -> int:
        return self.index[item["label"]] if split == "train" else -1

    def collate_targets(self, targets: list[Any], num_frames: int) -> Tensor:
        return torch.tensor(targets, dtype=torch.long)

    def loss(self, head: nn.Module, x: Tensor, lengths: Tensor, targets: Tensor) -> Tensor:
        return head.amsoftmax(head(x, lengths), targets)

    def predict(self, head: nn.Module, x: Tensor, lengths: Tensor) -> list[Tensor]:
        return list(F.normalize(head(x, lengths).float(), dim=-1).cpu())

    def score(self, split: str, predictions: list[Any]) -> dict[str, float]:
        embedding = {item["id"]: e for item, e in zip(self.splits[split], predictions)}
        trials = self.trials[split]
        scores = [float(embedding[a] @ embedding[b]) for _, a, b in trials]
        return {"eer": equal_error_rate(scores, [label for label, _, _ in trials])}
