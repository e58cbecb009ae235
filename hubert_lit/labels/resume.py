"""What a labelling run leaves behind so that ``label --resume`` can finish it instead of starting over.

A run writes, in this order: ``centroids.npy``; ``meta.json`` with ``"status": "incomplete"`` and the record of the
fit (k, the features, the k-means settings and seed, the SHA-256 of the centroids, a digest of the shard index);
then for each shard its ``<shard>.labels.npz`` followed by ``.progress/<shard>.json`` (the shard's counts, read
errors and the SHA-256 of its labels file). At the end ``meta.json`` is rewritten complete and ``.progress/`` is
removed. Every file is written atomically, so after a kill a shard is complete exactly when its progress record
exists and names the labels file's hash; :func:`check_fit_record` decides whether the fit recorded in
``meta.json`` is the one the resumed run asks for.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from hubert_lit.atomic import atomic_write
from hubert_lit.labels.features import file_sha256

PROGRESS_DIR = ".progress"
# k-means settings that decide the centroids (the rest of meta.json's "kmeans" record describes the result)
FIT_OPTION_KEYS = (
    "seed",
    "fit_fraction",
    "max_fit_frames",
    "max_iter",
    "tol",
    "n_init",
    "init_size",
    "coarse_size",
)


def progress_path(out_dir: Path, shard: str) -> Path:
    return out_dir / PROGRESS_DIR / f"{shard}.json"


def write_progress(out_dir: Path, shard: str, record: dict[str, Any]) -> None:
    """Mark shard ``shard`` done (call after its labels file is written): ``record`` is its share of the report."""
    text = json.dumps(record, sort_keys=True)
    atomic_write(progress_path(out_dir, shard), lambda f: f.write(text.encode("utf-8")))


def read_done_shards(out_dir: Path, shard_names: list[str], labels_file) -> dict[str, dict[str, Any]]:
    """Progress records of the shards whose labels file is complete: ``labels_file(shard)`` exists and has the
    hash its record names. Shards without a record, or whose file does not match, are labelled again."""
    done = {}
    for shard in shard_names:
        path = progress_path(out_dir, shard)
        labels = labels_file(shard)
        if not path.is_file() or not labels.is_file():
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # cannot happen with atomic writes; label the shard again rather than trust it
        if record.get("labels_sha256") == file_sha256(labels):
            done[shard] = record
    return done


def clear_progress(out_dir: Path) -> None:
    shutil.rmtree(out_dir / PROGRESS_DIR, ignore_errors=True)


def check_fit_record(meta: dict[str, Any], requested: dict[str, Any], where: str) -> None:
    """ValueError naming the first setting in which ``meta.json``'s record (``meta``) differs from the one this
    run would write (``requested``: num_classes, label_rate, features identity, k-means options or the centroids'
    source, index digest)."""
    recorded = {
        "num_classes": meta.get("num_classes"),
        "label_rate": meta.get("label_rate"),
        "index": meta.get("source", {}).get("index_sha256"),
        **{f"features.{k}": meta.get("features", {}).get(k) for k in requested["features"]},
        **{f"kmeans.{k}": meta.get("kmeans", {}).get(k) for k in requested["kmeans"]},
    }
    wanted = {
        "num_classes": requested["num_classes"],
        "label_rate": requested["label_rate"],
        "index": requested["index"],
        **{f"features.{k}": v for k, v in requested["features"].items()},
        **{f"kmeans.{k}": v for k, v in requested["kmeans"].items()},
    }
    for key, value in wanted.items():
        if recorded[key] != value:
            what = "the shards (index.json) differ" if key == "index" else f"{key}={recorded[key]!r}"
            raise ValueError(
                f"{where}: cannot resume: the labels there were made with {what}, this run asks for "
                + ("other shards" if key == "index" else f"{key}={value!r}")
                + "; rerun with the same options, or pass --overwrite to start over"
            )
