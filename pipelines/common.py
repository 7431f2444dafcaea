"""What every job shares: flag parsing, option validation and pipeline creation."""

import argparse
import glob
import os
from typing import List, Optional, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions


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
    first try to download the Prism runner, which needs the network.
    """
    if test_pipeline is not None:
        return test_pipeline
    if options.view_as(StandardOptions).runner is None:
        from apache_beam.runners.portability.fn_api_runner import FnApiRunner

        return beam.Pipeline(runner=FnApiRunner(), options=options)
    return beam.Pipeline(options=options)


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Expands paths, globs and brace ranges (``shard-{000..009}.tar``) to existing inputs.

    Raises:
        ConfigError: If a pattern matches nothing, naming the pattern.
    """
    from transforms.read_shards import expand_braces

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
