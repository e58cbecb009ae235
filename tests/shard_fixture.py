"""Tiny shard folders and label folders for data tests, written directly in the shard format (contract 2).

Audio is a 16-bit-exact ramp: sample i of an utterance is ``(i % RAMP - RAMP // 2) / 32768``, so the first
sample of a crop tells its offset (for utterances shorter than ``RAMP``).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import soundfile as sf

RAMP = 30000


def ramp(num_samples: int) -> np.ndarray:
    return ((np.arange(num_samples) % RAMP) - RAMP // 2).astype(np.float32) / 32768


def crop_offset(waveform: np.ndarray) -> int:
    """Offset of a crop of a ramp utterance, read from its first sample."""
    return int(round(float(waveform[0]) * 32768)) + RAMP // 2


def flac_bytes(audio: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, audio, 16000, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    root: Path, shards: Sequence[Sequence[int]], corrupt: Sequence[str] = (), prefix: str = "1"
) -> list[list[str]]:
    """Write ``root/shard-00000k.tar`` (one per entry of ``shards``: utterance lengths) and ``index.json``.

    Utterance ids are ``<prefix>00-<shard>-<k>``. Ids in ``corrupt`` get FLAC bytes that do not decode.
    Returns the ids per shard.
    """
    root.mkdir(parents=True, exist_ok=True)
    index = {
        "format": "hubert-lit-shards/1",
        "sample_rate": 16000,
        "seed": 0,
        "roots": ["test"],
        "shards": [],
        "utterances": [],
        "skipped": [],
    }
    all_ids = []
    for s, lengths in enumerate(shards):
        name = f"shard-{s:06d}"
        ids = [f"{prefix}00-{s}-{k:04d}" for k in range(len(lengths))]
        lengths = [int(n) for n in lengths]
        with tarfile.open(root / f"{name}.tar", "w") as tar:
            for utt, n in zip(ids, lengths):
                audio = flac_bytes(ramp(n))
                if utt in corrupt:
                    audio = b"fLaC" + b"\x00" * 40
                meta = {
                    "id": utt,
                    "speaker": f"{prefix}00",
                    "chapter": str(s),
                    "transcript": "A",
                    "num_samples": n,
                    "sample_rate": 16000,
                }
                _add(tar, f"{utt}.flac", audio)
                _add(tar, f"{utt}.json", json.dumps(meta).encode())
        index["shards"].append(
            {
                "name": name,
                "file": f"{name}.tar",
                "num_utterances": len(lengths),
                "num_samples": int(sum(lengths)),
            }
        )
        index["utterances"] += [{"id": u, "shard": name, "num_samples": n} for u, n in zip(ids, lengths)]
        all_ids.append(ids)
    (root / "index.json").write_text(json.dumps(index))
    return all_ids
