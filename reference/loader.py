"""The NumPy reference loaders (spec/sampling.md, "Loaders" and "Indexed dataset").

:class:`NumpyLoader` is an iterable over a rank's stream (the plan of
:mod:`tilespec.sampling`), yielding ``(image, label[, slide][, loc_x, loc_y])``
items or stacked batches. :class:`IndexedInterleaver` is the map-style
equivalent. Files are read at the edge by :class:`TileSource`; everything that
decides *what* is read and *how it is augmented* is a pure function of
(seed, rank, epoch, position).
"""

from __future__ import annotations

import functools
import io
import numbers
import os
import warnings
from collections import OrderedDict
from typing import Mapping

import numpy as np
from PIL import Image

from . import ops
from .annotations import DatasetError, LabelError
from .dataset import tfrecord_paths
from .errors import IndexFileError, RecordTooLargeError, TFRecordError, TruncatedRecordError
from .example import parse_tile, scan_tile_slide
from .images import (JPEG_MAGIC, MAX_TILE_PIXELS, check_image_header, check_max_tile_pixels,
                     decode_image, image_size, open_image)
from .index import load_index
from .pipeline import Pipeline, check_bool
from .records import (FRAMING_BYTES, HEADER_BYTES, MAX_RECORD_BYTES, check_max_record_bytes,
                      read_header, read_record_at, scan_frames)
from .rng import check_seed, new_seed, permutation, stream_key
from .sampling import RankStream, check_rank, check_uneven, num_batches

ON_ERROR = ("raise", "skip")
INDEXED_GROUP = 0xFFFFFFFF  # permutation group of the indexed dataset's shuffle
PLAN_WINDOW = 4096  # stream positions the loader plans at once
SKIP_LOG_LIMIT = 1000  # skipped records kept in a loader's ``skipped`` log (all are counted)


class TileSource:
    """Reads tile ``j`` of tfrecord ``t`` by offset (the I/O edge).

    Indexes are loaded (built when missing) on first use of a tfrecord; at most
    ``max_open`` files are kept open, least recently used closed first.

    With ``on_error='skip'``, a file whose index cannot be loaded or built (its
    index build meets a damaged record) is located by a headers-only scan
    instead (spec/reliability.md, "on_error"), so each record is verified when
    read and skipped on its own; a damaged length field cuts the scan there.
    The outcome is cached per file: a damaged file is scanned once per source.

    Every read, index build and scan applies ``max_record_bytes``
    (spec/reliability.md, "Size caps"); the scan steps over a record above it
    (its length is sound), which is then skipped on its own when read.
    """

    def __init__(self, paths, *, max_open: int = 64, verify: bool = True,
                 on_error: str = "raise", max_record_bytes: int = MAX_RECORD_BYTES):
        self.paths = [os.fspath(p) for p in paths]
        self.max_open = max_open
        self.verify = verify
        self.on_error = on_error
        self.max_record_bytes = check_max_record_bytes(max_record_bytes)
        self._offsets: dict = {}
        self._cut: dict = {}  # t -> (record, error): records from there on are not located
        self._files: OrderedDict = OrderedDict()

    def reopened(self) -> "TileSource":
        """A source over the same files with file handles of its own, sharing the
        record offsets (and what headers-only scans found) loaded so far and from now
        on: for another iteration, thread or adapter pipeline over the same loader."""
        other = TileSource(self.paths, max_open=self.max_open, verify=self.verify,
                           on_error=self.on_error, max_record_bytes=self.max_record_bytes)
        other._offsets = self._offsets
        other._cut = self._cut
        return other

    def offsets(self, t: int) -> np.ndarray:
        """The byte offsets of the records of tfrecord t, from its index (loaded or
        built on first use) or, with on_error='skip' where no index can be built, from
        a headers-only scan (spec/index.md; spec/reliability.md, "on_error")."""
        arr = self._offsets.get(t)
        if arr is None:
            path = self.paths[t]
            try:
                arr = load_index(path, max_record_bytes=self.max_record_bytes)[0][:, 0].copy()
            except TFRecordError as e:
                if self.on_error != "skip":
                    raise
                arr = self._scan(t, e)
            self._offsets[t] = arr
        return arr

    def _scan(self, t: int, why: TFRecordError) -> np.ndarray:
        """Offsets of the records of a file that cannot be indexed, from its headers
        alone; a header that cannot be read ends the scan (it is the last entry,
        so reading that record raises its error; later records are not located)."""
        path = self.paths[t]
        found = []
        cut = None
        if isinstance(why, IndexFileError):
            cut = (0, why)  # GZIP: no record can be read by offset
        else:
            start = (0, 0)
            while start is not None:
                frames = scan_frames(path, verify=False, max_payload=-1, start=start,
                                     max_record_bytes=self.max_record_bytes)
                start = None
                try:
                    for offset, _, _ in frames:
                        found.append(offset)
                except RecordTooLargeError as e:  # a sound length: step over the record
                    found.append(e.offset)  # (skipped on its own when read)
                    start = (e.offset + FRAMING_BYTES + e.length, len(found))
                except TFRecordError as e:
                    cut = (len(found), e)
                    if e.offset is not None:
                        found.append(e.offset)  # the damaged record itself: skipped when read
                finally:
                    frames.close()
        arr = np.array(found, dtype=np.int64)
        note = ""
        if cut is not None:
            self._cut[t] = cut
            k, e = cut
            rest = "" if e.offset is None else (
                f"; {os.path.getsize(path) - e.offset} bytes from byte offset {e.offset} on "
                "are unread")
            note = (f"; the scan stops at record {k} ({e.reason}): records after it are "
                    f"not located and left out{rest}")
        warnings.warn(f"{path}: no index can be built ({why.reason}); with on_error='skip' "
                      f"its records are located by their headers ({len(arr)} found) and each "
                      f"is verified when read{note}", stacklevel=4)
        return arr

    def offset_of(self, t: int, j: int) -> int | None:
        """The byte offset of record j of tfrecord t where it is known, else None."""
        try:
            offsets = self.offsets(t)
        except TFRecordError:
            return None
        return int(offsets[j]) if 0 <= j < len(offsets) else None

    def slides(self, t: int) -> tuple:
        """The distinct slide names stored in the records of tfrecord t, in order of
        first appearance (spec/dataset.md, "Labels": what is read and when).

        Reads each record's header (its length checksum checked) and, by
        :func:`~tilespec.example.scan_tile_slide`, only the bytes that locate and
        hold its ``slide`` feature, not the image; a record in another layout is
        read whole and parsed. A record that cannot be read raises its error
        (with on_error='skip' it is left out: the loader skips it when read).
        """
        path = self.paths[t]
        names: dict = {}
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            for j, offset in enumerate(self.offsets(t).tolist()):
                try:
                    slide = self._record_slide(fd, path, j, offset)
                except TFRecordError as e:
                    if self.on_error != "skip":
                        raise e.located(path=path, record=j, offset=offset) from None
                    continue
                names.setdefault(slide, None)
        finally:
            os.close(fd)
        return tuple(names)

    def _record_slide(self, fd, path, j, offset) -> str:
        head = os.pread(fd, HEADER_BYTES + 256, offset)
        length = read_header(io.BytesIO(head[:HEADER_BYTES]), path=path, record=j,
                             offset=offset, verify=True, max_record_bytes=self.max_record_bytes)
        if length is None:
            raise TruncatedRecordError("offset is at or past the end of the file", path=path,
                                       record=j, offset=offset)
        start = offset + HEADER_BYTES
        pre = head[HEADER_BYTES:HEADER_BYTES + length]

        def read(pos, n):
            if pos + n <= len(pre):
                return pre[pos:pos + n]
            return os.pread(fd, min(n, max(0, length - pos)), start + pos)

        slide = scan_tile_slide(read, length)
        if slide is None:  # not the plain layout: read and parse the whole record
            with open(path, "rb") as f:
                payload = read_record_at(f, offset, verify=self.verify, record=j, path=path)
            slide = parse_tile(payload).slide
        return slide

    def tile_size(self, max_pixels: int = MAX_TILE_PIXELS):
        """The dataset's tile size, ``(height, width, where)``: the image size of the
        first record, tfrecords in order and records in file order, whose record and
        image header read within ``max_pixels`` (spec/reliability.md, "Size caps");
        ``where`` names that record. None when no record qualifies (every tfrecord
        empty, or damaged). Damaged records are passed over here: each raises (or is
        skipped, per ``on_error``) at its own turn. The one definition every check
        uses: crop boxes at construction, the per-item size check, Dataset.tile_size."""
        for t, path in enumerate(self.paths):
            try:
                n = len(self.offsets(t))
            except TFRecordError:  # no index can be built: the file raises at its turn
                continue
            for j in range(n):
                try:
                    raw = self.read(t, j).image_raw
                    hw = check_image_header(raw, max_pixels=max_pixels)
                    if hw is None:  # a header only Pillow reads: ask it (no cap, no warning)
                        _, w, h = image_size(raw)
                        if w * h > max_pixels:
                            continue
                        hw = (h, w)
                except (TFRecordError, IndexError):
                    continue
                return hw[0], hw[1], f"that of {path}, record {j}"
        return None

    def _file(self, t: int):
        f = self._files.pop(t, None)
        if f is None:
            if len(self._files) >= self.max_open:
                _, old = self._files.popitem(last=False)
                old.close()
            f = open(self.paths[t], "rb", buffering=1 << 16)  # a record or more per read
        self._files[t] = f
        return f

    def read(self, t: int, j: int):
        """The parsed :class:`~tilespec.example.Tile` of record j of tfrecord t."""
        offsets = self.offsets(t)
        if not 0 <= j < len(offsets):
            cut = self._cut.get(t)
            if cut is not None and j >= 0:
                k, e = cut
                raise type(e)(f"not located: the file cannot be read past record {k} "
                              f"({e.reason})", path=self.paths[t], record=j)
            raise IndexError(f"{self.paths[t]} has {len(offsets)} records; record {j} "
                             "does not exist")
        path, offset = self.paths[t], int(offsets[j])
        payload = read_record_at(self._file(t), offset, verify=self.verify, record=j, path=path,
                                 max_record_bytes=self.max_record_bytes)
        try:
            return parse_tile(payload)
        except TFRecordError as e:
            raise e.located(path=path, record=j, offset=offset) from None

    def close(self):
        while self._files:
            self._files.popitem()[1].close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


