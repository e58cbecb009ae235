"""`make demo`: the pretraining pipeline end to end on a synthetic corpus, on CPU, in a few minutes.

Stages (each prints the command it runs; a stage whose output already exists is skipped, so the demo can be
rerun after an interruption):

1. synth      python -m hubert_lit synth      -> data/demo/LibriSpeech/{train,dev,test}
2. shard      python -m hubert_lit shard      -> data/demo/shards/{train,dev}
3. label it1  python -m hubert_lit label      MFCC k-means -> data/demo/labels/mfcc/{train,dev}
4. fit it1    python -m hubert_lit fit --config configs/demo.yaml            -> runs/demo/it1
5. label it2  python -m hubert_lit label --features hubert (layer of it1)     -> data/demo/labels/it1/{train,dev}
6. fit it2    python -m hubert_lit fit --config configs/demo.yaml --run.name it2 ... -> runs/demo/it2
7. binarize   python -m hubert_lit fit --config configs/distill/demo_w1a1.yaml   BiT W1A1 student of it1
   export     python -m hubert_lit export                                      packed 1-bit file
8. profile    python -m hubert_lit profile                                     storage/FLOP/BOP of both models
9. evaluate   python -m hubert_lit superb-data + evaluate (KS, SID, PR)        it1, it2, student, random init

Stage budgets (corpus size, clusters, steps, wall-clock caps) live in configs/demo.yaml (`demo:` and `trainer:`).
Finally tables show the quality of each iteration's k-means units (PNMI against the phone alignments), masked
accuracy at the start and end of each iteration (and of the binarized student next to its teacher), training
throughput (audio seconds per second), the efficiency profile, the quick evaluation, and where the checkpoints,
logs and configs are.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = "configs/demo.yaml"


def run(cmd: list[str], timings: dict[str, float], stage: str, threads: int = 1) -> None:
    """Print and run ``python -m hubert_lit ...``; stop the demo if it fails."""
    shown = " ".join(shlex.quote(c) for c in ["python", *cmd[1:]])
    print(f"\n[{stage}] $ {shown}", flush=True)
    start = time.perf_counter()
    # ``threads`` intra-op threads unless the user set OMP_NUM_THREADS: one for the tools (OpenMP pools of torch
    # and faiss spinning against the loader worker made 2-thread runs on a busy 2-core box an order of magnitude
    # slower), the measured count for the training stages (training_threads).
    env = {"OMP_NUM_THREADS": str(threads), **os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"demo: stage {stage!r} failed (exit status {proc.returncode}); see the messages above")


def training_threads(setting: int | str, runs: Path, config: str, timings: dict[str, float]) -> int:
    """The training stages' intra-op threads: ``demo.threads`` from the config, or for ``auto`` the count
    experiments/demo_threads.py measures as fastest for the demo's step beside its loader worker (measured once,
    kept in ``<runs>/threads.json``)."""
    if setting != "auto":
        return int(setting)
    if "OMP_NUM_THREADS" in os.environ:
        return int(os.environ["OMP_NUM_THREADS"])
    cache = runs / "threads.json"
    if cache.is_file():
        return int(json.loads(cache.read_text())["threads"])
    from demo_threads import choose_threads

    print(
        "\n[threads] measuring the training step with 1, 2, ... intra-op threads (experiments/demo_threads.py)"
    )
    start = time.perf_counter()
    threads, rates = choose_threads(ROOT / config)
    timings["threads"] = time.perf_counter() - start
    print(f"[threads] training stages use {threads} thread(s)", flush=True)
    runs.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"threads": threads, "audio_s_per_s": rates}, indent=1) + "\n")
    return threads


def skip(stage: str, output: Path) -> bool:
    if output.exists():
        print(f"\n[{stage}] skipped: {output} exists", flush=True)
        return True
    return False


def hubert(*args: str) -> list[str]:
    return [sys.executable, "-m", "hubert_lit", *args]


def latest_metrics(run_dir: Path) -> Path | None:
    versions = sorted((run_dir / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    files = [v / "metrics.csv" for v in versions if (v / "metrics.csv").is_file()]
    return files[-1] if files else None


def read_metrics(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """metric name -> [(step, value)] over every CSV version of the run (a resumed run adds a version)."""
    series: dict[str, list[tuple[int, float]]] = {}
    versions = sorted((run_dir / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    for version in versions:
        path = version / "metrics.csv"
        if not path.is_file():
            continue
        with open(path) as f:
            for row in csv.DictReader(f):
                for key, value in row.items():
                    if key not in ("step", "epoch") and value not in ("", None):
                        series.setdefault(key, []).append((int(row["step"]), float(value)))
    return series


def mean_of(points: list[tuple[int, float]]) -> float:
    return sum(v for _, v in points) / max(len(points), 1)


def summarize(name: str, run_dir: Path) -> dict[str, str]:
    m = read_metrics(run_dir)
    acc = m.get("train/masked_acc", [])
    val = m.get("val/masked_acc", [])
    speed = sorted(v for _, v in m.get("train/audio_sec_per_sec", []))
    window = max(1, len(acc) // 10)  # mean over the first / last tenth of the logged steps
    return {
        "iteration": name,
        "steps": str(acc[-1][0] + 1) if acc else "-",
        "train masked acc start": f"{mean_of(acc[:window]):.3f}" if acc else "-",
        "train masked acc end": f"{mean_of(acc[-window:]):.3f}" if acc else "-",
        "val masked acc first/last": f"{val[0][1]:.3f} / {val[-1][1]:.3f}" if val else "-",
        "audio s/s (median)": f"{speed[len(speed) // 2]:.0f}" if speed else "-",
    }


def print_label_quality(label_roots: list[tuple[str, Path]]) -> None:
    """PNMI and phone purity of each iteration's dev labels (computed by ``label`` from the demo's alignments)."""
    rows = []
    for name, root in label_roots:
        meta = root / "dev" / "meta.json"
        quality = json.loads(meta.read_text()).get("quality") if meta.is_file() else None
        if quality:
            rows.append(
                {
                    "targets of": name,
                    "labels": str(root),
                    "dev PNMI": f"{quality['pnmi']:.3f}",
                    "phone purity": f"{quality['phone_purity']:.3f}",
                    "clusters used": str(quality.get("used_clusters", "-")),
                }
            )
    if rows:
        print("\nk-means units against the phone alignments (dev):")
        print_table(rows)


def print_student_table(run_dir: Path, teacher_name: str) -> None:
    """Binarized student next to its full-precision teacher (validation masked accuracy, same masks)."""
    m = read_metrics(run_dir)
    student, teacher = m.get("val/student_masked_acc", []), m.get("val/teacher_masked_acc", [])
    if not student or not teacher:
        return
    print(f"\nBiT W1A1 student ({run_dir}): val masked accuracy")
    print_table(
        [
            {
                "model": f"teacher ({teacher_name}, FP32)",
                "first": f"{teacher[0][1]:.3f}",
                "last": f"{teacher[-1][1]:.3f}",
            },
            {"model": "student (W1A1)", "first": f"{student[0][1]:.3f}", "last": f"{student[-1][1]:.3f}"},
        ]
    )


def print_eval_table(out: Path, run_names: list[str]) -> None:
    """The evaluation rows written by ``evaluate`` (``<out>/<run>.csv``), side by side (tasks that ran only)."""
    rows = []
    for name in run_names:
        path = out / f"{name}.csv"
        if path.is_file():
            with open(path) as f:
                rows.extend(csv.DictReader(f))
    if not rows:
        return
    keys = [k for k in rows[0] if k != "checkpoint" and any(r.get(k) for r in rows)]
    print(f"\nquick evaluation ({out}; synthetic tasks, not comparable with SUPERB):")
    print_table([{k: r.get(k) or "" for k in keys} for r in rows])


def running_mean(values: tuple[float, ...], window: int) -> list[float]:
    """Mean of the last ``window`` values at each point (fewer at the start)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def plot_curves(runs: Path, iterations: list[str], bq_dir: Path) -> Path | None:
    """Masked accuracy and loss against steps for each iteration and the binarized student (``curves.png``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(11, 4))
    drawn = False
    for name in iterations:
        m = read_metrics(runs / name)
        if m.get("train/masked_acc"):
            steps, values = zip(*m["train/masked_acc"])
            ax_acc.plot(
                steps, running_mean(values, 10), "-", alpha=0.6, label=f"{name} train (mean of 10 logs)"
            )
            drawn = True
        if m.get("val/masked_acc"):
            steps, values = zip(*m["val/masked_acc"])
            ax_acc.plot(steps, values, "o-", markersize=3, label=f"{name} val")
        if m.get("val/loss"):
            steps, values = zip(*m["val/loss"])
            ax_loss.plot(steps, values, "o-", markersize=3, label=f"{name} val")
    m = read_metrics(bq_dir)
    for key, label in (
        ("val/student_masked_acc", "W1A1 student"),
        ("val/teacher_masked_acc", "its FP teacher"),
    ):
        if m.get(key):
            steps, values = zip(*m[key])
            ax_acc.plot(steps, values, "s--", markersize=3, label=f"{label} val")
    if not drawn:
        plt.close(fig)
        return None
    ax_acc.set(xlabel="step", ylabel="masked-frame accuracy", title="masked prediction accuracy")
    ax_loss.set(xlabel="step", ylabel="loss (nats)", title="validation loss")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("make demo: tiny HuBERT on the synthetic demo corpus (CPU)", fontsize=10)
    fig.tight_layout()
    out = runs / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def print_table(rows: list[dict[str, str]]) -> None:
    keys = list(rows[0])
    widths = {k: max(len(k), *(len(r[k]) for r in rows)) for k in keys}
    print("  ".join(k.ljust(widths[k]) for k in keys))
    for r in rows:
        print("  ".join(r[k].ljust(widths[k]) for k in keys))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=DEMO_CONFIG, help="demo config (default %(default)s)")
    args = parser.parse_args(argv)
    with open(ROOT / args.config) as f:
        cfg = yaml.safe_load(f)
    demo, run_cfg = cfg["demo"], cfg["run"]
    os.chdir(ROOT)  # commands use paths relative to the repository root, as a user would type them
    data = Path(demo["data_dir"])
    runs = Path(run_cfg["root"])
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    # 1. corpus
    corpus = data / "LibriSpeech"
    if not skip("synth", corpus / "SPEAKERS.TXT"):
        s = demo["synth"]
        run(
            hubert(
                "synth",
                "--out",
                str(data),
                "--speakers",
                str(s["speakers"]),
                "--utterances",
                str(s["utterances"]),
                "--seed",
                str(s["seed"]),
                "--overwrite",
            ),
            timings,
            "synth",
        )
    # 2. shards
    for split in ("train", "dev"):
        out = data / "shards" / split
        if not skip("shard", out / "index.json"):
            run(
                hubert(
                    "shard",
                    "--root",
                    str(corpus / split),
                    "--out",
                    str(out),
                    "--shard-size",
                    str(demo["shard"]["shard_size"]),
                    "--overwrite",
                ),
                timings,
                "shard",
            )

    # 3-6. two iterations of labels + pretraining
    it1_ckpt = runs / run_cfg["name"] / "checkpoints" / "last.ckpt"
    iterations = [
        ("it1", demo["label_it1"], data / "labels" / "mfcc", []),
        ("it2", demo["label_it2"], data / "labels" / "it1", None),
    ]
    for name, lab, label_root, _ in iterations:
        train_labels, dev_labels = label_root / "train", label_root / "dev"
        if not skip(f"label {name}", dev_labels / "meta.json"):
            extra = (
                ["--checkpoint", str(it1_ckpt), "--layer", str(lab["layer"])]
                if lab["features"] == "hubert"
                else []
            )
            run(
                hubert(
                    "label",
                    "--shards",
                    str(data / "shards" / "train"),
                    "--out",
                    str(train_labels),
                    "--features",
                    lab["features"],
                    "--clusters",
                    str(lab["clusters"]),
                    "--fit-fraction",
                    str(lab["fit_fraction"]),
                    "--overwrite",
                    "--no-progress",
                    *extra,
                ),
                timings,
                f"label {name}",
            )
            run(
                hubert(
                    "label",
                    "--shards",
                    str(data / "shards" / "dev"),
                    "--out",
                    str(dev_labels),
                    "--centroids",
                    str(train_labels),
                    "--overwrite",
                    "--no-progress",
                    *extra,
                ),
                timings,
                f"label {name}",
            )
        run_dir = runs / name
        if not skip(f"fit {name}", run_dir / "DONE"):
            threads = training_threads(demo.get("threads", "auto"), runs, args.config, timings)
            fit = ["fit", "--config", args.config, "--run.name", name, "--ckpt_path", "last"]
            if name == "it2":
                fit += [
                    "--data.train_labels",
                    str(train_labels),
                    "--data.val_labels",
                    str(dev_labels),
                    "--model.num_classes",
                    str(lab["clusters"]),
                ]
                fit += [f"--{key}={value}" for key, value in demo["it2"].items()]
            run(hubert(*fit), timings, f"fit {name}", threads)
            (run_dir / "DONE").write_text("finished\n")

    # 7. BiT W1A1 student of the teacher iteration (it1 at demo scale, see configs/demo.yaml), and its export
    bq = demo["binarize"]
    bq_dir = runs / bq["run_name"]
    it2_ckpt = runs / "it2" / "checkpoints" / "last.ckpt"
    teacher_ckpt = runs / bq["teacher"] / "checkpoints" / "last.ckpt"
    if not skip("binarize", bq_dir / "DONE"):
        run(
            hubert("fit", "--config", bq["config"], f"--model.teacher={teacher_ckpt}", "--ckpt_path", "last"),
            timings,
            "binarize",
            training_threads(demo.get("threads", "auto"), runs, args.config, timings),
        )
        (bq_dir / "DONE").write_text("finished\n")
    packed = bq_dir / "model.packed.pt"
    if not skip("export", packed):
        run(
            hubert("export", "--checkpoint", str(bq_dir / "checkpoints" / "last.ckpt"), "--out", str(packed)),
            timings,
            "export",
        )

    # 8. efficiency profile of the full-precision and the binarized model
    seconds = str(demo["profile"]["seconds"])
    for ckpt in (teacher_ckpt, packed):
        run(
            hubert("profile", "--checkpoint", str(ckpt), "--seconds", seconds, "--runs", "3"),
            timings,
            "profile",
        )

    # 9. quick SUPERB-style evaluation: KS, SID and PR with one learning rate each
    ev = demo["evaluate"]
    superb_data = data / "superb"
    if not skip("superb-data", superb_data / "sid" / "meta.json"):
        run(
            hubert("superb-data", "--out", str(superb_data), "--tasks", ev["tasks"], "--scale", ev["scale"]),
            timings,
            "superb-data",
        )
    eval_out = runs / "superb"
    lrs = [f"{task}={lr}" for task, lr in ev["lrs"].items()]
    eval_runs = (
        ("demo_it1", it1_ckpt, []),
        ("demo_it2", it2_ckpt, []),
        ("demo_bq_w1a1", packed, []),
        ("demo_random_init", it1_ckpt, ["--random-init"]),
    )
    for run_name, ckpt, extra in eval_runs:
        if not skip(f"evaluate {run_name}", eval_out / f"{run_name}.json"):
            run(
                hubert(
                    "evaluate",
                    "--checkpoint",
                    str(ckpt),
                    "--data",
                    str(superb_data),
                    "--tasks",
                    ev["tasks"],
                    "--max-steps",
                    str(ev["max_steps"]),
                    "--lrs",
                    *lrs,
                    "--run-name",
                    run_name,
                    "--out",
                    str(eval_out),
                    "--no-progress",
                    *extra,
                ),
                timings,
                "evaluate",
            )

    total = time.perf_counter() - t0
    print("\n=== demo summary ===")
    print_table([summarize(name, runs / name) for name, *_ in iterations])
    print_label_quality([(name, label_root) for name, _, label_root, _ in iterations])
    print_student_table(bq_dir, bq["teacher"])
    print_eval_table(eval_out, [name for name, *_ in eval_runs])
    curves = plot_curves(runs, [name for name, *_ in iterations], bq_dir)
    if curves is not None:
        print(f"\ntraining curves: {curves}")
    ran = ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) or "every stage skipped"
    print(f"\nstage wall time (this invocation): {ran}; total {total:.0f} s")
    for name in [name for name, *_ in iterations] + [bq["run_name"]]:
        run_dir = runs / name
        metrics = latest_metrics(run_dir)
        print(f"\n{name}: checkpoints {run_dir}/checkpoints/ (last.ckpt)")
        if metrics is not None:
            print(f"     metrics {metrics}; resolved config {metrics.parent}/config.yaml")
        wandb_dir = run_dir / "wandb"
        if wandb_dir.is_dir():
            print(f"     W&B offline run in {wandb_dir} (upload: wandb sync {wandb_dir}/offline-run-*)")
    print(
        "\nload a model: python -c \"import hubert_lit; m = hubert_lit.load_model('runs/demo/it1/checkpoints/last.ckpt')\""
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
