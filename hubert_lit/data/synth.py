"""``python -m hubert_lit synth``: build the synthetic demo corpus in the LibriSpeech layout with eSpeak NG.

Output under ``<out>/LibriSpeech``::

    SPEAKERS.TXT  README.TXT
    {train,dev,test}/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac      16 kHz mono FLAC, PCM_16
    {train,dev,test}/<spk>/<chapter>/<spk>-<chapter>.trans.txt       "<utt id> UPPER CASE TEXT" lines
    {train,dev,test}/<spk>/<chapter>/<spk>-<chapter>.align.json      {"<utt id>": {"phones": [[p, s, e], ...],
                                                                      "words": [[w, s, e], ...]}}

A speaker is an eSpeak voice (accent + voice variant) with its own base pitch, pitch range and rate; each
utterance jitters them slightly and each chapter has its own small rate offset. Dev and test speakers and all
sentences are disjoint from train (every sentence occurs once in the corpus). Everything is a function of
the seed: each chapter is synthesized in a fresh process (``espeak.map_in_fresh_processes``), so the bytes
written do not depend on ``--workers``.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.data.espeak import ENGLISH_VOICES, Synthesizer, map_in_fresh_processes, reset_random_state
from hubert_lit.data.sentences import Sentence, SentenceGenerator, normalize_transcript
from hubert_lit.system import available_cpus

SPLITS = ("train", "dev", "test")
SPLIT_FRACTIONS = {"dev": 0.15, "test": 0.15}  # train gets the rest
MIN_SECONDS, MAX_SECONDS = 2.0, 8.0
CANDIDATES_PER_UTTERANCE = 8  # sentences tried in order until one lands in [MIN_SECONDS, MAX_SECONDS]
CHAPTERS_PER_SPEAKER = 2
PEAK_LEVEL = 10 ** (-1.0 / 20)  # every utterance is scaled to a -1 dBFS peak
MAX_UTTERANCES_PER_SPEAKER = 10000  # ids have four digits per chapter

# Voice variants that sound like ordinary speakers (no whisper, robot or strong echo effects), by sex.
VARIANTS = {
    "M": tuple("m1 m2 m3 m4 m5 m6 m7 m8 Andy Lee Denis john ian grandpa".split()),
    "F": tuple("f1 f2 f3 f4 f5 Annie linda belinda steph steph2 anika aunty grandma".split()),
}
MAX_SPEAKERS = len(ENGLISH_VOICES) * min(len(v) for v in VARIANTS.values()) * 2


@dataclass(frozen=True)
class Speaker:
    """A synthetic speaker: eSpeak voice plus base prosody."""

    id: int
    split: str
    sex: str
    voice: str
    pitch: int
    pitch_range: int
    rate: int

    @property
    def description(self) -> str:
        return f"{self.voice} pitch {self.pitch} range {self.pitch_range} rate {self.rate}"


@dataclass(frozen=True)
class UtterancePlan:
    """One utterance to synthesize: its id, jittered prosody and candidate sentences (tried in order)."""

    id: str
    pitch: int
    pitch_range: int
    rate: int
    candidates: tuple[Sentence, ...]


@dataclass(frozen=True)
class ChapterJob:
    """All utterances of one chapter; synthesized in one fresh process and written to ``directory``."""

    speaker: Speaker
    chapter: int
    directory: str
    utterances: tuple[UtterancePlan, ...]


@dataclass(frozen=True)
class ChapterResult:
    speaker: Speaker
    chapter: int
    num_samples: dict[str, int]
    rejected: int  # candidate sentences skipped (duration out of range or word mismatch)


def _rng(seed: int, stream: str) -> random.Random:
    return random.Random(f"hubert-lit-synth/{seed}/{stream}")


def _clamp(value: int, low: int, high: int) -> int:
    return max(low, min(high, value))


def split_sizes(num_speakers: int) -> dict[str, int]:
    """Speakers per split: about 70/15/15 %, at least one in each."""
    sizes = {split: max(1, round(fraction * num_speakers)) for split, fraction in SPLIT_FRACTIONS.items()}
    return {"train": num_speakers - sum(sizes.values()), **sizes}


def plan_speakers(num_speakers: int, seed: int) -> list[Speaker]:
    """Distinct (accent, variant) voices, balanced by sex, with base prosody; ordered train, dev, test."""
    rng = _rng(seed, "speakers")
    sexes = ["M", "F"] * ((num_speakers + 1) // 2)
    rng.shuffle(sexes)
    voices_by_sex = {sex: [f"{a}+{v}" for a in ENGLISH_VOICES for v in VARIANTS[sex]] for sex in VARIANTS}
    for voices in voices_by_sex.values():
        rng.shuffle(voices)
    ids = rng.sample(range(100, 9000), num_speakers)
    speakers: list[Speaker] = []
    index = 0
    for split, size in split_sizes(num_speakers).items():
        for _ in range(size):
            sex = sexes[index]
            speakers.append(
                Speaker(
                    id=ids[index],
                    split=split,
                    sex=sex,
                    voice=voices_by_sex[sex].pop(),
                    pitch=rng.randint(35, 65),
                    pitch_range=rng.randint(40, 70),
                    rate=rng.randint(130, 180),
                )
            )
            index += 1
    return speakers


def plan_corpus(num_speakers: int, utterances_per_speaker: int, seed: int, root: Path) -> list[ChapterJob]:
    """Every chapter job of the corpus, a pure function of the arguments; files go below ``root``."""
    speakers = plan_speakers(num_speakers, seed)
    rng = _rng(seed, "utterances")
    sentences = SentenceGenerator(f"hubert-lit-synth/{seed}/sentences")
    seen: set[str] = set()
    chapter_ids = rng.sample(range(10000, 200000), num_speakers * CHAPTERS_PER_SPEAKER)
    jobs: list[ChapterJob] = []
    for s, speaker in enumerate(speakers):
        num_chapters = min(CHAPTERS_PER_SPEAKER, utterances_per_speaker)
        for c in range(num_chapters):
            chapter = chapter_ids[s * CHAPTERS_PER_SPEAKER + c]
            chapter_rate = speaker.rate + rng.randint(-6, 6)
            count = utterances_per_speaker // num_chapters + (c < utterances_per_speaker % num_chapters)
            plans = []
            for u in range(count):
                candidates = []
                for _ in range(CANDIDATES_PER_UTTERANCE):
                    candidates.append(_unseen_sentence(sentences, seen))
                plans.append(
                    UtterancePlan(
                        id=f"{speaker.id}-{chapter}-{u:04d}",
                        pitch=_clamp(speaker.pitch + rng.randint(-4, 4), 0, 99),
                        pitch_range=_clamp(speaker.pitch_range + rng.randint(-6, 6), 0, 99),
                        rate=_clamp(round(chapter_rate * rng.uniform(0.94, 1.06)), 80, 450),
                        candidates=tuple(candidates),
                    )
                )
            directory = root / speaker.split / str(speaker.id) / str(chapter)
            jobs.append(ChapterJob(speaker, chapter, str(directory), tuple(plans)))
    return jobs


def _unseen_sentence(generator: SentenceGenerator, seen: set[str], max_draws: int = 1000) -> Sentence:
    for _ in range(max_draws):
        sentence = generator.sentence()
        if sentence.transcript not in seen:
            seen.add(sentence.transcript)
            return sentence
    raise RuntimeError(f"the sentence grammar gave no new sentence in {max_draws} draws ({len(seen)} used)")


def _to_pcm16(audio: np.ndarray, utterance_id: str) -> np.ndarray:
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if peak == 0.0:
        raise RuntimeError(f"{utterance_id}: eSpeak produced silence")
    return np.round(audio * (PEAK_LEVEL / peak) * 32767).astype(np.int16)


def _alignment_json(alignments: dict[str, dict[str, list]]) -> str:
    """One utterance per line: compact but readable, and byte-stable."""
    lines = [
        f"{json.dumps(uid)}: {json.dumps(entry, separators=(',', ':'))}"
        for uid, entry in sorted(alignments.items())
    ]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def synthesize_chapter(job: ChapterJob) -> ChapterResult:
    """Synthesize and write one chapter (FLACs, transcript, alignment). Runs in a fresh worker process."""
    import soundfile as sf

    reset_random_state(0)
    directory = Path(job.directory)
    directory.mkdir(parents=True, exist_ok=True)
    transcripts: dict[str, str] = {}
    alignments: dict[str, dict[str, list]] = {}
    num_samples: dict[str, int] = {}
    rejected = 0
    for plan in job.utterances:
        synth = Synthesizer(job.speaker.voice, rate=plan.rate, pitch=plan.pitch, pitch_range=plan.pitch_range)
        problems = []
        for sentence in plan.candidates:
            result = synth.synthesize(sentence.text)
            words = [(normalize_transcript(w), s, e) for w, s, e in result.words]
            if not MIN_SECONDS <= result.duration <= MAX_SECONDS:
                problems.append(f"{result.duration:.2f} s for {sentence.text!r}")
            elif [w for w, _, _ in words] != sentence.transcript.split():
                problems.append(f"word events {[w for w, _, _ in words]} for {sentence.text!r}")
            else:
                break
            rejected += 1
        else:
            raise RuntimeError(
                f"{plan.id}: no candidate sentence gave {MIN_SECONDS}-{MAX_SECONDS} s of speech with "
                "matching words: " + "; ".join(problems)
            )
        sf.write(
            directory / f"{plan.id}.flac",
            _to_pcm16(result.audio, plan.id),
            SAMPLE_RATE,
            "PCM_16",
            format="FLAC",
        )
        transcripts[plan.id] = sentence.transcript
        alignments[plan.id] = {"phones": [list(p) for p in result.phones], "words": [list(w) for w in words]}
        num_samples[plan.id] = result.num_samples
    stem = f"{job.speaker.id}-{job.chapter}"
    lines = [f"{uid} {text}\n" for uid, text in sorted(transcripts.items())]
    (directory / f"{stem}.trans.txt").write_text("".join(lines), encoding="utf-8")
    (directory / f"{stem}.align.json").write_text(_alignment_json(alignments), encoding="utf-8")
    return ChapterResult(job.speaker, job.chapter, num_samples, rejected)


def speakers_table(speakers: list[Speaker], seconds: dict[int, float]) -> str:
    """SPEAKERS.TXT in LibriSpeech's format; SUBSET is train/dev/test, NAME the voice description."""
    lines = [
        "; Synthetic speakers of the hubert-lit demo corpus (eSpeak NG). A speaker is a voice",
        "; (accent+variant) with its own base pitch, pitch range and rate (words per minute);",
        "; utterances jitter them slightly.",
        ";ID  |SEX| SUBSET           |MINUTES| NAME",
    ]
    for speaker in sorted(speakers, key=lambda s: s.id):
        minutes = seconds.get(speaker.id, 0.0) / 60
        lines.append(
            f"{speaker.id:<5}| {speaker.sex} | {speaker.split:<16} | {minutes:5.2f} | {speaker.description}"
        )
    return "\n".join(lines) + "\n"


