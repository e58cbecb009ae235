"""SUPERB-style evaluation of a model on the Mini-SUPERB task sets (the ``evaluate`` tool's library; its command
line is :mod:`hubert_lit.superb.cli`).

For each task: the frozen model's hidden states of every split are computed once (reused by every learning
rate), then a task head is trained on a softmax-weighted sum of all layers for each learning rate of the task's
grid; dev picks the learning rate and the checkpoint, and the test split is scored once with them. QbE trains
nothing: subsequence DTW on each layer, the best layer chosen on dev. Settings: ``configs/superb/<task>.yaml``.

:func:`evaluate_tasks` returns the per-task results; :func:`write_report` writes ``<out>/<run>.json`` (everything:
per-task dev/test metrics, learning-rate search, layer weights, wall times) and ``<out>/<run>.csv`` (the row, like
the paper's Table 2).

The tasks are small synthetic stand-ins for SUPERB's (eSpeak NG speech; the ER slot is prosody-preset
classification, not emotion): the numbers check a model and compare models with each other, they are not
comparable with the paper's.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from hubert_lit.constants import SUPERB_TASKS as TASK_NAMES
from hubert_lit.models import HubertModel
from hubert_lit.superb.tasks.config import TaskConfig

DEFAULT_OUT = Path("experiments/results/superb")


# task -> (Table 2 column, metric key, factor to the paper's unit, header)
COLUMNS: dict[str, tuple[str, str, float, str]] = {
    "asr": ("asr_wer", "wer", 100.0, "ASR WER%↓"),
    "ks": ("ks_acc", "accuracy", 100.0, "KS Acc%↑"),
    "sf": ("sf_f1", "slot_type_f1", 1.0, "SF F1↑"),
    "sid": ("sid_acc", "accuracy", 100.0, "SID Acc%↑"),
    "pr": ("pr_per", "per", 100.0, "PR PER%↓"),
    "qbe": ("qbe_mtwv", "mtwv", 100.0, "QbE MTWV×100↑"),
    "ic": ("ic_acc", "accuracy", 100.0, "IC Acc%↑"),
    "asv": ("asv_eer", "eer", 100.0, "ASV EER%↓"),
    "sd": ("sd_der", "der", 100.0, "SD DER%↓"),
    "prosody": ("er_acc", "accuracy", 100.0, "ER slot: prosody Acc%↑"),
}


class StateCache:
    """Hidden states by audio path, kept for the current task only (ASR and PR share their audio)."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: str,
        batch_seconds: float,
        progress: bool,
        dtype: torch.dtype = torch.float32,
    ):
        self.model, self.device, self.batch_seconds, self.progress = model, device, batch_seconds, progress
        self.dtype = dtype
        self.states: dict[str, torch.Tensor] = {}
        self.used: set[str] = set()
        self.seconds = 0.0

    def get(self, data: Any, items: list[dict[str, Any]], label: str) -> list[torch.Tensor]:
        from hubert_lit.superb.featurizer import extract_hidden_states

        missing = [item for item in items if item["audio"] not in self.states]
        if missing:
            start = time.perf_counter()
            waves = [torch.from_numpy(data.load_audio(item)) for item in missing]
            states = extract_hidden_states(
                self.model, waves, self.batch_seconds, self.device, progress=label if self.progress else None
            )
            self.states.update({item["audio"]: s.to(self.dtype) for item, s in zip(missing, states)})
            self.seconds += time.perf_counter() - start
        self.used.update(item["audio"] for item in items)
        return [self.states[item["audio"]] for item in items]

    def next_task(self) -> None:
        """Forget the states the finished task did not use."""
        self.states = {k: v for k, v in self.states.items() if k in self.used}
        self.used = set()


def randomly_initialised(model: HubertModel, seed: int) -> HubertModel:
    """A fresh model of ``model``'s architecture (its config), initialised under ``seed``: the random baseline."""
    if model.quant_spec is not None:
        raise ValueError("--random-init needs a full-precision HuBERT checkpoint")
    torch.manual_seed(seed)
    return type(model)(model.config)


def occurrence_docs(occurrences: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """query id -> ids of the documents that contain it."""
    return {q: sorted({span["doc"] for span in spans}) for q, spans in occurrences.items()}


def run_task(
    config: TaskConfig,
    data: Any,
    cache: StateCache,
    lrs: list[float] | None,
    accelerator: str,
    max_steps: int | None = None,
    seed: int = 0,
    progress: bool = True,
) -> Any:
    """Evaluate one task: cached hidden states, then the learning-rate search (QbE: the layer search)."""
    from hubert_lit.superb.tasks import build_task, evaluate_qbe, train_task

    task = config.task
    if task == "qbe":
        docs = data.splits["docs"]
        doc_states = cache.get(data, docs, "qbe docs")
        query_states = {s: cache.get(data, data.splits[s], f"qbe {s} queries") for s in ("dev", "test")}
        query_ids = {s: [q["id"] for q in data.splits[s]] for s in ("dev", "test")}
        occurrences = {s: occurrence_docs(data.occurrences[s]) for s in ("dev", "test")}
        return evaluate_qbe(
            config,
            doc_states,
            [d["id"] for d in docs],
            query_states,
            query_ids,
            occurrences,
            progress=progress,
        )
    states = {
        split: cache.get(data, data.splits[split], f"{task} {split}") for split in ("train", "dev", "test")
    }
    head_task = build_task(config, data.splits, data.meta, data.trials or None)
    return train_task(
        head_task,
        states,
        lrs=lrs,
        max_steps=max_steps,
        seed=seed,
        accelerator=accelerator,
        progress=False,
    )


def table_row(results: dict[str, Any]) -> dict[str, float | None]:
    """Table 2 columns (paper units) of the evaluated tasks; None for tasks not run."""
    row: dict[str, float | None] = {}
    for task, (column, metric, factor, _) in COLUMNS.items():
        result = results.get(task)
        row[column] = None if result is None else result["test"][metric] * factor
    return row


def format_row(name: str, row: dict[str, float | None]) -> str:
    headers = ["run"] + [COLUMNS[t][3] for t in COLUMNS]
    values = [name] + [
        "-"
        if row[COLUMNS[t][0]] is None
        else (f"{row[COLUMNS[t][0]]:.3f}" if COLUMNS[t][2] == 1.0 else f"{row[COLUMNS[t][0]]:.2f}")
        for t in COLUMNS
    ]
    widths = [max(len(h), len(v)) for h, v in zip(headers, values)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(headers), "|" + "|".join("-" * (w + 2) for w in widths) + "|", line(values)])


