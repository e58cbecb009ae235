"""Benchmark: throughput of the training data pipeline (tar read + FLAC decode + crop + collate + labels).

Runs full training epochs of :class:`hubert_lit.data.ShardDataModule`'s loader over a shard folder and
reports, for each source and worker count, audio seconds decoded per wall-clock second and per worker (the main
process counts as the one worker when ``--workers 0``), audio seconds delivered in batches (after
crop-to-shortest), audio seconds decoded per CPU second of the loader's processes (main + workers; unlike
wall-clock rates it does not depend on what else the machine is running) and how much audio cropping kept.

Sources (``--sources``): ``local`` reads the tars from the disk; ``http`` reads the same folder from a web server
on 127.0.0.1 (``python -m http.server`` in its own process, whose CPU time is not counted), streaming every tar
through the resuming HTTP reader with no cache, so the two rows of a worker count compare the network path with
local files in the same run. Without ``--shards`` it uses the demo corpus's shards (``data/demo/shards/train``)
when present, else a synthetic shard folder written to a temporary directory.

    python experiments/bench_dataloader.py [--shards DIR] [--labels DIR] [--workers 0 2] [--epochs 2]
    python experiments/bench_dataloader.py --synthetic --synthetic-utterances 40 --epochs 1 --workers 0 1 \
        --out /tmp/bench_dataloader       # a quick check that it runs

Writes experiments/results/bench_dataloader.{md,json} (or ``--out``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from contextlib import contextmanager, nullcontext
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
    parser.add_argument(
        "--sources",
        nargs="+",
        choices=("local", "http"),
        default=["local", "http"],
        help="read the shards from the disk and/or from a web server on 127.0.0.1 (default: local http)",
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


@contextmanager
def http_server(folder: Path):
    """``python -m http.server`` serving ``folder`` on 127.0.0.1 in its own process; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{url}/index.json", timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            raise RuntimeError(f"the web server on port {port} did not start")
        yield url
    finally:
        server.terminate()
        server.wait()


def measure(args: argparse.Namespace, shards: str, workers: int, source: str = "local") -> dict:
    dm = ShardDataModule(
        train_shards=shards,
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
        "source": source,
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
        "| source | workers | batches | wall s | decoded audio s / s | per worker | batched audio s / s / worker "
        "| decoded audio s / CPU s | audio kept by crop |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['workers']} | {r['batches']} | {r['wall_s']:.2f} | "
            f"{r['decoded_audio_s_per_s']:.0f} | "
            f"{r['decoded_audio_s_per_s_per_worker']:.0f} | {r['batched_audio_s_per_s_per_worker']:.0f} | "
            f"{r['decoded_audio_s_per_cpu_s']:.0f} | {100 * r['crop_kept']:.1f} % |"
        )
    local = {r["workers"]: r for r in rows if r["source"] == "local"}
    pairs = [(r, local[r["workers"]]) for r in rows if r["source"] == "http" and r["workers"] in local]
    if pairs:
        lines += ["", "HTTP (loopback, no cache) against local files, decoded audio per second per worker:"]
        lines += [
            f"- {h['workers']} workers: {h['decoded_audio_s_per_s_per_worker'] / loc['decoded_audio_s_per_s_per_worker']:.2f}x"
            for h, loc in pairs
        ]
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
    for source in args.sources:
        with http_server(shards) if source == "http" else nullcontext(str(shards)) as location:
            for workers in args.workers:
                rows.append(measure(args, location, workers, source))
                r = rows[-1]
                print(
                    f"{source} workers={workers}: {r['decoded_audio_s_per_s_per_worker']:.0f} audio s decoded per "
                    f"s per worker, {r['batched_audio_s_per_s_per_worker']:.0f} batched ({r['batches']} batches, "
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
