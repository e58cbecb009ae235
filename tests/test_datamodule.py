import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from shard_fixture import crop_offset, write_shards

from hubert_lit.data import ShardDataModule
from hubert_lit.data.batching import BatchBudget, Crop, crop_labels, split_for_worker
from hubert_lit.data.datamodule import ShardLoader
from hubert_lit.data.dataset import ShardBatchDataset, ShardDecodeWarning
from hubert_lit.data.label_files import (
    expected_label_frames,
    model_frames,
    save_label_meta,
    save_shard_labels,
)

MIN, MAX, BUDGET = 800, 8000, 16000  # samples: tiny versions of fairseq's 32000 / 250000 / 1.4 M
SHARD_LENGTHS = [
    [int(n) for n in np.random.default_rng(1).integers(600, 12000, 13)] + [500, 700],  # two too short
    [int(n) for n in np.random.default_rng(2).integers(900, 9000, 5)],
    [2600],
]
NUM_KEPT = sum(n >= MIN for lengths in SHARD_LENGTHS for n in lengths)


def write_labels(root, ids, lengths, rate, extra=None, drop=()):
    """Labels whose value is the frame index (num_classes large), so crops can be checked exactly."""
    save_label_meta(root, {"label_rate": rate, "num_classes": 100000, "features": {"kind": "test"}})
    for s, (shard_ids, shard_lengths) in enumerate(zip(ids, lengths)):
        labels = {}
        for utt, n in zip(shard_ids, shard_lengths):
            if utt not in drop:
                labels[utt] = np.arange(
                    expected_label_frames(n, rate) + (extra or {}).get(utt, 0), dtype=np.int32
                )
        save_shard_labels(root, f"shard-{s:06d}", labels)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    ids = write_shards(root / "shards", SHARD_LENGTHS)
    for rate in (50, 100):
        write_labels(root / f"labels{rate}", ids, SHARD_LENGTHS, rate)
    lengths = {u: n for shard_ids, ls in zip(ids, SHARD_LENGTHS) for u, n in zip(shard_ids, ls)}
    return root, lengths


def dataset(root, labels="labels100", **kwargs):
    options = dict(
        train=True,
        budget=BatchBudget(max_samples=BUDGET),
        max_sample_size=MAX,
        min_sample_size=MIN,
        sort_window=6,
        seed=3,
    )
    options.update(kwargs)
    return ShardBatchDataset(root / "shards", None if labels is None else root / labels, **options)


def as_lists(batches):
    return [(b["ids"], b["waveforms"], b.get("labels")) for b in batches]


def test_ranks_get_equal_batch_counts_and_disjoint_samples(corpus):
    root, lengths = corpus
    long_enough = {u for u, n in lengths.items() if n >= MIN}
    for epoch in (0, 1):
        seen, counts = [], []
        for rank in (0, 1):
            ds = dataset(root, rank=rank, world_size=2)
            ds.set_epoch(epoch)
            batches = list(ds)
            counts.append((len(batches), len(ds)))
            seen.append([u for b in batches for u in b["ids"]])
        stats = ds.epoch_stats(epoch)
        assert counts[0] == counts[1] and counts[0][0] == counts[0][1] > 0
        assert not set(seen[0]) & set(seen[1])
        assert len(seen[0] + seen[1]) == len(set(seen[0] + seen[1]))
        # Everything is accounted for: seen + dropped for equal counts = every utterance long enough.
        assert set(seen[0] + seen[1]) <= long_enough
        assert (
            len(seen[0]) + len(seen[1]) + stats["dropped_utterances"]
            == len(long_enough)
            == stats["utterances"]
        )
        assert stats["too_short"] == 2  # the two utterances under min_sample_size, counted ...
        assert not {u for u, n in lengths.items() if n < MIN} & set(
            seen[0] + seen[1]
        )  # ... and never yielded
        if epoch == 0:
            first = seen
    assert first != seen  # shard and batch order change with the epoch


def test_fewer_shards_than_ranks_times_workers_splits_by_sample(tmp_path):
    write_shards(tmp_path / "shards", [[3000 + 100 * k for k in range(12)]])  # one shard, 2 ranks x 2 workers
    shares = []
    for rank in (0, 1):
        batches = dataset(tmp_path, labels=None, budget=BatchBudget(batch_size=2), rank=rank, world_size=2)
        shares += [split_for_worker(batches.rank_batches(0), w, 2) for w in (0, 1)]
    ids = [[u.id for b in share for u in b.rows] for share in shares]
    assert all(ids) and len(sum(ids, [])) == len(set(sum(ids, []))) == 12


