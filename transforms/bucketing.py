"""Length-bucketed batching for variable-length media (audio clips, videos, token streams).

A model batch is padded to its longest item, so batching a 1 s clip with a 30 s clip
computes 29 s of padding. :class:`BucketedBatchElements` groups items of similar length
and caps each batch by its *padded* size (``len(batch) * longest``), which is what the
model's compute and memory really cost, and by its padding fraction; :class:`MeasurePadding` reports the padding
fraction as Beam metrics so it can be compared against plain ``beam.BatchElements`` (which
batches by count only; its ``length_fn``/``bucket_boundaries`` apply only to its stateful
mode, and ``SortAndBatchElements`` caps the *sum* of sizes, not the padded size).

Batching is per bundle and per window: items are held in per-bucket buffers; a bucket's
batch is emitted as soon as the next item would push it over a cap (bounded memory on
long bundles), and at the end of the bundle all leftovers are sorted together and cut, so
few small batches remain. No shuffle is added, so the step fuses with its neighbours.

:class:`BucketedRunInference` puts any RunInference ``ModelHandler`` behind this batching:
the handler sees exactly the bucketed batches (through :class:`PreBatchedModelHandler`).
"""

import bisect
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.utils.windowed_value import WindowedValue

NAMESPACE = "Bucketing"


def geometric_boundaries(min_length: int, max_length: int, ratio: float = 1.25) -> List[int]:
    """Bucket upper edges growing by ``ratio`` from ``min_length`` to ``max_length``.

    With ratio ``r`` the padding inside one full bucket is below ``1 - 1/r`` (20 % for 1.25).
    """
    if min_length < 1 or max_length < min_length or ratio <= 1:
        raise ValueError("need 1 <= min_length <= max_length and ratio > 1")
    edges = [int(min_length)]
    while edges[-1] < max_length:
        edges.append(max(edges[-1] + 1, int(round(edges[-1] * ratio))))
    return edges


def fits(
    batch: Sequence[Tuple[int, Any]], length: int, max_batch_samples: int, max_batch_size: int,
    max_padding: float,
) -> bool:
    """Whether an item of ``length`` may join ``batch`` (``(length, item)`` pairs): the batch
    stays within ``max_batch_size`` items, ``max_batch_samples`` padded samples and a
    ``max_padding`` fraction of padding. Anything fits an empty batch."""
    if not batch:
        return True
    lengths = [n for n, _ in batch] + [length]
    real, padded = padding_stats(lengths)
    return len(lengths) <= max_batch_size and padded <= max_batch_samples and real >= (1 - max_padding) * padded


def cut_sorted(
    items: Sequence[Tuple[int, Any]], max_batch_samples: int, max_batch_size: int, max_padding: float = 1.0
) -> List[List[Tuple[int, Any]]]:
    """Cuts ``(length, item)`` pairs sorted by length into consecutive batches within the
    caps of :func:`fits`; an item longer than ``max_batch_samples`` gets a batch of its own."""
    batches: List[List[Tuple[int, Any]]] = []
    batch: List[Tuple[int, Any]] = []
    for length, item in items:
        if not fits(batch, length, max_batch_samples, max_batch_size, max_padding):
            batches.append(batch)
            batch = []
        batch.append((length, item))
    if batch:
        batches.append(batch)
    return batches


def padding_stats(lengths: Sequence[int]) -> Tuple[int, int]:
    """``(real, padded)`` sample counts of one batch padded to its longest item."""
    return int(sum(lengths)), int(len(lengths) * max(lengths, default=0))


class _BucketBatchFn(beam.DoFn):
    """Buffers items per (window, bucket); see the module docstring for the policy."""

    def __init__(
        self, length_fn: Callable[[Any], int], boundaries: Sequence[int], max_batch_samples: int,
        max_batch_size: int, max_padding: float,
    ):
        self._length_fn = length_fn
        self._boundaries = list(boundaries)
        self._caps = (max_batch_samples, max_batch_size, max_padding)
        self._buffers: Dict[Tuple[Any, int], List[Tuple[int, Any]]] = {}

    def start_bundle(self) -> None:
        self._buffers = {}

    def process(self, item: Any, window=beam.DoFn.WindowParam):
        length = int(self._length_fn(item))
        slot = (window, bisect.bisect_left(self._boundaries, length))
        buffer = self._buffers.setdefault(slot, [])
        if not fits(buffer, length, *self._caps):
            yield self._emit(window, buffer)
            buffer = self._buffers[slot] = []
        buffer.append((length, item))

    def finish_bundle(self):
        by_window: Dict[Any, List[Tuple[int, Any]]] = {}
        for (window, _), buffer in self._buffers.items():
            by_window.setdefault(window, []).extend(buffer)
        self._buffers = {}
        for window, leftovers in by_window.items():
            leftovers.sort(key=lambda pair: pair[0])
            for batch in cut_sorted(leftovers, *self._caps):
                yield self._emit(window, batch)

    @staticmethod
    def _emit(window: Any, batch: List[Tuple[int, Any]]) -> WindowedValue:
        return WindowedValue([item for _, item in batch], window.max_timestamp(), (window,))


