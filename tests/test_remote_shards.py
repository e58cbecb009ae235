"""Shards and labels read from anywhere: an HTTP server on 127.0.0.1 (with dropped connections, truncated and
failing files), ``pipe:`` commands, fsspec file systems, a local cache; names from a remote index are checked
before they go into a URL or a command."""

from __future__ import annotations

import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from http_fixture import ShardServer  # noqa: E402
from shard_fixture import write_shards  # noqa: E402

from hubert_lit.data.batching import BatchBudget  # noqa: E402
from hubert_lit.data.datamodule import ShardLoader  # noqa: E402
from hubert_lit.data.dataset import ShardBatchDataset, ShardDecodeWarning  # noqa: E402
from hubert_lit.data.fetch import RetryPolicy  # noqa: E402
from hubert_lit.data.label_files import expected_label_frames, save_label_meta, save_shard_labels  # noqa: E402
from hubert_lit.data.locations import LocationError, parse_location  # noqa: E402
from hubert_lit.data.shardio import ShardFormatError, load_index  # noqa: E402

LENGTHS = [[3000, 4100, 5200, 6300, 2900, 3800], [4500, 3300, 5900, 2700], [3600, 4800, 3100, 5000, 4200]]
FAST = RetryPolicy(retries=3, backoff=0.01, timeout=10)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("remote")
    ids = write_shards(root / "shards", LENGTHS)
    save_label_meta(root / "labels", {"label_rate": 50, "num_classes": 1000, "features": {"kind": "test"}})
    for s, (shard_ids, lengths) in enumerate(zip(ids, LENGTHS)):
        labels = {u: np.arange(expected_label_frames(n, 50)) % 1000 for u, n in zip(shard_ids, lengths)}
        save_shard_labels(root / "labels", f"shard-{s:06d}", labels)
    return root


@pytest.fixture
def server(corpus, tmp_path):
    """The corpus (shards and labels) served from a copy that a test may damage."""
    served = tmp_path / "served"
    shutil.copytree(corpus, served)
    srv = ShardServer(served)
    yield srv
    srv.stop()


def loader(shards, labels=None, workers=0, retry=FAST, **kwargs) -> ShardLoader:
    options = dict(
        train=True, budget=BatchBudget(batch_size=2), max_sample_size=4000, min_sample_size=800, seed=5
    )
    options.update(kwargs)
    ds = ShardBatchDataset(shards, labels, retry=retry, **options)
    return ShardLoader(ds, batch_size=None, num_workers=workers)


def epoch(dl: ShardLoader, number: int = 0) -> list[dict]:
    dl.dataset.set_epoch(number)
    return list(dl)


