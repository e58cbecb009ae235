"""Tests of the shard tool (hubert_lit.data.shard) and the shard reader (hubert_lit.data.shardio)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from hubert_lit.data import shardio
from hubert_lit.data.shard import build_parser, main, shard_corpus

SR = 16000


def _waveform(rng: np.random.Generator, num_samples: int, channels: int = 1) -> np.ndarray:
    """int16 sine-plus-noise, ``(num_samples,)`` or ``(num_samples, channels)``."""
    t = np.arange(num_samples) / SR
    freq = rng.uniform(100, 400)
    x = 0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * rng.standard_normal(num_samples)
    x = np.round(x * 32767).astype(np.int16)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def make_split(root: Path, speakers: dict[str, dict[str, int]], seed: int = 0, align: set[str] = frozenset()):
    """Write a LibriSpeech-layout split; ``speakers`` = {spk: {chapter: number of utterances}}.

    Chapters in ``align`` ("<spk>-<chapter>") also get an ``.align.json``. Returns {id: (int16 audio, text,
    alignment or None)}.
    """
    rng = np.random.default_rng(seed)
    expected = {}
    for spk, chapters in speakers.items():
        for chapter, count in chapters.items():
            folder = root / spk / chapter
            folder.mkdir(parents=True)
            lines, alignments = [], {}
            for n in range(count):
                utt_id = f"{spk}-{chapter}-{n:04d}"
                audio = _waveform(rng, int(rng.integers(1600, 4000)))
                sf.write(folder / f"{utt_id}.flac", audio, SR, format="FLAC", subtype="PCM_16")
                text = f"WORD{n} SPEAKER {spk}"
                lines.append(f"{utt_id} {text}")
                alignment = None
                if f"{spk}-{chapter}" in align:
                    half = len(audio) // 2
                    alignment = {
                        "phones": [["SIL", 0, 100], ["w", 100, half], ["@", half, len(audio)]],
                        "words": [[f"WORD{n}", 100, len(audio)]],
                    }
                    alignments[utt_id] = alignment
                expected[utt_id] = (audio, text, alignment)
            (folder / f"{spk}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
            if alignments:
                (folder / f"{spk}-{chapter}.align.json").write_text(json.dumps(alignments))
    return expected


@pytest.fixture
def split(tmp_path):
    root = tmp_path / "LibriSpeech" / "train"
    expected = make_split(
        root, {"19": {"198": 4, "227": 3}, "26": {"495": 4}, "103": {"1240": 3}}, align={"26-495"}
    )
    return root, expected


def _read_all(out: Path, decode: bool = True) -> list[shardio.Sample]:
    return list(shardio.iter_shards(out, decode=decode))


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_round_trip_keeps_every_utterance_bit_exact(split, tmp_path):
    root, expected = split
    out = tmp_path / "shards"
    assert main(["--root", str(root), "--out", str(out), "--shard-size", "4", "--workers", "1"]) == 0

    index = shardio.load_index(out)
    assert [s.name for s in index.shards] == ["shard-000000", "shard-000001", "shard-000002", "shard-000003"]
    assert [s.num_utterances for s in index.shards] == [4, 4, 4, 2]
    assert index.skipped == ()
    samples = _read_all(out)
    assert sorted(s.id for s in samples) == sorted(expected)  # every utterance exactly once
    assert [s.id for s in samples] == [u.id for u in index.utterances]  # index lists tar order
    for sample, utt in zip(samples, index.utterances):
        audio, text, alignment = expected[sample.id]
        spk, chapter, _ = sample.id.split("-")
        np.testing.assert_array_equal(sample.audio, audio.astype(np.float32) / 32768)
        assert sample.audio.dtype == np.float32
        assert utt.num_samples == len(audio)
        meta = dict(sample.meta)
        assert (meta.pop("phones", None), meta.pop("words", None)) == (
            (alignment["phones"], alignment["words"]) if alignment else (None, None)
        )
        assert meta == {
            "id": sample.id,
            "speaker": spk,
            "chapter": chapter,
            "transcript": text,
            "num_samples": len(audio),
            "sample_rate": SR,
        }
    for shard in index.shards:
        assert shard.num_samples == sum(len(expected[u.id][0]) for u in index.utterances_in(shard.name))
    first = index.shard_paths()[0]
    assert [s.id for s in shardio.iter_shard(first, start=2)] == [
        u.id for u in index.utterances_in("shard-000000")
    ][2:]
    # valid input FLAC is copied, not re-encoded
    for sample in _read_all(out, decode=False):
        spk, chapter, _ = sample.id.split("-")
        assert sample.audio == (root / spk / chapter / f"{sample.id}.flac").read_bytes()


def test_several_roots_and_webdataset_reads_the_tars(tmp_path):
    import webdataset as wds

    train = make_split(tmp_path / "a", {"1": {"10": 2}}, seed=1)
    dev = make_split(tmp_path / "b", {"2": {"20": 3}}, seed=2)
    out = tmp_path / "shards"
    shard_corpus([tmp_path / "a", tmp_path / "b"], out, shard_size=10, workers=1)
    index = shardio.load_index(out)
    assert index.roots == (str(tmp_path / "a"), str(tmp_path / "b"))
    urls = [str(p) for p in index.shard_paths()]
    ds = wds.WebDataset(urls, shardshuffle=False).decode(
        lambda key, data: shardio.decode_flac(data, key) if key.endswith(".flac") else None
    )
    got = {s["__key__"]: s["flac"] for s in ds}
    assert sorted(got) == sorted({**train, **dev})
    for key, audio in got.items():
        np.testing.assert_array_equal(audio, {**train, **dev}[key][0] / 32768)


def _add_bad_items(root: Path) -> dict[str, str]:
    """Add one of each kind of bad item to chapter 19/198; returns {item path suffix: reason fragment}."""
    rng = np.random.default_rng(5)
    folder = root / "19" / "198"
    trans = folder / "19-198.trans.txt"
    good = (folder / "19-198-0000.flac").read_bytes()
    (folder / "19-198-0100.flac").write_bytes(good[: len(good) // 2])  # corrupt (truncated) FLAC
    (folder / "19-198-0101.flac").write_bytes(b"")  # empty file
    sf.write(folder / "19-198-0102.flac", _waveform(rng, 1000), 8000, format="FLAC", subtype="PCM_16")
    sf.write(
        folder / "19-198-0103.flac", _waveform(rng, 2000, channels=2), SR, format="FLAC", subtype="PCM_16"
    )
    sf.write(folder / "19-198-0104.flac", _waveform(rng, 2000), SR, format="FLAC", subtype="PCM_16")
    lines = trans.read_text()
    lines += "".join(f"19-198-{n:04d} BAD {n}\n" for n in (100, 101, 102, 103))  # no line for 0104
    lines += "19-198-0105 NO AUDIO FOR THIS LINE\n"
    trans.write_text(lines)
    return {
        "19-198-0100.flac": "cannot decode",
        "19-198-0101.flac": "empty file",
        "19-198-0102.flac": "8000 Hz, not 16000 Hz",
        "19-198-0103.flac": "2 channels, not mono",
        "19-198-0104.flac": "no transcript line for 19-198-0104",
        "19-198.trans.txt:9": "transcript line for 19-198-0105 has no audio file",
    }


def test_bad_items_are_reported_with_reasons_and_nothing_else_is_lost(split, tmp_path, capsys):
    root, expected = split
    bad = _add_bad_items(root)
    out = tmp_path / "shards"
    assert main(["--root", str(root), "--out", str(out), "--workers", "1"]) == 0

    err = capsys.readouterr().err
    total = len(expected) + len(bad)
    assert f"skipped {len(bad)} of {total} items:" in err
    index = shardio.load_index(out)
    assert len(index.skipped) == len(bad)
    for (suffix, reason), skipped in zip(sorted(bad.items()), index.skipped):
        assert skipped.item == str(root / "19" / "198" / suffix)
        assert reason in skipped.reason
    lines = err.splitlines()
    start = lines.index(f"skipped {len(bad)} of {total} items:")
    assert lines[start + 1 : start + 1 + len(bad)] == [f"  {s.item}: {s.reason}" for s in index.skipped]
    assert sorted(u.id for u in index.utterances) == sorted(expected)
    assert sorted(s.id for s in _read_all(out)) == sorted(expected)


def test_alignment_layout_and_duplicate_problems(tmp_path):
    make_split(tmp_path / "a", {"1": {"10": 3}}, align={"1-10"})
    make_split(tmp_path / "b", {"1": {"10": 1}, "2": {"20": 1}}, seed=1)
    folder = tmp_path / "a" / "1" / "10"
    alignments = json.loads((folder / "1-10.align.json").read_text())
    del alignments["1-10-0001"]
    alignments["1-10-0002"]["phones"][-1][2] = 10**6
    (folder / "1-10.align.json").write_text(json.dumps(alignments))
    sf.write(tmp_path / "a" / "1" / "stray.flac", np.zeros(100, np.int16), SR, subtype="PCM_16")

    report = shard_corpus([tmp_path / "a", tmp_path / "b"], tmp_path / "out", workers=1)
    reasons = {p.item: p.reason for p in report.skipped}
    assert reasons == {
        str(folder / "1-10-0001.flac"): "no entry for 1-10-0001 in 1-10.align.json",
        str(folder / "1-10-0002.flac"): f"alignment ends at sample 1000000, after the audio's "
        f"{sf.info(folder / '1-10-0002.flac').frames} samples",
        str(
            tmp_path / "a" / "1" / "stray.flac"
        ): "not at <root>/<speaker>/<chapter>/ (is --root a split folder "
        "such as LibriSpeech/train-clean-100?)",
        str(
            tmp_path / "b" / "1" / "10" / "1-10-0000.flac"
        ): f"duplicate utterance id, also {folder / '1-10-0000.flac'}",
    }
    assert sorted(u.id for u in shardio.load_index(tmp_path / "out").utterances) == ["1-10-0000", "2-20-0000"]


def test_resample_converts_other_rates_with_torchaudio(tmp_path):
    root = tmp_path / "split"
    make_split(root, {"7": {"70": 2}})
    low = _waveform(np.random.default_rng(3), 1200)
    sf.write(root / "7" / "70" / "7-70-0009.flac", low, 8000, format="FLAC", subtype="PCM_16")
    with open(root / "7" / "70" / "7-70.trans.txt", "a") as f:
        f.write("7-70-0009 LOW RATE\n")

    skipped = shard_corpus([root], tmp_path / "plain", workers=1)
    assert [p.reason for p in skipped.skipped] == ["8000 Hz, not 16000 Hz (--resample converts it)"]

    report = shard_corpus([root], tmp_path / "resampled", resample=True, workers=1)
    assert report.skipped == [] and report.resampled == [("7-70-0009", 8000)]
    sample = next(s for s in _read_all(tmp_path / "resampled") if s.id == "7-70-0009")
    reference = AF.resample(torch.from_numpy(low.astype(np.float32) / 32768), 8000, SR).numpy()
    assert sample.meta["num_samples"] == len(reference) == 2 * len(low)
    np.testing.assert_allclose(sample.audio, reference, atol=1 / 32768)  # only 16-bit quantization differs
    index = json.loads((tmp_path / "resampled" / "index.json").read_text())
    assert index["resampled"] == [{"id": "7-70-0009", "from_rate": 8000}]
    assert not (tmp_path / "resampled" / ".resampled").exists()


def test_strict_fails_and_writes_nothing(split, tmp_path, capsys):
    root, _ = split
    (root / "19" / "198" / "19-198-0001.flac").write_bytes(b"")
    out = tmp_path / "out" / "shards"
    assert main(["--root", str(root), "--out", str(out), "--strict", "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert "--strict" in err and f"{root / '19' / '198' / '19-198-0001.flac'}: empty file" in err
    assert not out.exists()
    assert list((tmp_path / "out").iterdir()) == []  # no temporary folder left behind


def test_existing_output_needs_overwrite(split, tmp_path, capsys):
    root, expected = split
    out = tmp_path / "shards"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    assert main(["--root", str(root), "--out", str(out), "--workers", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _tree_bytes(out) == {"keep.txt": b"precious"}

    (out / "keep.txt").unlink()
    assert main(["--root", str(root), "--out", str(out), "--workers", "1"]) == 0  # empty: written
    first = _tree_bytes(out)
    assert main(["--root", str(root), "--out", str(out), "--workers", "1", "--overwrite", "--seed", "7"]) == 0
    assert shardio.load_index(out).num_utterances == len(expected) and _tree_bytes(out) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LibriSpeech", "shards"]  # no .bak left

    # never replace a folder that contains the input
    assert main(["--root", str(root), "--out", str(root.parent), "--workers", "1", "--overwrite"]) == 2
    assert (root / "19" / "198" / "19-198.trans.txt").exists()


def test_interrupted_overwrite_is_recovered_at_the_next_start(split, tmp_path, capsys):
    root, expected = split
    out = tmp_path / "shards"
    assert main(["--root", str(root), "--out", str(out), "--workers", "1"]) == 0
    before = _tree_bytes(out)
    out.rename(
        tmp_path / "shards.bak"
    )  # killed after moving the old output aside, before the new one moved in
    assert main(["--root", str(root), "--out", str(out), "--workers", "1"]) == 2  # restored, then: exists
    assert "restored" in capsys.readouterr().err
    assert _tree_bytes(out) == before and not (tmp_path / "shards.bak").exists()


def test_failed_write_leaves_no_output(split, tmp_path, monkeypatch):
    from hubert_lit.data import shard

    root, _ = split
    calls = []

    def failing_write(job):
        calls.append(job)
        if len(calls) == 2:
            raise OSError("disk full")
        shard.write_shard(*job)

    monkeypatch.setattr(shard, "_write_job", failing_write)
    with pytest.raises(OSError, match="disk full"):
        shard_corpus([root], tmp_path / "shards", shard_size=3, workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LibriSpeech"]


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(split, tmp_path):
    root, expected = split
    shard_corpus([root], tmp_path / "a", shard_size=5, seed=3, workers=1)
    shard_corpus([root], tmp_path / "b", shard_size=5, seed=3, workers=2)
    shard_corpus([root], tmp_path / "c", shard_size=5, seed=4, workers=1)
    a, b = _tree_bytes(tmp_path / "a"), _tree_bytes(tmp_path / "b")
    assert a == b
    order = [u.id for u in shardio.load_index(tmp_path / "a").utterances]
    assert order != sorted(order)  # shuffled
    assert order != [u.id for u in shardio.load_index(tmp_path / "c").utterances]
    with tarfile.open(tmp_path / "a" / "shard-000000.tar") as tar:
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in tar.getmembers()} == {(0, 0, 0, "", "")}


def _member_offset(tar_path: Path, name: str) -> tuple[int, int]:
    with tarfile.open(tar_path) as tar:
        info = tar.getmember(name)
        return info.offset_data, info.size


def test_reader_error_names_the_unreadable_member(split, tmp_path):
    root, _ = split
    out = tmp_path / "shards"
    shard_corpus([root], out, shard_size=20, workers=1)
    tar_path = out / "shard-000000.tar"
    victim = shardio.load_index(out).utterances[2].id
    offset, size = _member_offset(tar_path, f"{victim}.flac")
    data = bytearray(tar_path.read_bytes())
    data[offset : offset + size] = bytes(size)  # zero the FLAC payload, keep the tar intact
    tar_path.write_bytes(bytes(data))

    reader = shardio.iter_shard(tar_path)
    assert [next(reader).id for _ in range(2)] == [u.id for u in shardio.load_index(out).utterances[:2]]
    with pytest.raises(shardio.ShardFormatError, match=f"shard-000000.tar: member '{victim}.flac'"):
        next(reader)
    assert len(list(shardio.iter_shard(tar_path, decode=False))) == 14  # bytes are still readable

    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(bytes(data[: offset + size // 2]))
    with pytest.raises(
        shardio.ShardFormatError, match=rf"truncated.tar: member '{victim}.flac' cannot be read"
    ):
        list(shardio.iter_shard(truncated, decode=False))


def test_load_index_names_the_bad_key(split, tmp_path):
    root, _ = split
    out = tmp_path / "shards"
    shard_corpus([root], out, shard_size=5, workers=1)
    path = out / "index.json"
    good = json.loads(path.read_text())

    def broken(edit) -> str:
        data = json.loads(json.dumps(good))
        edit(data)
        path.write_text(json.dumps(data))
        with pytest.raises(shardio.ShardFormatError) as info:
            shardio.load_index(out)
        assert str(path) in str(info.value)
        return str(info.value)

    assert "shards[1].num_samples" in broken(lambda d: d["shards"][1].update(num_samples="7"))
    assert "utterances[3]: missing key 'shard'" in broken(lambda d: d["utterances"][3].pop("shard"))
    assert "utterances[0].shard" in broken(lambda d: d["utterances"][0].update(shard="shard-000099"))
    assert "format" in broken(lambda d: d.update(format="something-else/2"))
    assert "shards[0] says 5 utterances" in broken(lambda d: d["utterances"].pop(0))
    (out / "shard-000002.tar").unlink()
    path.write_text(json.dumps(good))
    with pytest.raises(
        shardio.ShardFormatError, match=r"shards\[2\].file: .*shard-000002.tar does not exist"
    ):
        shardio.load_index(out)
    path.write_text("{not json")
    with pytest.raises(shardio.ShardFormatError, match="index.json: not valid JSON"):
        shardio.load_index(out)


def test_help_documents_every_option():
    text = build_parser().format_help()
    for option in (
        "--root",
        "--out",
        "--shard-size",
        "--strict",
        "--resample",
        "--overwrite",
        "--seed",
        "--workers",
    ):
        assert option in text
