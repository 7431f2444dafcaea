"""Live inputs at the edge: every frame field checked, and each live budget enforced where documented
(frame bytes, queued bytes with back-pressure, concurrent streams, frame pixels), server on loopback."""

import threading

import pytest

from schemas.budgets import Budgets
from schemas.live import HEADER, MAGIC, MAX_SEQ, Frame, FrameDecoder, FramingError, PayloadKind, encode_frame


def _header(**fields) -> bytes:
    """A frame header with the given fields changed (stream id "bad", 2-byte PCM payload follows)."""
    values = {"magic": MAGIC, "version": 1, "flags": 0, "kind": 1, "reserved": 0, "id_len": 3, "seq": 0,
              "rate": 16000, "length": 2}
    values.update(fields)
    return HEADER.pack(*values.values())


@pytest.mark.parametrize("fields, reason", [
    ({"seq": 2**64 - 1}, "sequence number"),
    ({"seq": 2**63}, "sequence number"),
    ({"seq": 2**63 - 1}, "sequence number"),
    ({"flags": 0x82}, "flag bits"),
    ({"reserved": 7}, "reserved byte"),
    ({"kind": 9}, "payload kind"),
    ({"rate": 0}, "sample rate"),
    ({"rate": 10**7}, "sample rate"),
    ({"kind": 3, "rate": 16000}, "sample rate"),
    ({"kind": 0, "rate": 0}, "NONE"),
    ({"length": 10**6}, "live_frame_bytes"),
])
def test_every_frame_field_is_checked_for_that_stream_only(fields, reason):
    """A bad field skips that frame with an error for its stream; frames around it are intact."""
    good = [Frame("ok", 0, False, 1, 16000, b"\x01\x02"), Frame("ok", 1, True, 1, 16000, b"\x03\x04")]
    length = fields.get("length", 2)
    bad = _header(**fields) + b"bad" + bytes(length)
    data = encode_frame(good[0]) + bad + encode_frame(good[1])
    decoder, out = FrameDecoder(max_payload_bytes=1000), []
    for i in range(0, len(data), 5000):
        out += decoder.feed(data[i : i + 5000])
    assert [o for o in out if isinstance(o, Frame)] == good
    [error] = [o for o in out if isinstance(o, FramingError)]
    assert error.stream_id == "bad" and not error.fatal and reason in str(error)
    assert 0 <= error.seq <= MAX_SEQ or error.seq == -1


def test_invalid_utf8_stream_id_is_refused():
    data = HEADER.pack(MAGIC, 1, 0, 1, 0, 2, 0, 16000, 0) + b"\xff\xfe"
    [error] = FrameDecoder(100).feed(data)
    assert isinstance(error, FramingError) and "UTF-8" in str(error) and not error.fatal


