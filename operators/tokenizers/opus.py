"""Opus audio tokens: the bytes of a constant-bitrate Opus packet stream.

Audio is decoded to 16 kHz mono float32 (which rejects NaN/inf samples), encoded by
libopus at a fixed bitrate with constant bitrate and a fixed frame duration, and the
packets are taken out of the Ogg container ffmpeg writes. The token bytes are a small,
self-describing raw framing instead of Ogg, whose page headers (serial numbers, CRCs,
granule positions) would be ~10% of the bytes and carry nothing a decoder cannot rebuild:

    pre_skip (uint16 BE, 48 kHz samples) | num_samples (uint32 BE, at ``sample_rate``)
    then per packet: length (LEB128, 1-3 bytes) | packet bytes

Token streams are untrusted: packets are limited to what one Ogg page holds, and ``num_samples``
must agree with the samples the packets really hold (it ends inside the last packet), so a
hostile header can neither make :meth:`OpusTokenizer.decode` allocate more than the packets
decode to nor pad the output with silence. The total duration is held to the media budgets.

:meth:`OpusTokenizer.decode` rebuilds an Ogg Opus stream (RFC 7845) from this framing,
with the granule position of the last page trimming the padding exactly as the
encoder's own stream does, and decodes it with ffmpeg.
"""

import struct
from typing import Iterator, List, Optional, Tuple

import numpy as np

from operators.media.audio import decode_audio
from operators.media.ffmpeg_io import MediaBudgetExceeded, ffmpeg_args, ffmpeg_error, ffmpeg_input, run_ffmpeg
from operators.tokenizers.base import MediaError, TokenOutput, rms_dbfs
from operators.tokenizers.byte_tokens import bytes_to_tokens, tokens_to_bytes
from schemas.budgets import DEFAULT_BUDGETS

_HEADER = struct.Struct(">HI")
_OPUS_RATE = 48000
_MAX_PACKET_SAMPLES_48K = 5760  # 120 ms, the longest Opus packet (RFC 6716 §3.2.5)
MAX_PACKET_BYTES = 255 * 255 - 1
"""Largest packet accepted: what one Ogg page's 255 lacing values can describe."""
_MAX_LEB128_BYTES = 3
_FRAME_SAMPLES_48K = (
    [480, 960, 1920, 2880] * 3  # SILK-only configs 0-11: 10, 20, 40, 60 ms
    + [480, 960] * 2  # hybrid configs 12-15: 10, 20 ms
    + [120, 240, 480, 960] * 4  # CELT-only configs 16-31: 2.5, 5, 10, 20 ms
)


def _crc_table() -> List[int]:
    table = []
    for index in range(256):
        crc = index << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return table


_CRC_TABLE = _crc_table()


