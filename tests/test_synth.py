"""Demo corpus generator: eSpeak wrapper, sentence grammar, text normalisation and the `synth` tool."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from hubert_lit.data import synth
from hubert_lit.data.espeak import (
    SILENCE,
    PhonemeEvent,
    Synthesizer,
    WordEvent,
    align_events,
    map_offset,
    phone_label,
)
from hubert_lit.data.sentences import (
    SentenceGenerator,
    load_grammar,
    normalize_transcript,
    number_to_words,
    ordinal_to_words,
)

TINY = ["--speakers", "3", "--utterances", "3"]


# ---------------------------------------------------------------- text


@pytest.mark.parametrize(
    "text, expected",
    [
        ("It's 3 o'clock, isn't it?", "IT'S THREE O'CLOCK ISN'T IT"),
        ("The dogs' bones -- all 21 of them!", "THE DOGS' BONES ALL TWENTY ONE OF THEM"),
        ('He said "yes" (twice); well-known.', "HE SAID YES TWICE WELL KNOWN"),
        (
            "On the 2nd and 23rd day, 1,500 men.",
            "ON THE SECOND AND TWENTY THIRD DAY ONE THOUSAND FIVE HUNDRED MEN",
        ),
        ("It weighs 2.5 tons", "IT WEIGHS TWO POINT FIVE TONS"),
        ("Café   déjà vu", "CAFE DEJA VU"),
        ("'Tis the boys' game ' alone", "'TIS THE BOYS' GAME ALONE"),  # only a lone apostrophe goes
        ("It\u2019s fine", "IT'S FINE"),
    ],
)
def test_normalize_transcript(text, expected):
    assert normalize_transcript(text) == expected


@pytest.mark.parametrize(
    "number, words",
    [
        (0, "zero"),
        (13, "thirteen"),
        (40, "forty"),
        (99, "ninety nine"),
        (100, "one hundred"),
        (115, "one hundred fifteen"),
        (1999, "one thousand nine hundred ninety nine"),
        (2_000_005, "two million five"),
    ],
)
def test_number_to_words(number, words):
    assert number_to_words(number) == words


def test_ordinals_and_number_range():
    assert [ordinal_to_words(n) for n in (1, 2, 3, 5, 12, 20, 21, 100)] == [
        "first", "second", "third", "fifth", "twelfth", "twentieth", "twenty first", "one hundredth",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="outside the supported range"):
        number_to_words(-1)


def test_sentence_generator_is_seeded_and_normalised():
    grammar = load_grammar()
    assert len(grammar.templates) >= 30 and sum(len(rows) for rows in grammar.words.values()) >= 300
    first = [SentenceGenerator(7, grammar).sentence() for _ in range(1)]
    a = SentenceGenerator(7, grammar)
    b = SentenceGenerator(7, grammar)
    c = SentenceGenerator(8, grammar)
    run_a = [a.sentence() for _ in range(50)]
    assert run_a == [b.sentence() for _ in range(50)]
    assert run_a != [c.sentence() for _ in range(50)]
    assert run_a[0] == first[0]
    for sentence in run_a:
        assert "{" not in sentence.text and not re.search(r"\d", sentence.text)
        assert sentence.transcript == normalize_transcript(sentence.text)
        assert re.fullmatch(r"[A-Z']+( [A-Z']+)*", sentence.transcript)
        assert not re.search(r"\bA [AEIOU]", sentence.transcript)  # "a" became "an" before a vowel


# ---------------------------------------------------------------- alignment from events (no eSpeak needed)


def test_phone_label():
    assert phone_label("'oU") == "oU" and phone_label(",eI") == "eI" and phone_label("@2") == "@2"
    assert phone_label("_:") == SILENCE and phone_label("_") == SILENCE


def test_map_offset_rounds_to_nearest():
    assert map_offset(22050, 22050, 16000) == 16000
    assert map_offset(441, 22050, 16000) == 320
    assert map_offset(1, 22050, 16000) == 1  # 0.73 -> 1
    assert map_offset(2, 22050, 16000) == 1  # 1.45 -> 1


def test_align_events_tiles_the_audio_and_splits_merged_words():
    text = "Go in the house."
    events = [
        WordEvent(0, 2, 100),
        PhonemeEvent("g", 100),
        PhonemeEvent("'oU", 300),
        PhonemeEvent("_", 500),  # pause ...
        PhonemeEvent("_:", 500),  # ... zero-length, then another pause: one SIL
        WordEvent(3, 2, 600),  # eSpeak's single event for "in the"
        PhonemeEvent("I", 600),
        PhonemeEvent("n", 650),
        PhonemeEvent("D", 700),
        PhonemeEvent("@2", 760),
        WordEvent(10, 5, 800),
        PhonemeEvent("h", 800),
        PhonemeEvent("'aU", 850),
        PhonemeEvent("s", 950),
        PhonemeEvent("_:", 1000),
    ]
    pronunciations = {"in": ["I", "n"], "the": ["D", "@"]}
    phones, words = align_events(text, events, 1100, 1000, 1000, pronounce=pronunciations.__getitem__)
    assert phones == [
        (SILENCE, 0, 100), ("g", 100, 300), ("oU", 300, 500), (SILENCE, 500, 600), ("I", 600, 650),
        ("n", 650, 700), ("D", 700, 760), ("@2", 760, 800), ("h", 800, 850), ("aU", 850, 950),
        ("s", 950, 1000), (SILENCE, 1000, 1100),
    ]  # fmt: skip
    assert words == [("Go", 100, 500), ("in", 600, 700), ("the", 700, 800), ("house", 800, 1000)]
    _, unsplit = align_events(text, events, 1100, 1000, 1000)
    assert unsplit[1] == ("in the", 600, 800)


def test_align_events_rate_conversion_keeps_the_end():
    events = [WordEvent(0, 2, 0), PhonemeEvent("h", 0), PhonemeEvent("aI", 11025), PhonemeEvent("_", 22050)]
    phones, words = align_events("hi", events, 16000, 22050, 16000)
    assert phones == [("h", 0, 8000), ("aI", 8000, 16000)]
    assert words == [("hi", 0, 16000)]


# ---------------------------------------------------------------- eSpeak


def test_synthesizer_gives_16k_audio_with_contiguous_phones():
    text = "Do not leave the old lamp in the garden, Anna's cat is there."
    result = Synthesizer("en-gb-scotland+f2", rate=170, pitch=45).synthesize(text)
    assert result.sample_rate == 16000 and result.audio.dtype == np.float32 and result.audio.ndim == 1
    assert 1.5 < result.duration < 8 and 0.05 < np.abs(result.audio).max() <= 1.0
    _check_alignment({"phones": result.phones, "words": result.words}, result.num_samples)
    assert [w.upper() for w, _, _ in result.words] == normalize_transcript(text).split()
    assert sum(label != SILENCE for label, _, _ in result.phones) >= 30
    raw = Synthesizer("en-gb-scotland+f2", rate=170, pitch=45).synthesize_raw(text)
    samples = [e.sample for e in raw.events]
    assert raw.audio.dtype == np.int16 and samples == sorted(samples) and samples[-1] <= len(raw.audio)
    assert abs(len(raw.audio) * 16000 / 22050 - result.num_samples) < 0.01 * result.num_samples


def test_synthesizer_prosody_parameters_change_the_audio():
    slow = Synthesizer("en-us+m3", rate=120).synthesize("The boat reached the island at dawn.")
    fast = Synthesizer("en-us+m3", rate=240).synthesize("The boat reached the island at dawn.")
    assert slow.duration > 1.5 * fast.duration


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"voice": "xx-nothing"}, "unknown eSpeak voice 'xx-nothing'"),
        ({"voice": "en-us+nobody"}, "unknown eSpeak voice variant 'nobody'"),
    ],
)
def test_synthesizer_rejects_unknown_voices(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Synthesizer(**kwargs).synthesize("hello")


def test_synthesizer_validates_parameters():
    with pytest.raises(ValueError, match=r"pitch must be an integer in \[0, 99\], got 120"):
        Synthesizer(pitch=120)
    with pytest.raises(ValueError, match="empty text"):
        Synthesizer().synthesize("  ")


def test_chapter_redraws_sentences_outside_the_duration_range(tmp_path):
    speaker = synth.Speaker(101, "train", "M", "en-us+m1", 50, 50, 160)
    short, good = (
        synth.Sentence("Yes.", "YES"),
        synth.Sentence("The farmer sold ten apples at the market.", ""),
    )
    good = synth.Sentence(good.text, normalize_transcript(good.text))
    plan = synth.UtterancePlan("101-2000-0000", 50, 50, 160, (short, good))
    result = synth.synthesize_chapter(synth.ChapterJob(speaker, 2000, str(tmp_path), (plan,)))
    assert result.rejected == 1
    assert (tmp_path / "101-2000.trans.txt").read_text() == f"101-2000-0000 {good.transcript}\n"
    only_short = synth.UtterancePlan("101-2000-0001", 50, 50, 160, (short,))
    with pytest.raises(RuntimeError, match=r"101-2000-0001: no candidate sentence gave 2.0-8.0 s"):
        synth.synthesize_chapter(synth.ChapterJob(speaker, 2000, str(tmp_path), (only_short,)))


# ---------------------------------------------------------------- corpus plan (no synthesis)


def test_default_plan_splits_speakers_and_never_repeats_a_sentence(tmp_path):
    jobs = synth.plan_corpus(20, 40, 0, tmp_path)
    speakers = {job.speaker for job in jobs}
    assert synth.split_sizes(20) == {"train": 14, "dev": 3, "test": 3}
    assert sorted(s.split for s in speakers) == ["dev"] * 3 + ["test"] * 3 + ["train"] * 14
    assert len({s.id for s in speakers}) == 20 and len({s.voice for s in speakers}) == 20
    assert sum(s.sex == "M" for s in speakers) == 10
    assert len(jobs) == 40 and sum(len(job.utterances) for job in jobs) == 800
    transcripts = [c.transcript for job in jobs for u in job.utterances for c in u.candidates]
    assert len(transcripts) == len(set(transcripts))
    assert synth.plan_corpus(20, 40, 0, tmp_path) == jobs
    assert synth.plan_corpus(20, 40, 1, tmp_path) != jobs
    assert synth.split_sizes(3) == {"train": 1, "dev": 1, "test": 1}


# ---------------------------------------------------------------- the tool end to end


def _build(out: Path, *extra: str) -> None:
    assert synth.main(["--out", str(out), *TINY, *extra]) == 0


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Seed 0 with 2 workers and with 1 worker, then seed 1 written over the second with --overwrite."""
    out_a, out_b = tmp_path_factory.mktemp("seed0_w2"), tmp_path_factory.mktemp("seed0_w1")
    _build(out_a, "--seed", "0", "--workers", "2")
    _build(out_b, "--seed", "0", "--workers", "1")
    snapshot_b = _snapshot(out_b)
    _build(out_b, "--seed", "1", "--workers", "2", "--overwrite")
    return out_a / "LibriSpeech", snapshot_b, _snapshot(out_b)


