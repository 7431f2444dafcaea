"""AVC-LM video tokens: the bytes of a canonical H.264 Annex-B stream (arXiv 2408.08459).

The first seconds of the video are resampled to a low frame rate, scaled and letterboxed
to a small canvas and encoded by libx264 with a fixed, simple recipe: baseline profile,
constant QP, no B-frames, one macroblock per slice, one thread (so the bytes do not
depend on scheduling). The x264 banner SEI (NAL type 6: the encoder's version and option
string, identical for every video and tied to the x264 build) is removed: decoders do not
need it and it would make the tokens depend on the build.
"""

from typing import Any, Dict, Optional, Tuple

import numpy as np

from operators.media.ffmpeg_io import (
    VIDEO_FORMATS,
    check_pixel_budget,
    ffmpeg_args,
    ffmpeg_error,
    ffmpeg_input,
    media_source,
    run_ffmpeg,
)
from operators.media.probe import parse_input_info
from operators.media.video import decode_video
from operators.tokenizers.base import MediaError, MissingStream, TokenOutput
from operators.tokenizers.byte_tokens import bytes_to_tokens, tokens_to_bytes
from schemas.budgets import DEFAULT_BUDGETS

_SLICE_TYPES = (1, 5)


def count_frames(annexb: bytes) -> int:
    """Counts pictures in an H.264 Annex-B stream (slices whose first macroblock is 0).

    ``first_mb_in_slice`` is the first Exp-Golomb field of a slice header; the value 0 is
    coded as the single bit ``1``, so it is the top bit of the byte after the NAL header.
    """
    frames = 0
    start = annexb.find(b"\x00\x00\x01")
    while start >= 0:
        header = start + 3
        if header + 1 < len(annexb):
            nal_type = annexb[header] & 0x1F
            if nal_type in _SLICE_TYPES and annexb[header + 1] & 0x80:
                frames += 1
        start = annexb.find(b"\x00\x00\x01", header)
    return frames