def _png_header(width: int, height: int) -> bytes:
    """The first bytes of a PNG declaring ``width`` x ``height`` (and a little pixel data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(1000)))


def test_huge_video_frame_is_refused_from_its_header():
    """A 13000 x 13000 PNG used to stall every stream for 20 s: now refused before decoding."""
    import time

    from operators.video.stream_engine import FrameFormatError, live_co_x3d

    engine = live_co_x3d("tiny", 2, 5, None, 32, 3)
    start = time.perf_counter()
    with pytest.raises(FrameFormatError, match=r"budget frame_pixels=16777216 exceeded.*13000x13000"):
        engine.decode(PayloadKind.IMAGE, 0, _png_header(13000, 13000))
    with pytest.raises(FrameFormatError, match="budget frame_pixels"):  # past Pillow's own bomb limit
        engine.decode(PayloadKind.IMAGE, 0, _png_header(60000, 60000))
    assert time.perf_counter() - start < 1.0
    with pytest.raises(FrameFormatError, match="not a JPEG/PNG"):
        engine.decode(PayloadKind.IMAGE, 0, b"GIF89a" + bytes(100))


def test_source_queue_is_bounded_and_readers_wait():
    """One client sending big frames cannot grow the queue past live_queued_bytes (back-pressure)."""
    import time

    from transforms.live.pollers import Poller, SourceSpec

    poller = Poller(SourceSpec("tail", "/nonexistent", Budgets(live_queued_bytes=3000)))
    frames = [Frame("big", i, False, 1, 16000, bytes(1000)) for i in range(10)]
    reader = threading.Thread(target=poller.put_frames, args=(frames, "test"), daemon=True)
    reader.start()
    time.sleep(0.3)
    assert reader.is_alive() and poller.queued_bytes == 3000  # the reader waits: nothing is dropped
    got = []
    while len(got) < 10:
        got += poller.drain(1.0)
        assert poller.queued_bytes <= 3000
    reader.join(2)
    assert [c.seq for c in got] == list(range(10))
    poller.close()


def test_concurrent_streams_are_capped_per_source():
    from transforms.live.pollers import Poller, SourceSpec

    poller = Poller(SourceSpec("tail", "/nonexistent", Budgets(live_streams=2)))
    poller.put_frames([Frame(sid, 0, sid == "b", 1, 16000, b"\x00\x00") for sid in ("a", "b", "c", "d")], "test")
    items = poller.drain(1.0)
    assert [getattr(i, "stream_id", None) for i in items[:3]] == ["a", "b", "c"]  # b ended: room for c
    refused = items[3]
    assert refused.key == "d#0" and refused.error_type == "BudgetExceeded" and "live_streams=2" in refused.message
    poller.close()


def test_a_frame_handed_back_by_a_full_queue_is_admitted_once():
    """``put_frames(wait=False)`` (the WebSocket edge) hands back what the full queue could not
    take, already admitted; queued later, it is not admitted again, so an end-of-stream frame
    is not refused when another stream has taken the last open slot meanwhile."""
    from transforms.live.pollers import Poller, SourceSpec

    poller = Poller(SourceSpec("tail", "/nonexistent", Budgets(live_queued_bytes=3000, live_streams=1)))
    assert poller.put_frames([Frame("a", 0, False, 1, 16000, bytes(2000))], "test", wait=False) == []
    left = poller.put_frames([Frame("a", 1, True, 1, 16000, bytes(2000))], "test", wait=False)
    assert [(item.stream_id, item.seq, item.eos) for item, _ in left] == [("a", 1, True)]  # no room: handed back
    first = poller.drain(1.0)
    assert poller.put_frames([Frame("b", 0, False, 1, 16000, bytes(500))], "test", wait=False) == []  # a ended: b fits
    assert poller.put_items(left) == []
    got = first + poller.drain(1.0)
    assert [(type(i).__name__, i.stream_id, i.seq) for i in got] == [
        ("LiveChunk", "a", 0), ("LiveChunk", "b", 0), ("LiveChunk", "a", 1)]
    poller.close()


def test_live_server_listens_on_loopback_by_default():
    import argparse

    from pipelines.live_common import add_live_flags, check_live_flags, source_spec
    from transforms.live.pollers import TcpListener

    parser = argparse.ArgumentParser()
    add_live_flags(parser)
    args = parser.parse_args(["--port", "0", "--budget", "live_streams=8"])
    spec = source_spec(args, check_live_flags(args))
    assert spec.address == "127.0.0.1:0" and spec.budgets.live_streams == 8
    listener = TcpListener(spec)
    try:
        assert listener.host == "127.0.0.1" and listener.port > 0
    finally:
        listener.close()
    from pipelines.common import ConfigError

    with pytest.raises(ConfigError, match="unknown budget 'live_stream'"):
        check_live_flags(parser.parse_args(["--budget", "live_stream=8"]))


def test_tcp_client_reading_too_slowly_never_blocks_replies_to_others():
    """A TCP client that never reads its events: replies to it return at once (never blocking the
    pipeline), another client on the same listener gets every line, and once ``live_reply_bytes``
    wait for the stalled one it is dropped with an error event naming the budget."""
    import socket
    import time

    from transforms.live.pollers import SourceSpec, TcpListener

    listener = TcpListener(SourceSpec("tcp", "127.0.0.1:0", Budgets(live_reply_bytes=1 << 20)))
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect((listener.host, listener.port))
    reading = socket.create_connection((listener.host, listener.port))
    try:
        deadline = time.time() + 5
        while len(listener._conns) < 2 and time.time() < deadline:
            time.sleep(0.01)
        stalled_id, reading_id = sorted(listener._conns)  # connection ids in accept order
        line = "x" * 20000
        slowest, accepted = 0.0, 0
        for _ in range(200):  # 4 MB for a client that reads nothing
            start = time.perf_counter()
            accepted += listener.reply(stalled_id, line)
            slowest = max(slowest, time.perf_counter() - start)
            assert listener.reply(reading_id, "ok")
        assert slowest < 0.05, slowest  # handing a line over never waits for the client
        assert 0 < accepted < 200  # some lines were taken, then the budget was exceeded
        assert not listener.reply(stalled_id, line)  # dropped
        got = b""
        reading.settimeout(5)
        while got.count(b"\n") < 200:
            got += reading.recv(1 << 16)
        assert got == b"ok\n" * 200
        [error] = listener.drain(1.0)
        assert error.key == f"{stalled_id}#-1" and error.error_type == "BudgetExceeded"
        assert "live_reply_bytes=1048576" in error.message and "reads too slowly" in error.message
    finally:
        stalled.close()
        reading.close()
        listener.close()


def test_tcp_connections_are_capped_and_forgotten_once_done():
    """``live_connections`` caps TCP connections (one more is closed with an error event); a
    client that stops sending keeps its slot while its last events may come (the writer lingers
    ``idle_seconds``), then the connection and its writer thread are gone and the slot is free."""
    import socket
    import time

    from transforms.live.pollers import SourceSpec, TcpListener

    def writer_threads() -> set:
        return {t for t in threading.enumerate() if t.name == "mediabeam-live-reply" and t.is_alive()}

    earlier = writer_threads()  # other tests' writers may still linger, and end at any time

    def writers() -> int:
        return len(writer_threads() - earlier)

    listener = TcpListener(SourceSpec("tcp", "127.0.0.1:0", Budgets(live_connections=2), idle_seconds=0.5))
    address = (listener.host, listener.port)
    try:
        first, second = socket.create_connection(address), socket.create_connection(address)
        third = socket.create_connection(address)
        third.settimeout(5)
        assert third.recv(1) == b""  # closed by the server at once
        [refused] = listener.drain(5.0)
        assert refused.error_type == "BudgetExceeded" and "live_connections=2" in refused.message
        assert writers() == 2
        first.shutdown(socket.SHUT_WR)  # done sending, still reading: its events still reach it
        time.sleep(0.3)
        assert listener.reply("tcp://%s:%d/0" % address, "late event")
        first.settimeout(5)
        assert first.recv(100) == b"late event\n"
        deadline = time.time() + 5
        while writers() > 1 and time.time() < deadline:  # 0.5 s without a line: forgotten
            time.sleep(0.05)
        assert writers() == 1 and not listener.reply("tcp://%s:%d/0" % address, "gone")
        fourth = socket.create_connection(address)  # the freed slot is taken
        time.sleep(0.3)
        assert listener.drain(0.1) == [] and writers() == 2
        for sock in (first, second, third, fourth):
            sock.close()
    finally:
        listener.close()
    deadline = time.time() + 5
    while writers() > 0 and time.time() < deadline:
        time.sleep(0.05)
    assert writers() == 0  # no thread left behind
