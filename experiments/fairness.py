"""Do the binarization defaults tilt the encoder comparison? Students under the 0.1.0 and the current defaults.

For each encoder family (tiny presets, the demo corpus and its MFCC labels): one full-precision teacher is
pretrained, then BiT W1A1 students are distilled from it under both sets of defaults, with two seeds each:

* ``old``: hubert-lit 0.1.0 (per-channel pointwise convs, binarized relative positions, attention dropout after the
  probability binarizer, hidden-state loss on the masked pass);
* ``new``: the current defaults (pointwise convs as Linears, positional modules full precision in every family,
  dropout before the binarizer, hidden-state loss on the unmasked pass).

Reported per encoder and setting: validation masked accuracy of teacher and student (same masks) and the drop,
as mean and range over the seeds. A difference of the mean drops inside the seed ranges is "no measurable effect".
Everything runs through ``python -m hubert_lit fit``; needs the demo corpus (``make demo``'s first stages, or
``python experiments/demo.py`` interrupted after labelling)::

    python experiments/fairness.py --work runs/fairness --out experiments/results/fairness
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENCODERS = ("vanilla", "conformer_s", "squeezeformer_xs", "sparseformer_dn_s", "sparseformer_sw_s")
SETTINGS = {
    "old": [
        "--model.pointwise_conv_scale=channel",
        "--model.binarize_relative_positions=true",
        "--model.dropout_before_prob_binarizer=false",
        "--model.unsigned_min_offset=false",
        "--model.hidden_pass=masked",
    ],
    "new": [],
}


def fit(args: list[str], log: Path) -> None:
    cmd = [sys.executable, "-m", "hubert_lit", "fit", *args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "WANDB_MODE": "disabled"}
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise SystemExit(f"fit failed ({rc}), see {log}: {' '.join(cmd)}")


def last_value(run_dir: Path, key: str) -> float:
    values = []
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        with open(path) as f:
            values += [float(r[key]) for r in csv.DictReader(f) if r.get(key)]
    if not values:
        raise SystemExit(f"{run_dir}: no {key} logged")
    return values[-1]


def data_args(data: Path, batch_seconds: float) -> list[str]:
    return [
        f"--data.train_shards={data}/shards/train",
        f"--data.val_shards={data}/shards/dev",
        f"--data.train_labels={data}/labels/mfcc/train",
        f"--data.val_labels={data}/labels/mfcc/dev",
        f"--data.max_batch_seconds={batch_seconds}",
        "--data.max_sample_size=80000",
        "--data.min_sample_size=16000",
        "--data.num_workers=1",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.check_val_every_n_epoch=null",
        "--trainer.limit_val_batches=20",
        "--run.loggers=[csv]",
    ]


def summarize(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def markdown(results: dict) -> str:
    lines = [
        "| encoder | defaults | teacher val masked acc | student val masked acc (mean, range) | drop (mean, range) |",
        "|---|---|---|---|---|",
    ]
    for enc, by_setting in results.items():
        for setting, r in by_setting.items():
            s, d = r["student"], r["drop"]
            lines.append(
                f"| {enc} | {setting} | {r['teacher']:.3f} | {s['mean']:.3f} ({s['min']:.3f}-{s['max']:.3f}) | "
                f"{d['mean']:.3f} ({d['min']:.3f}-{d['max']:.3f}) |"
            )
    lines += ["", "| encoder | drop old - new | verdict |", "|---|---|---|"]
    for enc, by_setting in results.items():
        old, new = by_setting["old"]["drop"], by_setting["new"]["drop"]
        overlap = old["min"] <= new["max"] and new["min"] <= old["max"]
        verdict = (
            "no measurable effect"
            if overlap
            else ("new drops less" if new["max"] < old["min"] else "new drops more")
        )
        lines.append(
            f"| {enc} | {old['mean'] - new['mean']:+.3f} | {verdict} (seed ranges {'overlap' if overlap else 'apart'}) |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--data", type=Path, default=ROOT / "data" / "demo", help="demo corpus (shards + MFCC labels)"
    )
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "fairness")
    p.add_argument("--out", type=Path, default=ROOT / "experiments" / "results" / "fairness")
    p.add_argument("--encoders", nargs="+", default=list(ENCODERS))
    p.add_argument("--teacher-steps", type=int, default=800)
    p.add_argument("--student-steps", type=int, default=300)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = p.parse_args(argv)
    if not (args.data / "labels" / "mfcc" / "dev" / "meta.json").is_file():
        p.error(f"{args.data}: no demo corpus with MFCC labels (run make demo, or its first stages)")
    args.work.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    started = time.perf_counter()
    for enc in args.encoders:
        teacher_dir = args.work / f"{enc}_teacher"
        teacher = teacher_dir / "checkpoints" / "last.ckpt"
        if not teacher.is_file():
            fit(
                [
                    f"--model.preset={enc}_tiny",
                    "--model.lr=2e-3",
                    f"--model.warmup_steps={max(1, args.teacher_steps // 10)}",
                    f"--trainer.max_steps={args.teacher_steps}",
                    f"--trainer.val_check_interval={args.teacher_steps}",
                    f"--checkpoint.every_n_train_steps={args.teacher_steps}",
                    "--seed_everything=0",
                    *data_args(args.data, 24.0),
                    f"--run.root={args.work}",
                    f"--run.name={teacher_dir.name}",
                ],
                args.work / f"{teacher_dir.name}.log",
            )
        results[enc] = {}
        for setting, switches in SETTINGS.items():
            students, teachers = [], []
            for seed in args.seeds:
                name = f"{enc}_{setting}_s{seed}"
                if not (args.work / name / "checkpoints" / "last.ckpt").is_file():
                    fit(
                        [
                            "--model=hubert_lit.lit.distill.BiTDistillModule",
                            f"--model.teacher={teacher}",
                            "--model.lr=2e-3",
                            "--model.quant_lr=1e-3",
                            f"--model.warmup_steps={max(1, args.student_steps // 10)}",
                            *switches,
                            f"--trainer.max_steps={args.student_steps}",
                            f"--trainer.val_check_interval={args.student_steps}",
                            f"--checkpoint.every_n_train_steps={args.student_steps}",
                            f"--seed_everything={seed}",
                            *data_args(args.data, 24.0),
                            f"--run.root={args.work}",
                            f"--run.name={name}",
                        ],
                        args.work / f"{name}.log",
                    )
                students.append(last_value(args.work / name, "val/student_masked_acc"))
                teachers.append(last_value(args.work / name, "val/teacher_masked_acc"))
            drops = [t - s for t, s in zip(teachers, students)]
            results[enc][setting] = {
                "teacher": statistics.fmean(teachers),
                "student": summarize(students),
                "drop": summarize(drops),
                "seeds": args.seeds,
            }
        print(f"{enc}: {json.dumps(results[enc])}", flush=True)
    elapsed = time.perf_counter() - started
    text = markdown(results)
    text += (
        f"\nTiny presets on the synthetic demo corpus (MFCC k-means labels, k = 50); teachers {args.teacher_steps} "
        f"steps, students {args.student_steps} steps, seeds {args.seeds}; {elapsed / 60:.0f} min on this machine.\n"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
