"""SUPERB metrics: library implementations where they exist (torchmetrics WER/CER/EER), our own otherwise.

Ours follow the definitions s3prl and the official scorers use:

* PER: corpus-level edit distance over phone sequences / reference phones (s3prl ``per`` = ``wer`` on phones).
* Slot filling (s3prl ``character-slot`` semantics): a tagged string ``"play B-artist john lennon E-artist"``
  holds slots as ``B-<type> <value> E-<type>``. *Slot-type F1* is the per-utterance F1 of the sets of slot types
  (1 when neither side has a slot, 0 when only one side has), averaged over utterances. *Slot-value CER*: for
  every reference slot, the hypothesis value of the same type with the lowest CER ("" when the type is missing),
  then corpus-level CER over all those pairs.
* DER: time-based diarization error rate with collar 0 and overlapped speech scored (dscore/md-eval with
  ``collar 0``): (missed + false alarm + speaker confusion) / reference speech, with the one-to-one speaker mapping
  that maximises the overlap time.
* TWV/MTWV (NIST STD 2006, as the QUESST 2014 scorer uses it with one trial per (query, document) pair):
  ``TWV(t) = 1 - mean_q [P_miss(q, t) + beta * P_fa(q, t)]`` over queries with at least one true document,
  ``beta = 999.9``; MTWV is the maximum over all thresholds (at worst 0: detect nothing).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import binary_eer
from torchmetrics.functional.text import char_error_rate, word_error_rate

TWV_BETA = 999.9
_SLOT_PATTERN = re.compile(r"B-(\S+) (.+?) E-\1")
_TAG_PATTERN = re.compile(r"(B-\S+ )|( E-\S+)")


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, insertions, deletions all cost 1) between two sequences."""
    previous = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        current = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, start=1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h))
        previous = current
    return previous[-1]


def error_rate(refs: Sequence[Sequence], hyps: Sequence[Sequence]) -> float:
    """Corpus-level error rate: total edit distance / total reference length."""
    if len(refs) != len(hyps):
        raise ValueError(f"error_rate: {len(refs)} references but {len(hyps)} hypotheses")
    total = sum(len(r) for r in refs)
    if total == 0:
        raise ValueError("error_rate: the references are empty")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / total


def phone_error_rate(refs: Sequence[Sequence[str]], hyps: Sequence[Sequence[str]]) -> float:
    """PER: :func:`error_rate` over phone sequences."""
    return error_rate(refs, hyps)


