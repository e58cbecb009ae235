"""Elastic resume: a loader state saved with W ranks and n workers resumes at the same global batch with W' ranks
and n' workers, and the run consumes the same sequence of global batches as an uninterrupted one; loader states
of hubert-lit 0.1.0 are converted where that is exact and refused (saying what to do) where it is not."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from shard_fixture import write_shards  # noqa: E402

from hubert_lit.data.batching import BatchBudget  # noqa: E402
from hubert_lit.data.datamodule import LOADER_STATE_FORMAT, LoaderStateError, ShardLoader  # noqa: E402
from hubert_lit.data.dataset import ShardBatchDataset  # noqa: E402

# 30 utterances in 4 shards, windows of at most 4 utterances, 2 per batch: 6 + 4 + 4 + 4 = 18 global batches
LENGTHS = [[2000 + 137 * k for k in range(9)], [2500 + 91 * k for k in range(8)], [1900 + 53 * k for k in range(7)],
           [3000 + 71 * k for k in range(6)]]  # fmt: skip


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("elastic") / "shards"
    write_shards(root, LENGTHS)
    return root


def make_loader(
    shards: Path, rank: int = 0, world: int = 1, workers: int = 0, batch_size: int = 2, epoch: int = 0, **kw
) -> ShardLoader:
    ds = ShardBatchDataset(
        shards, train=True, budget=BatchBudget(batch_size=batch_size), min_sample_size=800,
        max_sample_size=2400, sort_window=4, seed=11, rank=rank, world_size=world,
    )  # fmt: skip
    return ShardLoader(ds, batch_size=None, num_workers=workers, epoch_fn=lambda: epoch, **kw)


def run_ranks(shards: Path, world: int, workers: int, state: dict | None = None, steps: int | None = None):
    """Steps of ``world`` ranks in lock step (from ``state`` if given): the batches in global order (step by
    step, rank by rank), rank 0's loader state at the end, and the loaders."""
    loaders = [make_loader(shards, r, world, workers) for r in range(world)]
    for dl in loaders:
        if state is not None:
            dl.load_state_dict(state)
    iters = [iter(dl) for dl in loaders]
    consumed, step = [], 0
    while steps is None or step < steps:
        batches = [next(it, None) for it in iters]
        if all(b is None for b in batches):
            break
        assert None not in batches, "ranks ran out of batches at different steps"
        consumed += batches
        step += 1
    return consumed, loaders[0].state_dict(), loaders


def assert_same(got: list[dict], want: list[dict]) -> None:
    assert [b["ids"] for b in got] == [b["ids"] for b in want]
    for g, w in zip(got, want):
        assert torch.equal(g["waveforms"], w["waveforms"]) and torch.equal(g["lengths"], w["lengths"])


