"""Query-by-example by subsequence DTW (s3prl ``quesst14_dtw`` semantics, our own vectorised implementation).

For a query (N, D) and a document (M, D):

1. features are standardised per dimension with the mean/std of all query and document frames of the split;
2. local distance ``d = exp(cosine_distance) - 1`` ("cosine_exp"), then each query frame's row is min-max
   normalised over the document;
3. DTW with the *asymmetric* step pattern (each step advances the query by one frame and the document by 0, 1
   or 2 frames, weight 1 on the arrival cell), open begin and open end on the document:
   ``g[0, j] = d[0, j]``, ``g[i, j] = d[i, j] + min(g[i-1, j], g[i-1, j-1], g[i-1, j-2])``,
   cost ``= min_j g[N-1, j] / N`` (dtw-python's ``normalizedDistance`` for this pattern);
4. the score is ``-cost``; queries shorter than 5 frames score 0 everywhere; each query's scores are then
   z-normalised over the documents.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

MIN_QUERY_FRAMES = 5


def standardize(features: Sequence[Tensor]) -> list[Tensor]:
    """Per-dimension standardisation with the statistics of all frames of all sequences."""
    stacked = torch.cat(list(features)).double()
    mean, std = stacked.mean(0), stacked.std(0).clamp(min=1e-9)
    return [((f.double() - mean) / std).float() for f in features]


def cosine_exp_distance(query: Tensor, docs: Tensor) -> Tensor:
    """``exp(1 - cos) - 1`` between query frames (N, D) and document frames (..., M, D) -> (..., N, M)."""
    q = torch.nn.functional.normalize(query, dim=-1)
    d = torch.nn.functional.normalize(docs, dim=-1)
    return torch.exp(1.0 - d @ q.t()).transpose(-1, -2) - 1.0


def subsequence_dtw_cost(distance: Tensor, doc_lengths: Tensor | None = None) -> Tensor:
    """Normalised subsequence-DTW cost (asymmetric steps, open begin/end) of local distances (B, N, M) -> (B,).

    ``doc_lengths`` (B,) marks the valid document frames of padded batches (the rest are never visited).
    """
    if distance.ndim == 2:
        return subsequence_dtw_cost(distance[None], None if doc_lengths is None else doc_lengths[None])[0]
    batch, n, m = distance.shape
    inf = torch.tensor(float("inf"), dtype=distance.dtype, device=distance.device)
    if doc_lengths is not None:
        valid = torch.arange(m, device=distance.device)[None, :] < doc_lengths[:, None]
        distance = torch.where(valid[:, None, :], distance, inf)
    g = distance[:, 0]
    for i in range(1, n):
        stay = g
        one = torch.cat([inf.expand(batch, 1), g[:, :-1]], dim=1)
        two = torch.cat([inf.expand(batch, min(2, m)), g[:, :-2]], dim=1)
        g = distance[:, i] + torch.minimum(torch.minimum(stay, one), two)
    return g.min(dim=1).values / n


def query_scores(query: Tensor, docs: Sequence[Tensor], doc_batch: int = 64) -> Tensor:
    """Raw scores ``-cost`` of one (standardised) query against each document, min-max row normalisation on."""
    scores = []
    for start in range(0, len(docs), doc_batch):
        chunk = docs[start : start + doc_batch]
        lengths = torch.tensor([d.shape[0] for d in chunk])
        padded = torch.zeros(len(chunk), int(lengths.max()), query.shape[1], dtype=query.dtype)
        for i, d in enumerate(chunk):
            padded[i, : d.shape[0]] = d
        dist = cosine_exp_distance(query, padded)  # (B, N, M)
        valid = (torch.arange(padded.shape[1])[None, :] < lengths[:, None])[:, None, :]
        low = torch.where(valid, dist, torch.inf).min(dim=-1, keepdim=True).values
        high = torch.where(valid, dist, -torch.inf).max(dim=-1, keepdim=True).values
        dist = (dist - low) / (high - low).clamp(min=1e-9)
        scores.append(-subsequence_dtw_cost(dist, lengths))
    return torch.cat(scores)


def qbe_scores(
    queries: Sequence[Tensor], docs: Sequence[Tensor], min_query_frames: int = MIN_QUERY_FRAMES
) -> Tensor:
    """z-normalised detection scores (num_queries, num_docs) of query features against document features
    (one layer's (T, D) tensors), with the standardisation and rules of the module docstring; queries shorter
    than ``min_query_frames`` score 0."""
    if not queries or not docs:
        raise ValueError("qbe_scores needs at least one query and one document")
    normalized = standardize([*queries, *docs])
    qs, ds = normalized[: len(queries)], normalized[len(queries) :]
    rows = []
    for q in qs:
        if q.shape[0] < min_query_frames:
            rows.append(torch.zeros(len(ds)))
            continue
        raw = query_scores(q, ds).double()
        rows.append(((raw - raw.mean()) / raw.std(unbiased=False).clamp(min=1e-9)).float())
    return torch.stack(rows)
