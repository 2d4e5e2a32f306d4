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
``map`` whose order is deterministic, then batches and prefetches.
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf

from tilespec.augment import OP_OF_CHAR
from tilespec.images import decode_image, image_format
from tilespec.items import AllSkippedGuard, ItemMaker
from tilespec.loader import IndexedInterleaver, NumpyLoader
from tilespec.pipeline import check_bool
from tilespec.sampling import check_rank

from . import ops as tfops
from . import stain as tfstain

#: Positions planned, read and drawn per generator step (rounded up to whole batches).
CHUNK = 256

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
    rank, num_replicas = _shard(options)
    labels = dataset.loader_labels(options.pop("labels", None))
    table = dataset.sampling_table()
    base = _PlanLoader(list(table.paths), table.clip, table.weights, labels=labels,
                       rank=rank, num_replicas=num_replicas,
                       record_slides=dataset.record_slides, **options)
    return build(base, deterministic=deterministic)


def build(base: NumpyLoader, *, deterministic: bool = True):
    """The tf.data pipeline over a validated reference loader ``base`` (its plan,
    draws, labels and reading), with TensorFlow image ops."""
    label_dtype, label_spec = _label_spec(base.item_maker.labels)
    B = base.batch_size
    keep_invalid = B is not None and base.item_maker.on_error == "skip"
    length = len(base)
    info = LoaderInfo(base, length)
    gen = _Generator(base, info, label_dtype, keep_invalid=keep_invalid)
    # The generator makes a chunk of positions per call; prefetching chunks keeps the
    # Python side (reading, draws) running beside the parallel image map.
    ds = tf.data.Dataset.from_generator(gen, output_signature=_signature(
        base, label_spec, keep_invalid)).prefetch(2).unbatch()
    size = base.item_maker.tile_size()  # the dataset's tile size, the reference's one rule
    images = image_fn(base.pipeline, output_shape(base.pipeline,
                                                  None if size is None else size[:2]))
    has_label = label_spec is not None
    incl_slide, incl_loc = base.item_maker.incl_slidenames, base.item_maker.incl_loc

    def item(e):
        img = images(e["raw"], e["params"], e.get("stain"))
        out = [img, e["label"] if has_label else None]
        if incl_slide:
            out.append(e["slide"])
        if incl_loc:
            out += [e["loc_x"], e["loc_y"]]
        if keep_invalid:
            out.append(e["valid"])
        return tuple(out)

    ds = ds.map(item, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if B is not None:
        ds = ds.batch(B, drop_remainder=base.drop_last)
        if keep_invalid:
            def mask(*cols):
                valid = cols[-1]
                return tuple(None if c is None else tf.boolean_mask(c, valid)
                             for c in cols[:-1])
            ds = ds.map(mask)
    if base.infinite:
        ds = ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))
    elif base.item_maker.on_error == "raise":
        ds = ds.apply(tf.data.experimental.assert_cardinality(length))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    _expose(ds, info)
    return ds


def _expose(ds, info: LoaderInfo):
    """Attach the loader's seed and skipped records to the returned dataset object."""
    try:
        ds.tilespec = info
        ds.seed = info.seed
        ds.skipped = info.skipped
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

    size = items.tile_size()
    images = image_fn(ref.pipeline, output_shape(ref.pipeline,
                                                  None if size is None else size[:2]))
    has_label = label_spec is not None

    def item(e):
        out = [images(e["raw"], e["params"], e.get("stain")), e["label"] if has_label else None]
        if items.incl_slidenames:
            out.append(e["slide"])
        if items.incl_loc:
            out += [e["loc_x"], e["loc_y"]]
        return tuple(out)

    ds = tf.data.Dataset.from_generator(gen, output_signature=sig).unbatch()
    ds = ds.map(item, num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
    if items.on_error == "raise":  # with skips the count is not known in advance
        ds = ds.apply(tf.data.experimental.assert_cardinality(n))
    ds = ds.prefetch(tf.data.AUTOTUNE)
    try:
        ds.tilespec = ref
        ds.seed = ref.seed
        ds.skipped = items.skipped
    except (AttributeError, TypeError):  # pragma: no cover
        pass
    return ds


__all__ = ["make_dataset", "make_indexed", "build", "image_fn", "encode_steps", "LoaderInfo",
           "output_shape", "decode_check", "stack_rows"]
