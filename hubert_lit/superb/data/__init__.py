"""Mini-SUPERB task data: the on-disk format and its loader.

Built by ``python -m hubert_lit superb-data --out ROOT`` (:mod:`hubert_lit.superb.data.build`) from eSpeak NG
speech. All audio is 16 kHz mono PCM_16 FLAC. Paths inside the files are relative to ``ROOT``.

``ROOT/<task>/meta.json``
    ``{"task", "seed", "scale", "description", ..., "note"}``; ``note`` is an honest caveat. Classification
    tasks list their labels in ``"classes"`` (class index = position) and ``"num_classes"``; ``asr``/``sf``
    give the character ``"vocab"``, ``pr`` the phone ``"vocab"``. Most tasks also give ``"splits"`` (items,
    speakers, hours per split) and ``"speakers"`` (id -> eSpeak voice settings and split).

``ROOT/<task>/{train,dev,test}.jsonl``
    One JSON object per line with ``"id"``, ``"audio"`` (path relative to ROOT), ``"num_samples"``,
    ``"speaker"`` and the task fields:

    ============  ===============================================================================================
    ``asr``       ``"text"``: LibriSpeech-normalised transcript (A-Z, apostrophe, single spaces)
    ``pr``        ``"phones"``: eSpeak phones, stress removed, no silences (same audio as asr, under asr/audio)
    ``ks``        ``"label"``: one of 12 classes (10 keywords, ``_unknown_``, ``_silence_``); 1 s clips;
                  ``"word"`` (null for silence, whose ``"speaker"`` is ``"none"``)
    ``ic``        ``"action"``, ``"object"``, ``"location"`` (classes per field in meta ``"classes"``); ``"text"``
    ``sf``        ``"text"``; ``"slots"`` ``[[type, value], ...]``; ``"iob"`` (slot name or ``"O"`` per word of
                  text); ``"target"``: text with ``B-<type>``/``E-<type>`` tokens around slot values
                  (s3prl character-slot mode: those tokens are single symbols, everything else characters)
    ``sid``       ``"label"``: speaker class (every speaker appears in every split)
    ``asv``       train: ``"label"`` (speaker class); dev/test: no label, speakers unseen in train, plus
                  ``ROOT/asv/{dev,test}_trials.txt`` lines ``"<1|0> <enroll id> <test id>"``
    ``sd``        ``"speakers"`` [two ids], ``"segments"`` ``[[speaker index, start, end], ...]`` in samples (end
                  exclusive, from the first to the last sounding phone), ``"overlap"``; ``ROOT/sd/<split>.rttm``
    ``prosody``   ``"label"``: prosody preset (SUPERB's ER slot; these are NOT emotions)
    ============  ===============================================================================================

``qbe`` (no training data)
    ``ROOT/qbe/docs.jsonl`` (documents, with ``"text"`` and ``"words"`` ``[[WORD, start, end], ...]``),
    ``ROOT/qbe/{dev,test}_queries.jsonl`` (``"text"`` = the query term) and
    ``ROOT/qbe/{dev,test}_occurrences.json`` = ``{query id: [{"doc", "start", "end"}, ...]}`` (samples in the doc).

Use :func:`load_task` to read and validate a task; it raises :class:`TaskDataError` naming the file, line
and problem on malformed input.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hubert_lit.constants import SAMPLE_RATE, SUPERB_TASKS

TASKS = SUPERB_TASKS
SPLITS = ("train", "dev", "test")
QBE_SPLITS = ("docs", "dev", "test")  # TaskData.splits keys for qbe: documents and the two query sets

__all__ = ["SAMPLE_RATE", "TASKS", "TaskData", "TaskDataError", "load_audio", "load_task"]


class TaskDataError(ValueError):
    """Malformed Mini-SUPERB task data; the message names the file (and line) and what is wrong."""


@dataclass
class TaskData:
    """One task: meta.json, items per split, and for asv the trials, for qbe the occurrences."""

    task: str
    root: Path  # the data root; item audio paths are relative to it
    meta: dict[str, Any]
    splits: dict[str, list[dict[str, Any]]]
    trials: dict[str, list[tuple[int, str, str]]] = field(default_factory=dict)  # asv: split -> (same, a, b)
    occurrences: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)  # qbe

    @property
    def classes(self) -> Any:
        """meta["classes"]: a list of labels, or for ic a dict field -> labels."""
        return self.meta["classes"]

    def audio_path(self, item: dict[str, Any]) -> Path:
        return self.root / item["audio"]

    def load_audio(self, item: dict[str, Any]) -> np.ndarray:
        """The item's waveform as float32 in [-1, 1]."""
        return load_audio(self.audio_path(item))