def ogg_crc(data: bytes) -> int:
    """The Ogg page checksum (CRC-32, polynomial 0x04C11DB7, no reflection, init 0)."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ _CRC_TABLE[(crc >> 24) ^ byte]
    return crc


def ogg_packets(stream: bytes) -> Iterator[bytes]:
    """Yields the packets of a single-stream Ogg file, joined across page boundaries.

    Raises:
        MediaError: If a page header is malformed or truncated.
    """
    position, pending = 0, b""
    while position < len(stream):
        if stream[position : position + 4] != b"OggS" or position + 27 > len(stream):
            raise MediaError(f"malformed Ogg page at byte {position}")
        segments = stream[position + 26]
        lacing = stream[position + 27 : position + 27 + segments]
        body = position + 27 + segments
        if len(lacing) < segments or body + sum(lacing) > len(stream):
            raise MediaError(f"truncated Ogg page at byte {position}")
        for value in lacing:
            pending += stream[body : body + value]
            body += value
            if value < 255:
                yield pending
                pending = b""
        position = body


def _ogg_page(payload: bytes, granule: int, sequence: int, header_type: int) -> bytes:
    lacing = bytes([255] * (len(payload) // 255) + [len(payload) % 255])
    header = struct.pack("<4sBBqIII", b"OggS", 0, header_type, granule, 1, sequence, 0)
    page = bytearray(header + bytes([len(lacing)]) + lacing + payload)
    page[22:26] = struct.pack("<I", ogg_crc(bytes(page)))
    return bytes(page)


def opus_packet_samples(packet: bytes) -> int:
    """Samples (at 48 kHz) one Opus packet decodes to, from its TOC byte (RFC 6716 §3.1).

    Raises:
        MediaError: Empty packet, or a frame count that is 0 or above 120 ms (RFC 6716 §3.2.5).
    """
    if not packet:
        raise MediaError("empty Opus packet")
    toc = packet[0]
    code = toc & 0x03
    if code == 0:
        frames = 1
    elif code in (1, 2):
        frames = 2
    elif len(packet) > 1:
        frames = packet[1] & 0x3F
    else:
        raise MediaError("Opus packet with frame-count code 3 has no count byte")
    samples = frames * _FRAME_SAMPLES_48K[toc >> 3]
    if not 0 < samples <= _MAX_PACKET_SAMPLES_48K:
        raise MediaError(f"Opus packet declares {frames} frames ({samples} samples at 48 kHz); "
                         f"a packet holds 1 to {_MAX_PACKET_SAMPLES_48K}")
    return samples


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_leb128(data: bytes, position: int) -> Tuple[int, int]:
    value, shift, start = 0, 0, position
    while position < len(data) and position - start < _MAX_LEB128_BYTES:
        byte = data[position]
        value |= (byte & 0x7F) << shift
        position += 1
        if not byte & 0x80:
            return value, position
        shift += 7
    if position - start >= _MAX_LEB128_BYTES:
        raise MediaError(f"Opus packet length field is longer than {_MAX_LEB128_BYTES} bytes")
    raise MediaError("Opus token stream ends inside a packet length")


def pack_packets(pre_skip: int, num_samples: int, packets: List[bytes]) -> bytes:
    """Serialises Opus packets into the token framing described in the module docstring."""
    return _HEADER.pack(pre_skip, num_samples) + b"".join(_leb128(len(p)) + p for p in packets)


def unpack_packets(payload: bytes) -> Tuple[int, int, List[bytes]]:
    """Inverts :func:`pack_packets`: returns ``(pre_skip, num_samples, packets)``.

    Raises:
        MediaError: If the framing is truncated or a packet is empty or above ``MAX_PACKET_BYTES``.
    """
    if len(payload) < _HEADER.size:
        raise MediaError("Opus token stream is shorter than its 6-byte header")
    pre_skip, num_samples = _HEADER.unpack_from(payload)
    position, packets = _HEADER.size, []
    while position < len(payload):
        length, position = _read_leb128(payload, position)
        if not 0 < length <= MAX_PACKET_BYTES:
            raise MediaError(f"Opus packet of {length} bytes (a packet holds 1 to {MAX_PACKET_BYTES})")
        if position + length > len(payload):
            raise MediaError("Opus token stream ends inside a packet")
        packets.append(payload[position : position + length])
        position += length
    return pre_skip, num_samples, packets


class OpusTokenizer:
    """Audio → Opus packet byte tokens, and back to a waveform.

    Args:
        bitrate: Constant bitrate in bits/s.
        frame_ms: Opus frame duration in milliseconds (2.5, 5, 10, 20, 40 or 60).
        sample_rate: Rate audio is resampled to before encoding (mono).
        max_seconds: Tokenize at most this many seconds from the start (``None``: all).
        ffmpeg_path: ffmpeg binary to use instead of the default.
        media_seconds: Budget: longest audio encoded or decoded (longer payloads are refused).
        audio_samples: Budget: most samples decoded from one payload or token stream.
    """

    name = "opus"
    modality = "audio"
    framing = "bytes"
    """Tokens are ``[BOS, *framing_bytes, EOS]`` (see ``operators.corpus.vocabulary``)."""

    def __init__(
        self,
        bitrate: int = 16000,
        frame_ms: float = 20.0,
        sample_rate: int = 16000,
        max_seconds: Optional[float] = None,
        ffmpeg_path: Optional[str] = None,
        media_seconds: float = DEFAULT_BUDGETS.media_seconds,
        audio_samples: int = DEFAULT_BUDGETS.audio_samples,
    ):
        if sample_rate not in (8000, 12000, 16000, 24000, 48000):
            raise ValueError(f"Opus encodes 8/12/16/24/48 kHz, not {sample_rate} Hz")
        if frame_ms not in (2.5, 5, 10, 20, 40, 60) or not 6000 <= bitrate <= 510000:
            raise ValueError(f"need frame_ms in 2.5/5/10/20/40/60 and 6000 <= bitrate <= 510000; "
                             f"got {frame_ms}, {bitrate}")
        self.bitrate = bitrate
        self.frame_ms = frame_ms
        self.sample_rate = sample_rate
        self.max_seconds = max_seconds
        self.ffmpeg_path = ffmpeg_path
        self.budgets = {"media_seconds": media_seconds, "audio_samples": audio_samples}
        self.version = f"1-{sample_rate // 1000}k-{bitrate // 1000}kbps-cbr-{frame_ms:g}ms"

    def to_payload(self, waveform: np.ndarray) -> bytes:
        """Encodes a mono float32 waveform at ``sample_rate`` to the token framing."""
        stream = ffmpeg_input("pipe:", "f32le", format="f32le", ar=self.sample_rate, ac=1).output(
            "pipe:",
            format="ogg",
            acodec="libopus",
            ar=self.sample_rate,
            ac=1,
            **{"b:a": self.bitrate, "vbr": "off", "frame_duration": self.frame_ms, "application": "audio"},
            fflags="+bitexact",
            **{"flags:a": "+bitexact"},
        )
        proc = run_ffmpeg(ffmpeg_args(stream, self.ffmpeg_path, True), waveform.astype("<f4").tobytes())
        if proc.returncode != 0:
            raise MediaError(ffmpeg_error(proc.stderr, "audio"))
        packets = list(ogg_packets(proc.stdout))
        if len(packets) < 2 or not packets[0].startswith(b"OpusHead"):
            raise MediaError("libopus wrote no Opus header")
        pre_skip = struct.unpack_from("<H", packets[0], 10)[0]
        return pack_packets(pre_skip, len(waveform), packets[2:])

    def encode(self, data: bytes) -> TokenOutput:
        """Tokenizes one encoded audio payload (first audio stream of any container).

        Returns:
            ``[BOS, *framing_bytes, EOS]`` and meta with ``duration_s``, ``sample_rate``,
            ``bitrate_bps``, ``num_packets``, ``num_bytes`` and ``rms_dbfs`` (the level of the
            decoded signal, for a silence filter).

        Raises:
            MediaError: Empty or undecodable input, no audio stream, NaN/inf samples.
        """
        waveform = decode_audio(data, self.sample_rate, self.max_seconds, self.ffmpeg_path, **self.budgets)
        payload = self.to_payload(waveform)
        meta = {
            "duration_s": len(waveform) / self.sample_rate,
            "sample_rate": self.sample_rate,
            "bitrate_bps": self.bitrate,
            "num_packets": len(unpack_packets(payload)[2]),
            "num_bytes": len(payload),
            "rms_dbfs": rms_dbfs(waveform),
        }
        return TokenOutput(bytes_to_tokens(payload), meta)

    def check_stream(self, pre_skip: int, num_samples: int, packets: List[bytes]) -> None:
        """Checks a token stream's header against its packets and the budgets, before decoding.

        Raises:
            MediaError: No packet, or ``num_samples`` that does not end inside the last packet.
            MediaBudgetExceeded: The packets hold more than the budgets allow.
        """
        if not packets:
            raise MediaError("Opus token stream holds no packet")
        held = sum(opus_packet_samples(packet) for packet in packets)
        seconds = held / _OPUS_RATE
        if seconds > self.budgets["media_seconds"]:
            raise MediaBudgetExceeded("media_seconds", self.budgets["media_seconds"],
                                      f"the Opus packets hold {seconds:.1f} s of audio")
        if num_samples > self.budgets["audio_samples"]:
            raise MediaBudgetExceeded("audio_samples", self.budgets["audio_samples"],
                                      f"the Opus token header declares {num_samples} samples")
        spare = held - pre_skip - num_samples * (_OPUS_RATE // self.sample_rate)
        if not 0 <= spare < opus_packet_samples(packets[-1]):
            raise MediaError(
                f"Opus token header declares {num_samples} samples at {self.sample_rate} Hz after a pre-skip of "
                f"{pre_skip}, but the packets hold {held} samples at 48 kHz (it must end inside the last packet)"
            )

    def to_ogg(self, tokens: np.ndarray) -> bytes:
        """Rebuilds a standard Ogg Opus file (RFC 7845) from tokens (checked by :meth:`check_stream`)."""
        pre_skip, num_samples, packets = unpack_packets(tokens_to_bytes(tokens))
        self.check_stream(pre_skip, num_samples, packets)
        head = struct.pack("<8sBBHIhB", b"OpusHead", 1, 1, pre_skip, self.sample_rate, 0, 0)
        vendor = b"mediabeam"
        tags = b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)
        pages = [_ogg_page(head, 0, 0, 0x02), _ogg_page(tags, 0, 1, 0x00)]
        end = pre_skip + num_samples * (_OPUS_RATE // self.sample_rate)
        granule = 0
        for index, packet in enumerate(packets):
            granule += opus_packet_samples(packet)
            last = index == len(packets) - 1
            pages.append(_ogg_page(packet, min(granule, end) if last else granule, index + 2, 0x04 if last else 0))
        return b"".join(pages)

    def to_file(self, tokens: np.ndarray) -> bytes:
        """The standard Ogg Opus file the tokens hold (:meth:`to_ogg`)."""
        return self.to_ogg(tokens)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Decodes tokens to a mono float32 waveform at ``sample_rate`` (``num_samples`` long).

        Raises:
            MediaError: If the tokens are not a packet stream this tokenizer wrote.
            MediaBudgetExceeded: If they hold more audio than the budgets allow.
        """
        num_samples = unpack_packets(tokens_to_bytes(tokens))[1]
        waveform = decode_audio(self.to_ogg(tokens), self.sample_rate, ffmpeg_path=self.ffmpeg_path,
                                formats="ogg", **self.budgets)
        if len(waveform) < num_samples:
            waveform = np.pad(waveform, (0, num_samples - len(waveform)))
        return waveform[:num_samples]
