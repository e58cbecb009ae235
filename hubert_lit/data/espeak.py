"""eSpeak NG speech synthesis with exact phone and word boundaries.

A thin ctypes wrapper over the ``libespeak-ng`` shipped by the ``espeakng-loader`` wheel (library and
voice data, no system install). The library runs in synchronous mode with phoneme events enabled, so every
synthesis returns the 22,050 Hz int16 audio with PHONEME and WORD events that carry exact sample offsets.
:class:`Synthesizer` turns those into a :class:`SynthResult`: float32 audio at 16 kHz plus contiguous phone
segments and word spans as ``(label, start, end)`` sample offsets at the output rate (end exclusive).

Determinism: eSpeak keeps internal state between calls in the same process (pitch-flutter phase, noise
generator, gain control), so the same call can give slightly different samples depending on what was
synthesized before it. The output is however a pure function of the *sequence* of calls made since the
library was loaded. For reproducible data run a fixed sequence of calls in a fresh process per job, e.g. with
:func:`map_in_fresh_processes`. The library is not thread-safe; calls are serialised with a lock.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ESPEAK_SAMPLE_RATE = 22050
SILENCE = "SIL"

# English voices that work without MBROLA (names accepted by espeak_SetVoiceByName; "en" is British English).
ENGLISH_VOICES = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)

# speak_lib.h constants
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_ENDPAUSE = 0x1000
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_PHONEME = 7
_PARAM_RATE, _PARAM_VOLUME, _PARAM_PITCH, _PARAM_RANGE, _PARAM_WORDGAP = 1, 2, 3, 4, 7
_STRESS_MARKS = "',%="
_PUNCTUATION = '.,;:!?"()[]{}-'


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_Callback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


@dataclass(frozen=True)
class PhonemeEvent:
    """A PHONEME event: eSpeak mnemonic (with stress marks) starting at ``sample`` (22,050 Hz)."""

    name: str
    sample: int


@dataclass(frozen=True)
class WordEvent:
    """A WORD event at character ``start_char`` of the text; ``sample`` at 22,050 Hz.

    ``num_chars`` is eSpeak's own count, which leaves out suffixes such as the ``'s`` of ``cat's``.
    """

    start_char: int
    num_chars: int
    sample: int


@dataclass
class RawSynthesis:
    """What eSpeak produced for one text: int16 audio at 22,050 Hz and its events in emission order."""

    audio: np.ndarray
    events: list[PhonemeEvent | WordEvent]


@dataclass
class SynthResult:
    """Synthesized speech with its alignment; offsets are samples at ``sample_rate``, end exclusive."""

    audio: np.ndarray  # float32, mono, roughly in [-1, 1]
    sample_rate: int
    phones: list[tuple[str, int, int]]
    words: list[tuple[str, int, int]]

    @property
    def num_samples(self) -> int:
        return int(self.audio.shape[0])

    @property
    def duration(self) -> float:
        return self.num_samples / self.sample_rate


def data_path() -> Path:
    """The ``espeak-ng-data`` folder shipped with ``espeakng-loader``."""
    import espeakng_loader

    return Path(espeakng_loader.get_data_path())


def list_variants() -> list[str]:
    """Names of the voice variants (``+m3``, ``+f2``, ...) available in the shipped voice data."""
    return sorted(p.name for p in (data_path() / "voices" / "!v").iterdir() if p.is_file())


class _Library:
    """The process-wide eSpeak NG library handle (eSpeak has global state, so there is exactly one)."""

    _instance: _Library | None = None
    _instance_pid: int | None = None
    _create_lock = threading.Lock()

    def __init__(self) -> None:
        import espeakng_loader

        self.lock = threading.Lock()
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]  # fmt: skip
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_Synchronize.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_DONT_EXIT
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path()).encode(), options)
        if rate != ESPEAK_SAMPLE_RATE:
            raise RuntimeError(
                f"espeak_Initialize returned {rate}, expected sample rate {ESPEAK_SAMPLE_RATE}"
            )
        self._chunks: list[np.ndarray] = []
        self._events: list[PhonemeEvent | WordEvent] = []
        self._callback = _Callback(self._on_synth)  # keep a reference: the library calls it later
        lib.espeak_SetSynthCallback(self._callback)
        self.lib = lib
        self.variants = frozenset(list_variants())
        self._pronunciations: dict[tuple[str, str], list[str]] = {}

    @classmethod
    def get(cls) -> _Library:
        with cls._create_lock:
            if cls._instance is None or cls._instance_pid != os.getpid():
                cls._instance, cls._instance_pid = cls(), os.getpid()
            return cls._instance

    def _on_synth(self, wav, num_samples, events) -> int:
        if num_samples > 0 and wav:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            if event.type == _EVENT_PHONEME:
                self._events.append(PhonemeEvent(event.id.string.decode("ascii", "replace"), event.sample))
            elif event.type == _EVENT_WORD:
                # text_position is 1-based
                self._events.append(WordEvent(event.text_position - 1, event.length, event.sample))
            i += 1
        return 0  # continue synthesis

    def reset_random_state(self, seed: int) -> None:
        """Seed eSpeak's noise generators (its own and the C library's ``rand``, which it also uses)."""
        with self.lock:
            self.lib.espeak_ng_SetRandSeed(seed)
            ctypes.CDLL(None).srand(ctypes.c_uint(seed))

    def _set_voice(self, voice: str) -> None:
        base, _, variant = voice.partition("+")
        if variant and variant not in self.variants:
            raise ValueError(f"unknown eSpeak voice variant {variant!r} in voice {voice!r}")
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"unknown eSpeak voice {base!r} (voice string {voice!r})")

    def synthesize(
        self, text: str, voice: str, rate: int, pitch: int, pitch_range: int, volume: int, word_gap: int
    ) -> RawSynthesis:
        with self.lock:
            self._set_voice(voice)
            # set the parameters after the voice: a voice change may reset them
            for param, value in (
                (_PARAM_RATE, rate), (_PARAM_PITCH, pitch), (_PARAM_RANGE, pitch_range),
                (_PARAM_VOLUME, volume), (_PARAM_WORDGAP, word_gap),
            ):  # fmt: skip
                if self.lib.espeak_SetParameter(param, value, 0) != 0:
                    raise RuntimeError(f"espeak_SetParameter({param}, {value}) failed")
            self._chunks, self._events = [], []
            data = text.encode("utf-8")
            status = self.lib.espeak_Synth(
                data, len(data) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None
            )
            if status != 0 or self.lib.espeak_Synchronize() != 0:
                raise RuntimeError(f"eSpeak failed (status {status}) on text {text!r}")
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
            events, self._chunks, self._events = self._events, [], []
        return RawSynthesis(audio.astype(np.int16, copy=False), events)

    def pronounce(self, word: str, voice: str) -> list[str]:
        """Citation pronunciation of ``word`` in ``voice``'s accent as phone labels (no pauses)."""
        key = (voice.partition("+")[0], word)
        if key not in self._pronunciations:
            with self.lock:
                self._set_voice(voice)
                pointer = ctypes.c_char_p(word.encode("utf-8"))
                mnemonics: list[str] = []
                while pointer.value:  # one call per clause; the pointer advances
                    result = self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, ord(" ") << 8)
                    mnemonics += (result or b"").decode("utf-8", "replace").split()
            labels = [phone_label(m) for m in mnemonics]
            self._pronunciations[key] = [label for label in labels if label != SILENCE]
        return list(self._pronunciations[key])


