"""Find the utterances of LibriSpeech-layout splits and pair each audio file with its transcript and alignment.

Layout (one split, e.g. ``LibriSpeech/train-clean-100`` or the demo corpus's ``LibriSpeech/train``)::

    <root>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac
    <root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt      lines "<utterance id> UPPER CASE TEXT"
    <root>/<speaker>/<chapter>/<speaker>-<chapter>.align.json     optional: {"<id>": {"phones": [[p, s, e], ...],
                                                                              "words": [[w, s, e], ...]}}

This module only looks at file names and text files; decoding and checking the audio is the shard tool's job.
Everything that cannot become an utterance is returned as a :class:`Problem` with the reason, never dropped.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Audio in a format other than FLAC is reported rather than ignored: the user may have expected it to be used.
OTHER_AUDIO_SUFFIXES = (".wav", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".sph", ".wma")
_ID_PART = re.compile(r"^[0-9A-Za-z_]+$")


@dataclass(frozen=True)
class Utterance:
    """One audio file with its transcript line and, when the chapter has one, its alignment entry."""

    id: str
    speaker: str
    chapter: str
    audio_path: Path
    transcript: str
    alignment: dict[str, Any] | None = None


@dataclass(frozen=True)
class Problem:
    """An input item (file, or ``file:line``) that cannot be used, with a human-readable reason."""

    item: str
    reason: str


@dataclass
class Scan:
    """Result of scanning one or more roots: usable utterances (sorted by id) and problems (sorted by item)."""

    utterances: list[Utterance] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


def _check_segments(value: Any, what: str) -> str | None:
    """Reason why ``value`` is not a list of ``[label, start, end]`` with integer ``0 <= start <= end``."""
    if not isinstance(value, list):
        return f"{what} is not a list"
    for i, seg in enumerate(value):
        ok = (
            isinstance(seg, list)
            and len(seg) == 3
            and isinstance(seg[0], str)
            and all(isinstance(x, int) and not isinstance(x, bool) for x in seg[1:])
        )
        if not ok:
            return f"{what}[{i}] is not [label, start, end] with integer sample offsets: {seg!r:.80}"
        if not 0 <= seg[1] <= seg[2]:
            return f"{what}[{i}] has start {seg[1]} / end {seg[2]}, need 0 <= start <= end"
    return None


def check_alignment(entry: Any) -> str | None:
    """Reason why an alignment entry is malformed, or None when it has valid "phones" and "words" lists."""
    if not isinstance(entry, dict):
        return f"entry is a {type(entry).__name__}, not an object"
    for key in ("phones", "words"):
        if key not in entry:
            return f"entry has no {key!r}"
        reason = _check_segments(entry[key], key)
        if reason:
            return reason
    return None


def read_transcripts(path: Path, prefix: str) -> tuple[dict[str, tuple[str, int]], list[Problem]]:
    """Parse a ``.trans.txt``: {utterance id: (text, line number)} and the lines that could not be used.

    ``prefix`` is ``"<speaker>-<chapter>-"``; lines whose id does not start with it belong to another chapter.
    """
    lines: dict[str, tuple[str, int]] = {}
    problems: list[Problem] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        return {}, [Problem(str(path), f"cannot read transcript file ({err})")]
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        utt_id, _, words = line.strip().partition(" ")
        item = f"{path}:{number}"
        if not words.strip():
            problems.append(Problem(item, f"transcript line for {utt_id} has no text"))
        elif not utt_id.startswith(prefix) or not _ID_PART.match(utt_id[len(prefix) :]):
            problems.append(Problem(item, f"utterance id {utt_id!r} is not '{prefix}<utt>'"))
        elif utt_id in lines:
            problems.append(
                Problem(item, f"second transcript line for {utt_id} (first on line {lines[utt_id][1]})")
            )
        else:
            lines[utt_id] = (" ".join(words.split()), number)
    return lines, problems


def read_alignments(path: Path) -> dict[str, Any]:
    """Load a ``.align.json`` file (utterance id -> entry); ValueError naming the file if it is not a JSON object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read alignment file {path} ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"alignment file {path} is a JSON {type(data).__name__}, not an object")
    return data


