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

:mod:`tilespec.images` calls :func:`decode_fast` first in ``decode_image`` and in each of
the loaders' decode variants (``decode_view``, ``decode_new``, ``decode_into``,
``decode_planar``), and decodes with Pillow (``decode_pillow``) whatever it leaves, so
every loader decodes at the fast decoder's speed when it is installed, with
``decode_image``'s pixels and errors. This module imports nothing of tilespec (the
import goes one way: images -> jpeg).
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


def _taken(data, max_pixels, header=None):
    """(height, width) when the fast decoder takes the bytes (see :func:`decode_fast`),
    else None: from ``header`` (our own parse) when given, else from the fast decoder's
    reading of the header, which raises where it is unreadable."""
    if _simplejpeg is None:
        return None
    if header is None:
        if bytes(data[:3]) != _JPEG_MAGIC:
            return None
        h, w, colour, _ = _header(data)
        if colour not in _FAST_COLOURS:
            return None
    else:
        w, h, components = header
        if components != 3 and components != 1:  # libjpeg: YCbCr/RGB, or Gray
            return None
    limit = Image.MAX_IMAGE_PIXELS  # above it Pillow warns, above twice it refuses
    if h * w > max_pixels or (limit and h * w > limit):
        return None
    return h, w


def decoder_of(data, max_pixels: int) -> str:
    """The decoder ``decode_image(data, max_pixels=...)`` starts with: ``'simplejpeg'``
    when the fast decoder takes these bytes from their header (a JPEG in YCbCr, RGB or
    grayscale, within the caps), else ``'pillow'`` (PNG, CMYK, or :data:`DECODER`
    ``'pillow'``); bytes it then fails on are Pillow's too. spec/images.md, "The JPEG
    decoder" (``tilespec inspect`` reports it per file)."""
    try:
        return "pillow" if _taken(data, max_pixels) is None else DECODER
    except Exception:  # noqa: BLE001 - an unreadable header: Pillow says why
        return "pillow"


def describe() -> str:
    """One line on the decoder choice, for ``tilespec adapters`` (spec/images.md, "The
    JPEG decoder"): :data:`DECODER` and its version, the fallback, ``TILESPEC_JPEG``."""
    import PIL

    want = (os.environ.get(CHOICE_ENV) or "auto").strip().lower()
    if _simplejpeg is not None:
        return (f"simplejpeg {_simplejpeg.__version__} (Pillow {PIL.__version__} for PNG, "
                f"CMYK and what simplejpeg cannot decode; {CHOICE_ENV}={want})")
    why = "" if want == "pillow" else "; simplejpeg not installed: pip install 'tilespec[fast]'"
    return f"pillow {PIL.__version__} ({CHOICE_ENV}={want}{why})"


def decode_fast(data, max_pixels: int, out: np.ndarray | None = None, *,
                header=None) -> np.ndarray | None:
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

    ``header``, where the caller has parsed the JPEG's frame header itself
    (:func:`tilespec.images.image_header`'s ``(width, height, channels)`` of these
    bytes, known to be a JPEG), spares the fast decoder's own reading of it: the colour
    space is then told by the component count, as libjpeg tells it (1: grayscale; 3:
    YCbCr or RGB, both taken; 4: CMYK or YCCK, left to Pillow; any other: no colour
    space libjpeg converts to RGB), so the choice is the same.
    """
    try:
        size = _taken(data, max_pixels, header)
        if size is None:
            return None
        h, w = size
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


__all__ = ["DECODER", "CHOICE_ENV", "CHOICES", "choose_decoder", "decode_fast", "decoder_of",
           "describe"]
