"""Conformance testing tools, importable by anyone (spec/adapters.md, "Conformance").

- :func:`assert_conforms` compares a loader's stream with the reference's item by
  item, with the tolerances of spec/images.md, and reports the first difference
  (which item, which field, by how much).
- :func:`image_tolerance` states those tolerances for a set of loader options.
- Hypothesis strategies for images, augmentation strings, tile dataset layouts and
  sampling configurations, and :func:`write_tile_dataset` to put a layout on disk.

hypothesis is only needed for the strategies (imported lazily).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from .augment import parse_augment

FIELDS_ALL = ("image", "label", "slide", "loc_x", "loc_y")

#: Bound, in grey levels, of each operation that is not exact across backends
#: (spec/images.md and spec/stain.md, "Conformance").
LEVELS = {"resize": 1, "blur": 1, "reinhard": 1, "reinhard_fast": 1, "reinhard_mask": 1,
          "reinhard_fast_mask": 1, "macenko": 2, "macenko_fast": 2}  # spec/stain.md's rows by family
#: Bounds when a JPEG round trip follows an inexact operation: a one-level change can
#: move a DCT coefficient across a quantization step.
JPEG_AFTER_INEXACT = (32, 0.5)  # (max |diff|, mean |diff|) in grey levels
#: Pixels one JPEG coding decision can change: a 4:2:0 MCU (16 x 16; the reference's
#: JPEG uses subsampling 4:2:0) plus the one-pixel ring that libjpeg's fancy chroma
#: upsampling reaches into the neighbouring MCUs: 18 x 18.
JPEG_DECISION_PX = 18 * 18


class ConformanceError(AssertionError):
    """A loader's stream differs from the reference's."""


@dataclass(frozen=True)
class Tolerance:
    """Allowed difference of the uint8 images a pipeline makes, in grey levels: max and
    mean absolute difference (spec/adapters.md, "Conformance").

    ``block_px`` > 0 (a JPEG round trip after an inexact step): one JPEG coding
    decision changes up to ``block_px`` pixels by up to ``max_abs``, so the mean
    bound of an image of P pixels is at least ``max_abs * block_px / P``
    (:meth:`mean_bound`). Standardized images are compared in grey levels of the
    reference; for 'per_image' the bounds are carried through the standardization
    (:meth:`per_image_bounds`).
    """

    max_abs: float = 0.0
    mean_abs: float = 0.0
    block_px: int = 0

    @property
    def exact(self) -> bool:
        return self.max_abs == 0

    def mean_bound(self, pixels: int) -> float:
        """The mean bound for an image of ``pixels`` pixels (H x W): ``mean_abs``,
        raised to one coding decision's worth, ``max_abs * block_px / pixels``, and
        at most ``max_abs``."""
        if not self.block_px or pixels <= 0:
            return self.mean_abs
        return min(self.max_abs, max(self.mean_abs, self.max_abs * self.block_px / pixels))

    def per_image_bounds(self, z: np.ndarray, sigma: float) -> tuple:
        """Bounds, in the reference's grey levels, on ``|got - ref| * sigma`` for
        'per_image' standardized images whose uint8 sources differ within this
        tolerance: ``(per-element max bounds, mean bound)``.

        ``z`` is the reference's standardized image (one image, HWC) and ``sigma``
        its adjusted std in grey levels. With d = max_abs, m = the mean bound of
        the image and s = sqrt(d * m) (the largest std the uint8 difference can
        have, since its mean square is at most d * m), the means differ by at most
        m and the adjusted stds by at most s, so element i differs by at most
        ``r * (d + m + |z_i| * s)`` levels and the mean by ``r * (2 m + s *
        rms(z))``, where r = sigma / (sigma - s) (unbounded when sigma <= s).
        """
        z = np.abs(np.asarray(z, dtype=np.float64))
        d = float(self.max_abs)
        if d == 0:
            return np.zeros(z.shape), 0.0
        m = self.mean_bound(z.shape[-3] * z.shape[-2] if z.ndim >= 3 else z.size)
        s = math.sqrt(d * m)
        r = sigma / (sigma - s) if sigma > s else math.inf
        rms = float(np.sqrt(np.mean(z * z))) if z.size else 0.0
        return r * (d + m + z * s), r * (2 * m + s * rms)


def image_tolerance(options: Mapping | None = None) -> Tolerance:
    """The image tolerance of a loader built with ``options`` (spec/images.md, "Conformance").

    Exact (0) unless the pipeline has inexact steps: resize (other than
    'nearest'), blur ('b'), stain normalization. Their bounds add up; a JPEG
    round trip ('j') after an inexact step widens the bound to
    :data:`JPEG_AFTER_INEXACT`, with a mean bound of at least one JPEG coding
    decision's worth on small images (``block_px`` = :data:`JPEG_DECISION_PX`);
    inexact steps after it add to both bounds. The bounds are on the uint8
    images; standardized images are compared through them (spec/adapters.md).
    """
    options = dict(options or {})
    augment = parse_augment(options.get("augment", False))
    inexact = 0
    norm = options.get("normalizer")
    if options.get("resize_target") is not None and \
            options.get("resize_method", "lanczos3") != "nearest":
        inexact += LEVELS["resize"]
    if norm is not None:
        method = norm if isinstance(norm, str) else getattr(norm, "method", "macenko")
        inexact += LEVELS.get(method, 2)
    top, mean, block = float(inexact), float(inexact), 0
    for c in augment:
        if c == "b":
            top += LEVELS["blur"]
            mean += LEVELS["blur"]
        elif c == "j" and top > 0:
            top, mean, block = *map(float, JPEG_AFTER_INEXACT), JPEG_DECISION_PX
    return Tolerance(top, mean, block)


def to_numpy(x):
    """NumPy view of a torch tensor, TF tensor, array or scalar; None stays None.

    Bytes become str: a bytes scalar (a TF scalar ``tf.string``) a 0-d str array,
    like a str gives; arrays of bytes str arrays of the same shape."""
    if x is None:
        return None
    if hasattr(x, "detach"):              # torch
        x = x.detach().cpu().numpy()
    elif hasattr(x, "numpy") and not isinstance(x, np.ndarray):   # tf
        x = x.numpy()
    if isinstance(x, bytes):
        return np.asarray(x.decode("utf-8"))  # a 0-d str array, like a str would give
    if isinstance(x, (list, tuple)):
        return np.array([to_numpy(v) for v in x])
    arr = np.asarray(x)
    if arr.dtype.kind in "SO":
        flat = [v.decode("utf-8") if isinstance(v, bytes) else v for v in arr.ravel().tolist()]
        arr = np.array(flat, dtype=str).reshape(arr.shape) if flat else arr.astype(str)
    return arr


def field_names(n: int, options: Mapping | None):
    """The names of a batch's fields (image, label, then slide and loc_x, loc_y when
    included): from the loader ``options`` when given, else from the field count ``n``
    (spec/adapters.md, "Conformance")."""
    if options is not None:
        names = ["image", "label"]
        if options.get("incl_slidenames"):
            names.append("slide")
        if options.get("incl_loc"):
            names += ["loc_x", "loc_y"]
        return names
    return {2: ["image", "label"], 3: ["image", "label", "slide"],
            4: ["image", "label", "loc_x", "loc_y"], 5: list(FIELDS_ALL)}.get(
                n, [f"field {k}" for k in range(n)])


def _levels_per_unit(ref: np.ndarray, mode: str) -> float:
    """Grey levels per unit of a standardized image (1/scale)."""
    if mode == "unit":
        return 127.5
    u = np.unique(ref.astype(np.float64))
    gaps = np.diff(u)
    gaps = gaps[gaps > 1e-7]
    return 1.0 / gaps.min() if len(gaps) else 1.0


def _describe_bound(top) -> str:
    if np.ndim(top) == 0:
        return f"{float(top):g}"
    return f"{float(np.min(top)):.4g} to {float(np.max(top)):.4g} (per element)"


def _compare_image(got, ref, tol: Tolerance, layout: str, where: str, batched: bool):
    if layout == "CHW":
        got = np.moveaxis(got, -3, -1)
    if got.shape != ref.shape:
        raise ConformanceError(f"{where}, field 'image': shape {got.shape} (as HWC), "
                               f"reference {ref.shape}")
    if (got.dtype == np.uint8) != (ref.dtype == np.uint8):
        raise ConformanceError(f"{where}, field 'image': dtype {got.dtype}, reference "
                               f"{ref.dtype}")
    rows = range(len(ref)) if batched else [None]
    for r in rows:
        g = got if r is None else got[r]
        f = ref if r is None else ref[r]
        at = where if r is None else f"{where}, row {r}"
        pixels = f.shape[-3] * f.shape[-2] if f.ndim >= 3 else f.size
        top, mean_bound, how = tol.max_abs, tol.mean_bound(pixels), ""
        if f.dtype == np.uint8:
            diff = np.abs(g.astype(np.int16) - f.astype(np.int16)).astype(np.float64)
            slack = 0.0
        else:
            mode = "unit" if f.min() >= -1 - 1e-6 and f.max() <= 1 + 1e-6 and \
                np.allclose(np.round((f + 1) * 127.5), (f + 1) * 127.5, atol=1e-3) \
                else "per_image"
            scale = _levels_per_unit(f, mode)
            diff = np.abs(g.astype(np.float64) - f.astype(np.float64)) * scale
            slack = 1e-3  # float32 rounding, in grey levels
            if mode == "per_image" and not tol.exact:
                top, mean_bound = tol.per_image_bounds(f, scale)
                how = " (the uint8 bounds carried through 'per_image')"
        excess = diff - top
        worst = float(diff.max()) if diff.size else 0.0
        mean = float(diff.mean()) if diff.size else 0.0
        if (diff.size and float(excess.max()) > slack) or mean > mean_bound + slack:
            k = int(excess.argmax()) if diff.size else 0
            idx = tuple(int(i) for i in np.unravel_index(k, diff.shape))
            allowed = top if np.ndim(top) == 0 else float(top[idx])
            raise ConformanceError(
                f"{at}, field 'image': max |diff| {worst:.4g} grey levels, mean {mean:.4g}; "
                f"allowed max {_describe_bound(top)}, mean {mean_bound:.4g}{how}; worst "
                f"against its bound at (h, w, c) {idx}: got {g[idx]!r}, reference "
                f"{f[idx]!r}, |diff| {float(diff[idx]):.4g}, allowed there {allowed:.4g}")


def _compare_field(name, got, ref, where):
    if name == "label" and ref is None and got is not None and to_numpy(got).size == 0:
        # "no label" as an empty array: the torch indexed dataset's, so that
        # default_collate can batch it (spec/adapter_torch.md, "Indexed dataset")
        return
    if ref is None or got is None:
        if not (ref is None and got is None):
            raise ConformanceError(f"{where}, field {name!r}: {got!r}, reference {ref!r}")
        return
    g, f = to_numpy(got), to_numpy(ref)
    if g.shape != f.shape:
        raise ConformanceError(f"{where}, field {name!r}: shape {g.shape}, reference {f.shape}")
    if f.dtype.kind == "f" or g.dtype.kind == "f":
        ok = np.allclose(g.astype(np.float64), f.astype(np.float64), rtol=1e-6, atol=1e-6)
    else:
        ok = np.array_equal(g, f)
    if not ok:
        bad = np.flatnonzero((g != f).ravel()) if g.shape else [0]
        k = int(bad[0]) if len(bad) else 0
        gv = (g.ravel()[k] if g.shape else g).item()
        fv = (f.ravel()[k] if f.shape else f).item()
        raise ConformanceError(f"{where}, field {name!r}: {gv!r}, reference {fv!r}"
                               + (f" (row {k})" if g.shape else ""))


def assert_conforms(loader: Iterable, reference: Iterable, *, n: int | None = None,
                    layout: str = "HWC", options: Mapping | None = None,
                    tolerance: Tolerance | None = None) -> int:
    """Check ``loader`` yields the reference's stream; return the items compared.

    ``n`` items (or batches) are compared (required for infinite loaders;
    default: until both end, which must happen together). ``layout`` is the
    loader's image layout ('HWC' or 'CHW'). ``options`` are the loader's
    keyword arguments (field names, batching and the image tolerance via
    :func:`image_tolerance`; override with ``tolerance``). Raises
    :class:`ConformanceError` naming the first differing item, field and amount.
    """
    if layout not in ("HWC", "CHW"):
        raise ValueError(f"layout must be 'HWC' or 'CHW', got {layout!r}")
    tol = tolerance or image_tolerance(options)
    batched = bool(options and options.get("batch_size"))
    a, b = iter(loader), iter(reference)
    count = 0
    sentinel = object()
    while n is None or count < n:
        got = next(a, sentinel)
        ref = next(b, sentinel)
        if got is sentinel or ref is sentinel:
            if got is sentinel and ref is sentinel:
                break
            who = "loader" if got is sentinel else "reference"
            raise ConformanceError(f"the {who} ended after {count} "
                                   f"{'batches' if batched else 'items'}; the other goes on")
        where = f"{'batch' if batched else 'item'} {count}"
        got, ref = tuple(got), tuple(ref)
        if len(got) != len(ref):
            raise ConformanceError(f"{where}: {len(got)} fields, reference {len(ref)}")
        names = field_names(len(ref), options)
        for name, g, f in zip(names, got, ref):
            if name == "image":
                _compare_image(to_numpy(g), to_numpy(f), tol, layout, where, batched)
            else:
                _compare_field(name, g, f, where)
        count += 1
    return count


# ------------------------------------------------------------------------ datasets on disk
@dataclass(frozen=True)
class TileDatasetLayout:
    """A small tile dataset to write: per slide (name, patient, category, tiles)."""

    slides: tuple
    tile_px: int = 16
    seed: int = 0
    with_loc: bool = True
    image_format: str = "jpeg"


def write_tile_dataset(layout: TileDatasetLayout, root) -> dict:
    """Write ``layout`` under ``root``: one tfrecord per slide plus annotations.csv.

    Tiles are random-noise-plus-gradient images (deterministic in the layout's
    seed); loc_x = tile index, loc_y = slide index, so (slide, loc_x) names a record.
    Returns ``{"tfrecords": folder, "annotations": csv, "paths": [...]}``.
    """
    from PIL import Image

    from .annotations import write_annotations_csv
    from .example import encode_tile
    from .records import write_records

    root = os.fspath(root)
    folder = os.path.join(root, "tfrecords")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for s, (slide, patient, category, tiles) in enumerate(layout.slides):
        rng = np.random.default_rng([layout.seed, s])
        recs = []
        for i in range(tiles):
            px = layout.tile_px
            grad = np.linspace(0, 160, px)[None, :, None] + np.linspace(0, 60, px)[:, None, None]
            img = np.clip(grad + rng.normal(0, 30, (px, px, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            if layout.image_format == "png":
                Image.fromarray(img).save(buf, format="PNG")
            else:
                Image.fromarray(img).save(buf, format="JPEG", quality=90)
            loc = (i, s) if layout.with_loc else (None, None)
            recs.append(encode_tile(buf.getvalue(), slide, *loc))
        path = os.path.join(folder, f"{slide}.tfrecords")
        write_records(path, recs)
        paths.append(path)
    ann = write_annotations_csv(os.path.join(root, "annotations.csv"),
                                ["patient", "slide", "category"],
                                [[patient, slide, category]
                                 for slide, patient, category, _ in layout.slides])
    return {"tfrecords": folder, "annotations": ann, "paths": paths}


# ------------------------------------------------------------------------ strategies
def images(min_side: int = 1, max_side: int = 32, batch: bool = False):
    """Hypothesis strategy: HWC (or NHWC with ``batch``) uint8 RGB images."""
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    def shape(draw_h, draw_w, draw_n):
        return (draw_n, draw_h, draw_w, 3) if batch else (draw_h, draw_w, 3)

    side = st.integers(min_side, max_side)
    n = st.integers(1, 4) if batch else st.just(None)
    return st.tuples(side, side, n).flatmap(
        lambda t: hnp.arrays(np.uint8, shape(*t), elements=st.integers(0, 255)))


def augment_strings(chars: str = "xyrjb", max_size: int = 6):
    """Hypothesis strategy: augmentation arguments (strings over ``chars``, True, False, None)."""
    from hypothesis import strategies as st

    return st.one_of(st.text(alphabet=chars, max_size=max_size),
                     st.sampled_from([True, False, None]))


def tile_dataset_layouts(max_slides: int = 4, max_tiles: int = 6, tile_px: int = 16):
    """Hypothesis strategy: :class:`TileDatasetLayout` with 1..max_slides slides of
    1..max_tiles tiles, 1..3 patients and two categories."""
    from hypothesis import strategies as st

    @st.composite
    def layouts(draw):
        n = draw(st.integers(1, max_slides))
        slides = tuple((f"slide{s}", f"patient{draw(st.integers(0, 2))}",
                        draw(st.sampled_from(["a", "b"])), draw(st.integers(1, max_tiles)))
                       for s in range(n))
        return TileDatasetLayout(slides, tile_px=tile_px, seed=draw(st.integers(0, 2**16)))

    return layouts()


def sampling_configs(max_replicas: int = 3, max_batch: int = 5):
    """Hypothesis strategy: loader keyword arguments of the sampling chapter
    (seed, infinite, shuffle, rank/num_replicas, batch_size, drop_last, uneven,
    elastic)."""
    from hypothesis import strategies as st

    @st.composite
    def configs(draw):
        R = draw(st.integers(1, max_replicas))
        return {"seed": draw(st.integers(0, 2**63 - 1)), "infinite": draw(st.booleans()),
                "shuffle": draw(st.booleans()), "rank": draw(st.integers(0, R - 1)),
                "num_replicas": R, "batch_size": draw(st.one_of(st.none(),
                                                                st.integers(1, max_batch))),
                "drop_last": draw(st.booleans()),
                "uneven": draw(st.sampled_from(["pad", "drop"])),
                "elastic": draw(st.booleans())}

    return configs()


# ------------------------------------------------------------------------ edge images
#: The kinds of image :func:`edge_images` draws (spec/adapters.md, "Conformance").
EDGE_KINDS = ("random", "constant", "nearly_constant", "saturated", "ties", "ramp")


def _edge_image(kind: str, shape: tuple, a: int, seed: int) -> np.ndarray:
    """One image of ``kind`` (see :func:`edge_images`); ``a`` a grey level, ``seed``
    the rest of the pattern."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    if kind == "constant":
        return np.full(shape, a, np.uint8)
    if kind == "nearly_constant":
        # a constant image with one value (or a few) one level off: the std is just
        # above 0, about 1/sqrt(N), where per_image's floor max(std, 1/sqrt(N)) acts
        img = np.full(shape, a, np.uint8)
        flat = img.reshape(-1)
        step = 1 if a < 255 else -1
        for i in rng.choice(flat.size, size=min(flat.size, int(rng.integers(1, 4))),
                            replace=False):
            flat[i] = a + step
        return img
    if kind == "saturated":
        # mostly 0 and 255, some one level inside: clipping at both ends
        return rng.choice(np.array([0, 0, 255, 255, 1, 254], np.uint8), size=shape)
    if kind == "ties":
        # two levels one apart in a checkerboard (per channel offset): averages of two
        # or four neighbours (area and bilinear resizes by 2, blur of a flat pair) fall
        # on exact halves, where rounding must go to even
        lo = min(a, 254)
        h, w = shape[-3], shape[-2]
        board = (np.add.outer(np.arange(h), np.arange(w)) + rng.integers(0, 2)) % 2
        img = (lo + board[..., None] * np.ones(3, int)).astype(np.uint8)
        return np.broadcast_to(img, shape).copy()
    if kind == "ramp":
        # every level once along the flattened image: every rounding boundary is met
        return ((np.arange(int(np.prod(shape))) + a) % 256).astype(np.uint8).reshape(shape)
    raise ValueError(f"unknown edge image kind {kind!r}; kinds: {', '.join(EDGE_KINDS)}")


