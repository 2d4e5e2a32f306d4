"""The JPEG decoder behind ``decode_image`` (spec/images.md, "Decode", "The JPEG decoder").

The decode contract is Pillow's: libjpeg's exact integer IDCT (ISLOW), fancy chroma
upsampling, RGB out, grayscale as three equal channels, CMYK (Adobe) converted by
rounding, an ``ImageDecodeError`` for truncated or corrupt data. simplejpeg decodes
with the same libjpeg-turbo algorithms at less than half Pillow's per-call cost, and
can write into a caller's buffer; bench/decode_study.py compares it with Pillow (and
OpenCV) case by case. This module holds:

- :data:`DECODER`, the decoder chosen once, at import: ``'simplejpeg'`` when it is
  installed (the ``fast`` extra), else ``'pillow'``. The environment variable
  ``TILESPEC_JPEG`` (read at import) forces a choice: ``pillow`` (the fallback, e.g.
  to compare), ``simplejpeg`` (an ImportError when it is missing), or ``auto`` / unset.
- :func:`decode_fast`: the chosen fast decoder's pixels, which are ``decode_image``'s,
  or None for anything it does not decode exactly, so the caller decodes with Pillow.
  simplejpeg runs with ``fastdct`` and ``fastupsample`` off and ``strict`` on (a libjpeg
  warning, e.g. data cut short, is a failure, as in Pillow); CMYK and YCCK JPEGs
  (simplejpeg's RGB conversion of them is up to 2 grey levels off Pillow's rounding)
  are left to Pillow, from the colour space in the header; so are any bytes it fails
  on: where Pillow decodes them its pixels are the answer, where it fails its error is.
- :func:`decode_jpeg` and :func:`decode_jpeg_into`: a JPEG into a new array or into a
  caller's (H, W, 3) uint8 array, through :func:`decode_fast` and otherwise
  ``decode_image``, so pixels, error types and messages are always ``decode_image``'s.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

#: The environment variable that forces the decoder choice (read once, at import).
CHOICE_ENV = "TILESPEC_JPEG"
CHOICES = ("auto", "simplejpeg", "pillow")
_JPEG_MAGIC = b"\xff\xd8\xff"
_FAST_COLOURS = frozenset(("YCbCr", "RGB", "Gray"))  # the rest (CMYK, YCCK): Pillow


def choose_decoder(value):
    """``(name, module)`` of the decoder for ``TILESPEC_JPEG`` = ``value`` (None: unset):
    ``('simplejpeg', simplejpeg)`` or ``('pillow', None)``; ValueError for another
    value, ImportError for ``simplejpeg`` when it is not installed. spec/images.md,
    "The JPEG decoder"; run once, at import, to set :data:`DECODER`."""
    want = (value or "auto").strip().lower()
    if want not in CHOICES:
        raise ValueError(f"{CHOICE_ENV}={value!r}: expected one of {', '.join(CHOICES)} "
                         "(unset: auto, the fastest exact decoder installed)")
    if want == "pillow":
        return "pillow", None
    try:
        import simplejpeg
    except ImportError:
        if want == "simplejpeg":
            raise ImportError(f"{CHOICE_ENV}=simplejpeg but simplejpeg is not installed "
                              "(pip install 'tilespec[fast]')") from None
        return "pillow", None
    return "simplejpeg", simplejpeg


#: The decoder chosen at import: 'simplejpeg' or 'pillow'.
DECODER, _simplejpeg = choose_decoder(os.environ.get(CHOICE_ENV))
if _simplejpeg is not None:
    _header = _simplejpeg.decode_jpeg_header
    _decode = _simplejpeg.decode_jpeg


def decode_fast(data, max_pixels: int, out: np.ndarray | None = None) -> np.ndarray | None:
    """The pixels ``decode_image(data)`` gives, decoded by the fast decoder, or None.

    spec/images.md, "The JPEG decoder". Returns a new C-contiguous (H, W, 3) uint8
    array, or ``out`` filled with the image when given (any writeable (H, W, 3)
    uint8 array of the image's size: a C-contiguous one is decoded into directly,
    another layout gets a copy). None, and ``out`` possibly written, when
    :data:`DECODER` is ``'pillow'``, the bytes are not a JPEG, its colour space is
    not YCbCr, RGB or grayscale, it has more than ``max_pixels`` pixels (or more than
    Pillow's ``Image.MAX_IMAGE_PIXELS``, where Pillow's bomb check has its say),
    ``out`` does not fit, or the decoder fails: the caller then decodes with Pillow
    (``decode_image``), whose pixels or error are the answer. Never raises.
    """
    if _simplejpeg is None or bytes(data[:3]) != _JPEG_MAGIC:
        return None
    try:
        h, w, colour, _ = _header(data)
        limit = Image.MAX_IMAGE_PIXELS  # above it Pillow warns, above twice it refuses
        if colour not in _FAST_COLOURS or h * w > max_pixels or (limit and h * w > limit):
            return None
        if out is None:
            return _decode(data, "RGB", False, False, strict=True)
        if out.shape != (h, w, 3) or out.dtype != np.uint8 or not out.flags.writeable:
            return None
        if out.flags.c_contiguous:
            _decode(data, "RGB", False, False, buffer=out, strict=True)
        else:
            out[...] = _decode(data, "RGB", False, False, strict=True)
        return out
    except Exception:  # noqa: BLE001 - the caller's Pillow decode gives the answer
        return None


def _max_pixels(max_pixels):
    from .images import MAX_TILE_PIXELS  # here, not at import: images may import this module
    return MAX_TILE_PIXELS if max_pixels is None else max_pixels


def decode_jpeg(data, *, max_pixels: int | None = None) -> np.ndarray:
    """``decode_image(data, max_pixels=...)`` for a JPEG, by the fast decoder where it is
    exact (:func:`decode_fast`), else by ``decode_image`` itself: the same new
    writeable C-contiguous (H, W, 3) uint8 pixels, the same errors. spec/images.md,
    "The JPEG decoder"; ``max_pixels`` None: ``decode_image``'s default cap."""
    from .images import decode_image
    max_pixels = _max_pixels(max_pixels)
    arr = decode_fast(data, max_pixels)
    return decode_image(data, max_pixels=max_pixels) if arr is None else arr


def decode_jpeg_into(data, out: np.ndarray, *, max_pixels: int | None = None) -> np.ndarray:
    """Decode into ``out``, a writeable (H, W, 3) uint8 array of the image's size (any
    layout: C-contiguous is decoded into directly), and return it: the pixels
    :func:`decode_jpeg` gives, errors its own (spec/images.md, "The JPEG decoder").
    An ``out`` of another shape or dtype, or read-only, is a ValueError (the image
    is decoded first, so bytes that cannot be decoded raise their decode error)."""
    from .images import decode_image
    max_pixels = _max_pixels(max_pixels)
    if decode_fast(data, max_pixels, out) is not None:
        return out
    arr = decode_image(data, max_pixels=max_pixels)
    if out.shape != arr.shape or out.dtype != np.uint8 or not out.flags.writeable:
        raise ValueError(f"out must be a writeable {arr.shape} uint8 array (the image is "
                         f"{arr.shape[1]}x{arr.shape[0]}), got "
                         f"{'a read-only ' if not out.flags.writeable else ''}{out.shape} "
                         f"{out.dtype}")
    out[...] = arr
    return out


__all__ = ["DECODER", "CHOICE_ENV", "CHOICES", "choose_decoder", "decode_fast", "decode_jpeg",
           "decode_jpeg_into"]