def reset_random_state(seed: int = 0) -> None:
    """Seed eSpeak's random noise in this process; call it at the start of a job for reproducible audio."""
    _Library.get().reset_random_state(seed)


def phone_label(mnemonic: str) -> str:
    """Map an eSpeak phoneme mnemonic to a phone label: stress marks removed, pauses become ``SIL``."""
    name = mnemonic.lstrip(_STRESS_MARKS)
    if not name or name.startswith("_"):
        return SILENCE
    return name


def map_offset(sample: int, from_rate: int, to_rate: int) -> int:
    """Round a sample offset to the nearest sample at another rate (exact integer arithmetic)."""
    return (2 * sample * to_rate + from_rate) // (2 * from_rate)


def align_events(
    text: str,
    events: list[PhonemeEvent | WordEvent],
    num_samples: int,
    from_rate: int,
    to_rate: int,
    pronounce: Callable[[str], list[str]] | None = None,
) -> tuple[list[tuple[str, int, int]], list[tuple[str, int, int]]]:
    """Phone segments and word spans at ``to_rate`` from eSpeak events at ``from_rate``.

    ``num_samples`` is the audio length at ``to_rate``. Each phone lasts until the next phoneme event (the
    last one until the end of the audio); audio before the first event becomes a leading ``SIL``; adjacent
    silences merge and empty segments vanish, so the phones tile ``[0, num_samples)`` exactly.

    Words: the sounding (non-SIL) phones after a WORD event and before the next one belong to that event.
    eSpeak pronounces some word pairs as one unit with a single event ("in the", "do not"); such a unit is
    split among its written words by matching the phones against each word's citation pronunciation from
    ``pronounce`` (phone labels) with the fewest edits. Without ``pronounce`` a unit stays one "word" with a
    space inside. Words without a sounding phone (nothing was pronounced) are left out.
    """
    boundaries: list[tuple[str, int]] = [(SILENCE, 0)]
    unit_of_boundary: list[int] = [-1]
    word_events: list[WordEvent] = []
    for event in events:
        if isinstance(event, WordEvent):
            word_events.append(event)
        else:
            start = min(map_offset(event.sample, from_rate, to_rate), num_samples)
            boundaries.append((phone_label(event.name), max(start, boundaries[-1][1])))
            unit_of_boundary.append(len(word_events) - 1)
    phones: list[tuple[str, int, int]] = []
    phone_unit: list[int] = []
    for i, (label, start) in enumerate(boundaries):
        end = boundaries[i + 1][1] if i + 1 < len(boundaries) else num_samples
        if end <= start:
            continue
        if phones and label == SILENCE and phones[-1][0] == SILENCE:
            phones[-1] = (SILENCE, phones[-1][1], end)
            continue
        phones.append((label, start, end))
        phone_unit.append(unit_of_boundary[i] if label != SILENCE else -1)
    words: list[tuple[str, int, int]] = []
    for u, event in enumerate(word_events):
        unit = [p for p, pu in zip(phones, phone_unit) if pu == u]
        next_start = word_events[u + 1].start_char if u + 1 < len(word_events) else len(text)
        tokens = _unit_words(text, event.start_char, next_start)
        if not unit or not tokens:
            continue
        if len(tokens) == 1 or pronounce is None:
            words.append((" ".join(tokens), unit[0][1], unit[-1][2]))
            continue
        pieces = _split_unit([label for label, _, _ in unit], [pronounce(t) for t in tokens])
        for token, (a, b) in zip(tokens, pieces):
            if b > a:
                words.append((token, unit[a][1], unit[b - 1][2]))
    return phones, words