def test_same_seed_is_byte_identical_whatever_the_workers(builds):
    root, snapshot_b, _ = builds
    snapshot_a = _snapshot(root.parent)
    assert snapshot_a == snapshot_b
    kinds = {Path(name).name.split(".", 1)[-1] for name in snapshot_a}
    assert {"flac", "trans.txt", "align.json", "TXT"} <= kinds


def test_other_seed_differs_and_overwrite_replaces(builds):
    _, snapshot_b, snapshot_c = builds
    assert set(snapshot_c) != set(snapshot_b)  # other speaker/chapter ids
    assert snapshot_c["LibriSpeech/SPEAKERS.TXT"] != snapshot_b["LibriSpeech/SPEAKERS.TXT"]
    assert sum(name.endswith(".flac") for name in snapshot_c) == 9  # nothing left over from seed 0


def _check_alignment(entry: dict, num_samples: int) -> None:
    phones, words = entry["phones"], entry["words"]
    assert phones and phones[0][1] == 0 and phones[-1][2] == num_samples
    for (_, _, end), (_, start, _) in zip(phones, phones[1:]):
        assert end == start
    assert all(isinstance(s, int) and isinstance(e, int) and s < e for _, s, e in phones)
    boundaries = {s for _, s, _ in phones} | {num_samples}
    previous_end = 0
    for _, start, end in words:
        assert previous_end <= start < end <= num_samples and start in boundaries and end in boundaries
        inside = [p for p, s, e in phones if start <= s and e <= end]
        assert inside[0] != SILENCE and inside[-1] != SILENCE
        previous_end = end


