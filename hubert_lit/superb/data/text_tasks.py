"""Tasks with text targets: ASR and PR (one shared set of audio), IC (intents) and SF (slot filling).

* **asr/pr**: grammar sentences (``hubert_lit.data.sentences``), speaker-disjoint splits, every sentence
  once. ASR targets are LibriSpeech-normalised transcripts; PR targets are the synthesizer's own phones
  (eSpeak mnemonics, stress marks removed, pauses dropped), so the phone labels are exact.
* **ic**: Fluent-Speech-Commands-like commands, the same 31 (action, object, location) intents; each
  phrasing group has 5 paraphrases: 3 for train, 1 held out for dev, 1 held out for test, and the speakers
  of the three splits are disjoint. A model must generalise across voices *and* wordings.
* **sf**: Audio-SNIPS-like requests built from templates with slot values; speaker-disjoint splits like
  Audio SNIPS (which is itself TTS speech). Targets follow s3prl's ``character-slot`` mode.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hubert_lit.data.sentences import Sentence, SentenceGenerator, load_grammar, normalize_transcript
from hubert_lit.superb.data.common import (
    SPLITS,
    BuildContext,
    Candidate,
    Record,
    Speaker,
    TaskPlan,
    Voice,
    audio_path,
    draw_speakers,
    peak_normalize,
    sounding_phones,
    speakers_meta,
    split_counts,
    synthesize_first,
    unique_sentences,
    write_audio,
    write_jsonl,
)

MIN_SECONDS, MAX_SECONDS = 2.0, 8.0  # ASR/PR sentence length, as in the demo corpus
COMMAND_MAX_SECONDS = 8.0
CANDIDATES = 6
CHARACTERS = [" ", "'", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ"]


@dataclass(frozen=True)
class SpokenItem:
    """One utterance to synthesize: candidates are tried in order (see ``synthesize_first``)."""

    id: str
    task: str
    split: str
    speaker: str
    voice: Voice
    candidates: tuple[Candidate | Sentence, ...]
    fields: tuple[tuple[str, Any], ...] = ()  # task fields copied into the record
    min_seconds: float = 0.0
    max_seconds: float = COMMAND_MAX_SECONDS


def render_spoken(item: SpokenItem, root: Path) -> Record:
    """Synthesize, write the FLAC, return the record (text, sounding phones and the task fields)."""
    chosen, result = synthesize_first(
        item.voice, item.candidates, item.id, item.min_seconds, item.max_seconds
    )
    relative = audio_path(item.task, item.split, item.id)
    num_samples = write_audio(root, relative, peak_normalize(result.audio, item.id))
    record: Record = {"id": item.id, "audio": relative, "num_samples": num_samples, "speaker": item.speaker,
                      "text": chosen.transcript}  # fmt: skip
    record.update(dict(item.fields))
    record["phones"] = sounding_phones(result.phones)
    return record


def _per_speaker_items(
    ctx: BuildContext,
    task: str,
    speakers: dict[str, list[Speaker]],
    counts: dict[str, int],
    make: Callable[[str, Speaker, int, random.Random], SpokenItem],
) -> dict[str, list[SpokenItem]]:
    """``make(split, speaker, index, rng) -> SpokenItem`` for ``counts[split]`` utterances per speaker."""
    rng = ctx.rng(task, "items")
    return {
        split: [make(split, speaker, u, rng) for speaker in speakers[split] for u in range(counts[split])]
        for split in SPLITS
    }


def _strip(record: Record, *keys: str) -> Record:
    return {k: v for k, v in record.items() if k not in keys}


# ---------------------------------------------------------------- ASR + PR


def plan_asr_pr(ctx: BuildContext, speakers: dict[str, int], utterances: dict[str, int]) -> TaskPlan:
    """ASR and PR share their audio (under ``asr/audio``); one plan writes both folders."""
    groups = draw_speakers(ctx.pool, ctx.rng("asr", "speakers"), speakers)
    generator = SentenceGenerator(f"hubert-lit-superb/{ctx.seed}/asr/sentences")
    seen: set[str] = set()

    def make(split: str, speaker: Speaker, u: int, rng: random.Random) -> SpokenItem:
        candidates = tuple(unique_sentences(generator, seen, CANDIDATES))
        return SpokenItem(f"{speaker.id}-{u:04d}", "asr", split, speaker.id, speaker.utterance_voice(rng),
                          candidates, min_seconds=MIN_SECONDS, max_seconds=MAX_SECONDS)  # fmt: skip

    items = _per_speaker_items(ctx, "asr", groups, utterances, make)
    jobs = ctx.jobs("asr", render_spoken, [item for split in SPLITS for item in items[split]])

    def write(records: dict[str, list[Record]]) -> None:
        for split in SPLITS:
            write_jsonl(ctx.root / "asr" / f"{split}.jsonl", [_strip(r, "phones") for r in records[split]])
            write_jsonl(ctx.root / "pr" / f"{split}.jsonl", [_strip(r, "text") for r in records[split]])
        train_phones = {p for r in records["train"] for p in r["phones"]}
        all_phones = {p for rs in records.values() for r in rs for p in r["phones"]}
        counts = split_counts(records)
        ctx.meta(
            "asr",
            "Speech recognition: grammar sentences spoken by eSpeak NG voices; character CTC targets "
            "(LibriSpeech normalisation). Speaker-disjoint splits, every sentence once.",
            "Synthetic speech from a small template grammar (a few hundred words); WER is a pipeline check, "
            "not comparable with LibriSpeech.",
            vocab=CHARACTERS, splits=counts, speakers=speakers_meta(groups),
        )  # fmt: skip
        ctx.meta(
            "pr",
            "Phoneme recognition on the ASR audio (asr/audio): targets are the synthesizer's own phones "
            "(eSpeak mnemonics, stress marks removed, pauses dropped).",
            "Labels are exact (what eSpeak spoke), cleaner than LibriSpeech g2p; the inventory is eSpeak's, "
            "not ARPAbet, and differs slightly between accents.",
            vocab=sorted(all_phones), unseen_in_train=sorted(all_phones - train_phones), splits=counts,
            speakers=speakers_meta(groups),
        )  # fmt: skip

    return TaskPlan(("asr", "pr"), jobs, write)


# ---------------------------------------------------------------- IC

IC_LOCATIONS = ("none", "kitchen", "bedroom", "washroom")
# phrasing group -> paraphrases; {object}, and {in_location} (" in the kitchen") or {location_} ("kitchen ")
IC_PHRASINGS: dict[str, tuple[str, ...]] = {
    "activate": ("turn on the {location_}{object}", "switch on the {object}{in_location}",
                 "{location_}{object} on", "turn the {location_}{object} on", "put the {object} on{in_location}"),
    "deactivate": ("turn off the {location_}{object}", "switch off the {object}{in_location}",
                   "{location_}{object} off", "turn the {location_}{object} off", "shut off the {object}{in_location}"),
    "increase": ("increase the {object}{in_location}", "turn up the {location_}{object}", "{location_}{object} up",
                 "raise the {object}{in_location}", "more {object}{in_location} please"),
    "decrease": ("decrease the {object}{in_location}", "turn down the {location_}{object}", "{location_}{object} down",
                 "lower the {object}{in_location}", "less {object}{in_location} please"),
    "language": ("change the language to {object}", "switch to {object}", "set the language to {object}",
                 "I want to use {object}", "{object} please"),
    "language_none": ("change the language", "switch the language", "use a different language",
                      "open the language settings", "change language"),
    "bring": ("bring me the {object}", "fetch my {object}", "get me the {object}", "I need my {object}",
              "go and get the {object}"),
}  # fmt: skip
# (action, object, locations, phrasing group): the 31 intents of Fluent Speech Commands
IC_INTENT_GROUPS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("activate", "lights", IC_LOCATIONS, "activate"),
    ("activate", "lamp", ("none",), "activate"),
    ("activate", "music", ("none",), "activate"),
    ("deactivate", "lights", IC_LOCATIONS, "deactivate"),
    ("deactivate", "lamp", ("none",), "deactivate"),
    ("deactivate", "music", ("none",), "deactivate"),
    ("increase", "heat", IC_LOCATIONS, "increase"),
    ("increase", "volume", ("none",), "increase"),
    ("decrease", "heat", IC_LOCATIONS, "decrease"),
    ("decrease", "volume", ("none",), "decrease"),
    ("change language", "none", ("none",), "language_none"),
    ("change language", "Chinese", ("none",), "language"),
    ("change language", "Korean", ("none",), "language"),
    ("change language", "English", ("none",), "language"),
    ("change language", "German", ("none",), "language"),
    ("bring", "newspaper", ("none",), "bring"),
    ("bring", "juice", ("none",), "bring"),
    ("bring", "socks", ("none",), "bring"),
    ("bring", "shoes", ("none",), "bring"),
)
IC_INTENTS: tuple[tuple[str, str, str], ...] = tuple(
    (action, obj, location) for action, obj, locations, _ in IC_INTENT_GROUPS for location in locations
)
IC_HELD_OUT = {"dev": 1, "test": 1}  # paraphrases per group reserved for each evaluation split


def ic_text(phrasing: str, obj: str, location: str) -> str:
    """Fill a paraphrase; the first letter is capitalised and a full stop added for natural prosody."""
    text = phrasing.format(
        object=obj,
        in_location="" if location == "none" else f" in the {location}",
        location_="" if location == "none" else f"{location} ",
    )
    return text[0].upper() + text[1:] + "."


def split_phrasings(rng: random.Random) -> dict[str, dict[str, tuple[str, ...]]]:
    """Group -> split -> paraphrases: dev and test each get held-out ones, train the rest."""
    out: dict[str, dict[str, tuple[str, ...]]] = {}
    for group, phrasings in IC_PHRASINGS.items():
        order = list(phrasings)
        rng.shuffle(order)
        dev, test = IC_HELD_OUT["dev"], IC_HELD_OUT["test"]
        out[group] = {"test": tuple(order[:test]), "dev": tuple(order[test : test + dev]),
                      "train": tuple(order[test + dev :])}  # fmt: skip
    return out


def plan_ic(ctx: BuildContext, speakers: dict[str, int], utterances: dict[str, int]) -> TaskPlan:
    groups = draw_speakers(ctx.pool, ctx.rng("ic", "speakers"), speakers)
    phrasings = split_phrasings(ctx.rng("ic", "phrasings"))
    group_of = {(a, o): g for a, o, _, g in IC_INTENT_GROUPS}
    # each speaker goes through the intents in order from its own start, spread evenly over the speakers of a
    # split, so a split covers all intents as soon as speakers x utterances >= 31
    offsets = {
        s.id: k * len(IC_INTENTS) // len(groups[split])
        for split in SPLITS
        for k, s in enumerate(groups[split])
    }

    def make(split: str, speaker: Speaker, u: int, rng: random.Random) -> SpokenItem:
        action, obj, location = IC_INTENTS[(offsets[speaker.id] + u) % len(IC_INTENTS)]
        options = list(phrasings[group_of[(action, obj)]][split])
        rng.shuffle(options)
        candidates = tuple(Candidate.of(ic_text(p, obj, location)) for p in options)
        fields = (("action", action), ("object", obj), ("location", location))
        return SpokenItem(f"{speaker.id}-{u:04d}", "ic", split, speaker.id, speaker.utterance_voice(rng),
                          candidates, fields)  # fmt: skip

    items = _per_speaker_items(ctx, "ic", groups, utterances, make)
    jobs = ctx.jobs("ic", render_spoken, [item for split in SPLITS for item in items[split]])

    def write(records: dict[str, list[Record]]) -> None:
        for split in SPLITS:
            write_jsonl(ctx.root / "ic" / f"{split}.jsonl", [_strip(r, "phones") for r in records[split]])
        classes = {
            "action": sorted({a for a, _, _ in IC_INTENTS}),
            "object": sorted({o for _, o, _ in IC_INTENTS}),
            "location": list(IC_LOCATIONS),
        }
        ctx.meta(
            "ic",
            "Intent classification: smart-home commands with the 31 (action, object, location) intents of "
            "Fluent Speech Commands; an utterance is correct only if all three slots are.",
            "Templated commands (like FSC itself). Dev and test use held-out voices AND held-out paraphrases "
            "(3 of 5 per phrasing group for train), so phrase lookup does not suffice.",
            classes=classes, num_classes={k: len(v) for k, v in classes.items()},
            intents=[list(i) for i in IC_INTENTS],
            phrasings={g: {s: list(p) for s, p in by_split.items()} for g, by_split in phrasings.items()},
            splits=split_counts(records), speakers=speakers_meta(groups),
        )  # fmt: skip

    return TaskPlan(("ic",), jobs, write)


# ---------------------------------------------------------------- SF

SF_TEMPLATES = (
    "Play the {music_item} by {artist}.",
    "I want to hear a {music_item} by {artist}.",
    "Add {artist} to my {playlist} playlist.",
    "Put this {music_item} on the {playlist} playlist.",
    "Play my {playlist} playlist.",
    "What is the weather in {city} {time_range}?",
    "Will it {weather_condition} in {city} {time_range}?",
    "Is it going to {weather_condition} in {city}?",
    "Book a table for {party_size_number} at a {restaurant_type} restaurant in {city}.",
    "Find me a {restaurant_type} restaurant in {city} for {time_range}.",
    "Book a {restaurant_type} restaurant for {party_size_number} people {time_range}.",
)
SF_SURNAMES = ("Miller", "Baker", "Carter", "Hughes", "Stone", "Fisher", "Reed", "Walsh", "Hayes", "Porter",
               "Lane", "Grant")  # fmt: skip
SF_VALUES: dict[str, tuple[str, ...]] = {
    "music_item": ("song", "album", "track", "record", "tune"),
    "playlist": ("road trip", "morning coffee", "summer hits", "workout", "dinner party", "rainy day",
                 "study time", "late night"),
    "city": ("Paris", "London", "Boston", "Denver", "Chicago", "Seattle", "Dublin", "Madrid", "Berlin", "Vienna",
             "Toronto", "Sydney", "Houston", "Portland", "Glasgow", "Lisbon", "Oslo", "Prague", "Austin", "Phoenix"),
    "time_range": ("tomorrow", "tonight", "this weekend", "next week", "this afternoon", "tomorrow morning",
                   "next Friday", "this evening"),
    "weather_condition": ("rain", "snow", "hail"),
    "restaurant_type": ("Italian", "Chinese", "Mexican", "Thai", "Indian", "French", "Greek", "Japanese",
                        "vegetarian", "seafood"),
    "party_size_number": ("two", "three", "four", "five", "six", "seven", "eight", "ten"),
}  # fmt: skip
_SF_SLOT = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class SlotSentence:
    """A filled SF template: spoken text, transcript words, one slot name (or "O") per word."""

    text: str
    words: tuple[str, ...]
    iob: tuple[str, ...]

    @property
    def transcript(self) -> str:
        return " ".join(self.words)

    @property
    def slots(self) -> list[list[str]]:
        """[[slot type, value], ...] in order; adjacent words with the same tag form one value."""
        out: list[list[str]] = []
        for i, (word, tag) in enumerate(zip(self.words, self.iob)):
            if tag == "O":
                continue
            if i > 0 and self.iob[i - 1] == tag:
                out[-1][1] += " " + word
            else:
                out.append([tag, word])
        return out

    @property
    def target(self) -> str:
        """s3prl character-slot target: ``B-<slot>`` before and ``E-<slot>`` after each slot value."""
        tokens: list[str] = []
        for i, (word, tag) in enumerate(zip(self.words, self.iob)):
            if tag != "O" and (i == 0 or self.iob[i - 1] != tag):
                tokens.append(f"B-{tag}")
            tokens.append(word)
            if tag != "O" and (i == len(self.words) - 1 or self.iob[i + 1] != tag):
                tokens.append(f"E-{tag}")
        return " ".join(tokens)


def sf_artists() -> tuple[str, ...]:
    names = [row[0] for row in load_grammar().words["name"]]
    return tuple(f"{first} {last}" for first in names for last in SF_SURNAMES)


def fill_slot_template(template: str, values: dict[str, str]) -> SlotSentence:
    """Fill ``{slot}`` fields; the words of each value carry its slot name, all other words "O"."""
    words: list[str] = []
    iob: list[str] = []
    position = 0
    for match in _SF_SLOT.finditer(template):
        literal = normalize_transcript(template[position : match.start()]).split()
        words += literal
        iob += ["O"] * len(literal)
        value = normalize_transcript(values[match.group(1)]).split()
        words += value
        iob += [match.group(1)] * len(value)
        position = match.end()
    tail = normalize_transcript(template[position:]).split()
    words += tail
    iob += ["O"] * len(tail)
    text = _SF_SLOT.sub(lambda m: values[m.group(1)], template)
    if " ".join(words) != normalize_transcript(text):
        raise AssertionError(f"slot words {words} do not match the transcript of {text!r}")
    return SlotSentence(text, tuple(words), tuple(iob))


def plan_sf(ctx: BuildContext, speakers: dict[str, int], utterances: dict[str, int]) -> TaskPlan:
    groups = draw_speakers(ctx.pool, ctx.rng("sf", "speakers"), speakers)
    values = {**SF_VALUES, "artist": sf_artists()}
    seen: set[str] = set()

    def draw(rng: random.Random) -> SlotSentence:
        for _ in range(1000):
            template = rng.choice(SF_TEMPLATES)
            filled = fill_slot_template(
                template, {s: rng.choice(values[s]) for s in _SF_SLOT.findall(template)}
            )
            if filled.transcript not in seen:
                seen.add(filled.transcript)
                return filled
        raise RuntimeError(f"SF templates gave no new sentence in 1000 draws ({len(seen)} used)")

    def make(split: str, speaker: Speaker, u: int, rng: random.Random) -> SpokenItem:
        filled = draw(rng)
        fields = (("slots", filled.slots), ("iob", list(filled.iob)), ("target", filled.target))
        return SpokenItem(f"{speaker.id}-{u:04d}", "sf", split, speaker.id, speaker.utterance_voice(rng),
                          (Candidate(filled.text, filled.transcript),), fields)  # fmt: skip

    items = _per_speaker_items(ctx, "sf", groups, utterances, make)
    jobs = ctx.jobs("sf", render_spoken, [item for split in SPLITS for item in items[split]])

    def write(records: dict[str, list[Record]]) -> None:
        for split in SPLITS:
            write_jsonl(ctx.root / "sf" / f"{split}.jsonl", [_strip(r, "phones") for r in records[split]])
        slot_types = sorted({s for rs in records.values() for r in rs for s, _ in r["slots"]})
        ctx.meta(
            "sf",
            "Slot filling: Audio-SNIPS-like requests (music, weather, restaurants) from templates with slot "
            "values. 'target' is the transcript with 'B-<slot>'/'E-<slot>' tokens around each slot value "
            "(s3prl character-slot mode: every other character is a character token); 'iob' gives one slot "
            "name or 'O' per word of 'text'.",
            "The most honest of the ten: SUPERB's own SF data (Audio SNIPS) is TTS speech too. The template "
            "set is small; speaker-disjoint splits, slot values shared between splits as in SNIPS.",
            vocab=CHARACTERS, slot_types=slot_types, templates=list(SF_TEMPLATES),
            splits=split_counts(records), speakers=speakers_meta(groups),
        )  # fmt: skip

    return TaskPlan(("sf",), jobs, write)
