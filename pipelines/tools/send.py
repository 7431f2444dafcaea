"""``mediabeam send FILE``: streams a local audio or video file to a live pipeline.

Audio is decoded to 16 kHz mono and sent as 16-bit PCM chunks of ``--chunk-seconds``; video
is decoded at ``--fps`` and sent as one JPEG per frame. ``--media`` chooses which: by default
video files (``.mp4`` ...) are sent as frames (for ``live-video``) and anything else as audio;
``--media audio`` sends a video file's sound track (for ``live-asr``). ``--speed 1`` (``--realtime``) paces
the chunks as a live microphone/camera would, higher is faster, 0 sends as fast as possible.
With ``--record FILE.mbl`` the frames are written to a recording (replayed by
``live-asr --tail``) instead of a socket. Event lines that the pipeline sends back
(``live-* --reply``) are printed; for transcripts the assembled text is printed at the end.

A file that is not media, no server listening, or a ``--record`` folder that does not exist
is one line on stderr and exit status 2; Ctrl-C stops with one line and status 130.
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
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from operators.tokenizers.base import MediaError
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

    from operators.media.video import iter_video_frames

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
            try:
                event = json.loads(line)
            except ValueError:
                continue
            event["client_received_at"] = time.time()
            sink.append(event)
            if echo:
                print(line.decode("utf-8"), flush=True)
            if event.get("event") == "final":
                done.set()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mediabeam send", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("file", help="audio or video file")
    parser.add_argument("--stream-id", default=None, help="stream id (default: the file name)")
    parser.add_argument("--media", choices=("auto", "audio", "video"), default="auto",
                        help="what to send: auto = frames for video files, audio otherwise; "
                             "audio = the sound track (for live-asr); video = frames (for live-video)")
    parser.add_argument("--host", default="127.0.0.1", help="address the live job listens on")
    parser.add_argument("--port", type=int, default=8765, help="port the live job listens on (its --port)")
    parser.add_argument("--connect-timeout", type=float, default=10.0,
                        help="seconds to keep retrying while the live job starts")
    parser.add_argument("--realtime", action="store_true", help="pace as a live source (same as --speed 1)")
    parser.add_argument("--speed", type=float, default=0.0, help="media seconds per wall second (0: no pacing)")
    parser.add_argument("--chunk-seconds", type=float, default=0.5, help="audio per frame")
    parser.add_argument("--fps", type=float, default=8.0, help="video frames per second")
    parser.add_argument("--size", type=int, default=160, help="video frames are scaled to SIZE×SIZE")
    parser.add_argument("--record", default=None, help="write a .mbl recording to this path instead of sending")
    parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the final event")
    parser.add_argument("--quiet", action="store_true", help="do not print the events")
    return parser


def _first_checked(frames: Iterator[Frame], path: str) -> Iterator[Frame]:
    """Decodes the first frame now, so a file that is not media fails before anything is sent."""
    try:
        first = next(frames)
    except MediaError as err:
        raise ConfigError(f"{path!r} cannot be decoded as media ({err})") from None
    except StopIteration:
        raise ConfigError(f"{path!r} holds no frames to send") from None

    def chained() -> Iterator[Frame]:
        yield first
        try:
            yield from frames
        except MediaError as err:
            raise ConfigError(f"{path!r}: decoding failed part-way ({err})") from None

    return chained()


def assemble_transcript(events: List[Dict[str, Any]]) -> str:
    """A stream's transcript from its events: the utterances' ``final`` texts, space-separated,
    then what the partial deltas added since the last one (without endpointing: all partials)."""
    done, current = [], ""
    for event in events:
        if event.get("event") == "partial":
            current += event.get("text", "")
        elif event.get("event") == "final" and "utterance" in event:
            done.append(event["text"])
            current = ""
    return " ".join(done + ([current.strip()] if current.strip() else [])) if done else current


def run(argv: Optional[Sequence[str]] = None, test_pipeline=None) -> dict:
    """Sends one file as one stream; returns a summary (frames sent, events, transcript)."""
    del test_pipeline  # a client, not a pipeline
    args = _parser().parse_args(argv)
    if not os.path.isfile(args.file):
        raise ConfigError(f"{args.file!r} is not a file")
    if args.chunk_seconds <= 0 or args.fps <= 0 or args.speed < 0 or args.size < 8:
        raise ConfigError("--chunk-seconds and --fps must be positive, --speed ≥ 0, --size ≥ 8")
    if args.record and not os.path.isdir(os.path.dirname(os.path.abspath(args.record))):
        raise ConfigError(f"--record {args.record!r}: its folder does not exist; create it first")
    speed = 1.0 if args.realtime else args.speed
    stream_id = args.stream_id or os.path.basename(args.file)
    media = args.media
    if media == "auto":
        media = "video" if args.file.lower().endswith(VIDEO_SUFFIXES) else "audio"
    if media == "video":
        frames = video_frames(args.file, stream_id, args.fps, args.size)
        seconds = functools.partial(_video_seconds, 1.0 / args.fps)
        what = f"video frames (JPEG {args.size}x{args.size} at {args.fps:g} fps; for live-asr use --media audio)"
    else:
        from operators.media.audio import decode_audio

        try:
            samples = decode_audio(args.file)
        except MediaError as err:
            raise ConfigError(f"{args.file!r} cannot be decoded as audio ({err})") from None
        frames = audio_frames(samples, stream_id, args.chunk_seconds)
        seconds = _audio_seconds
        what = f"16 kHz PCM audio in {args.chunk_seconds:g} s chunks"
    frames = _first_checked(frames, args.file)
    target = args.record or f"{args.host}:{args.port}"
    print(f"mediabeam send: {args.file} as stream {stream_id!r} to {target}: {what}", file=sys.stderr)
    try:
        return _send(args, frames, seconds, speed)
    except KeyboardInterrupt:
        print("mediabeam send: interrupted (Ctrl-C); the stream was not ended", file=sys.stderr)
        raise SystemExit(130) from None


def _send(args: argparse.Namespace, frames: Iterator[Frame], seconds, speed: float) -> dict:
    sent = 0
    if args.record:
        with open(args.record, "wb") as handle:
            for frame in pace(frames, seconds, speed):
                handle.write(encode_frame(frame))
                handle.flush()
                sent += 1
        return {"frames": sent, "record": args.record}
    try:
        sock = connect(args.host, args.port, args.connect_timeout)
    except OSError as err:
        raise ConfigError(f"cannot connect to {args.host}:{args.port} ({err.strerror or err}); start "
                          "`mediabeam live-asr` / `live-video` first or pass its --host/--port") from None
    events: List[dict] = []
    done = threading.Event()
    with sock:
        reader = threading.Thread(target=read_events, args=(sock, events, done, not args.quiet), daemon=True)
        reader.start()
        try:
            for frame in pace(frames, seconds, speed):
                sock.sendall(encode_frame(frame))
                sent += 1
        except OSError as err:
            raise ConfigError(f"the live job at {args.host}:{args.port} closed the connection after {sent} "
                              f"frames ({err.strerror or err})") from None
        done.wait(args.wait)
        done.set()
        reader.join()
    text = assemble_transcript(events)
    if events and not args.quiet:
        print(f"transcript: {text}" if any("text" in e for e in events) else f"{len(events)} events",
              file=sys.stderr)
    return {"frames": sent, "events": len(events), "transcript": text}