def decode_view(data, max_pixels: int = MAX_TILE_PIXELS) -> np.ndarray:
    """:func:`~tilespec.images.decode_image` without its final copy (spec/images.md, "Decode").

    For the common case, an 8-bit RGB JPEG, returns the decoded pixels as a
    read-only view of Pillow's output (the same libjpeg decode with the same
    options as ``decode_image``, so the same pixels). Anything else, and any
    failure, goes through ``decode_image`` itself, so results and errors are
    exactly its own. The loaders copy the view only where an owned array is
    handed on (see :meth:`ItemMaker.make`), saving one copy of every tile on the
    batched path, where :func:`collate` copies it into the batch anyway.
    ``max_pixels`` is ``decode_image``'s cap (spec/reliability.md, "Size caps"),
    as in every decode variant.
    """
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
    return decode_image(data, max_pixels=max_pixels)


def decode_into(data, out: np.ndarray, max_pixels: int = MAX_TILE_PIXELS) -> bool:
    """Decode an 8-bit RGB JPEG straight into ``out``, an (H, W, 3) uint8 array of the
    image's size laid out either pixel by pixel (C-contiguous) or plane by plane (the
    transpose of a C-contiguous (3, H, W) array, as :func:`decode_planar` returns);
    True when done (spec/images.md, "Decode").

    The same decode as :func:`decode_view`, with Pillow's packing of the
    decoded pixels (what ``tobytes`` does) written into ``out`` chunk by chunk
    instead of into a new buffer that is then copied: one pass over the image
    fewer, which is what lets the batched loader keep up with a bare loop of
    decodes. Returns False, with ``out`` in an unspecified state, for any other
    input or size, any failure, or a Pillow without this encoder interface; the
    caller then decodes the usual way (so errors are ``decode_image``'s own).
    """
    return _decode_packed(data, out, max_pixels=max_pixels) is not None


def decode_new(data, max_pixels: int = MAX_TILE_PIXELS) -> np.ndarray | None:
    """:func:`decode_into` a new (H, W, 3) array sized from the JPEG header: the
    image as ``decode_image`` returns it (new, writeable, C-contiguous) with one
    copy fewer; None where :func:`decode_into` would return False
    (spec/images.md, "Decode")."""
    return _decode_packed(data, None, max_pixels=max_pixels)


