"""The tf.data loader of ``Dataset.tensorflow()`` and the TensorFlow indexed dataset
(spec/adapter_tf.md, "The loader", "The indexed dataset").

What is read, in which order, with which label and which augmentation comes
from the reference, unchanged: :class:`tilespec.loader.NumpyLoader` (or
:class:`tilespec.loader.IndexedInterleaver`) validates the options and gives the
rank's :class:`~tilespec.sampling.RankStream` (the indexed items' records),
:meth:`tilespec.pipeline.Pipeline.draw` the drawn steps of every position, and the
reference's :class:`~tilespec.items.ItemMaker` reads each record
(:meth:`~tilespec.items.ItemMaker.read`: header checks, errors, the skip rule and
log) and gives its label, slide and location
(:meth:`~tilespec.items.ItemMaker.fields`). A Python generator walks the plan a
chunk of positions at a time and yields the raw image bytes, label, slide, location
and the drawn parameters as tensors; TensorFlow does the image work
(:func:`image_fn`, the reference's stages in :mod:`tilespec_tf.ops`) in a parallel
``map`` whose order is deterministic, then batches and prefetches. Where the pipeline
is decode, flips, rot90 and 'unit' (or less), the batch path (:class:`_Batches`)
makes whole batches in Python threads instead: the reference's decoder and one exact
Pillow transpose per tile (spec/adapter_tf.md, "The batch path").
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import queue
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf
from PIL import Image

from tilespec.augment import MOVE_OPS, OP_OF_CHAR
from tilespec.errors import TFRecordError
from tilespec.images import JPEG_MAGIC, decode_image, decode_into, image_format
from tilespec.index import load_index
from tilespec.items import AllSkippedGuard, ItemMaker
from tilespec.loader import IndexedInterleaver, NumpyLoader
from tilespec.pipeline import check_bool
from tilespec.records import FRAMING_BYTES
from tilespec.sampling import check_rank

from . import ops as tfops
from . import stain as tfstain

#: Positions planned, read and drawn per generator step (rounded up to whole batches).
CHUNK = 256
#: The ``reader`` option: 'python' (the default: the reference's reader, measured the
#: cheaper of the two on a 2-core machine, spec/adapter_tf.md "Two readers") or 'auto'
#: (the C++ path where the plan allows it, else the Python reader).
READERS = ("python", "auto")
#: Live tfrecords (of positive weight, owning records) the C++ path reads at most.
MAX_CXX_TFRECORDS = 256

class _PlanLoader(NumpyLoader):
    """The reference loader with TensorFlow's standardization for standardize=True
    ('per_image').

    Used for validation, plans, draws, labels and record reading; never iterated."""

    default_standardize = tfops.TFOps.default_standardize


class LoaderInfo:
    """What a loader exposes besides its elements: ``seed`` (drawn when not given),
    ``epoch`` (of the next finite iteration), ``skipped`` (the first
    ``SKIP_LOG_LIMIT`` records skipped with ``on_error='skip'``: dicts of epoch,
    position, path, record, error; the reference's log, :meth:`ItemMaker.skip`),
    ``num_skipped`` (every skip), ``base`` (the reference loader holding the options),
    ``len`` (items or batches per epoch, the same on every shard) and ``num_padded``,
    ``num_dropped`` (per finite epoch of this shard: spec/sampling.md, "Equal steps")."""

    def __init__(self, base: NumpyLoader, length: int):
        self.base = base
        self.seed = base.seed
        self.skipped: list = base.item_maker.skipped  # the item maker logs every skip
        self.len = length
        self.num_padded = base.num_padded      # spec/sampling.md, "Equal steps"
        self.num_dropped = base.num_dropped
        self._epochs = itertools.count()
        self.epoch = 0

    @property
    def num_skipped(self) -> int:
        return self.base.item_maker.num_skipped

    def next_epoch(self) -> int:
        e = 0 if self.base.infinite else next(self._epochs)
        self.epoch = e + (0 if self.base.infinite else 1)
        return e


def _shard(options: dict):
    """(rank, num_replicas) from shard_idx/num_shards, rank/num_replicas or input_context."""
    ctx = options.pop("input_context", None)
    shard_idx = options.pop("shard_idx", None)
    num_shards = options.pop("num_shards", None)
    rank = options.pop("rank", None)
    num_replicas = options.pop("num_replicas", None)
    given = [(n, v) for n, v in (("shard_idx", shard_idx), ("num_shards", num_shards),
                                 ("rank", rank), ("num_replicas", num_replicas))
             if v is not None]
    if ctx is not None:
        if given:
            raise ValueError("input_context sets the shard; do not also pass "
                             + ", ".join(n for n, _ in given))
        return int(ctx.input_pipeline_id), int(ctx.num_input_pipelines)
    if (shard_idx is not None or num_shards is not None) and \
            (rank is not None or num_replicas is not None):
        raise ValueError("pass shard_idx/num_shards or rank/num_replicas, not both")
    if shard_idx is not None or num_shards is not None:  # the reference's pairing check
        return check_rank(shard_idx, num_shards, names=("shard_idx", "num_shards"))
    return check_rank(rank, num_replicas)


def _label_spec(labels):
    """(NumPy dtype, TensorSpec) of the labels, or (None, None) without labels."""
    if labels is None:
        return None, None
    values = list(labels.values())
    if not values:
        return np.int64, tf.TensorSpec([], tf.int64)
    arr = np.asarray(values)
    if arr.dtype.kind in "iub":
        dtype, tfd = np.int64, tf.int64
    elif arr.dtype.kind == "f":
        dtype, tfd = np.float32, tf.float32
    else:  # pragma: no cover - the reference refuses other labels when the loader is built
        raise TypeError(f"labels must be numbers or lists of numbers; got values "
                        f"of dtype {arr.dtype}")
    return dtype, tf.TensorSpec(arr.shape[1:], tfd)


def encode_steps(augment: str, steps) -> np.ndarray:
    """The drawn steps of one position as one number per augmentation character.

    Steps are in string order with the no-ops left out; this puts each back at
    its character: 1 for an applied flip, k for rot90, the quality for JPEG,
    sigma for blur, 0 for no step ('n' has no step: its draw is the stain normals).
    Any assignment of the steps to matching characters applies the same
    sequence of operations, so the first match is taken.
    """
    out = np.zeros(max(1, len(augment)), np.float32)  # never 0 wide: see _signature
    s = 0
    for k, c in enumerate(augment):
        if c == "n" or s >= len(steps):
            continue
        if steps[s].op == OP_OF_CHAR[c]:
            out[k] = steps[s].args[0] if steps[s].args else 1.0
            s += 1
    if s != len(steps):  # pragma: no cover - draws are always in string order
        raise AssertionError(f"steps {steps} do not follow augmentation {augment!r}")
    return out


class _Generator:
    """The Python side: plan -> records, labels and draws, one chunk of positions at a time."""

    def __init__(self, base: NumpyLoader, info: LoaderInfo, label_dtype, *, keep_invalid):
        self.base = base
        self.info = info
        self.items = base.item_maker        # reading, skips, labels, incl_* flags
        self.check = decode_check(self.items)
        self.pipeline = base.pipeline
        self.label_dtype = label_dtype
        self.keep_invalid = keep_invalid    # batched + skip: hold skipped slots, see below
        self.B = base.batch_size or 1

    def __call__(self):
        epoch = self.info.next_epoch()
        plan = self.base.plan(epoch)
        total = None if self.base.infinite else len(plan)
        if total is not None and self.base.drop_last:
            total = (total // self.B) * self.B
        chunk = -(-CHUNK // self.B) * self.B
        # Each iteration reads through its own file handles (two iterators of one dataset
        # may run at once, e.g. in threads), closed when the iteration ends or is dropped;
        # the record offsets are shared (read-only once loaded).
        source = self.items.source.reopened()
        guard = AllSkippedGuard(plan, source.paths)
        try:
            start = 0
            while total is None or start < total:
                stop = start + chunk if total is None else min(start + chunk, total)
                out = self.chunk(source, plan, epoch, start, stop, guard)
                if out is not None:
                    yield out
                start = stop
        finally:
            source.close()

    def chunk(self, source, plan, epoch, start, stop, guard=None):
        t, j = plan.records(start, stop)
        positions = plan.positions(start, start + len(t))
        draws = self.pipeline.draw(plan.key, positions)
        targets = _stain_targets(self.pipeline, draws)
        rows = [_row(self.items, source, int(t[k]), int(j[k]), int(positions[k]), epoch,
                     self.check, self.pipeline.augment, draws.steps[k],
                     None if targets is None else targets[min(k, len(targets) - 1)])
                for k in range(len(t))]
        if guard is not None:  # every owned record skipped without a yield: raise
            if any(r is not None for r in rows):
                guard.reset()
            else:
                guard.skipped(t, j, self.items.skipped)
        if self.keep_invalid:
            # Batched with on_error='skip': a batch is one item shorter per skipped record.
            # A skipped slot holds a copy of a valid item of its batch, flagged invalid and
            # masked out after batching; a batch with no valid item is left out entirely.
            kept = []
            for b in range(0, len(rows), self.B):
                batch = rows[b:b + self.B]
                ok = [r for r in batch if r is not None]
                if ok:
                    kept += [dict(r, valid=True) if r is not None else dict(ok[0], valid=False)
                             for r in batch]
            rows = kept
        else:
            rows = [r for r in rows if r is not None]
        if not rows:
            return None
        return stack_rows(rows, self.label_dtype)


def decode_check(items: ItemMaker):
    """The ``decode`` the generator hands :meth:`ItemMaker.read` for each tile's bytes
    (TensorFlow decodes the image in the map): with ``on_error='skip'`` the
    reference's :func:`~tilespec.images.decode_image`, so exactly the reference's
    records are skipped; with ``'raise'`` it only raises the reference's error for
    bytes that are neither JPEG nor PNG (spec/adapter_tf.md, "on_error='skip'")."""
    if items.on_error == "skip":
        cap = items.max_tile_pixels
        return lambda raw: decode_image(raw, max_pixels=cap)
    return lambda raw: decode_image(raw) if image_format(raw) is None else None


def _row(items: ItemMaker, source, t: int, j: int, position: int, epoch: int, check,
         augment: str, steps, target):
    """Record j of tfrecord t at ``position`` of ``epoch`` as one generator row, or None
    when it is skipped: read and checked by :meth:`ItemMaker.read`, the fields by
    :meth:`ItemMaker.fields`; the raw bytes, the drawn parameters
    (:func:`encode_steps`) and the stain target vector (or None) go to the map."""
    got = items.read(t, j, position, check, source=source, epoch=epoch)
    if got is None:
        return None
    tile = got[0]
    fields = items.fields(tile, source.paths[t], j)  # (label[, slide][, loc_x, loc_y])
    row = {"raw": tile.image_raw, "params": encode_steps(augment, steps)}
    if items.labels is not None:
        row["label"] = fields[0]
    if items.incl_slidenames:
        row["slide"] = fields[1].encode("utf-8")
    if items.incl_loc:
        row["loc_x"], row["loc_y"] = fields[-2:]
    if target is not None:
        row["stain"] = target
    return row


def stack_rows(rows: list, label_dtype) -> dict:
    """Generator rows (:func:`_row`, plus ``valid`` when skipped slots are held) -> one
    array per column, as :func:`_signature` declares them."""
    out = {"raw": np.array([r["raw"] for r in rows], dtype=object),
           "params": np.stack([r["params"] for r in rows]).reshape(len(rows), -1)}
    if "label" in rows[0]:
        out["label"] = np.array([r["label"] for r in rows], dtype=label_dtype)
    if "slide" in rows[0]:
        out["slide"] = np.array([r["slide"] for r in rows], dtype=object)
    if "loc_x" in rows[0]:
        out["loc_x"] = np.array([r["loc_x"] for r in rows], dtype=np.int64)
        out["loc_y"] = np.array([r["loc_y"] for r in rows], dtype=np.int64)
    if "stain" in rows[0]:
        out["stain"] = np.stack([r["stain"] for r in rows]).astype(np.float64)
    if "valid" in rows[0]:
        out["valid"] = np.array([r["valid"] for r in rows], dtype=bool)
    return out


def _signature(base, label_spec, keep_invalid):
    sig = {"raw": tf.TensorSpec([None], tf.string),
           # At least one column: TF 2.21's unbatch() segfaults on a (N, 0) component.
           "params": tf.TensorSpec([None, max(1, len(base.pipeline.augment))], tf.float32)}
    if label_spec is not None:
        sig["label"] = tf.TensorSpec([None, *label_spec.shape], label_spec.dtype)
    if base.item_maker.incl_slidenames:
        sig["slide"] = tf.TensorSpec([None], tf.string)
    if base.item_maker.incl_loc:
        sig["loc_x"] = tf.TensorSpec([None], tf.int64)
        sig["loc_y"] = tf.TensorSpec([None], tf.int64)
    if base.pipeline.normalizer is not None:
        sig["stain"] = tf.TensorSpec([None, tfstain.target_size(base.pipeline.normalizer.method)],
                                     tf.float64)
    if keep_invalid:
        sig["valid"] = tf.TensorSpec([None], tf.bool)
    return sig


def output_shape(pipeline, tile_hw):
    """The static (H, W) of the images ``pipeline`` makes from tiles of ``tile_hw``
    (None where unknown): the resize target, else the crop width, else the tile's
    size; unknown for non-square images when 'r' may turn them."""
    if pipeline.resize_target is not None:
        return pipeline.resize_target, pipeline.resize_target
    if pipeline.crop_width is not None:
        return pipeline.crop_width, pipeline.crop_width
    if tile_hw is None or (tile_hw[0] != tile_hw[1] and "r" in pipeline.augment):
        return None
    return tuple(tile_hw)


def _stain_targets(pipeline, draws):
    """Per-position stain target vectors (N, k) of a chunk (the fit plus the reference's
    drawn perturbation with 'n'; the fit alone, (1, k), without), or None without a
    normalizer (spec/adapter_tf.md, "Stain")."""
    if pipeline.normalizer is None:
        return None
    return tfstain.stain_targets(pipeline.normalizer, draws.stain)


def image_fn(pipeline, static_hw=None):
    """The TensorFlow image pipeline of ``pipeline`` (a :class:`tilespec.pipeline.Pipeline`):
    (raw bytes, per-character params, stain target vector) -> the yielded image.

    spec/images.md, "Pipeline order": the stages are the reference's,
    :meth:`Pipeline.stages`, each run here by its TensorFlow form; the augmentation
    stage applies each character's op (:data:`tilespec.augment.OP_OF_CHAR`) with its
    drawn parameter (:func:`tilespec_tf.ops.drawn`). Stain normalization is in
    graph ops (:func:`tilespec_tf.stain.graph_one`), with the image's target vector
    (:func:`_stain_targets`, made by the generator from the reference's draws).
    ``static_hw``, the (H, W) every image has before the transform
    (:func:`output_shape`), makes the static shape (H, W, 3), checked per image
    (``tf.ensure_shape``)."""
    aug = pipeline.augment
    normalizer = pipeline.normalizer
    stages = pipeline.stages()
    ops_of_chars = [(k, OP_OF_CHAR[c]) for k, c in enumerate(aug) if c in OP_OF_CHAR]
    # Before a normalizer, crop and resize run by the reference: stain normalization
    # amplifies a one-level difference of its input (TensorFlow's float32 resize differs
    # from the reference's at rounding ties, as spec/images.md allows) by up to 9 grey
    # levels after Macenko on 16-pixel tiles; on the reference's input the graph ops are
    # within spec/stain.md's bounds. The one Python step of such a pipeline
    # (spec/adapter_tf.md, "Stain"); it runs at the resize stage (the crop comes first).
    by_reference = normalizer is not None and pipeline.resize_target is not None

    def reference_geometry(img):
        return np.asarray(pipeline.geometry(np.asarray(img)), dtype=np.uint8)

    def crop(img):
        if by_reference:
            return img
        return tfops.crop(img, pipeline.crop_left, pipeline.crop_width)  # exact (a slice)

    def resize(img):
        if by_reference:
            side = pipeline.resize_target
            img = tf.numpy_function(reference_geometry, [img], tf.uint8, stateful=False)
            img.set_shape([side, side, 3])
            return img
        return tfops.resize(img, pipeline.resize_target, pipeline.resize_method,
                            pipeline.resize_aa)

    def stain(img, z):
        shape = img.shape
        if z is None:       # a caller without target vectors: the fit
            z = tf.constant(tfstain.target_vectors(normalizer)[0])
        img = tfstain.graph_one(normalizer, img, z)
        img.set_shape(shape)
        return img

    def augment(img, params):
        for k, op in ops_of_chars:
            img = tfops.drawn(op, img, params[k])
        return img

    def shaped(img):
        if static_hw is None:
            return img
        return tf.ensure_shape(img, (static_hw[0], static_hw[1], 3))

    def fn(raw, params, z=None):
        run = {"decode": tfops.decode, "crop": crop, "resize": resize,
               "stain": lambda img: stain(img, z), "augment": lambda img: augment(img, params),
               "transform": pipeline.transform,
               "standardize": lambda img: tfops.standardize(img, pipeline.standardize)}
        img = raw
        for name in stages:
            if name == "transform":  # the static shape holds up to the transform
                img = shaped(img)
            img = run[name](img)
        if "transform" not in stages:
            img = shaped(img)
        return img

    return fn


def make_dataset(dataset, options: dict):
    """The ``tf.data.Dataset`` of ``Dataset.tensorflow(**options)`` (spec/adapter_tf.md).

    Elements: ``(image, label[, slide][, loc_x, loc_y])``; image HWC uint8 (the
    default, ``standardize=False``), or float32 when standardized (``standardize=True``
    is 'per_image'); label None without labels; slide
    tf.string; loc_x, loc_y int64. Batched when ``batch_size`` is set.
    """
    options = dict(options)
    deterministic = check_bool("deterministic", options.pop("deterministic", True))
    if check_bool("progress", options.pop("progress", False)):
        raise ValueError("progress=True is for the numpy and torch loaders; a tf.data "
                         "pipeline shows progress through Keras (model.fit(verbose=1)) or "
                         "tf.keras.utils.Progbar")
    reader = options.pop("reader", "python")
    images = options.pop("images", "auto")
    rank, num_replicas = _shard(options)
    labels = dataset.loader_labels(options.pop("labels", None))
    table = dataset.sampling_table()
    base = _PlanLoader(list(table.paths), table.clip, table.weights, labels=labels,
                       rank=rank, num_replicas=num_replicas,
                       record_slides=dataset.record_slides, **options)
    return build(base, deterministic=deterministic, reader=reader, images=images)


def elements(base: NumpyLoader, info: LoaderInfo | None = None, reader: str = "python", *,
             merged: bool = False):
    """What the image map receives: one dict per loader position (``raw``,
    ``params``, and ``label``, ``slide``, ``loc_x``/``loc_y``, ``stain``, ``valid`` as
    the options ask, the columns of :func:`stack_rows`), read by the C++ path where
    :func:`reader_for` allows it (``reader='auto'``) or by the Python reader
    (``'python'``); sets ``info.reader`` and ``info.python_reason``
    (spec/adapter_tf.md, "Two readers"). Both readers give the same elements.
    ``merged=True`` (for :func:`build`) returns the C++ path's ``(pairs, merge)``
    (:func:`_cxx_dataset`) so the image map runs ``merge`` itself."""
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    info = LoaderInfo(base, len(base)) if info is None else info
    label_dtype, label_spec = _label_spec(base.item_maker.labels)
    keep_invalid = base.batch_size is not None and base.item_maker.on_error == "skip"
    route = reader_for(base) if reader == "auto" else "reader='python' (the default)"
    info.reader = "c++" if route is None else "python"
    info.python_reason = route
    if route is None:  # TFRecordDataset per tfrecord, chosen by the reference's plan
        pairs, merge = _cxx_dataset(base, info, label_dtype)
        if not merged:
            return pairs.map(lambda rec, m: merge(rec, m), num_parallel_calls=tf.data.AUTOTUNE)
        return pairs, merge
    gen = _Generator(base, info, label_dtype, keep_invalid=keep_invalid)
    # The generator makes a chunk of positions per call; prefetching chunks keeps the
    # Python side (reading, draws) running beside the parallel image map.
    return tf.data.Dataset.from_generator(gen, output_signature=_signature(
        base, label_spec, keep_invalid)).prefetch(2).unbatch()


def build(base: NumpyLoader, *, deterministic: bool = True, reader: str = "python",
          images: str = "auto"):
    """The tf.data pipeline over a validated reference loader ``base`` (its plan,
    draws, labels and reading), with TensorFlow image ops. ``reader='auto'`` reads
    by the C++ path where :func:`reader_for` allows it, ``'python'`` always by the
    Python reader (spec/adapter_tf.md, "Two readers"); ``ds.tilespec.reader`` says
    which ('c++' or 'python') and ``ds.tilespec.python_reason`` why. With the Python
    reader and ``images='auto'`` (the default) the images are made in Python where
    :func:`images_for` allows it (the batch path, :class:`_Batches`); ``'tensorflow'``
    always makes them in the TensorFlow image map; ``ds.tilespec.images`` says which
    ('python' or 'tensorflow') and ``ds.tilespec.images_reason`` why the map was kept
    (spec/adapter_tf.md, "The batch path")."""
    if images not in IMAGES:
        raise ValueError(f"images must be one of {IMAGES}, got {images!r}")
    if reader not in READERS:
        raise ValueError(f"reader must be one of {READERS}, got {reader!r}")
    label_dtype, label_spec = _label_spec(base.item_maker.labels)
    B = base.batch_size
    keep_invalid = B is not None and base.item_maker.on_error == "skip"
    length = len(base)
    info = LoaderInfo(base, length)
    why = "images='tensorflow'" if images == "tensorflow" else images_for(base)
    route = "reader='python' (the default)"
    if why is None and reader == "auto":
        route = reader_for(base)
        if route is None:
            why = "reader='auto' took the C++ reading path (its images are made in the map)"
    info.images, info.images_reason = ("python", None) if why is None else ("tensorflow", why)
    if why is None:  # the Python reader, and the images made with it
        info.reader, info.python_reason = "python", route
        ds = _batch_dataset(base, info, label_spec, label_dtype)
    else:
        ds = _map_dataset(base, info, reader, label_spec, keep_invalid, deterministic)
    if base.infinite:
        ds = ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    elif base.item_maker.on_error == "raise":
        ds = ds.apply(tf.data.experimental.assert_cardinality(length))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    _expose(ds, info, info.skipped)
    return ds


def _map_dataset(base, info, reader, label_spec, keep_invalid, deterministic):
    """The dataset of items (batched as ``batch_size`` asks) whose images the TensorFlow
    image map makes (:func:`_item_fn`) from the elements of :func:`elements`."""
    B = base.batch_size
    ds = elements(base, info, reader, merged=True)
    merge = None
    if isinstance(ds, tuple):  # the C++ path: its per-element checks run in the image map
        ds, merge = ds
    item = _item_fn(base.pipeline, base.item_maker, label_spec, keep_invalid)
    if merge is None:
        ds = ds.map(item, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    else:
        ds = ds.map(lambda rec, m: item(merge(rec, m)), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=deterministic)
    if B is not None:
        ds = ds.batch(B, drop_remainder=base.drop_last)
        if keep_invalid:
            def mask(*cols):
                valid = cols[-1]
                return tuple(None if c is None else tf.boolean_mask(c, valid)
                             for c in cols[:-1])
            ds = ds.map(mask)
    return ds


def _item_fn(pipeline, items: ItemMaker, label_spec, keep_invalid: bool = False):
    """The image map's function, element dict -> item tuple ``(image, label[, slide][,
    loc_x, loc_y][, valid])``, shared by the loader and the indexed dataset: the image
    by :func:`image_fn` with the static shape of the dataset's tile size (the
    reference's one rule, :meth:`ItemMaker.tile_size`), the other columns as the
    options ask."""
    size = items.tile_size()
    images = image_fn(pipeline, output_shape(pipeline, None if size is None else size[:2]))
    has_label = label_spec is not None
    incl_slide, incl_loc = items.incl_slidenames, items.incl_loc

    def item(e):
        out = [images(e["raw"], e["params"], e.get("stain")), e["label"] if has_label else None]
        if incl_slide:
            out.append(e["slide"])
        if incl_loc:
            out += [e["loc_x"], e["loc_y"]]
        if keep_invalid:
            out.append(e["valid"])
        return tuple(out)

    return item


def _expose(ds, info, skipped: list):
    """Attach ``info`` (the loader's :class:`LoaderInfo`, or the indexed dataset's
    :class:`tilespec.IndexedInterleaver`), its seed and the skip log ``skipped`` to
    the returned dataset object."""
    try:
        ds.tilespec = info
        ds.seed = info.seed
        ds.skipped = skipped
    except (AttributeError, TypeError):  # pragma: no cover - a future tf.data may forbid it
        pass


def make_indexed(tfrecords, options: dict):
    """A finite ``tf.data.Dataset`` of :class:`tilespec.IndexedInterleaver`'s items in
    index order (epoch ``options['epoch']``, default 0), images by TensorFlow ops
    (spec/adapter_tf.md, "Indexed dataset"). Items are read and checked by the
    reference's :class:`ItemMaker` as in the loader; with ``on_error='skip'`` a skipped
    item (None in the reference) is left out and logged in ``dataset.skipped``."""
    options = dict(options)
    deterministic = check_bool("deterministic", options.pop("deterministic", True))
    epoch = options.pop("epoch", 0)
    if options.get("standardize") is True:
        options["standardize"] = tfops.TFOps.default_standardize
    ref = IndexedInterleaver(tfrecords, **options)
    ref.set_epoch(epoch)
    n = len(ref)
    label_dtype, label_spec = _label_spec(ref.item_maker.labels)
    items = ref.item_maker
    check = decode_check(items)
    key = ref.key  # the indexed draws' key (spec/sampling.md, "Indexed dataset")
    sig = _signature(ref, label_spec, False)

    def gen():
        source = items.source.reopened()
        try:
            for a in range(0, n, CHUNK):
                idx = np.arange(a, min(n, a + CHUNK))
                draws = ref.pipeline.draw(key, idx)
                targets = _stain_targets(ref.pipeline, draws)
                rows = []
                for k, i in enumerate(idx.tolist()):
                    t, j = ref.record(i)
                    row = _row(items, source, t, j, i, ref.epoch, check, ref.pipeline.augment,
                               draws.steps[k],
                               None if targets is None else targets[min(k, len(targets) - 1)])
                    if row is not None:
                        rows.append(row)
                if rows:
                    yield stack_rows(rows, label_dtype)
        finally:
            source.close()

    ds = tf.data.Dataset.from_generator(gen, output_signature=sig).unbatch()
    ds = ds.map(_item_fn(ref.pipeline, items, label_spec), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=deterministic)
    if items.on_error == "raise":  # with skips the count is not known in advance
        ds = ds.apply(tf.data.experimental.assert_cardinality(n))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    _expose(ds, ref, items.skipped)
    return ds



# ------------------------------------------------------ the batch path: images made in Python

#: The augmentation ops the batch path runs: the reference's whole-pixel moves
#: (:data:`tilespec.augment.MOVE_OPS`; spec/images.md, "Flips", "Rotation"), each an exact
#: permutation of the decoded pixels.
MOVES = frozenset(MOVE_OPS)
#: Threads making the batch path's batches (the decode and the moves release the GIL).
THREADS = max(1, min(4, os.cpu_count() or 1))
#: Positions per chunk of the batch path without ``batch_size`` (items are unbatched).
UNBATCHED_CHUNK = 64
#: Bytes per band when a transposed tile is copied out of Pillow: each band's
#: ``tobytes`` stays under glibc's 128 KB mmap threshold, which TensorFlow's generator
#: dataset fixes (its "Memory patch": ``M_TRIM_THRESHOLD`` 128 KB, so no dynamic
#: threshold): a whole 196 KB tile would be a fresh mapping, page faults and all, at
#: every tile (measured 42 faults and 120-340 us of system time a tile; 1 and 17-59 us
#: in bands).
BAND_BYTES = 1 << 16
#: Stream positions the batch path plans at once (records are a pure function of the
#: position, so planning ahead and slicing gives the same records).
PLAN_AHEAD = 4096
#: Freed image blocks Pillow keeps for reuse while the batch path runs (its default is
#: none: every transposed tile is then fresh memory, page faults and all; measured at
#: about 90 faults a tile). Raised to this when lower (Pillow's ``PILLOW_BLOCKS_MAX``),
#: and Pillow's block size lowered to :data:`BAND_BYTES` when larger
#: (``PILLOW_BLOCK_SIZE``, default 16 MiB): every image is then made of blocks of one
#: size, each under the mmap threshold, so freed blocks are reused as they are.
PILLOW_BLOCKS = 64
#: The batch path's values of the ``images`` option: 'auto' (the batch path where
#: :func:`images_for` allows it) or 'tensorflow' (always the TensorFlow image map).
IMAGES = ("auto", "tensorflow")

# A probe image whose 6 pixels differ and whose sides differ: a sequence of moves and
# the one Pillow transpose that maps it the same way map every image the same way.
_PROBE = np.arange(18, dtype=np.uint8).reshape(2, 3, 3)
_TRANSPOSES = tuple(Image.Transpose)[:7]  # the 7 moves other than the identity


def move_of(pipeline, steps):
    """The one Pillow transpose (``PIL.Image.Transpose``) with the effect of the move
    steps ``steps`` (a sequence of :class:`tilespec.augment.Step` of :data:`MOVES`), or
    None when they leave the image as it is. Found by running the reference's augment
    stage (:meth:`tilespec.pipeline.Pipeline.run_stage`, the reference's own ops) on a
    probe image of distinct pixels and matching the result, so the rule of each op
    stays the reference's (spec/adapter_tf.md, "The batch path")."""
    want = pipeline.run_stage("augment", _PROBE, tuple(steps))
    if want.shape == _PROBE.shape and np.array_equal(want, _PROBE):
        return None
    probe = Image.fromarray(_PROBE)
    for m in _TRANSPOSES:
        got = np.asarray(probe.transpose(m))
        if got.shape == want.shape and np.array_equal(got, want):
            return m
    raise AssertionError(f"steps {steps} are not a move")  # pragma: no cover


def write_moved(img: np.ndarray, m, row: np.ndarray) -> None:
    """Write ``img`` (an HWC uint8 array) turned or flipped by the Pillow transpose ``m``
    into ``row``: a flip of the rows (``FLIP_TOP_BOTTOM``) by one NumPy copy of whole
    rows in reverse order (12 against 120 us for a 256 px tile: no Pillow image is made),
    every other transpose by Pillow, copied out in bands of :data:`BAND_BYTES`."""
    if m is Image.Transpose.FLIP_TOP_BOTTOM:
        np.copyto(row, img[::-1])
        return
    h, w = img.shape[:2]
    im = Image.frombuffer("RGB", (w, h), img, "raw", "RGB", 0, 1).transpose(m)
    w, h = im.size
    band = max(1, BAND_BYTES // (3 * w))
    for y in range(0, h, band):
        stop = min(h, y + band)
        part = row[y:stop].reshape(-1)
        part[...] = np.frombuffer(im.crop((0, y, w, stop)).tobytes(), np.uint8)


def images_for(base: NumpyLoader) -> str | None:
    """Which image path :func:`build` takes for ``base``: None for the batch path (the
    images made in Python by the reference's decoder and moves, whole batches handed to
    TensorFlow: :class:`_Batches`), else why the TensorFlow image map is kept
    (spec/adapter_tf.md, "The batch path"). The batch path runs the stages whose
    TensorFlow form gives the same bits as the reference: decode, the moves (flips,
    rot90), 'unit' standardization (in TensorFlow, on the batch)."""
    p = base.pipeline
    if p.normalizer is not None:
        return "a stain normalizer (graph ops in the image map)"
    if p.transform is not None:
        return "a transform (it is called on TensorFlow tensors in the image map)"
    if p.resize_target is not None:
        return "resize_target (TensorFlow's resize, within one level of the reference's)"
    if p.crop_width is not None:
        return "a crop"
    other = sorted({c for c in p.augment if c != "n" and OP_OF_CHAR[c] not in MOVES})
    if other:
        return (f"augmentation {''.join(other)!r} (TensorFlow ops in the image map; only "
                "flips and rot90 are made in Python)")
    if p.standardize not in (None, "unit"):
        return f"standardize={p.standardize!r} (TensorFlow's op in the image map)"
    size = base.item_maker.tile_size()
    if size is None:
        return "no readable tile to take the tile size from"
    if size[0] != size[1] and "r" in p.augment:
        return "non-square tiles with 'r' (images of two shapes)"
    return None


class _Batches:
    """The batch path's generator: per batch of positions (chunk of
    :data:`UNBATCHED_CHUNK` positions without ``batch_size``), the reference's plan and draws,
    each record read by :meth:`ItemMaker.read` with the image made in its ``decode``
    step (so decode errors are located, raised or skipped by the reference's rule), the
    fields by :meth:`ItemMaker.fields`; batches are made by :data:`THREADS` threads
    (one with ``on_error='skip'``, so the skip log keeps the stream's order) and
    yielded in order."""

    def __init__(self, base: NumpyLoader, info: LoaderInfo, label_dtype):
        self.base = base
        self.info = info
        self.items = base.item_maker
        self.pipeline = base.pipeline
        self.label_dtype = label_dtype
        self.B = base.batch_size
        self.threads = 1 if self.items.on_error == "skip" else THREADS
        h, w = self.items.tile_size()[:2]
        self.hw = (h, w)
        self.cap = self.items.max_tile_pixels
        self.moves: dict = {}  # the drawn steps -> their Pillow transpose (move_of)
        if Image.core.get_blocks_max() < PILLOW_BLOCKS:
            Image.core.set_blocks_max(PILLOW_BLOCKS)
        if Image.core.get_block_size() > BAND_BYTES:
            Image.core.set_block_size(BAND_BYTES)

    def _image(self, raw, steps, row, scratch):
        """Decode ``raw`` and apply its move steps into the batch row ``row``: the
        reference's :func:`decode_into` (its fast decoder, else :func:`decode_image`,
        whose errors are the reference's), then the steps' one Pillow transpose
        (:func:`move_of`)."""
        key = tuple(steps)
        m = self.moves.get(key, self)
        if m is self:  # at most 16 keys for 'xyr'
            m = self.moves[key] = move_of(self.pipeline, key)
        dest = row if m is None else scratch
        if not decode_into(raw, dest, self.cap):
            dest[...] = decode_image(raw, max_pixels=self.cap)
        if m is not None:
            write_moved(scratch, m, row)
        return True

    def _batch(self, sources, images, epoch, t, j, positions, steps):
        """The columns of one batch (chunk) of positions, the images written into
        ``images`` (a buffer of at least ``len(t)`` rows), or None when every record
        of it was skipped."""
        source = sources.get()
        try:
            scratch = np.empty(images.shape[1:], np.uint8)
            fields = []
            items = self.items
            for k in range(len(t)):
                row = images[len(fields)]
                got = items.read(int(t[k]), int(j[k]), int(positions[k]),
                                 functools.partial(self._image, steps=steps[k], row=row,
                                                   scratch=scratch),
                                 source=source, epoch=epoch)
                if got is not None:
                    fields.append(items.fields(got[0], source.paths[int(t[k])], int(j[k])))
        finally:
            sources.put(source)
        if not fields:
            return None
        out = {"image": images if len(fields) == len(t) else images[:len(fields)].copy()}
        cols = list(zip(*fields))
        if items.labels is not None:
            out["label"] = np.array(cols[0], dtype=self.label_dtype)
        if items.incl_slidenames:
            out["slide"] = np.array([s.encode("utf-8") for s in cols[1]], dtype=object)
        if items.incl_loc:
            out["loc_x"] = np.array(cols[-2], dtype=np.int64)
            out["loc_y"] = np.array(cols[-1], dtype=np.int64)
        return out

    def __call__(self):
        epoch = self.info.next_epoch()
        plan = self.base.plan(epoch)
        step = self.B or UNBATCHED_CHUNK
        total = None if self.base.infinite else len(plan)
        if total is not None and self.base.drop_last:
            total = (total // step) * step
        sources = queue.SimpleQueue()
        opened = [self.items.source.reopened() for _ in range(self.threads)]
        for s in opened:
            sources.put(s)
        buffers = _Buffers((step, *self.hw, 3))
        guard = AllSkippedGuard(plan, opened[0].paths)
        pool = ThreadPoolExecutor(self.threads, thread_name_prefix="tilespec-tf")
        pending: collections.deque = collections.deque()
        window = (0, np.zeros(0, np.int64), np.zeros(0, np.int64))

        def submit(start, stop):
            nonlocal window
            w0, wt, wj = window
            if stop > w0 + len(wt):  # plan PLAN_AHEAD positions at a time
                wt, wj = plan.records(start, max(stop, start + PLAN_AHEAD))
                w0 = start
                window = (w0, wt, wj)
            t, j = wt[start - w0:stop - w0], wj[start - w0:stop - w0]
            positions = plan.positions(start, start + len(t))
            draws = self.pipeline.draw(plan.key, positions)
            buf = buffers.get(len(t))
            pending.append((t, j, pool.submit(self._batch, sources, buf, epoch, t, j,
                                              positions, draws.steps)))

        def take():
            t, j, fut = pending.popleft()
            out = fut.result()
            if out is None:
                guard.skipped(t, j, self.items.skipped)
            else:
                guard.reset()
            return out

        try:
            start = 0
            while total is None or start < total or pending:
                if total is None or start < total:
                    stop = start + step if total is None else min(start + step, total)
                    submit(start, stop)
                    start = stop
                    if len(pending) <= self.threads and (total is None or start < total):
                        continue
                out = take()
                if out is not None:
                    yield out
        finally:
            for *_, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)
            for s in opened:
                s.close()


class _Buffers:
    """Batch arrays for the batch path, reused once nothing else holds them.

    Each array starts on a 64-byte boundary: ``from_generator`` then hands TensorFlow
    the array's own memory (TensorFlow wraps an ndarray aligned to 64 bytes instead of
    copying it), one copy of every batch fewer. A batch TensorFlow still holds keeps a
    reference to its array, so an array is written again only when its reference count
    says that only this pool holds it (whether TensorFlow copied or wrapped it); fresh
    memory for every batch cost about 50 page faults a tile (measured)."""

    def __init__(self, shape, keep: int = 16):
        self.shape = tuple(shape)
        self.n = int(np.prod(self.shape))
        self.keep = keep
        self.raws: list = []

    def get(self, rows: int) -> np.ndarray:
        """An array of ``rows`` rows of the pool's shape, not referenced elsewhere."""
        for raw in self.raws:
            if sys.getrefcount(raw) <= 3:  # this list, the loop variable, the call
                return self._view(raw, rows)
        raw = np.empty(self.n + 64, np.uint8)
        if len(self.raws) < self.keep:
            self.raws.append(raw)
        return self._view(raw, rows)

    def _view(self, raw, rows):
        at = (-raw.ctypes.data) % 64
        per = self.n // self.shape[0]
        return raw[at:at + rows * per].reshape((rows, *self.shape[1:]))


def _batch_dataset(base: NumpyLoader, info: LoaderInfo, label_spec, label_dtype):
    """The batch path's dataset of items (batched as ``batch_size`` asks), before the
    final prefetch: :class:`_Batches` through ``from_generator``, then 'unit'
    standardization on each batch in TensorFlow (:func:`tilespec_tf.ops.standardize`)."""
    gen = _Batches(base, info, label_dtype)
    h, w = gen.hw
    items = base.item_maker
    sig = {"image": tf.TensorSpec([None, h, w, 3], tf.uint8)}
    if label_spec is not None:
        sig["label"] = tf.TensorSpec([None, *label_spec.shape], label_spec.dtype)
    if items.incl_slidenames:
        sig["slide"] = tf.TensorSpec([None], tf.string)
    if items.incl_loc:
        sig["loc_x"] = tf.TensorSpec([None], tf.int64)
        sig["loc_y"] = tf.TensorSpec([None], tf.int64)
    ds = tf.data.Dataset.from_generator(gen, output_signature=sig)
    B = base.batch_size
    if B is None:
        ds = ds.unbatch()
    mode = base.pipeline.standardize
    fixed = B is not None and base.drop_last and items.on_error == "raise"

    def item(e):
        img = e["image"]
        if mode is not None:
            img = tfops.standardize(img, mode)
        out = [img, e["label"] if label_spec is not None else None]
        if items.incl_slidenames:
            out.append(e["slide"])
        if items.incl_loc:
            out += [e["loc_x"], e["loc_y"]]
        if fixed:  # every batch is whole: the static shapes of batch(drop_remainder=True)
            out = [None if c is None else tf.ensure_shape(c, [B, *c.shape[1:]]) for c in out]
        return tuple(out)

    return ds.map(item, num_parallel_calls=tf.data.AUTOTUNE if B is None else None)


# ----------------------------------------------------------------- the C++ reading path

def reader_for(base: NumpyLoader) -> str | None:
    """Which reader :func:`build` uses for ``base``: None for the C++ reading path
    (:func:`_cxx_dataset`), else why the Python reader (:class:`_Generator`) is kept
    (spec/adapter_tf.md, "Two readers"). The one rule, applied once when the loader
    is built: the C++ path reads each tfrecord's part in file order, so it needs a
    plan whose k-th read of tfrecord t is record ``start_t + (k mod size_t)``
    (spec/sampling.md, "Streams": ``shuffle=False``, no elastic cut across ranks)
    and no per-record Python decision (``on_error='raise'``), and every owned record
    within ``max_record_bytes`` by its index (the reference raises that record's
    error at its turn), and at most :data:`MAX_CXX_TFRECORDS` tfrecords to read (each
    is held open with its read buffer; the Python reader keeps a bounded set open)."""
    items = base.item_maker
    if items.on_error != "raise":
        return "on_error='skip' (a per-record Python decision: the reference's skip rule)"
    if base.shuffle:
        return "shuffle=True (a per-pass permutation of each tfrecord's part: random access)"
    if base.elastic and base.num_replicas > 1:
        return "elastic=True with num_replicas > 1 (a rank reads every R-th global batch)"
    first = _first_format(items)
    if first not in (None, "jpeg"):
        return (f"{first.upper()} tiles (their headers are checked by the reference, record "
                "by record)")
    plan = base.plan(0)
    live = int(plan.live.sum())
    if live > MAX_CXX_TFRECORDS:
        return (f"{live} tfrecords to read, more than MAX_CXX_TFRECORDS="
                f"{MAX_CXX_TFRECORDS} (the C++ path keeps each one open with its buffer)")
    cap = items.max_record_bytes
    for t in np.flatnonzero(plan.live).tolist():
        try:
            arr = load_index(items.source.paths[t], max_record_bytes=cap)[0]
        except TFRecordError as e:
            return f"{items.source.paths[t]}: no index ({e.reason}; raised at its turn)"
        s, n = int(plan.starts[t]), int(plan.sizes[t])
        part = arr[s:s + n, 1] - FRAMING_BYTES
        if len(part) != n or (len(part) and int(part.max()) > cap):
            return (f"{items.source.paths[t]}: a record over max_record_bytes (its error "
                    "is raised at its turn)")
    return None


def _first_format(items: ItemMaker):
    """The image format of the tile the dataset's tile size comes from (None when there
    is none): :meth:`ItemMaker.tile_size`'s record, read by the reference."""
    size = items.tile_size()
    if size is None:
        return None
    source = items.source.reopened()
    try:
        for t in range(len(source.paths)):
            for j in range(len(source.offsets(t))):
                try:
                    return image_format(source.read(t, j).image_raw)
                except (TFRecordError, IndexError):
                    continue
    except TFRecordError:
        return None
    finally:
        source.close()
    return None


class _CxxPlan:
    """The Python side of the C++ reading path: per chunk of loader positions the
    reference's choices (tfrecord index t), the record j the plan reads there, the
    stream position, the drawn parameters and stain targets. Nothing is read here."""

    def __init__(self, base: NumpyLoader, info: LoaderInfo):
        self.base = base
        self.info = info
        self.B = base.batch_size or 1

    def epochs(self):
        yield np.int64(self.info.next_epoch())

    def _ranges(self, plan):
        total = None if self.base.infinite else len(plan)
        if total is not None and self.base.drop_last:
            total = (total // self.B) * self.B
        chunk = -(-CHUNK // self.B) * self.B
        start = 0
        while total is None or start < total:
            stop = start + chunk if total is None else min(start + chunk, total)
            yield start, stop
            start = stop

    def choices(self, epoch):
        plan = self.base.plan(int(epoch))
        for start, stop in self._ranges(plan):
            t, _ = plan.records(start, stop)
            yield t.astype(np.int64)

    def meta(self, epoch):
        epoch = int(epoch)
        plan = self.base.plan(epoch)
        pipeline = self.base.pipeline
        aug = pipeline.augment
        for start, stop in self._ranges(plan):
            t, j = plan.records(start, stop)
            positions = plan.positions(start, start + len(t))
            draws = pipeline.draw(plan.key, positions)
            out = {"t": t.astype(np.int64), "j": j.astype(np.int64),
                   "position": positions.astype(np.int64),
                   "epoch": np.full(len(t), epoch, np.int64),
                   "params": np.stack([encode_steps(aug, s) for s in draws.steps])
                   .reshape(len(t), -1)}
            targets = _stain_targets(pipeline, draws)
            if targets is not None:  # (N, k), or the fit alone (1, k): as _Generator
                pick = np.minimum(np.arange(len(t)), len(targets) - 1)
                out["stain"] = np.asarray(targets, np.float64)[pick]
            yield out


def _located(items: ItemMaker, check):
    """The slow path of one element of the C++ path, run by the reference:
    ``(t, j, position, epoch, agreed)`` -> True when the reference reads record j of
    tfrecord t, checks its header and gives its fields without error (the element
    is then the record's, as the fast checks were only conservative), else the
    reference's error, naming file, record and offset. With ``agreed`` False
    TensorFlow's reader did not give that record (damaged, or a schema its parser
    refuses): the reference's error is raised, or, when the reference reads it,
    an error naming the file and record and saying so."""
    lock = threading.Lock()
    sources: list = []

    def run(t, j, position, epoch, agreed):
        t, j, position = int(t), int(j), int(position)
        with lock:
            if not sources:
                sources.append(items.source.reopened())
            source = sources[0]
            got = items.read(t, j, position, check, source=source, epoch=int(epoch))
            items.fields(got[0], source.paths[t], j)
            if not bool(agreed):
                for k in range(j):  # a damaged record before it ends TensorFlow's read
                    try:
                        source.read(t, k)
                    except TFRecordError as e:
                        raise e.located(path=source.paths[t], record=k,
                                        offset=source.offset_of(t, k)) from None
                raise TFRecordError(
                    "TensorFlow's reader did not give this record (the reference reads "
                    "it); read this dataset with on_error='skip' or the numpy loader",
                    path=source.paths[t], record=j, offset=source.offset_of(t, j))
        return np.bool_(True)

    return run


_MISSING = b"\x00tilespec: missing\x00"  # a parsed feature's default: not in the record
_NO_LOC = -2 ** 63


def _cxx_dataset(base: NumpyLoader, info: LoaderInfo, label_dtype):
    """The C++ reading path: ``(pairs, merge)``, a dataset of (record read, plan)
    pairs and the graph function making each pair the element of :func:`elements`
    (the dict :func:`stack_rows` makes, one per position; :func:`build` runs it in
    the image map, so one parallel map does both): per tfrecord t a ``TFRecordDataset`` of the rank's part
    (skip start_t, take size_t, each read zipped with its record index, parsed by
    ``tf.io.parse_single_example``), repeated pass after pass in file order, chosen
    position by position by the reference's choice sequence
    (``tf.data.Dataset.choose_from_datasets``), zipped with the plan's record, stream
    position and draws (:class:`_CxxPlan`). Every element is checked in graph against
    the plan (tfrecord, record index, payload length from the index), the schema (one
    image and one slide; one loc_x, loc_y with ``incl_loc``), the label lookup and the
    header (a JPEG of the dataset's tile size within ``max_tile_pixels``); an
    element failing a check is run by the reference (:func:`_located`), which raises
    its error naming file and record, or passes it when the fast check was only
    conservative (spec/adapter_tf.md, "Two readers")."""
    items = base.item_maker
    paths = items.source.paths
    plan0 = base.plan(0)
    starts, sizes = plan0.starts, plan0.sizes
    cap = items.max_record_bytes
    lengths, bases = [], np.zeros(len(paths), np.int64)
    for t in range(len(paths)):
        bases[t] = sum(len(x) for x in lengths)
        if plan0.live[t]:
            arr = load_index(paths[t], max_record_bytes=cap)[0]
            lengths.append(arr[starts[t]:starts[t] + sizes[t], 1] - FRAMING_BYTES)
    lengths = np.concatenate(lengths).astype(np.int64)
    size = items.tile_size()
    resize = base.pipeline.resize_target is not None
    max_px = items.max_tile_pixels
    labels = items.labels
    incl_loc = items.incl_loc
    check = decode_check(items)
    located = _located(items, check)
    gen = _CxxPlan(base, info)

    def parse(payload, j):
        # Missing features take values no record holds in practice; an element that holds
        # them goes to the reference (which raises, or passes a record that really has
        # them). A feature of another kind or with another number of values fails the
        # parse: the record is dropped, and the record index check below sees it.
        f = tf.io.parse_single_example(payload, {
            "image_raw": tf.io.FixedLenFeature([], tf.string, default_value=_MISSING),
            "slide": tf.io.FixedLenFeature([], tf.string, default_value=_MISSING),
            "loc_x": tf.io.FixedLenFeature([], tf.int64, default_value=_NO_LOC),
            "loc_y": tf.io.FixedLenFeature([], tf.int64, default_value=_NO_LOC)})
        raw, slide = f["image_raw"], f["slide"]
        if labels is None:  # (with labels, a slide found in the table is UTF-8)
            with tf.control_dependencies([tf.strings.unicode_decode(slide, "UTF-8")]):
                slide = tf.identity(slide)  # not UTF-8: dropped, so the reference raises
        is_jpeg = tf.equal(tf.strings.substr(raw, 0, 3), JPEG_MAGIC)
        hw = tf.cond(is_jpeg,  # another format: the reference checks its header
                     lambda: tf.cast(tf.image.extract_jpeg_shape(raw)[:2], tf.int64),
                     lambda: tf.constant([-1, -1], tf.int64))
        return {"j_file": j, "plen": tf.cast(tf.strings.length(payload), tf.int64),
                "raw": raw, "slide": slide, "loc_x": f["loc_x"], "loc_y": f["loc_y"],
                "hw": hw}

    sentinel = {"j_file": tf.constant(-1, tf.int64), "plen": tf.constant(-1, tf.int64),
                "raw": tf.constant(_MISSING), "slide": tf.constant(_MISSING),
                "loc_x": tf.constant(_NO_LOC, tf.int64), "loc_y": tf.constant(_NO_LOC, tf.int64),
                "hw": tf.constant([-1, -1], tf.int64)}

    def file_dataset(t):
        s, n = int(starts[t]), int(sizes[t])
        fill = tf.data.Dataset.from_tensors(sentinel)
        if not plan0.live[t]:
            return fill.repeat()  # never chosen (the plan never picks it)
        # A record TensorFlow cannot read ends its file's read there, one it cannot parse
        # is dropped: the pass is filled up with sentinels and the check below sees a
        # record index other than the plan's at that very position.
        part = tf.data.Dataset.zip((tf.data.TFRecordDataset(paths[t]).skip(s).take(n),
                                    tf.data.Dataset.range(s, s + n)))
        part = part.map(parse).ignore_errors()
        return part.concatenate(fill.repeat(n)).take(n).repeat()

    if labels is not None and not labels:
        labels = None  # pragma: no cover - the reference refuses labels without a slide
    if labels is not None:
        keys = list(labels)
        table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant([k.encode("utf-8") for k in keys], tf.string),
            tf.range(len(keys), dtype=tf.int64)), default_value=-1)
        label_values = tf.constant(np.asarray([labels[k] for k in keys], dtype=label_dtype))
    if size is not None:
        want_hw = tf.constant([size[0], size[1]], tf.int64)

    def merge(rec, m):
        agreed = tf.logical_and(tf.equal(rec["j_file"], m["j"]),
                                tf.equal(rec["plen"], tf.gather(lengths, bases_t(m["t"]) + m["j"]
                                                                - starts_t(m["t"]))))
        schema = tf.logical_and(tf.not_equal(rec["raw"], _MISSING),
                                tf.not_equal(rec["slide"], _MISSING))
        if incl_loc:
            schema = tf.logical_and(schema, tf.logical_and(tf.not_equal(rec["loc_x"], _NO_LOC),
                                                           tf.not_equal(rec["loc_y"], _NO_LOC)))
        hw = rec["hw"]
        header = tf.logical_and(tf.reduce_all(hw >= 0), hw[0] * hw[1] <= max_px)
        if not resize:
            header = tf.logical_and(header, tf.constant(False) if size is None
                                    else tf.reduce_all(tf.equal(hw, want_hw)))
        ok = tf.logical_and(tf.logical_and(agreed, schema), header)
        out = {"raw": rec["raw"], "params": m["params"]}
        if labels is not None:
            idx = table.lookup(rec["slide"])
            ok = tf.logical_and(ok, idx >= 0)
            out["label"] = tf.gather(label_values, tf.maximum(idx, 0))
        def slow():  # the reference runs this element: raises its error, or passes it
            done = tf.numpy_function(located, [m["t"], m["j"], m["position"], m["epoch"],
                                               agreed], tf.bool, stateful=True)
            with tf.control_dependencies([done]):
                return tf.identity(rec["raw"])

        out["raw"] = tf.cond(ok, lambda: rec["raw"], slow)
        if items.incl_slidenames:
            out["slide"] = rec["slide"]
        if incl_loc:
            out["loc_x"], out["loc_y"] = rec["loc_x"], rec["loc_y"]
        if "stain" in m:
            out["stain"] = m["stain"]
        return out

    bases_c, starts_c = tf.constant(bases), tf.constant(starts.astype(np.int64))

    def bases_t(t):
        return tf.gather(bases_c, t)

    def starts_t(t):
        return tf.gather(starts_c, t)

    k = max(1, len(base.pipeline.augment))
    meta_sig = {"t": tf.TensorSpec([None], tf.int64), "j": tf.TensorSpec([None], tf.int64),
                "position": tf.TensorSpec([None], tf.int64),
                "epoch": tf.TensorSpec([None], tf.int64),
                "params": tf.TensorSpec([None, k], tf.float32)}
    if base.pipeline.normalizer is not None:
        meta_sig["stain"] = tf.TensorSpec(
            [None, tfstain.target_size(base.pipeline.normalizer.method)], tf.float64)

    def one_epoch(epoch):
        choice = tf.data.Dataset.from_generator(
            gen.choices, args=(epoch,),
            output_signature=tf.TensorSpec([None], tf.int64)).unbatch()
        meta = tf.data.Dataset.from_generator(gen.meta, args=(epoch,),
                                              output_signature=meta_sig).unbatch()
        recs = tf.data.Dataset.choose_from_datasets(
            [file_dataset(t) for t in range(len(paths))], choice)
        return tf.data.Dataset.zip((recs, meta))

    epochs = tf.data.Dataset.from_generator(gen.epochs,
                                            output_signature=tf.TensorSpec([], tf.int64))
    return epochs.flat_map(one_epoch), merge


__all__ = ["make_dataset", "make_indexed", "build", "elements", "reader_for", "READERS",
           "images_for", "IMAGES", "MOVES", "THREADS", "move_of",
           "MAX_CXX_TFRECORDS", "image_fn",
           "encode_steps", "LoaderInfo",
           "output_shape", "decode_check", "stack_rows"]
