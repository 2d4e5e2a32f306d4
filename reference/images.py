"""Image decoding (spec/images.md, "Decode").

``decode_image`` turns JPEG or PNG bytes into an HWC uint8 RGB array. The
format is chosen by magic bytes, never by trying decoders in turn: grayscale
becomes three equal channels, alpha is dropped, palettes are expanded. JPEG
uses libjpeg's exact integer IDCT (ISLOW, Pillow's default). A CMYK (Adobe)
JPEG becomes RGB as R = round((255 - C) * (255 - K) / 255), likewise G from M
and B from Y (Pillow's conversion; TensorFlow truncates instead of rounding,
so it can be 1 lower). 16-bit PNGs are refused (bit depth read from IHDR),
because Pillow would silently keep only the high byte of 16-bit RGB.
"""

from __future__ import annotations

import io
import re

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageDecodeError

JPEG_MAGIC = b"\xff\xd8\xff"
_MODES_8BIT = {"RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# Formats recognised only to name them in the error message.
_OTHER_MAGIC = ((b"GIF87a", "GIF"), (b"GIF89a", "GIF"), (b"BM", "BMP"),
                (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
                (b"\xff\x4f\xff\x51", "JPEG 2000"), (b"\x1f\x8b", "GZIP"),
                (b"\x0a", "a protobuf message (a tf.train.Example?)"))


def image_format(data) -> str | None:
    """'jpeg', 'png', or None, from the first bytes of ``data``. spec/images.md, "Decode"."""
    head = bytes(data[:8])
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    if head.startswith(PNG_MAGIC):
        return "png"
    return None


def _unsupported(data) -> ImageDecodeError:
    """The error for bytes that are neither JPEG nor PNG, saying what they look like."""
    n = len(data)
    if n == 0:
        return ImageDecodeError("image bytes are empty (0 bytes), expected JPEG or PNG")
    head = bytes(data[:12])
    seen = None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        seen = "WebP"
    for magic, name in _OTHER_MAGIC:
        if seen is None and head.startswith(magic):
            seen = name
    if seen is None:
        sample = bytes(data[:32])
        printable = all(32 <= b < 127 or b in b"\t\r\n" for b in sample)
        seen = f"text {sample.decode('ascii')[:24]!r}" if printable else "unknown bytes"
    return ImageDecodeError(f"image bytes are {seen}, not JPEG or PNG (first bytes "
                            f"{head[:8].hex(' ')}, {n} bytes)")


_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _reason(e: BaseException) -> str:
    """A decoder exception as text that is the same on every run: object reprs that
    carry a memory address (Pillow names its file object) are replaced by 'the data'."""
    text = _ADDRESS.sub("the data", str(e)).strip() or type(e).__name__
    return text


def _open(data, fmt: str):
    """``Image.open`` of ``data`` as ``fmt``, or :class:`ImageDecodeError` saying why the
    header cannot be read (format, byte count, first bytes, the decoder's reason)."""
    try:
        return Image.open(io.BytesIO(data), formats=[fmt.upper()])
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = _reason(e)
        if isinstance(e, UnidentifiedImageError):
            # Pillow's own message only says it cannot identify the data; its format
            # plugin says why (e.g. 'no marker found', 'broken PNG file').
            try:
                Image.OPEN[fmt.upper()][0](io.BytesIO(data)).close()
            except Exception as inner:  # noqa: BLE001 - only its message is used
                reason = _reason(inner)
        raise ImageDecodeError(f"cannot decode {fmt.upper()} image of {len(data)} bytes "
                               f"(first bytes {bytes(data[:8]).hex(' ')}): its header "
                               f"cannot be read: {reason}") from None


def decode_image(data) -> np.ndarray:
    """Decode JPEG or PNG bytes to a new HWC uint8 RGB array (writeable, C-contiguous).

    spec/images.md, "Decode". Raises :class:`ImageDecodeError` (a
    TFRecordError) for bytes of any other format (naming what they look
    like), truncated or corrupt images and unsupported modes (16-bit, float).
    """
    fmt = image_format(data)
    if fmt is None:
        raise _unsupported(data)
    if fmt == "png" and len(data) >= 26 and bytes(data[12:16]) == b"IHDR" and data[24] == 16:
        raise ImageDecodeError(f"PNG image has 16 bits per sample (colour type {data[25]}); "
                               "only 8-bit images are supported")
    im = _open(data, fmt)
    try:
        with im:
            size = f"{im.width}x{im.height} {im.mode}"
            try:
                im.load()
            except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
                raise ImageDecodeError(f"cannot decode {fmt.upper()} image of {len(data)} "
                                       f"bytes ({size}): its pixel data cannot be read: "
                                       f"{_reason(e)}") from None
            mode = im.mode
            if mode not in _MODES_8BIT:
                raise ImageDecodeError(f"{fmt.upper()} image has mode {mode!r}; only 8-bit "
                                       "images are supported")
            if mode != "RGB":
                if mode == "P" or mode == "PA":
                    im = im.convert("RGBA")
                im = im.convert("RGB")
            arr = np.asarray(im)
    except ImageDecodeError:
        raise
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageDecodeError(f"cannot decode {fmt.upper()} image of {len(data)} bytes "
                               f"({size}): its pixels cannot be converted to RGB: "
                               f"{_reason(e)}") from None
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:  # pragma: no cover
        raise ImageDecodeError(f"decoded image has shape {arr.shape}, dtype {arr.dtype}")
    if not (arr.flags.writeable and arr.flags.c_contiguous and arr.flags.owndata):
        arr = np.array(arr, order="C")
    return arr


def image_size(data):
    """(format, width, height) read from the header only, without decoding pixels.

    spec/images.md, "Decode" (the same format rules as :func:`decode_image`).
    """
    fmt = image_format(data)
    if fmt is None:
        raise _unsupported(data)
    with _open(data, fmt) as im:
        return fmt, im.width, im.height


__all__ = ["decode_image", "image_format", "image_size"]
