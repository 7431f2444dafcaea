"""build-corpus's training exports: flags, their checks, and the export pipeline that runs
once the documents table is written (``docs/exports.md``).

The export is a second, small pipeline on the same runner and options as the job: it reads
the documents parts of this run's input shards (from their manifests, so resumed shards
count and stray files never do), shuffles, packs and writes ``<output>/__export/``. Its figures
go into ``summary.json`` under ``export``.
"""

import argparse
import json
import time
from typing import Any, Dict, List, Sequence

from operators.corpus.packing import PACKING_MODES
from pipelines.common import ConfigError
from pipelines.tokenizer_options import csv
from schemas.documents import DOCUMENTS_TABLE, VOCAB_FILE
from schemas.exports import EXPORT_DIR, EXPORT_FORMATS, STATS_FILE

MAX_SEQ_LEN = 1 << 24
DEFAULT_SEQ_LEN = 4096
DEFAULT_PACKING = "whole"
EXPORT_TUNING = {"--seq-len": ("seq_len", DEFAULT_SEQ_LEN), "--packing": ("packing", DEFAULT_PACKING),
                 "--shuffle-seed": ("shuffle_seed", 0), "--export-shards": ("export_shards", 1)}
"""Flags that only shape the exports: flag → (attribute, default). They default to None on the
command line so that giving one without ``--export`` can be refused instead of ignored."""


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--export``, ``--seq-len``, ``--packing``, ``--shuffle-seed`` and ``--export-shards``."""
    parser.add_argument("--export", default="none",
                        help=f"comma-separated training exports from {EXPORT_FORMATS}, 'all' or 'none'; written "
                             f"to <output>/{EXPORT_DIR}/ after the documents")
    parser.add_argument("--seq-len", type=int, default=None,
                        help=f"tokens per packed sequence of the exports (default {DEFAULT_SEQ_LEN})")
    parser.add_argument("--packing", default=None, choices=PACKING_MODES,
                        help="whole: a document that fits a sequence is never split (padding instead); "
                             f"concat: documents end to end, cut every --seq-len tokens (no padding); default {DEFAULT_PACKING}")
    parser.add_argument("--shuffle-seed", type=int, default=None,
                        help="seed of the global document order (0..2**64-1; default 0)")
    parser.add_argument("--export-shards", type=int, default=None,
                        help="export shards (hash ranges of the order), each packed and written by one worker (default 1)")


def check_export_flags(args: argparse.Namespace) -> None:
    """Checks the export flags; sets ``args.export_formats`` (a tuple, empty for none).

    Raises:
        ConfigError: With the flag and how to fix it.
    """
    from operators.corpus.shuffle import check_seed

    value = args.export.strip().lower()
    formats = EXPORT_FORMATS if value == "all" else () if value in ("", "none") else tuple(csv(value))
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise ConfigError(f"--export {args.export!r}: unknown {unknown}; choose from {EXPORT_FORMATS}, 'all' or 'none'")
    args.export_formats = tuple(f for f in EXPORT_FORMATS if f in formats)
    given = [flag for flag, (name, _) in EXPORT_TUNING.items() if getattr(args, name) is not None]
    if given and not args.export_formats:
        raise ConfigError(f"{', '.join(given)}: used by the training exports only; add --export all "
                          "(or some of megatron,mds,parquet)")
    for name, default in EXPORT_TUNING.values():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if not 1 <= args.seq_len <= MAX_SEQ_LEN:
        raise ConfigError(f"--seq-len {args.seq_len}: give a length between 1 and {MAX_SEQ_LEN} (e.g. 4096)")
    try:
        check_seed(args.shuffle_seed)
    except ValueError as err:
        raise ConfigError(f"--shuffle-seed: {err}")
    if args.export_shards < 1:
        raise ConfigError(f"--export-shards {args.export_shards}: give at least 1")
    if args.export_formats and "parquet" not in csv(args.format):
        raise ConfigError("--export reads the documents' Parquet parts: keep parquet in --format")


def documents_parts(output_dir: str, manifests: Sequence[Dict[str, Any]]) -> List[str]:
    """Paths of the documents parts the shard ``manifests`` list."""
    from transforms.io.layout import join

    return sorted(join(output_dir, f) for m in manifests for f in m.get("files", [])
                  if f.startswith(f"{DOCUMENTS_TABLE.name}/"))


def read_vocabulary(output_dir: str) -> Dict[str, Any]:
    """``<output>/__vocab.json``; a missing one is an error saying what the export needs."""
    from apache_beam.io.filesystems import FileSystems

    from transforms.io.layout import join

    path = join(output_dir, VOCAB_FILE)
    if not FileSystems.exists(path):
        raise RuntimeError(f"{path} is missing: the exports need the vocabulary build-corpus writes with the documents")
    with FileSystems.open(path) as f:
        return json.loads(f.read())


def run_export(args: argparse.Namespace, options: Any, sources: Sequence[str]) -> Dict[str, Any]:
    """Writes the exports of ``args.export_formats`` (replacing earlier ones); returns
    ``{"export": stats}`` for ``summary.json``, or ``{}`` when no export is asked for."""
    if not args.export_formats:
        return {}
    from apache_beam.io.filesystems import FileSystems

    from pipelines import job_output
    from pipelines.common import create_pipeline
    from pipelines.operability import run_pipeline
    from schemas.exports import token_dtype
    from transforms.io.exports.stage import ExportConfig, ExportCorpus
    from transforms.io.layout import join

    vocab = read_vocabulary(args.output)
    config = ExportConfig(args.output, args.export_formats, args.seq_len, args.packing, args.shuffle_seed,
                          args.export_shards, vocab, token_dtype(int(vocab["size"])).name, args.command)
    folder = join(args.output, EXPORT_DIR)
    if FileSystems.exists(folder):  # only the export writes here; a new export replaces the old one whole
        FileSystems.delete([folder])
    start = time.perf_counter()
    manifests = job_output.read_manifests(args.output, sources)
    pipeline = create_pipeline(options)
    _ = pipeline | "ExportCorpus" >> ExportCorpus(documents_parts(args.output, manifests), config)
    run_pipeline(pipeline)
    wall_s = time.perf_counter() - start
    with FileSystems.open(join(folder, STATS_FILE)) as f:
        stats = json.loads(f.read())
    expected = sum(int(m.get("rows", 0)) for m in manifests)
    if stats["documents"] != expected:
        raise RuntimeError(f"the export holds {stats['documents']} documents but the shards' manifests count "
                           f"{expected}: the documents parts under {args.output} do not match their manifests")
    print(f"  export: {stats['sequences']} sequences of {stats['seq_len']} tokens "
          f"({stats['padding_fraction']:.1%} padding) from {stats['documents']} documents in "
          + ", ".join(join(folder, f) for f in args.export_formats))
    fields = {k: v for k, v in stats.items() if k != "files"}
    return {"export": {**fields, "path": folder, "wall_s": round(wall_s, 3)}}
