"""JPEG-LM image tokens: the bytes of a table-less JPEG (arXiv 2408.08459).

Each image is resized and center-cropped to a square, saved by Pillow at a fixed quality
with 4:2:0 chroma subsampling and a restart marker after every MCU row, and written as an
"abbreviated" JPEG (``streamtype=2``) without quantization or Huffman tables. The tables
depend only on the settings, so they are produced once per tokenizer (``streamtype=1``)
and spliced back after the SOI marker (``FF D8``) to decode.
"""

import io
from typing import Tuple

import numpy as np
from PIL import Image, ImageOps

from operators.media.image import decode_image
from operators.tokenizers.base import MediaError, TokenOutput
from operators.tokenizers.byte_tokens import bytes_to_tokens, tokens_to_bytes
from schemas.budgets import DEFAULT_BUDGETS

_SOI = b"\xff\xd8"
_EOI = b"\xff\xd9"


class JpegTokenizer:
    """Image → JPEG-LM byte tokens, and back.

    Args:
        size: Side of the square the image is resized and center-cropped to.
        quality: Pillow JPEG quality (the paper uses 25).
        subsampling: Pillow chroma subsampling (``"4:2:0"`` in the paper).
        restart_marker_rows: A restart marker after every this many MCU rows (Pillow's
            ``restart_marker_rows``), so a damaged byte only spoils one row of blocks.
        max_pixels: Budget ``image_pixels``: largest source image accepted (checked before decoding).
    """

    name = "jpeg-lm"
    modality = "image"
    framing = "bytes"
    """Tokens are ``[BOS, *jpeg_bytes, EOS]`` (see ``operators.corpus.vocabulary``)."""

    def __init__(
        self,
        size: int = 256,
        quality: int = 25,
        subsampling: str = "4:2:0",
        restart_marker_rows: int = 1,
        max_pixels: int = DEFAULT_BUDGETS.image_pixels,
    ):
        if size < 8 or not 1 <= quality <= 100 or restart_marker_rows < 0:
            raise ValueError(f"need size >= 8, 1 <= quality <= 100, restart_marker_rows >= 0; got "
                             f"size={size}, quality={quality}, restart_marker_rows={restart_marker_rows}")
        if subsampling not in ("4:4:4", "4:2:2", "4:2:0"):
            raise ValueError(f"subsampling must be '4:4:4', '4:2:2' or '4:2:0', not {subsampling!r}")
        self.size = size
        self.quality = quality
        self.subsampling = subsampling
        self.restart_marker_rows = restart_marker_rows
        self.max_pixels = max_pixels
        self.version = f"1-{size}px-q{quality}-{subsampling.replace(':', '')}-rst{restart_marker_rows}"
        self.tables = self._save(Image.new("RGB", (16, 16)), streamtype=1)

    def _save(self, image: Image.Image, streamtype: int) -> bytes:
        buffer = io.BytesIO()
        image.save(
            buffer,
            format="JPEG",
            quality=self.quality,
            subsampling=self.subsampling,
            restart_marker_rows=self.restart_marker_rows,
            streamtype=streamtype,
        )
        return buffer.getvalue()

    def prepare(self, data: bytes) -> Tuple[Image.Image, Tuple[int, int]]:
        """Decodes ``data`` and returns the resized, center-cropped RGB image and source size."""
        image = decode_image(data, max_pixels=self.max_pixels)
        square = ImageOps.fit(image, (self.size, self.size), method=Image.Resampling.BICUBIC)
        return square, image.size

    def full_jpeg(self, image: Image.Image) -> bytes:
        """Returns the complete JPEG (tables included) Pillow writes for a prepared image."""
        return self._save(image, streamtype=0)

    def encode(self, data: bytes) -> TokenOutput:
        """Tokenizes one encoded image.

        Returns:
            ``[BOS, *abbreviated_jpeg_bytes, EOS]`` and meta with the source ``width`` and
            ``height`` and the token image's ``size`` and ``num_bytes``.

        Raises:
            MediaError: If the image is empty, corrupt or above ``max_pixels``.
        """
        square, (width, height) = self.prepare(data)
        payload = self._save(square, streamtype=2)
        meta = {"width": width, "height": height, "size": self.size, "num_bytes": len(payload)}
        return TokenOutput(bytes_to_tokens(payload), meta)

    def to_jpeg(self, tokens: np.ndarray) -> bytes:
        """Splices the shared tables back after ``FF D8``, giving a decodable JPEG file."""
        payload = tokens_to_bytes(tokens)
        if not payload.startswith(_SOI):
            raise MediaError("tokens do not start with the JPEG SOI marker FF D8")
        return _SOI + self.tables[len(_SOI) : -len(_EOI)] + payload[len(_SOI) :]

    def to_file(self, tokens: np.ndarray) -> bytes:
        """The complete JPEG file the tokens hold (:meth:`to_jpeg`)."""
        return self.to_jpeg(tokens)

    def decode(self, tokens: np.ndarray) -> Image.Image:
        """Reconstructs the RGB image from tokens.

        The frame header is checked before any pixel is decoded: this tokenizer only writes
        ``size`` × ``size`` images, so tokens declaring another size (possibly a huge one) are refused.

        Raises:
            MediaError: If the tokens are not a JPEG this tokenizer wrote.
        """
        failures = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
        try:
            image = Image.open(io.BytesIO(self.to_jpeg(tokens)), formats=["JPEG"])
        except failures as error:
            raise MediaError(f"tokens do not decode as a JPEG: {error}") from error
        if image.size != (self.size, self.size):
            raise MediaError(f"tokens declare a {image.size[0]}x{image.size[1]} JPEG; this tokenizer writes "
                             f"{self.size}x{self.size}")
        try:
            image.load()
            return image.convert("RGB")
        except failures as error:
            raise MediaError(f"tokens do not decode as a JPEG: {error}") from error
