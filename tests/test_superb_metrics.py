"""SUPERB metrics and QbE DTW on hand-computed cases (expected values worked out in the comments)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from hubert_lit.superb.dtw import qbe_scores, subsequence_dtw_cost
from hubert_lit.superb.metrics import (
    char_error_rate_of,
    diarization_error,
    diarization_error_rate,
    edit_distance,
    equal_error_rate,
    maximum_term_weighted_value,
    parse_slots,
    phone_error_rate,
    slot_type_f1,
    slot_value_cer,
    strip_slot_tags,
    term_weighted_values,
    word_error_rate_of,
)
from hubert_lit.superb.tasks.qbe import mean_average_precision


def test_edit_distance_and_phone_error_rate():
    assert edit_distance("kitten", "sitting") == 3  # k->s, e->i, +g
    assert edit_distance([], ["a", "b"]) == 2
    # utterance 1: one deletion (b); utterance 2: one insertion (e) -> 2 errors / 4 reference phones
    refs = [["a", "b", "c"], ["d"]]
    hyps = [["a", "c"], ["d", "e"]]
    assert phone_error_rate(refs, hyps) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="2 references but 1"):
        phone_error_rate(refs, hyps[:1])


def test_word_and_character_error_rate_are_corpus_level():
    # 1 insertion over 3 words + 1 substitution over 2 words -> 2 / 5 (not the mean of 1/3 and 1/2)
    refs = ["THE CAT SAT", "HELLO WORLD"]
    hyps = ["THE CAT SAT DOWN", "HELLO WORD"]
    assert word_error_rate_of(refs, hyps) == pytest.approx(2 / 5)
    # characters: 5 inserted (" DOWN") over 11, 1 deleted (L) over 11 -> 6 / 22
    assert char_error_rate_of(refs, hyps) == pytest.approx(6 / 22)


def test_slot_parsing_follows_s3prl_tags():
    tagged = "PLAY B-artist JOHN  MILLER E-artist ON B-playlist ROAD TRIP E-playlist"
    assert parse_slots(tagged) == {"artist": ["JOHN MILLER"], "playlist": ["ROAD TRIP"]}
    assert strip_slot_tags(tagged) == "PLAY JOHN MILLER ON ROAD TRIP"
    assert parse_slots("PLAY B-artist JOHN") == {}  # no closing tag: no slot


def test_slot_type_f1_is_the_mean_of_per_utterance_f1():
    refs = [
        "PLAY B-artist JOHN E-artist FROM B-album BLUE E-album",  # hyp has artist only: P 1, R 1/2 -> F1 2/3
        "WHAT TIME IS IT",  # neither has slots -> 1
        "IN B-city PARIS E-city",  # hyp has no slot -> 0
        "B-city OSLO E-city B-time TONIGHT E-time",  # hyp: city + party_size -> P 1/2, R 1/2 -> F1 1/2
    ]
    hyps = [
        "PLAY B-artist JON E-artist FROM BLUE",
        "WHAT TIME IS IT",
        "IN PARIS",
        "B-city OSLO E-city B-party_size TWO E-party_size",
    ]
    assert slot_type_f1(refs, hyps) == pytest.approx((2 / 3 + 1 + 0 + 1 / 2) / 4)


def test_slot_value_cer_pairs_each_reference_value_with_the_best_same_type_value():
    refs = ["B-city PARIS E-city B-time TONIGHT E-time", "B-city OSLO E-city"]
    # PARIS: best of ["PARIS", "PARIX"] -> 0 edits; TONIGHT vs TONIGHX -> 1; OSLO missing -> "" -> 4 edits
    hyps = ["B-city PARIX E-city B-city PARIS E-city B-time TONIGHX E-time", "NOTHING"]
    assert slot_value_cer(refs, hyps) == pytest.approx((0 + 1 + 4) / (5 + 7 + 4))


def test_equal_error_rate_on_separable_and_overlapping_scores():
    assert equal_error_rate([0.9, 0.8, 0.3, 0.2], [1, 1, 0, 0]) == pytest.approx(0.0)
    # threshold between 0.35 and 0.4: one of 4 targets rejected (0.35), one of 4 non-targets accepted (0.4)
    scores = [0.9, 0.8, 0.7, 0.35, 0.4, 0.3, 0.2, 0.1]
    labels = [1, 1, 1, 1, 0, 0, 0, 0]
    assert equal_error_rate(scores, labels) == pytest.approx(0.25)
    # cosine scores outside [0, 1] work the same (only the order matters)
    assert equal_error_rate([s * 4 - 2 for s in scores], labels) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="both target"):
        equal_error_rate([0.1, 0.2], [1, 1])


def test_diarization_error_counts_miss_false_alarm_and_confusion():
    reference = [("A", 0, 10), ("B", 5, 15)]
    # X covers A exactly, Y covers B only after 10: the overlap 5-10 misses B -> 5 / (10 + 10)
    parts = diarization_error(reference, [("X", 0, 10), ("Y", 10, 15)])
    assert parts == {"total": 20.0, "missed": 5.0, "false_alarm": 0.0, "confusion": 0.0}
    # one hypothesis speaker for everything: 5 missed (overlap) + 5 confused (the other speaker's solo part)
    parts = diarization_error(reference, [("X", 0, 15)])
    assert parts["missed"] == 5 and parts["confusion"] == 5 and parts["false_alarm"] == 0
    # speech where the reference is silent is a false alarm; the labels' names do not matter
    parts = diarization_error([("A", 0, 10)], [("0", 0, 12)])
    assert parts == {"total": 10.0, "missed": 0.0, "false_alarm": 2.0, "confusion": 0.0}
    # corpus DER sums errors and reference time over recordings: (5 + 2) / (20 + 10)
    der = diarization_error_rate([reference, [("A", 0, 10)]], [[("X", 0, 10), ("Y", 10, 15)], [("0", 0, 12)]])
    assert der == pytest.approx(7 / 30)


def test_diarization_mapping_maximises_overlap():
    reference = [("A", 0, 10), ("B", 10, 30)]
    hypothesis = [("1", 0, 10), ("0", 10, 30)]  # names swapped relative to sorted order: still perfect
    assert diarization_error(reference, hypothesis)["confusion"] == 0.0
    with pytest.raises(ValueError, match="start <= end"):
        diarization_error([("A", 5, 1)], [])


def _random_segments(rng: random.Random, speakers: str, count: int) -> list[tuple[str, float, float]]:
    """Up to ``count`` turns per speaker on a 10 ms grid within 0-25 s; speakers overlap each other, a speaker never
    overlaps itself (as in an RTTM file)."""
    out = []
    for speaker in speakers:
        t = rng.randrange(0, 500) / 100
        for _ in range(rng.randrange(0, count + 1)):
            end = t + rng.randrange(10, 400) / 100
            out.append((speaker, t, end))
            t = end + rng.randrange(1, 300) / 100
    rng.shuffle(out)
    return out


def test_der_equals_pyannote_metrics_on_random_recordings():
    """Our DER (collar 0, overlap scored) against pyannote.metrics, the reference implementation (a test-only
    dependency: the runtime keeps its own 60 lines rather than pandas and pyannote.database)."""
    from pyannote.core import Annotation, Segment, Timeline
    from pyannote.metrics.diarization import DiarizationErrorRate

    def annotation(segments):
        result = Annotation()
        for i, (speaker, start, end) in enumerate(segments):
            result[Segment(start, end), i] = speaker
        return result

    rng = random.Random(0)
    metric = DiarizationErrorRate(collar=0.0, skip_overlap=False)
    references, hypotheses = [], []
    for _ in range(40):
        reference = _random_segments(rng, "AB" if rng.random() < 0.5 else "ABC", 4)
        reference = reference or [("A", 0.0, 1.0)]
        hypothesis = _random_segments(rng, "0123"[: rng.randrange(1, 5)], rng.randrange(0, 5))
        ours = diarization_error(reference, hypothesis)
        scored = Timeline([Segment(0.0, 100.0)])  # everything, as ours scores it
        theirs = metric(annotation(reference), annotation(hypothesis), uem=scored, detailed=True)
        for key, their_key in (
            ("total", "total"),
            ("missed", "missed detection"),
            ("false_alarm", "false alarm"),
            ("confusion", "confusion"),
        ):
            assert ours[key] == pytest.approx(theirs[their_key], abs=1e-6), (key, reference, hypothesis)
        references.append(reference)
        hypotheses.append(hypothesis)
    assert diarization_error_rate(references, hypotheses) == pytest.approx(abs(metric), abs=1e-9)


def test_term_weighted_value_and_its_maximum():
    scores = {
        "q1": {"d1": 0.9, "d2": 0.5, "d3": 0.1, "d4": 0.0},
        "q2": {"d1": 0.2, "d2": 0.8, "d3": 0.3, "d4": 0.7},
        "q3": {"d1": 0.1, "d2": 0.1, "d3": 0.1, "d4": 0.1},  # no true document: left out
    }
    occurrences = {"q1": ["d1"], "q2": ["d2", "d3"], "q3": []}
    values = dict(term_weighted_values(scores, occurrences))
    # t = 0.9: q1 hit, q2 nothing -> 1 - (0 + 1) / 2
    assert values[0.9] == pytest.approx(0.5)
    # t = 0.8: q1 hit, q2 one of two hits, no false alarm -> 1 - (0 + 0.5) / 2
    assert values[0.8] == pytest.approx(0.75)
    # t = 0.7: q2 accepts d4 (false alarm, 1 of 2 non-targets) -> 1 - (0.5 + 999.9 * 0.5) / 2
    assert values[0.7] == pytest.approx(1 - (0.5 + 999.9 * 0.5) / 2)
    assert values[math.inf] == pytest.approx(0.0)  # detect nothing
    assert maximum_term_weighted_value(scores, occurrences) == pytest.approx(0.75)
    # beta = 1 at t = 0.3: q1 FA 1/3, q2 all hits + FA 1/2 -> 1 - (1/3 + 1/2) / 2
    assert dict(term_weighted_values(scores, occurrences, beta=1.0))[0.3] == pytest.approx(
        1 - (1 / 3 + 1 / 2) / 2
    )
    with pytest.raises(ValueError, match="no query has a true document"):
        maximum_term_weighted_value(scores, {"q1": [], "q2": [], "q3": []})


def test_mean_average_precision():
    scores = torch.tensor([[0.9, 0.5, 0.1], [0.2, 0.8, 0.3]])
    # q1: true d1 ranked first -> AP 1; q2: true d3 ranked second -> AP 1/2
    value = mean_average_precision(scores, ["q1", "q2"], ["d1", "d2", "d3"], {"q1": ["d1"], "q2": ["d3"]})
    assert value == pytest.approx(0.75)


def test_subsequence_dtw_on_hand_computed_matrices():
    # g0 = [1, 0, 5]; g1 = [5 + 1, 5 + 0, 0 + 0] -> min 0 over 2 query frames
    assert float(subsequence_dtw_cost(torch.tensor([[1.0, 0.0, 5.0], [5.0, 5.0, 0.0]]))) == pytest.approx(0.0)
    # g0 = [3, 1, 4]; g1 = [1+3, 5+1, 9+1] = [4, 6, 10]; g2 = [2+4, 6+4, 5+4] = [6, 10, 9] -> 6 / 3
    d = torch.tensor([[3.0, 1.0, 4.0], [1.0, 5.0, 9.0], [2.0, 6.0, 5.0]])
    assert float(subsequence_dtw_cost(d)) == pytest.approx(2.0)
    # padded batch: frames past a document's length are never used
    padded = torch.stack([d, torch.cat([d[:, :2], torch.full((3, 1), -100.0)], dim=1)])
    costs = subsequence_dtw_cost(padded, torch.tensor([3, 2]))
    # second doc = first two columns: g2 = [6, 10] -> 6 / 3
    assert costs.tolist() == pytest.approx([2.0, 2.0])


def test_qbe_scores_rank_the_document_that_contains_the_query_first():
    gen = torch.Generator().manual_seed(0)
    query = torch.randn(8, 16, generator=gen)
    docs = [torch.randn(30, 16, generator=gen) for _ in range(4)]
    docs[2] = torch.cat(
        [
            torch.randn(10, 16, generator=gen),
            query + 0.05 * torch.randn(8, 16, generator=gen),
            torch.randn(12, 16, generator=gen),
        ]
    )
    scores = qbe_scores([query, query[:3]], docs)
    assert scores.shape == (2, 4)
    assert int(scores[0].argmax()) == 2
    assert float(scores[0].mean()) == pytest.approx(0.0, abs=1e-5)  # z-normalised per query
    assert scores[1].tolist() == [0.0] * 4  # queries under 5 frames score 0
