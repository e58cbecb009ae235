"""``python -m hubert_lit label``: the command line of :func:`hubert_lit.labels.pipeline.label_corpus`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hubert_lit.constants import SAMPLE_RATE
from hubert_lit.labels.distributed import RankFailure
from hubert_lit.labels.features import DEFAULT_CONTEXT_SAMPLES, DEFAULT_MAX_CHUNK_SAMPLES
from hubert_lit.labels.pipeline import FeatureOptions, KMeansOptions, LabelError, label_corpus


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m hubert_lit label",
        description=(
            "Discover acoustic units: fit k-means on MFCC or HuBERT-layer features of a seeded sample of "
            "utterances, then label every utterance of a shard folder. Writes meta.json, centroids.npy and one "
            "<shard>.labels.npz per shard. Run under torchrun (WORLD_SIZE > 1) to split the shards across "
            "processes; the output is identical to a single-process run."
        ),
    )
    p.add_argument(
        "--shards",
        required=True,
        help="shard folder (index.json + shard-*.tar) written by `python -m hubert_lit shard`: a local folder, an "
        "http(s):// URL of one, an fsspec URL (s3://, gs://: pip install 'hubert-lit[s3]' / '[gcs]') or "
        "'pipe:<command writing file {name} to stdout>'",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="local labels folder to write (meta.json, centroids.npy, <shard name>.labels.npz)",
    )
    p.add_argument(
        "--features",
        choices=("mfcc", "hubert"),
        default=None,
        help="mfcc: 39-dim MFCC+deltas at 100 Hz (iteration 1); hubert: a transformer layer of "
        "--checkpoint at 50 Hz. Required unless --centroids gives it",
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        help="pretraining checkpoint (.ckpt) or model file (hubert_lit.models.save_model) whose layer is "
        "clustered (--features hubert)",
    )
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help="transformer layer whose output is clustered (0 = encoder input); default: half the encoder's depth "
        "(6 of HuBERT Base's 12 layers, 8 of 16, 4 of 8), or the "
        "layer recorded with --centroids",
    )
    p.add_argument(
        "--clusters",
        type=int,
        default=None,
        help="number of k-means clusters k (e.g. 100 for MFCC, 500 for HuBERT features); "
        "required unless --centroids",
    )
    p.add_argument(
        "--centroids",
        type=Path,
        default=None,
        help="labels folder of an earlier run (e.g. train) whose centroids.npy labels these shards "
        "(dev/test) without fitting; its features settings must match",
    )
    p.add_argument(
        "--fit-fraction",
        type=float,
        default=0.1,
        help="fraction of utterances in the k-means fit sample, chosen by a seeded hash of the id (default: %(default)s)",
    )
    p.add_argument(
        "--max-fit-frames",
        type=int,
        default=2_000_000,
        help="cap on the fit sample (frames); the sample is held in memory, frames x dim x 4 bytes "
        "(twice that on rank 0 while gathering). Utterances over the cap are left out and the "
        "run says so (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the fit sample and the k-means initialisation (default: %(default)s)",
    )
    p.add_argument(
        "--max-iter", type=int, default=100, help="maximum Lloyd iterations per stage (default: %(default)s)"
    )
    p.add_argument(
        "--tol",
        type=float,
        default=1e-4,
        help="stop a Lloyd stage when 5 iterations (2 when refining after the coarse stage) lower the objective "
        "by less than this fraction (default: %(default)s)",
    )
    p.add_argument(
        "--n-init",
        type=int,
        default=1,
        help="k-means restarts (seeds seed, seed+1, ...); best kept (default: %(default)s)",
    )
    p.add_argument(
        "--init-size",
        type=int,
        default=30_000,
        help="points of the fit sample used for the k-means++ initialisation (default: %(default)s)",
    )
    p.add_argument(
        "--coarse-size",
        type=int,
        default=50_000,
        help="when the fit sample has more than twice max(this, 100 x --clusters) frames, Lloyd first "
        "converges on a subsample of that size, then refines on every frame (0: always all frames) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--device",
        default=None,
        help="torch device for HuBERT features (default: cuda if available, else cpu; under "
        "torchrun each process takes cuda:LOCAL_RANK)",
    )
    p.add_argument(
        "--max-chunk-seconds",
        type=float,
        default=DEFAULT_MAX_CHUNK_SAMPLES / SAMPLE_RATE,
        help="longer utterances go through the model in chunks of this length (--features hubert) (default: %(default)s)",
    )
    p.add_argument(
        "--context-seconds",
        type=float,
        default=DEFAULT_CONTEXT_SAMPLES / SAMPLE_RATE,
        help="extra audio on each side of a chunk, whose frames are dropped (--features hubert) (default: %(default)s)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the labels, meta.json and centroids.npy of an existing labels folder",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="finish the interrupted run that wrote --out: keep the shards whose labels files are complete and "
        "the k-means fit recorded in its meta.json (no new fit), after checking that the record (k, features, "
        "k-means settings and seed, centroids hash, shards) matches this command",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="keep a local copy of remote shards once read, so the second pass does not download them again",
    )
    p.add_argument(
        "--dist-timeout-minutes",
        type=float,
        default=240.0,
        help="how long processes wait for each other (rank 0 fits k-means while the others wait) (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    features = None
    if args.features is not None or args.checkpoint is not None or args.layer is not None:
        features = FeatureOptions(
            kind=args.features,
            checkpoint=args.checkpoint,
            layer=args.layer,
            max_chunk_seconds=args.max_chunk_seconds,
            context_seconds=args.context_seconds,
        )
    kmeans = KMeansOptions(
        fit_fraction=args.fit_fraction,
        max_fit_frames=args.max_fit_frames,
        seed=args.seed,
        max_iter=args.max_iter,
        tol=args.tol,
        n_init=args.n_init,
        init_size=args.init_size,
        coarse_size=args.coarse_size,
    )
    try:
        label_corpus(
            args.shards,
            args.out,
            features=features,
            clusters=args.clusters,
            centroids=args.centroids,
            kmeans=kmeans,
            device=args.device,
            overwrite=args.overwrite,
            progress=not args.no_progress,
            dist_timeout_minutes=args.dist_timeout_minutes,
            resume=args.resume,
            cache_dir=args.cache_dir,
        )
    except LabelError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (
        RankFailure
    ) as err:  # a process of a torchrun / SLURM launch failed: every process ends with its message
        print(f"error: {err}", file=sys.stderr)
        return 2 if err.kinds == {"LabelError"} else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