def edge_images(min_side: int = 1, max_side: int = 24, batch: bool = False, kinds=EDGE_KINDS):
    """Hypothesis strategy: HWC (NHWC with ``batch``) uint8 images that reach the edge
    regions of the ops (spec/adapters.md, "Conformance"): random, constant (0 and 255
    included), nearly constant (std just above 0), saturated at 0/255, rounding ties
    (levels a, a+1 in a checkerboard), a ramp of every level; and thin shapes:
    1 x 1, 1 x W, H x 1, as often as the rest."""
    from hypothesis import strategies as st

    side = st.one_of(st.just(min_side), st.integers(min_side, max_side))  # thin often
    level = st.one_of(st.sampled_from([0, 1, 127, 128, 254, 255]), st.integers(0, 255))

    @st.composite
    def draw_image(draw):
        kind = draw(st.sampled_from(tuple(kinds)))
        h, w = draw(side), draw(side)
        shape = (draw(st.integers(1, 3)), h, w, 3) if batch else (h, w, 3)
        return _edge_image(kind, shape, draw(level), draw(st.integers(0, 2**32 - 1)))

    return draw_image()


def tie_floats(max_side: int = 8):
    """Hypothesis strategy: HWC float32 arrays for ``to_uint8`` whose values sit at
    rounding ties (k + 0.5) and just off them (k + 0.5 +- one float32 step), beyond
    both ends of [0, 255] and at +-inf (spec/images.md, "uint8 conversion")."""
    from hypothesis import strategies as st

    @st.composite
    def draw_floats(draw):
        h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
        rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        k = rng.integers(-3, 259, (h, w, 3)).astype(np.float32)
        half = k + np.float32(0.5)
        off = rng.integers(-1, 2, (h, w, 3))    # -1, 0, +1 float32 steps from the tie
        x = np.where(off < 0, np.nextafter(half, np.float32(-np.inf)),
                     np.where(off > 0, np.nextafter(half, np.float32(np.inf)), half))
        x = x.astype(np.float32)
        special = rng.random((h, w, 3))
        x[special < 0.03] = np.inf
        x[(special >= 0.03) & (special < 0.06)] = -np.inf
        x[(special >= 0.06) & (special < 0.1)] = k[(special >= 0.06) & (special < 0.1)]
        return x

    return draw_floats()


