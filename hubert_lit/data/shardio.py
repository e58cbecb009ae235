"""Read the webdataset tar shards written by ``python -m hubert_lit shard``.

A shard folder holds ``shard-000000.tar``, ``shard-000001.tar``, ... and ``index.json``. Each sample in a tar is
two consecutive members, ``<id>.flac`` (16 kHz mono 16-bit FLAC) and ``<id>.json`` (metadata: id, speaker,
chapter, transcript, num_samples, sample_rate and, when an alignment existed, phones and words as
``[label, start, end]`` sample offsets). ``index.json`` lists the shards, every utterance (in shard order) and
every input item the tool skipped, with the reason.

The folder may be local or remote (an ``http(s)://`` or fsspec URL, or a ``pipe:`` command template; see
:mod:`hubert_lit.data.locations`): :func:`load_index` reads ``index.json`` from it and the returned
:class:`ShardIndex` opens the shards (:meth:`ShardIndex.read_shard`), streaming remote tars front to back.

The readers here use :mod:`tarfile` directly rather than webdataset so that a damaged shard produces an error
naming the tar file (or URL) and the member; the tars stay plain webdataset shards for anyone who prefers its
pipelines (decode ``.flac`` with :func:`decode_flac`).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import os
import tarfile
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import soundfile as sf

from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.data.cache import CachedLocation, cache_key
from hubert_lit.data.fetch import DEFAULT_RETRY, FetchError, RetryPolicy, SourceNotFoundError
from hubert_lit.data.locations import SHARD_NAME_PATTERN, LocalFolder, Location, parse_location

INDEX_FORMAT = "hubert-lit-shards/1"
INDEX_FILE = "index.json"


class ShardFormatError(ValueError):
    """A shard folder, index or tar member does not follow the shard format; the message names the culprit."""


class ShardReadError(ShardFormatError):
    """A shard could not be read to its end (download failed after its retries, file truncated or unreadable)."""


@dataclass(frozen=True)
class ShardInfo:
    """One tar file of a shard folder; ``name`` is the file stem used to refer to it (``shard-000000``)."""

    name: str
    file: str
    num_utterances: int
    num_samples: int


@dataclass(frozen=True)
class UtteranceInfo:
    """One utterance as listed in ``index.json``."""

    id: str
    shard: str
    num_samples: int


@dataclass(frozen=True)
class SkippedItem:
    """An input item the shard tool left out, and why."""

    item: str
    reason: str


@dataclass(frozen=True)
class ShardIndex:
    """The validated contents of a shard folder's ``index.json``, and where its shards are."""

    location: Location
    sample_rate: int
    seed: int
    roots: tuple[str, ...]
    shards: tuple[ShardInfo, ...]
    utterances: tuple[UtteranceInfo, ...]
    skipped: tuple[SkippedItem, ...]

    @property
    def num_utterances(self) -> int:
        return len(self.utterances)

    @property
    def num_samples(self) -> int:
        return sum(s.num_samples for s in self.shards)

    @property
    def shard_names(self) -> list[str]:
        return [s.name for s in self.shards]

    @property
    def source(self) -> str:
        """The folder as given (path or URL, without a password), for messages."""
        return str(self.location)

    @property
    def directory(self) -> Path:
        """The local folder of the shards (ValueError for a remote location)."""
        if not isinstance(self.location, LocalFolder):
            raise ValueError(f"{self.location} is not a local folder")
        return self.location.root

    def shard(self, name: str) -> ShardInfo:
        """The shard called ``name`` (file stem); ``KeyError`` naming the folder if there is none."""
        if name not in self._by_name:
            raise KeyError(f"{self.location.describe(INDEX_FILE)}: no shard named {name!r}")
        return self._by_name[name]

    @functools.cached_property
    def _by_name(self) -> dict[str, ShardInfo]:
        return {s.name: s for s in self.shards}

    def shard_where(self, name: str) -> str:
        """Path or URL of the tar file of shard ``name``, for messages."""
        return self.location.describe(self.shard(name).file)

    def shard_path(self, name: str) -> Path:
        """Path of the tar file of shard ``name`` (local folders only)."""
        return self.directory / self.shard(name).file

    def shard_paths(self) -> list[Path]:
        """Paths of all tar files, in index order (local folders only)."""
        return [self.directory / s.file for s in self.shards]

    def read_shard(
        self, name: str, decode: bool = True, start: int = 0, keep: Collection[str] | None = None
    ) -> Iterator[Sample]:
        """:func:`iter_shard` over shard ``name``: a file on the local disk (local folder or cache) is read with
        random access, so members outside ``keep`` are skipped without reading them; a remote one is streamed."""
        file = self.shard(name).file
        where = self.location.describe(file)
        try:
            path = self.location.local_file(file)
            source: Path | BinaryIO = path if path is not None else self.location.open(file)
        except (OSError, ValueError) as err:
            raise ShardReadError(f"{where}: cannot be opened ({err})") from err
        return iter_shard(source, decode=decode, start=start, keep=keep, name=where)

    @functools.cached_property
    def _by_shard(self) -> dict[str, list[UtteranceInfo]]:
        by_shard: dict[str, list[UtteranceInfo]] = {s.name: [] for s in self.shards}
        for u in self.utterances:
            by_shard[u.shard].append(u)
        return by_shard

    def utterances_in(self, name: str) -> list[UtteranceInfo]:
        """The utterances of shard ``name``, in tar order."""
        self.shard(name)
        return list(self._by_shard[name])


