"""Image decoding (spec/images.md, "Decode").

``decode_image`` turns JPEG or PNG bytes into an HWC uint8 RGB array. The
format is chosen by magic bytes, never by trying decoders in turn: grayscale
becomes three equal channels, alpha is dropped, palettes are expanded. JPEG
uses libjpeg's exact integer IDCT (ISLOW, Pillow's default). A CMYK (Adobe)
JPEG becomes RGB as R = round((255 - C) * (255 - K) / 255), likewise G from M
and B from Y (Pillow's conversion; TensorFlow truncates instead of rounding,
so it can be 1 lower). 16-bit PNGs are refused (bit depth read from IHDR),
because Pillow would silently keep only the high byte of 16-bit RGB.

Before any decoder sees the bytes, the header's size is read by
:func:`image_header` (our own parse of the PNG chunks / JPEG markers up to the
pixel data, microseconds per tile): an image of more than ``max_tile_pixels``
(default :data:`MAX_TILE_PIXELS`, 4096 x 4096) is an :class:`ImageTooLargeError`
and is never decoded (spec/reliability.md, "Size caps").

A JPEG is decoded by the fast decoder of :mod:`tilespec.jpeg` (simplejpeg, when the
``fast`` extra is installed) wherever it gives exactly these pixels, and otherwise by
:func:`decode_pillow`, this module's Pillow decode, which defines the pixels and the
errors (spec/images.md, "The JPEG decoder"); PNG is always Pillow's.

The loaders decode through variants that give ``decode_image``'s pixels with
fewer copies: :func:`decode_view` (possibly a read-only view), :func:`decode_into`
(into a given array), :func:`decode_new` and :func:`decode_planar` (plane by
plane, for CHW frameworks). Each tries the fast decoder first and hands anything it
cannot do to ``decode_image``, so results and errors are its own.
"""

from __future__ import annotations

import io
import numbers
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageDecodeError, ImageTooLargeError, TileSizeError
from .jpeg import decode_fast

#: The default cap on an image's width x height (spec/reliability.md, "Size caps"):
#: 256 times a 256 px tile; decoded as RGB it is 48 MiB.
MAX_TILE_PIXELS = 4096 * 4096

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


def open_image(data, fmt: str, max_pixels: int | None = MAX_TILE_PIXELS):
    """``Image.open`` (lazy: header only) of ``data`` as ``fmt`` ('jpeg' or 'png') once its
    size is known to be within ``max_pixels`` (None: no cap); spec/reliability.md,
    "Size caps". Raises :class:`ImageTooLargeError` above the cap (from
    :func:`image_header`, before Pillow sees the bytes, and again from Pillow's
    own reading of the header, before any pixel is decoded), else
    :class:`ImageDecodeError` saying why the header cannot be read.

    Pillow's global ``Image.MAX_IMAGE_PIXELS`` is never changed. Its
    ``DecompressionBombWarning`` cannot fire for an image within the default
    cap (Pillow warns above 89 million pixels); where the header cannot be
    parsed here, or is over Pillow's limit but within a larger cap the caller
    chose, the warning is caught for this call only, so the caller's cap is
    the one signal; Pillow's ``DecompressionBombError`` (twice its limit) is
    an :class:`ImageTooLargeError`.
    """
    head = _header_of(data, fmt)
    if head is not None and max_pixels is not None and head[0] * head[1] > max_pixels:
        raise _too_large(fmt, head[0], head[1], max_pixels)
    limit = Image.MAX_IMAGE_PIXELS
    quiet = head is None or (limit is not None and head[0] * head[1] > limit)
    if quiet:  # rare: catch Pillow's bomb warning here only (catch_warnings is global)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = _open(data, fmt)
    else:
        im = _open(data, fmt)
    if max_pixels is not None and im.width * im.height > max_pixels:
        im.close()
        raise _too_large(fmt, im.width, im.height, max_pixels)
    return im


