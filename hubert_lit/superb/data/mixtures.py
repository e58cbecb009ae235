"""Speaker diarization (SD): two-speaker mixtures in the spirit of Libri2Mix, with exact speech boundaries.

Each mixture holds one sentence from each of two different speakers of its split (speaker-disjoint splits).
The second speaker starts before the first one stops so that the overlap ratio, overlapped speech divided
by the union of both speech spans, is a seeded value in [0, 0.5]. A speaker's segment runs from the start
of its first to the end of its last sounding (non-SIL) phone, taken from eSpeak's phoneme events, not from
the file length (synthesized files carry leading and trailing silence). Sources get a random relative level
of +-2.5 dB before the mixture is peak-normalised.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.data.sentences import Sentence, SentenceGenerator
from hubert_lit.superb.data.common import (
    SPLITS,
    BuildContext,
    Record,
    Speaker,
    TaskPlan,
    Voice,
    audio_path,
    draw_speakers,
    peak_normalize,
    speakers_meta,
    speech_span,
    split_counts,
    synthesize_first,
    unique_sentences,
    write_audio,
    write_jsonl,
)

MIN_SECONDS, MAX_SECONDS = 1.5, 6.0  # per source sentence
MAX_OVERLAP = 0.5
CANDIDATES = 4


@dataclass(frozen=True)
class MixtureItem:
    """Two sources; ``first`` (0 or 1) is the one that starts speaking first."""

    id: str
    split: str
    speakers: tuple[str, str]
    voices: tuple[Voice, Voice]
    candidates: tuple[tuple[Sentence, ...], tuple[Sentence, ...]]
    overlap: float
    gains_db: tuple[float, float]
    first: int


def overlap_samples(length_a: int, length_b: int, ratio: float) -> int:
    """Overlap o with o / (La + Lb - o) as close to ``ratio`` as possible, no longer than either span."""
    return min(round(ratio * (length_a + length_b) / (1 + ratio)), length_a, length_b)


def render_mixture(item: MixtureItem, root: Path) -> Record:
    sources, spans = [], []
    for k in range(2):
        _, result = synthesize_first(item.voices[k], item.candidates[k], f"{item.id} source {k}", MIN_SECONDS,
                                     MAX_SECONDS)  # fmt: skip
        gain = 10 ** (item.gains_db[k] / 20)
        sources.append(peak_normalize(result.audio, item.id) * gain)
        spans.append(speech_span(result.phones, item.id))
    f, g = item.first, 1 - item.first
    lengths = [end - start for start, end in spans]
    overlap = overlap_samples(lengths[f], lengths[g], item.overlap)
    # second source offset relative to the first, so that its speech starts `overlap` before the first's ends
    relative = spans[f][1] - overlap - spans[g][0]
    offsets = [0, 0]
    offsets[f], offsets[g] = max(0, -relative), max(0, relative)
    num_samples = max(offsets[k] + len(sources[k]) for k in range(2))
    mixture = np.zeros(num_samples, np.float32)
    for k in range(2):
        mixture[offsets[k] : offsets[k] + len(sources[k])] += sources[k]
    relative_path = audio_path("sd", item.split, item.id)
    write_audio(root, relative_path, peak_normalize(mixture, item.id, level=0.9))
    segments = sorted([[k, offsets[k] + spans[k][0], offsets[k] + spans[k][1]] for k in range(2)],
                      key=lambda s: (s[1], s[0]))  # fmt: skip
    return {
        "id": item.id,
        "audio": relative_path,
        "num_samples": num_samples,
        "speaker": "+".join(item.speakers),
        "speakers": list(item.speakers),
        "segments": segments,
        "overlap": round(overlap_ratio(segments), 4),
    }


def overlap_ratio(segments: list[list[int]]) -> float:
    """Overlapped time over the union of the speech time of two segments [[spk, start, end], ...]."""
    (_, a0, a1), (_, b0, b1) = segments
    overlap = max(0, min(a1, b1) - max(a0, b0))
    union = (a1 - a0) + (b1 - b0) - overlap
    return overlap / union


def rttm_lines(records: list[Record]) -> str:
    """NIST RTTM: ``SPEAKER <file> 1 <onset s> <duration s> <NA> <NA> <speaker> <NA> <NA>``."""
    lines = []
    for record in records:
        for k, start, end in record["segments"]:
            lines.append(
                f"SPEAKER {record['id']} 1 {start / SAMPLE_RATE:.6f} {(end - start) / SAMPLE_RATE:.6f} "
                f"<NA> <NA> {record['speakers'][k]} <NA> <NA>\n"
            )
    return "".join(lines)


def plan_sd(ctx: BuildContext, speakers: dict[str, int], mixtures: dict[str, int]) -> TaskPlan:
    groups = draw_speakers(ctx.pool, ctx.rng("sd", "speakers"), speakers)
    rng = ctx.rng("sd", "items")
    generator = SentenceGenerator(f"hubert-lit-superb/{ctx.seed}/sd/sentences")
    seen: set[str] = set()

    def make(split: str, index: int, rng: random.Random) -> MixtureItem:
        pair: list[Speaker] = rng.sample(groups[split], 2)
        return MixtureItem(
            id=f"{split}-{index:05d}",
            split=split,
            speakers=(pair[0].id, pair[1].id),
            voices=(pair[0].utterance_voice(rng), pair[1].utterance_voice(rng)),
            candidates=(
                tuple(unique_sentences(generator, seen, CANDIDATES)),
                tuple(unique_sentences(generator, seen, CANDIDATES)),
            ),  # fmt: skip
            overlap=rng.uniform(0.0, MAX_OVERLAP),
            gains_db=(rng.uniform(-2.5, 2.5), rng.uniform(-2.5, 2.5)),
            first=rng.randrange(2),
        )

    items = {split: [make(split, i, rng) for i in range(mixtures[split])] for split in SPLITS}
    jobs = ctx.jobs("sd", render_mixture, [item for split in SPLITS for item in items[split]])

    def write(records: dict[str, list[Record]]) -> None:
        for split in SPLITS:
            write_jsonl(ctx.root / "sd" / f"{split}.jsonl", records[split])
            (ctx.root / "sd" / f"{split}.rttm").write_text(rttm_lines(records[split]), encoding="utf-8")
        overlaps = [r["overlap"] for rs in records.values() for r in rs]
        ctx.meta(
            "sd",
            "Two-speaker diarization: each mixture has one sentence from each of two speakers with 0-50 % "
            "overlap (overlapped / union of speech time). 'segments' = [[speaker index into 'speakers', start, "
            "end], ...] in samples (end exclusive) from the first to the last sounding phone; <split>.rttm "
            "holds the same segments in seconds.",
            "Mechanically like Libri2Mix (which is also artificial mixing) but with synthetic voices, two "
            "sentences per mixture and no noise; DER values are for regression tests, not for comparison.",
            num_speakers_per_mixture=2, mean_overlap=round(float(np.mean(overlaps)), 4) if overlaps else 0.0,
            splits=split_counts(records), speakers=speakers_meta(groups),
        )  # fmt: skip

    return TaskPlan(("sd",), jobs, write)
