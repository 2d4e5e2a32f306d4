"""The PyTorch loader and indexed dataset (spec/adapter_torch.md).

Everything that decides *which* record sits at a stream position and *how* it
is augmented comes from the reference unchanged: :class:`tilespec.NumpyLoader`
validates the options and holds the plan (:class:`tilespec.sampling.StreamPlan`),
the pipeline and its draws; :func:`tilespec.sampling.worker_batches` says which
batches a worker makes; the reference's item maker reads, decodes, looks up
labels and handles ``on_error``; the image pipeline is the reference's
:meth:`tilespec.pipeline.Pipeline.apply` run with :mod:`tilespec_torch.ops`.

This module holds the torch side of that: :class:`TorchPipeline` (HWC array in,
CHW tensor out), the batching (:class:`TensorStacker`, :func:`collate`), the
stream as an ``IterableDataset`` made by DataLoader workers (:class:`TileStream`),
the loader (:class:`TorchLoader`, ``Dataset.torch()``) and the map-style
:class:`IndexedInterleaver`. Where batch memory comes from and when it is reused
is :mod:`tilespec_torch.memory`'s.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import warnings

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

import tilespec
from tilespec.augment import MOVE_OPS, moved_view
from tilespec.images import MAX_TILE_PIXELS, decode_planar, decode_view
from tilespec.items import AllSkippedGuard, ItemMaker
from tilespec.loader import NumpyLoader
from tilespec.pipeline import check_bool
from tilespec.sampling import worker_batches

from . import ops
from .checks import check_image
from .memory import SlotRef, SlotTable, WorkerPool, batch_tensor

#: Options of ``Dataset.torch()`` that go to ``torch.utils.data.DataLoader``; the rest
#: are the reference loader's (spec/sampling.md, "Loaders").
TORCH_OPTIONS = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor",
                 "timeout", "multiprocessing_context")


class TorchPipeline:
    """The reference :class:`tilespec.pipeline.Pipeline` applied with torch ops.

    ``apply(hwc_uint8_numpy, steps, stain_z)`` takes the decoded image and the
    reference's drawn steps and returns a CHW tensor: uint8, or float32 when
    standardized. The steps and their order are the reference's
    :meth:`~tilespec.pipeline.Pipeline.apply` run with :mod:`tilespec_torch.ops`
    (spec/images.md, "Pipeline order"; the transform is given the CHW uint8 tensor);
    around it, this class turns the HWC array into a CHW view and makes the result a
    contiguous tensor of its own. With ``defer_standardize`` (batched loaders) the
    standardization is left to :func:`collate`, which writes each image straight into
    the batch tensor (no per-item float copy); the image is checked here, per item.
    """

    def __init__(self, pipeline, defer_standardize: bool = False):
        self.pipeline = pipeline
        self.defer_standardize = bool(defer_standardize)
        self._per_item = pipeline   # the part of the pipeline run per item
        if self.defer_standardize and pipeline.standardize is not None:
            self._per_item = dataclasses.replace(pipeline, standardize=None)

    def __getattr__(self, name):  # the reference pipeline's options (transform, augment, ...)
        if name == "pipeline":
            raise AttributeError(name)
        return getattr(self.pipeline, name)

    @functools.cached_property
    def moves_only(self) -> bool:
        """True when a batched loader's per-item work is at most the drawn steps (no crop,
        resize, stain or transform; standardization left to the batch): a tile whose steps
        all move pixels is then handed to :class:`TensorStacker` as a NumPy view
        (:func:`tilespec.augment.moved_view`), copied once into its batch row."""
        return self.defer_standardize and self._per_item.stages()[1:] in ((), ("augment",))

    def apply(self, img, steps, stain_z=None) -> torch.Tensor:
        if self.moves_only:
            view = moved_view(img, steps)
            if view is not None:   # CHW, no pixel copied yet: TensorStacker.put copies it
                return view.transpose(2, 0, 1)
        if img.flags.writeable:
            x = torch.from_numpy(img)
        else:  # a read-only decoder view: no op here writes into it; the result is a copy
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                x = torch.from_numpy(img)
        x = self._per_item.apply(x.permute(2, 0, 1), steps, stain_z, ops=ops)
        if self.defer_standardize:
            if self.pipeline.standardize is not None:   # standardized by collate
                return check_image(x, "the image before standardization")
            if isinstance(x, torch.Tensor):
                return x                     # collate copies it into the batch
        if isinstance(x, torch.Tensor):
            x = x.contiguous()
            if x.data_ptr() == _data_ptr(img):
                x = x.clone()
        return x


def _data_ptr(img) -> int:
    return img.__array_interface__["data"][0]


def _torch_items(ref_items: ItemMaker, pipeline, batched: bool = False) -> ItemMaker:
    """A fresh reference item maker (own open files) with the torch pipeline and its
    decode (:func:`_decode_for`)."""
    torch_pipeline = TorchPipeline(pipeline, defer_standardize=batched)
    return ref_items.replace(pipeline=torch_pipeline,
                             decode=_decode_for(torch_pipeline, ref_items.max_tile_pixels))


def _decode_for(pipeline: TorchPipeline, max_pixels=MAX_TILE_PIXELS):
    """The torch item maker's decode (bytes, drawn steps) -> HWC image
    (spec/images.md, "Decode").

    A tile whose pipeline is :attr:`TorchPipeline.moves_only` and whose steps all move
    pixels is decoded pixel by pixel (``decode_view``: the decoder's own new array, or
    Pillow's read-only one), then copied once into its batch row through the moved view
    (:class:`TensorStacker`). Every other tile is decoded plane by plane (the reference's
    ``decode_planar``), so that the torch ops get a contiguous CHW tensor; transposed when
    its steps only flip it and turn it by an odd multiple of 90 degrees and nothing comes
    before them (crop, resize, stain), so that ``torch.rot90`` of its CHW view is
    contiguous. ``max_pixels``: the item maker's ``max_tile_pixels``, which every decode
    variant applies (spec/reliability.md, "Size caps")."""
    plain = (pipeline.crop_width is None and pipeline.resize_target is None and
             pipeline.normalizer is None)
    fused = pipeline.moves_only

    def decode(data, steps):
        moves = plain and all(step.op in MOVE_OPS for step in steps)
        if moves and fused:
            return decode_view(data, max_pixels)
        turns = sum(step.args[0] for step in steps if step.op == "rot90") if moves else 0
        return decode_planar(data, transposed=turns % 2 == 1, max_pixels=max_pixels)

    return decode


def _labels(col):
    # labels are numbers, or equal-length sequences of them: checked when the loader
    # is built (the reference's check_label_values), so the column is a numeric array
    return torch.from_numpy(np.ascontiguousarray(np.asarray(col)))


def _shape_error(first, k, shape) -> ValueError:
    return ValueError(f"cannot batch images of different shapes: row 0 is {tuple(first)}, "
                      f"row {k} is {tuple(shape)}")


def stack_images(images, standardize=None, alloc=None) -> torch.Tensor:
    """Stack CHW images into (N, 3, H, W), standardizing with ``standardize`` ('unit',
    'per_image' or None) while copying, with the results of :func:`ops.standardize`."""
    first = images[0]
    for k, im in enumerate(images):
        if im.shape != first.shape:
            raise _shape_error(first.shape, k, im.shape)
    stacker = TensorStacker(len(images), standardize, alloc)
    for k, im in enumerate(images):
        if not stacker.put(k, im):   # not a tensor, or another dtype: torch decides
            return torch.stack(stacker.take_back(k) + list(images[k:]))
    return stacker.images(len(images))


class TensorStacker:
    """The torch form of the reference's ``ArrayStacker``: each CHW image goes
    into its row of an (n, 3, H, W) batch tensor as soon as it is made, standardized
    on the way when ``standardize`` names a mode (:func:`ops.standardize` with
    ``out=``: one pass over the tile while it is in cache, no per-tile float copy).
    ``alloc(shape, dtype)`` gives the batch tensor (default
    :func:`tilespec_torch.memory.batch_tensor`; in a worker its
    :meth:`~tilespec_torch.memory.WorkerPool.tensor`); ``release()``, when given, is
    called if the batch is dropped (the images taken back)."""

    def __init__(self, n: int, standardize=None, alloc=None, release=None):
        self.n = n
        self.standardize = standardize
        self.alloc = alloc or batch_tensor
        self.release = release
        self.out = None
        self._shape = self._rows = None   # the rows' shape; the uint8 batch as NumPy
        self._tile = None   # a CHW uint8 tile, for moved views standardized on the way

    def slot(self, k: int):
        return None   # images are CHW tensors; decode_into writes HWC arrays

    def put(self, k: int, img) -> bool:
        if isinstance(img, np.ndarray):
            return self._put_view(k, img)
        if not isinstance(img, torch.Tensor):
            return False
        if self.out is None:
            dtype = img.dtype if self.standardize is None else torch.float32
            self._new((self.n,) + tuple(img.shape), dtype)
        elif img.shape != self.out.shape[1:]:
            if self.standardize is not None:   # float rows cannot be put back
                raise _shape_error(self.out.shape[1:], k, img.shape)
            return False
        elif self.standardize is None and img.dtype != self.out.dtype:
            return False
        if self.standardize is None:
            self.out[k].copy_(img)
        else:
            ops.standardize(img, self.standardize, out=self.out[k])
        return True

    def _put_view(self, k: int, img: np.ndarray) -> bool:
        """:meth:`put` of a moved view (:attr:`TorchPipeline.moves_only`): a (3, H, W)
        uint8 NumPy view, copied once into row k (standardized through a uint8 tile of
        this stacker's when the batch is)."""
        if img.ndim != 3 or img.dtype != np.uint8:
            return False
        if self.out is None:
            self._new((self.n,) + img.shape,
                      torch.uint8 if self.standardize is None else torch.float32)
        elif img.shape != self._shape:
            if self.standardize is not None:
                raise _shape_error(self.out.shape[1:], k, img.shape)
            return False
        # One strided pass over the image. (Copying a turned view in 64 x 64 blocks was
        # measured slower, 180 against 140 us a 256 x 256 tile, once the source is a
        # freshly decoded tile rather than one that stays in cache.)
        if self.standardize is None:
            if self._rows is None:       # a batch of another dtype (taken back by collate)
                return False
            np.copyto(self._rows[k], img)
            return True
        if self._tile is None or self._tile.shape != img.shape:
            self._tile = np.empty(img.shape, dtype=np.uint8)
        np.copyto(self._tile, img)
        ops.standardize(torch.from_numpy(self._tile), self.standardize, out=self.out[k])
        return True

    def _new(self, shape, dtype) -> None:
        self.out = self.alloc(shape, dtype)
        self._shape = tuple(shape[1:])
        self._rows = self.out.numpy() if dtype == torch.uint8 else None

    def take_back(self, count: int) -> list:
        imgs = [] if self.out is None else [self.out[i].clone() for i in range(count)]
        if self.out is not None and self.release is not None:
            self.release()
        self.out = self._rows = None
        return imgs

    def images(self, count: int) -> torch.Tensor:
        return self.out if count == self.n else self.out[:count]


def collate(items, standardize=None, alloc=None, images=None):
    """Stack items into a batch (spec/adapter_torch.md, "Items and batches"): images
    (N, 3, H, W) (standardized here when ``standardize`` names a mode); labels a
    tensor (N,) or (N, k) for multi-outcome labels, None without labels; slide names
    a list of str; loc_x, loc_y int64 tensors.
    ``images``, when given, is the image column already stacked (by a
    :class:`TensorStacker` while the items were made)."""
    cols = list(zip(*items))
    out = [stack_images(cols[0], standardize, alloc) if images is None else images]
    out.append(None if cols[1][0] is None else _labels(cols[1]))
    for col in cols[2:]:
        if isinstance(col[0], (int, np.integer)):
            out.append(torch.tensor(col, dtype=torch.int64))
        else:
            out.append(list(col))
    return tuple(out)


def _identity(x):
    return x


@contextlib.contextmanager
def _no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


class TileStream(IterableDataset):
    """One rank's stream as a torch IterableDataset (spec/adapter_torch.md, "Workers").

    Yields ``(b, payload, (skipped, counted), slot)``: the batch index b; the batch
    (or the item when unbatched; None when every record of it was skipped); the
    records skipped in it (the skip log's new entries, dicts of position, path,
    record and error) and how many were skipped (the log keeps at most tilespec's
    SKIP_LOG_LIMIT); and the batch's shared-memory slot ``(worker, slot, token)``,
    or None when it has none (:mod:`tilespec_torch.memory`). From start batch s,
    DataLoader worker w of W makes the batches b with ``b mod W == (w + s) mod W``
    (:func:`tilespec.sampling.worker_batches`), so the DataLoader's round-robin over
    workers yields batch s, s + 1, s + 2, ... in order. :class:`TorchLoader` unwraps
    the four values.
    """

    def __init__(self, reference: NumpyLoader, shared_state: bool = False,
                 flags: torch.Tensor | None = None):
        self.reference = reference
        # (seed, epoch, start batch, generation); shared memory when workers persist
        self._state = torch.zeros(4, dtype=torch.int64)
        if shared_state:
            self._state.share_memory_()
        self.flags = flags          # the workers' slots (memory.SlotTable.flags)
        self.by_reference = False   # batches in held slots go as memory.SlotRef

    def set_state(self, seed: int, epoch: int, start_batch: int) -> None:
        self._state[0], self._state[1], self._state[2] = int(seed), int(epoch), int(start_batch)
        self._state[3] += 1

    def __iter__(self):
        ref = self.reference
        info = get_worker_info()
        w, W = (0, 1) if info is None else (info.id, info.num_workers)
        seed, epoch, start_batch, generation = (int(v) for v in self._state.tolist())
        pool = None
        if info is not None and self.flags is not None and w < len(self.flags):
            pool = WorkerPool(self.flags, w, generation, self.by_reference)
        plan = ref.plan(epoch, seed)
        total = None if ref.infinite else len(plan)
        batched = ref.batch_size is not None
        guard = AllSkippedGuard(plan, ref.paths)
        maker = _torch_items(ref.item_maker, ref.pipeline, batched)
        try:
            # The DataLoader asks its workers round-robin from worker 0, so worker k
            # makes batches start_batch + k, start_batch + k + W, ...: the batches b
            # with b mod W == (k + start_batch) mod W.
            for b, start, stop in worker_batches((w + start_batch) % W, W, ref.batch_size,
                                                 total, ref.drop_last, start_batch):
                n_skipped = len(maker.skipped)
                n_counted = maker.num_skipped
                if pool is not None:
                    pool.start_batch()
                stack = None
                if batched:
                    stack = functools.partial(
                        TensorStacker, standardize=ref.pipeline.standardize,
                        alloc=pool and pool.tensor, release=pool and pool.release_last)
                # in a worker, skips are reported (and warned about) by the main process
                with _no_warnings() if info is not None else contextlib.nullcontext():
                    items, images = ref.make_items(start, stop, plan, owned=not batched,
                                                   stack=stack, maker=maker)
                payload = None
                if items:               # the reference's rule: all owned records skipped
                    guard.reset()
                else:
                    guard.skipped(*plan.records(start, stop), maker.skipped)
                if items:
                    payload = (collate(items, ref.pipeline.standardize,
                                       pool and pool.tensor, images) if batched else items[0])
                slot = pool.last if pool is not None and batched and items else None
                if slot is not None:
                    payload = (pool.outgoing(payload[0]),) + payload[1:]
                counted = maker.num_skipped - n_counted
                yield b, payload, (maker.skipped[n_skipped:], counted), slot
        finally:
            maker.close()


class _ReferenceState:
    """``seed`` and ``epoch``: those of the reference object the torch one wraps
    (``self.reference``), which holds the state (spec/adapter_torch.md)."""

    @property
    def seed(self) -> int:
        return self.reference.seed

    @property
    def epoch(self) -> int:
        return self.reference.epoch


class TorchLoader(_ReferenceState, DataLoader):
    """``Dataset.torch()``: a DataLoader over one rank's stream (spec/adapter_torch.md).

    Yields ``(image, label[, slide][, loc_x, loc_y])`` items or batches, images CHW
    (N, 3, H, W when batched) uint8 (the default, ``standardize=False``), or float32
    when standardized. The stream is the
    reference's for any ``num_workers``. Also exposes ``seed``, ``epoch``,
    ``position``, ``state_dict()``, ``load_state_dict()``, ``len()`` (positions or
    batches per epoch, as the reference), ``skipped`` and ``num_skipped`` (records
    skipped with on_error='skip', from every worker), ``num_padded``, ``num_dropped``
    and ``reference`` (the :class:`tilespec.NumpyLoader` with the same options).
    """

    def __init__(self, reference: NumpyLoader, *, num_workers: int = 0, pin_memory=None,
                 persistent_workers: bool = False, prefetch_factor=None, timeout: float = 0,
                 multiprocessing_context=None):
        if pin_memory is None:
            pin_memory = torch.cuda.is_available()
        stream = TileStream(reference, shared_state=bool(persistent_workers))
        super().__init__(stream, batch_size=None, num_workers=num_workers,
                         collate_fn=_identity, pin_memory=bool(pin_memory),
                         persistent_workers=persistent_workers,
                         prefetch_factor=prefetch_factor, timeout=timeout,
                         multiprocessing_context=multiprocessing_context)
        self.reference = reference
        self.tile_batch_size = reference.batch_size
        self._skipped: list = []
        self._num_skipped = 0
        self._slots = None          # the workers' batch slots (memory.SlotTable)

    # -- state (the reference's) ---------------------------------------------------------------
    @property
    def position(self) -> int:
        return self.reference.position

    @property
    def skipped(self) -> list:
        """Records skipped with on_error='skip': dicts of position, path, record, error."""
        return self._skipped

    @property
    def num_skipped(self) -> int:
        """Every record skipped with on_error='skip' (``skipped`` logs at most
        tilespec's SKIP_LOG_LIMIT per worker)."""
        return self._num_skipped

    @property
    def num_padded(self) -> int:
        """Pads per finite epoch of this rank (the reference's; spec/sampling.md)."""
        return self.reference.num_padded

    @property
    def num_dropped(self) -> int:
        """Records left out per finite epoch by ``uneven='drop'`` (the reference's)."""
        return self.reference.num_dropped

    def state_dict(self) -> dict:
        return self.reference.state_dict()

    def load_state_dict(self, state) -> None:
        self.reference.load_state_dict(state)

    def __len__(self) -> int:
        return len(self.reference)

    def __iter__(self):
        ref = self.reference
        B = ref.batch_size or 1
        total = None if ref.infinite else len(ref.plan(ref.epoch))
        slots = getattr(self, "_slots", None)
        if self.num_workers and ref.batch_size is not None and (
                slots is None or not self.persistent_workers):
            # New workers get new pools and new slots (persistent ones keep theirs); the
            # slots live as long as the loader's iteration or a batch that used them.
            slots = self._slots = SlotTable(self.num_workers, self.prefetch_factor,
                                            self.pin_memory)
            self.dataset.flags = slots.flags
            self.dataset.by_reference = slots.by_reference
        self.dataset.set_state(ref.seed, ref.epoch, ref.position // B)
        it = super().__iter__()
        in_worker = self.num_workers > 0
        bar, done = ref.progress_bar(), 0   # progress=True: the reference's bar
        try:
            for b, payload, (skipped, counted), slot in it:
                self._num_skipped += counted
                if payload is not None and isinstance(payload[0], SlotRef):
                    payload = (slots.tensor(payload[0]),) + payload[1:]
                if slots is not None:
                    slots.received(None if payload is None else payload[0], slot)
                for s in skipped:
                    self._skipped.append(s)
                    if in_worker:
                        warnings.warn(f"skipped {s['path']} record {s['record']} (stream "
                                      f"position {s['position']}): {s['error']}", stacklevel=2)
                stop = (b + 1) * B
                ref.position = stop if total is None else min(stop, total)
                if payload is not None:
                    yield payload
                    if bar is not None:
                        done += 1
                        bar.step(done)
            ref.epoch += 1
            ref.position = 0
        finally:
            if bar is not None:
                bar.close()
            if not self.persistent_workers:
                if hasattr(it, "_shutdown_workers"):
                    it._shutdown_workers()
                self.dataset.flags = None
                self.dataset.by_reference = False
                self._slots = None  # the workers' slots go with them; batches keep theirs
            del it


def no_label() -> torch.Tensor:
    """The label of an item of :class:`IndexedInterleaver` built without labels: an
    empty float32 tensor, shape (0,), which ``torch.utils.data.default_collate`` stacks
    into (N, 0), where None cannot be batched. Not a number that could be taken for a
    label (slideflow gives ``tensor(0)``): a loss given it fails on its shape
    (spec/adapter_torch.md, "Indexed dataset")."""
    return torch.zeros(0)


class IndexedInterleaver(_ReferenceState, Dataset):
    """Map-style torch dataset equal item by item to :class:`tilespec.IndexedInterleaver`
    (spec/sampling.md, "Indexed dataset"; spec/adapter_torch.md). Same arguments; images
    CHW tensors; without labels the label is :func:`no_label` (an empty tensor), so a
    plain ``torch.utils.data.DataLoader`` with its default collate batches the items
    (each worker process opens its own files). Epochs advance only by
    :meth:`set_epoch`."""

    def __init__(self, tfrecords, **options):
        self.reference = tilespec.IndexedInterleaver(tfrecords, **options)
        self._maker = None
        self._pid = None
        # the epoch in shared memory, so that set_epoch reaches persistent workers too
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def _items(self) -> ItemMaker:
        if self._maker is None or self._pid != os.getpid():
            self._maker = _torch_items(self.reference.item_maker, self.reference.pipeline)
            self._pid = os.getpid()
        return self._maker

    def set_epoch(self, epoch: int) -> None:
        """Epoch ``epoch``'s shuffle and draws from now on, in this process and in the
        DataLoader's workers, persistent ones included (spec/adapter_torch.md)."""
        self.reference.set_epoch(epoch)
        self._epoch[0] = self.reference.epoch

    def _sync_epoch(self) -> None:
        e = int(self._epoch[0])
        if e != self.reference.epoch:
            self.reference.set_epoch(e)

    def record(self, i: int):
        self._sync_epoch()
        return self.reference.record(i)

    def __len__(self) -> int:
        return len(self.reference)

    def __getitem__(self, i):
        self._sync_epoch()
        item = self.reference.item(i, maker=self._items())
        if item is not None and item[1] is None:  # no labels: see no_label()
            item = (item[0], no_label()) + item[2:]
        return item

    def close(self) -> None:
        if self._maker is not None:
            self._maker.close()

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maker"] = state["_pid"] = None
        return state


def make_loader(dataset, options: dict) -> TorchLoader:
    """Build ``Dataset.torch(**options)`` (spec/adapter_torch.md, "Options")."""
    options = dict(options)
    torch_opts = {k: options.pop(k) for k in TORCH_OPTIONS if k in options}
    for k in ("pin_memory", "persistent_workers"):  # the reference's check of a bool option
        if torch_opts.get(k) is not None:
            torch_opts[k] = check_bool(k, torch_opts[k])
    if options.get("rank") is None and options.get("num_replicas") is None:
        dist = torch.distributed   # neither given: the process group's, when there is one
        if dist.is_available() and dist.is_initialized():
            options["rank"], options["num_replicas"] = dist.get_rank(), dist.get_world_size()
    reference = dataset.numpy(**options)  # one given without the other: the reference says
    return TorchLoader(reference, **torch_opts)


__all__ = ["TorchLoader", "TileStream", "TorchPipeline", "TensorStacker", "IndexedInterleaver",
           "no_label",
           "collate", "make_loader", "TORCH_OPTIONS"]
