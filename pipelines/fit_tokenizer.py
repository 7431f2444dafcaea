"""fit-tokenizer: fit a learned tokenizer's codebooks on sharded media (distributed k-means).

Examples::

    mediabeam fit-tokenizer --input 'data/samples/shard-*.tar' --modality audio \\
        --codebook-size 256 --output out/semantic_audio
    mediabeam fit-tokenizer --input shards/ --modality image --codebook-size 256 \\
        --output out/dual_image --direct_num_workers 2 --direct_running_mode multi_processing

Audio (semantic-audio): per clip, patch features and mel targets → ``FitSemantic``
(FitCodebook) → ``SemanticDecoder`` (mean mel group per semantic centroid, CentroidMeans) →
for each acoustic stage ``FitAcoustic<i>`` on what the previous stages leave unexplained.
Image (dual-image): per image, the weighted concatenation of semantic and pixel patch features
→ ``FitJoint`` (FitCodebook), split into the two aligned codebooks. Either way ``--output``
receives a model folder that ``--tokenizer-option semantic-audio.model_dir=DIR`` (or
``dual-image.model_dir=DIR``) of build-corpus loads, plus ``summary.json``. Samples that cannot
be decoded are counted and listed in ``summary.json`` (they do not stop the fit).
"""

import argparse
import json
import os
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics.metric import MetricsFilter

from operators.kernels.nearest import nearest
from operators.tokenizers import dual_image as dit
from operators.tokenizers import semantic_audio as sat
from operators.tokenizers.base import first_member
from operators.tokenizers.codebooks import Fitted
from operators.tokenizers.encoders import DctPatchEncoder, PatchEncoder, load_patch_encoder
from pipelines.common import ConfigError, create_pipeline, expand_inputs, parse_job_args
from schemas.common import MediaSample
from transforms.errors import DEAD_LETTER_TAG, count, dead_letter
from transforms.fit_codebook import CentroidMeans, FitCodebook
from transforms.io.read_shards import ReadMediaShards

STAGE = "FeatureRows"


def build_parser() -> argparse.ArgumentParser:
    """The job's own flags (Beam's options are parsed separately)."""
    p = argparse.ArgumentParser(prog="mediabeam fit-tokenizer", description=__doc__.split("\n")[0])
    p.add_argument("--input", nargs="+", required=True, help="tar shards, globs, brace ranges or folders")
    p.add_argument("--modality", required=True, help="audio (semantic-audio) or image (dual-image)")
    p.add_argument("--codebook-size", type=int, required=True, help="semantic / joint codebook size K")
    p.add_argument("--output", required=True, help="model folder to write")
    p.add_argument("--iterations", type=int, default=10, help="Lloyd iterations per codebook")
    p.add_argument("--seed", type=int, default=0, help="seeds sampling and k-means++")
    p.add_argument("--sample-size", type=int, default=20000, help="rows for k-means++ / re-seeding")
    p.add_argument("--encoder", default=None, help="plug-in patch encoder file (default: DCT)")
    p.add_argument("--semantic-features", type=int, default=None,
                   help="features of the default DCT encoder (audio 32, image 18)")
    p.add_argument("--rate", type=int, default=100, help="audio token rate 100, 50 or 25")
    p.add_argument("--acoustic-stages", type=int, default=2, help="audio residual-VQ stages")
    p.add_argument("--acoustic-codebook-size", type=int, default=128, help="audio residual-VQ K")
    p.add_argument("--max-seconds", type=float, default=60.0, help="audio seconds used per clip")
    p.add_argument("--image-size", type=int, default=128, help="image crop side")
    p.add_argument("--patch", type=int, default=8, help="image patch side")
    p.add_argument("--semantic-weight", type=float, default=1.0, help="image semantic distance weight")
    p.add_argument("--pixel-weight", type=float, default=1.0, help="image pixel distance weight")
    p.add_argument("--float16", action="store_true", help="store decoder-side arrays as float16")
    return p


def validate(args: argparse.Namespace) -> List[str]:
    """Checks flags before the pipeline starts; returns the expanded inputs."""
    if args.modality not in ("audio", "image"):
        raise ConfigError(f"--modality must be audio or image, got {args.modality!r}")
    if args.codebook_size < 2 or args.iterations < 0 or args.sample_size < args.codebook_size:
        raise ConfigError("need --codebook-size >= 2, --iterations >= 0 and --sample-size >= --codebook-size")
    if args.rate not in sat.RATE_TO_GROUP:
        raise ConfigError(f"--rate must be one of {sorted(sat.RATE_TO_GROUP)}, got {args.rate}")
    if args.modality == "audio" and args.sample_size < args.acoustic_codebook_size:
        raise ConfigError("--sample-size must be >= --acoustic-codebook-size")
    if args.image_size % args.patch:
        raise ConfigError(f"--image-size {args.image_size} must be a multiple of --patch {args.patch}")
    if args.encoder and not os.path.isfile(args.encoder):
        raise ConfigError(f"--encoder {args.encoder!r} is not a file; pass a local TorchScript, "
                          "state-dict or safetensors file")
    return expand_inputs(args.input)


