"""Decodes untrusted image payloads with Pillow, refusing oversized images before decoding."""

import io

from PIL import Image, ImageOps

from operators.media.ffmpeg_io import MediaBudgetExceeded, check_payload
from operators.tokenizers.base import MediaError
from schemas.budgets import DEFAULT_BUDGETS


def decode_image(data: bytes, max_pixels: int = DEFAULT_BUDGETS.image_pixels) -> Image.Image:
    """Decodes an image with Pillow into RGB, refusing oversized images before decoding.

    Only the header is parsed before the size check, so a tiny file that declares a huge
    canvas (a decompression bomb) is rejected without allocating its pixels. Pillow's own
    ``DecompressionBombError`` (above twice ``Image.MAX_IMAGE_PIXELS``) is reported the same
    way. The EXIF orientation is applied, and the first frame of animations is used.

    Args:
        data: Encoded image bytes (any format Pillow reads).
        max_pixels: Budget ``image_pixels``: largest accepted ``width * height``.

    Returns:
        A loaded RGB image.

    Raises:
        MediaError: Empty, undecodable or truncated.
        MediaBudgetExceeded: Larger than ``max_pixels`` (a ``MediaError`` too).
    """
    check_payload(data)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as error:
        raise MediaBudgetExceeded("image_pixels", max_pixels, f"Pillow refused the image: {error}") from error
    except Image.UnidentifiedImageError as error:
        raise MediaError("not a decodable image: Pillow cannot identify its format") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise MediaError(f"not a decodable image: {error}") from error
    width, height = image.size
    if width * height > max_pixels:
        raise MediaBudgetExceeded(
            "image_pixels", max_pixels, f"the image declares {width}x{height} = {width * height} pixels"
        )
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise MediaError(f"image data is corrupt or truncated: {error}") from error
