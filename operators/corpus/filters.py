"""Document filters: thresholds on what a document holds, each with a stable, counted reason.

A document that fails a filter is not kept and not an error: build-corpus writes it as a
``filtered`` record whose reason (e.g. ``"duration below 1 s"``) is counted per shard and in
the summary. Every threshold is off (None) unless given.
"""

import dataclasses
from typing import Any, Dict, Optional


@dataclasses.dataclass(frozen=True)
class DocumentFilters:
    """Thresholds (None: off).

    Attributes:
        min_duration_s: Shortest video/audio kept (documents without a duration pass).
        max_duration_s: Longest video/audio kept.
        min_side: Smallest source width and height of the first image or video kept.
        max_aspect: Largest long side / short side of the first image or video kept.
        silence_dbfs: Audio parts quieter than this RMS level (dBFS) are silence.
        min_caption_chars: Fewest caption characters (all captions together) kept.
        max_caption_chars: Most caption characters kept.
    """

    min_duration_s: Optional[float] = None
    max_duration_s: Optional[float] = None
    min_side: Optional[int] = None
    max_aspect: Optional[float] = None
    silence_dbfs: Optional[float] = None
    min_caption_chars: Optional[int] = None
    max_caption_chars: Optional[int] = None

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None and field.name != "silence_dbfs" and value < 0:
                raise ValueError(f"filter {field.name} must not be negative, got {value}")
        if self.max_aspect is not None and self.max_aspect < 1:
            raise ValueError(f"max aspect ratio is long side / short side, at least 1; got {self.max_aspect}")

    def active(self) -> bool:
        """Whether any threshold is set."""
        return any(getattr(self, f.name) is not None for f in dataclasses.fields(self))

    def to_json(self) -> Dict[str, Any]:
        """The thresholds that are set."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    def reason(self, duration_s: Optional[float], width: Optional[int], height: Optional[int],
               audio_dbfs: Optional[float], caption_chars: int) -> Optional[str]:
        """Why a document with these measurements is not kept, or None to keep it.

        Args:
            duration_s: Its duration (None: no timed part).
            width: Source width of its first image or video part (None: unknown or none).
            height: Source height of it.
            audio_dbfs: RMS level of its quietest audio part (None: no audio part).
            caption_chars: Characters of all its captions.
        """
        if duration_s is not None:
            if self.min_duration_s is not None and duration_s < self.min_duration_s:
                return f"duration below {self.min_duration_s:g} s"
            if self.max_duration_s is not None and duration_s > self.max_duration_s:
                return f"duration above {self.max_duration_s:g} s"
        if width and height:
            if self.min_side is not None and min(width, height) < self.min_side:
                return f"smaller than {self.min_side} px"
            if self.max_aspect is not None and max(width, height) / min(width, height) > self.max_aspect:
                return f"aspect above {self.max_aspect:g}"
        if audio_dbfs is not None and self.silence_dbfs is not None and audio_dbfs < self.silence_dbfs:
            return f"silent audio (below {self.silence_dbfs:g} dBFS)"
        if self.min_caption_chars is not None and caption_chars < self.min_caption_chars:
            return f"caption shorter than {self.min_caption_chars} chars"
        if self.max_caption_chars is not None and caption_chars > self.max_caption_chars:
            return f"caption longer than {self.max_caption_chars} chars"
        return None