class Sample(NamedTuple):
    """One utterance read from a shard: ``audio`` is float32 in [-1, 1) or, undecoded, the raw FLAC bytes."""

    id: str
    audio: np.ndarray | bytes
    meta: dict[str, Any]


# ---------------------------------------------------------------------------------------------- index.json


def _expect(value: Any, kind: type | tuple[type, ...], where: str) -> Any:
    # bool is an int subclass; a count of True is a malformed index, not 1.
    if isinstance(value, bool) and kind is not bool or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ShardFormatError(f"{where}: expected {names}, got {type(value).__name__} {value!r:.60}")
    return value


def _field(entry: Any, key: str, kind: type, where: str) -> Any:
    _expect(entry, dict, where)
    if key not in entry:
        raise ShardFormatError(f"{where}: missing key {key!r}")
    return _expect(entry[key], kind, f"{where}.{key}")


def _count(entry: dict, key: str, where: str) -> int:
    value = _field(entry, key, int, where)
    if value < 0:
        raise ShardFormatError(f"{where}.{key}: must be >= 0, got {value}")
    return value


def parse_index(data: Any, directory: str | os.PathLike | Location, check_files: bool = True) -> ShardIndex:
    """Validate the decoded JSON of an ``index.json`` found in ``directory`` (a local folder or a
    :class:`~hubert_lit.data.locations.Location`) and return it as a ShardIndex.

    ``check_files`` checks that every tar file exists (local folders only). Shard names of a remote index must
    match ``shard-NNNNNN``: they go into URLs and ``pipe:`` commands.
    """
    location = directory if isinstance(directory, Location) else LocalFolder(directory)
    where = location.describe(INDEX_FILE)
    fmt = _field(data, "format", str, where)
    if fmt != INDEX_FORMAT:
        raise ShardFormatError(f"{where}: format is {fmt!r}, expected {INDEX_FORMAT!r}")
    sample_rate = _field(data, "sample_rate", int, where)
    if sample_rate != SAMPLE_RATE:
        raise ShardFormatError(f"{where}: sample_rate is {sample_rate}, expected {SAMPLE_RATE}")
    seed = _field(data, "seed", int, where)
    roots = tuple(
        _expect(r, str, f"{where}: roots[{i}]") for i, r in enumerate(_field(data, "roots", list, where))
    )

    shards: list[ShardInfo] = []
    for i, entry in enumerate(_field(data, "shards", list, where)):
        at = f"{where}: shards[{i}]"
        shard = ShardInfo(
            name=_field(entry, "name", str, at),
            file=_field(entry, "file", str, at),
            num_utterances=_count(entry, "num_utterances", at),
            num_samples=_count(entry, "num_samples", at),
        )
        if Path(shard.file).name != shard.file or Path(shard.file).stem != shard.name:
            raise ShardFormatError(f"{at}.file: {shard.file!r} is not '{shard.name}.tar' in the shard folder")
        if not location.is_local and not SHARD_NAME_PATTERN.fullmatch(shard.name):
            raise ShardFormatError(
                f"{at}.name: {shard.name!r} is not a shard name (shard-NNNNNN); refused for a remote folder"
            )
        if any(s.name == shard.name for s in shards):
            raise ShardFormatError(f"{at}.name: shard {shard.name!r} is listed twice")
        if check_files and location.is_local and not (location.root / shard.file).is_file():
            raise ShardFormatError(f"{at}.file: {location.root / shard.file} does not exist")
        shards.append(shard)

    known = {s.name for s in shards}
    utterances: list[UtteranceInfo] = []
    seen: set[str] = set()
    per_shard: dict[str, list[int]] = {name: [0, 0] for name in known}
    order = {s.name: i for i, s in enumerate(shards)}
    for i, entry in enumerate(_field(data, "utterances", list, where)):
        at = f"{where}: utterances[{i}]"
        utt = UtteranceInfo(
            id=_field(entry, "id", str, at),
            shard=_field(entry, "shard", str, at),
            num_samples=_count(entry, "num_samples", at),
        )
        if utt.shard not in known:
            raise ShardFormatError(f"{at}.shard: {utt.shard!r} is not one of the listed shards")
        if utt.id in seen:
            raise ShardFormatError(f"{at}.id: utterance {utt.id!r} is listed twice")
        if utterances and order[utt.shard] < order[utterances[-1].shard]:
            raise ShardFormatError(f"{at}.shard: utterances are not listed in shard order")
        seen.add(utt.id)
        per_shard[utt.shard][0] += 1
        per_shard[utt.shard][1] += utt.num_samples
        utterances.append(utt)
    for i, shard in enumerate(shards):
        count, samples = per_shard[shard.name]
        if (count, samples) != (shard.num_utterances, shard.num_samples):
            raise ShardFormatError(
                f"{where}: shards[{i}] says {shard.num_utterances} utterances / {shard.num_samples} samples, "
                f"but the utterance list gives {count} / {samples}"
            )

    skipped = []
    for i, entry in enumerate(_field(data, "skipped", list, where)):
        at = f"{where}: skipped[{i}]"
        skipped.append(
            SkippedItem(item=_field(entry, "item", str, at), reason=_field(entry, "reason", str, at))
        )

    return ShardIndex(
        location=location,
        sample_rate=sample_rate,
        seed=seed,
        roots=roots,
        shards=tuple(shards),
        utterances=tuple(utterances),
        skipped=tuple(skipped),
    )


