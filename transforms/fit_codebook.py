"""FitCodebook: k-means at corpus scale, each Lloyd iteration one distributed Beam combine.

Graph (``I`` = ``iterations``, all unrolled into ONE pipeline)::

    features ─► SampleRows (n distinct rows, smallest seeded hash) ─► KMeansPlusPlus ─► centroids_0
    features ─► Iteration0 (CombineGlobally, side input centroids_0) ─► Update0 ─► centroids_1
    ...
    features ─► FinalStats (CombineGlobally, side input centroids_I) ─► Fitted ─► [SaveCodebook]

Why unrolled rather than one pipeline run per iteration: the features are computed once and
every iteration is a full pass over them inside the same job (no re-decoding of media, one
submission, one set of worker start-ups), and the graph stays static. The cost is that the
iteration count is fixed before launch (no early stop); the per-iteration inertia is recorded
in the metadata so convergence can be checked.

Determinism: the sample is chosen by a seeded hash of each row's bytes (not by arrival order),
k-means++ runs on that sample with a seeded RNG, and the combine statistics are exact integers
(``operators.tokenizers.codebooks.LloydStats``), so the codebook is bit-identical across runs, runners and
worker counts.
"""

from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

import apache_beam as beam
import numpy as np

from operators.tokenizers import codebooks as cb


NO_ROWS = "FitCodebook got no feature rows: nothing to fit"


class _SmallestHashRows(beam.DoFn):
    """Per batch, the ``n`` rows with the smallest seeded hash, as ``(hash, row bytes)``."""

    def __init__(self, n: int, seed: int):
        self._n = n
        self._seed = seed

    def process(self, batch: np.ndarray) -> Iterator[Tuple[int, bytes]]:
        x = np.ascontiguousarray(batch, dtype=np.float32)
        if x.ndim != 2 or len(x) == 0:
            return
        h = cb.row_hashes(x, self._seed)
        picked = sorted({(int(h[i]), x[i].tobytes()) for i in np.argsort(h, kind="stable")[: 4 * self._n]})
        yield from picked[: self._n]


class _SmallestDistinct(beam.CombineFn):
    """The ``n`` smallest DISTINCT ``(hash, row bytes)`` pairs (duplicates must not fill the sample)."""

    def __init__(self, n: int):
        self._n = n

    def create_accumulator(self) -> List[Tuple[int, bytes]]:
        return []

    def add_input(self, acc, item):
        return self.merge_accumulators([acc, [item]])

    def add_inputs(self, acc, items):
        return self.merge_accumulators([acc, list(items)])

    def merge_accumulators(self, accs):
        return sorted(set().union(*map(set, accs)))[: self._n]

    def extract_output(self, acc):
        return acc


class _Init(beam.DoFn):
    """Sample rows → (sample, k-means++ centroids, fixed-point scale)."""

    def __init__(self, k: int, seed: int):
        self._k = k
        self._seed = seed

    def process(self, picked: List[Tuple[int, bytes]]) -> Iterator[Dict[str, Any]]:
        if not picked:
            raise ValueError(NO_ROWS)
        sample = np.stack([np.frombuffer(b, np.float32) for _, b in sorted(picked)])
        yield {
            "sample": sample,
            "centroids": cb.kmeans_plus_plus(sample, self._k, self._seed),
            "scale": cb.fixed_point_scale(sample),
            "reseeded": 0,
        }


class _StatsFn(beam.CombineFn):
    """Exact Lloyd statistics of all batches against the state's centroids (a side input)."""

    def create_accumulator(self, state=None) -> Optional[cb.LloydStats]:
        return None

    def add_input(self, acc, batch: np.ndarray, state) -> cb.LloydStats:
        packed = self._packed(state)
        stats = cb.batch_stats(batch, packed, state["scale"])
        return stats if acc is None else cb.merge_stats(acc, stats)

    def merge_accumulators(self, accs: Iterable, state=None):
        out = None
        for acc in accs:
            if acc is not None:
                out = acc if out is None else cb.merge_stats(out, acc)
        return out

    def extract_output(self, acc, state) -> cb.LloydStats:
        k, dim = state["centroids"].shape
        return cb.empty_stats(k, dim) if acc is None else acc

    def _packed(self, state) -> cb.PackedCodebook:
        key = id(state["centroids"])
        if getattr(self, "_packed_key", None) != key:
            self._packed_value = cb.PackedCodebook(state["centroids"])
            self._packed_key = key
        return self._packed_value


def _update(stats: cb.LloydStats, state: Dict[str, Any]) -> Dict[str, Any]:
    centroids, reseeded = cb.lloyd_update(state["centroids"], stats, state["scale"], state["sample"])
    history = state.get("history", ()) + (cb.inertia_value(stats, state["scale"]),)
    return {**state, "centroids": centroids, "reseeded": state["reseeded"] + reseeded,
            "history": history}


def _finish(stats: cb.LloydStats, state: Dict[str, Any], iterations: int) -> cb.Fitted:
    inertia = cb.inertia_value(stats, state["scale"])
    return cb.Fitted(
        codebook=state["centroids"],
        counts=stats.counts,
        inertia=inertia,
        inertia_history=tuple(state.get("history", ())) + (inertia,),
        iterations=iterations,
        rows=stats.rows,
        reseeded=state["reseeded"],
        scale=state["scale"],
    )