def _unit_words(text: str, start: int, limit: int) -> list[str]:
    """The written words of one WORD event: its text up to the next event, outer punctuation removed."""
    tokens = (token.strip(_PUNCTUATION) for token in text[start:limit].split())
    return [token for token in tokens if token]


def _edit_distance(a: list[str], b: list[str]) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _split_unit(labels: list[str], expected: list[list[str]]) -> list[tuple[int, int]]:
    """Cut ``labels`` into one contiguous piece per word (non-empty while there are enough labels) with the
    least total edit distance to the words' ``expected`` phones; returns ``(start, end)`` index pairs."""
    n, k = len(labels), len(expected)
    inf = float("inf")
    cost = [[inf] * (n + 1) for _ in range(k + 1)]
    back = [[0] * (n + 1) for _ in range(k + 1)]
    cost[0][0] = 0
    minimum = 1 if n >= k else 0
    for j in range(1, k + 1):
        for i in range(n + 1):
            for a in range(i - minimum + 1):
                if cost[j - 1][a] == inf:
                    continue
                c = cost[j - 1][a] + _edit_distance(labels[a:i], expected[j - 1])
                if c < cost[j][i]:
                    cost[j][i], back[j][i] = c, a
    pieces, i = [], n
    for j in range(k, 0, -1):
        pieces.append((back[j][i], i))
        i = back[j][i]
    return pieces[::-1]


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Band-limited resampling (torchaudio's sinc interpolation), float32 in and out."""
    if from_rate == to_rate:
        return audio.astype(np.float32, copy=False)
    import torch
    import torchaudio.functional as AF

    return AF.resample(
        torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32)), from_rate, to_rate
    ).numpy()


