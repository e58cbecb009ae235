"""English sentences for the demo corpus: a seeded template grammar and LibriSpeech text normalisation.

The grammar (``resources/templates.txt``) and word lists (``resources/words/*.txt``) ship with the package.
A :class:`Sentence` has the text to speak (punctuation kept for prosody, numbers written out) and its
transcript in LibriSpeech normalisation (:func:`normalize_transcript`).
"""

from __future__ import annotations

import random
import re
import unicodedata
from dataclasses import dataclass
from importlib import resources

_SLOT = re.compile(r"\{(\w+)\}")

# slot name -> (word list file, column)
_SLOTS: dict[str, tuple[str, int]] = {
    "person": ("person", 0),
    "persons": ("person", 1),
    "animal": ("animal", 0),
    "animals": ("animal", 1),
    "thing": ("thing", 0),
    "things": ("thing", 1),
    "place": ("place", 0),
    "adj": ("adjective", 0),
    "adv": ("adverb", 0),
    "prep": ("preposition", 0),
    "time": ("time", 0),
    "name": ("name", 0),
    "vt": ("verb_transitive", 0),
    "vt_past": ("verb_transitive", 1),
    "vi": ("verb_intransitive", 0),
    "vi_past": ("verb_intransitive", 1),
    "vm": ("verb_motion", 0),
    "vm_past": ("verb_motion", 1),
}
# files whose lines have two columns (base form, inflected form); other lines are one entry each
_TWO_COLUMNS = {"person", "animal", "thing", "verb_transitive", "verb_intransitive", "verb_motion"}
_NUMBER_SLOT = "number"

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((1_000_000_000, "billion"), (1_000_000, "million"), (1000, "thousand"), (100, "hundred"))
_ORDINAL_WORDS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth", "nine": "ninth",
    "twelve": "twelfth",
}  # fmt: skip


@dataclass(frozen=True)
class Sentence:
    """``text`` is what the synthesizer reads; ``transcript`` is its LibriSpeech-normalised form."""

    text: str
    transcript: str


@dataclass(frozen=True)
class Grammar:
    """Sentence templates with ``{slot}`` fields and the word lists that fill them (rows of columns)."""

    templates: tuple[str, ...]
    words: dict[str, tuple[tuple[str, ...], ...]]

    def __post_init__(self) -> None:
        for i, template in enumerate(self.templates):
            for slot in _SLOT.findall(template):
                if slot != _NUMBER_SLOT and slot not in _SLOTS:
                    raise ValueError(f"template {i + 1} {template!r}: unknown slot {{{slot}}}")
                if slot in _SLOTS and _SLOTS[slot][0] not in self.words:
                    raise ValueError(f"template {i + 1} {template!r}: no word list {_SLOTS[slot][0]!r}")


def _resource_lines(relative: str) -> list[tuple[int, str]]:
    text = resources.files("hubert_lit.data").joinpath("resources", *relative.split("/")).read_text("utf-8")
    lines = [(n, line.strip()) for n, line in enumerate(text.splitlines(), 1)]
    return [(n, line) for n, line in lines if line and not line.startswith("#")]


def load_grammar() -> Grammar:
    """The grammar shipped in ``hubert_lit/data/resources``; raises ValueError naming a malformed line."""
    words: dict[str, tuple[tuple[str, ...], ...]] = {}
    for name in sorted({file for file, _ in _SLOTS.values()}):
        path = f"words/{name}.txt"
        rows = []
        for number, line in _resource_lines(path):
            row = tuple(line.split())
            if name in _TWO_COLUMNS and len(row) != 2:
                raise ValueError(f"{path} line {number}: expected 'base inflected', got {line!r}")
            rows.append(row if name in _TWO_COLUMNS else (line,))
        if not rows:
            raise ValueError(f"{path} has no entries")
        words[name] = tuple(rows)
    templates = tuple(line for _, line in _resource_lines("templates.txt"))
    return Grammar(templates, words)


class SentenceGenerator:
    """Draws random sentences from a :class:`Grammar`; the sequence depends only on ``seed``."""

    def __init__(self, seed: int | str, grammar: Grammar | None = None) -> None:
        self.grammar = grammar if grammar is not None else load_grammar()
        self._rng = random.Random(seed)

    def _fill(self, template: str) -> str:
        used: dict[str, set[int]] = {}

        def pick(match: re.Match[str]) -> str:
            slot = match.group(1)
            if slot == _NUMBER_SLOT:
                return str(
                    self._rng.randint(2, 12) if self._rng.random() < 0.8 else self._rng.randint(13, 99)
                )
            file, column = _SLOTS[slot]
            rows = self.grammar.words[file]
            taken = used.setdefault(file, set())
            choices = [i for i in range(len(rows)) if i not in taken] or list(range(len(rows)))
            index = self._rng.choice(choices)  # no word twice in one sentence while the list allows it
            taken.add(index)
            return rows[index][column]

        return _SLOT.sub(pick, template)

    def sentence(self) -> Sentence:
        """One random sentence."""
        raw = self._fill(self._rng.choice(self.grammar.templates))
        raw = re.sub(r"\b([Aa]) (?=[AEIOUaeiou])", r"\1n ", raw)
        raw = raw[0].upper() + raw[1:]
        text = spell_numbers(raw)
        return Sentence(text, normalize_transcript(text))


def number_to_words(number: int) -> str:
    """Cardinal number in words, e.g. ``121 -> 'one hundred twenty one'`` (0 <= number < 10**12)."""
    if not 0 <= number < 10**12:
        raise ValueError(f"number {number} is outside the supported range [0, 10**12)")
    if number < 20:
        return _ONES[number]
    if number < 100:
        tens, ones = divmod(number, 10)
        return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")
    for scale, word in _SCALES:
        if number >= scale:
            high, rest = divmod(number, scale)
            return f"{number_to_words(high)} {word}" + (f" {number_to_words(rest)}" if rest else "")
    raise AssertionError("unreachable")


def ordinal_to_words(number: int) -> str:
    """Ordinal number in words, e.g. ``21 -> 'twenty first'``."""
    words = number_to_words(number).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def spell_numbers(text: str) -> str:
    """Replace digit groups by words: cardinals, ordinals (``3rd``), decimals (``2.5``), ``1,000``."""
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: ordinal_to_words(int(m.group(1))), text)

    def decimal(match: re.Match[str]) -> str:
        whole, fraction = match.group(1), match.group(2)
        return f"{number_to_words(int(whole))} point " + " ".join(_ONES[int(d)] for d in fraction)

    text = re.sub(r"(\d+)\.(\d+)", decimal, text)
    return re.sub(r"\d+", lambda m: number_to_words(int(m.group(0))), text)


def normalize_transcript(text: str) -> str:
    """LibriSpeech normalisation: upper case A-Z, apostrophes inside or next to letters, numbers spelled out,
    hyphens and all other punctuation removed, single spaces."""
    text = spell_numbers(text).replace("\u2019", "'")
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").upper()
    text = re.sub(r"[^A-Z' ]", " ", text)
    text = re.sub(r"(?<![A-Z])'(?![A-Z])", " ", text)  # an apostrophe used as a quote mark
    return " ".join(text.split())
