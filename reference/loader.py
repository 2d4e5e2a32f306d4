"""The NumPy reference loaders (spec/sampling.md, "Loaders" and "Indexed dataset").

:class:`NumpyLoader` is an iterable over a rank's stream (the plan of
:mod:`tilespec.sampling`), yielding ``(image, label[, slide][, loc_x, loc_y])``
items or stacked batches. :class:`IndexedInterleaver` is the map-style
equivalent. Both make their items with :class:`tilespec.items.ItemMaker`, which
reads the records through :class:`tilespec.source.TileSource`; everything that
decides *what* is read and *how it is augmented* is a pure function of
(seed, rank, epoch, position).
"""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

from .balance import custom_clip
from .dataset import tfrecord_paths
from .images import MAX_TILE_PIXELS
from .items import (AllSkippedGuard, ArrayStacker, ItemMaker, check_construction,
                    check_label_values, collate)
from .pipeline import Pipeline, check_bool
from .records import MAX_RECORD_BYTES
from .rng import check_seed, new_seed, permutation, stream_key
from .sampling import RankStream, check_rank, check_uneven, num_batches

INDEXED_GROUP = 0xFFFFFFFF  # permutation group of the indexed dataset's shuffle
PLAN_WINDOW = 4096  # stream positions the loader plans at once


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
        """The first :data:`~tilespec.items.SKIP_LOG_LIMIT` records skipped with
        on_error='skip': dicts of epoch, position, path, record, error (spec/reliability.md,
        "on_error")."""
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
        """Items of positions [start, stop) (skipped ones left out), in order
        (spec/sampling.md, "Loaders")."""
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
        """The :class:`~tilespec.items.ItemMaker` of this loader's options (adapters derive
        theirs with :meth:`~tilespec.items.ItemMaker.replace`; spec/adapters.md, "What an
        adapter is")."""
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
        (:class:`~tilespec.items.ArrayStacker`, or an adapter's): every image goes
        into the batch as soon as it is made, and the item keeps None in its place,
        so the decoder's buffer is free again for the next tile (it stays in cache
        and in memory the process already holds) instead of 64 tiles' worth of
        fresh memory per batch. When the pipeline does nothing after decode, tiles are
        decoded straight into the slot the stacker offers
        (:func:`~tilespec.images.decode_into`). Should the stacker refuse an image
        (another shape or type), the images are put back and ``images`` is None, so
        :func:`~tilespec.items.collate` stacks (or fails) exactly as without a stacker.
        """
        plan = plan or self._plan
        t, j = self._records(plan, start, stop)
        positions = plan.positions(start, start + len(t))
        draws = self.pipeline.draw(plan.key, positions)
        maker = self._items if maker is None else maker
        batch = _Batch(None if stack is None else stack(len(t)), direct=maker.identity)
        make, steps, stain, epoch = maker.make, draws.steps, draws.stain, plan.epoch
        slot_of, add = batch.slot, batch.add
        for k, (tk, jk, pk) in enumerate(zip(t.tolist(), j.tolist(), positions.tolist())):
            slot = slot_of()
            item = make(tk, jk, pk, steps[k], None if stain is None else stain[k],
                        owned=owned, into=slot, epoch=epoch)
            if item is not None:
                add(item, slot)
        return batch.items, batch.images()

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


class _Batch:
    """The items of one :meth:`NumpyLoader.make_items` call as they are made, and with a
    stacker their images (spec/sampling.md, "Loaders").

    Without a stacker, items are kept as made. With one, each image goes into the
    stacker as soon as its item is made (or was decoded straight into the slot the
    stacker offered, when ``direct``: the maker does nothing after decode) and the
    item keeps None in its place. Should the stacker refuse an image, every image
    it took is put back into its item and the stacker is dropped: the items are
    then exactly those made without one, and :func:`collate` stacks (or fails)
    on its own.
    """

    def __init__(self, stacker, direct: bool):
        self.items: list = []
        self.stacker = stacker
        self.direct = direct

    def slot(self):
        """The array the next item's image may be decoded into, or None."""
        if self.stacker is None or not self.direct:
            return None
        return self.stacker.slot(len(self.items))

    def add(self, item: tuple, slot) -> None:
        """Keep ``item``, made with ``slot`` (what :meth:`slot` offered for it)."""
        if self.stacker is not None:
            img = item[0]
            if (slot is not None and img is slot) or self.stacker.put(len(self.items), img):
                item = (None,) + item[1:]
            else:
                self._put_back()
        self.items.append(item)

    def _put_back(self) -> None:
        """The stacker refused an image: the images it took go back into their items."""
        taken = self.stacker.take_back(len(self.items))
        self.items = [(img,) + it[1:] for img, it in zip(taken, self.items)]
        self.stacker = None

    def images(self):
        """The stacked images of the items, or None (no stacker, or no item)."""
        if self.stacker is None or not self.items:
            return None
        return self.stacker.images(len(self.items))


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
        self.clip = custom_clip(clip, self.paths, counts)
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

    @property
    def key(self):
        """The stream key of the current epoch, ``stream_key(seed, rank, epoch)``: what
        item i's augmentation draws are keyed by, with position i (spec/sampling.md,
        "Indexed dataset"); an adapter draws with it (``Pipeline.draw(key, positions)``)."""
        return self._key

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


__all__ = ["NumpyLoader", "IndexedInterleaver"]
