"""Two processes as two "nodes" (gloo on 127.0.0.1, one CPU process each) run a few DDP steps through
``python -m hubert_lit fit --config configs/trainer/ddp_cpu_2node.yaml``: both ranks must end with identical
weights. Rank 1 alone gets a NaN batch at one step: the non-finite-step guard must skip that step on *both* ranks
(the gradient all-reduce spreads the NaN), or the ranks would drift apart. One shard cannot be decoded at all, so
some steps give a rank a batch without rows (B = 0): that rank trains nothing but takes part in the step's
collectives, and the unreadable utterances are counted over both ranks.
"""

from __future__ import annotations

import csv
import sys
import tarfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from _fixtures import make_tone_dataset, run_gloo_nodes  # noqa: E402


@pytest.mark.slow
def test_two_nodes_end_with_identical_weights(tmp_path):
    shards, labels = make_tone_dataset(tmp_path / "data", speakers=2, utterances=8, shard_size=4, seed=0)
    # rank 1's batch of step 3: both utterances made undecodable (FLAC bytes zeroed), so it has no rows
    from hubert_lit.data.batching import BatchBudget
    from hubert_lit.data.dataset import ShardBatchDataset

    plan = ShardBatchDataset(
        str(shards), str(labels), train=True, budget=BatchBudget(batch_size=2), min_sample_size=8000, rank=1,
        world_size=2,
    )  # fmt: skip
    lost = plan.rank_batches(0)[3].rows
    tar_path = shards / f"{lost[0].shard}.tar"
    with tarfile.open(tar_path) as tar:
        members = [tar.getmember(f"{u.id}.flac") for u in lost]
    with open(tar_path, "r+b") as f:
        for m in members:
            f.seek(m.offset_data)
            f.write(b"\0" * m.size)
    dump = tmp_path / "weights"
    argv = [
        sys.executable,
        "-m",
        "hubert_lit",
        "fit",
        "--config",
        str(ROOT / "configs/trainer/ddp_cpu_2node.yaml"),
        "--model.preset=vanilla_tiny",
        "--model.lr=2e-3",
        "--model.warmup_steps=1",
        f"--data.train_shards={shards}",
        f"--data.train_labels={labels}",
        "--data.batch_size=2",
        "--data.min_sample_size=8000",
        "--data.num_workers=0",
        "--trainer.max_steps=6",
        "--trainer.log_every_n_steps=1",
        f"--run.root={tmp_path / 'runs'}",
        "--run.name=ddp",
        "--run.loggers=[csv]",
        "--checkpoint.every_n_train_steps=3",
        '--trainer.callbacks+={"class_path": "_fixtures.PoisonSteps", "init_args": {"steps": [2], "rank": 1}}',
        f'--trainer.callbacks+={{"class_path": "_fixtures.DumpFinalWeights", "init_args": {{"out_dir": "{dump}"}}}}',
    ]
    outputs = run_gloo_nodes(argv, tmp_path)
    r0 = torch.load(dump / "rank0.pt", weights_only=True)
    r1 = torch.load(dump / "rank1.pt", weights_only=True)
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["global_step"] == r1["global_step"] == 6
    assert r0["skipped"] == r1["skipped"] == 1  # the NaN on rank 1 skipped the step everywhere
    for key, value in r0["state_dict"].items():
        assert torch.equal(value, r1["state_dict"][key]), key
    # the two utterances of rank 1's empty batch, counted on rank 0 too (the count is summed over ranks)
    assert "epoch 0: 2 training utterance(s) could not be read and were left out" in outputs[0]
    rows = list(csv.DictReader(open(next((tmp_path / "runs" / "ddp" / "csv").rglob("metrics.csv")))))
    counts = [float(r["data/skipped_utterances"]) for r in rows if r.get("data/skipped_utterances")]
    assert counts[:4] == [0.0, 0.0, 0.0, 2.0] and counts[-1] >= 2.0
    # the checkpoint (written by rank 0) holds every rank's RNG states
    ckpt = torch.load(tmp_path / "runs" / "ddp" / "checkpoints" / "last.ckpt", weights_only=True)
    assert len(ckpt["hubert_lit_rng_states"]) == 2
