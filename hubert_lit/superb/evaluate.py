"""``python -m hubert_lit evaluate``: SUPERB-style evaluation of a checkpoint on the Mini-SUPERB task sets.

For each task: the frozen model's hidden states of every split are computed once (reused by every learning
rate), then a task head is trained on a softmax-weighted sum of all layers for each learning rate of the task's
grid; dev picks the learning rate and the checkpoint, and the test split is scored once with them. QbE trains
nothing: subsequence DTW on each layer, the best layer chosen on dev. Settings: ``configs/superb/<task>.yaml``.

Prints a row like the paper's Table 2 and writes ``<out>/<run>.json`` (everything: per-task dev/test metrics,
learning-rate search, layer weights, wall times) and ``<out>/<run>.csv`` (the row).

The tasks are small synthetic stand-ins for SUPERB's (eSpeak NG speech; the ER slot is prosody-preset
classification, not emotion): the numbers check a model and compare models with each other, they are not
comparable with the paper's.
"""

from __future__ import annotations

import argparse
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

from hubert_lit.superb.tasks.config import TASK_NAMES, TaskConfig, load_task_config

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


def parse_tasks(value: str) -> list[str]:
    """``all`` or a comma-separated list of task names (paper order kept)."""
    if value.strip() == "all":
        return list(TASK_NAMES)
    tasks = [t.strip() for t in value.split(",") if t.strip()]
    for task in tasks:
        if task == "er":
            raise argparse.ArgumentTypeError(
                "SUPERB's ER slot is the task 'prosody' here (prosody presets, not emotion)"
            )
        if task not in TASK_NAMES:
            raise argparse.ArgumentTypeError(
                f"unknown task {task!r}; choose from {', '.join(TASK_NAMES)} or all"
            )
    if not tasks:
        raise argparse.ArgumentTypeError("no task given")
    return sorted(set(tasks), key=TASK_NAMES.index)


