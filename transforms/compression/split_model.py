"""The split model in Beam: features at the split layer, and the rest of the model after decoding.

The model loads once per worker in ``setup`` from a local state dict (never at graph
construction), with torch limited to ``threads`` threads so parallel workers do not
oversubscribe the cores.
"""

from typing import Iterator, Optional

import apache_beam as beam
import numpy as np
import torch

from operators.compression.bitstream import unpack
from operators.compression.split_compute import (
    INPUT_SIZE,
    forward_with_features,
    load_model,
    sample_quality,
    tail,
)
from operators.media.image import decode_image
from operators.tokenizers.base import MediaError, first_member
from schemas.common import MediaSample
from schemas.features import DecodedRecord, FeatureRecord, FeatureRow
from transforms.compression.codec import NAMESPACE
from transforms.errors import count, dead_letter


def image_tensor(data: bytes, size: int = INPUT_SIZE) -> np.ndarray:
    """Decodes an image and resizes it to a ``[3, size, size]`` float32 tensor in [0, 1]."""
    image = decode_image(data).resize((size, size))
    return np.asarray(image, np.float32).transpose(2, 0, 1) / 255.0


class _SplitModelFn(beam.DoFn):
    """Base for DoFns that run the split model.

    Args:
        model_path: Local TinyCNN state dict (None: the shipped asset).
        layer: Layer the model is split at.
        threads: Torch threads per worker process.
    """

    def __init__(self, model_path: Optional[str], layer: str, threads: int = 1):
        self._model_path = model_path
        self._layer = layer
        self._threads = threads
        self._model = None

    def setup(self):
        torch.set_num_threads(self._threads)
        self._model = load_model(self._model_path)


class ExtractFeaturesFn(_SplitModelFn):
    """``MediaSample`` (first image member) → ``FeatureRecord`` at the split layer."""

    def process(self, sample: MediaSample) -> Iterator:
        member = first_member(sample.members, "image")
        try:
            if member is None:
                raise MediaError(f"sample has no image member (members: {sorted(sample.members)})")
            x = torch.from_numpy(image_tensor(member[1])[None])
            features, output = forward_with_features(self._model, self._layer, x)
        except MediaError as error:
            count(NAMESPACE, "extract_failed")
            yield dead_letter(sample.key, sample.source, "ExtractFeatures", error)
            return
        yield FeatureRecord(sample.key, sample.source, features[0], output[0])


class MeasureQualityFn(_SplitModelFn):
    """``DecodedRecord`` → ``FeatureRow``: runs the rest of the model on decoded features."""

    def process(self, record: DecodedRecord) -> Iterator:
        probe = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
        output = tail(self._model, self._layer, probe, record.features[None])[0]
        same, diff = sample_quality(record.reference, output)
        codebook = record.rate.startswith("vq")
        rate = int(record.rate.lstrip("uvq"))
        yield FeatureRow(
            key=record.key,
            source=record.source,
            split_at=self._layer,
            rate=record.rate,
            quantizer="codebook" if codebook else "uniform",
            bits=int(np.ceil(np.log2(rate))) if codebook else rate,
            shape=tuple(int(d) for d in record.features.shape),
            num_elements=int(record.features.size),
            num_bytes=len(record.stream),
            bits_per_element=8.0 * len(record.stream) / max(record.features.size, 1),
            top1_agree=bool(same),
            max_abs_diff=diff,
            tables_id=unpack(record.stream)[0].tables_id.hex(),
            stream=record.stream,
        )