def assert_same_batches(got: list[dict], want: list[dict]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g["ids"] == w["ids"] and g["skipped"] == w["skipped"]
        assert torch.equal(g["waveforms"], w["waveforms"]) and torch.equal(g["lengths"], w["lengths"])
        assert ("labels" in g) == ("labels" in w)
        if "labels" in g:
            assert torch.equal(g["labels"], w["labels"])


def shard_gets(srv: ShardServer, prefix: str = "") -> dict[str, int]:
    """How many times each shard tar was requested."""
    return {name: srv.gets(f"{prefix}{name}") for name in (f"shard-{s:06d}.tar" for s in range(len(LENGTHS)))}


def test_http_shards_and_labels_give_the_local_batches(corpus, server):
    local = epoch(loader(corpus / "shards", corpus / "labels"))
    remote = loader(f"{server.url}/shards", f"{server.url}/labels")
    assert_same_batches(epoch(remote), local)
    # each shard is fetched once per epoch by the single reader ...
    assert set(shard_gets(server, "shards/").values()) == {1}
    # ... and at most once per worker: with 2 workers each worker reads only the members its batches need
    server.requests.clear()
    two = loader(f"{server.url}/shards", f"{server.url}/labels", workers=2)
    assert_same_batches(epoch(two), local)
    assert max(shard_gets(server, "shards/").values()) <= 2


@pytest.mark.parametrize("ranges", [True, False], ids=["range-request", "refetch"])
def test_a_connection_dropped_mid_tar_is_resumed(corpus, tmp_path, ranges):
    served = tmp_path / "served"
    shutil.copytree(corpus / "shards", served)
    srv = ShardServer(served, ranges=ranges)
    try:
        srv.drop_once.add("shard-000001.tar")
        with warnings.catch_warnings():
            warnings.simplefilter("error", ShardDecodeWarning)  # nothing is lost
            got = epoch(loader(srv.url))
        assert_same_batches(got, epoch(loader(corpus / "shards")))
        resumed = [r for n, r in srv.requests if n == "shard-000001.tar"]
        assert (
            len(resumed) == 2 and resumed[0] is None and resumed[1].startswith("bytes=")
        )  # asked for the rest
    finally:
        srv.stop()


def test_a_truncated_tar_is_reported_and_skipped_with_a_count(corpus, server):
    tar = server.folder / "shards" / "shard-000000.tar"
    ends = _member_ends(tar)
    cut = (ends[1] + ends[2]) // 2  # inside the third sample's members
    tar.write_bytes(tar.read_bytes()[:cut])  # served whole, with the Content-Length of what is left
    complete = {key for key, end in ends.items() if isinstance(key, str) and end <= cut}
    lost = {u.id for u in load_index(corpus / "shards").utterances_in("shard-000000")} - complete
    assert len(complete) == 2 and len(lost) == len(LENGTHS[0]) - 2

    dl = loader(f"{server.url}/shards", f"{server.url}/labels")
    with pytest.warns(
        ShardDecodeWarning, match=r"shard 'shard-000000' \(http://.*/shards/shard-000000.tar\)"
    ):
        got = epoch(dl)
    want = epoch(loader(corpus / "shards", corpus / "labels"))
    assert len(got) == len(want) == len(dl)  # the batch count never changes
    assert sum(b["skipped"] for b in got) == len(lost)
    assert {u for b in got for u in b["ids"]} == {u for b in want for u in b["ids"]} - lost
    assert {u for u, shard, _ in dl.dataset.decode_failures} == lost
    for g, w in zip(got, want):
        assert g["skipped"] == len(w["ids"]) - len(g["ids"]) and set(g["ids"]) <= set(w["ids"])


def _member_ends(tar_path: Path) -> dict:
    """Byte where each sample's last member ends, by sample id and by sample ordinal."""
    import tarfile

    ends: dict = {}
    with tarfile.open(tar_path) as tar:
        for info in tar:
            key = info.name.partition(".")[0]
            ends[key] = max(ends.get(key, 0), info.offset_data + info.size)
    ends.update(enumerate(list(ends.values())))
    return ends


def test_a_shard_that_keeps_failing_is_skipped_after_its_retries(corpus, server):
    server.fail.add("shards/shard-000002.tar")
    dl = loader(f"{server.url}/shards")
    with pytest.warns(ShardDecodeWarning, match=r"HTTP Error 500.*gave up after 4 attempts"):
        got = epoch(dl)
    assert server.gets("shards/shard-000002.tar") == 4  # first try + FAST.retries
    lost = {u.id for u in load_index(corpus / "shards").utterances_in("shard-000002")}
    planned = dl.dataset.rank_batches(0)
    assert len(got) == len(planned)
    for batch, plan in zip(got, planned):
        rows = {u.id for u in plan.rows}
        assert set(batch["ids"]) == rows - lost and batch["skipped"] == len(rows & lost)
        if rows <= lost:  # the whole batch was lost: delivered empty, so every rank keeps taking steps
            assert batch["waveforms"].shape == (0, 0) and batch["lengths"].shape == (0,)
    assert any(len(b["ids"]) == 0 for b in got)


def test_pipe_shards_and_labels(corpus):
    shards = f"pipe:cat {corpus / 'shards'}/{{name}}"
    labels = f"pipe:cat {corpus / 'labels'}/{{name}}"
    assert_same_batches(epoch(loader(shards, labels)), epoch(loader(corpus / "shards", corpus / "labels")))
    with pytest.raises(LocationError, match=r"needs a \{name\} placeholder"):
        parse_location(f"pipe:cat {corpus}/index.json")


@pytest.mark.parametrize(
    "bad_name", ["shard-000000; touch {marker}", "../shard-000000", "shard-$(touch {marker})", "train-0"]
)
def test_names_from_a_remote_index_are_checked_before_use(corpus, tmp_path, bad_name):
    import json

    folder = tmp_path / "hostile"
    shutil.copytree(corpus / "shards", folder)
    marker = tmp_path / "pwned"
    index = json.loads((folder / "index.json").read_text())
    name = bad_name.format(marker=marker)
    old = index["shards"][1]["name"]
    index["shards"][1].update(name=name, file=f"{name}.tar")
    for u in index["utterances"]:
        if u["shard"] == old:
            u["shard"] = name
    (folder / "index.json").write_text(json.dumps(index))
    with pytest.raises(ShardFormatError, match=r"shards\[1\]"):
        load_index(f"pipe:cat {folder}/{{name}}")
    assert not marker.exists()
    with pytest.raises(ValueError, match="is not a file of a shard or labels folder"):
        parse_location(f"pipe:cat {folder}/{{name}}").open(f"{name}.tar")
    assert not marker.exists()


def test_the_cache_downloads_each_shard_once(corpus, server, tmp_path):
    cache = tmp_path / "cache"
    dl = loader(f"{server.url}/shards", f"{server.url}/labels", cache_dir=cache)
    first, second = epoch(dl, 0), epoch(dl, 1)
    assert_same_batches(first, epoch(loader(corpus / "shards", corpus / "labels"), 0))
    assert_same_batches(second, epoch(loader(corpus / "shards", corpus / "labels"), 1))
    assert set(shard_gets(server, "shards/").values()) == {1}  # two epochs, one download each
    assert server.gets("labels/shard-000000.labels.npz") == 1
    cached = sorted(p.name for p in cache.rglob("*") if p.is_file() and not p.name.startswith("."))
    assert cached.count("shard-000000.tar") == 1 and cached.count("shard-000000.labels.npz") == 1


def test_fsspec_locations_and_the_extra_they_need(corpus):
    import fsspec

    fs = fsspec.filesystem("memory")
    for folder in ("shards", "labels"):
        for path in (corpus / folder).iterdir():
            fs.pipe(f"/i15/{folder}/{path.name}", path.read_bytes())
    assert_same_batches(
        epoch(loader("memory://i15/shards", "memory://i15/labels")),
        epoch(loader(corpus / "shards", corpus / "labels")),
    )
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(LocationError, match=r"pip install 'hubert-lit\[s3\]'"):
            load_index("s3://bucket/shards")
    with pytest.raises(LocationError, match="unknown protocol"):
        load_index("nosuchproto://bucket/shards")


def test_a_remote_labels_file_missing_stops_one_failing_is_skipped(corpus, server):
    (server.folder / "labels" / "shard-000001.labels.npz").unlink()
    with pytest.raises(
        FileNotFoundError, match=r"labels file for shard .shard-000001. not found: http:.*/labels/"
    ):
        epoch(loader(f"{server.url}/shards", f"{server.url}/labels"))
    server.fail.add("labels/shard-000001.labels.npz")
    dl = loader(f"{server.url}/shards", f"{server.url}/labels")
    with pytest.warns(ShardDecodeWarning, match=r"labels file could not be downloaded.*HTTP Error 500"):
        got = epoch(dl)
    lost = {u.id for u in load_index(corpus / "shards").utterances_in("shard-000001")}
    assert sum(b["skipped"] for b in got) == len(lost) and not lost & {u for b in got for u in b["ids"]}
