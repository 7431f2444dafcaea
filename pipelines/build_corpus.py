"""build-corpus: sharded media in, a training-ready corpus of documents out.

Every sample becomes one document that keeps all its members (captions from ``.txt`` /
``.json``, images, video and its sound track, audio), ordered by a document template and laid
out in one global vocabulary written once as ``<output>/__vocab.json``. See ``docs/corpus.md``.

Examples::

    mediabeam build-corpus --input 'data/samples/shard-{000000..000003}.tar' --output out/demo
    mediabeam build-corpus --input shards/ --output out/c --template image-then-caption \\
        --text-tokenizer /models/gpt2/tokenizer.json
    mediabeam build-corpus --input shards/ --output out/c --tokenizer jpeg,opus \\
        --direct_num_workers 2 --direct_running_mode multi_processing
    mediabeam build-corpus --input shards/ --output out/c --retry-dead-letters

The job runs unchanged on the in-process runner, ``multi_processing`` workers and portable
runners (Flink, Spark, Beam's job service, Dataflow); records cross stages as NumPy arrays
and plain Python values, never torch tensors (see ``docs/scale.md``). The documents land in
``<output>/documents/*.parquet``; the common flags, progress line, ``summary.json`` and
``report.html`` are those of every batch job (``docs/jobs.md``).
"""

import argparse
import json
from typing import Any, Dict, List, Sequence

from operators.corpus.filters import DocumentFilters
from operators.corpus.templates import AUTO, BUILTIN_TEMPLATES, resolve_template
from operators.corpus.text_tokens import build_text_tokenizer
from operators.corpus.vocabulary import build_vocabulary
from operators.tokenizers.registry import DEFAULT_TOKENIZER_FOR_MODALITY, TOKENIZERS, build_tokenizer
from pipelines.common import ConfigError
from pipelines.corpus_export import add_export_arguments, check_export_flags, run_export
from pipelines.job import Job, Retry
from pipelines.summary import sum_counters
from pipelines.tokenizer_options import csv, resolve
from schemas.documents import VOCAB_FILE

FORMAT_CHOICES = ("parquet", "webdataset")  # the sink's writers; format_writers() checks it again


