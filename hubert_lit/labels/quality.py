"""Frame-level quality of discovered units against phone alignments (HuBERT paper, Sec. IV-D).

With the joint distribution ``p(y, z)`` of phone ``y`` and cluster ``z`` over all labelled frames:

* phone purity   = E_z[max_y p(y | z)] = sum_z max_y p(y, z)   (how phone-pure a cluster is)
* cluster purity = E_y[max_z p(z | y)] = sum_y max_z p(y, z)   (how concentrated a phone is on one cluster)
* PNMI           = I(y; z) / H(y)                              (phone uncertainty removed by the labels)

The phone of a label frame is the alignment segment that contains the frame's centre: frame ``j`` at label rate
``r`` covers samples ``[j * 16000 / r, j * 16000 / r + 400)``, so its centre is sample ``j * 16000 / r + 200``.
Frames whose centre falls in no segment are counted as unaligned and left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from hubert_lit.constants import SAMPLE_RATE

FRAME_WINDOW = 400


def frame_centres(num_frames: int, label_rate: int) -> np.ndarray:
    """Sample index of the centre of each of ``num_frames`` label frames at ``label_rate`` Hz."""
    hop = SAMPLE_RATE // label_rate
    return np.arange(num_frames, dtype=np.int64) * hop + FRAME_WINDOW // 2


def frame_phone_ids(
    phones: Sequence[Sequence], num_frames: int, label_rate: int, where: str = "phones"
) -> tuple[list[str], np.ndarray]:
    """Phone at the centre of each label frame: ``(names, ids)`` with ``ids[j]`` indexing ``names`` or -1.

    ``phones`` is ``[[phone, start, end], ...]`` with integer sample offsets at 16 kHz, end exclusive, segments
    not overlapping; -1 marks a frame whose centre no segment covers. A malformed alignment raises ``ValueError``
    naming ``where``.
    """
    segments = []
    for i, seg in enumerate(phones):
        if (
            not isinstance(seg, (list, tuple))
            or len(seg) != 3
            or not isinstance(seg[0], str)
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in seg[1:])
            or not 0 <= seg[1] < seg[2]
        ):
            raise ValueError(f"{where}[{i}]: expected [phone, start, end] with 0 <= start < end, got {seg!r}")
        segments.append(seg)
    segments.sort(key=lambda s: s[1])
    for prev, cur in zip(segments, segments[1:]):
        if cur[1] < prev[2]:
            raise ValueError(f"{where}: segments {prev!r} and {cur!r} overlap")
    if not segments:
        return [], np.full(num_frames, -1, dtype=np.int64)
    names = sorted({seg[0] for seg in segments})
    name_id = {name: i for i, name in enumerate(names)}
    seg_phone = np.array([name_id[seg[0]] for seg in segments], dtype=np.int64)
    starts = np.array([seg[1] for seg in segments], dtype=np.int64)
    ends = np.array([seg[2] for seg in segments], dtype=np.int64)
    centres = frame_centres(num_frames, label_rate)
    seg_idx = np.searchsorted(starts, centres, side="right") - 1
    covered = (seg_idx >= 0) & (centres < ends[np.maximum(seg_idx, 0)])
    return names, np.where(covered, seg_phone[np.maximum(seg_idx, 0)], -1)


def frame_phones(phones: Sequence[Sequence], num_frames: int, label_rate: int, where: str = "phones") -> list:
    """Phone name at the centre of each label frame (``None`` where no segment covers it)."""
    names, ids = frame_phone_ids(phones, num_frames, label_rate, where)
    return [names[i] if i >= 0 else None for i in ids.tolist()]


class PhoneClusterCounts:
    """Joint frame counts of (phone, cluster), accumulated utterance by utterance; mergeable across processes."""

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.counts: dict[str, np.ndarray] = {}
        self.unaligned_frames = 0

    def add_ids(self, names: Sequence[str], phone_ids: np.ndarray, labels: np.ndarray) -> None:
        """Count one utterance: per frame a phone index into ``names`` (-1: unaligned) and a cluster label."""
        phone_ids, labels = np.asarray(phone_ids, dtype=np.int64), np.asarray(labels, dtype=np.int64)
        if phone_ids.shape != labels.shape:
            raise ValueError(f"{len(phone_ids)} frame phones for {len(labels)} labels")
        aligned = phone_ids >= 0
        self.unaligned_frames += int((~aligned).sum())
        k = self.num_classes
        joint = np.bincount(phone_ids[aligned] * k + labels[aligned], minlength=len(names) * k)
        for i, row in enumerate(joint.reshape(len(names), k)):
            if row.any():
                self.counts[names[i]] = self.counts[names[i]] + row if names[i] in self.counts else row

    def add(self, phones_per_frame: Sequence, labels: np.ndarray) -> None:
        """Count one utterance: the phone name (or ``None``) and the cluster label of each frame."""
        names = sorted({p for p in phones_per_frame if p is not None})
        name_id = {name: i for i, name in enumerate(names)}
        ids = np.array([name_id[p] if p is not None else -1 for p in phones_per_frame], dtype=np.int64)
        self.add_ids(names, ids, labels)

    def merge(self, others: Iterable[PhoneClusterCounts]) -> PhoneClusterCounts:
        """Add the counts of ``others`` into this object (returns self)."""
        for other in others:
            for phone, row in other.counts.items():
                if phone in self.counts:
                    self.counts[phone] = self.counts[phone] + row
                else:
                    self.counts[phone] = row.copy()
            self.unaligned_frames += other.unaligned_frames
        return self

    def matrix(self) -> tuple[list[str], np.ndarray]:
        """Phones (sorted) and the ``(phones, clusters)`` count matrix."""
        phones = sorted(self.counts)
        if not phones:
            return [], np.zeros((0, self.num_classes), dtype=np.int64)
        return phones, np.stack([self.counts[p] for p in phones])

    @property
    def aligned_frames(self) -> int:
        return int(sum(int(row.sum()) for row in self.counts.values()))


def quality_metrics(joint_counts: np.ndarray) -> dict[str, float]:
    """Phone purity, cluster purity and PNMI of a ``(phones, clusters)`` matrix of frame counts."""
    counts = np.asarray(joint_counts, dtype=np.float64)
    if counts.ndim != 2 or counts.size == 0 or counts.sum() <= 0:
        raise ValueError(f"need a non-empty 2-D matrix of frame counts, got shape {counts.shape}")
    if (counts < 0).any():
        raise ValueError("frame counts must be non-negative")
    p_yz = counts / counts.sum()
    p_y = p_yz.sum(axis=1)
    p_z = p_yz.sum(axis=0)
    nz = p_yz > 0
    mutual_info = float((p_yz[nz] * np.log(p_yz[nz] / np.outer(p_y, p_z)[nz])).sum())
    h_y = float(-(p_y[p_y > 0] * np.log(p_y[p_y > 0])).sum())
    return {
        "phone_purity": float(p_yz.max(axis=0).sum()),
        "cluster_purity": float(p_yz.max(axis=1).sum()),
        # A single phone has no uncertainty to remove; PNMI is undefined there and reported as 0.
        "pnmi": mutual_info / h_y if h_y > 0 else 0.0,
    }


def quality_report(counts: PhoneClusterCounts) -> dict[str, float | int] | None:
    """Metrics plus frame and phone counts for meta.json, or ``None`` when no frame was aligned."""
    phones, matrix = counts.matrix()
    if not phones or matrix.sum() == 0:
        return None
    report: dict[str, float | int] = dict(quality_metrics(matrix))
    report.update(
        aligned_frames=int(matrix.sum()),
        unaligned_frames=counts.unaligned_frames,
        num_phones=len(phones),
        used_clusters=int((matrix.sum(axis=0) > 0).sum()),
    )
    return report


def format_quality(report: Mapping[str, float | int]) -> str:
    """One line for the console."""
    return (
        f"phone purity {report['phone_purity']:.4f}  cluster purity {report['cluster_purity']:.4f}  "
        f"PNMI {report['pnmi']:.4f}  ({report['aligned_frames']} aligned frames, {report['num_phones']} phones, "
        f"{report['used_clusters']} clusters used)"
    )
