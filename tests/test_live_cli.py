"""The live command lines: help for every flag, one-line errors from ``send``, clear reasons for the
wrong media, Ctrl-C without a traceback, and the random-weights warning."""

import wave

import numpy as np
import pytest

from schemas.live import PayloadKind


def _write_wav(path, seconds: float = 0.25) -> None:
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(16000 * seconds)) / 16000) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(tone.tobytes())


def _job_help(module) -> str:
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
        module.run(["--help"])
    return buffer.getvalue()


def test_every_flag_has_help_with_its_default():
    import re

    from pipelines import live_asr, live_video
    from pipelines.tools import send

    for module in (live_asr, live_video, send):
        text = _job_help(module)
        flags = set(re.findall(r"\n  (--[a-z-]+)", text))
        assert {"--port", "--host"} <= flags
        for flag in flags - {"--help"}:
            entry = text.split(f"\n  {flag}", 1)[1].split("\n  -", 1)[0]
            assert "(default:" in entry, (module.__name__, flag, entry)


def test_send_reports_bad_input_in_one_line(tmp_path, capsys):
    from pipelines import cli

    wav = tmp_path / "a.wav"
    _write_wav(wav)
    text = tmp_path / "notes.txt"
    text.write_text("not media")
    with socket_port() as port:
        cases = [
            ([str(wav), "--port", str(port), "--connect-timeout", "0"], "cannot connect"),
            ([str(text), "--record", str(tmp_path / "x.mbl")], "cannot be decoded"),
            ([str(wav), "--record", str(tmp_path / "missing" / "x.mbl")], "its folder does not exist"),
        ]
        for argv, message in cases:
            assert cli.main(["send", *argv]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert message in err[-1] and "Traceback" not in "\n".join(err), err


def socket_port():
    """A context giving a local port with nothing listening on it."""
    import contextlib
    import socket

    @contextlib.contextmanager
    def free():
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        yield port

    return free()


def test_live_asr_rejects_video_frames_with_a_clear_reason():
    from operators.asr.stream_engine import SampleFormatError, random_live_asr

    engine = random_live_asr()

    with pytest.raises(SampleFormatError, match="not PCM audio.*--media audio"):
        engine.decode(PayloadKind.IMAGE, 0, b"\xff\xd8\xff")


def test_ctrl_c_stops_live_video_with_one_line(tmp_path):
    """SIGINT on a running live job: exit status 130, a one-line message, no traceback; and the
    random-weights warning is printed when no --weights is given."""
    import os
    import signal
    import subprocess
    import sys
    import time

    with socket_port() as port:
        # As from a terminal: SIGINT raises KeyboardInterrupt even if this test runs where SIGINT
        # is ignored (a shell's background job), which a child would otherwise inherit.
        start = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "sys.argv[0] = 'mediabeam'; runpy.run_module('pipelines.cli', run_name='__main__')")
        proc = subprocess.Popen(
            [sys.executable, "-c", start, "live-video", "--variant", "tiny", "--size", "32",
             "--port", str(port), "--output", os.devnull],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        lines = []
        deadline = time.time() + 120
        while time.time() < deadline:
            line = proc.stderr.readline()
            lines.append(line)
            if "listening on" in line or not line:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=60)
    err = "".join(lines) + rest
    assert proc.returncode == 130, err
    assert "RANDOM weights" in err and "interrupted (Ctrl-C)" in err and "Traceback" not in err, err
