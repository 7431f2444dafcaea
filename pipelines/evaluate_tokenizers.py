"""evaluate-tokenizers: what each tokenizer keeps of the media, per token, measured on your shards.

Every sample goes through every tokenizer setting of its modalities (encode, decode) and is
measured against what the tokenizer saw (its resized crop, its resampled clip, its 16 kHz
waveform): tokens per item and per second, bits per second; PSNR and SSIM for images and video
frames; wide-band PESQ, STOI and log-mel distance for audio; and, as a machine-perceptual
measure, the word error rate between the speech recogniser's transcripts of the original and of
the decoded audio (the embedded model by default, any ``--asr-model`` ``.nemo``), the top-1
agreement of the split-computing model of ``compress-features`` on the original and the decoded
image and, with
``--x3d-weights`` (or ``--x3d-random-weights``), X3D's top-1 agreement on the original and the
decoded video clip. A sample with
a ``transcript.txt`` member (a person's transcript) also gets the recogniser's own WER on the original.

Writes ``quality/<shard name>-00000.parquet`` (one row per sample and setting,
``schemas/quality.py``); ``__job/summary.json`` holds the rate–quality table per setting and the
worst samples per measure; ``__job/report.html`` adds one rate–quality plot per measure. A
record is one (sample, setting) evaluation: records = rows + dead letters + filtered.

Example::

    mediabeam evaluate-tokenizers --input 'data/eval/shard-*.tar' --output out/quality \\
        --tokenizer jpeg,avc,opus,semantic-audio,dual-image \\
        --setting jpeg.quality=10,25,50,90 --setting opus.bitrate=6000,12000,24000
"""

import argparse
import itertools
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from operators.tokenizers.registry import TOKENIZERS
from pipelines.asr_flags import check_asr_model
from pipelines.common import ConfigError
from pipelines.job import Job, Retry
from pipelines.tokenizer_options import check_kwargs, csv, parse_options

DEFAULT_TOKENIZERS = "jpeg,avc,opus,semantic-audio,dual-image"
QUALITY_COLUMNS = ["key", "source", "modality", "tokenizer", "tokenizer_version", "setting", "num_tokens",
                   "tokens_per_s", "bits", "bits_per_s", "psnr_db", "ssim", "cnn_top1_agree", "x3d_top1_agree",
                   "pesq_wb", "stoi", "mel_distance_db", "asr_wer", "asr_word_errors", "asr_reference_words",
                   "reference_wer", "reference_word_errors", "reference_words"]


def parse_settings(values: Sequence[str]) -> Dict[str, Dict[str, List[Any]]]:
    """``["opus.bitrate=6000,12000"]`` → ``{"opus": {"bitrate": [6000, 12000]}}`` (Python literals)."""
    swept: Dict[str, Dict[str, List[Any]]] = {}
    for value in values:
        target, sep, text = value.partition("=")
        items = [f"{target}={v}" for v in csv(text)] if sep else [value]
        if not items:
            raise ConfigError(f"--setting {value!r} gives no value; write NAME.KEY=V1,V2, e.g. opus.bitrate=6000,12000")
        for item in items:
            for name, options in _as_setting_error(parse_options, [item]).items():
                for key, option in options.items():
                    values_of_key = swept.setdefault(name, {}).setdefault(key, [])
                    if option not in values_of_key:
                        values_of_key.append(option)
    return swept


def _as_setting_error(check: Any, *args: Any) -> Any:
    """Runs a ``pipelines.tokenizer_options`` check, naming ``--setting`` in its error message."""
    try:
        return check(*args)
    except ConfigError as err:
        raise ConfigError(err.message.replace("--tokenizer-option", "--setting")) from None


def expand_settings(names: Sequence[str], swept: Dict[str, Dict[str, List[Any]]],
                    budgets: Dict[str, Any]) -> List[Any]:
    """Every (tokenizer, combination of its swept values) as a ``Setting``; each tokenizer is
    built once so that a bad key, type or range fails now (exit 2).

    Args:
        budgets: ``--budget`` values, given to every tokenizer whose constructor takes them.
    """
    import inspect

    from operators.tokenizers.registry import tokenizer_class
    from schemas.quality import Setting

    unused = sorted(set(swept) - set(names))
    if unused:
        raise ConfigError(f"--setting names tokenizers not evaluated: {unused}; evaluated: {list(names)}")
    settings = []
    for name in names:
        cls = tokenizer_class(name)
        params = inspect.signature(cls.__init__).parameters
        given = {k: v for k, v in budgets.items() if k in params}
        keys = list(swept.get(name, {}))
        for combination in itertools.product(*(swept[name][k] for k in keys)):
            chosen = _as_setting_error(check_kwargs, name, dict(zip(keys, combination)))
            try:
                cls(**given, **chosen)
            except (TypeError, ValueError, OSError) as err:
                raise ConfigError(f"--setting {name} {chosen}: {err}")
            label = ",".join(f"{k}={v}" for k, v in chosen.items()) or "default"
            settings.append(Setting(name, label, {**given, **chosen}))
    return settings