def test_layout_transcripts_alignments_and_durations(builds):
    root, _, _ = builds
    assert sorted(p.name for p in root.iterdir()) == ["README.TXT", "SPEAKERS.TXT", "dev", "test", "train"]
    flacs = sorted(root.glob("*/*/*/*.flac"))
    assert len(flacs) == 9
    for chapter_dir in {f.parent for f in flacs}:
        spk, chapter = chapter_dir.parent.name, chapter_dir.name
        stem = f"{spk}-{chapter}"
        lines = (chapter_dir / f"{stem}.trans.txt").read_text().splitlines()
        alignment = json.loads((chapter_dir / f"{stem}.align.json").read_text())
        ids = [line.split(" ", 1)[0] for line in lines]
        assert ids == sorted(ids) == sorted(alignment) == sorted(f.stem for f in chapter_dir.glob("*.flac"))
        for line in lines:
            uid, text = line.split(" ", 1)
            assert re.fullmatch(rf"{spk}-{chapter}-\d{{4}}", uid) and re.fullmatch(
                r"[A-Z']+( [A-Z']+)*", text
            )
            info = sf.info(chapter_dir / f"{uid}.flac")
            assert (info.samplerate, info.channels, info.format, info.subtype) == (16000, 1, "FLAC", "PCM_16")
            assert synth.MIN_SECONDS <= info.frames / 16000 <= synth.MAX_SECONDS
            _check_alignment(alignment[uid], info.frames)
            assert [w for w, _, _ in alignment[uid]["words"]] == text.split()
            audio, _ = sf.read(chapter_dir / f"{uid}.flac", dtype="int16")
            assert np.abs(audio.astype(np.int32)).max() == round(synth.PEAK_LEVEL * 32767)