def load_index(
    shard_dir: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    retry: RetryPolicy = DEFAULT_RETRY,
) -> ShardIndex:
    """Read and validate ``<shard_dir>/index.json``; ShardFormatError naming the file and key if malformed.

    ``shard_dir`` is a local folder or a remote location (:func:`hubert_lit.data.locations.parse_location`);
    ``cache_dir`` keeps a copy of every remote shard once it has been read (local folders are read in place);
    ``retry`` says how often a dropped download is resumed. ``index.json`` itself is always read afresh.
    """
    location = parse_location(shard_dir, retry)
    where = location.describe(INDEX_FILE)
    missing = ShardFormatError(
        f"{where} not found: {location} is not a shard folder (write one with `python -m hubert_lit shard`)"
    )
    if location.is_local and not location.local_file(INDEX_FILE).is_file():
        raise missing
    try:
        raw = location.read_bytes(INDEX_FILE)
    except (SourceNotFoundError, FileNotFoundError) as err:
        raise missing from err
    except FetchError as err:
        raise ShardReadError(str(err)) from err
    try:
        data = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardFormatError(f"{where}: not valid JSON ({err})") from err
    index = parse_index(data, location)
    if cache_dir is not None and not location.is_local:
        cached = CachedLocation(location, cache_dir, cache_key(location, raw))
        index = dataclasses.replace(index, location=cached)
    return index


# ---------------------------------------------------------------------------------------------- audio


def describe_audio_error(err: Exception) -> str:
    """libsndfile's own message, without the ``<_io.BytesIO object at 0x...>`` soundfile puts in front of it."""
    message = getattr(err, "error_string", "") or str(err)
    return message.strip().removeprefix("Error : ").rstrip(".")


def decode_flac(data: bytes, name: str = "<flac bytes>") -> np.ndarray:
    """Decode 16 kHz mono FLAC bytes to a float32 array in [-1, 1); ShardFormatError naming ``name`` otherwise."""
    try:
        audio, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as err:
        raise ShardFormatError(f"{name}: cannot decode FLAC ({describe_audio_error(err)})") from err
    if rate != SAMPLE_RATE:
        raise ShardFormatError(f"{name}: {rate} Hz, expected {SAMPLE_RATE} Hz")
    if audio.shape[1] != 1:
        raise ShardFormatError(f"{name}: {audio.shape[1]} channels, expected mono")
    return np.ascontiguousarray(audio[:, 0])


