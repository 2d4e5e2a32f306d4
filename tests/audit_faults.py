"""Deliberately wrong loaders for the audit's meta-tests (spec/audit.md, "Meta-tests").

Each wraps the reference loader (``Dataset.numpy``) with one bug of a kind seen in
the field, and nothing else; ``FAULTS`` maps a name to (factory, the one check
that must flag it, extra audit keyword arguments).
"""

from __future__ import annotations

import os

import numpy as np

from tilespec import ops
from tilespec.augment import BLUR_CDF, BLUR_SIGMAS, parse_augment


def reference(ds, **o):
    return ds.numpy(**o)


# -- sampling and sharding bugs ---------------------------------------------------------
def overlapping_workers(ds, num_workers=0, **o):
    """Every worker reads its rank's whole shard (no split by worker)."""
    if num_workers <= 1:
        return ds.numpy(**o)

    def items():
        for _ in range(num_workers):
            yield from ds.numpy(**o)
    return items()


def rank_skips_shard(ds, **o):
    """The last rank reads the shard of the rank before it: one shard is never read."""
    R = o.get("num_replicas") or 1
    if R > 1 and o.get("rank") == R - 1:
        o["rank"] = R - 2
    return ds.numpy(**o)


def tile_weights_for_slide(ds, **o):
    """Balancing replaced by the tiles' counts ('tile' weights)."""
    if ds.is_balanced:
        ds = ds.balance(strategy="tile")
    return ds.numpy(**o)


def one_tfrecord_never_drawn(ds, **o):
    """An infinite stream leaves the last tfrecord out."""
    if o.get("infinite", True):
        w = np.asarray(ds.sampling_table().weights, float).copy()
        w[-1] = 0
        new = ds.balance(strategy="slide")
        new.prob_weights = dict(zip(ds.tfrecords(), w))
        ds = new
    return ds.numpy(**o)


def label_by_file_name(ds, **o):
    """Labels looked up by the tfrecord's file name instead of the stored slide name."""
    loader = ds.numpy(**o)
    maker = loader.item_maker
    if maker.labels is not None:
        labels = maker.labels
        maker.label = lambda slide, path: labels[os.path.basename(path).rsplit(".", 1)[0]]
    return loader


class _Clockwise:
    """The reference pipeline, except that rot90 turns clockwise."""

    def __init__(self, pipeline):
        self._p = pipeline

    def draw(self, key, positions):
        d = self._p.draw(key, positions)
        steps = [[s._replace(args=(-s.args[0] % 4,)) if s.op == "rot90" else s for s in row]
                 for row in d.steps]
        return d._replace(steps=steps)

    def __getattr__(self, name):
        return getattr(self._p, name)


def rotation_clockwise(ds, **o):
    loader = ds.numpy(**o)
    loader.pipeline = _Clockwise(loader.pipeline)
    return loader


# -- image bugs: the reference without some characters, the wrapper applying them -------
class _Post:
    """The reference loader (uint8, without the characters in ``strip``), then
    ``fn(img, augment, rng)`` and the requested standardization by ``standardize``."""

    def __init__(self, ds, fn, strip, standardize_fn=None, **o):
        mode = o.pop("standardize", True)
        self.mode = "unit" if mode is True else (mode or None)
        self.augment = parse_augment(o.get("augment", False))
        o["augment"] = "".join(c for c in self.augment if c not in strip)
        o["standardize"] = False
        self.inner = ds.numpy(**o)
        self.fn, self.std = fn, standardize_fn or ops.standardize
        self.rng = np.random.default_rng(o.get("seed"))

    def __iter__(self):
        for item in self.inner:
            img = self.fn(item[0], self.augment, self.rng)
            if self.mode is not None:
                img = self.std(img, self.mode)
            yield (img,) + tuple(item[1:])


def _blur17(img, augment, rng):
    if "b" in augment and rng.random() < 0.17:
        sigma = BLUR_SIGMAS[int(np.searchsorted(BLUR_CDF, rng.random(), side="right"))]
        img = ops.gaussian_blur(img, sigma)
    return img


def blur_rate_17(ds, **o):
    return _Post(ds, _blur17, "b", **o)


def _jpeg_no100(img, augment, rng):
    if "j" in augment and rng.random() < 0.5:
        img = ops.jpeg(img, 50 + int(rng.integers(0, 50)))   # 50..99
    return img


def jpeg_never_100(ds, **o):
    return _Post(ds, _jpeg_no100, "j", **o)


def _flips25(img, augment, rng):
    for c in augment:
        if c == "x" and rng.random() < 0.25:
            img = ops.flip_left_right(img)
        elif c == "y" and rng.random() < 0.25:
            img = ops.flip_up_down(img)
    return img


def flips_quarter(ds, **o):
    return _Post(ds, _flips25, "xy", **o)


def _per_image_no_floor(img, mode):
    if mode != "per_image":
        return ops.standardize(img, mode)
    x = img.astype(np.float32)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((x - x.mean()) / x.std()).astype(np.float32)


def per_image_without_floor(ds, **o):
    return _Post(ds, lambda img, a, r: img, "", standardize_fn=_per_image_no_floor, **o)


WORKER_SHARDS = ({"num_replicas": 2}, {"num_replicas": 2, "num_workers": 2})

#: name -> (factory, the check that must fail, extra audit() arguments)
FAULTS = {
    "overlapping shards across workers": (overlapping_workers, {"shards"},
                                          {"shards": WORKER_SHARDS}),
    "a rank skipping a shard": (rank_skips_shard, {"shards"}, {}),
    "blur rate 17%": (blur_rate_17, {"blur"}, {}),
    "JPEG quality never 100": (jpeg_never_100, {"jpeg"}, {}),
    "rotation clockwise": (rotation_clockwise, {"rot90"}, {}),
    "label by file name": (label_by_file_name, {"labels"}, {}),
    "'tile' weights used for 'slide'": (tile_weights_for_slide, {"sampling"}, {}),
    "one tfrecord never drawn": (one_tfrecord_never_drawn, {"sampling"}, {}),
    "per_image without the std floor": (per_image_without_floor, {"standardize"}, {}),
    "flips at p=0.25": (flips_quarter, {"flip_x", "flip_y"}, {}),
}
