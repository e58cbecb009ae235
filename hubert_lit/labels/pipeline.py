"""k-means pseudo-labels (acoustic units) for a shard folder: :func:`label_corpus` (the ``label`` tool's library).

Two streaming passes over the shards, never holding more than the fit sample in memory:

1. (skipped when the centroids of an earlier run are given) features of a seeded sample of utterances, chosen by a
   hash of the utterance id and the seed (so the sample does not depend on how shards are split across processes)
   and capped at ``max_fit_frames``; rank 0 gathers the sample in canonical order, fits k-means, broadcasts the
   centroids;
2. every utterance is assigned to its nearest centroid; each process writes the label files of its shards.

The shards may be local or remote (:mod:`hubert_lit.data.locations`); the labels folder is written locally. The
fit is recorded in ``meta.json`` before any label is written and every shard's completion after its labels file,
so ``resume=True`` (``label --resume``) finishes a killed run without a new fit (:mod:`hubert_lit.labels.resume`).

The output follows the label-file format of :mod:`hubert_lit.data.label_files`: ``meta.json``,
``<shard name>.labels.npz`` per input shard, plus ``centroids.npy``. When the shards carry phone alignments,
phone purity, cluster purity and PNMI are printed and stored in ``meta.json``. A run with N processes writes the
same files as a single-process run. The command line is :mod:`hubert_lit.labels.cli`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import torch
from tqdm import tqdm

from hubert_lit.atomic import atomic_write, recover_folder_swap, swap_folder, temp_files
from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.data.fetch import FetchError
from hubert_lit.data.fingerprint import index_digest
from hubert_lit.data.label_files import (
    INCOMPLETE,
    LABELS_SUFFIX,
    META_FILE,
    expected_label_frames,
    labels_path,
    load_label_meta,
    save_label_meta,
    save_shard_labels,
)
from hubert_lit.data.locations import LocationError
from hubert_lit.data.shardio import ShardFormatError, ShardIndex, load_index
from hubert_lit.labels.distributed import DistContext
from hubert_lit.labels.features import (
    DEFAULT_CONTEXT_SAMPLES,
    DEFAULT_MAX_CHUNK_SAMPLES,
    SHARD_ITEM,
    FeatureExtractor,
    HubertLayerFeatures,
    MfccFeatures,
    ReadError,
    file_sha256,
    iter_shard_utterances,
    utterance_ids_by_shard,
)
from hubert_lit.labels.kmeans import Assigner, faiss_num_gpus, fit_kmeans
from hubert_lit.labels.quality import PhoneClusterCounts, format_quality, frame_phone_ids, quality_report
from hubert_lit.labels.resume import (
    FIT_OPTION_KEYS,
    PROGRESS_DIR,
    check_fit_record,
    clear_progress,
    progress_path,
    read_done_shards,
    write_progress,
)

LABELS_FORMAT = "hubert-lit-labels/1"
CENTROIDS_FILE = "centroids.npy"
# Features of the same kind agree on these keys; centroids fitted on one cannot label the other.
FEATURE_IDENTITY_KEYS = ("type", "dim", "frame_rate", "layer", "checkpoint_sha256")
MAX_ERRORS_PRINTED = 10


class LabelError(Exception):
    """A problem with the command line or the inputs, reported without a traceback."""


# --------------------------------------------------------------------------------------------- fit sample


def utterance_hash(utt_id: str, seed: int) -> float:
    """A number in [0, 1) fixed by the utterance id and the seed (independent of shard order or process)."""
    digest = hashlib.sha256(f"{seed}\0{utt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


@dataclass(frozen=True)
class FitSelection:
    """Utterances of the k-means fit sample, in the canonical order their features are concatenated."""

    ids: tuple[str, ...]
    planned_frames: int
    candidates: int  # utterances the fraction selected before the frame cap
    capped: bool


def select_fit_utterances(
    index: ShardIndex, fraction: float, seed: int, max_frames: int, label_rate: int
) -> FitSelection:
    """Pick utterances whose hash is below ``fraction``; keep those with the lowest hashes up to ``max_frames``.

    The order (hash, then id) is also the order in which the fit features are concatenated, so the fit is the
    same however the shards are split across processes.
    """
    chosen = sorted(
        (h, u.id, expected_label_frames(u.num_samples, label_rate))
        for u in index.utterances
        if (h := utterance_hash(u.id, seed)) < fraction
    )
    ids, total = [], 0
    for _, utt_id, frames in chosen:
        if total + frames > max_frames:
            break
        ids.append(utt_id)
        total += frames
    return FitSelection(
        ids=tuple(ids), planned_frames=total, candidates=len(chosen), capped=len(ids) < len(chosen)
    )


# --------------------------------------------------------------------------------------------- per-rank work


@dataclass
class RankReport:
    """What one process (or one shard) labelled and could not read; merged on rank 0."""

    utterances: int = 0
    frames: int = 0
    samples: int = 0
    unreadable: list[ReadError] = field(default_factory=list)
    bad_alignments: list[ReadError] = field(default_factory=list)
    counts: PhoneClusterCounts | None = None

    def to_record(self) -> dict[str, Any]:
        """A JSON-able copy (the progress record of a shard, for ``--resume``)."""
        counts = self.counts
        return {
            "utterances": self.utterances,
            "frames": self.frames,
            "samples": self.samples,
            "unreadable": [e.to_dict() for e in self.unreadable],
            "bad_alignments": [e.to_dict() for e in self.bad_alignments],
            "unaligned_frames": counts.unaligned_frames,
            "counts": {
                p: [[int(z), int(n)] for z, n in enumerate(row) if n] for p, row in counts.counts.items()
            },
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], num_classes: int) -> RankReport:
        counts = PhoneClusterCounts(num_classes)
        counts.unaligned_frames = record["unaligned_frames"]
        for phone, pairs in record["counts"].items():
            row = np.zeros(num_classes, dtype=np.int64)
            for cluster, n in pairs:
                row[cluster] = n
            counts.counts[phone] = row
        return cls(
            utterances=record["utterances"],
            frames=record["frames"],
            samples=record["samples"],
            unreadable=[ReadError(**e) for e in record["unreadable"]],
            bad_alignments=[ReadError(**e) for e in record["bad_alignments"]],
            counts=counts,
        )


class Progress:
    """tqdm bar on rank 0 showing utterances/s and hours of audio per second."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = tqdm(
            total=total, desc=desc, unit="utt", disable=not enabled, mininterval=1.0, file=sys.stderr
        )
        self.samples = 0
        self.start = time.perf_counter()

    def update(self, num_samples: int) -> None:
        self.samples += num_samples
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        self.bar.set_postfix_str(
            f"{self.samples / SAMPLE_RATE / 3600 / elapsed:.3f} audio h/s", refresh=False
        )
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def shards_of_rank(index: ShardIndex, ctx: DistContext) -> list[str]:
    """Shard names this process handles: every ``world_size``-th, starting at its rank."""
    return index.shard_names[ctx.rank :: ctx.world_size]


