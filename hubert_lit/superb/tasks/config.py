"""Fixed per-task settings of the SUPERB evaluation (s3prl's designs, scaled down to the mini task sets).

As in SUPERB, every value is fixed per task and only the learning rate is chosen, on dev, from ``lrs``.
``configs/superb/<task>.yaml`` holds the same values (written by :func:`write_task_yamls`); the evaluation tool
reads a folder of such files with ``--configs``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hubert_lit.constants import SUPERB_TASKS as TASK_NAMES  # the paper's Table 2 order


@dataclass
class TaskConfig:
    """Settings of one task. Fields a head does not use are ignored by it.

    Training: ``max_steps`` optimizer steps of ``batch_size`` utterances, dev evaluation every ``eval_every`` steps,
    the best dev state is kept; ``optimizer`` "adam" or "adamw"; gradient-norm clipping at ``grad_clip``.
    ``max_train_frames`` crops training utterances (random window, 50 Hz frames; 0 = no crop).
    """

    task: str
    metric: str  # dev metric that selects the checkpoint and the learning rate
    higher_is_better: bool
    lrs: list[float] = field(default_factory=list)
    max_steps: int = 1000
    eval_every: int = 100
    batch_size: int = 16
    optimizer: str = "adam"
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    normalize_layers: bool = False  # layer norm on every hidden state before the weighted sum
    max_train_frames: int = 0
    # heads
    hidden_dim: int = 256  # utterance heads: projection; RNN heads: LSTM units; x-vector: TDNN channels
    proj_dim: int = 0  # RNN-CTC heads: input projection
    num_rnn_layers: int = 1
    dropout: float = 0.0
    specaugment: bool = False  # time and feature masks on the weighted-sum features while training
    time_masks: int = 2
    time_mask_frames: int = 10
    feature_masks: int = 2
    feature_mask_ratio: float = 0.1
    # ASV
    pooled_dim: int = 0  # x-vector channels before statistics pooling
    embedding_dim: int = 0
    am_scale: float = 30.0
    am_margin: float = 0.4
    # SD
    num_speakers: int = 2
    threshold: float = 0.5
    median_filter: int = 11  # frames (odd)
    # QbE
    min_query_frames: int = 5

    def __post_init__(self) -> None:
        if self.task not in TASK_NAMES:
            raise ValueError(f"unknown task {self.task!r}; tasks: {', '.join(TASK_NAMES)}")
        if self.task != "qbe":
            if not self.lrs or min(self.lrs) <= 0:
                raise ValueError(f"{self.task}: lrs must be a non-empty list of positive learning rates")
            if self.eval_every < 1 or self.max_steps < self.eval_every or self.max_steps % self.eval_every:
                raise ValueError(
                    f"{self.task}: max_steps ({self.max_steps}) must be a positive multiple of "
                    f"eval_every ({self.eval_every})"
                )
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"{self.task}: optimizer must be 'adam' or 'adamw', got {self.optimizer!r}")
        if self.median_filter < 1 or self.median_filter % 2 == 0:
            raise ValueError(
                f"{self.task}: median_filter must be an odd number >= 1, got {self.median_filter}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "task config") -> TaskConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown keys {unknown}; known keys: {sorted(known)}")
        try:
            return cls(**dict(data))
        except TypeError as err:
            raise ValueError(f"{source}: {err}") from err

    def replace(self, **changes: Any) -> TaskConfig:
        return TaskConfig.from_dict({**self.to_dict(), **changes})


_UTTERANCE = dict(hidden_dim=256, batch_size=32, max_steps=1500, eval_every=150)
# s3prl: projection 1024 -> 2 x BiLSTM 1024; scaled to the mini task sets (and to CPU runs)
_RNN_CTC = dict(
    proj_dim=128,
    hidden_dim=128,
    num_rnn_layers=2,
    dropout=0.2,
    specaugment=True,
    batch_size=16,
    max_steps=3000,
    eval_every=300,
)

DEFAULT_CONFIGS: dict[str, TaskConfig] = {
    "asr": TaskConfig("asr", "wer", False, lrs=[3e-4, 1e-3, 3e-3], **_RNN_CTC),
    "ks": TaskConfig("ks", "accuracy", True, lrs=[1e-4, 1e-3, 1e-2], **_UTTERANCE),
    "sf": TaskConfig("sf", "slot_type_f1", True, lrs=[3e-4, 1e-3, 3e-3], **_RNN_CTC),
    "sid": TaskConfig("sid", "accuracy", True, lrs=[1e-3, 1e-2, 1e-1], max_train_frames=400, **_UTTERANCE),
    "pr": TaskConfig(
        "pr", "per", False, lrs=[1e-3, 1e-2, 1e-1], batch_size=16, max_steps=2000, eval_every=200
    ),
    "qbe": TaskConfig("qbe", "mtwv", True),  # no training: only min_query_frames is used
    "ic": TaskConfig("ic", "accuracy", True, lrs=[1e-4, 1e-3, 1e-2], **_UTTERANCE),
    "asv": TaskConfig(
        "asv",
        "eer",
        False,
        lrs=[1e-4, 1e-3],
        optimizer="adamw",
        grad_clip=1000.0,
        hidden_dim=128,
        pooled_dim=384,
        embedding_dim=128,
        batch_size=16,
        max_steps=2000,
        eval_every=200,
        max_train_frames=400,
    ),
    "sd": TaskConfig(
        "sd",
        "der",
        False,
        lrs=[1e-4, 1e-3, 1e-2],
        hidden_dim=128,
        batch_size=8,
        max_steps=2000,
        eval_every=200,
    ),
    "prosody": TaskConfig("prosody", "accuracy", True, lrs=[1e-4, 1e-3, 1e-2], **_UTTERANCE),
}


def load_task_config(task: str, folder: str | Path | None = None) -> TaskConfig:
    """The task's config: ``<folder>/<task>.yaml`` when a folder is given, else the built-in default."""
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; tasks: {', '.join(TASK_NAMES)}")
    if folder is None:
        return DEFAULT_CONFIGS[task].replace()
    import yaml

    path = Path(folder) / f"{task}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"task config not found: {path}")
    data = yaml.safe_load(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config keys")
    config = TaskConfig.from_dict(data, source=str(path))
    if config.task != task:
        raise ValueError(f"{path}: 'task' is {config.task!r}, expected {task!r}")
    return config


_TRAINING = (
    "lrs",
    "max_steps",
    "eval_every",
    "batch_size",
    "optimizer",
    "weight_decay",
    "grad_clip",
    "normalize_layers",
)
_RNN_FIELDS = (
    "proj_dim",
    "hidden_dim",
    "num_rnn_layers",
    "dropout",
    "specaugment",
    "time_masks",
    "time_mask_frames",
    "feature_masks",
    "feature_mask_ratio",
)
# the fields each task reads (the YAML files show only these; the others keep their defaults)
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "asr": (*_TRAINING, *_RNN_FIELDS),
    "sf": (*_TRAINING, *_RNN_FIELDS),
    "pr": _TRAINING,
    "ks": (*_TRAINING, "max_train_frames", "hidden_dim"),
    "ic": (*_TRAINING, "max_train_frames", "hidden_dim"),
    "sid": (*_TRAINING, "max_train_frames", "hidden_dim"),
    "prosody": (*_TRAINING, "max_train_frames", "hidden_dim"),
    "asv": (
        *_TRAINING,
        "max_train_frames",
        "hidden_dim",
        "pooled_dim",
        "embedding_dim",
        "am_scale",
        "am_margin",
    ),
    "sd": (*_TRAINING, "hidden_dim", "num_rnn_layers", "num_speakers", "threshold", "median_filter"),
    "qbe": ("min_query_frames",),
}


def write_task_yamls(folder: str | Path) -> list[Path]:
    """Write every default config to ``<folder>/<task>.yaml`` (how ``configs/superb/`` is generated), with the
    fields the task uses."""
    import yaml

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for task, config in DEFAULT_CONFIGS.items():
        data = config.to_dict()
        keys = ("task", "metric", "higher_is_better", *TASK_FIELDS[task])
        path = folder / f"{task}.yaml"
        header = (
            f"# SUPERB task '{task}': fixed settings; only the learning rate is chosen (on dev) from lrs.\n"
        )
        if task == "qbe":
            header = "# SUPERB task 'qbe': no training; the layer is chosen on dev (MTWV, then MAP).\n"
        path.write_text(header + yaml.safe_dump({k: data[k] for k in keys}, sort_keys=False))
        paths.append(path)
    return paths
