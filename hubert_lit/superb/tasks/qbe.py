"""QbE: query-by-example spoken term detection without training (s3prl ``quesst14_dtw``).

Every hidden state (layer) is tried on dev: subsequence-DTW scores of each query against each document
(:func:`hubert_lit.superb.dtw.qbe_scores`), MTWV over the dev queries; the best layer is then scored on the test
queries. One (query, document) pair is one trial; the occurrences files say which documents contain a query.
MTWV with beta = 999.9 is 0 whenever no threshold detects a hit without false alarms, which is common on a small
set, so the mean average precision (MAP, torchmetrics) of each query's document ranking is reported beside it and
breaks ties in the layer choice.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from torch import Tensor
from torchmetrics.functional.retrieval import retrieval_average_precision
from tqdm import tqdm

from hubert_lit.superb.dtw import qbe_scores
from hubert_lit.superb.metrics import maximum_term_weighted_value
from hubert_lit.superb.tasks.base import TaskResult
from hubert_lit.superb.tasks.config import TaskConfig


def mean_average_precision(
    scores: Tensor, query_ids: Sequence[str], doc_ids: Sequence[str], occurrences: dict[str, list[str]]
) -> float:
    """Mean over queries with at least one true document of the average precision of their ranking."""
    values = []
    for q, query in enumerate(query_ids):
        true = set(occurrences.get(query, []))
        if not true:
            continue
        target = torch.tensor([d in true for d in doc_ids])
        values.append(float(retrieval_average_precision(scores[q].double(), target)))
    if not values:
        raise ValueError("mean_average_precision: no query has a true document")
    return sum(values) / len(values)


def qbe_metrics(
    scores: Tensor, query_ids: Sequence[str], doc_ids: Sequence[str], occurrences: dict[str, list[str]]
) -> dict[str, float]:
    table = {q: dict(zip(doc_ids, row.tolist())) for q, row in zip(query_ids, scores)}
    return {
        "mtwv": maximum_term_weighted_value(table, occurrences),
        "map": mean_average_precision(scores, query_ids, doc_ids, occurrences),
    }


def evaluate_qbe(
    config: TaskConfig,
    doc_states: list[Tensor],
    doc_ids: list[str],
    query_states: dict[str, list[Tensor]],
    query_ids: dict[str, list[str]],
    occurrences: dict[str, dict[str, list[str]]],
    progress: bool = False,
) -> TaskResult:
    """Pick the layer on dev (MTWV, then MAP), report test with it. States are ``(num_states, T, D)``."""
    start = time.perf_counter()
    num_states = doc_states[0].shape[0]
    search = []
    best: tuple[tuple[float, float], int, dict[str, float]] | None = None
    for layer in tqdm(range(num_states), desc="qbe layers", disable=not progress, leave=False):
        scores = qbe_scores(
            [q[layer] for q in query_states["dev"]], [d[layer] for d in doc_states], config.min_query_frames
        )
        metrics = qbe_metrics(scores, query_ids["dev"], doc_ids, occurrences["dev"])
        search.append({"layer": layer, "dev": metrics})
        key = (metrics["mtwv"], metrics["map"])
        if best is None or key > best[0]:
            best = (key, layer, metrics)
    assert best is not None
    _, layer, dev = best
    scores = qbe_scores(
        [q[layer] for q in query_states["test"]], [d[layer] for d in doc_states], config.min_query_frames
    )
    test = qbe_metrics(scores, query_ids["test"], doc_ids, occurrences["test"])
    return TaskResult(
        task=config.task,
        metric=config.metric,
        lr=None,
        dev=dev,
        test=test,
        best_step=None,
        search=search,
        details={"layer": layer},
        seconds=time.perf_counter() - start,
    )
