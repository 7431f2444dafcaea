"""The per-sample steps of ``fit-tokenizer``: media → training rows, and saving the fitted model.

:class:`AudioRows` / :class:`ImageRows` turn a sample's first member of their modality into
one ``schemas.fit.FitFeatureRow``; a member that fails to decode becomes a dead letter, and a
sample without such a member is ``Filtered`` (mixed shards), so every sample read is
accounted for. :class:`SaveAudioModel` / :class:`SaveImageModel` assemble the fitted
codebooks into a model folder on the worker that holds them.
"""

import argparse
from typing import Any, Dict, Iterator, Optional, Tuple

import apache_beam as beam
import numpy as np

from operators.tokenizers import dual_image as dit
from operators.tokenizers import semantic_audio as sat
from operators.tokenizers.base import first_member
from operators.tokenizers.codebooks import Fitted, nearest_centroid
from operators.tokenizers.encoders import DctPatchEncoder, PatchEncoder, load_patch_encoder
from schemas.common import Filtered, MediaSample
from schemas.fit import FitFeatureRow
from transforms.errors import count, dead_letter

STAGE = "FeatureRows"
FILTERED_TAG = "filtered"
OTHER_MODALITY = "other_modality"


def make_encoder(encoder: Optional[str], modality: str, semantic_features: Optional[int], patch: int) -> PatchEncoder:
    """The patch encoder a fitted model uses: a plug-in file, else the default DCT encoder."""
    if encoder:
        return load_patch_encoder(encoder)
    if modality == "audio":
        return DctPatchEncoder((sat.PATCH, sat.PATCH), semantic_features or 32)
    return DctPatchEncoder((patch, patch, 3), semantic_features or 18)


class _PatchRows(beam.DoFn):
    """Base of the row extractors; outputs rows, ``DEAD_LETTER_TAG`` and ``FILTERED_TAG``."""

    modality = ""

    def __init__(self, encoder_args: Dict[str, Any]):
        self._encoder_args = encoder_args
        self._encoder: Optional[PatchEncoder] = None

    def setup(self):
        self._encoder = make_encoder(**self._encoder_args)

    def rows(self, data: bytes) -> Tuple[np.ndarray, np.ndarray]:
        """``(features [N, D], targets [N, G])`` of one member's bytes; raises on bad media."""
        raise NotImplementedError

    def process(self, sample: MediaSample) -> Iterator:
        found = first_member(sample.members, self.modality)
        if found is None:
            count(STAGE, OTHER_MODALITY)
            yield beam.pvalue.TaggedOutput(FILTERED_TAG, Filtered(sample.key, sample.source, OTHER_MODALITY))
            return
        try:
            feats, targets = self.rows(found[1])
        except Exception as err:  # the error policy: a bad record becomes a dead letter
            count(STAGE, "dead_letters")
            yield dead_letter(sample.key, sample.source, STAGE, err)
            return
        count(STAGE, "rows")
        yield FitFeatureRow(sample.key, sample.source, self.modality,
                            np.ascontiguousarray(feats, np.float32), np.ascontiguousarray(targets, np.float32))


class AudioRows(_PatchRows):
    """Audio sample → semantic features and mel targets of its valid patch groups."""

    modality = "audio"

    def __init__(self, encoder_args: Dict[str, Any], group: int, max_seconds: float):
        super().__init__(encoder_args)
        self._group = group
        self._max_seconds = max_seconds

    def rows(self, data: bytes) -> Tuple[np.ndarray, np.ndarray]:
        wave = sat.decode_first_channel(data, sat.SAMPLE_RATE, self._max_seconds)
        feats, targets, _ = sat.clip_rows(self._encoder, wave, self._group)
        return feats, targets


