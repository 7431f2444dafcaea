"""``Job``: the one shape every batch job has (build-corpus, transcribe, video-features,
compress-features, fit-tokenizer).

Modelled on Beam's examples (``run(argv=None, test_pipeline=None)``; the job's flags come
from ``parse_known_args`` and the rest are Beam's ``PipelineOptions``) and on datatrove's
steps (a completion marker per task, stats per task). Every job gets the same flags and
behaviour (see ``docs/jobs.md``): ``--input``, ``--output``, ``--resume``,
``--retry-dead-letters``, ``--progress-interval``, ``--no-report``, ``--threads``,
``--budget NAME=VALUE``, a progress line on stderr, ``summary.json``, ``report.html`` and a
short human summary at the end.

A job subclasses :class:`Job` and fills in a few hooks::

    class Transcribe(Job):
        name = "transcribe"
        description = "speech to text with a streaming FastConformer"

        def add_arguments(self, parser): parser.add_argument("--model", help="...")
        def validate(self, args): ...           # cheap checks, raise ConfigError (exit 2)
        def table_spec(self, args): return TRANSCRIPTS   # schemas/ TableSpec
        def build(self, pipeline, sources, args, retry):
            read = self.read_media(pipeline, sources, args, retry)
            ...
            return {"rows": rows, "dead_letters": dead, "stats": read.stats}

    def run(argv=None, test_pipeline=None):
        return Transcribe().run(argv, test_pipeline)

Flags are parsed and checked with the standard library only; Beam and torch are imported
after :meth:`Job.validate`, so a mistake fails in well under a second.
"""

import argparse
import os
import shlex
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, FrozenSet, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from pipelines.common import ConfigError, expand_inputs, quiet_beam_warnings
from pipelines.job_flags import add_common_arguments, check_common, job_parser, split_args

if TYPE_CHECKING:
    import apache_beam as beam

DEFAULT_INPUT_HELP = "tar shards, globs, brace ranges (shard-{000000..000009}.tar) or folders of shards"


class Retry(NamedTuple):
    """Finished shards whose dead letters this run re-runs (``--retry-dead-letters``).

    Attributes:
        keys: Shard → keys of its dead letters; only these records are processed again.
        records: Shard → records its manifest counts (the base adds these as the shard's
            ``ShardStats``; a job's ``build`` emits stats for whole shards only).
        filtered: Shard → the records its earlier run filtered (the base writes them again,
            so the shard's accounting still holds after the retry).
    """

    keys: Mapping[str, FrozenSet[str]]
    records: Mapping[str, int]
    filtered: Mapping[str, Sequence[Any]] = {}

    def __bool__(self) -> bool:
        return bool(self.keys)

    @property
    def sources(self) -> List[str]:
        """The retried shards, sorted."""
        return sorted(self.keys)


NO_RETRY = Retry({}, {})


class MediaRead(NamedTuple):
    """What :meth:`Job.read_media` returns: samples, dead letters and whole-shard stats."""

    samples: "beam.PCollection"
    dead_letters: "beam.PCollection"
    stats: "beam.PCollection"


