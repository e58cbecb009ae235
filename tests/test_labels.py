"""Acoustic unit discovery (`python -m hubert_lit label`): features, k-means, label files, quality, ranks."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from hubert_lit.checkpoint import save_model
from hubert_lit.data.label_files import expected_label_frames, load_label_meta, load_shard_labels
from hubert_lit.data.shardio import encode_flac, load_index
from hubert_lit.labels import cli as label_tool
from hubert_lit.labels import pipeline as label_pipeline
from hubert_lit.labels.features import chunk_spans, extract_chunked, file_sha256
from hubert_lit.labels.kmeans import Assigner, fit_kmeans, kmeans_plusplus
from hubert_lit.labels.mfcc import mfcc_features
from hubert_lit.labels.quality import PhoneClusterCounts, frame_phones, quality_metrics
from hubert_lit.models import build_hubert

REPO = Path(__file__).resolve().parents[1]
SR = 16000

# --------------------------------------------------------------------------------------------- tiny corpus


def _phone_audio(phone: str, n: int, rng: np.random.Generator) -> np.ndarray:
    """Acoustically distinct "phones": tones, noise, silence."""
    t = np.arange(n) / SR
    if phone == "a":
        x = np.sin(2 * np.pi * 220 * t) + 0.5 * np.sin(2 * np.pi * 440 * t)
    elif phone == "i":
        x = np.sin(2 * np.pi * 2600 * t)
    elif phone == "s":
        x = np.diff(rng.normal(size=n + 1))  # high-pass noise
    elif phone == "m":
        x = np.sign(np.sin(2 * np.pi * 120 * t)) * 0.5
    else:  # SIL
        x = 0.01 * rng.normal(size=n)
    return (0.25 + 0.1 * rng.random()) * x / max(np.abs(x).max(), 1e-9)


def _utterance(rng: np.random.Generator) -> tuple[np.ndarray, list]:
    pieces, phones, pos = [], [], 0
    for phone in ["SIL", *rng.choice(["a", "i", "s", "m", "SIL"], size=int(rng.integers(6, 10))), "SIL"]:
        n = int(rng.integers(1000, 3200))
        pieces.append(_phone_audio(str(phone), n, rng))
        phones.append([str(phone), pos, pos + n])
        pos += n
    return np.concatenate(pieces).astype(np.float32), phones


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_tiny_shards(root: Path, shard_sizes=(4, 3, 3), seed: int = 0, corrupt: str | None = None) -> Path:
    """Shards per the shard contract: tars of <id>.flac + <id>.json, and index.json. ``corrupt``: id whose FLAC
    member gets garbage bytes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    index = {"format": "hubert-lit-shards/1", "sample_rate": SR, "seed": seed, "roots": ["synthetic"],
             "shards": [], "utterances": [], "skipped": []}  # fmt: skip
    count = 0
    for s, size in enumerate(shard_sizes):
        name = f"shard-{s:06d}"
        total = 0
        with tarfile.open(root / f"{name}.tar", "w") as tar:
            for _ in range(size):
                audio, phones = _utterance(rng)
                utt = f"7-{10 + s}-{count:04d}"
                count += 1
                meta = {"id": utt, "speaker": "7", "chapter": str(10 + s), "transcript": "X",
                        "num_samples": len(audio), "sample_rate": SR, "phones": phones, "words": []}  # fmt: skip
                flac = b"not a flac file" * 20 if utt == corrupt else encode_flac(audio)
                _add_member(tar, f"{utt}.flac", flac)
                _add_member(tar, f"{utt}.json", json.dumps(meta).encode())
                index["utterances"].append({"id": utt, "shard": name, "num_samples": len(audio)})
                total += len(audio)
        index["shards"].append(
            {"name": name, "file": f"{name}.tar", "num_utterances": size, "num_samples": total}
        )
    (root / "index.json").write_text(json.dumps(index))
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_tiny_shards(tmp_path_factory.mktemp("labels") / "shards")


