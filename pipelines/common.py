"""What every job shares: flag parsing, option validation and pipeline creation."""

import argparse
import glob
import os
from typing import List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, SetupOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2

WORKER_PLUGIN = "pipelines.worker_plugin"


class ConfigError(SystemExit):
    """Bad configuration, reported before any pipeline starts (exit status 2)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def parse_job_args(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]
) -> Tuple[argparse.Namespace, PipelineOptions]:
    """Splits ``argv`` into the job's own flags and standard Beam ``PipelineOptions``.

    Unknown flags are handed to Beam, as in Beam's own examples, so ``--runner``,
    ``--direct_num_workers`` etc. work unchanged on every job.
    """
    args, beam_args = parser.parse_known_args(argv)
    bad = [a for a in beam_args if a.startswith("-") and not a.startswith("--")]
    if bad:
        raise ConfigError(f"unknown flag(s) {bad}; run with --help to see the job's flags")
    return args, PipelineOptions(beam_args)


def create_pipeline(
    options: PipelineOptions, test_pipeline: Optional[beam.Pipeline] = None
) -> beam.Pipeline:
    """Returns ``test_pipeline`` if given, else a pipeline on the chosen runner.

    With no ``--runner`` the in-process ``FnApiRunner`` is used: the DirectRunner would
    first try to download the Prism runner, which needs the network. Every SDK worker
    imports ``pipelines.worker_plugin`` at start-up (``--beam_plugins``), which keeps
    torch out of workers that do not use it.
    """
    if test_pipeline is not None:
        return test_pipeline
    setup = options.view_as(SetupOptions)
    setup.beam_plugins = list(dict.fromkeys([*(setup.beam_plugins or []), WORKER_PLUGIN]))
    if options.view_as(StandardOptions).runner is None:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner
        from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo
        from apache_beam.runners.portability.portable_runner import JobServiceHandle

        # The FnApiRunner hands its workers no pipeline options unless told to; give them
        # the job's, as portable runners do (``--beam_plugins`` among them).
        worker_options = JobServiceHandle.encode_pipeline_options(options.get_all_options(drop_default=True))
        provision = ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=worker_options))
        return beam.Pipeline(runner=FnApiRunner(provision_info=provision), options=options)
    return beam.Pipeline(options=options)


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Expands paths, globs and brace ranges (``shard-{000..009}.tar``) to existing inputs.

    Raises:
        ConfigError: If a pattern matches nothing, naming the pattern.
    """
    from transforms.io.read_shards import expand_braces

    found: List[str] = []
    for pattern in patterns:
        matches: List[str] = []
        for expanded in expand_braces(pattern):
            if "://" in expanded:  # gs://, s3://, hdfs://: Beam's file systems list them
                try:
                    listed = FileSystems.match([expanded])
                except (IOError, ValueError) as err:
                    raise ConfigError(
                        f"--input {expanded!r} cannot be listed ({str(err)[:300]}); check the URL, "
                        "credentials and that the file system's extra is installed (apache-beam[gcp])"
                    )
                matches.extend(sorted(m.path for r in listed for m in r.metadata_list))
            elif any(ch in expanded for ch in "*?["):
                matches.extend(sorted(glob.glob(expanded)))
            elif os.path.exists(expanded):
                matches.append(expanded)
        if not matches:
            raise ConfigError(
                f"--input {pattern!r} matches no file or folder; check the path "
                "(brace ranges look like shard-{000000..000009}.tar)"
            )
        unreadable = [m for m in matches if "://" not in m and not os.access(m, os.R_OK)]
        if unreadable:
            raise ConfigError(f"--input {unreadable[0]!r} is not readable; fix its permissions")
        found.extend(matches)
    return sorted(dict.fromkeys(found))
