"""The WebSocket endpoint of the live jobs: 32 concurrent ``live-asr`` clients with interleaved
utterances get the same finals as offline; malformed, oversized and abruptly disconnected
clients get an error event or a clean close and change nobody else's results; limits refuse
with a reason; ``live-video`` clients get per-frame predictions; the streaming resampler
equals its whole-signal output."""

import asyncio
import contextlib
import json
import os
import socket
import threading
import time

import numpy as np
import torch
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from operators.asr.endpointing import DEFAULT_ENDPOINTING
from operators.streaming.resample import StreamResampler
from tests.live_speech import PHRASES, conversation, needs_espeak, pcm16

torch.set_num_threads(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def live_job(tmp_path, *extra):
    """``mediabeam live-asr`` (embedded model) with a WebSocket port, in a thread; yields
    ``(ws_url, events_path, outcome)``; on exit waits for the bounded run to end."""
    from pipelines import live_asr

    ws_port, events = free_port(), tmp_path / "events.jsonl"
    outcome = {}
    argv = ["--port", str(free_port()), "--ws-port", str(ws_port), "--output", str(events),
            "--max-idle-seconds", "2", "--idle-timeout", "2", "--stop-after", "150", *extra]
    job = threading.Thread(target=lambda: outcome.setdefault("result", live_asr.run(argv)))
    job.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", ws_port), 0.2):
            break
        time.sleep(0.1)
    try:
        yield f"ws://127.0.0.1:{ws_port}", events, outcome
    finally:
        job.join(120)
    assert not job.is_alive()


async def stream(url, sid, audio, rate, fmt, piece_s=0.25, pause=0.0):
    """One client: start, binary pieces, end; returns every event it received and the close code."""
    events = []
    async with connect(url, max_size=1 << 22) as ws:
        await ws.send(json.dumps({"type": "start", "stream_id": sid, "format": fmt, "sample_rate": rate}))
        step = int(rate * piece_s)
        for i in range(0, len(audio), step):
            piece = audio[i : i + step]
            await ws.send((pcm16(piece) if fmt == "pcm16" else piece.astype("<f4")).tobytes())
            await asyncio.sleep(pause)
        await ws.send(json.dumps({"type": "end"}))
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                events.append(json.loads(message))
        return events, ws.close_code


def _offline(engine, audio, rate):
    """The offline result: the whole signal resampled at once, the engine run on it in one piece."""
    if rate != 16000:
        audio = StreamResampler(rate, 16000).push(audio, final=True)
    state = engine.init_state()
    outputs, (state,) = engine.step([audio], [state])
    return [o for o in outputs[0] + engine.finalize(state) if o.get("event") == "final"]


def _finals(events):
    keep = ("utterance", "text", "start_s", "end_s", "reason")
    return [{k: e[k] for k in keep} for e in events if e["event"] == "final" and "utterance" in e]


def test_stream_resampler_pieces_equal_whole_and_track_a_tone():
    rng = np.random.default_rng(0)
    for rate_in in (48000, 44100, 8000):
        t = np.arange(rate_in) / rate_in
        x = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
        whole = StreamResampler(rate_in, 16000).push(x, final=True)
        resampler = StreamResampler(rate_in, 16000)
        pieces = [resampler.push(p) for p in np.split(x, np.sort(rng.choice(len(x), 40)))]
        assert np.array_equal(np.concatenate(pieces + [resampler.push(np.zeros(0), final=True)]), whole)
        assert len(whole) == 16000
        expected = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
        assert np.abs(whole[400:-400] - expected[400:-400]).max() < 2e-3, rate_in


@needs_espeak
def test_32_websocket_streams_equal_offline_and_bad_clients_change_nothing(tmp_path):
    from operators.asr.stream_engine import load_live_asr

    engine = load_live_asr(endpointing=DEFAULT_ENDPOINTING)
    talks = []
    for k in range(4):  # four conversations (utterance orders differ), each at 16 kHz s16 and 48 kHz f32
        audio, phrases = conversation([PHRASES[(k + j) % 4] for j in range(2)], seed=k)
        audio = pcm16(audio).astype(np.float32) / 32768.0
        audio48 = np.repeat(audio, 3)  # a 48 kHz signal (zero-order hold of the 16 kHz one)
        talks.append((audio, 16000, "pcm16", phrases))
        talks.append((audio48, 48000, "f32", phrases))
    expected = [_offline(engine, a, r) for a, r, _, _ in talks]
    for want, (_, _, _, phrases) in zip(expected, talks):
        assert [f["text"] for f in want] == phrases  # the model hears the phrases at either rate

    async def bad_clients(url):
        out = {}
        async with connect(url) as ws:  # malformed messages: each an error event, the connection goes on
            for message in ["not json", json.dumps({"type": "start", "format": "mp3", "sample_rate": 16000}),
                            b"\x00\x01", json.dumps({"type": "start", "format": "pcm16", "sample_rate": 0}),
                            json.dumps({"type": "start", "format": "pcm16", "sample_rate": 16000, "x": 1})]:
                await ws.send(message)
            out["malformed"] = [json.loads(await ws.recv()) for _ in range(5)]
            await ws.send(json.dumps({"type": "start", "stream_id": "odd", "format": "pcm16", "sample_rate": 16000}))
            await ws.send(b"\x00" * 3)  # not whole samples: an error from the engine, for this stream only
            await ws.send(json.dumps({"type": "end"}))
            out["odd"] = [json.loads(m) async for m in ws]
        async with connect(url, max_size=None) as ws:  # oversized: closed cleanly with 1009
            await ws.send(json.dumps({"type": "start", "stream_id": "big", "format": "f32", "sample_rate": 16000}))
            await ws.send(b"\x00" * (2 << 20))
            with contextlib.suppress(ConnectionClosed):
                async for _ in ws:
                    pass
            out["big"] = ws.close_code
        ws = await connect(url)  # abrupt disconnect mid-stream
        await ws.send(json.dumps({"type": "start", "stream_id": "gone", "format": "f32", "sample_rate": 16000}))
        await ws.send(np.zeros(8000, "<f4").tobytes())
        await asyncio.sleep(0.2)
        ws.transport.abort()
        return out

    async def main(url):
        clients = [stream(url, f"s{i}", *talks[i % len(talks)][:3], pause=0.002 * (i % 5)) for i in range(32)]
        return await asyncio.gather(bad_clients(url), *clients)

    with live_job(tmp_path) as (url, events_path, _):
        bad, *results = asyncio.run(main(url))
    for i, (events, code) in enumerate(results):
        assert code == 1000 and events[0]["event"] == "ready" and events[-1]["event"] == "final"
        assert _finals(events) == [{k: f[k] for k in ("utterance", "text", "start_s", "end_s", "reason")}
                                   for f in expected[i % len(talks)]], i
        assert not [e for e in events if e["event"] == "error"]
    reasons = [e["reason"] for e in bad["malformed"]]
    assert all(e["event"] == "error" for e in bad["malformed"]) and len(reasons) == 5
    assert "JSON" in reasons[0] and "'mp3'" in reasons[1] and "before the stream was started" in reasons[2]
    assert "sample_rate" in reasons[3] and "unknown fields ['x']" in reasons[4]
    assert [e["event"] for e in bad["odd"]] == ["ready", "error", "final"]
    assert "whole number of 2-byte samples" in bad["odd"][1]["reason"] and bad["odd"][1]["stream_id"] == "odd"
    assert bad["big"] == 1009
    log = [json.loads(line) for line in events_path.read_text().splitlines()]
    errors = {e["stream_id"]: e for e in log if e["event"] == "error"}
    assert "live_frame_bytes" in errors["big"]["reason"] and errors["gone"]["error_type"] == "ClientDisconnected"
    assert [e["reason"] for e in log if e["stream_id"] == "gone" and e["event"] == "final"] == ["idle"]
    for i in range(32):  # the log holds the same finals as the clients received
        assert _finals([e for e in log if e["stream_id"] == f"s{i}"]) == _finals(results[i][0])


@needs_espeak
def test_websocket_limits_refuse_with_a_reason(tmp_path):
    """Connection cap, bytes per second, slow readers and idle clients: each an error event and a close."""
    audio, _ = conversation(PHRASES[:1], seed=9)

    async def main(url):
        out = {}
        first = await connect(url)
        second = await connect(url)
        await first.send(json.dumps({"type": "start", "format": "pcm16", "sample_rate": 16000}))
        third = await connect(url)  # over live_connections=2
        out["cap"] = json.loads(await third.recv()), await _closed(third)
        await first.close()
        await second.send(json.dumps({"type": "start", "format": "f32", "sample_rate": 16000}))
        await second.send(np.zeros(48000, "<f4").tobytes())  # 192 kB at once, over 100 kB/s
        out["rate"] = json.loads(await second.recv()), json.loads(await second.recv()), await _closed(second)
        slow = await connect(url)  # events are queued for it beyond live_reply_bytes
        await slow.send(json.dumps({"type": "start", "format": "pcm16", "sample_rate": 16000}))
        with contextlib.suppress(ConnectionClosed):  # closed as soon as its first event overflows
            await slow.send(pcm16(audio[:16000]).tobytes())
            await slow.send(json.dumps({"type": "end"}))
        out["slow"] = await _closed(slow)
        idle = await connect(url)
        await idle.send(json.dumps({"type": "start", "format": "pcm16", "sample_rate": 16000}))
        out["idle"] = [json.loads(m) async for m in _messages(idle)], idle.close_code
        return out

    with live_job(tmp_path, "--budget", "live_connections=2", "--budget", "live_client_bytes_per_second=100000",
                  "--budget", "live_reply_bytes=64") as (url, events_path, _):
        out = asyncio.run(main(url))
    event, code = out["cap"]
    assert event["event"] == "error" and "budget live_connections=2 exceeded" in event["reason"] and code == 1013
    ready, event, code = out["rate"]
    assert "live_client_bytes_per_second=100000" in event["reason"] and code == 1008
    assert out["slow"] == 1008
    events, code = out["idle"]
    assert [e["event"] for e in events] == ["ready", "error"] and "idle" in events[1]["reason"] and code == 1008
    log = events_path.read_text()
    assert "live_reply_bytes=64 exceeded" in log


async def _closed(ws) -> int:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass
    return ws.close_code


async def _messages(ws):
    with contextlib.suppress(ConnectionClosed):
        async for message in ws:
            yield message


def test_websocket_video_frames_get_per_frame_predictions(tmp_path):
    """``live-video`` over WebSocket: JPEG frames in, the same predictions as stepping the video alone."""
    import io

    from PIL import Image

    from operators.video.stream_engine import live_co_x3d
    from pipelines import live_video

    frames = np.random.default_rng(5).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    jpegs = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=90)
        jpegs.append(buffer.getvalue())
    engine = live_co_x3d("tiny", 2, 5, None, 32, 3)
    decoded = [engine.decode(3, 0, j) for j in jpegs]
    expected = [(i, np.argsort(-out.ravel())[:3].tolist()) for i, out in engine.stepper.steps(decoded)]

    async def client(url):
        async with connect(url) as ws:
            await ws.send(json.dumps({"type": "start", "stream_id": "cam", "format": "jpeg"}))
            for jpeg in jpegs[:6] + [b"not an image"] + jpegs[6:]:
                await ws.send(jpeg)
            await ws.send(json.dumps({"type": "end"}))
            return [json.loads(m) async for m in _messages(ws)], ws.close_code

    ws_port = free_port()
    argv = ["--variant", "tiny", "--size", "32", "--num-classes", "5", "--top-k", "3", "--window", "2",
            "--port", str(free_port()), "--ws-port", str(ws_port), "--output", os.devnull,
            "--max-idle-seconds", "2", "--idle-timeout", "2", "--stop-after", "60"]
    outcome = {}
    job = threading.Thread(target=lambda: outcome.setdefault("result", live_video.run(argv)))
    job.start()
    deadline = time.time() + 60
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", ws_port), 0.2):
            break
        time.sleep(0.1)
    events, code = asyncio.run(client(f"ws://127.0.0.1:{ws_port}"))
    job.join(60)
    assert not job.is_alive() and code == 1000
    got = [(e["frame_index"], e["top_classes"]) for e in events if e["event"] == "prediction"]
    assert got == expected and expected
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and errors[0]["seq"] == 6 and errors[0]["stream_id"] == "cam"
    assert events[0]["event"] == "ready" and events[-1]["event"] == "final"