def encode_flac(audio: np.ndarray) -> bytes:
    """Encode a mono float waveform (16 kHz, values in [-1, 1]) as 16-bit FLAC bytes."""
    buf = io.BytesIO()
    sf.write(buf, np.asarray(audio), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- tar files


def split_member_name(name: str) -> tuple[str, str]:
    """``"1034-121119-0004.flac"`` -> ``("1034-121119-0004", "flac")`` (webdataset: key ends at the first dot)."""
    directory, _, base = name.rpartition("/")
    key, dot, ext = base.partition(".")
    if not dot or not key:
        return name, ""
    return (f"{directory}/{key}" if directory else key), ext


def _parse_meta(data: bytes, where: str) -> dict[str, Any]:
    try:
        meta = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ShardFormatError(f"{where}: not valid JSON ({err})") from err
    return _expect(meta, dict, where)


def _make_sample(tar_path: str, key: str, members: dict[str, tuple[str, bytes]], decode: bool) -> Sample:
    for ext in ("flac", "json"):
        if ext not in members:
            raise ShardFormatError(f"{tar_path}: sample {key!r} has no member '{key}.{ext}'")
    json_name, json_bytes = members["json"]
    flac_name, flac_bytes = members["flac"]
    meta = _parse_meta(json_bytes, f"{tar_path}: member {json_name!r}")
    if meta.get("id") != key:
        raise ShardFormatError(
            f"{tar_path}: member {json_name!r} has id {meta.get('id')!r}, expected {key!r}"
        )
    if not decode:
        return Sample(key, flac_bytes, meta)
    audio = decode_flac(flac_bytes, f"{tar_path}: member {flac_name!r}")
    if meta.get("num_samples") != len(audio):
        raise ShardFormatError(
            f"{tar_path}: member {flac_name!r} has {len(audio)} samples but {json_name!r} says "
            f"num_samples={meta.get('num_samples')!r}"
        )
    return Sample(key, audio, meta)


def _open_tar(source: str | os.PathLike | BinaryIO) -> tarfile.TarFile:
    if isinstance(source, (str, os.PathLike)):
        # Random access: members that are not read are seeked over, not read.
        return tarfile.open(source, mode="r:")
    return tarfile.open(fileobj=source, mode="r|")


def iter_shard(
    tar: str | os.PathLike | BinaryIO,
    decode: bool = True,
    start: int = 0,
    keep: Collection[str] | None = None,
    name: str | None = None,
) -> Iterator[Sample]:
    """Yield the samples of one shard tar in tar order, from the ``start``-th (earlier ones are not decoded).

    ``tar`` is a path (read with random access) or a binary stream (read front to back, then closed); ``name``
    names it in errors (default: the path). With ``keep``, only samples whose id is in it are yielded, and the
    member data of the others is never read. With ``decode=True`` the audio is a float32 array (checked against
    the metadata's ``num_samples``), otherwise the raw FLAC bytes. Any unreadable tar, member, FLAC or JSON raises
    :class:`ShardFormatError` naming the tar file and the member; a stream that breaks off (a download that
    failed after its retries) raises :class:`ShardReadError`.
    """
    tar_path = name if name is not None else str(tar)
    position = 0  # index of the sample being assembled
    key: str | None = None
    members: dict[str, tuple[str, bytes]] = {}
    done: set[str] = set()

    def wanted(sample_key: str | None) -> bool:
        return position >= start and (keep is None or sample_key in keep)

    try:
        with _open_tar(tar) as archive:
            for info in archive:
                if not info.isfile():
                    raise ShardFormatError(f"{tar_path}: member {info.name!r} is not a regular file")
                member_key, ext = split_member_name(info.name)
                if ext not in ("flac", "json"):
                    raise ShardFormatError(f"{tar_path}: member {info.name!r} is not a .flac or .json member")
                if member_key != key:
                    if key is not None:
                        if wanted(key):
                            yield _make_sample(tar_path, key, members, decode)
                        done.add(key)
                        position += 1
                    if member_key in done:
                        raise ShardFormatError(
                            f"{tar_path}: member {info.name!r}: sample {member_key!r} appears twice or its "
                            "members are not consecutive"
                        )
                    key, members = member_key, {}
                if ext in members:
                    raise ShardFormatError(f"{tar_path}: member {info.name!r} appears twice")
                if not wanted(member_key):
                    members[ext] = (info.name, b"")
                    continue
                stream = archive.extractfile(info)
                try:
                    data = stream.read() if stream is not None else b""
                except (tarfile.TarError, OSError, EOFError) as err:
                    raise ShardReadError(f"{tar_path}: member {info.name!r} cannot be read ({err})") from err
                if len(data) != info.size:
                    raise ShardReadError(
                        f"{tar_path}: member {info.name!r} is truncated ({len(data)} of {info.size} bytes)"
                    )
                members[ext] = (info.name, data)
    except (tarfile.TarError, EOFError, OSError) as err:
        where = f"after member '{key}'" if key else "at the start"
        raise ShardReadError(f"{tar_path}: not a readable tar file ({where}: {err})") from err
    finally:
        if not isinstance(tar, (str, os.PathLike)):
            tar.close()
    if key is not None and wanted(key):
        yield _make_sample(tar_path, key, members, decode)


def iter_shards(shard_dir: str | Path, decode: bool = True) -> Iterator[Sample]:
    """Yield every sample of a shard folder (local or remote), shard by shard in index order."""
    index = load_index(shard_dir)
    for name in index.shard_names:
        yield from index.read_shard(name, decode=decode)