def decode_planar(data, transposed: bool = False,
                  max_pixels: int = MAX_TILE_PIXELS) -> np.ndarray:
    """The image :func:`decode_image` returns, (H, W, 3) uint8 and writeable, but laid
    out plane by plane: the transpose ``(1, 2, 0)`` of a new C-contiguous (3, H, W)
    array, or with ``transposed`` the transpose ``(2, 1, 0)`` of a (3, W, H) one
    (spec/images.md, "Decode").

    The same pixels in another memory order: for a framework whose images are CHW
    (the torch adapter), ``transpose(2, 0, 1)`` of the result is contiguous, so no
    pass over the image is spent changing the layout (Pillow packs each channel
    straight into its plane). ``transposed`` is for an image that will be turned
    by an odd multiple of 90 degrees: Pillow transposes the decoded pixels (a
    blocked copy of 4-byte pixels) before packing, and the turned image is then
    contiguous. Anything :func:`decode_new` cannot do goes through
    :func:`decode_view`, so results and errors are exactly ``decode_image``'s.
    """
    img = _decode_packed(data, None, planar=True, transposed=transposed, max_pixels=max_pixels)
    return decode_view(data, max_pixels) if img is None else img


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
    band 'R', 'G', 'B') into the C-contiguous ``dest``; True when it filled it exactly."""
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


def _decode_any_steps(data, steps, max_pixels=MAX_TILE_PIXELS) -> np.ndarray:
    """The item maker's default decode: :func:`decode_view`, whatever the steps."""
    return decode_view(data, max_pixels)