def gather_fit_features(
    index: ShardIndex, shards: list[str], extractor: FeatureExtractor, wanted: set[str], show: bool
) -> dict[str, np.ndarray]:
    """Pass 1: features of the fit-sample utterances in ``shards`` (read errors are reported in pass 2); shards
    without one are not read at all."""
    listed = utterance_ids_by_shard(index)
    progress = Progress(sum(1 for s in shards for i in listed[s] if i in wanted), "fit sample", show)
    features: dict[str, np.ndarray] = {}
    ignored: list[ReadError] = []
    for shard in shards:
        if wanted.isdisjoint(listed[shard]):
            continue
        for sample in iter_shard_utterances(index, shard, ignored, wanted):
            features[sample.id] = extractor(sample.audio)
            progress.update(len(sample.audio))
    progress.close()
    return features


def label_one_shard(
    index: ShardIndex,
    shard: str,
    extractor: FeatureExtractor,
    assigner: Assigner,
    out_dir: Path,
    label_dtype: np.dtype,
    progress: Progress,
) -> RankReport:
    """Label every utterance of ``shard`` and write its labels file, then its progress record (for ``--resume``)."""
    report = RankReport(counts=PhoneClusterCounts(assigner.num_classes))
    labels: dict[str, np.ndarray] = {}
    for sample in iter_shard_utterances(index, shard, report.unreadable):
        codes = assigner(extractor(sample.audio))
        expected = expected_label_frames(len(sample.audio), extractor.label_rate)
        if len(codes) != expected:
            raise RuntimeError(
                f"{sample.id}: {len(codes)} feature frames for {len(sample.audio)} samples, expected {expected}"
            )
        labels[sample.id] = codes.astype(label_dtype)
        report.utterances += 1
        report.frames += len(codes)
        report.samples += len(sample.audio)
        phones = sample.meta.get("phones")
        if phones is not None:
            try:
                names, phone_ids = frame_phone_ids(
                    phones, len(codes), extractor.label_rate, where=f"{sample.id}: phones"
                )
            except ValueError as err:
                report.bad_alignments.append(ReadError(shard, sample.id, str(err)))
            else:
                report.counts.add_ids(names, phone_ids, codes)
        progress.update(len(sample.audio))
    path = save_shard_labels(out_dir, shard, labels)
    write_progress(out_dir, shard, {**report.to_record(), "labels_sha256": file_sha256(path)})
    return report