def test_validation_yields_every_utterance_once_across_ranks(corpus):
    root, lengths = corpus
    runs = [list(dataset(root, train=False, pad=True, rank=r, world_size=2)) for r in (0, 1)]
    assert len(runs[0]) == len(runs[1])
    ids = [u for run in runs for b in run for u in b["ids"]]
    assert sorted(ids) == sorted(u for u, n in lengths.items() if n >= MIN)
    for b in runs[0] + runs[1]:
        expected = [min(lengths[u], MAX) for u in b["ids"]]
        assert b["lengths"].tolist() == expected  # offset-0 crops, nothing lost to crop-to-shortest
        for row, n in enumerate(expected):
            assert crop_offset(b["waveforms"][row].numpy()) == 0
            assert not b["waveforms"][row, n:].any()
            assert (b["labels"][row, model_frames(n) :] == -100).all()
    assert [u for b in runs[0] for u in b["ids"]] == [
        u for b in dataset(root, train=False, pad=True, rank=0, world_size=2) for u in b["ids"]
    ]


@pytest.mark.parametrize("rate", [100, 50])
def test_labels_cropped_with_audio_and_mapped_to_50hz(corpus, rate):
    root, lengths = corpus
    offsets = set()
    for b in dataset(root, labels=f"labels{rate}"):
        length = b["waveforms"].shape[1]
        assert length == min(min(lengths[u] for u in b["ids"]), MAX)  # crop to shortest
        assert b["lengths"].tolist() == [length] * len(b["ids"])
        assert b["labels"].shape == (len(b["ids"]), model_frames(length))
        assert b["waveforms"].dtype == torch.float32 and b["labels"].dtype == torch.int64
        for row, utt in enumerate(b["ids"]):
            offset = crop_offset(b["waveforms"][row].numpy())
            assert 0 <= offset <= lengths[utt] - length
            offsets.add(offset)
            # label value = its frame index at `rate`; the crop starts at floor(offset * rate / 16000) and
            # 100 Hz labels keep every second one
            start = offset * rate // 16000
            expected = start + (rate // 50) * np.arange(model_frames(length))
            np.testing.assert_array_equal(b["labels"][row].numpy(), expected)
    assert len(offsets) > 3  # random offsets, not all 0


def test_crop_labels_tolerates_one_missing_frame():
    labels = np.arange(expected_label_frames(4000, 100) - 1)  # one frame short
    out = crop_labels(labels, 100, Crop(offset=2960, length=1040))  # ends 40 samples before the utterance end
    assert len(out) == model_frames(1040) == 3
    # start floor(2960 * 100 / 16000) = 18, then every second label: 18, 20, 22; label 22 is the missing one
    # and is replaced by the utterance's last label (21), the nearest in time
    assert out.tolist() == [18, 20, 21]


def test_label_length_mismatch_and_missing_labels_name_the_utterance(corpus, tmp_path):
    root, _ = corpus
    ids = write_shards(tmp_path / "shards", [[3000, 4000], [5000]])
    lengths = [[3000, 4000], [5000]]
    write_labels(tmp_path / "bad", ids, lengths, 100, extra={"100-0-0001": 2})
    with pytest.raises(
        ValueError,
        match=r"shard-000000\.labels\.npz: utterance '100-0-0001' has 25 labels but 4000 samples need 23",
    ):
        list(dataset(tmp_path, labels="bad"))
    write_labels(tmp_path / "ok", ids, lengths, 100, extra={"100-0-0001": 1})  # one frame off is fine
    assert len(list(dataset(tmp_path, labels="ok"))) == len(dataset(tmp_path, labels="ok"))
    write_labels(tmp_path / "missing", ids, lengths, 100, drop={"100-1-0000"})
    with pytest.raises(KeyError, match=r"shard-000001\.labels\.npz: no labels for utterance '100-1-0000'"):
        list(dataset(tmp_path, labels="missing"))


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_mid_epoch_replays_the_remaining_batches(corpus, workers):
    root, _ = corpus

    def loader(epoch=0):
        ds = dataset(root)
        return ShardLoader(ds, batch_size=None, num_workers=workers, epoch_fn=lambda: epoch)

    reference = loader()
    full = as_lists(reference)
    assert len(full) == len(reference) >= 5
    # the loader takes one batch from each worker in turn, and the workers take every n-th batch: plan order
    planned = reference.dataset.rank_batches(0)
    assert [b[0] for b in full] == [[u.id for u in p.rows] for p in planned]
    interrupted = loader()
    it = iter(interrupted)
    head = [next(it) for _ in range(3)]
    state = interrupted.state_dict()
    del it, interrupted
    resumed = loader()
    resumed.load_state_dict(state)
    rest = as_lists(resumed)
    for got, want in zip(as_lists(head) + rest, full, strict=True):
        assert got[0] == want[0]
        assert torch.equal(got[1], want[1]) and torch.equal(got[2], want[2])

    # A state saved after the last batch starts the next epoch afresh (not an empty remainder), and takes that
    # epoch from the state: on resume Lightning creates the iterator while its epoch counter is still the old
    # one.
    end_state = reference.state_dict()
    after = loader(epoch=0)
    after.load_state_dict(end_state)
    next_epoch = as_lists(after)
    fresh = as_lists(loader(epoch=1))
    assert [b[0] for b in next_epoch] == [b[0] for b in fresh] != [b[0] for b in full]


def test_release_stops_the_workers_and_keeps_the_position(corpus):
    """At the end of a fit or on an exception the DataModule releases its loaders: an interrupted pass's workers
    stop at once (the loader holds the iterator to report its position, which would keep them alive), and the
    state still says where the pass stood."""
    root, _ = corpus
    loader = ShardLoader(dataset(root), batch_size=None, num_workers=2, epoch_fn=lambda: 0)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    workers = list(it._workers)
    assert state["position"] == 2 and all(w.is_alive() for w in workers)
    loader.release()
    assert not any(w.is_alive() for w in workers)
    assert loader.state_dict() == state
    loader.release()  # a second release (teardown after on_exception) does nothing
    resumed = ShardLoader(dataset(root), batch_size=None, num_workers=0, epoch_fn=lambda: 0)
    resumed.load_state_dict(loader.state_dict())
    assert len(as_lists(resumed)) == len(loader) - 2


def test_datamodule_releases_its_loaders_on_teardown_and_exception(corpus, monkeypatch):
    root, _ = corpus
    dm = ShardDataModule(
        train_shards=str(root / "shards"),
        train_labels=str(root / "labels100"),
        batch_size=2,
        min_sample_size=MIN,
        num_workers=0,
    )
    released = []
    monkeypatch.setattr(ShardLoader, "release", lambda self: released.append(self))
    train, other = dm.train_dataloader(), dm.train_dataloader()
    dm.on_exception(RuntimeError("boom"))
    assert {id(loader) for loader in released} == {id(train), id(other)}
    released.clear()
    dm.teardown("fit")
    assert len(released) == 2


def test_batches_respect_max_batch_seconds_and_batch_size(corpus):
    root, _ = corpus
    for pad in (False, True):
        batches = list(dataset(root, pad=pad))
        assert all(b["waveforms"].shape[0] * b["waveforms"].shape[1] <= BUDGET for b in batches)
        assert max(b["waveforms"].shape[0] for b in batches) > 1  # utterances are packed, not one per batch
    sizes = [len(b["ids"]) for b in dataset(root, budget=BatchBudget(batch_size=4), sort_window=100)]
    assert max(sizes) == 4 and sum(sizes) == NUM_KEPT  # windows never span shards: shard 0 gives 4+4+4+1
    with pytest.raises(ValueError, match="cannot hold one utterance"):
        dataset(root, budget=BatchBudget(max_samples=MAX - 1))


def test_decode_failure_is_reported_and_keeps_the_batch_count(tmp_path):
    write_shards(tmp_path / "shards", [[3000, 3100, 3200, 3300], [4000, 4100]], corrupt=["100-0-0002"])
    ds = dataset(tmp_path, labels=None, budget=BatchBudget(batch_size=2))
    with pytest.warns(ShardDecodeWarning, match=r"'100-0-0002' of shard 'shard-000000'.*cannot decode FLAC"):
        batches = list(ds)
    assert len(batches) == len(ds) == 3
    ids = [u for b in batches for u in b["ids"]]
    assert sorted(ids) == ["100-0-0000", "100-0-0001", "100-0-0003", "100-1-0000", "100-1-0001"]
    assert [(u, s) for u, s, _ in ds.decode_failures] == [("100-0-0002", "shard-000000")]


def test_datamodule_builds_contract_batches(corpus):
    root, lengths = corpus
    dm = ShardDataModule(
        train_shards=str(root / "shards"),
        val_shards=str(root / "shards"),
        predict_shards=str(root / "shards"),
        train_labels=str(root / "labels50"),
        val_labels=str(root / "labels50"),
        max_batch_seconds=BUDGET / 16000,
        max_sample_size=MAX,
        min_sample_size=MIN,
        sort_window=6,
        num_workers=0,
        seed=5,
    )
    assert dm.num_classes == 100000
    dm.setup("fit")
    train = dm.train_dataloader()
    epoch0 = list(train)
    assert len(epoch0) == len(train)
    batch = epoch0[0]
    assert set(batch) == {"waveforms", "lengths", "labels", "ids", "skipped"}
    assert all(b["skipped"] == 0 for b in epoch0)
    assert batch["lengths"].dtype == torch.int64 and batch["labels"].shape[1] == model_frames(
        batch["waveforms"].shape[1]
    )
    dm.set_epoch(1)
    assert [b["ids"] for b in train] != [b["ids"] for b in epoch0]
    val = list(dm.val_dataloader())
    assert sum(len(b["ids"]) for b in val) == NUM_KEPT
    # predict (features for the next labels): every utterance, whole (no max_sample_size crop), shard by shard
    dm.setup("predict")
    predicted = {}
    for b in dm.predict_dataloader():
        assert "labels" not in b
        predicted.update(zip(b["ids"], b["lengths"].tolist()))
    assert predicted == lengths and max(lengths.values()) > MAX
    shard_order = [u.split("-")[1] for b in dm.predict_dataloader() for u in b["ids"]]
    assert shard_order == sorted(shard_order)
    with pytest.raises(ValueError, match="exactly one of max_batch_seconds and batch_size"):
        ShardDataModule(train_shards=str(root / "shards"), max_batch_seconds=1.0, batch_size=4)


class _Crash(RuntimeError):
    pass


class _RecordingModule(pl.LightningModule):
    """Records (epoch, batch index, ids, waveform sum) of every training step; optionally crashes at a
    step."""

    def __init__(self, crash_at: int | None = None):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.crash_at, self.seen = crash_at, []

    def training_step(self, batch, batch_idx):
        if self.global_step == self.crash_at:
            raise _Crash(f"simulated crash at step {self.global_step}")
        self.seen.append((self.current_epoch, batch_idx, batch["ids"], float(batch["waveforms"].sum())))
        return self.layer(batch["waveforms"].mean(1, keepdim=True)).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def _fit(root, ckpt_dir, module, ckpt_path=None, **checkpoint_every):
    dm = ShardDataModule(
        train_shards=str(root / "shards"),
        train_labels=str(root / "labels100"),
        max_batch_seconds=BUDGET / 16000,
        max_sample_size=MAX,
        min_sample_size=MIN,
        sort_window=6,
        num_workers=0,
        seed=7,
    )
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=-1, **checkpoint_every)],
    )
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return module.seen