# ------------------------------------------------------------------------ loader options
def invert(img):
    """A transform every framework can apply to its uint8 images: 255 - img (uint8 in,
    uint8 out). Module level, so loaders with worker processes can pickle it."""
    return 255 - img


#: The label variants :func:`loader_options` draws (resolved by :func:`resolve_labels`).
LABEL_KINDS = (None, "category", "float", "multi")
#: Marks an option left out, so that its default is what is tested.
ABSENT = "<absent>"


def resolve_labels(kind, slides) -> dict | None:
    """The ``labels`` mapping of a :data:`LABEL_KINDS` entry for ``slides`` (sorted):
    None, categorical indices (the 'category' header of :func:`write_tile_dataset`'s
    annotations is left to the caller as the header name), floats, or two-outcome lists."""
    if kind is None or kind == "category":
        return kind
    slides = sorted(slides)
    if kind == "float":
        return {s: 0.5 + k for k, s in enumerate(slides)}
    if kind == "multi":
        return {s: [k, 2 * k + 1] for k, s in enumerate(slides)}
    raise ValueError(f"unknown label kind {kind!r}; kinds: {LABEL_KINDS}")


def image_options(tile_px: int = 16, methods=None):
    """Hypothesis strategy: the image options of a loader over ``tile_px`` tiles, from
    the whole option space (spec/images.md, "Pipeline order"): ``normalizer`` absent or
    each method of ``methods`` (default every reference method, as a name or a
    :class:`~tilespec.StainNormalizer`), ``augment`` (strings over 'xyrjb', True,
    False, None, with 'n' inserted or not when there is a normalizer), crop and resize
    (every method, antialias on and off), ``transform`` (absent or :func:`invert`),
    ``standardize`` (absent, False, True, 'unit', 'per_image'). An option drawn as
    absent is left out of the dict, so the default is tested."""
    from hypothesis import strategies as st

    from .resize import RESIZE_METHODS
    from .stain import METHODS, StainNormalizer

    methods = tuple(METHODS if methods is None else methods)

    @st.composite
    def draw_options(draw):
        out = {}
        method = draw(st.one_of(st.none(), st.sampled_from(methods)))
        aug = draw(st.one_of(st.sampled_from([ABSENT, True, False, None, ""]),
                             st.text(alphabet="xyrjb", min_size=1, max_size=4)))
        if method is not None:
            form = draw(st.sampled_from(["name", "error", "passthrough"]))
            out["normalizer"] = (method if form == "name" else
                                 StainNormalizer(method, on_blank=form))
            if draw(st.booleans()):      # stain augmentation too
                base = "xyrjb" if aug is True else ("" if aug in (ABSENT, False, None)
                                                    else aug)
                k = draw(st.integers(0, len(base)))
                aug = base[:k] + "n" + base[k:]
        if aug is not ABSENT:
            out["augment"] = aug
        if draw(st.booleans()):
            width = draw(st.integers(1, tile_px))
            out["crop_left"] = draw(st.integers(0, tile_px - width))
            out["crop_width"] = width
        if draw(st.booleans()):
            out["resize_target"] = draw(st.integers(1, 2 * tile_px))
            resize_method = draw(st.sampled_from((ABSENT,) + RESIZE_METHODS))
            if resize_method is not ABSENT:
                out["resize_method"] = resize_method
            aa = draw(st.sampled_from([ABSENT, True, False]))
            if aa is not ABSENT:
                out["resize_aa"] = aa
        if draw(st.booleans()):
            out["transform"] = invert
        std = draw(st.sampled_from([ABSENT, False, True, "unit", "per_image"]))
        if std is not ABSENT:
            out["standardize"] = std
        return out

    return draw_options()


