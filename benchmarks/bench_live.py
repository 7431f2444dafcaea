"""Live ASR latency over loopback TCP and WebSocket, at 1, 8, 32 and 128 streams (one bounded run).

Starts ``mediabeam live-asr --reply --ws-port`` (FnApiRunner, in a subprocess; the embedded model
with endpointing on) once per configuration. Per level, N clients stream in real time, each
starting at a random phase, a conversation of two espeak-ng utterances each followed by a
1.6 s pause (quiet noise), in ``--piece-seconds`` s16 pieces: over TCP (``mediabeam send``'s
framing) and over WebSocket (the browser protocol), one transport after the other. Measured on
the client, per event:

* **partial**: from sending the piece whose last sample completed a model step to receiving
  that step's ``partial`` (the event's ``seq`` names the piece);
* **final**: likewise for an utterance's ``final`` (from the piece that completed the step in
  which the endpoint rule fired);
* **speech end → final**: from sending the utterance's last speech sample to its ``final``.
  This includes the endpoint rule's trailing silence (``--endpoint-silence``) and the wait for
  the rest of the model chunk, by design: it is what a user waits for.

Prints p50/p95/p99 per transport and level, and one JSON line at the end. Before and after
the levels it times the model's batched live step on 32 streams in this process
(``host_speed_before``/``_after``: ms per piece, and the share of one core the model alone
needs at 32 real-time streams), because a shared host's speed drifts by up to 2x and the job's
latency follows it; each level also reports ``host_steal_share``, the share of CPU time the
hypervisor gave to other machines meanwhile (``/proc/stat``).

    .venv/bin/python benchmarks/bench_live.py [--levels 1,8,32,128] [--att-context 70,13]
        [--endpoint-silence 1.2] [--piece-seconds 0.16] [--transports tcp,ws] [--num-shards 1]
        [--vad energy|silero] [--bundle-seconds 0.3]

Needs espeak-ng. The live job runs with its defaults (1 PyTorch thread, 1 shard) on this
machine's cores, shared with the benchmark's clients.
"""

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

import numpy as np

from pipelines.tools.send import audio_frames, connect
from pipelines.tools.train_asr import synthesize
from schemas.live import encode_frame

RATE = 16000
PHRASES = ["one two three", "stop", "seven eight", "four five", "open", "nine", "left right", "six zero"]
PAUSE_S = 1.6


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def job_flags(args) -> List[str]:
    """The ``live-asr`` flags of this benchmark's configuration (``--att-context`` ...)."""
    return ["--att-context", args.att_context, "--endpoint-silence", str(args.endpoint_silence),
            "--num-shards", str(args.num_shards), "--vad", args.vad, "--bundle-seconds", str(args.bundle_seconds)]


