"""Acoustic unit discovery: k-means pseudo-labels for HuBERT pretraining (``python -m hubert_lit label``).

* :mod:`~hubert_lit.labels.mfcc`: fairseq's 39-dim MFCC features (iteration 1)
* :mod:`~hubert_lit.labels.features`: MFCC or HuBERT-layer features per utterance, read from shards
* :mod:`~hubert_lit.labels.kmeans`: greedy k-means++ + FAISS Lloyd fit, nearest-centroid assignment
* :mod:`~hubert_lit.labels.quality`: phone purity, cluster purity and PNMI against phone alignments
* :mod:`~hubert_lit.labels.pipeline`: :func:`label_corpus`, the labelling run (streaming, multi-process)
* :mod:`~hubert_lit.labels.cli`: its command line
"""

from hubert_lit.labels.kmeans import Assigner, KMeansResult, fit_kmeans, kmeans_plusplus
from hubert_lit.labels.mfcc import mfcc_features
from hubert_lit.labels.quality import PhoneClusterCounts, frame_phones, quality_metrics

__all__ = [
    "Assigner",
    "KMeansResult",
    "PhoneClusterCounts",
    "fit_kmeans",
    "frame_phones",
    "kmeans_plusplus",
    "mfcc_features",
    "quality_metrics",
]