def loader_options(tile_px: int = 16, *, max_replicas: int = 3, max_batch: int = 4,
                   methods=None):
    """Hypothesis strategy: keyword arguments of ``Dataset.<backend>()`` from the whole
    option space: :func:`image_options`, plus ``labels`` (a :data:`LABEL_KINDS` entry,
    to be turned into a mapping with :func:`resolve_labels`), ``incl_slidenames``,
    ``incl_loc``, ``infinite`` (absent: the default, infinite), ``shuffle``,
    ``batch_size`` (none or 1..max_batch), ``drop_last``, ``rank``/``num_replicas``
    (absent, or 1..max_replicas replicas and each rank), ``seed``
    (spec/adapters.md, "Conformance")."""
    from hypothesis import strategies as st

    @st.composite
    def draw_options(draw):
        out = draw(image_options(tile_px, methods))
        out["labels"] = draw(st.sampled_from(LABEL_KINDS))
        out["seed"] = draw(st.integers(0, 2**63 - 1))
        for name in ("incl_slidenames", "incl_loc", "shuffle", "infinite"):
            v = draw(st.sampled_from([ABSENT, False, True]))
            if v is not ABSENT:
                out[name] = v
        batch = draw(st.one_of(st.none(), st.integers(1, max_batch)))
        if batch is not None:
            out["batch_size"] = batch
            out["drop_last"] = draw(st.booleans())
        if draw(st.booleans()):
            R = draw(st.integers(1, max_replicas))
            out["num_replicas"] = R
            out["rank"] = draw(st.integers(0, R - 1))
        return out

    return draw_options()


