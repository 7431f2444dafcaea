"""What every job shares: flag parsing, option validation and pipeline creation.

Importing this module costs nothing: Beam is imported inside the functions that need it,
after a job's flags have been checked (a bad flag fails in well under a second).
"""

import argparse
import glob
import logging
import os
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple

from pipelines.job_flags import ConfigError, split_args

if TYPE_CHECKING:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

WORKER_PLUGIN = "pipelines.worker_plugin"
# Warnings Beam prints on every run that say nothing about the job: the optional GCP client is
# absent (logged on import), and local workers have no semi-persistent folder (relayed by the runner).
_NOISE = ("apitools not found", "No semi_persistent_directory found")
_RELAY_LOGGER = "apache_beam.runners.portability.local_job_service"


class _QuietBeam(logging.Filter):
    """Drops the log records of :data:`_NOISE`."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg) + " ".join(str(a) for a in (record.args or ()) if isinstance(a, str))
        return not any(noise in text for noise in _NOISE)


def quiet_beam_warnings() -> None:
    """Installs the filter on the loggers that print those warnings (idempotent)."""
    for logger in (logging.getLogger(), logging.getLogger(_RELAY_LOGGER)):
        if not any(isinstance(f, _QuietBeam) for f in logger.filters):
            logger.addFilter(_QuietBeam())


def parse_job_args(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]
) -> Tuple[argparse.Namespace, "PipelineOptions"]:
    """Splits ``argv`` into the job's own flags and standard Beam ``PipelineOptions``.

    Flags the job does not declare go to Beam, as in Beam's own examples, so ``--runner``,
    ``--direct_num_workers`` etc. work unchanged on every job; a flag Beam does not know
    either fails with exit 2 and the nearest known flag.
    """
    args, beam_args = split_args(parser, argv)
    return args, pipeline_options(beam_args)


def pipeline_options(beam_args: Sequence[str]) -> "PipelineOptions":
    """Beam ``PipelineOptions`` from the flags a job left over (imports Beam, quietly)."""
    quiet_beam_warnings()
    from apache_beam.options.pipeline_options import PipelineOptions

    return PipelineOptions(list(beam_args))


def create_pipeline(
    options: "PipelineOptions", test_pipeline: Optional["beam.Pipeline"] = None
) -> "beam.Pipeline":
    """Returns ``test_pipeline`` if given, else a pipeline on the chosen runner.

    With no ``--runner`` the in-process ``FnApiRunner`` is used: the DirectRunner would
    first try to download the Prism runner, which needs the network. Every SDK worker
    imports ``pipelines.worker_plugin`` at start-up (``--beam_plugins``), which keeps
    torch out of workers that do not use it.
    """
    if test_pipeline is not None:
        return test_pipeline
    quiet_beam_warnings()
    import apache_beam as beam
    from apache_beam.options.pipeline_options import SetupOptions, StandardOptions, WorkerOptions
    from apache_beam.portability.api import beam_provision_api_pb2

    setup = options.view_as(SetupOptions)
    setup.beam_plugins = list(dict.fromkeys([*(setup.beam_plugins or []), WORKER_PLUGIN]))
    if options.view_as(StandardOptions).runner is None:
        worker = options.view_as(WorkerOptions)
        if worker.default_sdk_harness_log_level is None:  # local worker processes: warnings only
            worker.default_sdk_harness_log_level = "WARNING"
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo
        from apache_beam.runners.portability.portable_runner import JobServiceHandle

        # The FnApiRunner hands its workers no pipeline options unless told to; give them
        # the job's, as portable runners do (``--beam_plugins`` among them).
        worker_options = JobServiceHandle.encode_pipeline_options(options.get_all_options(drop_default=True))
        provision = ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=worker_options))
        return beam.Pipeline(runner=FnApiRunner(provision_info=provision), options=options)
    return beam.Pipeline(options=options)


def _braces(pattern: str) -> List[str]:
    if "{" not in pattern:
        return [pattern]
    from transforms.io.read_shards import expand_braces

    return expand_braces(pattern)


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Expands paths, globs and brace ranges (``shard-{000..009}.tar``) to existing inputs; a
    folder of tar shards becomes its shards, a folder of media files stays one input.

    Raises:
        ConfigError: If a pattern matches nothing, naming the pattern.
    """
    found: List[str] = []
    for pattern in patterns:
        matches: List[str] = []
        for expanded in _braces(pattern):
            if "://" in expanded:  # gs://, s3://, hdfs://: Beam's file systems list them
                quiet_beam_warnings()
                from apache_beam.io.filesystems import FileSystems

                try:
                    listed = FileSystems.match([expanded])
                except (IOError, ValueError) as err:
                    raise ConfigError(
                        f"--input {expanded!r} cannot be listed ({str(err)[:300]}); check the URL, "
                        "credentials and that the file system's extra is installed (apache-beam[gcp])"
                    )
                matches.extend(sorted(m.path for r in listed for m in r.metadata_list))
            elif os.path.exists(expanded):  # a literal name wins, even with [ or * in it
                matches.append(expanded)
            elif any(ch in expanded for ch in "*?["):
                matches.extend(sorted(glob.glob(expanded)))
        if not matches:
            raise ConfigError(
                f"--input {pattern!r} matches no file or folder; check the path "
                "(brace ranges look like shard-{000000..000009}.tar)"
            )
        unreadable = [m for m in matches if "://" not in m and not os.access(m, os.R_OK)]
        if unreadable:
            raise ConfigError(f"--input {unreadable[0]!r} is not readable; fix its permissions")
        found.extend(matches)
    return _folders_of_shards(sorted(dict.fromkeys(found)))


def _folders_of_shards(paths: List[str]) -> List[str]:
    """A folder whose files are all tar shards stands for those shards (``transforms.io.sources``)."""
    if not any(os.path.isdir(p) for p in paths):
        return paths
    from transforms.io.sources import InputError, expand_sources

    try:
        return expand_sources(paths)
    except InputError as err:
        raise ConfigError(str(err))
