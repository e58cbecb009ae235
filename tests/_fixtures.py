"""Tiny learnable corpus for the pretraining tests: tone sequences whose 50 Hz labels are the tone index.

Each utterance is a sequence of 0.2-0.5 s segments, each a sine at one of ``TONES`` Hz plus a little noise; the
label of a model frame is the tone under the frame's centre. Masked frames can be predicted from their
neighbours, so a few optimizer steps lower the loss. The corpus goes through the real shard tool; the labels are
written in the label-folder format (contract 3) with the suite's own writer.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
TONES = (220.0, 550.0, 1300.0, 2900.0)


def _tone_utterance(rng: np.random.Generator, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    n = int(seconds * SAMPLE_RATE)
    tone_of_sample = np.empty(n, dtype=np.int64)
    pos = 0
    while pos < n:
        seg = int(rng.uniform(0.2, 0.5) * SAMPLE_RATE)
        tone_of_sample[pos : pos + seg] = rng.integers(len(TONES))
        pos += seg
    t = np.arange(n) / SAMPLE_RATE
    audio = 0.3 * np.sin(2 * np.pi * np.asarray(TONES)[tone_of_sample] * t) + 0.01 * rng.standard_normal(n)
    return audio.astype(np.float32), tone_of_sample


def frame_labels(tone_of_sample: np.ndarray) -> np.ndarray:
    """50 Hz labels: the tone at the centre of each model frame (``floor((n - 400) / 320) + 1`` frames)."""
    frames = (len(tone_of_sample) - 400) // 320 + 1
    return tone_of_sample[np.arange(frames) * 320 + 200]


def write_tone_split(root: Path, speakers: int, utterances: int, seed: int) -> dict[str, np.ndarray]:
    """A LibriSpeech-layout split under ``root`` (``<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` + trans.txt);
    returns utterance id -> 50 Hz labels."""
    rng = np.random.default_rng(seed)
    labels = {}
    for s in range(speakers):
        spk, chapter = str(100 + s + 10 * seed), "7"
        folder = root / spk / chapter
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for u in range(utterances):
            utt_id = f"{spk}-{chapter}-{u:04d}"
            audio, tones = _tone_utterance(rng, rng.uniform(1.0, 1.6))
            sf.write(folder / f"{utt_id}.flac", audio, SAMPLE_RATE, subtype="PCM_16")
            labels[utt_id] = frame_labels(tones)
            lines.append(f"{utt_id} TONES")
        (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return labels


def make_tone_dataset(
    out: Path, speakers: int = 2, utterances: int = 8, shard_size: int = 8, seed: int = 0
) -> tuple[Path, Path]:
    """Audio tree -> ``python -m hubert_lit shard`` -> labels folder. Returns (shard folder, labels folder)."""
    from hubert_lit.data import shard
    from hubert_lit.data.label_files import save_label_meta, save_shard_labels
    from hubert_lit.data.shardio import load_index

    labels = write_tone_split(out / "audio", speakers, utterances, seed)
    shards, label_dir = out / "shards", out / "labels"
    rc = shard.main(
        [
            "--root",
            str(out / "audio"),
            "--out",
            str(shards),
            "--shard-size",
            str(shard_size),
            "--workers",
            "1",
        ]
    )
    assert rc == 0, f"shard tool failed with status {rc}"
    index = load_index(shards)
    by_shard: dict[str, dict[str, np.ndarray]] = {}
    for utt in index.utterances:
        by_shard.setdefault(utt.shard, {})[utt.id] = labels[utt.id]
    for name, shard_labels in by_shard.items():
        save_shard_labels(label_dir, name, shard_labels)
    save_label_meta(
        label_dir, {"label_rate": 50, "num_classes": len(TONES), "features": {"kind": "tone index"}}
    )
    return shards, label_dir


def cpu_fit_args(
    shards: Path,
    labels: Path,
    run_root: Path,
    name: str,
    steps: int,
    *extra: str,
    batch_size: int = 2,
    num_workers: int = 0,
) -> list[str]:
    """``fit`` arguments of a tiny CPU run on a tone corpus (no validation, CSV logs only); add the model."""
    return [
        "fit",
        "--config",
        str(Path(__file__).resolve().parent.parent / "configs/trainer/cpu_demo.yaml"),
        f"--data.train_shards={shards}",
        f"--data.train_labels={labels}",
        f"--data.batch_size={batch_size}",
        "--data.min_sample_size=8000",
        f"--data.num_workers={num_workers}",
        f"--trainer.max_steps={steps}",
        "--trainer.num_sanity_val_steps=0",
        f"--run.root={run_root}",
        f"--run.name={name}",
        "--run.loggers=[csv]",
        *extra,
    ]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a test's process group)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_gloo_nodes(argv: list[str], cwd: Path, nodes: int = 2, timeout: float = 240) -> list[str]:
    """Run ``argv`` as ``nodes`` one-process nodes of a gloo group on 127.0.0.1 (Lightning's env-var launch) and
    return each node's output; fails naming the node when one exits non-zero, kills all on a timeout."""
    tests = Path(__file__).resolve().parent
    base = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(nodes),
        "PYTHONPATH": f"{tests.parent}{os.pathsep}{tests}",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
    }
    procs = [
        subprocess.Popen(
            argv,
            cwd=cwd,
            env={**base, "NODE_RANK": str(node)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for node in range(nodes)
    ]
    outputs = []
    for p in procs:
        try:
            outputs.append(p.communicate(timeout=timeout)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for node, (p, out) in enumerate(zip(procs, outputs, strict=True)):
        assert p.returncode == 0, f"node {node} failed:\n{out[-3000:]}"
    return outputs


# ----------------------------------------------------------------------------------------------- test callbacks
# Used through the CLI as `--trainer.callbacks+=_fixtures.<Name>` (tests/ is on PYTHONPATH in the tests).
import lightning.pytorch as pl  # noqa: E402
import torch  # noqa: E402


class CrashAtStep(pl.Callback):
    """Simulate a killed job: raise when training step ``step`` (0-based global step) starts."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


class PoisonSteps(pl.Callback):
    """Replace the waveforms of the given global steps with NaN (on ``rank`` only, or on all ranks if None)."""

    def __init__(self, steps: list[int], rank: int | None = None) -> None:
        self.steps, self.rank = set(steps), rank

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.steps and self.rank in (None, trainer.global_rank):
            batch["waveforms"].fill_(float("nan"))


class SaveWeightsPerStep(pl.Callback):
    """Keep a copy of the model weights after every optimizer step (``self.history[step]``)."""

    def __init__(self) -> None:
        self.history: dict[int, dict[str, torch.Tensor]] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.history[trainer.global_step] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}


class DumpFinalWeights(pl.Callback):
    """Write this rank's final weights and skipped-step counter to ``<out_dir>/rank<r>.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module) -> None:
        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "state_dict": pl_module.state_dict(),
                "skipped": pl_module._skipped_steps,
                "global_step": trainer.global_step,
                "world_size": trainer.world_size,
            },
            Path(self.out_dir) / f"rank{trainer.global_rank}.pt",
        )


class MarkStep(pl.Callback):
    """Create ``path`` when optimizer step ``step`` has been taken (a test process waits for it, then signals)."""

    def __init__(self, step: int, path: str) -> None:
        self.step, self.path = step, path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step and not Path(self.path).exists():
            Path(self.path).write_text(str(trainer.global_step))


class SlowSteps(pl.Callback):
    """Sleep ``seconds`` after every step, so a signal sent by the test lands while the run is still going."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        import time

        time.sleep(self.seconds)


class RecordBatches(pl.Callback):
    """Append ``{"step", "rank", "world_size", "ids"}`` of every training batch to ``<out_dir>/batches.jsonl``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = out_dir

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        import json

        Path(self.out_dir).mkdir(parents=True, exist_ok=True)
        record = {
            "step": trainer.global_step,
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "ids": list(batch["ids"]),
        }
        with open(Path(self.out_dir) / f"batches.rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