def test_lightning_resume_sees_the_batches_of_an_uninterrupted_run(corpus, tmp_path):
    root, _ = corpus
    reference = _fit(root, tmp_path / "ref", _RecordingModule())
    per_epoch = len(reference) // 3
    assert [e for e, *_ in reference] == [0] * per_epoch + [1] * per_epoch + [2] * per_epoch
    # mid-epoch checkpoint (every 3 steps), and an end-of-epoch checkpoint, which Lightning restores
    # differently
    for name, every, crash in (
        ("mid", {"every_n_train_steps": 3}, per_epoch + 2),
        ("end", {}, per_epoch + 2),
    ):
        with pytest.raises(_Crash):
            _fit(root, tmp_path / name, _RecordingModule(crash_at=crash), **every)
        resumed = _fit(
            root, tmp_path / name, _RecordingModule(), ckpt_path=str(tmp_path / name / "last.ckpt")
        )
        assert resumed == reference[len(reference) - len(resumed) :], name
        assert len(resumed) >= 2 * per_epoch


def test_utterance_missing_from_its_tar_is_skipped_and_the_rest_is_read(tmp_path):
    import io
    import tarfile

    write_shards(tmp_path / "shards", [[3000, 3100, 3200, 3300, 3400]])
    tar_path = tmp_path / "shards" / "shard-000000.tar"
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w") as tar:  # drop sample 1, which index.json still lists
        for info, data in members:
            if not info.name.startswith("100-0-0001."):
                tar.addfile(info, io.BytesIO(data))
    ds = dataset(tmp_path, labels=None, budget=BatchBudget(batch_size=5), sort_window=5)
    with pytest.warns(ShardDecodeWarning, match=r"'100-0-0001'.*not found at its index position 1"):
        (batch,) = list(ds)
    assert sorted(batch["ids"]) == ["100-0-0000", "100-0-0002", "100-0-0003", "100-0-0004"]
    assert batch["skipped"] == 1