def make_encoder(args: argparse.Namespace) -> PatchEncoder:
    """The patch encoder the fitted model will use."""
    if args.encoder:
        return load_patch_encoder(args.encoder)
    if args.modality == "audio":
        return DctPatchEncoder((sat.PATCH, sat.PATCH), args.semantic_features or 32)
    return DctPatchEncoder((args.patch, args.patch, 3), args.semantic_features or 18)


class _PatchRows(beam.DoFn):
    """Base of the row extractors: the first member of ``modality`` → one training row.

    The encoder is rebuilt on the worker in ``setup``. A sample whose member fails to decode
    becomes a dead letter; a sample without such a member is skipped (mixed shards) and
    counted, so the summary still accounts for every sample read.
    """

    modality = ""

    def __init__(self, encoder_args: Dict[str, Any]):
        self._encoder_args = encoder_args
        self._encoder: Optional[PatchEncoder] = None

    def setup(self):
        self._encoder = make_encoder(argparse.Namespace(**self._encoder_args))

    def row(self, data: bytes) -> Any:
        """The training row of one member's bytes; raises on bad media."""
        raise NotImplementedError

    def process(self, sample: MediaSample) -> Iterator:
        found = first_member(sample.members, self.modality)
        if found is None:
            count(STAGE, "skipped_other_modality")
            return
        try:
            row = self.row(found[1])
        except Exception as err:  # the error policy: a bad record becomes a dead letter
            count(STAGE, "dead_letters")
            yield dead_letter(sample.key, sample.source, STAGE, err)
            return
        count(STAGE, "rows")
        yield row


class AudioRows(_PatchRows):
    """Audio sample → (semantic features, mel targets) of its valid patch groups."""

    modality = "audio"

    def __init__(self, encoder_args: Dict[str, Any], group: int, max_seconds: float):
        super().__init__(encoder_args)
        self._group = group
        self._max_seconds = max_seconds

    def row(self, data: bytes) -> Tuple[np.ndarray, np.ndarray]:
        wave = sat.decode_first_channel(data, sat.SAMPLE_RATE, self._max_seconds)
        feats, targets, _ = sat.clip_rows(self._encoder, wave, self._group)
        return feats, targets


class ImageRows(_PatchRows):
    """Image sample → joint (weighted semantic ‖ pixel) patch features."""

    modality = "image"

    def __init__(self, encoder_args: Dict[str, Any], size: int, patch: int, ws: float, wp: float):
        super().__init__(encoder_args)
        self._size, self._patch, self._ws, self._wp = size, patch, ws, wp

    def row(self, data: bytes) -> np.ndarray:
        pixels = dit.crop_square(dit.decode_image(data), self._size)
        patches = dit.image_patches(pixels, self._patch)
        return dit.joint_features(self._encoder, patches, self._ws, self._wp)


def _features(pair) -> np.ndarray:
    return pair[0]


def _residual_pairs(pair, fitted: Fitted, table: np.ndarray):
    feats, targets = pair
    idx, _ = nearest(feats, fitted.codebook)
    residual = targets - table[idx]
    return residual, residual


def _next_residual(pair, fitted: Fitted):
    residual, _ = pair
    idx, _ = nearest(residual, fitted.codebook)
    nxt = residual - fitted.codebook[idx]
    return nxt, nxt


def _fitted_summary(fitted: Fitted) -> Dict[str, Any]:
    return {"codebook_size": int(fitted.codebook.shape[0]), "dim": int(fitted.codebook.shape[1]),
            "inertia": fitted.inertia, "inertia_history": list(fitted.inertia_history),
            "rows": fitted.rows, "reseeded": fitted.reseeded}


class SaveAudioModel(beam.DoFn):
    """Assembles the fitted codebooks into a ``SemanticAudioModel`` and saves it; yields its info.

    Runs once, on the worker that holds the fitted singletons (the encoder is rebuilt there).
    """

    def __init__(self, args: Dict[str, Any], group: int):
        self._args = args
        self._group = group

    def process(self, semantic: Fitted, table: np.ndarray, *acoustic: Fitted) -> Iterator[Dict]:
        a = argparse.Namespace(**self._args)
        info = {"fitted_by": "mediabeam fit-tokenizer", "seed": a.seed, "iterations": a.iterations,
                "semantic": _fitted_summary(semantic), "acoustic": [_fitted_summary(f) for f in acoustic]}
        model = sat.SemanticAudioModel(self._group, make_encoder(a), semantic.codebook, table,
                                       tuple(f.codebook for f in acoustic), info)
        sat.save_model(a.output, model, float16=a.float16)
        yield info


