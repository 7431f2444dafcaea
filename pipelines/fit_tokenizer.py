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
``dual-image.model_dir=DIR``) of build-corpus loads. Each sample's training rows are also
written per input shard to ``DIR/features/`` (like any job's output, with manifests and dead
letters), so ``--resume`` and ``--retry-dead-letters`` re-read only the media they must and
still fit on every sample; a resumed run whose shards and model are all done does nothing.
"""

import argparse
import os
from typing import Any, Dict, List, Sequence

from operators.tokenizers.semantic_audio import RATE_TO_GROUP
from pipelines.common import ConfigError
from pipelines.job import Job, Retry
from pipelines.summary import sum_counters

MODEL_FILE = "model.json"


class FitTokenizer(Job):
    """Training rows per shard through the sink, then one distributed k-means fit on all of them."""

    name = "fit-tokenizer"
    input_help = "tar shards, globs, brace ranges, folders of shards or folders of media files"
    output_help = "model folder to write (training rows per shard go to DIR/features/)"

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        p.add_argument("--modality", required=True, help="audio (semantic-audio) or image (dual-image)")
        p.add_argument("--codebook-size", type=int, required=True, help="semantic / joint codebook size K")
        p.add_argument("--iterations", type=int, default=10, help="Lloyd iterations per codebook")
        p.add_argument("--seed", type=int, default=0, help="seeds sampling and k-means++")
        p.add_argument("--sample-size", type=int, default=20000, help="rows for k-means++ / re-seeding")
        p.add_argument("--encoder", default=None,
                       help="plug-in patch encoder file (TorchScript, state dict or safetensors; default: DCT)")
        p.add_argument("--semantic-features", type=int, default=None,
                       help="features of the default DCT encoder (default: audio 32, image 18)")
        p.add_argument("--rate", type=int, default=100, help="audio token rate: 100, 50 or 25")
        p.add_argument("--acoustic-stages", type=int, default=2, help="audio residual-VQ stages")
        p.add_argument("--acoustic-codebook-size", type=int, default=128, help="audio residual-VQ K")
        p.add_argument("--max-seconds", type=float, default=60.0, help="audio seconds used per clip")
        p.add_argument("--image-size", type=int, default=128, help="image crop side")
        p.add_argument("--patch", type=int, default=8, help="image patch side")
        p.add_argument("--semantic-weight", type=float, default=1.0, help="image semantic distance weight")
        p.add_argument("--pixel-weight", type=float, default=1.0, help="image pixel distance weight")
        p.add_argument("--float16", action="store_true", help="store decoder-side arrays as float16")

    def validate(self, args: argparse.Namespace) -> None:
        if args.modality not in ("audio", "image"):
            raise ConfigError(f"--modality must be audio or image, got {args.modality!r}")
        if args.codebook_size < 2 or args.iterations < 0 or args.sample_size < args.codebook_size:
            raise ConfigError("need --codebook-size >= 2, --iterations >= 0 and --sample-size >= --codebook-size")
        if args.rate not in RATE_TO_GROUP:
            raise ConfigError(f"--rate must be one of {sorted(RATE_TO_GROUP)}, got {args.rate}")
        if args.modality == "audio" and args.sample_size < args.acoustic_codebook_size:
            raise ConfigError("--sample-size must be >= --acoustic-codebook-size")
        if args.image_size % args.patch:
            raise ConfigError(f"--image-size {args.image_size} must be a multiple of --patch {args.patch}")
        if args.encoder:
            if not os.path.isfile(args.encoder):
                raise ConfigError(f"--encoder {args.encoder!r} is not a file; pass a local TorchScript, "
                                  "state-dict or safetensors file")
            from operators.tokenizers.encoders import load_patch_encoder

            try:
                load_patch_encoder(args.encoder)  # once, so a bad file fails here, not on every sample
            except Exception as err:  # any loader error means the file is unusable
                raise ConfigError(f"--encoder {args.encoder!r} cannot be loaded: {type(err).__name__}: {err}")

    def run(self, argv=None, test_pipeline=None) -> Dict[str, Any]:
        """Runs the job; inputs without a usable sample of ``--modality`` fail with exit 2."""
        try:
            return super().run(argv, test_pipeline)
        except Exception as err:  # the pipeline's failure, re-raised by the runner
            from transforms.fit_codebook import NO_ROWS

            if NO_ROWS not in str(err):
                raise
            raise ConfigError("--input holds no usable sample of --modality: nothing to fit; check --modality "
                              "and that the inputs hold such media (folders of shards, shards, or media files)") from None

    def table_spec(self, args: argparse.Namespace) -> Any:
        from schemas.fit import FIT_FEATURES_TABLE

        return FIT_FEATURES_TABLE

    def plan(self, args: argparse.Namespace, sources: List[str]):
        todo, retry = super().plan(args, sources)
        running = set(todo) | set(retry.sources)
        self.finished_only = [s for s in sources if s not in running]  # rows reloaded for the fit
        return todo, retry

    def needs_run(self, args: argparse.Namespace, todo: List[str], retry: Retry) -> bool:
        return bool(todo or retry) or not os.path.exists(os.path.join(args.output, MODEL_FILE))

    def build(self, pipeline, sources: Sequence[str], args: argparse.Namespace, retry: Retry) -> Dict[str, Any]:
        import apache_beam as beam

        from transforms.errors import DEAD_LETTER_TAG
        from transforms.fit_features import FILTERED_TAG, AudioRows, ImageRows

        read = self.read_media(pipeline, sources, args, retry)
        encoder_args = {k: getattr(args, k) for k in ("encoder", "modality", "semantic_features", "patch")}
        if args.modality == "audio":
            extract = AudioRows(encoder_args, RATE_TO_GROUP[args.rate], args.max_seconds)
        else:
            extract = ImageRows(encoder_args, args.image_size, args.patch, args.semantic_weight, args.pixel_weight)
        rows = read.samples | "FeatureRows" >> beam.ParDo(extract).with_outputs(
            DEAD_LETTER_TAG, FILTERED_TAG, main="rows")
        dead = (read.dead_letters, rows[DEAD_LETTER_TAG]) | "AllDeadLetters" >> beam.Flatten()
        return {"rows": rows.rows, DEAD_LETTER_TAG: dead, "stats": read.stats, "filtered": rows[FILTERED_TAG]}

    def write(self, outputs: Dict[str, Any], args: argparse.Namespace):
        import apache_beam as beam

        from transforms.io.retry import LoadKeptRows

        manifests = super().write(outputs, args)
        pipeline = outputs["rows"].pipeline
        finished = (pipeline | "ListFinishedShards" >> beam.Create(self.finished_only)
                    | "LoadFinishedRows" >> beam.ParDo(LoadKeptRows(args.output, self.table_spec(args), {})))
        every = (outputs["rows"], finished) | "EveryRow" >> beam.Flatten()
        _fit(every, args)
        return manifests

    def summary_extras(self, args: argparse.Namespace, manifests: List[Dict[str, Any]]) -> Dict[str, Any]:
        import json

        path = os.path.join(args.output, MODEL_FILE)
        model = json.load(open(path)) if os.path.exists(path) else None
        return {"modality": args.modality, "feature_rows_by_modality": sum_counters(manifests, "feature_rows_by_modality"),
                "model": model}

    def after_run(self, args: argparse.Namespace, summary: Dict[str, Any]) -> None:
        option = "semantic-audio" if args.modality == "audio" else "dual-image"
        print(f"  model: {args.output} (build-corpus --tokenizer {option} "
              f"--tokenizer-option {option}.model_dir={args.output})")


def _fit(rows, args: argparse.Namespace) -> None:
    """Adds the codebook fit on every training row and saves the model folder."""
    import apache_beam as beam

    from transforms.fit_codebook import CentroidMeans, FitCodebook
    from transforms.fit_features import (SaveAudioModel, SaveImageModel, audio_pair, features_of,
                                         next_residual, residual_pairs)

    common = dict(iterations=args.iterations, seed=args.seed, sample_size=args.sample_size)
    saved = {k: v for k, v in vars(args).items() if k not in ("input", "budgets", "budget")}
    if args.modality == "image":
        joint = rows | "JointFeatures" >> beam.Map(lambda r: r.features) | "FitJoint" >> FitCodebook(
            args.codebook_size, feature_spec={"image_size": args.image_size, "patch": args.patch}, **common)
        _ = joint | "SaveModel" >> beam.ParDo(SaveImageModel(saved))
        return
    group = RATE_TO_GROUP[args.rate]
    pairs = rows | "AudioPairs" >> beam.Map(audio_pair)
    semantic = (pairs | "SemanticFeatures" >> beam.Map(features_of) | "FitSemantic"
                >> FitCodebook(args.codebook_size, feature_spec={"rate": args.rate}, **common))
    table = pairs | "SemanticDecoder" >> CentroidMeans(semantic)
    residual = pairs | "Residual0" >> beam.Map(
        residual_pairs, beam.pvalue.AsSingleton(semantic), beam.pvalue.AsSingleton(table))
    acoustic = []
    for i in range(args.acoustic_stages):
        fitted = (residual | f"AcousticFeatures{i}" >> beam.Map(features_of)
                  | f"FitAcoustic{i}" >> FitCodebook(args.acoustic_codebook_size, **common))
        acoustic.append(fitted)
        if i + 1 < args.acoustic_stages:
            residual = residual | f"Residual{i + 1}" >> beam.Map(next_residual, beam.pvalue.AsSingleton(fitted))
    _ = semantic | "SaveModel" >> beam.ParDo(
        SaveAudioModel(saved, group), beam.pvalue.AsSingleton(table), *[beam.pvalue.AsSingleton(f) for f in acoustic])


def build_parser() -> argparse.ArgumentParser:
    """The job's flags (common and own; Beam's options are parsed separately)."""
    return FitTokenizer().parser()


def run(argv=None, test_pipeline=None) -> Dict[str, Any]:
    """Fits and writes the model; returns the summary (also in ``<output>/__job/summary.json``)."""
    return FitTokenizer().run(argv, test_pipeline)
