"""Pieces shared by the Mini-SUPERB task builders: speakers, seeded randomness, jobs, audio and file writing.

A task builder *plans* its whole data set in the main process (a pure function of the seed and the scale)
as a list of :class:`Job`\\ s. Each job is run in a fresh process (``espeak.map_in_fresh_processes``: eSpeak's
output depends on what the process synthesized before) and returns one record per item; the builder then
writes the records. So the files depend only on the seed and the scale, never on the number of workers.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.data.espeak import ENGLISH_VOICES, SILENCE, Synthesizer, SynthResult
from hubert_lit.data.sentences import Sentence, SentenceGenerator, normalize_transcript
from hubert_lit.data.synth import VARIANTS

SPLITS = ("train", "dev", "test")
NO_SPEAKER = "none"  # speaker field of items without speech (ks _silence_ clips)
PEAK_LEVEL = 10 ** (-1.0 / 20)  # speech is scaled to a -1 dBFS peak unless a task keeps the level

Record = dict[str, Any]


def task_rng(seed: int, task: str, stream: str) -> random.Random:
    """An independent random stream per (seed, task, purpose): changing one task never changes another."""
    return random.Random(f"hubert-lit-superb/{seed}/{task}/{stream}")


def clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


# ---------------------------------------------------------------- speakers


@dataclass(frozen=True)
class Voice:
    """Concrete eSpeak settings for one utterance (picklable; turned into a Synthesizer in the worker)."""

    voice: str
    pitch: int
    pitch_range: int
    rate: int
    volume: int = 100

    def synthesizer(self) -> Synthesizer:
        return Synthesizer(
            self.voice, rate=self.rate, pitch=self.pitch, pitch_range=self.pitch_range, volume=self.volume
        )


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: an eSpeak voice (accent + variant) with its own base pitch, range and rate."""

    id: str
    sex: str
    voice: str
    pitch: int
    pitch_range: int
    rate: int

    def utterance_voice(self, rng: random.Random, rate_scale: float = 1.0, spread: float = 1.0) -> Voice:
        """The speaker's voice with per-utterance jitter (pitch +-4, range +-6, rate +-6 %, all times
        ``spread``), so that no class can be told apart by a constant F0 or speaking rate alone."""
        pitch, pitch_range, rate = round(4 * spread), round(6 * spread), 0.06 * spread
        return Voice(
            self.voice,
            pitch=clamp(self.pitch + rng.randint(-pitch, pitch), 0, 99),
            pitch_range=clamp(self.pitch_range + rng.randint(-pitch_range, pitch_range), 0, 99),
            rate=clamp(round(self.rate * rate_scale * rng.uniform(1 - rate, 1 + rate)), 80, 450),
        )

    def describe(self) -> dict[str, Any]:
        return {"sex": self.sex, "voice": self.voice, "pitch": self.pitch, "pitch_range": self.pitch_range,
                "rate": self.rate}  # fmt: skip


def speaker_pool(seed: int) -> list[Speaker]:
    """Every usable English voice (accent x variant) once, with seeded base prosody, in seeded order.

    The pool is the same for all tasks of one seed, so ``spk017`` is the same voice in every task.
    """
    rng = random.Random(f"hubert-lit-superb/{seed}/speakers")
    voices = [(sex, f"{accent}+{variant}") for sex in sorted(VARIANTS) for accent in ENGLISH_VOICES
              for variant in VARIANTS[sex]]  # fmt: skip
    rng.shuffle(voices)
    return [
        Speaker(f"spk{i:03d}", sex, voice, rng.randint(35, 65), rng.randint(40, 70), rng.randint(140, 185))
        for i, (sex, voice) in enumerate(voices)
    ]


def draw_speakers(
    pool: Sequence[Speaker], rng: random.Random, sizes: dict[str, int]
) -> dict[str, list[Speaker]]:
    """Disjoint speaker sets per split, drawn from ``pool`` (``sizes`` maps split -> count)."""
    total = sum(sizes.values())
    if total > len(pool):
        raise ValueError(f"{total} speakers requested but only {len(pool)} distinct voices exist")
    chosen = rng.sample(list(pool), total)
    out, start = {}, 0
    for split, size in sizes.items():
        out[split] = sorted(chosen[start : start + size], key=lambda s: s.id)
        start += size
    return out