def _open(data, fmt: str):
    """``Image.open`` of ``data`` as ``fmt``, or :class:`ImageDecodeError` saying why the
    header cannot be read (format, byte count, first bytes, the decoder's reason)."""
    try:
        return Image.open(io.BytesIO(data), formats=[fmt.upper()])
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"image larger than the cap: {_reason(e)} (Pillow's "
                                 "Image.MAX_IMAGE_PIXELS)") from None
    except (OSError, SyntaxError, ValueError) as e:
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


def check_max_tile_pixels(value) -> int:
    """``max_tile_pixels`` as an int, or ValueError: a positive integer
    (spec/reliability.md, "Size caps")."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"max_tile_pixels must be a positive integer (width x height), "
                         f"got {value!r}")
    return int(value)


_SOF = frozenset((0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                  0xCF, 0xDE))  # the markers whose segment gives the frame size
_NO_LENGTH = frozenset((0xC8, *range(0xD0, 0xDA), *range(0xF0, 0xFE)))  # bare markers
_PNG_CHANNELS = {0: 1, 2: 3, 3: 3, 4: 2, 6: 4}


def _larger(best, w, h, c):
    return (w, h, c) if best is None or w * h > best[0] * best[1] else best


_PREFIX = (None, None)  # (the bytes through the first scan header of the last JPEG walked, its parse)


def _jpeg_header(data):
    """(width, height, channels) of the largest frame header before the first scan, or
    None where the markers cannot be followed that far (:func:`_walk_jpeg`).

    The parse is a function of the bytes up to the end of the first scan header alone,
    and tiles from one encoder usually share those bytes (the same tables and size), so
    the last ones walked and their parse are kept: a tile that starts with them has
    that parse, one comparison of a few hundred bytes instead of a walk."""
    global _PREFIX
    prefix, head = _PREFIX
    if prefix is not None and type(data) is bytes and data.startswith(prefix):
        return head
    head, end = _walk_jpeg(data)
    if end:
        _PREFIX = (bytes(data[:end]), head)
    return head


def _walk_jpeg(data):
    """``(header, end)``: :func:`_jpeg_header`'s parse of ``data`` and the offset where
    the first scan header ends (0 where the walk stopped before it). Walks the markers
    as Pillow does (bytes between markers skipped, fill bytes 0xFF allowed) and takes
    the largest of all frame headers, so Pillow's size (its last frame header) is never
    larger than this one. Only bytes before ``end`` are read, so any bytes that start
    with ``data[:end]`` have this parse."""
    n = len(data)
    p = 3            # after ff d8 ff: the ff of the next marker is read
    ff = True        # the byte before p was a marker's 0xff
    best = None
    while p < n:
        b = data[p]
        p += 1
        if not ff:   # junk between markers
            ff = b == 0xFF
            continue
        if b == 0xFF:             # fill byte: still before a marker
            continue
        if b == 0x00:             # an escaped 0xff: not a marker
            ff = False
            continue
        if b < 0xC0:
            return None, 0        # no marker Pillow knows: it fails too
        if b not in _NO_LENGTH:
            if p + 2 > n:
                return None, 0
            start = p + 2
            p = start + max(((data[p] << 8) | data[p + 1]) - 2, 0)
            if p > n:
                return None, 0
            if b in _SOF:
                if p - start < 6:
                    return None, 0
                best = _larger(best, (data[start + 3] << 8) | data[start + 4],
                               (data[start + 1] << 8) | data[start + 2], data[start + 5])
        if b == 0xDA:             # start of scan: the header ends here
            return best, p
        ff = False
        if p < n:
            ff = data[p] == 0xFF
            p += 1
    return best, 0


def _png_header(data):
    """(width, height, channels) of the largest IHDR chunk before the first IDAT, or None."""
    n = len(data)
    p = 8
    best = None
    while p + 8 <= n:
        length = int.from_bytes(data[p:p + 4], "big")
        cid = bytes(data[p + 4:p + 8])
        if cid in (b"IDAT", b"IEND"):
            break
        if cid == b"IHDR":
            if length < 13 or p + 21 > n:
                return None
            best = _larger(best, int.from_bytes(data[p + 8:p + 12], "big"),
                           int.from_bytes(data[p + 12:p + 16], "big"),
                           _PNG_CHANNELS.get(data[p + 17], 0))
        p += 12 + length
    return best


_LAST = (None, None)  # (bytes object, its header): a loader checks, then decodes, one tile


def _header_of(data, fmt):
    """(width, height, channels) or None, parsed once per ``bytes`` object in a row:
    the loaders' item check and the decoder that follows it share one parse (bytes are
    immutable, and the object is held here, so its identity cannot be reused)."""
    global _LAST
    last, head = _LAST
    if data is last:
        return head
    head = _jpeg_header(data) if fmt == "jpeg" else _png_header(data)
    if type(data) is bytes:
        _LAST = (data, head)
    return head


def image_header(data):
    """``(format, width, height, channels)`` read from the header bytes alone, or None
    when they cannot be read that far (the decoder then says why); no decoder runs.

    spec/reliability.md, "Size caps". Format by magic bytes as in
    :func:`decode_image` (None too for other formats). JPEG: the frame header
    (SOF) found by walking the markers up to the first scan; PNG: the IHDR chunk.
    Where a file holds several, the largest is returned, so the size Pillow
    decodes is never larger. ``channels`` is the stored count (PNG palette: 3).
    """
    fmt = "jpeg" if _is_jpeg(data) else image_format(data)
    if fmt is None:
        return None
    head = _header_of(data, fmt)
    return None if head is None else (fmt, *head)


def _too_large(fmt: str, w: int, h: int, max_pixels: int) -> ImageTooLargeError:
    return ImageTooLargeError(
        f"image larger than the cap: its {fmt.upper()} header declares {w}x{h} pixels "
        f"({w * h}), more than max_tile_pixels={max_pixels} (4096x4096 is "
        f"{MAX_TILE_PIXELS}); it was not decoded (pass a larger max_tile_pixels to "
        "decode images this large)")


def check_image_header(data, *, max_pixels: int = MAX_TILE_PIXELS, tile_size=None,
                       crop=None):
    """The header checks of a tile before it is decoded; return ``(height, width)``,
    or None when the header cannot be read (the decoder then raises its error).

    spec/reliability.md, "Size caps". Raises :class:`ImageTooLargeError` above
    ``max_pixels``; with ``tile_size=(height, width, where)`` (a loader's tile
    size and where it comes from), :class:`TileSizeError` when the tile has
    another size; with ``crop=(left, width)`` too (a loader that crops and does
    not resize, so every tile the box fits in gives one size), only when the
    tile has another size and the crop box does not fit in it (a box that does
    not fit the dataset's own tile size is the crop's error, not the tile's).
    """
    head = image_header(data)
    if head is None:
        return None
    fmt, w, h, _ = head
    if w * h > max_pixels:
        raise _too_large(fmt, w, h, max_pixels)
    if tile_size is None or (h, w) == tuple(tile_size[:2]):
        return h, w
    if crop is not None:
        left, width = crop
        if left + width > min(w, h):
            raise TileSizeError(
                f"tile size differs from the dataset's and the crop box does not fit: this "
                f"tile is {w}x{h} (width x height), the dataset's tile size is "
                f"{tile_size[1]}x{tile_size[0]} ({tile_size[2]}), the crop box "
                f"[{left}, {left + width}) of crop_left={left}, crop_width={width}")
    else:
        raise TileSizeError(
            f"tile size differs from the dataset's: this tile is {w}x{h} (width x "
            f"height), the dataset's tile size is {tile_size[1]}x{tile_size[0]} "
            f"({tile_size[2]}); tiles of one size are needed to batch them (give "
            "resize_target to resize every tile to one size)")
    return h, w


def decode_image(data, *, max_pixels: int = MAX_TILE_PIXELS) -> np.ndarray:
    """Decode JPEG or PNG bytes to a new HWC uint8 RGB array (writeable, C-contiguous).

    spec/images.md, "Decode". Raises :class:`ImageDecodeError` (a
    TFRecordError) for bytes of any other format (naming what they look
    like), truncated or corrupt images and unsupported modes (16-bit, float);
    :class:`ImageTooLargeError` for an image of more than ``max_pixels``
    (width x height), from its header, before decoding (spec/reliability.md,
    "Size caps").

    A JPEG within the cap goes to the fast decoder (:func:`tilespec.jpeg.decode_fast`),
    whose pixels are :func:`decode_pillow`'s; everything it leaves (CMYK, any failure,
    simplejpeg not installed) and every PNG is :func:`decode_pillow`'s, pixels and
    errors (spec/images.md, "The JPEG decoder").
    """
    arr = _fast(data, max_pixels)
    return decode_pillow(data, max_pixels=max_pixels) if arr is None else arr


def _is_jpeg(data) -> bool:
    """``data`` starts with the JPEG magic bytes (:func:`image_format` 'jpeg')."""
    return data.startswith(JPEG_MAGIC) if type(data) is bytes else bytes(data[:3]) == JPEG_MAGIC


def _fast(data, max_pixels, out=None):
    """:func:`tilespec.jpeg.decode_fast` of a JPEG whose own header (:func:`image_header`'s
    parse, shared with the loader's item check) is within ``max_pixels``, else None: the
    cap is read before any decoder runs (spec/reliability.md, "Size caps")."""
    if not _is_jpeg(data):
        return None
    head = _header_of(data, "jpeg")
    if head is None or head[0] * head[1] > max_pixels:
        return None   # decode_pillow says why, or raises ImageTooLargeError
    return decode_fast(data, max_pixels, out, header=head)


def decode_pillow(data, *, max_pixels: int = MAX_TILE_PIXELS) -> np.ndarray:
    """:func:`decode_image` by Pillow alone: the decode that defines the contract's
    pixels and errors (spec/images.md, "Decode"), used for PNG, for the JPEGs the fast
    decoder leaves, and as the reference the fast decoder is tested against
    (spec/images.md, "The JPEG decoder"). Same arguments, result and errors as
    :func:`decode_image`."""
    fmt = image_format(data)
    if fmt is None:
        raise _unsupported(data)
    if fmt == "png" and len(data) >= 26 and bytes(data[12:16]) == b"IHDR" and data[24] == 16:
        raise ImageDecodeError(f"PNG image has 16 bits per sample (colour type {data[25]}); "
                               "only 8-bit images are supported")
    im = open_image(data, fmt, max_pixels)
    try:
        with im:
            size = f"{im.width}x{im.height} {im.mode}"
            try:
                im.load()
            except (OSError, SyntaxError, ValueError) as e:
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

    spec/images.md, "Decode" (the same format rules as :func:`decode_image`), with
    no size cap and no Pillow bomb warning (spec/reliability.md, "Size caps").
    """
    fmt = image_format(data)
    if fmt is None:
        raise _unsupported(data)
    with open_image(data, fmt, None) as im:
        return fmt, im.width, im.height


# -- the loaders' decode variants: decode_image's pixels with fewer copies --------------

def decode_view(data, max_pixels: int = MAX_TILE_PIXELS) -> np.ndarray:
    """:func:`~tilespec.images.decode_image` without its final copy (spec/images.md, "Decode").

    For the common case, an 8-bit RGB JPEG, returns the fast decoder's new array
    (spec/images.md, "The JPEG decoder") or, where it is not used, the decoded
    pixels as a read-only view of Pillow's output (the same libjpeg decode with
    the same options as ``decode_image``, so the same pixels). Anything else, and
    any failure, goes through ``decode_image`` itself, so results and errors are
    exactly its own. The loaders copy a read-only view only where an owned array
    is handed on (see :meth:`tilespec.items.ItemMaker.make`), saving one copy of
    every tile on the batched path, where :func:`tilespec.items.collate` copies it
    into the batch anyway.
    ``max_pixels`` is ``decode_image``'s cap (spec/reliability.md, "Size caps"),
    as in every decode variant.
    """
    arr = _fast(data, max_pixels)
    if arr is not None:
        return arr
    if bytes(data[:3]) == JPEG_MAGIC:
        try:
            with open_image(data, "jpeg", max_pixels) as im:
                im.load()
                if im.mode == "RGB":
                    arr = np.asarray(im)
                    if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
                        return arr
        except Exception:  # noqa: BLE001 - decode_image below raises the precise error
            pass
    return decode_pillow(data, max_pixels=max_pixels)


def decode_into(data, out: np.ndarray, max_pixels: int = MAX_TILE_PIXELS) -> bool:
    """Decode an 8-bit RGB JPEG straight into ``out``, an (H, W, 3) uint8 array of the
    image's size laid out either pixel by pixel (C-contiguous) or plane by plane (the
    transpose of a C-contiguous (3, H, W) array, as :func:`decode_planar` returns);
    True when done (spec/images.md, "Decode").

    The fast decoder (spec/images.md, "The JPEG decoder") writes a C-contiguous
    ``out`` directly, and a plane-by-plane one through one transposing copy of
    its pixels (measured faster than Pillow's plane packing: bench/decode_study.py).
    Where it is not used, Pillow's packing of the decoded pixels (what ``tobytes``
    does) is written into ``out`` chunk by chunk instead of into a new buffer that
    is then copied: one pass over the image fewer. Either way the batched loader
    decodes straight into its batch row. Returns False, with ``out`` in an
    unspecified state, for any other input, size or layout, any failure, or a
    Pillow without this encoder interface; the caller then decodes the usual way
    (so errors are ``decode_image``'s own).
    """
    if (_is_jpeg(data) and out.ndim == 3 and
            (out.flags.c_contiguous or _planar_shape(out) is not None) and
            _fast(data, max_pixels, out) is not None):
        return True
    return _decode_packed(data, out, max_pixels=max_pixels) is not None


def decode_new(data, max_pixels: int = MAX_TILE_PIXELS) -> np.ndarray | None:
    """:func:`decode_into` a new (H, W, 3) array sized from the JPEG header: the
    image as ``decode_image`` returns it (new, writeable, C-contiguous) with one
    copy fewer (the fast decoder's own array where it is used); None where
    :func:`decode_into` would return False (spec/images.md, "Decode")."""
    arr = _fast(data, max_pixels)
    return _decode_packed(data, None, max_pixels=max_pixels) if arr is None else arr


def decode_planar(data, transposed: bool = False,
                  max_pixels: int = MAX_TILE_PIXELS) -> np.ndarray:
    """The image :func:`decode_image` returns, (H, W, 3) uint8 and writeable, but laid
    out plane by plane: the transpose ``(1, 2, 0)`` of a new C-contiguous (3, H, W)
    array, or with ``transposed`` the transpose ``(2, 1, 0)`` of a (3, W, H) one
    (spec/images.md, "Decode").

    The same pixels in another memory order: for a framework whose images are CHW
    (the torch adapter), ``transpose(2, 0, 1)`` of the result is contiguous, so no
    pass over the image is spent changing the layout later. ``transposed`` is for
    an image that will be turned by an odd multiple of 90 degrees: the turned image
    is then contiguous. The fast decoder's pixels (spec/images.md, "The JPEG
    decoder") are put in place by one transposing copy (for ``transposed``, block by
    block); without it Pillow packs
    each channel straight into its plane (after transposing the decoded pixels,
    a blocked copy of 4-byte pixels, for ``transposed``). Measured in one process,
    interleaved: the fast decode and the copy take less CPU time than Pillow's
    decode and packing in both layouts (bench/decode_study.py). Anything neither
    can do goes through :func:`decode_view`, so results and errors are exactly
    ``decode_image``'s.
    """
    arr = _fast(data, max_pixels)
    if arr is not None:
        h, w = arr.shape[:2]
        if transposed:   # in 64 x 64 blocks, which stay in cache (measured faster)
            img = np.empty((3, w, h), dtype=np.uint8)
            src = arr.transpose(2, 1, 0)
            for x in range(0, w, _BLOCK):
                for y in range(0, h, _BLOCK):
                    img[:, x:x + _BLOCK, y:y + _BLOCK] = src[:, x:x + _BLOCK, y:y + _BLOCK]
            return img.transpose(2, 1, 0)
        img = np.empty((3, h, w), dtype=np.uint8)
        img[...] = arr.transpose(2, 0, 1)
        return img.transpose(1, 2, 0)
    img = _decode_packed(data, None, planar=True, transposed=transposed, max_pixels=max_pixels)
    return decode_view(data, max_pixels) if img is None else img


_BLOCK = 64  # the side of the blocks of decode_planar's transposing copy


def _planar_shape(out):
    """(H, W) when ``out`` is the (1, 2, 0) transpose of a C-contiguous (3, H, W) array."""
    chw = out.transpose(2, 0, 1)
    return chw.shape[1:] if chw.flags.c_contiguous else None


def _decode_packed(data, out, planar=False, transposed=False, max_pixels=MAX_TILE_PIXELS):
    if bytes(data[:3]) != JPEG_MAGIC:
        return None
    try:
        with open_image(data, "jpeg", max_pixels) as im:
            if im.mode != "RGB":
                return None
            w, h = im.size
            if out is None and transposed:
                out = np.empty((3, w, h), dtype=np.uint8).transpose(2, 1, 0)
            elif out is None:
                out = (np.empty((3, h, w), dtype=np.uint8).transpose(1, 2, 0) if planar
                       else np.empty((h, w, 3), dtype=np.uint8))
            elif out.shape != (h, w, 3) or out.dtype != np.uint8 or not out.flags.writeable:
                return None
            elif not out.flags.c_contiguous:
                if _planar_shape(out) != (h, w):
                    return None
                planar = True
            im.load()
            if im.mode != "RGB" or im.size != (w, h):
                return None
            if transposed:   # each channel of the transposed image into its plane
                cwh = out.transpose(2, 1, 0)
                im_t = im.transpose(Image.Transpose.TRANSPOSE)
                ok = all(_pack(im_t, band, cwh[c]) for c, band in enumerate("RGB"))
            elif planar:   # each channel into its own plane
                chw = out.transpose(2, 0, 1)
                ok = all(_pack(im, band, chw[c]) for c, band in enumerate("RGB"))
            else:
                ok = _pack(im, "RGB", out)
            return out if ok else None
    except Exception:  # noqa: BLE001 - the caller falls back to decode_image
        return None


def _pack(im, rawmode: str, dest: np.ndarray) -> bool:
    """Pillow's packing of the loaded image ``im`` in ``rawmode`` ('RGB', or one
    band 'R', 'G', 'B') into the C-contiguous ``dest``; True when it filled it exactly.

    The one use of a private Pillow name, kept here alone. Pillow has no public
    call that packs an image into a caller's buffer: the public ``Image.tobytes``
    runs this same raw encoder but joins its chunks into a new ``bytes`` object,
    which would then be copied into ``dest`` again (measured in one process,
    interleaved, on a loaded machine so indicative only: the packing of a 256 x 256
    tile takes about 28 us this way and 36 us through ``tobytes``; 510 and 615 us
    at 512 x 512, against a decode of about 2 and 7 ms).

    Contract relied on: ``PIL.Image._getencoder(mode, "raw", rawmode)`` returns
    an encoder with ``setimage(core_image, box)`` and ``encode(bufsize)`` giving
    ``(bytes_consumed, status, chunk)``, status 0 while more follows, > 0 when
    done, < 0 on error: the interface ``Image.tobytes`` itself is built on (Pillow
    9, the oldest the package allows, through 13). Should a Pillow change it, this
    raises or returns False, :func:`decode_into` returns False and the other
    variants hand the bytes to :func:`decode_image`: a change costs speed, never
    a pixel or an error message.
    """
    w, h = im.size
    enc = Image._getencoder("RGB", "raw", rawmode)
    enc.setimage(im.im, (0, 0, w, h))
    view = memoryview(dest).cast("B")
    end = view.nbytes
    at = 0
    while True:
        _, status, chunk = enc.encode(1 << 16)
        stop = at + len(chunk)
        if stop > end:
            return False
        view[at:stop] = chunk
        at = stop
        if status:
            return status > 0 and at == end


__all__ = ["decode_image", "decode_pillow", "image_format", "image_size", "image_header",
           "check_image_header", "open_image", "MAX_TILE_PIXELS", "check_max_tile_pixels",
           "JPEG_MAGIC",
           "decode_view", "decode_into", "decode_new", "decode_planar"]