@dataclass
class Synthesizer:
    """One eSpeak voice setting: ``synthesize(text)`` gives 16 kHz float32 audio with phone/word alignment.

    ``voice`` is an eSpeak voice name with an optional variant (``en-us``, ``en-gb-scotland+f2``); ``rate`` in
    words per minute (80-450), ``pitch`` and ``pitch_range`` 0-99 (50 = voice default), ``volume`` 0-200,
    ``word_gap`` extra pause between words in units of 10 ms.
    """

    voice: str = "en-us"
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    volume: int = 100
    word_gap: int = 0
    sample_rate: int = 16000

    def __post_init__(self) -> None:
        for name, low, high in (("rate", 80, 450), ("pitch", 0, 99), ("pitch_range", 0, 99),
                                ("volume", 0, 200), ("word_gap", 0, 100)):  # fmt: skip
            value = getattr(self, name)
            if not (isinstance(value, int) and low <= value <= high):
                raise ValueError(f"Synthesizer {name} must be an integer in [{low}, {high}], got {value!r}")
        if self.sample_rate <= 0:
            raise ValueError(f"Synthesizer sample_rate must be positive, got {self.sample_rate}")

    def synthesize_raw(self, text: str) -> RawSynthesis:
        """eSpeak's own output for ``text``: int16 audio at 22,050 Hz and the raw events."""
        if not text.strip():
            raise ValueError("cannot synthesize empty text")
        return _Library.get().synthesize(
            text, self.voice, self.rate, self.pitch, self.pitch_range, self.volume, self.word_gap
        )

    def synthesize(self, text: str) -> SynthResult:
        """Synthesize ``text``; audio is float32 at ``sample_rate``, phones/words as sample offsets there."""
        raw = self.synthesize_raw(text)
        audio = resample(raw.audio.astype(np.float32) / 32768.0, ESPEAK_SAMPLE_RATE, self.sample_rate)
        library = _Library.get()
        phones, words = align_events(
            text, raw.events, len(audio), ESPEAK_SAMPLE_RATE, self.sample_rate,
            pronounce=lambda word: library.pronounce(word, self.voice),
        )  # fmt: skip
        return SynthResult(audio, self.sample_rate, phones, words)


def map_in_fresh_processes(
    function: Callable[[Any], Any],
    jobs: Iterable[Any],
    workers: int,
    initializer: Callable[[], None] | None = None,
    preload: Sequence[str] = (),
) -> Iterator[Any]:
    """``map(function, jobs)`` with every job run in its own new process, results in job order.

    Each job starts from a freshly loaded eSpeak library, so its output depends only on the job itself and
    not on which other jobs shared a worker; this makes results independent of the worker count. Uses the
    ``forkserver`` start method where available (clean children, cheap to start; ``preload`` names modules
    the server imports once so that children need not), else ``spawn``. ``function`` and jobs must pickle.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        if preload:
            context.set_forkserver_preload(list(preload))  # no effect once the server runs; only slower then
    else:
        context = multiprocessing.get_context("spawn")
    with context.Pool(workers, initializer=initializer, maxtasksperchild=1) as pool:
        yield from pool.imap(function, jobs)