def speakers_meta(speakers: dict[str, list[Speaker]]) -> dict[str, dict[str, Any]]:
    """meta.json description of the speakers of a task: id -> voice settings and split."""
    table = {}
    for split, group in speakers.items():
        for speaker in group:
            table[speaker.id] = {"split": split, **speaker.describe()}
    return dict(sorted(table.items()))


# ---------------------------------------------------------------- sentences


def unique_sentences(
    generator: SentenceGenerator, seen: set[str], count: int, max_draws: int = 2000
) -> list[Sentence]:
    """``count`` grammar sentences whose transcripts are not in ``seen`` (and adds them to it)."""
    out = []
    for _ in range(count):
        for _ in range(max_draws):
            sentence = generator.sentence()
            if sentence.transcript not in seen:
                seen.add(sentence.transcript)
                out.append(sentence)
                break
        else:
            raise RuntimeError(
                f"the sentence grammar gave no new sentence in {max_draws} draws ({len(seen)} used)"
            )
    return out


# ---------------------------------------------------------------- jobs


@dataclass(frozen=True)
class Job:
    """Items of one task, synthesized in one fresh process. Every item has a ``split`` attribute.

    ``render(item, root)`` is a module-level function: it synthesizes the item, writes its audio below
    ``root`` and returns the item's record.
    """

    task: str
    render: Callable[[Any, Path], Record]
    items: tuple[Any, ...]
    root: str


def chunked(items: Sequence[Any], size: int) -> list[tuple[Any, ...]]:
    """Consecutive chunks of at most ``size`` items."""
    return [tuple(items[i : i + size]) for i in range(0, len(items), size)]


def run_job(job: Job) -> list[Record]:
    """Run one job (in a fresh worker process): seed eSpeak's noise, then render every item in order."""
    import torch

    from hubert_lit.data.espeak import reset_random_state

    torch.set_num_threads(1)  # one process per core; also keeps resampling bit-stable
    reset_random_state(0)
    root = Path(job.root)
    return [job.render(item, root) for item in job.items]


@dataclass
class TaskPlan:
    """What a builder hands to the runner: the jobs and a ``write(records)`` that writes the task files.

    ``records`` maps split -> records in plan order. ``tasks`` are the output folders it writes (ASR and PR
    share their audio, so one plan writes both).
    """

    tasks: tuple[str, ...]
    jobs: list[Job]
    write: Callable[[dict[str, list[Record]]], None]
    summary: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- synthesis helpers


@dataclass(frozen=True)
class Candidate:
    """A text to speak and its expected transcript (LibriSpeech normalisation)."""

    text: str
    transcript: str

    @classmethod
    def of(cls, text: str) -> Candidate:
        return cls(text, normalize_transcript(text))


def synthesize_first(
    voice: Voice,
    candidates: Sequence[Candidate | Sentence],
    item_id: str,
    min_seconds: float = 0.0,
    max_seconds: float = float("inf"),
    check_words: bool = False,
) -> tuple[Candidate | Sentence, SynthResult]:
    """Synthesize the candidates in order; return the first that lasts ``min_seconds``-``max_seconds`` and,
    with ``check_words``, whose eSpeak word events spell its transcript (so word times can be trusted)."""
    synthesizer = voice.synthesizer()
    problems = []
    for candidate in candidates:
        result = synthesizer.synthesize(candidate.text)
        words = [normalize_transcript(w) for w, _, _ in result.words]
        if not min_seconds <= result.duration <= max_seconds:
            problems.append(f"{result.duration:.2f} s for {candidate.text!r}")
        elif check_words and words != candidate.transcript.split():
            problems.append(f"word events {words} for {candidate.text!r}")
        else:
            return candidate, result
    raise RuntimeError(f"{item_id}: no candidate text was usable: " + "; ".join(problems))


def speech_span(phones: Sequence[tuple[str, int, int]], item_id: str) -> tuple[int, int]:
    """[start, end) from the first to the last sounding (non-SIL) phone."""
    sounding = [(s, e) for p, s, e in phones if p != SILENCE]
    if not sounding:
        raise RuntimeError(f"{item_id}: eSpeak produced no sounding phone")
    return sounding[0][0], sounding[-1][1]


def sounding_phones(phones: Sequence[tuple[str, int, int]]) -> list[str]:
    return [p for p, _, _ in phones if p != SILENCE]


