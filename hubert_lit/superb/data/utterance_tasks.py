"""Utterance-level classification tasks: KS (keywords), SID, ASV and the prosody task (SUPERB's ER slot).

* **ks**: Speech-Commands-v0.01-like 1 s clips, 12 classes: 10 keywords, ``_unknown_`` (other words, the
  same word list in every split as in Speech Commands) and ``_silence_`` (coloured noise only). Each word is
  cut to its sounding phones, put at a random offset and mixed with low-level noise. Speaker-disjoint splits.
* **sid**: one class per synthetic speaker, utterance-level split (every speaker in train, dev and test).
* **asv**: disjoint speakers for train / dev / test; dev and test come with trial lists of same- and
  different-speaker pairs (all same-speaker pairs, as many random different-speaker pairs).
* SID and ASV simulate session variability: twice the usual pitch/rate jitter and a random recording
  :class:`~hubert_lit.superb.data.common.Channel` (spectral tilt + 15-35 dB SNR noise) per utterance; without
  it a crude MFCC-statistics cosine scorer already reached ~1 % EER.
* **prosody**: four prosody presets (pitch, range, rate and level relative to the speaker) on the same
  sentences. It stands in for SUPERB's emotion recognition but is NOT emotion: every file, label and metric
  says "prosody".
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.data.sentences import Sentence, SentenceGenerator
from hubert_lit.superb.data.common import (
    NO_SPEAKER,
    SPLITS,
    BuildContext,
    Channel,
    Record,
    Speaker,
    TaskPlan,
    Voice,
    audio_path,
    clamp,
    colored_noise,
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

SENTENCE_MIN_SECONDS, SENTENCE_MAX_SECONDS = 2.0, 8.0
SPEAKER_SPREAD = 2.0  # SID/ASV: twice the usual per-utterance pitch/rate jitter (pitch +-8, rate +-12 %)
CANDIDATES = 6

# ---------------------------------------------------------------- KS

KEYWORDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
UNKNOWN_LABEL, SILENCE_LABEL = "_unknown_", "_silence_"
KS_CLASSES = (*KEYWORDS, UNKNOWN_LABEL, SILENCE_LABEL)
# Speech Commands' twenty auxiliary words plus a few more
UNKNOWN_WORDS = ("bed", "bird", "cat", "dog", "eight", "five", "four", "happy", "house", "marvin", "nine", "one",
                 "seven", "sheila", "six", "three", "tree", "two", "wow", "zero", "apple", "river", "table",
                 "yellow", "garden", "window", "rabbit", "music")  # fmt: skip
CLIP_SAMPLES = SAMPLE_RATE  # 1 s
NOISE_COLORS = ("white", "pink", "brown")


@dataclass(frozen=True)
class ClipItem:
    """One 1 s clip: ``word`` spoken by ``voice`` (None for ``_silence_``) at ``position`` in [0, 1) of the
    free room, over noise ``snr_db`` below the speech (for silence: noise at ``noise_dbfs`` RMS)."""

    id: str
    split: str
    speaker: str
    label: str
    word: str | None
    voice: Voice | None
    position: float
    noise_color: str
    noise_seed: int
    snr_db: float
    noise_dbfs: float


def render_clip(item: ClipItem, root: Path) -> Record:
    rng = np.random.default_rng(item.noise_seed)
    noise = colored_noise(rng, CLIP_SAMPLES, item.noise_color)
    truncated = False
    if item.voice is None:
        audio = noise * 10 ** (item.noise_dbfs / 20)
    else:
        result = item.voice.synthesizer().synthesize(item.word)
        start, end = speech_span(result.phones, item.id)
        speech = peak_normalize(result.audio[start:end], item.id, level=0.5)
        truncated = len(speech) > CLIP_SAMPLES
        speech = speech[:CLIP_SAMPLES]
        offset = round(item.position * (CLIP_SAMPLES - len(speech)))
        audio = np.zeros(CLIP_SAMPLES, np.float32)
        audio[offset : offset + len(speech)] = speech
        speech_rms = float(np.sqrt(np.mean(speech**2)))
        audio += noise * speech_rms * 10 ** (-item.snr_db / 20)
    relative = audio_path("ks", item.split, item.id)
    num_samples = write_audio(root, relative, audio)
    record: Record = {"id": item.id, "audio": relative, "num_samples": num_samples, "speaker": item.speaker,
                      "label": item.label, "word": item.word}  # fmt: skip
    if truncated:
        record["truncated"] = True
    return record


def plan_ks(
    ctx: BuildContext,
    speakers: dict[str, int],
    repetitions: int,
    unknown_per_speaker: int,
    silence_per_speaker: int,
) -> TaskPlan:
    """Per speaker: every keyword ``repetitions`` times and ``unknown_per_speaker`` other words; per split
    ``silence_per_speaker`` x speakers noise clips."""
    groups = draw_speakers(ctx.pool, ctx.rng("ks", "speakers"), speakers)
    rng = ctx.rng("ks", "items")
    items: dict[str, list[ClipItem]] = {}

    def clip(split: str, index: int, speaker: Speaker | None, label: str, word: str | None) -> ClipItem:
        return ClipItem(
            id=f"{split}-{index:05d}",
            split=split,
            speaker=speaker.id if speaker else NO_SPEAKER,
            label=label,
            word=word,
            voice=speaker.utterance_voice(rng) if speaker else None,
            position=rng.random(),
            noise_color=rng.choice(NOISE_COLORS),
            noise_seed=rng.randrange(2**32),
            snr_db=rng.uniform(15.0, 40.0),
            noise_dbfs=rng.uniform(-65.0, -35.0),
        )

    for split in SPLITS:
        wanted: list[tuple[Speaker | None, str, str | None]] = []
        for speaker in groups[split]:
            wanted += [(speaker, kw, kw) for kw in KEYWORDS for _ in range(repetitions)]
            wanted += [(speaker, UNKNOWN_LABEL, w) for w in rng.sample(UNKNOWN_WORDS, unknown_per_speaker)]
        wanted += [(None, SILENCE_LABEL, None)] * (silence_per_speaker * len(groups[split]))
        rng.shuffle(wanted)
        items[split] = [clip(split, i, *w) for i, w in enumerate(wanted)]
    jobs = ctx.jobs("ks", render_clip, [item for split in SPLITS for item in items[split]])

    def write(records: dict[str, list[Record]]) -> None:
        for split in SPLITS:
            write_jsonl(ctx.root / "ks" / f"{split}.jsonl", records[split])
        truncated = sum(1 for rs in records.values() for r in rs if r.get("truncated"))
        ctx.meta(
            "ks",
            "Keyword spotting like Speech Commands v0.01 (12 classes): 1 s clips of one word at a random "
            "offset over low-level white/pink/brown noise; _silence_ clips are noise only.",
            "Much easier than Speech Commands: clean formant synthesis, no far-field or recording variety. "
            f"Speaker-disjoint splits; unknown words are the same list in every split. {truncated} clips "
            "had speech longer than 1 s and were cut.",
            classes=list(KS_CLASSES), num_classes=len(KS_CLASSES), unknown_words=list(UNKNOWN_WORDS),
            splits=split_counts(records), speakers=speakers_meta(groups),
        )  # fmt: skip

    return TaskPlan(("ks",), jobs, write)


# ---------------------------------------------------------------- sentence utterances (SID, ASV, prosody)


@dataclass(frozen=True)
class SentenceItem:
    """A sentence by one voice; ``level`` None = peak-normalised, else a linear gain on eSpeak's own level;
    ``channel``: an optional recording channel (the speaker tasks' session variability)."""

    id: str
    task: str
    split: str
    speaker: str
    voice: Voice
    candidates: tuple[Sentence, ...]
    label: str | None
    level: float | None = None
    channel: Channel | None = None


def render_sentence(item: SentenceItem, root: Path) -> Record:
    _, result = synthesize_first(
        item.voice, item.candidates, item.id, SENTENCE_MIN_SECONDS, SENTENCE_MAX_SECONDS
    )
    audio = result.audio if item.channel is None else item.channel.apply(result.audio)
    if item.level is None:
        audio = peak_normalize(audio, item.id)
    else:
        audio = np.clip(audio * item.level, -1.0, 1.0)
    relative = audio_path(item.task, item.split, item.id)
    num_samples = write_audio(root, relative, audio)
    record: Record = {"id": item.id, "audio": relative, "num_samples": num_samples, "speaker": item.speaker}
    if item.label is not None:
        record["label"] = item.label
    return record


class _Sentences:
    """Unique grammar sentences for one task."""

    def __init__(self, ctx: BuildContext, task: str) -> None:
        self.generator = SentenceGenerator(f"hubert-lit-superb/{ctx.seed}/{task}/sentences")
        self.seen: set[str] = set()

    def candidates(self) -> tuple[Sentence, ...]:
        return tuple(unique_sentences(self.generator, self.seen, CANDIDATES))


def plan_sid(ctx: BuildContext, num_speakers: int, utterances: dict[str, int]) -> TaskPlan:
    """``num_speakers`` classes; ``utterances[split]`` utterances of every speaker in each split."""
    speakers = draw_speakers(ctx.pool, ctx.rng("sid", "speakers"), {"all": num_speakers})["all"]
    rng = ctx.rng("sid", "items")
    sentences = _Sentences(ctx, "sid")
    items: dict[str, list[SentenceItem]] = {split: [] for split in SPLITS}
    for speaker in speakers:
        for split in SPLITS:
            for u in range(utterances[split]):
                items[split].append(SentenceItem(
                    f"{speaker.id}-{split}-{u:03d}", "sid", split, speaker.id,
                    speaker.utterance_voice(rng, spread=SPEAKER_SPREAD), sentences.candidates(), speaker.id,
                    channel=Channel.draw(rng),
                ))  # fmt: skip
    jobs = ctx.jobs("sid", render_sentence, [item for split in SPLITS for item in items[split]])

    def write(records: dict[str, list[Record]]) -> None:
        for split in SPLITS:
            write_jsonl(ctx.root / "sid" / f"{split}.jsonl", records[split])
        classes = [s.id for s in speakers]
        ctx.meta(
            "sid",
            "Speaker identification: one class per synthetic speaker (an eSpeak voice with its own base "
            "pitch, range and rate; every utterance jitters them); utterance-level split.",
            "A 'speaker' is a synthesizer parameter set, not a person. Session variability is only simulated "
            "(wider pitch/rate jitter, a random spectral tilt and 15-35 dB SNR noise per utterance). A sanity "
            "check of speaker information, not a speaker benchmark.",
            classes=classes, num_classes=len(classes), splits=split_counts(records),
            speakers=speakers_meta({"all": speakers}),
        )  # fmt: skip

    return TaskPlan(("sid",), jobs, write)


def make_trials(records: list[Record], rng: random.Random) -> list[tuple[int, str, str]]:
    """All same-speaker pairs and as many distinct random different-speaker pairs, in random order."""
    same = [
        (1, a["id"], b["id"]) for a, b in itertools.combinations(records, 2) if a["speaker"] == b["speaker"]
    ]
    different = [(0, a["id"], b["id"]) for a, b in itertools.combinations(records, 2)
                 if a["speaker"] != b["speaker"]]  # fmt: skip
    trials = same + rng.sample(different, min(len(same), len(different)))
    rng.shuffle(trials)
    return trials


def plan_asv(ctx: BuildContext, speakers: dict[str, int], utterances: dict[str, int]) -> TaskPlan:
    groups = draw_speakers(ctx.pool, ctx.rng("asv", "speakers"), speakers)
    rng = ctx.rng("asv", "items")
    sentences = _Sentences(ctx, "asv")
    items = {
        split: [
            SentenceItem(
                f"{s.id}-{u:03d}",
                "asv",
                split,
                s.id,
                s.utterance_voice(rng, spread=SPEAKER_SPREAD),
                sentences.candidates(),
                s.id if split == "train" else None,
                channel=Channel.draw(rng),
            )  # fmt: skip
            for s in groups[split]
            for u in range(utterances[split])
        ]
        for split in SPLITS
    }
    jobs = ctx.jobs("asv", render_sentence, [item for split in SPLITS for item in items[split]])

    def write(records: dict[str, list[Record]]) -> None:
        trial_counts = {}
        for split in SPLITS:
            write_jsonl(ctx.root / "asv" / f"{split}.jsonl", records[split])
            if split != "train":
                trials = make_trials(records[split], ctx.rng("asv", f"trials/{split}"))
                lines = "".join(f"{t} {a} {b}\n" for t, a, b in trials)
                (ctx.root / "asv" / f"{split}_trials.txt").write_text(lines, encoding="utf-8")
                trial_counts[split] = {"same": sum(t for t, _, _ in trials),
                                       "different": sum(1 - t for t, _, _ in trials)}  # fmt: skip
        classes = [s.id for s in groups["train"]]
        ctx.meta(
            "asv",
            "Speaker verification: train items carry a speaker class label; dev_trials.txt / test_trials.txt "
            "hold lines '<1|0> <enroll id> <test id>' over dev/test speakers unseen in training. Score: EER.",
            "Synthetic voices; session variability only simulated (wider pitch/rate jitter, random spectral tilt, "
            "15-35 dB SNR noise per utterance). A smoke test of speaker embeddings, not a VoxCeleb substitute.",
            classes=classes, num_classes=len(classes), trials=trial_counts, splits=split_counts(records),
            speakers=speakers_meta(groups),
        )  # fmt: skip

    return TaskPlan(("asv",), jobs, write)


# ---------------------------------------------------------------- prosody (SUPERB's ER slot)


@dataclass(frozen=True)
class ProsodyPreset:
    """Offsets from the speaker's base voice: pitch and range (added), rate (factor), eSpeak volume."""

    pitch: int
    pitch_range: int
    rate: float
    volume: int


PROSODY_PRESETS: dict[str, ProsodyPreset] = {
    "neutral": ProsodyPreset(0, 0, 1.0, 100),
    "high_fast": ProsodyPreset(18, 20, 1.15, 130),
    "low_slow": ProsodyPreset(-15, -20, 0.8, 70),
    "loud_fast": ProsodyPreset(6, 10, 1.2, 180),
}
PROSODY_LEVEL = 0.9  # linear gain on eSpeak's output; the loud preset saturates like shouting into a mic


def prosody_voice(speaker: Speaker, preset: ProsodyPreset, rng: random.Random) -> Voice:
    base = speaker.utterance_voice(rng, rate_scale=preset.rate)
    return Voice(base.voice, clamp(base.pitch + preset.pitch, 0, 99), clamp(base.pitch_range + preset.pitch_range, 0, 99),
                 base.rate, preset.volume)  # fmt: skip


def plan_prosody(ctx: BuildContext, speakers: dict[str, int], sentences_per_preset: int) -> TaskPlan:
    """Every speaker says ``sentences_per_preset`` sentences in each preset (level jittered +-3 dB)."""
    groups = draw_speakers(ctx.pool, ctx.rng("prosody", "speakers"), speakers)
    rng = ctx.rng("prosody", "items")
    sentences = _Sentences(ctx, "prosody")
    items: dict[str, list[SentenceItem]] = {}
    for split in SPLITS:
        items[split] = []
        for speaker in groups[split]:
            for name, preset in PROSODY_PRESETS.items():
                for u in range(sentences_per_preset):
                    items[split].append(SentenceItem(
                        f"{speaker.id}-{name}-{u:03d}", "prosody", split, speaker.id,
                        prosody_voice(speaker, preset, rng), sentences.candidates(), name,
                        level=PROSODY_LEVEL * 10 ** (rng.uniform(-3.0, 3.0) / 20),
                    ))  # fmt: skip
        rng.shuffle(items[split])
    jobs = ctx.jobs("prosody", render_sentence, [item for split in SPLITS for item in items[split]])

    def write(records: dict[str, list[Record]]) -> None:
        for split in SPLITS:
            write_jsonl(ctx.root / "prosody" / f"{split}.jsonl", records[split])
        classes = list(PROSODY_PRESETS)
        ctx.meta(
            "prosody",
            "Prosody-preset classification in SUPERB's emotion-recognition slot (4 classes, speaker-disjoint "
            "splits): the same kind of sentences with pitch, pitch range, rate and level shifted from each "
            "speaker's base voice.",
            "NOT emotion recognition: the classes are synthesizer settings, nearly solvable from F0, energy "
            "and rate statistics. A paralinguistic smoke test only; never report it as ER.",
            classes=classes, num_classes=len(classes),
            presets={k: vars(v) for k, v in PROSODY_PRESETS.items()},
            splits=split_counts(records), speakers=speakers_meta(groups),
        )  # fmt: skip

    return TaskPlan(("prosody",), jobs, write)