def label_shards(
    index: ShardIndex,
    shards: list[str],
    extractor: FeatureExtractor,
    assigner: Assigner,
    out_dir: Path,
    label_dtype: np.dtype,
    show: bool,
) -> RankReport:
    """Pass 2: label every utterance of ``shards``, write one labels file per shard, count phone/cluster pairs."""
    listed = utterance_ids_by_shard(index)
    progress = Progress(sum(len(listed[s]) for s in shards), "labelling", show)
    reports = [label_one_shard(index, s, extractor, assigner, out_dir, label_dtype, progress) for s in shards]
    progress.close()
    return merge_reports(reports, assigner.num_classes)


def merge_reports(reports: Iterable[RankReport], num_classes: int) -> RankReport:
    merged = RankReport(counts=PhoneClusterCounts(num_classes))
    for r in reports:
        merged.utterances += r.utterances
        merged.frames += r.frames
        merged.samples += r.samples
        merged.unreadable += r.unreadable
        merged.bad_alignments += r.bad_alignments
        merged.counts.merge([r.counts])
    key = lambda e: (e.shard, e.item != SHARD_ITEM, e.item, e.reason)  # noqa: E731  (shard-wide errors first)
    merged.unreadable.sort(key=key)
    merged.bad_alignments.sort(key=key)
    return merged


# --------------------------------------------------------------------------------------------- options
@dataclass(frozen=True)
class FeatureOptions:
    """Which features are clustered: ``kind`` "mfcc" (39-dim MFCC + deltas at 100 Hz, iteration 1) or "hubert" (the
    output of encoder ``layer`` of the model in ``checkpoint``, 50 Hz; 0 = the encoder input; None = the layer at
    half the encoder's depth, :func:`~hubert_lit.labels.features.default_layer`). Long utterances go
    through the model in chunks of ``max_chunk_seconds`` with ``context_seconds`` of extra audio on each side."""

    kind: str
    checkpoint: Path | None = None
    layer: int | None = None
    max_chunk_seconds: float = DEFAULT_MAX_CHUNK_SAMPLES / SAMPLE_RATE
    context_seconds: float = DEFAULT_CONTEXT_SAMPLES / SAMPLE_RATE


@dataclass(frozen=True)
class KMeansOptions:
    """The k-means fit: sample (``fit_fraction`` of the utterances by seeded hash, at most ``max_fit_frames``),
    greedy k-means++ on ``init_size`` points, Lloyd (``max_iter``, ``tol``; first on ``coarse_size`` frames when
    the sample is much larger), ``n_init`` restarts."""

    fit_fraction: float = 0.1
    max_fit_frames: int = 2_000_000
    seed: int = 0
    max_iter: int = 100
    tol: float = 1e-4
    n_init: int = 1
    init_size: int = 30_000
    coarse_size: int = 50_000


