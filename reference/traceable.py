"""Traceable tiles: a dataset whose every tile says in its pixels which record it is
(spec/audit.md, "Traceable tiles").

Each patterned tile is an 8 x 8 grid of cells, each dark purple or pale pink (32 of
each), plus per-pixel colour noise. The 64-cell pattern is the record's identity: the
patterns of all records, under all 8 symmetries of the square (the flips and
rotations of 'x', 'y', 'r'), differ from each other in at least
:data:`MIN_DISTANCE` cells, so the record and the symmetry applied are recovered by
the nearest pattern even after a JPEG round trip at quality 50 or a blur of sigma 2,
from uint8 or standardized images, HWC or CHW. The noise makes JPEG and blur
measurable: the audit compares an image with the record's known pixels run through
each candidate operation (:meth:`Tracer.classify`). A few *flat* tiles (one grey
level each) are there for the 'per_image' standardization floor.

:func:`write_traceable_dataset` writes it; :class:`Tracer` reads it back and
decodes yielded images.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from . import ops
from .annotations import write_annotations_csv
from .example import encode_tile, parse_tile
from .images import decode_image
from .records import read_records, write_records

GRID = 8
MIN_DISTANCE = 16          # cells, between any two (record, symmetry) patterns
DARK = np.array([90.0, 50.0, 140.0])
PALE = np.array([225.0, 195.0, 220.0])
NOISE = 24                 # +- grey levels, uniform, per pixel and channel
FLAT_LEVELS = (70, 185)

#: (slide, patient, category, patterned tiles, file name stem). One file's name
#: differs from the slide name stored in its records; counts are unequal.
DEFAULT_SLIDES = (
    ("tr-a", "pt-1", "tumor", 28, "tr-a"),
    ("tr-b", "pt-1", "tumor", 12, "tr-b"),
    ("tr-c", "pt-2", "normal", 24, "tr-c"),
    ("tr-d", "pt-3", "normal", 18, "tr-d"),
    ("tr-e", "pt-3", "tumor", 24, "tr-e"),
    ("tr-f", "pt-4", "normal", 12, "renamed-f"),
)
#: the flat tiles go at the end of the first slide's file
FLAT_SLIDE = 0

#: the 8 symmetries as (flip_left_right first?, rot90 k): D(f, k)(img) = rot90(fliplr^f(img), k)
SYMMETRIES = tuple((f, k) for f in (0, 1) for k in range(4))


def apply_symmetry(img: np.ndarray, g) -> np.ndarray:
    """D(f, k)(img) = rot90(flip_left_right(img) if f else img, k), on the last-but-one
    two axes of an HWC (or NHWC, or a bare H x W) array."""
    f, k = g
    ax = (0, 1) if img.ndim == 2 else (-3, -2)
    out = np.flip(img, axis=ax[1]) if f else img
    return np.rot90(out, k, axes=ax)


_PROBE = np.arange(9).reshape(3, 3)


def symmetry_of(steps) -> tuple:
    """The symmetry (f, k) that a sequence of ops ('flip_left_right', 'flip_up_down',
    ('rot90', k)) composes to."""
    img = _PROBE
    for s in steps:
        op, *args = (s,) if isinstance(s, str) else s
        img = {"flip_left_right": lambda a: a[:, ::-1], "flip_up_down": lambda a: a[::-1],
               "rot90": lambda a: np.rot90(a, args[0] if args else 1)}[op](img)
    for g in SYMMETRIES:
        if np.array_equal(apply_symmetry(_PROBE, g), img):
            return g
    raise AssertionError("not a symmetry")  # pragma: no cover


def explain_symmetry(g, augment: str) -> list:
    """Every assignment of the geometric characters of ``augment`` (x, y: applied or
    not; r: k in 0..3) that composes to ``g``, as dicts ``{'x': 0/1, 'y': .., 'r': k}``
    keyed by character position. One assignment when ``augment`` has a single one
    of x, y, r."""
    chars = [(i, c) for i, c in enumerate(augment) if c in "xyr"]
    out = []
    for combo in np.ndindex(*[4 if c == "r" else 2 for _, c in chars]):
        steps = []
        for (i, c), v in zip(chars, combo):
            if c == "x" and v:
                steps.append("flip_left_right")
            elif c == "y" and v:
                steps.append("flip_up_down")
            elif c == "r" and v:
                steps.append(("rot90", int(v)))
        if symmetry_of(steps) == tuple(g):
            out.append({f"{c}{i}": int(v) for (i, c), v in zip(chars, combo)})
    return out


def _patterns(n: int, seed: int) -> np.ndarray:
    """n balanced 8 x 8 bit patterns, every (pattern, symmetry) pair at least
    MIN_DISTANCE cells from every other (greedy, deterministic in ``seed``)."""
    rng = np.random.default_rng([seed, 0x7ace])
    chosen, variants = [], np.zeros((0, GRID * GRID), dtype=np.int8)
    while len(chosen) < n:
        bits = np.zeros(GRID * GRID, dtype=np.int8)
        bits[rng.permutation(GRID * GRID)[: GRID * GRID // 2]] = 1
        p = bits.reshape(GRID, GRID)
        own = np.array([apply_symmetry(p, g).ravel() for g in SYMMETRIES])
        d_own = (own[1:] != own[0]).sum(1)
        if d_own.min() < MIN_DISTANCE:
            continue
        if len(variants) and (variants[:, None, :] != own[None, :, :]).sum(2).min() < \
                MIN_DISTANCE:
            continue
        chosen.append(p)
        variants = np.concatenate([variants, own])
    return np.array(chosen)


def traceable_tile(bits: np.ndarray, tile_px: int, rng: np.random.Generator) -> np.ndarray:
    """The HWC uint8 tile of an 8 x 8 bit pattern: cells PALE (1) or DARK (0), plus
    uniform noise of +- NOISE levels."""
    cell = -(-tile_px // GRID)
    big = np.kron(bits, np.ones((cell, cell)))[:tile_px, :tile_px]
    img = DARK + (PALE - DARK) * big[..., None]
    img = img + rng.integers(-NOISE, NOISE + 1, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _encode(img, image_format):
    from PIL import Image

    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(img).save(buf, format="PNG")
    elif image_format == "jpeg":
        Image.fromarray(img).save(buf, format="JPEG", quality=95, subsampling="4:2:0")
    else:
        raise ValueError(f"image_format must be 'png' or 'jpeg', got {image_format!r}")
    return buf.getvalue()


def write_traceable_dataset(root, *, tile_px: int = 64, image_format: str = "png",
                            seed: int = 0, slides=DEFAULT_SLIDES) -> dict:
    """Write the traceable dataset under ``root`` (spec/audit.md, "Traceable tiles").

    ``root/tfrecords/<file>.tfrecords`` (one per slide; one file name differs from its
    slide name), ``root/annotations.csv`` (patient, slide, category) and
    ``root/traceable.json`` (the parameters). Tiles are ``tile_px`` square (at least
    16), stored as ``image_format`` ('png' or 'jpeg' at quality 95); locations are
    (tile_px * col, tile_px * row), 8 columns. The annotations are keyed by file stem
    (as a Dataset matches them); :func:`true_labels` gives the labels by stored
    slide name. Returns ``{"root", "tfrecords",
    "annotations", "paths"}``.
    """
    if tile_px < 16:
        raise ValueError(f"traceable tiles need tile_px >= 16, got {tile_px}")
    root = os.fspath(root)
    folder = os.path.join(root, "tfrecords")
    os.makedirs(folder, exist_ok=True)
    total = sum(s[3] for s in slides)
    pats = _patterns(total, seed)
    k = 0
    paths = []
    for s, (slide, _patient, _category, tiles, stem) in enumerate(slides):
        recs = []
        for i in range(tiles):
            img = traceable_tile(pats[k], tile_px, np.random.default_rng([seed, s, i]))
            k += 1
            recs.append(encode_tile(_encode(img, image_format), slide,
                                    loc_x=(i % 8) * tile_px, loc_y=(i // 8) * tile_px))
        if s == FLAT_SLIDE:
            for lv in FLAT_LEVELS:
                i = len(recs)
                img = np.full((tile_px, tile_px, 3), lv, dtype=np.uint8)
                recs.append(encode_tile(_encode(img, "png"), slide,
                                        loc_x=(i % 8) * tile_px, loc_y=(i // 8) * tile_px))
        path = os.path.join(folder, f"{stem}.tfrecords")
        write_records(path, recs)
        paths.append(path)
    # rows are matched to tfrecords by file stem (spec/dataset.md); the renamed
    # file's row carries the *other* category, a decoy for labels by file name
    cats = sorted({s[2] for s in slides})
    rows = [[patient, stem, category if stem == slide else
             cats[(cats.index(category) + 1) % len(cats)]]
            for slide, patient, category, _t, stem in slides]
    ann = write_annotations_csv(os.path.join(root, "annotations.csv"),
                                ["patient", "slide", "category"], rows)
    with open(os.path.join(root, "traceable.json"), "w") as fh:
        json.dump({"tile_px": tile_px, "image_format": image_format, "seed": seed,
                   "slides": [list(s) for s in slides]}, fh, indent=1)
    return {"root": root, "tfrecords": folder, "annotations": ann, "paths": paths}


def true_labels(root) -> tuple:
    """``(labels, categories)`` of a traceable dataset: ``{stored slide name: index
    of its category}`` plus, for every file whose stem differs from its stored slide
    name, ``{stem: a different index}`` (the decoy a loader labelling by file name
    would read), and the sorted category names."""
    with open(os.path.join(os.fspath(root), "traceable.json")) as fh:
        meta = json.load(fh)
    cats = sorted({s[2] for s in meta["slides"]})
    labels = {}
    for slide, _p, category, _t, stem in meta["slides"]:
        labels[slide] = cats.index(category)
        if stem != slide:
            labels[stem] = (cats.index(category) + 1) % len(cats)
    return labels, cats


# ------------------------------------------------------------------------ decoding
def image_hwc(img, layout: str | None = None) -> tuple:
    """(HWC float64 array, layout) of one yielded image (any framework; HWC or CHW;
    ``layout`` None detects it from which axis has 3 channels)."""
    from .testing import to_numpy

    a = to_numpy(img)
    if a.ndim != 3:
        raise ValueError(f"an image must have 3 axes (HWC or CHW), got shape {a.shape}")
    if layout is None:
        layout = "HWC" if a.shape[-1] == 3 else "CHW" if a.shape[0] == 3 else None
        if layout is None:
            raise ValueError(f"cannot tell the layout of an image of shape {a.shape}: "
                             "neither its first nor its last axis has 3 channels")
    if layout == "CHW":
        a = np.moveaxis(a, 0, -1)
    return a, layout


_BOUNDS = {}


def _cell_bounds(n: int):
    """Start and stop of the central half of each of the GRID cells of an axis of n."""
    b = _BOUNDS.get(n)
    if b is None:
        edges = np.linspace(0, n, GRID + 1)
        q = (edges[1:] - edges[:-1]) / 4
        lo = (edges[:-1] + q).astype(int)
        hi = np.maximum(np.ceil(edges[1:] - q).astype(int), lo + 1)
        b = _BOUNDS[n] = (lo, np.minimum(hi, n))
    return b


def _features(img: np.ndarray) -> np.ndarray:
    """8 x 8 cell means of the luminance over the central half of each cell,
    z-scored (so any affine change of the values, e.g. standardization, leaves them
    unchanged); None when the image is flat."""
    h, w = img.shape[:2]
    lum = img[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    integral = np.zeros((h + 1, w + 1))
    integral[1:, 1:] = lum.cumsum(0).cumsum(1)
    y0, y1 = _cell_bounds(h)
    x0, x1 = _cell_bounds(w)
    sums = (integral[y1][:, x1] - integral[y0][:, x1] - integral[y1][:, x0]
            + integral[y0][:, x0])
    f = (sums / np.outer(y1 - y0, x1 - x0)).ravel()
    sd = f.std()
    if not np.isfinite(sd) or sd < 1e-6 * (1 + abs(f.mean())):
        return None
    return (f - f.mean()) / sd


@dataclass
class Record:
    """One record of the traceable dataset."""

    rid: int
    path: str
    index: int        # record index in its file
    t: int            # tfrecord index in the dataset's sorted order
    slide: str        # stored in the record
    loc: tuple
    flat: int | None  # grey level of a flat tile, else None
    base: np.ndarray = field(repr=False, default=None)  # decoded, cropped, resized


@dataclass
class Trace:
    """What :meth:`Tracer.identify` recovers from one image."""

    rid: int | None         # None: not recognized
    symmetry: tuple | None  # (f, k); None for a flat tile
    score: float            # correlation with the best pattern (1 for flat)
    margin: float           # best minus the best of any other record
    flat: bool = False


class Tracer:
    """Decodes images yielded from the traceable dataset (spec/audit.md).

    ``paths`` are the dataset's tfrecords (sorted, as ``Dataset.tfrecords()``);
    ``geometry`` the loader's crop/resize options (``crop_left``, ``crop_width``,
    ``resize_target``, ``resize_method``, ``resize_aa``), which the expected
    images are run through.
    """

    def __init__(self, paths, **geometry):
        from .pipeline import Pipeline

        self.pipeline = Pipeline.from_options(standardize=False, **geometry)
        self.records: list[Record] = []
        self.by_key = {}
        for t, path in enumerate(paths):
            for j, payload in enumerate(read_records(path)):
                tile = parse_tile(payload)
                img = self.pipeline.geometry(decode_image(tile.image_raw))
                flat = int(img.flat[0]) if int(img.max()) == int(img.min()) else None
                r = Record(len(self.records), os.fspath(path), j, t, tile.slide,
                           (tile.loc_x, tile.loc_y), flat, img)
                self.records.append(r)
                self.by_key[(t, j)] = r.rid
        self.patterned = [r.rid for r in self.records if r.flat is None]
        feats, owners = [], []
        for rid in self.patterned:
            for gi, g in enumerate(SYMMETRIES):
                feats.append(_features(apply_symmetry(self.records[rid].base, g)))
                owners.append((rid, gi))
        self._feats = np.array(feats)
        self._owners = np.array(owners)
        self._cache = {}

    def __len__(self):
        return len(self.records)

    def identify(self, img: np.ndarray) -> Trace:
        """The record and symmetry of one HWC image (uint8 or float, any scale)."""
        f = _features(img)
        if f is None:
            # flat: a uint8 or 'unit' image keeps the level; 'per_image' makes zeros
            v = float(np.asarray(img, dtype=np.float64).mean())
            flats = [r for r in self.records if r.flat is not None]
            if img.dtype == np.uint8:
                best = min(flats, key=lambda r: abs(r.flat - v))
                return Trace(best.rid if abs(best.flat - v) <= 8 else None, None, 1.0, 1.0,
                             True)
            return Trace(None, None, 1.0, 0.0, True)
        scores = self._feats @ f / f.size
        order = np.argsort(scores)[::-1]
        best = order[0]
        rid, gi = self._owners[best]
        other = next((s for s in order[1:] if self._owners[s][0] != rid), None)
        margin = float(scores[best] - (scores[other] if other is not None else -1))
        ok = scores[best] > 0.6 and margin > 0.2
        return Trace(int(rid) if ok else None, SYMMETRIES[gi] if ok else None,
                     float(scores[best]), margin)

    # -- what happened to the pixels -------------------------------------------------
    def expected(self, rid: int, g, op: str = "none", arg=None) -> np.ndarray:
        """The record's pixels after symmetry ``g`` and then ``op`` ('none', 'jpeg'
        with quality ``arg``, 'blur' with sigma ``arg``, 'jpeg+blur' with ``arg`` =
        (quality, sigma)), float64 (cached)."""
        key = (rid, tuple(g), op, arg)
        out = self._cache.get(key)
        if out is None:
            img = np.ascontiguousarray(apply_symmetry(self.records[rid].base, g))
            if op == "jpeg":
                img = ops.jpeg(img, int(arg))
            elif op == "blur":
                img = ops.gaussian_blur(img, float(arg))
            elif op == "jpeg+blur":   # string order 'jb'
                img = ops.gaussian_blur(self.expected(rid, g, "jpeg", arg[0]).astype(np.uint8),
                                        float(arg[1]))
            out = self._cache[key] = img.astype(np.float64)
        return out

    def distance(self, img: np.ndarray, rid: int, g, op="none", arg=None,
                 scale: str = "levels") -> float:
        """Mean |difference| in grey levels between ``img`` and an expected image.

        ``scale``: 'levels' (img is uint8 or in grey levels), 'unit' (x / 127.5 - 1)
        or 'affine' (any affine image of the levels, e.g. 'per_image': fitted by
        least squares and measured in the expected image's levels)."""
        e = self.expected(rid, g, op, arg)
        x = np.asarray(img, dtype=np.float64)
        if x.shape != e.shape:
            return float("inf")
        if scale == "unit":
            x = (x + 1.0) * 127.5
        elif scale == "affine":
            xc, ec = x - x.mean(), e - e.mean()
            den = float((xc * xc).sum())
            a = float((xc * ec).sum()) / den if den > 0 else 0.0
            x = a * xc + e.mean()
        return float(np.abs(x - e).mean())

    def classify(self, img: np.ndarray, rid: int, g, candidates, scale="levels",
                 coarse: int = 1) -> tuple:
        """The candidate ``(op, arg)`` nearest to ``img`` and its distance:
        ``(op, arg, distance, distance to 'none')``.

        An exact match (distance 0) ends the search. ``coarse`` > 1 (for the
        many JPEG qualities, whose distance changes slowly with the quality) tries
        every ``coarse``-th candidate first, then the candidates within ``coarse``
        of the best three of those (checked for every JPEG quality 50..100 by
        tests/test_traceable.py)."""
        cands = list(candidates)
        tried = {}

        def dist(i):
            if i not in tried:
                op, arg = cands[i]
                tried[i] = self.distance(img, rid, g, op, arg, scale)
            return tried[i]

        first = [i for i in range(len(cands))
                 if coarse <= 1 or i % coarse == 0 or cands[i][0] == "none"
                 or i == len(cands) - 1]
        for i in first:
            if dist(i) == 0:
                break
        best = min(tried, key=tried.get)
        if coarse > 1 and tried[best] > 0:
            # the distance is not monotonic between the coarse points: refine around
            # the best three of them
            for c in sorted(tried, key=tried.get)[:3]:
                for i in range(max(0, c - coarse), min(len(cands), c + coarse + 1)):
                    if dist(i) == 0:
                        break
                if tried[min(tried, key=tried.get)] == 0:
                    break
            best = min(tried, key=tried.get)
        none = next((tried.get(i, float("nan")) for i in range(len(cands))
                     if cands[i][0] == "none"), float("nan"))
        op, arg = cands[best]
        return op, arg, tried[best], none


def _scale_of(img: np.ndarray, standardize) -> str:
    if img.dtype == np.uint8 or not standardize:
        return "levels"
    return "unit" if standardize in (True, "unit") else "affine"


def decode(tracer: "Tracer", image, *, augment: str = "xyrjb", standardize=None,
           layout: str | None = None) -> dict:
    """Everything one yielded image tells (spec/audit.md, "Traceable tiles"): the
    record (``rid``, ``slide``, ``tfrecord``, ``index``, ``loc``), the symmetry and the
    assignments of ``augment``'s x/y/r characters that give it, and the JPEG quality
    and blur sigma estimated (None: not applied) when ``augment`` has 'j' / 'b'.
    ``standardize``: what the loader was asked for (False/None: uint8; True or
    'unit'; 'per_image'); ``layout`` 'HWC'/'CHW' or None (detected)."""
    img, layout = image_hwc(image, layout)
    t = tracer.identify(img)
    out = {"layout": layout, "rid": t.rid, "flat": t.flat, "symmetry": t.symmetry,
           "score": t.score, "margin": t.margin}
    if t.rid is None:
        return out
    rec = tracer.records[t.rid]
    out.update(slide=rec.slide, tfrecord=rec.path, index=rec.index, loc=rec.loc)
    if t.flat:
        return out
    out["xyr"] = explain_symmetry(t.symmetry, augment)
    scale = _scale_of(img, standardize)
    quals = list(range(30, 101)) if "j" in augment else []
    best = None
    for sigma in [None] + ([0.5, 1.0, 1.5, 2.0, 2.5, 3.0] if "b" in augment else []):
        if sigma is None:
            cands = [("none", None)] + [("jpeg", q) for q in quals]
        else:
            cands = [("blur", sigma)] + [("jpeg+blur", (q, sigma)) for q in quals]
        r = tracer.classify(img, t.rid, t.symmetry, cands, scale, coarse=5)
        if best is None or r[2] < best[2]:
            best = r
        if best[2] == 0:
            break
    op, arg, d, _ = best
    out["jpeg"] = arg if op == "jpeg" else arg[0] if op == "jpeg+blur" else None
    out["blur"] = arg if op == "blur" else arg[1] if op == "jpeg+blur" else None
    out["distance"] = d
    return out


__all__ = ["write_traceable_dataset", "decode", "Tracer", "Trace", "Record", "SYMMETRIES",
           "apply_symmetry", "symmetry_of", "true_labels", "explain_symmetry", "image_hwc",
           "traceable_tile", "DEFAULT_SLIDES", "FLAT_LEVELS", "MIN_DISTANCE"]