class SaveImageModel(beam.DoFn):
    """Splits the fitted joint codebook into semantic and pixel parts, saves the
    ``DualImageModel`` and yields its info."""

    def __init__(self, args: Dict[str, Any]):
        self._args = args

    def process(self, joint: Fitted) -> Iterator[Dict]:
        a = argparse.Namespace(**self._args)
        encoder = make_encoder(a)
        sem_dim = encoder(np.zeros((1, a.patch * a.patch * 3), np.float32)).shape[1]
        semantic, pixel = dit.split_joint(joint.codebook, sem_dim, a.semantic_weight, a.pixel_weight)
        info = {"fitted_by": "mediabeam fit-tokenizer", "seed": a.seed, "iterations": a.iterations,
                "joint": _fitted_summary(joint)}
        model = dit.DualImageModel(a.image_size, a.patch, a.semantic_weight, a.pixel_weight, encoder,
                                   semantic, pixel, info)
        dit.save_model(a.output, model, float16=a.float16)
        yield info


def build(p: beam.Pipeline, args: argparse.Namespace,
          sources: Sequence[str]) -> Tuple[beam.PCollection, beam.PCollection]:
    """Adds the fit to pipeline ``p``; returns (model info PCollection, dead letters)."""
    read = p | "ReadShards" >> ReadMediaShards(list(sources))
    encoder_args = {k: getattr(args, k) for k in ("encoder", "modality", "semantic_features", "patch")}
    common = dict(iterations=args.iterations, seed=args.seed, sample_size=args.sample_size)
    vargs = {k: v for k, v in vars(args).items() if k != "input"}
    if args.modality == "audio":
        group = sat.RATE_TO_GROUP[args.rate]
        rows = read.samples | STAGE >> beam.ParDo(
            AudioRows(encoder_args, group, args.max_seconds)).with_outputs(DEAD_LETTER_TAG, main="rows")
        pairs = rows.rows
        semantic = (pairs | "SemanticFeatures" >> beam.Map(_features) | "FitSemantic"
                    >> FitCodebook(args.codebook_size, feature_spec={"rate": args.rate}, **common))
        table = pairs | "SemanticDecoder" >> CentroidMeans(semantic)
        residual = pairs | "Residual0" >> beam.Map(
            _residual_pairs, beam.pvalue.AsSingleton(semantic), beam.pvalue.AsSingleton(table))
        acoustic = []
        for i in range(args.acoustic_stages):
            fitted = (residual | f"AcousticFeatures{i}" >> beam.Map(_features)
                      | f"FitAcoustic{i}" >> FitCodebook(args.acoustic_codebook_size, **common))
            acoustic.append(fitted)
            if i + 1 < args.acoustic_stages:
                residual = residual | f"Residual{i + 1}" >> beam.Map(
                    _next_residual, beam.pvalue.AsSingleton(fitted))
        info = semantic | "SaveModel" >> beam.ParDo(
            SaveAudioModel(vargs, group), beam.pvalue.AsSingleton(table),
            *[beam.pvalue.AsSingleton(f) for f in acoustic])
    else:
        rows = read.samples | STAGE >> beam.ParDo(
            ImageRows(encoder_args, args.image_size, args.patch, args.semantic_weight, args.pixel_weight)
        ).with_outputs(DEAD_LETTER_TAG, main="rows")
        joint = rows.rows | "FitJoint" >> FitCodebook(
            args.codebook_size, feature_spec={"image_size": args.image_size, "patch": args.patch}, **common)
        info = joint | "SaveModel" >> beam.ParDo(SaveImageModel(vargs))
    dead = (read.dead_letters, rows[DEAD_LETTER_TAG]) | "AllDeadLetters" >> beam.Flatten()
    return info, dead


def run(argv: Optional[Sequence[str]] = None, test_pipeline: Optional[beam.Pipeline] = None) -> Dict[str, Any]:
    """Fits and writes the model; returns the summary (also written to ``summary.json``)."""
    args, options = parse_job_args(build_parser(), argv)
    sources = validate(args)
    os.makedirs(args.output, exist_ok=True)
    start = time.time()
    p = create_pipeline(options, test_pipeline)
    info, dead = build(p, args, sources)
    dead_dir = os.path.join(args.output, "dead_letters")
    _ = dead | "DeadLetterJson" >> beam.Map(_dead_json) | "WriteDeadLetters" >> beam.io.WriteToText(
        os.path.join(dead_dir, "part"), file_name_suffix=".jsonl")
    result = p.run()
    result.wait_until_finish()
    dead_rows = []
    parts = sorted(n for n in os.listdir(dead_dir) if n.endswith(".jsonl")) if os.path.isdir(dead_dir) else []
    for name in parts:
        dead_rows += [json.loads(line) for line in open(os.path.join(dead_dir, name)) if line.strip()]
    model_info = json.load(open(os.path.join(args.output, "model.json")))
    counters = result.metrics().query(MetricsFilter().with_namespace(STAGE))["counters"]
    samples = {c.key.metric.name: c.committed for c in counters}
    summary = {"output": args.output, "modality": args.modality, "wall_s": round(time.time() - start, 2),
               "samples": samples, "dead_letters": dead_rows, "model": model_info}
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"fit-tokenizer: model written to {args.output} ({len(dead_rows)} dead letters, "
          f"{summary['wall_s']} s)")
    return summary


def _dead_json(row) -> str:
    return json.dumps(row._asdict() if hasattr(row, "_asdict") else dict(row))
