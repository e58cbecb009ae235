"""Benchmark: our k-means (greedy k-means++ + FAISS Lloyd, then FAISS assignment) against scikit-learn's
MiniBatchKMeans with fairseq's ``learn_kmeans.py`` settings, on the same float32 features.

Cases: MFCCs of the demo corpus's train split (k=100; skipped with a message when the corpus is missing), and two
Gaussian mixtures: 1M x 39 with k=100 and 200k x 768 with k=500. For each method: fit time, assignment time of
all points, and inertia per point computed for both centroid sets with the same exact FAISS search. Target:
ours at least 2x faster (fit + assign) with inertia at most 1% worse than MiniBatchKMeans.

    nice python experiments/bench_kmeans.py [--cases demo gmm39 gmm768] [--seeds 5] [--scale 0.1] [--threads 2]

k-means results depend on the seed by a few per cent on clustered data (either method), so each case runs both
methods with several seeds and compares the means.

Needs scikit-learn (``pip install -e '.[bench]'``). Writes experiments/results/bench_kmeans.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hubert_lit.labels.kmeans import Assigner, fit_kmeans  # noqa: E402
from hubert_lit.labels.mfcc import mfcc_features  # noqa: E402

RESULTS = REPO / "experiments" / "results"
DEMO_TRAIN = REPO / "data" / "demo" / "LibriSpeech" / "train"
# fairseq examples/hubert/simple_kmeans/learn_kmeans.py
FAIRSEQ_MBKM = dict(
    init="k-means++",
    max_iter=100,
    batch_size=10000,
    tol=0.0,
    max_no_improvement=100,
    n_init=20,
    reassignment_ratio=0.0,
    compute_labels=False,
    init_size=None,
)


def gaussian_mixture(n: int, dim: int, components: int, seed: int) -> np.ndarray:
    """``n`` points around ``components`` centres drawn with std 3, unit isotropic noise (float32)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=3.0, size=(components, dim)).astype(np.float32)
    x = centres[rng.integers(components, size=n)]
    x += rng.standard_normal(size=(n, dim), dtype=np.float32)
    return x


def demo_mfccs(root: Path) -> np.ndarray | None:
    """39-dim MFCCs of every FLAC under ``root`` (the demo corpus's train split), or None if it is missing."""
    import soundfile as sf

    files = sorted(root.rglob("*.flac")) if root.is_dir() else []
    if not files:
        return None
    feats = [mfcc_features(sf.read(f, dtype="float32")[0]).numpy() for f in files]
    return np.concatenate(feats)


def run_ours(x: np.ndarray, k: int, seed: int) -> dict:
    t0 = time.perf_counter()
    result = fit_kmeans(x, k, seed=seed)
    t1 = time.perf_counter()
    Assigner(result.centroids)(x)
    t2 = time.perf_counter()
    return {
        "centroids": result.centroids,
        "fit_s": t1 - t0,
        "assign_s": t2 - t1,
        "iterations": result.iterations,
        "coarse_iterations": result.coarse_iterations,
    }


def run_sklearn(x: np.ndarray, k: int, seed: int) -> dict:
    from sklearn.cluster import MiniBatchKMeans

    t0 = time.perf_counter()
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, **FAIRSEQ_MBKM).fit(x)
    t1 = time.perf_counter()
    km.predict(x)
    t2 = time.perf_counter()
    return {"centroids": km.cluster_centers_.astype(np.float32), "fit_s": t1 - t0, "assign_s": t2 - t1,
            "iterations": int(km.n_steps_)}  # fmt: skip


def steps(r: dict) -> str:
    return f"{r['coarse_iterations']} coarse + {r['iterations']} full Lloyd iterations"


def bench_case(name: str, x: np.ndarray, k: int, seeds: list[int]) -> dict:
    """Both methods with each seed; times and inertias averaged over seeds (k-means minima vary by seed)."""
    print(f"[{name}] {x.shape[0]} x {x.shape[1]}, k={k}, seeds {seeds}", flush=True)
    row: dict = {"case": name, "n": int(x.shape[0]), "dim": int(x.shape[1]), "k": k, "seeds": seeds}
    runs: dict[str, list[dict]] = {"ours": [], "sklearn": []}
    for seed in seeds:
        for method, fn in (("ours", run_ours), ("sklearn", run_sklearn)):
            r = fn(x, k, seed)
            r["inertia"] = Assigner(r.pop("centroids")).inertia(x)
            r["total_s"] = r["fit_s"] + r["assign_s"]
            runs[method].append(r)
            what = steps(r) if method == "ours" else f"{r['iterations']} mini-batch steps"
            print(f"  seed {seed} {method:8s} fit {r['fit_s']:8.2f} s  assign {r['assign_s']:6.2f} s  "
                  f"inertia/N {r['inertia']:.4f}  ({what})", flush=True)  # fmt: skip
    for method, rs in runs.items():
        row[method] = {
            "runs": rs,
            "total_s": float(np.mean([r["total_s"] for r in rs])),
            "inertia": float(np.mean([r["inertia"] for r in rs])),
        }
    row["speedup"] = row["sklearn"]["total_s"] / row["ours"]["total_s"]
    row["inertia_ratio"] = row["ours"]["inertia"] / row["sklearn"]["inertia"]
    per_seed = [o["inertia"] / s["inertia"] for o, s in zip(runs["ours"], runs["sklearn"])]
    row["inertia_ratio_range"] = [min(per_seed), max(per_seed)]
    row["meets_target"] = row["speedup"] >= 2.0 and row["inertia_ratio"] <= 1.01
    print(f"  mean speed-up {row['speedup']:.2f}x, mean inertia ratio {row['inertia_ratio']:.4f} "
          f"(per seed {min(per_seed):.4f}..{max(per_seed):.4f})", flush=True)  # fmt: skip
    return row