class Job:
    """Base of every batch job: flags, validation, resume/retry plan, graph, sink, summary, report.

    Subclasses set :attr:`name` and :attr:`description` and override the hooks
    :meth:`add_arguments`, :meth:`validate`, :meth:`build` and :meth:`table_spec` (and
    optionally :meth:`writers`, :meth:`summary_extras`, :meth:`inputs`, :meth:`needs_run`,
    :meth:`after_pipeline`, :meth:`after_run`).
    """

    name = ""
    description = ""
    """``--help`` text; empty: the docstring of the module that defines the job."""
    input_help = DEFAULT_INPUT_HELP
    output_help = "output directory (one manifest per finished input shard marks it done)"
    progress_stage = "Read"
    """``CountStage`` whose live count is the second figure of the progress line."""
    progress_unit = "samples"
    """What :attr:`progress_stage` counts, as the progress line names it."""

    def __init__(self) -> None:
        self.origin_s = time.time()
        self.progress_dir: Optional[str] = None
        self.flush_s = 5.0

    # ---- hooks -------------------------------------------------------------------------
    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Adds the job's own flags (every flag needs a help text; defaults show in --help)."""

    def validate(self, args: argparse.Namespace) -> None:
        """Checks the job's flags before anything heavy is imported; raises ``ConfigError``.

        Load a model here once when a bad model file must fail with exit 2 (loaders raise
        their own errors; turn them into ``ConfigError``).
        """

    def inputs(self, args: argparse.Namespace) -> List[str]:
        """The input shards (expanded ``--input``); raise ``ConfigError`` if unusable."""
        return expand_inputs(args.input)

    def build(
        self, pipeline: "beam.Pipeline", sources: Sequence[str], args: argparse.Namespace, retry: Retry
    ) -> Dict[str, "beam.PCollection"]:
        """Adds the job to ``pipeline``; returns the sink's inputs.

        Args:
            sources: Shards to process whole.
            retry: Finished shards of which only ``retry.keys`` are processed again
                (:meth:`read_media` handles both).

        Returns:
            ``{"rows": ..., "dead_letters": ..., "stats": ...}`` (and ``"filtered"`` if the
            job drops records on purpose): rows of :meth:`table_spec`, ``DeadLetter``s and one
            ``ShardStats`` per whole shard of ``sources``.
        """
        raise NotImplementedError

    def table_spec(self, args: argparse.Namespace) -> Any:
        """The ``TableSpec`` (schemas/) of the job's rows."""
        raise NotImplementedError

    def writers(self, args: argparse.Namespace) -> List[Any]:
        """The sink's writers (default: Parquet parts)."""
        from transforms.io.writers import ParquetWriter

        return [ParquetWriter()]

    def write(self, outputs: Dict[str, "beam.PCollection"], args: argparse.Namespace) -> "beam.PCollection":
        """Writes every shard through ``ShardSink``; returns the manifests."""
        from transforms.io.sink import ShardSink

        return outputs | "WriteShards" >> ShardSink(args.output, self.table_spec(args), writers=self.writers(args))

    def reload_kept_rows(self, pipeline: "beam.Pipeline", retry: Retry, args: argparse.Namespace):
        """The rows an earlier run kept for the retried shards (merged with the retried ones)."""
        import apache_beam as beam
        from transforms.io.retry import LoadKeptRows

        return (pipeline | "ListRetriedShards" >> beam.Create(retry.sources)
                | "LoadKeptRows" >> beam.ParDo(LoadKeptRows(args.output, self.table_spec(args), dict(retry.keys))))

    def needs_run(self, args: argparse.Namespace, todo: List[str], retry: Retry) -> bool:
        """Whether a pipeline runs at all (default: some shard is to be processed or retried)."""
        return bool(todo or retry)

    def summary_extras(self, args: argparse.Namespace, manifests: List[Dict[str, Any]]) -> Dict[str, Any]:
        """Job-specific totals added to ``summary.json`` (e.g. tokens per modality)."""
        return {}

    def after_pipeline(self, args: argparse.Namespace, options: Any, sources: List[str]) -> Dict[str, Any]:
        """Runs after the job's pipeline, before ``summary.json`` is written (e.g. build-corpus's
        export pipeline over the finished documents); returns fields for the summary."""
        return {}

    def after_run(self, args: argparse.Namespace, summary: Dict[str, Any]) -> None:
        """Called after the summary is written (e.g. to print where a model went)."""

    # ---- helpers for build() -----------------------------------------------------------
    def count(self, stage: str, **kwargs: Any) -> "beam.ParDo":
        """A pass-through ``CountStage`` step (metrics and live progress) named ``stage``.

        The progress line counts ``ShardsRead`` (one element per shard) and ``Read`` (one
        per sample); :meth:`read_media` adds both.
        """
        import apache_beam as beam
        from transforms.progress import CountStage

        return beam.ParDo(CountStage(stage, self.origin_s, progress_dir=self.progress_dir,
                                     flush_every_s=self.flush_s, **kwargs))

    def read_media(
        self, pipeline: "beam.Pipeline", sources: Sequence[str], args: argparse.Namespace, retry: Retry
    ) -> MediaRead:
        """Reads ``sources`` whole and, of the retried shards, only the failed keys."""
        import apache_beam as beam
        from transforms.errors import DEAD_LETTER_TAG
        from transforms.io.read_shards import ReadMediaShards
        from transforms.io.retry import KeepKeys
        from transforms.progress import member_bytes

        limit = {"budgets": args.budgets}
        samples, dead, stats = [], [], []
        if sources:
            read = pipeline | "ReadMediaShards" >> ReadMediaShards(list(sources), **limit)
            samples.append(read.samples)
            dead.append(read[DEAD_LETTER_TAG])
            stats.append(read.shard_stats | "CountShardsRead" >> self.count("ShardsRead"))
        if retry:
            keep = KeepKeys(dict(retry.keys))
            again = pipeline | "ReadRetriedShards" >> ReadMediaShards(retry.sources, **limit)
            _ = again.shard_stats | "CountRetriedShardsRead" >> self.count("ShardsRead")  # progress only
            samples.append(again.samples | "KeepRetriedSamples" >> beam.ParDo(keep))
            dead.append(again[DEAD_LETTER_TAG] | "KeepRetriedDeadLetters" >> beam.ParDo(keep))
        for name, parts in (("Samples", samples), ("DeadLetters", dead), ("ShardStats", stats)):
            if not parts:  # nothing to read (e.g. a fit that only reloads finished shards)
                parts.append(pipeline | f"No{name}" >> beam.Create([]))
        return MediaRead(
            samples | "AllSamples" >> beam.Flatten() | "CountRead" >> self.count("Read", size_fn=member_bytes),
            dead | "ReadDeadLetters" >> beam.Flatten(),
            stats | "AllShardStats" >> beam.Flatten(),
        )

    # ---- the run -----------------------------------------------------------------------
    def parser(self) -> argparse.ArgumentParser:
        """The job's argument parser: the common flags plus :meth:`add_arguments`."""
        parser = job_parser(f"mediabeam {self.name}", self.description or sys.modules[type(self).__module__].__doc__ or "")
        add_common_arguments(parser, self.input_help, self.output_help)
        self.add_arguments(parser)
        return parser

    def parse(self, argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, List[str], List[str]]:
        """Parses and validates everything without importing Beam or torch.

        Returns:
            ``(args, beam_args, sources)``.

        Raises:
            ConfigError: On any bad flag (exit 2), before anything heavy is imported.
        """
        quiet_beam_warnings()
        args, rest = split_args(self.parser(), argv)
        args.command = shlex.join(["mediabeam", self.name, *(sys.argv[1:] if argv is None else argv)])
        check_common(args, rest)
        self.validate(args)
        return args, rest, self.inputs(args)

    def run(self, argv: Optional[Sequence[str]] = None, test_pipeline: Optional["beam.Pipeline"] = None) -> Dict[str, Any]:
        """Runs the job; returns the summary (also in ``summary.json``)."""
        args, rest, sources = self.parse(argv)
        from pipelines.common import pipeline_options
        from transforms.io.layout import OutputNotWritable, check_output_writable

        try:
            check_output_writable(args.output)
        except OutputNotWritable as err:
            raise ConfigError(str(err))
        options = pipeline_options(rest)
        todo, retry = self.plan(args, sources)
        wall = 0.0
        metrics: Dict[str, Any] = {"counters": {}, "distributions": {}}
        if self.needs_run(args, todo, retry):
            metrics, wall = self._execute(args, options, todo, retry, test_pipeline)
        summary = self.summarize(args, sources, [*todo, *retry.sources], retry, wall, metrics)
        summary.update(self.after_pipeline(args, options, sources))
        self.finish(args, summary, metrics)
        return summary

    def plan(self, args: argparse.Namespace, sources: List[str]) -> Tuple[List[str], Retry]:
        """Shards to process whole and finished shards to retry (``--resume``,
        ``--retry-dead-letters``), from the manifests and dead letters under ``--output``."""
        if not (args.resume or args.retry_dead_letters):
            return list(sources), NO_RETRY
        from pipelines import job_output

        manifests = {m["source"]: m for m in job_output.read_manifests(args.output, sources)}
        todo = [s for s in sources if s not in manifests]
        retry = NO_RETRY
        if args.retry_dead_letters:
            keys = job_output.dead_letter_keys(args.output, sorted(manifests))
            retry = Retry({s: frozenset(k) for s, k in sorted(keys.items())},
                          {s: int(manifests[s]["records"]) for s in keys},
                          job_output.filtered_records(args.output, sorted(keys)))
        print(f"{self.name}: {len(sources) - len(todo)} of {len(sources)} shards already done"
              + (f"; retrying {sum(map(len, retry.keys.values()))} dead letters of {len(retry.keys)} shards"
                 if args.retry_dead_letters else ""), file=sys.stderr)
        return todo, retry

    def _execute(self, args, options, todo: List[str], retry: Retry, test_pipeline) -> Tuple[Dict[str, Any], float]:
        import apache_beam as beam

        from pipelines import job_output
        from pipelines.common import create_pipeline
        from pipelines.operability import ProgressMonitor, output_progress, run_pipeline
        from transforms.errors import DEAD_LETTER_TAG
        from transforms.progress import CountDeadLetters

        import pipelines.worker_plugin  # noqa: F401  RunInference without torch here too (see the module)

        start = time.perf_counter()  # graph building and worker start-up count: people wait for them too
        apply_threads(args.threads)
        self.origin_s = time.time()
        self.flush_s = min(5.0, args.progress_interval / 2)
        self.progress_dir = job_output.meta_path(args.output, "progress")
        _remove_tree(self.progress_dir)
        pipeline = create_pipeline(options, test_pipeline)
        outputs = dict(self.build(pipeline, todo, args, retry))
        if retry:
            outputs = self._with_retried_shards(pipeline, outputs, retry, args)
        outputs[DEAD_LETTER_TAG] = outputs[DEAD_LETTER_TAG] | "CountDeadLetters" >> beam.ParDo(CountDeadLetters())
        _ = self.write(outputs, args) | "CountWrite" >> self.count("Write")
        running = [*todo, *retry.sources]
        done = output_progress(args.output, running, self.origin_s - 1, self.progress_dir,
                               sample_stage=self.progress_stage)
        monitor = ProgressMonitor(len(running), done, args.progress_interval, sample_unit=self.progress_unit)
        metrics = run_pipeline(pipeline, monitor)
        wall = time.perf_counter() - start
        _remove_tree(self.progress_dir)
        return metrics, wall

    def _with_retried_shards(self, pipeline, outputs: Dict[str, Any], retry: Retry, args: argparse.Namespace):
        """Adds what the retried shards keep from their earlier run: their rows, their read
        counts and their filtered records, so each is written whole again and adds up."""
        import apache_beam as beam

        from transforms.io.read_shards import ShardStats

        kept = self.reload_kept_rows(pipeline, retry, args)
        outputs["rows"] = (outputs["rows"], kept) | "WithKeptRows" >> beam.Flatten()
        retried_stats = pipeline | "RetriedShardRecords" >> beam.Create(
            [ShardStats(s, n) for s, n in sorted(retry.records.items())])
        outputs["stats"] = (outputs["stats"], retried_stats) | "WithRetriedStats" >> beam.Flatten()
        kept_filtered = [record for _, records in sorted(retry.filtered.items()) for record in records]
        if kept_filtered:
            carried = pipeline | "KeptFiltered" >> beam.Create(kept_filtered)
            parts = (outputs["filtered"], carried) if "filtered" in outputs else (carried,)
            outputs["filtered"] = parts | "WithKeptFiltered" >> beam.Flatten()
        return outputs

    def summarize(self, args: argparse.Namespace, sources: List[str], ran: List[str], retry: Retry,
                  wall_s: float, metrics: Dict[str, Any]) -> Dict[str, Any]:
        """``summary.json``: totals over the manifests of every input shard, this run, extras."""
        from pipelines import job_output, summary as summ
        from pipelines.operability import stage_throughput

        manifests = job_output.read_manifests(args.output, sources)
        out: Dict[str, Any] = {"job": self.name, "output": args.output, "inputs": len(sources)}
        out.update(summ.totals(manifests))
        out.update(summ.dead_letter_reasons(job_output.read_dead_letters(manifests, args.output)))
        for field in ("dead_letters_by_stage", "dead_letters_by_type", "filtered_by_reason"):
            out[field] = summ.sum_counters(manifests, field)
        out.update(self.summary_extras(args, manifests))
        run_info = summ.this_run(wall_s, ran, sources, manifests, {s: len(k) for s, k in retry.keys.items()})
        out["this_run"] = run_info
        for field in ("wall_s", "skipped_by_resume", "retried_dead_letters", "recovered_by_retry"):
            if field in run_info:
                out[field] = run_info[field]
        out["stage_throughput"] = stage_throughput(metrics)
        return out

    def finish(self, args: argparse.Namespace, summary: Dict[str, Any], metrics: Dict[str, Any]) -> None:
        """Writes ``summary.json`` and the report, prints the human summary."""
        from pipelines import job_output, summary as summ

        job_output.write_meta(args.output, "summary.json", summ.to_json(summary))
        if not args.no_report:
            from pipelines.report import write_report

            write_report(args.output, summary, summary["stage_throughput"], metrics)
        print("\n".join(summ.human_summary(f"mediabeam {self.name}", summary, not args.no_report)))
        self.after_run(args, summary)


def apply_threads(threads: int) -> None:
    """Sets torch's intra-op threads for every worker this run starts.

    Worker processes read ``OMP_NUM_THREADS`` when they import torch (they inherit this
    process's environment); in-process workers share this process, so torch is told
    directly if it is already imported (without importing it otherwise).
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "MEDIABEAM_THREADS"):
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(threads)


def _remove_tree(directory: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.exists(directory):
        FileSystems.delete([directory])
