"""``python -m hubert_lit superb-data``: build the ten Mini-SUPERB task data sets with eSpeak NG.

Writes ``<out>/<task>/`` for each requested task (format: :mod:`hubert_lit.superb.data`). Everything is a
function of ``--seed`` and ``--scale``: each job runs in a fresh process, so the bytes written do not depend
on ``--workers``. Tasks are built in a staging folder ``<out>/.superb-data.partial`` and moved into place
when all are done, so an interrupted build leaves no half-written task behind.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.superb.data import TASKS
from hubert_lit.superb.data.common import (
    SPLITS,
    BuildContext,
    Record,
    TaskPlan,
    run_job,
    speaker_pool,
)
from hubert_lit.superb.data.mixtures import plan_sd
from hubert_lit.superb.data.qbe import plan_qbe
from hubert_lit.superb.data.text_tasks import plan_asr_pr, plan_ic, plan_sf
from hubert_lit.superb.data.utterance_tasks import plan_asv, plan_ks, plan_prosody, plan_sid
from hubert_lit.system import available_cpus


def _splits(train: int, dev: int, test: int) -> dict[str, int]:
    return {"train": train, "dev": dev, "test": test}


# builder name -> (tasks it writes, plan function); ASR and PR share their audio, so one builder writes both
BUILDERS: dict[str, tuple[tuple[str, ...], Callable[..., TaskPlan]]] = {
    "asr": (("asr", "pr"), plan_asr_pr),
    "ks": (("ks",), plan_ks),
    "qbe": (("qbe",), plan_qbe),
    "ic": (("ic",), plan_ic),
    "sf": (("sf",), plan_sf),
    "sid": (("sid",), plan_sid),
    "asv": (("asv",), plan_asv),
    "sd": (("sd",), plan_sd),
    "prosody": (("prosody",), plan_prosody),
}
# scale -> builder -> plan arguments
SCALES: dict[str, dict[str, dict[str, Any]]] = {
    "small": {
        "asr": {"speakers": _splits(24, 4, 4), "utterances": _splits(20, 15, 15)},
        "ks": {
            "speakers": _splits(30, 5, 5),
            "repetitions": 2,
            "unknown_per_speaker": 3,
            "silence_per_speaker": 2,
        },
        "qbe": {"num_docs": 200, "doc_speakers": 8, "terms_per_split": 25},
        "ic": {"speakers": _splits(24, 4, 4), "utterances": _splits(20, 31, 31)},
        "sf": {"speakers": _splits(20, 4, 4), "utterances": _splits(20, 15, 15)},
        "sid": {"num_speakers": 32, "utterances": _splits(8, 4, 4)},
        "asv": {"speakers": _splits(32, 5, 8), "utterances": _splits(8, 6, 6)},
        "sd": {"speakers": _splits(24, 6, 6), "mixtures": _splits(200, 40, 40)},
        "prosody": {"speakers": _splits(16, 4, 4), "sentences_per_preset": 4},
    },
    "tiny": {
        "asr": {"speakers": _splits(2, 1, 1), "utterances": _splits(3, 2, 2)},
        "ks": {
            "speakers": _splits(2, 1, 1),
            "repetitions": 1,
            "unknown_per_speaker": 1,
            "silence_per_speaker": 1,
        },
        "qbe": {"num_docs": 8, "doc_speakers": 2, "terms_per_split": 2},
        "ic": {"speakers": _splits(2, 1, 1), "utterances": _splits(4, 3, 3)},
        "sf": {"speakers": _splits(2, 1, 1), "utterances": _splits(3, 2, 2)},
        "sid": {"num_speakers": 3, "utterances": _splits(2, 1, 1)},
        "asv": {"speakers": _splits(3, 2, 2), "utterances": _splits(2, 2, 2)},
        "sd": {"speakers": _splits(2, 2, 2), "mixtures": _splits(3, 2, 2)},
        "prosody": {"speakers": _splits(1, 1, 1), "sentences_per_preset": 1},
    },
}
JOB_SIZE = {"small": 40, "tiny": 100000}  # tiny: one process per task


def builders_for(tasks: list[str]) -> list[str]:
    """The builders that write ``tasks`` (in BUILDERS order)."""
    return [name for name, (writes, _) in BUILDERS.items() if set(writes) & set(tasks)]


def parse_tasks(value: str) -> list[str]:
    """``all`` or a comma-separated subset of TASKS."""
    if value.strip() == "all":
        return list(TASKS)
    tasks = [t.strip() for t in value.split(",") if t.strip()]
    for task in tasks:
        if task == "er":
            raise argparse.ArgumentTypeError(
                "the ER slot is called 'prosody' here (prosody presets, not emotion)"
            )
        if task not in TASKS:
            raise argparse.ArgumentTypeError(
                f"unknown task {task!r}; choose from {', '.join(TASKS)} or 'all'"
            )
    if not tasks:
        raise argparse.ArgumentTypeError("no task given")
    return sorted(set(tasks), key=TASKS.index)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hubert_lit superb-data",
        description="Build the ten Mini-SUPERB task data sets (asr, pr, ks, qbe, ic, sf, sid, asv, sd, prosody) "
        "from eSpeak NG speech: OUT/<task>/meta.json, {train,dev,test}.jsonl and 16 kHz FLAC audio (format in "
        "the docstring of hubert_lit.superb.data). Deterministic: the same seed and scale give byte-identical "
        "files, whatever the number of workers. All speech is synthetic: use it for tests and demos only.",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder; tasks go to OUT/<task>")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for speakers, texts and prosody (default 0)"
    )
    parser.add_argument(
        "--tasks", type=parse_tasks, default=list(TASKS),
        help=f"comma-separated tasks out of {','.join(TASKS)}, or 'all' (default all). asr and pr share their "
        "audio and are always built together. SUPERB's ER slot is 'prosody'.",
    )  # fmt: skip
    parser.add_argument(
        "--scale", choices=sorted(SCALES), default="small",
        help="'small' (default; about 3.5 h of audio, a few minutes on 2 cores, enough for a frozen-upstream "
        "linear probe) or 'tiny' (a few utterances per task, for tests)",
    )  # fmt: skip
    parser.add_argument(
        "--workers", type=int, default=available_cpus(),
        help="parallel processes; does not change the output (default: available CPUs)",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true", help="replace task folders that already exist in OUT"
    )
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace, tasks: list[str]) -> None:
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    existing = [t for t in tasks if (args.out / t).exists()]
    if existing and not args.overwrite:
        parser.error(f"--out {args.out} already has {', '.join(existing)}; pass --overwrite to replace them")


def run_plans(plans: list[TaskPlan], workers: int, progress: bool = True) -> None:
    """Run every job of ``plans`` (each in a fresh process) and let each plan write its records."""
    from tqdm import tqdm

    from hubert_lit.data.espeak import map_in_fresh_processes

    jobs = [(p, job) for p, plan in enumerate(plans) for job in plan.jobs]
    records: list[dict[str, list[Record]]] = [{} for _ in plans]
    total = sum(len(job.items) for _, job in jobs)
    with tqdm(total=total, unit="utt", desc="superb-data", file=sys.stderr, disable=not progress) as bar:
        results = map_in_fresh_processes(
            run_job, [job for _, job in jobs], max(1, min(workers, len(jobs))),
            preload=("torch", "torchaudio.functional", __name__),
        )  # fmt: skip
        for (p, job), job_records in zip(jobs, results):
            for item, record in zip(job.items, job_records):
                records[p].setdefault(item.split, []).append(record)
            bar.update(len(job.items))
    for plan, by_split in zip(plans, records):
        plan.write(by_split)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _summary_line(task: str, root: Path) -> str:
    meta = json.loads((root / task / "meta.json").read_text(encoding="utf-8"))
    if task == "qbe":
        parts = [f"{meta['num_docs']} docs"] + [
            f"{v['queries']} {k} queries" for k, v in meta["occurrences"].items()
        ]
    else:
        parts = [f"{meta['splits'][s]['items']} {s}" for s in SPLITS]
    return f"  {task:<8} " + ", ".join(parts) + f"  ({_folder_bytes(root / task) / 1e6:.1f} MB)"


def _audio_hours(root: Path) -> float:
    import soundfile as sf

    frames = sum(sf.info(path).frames for path in root.rglob("*.flac"))
    return frames / SAMPLE_RATE / 3600


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    builders = builders_for(args.tasks)
    tasks = [t for name in builders for t in BUILDERS[name][0]]
    _validate(parser, args, tasks)
    started = time.perf_counter()
    staging = args.out / ".superb-data.partial"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        context = BuildContext(
            staging, args.seed, args.scale, tuple(speaker_pool(args.seed)), JOB_SIZE[args.scale]
        )
        plans = [BUILDERS[name][1](context, **SCALES[args.scale][name]) for name in builders]
        run_plans(plans, args.workers)
        for task in tasks:
            shutil.rmtree(args.out / task, ignore_errors=True)
            (staging / task).rename(args.out / task)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    elapsed = time.perf_counter() - started
    print(f"wrote {len(tasks)} tasks to {args.out} (seed {args.seed}, scale {args.scale}):")
    for task in tasks:
        print(_summary_line(task, args.out))
    size = sum(_folder_bytes(args.out / t) for t in tasks)
    hours = sum(_audio_hours(args.out / t) for t in tasks)
    print(f"  total    {hours:.2f} h of audio, {size / 1e6:.1f} MB, {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