class _Save(beam.DoFn):
    def __init__(self, directory: str, spec: Dict[str, Any], name: str):
        self._directory = directory
        self._spec = spec
        self._name = name

    def process(self, fitted: cb.Fitted) -> Iterator[cb.Fitted]:
        cb.save_codebook(self._directory, fitted, self._spec, self._name)
        yield fitted


class FitCodebook(beam.PTransform):
    """Fits a ``K``-centroid codebook to a PCollection of ``[n, D]`` float32 feature batches.

    Output: a PCollection with one ``operators.tokenizers.codebooks.Fitted``.

    Args:
        k: Codebook size.
        iterations: Lloyd iterations (each one combine over all features).
        seed: Seeds the sample hash and k-means++.
        sample_size: Rows used for k-means++ and empty-cluster re-seeding.
        output_dir: If set, ``<name>.npy`` and ``<name>.json`` are written there.
        feature_spec: What the features are (recorded in the JSON).
        name: File stem of the saved codebook.
    """

    def __init__(
        self,
        k: int,
        iterations: int = 10,
        seed: int = 0,
        sample_size: int = 20000,
        output_dir: Optional[str] = None,
        feature_spec: Optional[Dict[str, Any]] = None,
        name: str = "codebook",
    ):
        super().__init__()
        if k < 1 or iterations < 0 or sample_size < k:
            raise ValueError(f"need k >= 1, iterations >= 0 and sample_size >= k; got k={k}, "
                             f"iterations={iterations}, sample_size={sample_size}")
        self._k = k
        self._iterations = iterations
        self._seed = seed
        self._sample_size = sample_size
        self._output_dir = output_dir
        self._spec = dict(feature_spec or {})
        self._name = name

    def expand(self, features):
        state = (
            features
            | "SampleRows" >> beam.ParDo(_SmallestHashRows(self._sample_size, self._seed))
            | "SmallestHashes" >> beam.CombineGlobally(_SmallestDistinct(self._sample_size))
            | "KMeansPlusPlus" >> beam.ParDo(_Init(self._k, self._seed))
        )
        for i in range(self._iterations):
            stats = features | f"Iteration{i}" >> beam.CombineGlobally(
                _StatsFn(), beam.pvalue.AsSingleton(state)
            ).without_defaults()
            state = stats | f"Update{i}" >> beam.Map(_update, beam.pvalue.AsSingleton(state))
        final = features | "FinalStats" >> beam.CombineGlobally(
            _StatsFn(), beam.pvalue.AsSingleton(state)
        ).without_defaults()
        fitted = final | "Fitted" >> beam.Map(_finish, beam.pvalue.AsSingleton(state), self._iterations)
        if self._output_dir:
            fitted = fitted | "SaveCodebook" >> beam.ParDo(_Save(self._output_dir, self._spec, self._name))
        return fitted


class _MeansFn(beam.CombineFn):
    """Per-centroid fixed-point sums of payload rows, grouped by the features' nearest centroid."""

    def __init__(self, scale: float):
        self._scale = scale

    def create_accumulator(self, fitted=None):
        return None

    def add_input(self, acc, pair: Tuple[np.ndarray, np.ndarray], fitted: cb.Fitted):
        feats, payload = pair
        k = fitted.codebook.shape[0]
        idx, _ = cb.nearest_centroid(feats, fitted.codebook)
        sums, counts = cb.update_sums(payload, idx, k, self._scale)
        return (sums, counts) if acc is None else (acc[0] + sums, acc[1] + counts)

    def merge_accumulators(self, accs, fitted=None):
        out = None
        for acc in accs:
            if acc is not None:
                out = acc if out is None else (out[0] + acc[0], out[1] + acc[1])
        return out

    def extract_output(self, acc, fitted: cb.Fitted) -> np.ndarray:
        if acc is None:
            raise ValueError("CentroidMeans got no rows")
        sums, counts = acc
        return (sums / self._scale / np.maximum(counts, 1)[:, None]).astype(np.float32)


class CentroidMeans(beam.PTransform):
    """``[K, P]`` mean payload per centroid of a fitted codebook (exact, order independent).

    Input: ``(features [n, D], payload [n, P])`` pairs; side input: a ``Fitted`` PCollection.
    Used e.g. to learn what mel patch each semantic centroid stands for. Centroids without
    members get zeros.

    Args:
        fitted: Singleton PCollection of ``operators.tokenizers.codebooks.Fitted``.
        scale: Fixed-point scale of the payload sums (payloads with ``|x|·scale < 2**40``).
    """

    def __init__(self, fitted, scale: float = 2.0**16):
        super().__init__()
        self._fitted = fitted
        self._scale = scale

    def expand(self, pairs):
        return pairs | "SumPerCentroid" >> beam.CombineGlobally(
            _MeansFn(self._scale), beam.pvalue.AsSingleton(self._fitted)
        ).without_defaults()
