"""The ``mediabeam`` command: fast, helpful failures on bad flags and job names, --version, --help."""

import argparse
import importlib
import os
import resource
import subprocess
import sys

import pytest

from pipelines.cli import JOBS, main
from pipelines.job import Job
from pipelines.job_flags import beam_flags, live_beam_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mediabeam(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *argv], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("flags, hint", [
    (["--row-per-shard", "2"], "did you mean --rows-per-shard?"),
    (["--no-reports"], "did you mean --no-report?"),
    (["--direct_num_worker=2"], "did you mean --direct_num_workers?"),
    (["--direct-num-workers", "2"], "did you mean --direct_num_workers?"),
])
def test_unknown_flag_exits_2_with_the_nearest_flag(tmp_path, capsys, flags, hint):
    code = main(["build-corpus", "--input", str(tmp_path), "--output", str(tmp_path / "o"), *flags])
    err = capsys.readouterr().err
    assert code == 2 and hint in err and "unknown flag" in err
    assert not os.path.exists(tmp_path / "o")


def test_beam_flags_pass_through_without_a_complaint(tmp_path):
    job = importlib.import_module("pipelines.build_corpus").BuildCorpus()
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    _, rest, _ = job.parse(["--input", str(tmp_path), "--output", str(tmp_path / "o"),
                            "--direct_running_mode=multi_processing", "--direct_num_workers", "2"])
    assert rest == ["--direct_running_mode=multi_processing", "--direct_num_workers", "2"]


def test_beam_flags_read_from_source_match_beams_own_list():
    assert live_beam_flags() - {"--help"} <= beam_flags()


def test_a_bad_flag_fails_fast_without_importing_beam_or_torch(tmp_path):
    """The error comes from the flag check alone: Beam and torch are never imported, and the whole
    process (interpreter start-up included) needs well under 2 s of CPU."""
    code = (
        "import sys\n"
        "from pipelines.cli import main\n"
        f"status = main(['build-corpus', '--input', {str(tmp_path)!r}, '--output', 'o', '--row-per-shard', '2'])\n"
        "heavy = [m for m in ('apache_beam', 'torch') if m in sys.modules]\n"
        "assert status == 2 and not heavy, (status, heavy)\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "did you mean --rows-per-shard" in done.stderr
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu_s < 2.0, f"{cpu_s:.2f} s of CPU to report a bad flag"


def test_version():
    done = _mediabeam("--version")
    assert done.returncode == 0 and done.stdout.startswith("mediabeam ") and done.stdout.split()[1][0].isdigit()


def test_job_name_typo_suggests_the_job(capsys):
    assert main(["build_corpus"]) == 2
    assert "Did you mean 'build-corpus'?" in capsys.readouterr().err
    assert main(["fit-tokeniser"]) == 2
    assert "Did you mean 'fit-tokenizer'?" in capsys.readouterr().err


def _job_classes():
    for name, target in sorted(JOBS.items()):
        module = importlib.import_module(target.split(":")[0])
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, Job) and value is not Job and value.name == name:
                yield name, value


def test_help_lists_defaults_and_every_flag_is_explained(capsys):
    jobs = dict(_job_classes())
    assert {"build-corpus", "fit-tokenizer"} <= set(jobs)
    for name, cls in jobs.items():
        parser = cls().parser()
        undocumented = [a.option_strings for a in parser._actions if not a.help]
        assert not undocumented, (name, undocumented)
        text = " ".join(parser.format_help().split())
        assert "``" not in text, name
        assert "--progress-interval SECONDS" in text and "(default: 10.0)" in text, name
    with pytest.raises(SystemExit):
        main(["build-corpus", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--rows-per-shard ROWS_PER_SHARD" in out and "(default: 10000)" in out
    assert "(default: None)" not in out and "(default: False)" not in out


def test_help_formatter_leaves_flags_without_a_meaningful_default_alone():
    parser = argparse.ArgumentParser(formatter_class=importlib.import_module("pipelines.job_flags").HelpFormatter)
    parser.add_argument("--x", default=3, help="x")
    parser.add_argument("--y", action="store_true", help="y")
    text = parser.format_help()
    assert "x (default: 3)" in text and "y (default" not in text


def test_transcribe_help_names_the_embedded_models_words(capsys):
    from operators.asr.embedded_vocabulary import COMMANDS, WORDS

    with pytest.raises(SystemExit):
        main(["transcribe", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert f"knows only {len(WORDS)} English words" in out
    assert "zero-nine" in out and all(word in out for word in COMMANDS)


def test_live_job_help_prints_no_beam_import_warnings():
    """The live jobs import Beam at import time; its "apitools not found" warning stays silent."""
    result = _mediabeam("live-asr", "--help")
    assert result.returncode == 0 and "--ws-port" in result.stdout
    assert "apitools" not in result.stdout + result.stderr and "WARNING" not in result.stderr