class AvcTokenizer:
    """Video → AVC-LM byte tokens, and back to frames.

    Args:
        seconds: Length of the clip taken from the start of the video.
        fps: Frame rate of the clip.
        width: Canvas width (the picture is scaled to fit and padded with black).
        height: Canvas height.
        qp: libx264 constant quantizer.
        ffmpeg_path: ffmpeg binary to use instead of the default.
        image_pixels: Budget: largest source frame decoded (tokens decode at ``width``×``height``).
    """

    name = "avc-lm"
    modality = "video"
    framing = "bytes"
    """Tokens are ``[BOS, *annexb_bytes, EOS]`` (see ``operators.corpus.vocabulary``)."""

    def __init__(
        self,
        seconds: float = 5.0,
        fps: float = 3.0,
        width: int = 256,
        height: int = 144,
        qp: int = 37,
        ffmpeg_path: Optional[str] = None,
        image_pixels: int = DEFAULT_BUDGETS.image_pixels,
    ):
        if width <= 0 or height <= 0 or width % 2 or height % 2:
            raise ValueError(f"yuv420p needs an even, positive canvas, got {width}x{height}")
        if seconds <= 0 or fps <= 0 or not 0 <= qp <= 51:
            raise ValueError(f"need seconds > 0, fps > 0 and 0 <= qp <= 51; got {seconds}, {fps}, {qp}")
        self.seconds = seconds
        self.fps = fps
        self.width = width
        self.height = height
        self.qp = qp
        self.ffmpeg_path = ffmpeg_path
        self.image_pixels = image_pixels
        self.version = f"1-{width}x{height}-{fps:g}fps-{seconds:g}s-qp{qp}"

    def _encoder_options(self) -> Dict[str, Any]:
        return {
            "format": "h264",
            "t": self.seconds,
            "an": None,
            "vcodec": "libx264",
            "pix_fmt": "yuv420p",
            "profile:v": "baseline",
            "qp": self.qp,
            "bf": 0,
            "x264opts": "slice-max-mbs=1",
            "trellis": 0,
            "me_method": "dia",
            "threads": 1,
            "subq": 0,
            "psy": 0,
            "mixed-refs": 0,
            "fast-pskip": 0,
            "partitions": "none",
            "refs": 3,
            "bsf:v": "h264_mp4toannexb,filter_units=remove_types=6",
            "fflags": "+bitexact",
            "flags": "+bitexact",
        }

    def letterboxed(self, url: str) -> Any:
        """The ffmpeg video stream of ``url`` as the encoder takes it: resampled to ``fps``,
        scaled to fit and padded to ``width × height``."""
        return (
            ffmpeg_input(url, VIDEO_FORMATS, max_pixels=self.image_pixels)["v:0"]
            .filter("fps", fps=self.fps)
            .filter("scale", self.width, self.height, force_original_aspect_ratio="decrease")
            .filter("pad", self.width, self.height, "(ow-iw)/2", "(oh-ih)/2")
        )

    def to_annexb(self, data: bytes | str) -> Tuple[bytes, Dict[str, Any]]:
        """Encodes a video (bytes or local path) to the canonical Annex-B stream.

        Returns:
            The Annex-B bytes and the source's stream summary (see
            :func:`operators.media.probe.probe`), parsed from the same ffmpeg run.

        Raises:
            MediaError: Empty or undecodable input, or no video stream.
        """
        with media_source(data) as (url, stdin):
            output = self.letterboxed(url).output("pipe:", **self._encoder_options())
            proc = run_ffmpeg(ffmpeg_args(output, self.ffmpeg_path, stdin is not None, loglevel="info"), stdin)
        if proc.returncode != 0:
            check_pixel_budget(proc.stderr, self.image_pixels)
            info = parse_input_info(proc.stderr)
            if info is not None and not info["has_video"]:
                raise MissingStream(ffmpeg_error(proc.stderr, "video"), info["has_audio"], has_video=False)
            raise MediaError(ffmpeg_error(proc.stderr, "video"))
        if count_frames(proc.stdout) == 0:
            raise MediaError("the video stream decoded to 0 frames")
        return proc.stdout, parse_input_info(proc.stderr) or {}

    def encode(self, data: bytes) -> TokenOutput:
        """Tokenizes one encoded video.

        Returns:
            ``[BOS, *annexb_bytes, EOS]`` and meta: ``num_frames`` and ``duration_s`` of the
            tokenized clip, the source's ``width``, ``height`` and ``source_duration_s``
            (``None`` when ffmpeg cannot tell), ``has_audio`` (the source has a sound track,
            which these tokens leave out: ``-an``) and ``num_bytes``.

        Raises:
            MediaError: Empty or undecodable input.
            MissingStream: Valid media without a video stream (``has_audio`` says if it has sound).
        """
        annexb, source = self.to_annexb(data)
        frames = count_frames(annexb)
        meta = {
            "num_frames": frames,
            "duration_s": frames / self.fps,
            "width": source.get("width"),
            "height": source.get("height"),
            "source_duration_s": source.get("duration"),
            "has_audio": bool(source.get("has_audio")),
            "num_bytes": len(annexb),
        }
        return TokenOutput(bytes_to_tokens(annexb), meta)

    def to_file(self, tokens: np.ndarray) -> bytes:
        """The H.264 Annex-B elementary stream the tokens hold (any H.264 decoder reads it)."""
        return tokens_to_bytes(tokens)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Decodes tokens back to frames ``[N, height, width, 3]`` uint8 with ffmpeg.

        Raises:
            MediaError: If the tokens hold no decodable H.264 picture.
        """
        annexb = tokens_to_bytes(tokens)
        frames = count_frames(annexb)
        if frames == 0:
            raise MediaError("tokens hold no H.264 picture")
        return decode_video(
            annexb, None, self.width, self.height, max_frames=frames,
            input_format="h264", ffmpeg_path=self.ffmpeg_path, image_pixels=self.image_pixels,
        )