class ImageRows(_PatchRows):
    """Image sample → joint (weighted semantic ‖ pixel) patch features (no targets)."""

    modality = "image"

    def __init__(self, encoder_args: Dict[str, Any], size: int, patch: int, ws: float, wp: float):
        super().__init__(encoder_args)
        self._size, self._patch, self._ws, self._wp = size, patch, ws, wp

    def rows(self, data: bytes) -> Tuple[np.ndarray, np.ndarray]:
        pixels = dit.crop_square(dit.decode_image(data), self._size)
        joint = dit.joint_features(self._encoder, dit.image_patches(pixels, self._patch), self._ws, self._wp)
        return joint, np.zeros((joint.shape[0], 0), np.float32)


def audio_pair(row: FitFeatureRow) -> Tuple[np.ndarray, np.ndarray]:
    """``(features, targets)`` of an audio row."""
    return row.features, row.targets


def features_of(pair: Tuple[np.ndarray, Any]) -> np.ndarray:
    """The features of a ``(features, payload)`` pair."""
    return pair[0]


def residual_pairs(pair, fitted: Fitted, table: np.ndarray):
    """Mel targets minus the semantic decoder's prediction, as ``(residual, residual)``."""
    feats, targets = pair
    idx, _ = nearest_centroid(feats, fitted.codebook)
    residual = targets - table[idx]
    return residual, residual


def next_residual(pair, fitted: Fitted):
    """What the next residual-VQ stage sees: the residual minus its nearest centroid."""
    residual, _ = pair
    idx, _ = nearest_centroid(residual, fitted.codebook)
    nxt = residual - fitted.codebook[idx]
    return nxt, nxt


def fitted_summary(fitted: Fitted) -> Dict[str, Any]:
    """JSON-ready figures of one fitted codebook."""
    return {"codebook_size": int(fitted.codebook.shape[0]), "dim": int(fitted.codebook.shape[1]),
            "inertia": fitted.inertia, "inertia_history": list(fitted.inertia_history),
            "rows": fitted.rows, "reseeded": fitted.reseeded}


def _encoder_of(a: argparse.Namespace) -> PatchEncoder:
    return make_encoder(a.encoder, a.modality, a.semantic_features, a.patch)


class SaveAudioModel(beam.DoFn):
    """Assembles the fitted codebooks into a ``SemanticAudioModel``, saves it, yields its info."""

    def __init__(self, args: Dict[str, Any], group: int):
        self._args = args
        self._group = group

    def process(self, semantic: Fitted, table: np.ndarray, *acoustic: Fitted) -> Iterator[Dict]:
        a = argparse.Namespace(**self._args)
        info = {"fitted_by": "mediabeam fit-tokenizer", "seed": a.seed, "iterations": a.iterations,
                "semantic": fitted_summary(semantic), "acoustic": [fitted_summary(f) for f in acoustic]}
        model = sat.SemanticAudioModel(self._group, _encoder_of(a), semantic.codebook, table,
                                       tuple(f.codebook for f in acoustic), info)
        sat.save_model(a.output, model, float16=a.float16)
        yield info


class SaveImageModel(beam.DoFn):
    """Splits the joint codebook into semantic and pixel parts, saves the ``DualImageModel``."""

    def __init__(self, args: Dict[str, Any]):
        self._args = args

    def process(self, joint: Fitted) -> Iterator[Dict]:
        a = argparse.Namespace(**self._args)
        encoder = _encoder_of(a)
        sem_dim = encoder(np.zeros((1, a.patch * a.patch * 3), np.float32)).shape[1]
        semantic, pixel = dit.split_joint(joint.codebook, sem_dim, a.semantic_weight, a.pixel_weight)
        info = {"fitted_by": "mediabeam fit-tokenizer", "seed": a.seed, "iterations": a.iterations,
                "joint": fitted_summary(joint)}
        model = dit.DualImageModel(a.image_size, a.patch, a.semantic_weight, a.pixel_weight, encoder,
                                   semantic, pixel, info)
        dit.save_model(a.output, model, float16=a.float16)
        yield info
