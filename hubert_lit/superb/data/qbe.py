"""Query-by-example spoken term detection (QbE), in the spirit of QUESST 2014 (English subset).

Documents are grammar sentences spoken by several voices; queries are single words spoken in isolation by
one further voice that speaks no document, so a match has to bridge voices. Query terms are place names
and adjectives from the grammar's word lists (five letters or more; these words only ever occur in that
exact form in the grammar, so there are no inflected near-misses). Dev and test have different terms and
share the documents, as in QUESST. Ground truth occurrences are the documents' word events from eSpeak
(documents whose word events do not spell their transcript are re-drawn), as ``{"doc", "start", "end"}``
sample spans in the document.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hubert_lit.data.sentences import Sentence, SentenceGenerator, load_grammar
from hubert_lit.superb.data.common import (
    BuildContext,
    Candidate,
    Record,
    TaskPlan,
    Voice,
    audio_path,
    draw_speakers,
    peak_normalize,
    speakers_meta,
    speech_span,
    synthesize_first,
    write_audio,
    write_json,
    write_jsonl,
)

DOC_MIN_SECONDS, DOC_MAX_SECONDS = 1.5, 8.0
DOC_CANDIDATES = 4
QUERY_MARGIN = 800  # samples (50 ms) of silence kept around a query's speech
TERM_MIN_LETTERS = 5
WITH_TERM_FRACTION = 0.75  # documents drawn to contain at least one query term; the rest are random
# (the first documents contain one given term each, so every term occurs at least once)
QUERY_SPLITS = ("dev", "test")


@dataclass(frozen=True)
class DocItem:
    id: str
    split: str  # always "docs"
    speaker: str
    voice: Voice
    candidates: tuple[Sentence, ...]


@dataclass(frozen=True)
class QueryItem:
    id: str
    split: str
    speaker: str
    voice: Voice
    term: str  # upper case, as in transcripts


def render_doc(item: DocItem, root: Path) -> Record:
    chosen, result = synthesize_first(item.voice, item.candidates, item.id, DOC_MIN_SECONDS, DOC_MAX_SECONDS,
                                      check_words=True)  # fmt: skip
    relative = audio_path("qbe", "docs", item.id)
    num_samples = write_audio(root, relative, peak_normalize(result.audio, item.id))
    words = [[w, s, e] for w, (_, s, e) in zip(chosen.transcript.split(), result.words)]
    return {"id": item.id, "audio": relative, "num_samples": num_samples, "speaker": item.speaker,
            "text": chosen.transcript, "words": words}  # fmt: skip


def render_query(item: QueryItem, root: Path) -> Record:
    _, result = synthesize_first(item.voice, [Candidate(item.term.lower(), item.term)], item.id)
    start, end = speech_span(result.phones, item.id)
    audio = result.audio[max(0, start - QUERY_MARGIN) : end + QUERY_MARGIN]
    relative = audio_path("qbe", item.split, item.id)
    num_samples = write_audio(root, relative, peak_normalize(audio, item.id))
    return {"id": item.id, "audio": relative, "num_samples": num_samples, "speaker": item.speaker,
            "text": item.term}  # fmt: skip


def render_item(item: DocItem | QueryItem, root: Path) -> Record:
    return render_doc(item, root) if isinstance(item, DocItem) else render_query(item, root)


def candidate_terms() -> list[str]:
    """Upper-case words that can be query terms (grammar places and adjectives, >= 5 letters)."""
    words = load_grammar().words
    return sorted({row[0].upper() for name in ("place", "adjective") for row in words[name]
                   if len(row[0]) >= TERM_MIN_LETTERS and row[0].isalpha()})  # fmt: skip


def find_occurrences(queries: list[Record], docs: list[Record]) -> dict[str, list[dict]]:
    """Query id -> every doc word equal to the query's term, as {"doc", "start", "end"}."""
    return {
        q["id"]: [
            {"doc": d["id"], "start": s, "end": e} for d in docs for w, s, e in d["words"] if w == q["text"]
        ]
        for q in queries
    }


def plan_qbe(ctx: BuildContext, num_docs: int, doc_speakers: int, terms_per_split: int) -> TaskPlan:
    groups = draw_speakers(ctx.pool, ctx.rng("qbe", "speakers"), {"query": 1, "docs": doc_speakers})
    rng = ctx.rng("qbe", "items")
    terms = candidate_terms()
    if 2 * terms_per_split > len(terms):
        raise ValueError(f"{2 * terms_per_split} query terms requested, only {len(terms)} candidates exist")
    chosen = rng.sample(terms, 2 * terms_per_split)
    split_terms = {"dev": sorted(chosen[:terms_per_split]), "test": sorted(chosen[terms_per_split:])}
    wanted = set(chosen)
    generator = SentenceGenerator(f"hubert-lit-superb/{ctx.seed}/qbe/sentences")
    seen: set[str] = set()

    def sentence(required: set[str]) -> Sentence:
        """A new sentence containing one of ``required`` (any sentence if it is empty)."""
        for _ in range(5000):
            s = generator.sentence()
            if s.transcript not in seen and (not required or required & set(s.transcript.split())):
                seen.add(s.transcript)
                return s
        raise RuntimeError(f"the grammar gave no new QbE document sentence in 5000 draws ({len(seen)} used)")

    docs = []
    for i in range(num_docs):
        speaker = groups["docs"][i % doc_speakers]
        if i < len(chosen):  # every term gets at least one document
            required = {chosen[i]}
        else:
            required = wanted if rng.random() < WITH_TERM_FRACTION else set()
        candidates = tuple(sentence(required) for _ in range(DOC_CANDIDATES))
        docs.append(DocItem(f"doc-{i:05d}", "docs", speaker.id, speaker.utterance_voice(rng), candidates))
    query_speaker = groups["query"][0]
    queries = {
        split: [
            QueryItem(f"{split}-q{i:03d}", split, query_speaker.id, query_speaker.utterance_voice(rng), term)
            for i, term in enumerate(split_terms[split])
        ]  # fmt: skip
        for split in QUERY_SPLITS
    }
    jobs = ctx.jobs("qbe", render_item, [*docs, *queries["dev"], *queries["test"]])

    def write(records: dict[str, list[Record]]) -> None:
        write_jsonl(ctx.root / "qbe" / "docs.jsonl", records["docs"])
        found = {}
        for split in QUERY_SPLITS:
            write_jsonl(ctx.root / "qbe" / f"{split}_queries.jsonl", records[split])
            occurrences = find_occurrences(records[split], records["docs"])
            write_json(ctx.root / "qbe" / f"{split}_occurrences.json", occurrences)
            found[split] = {"queries": len(records[split]), "occurrences": sum(map(len, occurrences.values())),
                            "queries_without_occurrence": sum(1 for v in occurrences.values() if not v)}  # fmt: skip
        ctx.meta(
            "qbe",
            "Query-by-example spoken term detection: isolated spoken words (queries, one voice) searched in "
            "spoken sentences (docs.jsonl, other voices). {dev,test}_occurrences.json maps query id -> "
            "[{doc, start, end}] in document samples, from eSpeak word events. No training data.",
            "A cross-voice matching test: terms are exact words from a small grammar and queries are read in "
            "isolation by a synthesizer; far easier than QUESST. Score MTWV/ATWV yourself (no NIST scorer).",
            terms=split_terms, occurrences=found, num_docs=len(records["docs"]),
            speakers=speakers_meta(groups),
        )  # fmt: skip

    return TaskPlan(("qbe",), jobs, write)
