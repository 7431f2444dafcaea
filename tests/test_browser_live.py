"""The live pages in real headless Chromium: the microphone page streams a speech file (Chromium's
fake capture device) to ``live-asr`` over WebSocket and shows the same transcript as offline
transcription of that file; the camera page gets per-frame top classes from ``live-video``.

Chromium is driven over its DevTools protocol (a WebSocket, with the ``websockets`` client).
The tests skip, saying why, only where chromium or espeak-ng is not installed (``make install``
installs both with apt-get where it can).
"""

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest
from websockets.asyncio.client import connect

from tests.live_speech import conversation, needs_espeak, pcm16, write_wav
from tests.test_live_ws import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed and could not be "
                                    "(apt-get install -y chromium needs root and Debian's package lists)")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
         "--use-fake-device-for-media-stream", "--autoplay-policy=no-user-gesture-required",
         "--remote-debugging-port=0"]


@contextlib.contextmanager
def live_job(module, argv):
    """A live job (``module.run(argv)``) in a thread; waits for its bounded run to end on exit."""
    outcome = {}
    job = threading.Thread(target=lambda: outcome.setdefault("result", module.run(argv)))
    job.start()
    try:
        yield outcome
    finally:
        job.join(120)
    assert not job.is_alive()


def _wait_http(url: str, seconds: float = 60) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        with contextlib.suppress(OSError):
            urllib.request.urlopen(url, timeout=1).read()
            return
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer")


@contextlib.contextmanager
def chromium(tmp_path, url, *extra):
    """Headless Chromium on ``url`` with a fresh profile; yields the page's DevTools WebSocket URL."""
    profile = tmp_path / "profile"
    proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *extra, url],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file, deadline = profile / "DevToolsActivePort", time.time() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            assert time.time() < deadline and proc.poll() is None, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        while True:
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5).read())
            pages = [t for t in targets if t["type"] == "page" and t["url"].startswith(url.split("?")[0])]
            if pages:
                break
            assert time.time() < deadline, targets
            time.sleep(0.2)
        yield pages[0]["webSocketDebuggerUrl"]
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        if proc.poll() is None:
            proc.kill()


async def _page_result(devtools_url: str, timeout: float) -> dict:
    """Waits until the page says it is done; returns its state and what it shows."""
    expression = ("JSON.stringify({done: window.mediabeamLive && window.mediabeamLive.done, "
                  "state: window.mediabeamLive, transcript: (document.getElementById('transcript') || {}).textContent, "
                  "latency: document.getElementById('latency').textContent, "
                  "classes: (document.getElementById('classes') || {}).textContent})")
    async with connect(devtools_url, max_size=1 << 24) as ws:
        deadline = time.time() + timeout
        ident = 0
        while True:
            ident += 1
            await ws.send(json.dumps({"id": ident, "method": "Runtime.evaluate", "params": {"expression": expression}}))
            while True:
                reply = json.loads(await ws.recv())
                if reply.get("id") == ident:
                    break
            value = reply.get("result", {}).get("result", {}).get("value")
            shown = json.loads(value) if value else {}
            if shown.get("done") or time.time() > deadline:
                return shown
            await asyncio.sleep(0.25)


@needs_chromium
@needs_espeak
def test_microphone_page_shows_the_offline_transcript(tmp_path):
    from operators.asr.stream_engine import load_live_asr
    from pipelines import live_asr

    audio, _ = conversation(["one two three", "stop"], seed=5)
    audio = np.concatenate([np.zeros(8000, np.float32), audio])
    wav = tmp_path / "speech.wav"
    write_wav(wav, audio)
    expected = load_live_asr().asr.transcribe([pcm16(audio).astype(np.float32) / 32768.0])[0]
    assert expected == "one two three stop"
    http_port = free_port()
    argv = ["--port", str(free_port()), "--ws-port", str(free_port()), "--http-port", str(http_port),
            "--output", os.devnull, "--max-idle-seconds", "3", "--idle-timeout", "3", "--stop-after", "120"]
    seconds = len(audio) / 16000 + 0.5
    with live_job(live_asr, argv):
        url = f"http://127.0.0.1:{http_port}/?auto=1&seconds={seconds:.1f}&stream_id=browser-mic"
        _wait_http(f"http://127.0.0.1:{http_port}/config.json")
        with chromium(tmp_path, url, f"--use-file-for-fake-audio-capture={wav}%noloop") as devtools:
            shown = asyncio.run(_page_result(devtools, seconds + 60))
    assert shown.get("done"), shown
    assert shown["state"]["errors"] == [], shown
    assert shown["transcript"] == expected, shown
    assert shown["state"]["finals"] == ["one two three", "stop"]
    assert "partial latency: last" in shown["latency"] and shown["state"]["latencies"], shown


@needs_chromium
def test_camera_page_shows_top_classes(tmp_path):
    from pipelines import live_video

    http_port = free_port()
    argv = ["--variant", "tiny", "--size", "32", "--num-classes", "7", "--top-k", "3", "--window", "2",
            "--port", str(free_port()), "--ws-port", str(free_port()), "--http-port", str(http_port),
            "--output", os.devnull, "--max-idle-seconds", "3", "--idle-timeout", "3", "--stop-after", "120"]
    with live_job(live_video, argv):
        url = f"http://127.0.0.1:{http_port}/?auto=1&seconds=3&fps=5"
        _wait_http(f"http://127.0.0.1:{http_port}/config.json")
        with chromium(tmp_path, url) as devtools:
            shown = asyncio.run(_page_result(devtools, 60))
    assert shown.get("done") and shown["state"]["errors"] == [], shown
    predictions = shown["state"]["finals"]
    assert len(predictions) >= 2 and all(len(p) == 3 and set(p) <= set(range(7)) for p in predictions), shown
    assert "class" in shown["classes"] and "prediction latency" in shown["latency"], shown