class ItemMaker:
    """Record j of tfrecord t at a stream position, with its drawn steps -> the item a
    loader yields (spec/sampling.md, "Loaders": items, labels, ``on_error``).

    Shared by both reference loaders and by adapters, which keep everything here
    (reading by offset, labels, slide names and locations, skips and their log)
    and swap only the image pipeline and the decode: :meth:`replace`.
    """

    def __init__(self, paths, *, labels, pipeline: Pipeline, incl_slidenames, incl_loc,
                 on_error, decode=None, max_record_bytes: int = MAX_RECORD_BYTES,
                 max_tile_pixels: int = MAX_TILE_PIXELS):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        if labels is not None and not isinstance(labels, Mapping):
            raise TypeError(f"labels must be a mapping {{slide: label}} or None, got "
                            f"{type(labels).__name__}")
        self.max_tile_pixels = check_max_tile_pixels(max_tile_pixels)
        self.source = TileSource(paths, on_error=on_error, max_record_bytes=max_record_bytes)
        self._tile_size: list = []  # [(height, width, where) or None] once looked up; shared
        self.labels = labels
        self.pipeline = pipeline
        self.incl_slidenames = bool(incl_slidenames)
        self.incl_loc = bool(incl_loc)
        self.on_error = on_error
        # (bytes, the tile's drawn steps) -> the (H, W, 3) uint8 image decode_image
        # returns, in any memory layout (possibly a read-only view): decode_view, or
        # an adapter's (the torch one picks a layout that suits the steps); it is
        # given the bytes of a tile that passed check_image, and applies
        # max_tile_pixels itself like every decode variant
        self.decode = decode or functools.partial(_decode_any_steps,
                                                  max_pixels=self.max_tile_pixels)
        self.skipped: list = []  # the first SKIP_LOG_LIMIT skips
        self.num_skipped = 0     # every skip
        p = pipeline
        # nothing after decode: a batched loader may decode straight into its batch
        self.identity = (not p.augment and p.normalizer is None and p.transform is None and
                         p.standardize is None and p.crop_width is None and
                         p.resize_target is None)

    def replace(self, *, pipeline=None, decode=None) -> "ItemMaker":
        """A new item maker with the same tfrecords (their offsets shared, see
        :meth:`TileSource.reopened`), labels, ``incl_*`` flags and ``on_error``, its
        own open files and an empty skip log, applying ``pipeline``
        (an object with this module's ``Pipeline.apply`` signature and options, e.g.
        an adapter's) and decoding with ``decode(data, steps)`` (default
        :func:`decode_view`) (spec/adapters.md, "What an adapter is")."""
        maker = ItemMaker(self.source.paths, labels=self.labels,
                          pipeline=self.pipeline if pipeline is None else pipeline,
                          incl_slidenames=self.incl_slidenames, incl_loc=self.incl_loc,
                          on_error=self.on_error, decode=decode,
                          max_record_bytes=self.source.max_record_bytes,
                          max_tile_pixels=self.max_tile_pixels)
        maker.source = self.source.reopened()
        maker._tile_size = self._tile_size
        return maker

    @property
    def max_record_bytes(self) -> int:
        """The record-size cap of every read (spec/reliability.md, "Size caps")."""
        return self.source.max_record_bytes

    def tile_size(self):
        """``(height, width, where)``: the dataset's tile size, that of the image of the
        first record that can be read (record 0 of the first tfrecord, else of the
        next one), looked up once (shared with :meth:`replace`'s makers), or None when
        no tfrecord's record 0 can be read (spec/reliability.md, "Size caps").
        A damaged first record is passed over here and raises (or is skipped) on its
        own when its turn comes."""
        if not self._tile_size:
            self._tile_size.append(self._find_tile_size())
        return self._tile_size[0]

    def _find_tile_size(self):
        source = self.source.reopened()
        try:
            return source.tile_size(self.max_tile_pixels)
        finally:
            source.close()

    def check_image(self, data) -> None:
        """The per-item header check, before the tile is decoded, in every backend
        (this maker's :meth:`make`; the TF adapter's generator): ``max_tile_pixels``,
        then the tile size, unless the pipeline makes every size equal: with
        ``resize_target`` any size is fine, with a crop (and no resize) a tile of
        another size than the dataset's (:meth:`tile_size`) must hold the crop box,
        else the tile must have the dataset's tile size.
        Raises :class:`~tilespec.errors.ImageTooLargeError` or
        :class:`~tilespec.errors.TileSizeError` (unlocated: the caller adds file,
        record and offset) (spec/reliability.md, "Size caps")."""
        p = self.pipeline
        if p.resize_target is not None:
            check_image_header(data, max_pixels=self.max_tile_pixels)
        elif p.crop_width is not None:
            check_image_header(data, max_pixels=self.max_tile_pixels,
                               tile_size=self.tile_size(), crop=(p.crop_left, p.crop_width))
        else:
            check_image_header(data, max_pixels=self.max_tile_pixels,
                               tile_size=self.tile_size())

    def read(self, t: int, j: int, position: int, decode=None, *, source=None,
             epoch: int = 0):
        """Step 1 of an item: ``(tile, image)`` for record j of tfrecord t at stream
        ``position`` of ``epoch``, or None when it is skipped (spec/reliability.md,
        "on_error").

        Reads the record by offset (from ``source``, default this maker's
        :class:`TileSource`; an adapter iterating with its own open files passes
        its :meth:`TileSource.reopened` copy), checks the image header
        (:meth:`check_image`), then calls ``decode(image_bytes)`` when given
        (``image`` is its result, else None). Any :class:`TFRecordError` on the way
        learns its file, record and byte offset and is raised (``on_error='raise'``)
        or counted and logged (:meth:`skip`), the one skip rule of every backend.
        """
        source = self.source if source is None else source
        try:
            tile = source.read(t, j)
            self.check_image(tile.image_raw)
            return tile, (None if decode is None else decode(tile.image_raw))
        except TFRecordError as e:
            e = e.located(path=source.paths[t], record=j, offset=source.offset_of(t, j))
            if self.on_error == "raise":
                raise e from None
            self.skip(position, source.paths[t], j, e, epoch)
            return None

    def fields(self, tile, path: str, record: int) -> tuple:
        """Step 2 of an item: what follows the image, ``(label[, slide][, loc_x,
        loc_y])`` of a tile read from record ``record`` of ``path``
        (spec/sampling.md, "Loaders"): the label looked up by slide name
        (:meth:`label`), the slide name with ``incl_slidenames``, the location with
        ``incl_loc`` (a :class:`LabelError` naming file and record when the record
        has none)."""
        item = [self.label(tile.slide, path)]
        if self.incl_slidenames:
            item.append(tile.slide)
        if self.incl_loc:
            if tile.loc_x is None or tile.loc_y is None:
                raise LabelError(f"{path}, record {record}: incl_loc=True but the record has "
                                 "no loc_x/loc_y")
            item += [tile.loc_x, tile.loc_y]
        return tuple(item)

    def _decode(self, data, steps, owned, into):
        """This maker's decode of a checked tile (see :meth:`make`)."""
        if self.identity:  # nothing after decode: decode into the array handed on
            cap = self.max_tile_pixels
            if into is not None and decode_into(data, into, cap):
                return into
            img = decode_new(data, cap) if owned else None
            if img is not None:
                return img
        return self.decode(data, steps)

    def make(self, t: int, j: int, position: int, steps, stain_z, *, owned: bool = True,
             into: np.ndarray | None = None, epoch: int = 0):
        """The item for record j of tfrecord t at ``position`` of ``epoch``, or None when skipped:
        :meth:`read` (with this maker's decode), the pipeline, then :meth:`fields`.

        The image is a new writeable array, as :func:`decode_image` returns, except
        with ``owned=False`` (batched loaders, whose :func:`collate` copies every
        image into the batch), where it may be a read-only view of the decoder's
        output when no step of the pipeline replaced it. ``into`` (only used when
        the pipeline does nothing after decode) is a batch slot to decode into:
        when that works the item's image is ``into`` itself.
        """
        got = self.read(t, j, position,
                        functools.partial(self._decode, steps=steps, owned=owned, into=into),
                        epoch=epoch)
        if got is None:
            return None
        tile, img = got
        raw = img
        path = self.source.paths[t]
        if self.pipeline.transform is not None and not raw.flags.writeable:
            img = raw = raw.copy()  # a user transform may write into its input
        try:
            img = self.pipeline.apply(img, steps, stain_z)
            if owned and img is raw and not raw.flags.writeable:
                img = raw.copy()
        except Exception as e:
            if hasattr(e, "add_note"):
                e.add_note(f"while processing {path}, record {j}, stream position {position}")
            raise
        return (img,) + self.fields(tile, path, j)

    def skip(self, position: int, path: str, record: int, error: TFRecordError,
             epoch: int = 0) -> None:
        """Count a skipped record; log (``{"epoch", "position", "path", "record",
        "error"}``) and warn about the first :data:`SKIP_LOG_LIMIT`
        (spec/reliability.md, "on_error")."""
        self.num_skipped += 1
        if len(self.skipped) < SKIP_LOG_LIMIT:
            self.skipped.append({"epoch": epoch, "position": position, "path": path,
                                 "record": record, "error": str(error)})
            warnings.warn(f"skipped {path} record {record} (stream position {position}): "
                          f"{error.reason}", stacklevel=4)
        elif self.num_skipped == SKIP_LOG_LIMIT + 1:
            warnings.warn(f"skipped {path} record {record} (stream position {position}): "
                          f"{error.reason}; {SKIP_LOG_LIMIT} skips are logged, further ones "
                          "are only counted (num_skipped) and not warned about", stacklevel=4)

    def label(self, slide: str, path: str):
        if self.labels is None:
            return None
        try:
            return self.labels[slide]
        except KeyError:
            raise LabelError(f"slide {slide!r} (stored in {path}) has no label; labels "
                             f"cover {len(self.labels)} slides") from None

    def close(self):
        self.source.close()


def _pipeline_and_items(paths, default_standardize, *, labels, incl_slidenames, incl_loc,
                        on_error, max_record_bytes, max_tile_pixels, record_slides=None,
                        clip=None, **image_options):
    """The image pipeline of a loader's options and the item maker applying it: what
    :class:`NumpyLoader` and :class:`IndexedInterleaver` build the same way, with the
    checks every loader makes at construction (:func:`check_construction`)."""
    incl_slidenames = check_bool("incl_slidenames", incl_slidenames)
    incl_loc = check_bool("incl_loc", incl_loc)
    check_label_values(labels)
    pipeline = Pipeline.from_options(**image_options, default_standardize=default_standardize)
    items = ItemMaker(paths, labels=labels, pipeline=pipeline,
                       incl_slidenames=incl_slidenames, incl_loc=incl_loc, on_error=on_error,
                       max_record_bytes=max_record_bytes, max_tile_pixels=max_tile_pixels)
    check_construction(items, record_slides, clip)
    return pipeline, items


def _is_number(v) -> bool:
    if isinstance(v, (str, bytes)):
        return False
    if isinstance(v, (numbers.Real, np.bool_)):
        return True
    return isinstance(v, np.ndarray) and v.ndim == 0 and v.dtype.kind in "biuf"