def word_error_rate_of(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus-level WER (torchmetrics) of transcripts."""
    return float(word_error_rate(list(hyps), list(refs)))


def char_error_rate_of(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus-level CER (torchmetrics) of transcripts."""
    return float(char_error_rate(list(hyps), list(refs)))


def accuracy(refs: Sequence, hyps: Sequence) -> float:
    """Fraction of positions where ``hyps`` equals ``refs``."""
    if len(refs) != len(hyps) or not refs:
        raise ValueError(
            f"accuracy: need equally many (> 0) references and hypotheses, got {len(refs)}/{len(hyps)}"
        )
    return sum(r == h for r, h in zip(refs, hyps)) / len(refs)


# ------------------------------------------------------------------------------------------------ slot filling
def strip_slot_tags(tagged: str) -> str:
    """The plain text of a tagged string (``B-x `` and `` E-x`` removed, spaces squeezed)."""
    return _TAG_PATTERN.sub("", re.sub(r" +", " ", tagged)).strip()


def parse_slots(tagged: str) -> dict[str, list[str]]:
    """Slot type -> values (in order) of a tagged string ``... B-<type> <value> E-<type> ...``."""
    slots: dict[str, list[str]] = {}
    for slot_type, value in _SLOT_PATTERN.findall(re.sub(r" +", " ", tagged)):
        slots.setdefault(slot_type, []).append(strip_slot_tags(value))
    return slots


def slot_type_f1(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Mean per-utterance F1 of the slot-type sets (s3prl ``slot_type_f1``, a fraction in [0, 1])."""
    if len(refs) != len(hyps) or not refs:
        raise ValueError(
            f"slot_type_f1: need equally many (> 0) references and hypotheses, got {len(refs)}/{len(hyps)}"
        )
    scores = []
    for ref, hyp in zip(refs, hyps):
        ref_types, hyp_types = set(parse_slots(ref)), set(parse_slots(hyp))
        if not ref_types and not hyp_types:
            scores.append(1.0)
            continue
        if not ref_types or not hyp_types:
            scores.append(0.0)
            continue
        common = len(ref_types & hyp_types)
        precision, recall = common / len(hyp_types), common / len(ref_types)
        scores.append(2 * precision * recall / (precision + recall) if common else 0.0)
    return sum(scores) / len(scores)


def slot_value_cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus-level CER of slot values (s3prl ``slot_value_cer``), each reference value paired with the
    same-type hypothesis value of lowest CER ("" when the hypothesis lacks the type)."""
    if len(refs) != len(hyps):
        raise ValueError(f"slot_value_cer: {len(refs)} references but {len(hyps)} hypotheses")
    value_refs: list[str] = []
    value_hyps: list[str] = []
    for ref, hyp in zip(refs, hyps):
        hyp_slots = parse_slots(hyp)
        for slot_type, values in parse_slots(ref).items():
            for value in values:
                candidates = hyp_slots.get(slot_type, [""])
                # first candidate with the lowest CER, as s3prl's strict "<" comparison picks
                best = min(candidates, key=lambda c, v=value: edit_distance(v, c) / max(len(v), 1))
                value_refs.append(value)
                value_hyps.append(best)
    if not value_refs:
        raise ValueError("slot_value_cer: the references hold no slots")
    return error_rate(value_refs, value_hyps)


# ------------------------------------------------------------------------------------------------ verification
def equal_error_rate(scores: Sequence[float] | torch.Tensor, labels: Sequence[int] | torch.Tensor) -> float:
    """EER (torchmetrics ``binary_eer``) of trial scores (higher = same speaker) and 1/0 target labels."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    labels = torch.as_tensor(labels, dtype=torch.long)
    if scores.shape != labels.shape or scores.ndim != 1 or scores.numel() == 0:
        raise ValueError(
            f"equal_error_rate: scores {tuple(scores.shape)} and labels {tuple(labels.shape)} "
            "must be equally long 1-D sequences"
        )
    if bool(labels.min() == labels.max()):
        raise ValueError("equal_error_rate: needs both target (1) and non-target (0) trials")
    # binary_eer reads scores outside [0, 1] as logits; map them monotonically onto [0, 1] by rank (ties kept) so
    # that neither a sigmoid nor float32 rounding can merge distinct scores
    rank = torch.unique(scores, return_inverse=True)[1].to(torch.float64)
    probs = rank / max(float(rank.max()), 1.0)
    return float(binary_eer(probs, labels))


# ------------------------------------------------------------------------------------------------ diarization
Segment = tuple[str, float, float]  # (speaker, start, end), end exclusive, any time unit


def _validate_segments(segments: Sequence[Segment], name: str) -> None:
    for seg in segments:
        if len(seg) != 3 or not seg[1] <= seg[2]:
            raise ValueError(f"{name}: segment {seg!r} is not (speaker, start, end) with start <= end")


def diarization_error(reference: Sequence[Segment], hypothesis: Sequence[Segment]) -> dict[str, float]:
    """DER components of one recording, collar 0, overlap scored.

    Returns ``{"total", "missed", "false_alarm", "confusion"}`` in the segments' time unit; the hypothesis
    speakers are mapped one-to-one onto reference speakers to maximise the overlapping time (exhaustively, so
    at most 8 speakers per side). Overlapping segments of one speaker count once (their union). Equal to
    pyannote.metrics' ``DiarizationErrorRate(collar=0, skip_overlap=False)`` (tested on random recordings).
    """
    _validate_segments(reference, "reference")
    _validate_segments(hypothesis, "hypothesis")
    ref_speakers = sorted({s for s, _, _ in reference})
    hyp_speakers = sorted({s for s, _, _ in hypothesis})
    if max(len(ref_speakers), len(hyp_speakers)) > 8:
        raise ValueError(
            "diarization_error: more than 8 speakers on one side; the exhaustive mapping is for few"
        )
    bounds = sorted({t for _, a, b in [*reference, *hypothesis] for t in (a, b)})
    # per elementary interval: which speakers talk
    intervals = []
    for a, b in itertools.pairwise(bounds):
        mid = (a + b) / 2
        ref_on = frozenset(s for s, x, y in reference if x <= mid < y)
        hyp_on = frozenset(s for s, x, y in hypothesis if x <= mid < y)
        intervals.append((b - a, ref_on, hyp_on))

    def overlap(ref_spk: str, hyp_spk: str) -> float:
        return sum(d for d, r, h in intervals if ref_spk in r and hyp_spk in h)

    best_map: dict[str, str] = {}
    best_score = -1.0
    k = min(len(ref_speakers), len(hyp_speakers))
    for hyp_subset in itertools.permutations(hyp_speakers, k):
        for ref_subset in itertools.combinations(ref_speakers, k):
            score = sum(overlap(r, h) for r, h in zip(ref_subset, hyp_subset))
            if score > best_score:
                best_score, best_map = score, dict(zip(hyp_subset, ref_subset))
    total = missed = false_alarm = confusion = 0.0
    for duration, ref_on, hyp_on in intervals:
        n_ref, n_hyp = len(ref_on), len(hyp_on)
        correct = len({best_map[h] for h in hyp_on if h in best_map} & ref_on)
        total += duration * n_ref
        missed += duration * max(0, n_ref - n_hyp)
        false_alarm += duration * max(0, n_hyp - n_ref)
        confusion += duration * (min(n_ref, n_hyp) - correct)
    return {"total": total, "missed": missed, "false_alarm": false_alarm, "confusion": confusion}


def diarization_error_rate(
    references: Sequence[Sequence[Segment]], hypotheses: Sequence[Sequence[Segment]]
) -> float:
    """Corpus DER: summed errors over summed reference speech of several recordings (collar 0)."""
    if len(references) != len(hypotheses):
        raise ValueError(
            f"diarization_error_rate: {len(references)} references but {len(hypotheses)} hypotheses"
        )
    parts = [diarization_error(r, h) for r, h in zip(references, hypotheses)]
    total = sum(p["total"] for p in parts)
    if total <= 0:
        raise ValueError("diarization_error_rate: the references hold no speech")
    return sum(p["missed"] + p["false_alarm"] + p["confusion"] for p in parts) / total


# ------------------------------------------------------------------------------------------------ QbE
def term_weighted_values(
    scores: Mapping[str, Mapping[str, float]],
    occurrences: Mapping[str, Sequence[str]],
    beta: float = TWV_BETA,
) -> list[tuple[float, float]]:
    """``(threshold, TWV)`` for every distinct score used as threshold (detect when ``score >= threshold``).

    ``scores[query][doc]`` must cover the same documents for every query; ``occurrences[query]`` lists the
    documents that contain the query. Queries without any true document are left out (NIST).
    """
    queries = [q for q in scores if occurrences.get(q)]
    if not queries:
        raise ValueError("term_weighted_values: no query has a true document")
    docs = set(next(iter(scores.values())))
    per_query = []
    for q in queries:
        if set(scores[q]) != docs:
            raise ValueError(f"term_weighted_values: query {q!r} is scored on other documents than the rest")
        true = set(occurrences[q])
        unknown = true - docs
        if unknown:
            raise ValueError(
                f"term_weighted_values: query {q!r} occurs in unscored documents {sorted(unknown)[:5]}"
            )
        if len(true) == len(docs):
            raise ValueError(f"term_weighted_values: query {q!r} occurs in every document; P_fa is undefined")
        per_query.append(([(s, d in true) for d, s in scores[q].items()], len(true), len(docs) - len(true)))
    thresholds = np.unique(np.array([s for q in queries for s in scores[q].values()], dtype=np.float64))
    thresholds = np.append(thresholds, np.inf)
    cost = np.zeros(len(thresholds))
    for trials, n_true, n_false in per_query:
        true_scores = np.sort([s for s, is_true in trials if is_true])
        false_scores = np.sort([s for s, is_true in trials if not is_true])
        hits = n_true - np.searchsorted(true_scores, thresholds, side="left")  # scores >= threshold
        false_alarms = n_false - np.searchsorted(false_scores, thresholds, side="left")
        cost += (1 - hits / n_true) + beta * false_alarms / n_false
    twv = 1 - cost / len(per_query)
    return [(float(t), float(v)) for t, v in zip(thresholds, twv)]


def maximum_term_weighted_value(
    scores: Mapping[str, Mapping[str, float]],
    occurrences: Mapping[str, Sequence[str]],
    beta: float = TWV_BETA,
) -> float:
    """MTWV: the best TWV over all thresholds (0 when detecting nothing is best)."""
    return max(v for _, v in term_weighted_values(scores, occurrences, beta))
