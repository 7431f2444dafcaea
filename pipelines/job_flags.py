"""The flags every batch job shares, parsed and checked without importing Beam or torch.

A mistake in a flag should cost a fraction of a second, not the 7-13 s that importing
Beam and torch takes, so everything here uses the standard library and ``schemas`` only.
Beam's own flags (``--runner``, ``--direct_num_workers`` ...) are read from the source of
``apache_beam/options/pipeline_options.py`` (an ``ast`` walk, ~40 ms) instead of importing
it, so an unknown flag is reported at once with the nearest known flag.
"""

import argparse
import ast
import difflib
import functools
import importlib.util
import os
import re
from typing import Dict, FrozenSet, Iterable, List, Optional, Sequence, Tuple

from schemas.budgets import DEFAULT_BUDGETS, Budgets

BEAM_OPTIONS_FILE = os.path.join("options", "pipeline_options.py")


class ConfigError(SystemExit):
    """Bad configuration, reported before any pipeline starts (exit status 2).

    Import it from ``pipelines.common``; it lives here so this module needs nothing else.
    """

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """``--help`` shows each flag's default (where it has a meaningful one) and keeps the
    description's line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" in text or action.required or default in (None, False, [], argparse.SUPPRESS)
                or isinstance(action, argparse._HelpAction)):  # pylint: disable=protected-access
            return text
        return text + " (default: %(default)s)"


def job_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """An argument parser for a job: defaults in ``--help``, description without RST markup."""
    return argparse.ArgumentParser(
        prog=prog, description=plain_text(description), formatter_class=HelpFormatter, allow_abbrev=False
    )


def plain_text(text: str) -> str:
    """Docstring text for a terminal: RST double backticks and ``::`` markers removed."""
    return re.sub(r"``([^`]*)``", r"\1", text).replace("::\n", ":\n")


def add_common_arguments(parser: argparse.ArgumentParser, input_help: str, output_help: str) -> None:
    """Adds the flags every batch job takes (see ``docs/jobs.md``)."""
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH", help=input_help)
    parser.add_argument("--output", required=True, metavar="DIR", help=output_help)
    parser.add_argument("--resume", action="store_true",
                        help="skip input shards whose output manifest already exists")
    parser.add_argument("--retry-dead-letters", action="store_true",
                        help="re-run only the dead letters of finished shards and merge the outcome into their "
                             "output (unfinished shards are processed whole, as with --resume)")
    parser.add_argument("--progress-interval", type=float, default=10.0, metavar="SECONDS",
                        help="seconds between two progress lines on stderr")
    parser.add_argument("--no-report", action="store_true", help="skip report.json / report.html")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch intra-op threads per worker (default: CPU cores / workers)")
    parser.add_argument("--budget", action="append", default=[], metavar="NAME=VALUE",
                        help=f"raise or lower an input budget (repeatable; docs/security.md); defaults: "
                             f"{', '.join(f'{k}={v}' for k, v in vars(DEFAULT_BUDGETS).items())}")


@functools.lru_cache(maxsize=1)
def beam_flags() -> FrozenSet[str]:
    """Every ``--flag`` Beam's ``PipelineOptions`` subclasses declare, read from Beam's source.

    Falls back to importing Beam and asking the subclasses when the source is not found
    (e.g. Beam installed as a zip).
    """
    spec = importlib.util.find_spec("apache_beam")
    path = os.path.join(os.path.dirname(spec.origin), BEAM_OPTIONS_FILE) if spec and spec.origin else ""
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        return frozenset(
            arg.value
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument"
            for arg in node.args
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.startswith("--")
        )
    return live_beam_flags()


def live_beam_flags() -> FrozenSet[str]:
    """Beam's flags from the loaded ``PipelineOptions`` subclasses (imports Beam)."""
    from apache_beam.options.pipeline_options import PipelineOptions

    parser = argparse.ArgumentParser(add_help=False)
    seen = set()
    todo = [PipelineOptions]
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                sub._add_argparse_args(parser)  # pylint: disable=protected-access
                todo.append(sub)
    return frozenset(flag for flag in parser._option_string_actions if flag.startswith("--"))


def check_unknown_flags(rest: Sequence[str], ours: Iterable[str]) -> None:
    """Fails (exit 2) on a flag that is neither the job's nor Beam's, naming the nearest one.

    Args:
        rest: What the job's parser left over (``parse_known_args``).
        ours: The job's own option strings.
    """
    known_beam = beam_flags()
    ours = [f for f in ours if f.startswith("--")]
    for arg in rest:
        if not arg.startswith("-"):
            continue  # a value of the Beam flag before it
        flag = arg.split("=", 1)[0]
        if flag in known_beam:
            continue
        candidates = {f: f for f in ours}
        candidates.update({f: f for f in known_beam})
        candidates.update({"--" + f[2:].replace("_", "-"): f for f in known_beam})  # --direct-num-workers
        near = [candidates[n] for n in difflib.get_close_matches(flag, list(candidates), n=1, cutoff=0.6)]
        hint = f"; did you mean {near[0]}?" if near else "; run with --help to see the job's flags"
        raise ConfigError(f"unknown flag {flag}{hint}")


def _beam_value(rest: Sequence[str], flag: str) -> Optional[str]:
    """The value of Beam flag ``flag`` in ``rest`` (``--flag=v`` or ``--flag v``), if given."""
    for i, arg in enumerate(rest):
        if arg == flag and i + 1 < len(rest):
            return rest[i + 1]
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def default_threads(rest: Sequence[str]) -> int:
    """CPU cores of this machine divided by the local workers Beam will start (at least 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    workers = _beam_value(rest, "--direct_num_workers") or "1"
    try:
        workers_n = int(workers)
    except ValueError:
        raise ConfigError(f"--direct_num_workers {workers!r} must be a whole number")
    return max(cores // (workers_n if workers_n > 0 else cores), 1)  # Beam: 0 means one per core


def parse_budgets(values: Sequence[str]) -> Budgets:
    """``["member_bytes=1e6", ...]`` → a ``Budgets``; bad names or values fail with exit 2."""
    overrides: Dict[str, str] = {}
    for value in values:
        name, sep, text = value.partition("=")
        if not sep or not name:
            raise ConfigError(f"--budget {value!r} must look like NAME=VALUE, e.g. member_bytes=1e9")
        overrides[name.strip()] = text.strip()
    try:
        return DEFAULT_BUDGETS.with_overrides(overrides)
    except ValueError as err:
        raise ConfigError(f"--budget: {err}")


def check_common(args: argparse.Namespace, rest: Sequence[str]) -> None:
    """Checks the common flags; fills ``args.threads`` and ``args.budgets``."""
    if args.progress_interval <= 0:
        raise ConfigError("--progress-interval must be a positive number of seconds")
    if args.threads is None:
        args.threads = default_threads(rest)
    elif args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    args.budgets = parse_budgets(args.budget)


def split_args(
    parser: argparse.ArgumentParser, argv: Optional[Sequence[str]]
) -> Tuple[argparse.Namespace, List[str]]:
    """``parse_known_args`` that rejects flags neither the job nor Beam knows."""
    args, rest = parser.parse_known_args(argv)
    check_unknown_flags(rest, parser._option_string_actions)  # pylint: disable=protected-access
    return args, rest
