"""Label-file I/O: the folder of k-means pseudo-labels that the DataModule reads.

A labels folder holds ``meta.json`` (``label_rate`` 50 or 100 Hz, ``num_classes``, a free-form ``features``
description, ...) and one ``<shard name>.labels.npz`` per input shard, where every utterance id maps to a 1-D
integer array of labels at ``label_rate``. The ``.npz`` files are ordinary ``np.savez`` archives (one
``<id>.npy`` member per utterance) and are written atomically, so a crashed labelling run never leaves a
half-written file that looks complete.

Label folders are written locally; they can be read from anywhere a shard folder can (an ``http(s)://`` or fsspec
URL, a ``pipe:`` template: :mod:`hubert_lit.data.locations`), through :class:`LabelFolder`.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hubert_lit.atomic import atomic_write
from hubert_lit.constants import FRAME_RATE, FRAME_WINDOW, SAMPLE_RATE
from hubert_lit.data.cache import CachedLocation, cache_key
from hubert_lit.data.fetch import DEFAULT_RETRY, RetryPolicy, SourceNotFoundError
from hubert_lit.data.locations import Location, parse_location

META_FILE = "meta.json"
LABELS_SUFFIX = ".labels.npz"
SUPPORTED_LABEL_RATES = (50, 100)
INCOMPLETE = "incomplete"  # meta.json "status" while a labelling run is still writing the folder


def expected_label_frames(num_samples: int, label_rate: int) -> int:
    """Number of label frames for ``num_samples`` samples at 16 kHz.

    50 Hz (model frames): ``floor((n - 400) / 320) + 1``; 100 Hz (Kaldi MFCC, snip_edges):
    ``floor((n - 400) / 160) + 1``. Fewer than 400 samples give 0 frames.
    """
    if label_rate not in SUPPORTED_LABEL_RATES:
        raise ValueError(f"label_rate must be one of {SUPPORTED_LABEL_RATES}, got {label_rate!r}")
    if num_samples < FRAME_WINDOW:
        return 0
    hop = SAMPLE_RATE // label_rate
    return (num_samples - FRAME_WINDOW) // hop + 1


def model_frames(num_samples: int) -> int:
    """Number of 50 Hz model frames the conv feature extractor produces for ``num_samples`` samples."""
    return expected_label_frames(num_samples, FRAME_RATE)


def labels_path(label_dir: str | os.PathLike, shard_name: str) -> Path:
    """Path of the labels file of shard ``shard_name`` (the tar stem, e.g. ``shard-000000``)."""
    return Path(label_dir) / f"{shard_name}{LABELS_SUFFIX}"


def validate_label_meta(meta: Mapping[str, Any], source: str = "label meta") -> dict[str, Any]:
    """Check ``label_rate`` and ``num_classes``; return a plain dict copy. ``source`` names the file in
    errors."""
    if not isinstance(meta, Mapping):
        raise ValueError(f"{source}: expected a JSON object, got {type(meta).__name__}")
    for key in ("label_rate", "num_classes"):
        if key not in meta:
            raise ValueError(f"{source}: missing required key {key!r}")
    rate = meta["label_rate"]
    if isinstance(rate, bool) or not isinstance(rate, int) or rate not in SUPPORTED_LABEL_RATES:
        raise ValueError(f"{source}: 'label_rate' must be one of {SUPPORTED_LABEL_RATES} (Hz), got {rate!r}")
    k = meta["num_classes"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{source}: 'num_classes' must be a positive integer, got {k!r}")
    return dict(meta)


def save_label_meta(label_dir: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    """Validate ``meta`` and write it as ``<label_dir>/meta.json`` (atomically). Returns the path."""
    path = Path(label_dir) / META_FILE
    data = validate_label_meta(meta, source=str(path))
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def _read_meta(location: Location, allow_incomplete: bool = False) -> tuple[dict[str, Any], bytes]:
    where = location.describe(META_FILE)
    local = location.local_file(META_FILE) if location.is_local else None
    if local is not None and not local.is_file():
        raise FileNotFoundError(f"label meta file not found: {where}")
    try:
        raw = location.read_bytes(META_FILE)
    except (SourceNotFoundError, FileNotFoundError) as err:
        raise FileNotFoundError(f"label meta file not found: {where}") from err
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{where}: not valid JSON ({err})") from err
    meta = validate_label_meta(meta, source=where)
    if meta.get("status") == INCOMPLETE and not allow_incomplete:
        raise ValueError(
            f"{where}: the labelling run that writes this folder has not finished (or was killed); finish it "
            "with `python -m hubert_lit label ... --resume`"
        )
    return meta, raw


def load_label_meta(label_dir: str | os.PathLike, *, allow_incomplete: bool = False) -> dict[str, Any]:
    """Read and validate ``<label_dir>/meta.json`` (a local folder or a URL, see :class:`LabelFolder`).

    The ``meta.json`` of a labelling run that has not finished says ``"status": "incomplete"``; it is refused
    unless ``allow_incomplete`` (``label --resume`` reads it).
    """
    return _read_meta(parse_location(label_dir), allow_incomplete)[0]


def _check_label_array(values: Any, where: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{where}: labels must be a 1-D array, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be integers, got dtype {arr.dtype}")
    return arr


def save_shard_labels(
    label_dir: str | os.PathLike, shard_name: str, labels: Mapping[str, np.ndarray]
) -> Path:
    """Write ``{utterance id: 1-D integer array}`` as ``<label_dir>/<shard_name>.labels.npz`` (atomically).

    The archive is the one ``np.savez`` writes (uncompressed, one ``<id>.npy`` per utterance); it is built
    member by member so utterance ids never clash with ``np.savez``'s own argument names.
    """
    path = labels_path(label_dir, shard_name)
    checked = {}
    for utt_id, values in labels.items():
        if not isinstance(utt_id, str) or not utt_id or "/" in utt_id:
            raise ValueError(f"{path}: invalid utterance id {utt_id!r}")
        checked[utt_id] = _check_label_array(values, f"{path} [{utt_id}]")

    def write(f) -> None:
        with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for utt_id, arr in checked.items():
                with zf.open(f"{utt_id}.npy", mode="w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)

    atomic_write(path, write)
    return path


def _parse_shard_labels(source: Path | io.BytesIO, where: str) -> dict[str, np.ndarray]:
    size = source.stat().st_size if isinstance(source, Path) else source.getbuffer().nbytes
    if size == 0:
        raise ValueError(
            f"{where} is empty (0 bytes): a damaged or interrupted copy; copy it again or relabel the shard"
        )
    try:
        with np.load(source, allow_pickle=False) as npz:
            out = {key: npz[key] for key in npz.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{where}: cannot read labels archive, damaged or truncated ({err})") from err
    for utt_id, arr in out.items():
        _check_label_array(arr, f"{where} [{utt_id}]")
    return out


def load_shard_labels(label_dir: str | os.PathLike, shard_name: str) -> dict[str, np.ndarray]:
    """Read ``<label_dir>/<shard_name>.labels.npz`` into ``{utterance id: 1-D integer array}``."""
    path = labels_path(label_dir, shard_name)
    if not path.is_file():
        raise FileNotFoundError(f"labels file for shard {shard_name!r} not found: {path}")
    return _parse_shard_labels(path, str(path))


@dataclass(frozen=True)
class LabelFolder:
    """A labels folder read by the DataModule: its validated ``meta.json`` and where its files are."""

    location: Location
    meta: dict[str, Any]

    @classmethod
    def open(
        cls,
        label_dir: str | os.PathLike,
        *,
        cache_dir: str | os.PathLike | None = None,
        retry: RetryPolicy = DEFAULT_RETRY,
    ) -> LabelFolder:
        """Read ``meta.json`` of a local or remote labels folder; with ``cache_dir`` remote label files are kept
        on the local disk once read."""
        location = parse_location(label_dir, retry)
        meta, raw = _read_meta(location)
        if cache_dir is not None and not location.is_local:
            location = CachedLocation(location, cache_dir, cache_key(location, raw))
        return cls(location, meta)

    def describe(self, shard_name: str) -> str:
        """Path or URL of the labels file of shard ``shard_name``."""
        return self.location.describe(f"{shard_name}{LABELS_SUFFIX}")

    def missing(self, shard_names: Sequence[str]) -> list[str]:
        """The shards without a labels file (checked for local folders only: a remote check would cost one request
        per shard; a missing remote file is reported when it is read)."""
        if not self.location.is_local:
            return []
        return [s for s in shard_names if not self.location.local_file(f"{s}{LABELS_SUFFIX}").is_file()]

    def shard_labels(self, shard_name: str) -> dict[str, np.ndarray]:
        """``{utterance id: labels}`` of shard ``shard_name``; FileNotFoundError naming the file if it is missing,
        :class:`~hubert_lit.data.fetch.FetchError` if a remote file cannot be downloaded."""
        name = f"{shard_name}{LABELS_SUFFIX}"
        where = self.location.describe(name)
        path = self.location.local_file(name)
        if path is not None:
            if not path.is_file():
                raise FileNotFoundError(f"labels file for shard {shard_name!r} not found: {where}")
            return _parse_shard_labels(path, where)
        try:
            raw = self.location.read_bytes(name)
        except SourceNotFoundError as err:
            raise FileNotFoundError(f"labels file for shard {shard_name!r} not found: {where}") from err
        return _parse_shard_labels(io.BytesIO(raw), where)