def readme_text(args: argparse.Namespace) -> str:
    return (
        "Synthetic demo corpus written by `python -m hubert_lit synth` (hubert-lit), LibriSpeech layout.\n"
        f"Parameters: --speakers {args.speakers} --utterances {args.utterances} --seed {args.seed}\n"
        "All speech is eSpeak NG formant synthesis: a 'speaker' is a voice parameter set, not a person.\n"
        "Use it for tests and demos, not to report results on real speech.\n"
        "Per chapter, <spk>-<chapter>.align.json holds phones (eSpeak mnemonics, pauses as SIL) and\n"
        "words with [start, end) sample offsets at 16 kHz, from the synthesizer's own phoneme events.\n"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hubert_lit synth",
        description="Synthesize a small English speech corpus with eSpeak NG in the LibriSpeech layout "
        "(<out>/LibriSpeech/{train,dev,test}/...) with transcripts, phone/word alignments and SPEAKERS.TXT. "
        "Deterministic: the same seed gives byte-identical files, whatever the number of workers.",
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="output folder; the corpus goes to OUT/LibriSpeech"
    )
    parser.add_argument(
        "--speakers", type=int, default=20,
        help=f"number of speakers, about 70/15/15 %% train/dev/test (3-{MAX_SPEAKERS}; default 20)",
    )  # fmt: skip
    parser.add_argument(
        "--utterances", type=int, default=40,
        help=f"utterances per speaker, spread over {CHAPTERS_PER_SPEAKER} chapters (default 40)",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for speakers, sentences and prosody (default 0)"
    )
    parser.add_argument(
        "--workers", type=int, default=available_cpus(),
        help="parallel processes; does not change the output (default: available CPUs)",
    )  # fmt: skip
    parser.add_argument(
        "--overwrite", action="store_true", help="allow a non-empty OUT; replaces OUT/LibriSpeech if present"
    )
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not 3 <= args.speakers <= MAX_SPEAKERS:
        parser.error(f"--speakers must be between 3 (one per split) and {MAX_SPEAKERS}, got {args.speakers}")
    if not 1 <= args.utterances <= MAX_UTTERANCES_PER_SPEAKER:
        parser.error(
            f"--utterances must be between 1 and {MAX_UTTERANCES_PER_SPEAKER}, got {args.utterances}"
        )
    if args.seed < 0:
        parser.error(f"--seed must be >= 0, got {args.seed}")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} exists and is not a folder")
    if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
        parser.error(f"--out {args.out} exists and is not empty; pass --overwrite to replace OUT/LibriSpeech")


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core; also keeps resampling bit-stable


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    from tqdm import tqdm

    started = time.perf_counter()
    final = args.out / "LibriSpeech"
    partial = args.out / "LibriSpeech.partial"
    shutil.rmtree(partial, ignore_errors=True)
    jobs = plan_corpus(args.speakers, args.utterances, args.seed, partial)
    speakers = sorted({job.speaker for job in jobs}, key=lambda s: s.id)
    seconds: dict[int, float] = {}
    utterances = {split: 0 for split in SPLITS}
    split_seconds = {split: 0.0 for split in SPLITS}
    rejected = 0
    total = sum(len(job.utterances) for job in jobs)
    try:
        with tqdm(total=total, unit="utt", desc="synth", file=sys.stderr) as bar:
            results = map_in_fresh_processes(
                synthesize_chapter, jobs, min(args.workers, len(jobs)), initializer=_worker_init,
                preload=("torch", "torchaudio.functional", __name__),
            )  # fmt: skip
            for result in results:
                chapter_seconds = sum(result.num_samples.values()) / SAMPLE_RATE
                seconds[result.speaker.id] = seconds.get(result.speaker.id, 0.0) + chapter_seconds
                utterances[result.speaker.split] += len(result.num_samples)
                split_seconds[result.speaker.split] += chapter_seconds
                rejected += result.rejected
                bar.update(len(result.num_samples))
        (partial / "SPEAKERS.TXT").write_text(speakers_table(speakers, seconds), encoding="utf-8")
        (partial / "README.TXT").write_text(readme_text(args), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    elapsed = time.perf_counter() - started
    print(f"wrote {final}")
    for split in SPLITS:
        count = sum(1 for s in speakers if s.split == split)
        print(
            f"  {split:<5}  {count:3d} speakers  {utterances[split]:5d} utterances"
            f"  {split_seconds[split] / 3600:6.3f} h"
        )
    hours = sum(split_seconds.values()) / 3600
    print(
        f"  total  {len(speakers):3d} speakers  {sum(utterances.values()):5d} utterances  {hours:6.3f} h"
        f"  ({rejected} candidate sentences re-drawn; {elapsed:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
