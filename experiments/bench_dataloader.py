"""Benchmark: throughput of the training data pipeline (tar read + FLAC decode + crop + collate + labels).

Runs full training epochs of :class:`hubert_lit.data.ShardDataModule`'s loader over a shard folder and
reports, for each worker count, audio seconds decoded per wall-clock second and per worker (the main process
counts as the one worker when ``--workers 0``), audio seconds delivered in batches (after crop-to-shortest),
audio seconds decoded per CPU second of all processes (main + workers; unlike wall-clock rates it does not
depend on what else the machine is running) and how much audio cropping kept. Without ``--shards`` it uses the
demo corpus's shards (``data/demo/shards/train``) when present, else a synthetic shard folder written to a
temporary directory.

    python experiments/bench_dataloader.py [--shards DIR] [--labels DIR] [--workers 0 2] [--epochs 2]

Writes experiments/results/bench_dataloader.{md,json}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hubert_lit.data import ShardDataModule  # noqa: E402
from hubert_lit.data.shardio import encode_flac, load_index  # noqa: E402

DEMO_SHARDS = REPO / "data" / "demo" / "shards" / "train"
RESULTS = REPO / "experiments" / "results"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--shards",
        type=Path,
        default=None,
        help=f"shard folder to read (default: {DEMO_SHARDS} if present, else a synthetic set)",
    )
    parser.add_argument(
        "--labels", type=Path, default=None, help="labels folder of --shards (default: no labels)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[0, 2],
        help="DataLoader worker counts to measure (default: 0 2)",
    )
    parser.add_argument("--epochs", type=int, default=2, help="epochs per measurement (default: 2)")
    parser.add_argument(
        "--max-batch-seconds",
        type=float,
        default=87.5,
        help="batch budget in seconds of audio, fairseq's max_tokens / 16000 (default: 87.5)",
    )
    parser.add_argument(
        "--max-sample-size", type=int, default=250000, help="crop length cap (default: 250000)"
    )
    parser.add_argument(
        "--min-sample-size", type=int, default=32000, help="shortest kept utterance (default: 32000)"
    )
    parser.add_argument("--sort-window", type=int, default=256, help="length-sorting window (default: 256)")
    parser.add_argument("--pad", action="store_true", help="pad batches instead of cropping to the shortest")
    parser.add_argument(
        "--synthetic",
        action="store_true",
        help="measure a synthetic shard set even when --shards is not given and the demo shards exist",
    )
    parser.add_argument(
        "--synthetic-utterances",
        type=int,
        default=300,
        help="size of the synthetic shard set used when no shards are available (default: 300)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS / "bench_dataloader",
        help="output path without suffix; .md and .json are written (default: %(default)s)",
    )
    return parser


def write_synthetic_shards(root: Path, count: int, per_shard: int = 100, seed: int = 0) -> Path:
    """A shard folder of ``count`` utterances of 2-16 s (noisy harmonic tones, LibriSpeech-like lengths)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    index = {
        "format": "hubert-lit-shards/1",
        "sample_rate": 16000,
        "seed": seed,
        "roots": ["synthetic"],
        "shards": [],
        "utterances": [],
        "skipped": [],
    }
    for s in range(-(-count // per_shard)):
        name = f"shard-{s:06d}"
        lengths = [int(n) for n in rng.integers(32000, 256000, min(per_shard, count - s * per_shard))]
        with tarfile.open(root / f"{name}.tar", "w") as tar:
            for k, n in enumerate(lengths):
                utt = f"9{s:03d}-1-{k:04d}"
                t = np.arange(n) / 16000
                audio = 0.3 * np.sin(2 * np.pi * rng.uniform(80, 300) * t) + 0.02 * rng.standard_normal(n)
                meta = {
                    "id": utt,
                    "speaker": f"9{s:03d}",
                    "chapter": "1",
                    "transcript": "",
                    "num_samples": n,
                    "sample_rate": 16000,
                }
                for member, data in (
                    (f"{utt}.flac", encode_flac(audio)),
                    (f"{utt}.json", json.dumps(meta).encode()),
                ):
                    info = tarfile.TarInfo(member)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
                index["utterances"].append({"id": utt, "shard": name, "num_samples": n})
        index["shards"].append(
            {"name": name, "file": f"{name}.tar", "num_utterances": len(lengths), "num_samples": sum(lengths)}
        )
    (root / "index.json").write_text(json.dumps(index))
    return root


def _cpu_seconds() -> float:
    """CPU time of this process plus its finished children (the DataLoader workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measure(args: argparse.Namespace, shards: Path, workers: int) -> dict:
    dm = ShardDataModule(
        train_shards=str(shards),
        train_labels=None if args.labels is None else str(args.labels),
        max_batch_seconds=args.max_batch_seconds,
        max_sample_size=args.max_sample_size,
        min_sample_size=args.min_sample_size,
        pad=args.pad,
        sort_window=args.sort_window,
        num_workers=workers,
    )
    dm.setup("fit")
    lengths = {u.id: u.num_samples for u in dm.train_dataset.index.utterances}
    loader = dm.train_dataloader()
    decoded = batched = batches = 0
    cpu_start = _cpu_seconds()
    start = time.perf_counter()
    for epoch in range(args.epochs):
        dm.set_epoch(epoch)
        for batch in loader:
            decoded += sum(lengths[u] for u in batch["ids"])
            batched += int(batch["lengths"].sum())
            batches += 1
    wall = time.perf_counter() - start
    del loader  # workers have exited after each epoch (they are not persistent), so their CPU time is counted
    cpu = _cpu_seconds() - cpu_start
    procs = max(workers, 1)
    return {
        "workers": workers,
        "epochs": args.epochs,
        "batches": batches,
        "wall_s": wall,
        "decoded_audio_s": decoded / 16000,
        "batched_audio_s": batched / 16000,
        "decoded_audio_s_per_s": decoded / 16000 / wall,
        "decoded_audio_s_per_s_per_worker": decoded / 16000 / wall / procs,
        "batched_audio_s_per_s_per_worker": batched / 16000 / wall / procs,
        "cpu_s": cpu,
        "decoded_audio_s_per_cpu_s": decoded / 16000 / cpu,
        "crop_kept": batched / max(decoded, 1),
    }


def to_markdown(info: dict, rows: list[dict]) -> str:
    lines = [
        "# Data-loader throughput (bench_dataloader.py)",
        "",
        f"Shards: `{info['shards']}` ({info['utterances']} utterances, {info['hours']:.2f} h), labels: "
        f"{info['labels']}; max_batch_seconds {info['max_batch_seconds']}, pad {info['pad']}, "
        f"sort_window {info['sort_window']}; {info['machine']}.",
        "",
        "| workers | batches | wall s | decoded audio s / s | per worker | batched audio s / s / worker "
        "| decoded audio s / CPU s | audio kept by crop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['workers']} | {r['batches']} | {r['wall_s']:.2f} | {r['decoded_audio_s_per_s']:.0f} | "
            f"{r['decoded_audio_s_per_s_per_worker']:.0f} | {r['batched_audio_s_per_s_per_worker']:.0f} | "
            f"{r['decoded_audio_s_per_cpu_s']:.0f} | {100 * r['crop_kept']:.1f} % |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    tmp = None
    shards = args.shards
    if shards is None:
        if (DEMO_SHARDS / "index.json").is_file() and not args.synthetic:
            shards = DEMO_SHARDS
        else:
            tmp = tempfile.TemporaryDirectory(prefix="bench-shards-")
            print(
                f"no shards given: writing {args.synthetic_utterances} synthetic utterances to {tmp.name}",
                flush=True,
            )
            shards = write_synthetic_shards(Path(tmp.name), args.synthetic_utterances)
    index = load_index(shards)
    info = {
        "shards": str(shards.resolve().relative_to(REPO))
        if shards.resolve().is_relative_to(REPO)
        else str(shards),
        "utterances": index.num_utterances,
        "hours": index.num_samples / 16000 / 3600,
        "labels": str(args.labels) if args.labels else "none",
        "max_batch_seconds": args.max_batch_seconds,
        "pad": args.pad,
        "sort_window": args.sort_window,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs visible",
    }
    rows = []
    for workers in args.workers:
        rows.append(measure(args, shards, workers))
        r = rows[-1]
        print(
            f"workers={workers}: {r['decoded_audio_s_per_s_per_worker']:.0f} audio s decoded per s per "
            f"worker, {r['batched_audio_s_per_s_per_worker']:.0f} batched ({r['batches']} batches, "
            f"{r['wall_s']:.2f} s)",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"info": info, "results": rows}, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(to_markdown(info, rows))
    print(to_markdown(info, rows))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
