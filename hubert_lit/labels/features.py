"""Frame features for k-means, computed utterance by utterance while streaming through shards.

Two extractors share one small interface (``label_rate``, ``dim``, ``description()``, ``__call__(waveform)``):
:class:`MfccFeatures` (39-dim, 100 Hz) and :class:`HubertLayerFeatures` (one transformer layer of a saved model,
50 Hz). Long utterances go through the model in chunks of whole frames with context on both sides, so the frame
count always follows the conv formula ``floor((n - 400) / 320) + 1`` (fairseq's chunking drops a frame at every
chunk boundary). :func:`iter_shard_utterances` reads a shard, decodes each FLAC member itself and reports every
utterance it cannot read (bad member, damaged tar, utterance listed in ``index.json`` but absent) instead of
stopping.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from hubert_lit.constants import FRAME_HOP, FRAME_RATE, FRAME_WINDOW
from hubert_lit.data.label_files import expected_label_frames
from hubert_lit.data.shardio import Sample, ShardFormatError, ShardIndex, decode_flac
from hubert_lit.labels.mfcc import MFCC_DESCRIPTION, MFCC_DIM, MFCC_FRAME_RATE, mfcc_features

DEFAULT_MAX_CHUNK_SAMPLES = 1_600_000  # 100 s, fairseq's dump_hubert_feature.py --max_chunk
DEFAULT_CONTEXT_SAMPLES = 80_000  # 5 s of context on each side of a chunk
SHARD_ITEM = "<shard>"  # ReadError.item of an error that ends a whole shard


class FeatureExtractor(Protocol):
    """Maps a mono 16 kHz float waveform to ``(frames, dim)`` float32 features at ``label_rate`` Hz."""

    label_rate: int
    dim: int

    def description(self) -> dict[str, Any]: ...

    def __call__(self, waveform: np.ndarray) -> np.ndarray: ...


class MfccFeatures:
    """HuBERT iteration-1 features: 39-dim Kaldi MFCC + deltas + delta-deltas at 100 Hz."""

    label_rate = MFCC_FRAME_RATE
    dim = MFCC_DIM

    def description(self) -> dict[str, Any]:
        return dict(MFCC_DESCRIPTION)

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        return mfcc_features(waveform).numpy()


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class ChunkSpan:
    """One model call: samples ``[start, end)`` produce frames of which ``[keep_from, keep_to)`` are kept."""

    start: int
    end: int
    keep_from: int
    keep_to: int


def chunk_spans(num_samples: int, max_chunk_samples: int, context_samples: int) -> list[ChunkSpan]:
    """Split an utterance into model calls that together yield exactly its 50 Hz frames, each frame once.

    Each call covers up to ``max_chunk_samples`` samples of frames it keeps plus up to ``context_samples`` on each
    side (whole frames, so conv frames line up with the unchunked ones).
    """
    total = expected_label_frames(num_samples, FRAME_RATE)
    if total == 0:
        return []
    core = max(1, max_chunk_samples // FRAME_HOP)
    context = max(0, context_samples // FRAME_HOP)
    spans = []
    for first in range(0, total, core):
        last = min(total, first + core)  # frames [first, last) are kept from this call
        lo, hi = max(0, first - context), min(total, last + context)
        spans.append(
            ChunkSpan(
                start=lo * FRAME_HOP,
                end=(hi - 1) * FRAME_HOP + FRAME_WINDOW,
                keep_from=first - lo,
                keep_to=last - lo,
            )
        )
    return spans


def extract_chunked(
    frame_fn: Callable[[np.ndarray], np.ndarray],
    waveform: np.ndarray,
    max_chunk_samples: int,
    context_samples: int,
    dim: int,
) -> np.ndarray:
    """Run ``frame_fn`` (waveform -> ``(frames, dim)``) over :func:`chunk_spans` and concatenate the kept frames."""
    pieces = []
    for span in chunk_spans(len(waveform), max_chunk_samples, context_samples):
        feats = frame_fn(waveform[span.start : span.end])
        expected = expected_label_frames(span.end - span.start, FRAME_RATE)
        if feats.shape[0] != expected:
            raise RuntimeError(
                f"model returned {feats.shape[0]} frames for {span.end - span.start} samples, "
                f"expected {expected}"
            )
        pieces.append(feats[span.keep_from : span.keep_to])
    if not pieces:
        return np.zeros((0, dim), dtype=np.float32)
    return np.concatenate(pieces).astype(np.float32, copy=False)


def default_layer(num_layers: int) -> int:
    """The layer iteration-2 labels come from by default: half the encoder's depth (HuBERT's recipe takes layer 6
    of 12), the same relative depth for every encoder family."""
    return num_layers // 2


class HubertLayerFeatures:
    """Output of transformer layer ``layer`` (0 = the encoder input; None = :func:`default_layer`) of a suite model
    (``hubert_lit.load_model``)."""

    label_rate = FRAME_RATE

    def __init__(
        self,
        checkpoint: str | Path,
        layer: int | None,
        device: str | torch.device = "cpu",
        max_chunk_samples: int = DEFAULT_MAX_CHUNK_SAMPLES,
        context_samples: int = DEFAULT_CONTEXT_SAMPLES,
    ) -> None:
        from hubert_lit import load_model  # any suite checkpoint: save_model file or pretraining .ckpt

        self.checkpoint = Path(checkpoint)
        if not self.checkpoint.is_file():
            raise FileNotFoundError(f"checkpoint not found: {self.checkpoint}")
        self.checkpoint_sha256 = file_sha256(self.checkpoint)
        self.device = torch.device(device)
        self.model = load_model(self.checkpoint, map_location="cpu").to(self.device).eval()
        if max_chunk_samples < FRAME_WINDOW:
            raise ValueError(f"max_chunk_samples must be >= {FRAME_WINDOW}, got {max_chunk_samples}")
        self.max_chunk_samples = max_chunk_samples
        self.context_samples = context_samples
        probe = self._layers(np.zeros(FRAME_WINDOW, dtype=np.float32), layer=None)
        self.num_layers = len(probe) - 1
        if layer is None:
            layer = default_layer(self.num_layers)
        if not 0 <= layer <= self.num_layers:
            raise ValueError(f"--layer must be in 0..{self.num_layers} for {self.checkpoint}, got {layer}")
        self.layer = layer
        self.dim = int(probe[layer].shape[-1])

    def _layers(self, waveform: np.ndarray, layer: int | None) -> list[torch.Tensor]:
        """Hidden states ``(frames, dim)`` of one waveform: the encoder input and blocks ``1..layer``."""
        wav = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)).to(self.device)
        lengths = torch.tensor([wav.numel()], device=self.device)
        with torch.inference_mode():
            states, frame_lengths = self.model.extract_features(wav.unsqueeze(0), lengths, layer=layer)
        return [h[0, : int(frame_lengths[0])] for h in states]

    def _frames(self, waveform: np.ndarray) -> np.ndarray:
        return self._layers(waveform, self.layer)[self.layer].float().cpu().numpy()

    def description(self) -> dict[str, Any]:
        return {
            "type": "hubert",
            "dim": self.dim,
            "frame_rate": self.label_rate,
            "layer": self.layer,
            "checkpoint": str(self.checkpoint.resolve()),
            "checkpoint_sha256": self.checkpoint_sha256,
            "max_chunk_samples": self.max_chunk_samples,
            "context_samples": self.context_samples,
        }

    def __call__(self, waveform: np.ndarray) -> np.ndarray:
        return extract_chunked(self._frames, waveform, self.max_chunk_samples, self.context_samples, self.dim)


@dataclass(frozen=True)
class ReadError:
    """An utterance (or a whole shard remainder) that could not be read."""

    shard: str
    item: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"shard": self.shard, "item": self.item, "reason": self.reason}


def utterance_ids_by_shard(index: ShardIndex) -> dict[str, list[str]]:
    """The utterance ids ``index.json`` lists for each shard, in tar order."""
    ids: dict[str, list[str]] = {name: [] for name in index.shard_names}
    for u in index.utterances:
        ids[u.shard].append(u.id)
    return ids


def iter_shard_utterances(
    index: ShardIndex, shard_name: str, errors: list[ReadError], wanted: set[str] | None = None
) -> Iterator[Sample]:
    """Yield the decoded utterances of shard ``shard_name`` of ``index`` (only ids in ``wanted`` when given), in tar
    order; the shard may be local or remote, and the member data of utterances not wanted is never read.

    Every utterance that cannot be read is appended to ``errors`` and skipped: an undecodable FLAC or a sample
    count that disagrees with the metadata costs that utterance; a damaged tar or JSON member, or a download that
    fails after its retries, ends the shard, and the listed utterances never reached are reported one by one.
    """
    listed = [u.id for u in index.utterances_in(shard_name)]
    where = index.shard_where(shard_name)
    seen: set[str] = set()
    try:
        for sample in index.read_shard(shard_name, decode=False, keep=wanted):
            seen.add(sample.id)
            try:
                audio = decode_flac(sample.audio, f"{where}: member '{sample.id}.flac'")
                if sample.meta.get("num_samples") != len(audio):
                    raise ShardFormatError(
                        f"{where}: member '{sample.id}.flac' has {len(audio)} samples but its JSON says "
                        f"num_samples={sample.meta.get('num_samples')!r}"
                    )
            except ShardFormatError as err:
                errors.append(ReadError(shard_name, sample.id, str(err)))
                continue
            yield Sample(sample.id, audio, sample.meta)
    except ShardFormatError as err:
        errors.append(ReadError(shard_name, SHARD_ITEM, str(err)))
        why = f"listed in index.json but not read: {where} broke off before it"
    else:
        why = f"listed in index.json but not found in {where}"
    for utt_id in listed:
        if utt_id not in seen and (wanted is None or utt_id in wanted):
            errors.append(ReadError(shard_name, utt_id, why))