def _scan_chapter(directory: Path, speaker: str, chapter: str, files: list[str], scan: Scan) -> None:
    prefix = f"{speaker}-{chapter}-"
    trans_path = directory / f"{speaker}-{chapter}.trans.txt"
    align_path = directory / f"{speaker}-{chapter}.align.json"
    audio = {name[: -len(".flac")]: directory / name for name in files if name.endswith(".flac")}

    lines: dict[str, tuple[str, int]] = {}
    if trans_path.name in files:
        lines, problems = read_transcripts(trans_path, prefix)
        scan.problems += problems
    alignments: dict[str, Any] | None = None
    align_error = None
    if align_path.name in files:
        try:
            alignments = read_alignments(align_path)
        except ValueError as err:
            align_error = str(err)

    for name in files:
        if name.endswith((".trans.txt", ".align.json")) and name not in (trans_path.name, align_path.name):
            scan.problems.append(Problem(str(directory / name), f"file name is not {speaker}-{chapter}.*"))
        elif name.lower().endswith(OTHER_AUDIO_SUFFIXES):
            scan.problems.append(Problem(str(directory / name), "not a .flac file"))

    for utt_id, path in audio.items():
        if not utt_id.startswith(prefix) or not _ID_PART.match(utt_id[len(prefix) :]):
            scan.problems.append(Problem(str(path), f"file name is not {prefix}<utt>.flac"))
        elif trans_path.name not in files:
            scan.problems.append(Problem(str(path), f"no transcript file {trans_path.name} next to it"))
        elif utt_id not in lines:
            scan.problems.append(Problem(str(path), f"no transcript line for {utt_id} in {trans_path.name}"))
        elif align_error:
            scan.problems.append(Problem(str(path), align_error))
        elif alignments is not None and utt_id not in alignments:
            scan.problems.append(Problem(str(path), f"no entry for {utt_id} in {align_path.name}"))
        elif alignments is not None and (reason := check_alignment(alignments[utt_id])):
            scan.problems.append(Problem(str(path), f"{align_path.name}: {utt_id}: {reason}"))
        else:
            entry = alignments[utt_id] if alignments is not None else None
            alignment = {"phones": entry["phones"], "words": entry["words"]} if entry is not None else None
            scan.utterances.append(Utterance(utt_id, speaker, chapter, path, lines[utt_id][0], alignment))
    for utt_id, (_, number) in lines.items():
        if utt_id not in audio:
            scan.problems.append(
                Problem(
                    f"{trans_path}:{number}", f"transcript line for {utt_id} has no audio file {utt_id}.flac"
                )
            )


def scan_root(root: str | Path) -> Scan:
    """Scan one split folder. FileNotFoundError if ``root`` is not a directory."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    scan = Scan()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        directory = Path(dirpath)
        relevant = sorted(
            n
            for n in filenames
            if n.endswith((".flac", ".trans.txt", ".align.json")) or n.lower().endswith(OTHER_AUDIO_SUFFIXES)
        )
        if not relevant:
            continue
        depth = len(directory.relative_to(root).parts)
        if depth != 2:
            for name in relevant:
                scan.problems.append(
                    Problem(
                        str(directory / name),
                        "not at <root>/<speaker>/<chapter>/ (is --root a split folder such as "
                        "LibriSpeech/train-clean-100?)",
                    )
                )
            continue
        _scan_chapter(directory, directory.parent.name, directory.name, relevant, scan)
    scan.utterances.sort(key=lambda u: u.id)
    scan.problems.sort(key=lambda p: p.item)
    return scan


def scan_roots(roots: Sequence[str | Path]) -> Scan:
    """Scan several split folders; an utterance id found under two roots is kept once, the other is a problem."""
    merged = Scan()
    first: dict[str, Path] = {}
    for root in roots:
        scan = scan_root(root)
        merged.problems += scan.problems
        for utt in scan.utterances:
            if utt.id in first:
                merged.problems.append(
                    Problem(str(utt.audio_path), f"duplicate utterance id, also {first[utt.id]}")
                )
            else:
                first[utt.id] = utt.audio_path
                merged.utterances.append(utt)
    merged.utterances.sort(key=lambda u: u.id)
    merged.problems.sort(key=lambda p: p.item)
    return merged
