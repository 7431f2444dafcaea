"""Length-bucketed batching: every item once, caps held, less padding than BatchElements."""

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from transforms.bucketing import (
    BucketedBatchElements,
    BucketedRunInference,
    MeasurePadding,
    cut_sorted,
    geometric_boundaries,
    padding_stats,
)

CAP = 64_000


def clip_length(item) -> int:
    """Items are ``(key, num_samples)``: the length is the sample count."""
    return item[1]


def batch_keys(batch):
    return [key for key, _ in batch]


def check_batch_caps(batch):
    lengths = [n for _, n in batch]
    real, padded = padding_stats(lengths)
    if len(batch) > 1 and padded > CAP:
        raise AssertionError(f"batch of {len(batch)} pads to {padded} > {CAP}")
    return len(batch)


def _lengths(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [int(v) for v in rng.integers(800, 16_000, n)]  # 0.05-1 s at 16 kHz


def test_geometric_boundaries_grow_by_ratio_and_cover_range():
    edges = geometric_boundaries(100, 10_000, ratio=1.5)
    assert edges[0] == 100 and edges[-1] >= 10_000
    ratios = np.array(edges[1:]) / np.array(edges[:-1])
    assert np.all(ratios <= 1.5 + 1e-2) and np.all(ratios > 1)
    with pytest.raises(ValueError):
        geometric_boundaries(10, 5)


@pytest.mark.parametrize("max_padding", [1.0, 0.1])
def test_cut_sorted_keeps_every_item_and_caps_padded_size(max_padding):
    lengths = sorted(_lengths(200) + [CAP * 2])  # one item longer than the cap
    pairs = [(n, i) for i, n in enumerate(lengths)]
    batches = cut_sorted(pairs, CAP, max_batch_size=16, max_padding=max_padding)
    assert sorted(i for b in batches for _, i in b) == list(range(len(lengths)))
    for batch in batches:
        real, padded = padding_stats([n for n, _ in batch])
        assert len(batch) <= 16
        assert len(batch) == 1 or (padded <= CAP and real >= (1 - max_padding) * padded)


def _run_batching(items, bucketed: bool):
    pipeline = beam.Pipeline(runner=FnApiRunner())
    pcoll = pipeline | "Create" >> beam.Create(items)
    if bucketed:
        batches = pcoll | "Bucketed" >> BucketedBatchElements(clip_length, CAP, max_batch_size=64)
    else:
        batches = (
            pcoll
            | "Plain" >> beam.BatchElements(min_batch_size=4, max_batch_size=4)  # 4 x longest fits CAP
            | "MeasurePlain" >> beam.ParDo(MeasurePadding(clip_length))
        )
    keys = batches | "Keys" >> beam.FlatMap(batch_keys)
    assert_that(keys, equal_to([k for k, _ in items]), label="EveryItemOnce")
    sizes = batches | "Caps" >> beam.Map(check_batch_caps)
    assert_that(sizes | "Count" >> beam.combiners.Count.Globally(), lambda n: n and n[0] > 0, label="SomeBatches")
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        r.key.metric.name: r.committed
        for r in result.metrics().query(MetricsFilter().with_namespace("Bucketing"))["counters"]
    }
    return 1 - counters["real_samples"] / counters["padded_samples"], counters


def test_bucketed_batches_pad_less_than_plain_batch_elements():
    items = [(f"clip{i:04d}", n) for i, n in enumerate(_lengths(300, seed=1))]
    bucketed_padding, counters = _run_batching(items, bucketed=True)
    plain_padding, _ = _run_batching(items, bucketed=False)
    assert counters["real_samples"] == sum(n for _, n in items)
    assert bucketed_padding < 0.1, bucketed_padding
    assert bucketed_padding < plain_padding / 3, (bucketed_padding, plain_padding)


def _window_of_batch(batch, win=beam.DoFn.WindowParam):
    return (int(win.start), sorted(batch_keys(batch)))


def test_batches_never_mix_windows():
    items = [(f"clip{i:03d}", n) for i, n in enumerate(_lengths(40, seed=2))]
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        batches = (
            pipeline
            | "Create" >> beam.Create(list(enumerate(items)))
            | "Stamp" >> beam.Map(lambda pair: window.TimestampedValue(pair[1], pair[0]))
            | "Window" >> beam.WindowInto(window.FixedWindows(10))
            | "Bucketed" >> BucketedBatchElements(clip_length, CAP, max_batch_size=64)
            | "WindowOf" >> beam.Map(_window_of_batch)
        )
        expected_window = {key: (i // 10) * 10 for i, (key, _) in enumerate(items)}

        def check(found):
            seen = []
            for start, keys in found:
                assert all(expected_window[k] == start for k in keys), (start, keys)
                seen.extend(keys)
            assert sorted(seen) == sorted(expected_window)

        assert_that(batches, check)


class FakeModel:
    """Stands in for a model (RunInference keeps a weak reference to it)."""


class PaddedCostHandler(ModelHandler):
    """A fake model: returns ``(key, padded batch size)`` per item, so batches are visible."""

    def load_model(self):
        return FakeModel()

    def run_inference(self, batch, model, inference_args=None):
        padded = len(batch) * max(n for _, n in batch)
        return [(key, padded) for key, _ in batch]

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": 32}


def test_bucketed_run_inference_hands_the_model_capped_batches():
    items = [(f"clip{i:03d}", n) for i, n in enumerate(_lengths(120, seed=3))]
    with beam.Pipeline(runner=FnApiRunner()) as pipeline:
        results = (
            pipeline
            | "Create" >> beam.Create(items)
            | "Infer" >> BucketedRunInference(PaddedCostHandler(), clip_length, CAP)
        )
        assert_that(results | "Keys" >> beam.Map(lambda r: r[0]), equal_to([k for k, _ in items]), label="AllOnce")
        over = results | "OverCap" >> beam.Filter(lambda r: r[1] > CAP)
        assert_that(over, equal_to([]), label="WithinCap")