def markdown(rows: list[dict], skipped: list[str], env: dict) -> str:
    lines = [
        "# k-means: ours (k-means++ + FAISS Lloyd) vs MiniBatchKMeans (fairseq settings)",
        "",
        f"Machine: {env['cpus']} CPUs shared with other jobs, load average at start {env['load_start']}, at end "
        f"{env['load_end']}; threads {env['threads']}; faiss {env['faiss']}, scikit-learn {env['sklearn']}. "
        "Times include fitting and assigning every point; inertia is per point, computed for both with the same "
        "exact search. Means over the seeds listed (both methods use each seed); the ratio range is per seed.",
        "",
        "| case | n x d | k | seeds | ours fit+assign (s) | sklearn fit+assign (s) | speed-up | inertia ours | "
        "inertia sklearn | ratio (per-seed range) | target (>=2x, <=1.01) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["inertia_ratio_range"]
        lines.append(
            f"| {r['case']} | {r['n']} x {r['dim']} | {r['k']} | {len(r['seeds'])} | {r['ours']['total_s']:.1f} | "
            f"{r['sklearn']['total_s']:.1f} | {r['speedup']:.2f}x | {r['ours']['inertia']:.4f} | "
            f"{r['sklearn']['inertia']:.4f} | {r['inertia_ratio']:.4f} ({lo:.3f}..{hi:.3f}) | "
            f"{'yes' if r['meets_target'] else 'no'} |"
        )
    if skipped:
        lines += ["", *(f"Skipped: {s}" for s in skipped)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--cases", nargs="+", default=["demo", "gmm39", "gmm768"], choices=["demo", "gmm39", "gmm768"]
    )
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply the Gaussian-mixture sizes (smoke runs)"
    )
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 per case (k-means minima vary by seed)")
    p.add_argument("--seeds-768", type=int, default=1, help="seeds for the slow 768-d case")
    p.add_argument("--threads", type=int, default=None, help="OpenMP/BLAS threads for both methods")
    p.add_argument("--demo-root", type=Path, default=DEMO_TRAIN, help="demo corpus train split (FLAC tree)")
    p.add_argument("--out", type=Path, default=RESULTS / "bench_kmeans")
    args = p.parse_args(argv)
    if args.threads:
        import faiss
        from threadpoolctl import threadpool_limits

        faiss.omp_set_num_threads(args.threads)
        threadpool_limits(args.threads)
    import faiss
    import sklearn

    env = {"cpus": os.cpu_count(), "load_start": [round(v, 2) for v in os.getloadavg()], "threads": args.threads,
           "faiss": faiss.__version__, "sklearn": sklearn.__version__, "python": platform.python_version()}  # fmt: skip
    rows, skipped = [], []
    for case in args.cases:
        if case == "demo":
            x = demo_mfccs(args.demo_root)
            if x is None:
                msg = f"demo: no FLAC files under {args.demo_root} (run `make demo` or `python -m hubert_lit synth`)"
                print(msg, flush=True)
                skipped.append(msg)
                continue
            rows.append(bench_case("demo MFCC", x, 100, list(range(args.seeds))))
        elif case == "gmm39":
            x = gaussian_mixture(int(1_000_000 * args.scale), 39, 200, seed=0)
            rows.append(bench_case("GMM 39-d", x, 100, list(range(args.seeds))))
        else:
            x = gaussian_mixture(int(200_000 * args.scale), 768, 1000, seed=0)
            rows.append(bench_case("GMM 768-d", x, 500, list(range(args.seeds_768))))
        del x
    env["load_end"] = [round(v, 2) for v in os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, skipped, env)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(
        json.dumps({"env": env, "rows": rows, "skipped": skipped}, indent=2)
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
