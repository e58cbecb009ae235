"""The SUPERB tasks over cached hidden states: configs, task definitions and the learning-rate search."""

from __future__ import annotations

from hubert_lit.superb.tasks.base import DownstreamModule, DownstreamTask, TaskResult, train_task
from hubert_lit.superb.tasks.classification import UtteranceClassification
from hubert_lit.superb.tasks.config import DEFAULT_CONFIGS, TASK_NAMES, TaskConfig, load_task_config
from hubert_lit.superb.tasks.ctc import CTCRecognition
from hubert_lit.superb.tasks.diarization import Diarization
from hubert_lit.superb.tasks.qbe import evaluate_qbe
from hubert_lit.superb.tasks.verification import SpeakerVerification, Trial

TRAINED_TASKS = tuple(t for t in TASK_NAMES if t != "qbe")


def build_task(
    config: TaskConfig,
    splits: dict[str, list[dict]],
    meta: dict | None = None,
    trials: dict[str, list[Trial]] | None = None,
) -> DownstreamTask:
    """The task object of ``config.task`` (every task but QbE, which trains nothing: see ``evaluate_qbe``).

    ``splits`` and ``meta`` as in :class:`hubert_lit.superb.data.TaskData`; ``trials`` for ASV.
    """
    task = config.task
    if task in ("ks", "sid", "ic", "prosody"):
        return UtteranceClassification(config, splits, meta)
    if task in ("asr", "pr", "sf"):
        return CTCRecognition(config, splits, meta)
    if task == "asv":
        if not trials:
            raise ValueError("asv needs the dev and test trials")
        return SpeakerVerification(config, splits, trials, meta)
    if task == "sd":
        return Diarization(config, splits, meta)
    raise ValueError(f"{task!r} has no trained head; trained tasks: {', '.join(TRAINED_TASKS)}")


__all__ = [
    "DEFAULT_CONFIGS",
    "TASK_NAMES",
    "TRAINED_TASKS",
    "DownstreamModule",
    "DownstreamTask",
    "TaskConfig",
    "TaskResult",
    "build_task",
    "evaluate_qbe",
    "load_task_config",
    "train_task",
]
