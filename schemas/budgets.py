"""Every resource budget an untrusted input is held to, with its default, in one place.

Inputs come from people we do not trust: shards (tar members, media payloads, token streams),
live clients (frames, connections) and checkpoints. Each budget is checked *before* the
allocation it guards, and exceeding one is a dead letter (batch jobs) or an error event for that
stream only (live jobs) whose message names the budget, e.g. ``"budget media_seconds=600
exceeded: the payload declares 3600.0 s"``. ``docs/security.md`` lists them for users.

Jobs build a :class:`Budgets` from flags (``--budget NAME=VALUE``) and hand it to the transforms
and operators that need it; operators take the individual numbers as plain arguments so they stay
free of job configuration.
"""

import dataclasses
from typing import Dict


class BudgetExceeded(ValueError):
    """An input asked for more than its budget allows; the message names the budget."""

    def __init__(self, budget: str, limit: float, asked: str):
        super().__init__(f"budget {budget}={format_limit(limit)} exceeded: {asked}")
        self.budget = budget


def format_limit(limit: float) -> str:
    """A budget as a user types it back into ``--budget``: whole numbers in full, others as ``%g``."""
    return str(int(limit)) if float(limit).is_integer() else f"{limit:g}"


@dataclasses.dataclass(frozen=True)
class Budgets:
    """Default budgets. Every field is a hard cap checked before the allocation it guards.

    Attributes:
        member_bytes: Largest tar member read into memory.
        header_bytes: Largest tar extended header (PAX records, GNU long names) accepted.
        sample_members: Most members grouped into one sample.
        media_seconds: Longest audio or video decoded from one payload (declared or actual).
        audio_samples: Most decoded audio samples per payload (after resampling).
        image_pixels: Largest image (width × height) decoded.
        video_frames: Most video frames decoded from one payload.
        frame_pixels: Largest live video frame (width × height).
        decoded_bytes: Largest array a token or bitstream decoder may produce.
        live_frame_bytes: Largest live frame payload.
        live_streams: Most concurrent live streams per source.
        live_queued_bytes: Most payload bytes queued in a live source before readers wait.
        live_pending_chunks: Out-of-order chunks buffered per stream before a gap is skipped.
        live_pending_bytes: Payload bytes buffered out of order per stream shard (all its streams).
        live_connections: Most WebSocket clients, and apart from them most TCP connections,
            open on one live source at once.
        live_client_bytes_per_second: Most bytes per second one WebSocket client may send
            (a token bucket holding one second's worth).
        live_reply_bytes: Event bytes waiting to be sent to one client (WebSocket, or TCP with
            ``--reply``); a client that reads slower than its events come is dropped (the
            others never wait for it).
    """

    member_bytes: int = 1 << 30
    header_bytes: int = 1 << 20
    sample_members: int = 256
    media_seconds: float = 600.0
    audio_samples: int = 600 * 48_000
    image_pixels: int = 64_000_000
    video_frames: int = 18_000
    frame_pixels: int = 4096 * 4096
    decoded_bytes: int = 1 << 30
    live_frame_bytes: int = 1 << 20
    live_streams: int = 1024
    live_queued_bytes: int = 256 << 20
    live_pending_chunks: int = 64
    live_pending_bytes: int = 256 << 20
    live_connections: int = 256
    live_client_bytes_per_second: int = 16 << 20
    live_reply_bytes: int = 4 << 20

    def with_overrides(self, overrides: Dict[str, str]) -> "Budgets":
        """Returns a copy with ``NAME=VALUE`` overrides applied (values parsed as the field's type).

        Raises:
            ValueError: Unknown budget name (the message lists the known ones) or a bad value.
        """
        fields = {f.name: f for f in dataclasses.fields(self)}
        values = {}
        for name, text in overrides.items():
            if name not in fields:
                raise ValueError(f"unknown budget {name!r}; known budgets: {', '.join(sorted(fields))}")
            kind = float if fields[name].type in (float, "float") else int
            try:
                value = kind(float(text)) if kind is int else kind(text)
            except ValueError:
                raise ValueError(f"budget {name} needs a number, got {text!r}") from None
            if value <= 0:
                raise ValueError(f"budget {name} must be positive, got {text!r}")
            values[name] = value
        return dataclasses.replace(self, **values)


DEFAULT_BUDGETS = Budgets()
