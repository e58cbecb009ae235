"""How many intra-op threads the demo's training stages should use, by measurement.

A fit stage of ``make demo`` shares the machine with its data-loading worker (``data.num_workers: 1``) and with
whatever else runs there. More threads speed up the step's matmuls and convolutions, but a descheduled thread
stalls every parallel region. Measured on the shared 2-core development box (the demo's own step, below): one
thread 149-166 audio-s/s; two threads 4-37 while other jobs ran (13 with no loader worker at all, so the other jobs
did most of the harm) and 173 in a quiet moment. So the demo measures on the machine it runs on, and asks more
threads to win clearly: for each candidate count (1, 2, 4, ... up to the cores) it runs its own training step
(``configs/demo.yaml``: its model, its data loader with its worker, forward + loss + backward + AdamW, through
Lightning) for a few seconds (at most 10 after a short warm-up, so a bad count costs little) in a fresh process
with ``OMP_NUM_THREADS`` set; a larger count is chosen only when it is at least ``--margin`` (25 %) faster than
the best smaller one (a count that is a little faster on a quiet machine can be ten times slower once something
else runs), and the search stops at the first count that is not. About 20-30 s on a 2-core machine.

    python experiments/demo_threads.py                 # needs the demo's shards and MFCC labels (make demo's first stages)
    python experiments/demo_threads.py --reserve 1     # leave a core per loader worker: candidates up to cores - 1

``experiments/demo.py`` calls :func:`choose_threads` before its first training stage and keeps the result in
``runs/demo/threads.json``; ``OMP_NUM_THREADS`` set by the user wins.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_SECONDS = 10.0  # per candidate, after the warm-up
MARGIN = 0.25  # how much faster a larger thread count must be


def candidates(cpus: int, reserved: int = 0) -> list[int]:
    """1, 2, 4, ... and ``cpus - reserved`` itself (at least 1)."""
    free = max(cpus - reserved, 1)
    counts, n = [], 1
    while n < free:
        counts.append(n)
        n *= 2
    return [*counts, free]


def choose(rates: dict[int, float], margin: float = MARGIN) -> int:
    """The thread count to use: a larger count only when it is ``margin`` faster than the best smaller one."""
    best = min(rates)
    for threads in sorted(rates):
        if rates[threads] >= rates[best] * (1 + margin):
            best = threads
    return best


def measure(config: Path, threads: int, steps: int, warmup: int) -> float:
    """Audio seconds per second of the demo's training step with ``threads`` intra-op threads (fresh process)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, __file__, "--config", str(config), "--steps", str(steps), "--warmup", str(warmup)]
    out = subprocess.run(cmd + ["--child"], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"thread measurement with {threads} threads failed:\n{out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["audio_s_per_s"])


def choose_threads(
    config: Path,
    cpus: int | None = None,
    reserved: int = 0,
    steps: int = 30,
    warmup: int = 3,
    margin: float = MARGIN,
    log=print,
) -> tuple[int, dict[int, float]]:
    """Measure the candidates in increasing order (stopping at the first that does not win) and choose; a single
    candidate is chosen without measuring."""
    counts = candidates(cpus or os.cpu_count() or 1, reserved)
    if len(counts) == 1:
        log(f"  {counts[0]} thread(s): the only candidate")
        return counts[0], {}
    rates: dict[int, float] = {}
    for threads in counts:
        rates[threads] = measure(config, threads, steps, warmup)
        log(f"  {threads} thread(s): {rates[threads]:.0f} audio-s/s")
        if choose(rates, margin) != threads:  # more threads did not pay: larger counts will not either
            break
    return choose(rates, margin), rates


def _child(config: Path, steps: int, warmup: int) -> None:
    """Run ``warmup + steps`` training steps of the demo config; print the rate of the last ``steps``."""
    import lightning.pytorch as pl
    import torch
    import yaml

    from hubert_lit.data.datamodule import ShardDataModule
    from hubert_lit.lit.pretrain import HubertPretrainModule

    cfg = yaml.safe_load(config.read_text())
    data_keys = ("train_shards", "train_labels", "max_batch_seconds", "max_sample_size", "min_sample_size")
    data = ShardDataModule(
        **{k: cfg["data"][k] for k in data_keys}, num_workers=cfg["data"]["num_workers"], pin_memory=False
    )
    # the stage's own LR schedule (its first steps are the ones measured)
    module = HubertPretrainModule(**{"max_steps": cfg["trainer"]["max_steps"], **cfg["model"]})

    class Clock(pl.Callback):
        audio, start = 0.0, None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup:
                self.start = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.start is not None:
                self.audio += float(batch["lengths"].sum()) / 16000
                trainer.should_stop = (
                    time.perf_counter() - self.start > MAX_SECONDS
                )  # a slow count costs little

    clock = Clock()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=warmup + steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        gradient_clip_val=10.0,
        callbacks=[clock],
    )
    torch.manual_seed(0)
    trainer.fit(module, data)
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "audio_s_per_s": clock.audio / (time.perf_counter() - clock.start),
            }
        )
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument(
        "--steps", type=int, default=30, help="timed training steps per candidate (at most 10 s)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (loader start, caches)")
    parser.add_argument("--margin", type=float, default=MARGIN, help="how much faster more threads must be")
    parser.add_argument("--cores", type=int, default=None, help="cores to plan for (default: all)")
    parser.add_argument(
        "--reserve", type=int, default=0, help="cores not to use (e.g. one per loader worker)"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.config, args.steps, args.warmup)
        return 0
    threads, rates = choose_threads(
        args.config, args.cores, args.reserve, steps=args.steps, warmup=args.warmup, margin=args.margin
    )
    measured = ", ".join(f"{t}: {r:.0f}" for t, r in rates.items())
    print(f"chosen: {threads} thread(s)" + (f" ({measured} audio-s/s)" if rates else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