class EvaluateTokenizersJob(Job):
    """The evaluate-tokenizers job (see the module docstring)."""

    name = "evaluate-tokenizers"
    description = __doc__
    progress_stage, progress_unit = "Evaluate", "evaluations"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZERS,
                            help=f"comma-separated tokenizers to evaluate (several per modality allowed), from "
                                 f"{sorted(TOKENIZERS)}")
        parser.add_argument("--setting", action="append", default=[], metavar="NAME.KEY=V1,V2",
                            help="values of a tokenizer option to sweep, e.g. opus.bitrate=6000,12000 or "
                                 "jpeg.quality=10,25,50 (repeatable; several keys of one tokenizer are crossed)")
        parser.add_argument("--asr-model", default=None,
                            help=".nemo speech recogniser for the ASR agreement measure (default: the embedded model)")
        parser.add_argument("--no-asr", action="store_true", help="skip the ASR measures (faster)")
        parser.add_argument("--cnn-model", default=None,
                            help="TinyCNN state dict for the image top-1 agreement (default: the shipped one)")
        parser.add_argument("--no-cnn", action="store_true", help="skip the image top-1 agreement")
        parser.add_argument("--x3d-weights", default=None,
                            help="local X3D checkpoint (X3D_S.pyth / X3D_M.pyth) for the video top-1 agreement")
        parser.add_argument("--x3d-random-weights", action="store_true",
                            help="X3D agreement with seeded random weights (no checkpoint; the report says so)")
        parser.add_argument("--x3d-model", default="s", choices=("s", "m", "tiny"), help="X3D variant")
        parser.add_argument("--worst", type=int, default=5, help="worst samples listed per measure")

    def validate(self, args: argparse.Namespace) -> None:
        from operators.quality.round_trip import ROUND_TRIPS

        names = list(dict.fromkeys(csv(args.tokenizer)))
        unknown = [n for n in names if n not in TOKENIZERS]
        if unknown or not names:
            raise ConfigError(f"--tokenizer {args.tokenizer!r}: unknown tokenizer {unknown}; choose from {sorted(TOKENIZERS)}")
        unmeasured = [n for n in names if n not in ROUND_TRIPS]
        if unmeasured:
            raise ConfigError(f"--tokenizer {unmeasured}: no round trip to measure them; add one to "
                              f"operators/quality/round_trip.py ROUND_TRIPS (known: {sorted(ROUND_TRIPS)})")
        if args.worst < 0:
            raise ConfigError("--worst must be 0 or more")
        overridden = {b.split("=", 1)[0].strip() for b in args.budget}
        args.settings = expand_settings(names, parse_settings(args.setting),
                                        {b: getattr(args.budgets, b) for b in overridden})
        args.asr_path = None if args.no_asr or not _has_modality(names, "audio") else check_asr_model(
            args.asr_model, "--asr-model", alternative=" or use --no-asr")
        args.x3d = check_x3d(args) if _has_modality(names, "video") else None
        args.cnn_path = None if args.no_cnn or not _has_modality(names, "image") else check_cnn_model(args.cnn_model)

    def table_spec(self, args: argparse.Namespace) -> Any:
        from schemas.quality import QUALITY_TABLE

        return QUALITY_TABLE

    def build(self, pipeline, sources: Sequence[str], args: argparse.Namespace, retry: Retry) -> Dict[str, Any]:
        import apache_beam as beam

        from transforms.errors import DEAD_LETTER_TAG
        from transforms.evaluate import EvaluateTokenizers

        read = self.read_media(pipeline, sources, args, retry)
        evaluated = read.samples | "EvaluateTokenizers" >> EvaluateTokenizers(
            args.settings, args.asr_path, args.x3d, args.cnn_path, frozenset(retry.sources), args.threads)
        rows = evaluated["rows"] | "CountEvaluate" >> self.count("Evaluate")
        dead = (read.dead_letters, evaluated[DEAD_LETTER_TAG]) | "AllDeadLetters" >> beam.Flatten()
        stats = (read.stats, evaluated["stats"]) | "AllStats" >> beam.Flatten()
        return {"rows": rows, DEAD_LETTER_TAG: dead, "stats": stats, "filtered": evaluated["filtered"]}

    def summary_extras(self, args: argparse.Namespace, manifests: List[Dict[str, Any]]) -> Dict[str, Any]:
        from operators.quality.aggregate import by_setting, worst_samples
        from pipelines import job_output

        rows = job_output.read_product_rows(args.output, manifests, "quality", QUALITY_COLUMNS)
        return {
            "samples_measured": len({(r["source"], r["key"]) for r in rows}),
            "settings": [f"{s.tokenizer}:{s.label}" for s in args.settings],
            "asr_model": os.path.basename(args.asr_path) if args.asr_path else None,
            "x3d_model": x3d_name(args.x3d),
            "cnn_model": os.path.basename(args.cnn_path) if args.cnn_path else None,
            "by_setting": by_setting(rows),
            "worst": worst_samples(rows, args.worst),
        }

    def after_run(self, args: argparse.Namespace, summary: Dict[str, Any]) -> None:
        from pipelines.quality_report import add_quality_section, rate_quality_lines

        print("\n".join(rate_quality_lines(summary["by_setting"])))
        if not args.no_report:
            add_quality_section(args.output, summary)


