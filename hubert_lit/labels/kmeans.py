"""k-means on FAISS: seeded greedy k-means++ initialisation, Lloyd iterations ending on every fit point, assignment.

fairseq's ``learn_kmeans.py`` uses scikit-learn's ``MiniBatchKMeans`` (k-means++, 20 inits). Here the
initialisation is greedy k-means++ (as scikit-learn's ``kmeans_plusplus``: ``2 + ln k`` candidates per step,
the one that lowers the potential most wins) on a seeded subsample of the fit data, followed by full-batch Lloyd
iterations with ``faiss.Kmeans`` (first to convergence on a subsample when the fit data is large, then on all of
it), whose ``max_points_per_centroid`` is raised so FAISS never silently subsamples the fit data (its default
keeps only ``256 * k`` points). FAISS runs on GPUs when the installed build has them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import faiss
import numpy as np

ASSIGN_BATCH = 65536


def faiss_num_gpus() -> int:
    """Number of GPUs the installed FAISS build can use (0 for faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def _as_points(x: np.ndarray, name: str = "points") -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: expected a non-empty (n, d) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


def _sq_dists(x: np.ndarray, x_sq: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances ``(n, m)`` from points ``x`` (with squared norms ``x_sq``) to centres ``c``."""
    d = x_sq[:, None] - 2.0 * (x @ c.T) + np.einsum("ij,ij->i", c, c)[None, :]
    return np.maximum(d, 0.0, out=d)


def kmeans_plusplus(x: np.ndarray, k: int, seed: int, n_local_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ seeding: ``k`` rows of ``x`` chosen with D^2 sampling; ``(k, d)`` float32.

    Each step draws ``n_local_trials`` (default ``2 + floor(ln k)``) candidates with probability proportional to
    the squared distance to the nearest chosen centre and keeps the one that lowers the total potential most.
    """
    x = _as_points(x)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means++ needs 1 <= k <= number of points, got k={k} for {n} points")
    trials = n_local_trials if n_local_trials is not None else 2 + int(math.log(k))
    rng = np.random.default_rng(seed)
    x_sq = np.einsum("ij,ij->i", x, x)
    chosen = [int(rng.integers(n))]
    closest = _sq_dists(x, x_sq, x[chosen])[:, 0].astype(np.float64)
    for _ in range(1, k):
        cumulative = np.cumsum(closest)
        potential = cumulative[-1]
        if potential <= 0:  # every point already coincides with a centre: fall back to unused points
            unused = np.setdiff1d(np.arange(n), chosen)
            chosen.append(int(rng.choice(unused)))
            continue
        candidates = np.searchsorted(cumulative, rng.random(trials) * potential, side="right")
        candidates = np.minimum(candidates, n - 1)
        cand_d = np.minimum(closest[:, None], _sq_dists(x, x_sq, x[candidates]))
        best = int(np.argmin(cand_d.sum(axis=0)))
        chosen.append(int(candidates[best]))
        closest = cand_d[:, best]
    return x[chosen].copy()


@dataclass(frozen=True)
class KMeansResult:
    """Fitted centroids and the mean squared distance of the fit points to their nearest centroid."""

    centroids: np.ndarray  # (k, d) float32
    inertia: float  # per point
    iterations: int  # Lloyd iterations on all points
    coarse_iterations: int  # Lloyd iterations on the coarse subsample (0: no coarse stage)
    restart: int  # index of the restart that won


def _lloyd(
    x: np.ndarray, init: np.ndarray, seed: int, max_iter: int, tol: float, check_every: int, use_gpu: bool
) -> tuple[np.ndarray, int]:
    """Full-batch Lloyd iterations from ``init`` until the objective improves by less than ``tol`` (relative)."""
    n, d = x.shape
    k = init.shape[0]
    centroids = init
    previous = math.inf
    done = 0
    while done < max_iter:
        step = min(check_every, max_iter - done)
        km = faiss.Kmeans(
            d,
            k,
            niter=step,
            seed=seed + done,
            max_points_per_centroid=n // k + 1,  # never subsample the fit data
            min_points_per_centroid=1,
            gpu=use_gpu,
            verbose=False,
        )
        km.train(x, init_centroids=centroids)
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
        done += step
        objective = float(km.obj[-1])
        if math.isfinite(previous) and previous - objective <= tol * previous:
            break
        previous = objective
    return centroids, done


class Assigner:
    """Nearest-centroid search (exact L2) with a FAISS flat index, on the GPUs when FAISS has them."""

    def __init__(self, centroids: np.ndarray, use_gpu: bool | None = None, gpu_device: int = 0) -> None:
        """``gpu_device``: which GPU (modulo the number of GPUs) holds the index, e.g. the process's local rank."""
        self.centroids = _as_points(centroids, "centroids")
        index = faiss.IndexFlatL2(self.centroids.shape[1])
        index.add(self.centroids)
        if use_gpu is None:
            use_gpu = faiss_num_gpus() > 0
        self.index = index
        if use_gpu:
            self._gpu_resources = faiss.StandardGpuResources()  # must outlive the GPU index
            self.index = faiss.index_cpu_to_gpu(self._gpu_resources, gpu_device % faiss_num_gpus(), index)

    @property
    def num_classes(self) -> int:
        return self.centroids.shape[0]

    def search(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest centroid (int64) and squared distance (float32) of every row of ``x``."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.centroids.shape[1]:
            raise ValueError(f"expected (n, {self.centroids.shape[1]}) features, got shape {x.shape}")
        if x.shape[0] == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        dist, idx = self.index.search(x, 1)
        return idx[:, 0].astype(np.int64), dist[:, 0]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.search(x)[0]

    def inertia(self, x: np.ndarray) -> float:
        """Mean squared distance of the rows of ``x`` to their nearest centroid (float64 accumulation)."""
        total = 0.0
        for start in range(0, x.shape[0], ASSIGN_BATCH):
            total += float(self.search(x[start : start + ASSIGN_BATCH])[1].astype(np.float64).sum())
        return total / x.shape[0]


def fit_kmeans(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    max_iter: int = 100,
    tol: float = 1e-4,
    check_every: int = 5,
    n_init: int = 1,
    init_size: int = 30_000,
    coarse_size: int = 50_000,
    use_gpu: bool | None = None,
) -> KMeansResult:
    """Fit ``k`` centroids to the rows of ``x``: k-means++ on a seeded subsample, then Lloyd ending on all of ``x``.

    ``init_size`` points (all of them if fewer) are used for the k-means++ seeding. When ``x`` has more than twice
    ``max(coarse_size, 100 * k)`` points, Lloyd first converges on a seeded subsample of that size (cheap), then
    refines on every point of ``x`` (checking every 2 iterations); otherwise it runs on all of ``x`` from the
    start. Each stage stops after ``max_iter`` iterations or when ``check_every`` iterations lower the objective
    by less than ``tol`` (relative). ``n_init`` restarts with seeds ``seed, seed + 1, ...`` keep the one with the
    lowest inertia. Deterministic for a given input, seed and thread count; ``coarse_size=0`` disables the
    coarse stage.
    """
    x = _as_points(x, "fit sample")
    n = x.shape[0]
    if k < 1 or k > n:
        raise ValueError(f"cannot fit {k} clusters to {n} points (need 1 <= k <= number of points)")
    if n_init < 1 or max_iter < 1 or check_every < 1:
        raise ValueError("n_init, max_iter and check_every must be >= 1")
    if use_gpu is None:
        use_gpu = faiss_num_gpus() > 0
    coarse_points = max(coarse_size, 100 * k) if coarse_size > 0 else 0
    best: KMeansResult | None = None
    for restart in range(n_init):
        run_seed = seed + restart
        rng = np.random.default_rng(run_seed)
        sub = x if n <= init_size else x[np.sort(rng.choice(n, size=max(init_size, k), replace=False))]
        centroids = kmeans_plusplus(sub, k, seed=run_seed)
        coarse_iterations, refine_every = 0, check_every
        if coarse_points and n > 2 * coarse_points:
            coarse = x[np.sort(rng.choice(n, size=coarse_points, replace=False))]
            centroids, coarse_iterations = _lloyd(
                coarse, centroids, run_seed, max_iter, tol, check_every, use_gpu
            )
            del coarse
            refine_every = min(2, check_every)
        centroids, iterations = _lloyd(x, centroids, run_seed, max_iter, tol, refine_every, use_gpu)
        inertia = Assigner(centroids, use_gpu=use_gpu).inertia(x)
        if best is None or inertia < best.inertia:
            best = KMeansResult(centroids, inertia, iterations, coarse_iterations, restart)
    assert best is not None
    return best