def parse_lrs(values: list[str] | None) -> tuple[list[float] | None, dict[str, list[float]]]:
    """``--lrs`` entries: ``1e-3`` (every task) or ``ks=1e-3`` (one task); returns (global, per task)."""
    shared: list[float] = []
    per_task: dict[str, list[float]] = {}
    for entry in values or []:
        for part in entry.split(","):
            if not part.strip():
                continue
            task, _, number = part.rpartition("=")
            try:
                lr = float(number)
            except ValueError:
                raise ValueError(f"--lrs: {part!r} is not a learning rate (e.g. 1e-3 or ks=1e-3)") from None
            if lr <= 0:
                raise ValueError(f"--lrs: learning rates must be positive, got {part!r}")
            if task:
                if task not in TASK_NAMES or task == "qbe":
                    raise ValueError(f"--lrs: {task!r} is not a trained task")
                per_task.setdefault(task, []).append(lr)
            else:
                shared.append(lr)
    return (shared or None), per_task


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hubert_lit evaluate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="model file: a pretraining .ckpt, a save_model file or a (packed) binarized model; "
        "anything hubert_lit.load_model reads",
    )
    parser.add_argument(
        "--tasks",
        type=parse_tasks,
        default=list(TASK_NAMES),
        help=f"'all' or a comma-separated subset of {','.join(TASK_NAMES)} (default: all)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("data/superb"),
        help="Mini-SUPERB data root written by `python -m hubert_lit superb-data` (default: %(default)s)",
    )
    parser.add_argument(
        "--lrs",
        nargs="+",
        default=None,
        metavar="LR",
        help="learning rates instead of the configs' grids: '1e-3' for every task, 'ks=1e-2' for "
        "one task; several values form a grid (e.g. --lrs 1e-3 1e-2 sid=1e-1)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="training steps per learning rate instead of the configs' (the number of dev "
        "evaluations stays the same)",
    )
    parser.add_argument(
        "--run-name", default=None, help="name of the result files (default: the checkpoint's file stem)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="result folder (default: %(default)s)")
    parser.add_argument(
        "--configs",
        type=Path,
        default=None,
        help="folder of <task>.yaml task configs (default: the built-in ones, identical to configs/superb/)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of head initialisation and batching")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="where the upstream runs and the heads train (default: cuda if available)",
    )
    parser.add_argument(
        "--batch-seconds",
        type=float,
        default=60.0,
        help="audio seconds per upstream batch when computing hidden states (default: 60)",
    )
    parser.add_argument(
        "--cache-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="precision of the cached hidden states; float16 halves their memory (HuBERT Base on the small "
        "scale holds a few GB per task in float32); heads always train in float32 (default: float32)",
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="baseline: evaluate a freshly initialised model (seeded by --seed) of the checkpoint's "
        "architecture instead of its weights (full-precision checkpoints only); the run name gets '_random'",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return name


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


def randomly_initialised(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A fresh model of ``model``'s architecture (its config), initialised under ``seed``: the random baseline."""
    config = getattr(model, "config", None)
    if config is None or getattr(model, "quant_spec", None) is not None:
        raise ValueError("--random-init needs a full-precision HuBERT checkpoint (with a config)")
    torch.manual_seed(seed)
    return type(model)(config)


def occurrence_docs(occurrences: dict[str, list[dict[str, Any]]]) -> dict[str, list[str]]:
    """query id -> ids of the documents that contain it."""
    return {q: sorted({span["doc"] for span in spans}) for q, spans in occurrences.items()}


def run_task(
    config: TaskConfig,
    data: Any,
    cache: StateCache,
    args: argparse.Namespace,
    lrs: list[float] | None,
    accelerator: str,
) -> Any:
    """Evaluate one task: cached hidden states, then the learning-rate search (QbE: the layer search)."""
    from hubert_lit.superb.tasks import build_task, evaluate_qbe, train_task

    task = config.task
    progress = not args.no_progress
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
        max_steps=args.max_steps,
        seed=args.seed,
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


def model_summary(model: torch.nn.Module) -> dict[str, Any]:
    """Parameters, config and, through :func:`hubert_lit.profile.profile_model`, storage/FLOP/BOP of a
    ``PROFILE_SECONDS`` utterance (``profile`` is None when the model cannot be profiled)."""
    config = getattr(model, "config", None)
    summary: dict[str, Any] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "binarized": getattr(model, "quant_spec", None) is not None,
    }
    if config is not None and hasattr(config, "to_dict"):
        summary["name"] = getattr(config, "name", None)
        summary["config"] = config.to_dict()
    try:
        from hubert_lit.profile import profile_model

        summary["profile"] = profile_model(model, seconds=PROFILE_SECONDS, latency_runs=0).as_dict()
        summary["profile_seconds"] = PROFILE_SECONDS
    except Exception as err:  # profiling is extra information: report why it is missing, never fail the run
        summary["profile"] = None
        summary["profile_error"] = f"{type(err).__name__}: {err}"
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        shared_lrs, task_lrs = parse_lrs(args.lrs)
        device = resolve_device(args.device)
    except ValueError as err:
        parser.error(str(err))
    if args.max_steps is not None and args.max_steps < 1:
        parser.error("--max-steps must be >= 1")
    if not args.checkpoint or not Path(args.checkpoint).is_file():
        parser.error(f"--checkpoint: file not found: {args.checkpoint}")
    if not args.data.is_dir():
        parser.error(
            f"--data: folder not found: {args.data} (build it with `python -m hubert_lit superb-data`)"
        )

    import hubert_lit
    from hubert_lit.superb.data import load_task

    run = args.run_name or Path(args.checkpoint).stem + ("_random" if args.random_init else "")
    datasets, configs = {}, {}
    for task in args.tasks:  # read and check every task's files and config before any training
        try:
            configs[task] = load_task_config(task, args.configs)
        except (FileNotFoundError, ValueError) as err:
            print(f"evaluate: {task}: bad task config: {err}", file=sys.stderr)
            return 2
        try:
            datasets[task] = load_task(args.data, task)
        except (FileNotFoundError, ValueError) as err:  # TaskDataError names the file and line
            print(f"evaluate: {task}: bad task data: {err}", file=sys.stderr)
            return 2
    try:
        model = hubert_lit.load_model(args.checkpoint)
        if args.random_init:
            model = randomly_initialised(model, args.seed)
    except (FileNotFoundError, ValueError) as err:
        print(f"evaluate: cannot load --checkpoint: {err}", file=sys.stderr)
        return 2
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    accelerator = "gpu" if device == "cuda" else "cpu"
    cache = StateCache(
        model, device, args.batch_seconds, not args.no_progress, getattr(torch, args.cache_dtype)
    )
    # ASR then PR: they share their audio, so PR reuses ASR's hidden states
    order = sorted(args.tasks, key=lambda t: (t != "asr", t != "pr", TASK_NAMES.index(t)))
    results: dict[str, Any] = {}
    scales = {}
    bar = tqdm(order, desc="tasks", disable=args.no_progress)
    for task in bar:
        bar.set_postfix_str(task)
        start = time.perf_counter()
        extract_before = cache.seconds
        data = datasets[task]
        scales[task] = data.meta.get("scale")
        lrs = task_lrs.get(task, shared_lrs)
        result = asdict(run_task(configs[task], data, cache, args, lrs, accelerator))
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
    row = table_row(results)
    args.out.mkdir(parents=True, exist_ok=True)
    summary = model_summary(model)
    if summary["profile"] is None:
        print(f"warning: no storage/BOP profile in the report ({summary['profile_error']})", file=sys.stderr)
    report = {
        "run": run,
        "checkpoint": str(args.checkpoint),
        "random_init": args.random_init,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "data": str(args.data),
        "data_scale": scales,
        "device": device,
        "max_steps": args.max_steps,
        "model": summary,
        "row": row,
        "units": {COLUMNS[t][0]: COLUMNS[t][3] for t in COLUMNS},
        "tasks": results,
        "note": "Mini-SUPERB: synthetic eSpeak NG task sets; the ER slot is prosody-preset classification. "
        "Not comparable with the paper's SUPERB numbers.",
    }
    json_path, csv_path = args.out / f"{run}.json", args.out / f"{run}.csv"
    json_path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "checkpoint", *row])
        writer.writerow([run, str(args.checkpoint), *("" if v is None else f"{v:.4f}" for v in row.values())])
    print(format_row(run, row))
    print(f"\nwrote {json_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
