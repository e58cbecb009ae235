"""Cluster jobs, simulated on this machine: SLURM variables, a stub ``scontrol`` on PATH, real SIGUSR1 and SIGKILL
sent to a running ``python -m hubert_lit fit``; resume from the newest state; the final state saved; one W&B
(offline) run and one growing CSV per run; progress lines without a terminal; the effective batch kept."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from _fixtures import cpu_fit_args, make_tone_dataset  # noqa: E402

from hubert_lit.checkpoint import resolve_resume, stale_hpc_checkpoints  # noqa: E402

STEPS = 24


@pytest.fixture(scope="module")
def tones(tmp_path_factory) -> tuple[Path, Path]:
    return make_tone_dataset(tmp_path_factory.mktemp("tones"), speakers=2, utterances=8, shard_size=8)


def _model_weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


def _step_of(path: Path) -> int:
    return torch.load(path, weights_only=True, mmap=True)["global_step"]


class Job:
    """``python -m hubert_lit fit`` as a SLURM job step would run it (SLURM variables, stub scontrol)."""

    def __init__(self, tmp: Path, tones: tuple[Path, Path], name: str) -> None:
        self.tmp, self.name = tmp, name
        self.run_dir = tmp / "runs" / name
        bin_dir = tmp / "bin"
        bin_dir.mkdir(exist_ok=True)
        self.requeues = tmp / "scontrol.log"
        stub = bin_dir / "scontrol"
        stub.write_text(f'#!/bin/sh\necho "$@" >> {self.requeues}\n')
        stub.chmod(0o755)
        self.env = {
            **os.environ,
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}",
            "OMP_NUM_THREADS": "1",
            "SLURM_JOB_ID": "4242",
            "SLURM_JOB_NAME": "hubert-test",
            "SLURM_NTASKS": "1",
            "SLURM_NTASKS_PER_NODE": "1",
            "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0",
            "SLURM_NODEID": "0",
            "SLURM_JOB_NUM_NODES": "1",
            "WANDB_SILENT": "true",
            "WANDB_MODE": "online",  # inherited from a cluster profile: the config's offline must win
        }
        self.args = [
            sys.executable,
            "-m",
            "hubert_lit",
            *cpu_fit_args(
                *tones,
                tmp / "runs",
                name,
                STEPS,
                "--model.preset=vanilla_tiny",
                "--model.num_classes=4",
                "--model.lr=2e-3",
                "--model.warmup_steps=2",
                "--data.num_workers=2",  # batches in flight when the signal lands
                "--checkpoint.every_n_train_steps=5",
                "--trainer.log_every_n_steps=1",
                "--run.loggers=[csv, wandb]",
                "--run.wandb_mode=offline",
                "--run.progress=log",
                "--run.progress_every=4",
            ),
        ]

    def start(self, *extra: str) -> subprocess.Popen:
        log = open(self.tmp / f"{self.name}.log", "a")
        return subprocess.Popen(
            [*self.args, *extra], cwd=self.tmp, env=self.env, stdout=log, stderr=subprocess.STDOUT
        )

    def run(self, *extra: str) -> int:
        return self.start(*extra).wait(timeout=300)

    def output(self) -> str:
        return (self.tmp / f"{self.name}.log").read_text()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before {path} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


@pytest.mark.slow
def test_signal_requeue_and_kill_resume_bit_identical_with_one_wandb_run(tmp_path, tones):
    straight = Job(tmp_path, tones, "straight")
    assert straight.run() == 0
    reference = _model_weights(straight.run_dir / "checkpoints" / "last.ckpt")

    job = Job(tmp_path, tones, "job")
    slow = '--trainer.callbacks+={"class_path": "_fixtures.SlowSteps", "init_args": {"seconds": 0.1}}'
    # 1. SIGUSR1 from SLURM, 90 s before the time limit: saved at a step boundary, requeued, stopped
    marker = tmp_path / "step6"
    mark = f'--trainer.callbacks+={{"class_path": "_fixtures.MarkStep", "init_args": {{"step": 6, "path": "{marker}"}}}}'
    proc = job.start(mark, slow)
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGUSR1)
    assert proc.wait(timeout=120) == 0
    assert job.requeues.read_text().split() == ["requeue", "4242"]
    saved = _step_of(job.run_dir / "checkpoints" / "last.ckpt")
    assert 6 <= saved < STEPS
    assert not list(job.run_dir.glob("hpc_ckpt_*"))  # Lightning's mid-step handler did not run
    assert f"SIGUSR1 received: saved the state of step {saved}" in job.output()
    first_id = (job.run_dir / "wandb_id").read_text().strip()

    # 2. an old Lightning hpc checkpoint lies around; the requeued job is killed (node failure, no signal) later
    (job.run_dir / "hpc_ckpt_1.ckpt").write_bytes((job.run_dir / "checkpoints" / "last.ckpt").read_bytes())
    marker = tmp_path / "step16"
    mark = f'--trainer.callbacks+={{"class_path": "_fixtures.MarkStep", "init_args": {{"step": 16, "path": "{marker}"}}}}'
    proc = job.start(mark, slow)
    _wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert f"resuming from {job.run_dir / 'checkpoints' / 'last.ckpt'} at step {saved}" in job.output()
    assert _step_of(job.run_dir / "checkpoints" / "last.ckpt") == 15  # the newest periodic state

    # 3. relaunched: the newest state (step 15, not the stale hpc checkpoint), to the end
    assert job.run() == 0
    assert f"resuming from {job.run_dir / 'checkpoints' / 'last.ckpt'} at step 15" in job.output()
    assert not (job.run_dir / "hpc_ckpt_1.ckpt").exists()
    final = job.run_dir / "checkpoints" / "last.ckpt"
    assert _step_of(final) == STEPS
    weights = _model_weights(final)
    assert all(torch.equal(weights[k], reference[k]) for k in reference)  # bit-identical to the straight run

    # one W&B run (offline, although WANDB_MODE=online was inherited) and one CSV log across the launches
    assert (job.run_dir / "wandb_id").read_text().strip() == first_id
    offline_runs = sorted(job.run_dir.glob("wandb/offline-run-*"))
    assert len(offline_runs) == 3 and all(p.name.endswith(f"-{first_id}") for p in offline_runs)
    assert [p.name for p in (job.run_dir / "csv").iterdir()] == ["version_0"]
    with open(job.run_dir / "csv" / "version_0" / "metrics.csv") as f:
        steps = sorted({int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")})
    assert steps[0] < saved and steps[-1] >= STEPS - 2  # rows of the first and of the last launch

    # progress lines without a terminal
    assert "step 4/24 (16.7%) | loss " in straight.output() and " | ETA " in straight.output()


def _fake_checkpoint(path: Path, step: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"global_step": step, "state_dict": {"model.w": torch.zeros(2)}}, path)
    return path


def test_resolve_resume_takes_the_newest_readable_state(tmp_path):
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    assert resolve_resume(run, ckpts) is None
    _fake_checkpoint(ckpts / "step00000010.ckpt", 10)
    _fake_checkpoint(ckpts / "last.ckpt", 10)
    hpc = _fake_checkpoint(run / "hpc_ckpt_2.ckpt", 7)
    point = resolve_resume(run, ckpts)
    assert point.path.name == "last.ckpt" and point.step == 10  # a tie goes to last.ckpt
    assert stale_hpc_checkpoints(run, point) == [hpc]
    _fake_checkpoint(run / "hpc_ckpt_3.ckpt", 12)
    assert resolve_resume(run, ckpts).path.name == "hpc_ckpt_3.ckpt"
    (ckpts / "last.ckpt").write_bytes(b"")  # a 0-byte last.ckpt (full disk): skipped, with the reason
    _fake_checkpoint(ckpts / "step00000020.ckpt", 20).write_bytes(b"truncated")
    warnings: list[str] = []
    point = resolve_resume(run, ckpts, warn=warnings.append)
    assert point.path.name == "hpc_ckpt_3.ckpt"
    assert any("last.ckpt is empty" in w for w in warnings) and any(
        "step00000020.ckpt" in w for w in warnings
    )


@pytest.fixture
def lightning_log(caplog):
    """Lightning's info messages (its logger does not propagate to the root logger pytest captures)."""
    import logging

    logger = logging.getLogger("lightning.pytorch")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def test_final_state_is_saved_and_progress_and_effective_batch(tmp_path, tones, capsys, lightning_log):
    from hubert_lit.cli import lightning_main

    args = cpu_fit_args(
        *tones,
        tmp_path,
        "final",
        7,
        "--model.preset=vanilla_tiny",
        "--model.warmup_steps=1",
        "--checkpoint.every_n_train_steps=5",
        "--run.progress=log",
        "--run.progress_every=3",
        "--run.target_global_batch_seconds=4.8",
        "--data.batch_size=null",
        "--data.max_batch_seconds=2.4",
        "--data.max_sample_size=32000",
    )
    assert lightning_main(args) == 0
    last = torch.load(tmp_path / "final" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 7  # not 5, the last periodic step
    out = capsys.readouterr()
    text = lightning_log.text
    assert "fit ended: saved the state of step 7" in text
    assert "effective batch: 1 rank(s) x 2 accumulated x 2.4 s = 4.8 s" in text
    # two batches per optimizer step: the loader delivered 14 batches for 7 steps
    loader = last["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (loader["epoch"], loader["steps"]) == (0, 14)
    assert [line.split(" | ")[0] for line in out.out.splitlines() if line.startswith("step ")] == [
        "step 3/7 (42.9%)",
        "step 6/7 (85.7%)",
        "step 7/7 (100.0%)",
    ]


def test_accumulation_arithmetic():
    from hubert_lit.cli import accumulation_for

    assert accumulation_for(1168.0, 36.5, 32) == (1, 1168.0)
    assert accumulation_for(1168.0, 36.5, 8) == (4, 1168.0)
    assert accumulation_for(1168.0, 36.5, 24) == (1, 876.0)  # 3 nodes: no integer fits, the CLI warns
    assert accumulation_for(100.0, 36.5, 64) == (1, 2336.0)