class BuildCorpus(Job):
    """The corpus job: read shards, make one document per sample with every tokenizer it needs, write."""

    name = "build-corpus"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--tokenizer", default="auto",
                            help=f"comma-separated media tokenizers, at most one per modality, from {sorted(TOKENIZERS)}; "
                                 f"'auto' picks {DEFAULT_TOKENIZER_FOR_MODALITY} for --modalities")
        parser.add_argument("--modalities", default="image,video,audio",
                            help="media modalities tokenized with --tokenizer auto (image, video, audio); samples "
                                 "with media of another modality are filtered, with the reason")
        parser.add_argument("--tokenizer-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                            help="keyword argument of a tokenizer's constructor, e.g. jpeg.size=128 (repeatable)")
        parser.add_argument("--text-tokenizer", default=None, metavar="PATH",
                            help="a local Hugging Face tokenizer.json for captions (default: UTF-8 bytes)")
        parser.add_argument("--template", default=AUTO,
                            help=f"document template: {AUTO} (by each sample's modality mix), one of "
                                 f"{sorted(BUILTIN_TEMPLATES)}, or a JSON/YAML template file")
        parser.add_argument("--no-dedup", action="store_true",
                            help="keep exact duplicates (default: one document per media hash across the corpus; "
                                 "the others are filtered as 'exact duplicate')")
        filters = parser.add_argument_group("filters (off unless given; a filtered sample is counted with its reason)")
        filters.add_argument("--min-duration", type=float, default=None, metavar="S", help="shortest video/audio kept")
        filters.add_argument("--max-duration", type=float, default=None, metavar="S", help="longest video/audio kept")
        filters.add_argument("--min-side", type=int, default=None, metavar="PX",
                             help="smallest source width/height of an image or video kept")
        filters.add_argument("--max-aspect", type=float, default=None, metavar="R",
                             help="largest long side / short side of an image or video kept")
        filters.add_argument("--silence-dbfs", type=float, default=None, metavar="DB",
                             help="audio quieter than this RMS level (e.g. -60) is silence and not kept")
        filters.add_argument("--min-caption-chars", type=int, default=None, metavar="N", help="fewest caption characters kept")
        filters.add_argument("--max-caption-chars", type=int, default=None, metavar="N", help="most caption characters kept")
        parser.add_argument("--rows-per-shard", type=int, default=10_000, help="most rows per output Parquet part")
        parser.add_argument("--format", default="parquet",
                            help=f"comma-separated output formats from {FORMAT_CHOICES}")
        parser.add_argument("--batch-size", type=int, default=32, help="samples per tokenizer batch")
        add_export_arguments(parser)

    def validate(self, args: argparse.Namespace) -> None:
        if args.rows_per_shard < 1 or args.batch_size < 1:
            raise ConfigError("--rows-per-shard and --batch-size must be at least 1")
        formats = csv(args.format)
        if not formats or any(f not in FORMAT_CHOICES for f in formats):
            raise ConfigError(f"--format {args.format!r}: choose from {FORMAT_CHOICES}")
        if args.retry_dead_letters and "parquet" not in formats:
            raise ConfigError("--retry-dead-letters reloads kept rows from the Parquet parts: keep parquet in --format")
        check_export_flags(args)
        overridden = {name.split("=", 1)[0].strip() for name in args.budget}
        args.tokenizers = resolve(args.tokenizer, args.modalities, args.tokenizer_option,
                                  {name: getattr(args.budgets, name) for name in overridden})
        try:
            template = resolve_template(args.template)
        except ValueError as err:
            raise ConfigError(str(err))
        args.template_spec = None if template is None else template.to_json()
        try:
            args.filters = DocumentFilters(args.min_duration, args.max_duration, args.min_side, args.max_aspect,
                                           args.silence_dbfs, args.min_caption_chars, args.max_caption_chars).to_json()
        except ValueError as err:
            raise ConfigError(f"filter flags: {err}")
        try:
            text = build_text_tokenizer(args.text_tokenizer)
        except ValueError as err:
            raise ConfigError(f"--text-tokenizer: {err}; give a tokenizer.json saved by Hugging Face tokenizers")
        try:
            vocabulary = build_vocabulary(text, [build_tokenizer(name, **kwargs) for name, kwargs in args.tokenizers])
        except (ValueError, OSError, KeyError) as err:
            raise ConfigError(f"cannot lay out the vocabulary of {[n for n, _ in args.tokenizers]}: {err}")
        args.vocabulary = vocabulary.to_json()

    def table_spec(self, args: argparse.Namespace) -> Any:
        from schemas.documents import DOCUMENTS_TABLE

        return DOCUMENTS_TABLE

    def writers(self, args: argparse.Namespace) -> List[Any]:
        from transforms.io.writers import format_writers

        return format_writers(csv(args.format), args.rows_per_shard)

    def write_vocabulary(self, args: argparse.Namespace) -> None:
        """Writes ``<output>/__vocab.json`` once; an output built with another vocabulary is refused.

        Raises:
            ConfigError: If ``__vocab.json`` exists with a different layout or versions.
        """
        from apache_beam.io.filesystems import FileSystems

        from transforms.io.layout import join, write_atomic

        path = join(args.output, VOCAB_FILE)
        data = json.dumps(args.vocabulary, indent=1, sort_keys=True).encode()
        if FileSystems.exists(path):
            with FileSystems.open(path) as f:
                if json.loads(f.read()) == args.vocabulary:
                    return
            raise ConfigError(f"{path} holds another vocabulary (other tokenizers, versions or text tokenizer); "
                              f"write to a new --output, or delete the old corpus first")
        write_atomic(path, data)

    def build(self, pipeline, sources: Sequence[str], args: argparse.Namespace, retry: Retry) -> Dict[str, Any]:
        import apache_beam as beam

        from transforms.corpus.dedup import DedupDocuments
        from transforms.corpus.documents import FILTERED_TAG, BuildDocuments, CountDocuments, DocumentModelHandler
        from transforms.errors import DEAD_LETTER_TAG

        self.write_vocabulary(args)
        handler = DocumentModelHandler(args.tokenizers, args.text_tokenizer, args.vocabulary, args.template_spec,
                                       args.filters, args.batch_size)
        read = self.read_media(pipeline, sources, args, retry)
        documents = read.samples | "BuildDocuments" >> BuildDocuments(handler)
        rows, filtered = documents["rows"], [documents[FILTERED_TAG]]
        if not args.no_dedup:
            deduped = {"rows": rows, "written": self.written_documents(pipeline, sources, args, retry)} | \
                "DedupDocuments" >> DedupDocuments()
            rows = deduped["rows"]
            filtered.append(deduped[FILTERED_TAG])
        rows = rows | "CountDocuments" >> beam.ParDo(CountDocuments()) | "CountTokenize" >> self.count("Tokenize")
        dead = (read.dead_letters, documents[DEAD_LETTER_TAG]) | "AllDeadLetters" >> beam.Flatten()
        return {"rows": rows, DEAD_LETTER_TAG: dead, "filtered": filtered | "AllFiltered" >> beam.Flatten(),
                "stats": read.stats}

    def written_documents(self, pipeline, sources: Sequence[str], args: argparse.Namespace, retry: Retry) -> Any:
        """Documents earlier runs wrote for the shards this run does not rewrite (``--resume``,
        ``--retry-dead-letters``), so a new sample duplicating one of them is filtered."""
        import apache_beam as beam

        from transforms.io.retry import LoadKeptRows

        finished = [] if not (args.resume or args.retry_dead_letters) else \
            [s for s in self.inputs(args) if s not in set(sources)]
        return (pipeline | "ListWrittenShards" >> beam.Create(finished)
                | "LoadWrittenDocuments" >> beam.ParDo(LoadKeptRows(args.output, self.table_spec(args), dict(retry.keys))))

    def after_pipeline(self, args: argparse.Namespace, options: Any, sources: List[str]) -> Dict[str, Any]:
        return run_export(args, options, sources)

    def summary_extras(self, args: argparse.Namespace, manifests: List[Dict[str, Any]]) -> Dict[str, Any]:
        extras: Dict[str, Any] = {
            "documents": sum(int(m.get("rows", 0)) for m in manifests),
            "tokens": sum(int(m.get("tokens", 0)) for m in manifests),
            "source_bytes": sum(int(m.get("source_bytes", 0)) for m in manifests),
        }
        for field in ("rows_by_modality", "documents_by_template", "tokens_by_modality", "parts_by_kind"):
            extras[field] = sum_counters(manifests, field)
        extras["vocab_size"] = args.vocabulary["size"]
        extras["tokenizers"] = [f"{name}@{version}" for name, version in sorted(args.vocabulary["tokenizers"].items())]
        return extras

    def after_run(self, args: argparse.Namespace, summary: Dict[str, Any]) -> None:
        """Prints what the corpus holds and where its documents and vocabulary are."""
        def listing(counts: Dict[str, int]) -> str:
            return ", ".join(f"{name} {n:,}" for name, n in counts.items())

        out = args.output.rstrip("/")
        lines = [f"  documents: {summary['documents']:,} ({listing(summary['documents_by_template'])})"]
        if summary.get("filtered_by_reason"):
            lines.append(f"  filtered by reason: {listing(summary['filtered_by_reason'])}")
        lines.append(f"  tokens: {summary['tokens']:,} ({listing(summary['tokens_by_modality'])}); "
                     f"vocabulary of {summary['vocab_size']:,} ids: {out}/{VOCAB_FILE}")
        lines.append(f"  corpus: {out}/documents/*.parquet (decode with operators.corpus.documents.DocumentDecoder)")
        print("\n".join(lines))


def build_parser() -> argparse.ArgumentParser:
    """The job's flags (common and own; Beam's options are parsed separately)."""
    return BuildCorpus().parser()


def run(argv=None, test_pipeline=None) -> Dict[str, Any]:
    """Runs build-corpus; returns the summary (also in ``<output>/__job/summary.json``)."""
    return BuildCorpus().run(argv, test_pipeline)
