"""Pure k-means pieces behind ``transforms.fit_codebook.FitCodebook`` (no Beam here).

The distributed fit is: a deterministic sample (rows with the smallest seeded hash), k-means++
on that sample, then Lloyd iterations whose statistics (fixed-point per-centroid sums, counts
and inertia) are exact integers, so merging partial statistics in any order, on any number of
workers, gives bit-identical centroids.
"""

import hashlib
import json
import os
from typing import Any, Dict, NamedTuple, Optional, Tuple

import numpy as np

from operators.kernels import kmeans, nearest
from operators.tokenizers.model_folder import atomic_write

INERTIA_BITS = 24

# The kernels transforms/ and pipelines/ need (only operators/ imports operators.kernels).
PackedCodebook = nearest.PackedCodebook
nearest_centroid = nearest.nearest
fixed_point_scale = kmeans.fixed_point_scale
update_sums = kmeans.update_sums


class LloydStats(NamedTuple):
    """Mergeable statistics of one Lloyd iteration.

    Attributes:
        sums: ``[K, D]`` int64 feature sums in units of ``1 / scale``.
        counts: ``[K]`` int64 members per centroid.
        inertia: Sum of squared distances in units of ``2**INERTIA_BITS / scale**2`` (exact int).
        rows: Rows seen.
    """

    sums: np.ndarray
    counts: np.ndarray
    inertia: int
    rows: int


class Fitted(NamedTuple):
    """A fitted codebook and how it got there."""

    codebook: np.ndarray
    counts: np.ndarray
    inertia: float
    inertia_history: Tuple[float, ...]
    iterations: int
    rows: int
    reseeded: int
    scale: float


def row_hashes(x: np.ndarray, seed: int) -> np.ndarray:
    """A seeded 63-bit hash of every row's bytes: the same row always gets the same value."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    key = seed.to_bytes(8, "little", signed=False)
    out = np.empty(len(x), np.int64)
    for i, row in enumerate(x):
        digest = hashlib.blake2b(row.tobytes(), digest_size=8, key=key).digest()
        out[i] = int.from_bytes(digest, "little") >> 1
    return out


def kmeans_plus_plus(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means++ seeding (D² sampling) of ``k`` centroids from ``sample`` with a seeded RNG.

    When the sample has fewer distinct rows than ``k``, the remaining centroids repeat chosen
    rows (they become empty clusters and are re-seeded, or stay duplicates).
    """
    x = np.ascontiguousarray(sample, dtype=np.float32)
    if len(x) == 0:
        raise ValueError("cannot seed a codebook from an empty sample")
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(x)))]
    best = ((x - x[chosen[0]]) ** 2).sum(1, dtype=np.float64)
    for _ in range(1, k):
        total = best.sum()
        if total <= 0:
            nxt = int(rng.integers(len(x)))
        else:
            nxt = int(np.searchsorted(np.cumsum(best), rng.random() * total, side="right"))
            nxt = min(nxt, len(x) - 1)
        chosen.append(nxt)
        best = np.minimum(best, ((x - x[nxt]) ** 2).sum(1, dtype=np.float64))
    return x[chosen].copy()


def empty_stats(k: int, dim: int) -> LloydStats:
    """The zero element of ``merge_stats``."""
    return LloydStats(np.zeros((k, dim), np.int64), np.zeros(k, np.int64), 0, 0)


def batch_stats(x: np.ndarray, packed: nearest.PackedCodebook, scale: float) -> LloydStats:
    """Assigns a batch to its nearest centroids and returns its exact statistics."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    k, dim = packed.codebook.shape
    if x.ndim != 2 or x.shape[1] != dim:
        raise ValueError(f"features must be [N, {dim}], got shape {x.shape}")
    if len(x) == 0:
        return empty_stats(k, dim)
    idx, dist = nearest.assign(x, packed)
    sums, counts = kmeans.update_sums(x, idx, k, scale)
    units = np.floor(dist.astype(np.float64) * (scale * scale / 2.0**INERTIA_BITS) + 0.5)
    return LloydStats(sums, counts, int(units.astype(np.int64).sum()), len(x))


def merge_stats(a: LloydStats, b: LloydStats) -> LloydStats:
    """Adds two statistics (exact, so associative and commutative)."""
    return LloydStats(a.sums + b.sums, a.counts + b.counts, a.inertia + b.inertia, a.rows + b.rows)


def inertia_value(stats: LloydStats, scale: float) -> float:
    """Mean squared distance per row, back in feature units."""
    return float(stats.inertia) * 2.0**INERTIA_BITS / (scale * scale) / max(stats.rows, 1)


def lloyd_update(
    previous: np.ndarray, stats: LloydStats, scale: float, sample: np.ndarray
) -> Tuple[np.ndarray, int]:
    """New centroids = member means; empty clusters are re-seeded deterministically.

    Farthest-point re-seeding: each empty cluster in turn takes the sample row farthest from
    all non-empty centroids and from the rows already taken (first row on ties), which splits
    the worst-served regions and never picks the same point twice. If the sample has no row
    left at a positive distance, the remaining clusters keep their old centroids.
    Returns ``(centroids, number re-seeded)``.
    """
    counts = stats.counts
    new = previous.astype(np.float32).copy()
    full = counts > 0
    new[full] = (stats.sums[full] / scale / counts[full, None]).astype(np.float32)
    empty = np.flatnonzero(~full)
    reseeded = 0
    if len(empty) and full.any():
        x = np.asarray(sample, np.float32)
        dist = nearest.assign(x, new[full])[1].astype(np.float64)
        for j in empty:
            row = int(np.argmax(dist))
            if dist[row] <= 0:
                break
            new[j] = x[row]
            reseeded += 1
            dist = np.minimum(dist, ((x - x[row]) ** 2).sum(1, dtype=np.float64))
    return new, reseeded


def save_codebook(directory: str, fitted: Fitted, spec: Dict[str, Any], name: str = "codebook") -> str:
    """Writes ``<name>.npy`` and ``<name>.json`` (spec, K, iterations, inertia) atomically."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, f"{name}.npy")
    atomic_write(path, lambda f: np.save(f, fitted.codebook.astype(np.float32)))
    meta = {
        "feature_spec": spec,
        "codebook_size": int(fitted.codebook.shape[0]),
        "dim": int(fitted.codebook.shape[1]),
        "iterations": fitted.iterations,
        "inertia": fitted.inertia,
        "inertia_history": list(fitted.inertia_history),
        "rows": fitted.rows,
        "reseeded_empty_clusters": fitted.reseeded,
        "cluster_sizes": [int(c) for c in fitted.counts],
        "sha256": hashlib.sha256(fitted.codebook.astype(np.float32).tobytes()).hexdigest(),
    }
    atomic_write(os.path.join(directory, f"{name}.json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return path


def load_codebook(directory: str, name: str = "codebook") -> Tuple[np.ndarray, Optional[Dict[str, Any]]]:
    """Reads what ``save_codebook`` wrote (the JSON is optional)."""
    codebook = np.load(os.path.join(directory, f"{name}.npy"), allow_pickle=False)
    meta_path = os.path.join(directory, f"{name}.json")
    if not os.path.exists(meta_path):
        return codebook.astype(np.float32), None
    with open(meta_path) as f:
        return codebook.astype(np.float32), json.load(f)