class MeasurePadding(beam.DoFn):
    """Passes batches through unchanged and reports their padding as Beam metrics.

    Counters ``<namespace>/real_samples`` and ``<namespace>/padded_samples`` (padding
    fraction = 1 - real / padded), ``<namespace>/batches``, and distributions
    ``<namespace>/batch_size`` and ``<namespace>/padding_permille`` (per batch).

    Args:
        length_fn: Length of one item in samples (frames, seconds × rate, tokens ...).
        namespace: Metric namespace, so several batching steps can be told apart.
    """

    def __init__(self, length_fn: Callable[[Any], int], namespace: str = NAMESPACE):
        self._length_fn = length_fn
        self._real = beam.metrics.Metrics.counter(namespace, "real_samples")
        self._padded = beam.metrics.Metrics.counter(namespace, "padded_samples")
        self._batches = beam.metrics.Metrics.counter(namespace, "batches")
        self._sizes = beam.metrics.Metrics.distribution(namespace, "batch_size")
        self._permille = beam.metrics.Metrics.distribution(namespace, "padding_permille")

    def process(self, batch: List[Any]) -> Iterator[List[Any]]:
        real, padded = padding_stats([int(self._length_fn(item)) for item in batch])
        self._real.inc(real)
        self._padded.inc(padded)
        self._batches.inc()
        self._sizes.update(len(batch))
        if padded:
            self._permille.update(int(round(1000 * (padded - real) / padded)))
        yield batch


class BucketedBatchElements(beam.PTransform):
    """Batches variable-length items into batches of similar length, capped by padded size.

    Output: lists of items. Every input item is in exactly one batch (order inside a batch
    is by length). Padding is reported through :class:`MeasurePadding` under ``namespace``.

    Args:
        length_fn: Picklable function giving an item's length in samples.
        max_batch_samples: Cap on ``len(batch) * longest item`` (longer items go alone).
        boundaries: Sorted bucket upper edges in samples; default: geometric edges
            (ratio 1.25) from ``max_batch_samples / 1024`` to ``max_batch_samples``.
        max_batch_size: Cap on items per batch.
        max_padding: Cap on the padding fraction of a batch (of two or more items): more
            small batches against less padding.
        namespace: Metric namespace for the padding metrics.
    """

    def __init__(
        self, length_fn: Callable[[Any], int], max_batch_samples: int,
        boundaries: Optional[Sequence[int]] = None, max_batch_size: int = 256,
        max_padding: float = 0.2, namespace: str = NAMESPACE,
    ):
        super().__init__()
        if max_batch_samples < 1 or max_batch_size < 1 or not 0 <= max_padding <= 1:
            raise ValueError("max_batch_samples and max_batch_size must be at least 1, max_padding in [0, 1]")
        if boundaries is None:
            boundaries = geometric_boundaries(max(1, max_batch_samples // 1024), max_batch_samples)
        if list(boundaries) != sorted(boundaries):
            raise ValueError(f"bucket boundaries must be sorted, got {list(boundaries)}")
        self._fn = _BucketBatchFn(length_fn, boundaries, max_batch_samples, max_batch_size, max_padding)
        self._measure = MeasurePadding(length_fn, namespace)

    def expand(self, items):
        return (
            items
            | "BatchByBucket" >> beam.ParDo(self._fn)
            | "MeasurePadding" >> beam.ParDo(self._measure)
        )


class PreBatchedModelHandler(ModelHandler):
    """Adapts a ``ModelHandler`` to inputs that are already batches (lists of items).

    RunInference then hands each pre-made batch to the wrapped handler as one
    ``run_inference`` call and outputs the list of its results.

    Args:
        handler: The wrapped handler (its model, loading and metrics namespace are kept).
    """

    def __init__(self, handler: ModelHandler):
        super().__init__()
        self._handler = handler

    def load_model(self) -> Any:
        return self._handler.load_model()

    def run_inference(self, batches: Sequence[List[Any]], model: Any, inference_args=None) -> List[List[Any]]:
        return [list(self._handler.run_inference(batch, model, inference_args)) for batch in batches]

    def batch_elements_kwargs(self) -> Dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": 1}

    def get_num_bytes(self, batches: Sequence[List[Any]]) -> int:
        return sum(self._handler.get_num_bytes(batch) for batch in batches)

    def get_metrics_namespace(self) -> str:
        return self._handler.get_metrics_namespace()

    def share_model_across_processes(self) -> bool:
        return self._handler.share_model_across_processes()


class BucketedRunInference(beam.PTransform):
    """``RunInference`` over length-bucketed batches: items in, the handler's results out.

    Args:
        handler: Any RunInference ``ModelHandler`` over single items.
        length_fn: Picklable item → length in samples.
        max_batch_samples: Cap on the padded size of one batch (see
            :class:`BucketedBatchElements`).
        boundaries: Bucket upper edges (default: geometric).
        max_batch_size: Cap on items per batch (default: the handler's ``max_batch_size``).
        max_padding: Cap on a batch's padding fraction.
        namespace: Metric namespace of the padding metrics.
    """

    def __init__(
        self, handler: ModelHandler, length_fn: Callable[[Any], int], max_batch_samples: int,
        boundaries: Optional[Sequence[int]] = None, max_batch_size: Optional[int] = None,
        max_padding: float = 0.2, namespace: str = NAMESPACE,
    ):
        super().__init__()
        size = max_batch_size or handler.batch_elements_kwargs().get("max_batch_size", 256)
        self._batch = BucketedBatchElements(length_fn, max_batch_samples, boundaries, size, max_padding, namespace)
        self._handler = PreBatchedModelHandler(handler)

    def expand(self, items):
        return (
            items
            | "BucketedBatches" >> self._batch
            | "RunInference" >> RunInference(self._handler)
            | "UnbatchResults" >> beam.FlatMap(list)
        )
