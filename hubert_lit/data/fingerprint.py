"""What a training run is trained on, recorded in its checkpoints so that a resumed run can tell when the data
under it changed (other label files, other or reshuffled shards, other batch settings).

A fingerprint is a small JSON-able dict:

* ``train_shards``: digest of the training index's shards and utterances (names, ids, lengths), not of where the
  folder lives, so a moved or mirrored shard folder (local path, URL) has the same fingerprint;
* ``train_labels``: digest of the labels folder's ``meta.json`` without its paths (the k-means record, the centroid
  hash, ``num_classes``, the features and the index the labels were made from), or None without labels;
* ``num_classes`` and ``plan``: every input of the epoch plan (seed, batch budget, sample sizes, sort window,
  padding).

Hashing ``meta.json`` instead of the label files keeps the check instant on LibriSpeech-sized folders: another
k-means run differs in its centroids (their hash, or at least their inertia and seed) and the labelling tool
rewrites ``meta.json`` for every folder it writes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from hubert_lit.data.shardio import ShardIndex

FINGERPRINT_FORMAT = "hubert-lit-data/1"
# the ShardDataModule arguments that decide the epoch plan (which utterances make up each batch, and their crops)
PLAN_FIELDS = (
    "seed",
    "max_batch_seconds",
    "batch_size",
    "max_sample_size",
    "min_sample_size",
    "sort_window",
    "pad",
)
# meta.json entries that say where things were, not what they are
_META_PATHS = (("source", "shards"), ("kmeans", "centroids_from"), ("features", "checkpoint"))


def index_digest(index: ShardIndex) -> str:
    """SHA-256 over the shards and utterances an index lists (names, ids, lengths), wherever it was read from."""
    digest = hashlib.sha256()
    for s in index.shards:
        digest.update(f"{s.name}\t{s.num_utterances}\t{s.num_samples}\n".encode())
    for u in index.utterances:
        digest.update(f"{u.id}\t{u.shard}\t{u.num_samples}\n".encode())
    return digest.hexdigest()


def label_meta_digest(meta: Mapping[str, Any]) -> str:
    """SHA-256 of a labels folder's ``meta.json`` content without the paths it records."""
    data = json.loads(json.dumps(meta))  # a deep, JSON-typed copy
    for section, key in _META_PATHS:
        if isinstance(data.get(section), dict):
            data[section].pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode("utf-8")).hexdigest()


def data_fingerprint(
    index: ShardIndex, label_meta: Mapping[str, Any] | None, plan: Mapping[str, Any]
) -> dict[str, Any]:
    """The fingerprint (module docs) of training on ``index`` with labels described by ``label_meta``."""
    return {
        "format": FINGERPRINT_FORMAT,
        "train_shards": index_digest(index),
        "train_utterances": len(index.utterances),
        "train_labels": None if label_meta is None else label_meta_digest(label_meta),
        "num_classes": None if label_meta is None else label_meta["num_classes"],
        "plan": {k: plan[k] for k in PLAN_FIELDS},
    }


def fingerprint_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What changed from ``saved`` to ``current``, one readable item per difference (empty when nothing did)."""
    out = []
    if saved.get("train_shards") != current["train_shards"]:
        out.append(
            f"the training shards (index of {saved.get('train_utterances')} utterances -> "
            f"{current['train_utterances']}, digest {str(saved.get('train_shards'))[:12]} -> "
            f"{current['train_shards'][:12]})"
        )
    if saved.get("train_labels") != current["train_labels"]:

        def short(d: Any) -> str:
            return "none" if d is None else str(d)[:12]

        out.append(
            f"the training labels (meta.json digest {short(saved.get('train_labels'))} -> "
            f"{short(current['train_labels'])}: another labelling run)"
        )
    if saved.get("num_classes") != current["num_classes"]:
        out.append(f"num_classes ({saved.get('num_classes')} -> {current['num_classes']})")
    saved_plan = saved.get("plan") or {}
    for key in PLAN_FIELDS:
        if key in saved_plan and saved_plan[key] != current["plan"][key]:
            out.append(f"data.{key} ({saved_plan[key]!r} -> {current['plan'][key]!r})")
    return out