PROFILE_SECONDS = 10.0  # utterance length of the storage/FLOP/BOP profile (the profile tool's default)


def model_summary(model: HubertModel) -> dict[str, Any]:
    """Parameters, config and, through :func:`hubert_lit.profile.profile_model`, storage/FLOP/BOP of a
    ``PROFILE_SECONDS`` utterance (``profile`` is None when the model cannot be profiled)."""
    summary: dict[str, Any] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "binarized": model.quant_spec is not None,
        "name": model.config.name,
        "config": model.config.to_dict(),
    }
    try:
        from hubert_lit.profile import profile_model

        summary["profile"] = profile_model(model, seconds=PROFILE_SECONDS, latency_runs=0).as_dict()
        summary["profile_seconds"] = PROFILE_SECONDS
    except Exception as err:  # profiling is extra information: report why it is missing, never fail the run
        summary["profile"] = None
        summary["profile_error"] = f"{type(err).__name__}: {err}"
    return summary


def evaluate_tasks(
    model: HubertModel,
    datasets: dict[str, Any],
    configs: dict[str, TaskConfig],
    *,
    lrs: dict[str, list[float] | None],
    device: str = "cpu",
    max_steps: int | None = None,
    seed: int = 0,
    batch_seconds: float = 60.0,
    cache_dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Evaluate the frozen ``model`` on each task of ``datasets`` (loaded with
    :func:`hubert_lit.superb.data.load_task`) with its ``configs`` entry; ``lrs[task]`` replaces the config's
    learning-rate grid when not None. Returns task -> result dict (dev/test metrics, chosen lr, timings)."""
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    accelerator = "gpu" if device == "cuda" else "cpu"
    cache = StateCache(model, device, batch_seconds, progress, cache_dtype)
    # ASR then PR: they share their audio, so PR reuses ASR's hidden states
    order = sorted(datasets, key=lambda t: (t != "asr", t != "pr", TASK_NAMES.index(t)))
    results: dict[str, dict[str, Any]] = {}
    bar = tqdm(order, desc="tasks", disable=not progress)
    for task in bar:
        bar.set_postfix_str(task)
        start = time.perf_counter()
        extract_before = cache.seconds
        result = asdict(
            run_task(
                configs[task], datasets[task], cache, lrs.get(task), accelerator, max_steps, seed, progress
            )
        )
        result["extract_seconds"] = cache.seconds - extract_before
        result["seconds"] = time.perf_counter() - start
        results[task] = result
        cache.next_task()
        column, metric, factor, _ = COLUMNS[task]
        tqdm.write(
            f"{task}: test {metric} {result['test'][metric] * factor:.3f} (dev {result['dev'][metric]:.4f}, "
            f"lr {result['lr']}, {result['seconds']:.0f} s)",
            file=sys.stderr,
        )
    return results


def write_report(
    out: Path,
    run: str,
    model: HubertModel,
    results: dict[str, dict[str, Any]],
    datasets: dict[str, Any],
    meta: dict[str, Any],
) -> tuple[Path, Path, dict[str, float | None]]:
    """Write ``<out>/<run>.json`` (``meta`` + the model summary + every result) and ``<out>/<run>.csv`` (the
    Table 2 row); returns both paths and the row."""
    row = table_row(results)
    out.mkdir(parents=True, exist_ok=True)
    summary = model_summary(model)
    if summary["profile"] is None:
        print(f"warning: no storage/BOP profile in the report ({summary['profile_error']})", file=sys.stderr)
    report = {
        "run": run,
        **meta,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data_scale": {task: data.meta.get("scale") for task, data in datasets.items()},
        "model": summary,
        "row": row,
        "units": {COLUMNS[t][0]: COLUMNS[t][3] for t in COLUMNS},
        "tasks": results,
        "note": "Mini-SUPERB: synthetic eSpeak NG task sets; the ER slot is prosody-preset classification. "
        "Not comparable with the paper's SUPERB numbers.",
    }
    json_path, csv_path = out / f"{run}.json", out / f"{run}.csv"
    json_path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "checkpoint", *row])
        writer.writerow(
            [run, str(meta.get("checkpoint", "")), *("" if v is None else f"{v:.4f}" for v in row.values())]
        )
    return json_path, csv_path, row