def covering_options(tile_px: int = 16, *, indexed: bool = False,
                     num_tfrecords: int = 3) -> list:
    """A fixed list of loader (or, with ``indexed``, IndexedInterleaver) options in
    which every value of every dimension of :func:`loader_options`
    (:func:`indexed_options`) occurs at least once: example k takes value
    k mod (number of values) of each dimension, so the list is as long as the
    longest dimension (the resize methods). Given to the conformance tests as
    explicit examples beside the drawn ones, so no value depends on the draw
    (spec/adapters.md, "Conformance")."""
    from .resize import RESIZE_METHODS
    from .stain import METHODS, StainNormalizer

    px = tile_px
    norms = [None] + [(m, False) for m in METHODS] + [(m, True) for m in METHODS]
    augments = [ABSENT, True, False, None, "", "xyrjb", "jbrx", "bb"]
    crops = [None, (0, px), (px // 4, px // 2), (px - 1, 1)]
    targets = [1, px // 2 - 1, px, 2 * px]
    resizes = [None] + [(targets[k % 4], m, (ABSENT, True, False)[k % 3])
                        for k, m in enumerate(RESIZE_METHODS)]
    standardizes = [ABSENT, False, True, "unit", "per_image"]
    flags = [ABSENT, False, True]
    shards = [None, (0, 1), (1, 2), (2, 3), (0, 3)]
    labels = [None, "float", "multi"] if indexed else list(LABEL_KINDS)
    batches = [None, 1, 3, 4]
    clips = [None, [0] * num_tfrecords, list(range(1, num_tfrecords + 1)),
             [9] * num_tfrecords]
    size = max(map(len, (norms, augments, crops, resizes, standardizes, shards, labels)))
    out = []
    for k in range(size):
        def pick(values, shift=0):
            return values[(k + shift) % len(values)]
        opts = {"seed": k}
        aug = pick(augments)
        norm = pick(norms)
        crop, resize = pick(crops), pick(resizes)
        # a 1-pixel image has no stain to normalize: such a normalizer passes it through
        tiny = (crop is not None and crop[1] == 1) or (resize is not None and resize[0] == 1)
        if norm is not None:
            method, with_n = norm
            opts["normalizer"] = (StainNormalizer(method, on_blank="passthrough") if tiny
                                  else StainNormalizer(method) if k % 2 else method)
            if with_n:
                base = "xyrjb" if aug is True else ("" if aug in (ABSENT, False, None)
                                                    else aug)
                aug = base[:k % (len(base) + 1)] + "n" + base[k % (len(base) + 1):]
        if aug is not ABSENT:
            opts["augment"] = aug
        if crop is not None:
            opts["crop_left"], opts["crop_width"] = crop
        if resize is not None:
            opts["resize_target"], opts["resize_method"], aa = resize
            if aa is not ABSENT:
                opts["resize_aa"] = aa
        if pick([None, invert]) is not None:
            opts["transform"] = invert
        if pick(standardizes) is not ABSENT:
            opts["standardize"] = pick(standardizes)
        opts["labels"] = pick(labels)
        names = ("incl_slidenames", "incl_loc", "shuffle") + (() if indexed else ("infinite",))
        for shift, name in enumerate(names):
            if pick(flags, shift) is not ABSENT:
                opts[name] = pick(flags, shift)
        shard = pick(shards)
        if shard is not None:
            opts["rank"], opts["num_replicas"] = shard
        if indexed:
            if pick(clips) is not None:
                opts["clip"] = pick(clips)
            opts["epoch"] = k % 3
        elif pick(batches) is not None:
            opts["batch_size"] = pick(batches)
            opts["drop_last"] = bool(k % 2)
        out.append(opts)
    return out


def indexed_options(tile_px: int = 16, num_tfrecords: int = 3, *, max_replicas: int = 3,
                    methods=None):
    """Hypothesis strategy: keyword arguments of ``IndexedInterleaver(tfrecords, ...)``
    from the whole option space: :func:`image_options`, ``labels`` (None, 'float' or
    'multi' of :data:`LABEL_KINDS`: the indexed dataset takes a mapping),
    ``incl_slidenames``, ``incl_loc``, ``shuffle``, ``seed``, ``clip`` (absent or a list
    of ``num_tfrecords`` counts, 0 and past the end included), rank/num_replicas;
    and ``epoch`` (0..2), popped by the caller and set with ``set_epoch``."""
    from hypothesis import strategies as st

    @st.composite
    def draw_options(draw):
        out = draw(image_options(tile_px, methods))
        out["labels"] = draw(st.sampled_from([None, "float", "multi"]))
        out["seed"] = draw(st.integers(0, 2**63 - 1))
        for name in ("incl_slidenames", "incl_loc", "shuffle"):
            v = draw(st.sampled_from([ABSENT, False, True]))
            if v is not ABSENT:
                out[name] = v
        if draw(st.booleans()):
            out["clip"] = draw(st.lists(st.integers(0, 9), min_size=num_tfrecords,
                                        max_size=num_tfrecords))
        if draw(st.booleans()):
            R = draw(st.integers(1, max_replicas))
            out["num_replicas"] = R
            out["rank"] = draw(st.integers(0, R - 1))
        out["epoch"] = draw(st.integers(0, 2))
        return out

    return draw_options()


def __getattr__(name):
    # the statistical audit lives in its own module (spec/audit.md); imported on use
    if name in ("audit", "AuditReport", "Check"):
        from . import audit as _audit
        return getattr(_audit, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["audit", "AuditReport", "Check", "assert_conforms", "image_tolerance", "Tolerance", "ConformanceError", "to_numpy",
           "TileDatasetLayout", "write_tile_dataset", "images", "augment_strings",
           "tile_dataset_layouts", "sampling_configs", "LEVELS", "JPEG_AFTER_INEXACT",
           "JPEG_DECISION_PX", "edge_images", "EDGE_KINDS", "tie_floats", "image_options",
           "loader_options", "indexed_options", "covering_options", "resolve_labels", "LABEL_KINDS", "ABSENT",
           "invert", "field_names"]