@pytest.mark.parametrize(
    ("before", "after", "steps"),
    [((4, 0), (3, 0), 2), ((2, 0), (1, 0), 3), ((1, 0), (2, 0), 5), ((1, 2), (1, 0), 4), ((2, 2), (3, 1), 1)],
    ids=["W4->3", "W2->1", "W1->2", "workers2->0", "W2n2->W3n1"],
)
def test_resume_with_other_ranks_and_workers_continues_the_global_sequence(shards, before, after, steps):
    reference, *_ = run_ranks(shards, 1, 0)  # the epoch's global batches, one process
    total = len(reference)
    assert total == 18
    (world, workers), (world2, workers2) = before, after
    head, state, _ = run_ranks(shards, world, workers, steps=steps)
    position = steps * world
    assert state["format"] == LOADER_STATE_FORMAT and (state["epoch"], state["position"]) == (0, position)
    assert state["steps"] == steps and not state["epoch_complete"]

    restored = make_loader(shards, 0, world2, workers2)
    restored.load_state_dict(state)
    # Lightning counts the epoch's batches from its start and reads len(loader) to know where the epoch ends
    assert len(restored) == max(total // world2, steps + (total - position) // world2)
    tail, end, _ = run_ranks(shards, world2, workers2, state=state)
    stop = position + world2 * ((total - position) // world2)  # the remainder does not fill a step
    assert_same(head + tail, reference[:stop])
    assert end["epoch_complete"] and end["position"] == stop and end["steps"] == steps + len(tail) // world2

    # the next pass is epoch 1 from its first batch, as for an uninterrupted run with world2 ranks
    epoch1, *_ = run_ranks(shards, world2, 0, state=end, steps=2)
    uninterrupted = [make_loader(shards, r, world2, epoch=1) for r in range(world2)]
    want = [b for step in zip(*[list(dl)[:2] for dl in uninterrupted]) for b in step]
    assert_same(epoch1, want)


def test_length_before_the_state_is_restored_allows_for_a_grown_world(shards):
    """Lightning asks len(loader) before it restores the state; with steps_fn reporting the batches it already
    trained in the epoch, the answer is an upper bound of what the restored pass needs."""
    trained = 5
    dl = make_loader(shards, 0, 2, steps_fn=lambda: trained)
    assert len(dl) == max(18 // 2, trained + (18 - trained) // 2) == 11
    assert len(make_loader(shards, 0, 2, steps_fn=lambda: 0)) == 9


def _v010_state(epoch: int, yielded: int, world: int, workers: int, complete: bool = False) -> dict:
    """A loader state as hubert-lit 0.1.0 saved it (StatefulDataLoader around ShardBatchDataset.state_dict)."""
    dataset_state = {"epoch": epoch, "yielded": yielded, "num_workers": max(workers, 1), "world_size": world}
    if workers == 0:
        loader = {"_num_yielded": yielded, "_sampler_iter_yielded": yielded, "dataset_state": dataset_state,
                  "fetcher_state": {"dataset_iter_state": None, "fetcher_ended": False}}  # fmt: skip
    else:
        per_worker = {**dataset_state, "yielded": yielded // workers}
        loader = {"_snapshot": {"_main_snapshot": {"_num_workers": workers, "_sampler_iter_yielded": yielded},
                                "_worker_snapshots": {f"worker_{w}": {"worker_id": w, "dataset_state": per_worker}
                                                      for w in range(workers)}}}  # fmt: skip
    return {"loader": loader, "epoch": epoch, "epoch_complete": complete}


@pytest.mark.parametrize("workers", [0, 1])
def test_single_process_states_of_version_010_are_converted(shards, workers):
    reference, *_ = run_ranks(shards, 1, 0)
    dl = make_loader(shards)
    dl.load_state_dict(_v010_state(0, 6, 1, workers))
    assert dl.state_dict()["position"] == 6
    assert_same(list(dl), reference[6:])


def test_other_states_of_version_010_are_refused_saying_what_to_do(shards):
    for world, workers in ((2, 0), (1, 2)):
        with pytest.raises(
            LoaderStateError,
            match=rf"hubert-lit 0.1.0 .*world_size={world} and num_workers={max(workers, 1)}.*"
            r"end of an epoch, or start epoch 0 over",
        ):
            make_loader(shards, 0, world).load_state_dict(_v010_state(0, 4, world, workers))
    # saved after the epoch's last batch: the next epoch starts afresh, whatever the old layout was
    dl = make_loader(shards, 0, 2)
    dl.load_state_dict(_v010_state(0, 7, 2, 0, complete=True))
    assert dl.state_dict()["epoch"] == 0 and next(iter(dl))["ids"] == [
        u.id for u in dl.dataset.rank_batches(1)[0].rows
    ]


def test_a_state_of_another_batch_plan_is_refused(shards):
    dl = make_loader(shards)
    it = iter(dl)
    next(it)
    state = dl.state_dict()
    with pytest.raises(
        LoaderStateError, match=r"batch settings .* changed since the checkpoint.*start epoch 0 over"
    ):
        make_loader(shards, batch_size=3).load_state_dict(state)
    with pytest.raises(LoaderStateError, match="unknown format"):
        make_loader(shards).load_state_dict({"format": "something/9", "epoch": 0})


@pytest.mark.slow
def test_two_gloo_processes_save_and_one_process_resumes(tmp_path):
    """A real DDP run (2 gloo processes) checkpoints mid-epoch; one process resumes it and trains the global
    batches the two would have trained next, then the next epoch."""
    from _fixtures import cpu_fit_args, make_tone_dataset, run_gloo_nodes

    shards, labels = make_tone_dataset(tmp_path / "data", speakers=2, utterances=8, shard_size=4, seed=0)
    record = tmp_path / "record"
    callback = f'--trainer.callbacks+={{"class_path": "_fixtures.RecordBatches", "init_args": {{"out_dir": "{record}"}}}}'
    model = ["--model.preset=vanilla_tiny", "--model.lr=2e-3", "--model.warmup_steps=1"]
    two = [
        sys.executable, "-m", "hubert_lit", *cpu_fit_args(shards, labels, tmp_path / "runs", "two", 3),
        "--config", str(ROOT / "configs/trainer/ddp_cpu_2node.yaml"), *model,
        "--checkpoint.every_n_train_steps=3", callback,
    ]  # fmt: skip
    run_gloo_nodes(two, tmp_path)
    ckpt = tmp_path / "runs" / "two" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert (state["epoch"], state["position"], state["world_size"]) == (0, 6, 2)

    one = [sys.executable, "-m", "hubert_lit", *cpu_fit_args(shards, labels, tmp_path / "runs", "one", 7),
           *model, f"--ckpt_path={ckpt}", callback]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT}{os.pathsep}{TESTS}",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "disabled",
    }
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run(one, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "resumed at global batch 6 of 8" in done.stdout + done.stderr

    steps = [json.loads(line) for f in sorted(record.glob("*.jsonl")) for line in f.read_text().splitlines()]
    by_step = {(r["step"], r["rank"]): r["ids"] for r in steps}

    def plan(epoch: int) -> list[list[str]]:
        ds = ShardBatchDataset(
            shards, labels, train=True, budget=BatchBudget(batch_size=2), min_sample_size=8000
        )
        return [[u.id for u in b.rows] for b in ds.rank_batches(epoch)]

    epoch0, epoch1 = plan(0), plan(1)
    assert len(epoch0) == 8
    assert [by_step[(s, r)] for s in range(3) for r in range(2)] == epoch0[:6]  # two ranks: g on rank g mod 2
    assert [by_step[(s, 0)] for s in range(3, 7)] == epoch0[6:] + epoch1[:2]  # one rank goes on from batch 6
