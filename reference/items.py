"""Reading a record into an item (spec/sampling.md, "Loaders" and "Checked at
construction"; skips from spec/reliability.md, "on_error").

:class:`ItemMaker` turns record j of tfrecord t at a stream position into the item a
loader yields, ``(image, label[, slide][, loc_x, loc_y])``, in two public steps that
every backend uses: :meth:`ItemMaker.read` (the record, the per-item header checks,
errors located and raised or skipped, the skip log of :data:`SKIP_LOG_LIMIT` entries)
and :meth:`ItemMaker.fields` (label, slide name, location). :class:`AllSkippedGuard`
is the rule that a stream whose owned records were all skipped raises
:class:`AllRecordsSkippedError`. :func:`check_label_values` and
:func:`check_construction` are what every loader checks when it is built;
:func:`collate` and :class:`ArrayStacker` stack items into batches.
"""

from __future__ import annotations

import functools
import numbers
import warnings
from typing import Mapping

import numpy as np

from . import ops
from .annotations import DatasetError, LabelError
from .errors import TFRecordError
from .images import (MAX_TILE_PIXELS, check_image_header, check_max_tile_pixels, decode_into,
                     decode_new, decode_view)
from .pipeline import Pipeline
from .records import MAX_RECORD_BYTES
from .source import TileSource

ON_ERROR = ("raise", "skip")
SKIP_LOG_LIMIT = 1000  # skipped records kept in a loader's ``skipped`` log (all are counted)



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
        own open files and an empty skip log, applying ``pipeline`` (an object
        with :meth:`tilespec.pipeline.Pipeline.apply`'s signature and options, e.g.
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
        return self._read(self.source if source is None else source, t, j, position, epoch,
                          decode, ())

    def _read(self, source, t, j, position, epoch, decode, args):
        """:meth:`read`, with ``decode(image_bytes, *args)``."""
        try:
            tile = source.read(t, j)
            self.check_image(tile.image_raw)
            return tile, (None if decode is None else decode(tile.image_raw, *args))
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
        """The item for record j of tfrecord t at ``position`` of ``epoch``, or None
        when skipped:
        :meth:`read` (with this maker's decode), the pipeline, then :meth:`fields`
        (spec/sampling.md, "Loaders"; the pipeline of spec/images.md, "Pipeline order").

        The image is a new writeable array, as :func:`decode_image` returns, except
        with ``owned=False`` (batched loaders, whose :func:`collate` copies every
        image into the batch), where it may be a read-only view of the decoder's
        output when no step of the pipeline replaced it. ``into`` (only used when
        the pipeline does nothing after decode) is a batch slot to decode into:
        when that works the item's image is ``into`` itself.
        """
        got = self._read(self.source, t, j, position, epoch, self._decode, (steps, owned, into))
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
        """``labels[slide]`` (None without labels), the label of a tile whose record in
        ``path`` stores ``slide``; a :class:`LabelError` naming both when it has none
        (spec/sampling.md, "Loaders": items)."""
        if self.labels is None:
            return None
        try:
            return self.labels[slide]
        except KeyError:
            raise LabelError(f"slide {slide!r} (stored in {path}) has no label; labels "
                             f"cover {len(self.labels)} slides") from None

    def close(self):
        self.source.close()


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
        """The loader yielded: forget the records skipped so far."""
        if self.seen:
            self.seen = set()

    def skipped(self, t: np.ndarray, j: np.ndarray, log: list):
        """Records ``(t, j)`` (arrays) came out skipped; raises when every owned record
        has been, naming the tfrecords and the first error of ``log`` (a skip log)."""
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


def collate(items, images=None):
    """Stack items into a batch: images (N, ...), labels array (or None), slides
    (str array), loc_x and loc_y (int64 arrays) (spec/sampling.md, "Loaders": batches).

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
    (:meth:`tilespec.loader.NumpyLoader.make_items`): each image is copied into its
    row as soon as it is made. An adapter gives the loader its own stacker with
    these four methods (the torch adapter's writes CHW tensors into a batch tensor)
    (spec/adapters.md, "What an adapter is")."""

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


__all__ = ["ItemMaker", "ON_ERROR", "SKIP_LOG_LIMIT", "AllSkippedGuard",
           "AllRecordsSkippedError", "check_label_values", "check_construction", "collate",
           "ArrayStacker"]