def test_speakers_table_and_split_disjointness(builds):
    root, _, _ = builds
    rows = [line for line in (root / "SPEAKERS.TXT").read_text().splitlines() if not line.startswith(";")]
    assert (root / "SPEAKERS.TXT").read_text().splitlines()[-len(rows) - 1].startswith(";ID  |SEX| SUBSET")
    speakers = {}
    for row in rows:
        fields = [f.strip() for f in row.split("|")]
        assert len(fields) == 5 and fields[1] in ("M", "F") and fields[2] in synth.SPLITS
        assert re.fullmatch(r"en[-\w]*\+\w+ pitch \d+ range \d+ rate \d+", fields[4])
        speakers[fields[0]] = (fields[2], float(fields[3]))
    assert sorted(split for split, _ in speakers.values()) == ["dev", "test", "train"]
    transcripts = {}
    for split in synth.SPLITS:
        dirs = [p.name for p in (root / split).iterdir()]
        assert all(speakers[spk][0] == split for spk in dirs)
        transcripts[split] = {
            line.split(" ", 1)[1]
            for f in (root / split).glob("*/*/*.trans.txt")
            for line in f.read_text().splitlines()
        }
        for spk in dirs:
            seconds = sum(sf.info(f).frames for f in (root / split / spk).glob("*/*.flac")) / 16000
            assert speakers[spk][1] == pytest.approx(seconds / 60, abs=0.005)
    assert not transcripts["train"] & transcripts["dev"]
    assert not transcripts["train"] & transcripts["test"] and not transcripts["dev"] & transcripts["test"]


def test_refuses_non_empty_output_and_bad_arguments(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user data")
    with pytest.raises(SystemExit) as exit_info:
        synth.main(["--out", str(tmp_path), *TINY])
    assert exit_info.value.code == 2 and "not empty; pass --overwrite" in capsys.readouterr().err
    for bad, message in [
        (["--speakers", "2"], "--speakers must be between 3"),
        (["--utterances", "0"], "--utterances must be between 1"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--seed", "-1"], "--seed must be >= 0"),
    ]:
        with pytest.raises(SystemExit):
            synth.main(["--out", str(tmp_path / "new"), *bad])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "new").exists() and (tmp_path / "keep.txt").read_text() == "user data"


def test_help_documents_every_option():
    text = synth.build_parser().format_help()
    for option in ("--out", "--speakers", "--utterances", "--seed", "--workers", "--overwrite"):
        assert option in text
