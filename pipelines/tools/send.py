"""``mediabeam send FILE``: streams a local audio or video file to a live pipeline.

Audio is decoded to 16 kHz mono and sent as 16-bit PCM chunks of ``--chunk-seconds``; video
is decoded at ``--fps`` and sent as one JPEG per frame. ``--speed 1`` (``--realtime``) paces
the chunks as a live microphone/camera would, higher is faster, 0 sends as fast as possible.
With ``--record FILE.mbl`` the frames are written to a recording (replayed by
``live-asr --tail``) instead of a socket. Event lines that the pipeline sends back
(``live-* --reply``) are printed; for transcripts the assembled text is printed at the end.
"""

import argparse
import functools
import io
import json
import os
import socket
import sys
import threading
import time
from typing import Iterator, List, Optional, Sequence

import numpy as np

from pipelines.common import ConfigError
from schemas.live import Frame, PayloadKind, encode_frame

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def audio_frames(samples: np.ndarray, stream_id: str, chunk_seconds: float, rate: int = 16000) -> Iterator[Frame]:
    """PCM s16le frames of ``chunk_seconds``; the last one carries end-of-stream."""
    pcm = (np.clip(samples, -1.0, 32767 / 32768) * 32768.0).astype("<i2")
    step = max(1, int(round(chunk_seconds * rate)))
    starts = list(range(0, len(pcm), step)) or [0]
    for seq, start in enumerate(starts):
        yield Frame(stream_id, seq, seq == len(starts) - 1, PayloadKind.PCM_S16LE, rate,
                    pcm[start : start + step].tobytes())


def video_frames(path: str, stream_id: str, fps: float, size: int) -> Iterator[Frame]:
    """One JPEG frame per decoded video frame; a bare end-of-stream frame at the end."""
    from PIL import Image

    from operators.media.decode import iter_video_frames

    seq = 0
    for rgb in iter_video_frames(path, fps, size, size):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format="JPEG", quality=90)
        yield Frame(stream_id, seq, False, PayloadKind.IMAGE, 0, buffer.getvalue())
        seq += 1
    yield Frame(stream_id, seq, True, PayloadKind.NONE, 0, b"")


def _audio_seconds(frame: Frame) -> float:
    return len(frame.payload) / 2 / frame.sample_rate


def _video_seconds(frame_seconds: float, frame: Frame) -> float:
    return 0.0 if frame.kind == PayloadKind.NONE else frame_seconds


def pace(frames: Iterator[Frame], seconds_per_frame, speed: float) -> Iterator[Frame]:
    """Yields frames no earlier than their media time divided by ``speed`` (0: no pacing).

    A frame is released once all of its content would have been captured live.
    """
    start = time.monotonic()
    media_time = 0.0
    for frame in frames:
        media_time += seconds_per_frame(frame)
        if speed > 0:
            delay = start + media_time / speed - time.monotonic()
            if delay > 0:
                time.sleep(delay)
        yield frame


def connect(host: str, port: int, timeout: float = 10.0) -> socket.socket:
    """Connects, retrying while the pipeline is still starting (up to ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection((host, port), timeout=5.0)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def read_events(sock: socket.socket, sink: List[dict], done: threading.Event, echo: bool) -> None:
    """Collects JSON event lines sent back by the pipeline until the stream's final event."""
    buffer = b""
    sock.settimeout(0.2)
    while not done.is_set():
        try:
            data = sock.recv(1 << 16)
        except socket.timeout:
            continue
        except OSError:
            return
        if not data:
            return
        buffer += data
        *lines, buffer = buffer.split(b"\n")
        for line in lines:
            event = json.loads(line)
            event["client_received_at"] = time.time()
            sink.append(event)
            if echo:
                print(line.decode("utf-8"), flush=True)
            if event.get("event") == "final":
                done.set()


def run(argv: Optional[Sequence[str]] = None, test_pipeline=None) -> dict:
    """Sends one file as one stream; returns a summary (frames sent, events, transcript)."""
    del test_pipeline  # a client, not a pipeline
    parser = argparse.ArgumentParser(prog="mediabeam send", description=__doc__.split("\n")[0])
    parser.add_argument("file", help="audio or video file")
    parser.add_argument("--stream-id", default=None, help="stream id (default: the file name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--realtime", action="store_true", help="pace as a live source (same as --speed 1)")
    parser.add_argument("--speed", type=float, default=0.0, help="media seconds per wall second (0: no pacing)")
    parser.add_argument("--chunk-seconds", type=float, default=0.5, help="audio per frame")
    parser.add_argument("--fps", type=float, default=8.0, help="video frames per second")
    parser.add_argument("--size", type=int, default=160, help="video frames are scaled to SIZE×SIZE")
    parser.add_argument("--record", default=None, help="write a .mbl recording instead of sending")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the final event")
    parser.add_argument("--quiet", action="store_true", help="do not print the events")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.file):
        raise ConfigError(f"{args.file!r} is not a file")
    if args.chunk_seconds <= 0 or args.fps <= 0 or args.speed < 0:
        raise ConfigError("--chunk-seconds and --fps must be positive, --speed ≥ 0")
    speed = 1.0 if args.realtime else args.speed
    stream_id = args.stream_id or os.path.basename(args.file)
    if args.file.lower().endswith(VIDEO_SUFFIXES):
        frames = video_frames(args.file, stream_id, args.fps, args.size)
        seconds = functools.partial(_video_seconds, 1.0 / args.fps)
    else:
        from operators.media.decode import decode_audio

        frames = audio_frames(decode_audio(args.file), stream_id, args.chunk_seconds)
        seconds = _audio_seconds
    sent = 0
    if args.record:
        with open(args.record, "wb") as handle:
            for frame in pace(frames, seconds, speed):
                handle.write(encode_frame(frame))
                handle.flush()
                sent += 1
        return {"frames": sent, "record": args.record}
    events: List[dict] = []
    done = threading.Event()
    with connect(args.host, args.port) as sock:
        reader = threading.Thread(target=read_events, args=(sock, events, done, not args.quiet), daemon=True)
        reader.start()
        for frame in pace(frames, seconds, speed):
            sock.sendall(encode_frame(frame))
            sent += 1
        done.wait(args.wait)
        done.set()
        reader.join()
    text = "".join(e.get("text", "") for e in events if e.get("event") in ("partial", "final"))
    if events and not args.quiet:
        print(f"transcript: {text}" if any("text" in e for e in events) else f"{len(events)} events",
              file=sys.stderr)
    return {"frames": sent, "events": len(events), "transcript": text}