def check_label_values(labels) -> None:
    """``labels`` is None or ``{slide: label}`` with every label a number, or every
    label a sequence of numbers of one length (spec/sampling.md, "Checked at
    construction"); else a :class:`LabelError` naming the slide and the value."""
    if labels is None:
        return
    if not isinstance(labels, Mapping):
        raise TypeError(f"labels must be a mapping {{slide: label}} or None, got "
                        f"{type(labels).__name__}")
    first = None
    for slide, v in labels.items():
        if _is_number(v):
            shape = "a number"
        elif (isinstance(v, (list, tuple, np.ndarray)) and np.ndim(v) == 1
              and all(_is_number(x) for x in v)):
            shape = f"a sequence of {len(v)} numbers"
        else:
            hint = (" (string labels: Dataset.labels(headers) gives each category its index "
                    "into the unique values it returns)"
                    if isinstance(v, (str, bytes)) or (isinstance(v, (list, tuple)) and any(
                        isinstance(x, (str, bytes)) for x in v)) else "")
            raise LabelError(f"the label of slide {slide!r} is {v!r}: labels must be numbers "
                             f"or sequences of numbers of one length{hint}")
        if first is None:
            first = (slide, shape)
        elif shape != first[1]:
            raise LabelError(f"labels must all have one shape: slide {first[0]!r} has "
                             f"{first[1]}, slide {slide!r} has {shape}")


def check_construction(items: ItemMaker, record_slides=None, clip=None) -> None:
    """What a loader checks against its tfrecords when it is built (spec/sampling.md,
    "Checked at construction"), so it fails before the first batch, not during it:

    - not every tfrecord is empty (0 records);
    - with ``labels``, every slide name stored in the records has a label: read
      with :meth:`TileSource.slides`, or from ``record_slides`` (``{path: names}``
      or a callable giving it, e.g. :meth:`tilespec.Dataset.record_slides`, which
      caches them);
    - a crop box lies inside the tile size (:meth:`ItemMaker.tile_size`, the one
      of :meth:`TileSource.tile_size`).
    """
    source, pipeline = items.source, items.pipeline
    if clip is not None and np.any(np.asarray(clip) > 0):
        counts = [1]  # records to load: no tfrecord needs counting here
    else:
        counts = [len(source.offsets(t)) for t in range(len(source.paths))]
    if not any(counts):
        names = ", ".join(source.paths[:5]) + (f" and {len(source.paths) - 5} more"
                                               if len(source.paths) > 5 else "")
        raise DatasetError(f"every tfrecord of this loader is empty (0 records in each of "
                           f"{len(counts)}: {names}): nothing to load")
    if items.labels is not None:
        if record_slides is None:
            found = {p: source.slides(t) for t, p in enumerate(source.paths)}
        else:
            found = record_slides() if callable(record_slides) else record_slides
        missing = [(s, p) for p in source.paths for s in found.get(p, ()) if
                   s not in items.labels]
        if missing:
            s, p = missing[0]
            more = f" ({len(missing) - 1} more slide(s) without a label)" if len(missing) > 1 \
                else ""
            raise LabelError(f"slide {s!r} (stored in {p}) has no label; labels cover "
                             f"{len(items.labels)} slides{more}")
    if pipeline.crop_width is not None:
        size = items.tile_size()
        try:
            if size is not None:
                ops.check_crop_box(pipeline.crop_left, pipeline.crop_width, *size[:2])
        except ValueError:
            raise ValueError(f"crop_left={pipeline.crop_left}, crop_width={pipeline.crop_width}: "
                             f"the box [{pipeline.crop_left}, "
                             f"{pipeline.crop_left + pipeline.crop_width}) is outside the tiles "
                             f"of {size[0]} x {size[1]} pixels (height x width; the tile size is "
                             f"{size[2]})") from None


def collate(items, images=None):
    """Stack items into a batch: images (N, ...), labels array (or None), slides
    (str array), loc_x and loc_y (int64 arrays).

    ``images``, when given, is the already stacked image column (the loader
    builds it while it makes the items); the items' own images are then ignored.
    """
    cols = list(zip(*items))
    out = [np.stack(cols[0]) if images is None else images]
    labels = cols[1]
    out.append(None if labels[0] is None else np.asarray(labels))
    for k, col in enumerate(cols[2:], start=2):
        out.append(np.asarray(col, dtype=np.int64 if isinstance(col[0], (int, np.integer))
                              else str))
    return tuple(out)


class ArrayStacker:
    """The batch array a batched loader fills while it makes a batch's n items
    (:meth:`NumpyLoader.make_items`): each image is copied into its row as soon as it
    is made. An adapter gives the loader its own stacker with these four methods
    (the torch adapter's writes CHW tensors into a batch tensor)."""

    def __init__(self, n: int):
        self.n = n
        self.buf = None   # (n, ...) once the first image gave the shape and dtype

    def slot(self, k: int):
        """Row k to decode straight into, once the batch exists (else None)."""
        return None if self.buf is None else self.buf[k]

    def put(self, k: int, img) -> bool:
        """Copy image k into row k; False (nothing copied) when it is not an array of
        the batch's shape and dtype."""
        if not isinstance(img, np.ndarray):
            return False
        if self.buf is None:
            self.buf = np.empty((self.n,) + img.shape, dtype=img.dtype)
        elif img.shape != self.buf.shape[1:] or img.dtype != self.buf.dtype:
            return False
        self.buf[k] = img
        return True

    def take_back(self, count: int) -> list:
        """The first ``count`` images, as copies; the batch is dropped."""
        imgs = [] if self.buf is None else [self.buf[i].copy() for i in range(count)]
        self.buf = None
        return imgs

    def images(self, count: int):
        """The stacked images of the ``count`` items made (fewer than n when some were
        skipped: then a copy, so the unused rows are not kept)."""
        return self.buf if count == self.n else self.buf[:count].copy()