MFCC_ARGS = ["--features", "mfcc", "--clusters", "8", "--fit-fraction", "0.7", "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def mfcc_run(corpus) -> Path:
    out = corpus.parent / "mfcc-labels"
    assert label_tool.main(["--shards", str(corpus), "--out", str(out), *MFCC_ARGS]) == 0
    return out


def _file_contents(label_dir: Path) -> dict[str, bytes]:
    """Every output file's bytes, by name."""
    return {path.name: path.read_bytes() for path in sorted(label_dir.iterdir())}


# --------------------------------------------------------------------------------------------- features


def test_mfcc_equals_direct_torchaudio_call():
    wave = torch.from_numpy(np.random.default_rng(1).uniform(-0.5, 0.5, size=5000).astype(np.float32))
    ours = mfcc_features(wave)
    mfcc = torchaudio.compliance.kaldi.mfcc(wave[None], sample_frequency=16000, use_energy=False).T
    d1 = torchaudio.functional.compute_deltas(mfcc)
    d2 = torchaudio.functional.compute_deltas(d1)
    assert torch.equal(ours, torch.cat([mfcc, d1, d2]).T)
    for n in (399, 400, 559, 560, 16000):
        assert mfcc_features(torch.zeros(n) + 0.1).shape == (expected_label_frames(n, 100), 39)


def test_chunked_extraction_gives_the_unchunked_frames():
    def frame_fn(
        wav: np.ndarray,
    ) -> np.ndarray:  # a conv-like feature: depends only on each 400-sample window
        n = (len(wav) - 400) // 320 + 1
        windows = np.stack([wav[j * 320 : j * 320 + 400] for j in range(n)])
        return np.stack([windows.mean(1), windows.std(1), windows[:, 0]], axis=1)

    wave = np.random.default_rng(0).normal(size=20_123).astype(np.float32)
    full = frame_fn(wave)
    for chunk, context in ((3200, 0), (3200, 640), (1000, 5000), (10**6, 0)):
        got = extract_chunked(frame_fn, wave, chunk, context, dim=3)
        np.testing.assert_array_equal(got, full)
    spans = chunk_spans(20_123, 3200, 640)
    assert sum(s.keep_to - s.keep_from for s in spans) == expected_label_frames(20_123, 50)
    assert chunk_spans(399, 3200, 640) == []


# --------------------------------------------------------------------------------------------- k-means


def _blobs(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.array([[0, 0], [20, 0], [0, 20]], dtype=np.float32)
    return (centres[rng.integers(3, size=n)] + rng.normal(size=(n, 2))).astype(np.float32)


@pytest.mark.parametrize("coarse_size", [0, 500])  # 500: Lloyd on 500 points first, then on all 3000
def test_kmeans_same_seed_same_centroids_and_uses_every_point(coarse_size):
    x = _blobs(3000, 0)  # 3000 > faiss's default cap of 256 points per centroid for k=3
    a, b = (
        fit_kmeans(x, 3, seed=5, coarse_size=coarse_size),
        fit_kmeans(x, 3, seed=5, coarse_size=coarse_size),
    )
    assert (a.coarse_iterations > 0) == (coarse_size > 0) and a.iterations > 0
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert a.inertia == b.inertia
    # Lloyd converged on all points: each centroid is the mean of ALL points assigned to it (a subsample's mean
    # would be off by about 1/sqrt(256)).
    labels = Assigner(a.centroids)(x)
    for c in range(3):
        np.testing.assert_allclose(a.centroids[c], x[labels == c].mean(0), atol=1e-3)
    assert a.inertia == pytest.approx(((x - a.centroids[labels]) ** 2).sum(1).mean(), rel=1e-5)
    assert a.inertia < 2.2  # the three blobs are found (unit variance in 2-D)


def test_kmeans_plusplus_is_seeded_and_spreads_out():
    x = _blobs(600, 1)
    c1, c2 = kmeans_plusplus(x, 3, seed=0), kmeans_plusplus(x, 3, seed=0)
    np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(c1, kmeans_plusplus(x, 3, seed=1))
    assert all(any(np.array_equal(c, row) for row in x) for c in c1)  # centres are data points
    nearest_blob = np.round(c1 / 20).astype(int).tolist()
    assert sorted(map(tuple, nearest_blob)) == [(0, 0), (0, 1), (1, 0)]  # one per blob


# --------------------------------------------------------------------------------------------- quality


def test_quality_metrics_hand_computed():
    perfect = quality_metrics(np.array([[2, 0], [0, 2]]))
    assert perfect == pytest.approx({"phone_purity": 1.0, "cluster_purity": 1.0, "pnmi": 1.0})
    useless = quality_metrics(np.array([[1, 1], [1, 1]]))
    assert useless == pytest.approx({"phone_purity": 0.5, "cluster_purity": 0.5, "pnmi": 0.0})
    # 2 phones x 3 clusters, 8 frames: p(y) = (1/2, 1/2), p(z) = (3/8, 3/8, 1/4)
    m = quality_metrics(np.array([[3, 1, 0], [0, 2, 2]]))
    mi = 3 / 8 * math.log(2) + 1 / 8 * math.log(2 / 3) + 1 / 4 * math.log(4 / 3) + 1 / 4 * math.log(2)
    assert m == pytest.approx({"phone_purity": 7 / 8, "cluster_purity": 5 / 8, "pnmi": mi / math.log(2)})


def test_frame_phone_is_the_segment_at_the_frame_centre():
    # 100 Hz frames of 1600 samples: centres 200, 360, ..., 1320
    assert frame_phones([["a", 0, 840], ["b", 840, 1600]], 8, 100) == ["a"] * 4 + ["b"] * 4
    assert frame_phones([["a", 0, 841]], 8, 100) == ["a"] * 5 + [None] * 3
    # 50 Hz frames of 1040 samples: centres 200, 520, 840
    assert frame_phones([["b", 520, 900], ["a", 0, 520]], 3, 50) == ["a", "b", "b"]
    with pytest.raises(ValueError, match="overlap"):
        frame_phones([["a", 0, 500], ["b", 400, 900]], 3, 50)
    with pytest.raises(ValueError, match=r"utt: phones\[0\]"):
        frame_phones([["a", 5, 5]], 3, 50, where="utt: phones")
    counts = PhoneClusterCounts(3)
    counts.add(["a", None, "b", "a"], np.array([0, 1, 2, 0]))
    phones, matrix = counts.matrix()
    assert phones == ["a", "b"] and matrix.tolist() == [[2, 0, 0], [0, 0, 1]]
    assert counts.unaligned_frames == 1


# --------------------------------------------------------------------------------------------- the tool


def test_label_files_follow_the_contract(corpus, mfcc_run):
    meta = load_label_meta(mfcc_run)
    assert meta["label_rate"] == 100 and meta["num_classes"] == 8
    assert meta["features"]["type"] == "mfcc" and meta["features"]["dim"] == 39
    km = meta["kmeans"]
    assert km["seed"] == 3 and km["inertia_per_frame"] > 0
    assert 0 < km["fit_utterances"] < 10 and km["fit_frames"] > 8
    assert meta["source"]["shards"] == str(corpus.resolve())
    assert meta["unreadable"]["count"] == 0
    centroids = np.load(mfcc_run / "centroids.npy")
    assert centroids.shape == (8, 39)
    index = json.loads((corpus / "index.json").read_text())
    labelled = 0
    for shard in index["shards"]:
        labels = load_shard_labels(mfcc_run, shard["name"])
        expected = {u["id"]: u["num_samples"] for u in index["utterances"] if u["shard"] == shard["name"]}
        assert list(labels) == list(expected)
        for utt, n in expected.items():
            assert labels[utt].ndim == 1 and len(labels[utt]) == expected_label_frames(n, 100)
            labelled += len(labels[utt])
    assert meta["labelled"]["frames"] == labelled
    # the labels are the nearest centroids of the utterance's MFCCs
    with tarfile.open(corpus / "shard-000001.tar") as tar:
        utt = index["utterances"][4]["id"]
        audio, _ = sf.read(io.BytesIO(tar.extractfile(f"{utt}.flac").read()), dtype="float32")
    feats = mfcc_features(audio).numpy()
    dists = ((feats[:, None, :] - centroids[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(load_shard_labels(mfcc_run, "shard-000001")[utt], dists.argmin(1))


def test_mfcc_units_beat_random_labels_on_pnmi(mfcc_run):
    quality = load_label_meta(mfcc_run)["quality"]
    assert quality["aligned_frames"] == load_label_meta(mfcc_run)["labelled"]["frames"]
    # random labels against the same phone frames, rebuilt from the shards' alignments
    phone_frames = []
    index = json.loads((mfcc_run.parent / "shards" / "index.json").read_text())
    for shard in index["shards"]:
        with tarfile.open(mfcc_run.parent / "shards" / shard["file"]) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".json"):
                    meta = json.loads(tar.extractfile(member).read())
                    n = expected_label_frames(meta["num_samples"], 100)
                    phone_frames += frame_phones(meta["phones"], n, 100)
    random_counts = PhoneClusterCounts(8)
    random_counts.add(phone_frames, np.random.default_rng(0).integers(8, size=len(phone_frames)))
    random_pnmi = quality_metrics(random_counts.matrix()[1])["pnmi"]
    assert random_pnmi < 0.05
    assert quality["pnmi"] > 0.4 > random_pnmi + 0.3
    assert 0 < quality["phone_purity"] <= 1 and 0 < quality["cluster_purity"] <= 1


def test_same_seed_same_output_and_centroid_reuse(corpus, mfcc_run, tmp_path):
    again = tmp_path / "again"
    assert label_tool.main(["--shards", str(corpus), "--out", str(again), *MFCC_ARGS]) == 0
    assert _file_contents(again) == _file_contents(mfcc_run)
    other_seed = tmp_path / "seed4"
    args = [a if a != "3" else "4" for a in MFCC_ARGS]
    assert label_tool.main(["--shards", str(corpus), "--out", str(other_seed), *args]) == 0
    assert not np.array_equal(np.load(other_seed / "centroids.npy"), np.load(mfcc_run / "centroids.npy"))
    # dev/test: reuse the fitted centroids, no fit
    reused = tmp_path / "reused"
    argv = ["--shards", str(corpus), "--out", str(reused), "--centroids", str(mfcc_run), "--no-progress"]
    assert label_tool.main(argv) == 0
    assert (reused / "centroids.npy").read_bytes() == (mfcc_run / "centroids.npy").read_bytes()
    for shard in ("shard-000000", "shard-000002"):
        got, ref = load_shard_labels(reused, shard), load_shard_labels(mfcc_run, shard)
        assert got.keys() == ref.keys() and all(np.array_equal(got[k], ref[k]) for k in ref)
    meta = load_label_meta(reused)
    assert meta["kmeans"]["centroids_from"] == str(mfcc_run.resolve())
    assert meta["kmeans"]["inertia_per_frame"] == load_label_meta(mfcc_run)["kmeans"]["inertia_per_frame"]


def test_refuses_to_overwrite_labels_without_flag(corpus, mfcc_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(mfcc_run, out)
    argv = ["--shards", str(corpus), "--out", str(out), *MFCC_ARGS]
    assert label_tool.main(argv) == 2
    assert "--overwrite" in capsys.readouterr().err
    stale = out / "shard-000099.labels.npz"
    stale.write_bytes(b"old")
    assert label_tool.main([*argv, "--overwrite"]) == 0
    assert not stale.exists() and load_label_meta(out)["num_classes"] == 8
    bad = [
        "--shards",
        str(corpus),
        "--out",
        str(tmp_path / "x"),
        "--centroids",
        str(mfcc_run),
        "--clusters",
        "9",
    ]
    assert label_tool.main(bad) == 2
    assert "--clusters 9" in capsys.readouterr().err


def test_fit_sample_is_chosen_by_id_hash_and_capped_by_frames(corpus, tmp_path, capsys):
    index = load_index(corpus)  # seed 3 as in MFCC_ARGS
    full = label_pipeline.select_fit_utterances(index, 1.0, 3, 10**9, 100)
    assert sorted(full.ids) == sorted(u.id for u in index.utterances) and not full.capped
    hashes = [label_pipeline.utterance_hash(i, 3) for i in full.ids]
    assert hashes == sorted(hashes)  # canonical order: by hash, whatever the shard order
    half = label_pipeline.select_fit_utterances(index, 0.5, 3, 10**9, 100)
    assert set(half.ids) == {i for i, h in zip(full.ids, hashes) if h < 0.5}
    cap = full.planned_frames // 2
    capped = label_pipeline.select_fit_utterances(index, 1.0, 3, cap, 100)
    assert capped.capped and capped.ids == full.ids[: len(capped.ids)] and 0 < capped.planned_frames <= cap
    out = tmp_path / "capped"
    argv = ["--shards", str(corpus), "--out", str(out), *MFCC_ARGS, "--fit-fraction", "1"]
    argv += ["--max-fit-frames", str(cap)]
    assert label_tool.main(argv) == 0
    assert "capped by --max-fit-frames" in capsys.readouterr().out
    km = load_label_meta(out)["kmeans"]
    assert km["fit_capped"] and km["fit_frames"] == capped.planned_frames
    assert km["fit_utterances"] == len(capped.ids) < km["fit_candidates"] == 10


def test_unreadable_member_is_reported_not_fatal(tmp_path, capsys):
    shards = write_tiny_shards(tmp_path / "shards", shard_sizes=(3, 2), seed=1, corrupt="7-10-0001")
    out = tmp_path / "labels"
    assert (
        label_tool.main(["--shards", str(shards), "--out", str(out), *MFCC_ARGS[:-3], "--fit-fraction", "1"])
        == 0
    )
    err = capsys.readouterr().err
    assert "1 read error(s)" in err and "7-10-0001" in err
    meta = load_label_meta(out)
    assert meta["unreadable"]["count"] == 1
    assert meta["unreadable"]["items"][0]["item"] == "7-10-0001"
    assert "shard-000000.tar" in meta["unreadable"]["items"][0]["reason"]
    assert meta["labelled"]["utterances"] == 4 and meta["kmeans"]["fit_utterances"] == 4
    assert list(load_shard_labels(out, "shard-000000")) == ["7-10-0000", "7-10-0002"]


def _slurm_port() -> tuple[int, int]:
    """A free port that a SLURM job id maps to (:data:`SLURM_PORT_BASE` + job id mod span), and that job id."""
    from hubert_lit.labels.distributed import SLURM_PORT_BASE, SLURM_PORT_SPAN

    for port in range(SLURM_PORT_BASE + 4321, SLURM_PORT_BASE + SLURM_PORT_SPAN):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port, 7_000_000 + port - SLURM_PORT_BASE
    raise RuntimeError("no free port")


def _launch_env(launcher: str) -> tuple[dict[str, str], callable]:
    """The environment of two processes launched by torchrun (its variables) or by srun (SLURM's only)."""
    from _fixtures import free_port

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in list(env):
        if key.startswith("SLURM_") or key in (
            "WORLD_SIZE",
            "RANK",
            "LOCAL_RANK",
            "MASTER_ADDR",
            "MASTER_PORT",
        ):
            env.pop(key)
    if launcher == "torchrun":
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), WORLD_SIZE="2")
        return env, lambda rank: {"RANK": str(rank), "LOCAL_RANK": str(rank)}
    port, job = _slurm_port()
    env.update(
        SLURM_JOB_ID=str(job), SLURM_STEP_NUM_TASKS="2", SLURM_NTASKS="2", SLURM_JOB_NODELIST="127.0.0.1"
    )
    return env, lambda rank: {"SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank)}


@pytest.mark.parametrize("launcher", ["torchrun", "slurm"])
def test_two_processes_write_what_one_process_writes(corpus, mfcc_run, tmp_path, launcher):
    env, rank_env = _launch_env(launcher)
    cmd = [
        sys.executable,
        "-m",
        "hubert_lit.labels.cli",
        "--shards",
        str(corpus),
        "--out",
        str(tmp_path / "two"),
    ]
    procs = [
        subprocess.Popen([*cmd, *MFCC_ARGS], env={**env, **rank_env(r)}, stderr=subprocess.PIPE, text=True)
        for r in (0, 1)
    ]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    one, two = _file_contents(mfcc_run), _file_contents(tmp_path / "two")
    assert sorted(one) == ["centroids.npy", "meta.json"] + [f"shard-00000{i}.labels.npz" for i in range(3)]
    assert one == two


@pytest.mark.parametrize("phase", ["label_shards", "gather_fit_features"])
def test_an_error_on_one_rank_ends_every_rank_with_its_message(corpus, tmp_path, phase):
    """Rank 1 fails in pass 1 or pass 2; rank 0 must not wait for it until the (240-minute) timeout."""
    import time

    env, rank_env = _launch_env("torchrun")
    script = (
        "import os, sys\n"
        "from hubert_lit.labels import cli, pipeline\n"
        "def fail(*args, **kwargs):\n"
        "    raise OSError('simulated read failure on rank ' + os.environ['RANK'])\n"
        f"if os.environ['RANK'] == '1':\n    pipeline.{phase} = fail\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    cmd = [sys.executable, "-c", script, "--shards", str(corpus), "--out", str(tmp_path / "out"), *MFCC_ARGS]
    start = time.monotonic()
    procs = [
        subprocess.Popen(cmd, env={**env, **rank_env(r)}, stderr=subprocess.PIPE, text=True) for r in (0, 1)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert time.monotonic() - start < 60
    for p, err in zip(procs, errors):
        assert p.returncode == 1, err
        assert "error: rank 1: simulated read failure on rank 1" in err.strip().splitlines()[-1]
    assert not (tmp_path / "out" / "meta.json").exists() or phase == "label_shards"


def test_slurm_launch_variables():
    from hubert_lit.labels.distributed import SLURM_PORT_BASE, first_host, launch_from_env

    assert first_host("gpu[003-004,007],cpu1") == "gpu003"
    assert first_host("node7") == "node7"
    assert first_host("rack[1-2]-n[05-06],x") == "rack1-n05"
    assert first_host("a[09],b[1-3]") == "a09"
    with pytest.raises(ValueError, match="host list"):
        first_host("gpu[001-")

    step = {"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
            "SLURM_JOB_NODELIST": "gpu[010-011]"}  # fmt: skip
    launch = launch_from_env(step)
    assert (launch.world_size, launch.rank, launch.local_rank) == (4, 3, 1)
    assert (launch.master_addr, launch.master_port, launch.launcher) == (
        "gpu010",
        SLURM_PORT_BASE + 3456,
        "slurm",
    )
    assert launch_from_env({**step, "MASTER_PORT": "29400"}).master_port == 29400
    # torchrun's variables win; a batch script run without srun (no step) is a single process
    torchrun = {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1234"}
    assert launch_from_env({**step, **torchrun}).launcher == "torchrun"
    assert launch_from_env({"SLURM_NTASKS": "8", "SLURM_PROCID": "0", "SLURM_JOB_ID": "5"}) is None
    with pytest.raises(ValueError, match="SLURM_PROCID"):
        launch_from_env({**step, "SLURM_PROCID": "4"})
    with pytest.raises(ValueError, match="MASTER_PORT nor SLURM_JOB_ID"):
        launch_from_env({k: v for k, v in step.items() if k != "SLURM_JOB_ID"})


def test_hubert_layer_labels_from_a_saved_model(corpus, tmp_path):
    ckpt = tmp_path / "tiny.pt"
    save_model(build_hubert("vanilla_tiny", num_classes=8), ckpt)
    out = tmp_path / "hubert"
    argv = ["--shards", str(corpus), "--out", str(out), "--features", "hubert", "--checkpoint", str(ckpt),
            "--layer", "1", "--clusters", "5", "--fit-fraction", "0.5", "--no-progress", "--device", "cpu",
            "--max-chunk-seconds", "0.5", "--context-seconds", "0.1"]  # fmt: skip
    assert label_tool.main(argv) == 0
    meta = load_label_meta(out)
    assert meta["label_rate"] == 50 and meta["num_classes"] == 5
    assert meta["features"]["layer"] == 1 and meta["features"]["checkpoint_sha256"] == file_sha256(ckpt)
    assert np.load(out / "centroids.npy").shape == (5, meta["features"]["dim"])
    index = json.loads((corpus / "index.json").read_text())
    for shard in index["shards"]:
        labels = load_shard_labels(out, shard["name"])
        for u in index["utterances"]:
            if u["shard"] == shard["name"]:
                assert len(labels[u["id"]]) == expected_label_frames(u["num_samples"], 50)
                assert labels[u["id"]].max() < 5
    # MFCC centroids cannot label HuBERT features
    wrong = [
        "--shards",
        str(corpus),
        "--out",
        str(tmp_path / "w"),
        "--centroids",
        str(out),
        "--features",
        "mfcc",
    ]
    assert label_tool.main([*wrong, "--no-progress"]) == 2


# --------------------------------------------------------------------------------------------- remote, resume


def test_labels_of_shards_served_over_http_are_the_local_labels(corpus, mfcc_run, tmp_path):
    sys.path.insert(0, str(REPO / "tests"))
    from http_fixture import ShardServer

    server = ShardServer(corpus)
    try:
        out = tmp_path / "remote"
        argv = ["--shards", server.url, "--out", str(out), *MFCC_ARGS, "--cache-dir", str(tmp_path / "cache")]
        assert label_tool.main(argv) == 0
        # pass 1 reads only shards with fit-sample utterances, pass 2 reads the cached copies
        assert all(server.gets(f"shard-00000{i}.tar") == 1 for i in range(3))
    finally:
        server.stop()
    got, want = _file_contents(out), _file_contents(mfcc_run)
    assert got.keys() == want.keys()
    assert all(got[name] == want[name] for name in got if name != "meta.json")
    meta, ref = load_label_meta(out), load_label_meta(mfcc_run)
    assert (
        meta["source"]["shards"] == server.url
        and meta["source"]["index_sha256"] == ref["source"]["index_sha256"]
    )
    assert {k: v for k, v in meta.items() if k != "source"} == {k: v for k, v in ref.items() if k != "source"}


def held_back_shards(corpus: Path, block: Path, out: Path) -> str:
    """A ``pipe:`` location of ``corpus`` that holds shard-000002.tar back while ``block`` exists and ``out`` has its
    centroids (pass 2 of a labelling run writing ``out``), so that the run can be killed there."""
    return (
        f"pipe:sh -c 'if [ {{name}} = shard-000002.tar ]; then while [ -e {block} ] && [ -e {out}/centroids.npy ]; "
        f"do sleep 0.05; done; fi; exec cat {corpus}/{{name}}'"
    )


def single_process_env() -> dict[str, str]:
    """The environment of a labelling subprocess that runs alone (no launcher variables inherited)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(key, None)
    return env


def test_label_killed_mid_run_and_resumed_writes_the_uninterrupted_files(corpus, tmp_path):
    """A real SIGKILL while pass 2 waits on the last shard, then ``--resume``: byte-identical files, no new fit."""
    import signal
    import time

    killed, reference, block = tmp_path / "killed", tmp_path / "reference", tmp_path / "BLOCK"
    shards = held_back_shards(corpus, block, killed)  # the same command for both runs
    env = single_process_env()
    cmd = [sys.executable, "-m", "hubert_lit.labels.cli", "--shards", shards, *MFCC_ARGS]
    block.touch()
    proc = subprocess.Popen(
        [*cmd, "--out", str(killed)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while not (killed / ".progress" / "shard-000001.json").exists():
        assert proc.poll() is None, (
            f"the run ended before it could be killed: {proc.stdout.read().decode()[-2000:]}"
        )
        assert time.monotonic() < deadline, "pass 2 never reached shard 2"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    proc.stdout.close()
    block.unlink()  # lets the held-back command finish (it writes into a closed pipe and exits)
    assert not (killed / "shard-000002.labels.npz").exists()
    with pytest.raises(ValueError, match="has not finished.*--resume"):
        load_label_meta(killed)  # what the DataModule reads: an unfinished folder is refused

    # what a kill in the middle of writing shard 2's labels leaves beside them
    stale = killed / ".shard-000002.labels.npz.k1ll3d.tmp"
    stale.write_bytes(b"PK half an archive")

    assert label_tool.main(["--shards", shards, "--out", str(reference), *MFCC_ARGS]) == 0
    resumed = subprocess.run(
        [*cmd, "--out", str(killed), "--resume"], env=env, capture_output=True, text=True, timeout=300
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "2 of 3 shards already labelled" in resumed.stdout and "fitting k-means" not in resumed.stdout
    assert f"removed {stale}, left by an interrupted write" in resumed.stdout and not stale.exists()
    assert _file_contents(killed) == _file_contents(reference)


def test_resume_checks_the_recorded_fit(corpus, mfcc_run, tmp_path, capsys):
    out = tmp_path / "out"
    shutil.copytree(mfcc_run, out)
    before = _file_contents(out)
    argv = ["--shards", str(corpus), "--out", str(out), *MFCC_ARGS, "--resume"]
    assert label_tool.main(argv) == 0  # a finished folder: nothing to do
    assert "is complete; nothing to do" in capsys.readouterr().out and _file_contents(out) == before
    other_seed = [a if a != "3" else "4" for a in argv]
    assert label_tool.main(other_seed) == 2
    assert "kmeans.seed=3" in capsys.readouterr().err
    assert label_tool.main([*argv[:4], *MFCC_ARGS[:3], "9", *MFCC_ARGS[4:], "--resume"]) == 2
    assert "num_classes=8" in capsys.readouterr().err
    np.save(out / "centroids.npy", np.zeros((8, 39), dtype=np.float32))
    assert label_tool.main(argv) == 2
    assert "is not the one" in capsys.readouterr().err
    assert label_tool.main([*argv, "--overwrite"]) == 2
    assert "exclude each other" in capsys.readouterr().err
    # a folder labelled with the centroids of another one records them too
    reused = [
        "--shards",
        str(corpus),
        "--out",
        str(tmp_path / "reused"),
        "--centroids",
        str(mfcc_run),
        "--no-progress",
    ]
    assert label_tool.main(reused) == 0
    assert label_tool.main([*reused, "--resume"]) == 0
    assert "is complete; nothing to do" in capsys.readouterr().out