def peak_normalize(audio: np.ndarray, item_id: str, level: float = PEAK_LEVEL) -> np.ndarray:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        raise RuntimeError(f"{item_id}: the audio is silent")
    return (audio * (level / peak)).astype(np.float32)


def colored_noise(rng: np.random.Generator, num_samples: int, color: str) -> np.ndarray:
    """Unit-RMS white, pink (1/f power) or brown (1/f^2 power) noise."""
    white = rng.standard_normal(num_samples)
    if color == "white":
        noise = white
    elif color in ("pink", "brown"):
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(num_samples)
        freqs[0] = freqs[1]
        spectrum /= np.sqrt(freqs) if color == "pink" else freqs
        noise = np.fft.irfft(spectrum, num_samples)
    else:
        raise ValueError(f"unknown noise color {color!r}")
    noise -= noise.mean()
    return (noise / max(float(np.sqrt(np.mean(noise**2))), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class Channel:
    """A crude recording channel: first-order spectral tilt ``y[n] = x[n] + tilt * x[n-1]`` (microphone
    colour) and additive coloured noise ``snr_db`` below the speech."""

    tilt: float
    snr_db: float
    noise_color: str
    noise_seed: int

    @classmethod
    def draw(cls, rng: random.Random) -> Channel:
        return cls(rng.uniform(-0.7, 0.7), rng.uniform(15.0, 35.0), rng.choice(("white", "pink", "brown")),
                   rng.randrange(2**32))  # fmt: skip

    def apply(self, audio: np.ndarray) -> np.ndarray:
        tilted = audio.astype(np.float32, copy=True)
        tilted[1:] += self.tilt * audio[:-1]
        rms = float(np.sqrt(np.mean(tilted**2)))
        noise = colored_noise(np.random.default_rng(self.noise_seed), len(audio), self.noise_color)
        return tilted + noise * rms * 10 ** (-self.snr_db / 20)


def write_audio(root: Path, relative: str, audio: np.ndarray) -> int:
    """Write float audio in [-1, 1] as 16 kHz mono PCM_16 FLAC at ``root / relative``; returns its length."""
    import soundfile as sf

    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.round(np.clip(audio, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    sf.write(path, pcm, SAMPLE_RATE, "PCM_16", format="FLAC")
    return int(pcm.shape[0])


def audio_path(task: str, split: str, item_id: str) -> str:
    """Audio location relative to the data root."""
    return f"{task}/audio/{split}/{item_id}.flac"


# ---------------------------------------------------------------- writing


def write_jsonl(path: Path, records: Sequence[Record]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False, separators=(", ", ": ")) + "\n")


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def write_meta(
    root: Path, task: str, seed: int, scale: str, description: str, note: str, **fields: Any
) -> None:
    """``<root>/<task>/meta.json`` with the common keys first."""
    meta = {"task": task, "seed": seed, "scale": scale, "description": description, **fields, "note": note}
    write_json(root / task / "meta.json", meta)


def split_counts(records: dict[str, list[Record]]) -> dict[str, dict[str, Any]]:
    """Per split: items, speakers and hours of audio (for meta.json and the build summary)."""
    out = {}
    for split, items in records.items():
        samples = sum(r["num_samples"] for r in items)
        speakers = {s for r in items for s in r.get("speakers", [r["speaker"]])} - {NO_SPEAKER}  # sd: both
        out[split] = {"items": len(items), "speakers": len(speakers),
                      "hours": round(samples / SAMPLE_RATE / 3600, 4)}  # fmt: skip
    return out


@dataclass(frozen=True)
class BuildContext:
    """Where and how a task is built: staging ``root`` (audio paths are relative to it), seed, scale name."""

    root: Path
    seed: int
    scale: str
    pool: tuple[Speaker, ...]
    job_size: int = 40  # items per fresh process: large enough to amortise the process start

    def rng(self, task: str, stream: str) -> random.Random:
        return task_rng(self.seed, task, stream)

    def jobs(self, task: str, render: Callable[[Any, Path], Record], items: Sequence[Any]) -> list[Job]:
        """``items`` (of all splits) in chunks of ``job_size``, one fresh process each."""
        return [Job(task, render, chunk, str(self.root)) for chunk in chunked(items, self.job_size)]

    def meta(self, task: str, description: str, note: str, **fields: Any) -> None:
        write_meta(self.root, task, self.seed, self.scale, description, note, **fields)