def load_centroids(label_dir: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``centroids.npy`` and ``meta.json`` of an earlier labelling run."""
    path = label_dir / CENTROIDS_FILE
    if not path.is_file():
        raise LabelError(f"centroids {label_dir}: {path} not found (not a labels folder of this tool?)")
    try:
        meta = load_label_meta(label_dir)
        centroids = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise LabelError(f"centroids {label_dir}: {err}") from err
    if centroids.ndim != 2 or centroids.dtype != np.float32 or centroids.shape[0] != meta["num_classes"]:
        raise LabelError(
            f"{path}: expected float32 (k={meta['num_classes']}, dim) centroids, got {centroids.dtype} "
            f"{centroids.shape}"
        )
    if "features" not in meta or "kmeans" not in meta:
        raise LabelError(f"{label_dir / META_FILE}: no 'features'/'kmeans' record; not written by this tool")
    return centroids, meta


def existing_label_files(out_dir: Path) -> list[Path]:
    """The files of an earlier labelling run in ``out_dir`` (what --overwrite replaces, with ``.progress/``)."""
    if not out_dir.is_dir():
        return []
    names = [META_FILE, CENTROIDS_FILE]
    return sorted(p for p in out_dir.iterdir() if p.name in names or p.name.endswith(LABELS_SUFFIX))


def overwrite_folder(out_dir: Path) -> Path:
    """Where an ``--overwrite`` run builds its output, beside ``out_dir`` (swapped in when it is complete)."""
    return out_dir.with_name(f".{out_dir.name}.overwrite")


def check_replaceable(out_dir: Path) -> None:
    """``--overwrite`` replaces only a labels folder of this tool (or an empty folder): never a user's files."""
    if not out_dir.is_dir() or (out_dir / META_FILE).is_file():
        return
    own = {META_FILE, CENTROIDS_FILE, PROGRESS_DIR}
    foreign = [p.name for p in out_dir.iterdir() if p.name not in own and not p.name.endswith(LABELS_SUFFIX)]
    if foreign:
        raise LabelError(
            f"--out {out_dir} is not a labels folder (no {META_FILE}; it holds {', '.join(sorted(foreign)[:3])}); "
            "--overwrite replaces only this tool's output or an empty folder"
        )


def resolve_device(requested: str | None, features: str) -> torch.device:
    if features != "hubert":
        return torch.device("cpu")
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_options(
    features: FeatureOptions | None,
    clusters: int | None,
    kmeans: KMeansOptions,
    source_meta: dict[str, Any] | None,
    source: Path | None,
) -> tuple[FeatureOptions, int]:
    """Features and k of the run: taken from the earlier run's ``meta.json`` where ``source`` is given (and
    checked against what was asked), else as given; inconsistent or out-of-range settings raise LabelError."""
    if source_meta is not None:
        recorded = source_meta["features"]
        kind = (features.kind if features is not None else None) or recorded.get("type")
        layer = features.layer if features is not None else None
        if kind == "hubert" and layer is None:
            layer = recorded.get("layer")
        if clusters is not None and clusters != source_meta["num_classes"]:
            raise LabelError(f"--clusters {clusters} but {source} has {source_meta['num_classes']}")
        clusters = source_meta["num_classes"]
        base = features or FeatureOptions(kind=kind)
        features = FeatureOptions(kind, base.checkpoint, layer, base.max_chunk_seconds, base.context_seconds)
    if features is None or features.kind not in ("mfcc", "hubert"):
        raise LabelError("--features mfcc|hubert is required (or --centroids of an earlier run)")
    if clusters is None or clusters < 1:
        raise LabelError(f"--clusters must be a positive integer, got {clusters}")
    if features.kind == "hubert":
        if features.checkpoint is None:
            raise LabelError("--features hubert needs --checkpoint")
    elif features.checkpoint is not None or features.layer is not None:
        raise LabelError("--checkpoint and --layer only apply to --features hubert")
    if not 0.0 < kmeans.fit_fraction <= 1.0:
        raise LabelError(f"--fit-fraction must be in (0, 1], got {kmeans.fit_fraction}")
    if kmeans.max_fit_frames < clusters:
        raise LabelError(f"--max-fit-frames {kmeans.max_fit_frames} is below --clusters {clusters}")
    return features, clusters


def build_extractor(features: FeatureOptions, device: torch.device) -> FeatureExtractor:
    if features.kind == "mfcc":
        return MfccFeatures()
    try:
        return HubertLayerFeatures(
            features.checkpoint,
            features.layer,
            device=device,
            max_chunk_samples=int(round(features.max_chunk_seconds * SAMPLE_RATE)),
            context_samples=int(round(features.context_seconds * SAMPLE_RATE)),
        )
    except (FileNotFoundError, ValueError) as err:
        raise LabelError(str(err)) from err


def check_same_features(extractor: FeatureExtractor, source_meta: dict[str, Any], source: Path) -> None:
    ours, theirs = extractor.description(), source_meta["features"]
    for key in FEATURE_IDENTITY_KEYS:
        if ours.get(key) != theirs.get(key):
            raise LabelError(
                f"--centroids {source}: fitted on features with {key}={theirs.get(key)!r}, but this run computes "
                f"{key}={ours.get(key)!r}"
            )


# --------------------------------------------------------------------------------------------- the run


def fit_on_rank0(
    clusters: int,
    kmeans: KMeansOptions,
    gathered: list[dict[str, np.ndarray]],
    selection: FitSelection,
    dim: int,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Concatenate the gathered fit features in canonical order and fit k-means."""
    features: dict[str, np.ndarray] = {}
    for part in gathered:
        features.update(part)
    ids = [i for i in selection.ids if i in features]
    frames = sum(features[i].shape[0] for i in ids)
    if frames < clusters:
        raise LabelError(
            f"the fit sample has {frames} frames ({len(ids)} utterances), fewer than --clusters {clusters}; "
            "raise --fit-fraction"
        )
    x = np.empty((frames, dim), dtype=np.float32)
    row = 0
    for i in ids:
        x[row : row + features[i].shape[0]] = features[i]
        row += features[i].shape[0]
        del features[i]
    print(
        f"fitting k-means: k={clusters} on {frames} frames x {dim} dims from {len(ids)} utterances "
        f"(faiss {faiss.__version__}, {'GPU' if faiss_num_gpus() else 'CPU'})",
        flush=True,
    )
    result = fit_kmeans(
        x,
        clusters,
        seed=kmeans.seed,
        max_iter=kmeans.max_iter,
        tol=kmeans.tol,
        n_init=kmeans.n_init,
        init_size=kmeans.init_size,
        coarse_size=kmeans.coarse_size,
    )
    info = {
        "library": f"faiss {faiss.__version__} ({'GPU' if faiss_num_gpus() else 'CPU'})",
        "init": "greedy k-means++",
        "seed": kmeans.seed,
        "n_init": kmeans.n_init,
        "init_size": kmeans.init_size,
        "coarse_size": kmeans.coarse_size,
        "coarse_iterations": result.coarse_iterations,
        "max_iter": kmeans.max_iter,
        "tol": kmeans.tol,
        "iterations": result.iterations,
        "inertia_per_frame": result.inertia,
        "fit_fraction": kmeans.fit_fraction,
        "max_fit_frames": kmeans.max_fit_frames,
        "fit_candidates": selection.candidates,
        "fit_capped": selection.capped,
        "fit_utterances": len(ids),
        "fit_frames": frames,
        "centroids_from": None,
    }
    return result.centroids, info


@dataclass(frozen=True)
class LabelSummary:
    """What a labelling run wrote (rank 0's view; other ranks get the same object)."""

    out: Path
    num_classes: int
    label_rate: int
    utterances: int
    frames: int
    unreadable: int
    quality: dict[str, Any] | None


@dataclass
class _Start:
    """What rank 0 found in ``--out`` before the run: an earlier fit to reuse and the shards already done, or a
    finished folder (``complete``)."""

    centroids: np.ndarray | None = None
    kmeans_info: dict[str, Any] | None = None
    done: dict[str, dict[str, Any]] = field(default_factory=dict)
    complete: LabelSummary | None = None


def _summary_of(out_dir: Path, meta: dict[str, Any]) -> LabelSummary:
    labelled = meta["labelled"]
    return LabelSummary(
        out_dir,
        meta["num_classes"],
        meta["label_rate"],
        labelled["utterances"],
        labelled["frames"],
        meta["unreadable"]["count"],
        meta.get("quality"),
    )


def _clear(out_dir: Path) -> None:
    for path in existing_label_files(out_dir):
        path.unlink()
    clear_progress(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)


def _remove_stale_temp_files(out_dir: Path, index: ShardIndex) -> None:
    """Temporary files that writes of a killed run left beside this run's outputs."""
    outputs = [out_dir / META_FILE, out_dir / CENTROIDS_FILE]
    for shard in index.shard_names:
        outputs += [labels_path(out_dir, shard), progress_path(out_dir, shard)]
    for path in outputs:
        for stale in temp_files(path):
            stale.unlink()
            print(f"removed {stale}, left by an interrupted write", flush=True)


def _prepare(out_dir: Path, resume: bool, requested: dict[str, Any], index: ShardIndex) -> _Start:
    """Rank 0: empty ``out_dir`` for a fresh run, or find what an earlier run of the same fit left there."""
    _remove_stale_temp_files(out_dir, index)
    if not resume:
        _clear(out_dir)
        return _Start()
    meta_path = out_dir / META_FILE
    if not meta_path.is_file():
        if any(p.name.endswith(LABELS_SUFFIX) for p in existing_label_files(out_dir)):
            raise LabelError(
                f"--resume: {out_dir} holds label files but no meta.json record of their fit (written by an "
                "older version of this tool?); pass --overwrite to start over"
            )
        print(f"--resume: no earlier fit recorded in {out_dir}; starting from the beginning", flush=True)
        _clear(out_dir)  # at most centroids.npy of a run killed before it recorded its fit
        return _Start()
    try:
        meta = load_label_meta(out_dir, allow_incomplete=True)
        check_fit_record(meta, requested, str(meta_path))
    except ValueError as err:
        raise LabelError(str(err)) from err
    centroids_path = out_dir / CENTROIDS_FILE
    recorded = meta["kmeans"].get("centroids_sha256")
    if not centroids_path.is_file() or file_sha256(centroids_path) != recorded:
        raise LabelError(
            f"--resume: {centroids_path} is missing or is not the one {meta_path} records; pass --overwrite to "
            "start over"
        )
    if meta.get("status") != INCOMPLETE:
        clear_progress(out_dir)  # killed after the final meta.json was written
        print(f"--resume: {out_dir} is complete; nothing to do", flush=True)
        return _Start(complete=_summary_of(out_dir, meta))
    done = read_done_shards(out_dir, index.shard_names, lambda shard: labels_path(out_dir, shard))
    print(
        f"--resume: {len(done)} of {len(index.shards)} shards already labelled in {out_dir}; labelling the rest "
        "with the centroids of the earlier fit (no new fit)",
        flush=True,
    )
    centroids = np.load(centroids_path, allow_pickle=False)
    return _Start(centroids, dict(meta["kmeans"]), done)


def _npy_bytes(centroids: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, centroids)
    return buffer.getvalue()


def _save_centroids(out_dir: Path, centroids: np.ndarray) -> str:
    """Write ``centroids.npy`` atomically; the SHA-256 of the file."""
    data = _npy_bytes(centroids)
    atomic_write(out_dir / CENTROIDS_FILE, lambda f: f.write(data))
    return hashlib.sha256(data).hexdigest()


def _fit(
    index: ShardIndex,
    clusters: int,
    kmeans: KMeansOptions,
    ctx: DistContext,
    extractor: FeatureExtractor,
    show: bool,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Pass 1 and the k-means fit: every rank gathers its shards' share of the fit sample, rank 0 fits."""
    selection = select_fit_utterances(
        index, kmeans.fit_fraction, kmeans.seed, kmeans.max_fit_frames, extractor.label_rate
    )
    if ctx.is_main and selection.capped:
        print(
            f"fit sample capped by --max-fit-frames {kmeans.max_fit_frames}: {len(selection.ids)} of "
            f"{selection.candidates} selected utterances kept",
            flush=True,
        )
    local = ctx.run(
        lambda: gather_fit_features(index, shards_of_rank(index, ctx), extractor, set(selection.ids), show)
    )
    gathered = ctx.gather(local)
    del local
    outcome = ctx.run(
        lambda: fit_on_rank0(clusters, kmeans, gathered, selection, extractor.dim) if ctx.is_main else None
    )
    gathered = None  # the fit sample: free it before the broadcast
    centroids, kmeans_info = ctx.broadcast(outcome)
    if ctx.is_main:
        print(
            f"inertia {kmeans_info['inertia_per_frame']:.4f} per frame after "
            f"{kmeans_info['coarse_iterations']} coarse + {kmeans_info['iterations']} full Lloyd iterations",
            flush=True,
        )
    return centroids, kmeans_info


def _run(
    shards_spec: str,
    out_dir: Path,
    clusters: int,
    kmeans: KMeansOptions,
    ctx: DistContext,
    extractor: FeatureExtractor,
    index: ShardIndex,
    source: tuple[np.ndarray, dict[str, Any]] | None,
    source_dir: Path | None,
    progress: bool,
    resume: bool,
) -> LabelSummary:
    show = ctx.is_main and progress
    label_rate = extractor.label_rate
    label_dtype = np.dtype(np.int16 if clusters <= np.iinfo(np.int16).max else np.int32)
    source_record = {
        "shards": shards_spec,
        "num_shards": len(index.shards),
        "num_utterances": index.num_utterances,
        "index_sha256": index_digest(index),
    }
    # what decides the labels: checked against meta.json's record by --resume
    requested: dict[str, Any] = {
        "num_classes": clusters,
        "label_rate": label_rate,
        "index": source_record["index_sha256"],
        "features": {k: extractor.description().get(k) for k in FEATURE_IDENTITY_KEYS},
    }
    if source is not None:
        centroids_from = str(source_dir.resolve())
        requested["kmeans"] = {
            "centroids_from": centroids_from,
            "centroids_sha256": hashlib.sha256(_npy_bytes(source[0])).hexdigest(),
        }
    else:
        requested["kmeans"] = {k: getattr(kmeans, k) for k in FIT_OPTION_KEYS}

    start = ctx.broadcast(
        ctx.run(lambda: _prepare(out_dir, resume, requested, index) if ctx.is_main else None)
    )
    if start.complete is not None:
        return start.complete

    record = {  # what meta.json says of the folder, before and after the labels are written
        "format": LABELS_FORMAT,
        "label_rate": label_rate,
        "num_classes": clusters,
        "label_dtype": label_dtype.name,
        "features": extractor.description(),
        "source": source_record,
    }
    if start.centroids is not None:
        centroids, kmeans_info = start.centroids, start.kmeans_info
    else:
        if source is not None:
            centroids = source[0]
            kmeans_info = dict(source[1]["kmeans"], centroids_from=centroids_from)
        else:
            centroids, kmeans_info = _fit(index, clusters, kmeans, ctx, extractor, show)

        def record_fit() -> None:
            # Recorded before any label is written: what --resume checks and reuses after a kill.
            kmeans_info["centroids_sha256"] = _save_centroids(out_dir, centroids)
            save_label_meta(out_dir, {**record, "status": INCOMPLETE, "kmeans": kmeans_info})

        ctx.run(lambda: record_fit() if ctx.is_main else None)

    todo = [s for s in index.shard_names if s not in start.done]
    mine = ctx.run(
        lambda: label_shards(
            index,
            todo[ctx.rank :: ctx.world_size],
            extractor,
            Assigner(centroids, gpu_device=ctx.local_rank),
            out_dir,
            label_dtype,
            show,
        )
    )
    reports = ctx.gather(mine)

    def finish() -> LabelSummary:
        kept = [RankReport.from_record(r, clusters) for r in start.done.values()]
        merged = merge_reports([*reports, *kept], clusters)
        quality = quality_report(merged.counts)
        meta = {
            **record,
            "kmeans": kmeans_info,
            "labelled": {
                "utterances": merged.utterances,
                "frames": merged.frames,
                "audio_hours": merged.samples / SAMPLE_RATE / 3600,
            },
            "unreadable": {
                "count": len(merged.unreadable),
                "items": [e.to_dict() for e in merged.unreadable],
            },
            "bad_alignments": {
                "count": len(merged.bad_alignments),
                "items": [e.to_dict() for e in merged.bad_alignments],
            },
            "quality": quality,
        }
        save_label_meta(out_dir, meta)
        clear_progress(out_dir)
        print(
            f"labelled {merged.utterances} utterances ({merged.frames} frames at {label_rate} Hz, "
            f"{merged.samples / SAMPLE_RATE / 3600:.3f} h) into {out_dir}",
            flush=True,
        )
        print_problems("read error(s); the utterances named are not labelled", merged.unreadable)
        print_problems(
            "unusable phone alignment(s); those utterances are labelled but left out of the quality figures",
            merged.bad_alignments,
        )
        if quality is not None:
            print(f"quality vs phone alignments: {format_quality(quality)}", flush=True)
        else:
            print(
                "no phone alignments in the shards: phone purity / cluster purity / PNMI not computed",
                flush=True,
            )
        return LabelSummary(
            out_dir, clusters, label_rate, merged.utterances, merged.frames, len(merged.unreadable), quality
        )

    return ctx.broadcast(ctx.run(lambda: finish() if ctx.is_main else None))


def print_problems(title: str, problems: list[ReadError]) -> None:
    if not problems:
        return
    print(f"WARNING: {len(problems)} {title}:", file=sys.stderr)
    for e in problems[:MAX_ERRORS_PRINTED]:
        print(f"  {e.shard} {e.item}: {e.reason}", file=sys.stderr)
    if len(problems) > MAX_ERRORS_PRINTED:
        print(
            f"  ... and {len(problems) - MAX_ERRORS_PRINTED} more (all listed in meta.json)", file=sys.stderr
        )


def label_corpus(
    shards: str | Path,
    out: str | Path,
    features: FeatureOptions | None = None,
    clusters: int | None = None,
    centroids: str | Path | None = None,
    kmeans: KMeansOptions = KMeansOptions(),
    device: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    dist_timeout_minutes: float = 240.0,
    resume: bool = False,
    cache_dir: str | Path | None = None,
) -> LabelSummary:
    """Label every utterance of the shard folder ``shards`` into the labels folder ``out``.

    Args:
        shards: shard folder (``index.json`` + tars) written by ``python -m hubert_lit shard``: a local folder, an
            ``http(s)://`` or fsspec URL, or a ``pipe:`` template (:mod:`hubert_lit.data.locations`).
        out: labels folder to write (``meta.json``, ``centroids.npy``, ``<shard>.labels.npz``), local.
        features: the features to cluster; may be left out with ``centroids`` (then recorded in that folder).
        clusters: k; may be left out with ``centroids``.
        centroids: labels folder of an earlier run whose centroids label these shards without a fit (dev/test
            with the train centroids); its feature settings must match.
        kmeans: the fit's settings (ignored with ``centroids``).
        device: torch device for HuBERT features (default: cuda if available; under torchrun cuda:LOCAL_RANK).
        overwrite: replace the labels of an existing labels folder.
        progress: progress bars on rank 0.
        dist_timeout_minutes: how long processes wait for each other (rank 0 fits while the others wait).
        resume: finish the run that wrote ``out`` (killed, or still complete): keep the shards whose labels files
            are complete and the fit recorded in ``meta.json`` (no new fit), after checking that the record (k,
            features, k-means settings and seed, centroids hash, shards) is what this run asks for.
        cache_dir: keep a local copy of remote shards once read (pass 2 then reads them from the disk).

    Under torchrun (``WORLD_SIZE > 1``) the shards are split across processes; the output is the same, and so is
    the output of a run that was killed and resumed.
    Raises :class:`LabelError` for bad input, naming the option or file.
    """
    out_dir = Path(out)
    source_dir = Path(centroids) if centroids is not None else None
    try:
        if resume and overwrite:
            raise LabelError("--resume and --overwrite exclude each other")
        source = load_centroids(source_dir) if source_dir is not None else None
        features, clusters = resolve_options(
            features, clusters, kmeans, source[1] if source else None, source_dir
        )
        if source_dir is not None and source_dir.resolve() == out_dir.resolve():
            raise LabelError("--centroids and --out are the same folder")
        recovered = recover_folder_swap(out_dir) if not resume else None
        if recovered:
            print(recovered, file=sys.stderr)
        if existing_label_files(out_dir) and not (overwrite or resume):
            raise LabelError(
                f"{out_dir} already holds labels (meta.json / *.labels.npz / centroids.npy); "
                "pass --resume to finish the run that wrote them, or --overwrite to replace them"
            )
        if overwrite:
            check_replaceable(out_dir)
        index = load_index(shards, cache_dir=cache_dir)
        if not index.shards:
            raise LabelError(f"{index.source}: index.json lists no shards")
        torch_device = resolve_device(device, features.kind)
    except (ShardFormatError, LocationError, FetchError) as err:
        raise LabelError(str(err)) from err
    shards_spec = str(index.directory.resolve()) if index.location.is_local else index.source
    try:
        ctx = DistContext.from_env(use_cuda=torch_device.type == "cuda", timeout_minutes=dist_timeout_minutes)
    except ValueError as err:
        raise LabelError(str(err)) from err
    try:
        if torch_device.type == "cuda" and ctx.initialized and device is None:
            torch_device = torch.device("cuda", ctx.local_rank)
        extractor = ctx.run(lambda: build_extractor(features, torch_device))
        if source is not None:
            check_same_features(extractor, source[1], source_dir)
        # --overwrite builds the new labels beside the old ones and swaps them in only when complete: a bad
        # argument or a kill leaves the old labels as they were
        swap = overwrite and out_dir.is_dir() and any(out_dir.iterdir())
        summary = _run(
            shards_spec,
            overwrite_folder(out_dir) if swap else out_dir,
            clusters,
            kmeans,
            ctx,
            extractor,
            index,
            source,
            source_dir,
            progress,
            resume,
        )
        if swap:

            def replace() -> None:
                swap_folder(overwrite_folder(out_dir), out_dir)
                print(f"replaced the labels in {out_dir}", flush=True)

            ctx.run(lambda: replace() if ctx.is_main else None)
            summary = dataclasses.replace(summary, out=out_dir)
        return summary
    finally:
        ctx.close()