def start_job(flags: List[str], log_path: str, checkout: Optional[str] = None) -> Tuple[subprocess.Popen, int, int]:
    """Starts ``mediabeam live-asr FLAGS`` listening on TCP and WebSocket, replying on both and
    stopping after 8 s without frames, from ``checkout`` (a source tree; default: this one).
    Returns (process, tcp port, ws port)."""
    ws_port = _free_port()
    cmd = [sys.executable, "-m", "pipelines.cli", "live-asr", "--port", "0", "--ws-port", str(ws_port), "--reply",
           "--output", os.devnull, "--idle-timeout", "15", "--max-idle-seconds", "8", "--stop-after", "1500", *flags]
    proc = subprocess.Popen(cmd, stderr=open(log_path, "w"), stdout=subprocess.DEVNULL, cwd=checkout)
    deadline = time.time() + 180
    while time.time() < deadline:
        with open(log_path) as handle:
            lines = handle.read().splitlines()
        tcp = [line for line in lines if "listening on" in line]
        if tcp and any("WebSocket on" in line for line in lines):
            return proc, int(tcp[0].rsplit(":", 1)[1]), ws_port
        if proc.poll() is not None:
            raise RuntimeError(f"live-asr exited: {open(log_path).read()[-2000:]}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("live-asr did not start listening within 180 s")


def conversations(count: int) -> List[Tuple[np.ndarray, List[float]]]:
    """``count`` two-utterance conversations and the end time of each utterance's speech (s)."""
    out = []
    for k in range(count):
        rng = np.random.default_rng(k)
        parts, ends, t = [], [], 0.0
        for text in (PHRASES[k % len(PHRASES)], PHRASES[(k + 3) % len(PHRASES)]):
            speech = synthesize(text, "en-us", 160, 50, 0)
            pause = (0.002 * rng.standard_normal(int(PAUSE_S * RATE))).astype(np.float32)
            parts += [speech, pause]
            t += len(speech) / RATE
            ends.append(t)
            t += PAUSE_S
        out.append((np.concatenate(parts), ends))
    return out


class StreamLog:
    """What one client saw: send time per piece, events with arrival times."""

    def __init__(self, piece_s: float, speech_ends: List[float]):
        self.piece_s, self.speech_ends = piece_s, speech_ends
        self.sent: Dict[int, float] = {}
        self.events: List[Tuple[float, dict]] = []

    def latencies(self) -> Dict[str, List[float]]:
        out: Dict[str, List[float]] = {"partial": [], "final": [], "speech_end_to_final": []}
        finals = [(at, e) for at, e in self.events if e["event"] == "final" and "utterance" in e]
        for at, e in self.events:
            if e["event"] == "partial" and e["seq"] in self.sent:
                out["partial"].append(at - self.sent[e["seq"]])
        for at, e in finals:
            if e["reason"] == "endpoint" and e["seq"] in self.sent:
                out["final"].append(at - self.sent[e["seq"]])
            index = e["utterance"]
            if index < len(self.speech_ends):  # the piece holding the utterance's last speech sample
                piece = int(self.speech_ends[index] / self.piece_s)
                if piece in self.sent:
                    out["speech_end_to_final"].append(at - self.sent[piece])
        return out


def _tcp_stream(port: int, sid: str, audio: np.ndarray, delay: float, log: StreamLog) -> None:
    time.sleep(delay)
    done = threading.Event()
    with connect("127.0.0.1", port) as sock:

        def reader() -> None:
            buffer = b""
            sock.settimeout(0.2)
            while not done.is_set():
                try:
                    data = sock.recv(1 << 16)
                except OSError:
                    continue
                if not data:
                    return
                buffer += data
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    event = json.loads(line)
                    log.events.append((time.time(), event))
                    if event["event"] == "final" and "utterance" not in event:
                        done.set()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        begin = time.monotonic()
        for frame in audio_frames(audio, sid, log.piece_s):
            wait = begin + (frame.seq + 1) * log.piece_s - time.monotonic()
            if wait > 0:
                time.sleep(wait)  # real time: a piece leaves once its last sample would have been captured
            sock.sendall(encode_frame(frame))
            log.sent[frame.seq] = time.time()
        done.wait(120)
        done.set()
        thread.join()


async def _ws_stream(url: str, sid: str, audio: np.ndarray, delay: float, log: StreamLog) -> None:
    from websockets.asyncio.client import connect as ws_connect

    await asyncio.sleep(delay)
    pcm = (np.clip(audio, -1.0, 32767 / 32768) * 32768.0).astype("<i2")
    step = int(round(log.piece_s * RATE))
    async with ws_connect(url, max_size=1 << 22) as ws:
        await ws.send(json.dumps({"type": "start", "stream_id": sid, "format": "pcm16", "sample_rate": RATE}))

        async def reader() -> None:
            async for message in ws:
                log.events.append((time.time(), json.loads(message)))

        task = asyncio.ensure_future(reader())
        begin = time.monotonic()
        for seq, start in enumerate(range(0, len(pcm), step)):
            wait = begin + (seq + 1) * log.piece_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            await ws.send(pcm[start : start + step].tobytes())
            log.sent[seq] = time.time()
        await ws.send(json.dumps({"type": "end"}))
        log.sent[len(log.sent)] = time.time()  # the end message has the next seq: it flushes the last chunk
        await asyncio.wait_for(task, 120)


def cpu_times() -> Optional[Tuple[int, int]]:
    """(steal, total) jiffies of all CPUs from ``/proc/stat`` (``None`` where there is none)."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(v) for v in handle.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def steal_share(before: Optional[Tuple[int, int]], after: Optional[Tuple[int, int]]) -> Optional[float]:
    """The share of CPU time the hypervisor gave to other machines between two ``cpu_times``:
    on a shared VM it is time this host wanted to run and could not, which latency follows."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def run_level(transport: str, ports: Tuple[int, int], streams: int, talks, piece_s: float, seed: int) -> dict:
    """``streams`` clients over ``transport`` (``tcp``/``ws``) at random phases; their latencies."""
    logs = []
    jobs = []
    for i in range(streams):
        audio, ends = talks[i % len(talks)]
        delay = random.Random(seed + i).uniform(0, 1.0) if streams > 1 else 0.0
        logs.append(StreamLog(piece_s, ends))
        jobs.append((f"{transport}-{seed}-{i}", audio, delay, logs[-1]))
    start, times = time.time(), cpu_times()
    if transport == "tcp":
        threads = [threading.Thread(target=_tcp_stream, args=(ports[0], *job)) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    else:
        url = f"ws://127.0.0.1:{ports[1]}"

        async def run_all() -> None:
            await asyncio.gather(*[_ws_stream(url, *job) for job in jobs])

        asyncio.run(run_all())
    result = {"transport": transport, "streams": streams, "wall_s": round(time.time() - start, 1),
              "host_steal_share": steal_share(times, cpu_times())}
    for name in ("partial", "final", "speech_end_to_final"):
        values = np.array([v for log in logs for v in log.latencies()[name]]) * 1000
        result[f"{name}_events"] = len(values)
        if len(values):
            result.update({f"{name}_p{q}_ms": round(float(np.percentile(values, q)), 1) for q in (50, 95, 99)})
    result["finals_expected"] = 2 * streams
    result["finals_received"] = sum(1 for log in logs for _, e in log.events
                                    if e["event"] == "final" and "utterance" in e)
    return result


def engine_probe(args, talks, streams: int = 32, steps: int = 12) -> dict:
    """How fast this host is right now: the embedded model's live step (one PyTorch thread, as
    in the job) on ``streams`` streams batched, in ms per ``--piece-seconds`` piece, and the
    share of one core the model alone then needs at that many real-time streams. Shared
    hosts change speed by up to 2x within minutes; this puts each run's latencies in context."""
    import torch

    from operators.asr.endpointing import DEFAULT_ENDPOINTING, EndpointRule
    from operators.asr.stream_engine import load_live_asr

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    engine = load_live_asr(att_context=[int(v) for v in args.att_context.split(",")],
                           endpointing=DEFAULT_ENDPOINTING._replace(rule2=EndpointRule(True, args.endpoint_silence, 0.0),
                                                                    vad=args.vad))
    piece = int(args.piece_seconds * RATE)
    audio = [talks[i % len(talks)][0] for i in range(streams)]
    states = [engine.init_state() for _ in audio]
    elapsed = 0.0
    for k in range(steps + 2):  # the first two steps warm up
        start = time.perf_counter()
        _, states = engine.step([a[k * piece : (k + 1) * piece] for a in audio], states)
        elapsed += (time.perf_counter() - start) if k >= 2 else 0.0
    torch.set_num_threads(threads)
    ms = elapsed / (steps * streams) * 1e3
    return {"ms_per_piece": round(ms, 2), "model_core_share": round(streams * ms / 1e3 / args.piece_seconds, 2)}


def main(argv: Optional[List[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--levels", default="1,8,32,128")
    parser.add_argument("--transports", default="tcp,ws")
    parser.add_argument("--att-context", default="70,13", help="look-ahead L,R of the model (chunk size)")
    parser.add_argument("--endpoint-silence", type=float, default=1.2, help="live-asr --endpoint-silence")
    parser.add_argument("--piece-seconds", type=float, default=0.16, help="audio per client message")
    parser.add_argument("--vad", choices=("energy", "silero"), default="energy", help="live-asr --vad")
    parser.add_argument("--num-shards", type=int, default=1, help="live-asr --num-shards (a bundle reads and "
                        "writes the state of the shards it touches only)")
    parser.add_argument("--bundle-seconds", type=float, default=0.3, help="live-asr --bundle-seconds")
    args = parser.parse_args(argv)
    levels = [int(v) for v in args.levels.split(",")]
    talks = conversations(8)
    report = {"runner": "FnApiRunner (in-process)", "att_context": args.att_context,
              "endpoint_silence_s": args.endpoint_silence, "piece_s": args.piece_seconds, "vad": args.vad,
              "num_shards": args.num_shards, "bundle_s": args.bundle_seconds, "levels": []}
    report["host_speed_before"] = engine_probe(args, talks)
    print(json.dumps({"host_speed_before": report["host_speed_before"]}), flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        proc, tcp_port, ws_port = start_job(job_flags(args), os.path.join(workdir, "live.log"))
        try:
            run_level("tcp", (tcp_port, ws_port), 1, talks, args.piece_seconds, seed=999)  # warm-up
            for n in levels:
                for transport in args.transports.split(","):
                    result = run_level(transport, (tcp_port, ws_port), n, talks, args.piece_seconds, seed=n)
                    report["levels"].append(result)
                    print(json.dumps(result), flush=True)
        finally:
            proc.wait(timeout=600)
    report["host_speed_after"] = engine_probe(args, talks)
    print(json.dumps({"host_speed_after": report["host_speed_after"]}), flush=True)
    at32 = [r for r in report["levels"] if r["streams"] == 32]
    if at32:
        report["target_at_32"] = {r["transport"]: {
            "p95_partial_under_300ms": r.get("partial_p95_ms", 1e9) < 300,
            "p95_final_under_500ms": r.get("final_p95_ms", 1e9) < 500,
            "p95_speech_end_to_final_under_500ms": r.get("speech_end_to_final_p95_ms", 1e9) < 500} for r in at32}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