def load_audio(path: str | Path) -> np.ndarray:
    """Read a 16 kHz mono audio file as float32; raises TaskDataError on another rate or channel count."""
    import soundfile as sf

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as error:  # unreadable or missing
        raise TaskDataError(f"{path}: cannot read audio: {error}") from error
    if rate != SAMPLE_RATE or audio.shape[1] != 1:
        raise TaskDataError(f"{path}: expected 16000 Hz mono, got {rate} Hz with {audio.shape[1]} channels")
    return audio[:, 0]


# ---------------------------------------------------------------- validation


def _fail(where: str, message: str) -> TaskDataError:
    return TaskDataError(f"{where}: {message}")


def _require(record: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in record:
        raise _fail(where, f"missing key {key!r}")
    value = record[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise _fail(where, f"{key!r} should be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _check_label(value: Any, classes: list[str], key: str, where: str) -> None:
    if value not in classes:
        raise _fail(where, f"{key} {value!r} is not one of the classes in meta.json")


def _check_segments(record: dict[str, Any], where: str) -> None:
    speakers = _require(record, "speakers", list, where)
    segments = _require(record, "segments", list, where)
    for segment in segments:
        ok = isinstance(segment, list) and len(segment) == 3 and all(isinstance(v, int) for v in segment)
        if (
            not ok
            or not 0 <= segment[0] < len(speakers)
            or not 0 <= segment[1] < segment[2] <= record["num_samples"]
        ):
            raise _fail(where, f"bad segment {segment!r} (want [speaker index, start, end] inside the audio)")


def _check_item(task: str, split: str, record: Any, meta: dict[str, Any], root: Path, where: str) -> None:
    if not isinstance(record, dict):
        raise _fail(where, f"expected a JSON object, got {type(record).__name__}")
    _require(record, "id", str, where)
    audio = _require(record, "audio", str, where)
    num_samples = _require(record, "num_samples", int, where)
    _require(record, "speaker", str, where)
    if num_samples <= 0:
        raise _fail(where, f"num_samples must be positive, got {num_samples}")
    if not (root / audio).is_file():
        raise _fail(where, f"audio file {root / audio} does not exist")
    if task in ("asr", "sf", "qbe"):
        _require(record, "text", str, where)
    if task == "pr":
        phones = _require(record, "phones", list, where)
        unknown = [p for p in phones if p not in meta.get("vocab", [])]
        if unknown:
            raise _fail(where, f"phones {unknown[:5]} are not in the meta.json vocab")
    elif task in ("ks", "sid", "prosody") or (task == "asv" and split == "train"):
        _check_label(_require(record, "label", str, where), meta["classes"], "label", where)
    elif task == "ic":
        for key in ("action", "object", "location"):
            _check_label(_require(record, key, str, where), meta["classes"][key], key, where)
    elif task == "sf":
        _require(record, "target", str, where)
        _require(record, "slots", list, where)
        iob = _require(record, "iob", list, where)
        if len(iob) != len(record["text"].split()):
            raise _fail(where, f"'iob' has {len(iob)} tags for {len(record['text'].split())} words")
    elif task == "sd":
        _check_segments(record, where)
    elif task == "qbe" and split == "docs":
        words = _require(record, "words", list, where)
        for word in words:
            if not (isinstance(word, list) and len(word) == 3 and 0 <= word[1] < word[2] <= num_samples):
                raise _fail(where, f"bad word span {word!r}")


def _read_jsonl(path: Path, task: str, split: str, meta: dict[str, Any], root: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise TaskDataError(f"{path}: missing (expected one JSON object per line)")
    records, ids = [], set()
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            where = f"{path}:{number}"
            if not line.strip():
                raise _fail(where, "empty line")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise _fail(where, f"invalid JSON: {error}") from error
            _check_item(task, split, record, meta, root, where)
            if record["id"] in ids:
                raise _fail(where, f"duplicate id {record['id']!r}")
            ids.add(record["id"])
            records.append(record)
    return records


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise TaskDataError(f"{path}: missing") from error
    except json.JSONDecodeError as error:
        raise TaskDataError(f"{path}: invalid JSON: {error}") from error


def _read_trials(path: Path, ids: set[str]) -> list[tuple[int, str, str]]:
    if not path.is_file():
        raise TaskDataError(f"{path}: missing trial list")
    trials = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise TaskDataError(f"{path}:{number}: expected '<1|0> <enroll id> <test id>', got {line!r}")
        for utterance in parts[1:]:
            if utterance not in ids:
                raise TaskDataError(f"{path}:{number}: unknown utterance id {utterance!r}")
        trials.append((int(parts[0]), parts[1], parts[2]))
    return trials


def _read_occurrences(path: Path, queries: list[dict], docs: list[dict]) -> dict[str, list[dict[str, Any]]]:
    value = _read_json(path)
    lengths = {d["id"]: d["num_samples"] for d in docs}
    if not isinstance(value, dict) or set(value) != {q["id"] for q in queries}:
        raise TaskDataError(f"{path}: expected an object with one key per query id")
    for query, spans in value.items():
        for span in spans:
            doc = span.get("doc") if isinstance(span, dict) else None
            if doc not in lengths or not 0 <= span.get("start", -1) < span.get("end", -1) <= lengths[doc]:
                raise TaskDataError(f"{path}: query {query!r} has a bad occurrence {span!r}")
    return value


def load_task(root: str | Path, task: str) -> TaskData:
    """Read and validate ``root/<task>``: meta.json, every split file (and trials / occurrences)."""
    if task not in TASKS:
        hint = " (SUPERB's ER slot is called 'prosody')" if task == "er" else ""
        raise ValueError(f"unknown task {task!r}{hint}; expected one of {', '.join(TASKS)}")
    root = Path(root)
    folder = root / task
    meta = _read_json(folder / "meta.json")
    if not isinstance(meta, dict) or meta.get("task") != task:
        raise TaskDataError(
            f"{folder / 'meta.json'}: 'task' should be {task!r}, got {meta.get('task')!r}"
            if isinstance(meta, dict)
            else f"{folder / 'meta.json'}: expected a JSON object"
        )
    data = TaskData(task, root, meta, {})
    if task == "qbe":
        data.splits["docs"] = _read_jsonl(folder / "docs.jsonl", task, "docs", meta, root)
        for split in ("dev", "test"):
            data.splits[split] = _read_jsonl(folder / f"{split}_queries.jsonl", task, split, meta, root)
            data.occurrences[split] = _read_occurrences(
                folder / f"{split}_occurrences.json", data.splits[split], data.splits["docs"]
            )
        return data
    for split in SPLITS:
        data.splits[split] = _read_jsonl(folder / f"{split}.jsonl", task, split, meta, root)
    if task == "asv":
        for split in ("dev", "test"):
            ids = {r["id"] for r in data.splits[split]}
            data.trials[split] = _read_trials(folder / f"{split}_trials.txt", ids)
    return data
