"""Caps the concurrent streams of one live source (budget ``live_streams``), as a pure object.

The source sees every frame of every stream it receives, so it is the one place where "how many
streams are open on this source" is exact. A stream opens with its first frame and closes with
its end-of-stream frame or after ``idle_seconds`` without a frame (the same timeout after which
the live job finalises it). A frame of a new stream beyond the cap is refused with a
``BudgetExceeded`` naming the budget; streams already open are never affected.
"""

from typing import Dict, Optional

from schemas.budgets import BudgetExceeded


class StreamAdmission:
    """Admits frames of at most ``max_streams`` open streams.

    Args:
        max_streams: Most streams open at once.
        idle_seconds: A stream with no frame for this long no longer counts as open.
    """

    def __init__(self, max_streams: int, idle_seconds: float):
        self.max_streams = max_streams
        self.idle_seconds = idle_seconds
        self.last_seen: Dict[str, float] = {}

    def admit(self, stream_id: str, eos: bool, now: float) -> Optional[BudgetExceeded]:
        """Records a frame; returns the error to report if its stream is refused (else ``None``)."""
        if stream_id not in self.last_seen and len(self.last_seen) >= self.max_streams:
            for sid in [s for s, at in self.last_seen.items() if now - at >= self.idle_seconds]:
                del self.last_seen[sid]
            if len(self.last_seen) >= self.max_streams:
                return BudgetExceeded("live_streams", self.max_streams,
                                      f"stream {stream_id!r} would be stream {len(self.last_seen) + 1} open on this "
                                      "source (finish streams with an end-of-stream frame)")
        if eos:
            self.last_seen.pop(stream_id, None)
        else:
            self.last_seen[stream_id] = now
        return None