class NumpyLoader:
    """The reference loader over one rank's stream (spec/sampling.md, "Loaders").

    Iterating yields items ``(image, label[, slide][, loc_x, loc_y])``, or batches
    of them stacked by :func:`collate` when ``batch_size`` is set. Images are HWC
    uint8 (``standardize=False``, the default), or float32 when standardized
    (``standardize=True`` is 'unit').

    Options are checked when the loader is built (spec/sampling.md, "Checked at
    construction"); ``record_slides`` (``{path: slide names}`` or a callable giving
    it, as :meth:`tilespec.Dataset.record_slides`) spares reading the names stored in
    the records for the labels check.
    ``max_record_bytes`` and ``max_tile_pixels`` are the size caps of every read and
    decode, and a tile of another size than the dataset's is an error unless the
    pipeline resizes or crops (spec/reliability.md, "Size caps"); all three are
    reading errors, raised or skipped per ``on_error``.

    The loader's state is ``(seed, epoch, position)``: iteration starts at the
    state and advances it with every item (a batch advances it by its size);
    finishing a finite epoch moves to the next epoch at position 0. An
    infinite loader has the single epoch 0.
    """

    default_standardize = "unit"

    def __init__(self, paths, clip, weights, *, labels=None, batch_size=None, infinite=True,
                 shuffle=False, seed=None, rank=None, num_replicas=None, augment=False,
                 normalizer=None, transform=None, standardize=False, crop_left=None,
                 crop_width=None, resize_target=None, resize_method="lanczos3", resize_aa=True,
                 incl_slidenames=False, incl_loc=False, drop_last=False, on_error="raise",
                 record_slides=None, uneven="pad", elastic=False,
                 max_record_bytes=MAX_RECORD_BYTES, max_tile_pixels=MAX_TILE_PIXELS,
                 progress=False):
        rank, num_replicas = check_rank(rank, num_replicas)
        check_uneven(uneven)
        elastic = check_bool("elastic", elastic)
        if batch_size is not None and (isinstance(batch_size, bool) or
                                       not isinstance(batch_size, (int, np.integer)) or
                                       batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        self.seed = new_seed() if seed is None else check_seed(seed)
        self.paths = [os.fspath(p) for p in paths]
        self.clip = np.asarray(clip, dtype=np.int64)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.batch_size = None if batch_size is None else int(batch_size)
        self.infinite = check_bool("infinite", infinite)
        self.shuffle = check_bool("shuffle", shuffle)
        self.rank, self.num_replicas = int(rank), int(num_replicas)
        self.drop_last = check_bool("drop_last", drop_last)
        self.uneven, self.elastic = uneven, elastic
        self.progress = check_bool("progress", progress)
        if self.progress and self.infinite:
            raise ValueError("progress=True shows a bar over a finite epoch: pass "
                             "infinite=False too (an infinite loader has no end to show)")
        self.pipeline, self._items = _pipeline_and_items(
            self.paths, self.default_standardize, labels=labels,
            incl_slidenames=incl_slidenames, incl_loc=incl_loc, on_error=on_error,
            record_slides=record_slides, clip=self.clip,
            max_record_bytes=max_record_bytes, max_tile_pixels=max_tile_pixels,
            augment=augment, normalizer=normalizer, transform=transform,
            standardize=standardize, crop_left=crop_left, crop_width=crop_width,
            resize_target=resize_target, resize_method=resize_method, resize_aa=resize_aa)
        self.epoch = 0
        self.position = 0
        self._plan = self.plan(0)  # validates clip/weights now
        self._window = None  # (plan, start, t, j): positions planned ahead

    # -- plans and state ----------------------------------------------------------------------
    def plan(self, epoch: int, seed: int | None = None) -> RankStream:
        """What this loader's rank reads in ``epoch`` (with ``seed``, default the
        loader's): loader position -> stream position -> record (spec/sampling.md,
        "Equal steps", "Elastic streams")."""
        return RankStream(self.clip, self.weights, self.seed if seed is None else seed,
                          rank=self.rank, num_replicas=self.num_replicas, epoch=epoch,
                          infinite=self.infinite, shuffle=self.shuffle,
                          batch_size=self.batch_size, drop_last=self.drop_last,
                          uneven=self.uneven, elastic=self.elastic)

    @property
    def num_padded(self) -> int:
        """Pads (repeated records) in each finite epoch of this rank (spec/sampling.md,
        "Equal steps")."""
        return self._plan.num_padded

    @property
    def num_dropped(self) -> int:
        """Records of this rank's stream left out of each finite epoch by
        ``uneven='drop'`` (elastic: also by ``drop_last``) (spec/sampling.md, "Equal steps")."""
        return self._plan.num_dropped

    @property
    def global_batch_size(self) -> int | None:
        """G = batch size x num_replicas of an elastic loader, else None."""
        return self._plan.global_batch_size

    @property
    def skipped(self) -> list:
        """The first :data:`SKIP_LOG_LIMIT` records skipped with on_error='skip': dicts of
        epoch, position, path, record, error (spec/reliability.md, "on_error")."""
        return self._items.skipped

    @property
    def num_skipped(self) -> int:
        """How many positions were skipped with on_error='skip' (all of them, logged or not)."""
        return self._items.num_skipped

    def __len__(self) -> int:
        """Items (or batches) per epoch: the same on every rank (spec/sampling.md,
        "Equal steps")."""
        n = len(self._plan)
        return n if self.batch_size is None else num_batches(n, self.batch_size, self.drop_last)

    def state_dict(self) -> dict:
        """``{"seed", "epoch", "position"}``; an elastic loader's position is the
        global stream position (of its next global batch) and its state also holds
        ``global_batch_size`` (spec/sampling.md, "Loaders", "Elastic streams")."""
        if not self.elastic:
            return {"seed": self.seed, "epoch": self.epoch, "position": self.position}
        B, G = self.batch_size or 1, self.global_batch_size
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position // B * G,
                "global_batch_size": G}

    def load_state_dict(self, state: Mapping) -> None:
        missing = {"seed", "epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"loader state lacks {sorted(missing)}")
        seed, epoch, position = check_seed(state["seed"]), int(state["epoch"]), \
            int(state["position"])
        if epoch < 0 or position < 0 or (self.infinite and epoch != 0):
            raise ValueError(f"invalid loader state {dict(state)!r}")
        G = state.get("global_batch_size")
        if self.elastic:
            if G is None:
                raise ValueError("this elastic loader needs the state of an elastic loader "
                                 "(one with 'global_batch_size'); got "
                                 f"{dict(state)!r}")
            if int(G) != self.global_batch_size:
                raise ValueError(f"state has global batch size {G}, this loader "
                                 f"{self.global_batch_size} (batch_size "
                                 f"{self.batch_size or 1} x num_replicas "
                                 f"{self.num_replicas}): resume with the same global batch")
            if position % G:
                raise ValueError(f"position {position} is not at a global batch boundary "
                                 f"(global batch size {G})")
            position = position // G * (self.batch_size or 1)
        elif G is not None:
            raise ValueError(f"state {dict(state)!r} is an elastic loader's "
                             "(global_batch_size): load it into a loader with elastic=True")
        if self.batch_size and position % self.batch_size:
            raise ValueError(f"position {position} is not at a batch boundary "
                             f"(batch_size {self.batch_size})")
        self.seed, self.epoch, self.position = seed, epoch, position
        self._plan = self.plan(epoch)

    # -- items --------------------------------------------------------------------------------
    def items(self, start: int, stop: int, plan: RankStream | None = None) -> list:
        """Items of positions [start, stop) (skipped ones left out), in order."""
        return self.make_items(start, stop, plan, owned=True)[0]

    def _records(self, plan: RankStream, start: int, stop: int):
        """``plan.records(start, stop)``, planned :data:`PLAN_WINDOW` positions at a time.

        Records are a pure function of the position, so a window planned ahead
        and sliced gives the same (t, j) as asking for every batch, at a fraction
        of the per-call cost of the vectorized planner.
        """
        w = self._window
        if w is None or w[0] is not plan or start < w[1] or stop > w[1] + len(w[2]):
            t, j = plan.records(start, max(stop, start + PLAN_WINDOW))
            w = self._window = (plan, start, t, j)
            if stop > start + len(t):  # the end of a finite stream
                stop = start + len(t)
        a, b = start - w[1], stop - w[1]
        return w[2][a:b], w[3][a:b]

    @property
    def item_maker(self) -> ItemMaker:
        """The :class:`ItemMaker` of this loader's options (adapters derive theirs with
        :meth:`ItemMaker.replace`)."""
        return self._items

    def make_items(self, start, stop, plan=None, *, owned=True, stack=None, maker=None):
        """``(items, images)``: the items of positions [start, stop) and, with ``stack``,
        their images already stacked as :func:`collate` would (else None)
        (spec/sampling.md, "Loaders").

        ``plan`` defaults to the current epoch's; ``maker`` (default this loader's
        :attr:`item_maker`) makes each item, so an adapter runs this loop with its
        own pipeline. ``owned=False`` lets an image be a read-only decoder view
        (batched loaders, which copy every image into the batch).

        ``stack`` (batched loaders) makes a stacker for n images
        (:class:`ArrayStacker`, or an adapter's): every image goes into the batch
        as soon as it is made, and the item keeps None in its place, so the
        decoder's buffer is free again for the next tile (it stays in cache and in
        memory the process already holds) instead of 64 tiles' worth of fresh
        memory per batch. When the pipeline does nothing after decode, tiles are
        decoded straight into the slot the stacker offers (:func:`decode_into`).
        Should the stacker refuse an image (another shape or type), the images
        are put back and ``images`` is None, so :func:`collate` stacks (or fails)
        exactly as before.
        """
        plan = plan or self._plan
        t, j = self._records(plan, start, stop)
        n = len(t)
        positions = plan.positions(start, start + n)
        draws = self.pipeline.draw(plan.key, positions)
        stain = draws.stain
        maker = self._items if maker is None else maker
        make = maker.make
        stacker = stack(n) if stack is not None else None
        direct = stacker is not None and maker.identity  # decode into the batch
        out = []
        for k, (tk, jk, pk) in enumerate(zip(t.tolist(), j.tolist(), positions.tolist())):
            slot = stacker.slot(len(out)) if direct and stacker is not None else None
            item = make(tk, jk, pk, draws.steps[k], None if stain is None else stain[k],
                        owned=owned, into=slot, epoch=plan.epoch)
            if item is None:
                continue
            if stacker is not None:
                if (slot is not None and item[0] is slot) or stacker.put(len(out), item[0]):
                    item = (None,) + item[1:]
                else:  # not stackable here: put the images back, collate decides
                    out = [(img,) + it[1:] for img, it in zip(stacker.take_back(len(out)), out)]
                    stacker = None
            out.append(item)
        if stacker is None or not out:
            return out, None
        return out, stacker.images(len(out))

    def progress_bar(self):
        """With ``progress=True``, a :class:`tilespec.progress.Progress` over this epoch's
        batches (items) from the current position, else None (spec/sampling.md, "Loaders")."""
        if not self.progress:
            return None
        from .progress import Progress
        B = self.batch_size or 1
        return Progress(len(self) - self.position // B, f"epoch {self.epoch}", min_total=1,
                        unit="batches" if self.batch_size else "items")

    def __iter__(self):
        if self._plan.epoch != self.epoch:
            self._plan = self.plan(self.epoch)
        plan = self._plan
        B = self.batch_size or 1
        total = None if self.infinite else len(plan)
        guard = AllSkippedGuard(plan, self.paths)
        bar, done = self.progress_bar(), 0
        try:
            while total is None or self.position < total:
                start = self.position
                stop = start + B if total is None else min(start + B, total)
                if total is not None and self.drop_last and stop - start < B:
                    break
                items, images = self.make_items(
                    start, stop, plan, owned=self.batch_size is None,
                    stack=None if self.batch_size is None else ArrayStacker)
                self.position = stop
                if not items:
                    guard.skipped(*self._records(plan, start, stop), self._items.skipped)
                    continue
                guard.reset()
                yield items[0] if self.batch_size is None else collate(items, images)
                if bar is not None:
                    done += 1
                    bar.step(done)
        except GeneratorExit:  # the caller left the loop: release the files now
            self.close()        # (they are reopened if the loader is iterated again)
            raise
        finally:
            if bar is not None:
                bar.close()
        self.epoch += 1
        self.position = 0

    def close(self):
        self._items.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class AllRecordsSkippedError(TFRecordError):
    """With on_error='skip', every record a loader owns was skipped since it last
    yielded: nothing can ever be yielded (spec/reliability.md, "on_error")."""


class AllSkippedGuard:
    """Raises :class:`AllRecordsSkippedError` once every owned record of a plan was
    skipped with no item yielded in between (skips are deterministic: a record that
    failed fails again, so the stream can never yield). Holds at most one int per
    owned record, and only while nothing is yielded (spec/reliability.md,
    "on_error"). A loader (the reference's or an adapter's) calls :meth:`reset`
    when it yields and :meth:`skipped` with the records of a batch that came out
    empty."""

    def __init__(self, plan, paths):
        # a RankStream's records are those of its stream plan (pads repeat them)
        plan = getattr(plan, "stream", plan)
        self.plan, self.paths = plan, paths
        self.total = len(plan)
        self.seen: set = set()
        self._base = None

    def reset(self):
        if self.seen:
            self.seen = set()

    def skipped(self, t: np.ndarray, j: np.ndarray, log: list):
        if self._base is None:  # record (t, j) -> a number in [0, total)
            sizes = np.where(self.plan.live, self.plan.sizes, 0)
            self._base = np.cumsum(sizes) - sizes - self.plan.starts
        self.seen.update((self._base[t] + j).tolist())
        if len(self.seen) < self.total:
            return
        live = [self.paths[t] for t in np.flatnonzero(self.plan.live)]
        names = ", ".join(live[:8]) + (f" and {len(live) - 8} more" if len(live) > 8 else "")
        first = f"; first error logged: {log[0]['error']}" if log else ""
        raise AllRecordsSkippedError(
            f"on_error='skip' skipped all {self.total} records this loader owns in "
            f"{len(live)} tfrecord(s) ({names}) without yielding anything: no item can "
            f"ever be yielded{first}")


class IndexedInterleaver:
    """Map-style reference dataset (spec/sampling.md, "Indexed dataset").

    Item i of rank r is the i-th record owned by r, tfrecords in the given
    order and records in file order (the partition of :func:`partition` over
    ``clip``); ``shuffle=True`` reorders items by a permutation keyed by
    (seed, rank, epoch). Augmentation draws are keyed by (seed, rank, epoch, i)
    with the epoch set by :meth:`set_epoch` (default 0). No balancing. The size caps
    and the tile-size check are those of :class:`NumpyLoader`.
    """

    default_standardize = "unit"

    def __init__(self, tfrecords, *, clip=None, labels=None, rank=None, num_replicas=None,
                 shuffle=False, seed=None, augment=False, normalizer=None, transform=None,
                 standardize=False, crop_left=None, crop_width=None, resize_target=None,
                 resize_method="lanczos3", resize_aa=True, incl_slidenames=False,
                 incl_loc=False, on_error="raise", max_record_bytes=MAX_RECORD_BYTES,
                 max_tile_pixels=MAX_TILE_PIXELS):
        from .sampling import partition

        rank, num_replicas = check_rank(rank, num_replicas)
        self.paths = tfrecord_paths(tfrecords)
        if not self.paths:
            raise ValueError("IndexedInterleaver needs at least one tfrecord")
        self.seed = new_seed() if seed is None else check_seed(seed)
        self.rank, self.num_replicas = int(rank), int(num_replicas)
        self.shuffle = check_bool("shuffle", shuffle)
        self.pipeline, self._items = _pipeline_and_items(
            self.paths, self.default_standardize, labels=labels,
            incl_slidenames=incl_slidenames, incl_loc=incl_loc, on_error=on_error,
            max_record_bytes=max_record_bytes, max_tile_pixels=max_tile_pixels,
            augment=augment, normalizer=normalizer, transform=transform,
            standardize=standardize, crop_left=crop_left, crop_width=crop_width,
            resize_target=resize_target, resize_method=resize_method, resize_aa=resize_aa)
        counts = np.array([len(self._items.source.offsets(t)) for t in range(len(self.paths))],
                          dtype=np.int64)
        self.clip = _clip_array(clip, self.paths, counts)
        starts, sizes = partition(self.clip, self.num_replicas, self.rank)
        # item i -> (t, j): tfrecords in order, records in file order
        self._t = np.repeat(np.arange(len(self.paths)), sizes)
        self._j = starts[self._t] + (np.arange(len(self._t)) - np.repeat(
            np.cumsum(sizes) - sizes, sizes))
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, (int, np.integer)) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
        self.epoch = int(epoch)
        self._key = stream_key(self.seed, self.rank, self.epoch)
        self._order = (permutation(self._key, len(self._t), INDEXED_GROUP, 0)
                       if self.shuffle else None)

    def __len__(self) -> int:
        return len(self._t)

    def record(self, i: int) -> tuple[int, int]:
        """(tfrecord index, record index) of item i in the current epoch."""
        n = len(self)
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"index must be an integer, got {i!r}")
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} items")
        i = int(i) % n
        k = int(self._order[i]) if self._order is not None else i
        return int(self._t[k]), int(self._j[k])

    @property
    def item_maker(self) -> ItemMaker:
        """The :class:`ItemMaker` of this dataset's options."""
        return self._items

    def __getitem__(self, i):
        return self.item(i)

    def item(self, i, maker: ItemMaker | None = None):
        """Item i (``self[i]``), made by ``maker`` (default :attr:`item_maker`; an
        adapter passes its own, see :meth:`ItemMaker.replace`) (spec/sampling.md,
        "Indexed dataset")."""
        t, j = self.record(i)
        i = int(i) % len(self)
        draws = self.pipeline.draw(self._key, np.array([i]))
        maker = self._items if maker is None else maker
        return maker.make(t, j, i, draws.steps[0],
                          None if draws.stain is None else draws.stain[0], epoch=self.epoch)

    def close(self):
        self._items.close()


