"""Forward and forward+backward time and peak memory of each HuBERT preset on a fixed length of audio.

Forward = inference (eval mode, no grad, ``extract_features``); forward+backward = one pretraining step's
compute (train mode, masking, masked-prediction loss, ``loss.backward()``), without the optimizer. Times are
the best of ``--repeats`` runs after ``--warmup`` runs (the minimum is the least noisy estimate on a shared
machine). On CUDA the runs use bf16 autocast and the peak memory is
``torch.cuda.max_memory_allocated``; on CPU they run in fp32, each preset in a fresh process, and the peak memory
is the growth of the process's peak resident set size over its size before the first run (an upper bound of
what the allocator held). Ratios are to ``vanilla``.

    python experiments/bench_encoders.py                     # 10 s, batch 1, the five presets
    python experiments/bench_encoders.py --frontend wav2vec2 --seconds 5
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import platform
import resource
import sys
import time
from pathlib import Path

import torch

PRESETS = ["vanilla", "conformer_s", "squeezeformer_xs", "sparseformer_dn_s", "sparseformer_sw_s"]
SAMPLE_RATE = 16000
RESULTS = Path(__file__).resolve().parent / "results"


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(
    name: str,
    frontend: str | None,
    seconds: float,
    batch_size: int,
    warmup: int,
    repeats: int,
    device_name: str,
    threads: int,
) -> dict[str, float | str]:
    """Time and memory of one preset; returns a row of the table."""
    from hubert_lit.lit.losses import batch_objective, prediction_terms
    from hubert_lit.models import build_hubert

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    device = torch.device(device_name)
    overrides = {} if frontend is None else {"frontend": frontend}
    model = build_hubert(name, num_classes=500, **overrides).to(device)
    num_samples = int(seconds * SAMPLE_RATE)
    wav = torch.randn(batch_size, num_samples, device=device)
    lengths = torch.full((batch_size,), num_samples, device=device)
    labels = torch.randint(0, 500, (batch_size, model.num_frames(num_samples)), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def forward() -> None:
        model.eval()
        with torch.no_grad(), autocast:
            model.extract_features(wav, lengths)

    def forward_backward() -> None:
        model.train()
        with autocast:
            loss = batch_objective(model.config, prediction_terms(model(wav, lengths, labels)))
        loss.backward()
        model.zero_grad(set_to_none=True)

    row: dict[str, float | str] = {"preset": name, "frontend": model.config.frontend}
    base_rss = _rss_mib()
    for label, fn in (("fwd", forward), ("fwd_bwd", forward_backward)):
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            start_mem = torch.cuda.memory_allocated(device) / 2**20
        times = []
        for i in range(warmup + repeats):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        row[f"{label}_s"] = min(times)
        if device.type == "cuda":
            row[f"{label}_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 - start_mem
        else:  # ru_maxrss never decreases: fwd_bwd reports max(fwd, fwd_bwd), fine as fwd_bwd needs more
            row[f"{label}_mib"] = _peak_rss_mib() - base_rss
    row["params_m"] = sum(p.numel() for p in model.parameters()) / 1e6
    return row


def _worker(queue: mp.Queue, kwargs: dict) -> None:
    try:
        queue.put(measure(**kwargs))
    except BaseException as err:  # report the error to the parent instead of hanging it
        queue.put({"error": f"{type(err).__name__}: {err}"})


def run_isolated(kwargs: dict) -> dict:
    """Run :func:`measure` in a fresh process so peak-RSS figures do not leak between presets."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_worker, args=(queue, kwargs))
    proc.start()
    row = queue.get()
    proc.join()
    if "error" in row:
        raise RuntimeError(f"{kwargs['name']}: {row['error']}")
    return row


def format_table(rows: list[dict], header: str) -> str:
    ref = next((r for r in rows if r["preset"] == "vanilla"), rows[0])
    lines = [
        header,
        "",
        "| preset | front end | params (M) | fwd (s) | fwd ratio | fwd peak (MiB) | fwd+bwd (s) | fwd+bwd ratio "
        "| fwd+bwd peak (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['preset']} | {r['frontend']} | {r['params_m']:.2f} | {r['fwd_s']:.3f} | "
            f"{r['fwd_s'] / ref['fwd_s']:.2f} | {r['fwd_mib']:.0f} | {r['fwd_bwd_s']:.3f} | "
            f"{r['fwd_bwd_s'] / ref['fwd_bwd_s']:.2f} | {r['fwd_bwd_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--presets", nargs="+", default=PRESETS, help="model presets to run (default: the five)"
    )
    parser.add_argument(
        "--frontend",
        choices=["wav2vec2", "fastconv"],
        default=None,
        help="override the front end (default: each preset's own, fastconv)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="audio length per utterance (default 10)")
    parser.add_argument("--batch-size", type=int, default=1, help="utterances per batch (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing (default 1)")
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs; the fastest is reported (default 5)"
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="torch device (default: cuda when available, else cpu)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=torch.get_num_threads(),
        help="CPU threads for torch (default: torch's current setting)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="markdown file to write (default experiments/results/bench_<device>.md)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        what = f"CUDA {torch.cuda.get_device_name(device)}, bf16 autocast"
    else:
        what = f"CPU {platform.processor() or platform.machine()}, fp32, {args.threads} thread(s)"
    header = (
        f"{args.seconds:g} s of audio, batch {args.batch_size}, k=500 labels, {what}; best of {args.repeats} runs "
        f"after {args.warmup} warm-up; torch {torch.__version__}. Ratios are to vanilla."
    )
    rows = []
    for name in args.presets:
        kwargs = dict(
            name=name,
            frontend=args.frontend,
            seconds=args.seconds,
            batch_size=args.batch_size,
            warmup=args.warmup,
            repeats=args.repeats,
            device_name=args.device,
            threads=args.threads,
        )
        row = run_isolated(kwargs) if device.type == "cpu" else measure(**kwargs)
        print(f"{name}: fwd {row['fwd_s']:.3f} s, fwd+bwd {row['fwd_bwd_s']:.3f} s", file=sys.stderr)
        rows.append(row)
    table = format_table(rows, header)
    print(table, end="")
    output = args.output or RESULTS / f"bench_{device.type}.md"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(table)
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
