"""``python -m hubert_lit shard``: validate LibriSpeech-layout splits and write webdataset tar shards.

Every utterance is decoded and checked (16 kHz, mono, 16-bit FLAC, non-empty, transcript present, alignment
inside the audio) in a process pool. Valid utterances are shuffled with ``--seed`` and written ``--shard-size``
to a tar; the original FLAC bytes are copied unchanged, so the audio in the shards is bit-identical to the
input (only ``--resample`` re-encodes, and only the files it resamples). Everything left out is listed at the
end and in ``index.json`` with its reason. The shard set is built in a hidden temporary folder next to
``--out`` and renamed into place at the end, so an interrupted run never leaves a complete-looking folder.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import multiprocessing
import os
import random
import shutil
import sys
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import soundfile as sf
from tqdm import tqdm

from hubert_lit.atomic import recover_folder_swap, swap_folder
from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.data.librispeech import Problem, Utterance, scan_roots
from hubert_lit.data.shardio import INDEX_FILE, INDEX_FORMAT, describe_audio_error, encode_flac
from hubert_lit.system import available_cpus

# 500 LibriSpeech utterances (~12 s each) are ~100-150 MB of FLAC: inside webdataset's recommended shard size,
# and train-clean-100 (28,539 utterances) still gives 58 shards to spread over ranks x loader workers.
DEFAULT_SHARD_SIZE = 500
SHARD_NAME = "shard-{:06d}"
T = TypeVar("T")
R = TypeVar("R")


class ShardError(RuntimeError):
    """The shard tool cannot produce an output (--strict with skipped items, no valid utterance)."""


class ShardUsageError(ShardError):
    """Bad arguments: a missing root, an existing --out without --overwrite, ... (exit status 2)."""


@dataclass(frozen=True)
class CheckedAudio:
    """What a worker learned about one audio file: either ``reason`` (skip) or the facts needed to write it."""

    id: str
    reason: str | None = None
    num_samples: int = 0
    flac_path: str = ""  # file whose bytes go into the shard: the input, or the re-encoded copy
    digest: str = ""  # blake2b of those bytes, re-checked when writing
    resampled_from: int | None = None


@dataclass(frozen=True)
class ShardReport:
    """Summary of a finished run."""

    out: Path
    num_items: int
    num_utterances: int
    num_samples: int
    num_shards: int
    skipped: list[Problem]
    resampled: list[tuple[str, int]]


def _digest(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _resample(audio: np.ndarray, rate: int) -> np.ndarray:
    import torch
    import torchaudio.functional as F

    out = F.resample(torch.from_numpy(audio), rate, SAMPLE_RATE).numpy()
    # The windowed-sinc filter can overshoot full scale; clip instead of letting PCM_16 encoding wrap or fail.
    return np.clip(out, -1.0, 32767 / 32768)


def _alignment_end(alignment: dict[str, Any] | None) -> int:
    if not alignment:
        return 0
    return max((seg[2] for key in ("phones", "words") for seg in alignment[key]), default=0)


def check_audio(utt: Utterance, resample: bool, scratch: str | None) -> CheckedAudio:
    """Decode and check one utterance's audio (runs in a worker process).

    With ``resample`` a file at another rate is resampled to 16 kHz and its FLAC written to ``scratch``.
    """
    path = utt.audio_path
    try:
        data = path.read_bytes()
    except OSError as err:
        return CheckedAudio(utt.id, f"cannot read ({err.strerror or err})")
    if not data:
        return CheckedAudio(utt.id, "empty file (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            fmt, subtype, rate, channels, frames = f.format, f.subtype, f.samplerate, f.channels, f.frames
            audio = f.read(dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        return CheckedAudio(utt.id, f"cannot decode ({describe_audio_error(err)})")
    if fmt != "FLAC":
        return CheckedAudio(utt.id, f"{fmt} audio, not FLAC")
    if channels != 1:
        return CheckedAudio(utt.id, f"{channels} channels, not mono")
    if len(audio) != frames:
        return CheckedAudio(utt.id, f"truncated or corrupt: decoded {len(audio)} of {frames} samples")
    if len(audio) == 0:
        return CheckedAudio(utt.id, "no audio samples")
    resampled_from = None
    if rate != SAMPLE_RATE:
        if not resample:
            return CheckedAudio(utt.id, f"{rate} Hz, not {SAMPLE_RATE} Hz (--resample converts it)")
        assert scratch is not None
        resampled = _resample(audio[:, 0], rate)
        if len(resampled) == 0:
            return CheckedAudio(utt.id, f"no audio samples left after resampling from {rate} Hz")
        data = encode_flac(resampled)
        path = Path(scratch) / f"{utt.id}.flac"
        path.write_bytes(data)
        audio, resampled_from = resampled[:, None], rate
    elif subtype != "PCM_16":
        return CheckedAudio(utt.id, f"{subtype} FLAC, not 16-bit (PCM_16)")
    end = _alignment_end(utt.alignment)
    if end > len(audio):
        return CheckedAudio(utt.id, f"alignment ends at sample {end}, after the audio's {len(audio)} samples")
    return CheckedAudio(utt.id, None, len(audio), str(path), _digest(data), resampled_from)


def _check_job(job: tuple[Utterance, bool, str | None]) -> CheckedAudio:
    return check_audio(*job)


def sample_metadata(utt: Utterance, num_samples: int) -> dict[str, Any]:
    """The ``<id>.json`` member of one sample."""
    meta: dict[str, Any] = {
        "id": utt.id,
        "speaker": utt.speaker,
        "chapter": utt.chapter,
        "transcript": utt.transcript,
        "num_samples": num_samples,
        "sample_rate": SAMPLE_RATE,
    }
    if utt.alignment is not None:
        meta["phones"] = utt.alignment["phones"]
        meta["words"] = utt.alignment["words"]
    return meta


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed metadata so that the same input and seed give byte-identical tars.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shard(tar_path: str, samples: list[tuple[str, str, str, bytes]]) -> None:
    """Write one tar (runs in a worker): ``samples`` are (id, flac path, expected digest, json bytes)."""
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tar:
        for utt_id, flac_path, digest, meta in samples:
            data = Path(flac_path).read_bytes()
            if _digest(data) != digest:
                raise ShardError(f"{flac_path}: file changed while sharding; run again")
            _add_member(tar, f"{utt_id}.flac", data)
            _add_member(tar, f"{utt_id}.json", meta)


def _write_job(job: tuple[str, list[tuple[str, str, str, bytes]]]) -> None:
    write_shard(*job)


def _dump_index(index: dict[str, Any]) -> str:
    """JSON with one shard / utterance / skipped item per line: readable and diffable for big corpora."""
    parts = []
    for key, value in index.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            rows = ",\n".join("  " + json.dumps(v, ensure_ascii=False) for v in value)
            parts.append(f" {json.dumps(key)}: [\n{rows}\n ]")
        else:
            parts.append(f" {json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
    return "{\n" + ",\n".join(parts) + "\n}\n"


def _parallel_map(
    executor: Executor | None, fn: Callable[[T], R], jobs: Sequence[T], desc: str, unit: str, workers: int
) -> Iterator[R]:
    """``map`` in order, in the pool when there is one, with a progress bar."""
    if executor is None:
        results: Iterable[R] = map(fn, jobs)
    else:
        results = executor.map(fn, jobs, chunksize=max(1, min(32, len(jobs) // (8 * workers))))
    yield from tqdm(results, total=len(jobs), desc=desc, unit=unit, dynamic_ncols=True)


def _prepare_output(out: Path, roots: Sequence[Path], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ShardUsageError(f"--out {out} exists and is not a folder")
    resolved = out.resolve()
    for root in roots:
        r = root.resolve()
        if r == resolved or resolved in r.parents:
            raise ShardUsageError(
                f"--root {root} is inside --out {out}; writing there would destroy the input"
            )
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ShardUsageError(
                f"--out {out} already exists and is not empty; pass --overwrite to replace it"
            )
        if not (out / INDEX_FILE).is_file():
            raise ShardUsageError(
                f"--out {out} is not a shard folder (no {INDEX_FILE}); --overwrite replaces only the tool's own "
                "output or an empty folder"
            )


def format_skipped(skipped: Sequence[Problem], total: int) -> str:
    """``skipped 3 of 1203 items:`` followed by one ``<item>: <reason>`` line per item."""
    lines = [f"skipped {len(skipped)} of {total} items:"]
    lines += [f"  {p.item}: {p.reason}" for p in skipped]
    return "\n".join(lines)


def shard_corpus(
    roots: Sequence[str | Path],
    out: str | Path,
    shard_size: int = DEFAULT_SHARD_SIZE,
    seed: int = 0,
    strict: bool = False,
    resample: bool = False,
    overwrite: bool = False,
    workers: int | None = None,
) -> ShardReport:
    """Validate the utterances under ``roots`` and write shards plus ``index.json`` to ``out``.

    Raises ShardError (and leaves ``out`` untouched) for bad arguments, an existing ``out`` without
    ``overwrite``, no valid utterance, or any skipped item with ``strict``.
    """
    if shard_size < 1:
        raise ShardUsageError(f"--shard-size must be >= 1, got {shard_size}")
    workers = available_cpus() if workers is None else workers
    if workers < 1:
        raise ShardUsageError(f"--workers must be >= 1, got {workers}")
    root_paths = [Path(r) for r in roots]
    if not root_paths:
        raise ShardUsageError("no --root given")
    for root in root_paths:
        if not root.is_dir():
            raise ShardUsageError(f"--root {root} is not a folder")
    out = Path(out)
    recovered = recover_folder_swap(out)
    if recovered:
        print(recovered, file=sys.stderr)
    _prepare_output(out, root_paths, overwrite)

    scan = scan_roots(root_paths)
    if not scan.utterances and not scan.problems:
        raise ShardUsageError(f"no .flac or .trans.txt files under {', '.join(map(str, root_paths))}")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    executor = None
    try:
        scratch = tmp / ".resampled"
        if resample:
            scratch.mkdir()
        if workers > 1 and len(scan.utterances) > 1:
            # spawn: the parent may hold threads (tqdm monitor, torch) that fork would copy in a broken state.
            executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        jobs = [(u, resample, str(scratch) if resample else None) for u in scan.utterances]
        checked = list(_parallel_map(executor, _check_job, jobs, "validating", "utt", workers))

        skipped = list(scan.problems)
        valid: list[tuple[Utterance, CheckedAudio]] = []
        for utt, result in zip(scan.utterances, checked):
            if result.reason is None:
                valid.append((utt, result))
            else:
                skipped.append(Problem(str(utt.audio_path), result.reason))
        skipped.sort(key=lambda p: p.item)
        total = len(valid) + len(skipped)
        if strict and skipped:
            raise ShardError(f"--strict: {format_skipped(skipped, total)}\nnothing written")
        if not valid:
            raise ShardError(f"no valid utterance to write; {format_skipped(skipped, total)}")

        # valid is sorted by id here, so the order depends only on the seed
        random.Random(seed).shuffle(valid)
        shard_jobs = []
        shards, utterances = [], []
        for number, start in enumerate(range(0, len(valid), shard_size)):
            name = SHARD_NAME.format(number)
            members = valid[start : start + shard_size]
            samples = []
            for utt, result in members:
                meta = sample_metadata(utt, result.num_samples)
                meta_bytes = json.dumps(
                    meta, ensure_ascii=False, sort_keys=True, separators=(",", ":")
                ).encode()
                samples.append((utt.id, result.flac_path, result.digest, meta_bytes))
                utterances.append({"id": utt.id, "shard": name, "num_samples": result.num_samples})
            shard_jobs.append((str(tmp / f"{name}.tar"), samples))
            shards.append(
                {
                    "name": name,
                    "file": f"{name}.tar",
                    "num_utterances": len(members),
                    "num_samples": sum(r.num_samples for _, r in members),
                }
            )
        for _ in _parallel_map(executor, _write_job, shard_jobs, "writing", "shard", workers):
            pass
        if resample:
            shutil.rmtree(scratch)
        resampled = [
            (u.id, r.resampled_from) for u, r in sorted(valid, key=lambda v: v[0].id) if r.resampled_from
        ]
        index = {
            "format": INDEX_FORMAT,
            "sample_rate": SAMPLE_RATE,
            "seed": seed,
            "roots": [str(r) for r in root_paths],
            "shards": shards,
            "utterances": utterances,
            "skipped": [{"item": p.item, "reason": p.reason} for p in skipped],
            "resampled": [{"id": i, "from_rate": rate} for i, rate in resampled],
        }
        (tmp / INDEX_FILE).write_text(_dump_index(index), encoding="utf-8")
        swap_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return ShardReport(
        out=out,
        num_items=total,
        num_utterances=len(valid),
        num_samples=sum(r.num_samples for _, r in valid),
        num_shards=len(shards),
        skipped=skipped,
        resampled=resampled,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hubert_lit shard",
        description=(
            "Validate LibriSpeech-layout splits (<root>/<speaker>/<chapter>/<id>.flac + <speaker>-<chapter>"
            ".trans.txt, optional <speaker>-<chapter>.align.json) and write webdataset tar shards "
            "(shard-000000.tar, ...: <id>.flac + <id>.json per utterance) plus index.json. Valid 16 kHz mono "
            "16-bit FLAC is copied byte for byte. Every item left out is listed at the end with its reason."
        ),
        epilog=(
            "exit status: 0 written (possibly with skipped items, see the report); 1 nothing written "
            "(--strict with skipped items, or no valid utterance); 2 bad arguments or --out exists."
        ),
    )
    parser.add_argument(
        "--root",
        action="append",
        required=True,
        type=Path,
        help="a split folder such as LibriSpeech/train-clean-100 or data/demo/LibriSpeech/train; repeat to "
        "combine several splits into one shard set",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder for the shards and index.json")
    parser.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help="utterances per shard (default %(default)s: ~100-150 MB of LibriSpeech audio per tar)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the utterance order across shards (default %(default)s)"
    )
    parser.add_argument(
        "--strict", action="store_true", help="fail (exit 1, write nothing) if any item would be skipped"
    )
    parser.add_argument(
        "--resample",
        action="store_true",
        help="resample audio that is not 16 kHz (torchaudio.functional.resample) and re-encode it as 16-bit "
        "FLAC, instead of skipping it",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it already exists")
    parser.add_argument(
        "--workers",
        type=int,
        default=available_cpus(),
        help="processes that decode/check audio and write shards (default: CPU count, %(default)s)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    try:
        report = shard_corpus(
            args.root,
            args.out,
            shard_size=args.shard_size,
            seed=args.seed,
            strict=args.strict,
            resample=args.resample,
            overwrite=args.overwrite,
            workers=args.workers,
        )
    except ShardError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2 if isinstance(err, ShardUsageError) else 1
    if report.skipped:
        print(format_skipped(report.skipped, report.num_items), file=sys.stderr)
    if report.resampled:
        print(f"resampled {len(report.resampled)} files to {SAMPLE_RATE} Hz (listed in index.json)")
    hours = report.num_samples / SAMPLE_RATE / 3600
    shards = f"{report.num_shards} shard" + ("s" if report.num_shards != 1 else "")
    print(
        f"wrote {report.num_utterances} of {report.num_items} items ({hours:.2f} h) in {shards} to {report.out} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    leftovers = sorted(report.out.parent.glob(f".{report.out.name}.tmp-*"))
    if leftovers:
        names = ", ".join(str(p) for p in leftovers)
        print(f"note: temporary folders left by an interrupted run can be deleted: {names}", file=sys.stderr)
    return 0