def _has_modality(names: Sequence[str], modality: str) -> bool:
    from operators.tokenizers.registry import tokenizer_modality

    return any(tokenizer_modality(n) == modality for n in names)


def check_cnn_model(path: Optional[str]) -> str:
    """The TinyCNN state dict (default: the shipped one), loaded once so that a bad file fails
    before the pipeline starts."""
    from operators.compression.split_compute import DEFAULT_WEIGHTS, load_model

    if path is not None and not os.path.isfile(path):
        raise ConfigError(f"--cnn-model {path!r} does not exist; give a TinyCNN state dict, omit it, or use --no-cnn")
    try:
        load_model(path)
    except Exception as err:  # noqa: BLE001 - torch.load/load_state_dict raise many types for a bad file
        raise ConfigError(f"--cnn-model {path!r} is not a TinyCNN state dict ({str(err)[:300]}); use --no-cnn to skip")
    return path or DEFAULT_WEIGHTS


def check_x3d(args: argparse.Namespace) -> Optional[Tuple[str, Optional[str]]]:
    """``(variant, checkpoint or None)`` for the X3D agreement, or None without ``--x3d-*``; a
    checkpoint is loaded once so that a bad one fails before the pipeline starts."""
    if args.x3d_weights is None and not args.x3d_random_weights:
        return None
    if args.x3d_weights is not None and args.x3d_random_weights:
        raise ConfigError("give one of --x3d-weights PATH or --x3d-random-weights")
    if args.x3d_weights is None:
        return args.x3d_model, None
    if not os.path.isfile(args.x3d_weights):
        raise ConfigError(f"--x3d-weights {args.x3d_weights!r} is not a file; download X3D_S.pyth beforehand")
    from operators.video.x3d import build_x3d

    try:
        build_x3d(args.x3d_model, weights=args.x3d_weights)
    except Exception as err:  # noqa: BLE001 - any checkpoint the network cannot take is a configuration error
        raise ConfigError(f"--x3d-weights {args.x3d_weights!r} cannot be loaded into X3D-{args.x3d_model}: "
                          f"{str(err)[:300]}; check --x3d-model")
    return args.x3d_model, args.x3d_weights


def x3d_name(x3d: Optional[Tuple[str, Optional[str]]]) -> Optional[str]:
    """``x3d_s@X3D_S.pyth`` or ``x3d_s@random-weights`` (None without the measure)."""
    if x3d is None:
        return None
    return f"x3d_{x3d[0]}@{os.path.basename(x3d[1]) if x3d[1] else 'random-weights'}"


def run(argv: Optional[Sequence[str]] = None, test_pipeline=None) -> Dict[str, Any]:
    """Runs the evaluate-tokenizers job; returns the summary (also in ``summary.json``)."""
    return EvaluateTokenizersJob().run(argv, test_pipeline)
