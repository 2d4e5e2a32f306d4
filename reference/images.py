"""Image decoding (spec/images.md, "Decode").

``decode_image`` turns JPEG or PNG bytes into an HWC uint8 RGB array. The
format is chosen by magic bytes, never by trying decoders in turn: grayscale
becomes three equal channels, alpha is dropped, palettes are expanded. JPEG
uses libjpeg's exact integer IDCT (ISLOW, Pillow's default).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from .errors import ImageDecodeError

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def image_format(data) -> str | None:
    """'jpeg', 'png', or None, from the first bytes of ``data``."""
    head = bytes(data[:8])
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head.startswith(PNG_MAGIC):
        return "png"
    return None


def decode_image(data) -> np.ndarray:
    """Decode JPEG or PNG bytes to a new HWC uint8 RGB array.

    Raises :class:`ImageDecodeError` (a TFRecordError) for bytes of any other
    format, truncated or corrupt images and unsupported modes (16-bit, float).
    """
    fmt = image_format(data)
    if fmt is None:
        raise ImageDecodeError(f"image bytes are neither JPEG nor PNG (first bytes "
                               f"{bytes(data[:8]).hex(' ')}, {len(data)} bytes)")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt.upper()]) as im:
            im.load()
            mode = im.mode
            if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
                raise ImageDecodeError(f"{fmt.upper()} image has mode {mode!r}; only 8-bit "
                                       "images are supported")
            if mode != "RGB":
                if mode == "P" or mode == "PA":
                    im = im.convert("RGBA")
                im = im.convert("RGB")
            arr = np.asarray(im)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageDecodeError(f"cannot decode {fmt.upper()} image of {len(data)} bytes: "
                               f"{e}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:  # pragma: no cover
        raise ImageDecodeError(f"decoded image has shape {arr.shape}, dtype {arr.dtype}")
    if not arr.flags.writeable:
        arr = arr.copy()
    return arr


def image_size(data):
    """(format, width, height) read from the header only, without decoding pixels."""
    fmt = image_format(data)
    if fmt is None:
        raise ImageDecodeError(f"image bytes are neither JPEG nor PNG (first bytes "
                               f"{bytes(data[:8]).hex(' ')})")
    try:
        with Image.open(io.BytesIO(data), formats=[fmt.upper()]) as im:
            return fmt, im.width, im.height
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"cannot read {fmt.upper()} header: {e}") from None


__all__ = ["decode_image", "image_format", "image_size"]
