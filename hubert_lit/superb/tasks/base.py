"""What every trained SUPERB task shares: the task interface, datasets of cached hidden states, the
LightningModule (weighted layer sum + task head) and the learning-rate search.

Protocol (s3prl): the upstream is frozen and its hidden states are computed once per split
(:func:`hubert_lit.superb.featurizer.extract_hidden_states`); a learnable softmax-weighted sum of all states feeds
the task head; every setting is fixed per task except the learning rate, which is chosen on dev from the task's
grid; the dev metric also picks the checkpoint (evaluated every ``eval_every`` steps, the best state kept in
memory), and the test split is scored once, with the chosen learning rate's best state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from hubert_lit.superb.featurizer import WeightedLayerSum
from hubert_lit.superb.tasks.config import TaskConfig

Item = dict[str, Any]


class DownstreamTask:
    """A SUPERB task over cached hidden states. Subclasses define the head, targets, loss, decoding and scoring.

    ``splits`` maps "train"/"dev"/"test" to the task's items (dicts from ``<split>.jsonl``); predictions passed
    to :meth:`score` are in the order of ``splits[split]``. ``meta`` is the task's meta.json (class lists and
    vocabularies; without it they are taken from the training items).
    """

    #: targets are per frame (cannot be cropped independently of the features) or sequences (CTC)
    croppable: bool = True

    def __init__(self, config: TaskConfig, splits: dict[str, list[Item]], meta: dict[str, Any] | None = None):
        for split in ("train", "dev", "test"):
            if not splits.get(split):
                raise ValueError(f"{config.task}: the {split} split is empty or missing")
        self.config = config
        self.splits = splits
        self.meta = meta or {}

    def build_head(self, dim: int) -> nn.Module:
        raise NotImplementedError

    def target(self, item: Item, split: str, num_frames: int) -> Any:
        """The training target of ``item`` (``num_frames`` = its feature frames)."""
        raise NotImplementedError

    def collate_targets(self, targets: list[Any], num_frames: int) -> Any:
        raise NotImplementedError

    def loss(self, head: nn.Module, x: Tensor, lengths: Tensor, targets: Any) -> Tensor:
        raise NotImplementedError

    def predict(self, head: nn.Module, x: Tensor, lengths: Tensor) -> list[Any]:
        """One prediction per utterance (plain Python / CPU tensors)."""
        raise NotImplementedError

    def score(self, split: str, predictions: list[Any]) -> dict[str, float]:
        """Metrics of a split; must contain ``config.metric``."""
        raise NotImplementedError


def classes_of(
    task: str,
    splits: dict[str, list[Item]],
    key: str,
    check: Sequence[str] = ("dev", "test"),
    declared: Sequence[Any] | None = None,
) -> list:
    """The label set of field ``key``: ``declared`` (meta.json's class list, index = position) or else the sorted
    values seen in train. Error if an item of train or of the ``check`` splits lacks the field or holds a label
    outside the set."""
    for split in ("train", *check):
        missing = [item.get("id", "?") for item in splits[split] if item.get(key) is None]
        if missing:
            raise ValueError(
                f"{task}/{split}: {len(missing)} items lack the field {key!r}, e.g. {missing[0]!r}"
            )
    classes = list(declared) if declared is not None else sorted({item[key] for item in splits["train"]})
    for split in ("train", *check):
        unknown = sorted({item[key] for item in splits[split]} - set(classes))
        if unknown:
            raise ValueError(f"{task}/{split}: {key} values outside the class list: {unknown[:10]}")
    return classes


# ------------------------------------------------------------------------------------------------ data
class HiddenStateSet(Dataset):
    """Cached ``(num_states, T, D)`` hidden states of one split with their targets; ``crop_frames`` > 0 takes a
    random window of that many frames from longer utterances (training only)."""

    def __init__(self, states: list[Tensor], targets: list[Any], crop_frames: int = 0):
        if len(states) != len(targets):
            raise ValueError(f"{len(states)} hidden-state tensors but {len(targets)} targets")
        self.states, self.targets, self.crop_frames = states, targets, crop_frames

    def __len__(self) -> int:
        return len(self.states)

    def __getitem__(self, index: int) -> tuple[int, Tensor, Any]:
        states = self.states[index]
        if self.crop_frames and states.shape[1] > self.crop_frames:
            start = int(torch.randint(0, states.shape[1] - self.crop_frames + 1, ()))
            states = states[:, start : start + self.crop_frames]
        return index, states, self.targets[index]


def collate_states(task: DownstreamTask, batch: list[tuple[int, Tensor, Any]]) -> dict[str, Any]:
    """Zero-padded float32 ``states`` (B, num_states, T, D), ``lengths`` (B,), ``indices`` and the task's
    targets."""
    indices, states, targets = zip(*batch)
    lengths = torch.tensor([s.shape[1] for s in states], dtype=torch.long)
    num_states, _, dim = states[0].shape
    padded = torch.zeros(
        len(states), num_states, int(lengths.max()), dim
    )  # float32 even from a float16 cache
    for i, s in enumerate(states):
        padded[i, :, : s.shape[1]] = s
    return {
        "indices": list(indices),
        "states": padded,
        "lengths": lengths,
        "targets": task.collate_targets(list(targets), int(lengths.max())),
    }


def make_loader(task: DownstreamTask, states: list[Tensor], split: str, train: bool) -> DataLoader:
    targets = [task.target(item, split, int(s.shape[1])) for item, s in zip(task.splits[split], states)]
    crop = task.config.max_train_frames if (train and task.croppable) else 0
    dataset = HiddenStateSet(states, targets, crop)
    return DataLoader(
        dataset,
        batch_size=task.config.batch_size,
        shuffle=train,
        collate_fn=lambda b: collate_states(task, b),
        num_workers=0,
    )


def spec_augment(x: Tensor, lengths: Tensor, config: TaskConfig) -> Tensor:
    """Zero ``time_masks`` random spans of up to ``time_mask_frames`` frames (within each utterance) and
    ``feature_masks`` spans of up to ``feature_mask_ratio`` of the feature dimensions."""
    x = x.clone()
    batch, frames, dim = x.shape
    for b in range(batch):
        n = int(lengths[b])
        for _ in range(config.time_masks):
            width = int(torch.randint(0, min(config.time_mask_frames, n) + 1, ()))
            start = int(torch.randint(0, n - width + 1, ()))
            x[b, start : start + width] = 0
        max_width = int(dim * config.feature_mask_ratio)
        for _ in range(config.feature_masks):
            width = int(torch.randint(0, max_width + 1, ()))
            start = int(torch.randint(0, dim - width + 1, ()))
            x[b, :, start : start + width] = 0
    return x


# ------------------------------------------------------------------------------------------------ module
class DownstreamModule(pl.LightningModule):
    """Weighted layer sum + task head, trained on cached hidden states.

    Every validation scores the whole dev split with ``task.score``; the state with the best dev metric is kept
    in memory (``best_state``). ``test`` scores the test split into ``test_metrics``.
    """

    def __init__(self, task: DownstreamTask, num_states: int, dim: int, lr: float):
        super().__init__()
        self.task = task
        self.lr = lr
        self.featurizer = WeightedLayerSum(num_states, normalize=task.config.normalize_layers)
        self.head = task.build_head(dim)
        self.best_score: float | None = None
        self.best_step = -1
        self.best_metrics: dict[str, float] = {}
        self.best_state: dict[str, Tensor] | None = None
        self.dev_history: list[tuple[int, float]] = []
        self.test_metrics: dict[str, float] = {}
        self._predictions: dict[int, Any] = {}

    def features(self, batch: dict[str, Any]) -> Tensor:
        x = self.featurizer(batch["states"])
        if self.training and self.task.config.specaugment:
            x = spec_augment(x, batch["lengths"], self.task.config)
        return x

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.task.loss(self.head, self.features(batch), batch["lengths"], batch["targets"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["indices"]))
        return loss

    def _collect(self, batch: dict[str, Any]) -> None:
        preds = self.task.predict(self.head, self.features(batch), batch["lengths"])
        for index, pred in zip(batch["indices"], preds):
            self._predictions[index] = pred

    def _ordered_predictions(self, split: str) -> list[Any]:
        expected = len(self.task.splits[split])
        if len(self._predictions) != expected:
            raise RuntimeError(
                f"{self.task.config.task}/{split}: {len(self._predictions)} predictions for {expected} items"
            )
        return [self._predictions[i] for i in range(expected)]

    def on_validation_epoch_start(self) -> None:
        self._predictions = {}

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_end(self) -> None:
        metrics = self.task.score("dev", self._ordered_predictions("dev"))
        score = metrics[self.task.config.metric]
        self.dev_history.append((self.global_step, score))
        for name, value in metrics.items():
            self.log(f"dev/{name}", value)
        sign = 1 if self.task.config.higher_is_better else -1
        if self.best_score is None or sign * score > sign * self.best_score:
            self.best_score, self.best_step, self.best_metrics = score, self.global_step, metrics
            self.best_state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}

    def on_test_epoch_start(self) -> None:
        self._predictions = {}

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._collect(batch)

    def on_test_epoch_end(self) -> None:
        self.test_metrics = self.task.score("test", self._ordered_predictions("test"))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        cfg = self.task.config
        optimizer = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return optimizer(self.parameters(), lr=self.lr, weight_decay=cfg.weight_decay)


# ------------------------------------------------------------------------------------------------ training
@dataclass
class TaskResult:
    """Outcome of one task: chosen learning rate, its best dev metrics, the test metrics and the search."""

    task: str
    metric: str
    lr: float | None
    dev: dict[str, float]
    test: dict[str, float]
    best_step: int | None
    search: list[dict[str, Any]] = field(default_factory=list)
    layer_weights: list[float] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def _trainer(
    config: TaskConfig, max_steps: int, eval_every: int, progress: bool, accelerator: str
) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        val_check_interval=eval_every,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        gradient_clip_val=config.grad_clip,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=progress,
        accelerator=accelerator,
        devices=1,
        deterministic=False,
    )


def schedule(config: TaskConfig, max_steps: int | None) -> tuple[int, int]:
    """(max_steps, eval_every): the config's, or ``max_steps`` with as many dev evaluations as the config has
    (at least one step between them)."""
    if max_steps is None:
        return config.max_steps, config.eval_every
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    evaluations = config.max_steps // config.eval_every
    eval_every = max(1, math.ceil(max_steps / evaluations))
    return eval_every * math.ceil(max_steps / eval_every), eval_every


def train_task(
    task: DownstreamTask,
    states: dict[str, list[Tensor]],
    lrs: Sequence[float] | None = None,
    max_steps: int | None = None,
    seed: int = 0,
    accelerator: str = "auto",
    progress: bool = False,
) -> TaskResult:
    """Train one head per learning rate, pick the learning rate by its best dev metric, score test with it."""
    cfg = task.config
    lrs = list(lrs if lrs else cfg.lrs)
    steps, eval_every = schedule(cfg, max_steps)
    num_states, _, dim = states["train"][0].shape
    start = time.perf_counter()
    train_loader = make_loader(task, states["train"], "train", train=True)
    dev_loader = make_loader(task, states["dev"], "dev", train=False)
    test_loader = make_loader(task, states["test"], "test", train=False)
    sign = 1 if cfg.higher_is_better else -1
    best: DownstreamModule | None = None
    search = []
    for lr in lrs:
        torch.manual_seed(seed)
        module = DownstreamModule(task, num_states, dim, lr)
        with _quiet_lightning():
            _trainer(cfg, steps, eval_every, progress, accelerator).fit(module, train_loader, dev_loader)
        search.append(
            {"lr": lr, "dev": module.best_score, "best_step": module.best_step, "history": module.dev_history}
        )
        if best is None or sign * module.best_score > sign * best.best_score:
            best = module
    assert best is not None and best.best_state is not None
    best.load_state_dict(best.best_state)
    with _quiet_lightning():
        _trainer(cfg, steps, eval_every, progress, accelerator).test(best, test_loader, verbose=False)
    return TaskResult(
        task=cfg.task,
        metric=cfg.metric,
        lr=best.lr,
        dev=best.best_metrics,
        test=best.test_metrics,
        best_step=best.best_step,
        search=search,
        layer_weights=best.featurizer.layer_weights(),
        seconds=time.perf_counter() - start,
    )


@contextlib.contextmanager
def _quiet_lightning() -> Iterator[None]:
    """One task trains several Trainers: keep Lightning's per-Trainer banners (accelerator lines) and the
    warnings that do not apply here (in-memory features need no loader workers) out of the output."""
    loggers = [
        logging.getLogger(n)
        for n in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda")
    ]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)
