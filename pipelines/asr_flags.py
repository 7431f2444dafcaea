"""ASR flags shared by the transcribe and live-asr jobs (standard library only: fast to import)."""

from typing import Optional, Tuple

from pipelines.common import ConfigError


def parse_context(value: Optional[str]) -> Optional[Tuple[int, int]]:
    """``--att-context "70,13"`` → ``(70, 13)``; ``None`` stays ``None`` (the model's default)."""
    if value is None:
        return None
    try:
        left, right = (int(part) for part in value.split(","))
    except ValueError:
        raise ConfigError(f"--att-context {value!r} must look like 70,13 (left,right frames of 80 ms)")
    return left, right
