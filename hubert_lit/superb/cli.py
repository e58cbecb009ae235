"""``python -m hubert_lit evaluate``: SUPERB-style evaluation of a checkpoint on the Mini-SUPERB task sets.

For each task: the frozen model's hidden states of every split are computed once (reused by every learning
rate), then a task head is trained on a softmax-weighted sum of all layers for each learning rate of the task's
grid; dev picks the learning rate and the checkpoint, and the test split is scored once with them. QbE trains
nothing: subsequence DTW on each layer, the best layer chosen on dev. Settings: ``configs/superb/<task>.yaml``.

Prints a row like the paper's Table 2 and writes ``<out>/<run>.json`` (everything: per-task dev/test metrics,
learning-rate search, layer weights, wall times) and ``<out>/<run>.csv`` (the row). The library behind it is
:mod:`hubert_lit.superb.evaluate`.

The tasks are small synthetic stand-ins for SUPERB's (eSpeak NG speech; the ER slot is prosody-preset
classification, not emotion): the numbers check a model and compare models with each other, they are not
comparable with the paper's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from hubert_lit.constants import SUPERB_TASKS as TASK_NAMES
from hubert_lit.superb.evaluate import (
    DEFAULT_OUT,
    evaluate_tasks,
    format_row,
    randomly_initialised,
    write_report,
)
from hubert_lit.superb.tasks.config import load_task_config


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
    """``auto`` -> cuda if available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return name


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
    results = evaluate_tasks(
        model,
        datasets,
        configs,
        lrs={task: task_lrs.get(task, shared_lrs) for task in args.tasks},
        device=device,
        max_steps=args.max_steps,
        seed=args.seed,
        batch_seconds=args.batch_seconds,
        cache_dtype=getattr(torch, args.cache_dtype),
        progress=not args.no_progress,
    )
    meta = {
        "checkpoint": str(args.checkpoint),
        "random_init": args.random_init,
        "data": str(args.data),
        "device": device,
        "max_steps": args.max_steps,
    }
    json_path, csv_path, row = write_report(args.out, run, model, results, datasets, meta)
    print(format_row(run, row))
    print(f"\nwrote {json_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