def _clip_array(clip, paths, counts) -> np.ndarray:
    """clip as None, a list aligned with paths, or a dict {path: count}; values above n_t
    read as n_t."""
    if clip is None:
        return counts.copy()
    if isinstance(clip, Mapping):
        norm = {os.path.abspath(os.fspath(k)): v for k, v in clip.items()}
        unknown = set(norm) - {os.path.abspath(p) for p in paths}
        if unknown:
            raise ValueError(f"clip names tfrecords that are not in the dataset: "
                             f"{sorted(unknown)[:5]}")
        values = [norm.get(os.path.abspath(p), n) for p, n in zip(paths, counts)]
    else:
        values = list(clip)
        if len(values) != len(paths):
            raise ValueError(f"clip has {len(values)} entries for {len(paths)} tfrecords")
    out = []
    for p, v, n in zip(paths, values, counts):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise ValueError(f"clip for {p} must be an integer >= 0, got {v!r}")
        out.append(min(int(v), int(n)))
    return np.array(out, dtype=np.int64)


__all__ = ["NumpyLoader", "IndexedInterleaver", "TileSource", "collate", "ON_ERROR",
           "AllRecordsSkippedError", "SKIP_LOG_LIMIT",
           "decode_view", "decode_into", "decode_new", "decode_planar", "ArrayStacker",
           "ItemMaker", "AllSkippedGuard"]
