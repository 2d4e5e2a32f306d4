"""Resize kernels as separable weight matrices (spec/images.md, "Resize").

A resize of an H x W image to h x w is two matrix products, one per axis:
``out = A_h @ img @ A_w.T`` (per channel), where ``A_h`` is an h x H and
``A_w`` a w x W matrix of weights. :func:`resize_weights` builds one such
matrix for each method of ``tf.image.resize`` (TensorFlow 2.x), reproducing its
sample positions, kernels, antialiasing and border handling. The positions and
kernel values are evaluated in float32, in the order TensorFlow evaluates them,
so the weights equal TensorFlow's up to the last bit of a float32 ``sin`` or
``exp``; the products themselves are taken in float64.

Which TensorFlow kernel serves which (method, antialias) pair:

=============  ===============================  ==============================
method         antialias=True                   antialias=False
=============  ===============================  ==============================
lanczos3       ScaleAndTranslate, Lanczos r=3   ScaleAndTranslate, not widened
lanczos5       ScaleAndTranslate, Lanczos r=5   ScaleAndTranslate, not widened
gaussian       ScaleAndTranslate, Gaussian      ScaleAndTranslate, not widened
mitchellcubic  ScaleAndTranslate, Mitchell      ScaleAndTranslate, not widened
bilinear       ScaleAndTranslate, triangle      ResizeBilinear (half-pixel)
bicubic        ScaleAndTranslate, Keys a=-0.5   ResizeBicubic (half-pixel, table)
nearest        ResizeNearestNeighbor (half-pixel), antialias ignored
area           ResizeArea, antialias ignored
=============  ===============================  ==============================
"""

from __future__ import annotations

import functools

import numpy as np

F32 = np.float32

#: Every method name :func:`resize_weights` accepts, in the order of the spec.
RESIZE_METHODS = ("lanczos3", "lanczos5", "bilinear", "bicubic", "nearest", "area",
                  "gaussian", "mitchellcubic")

_PI = F32(3.14159265359)


# --------------------------------------------------------------------------- kernels
# Each kernel takes |x| as a float32 array and returns float32 weights.

def _lanczos(radius):
    r = F32(radius)

    def k(x):
        with np.errstate(divide="ignore", invalid="ignore"):
            a = _PI * x
            v = r * np.sin(a) * np.sin(a / r) / (_PI * _PI * x * x)
        v = np.where(x.astype(np.float64) <= 1e-3, F32(1), v)
        return np.where(x > r, F32(0), v).astype(F32)

    return k, r


def _gaussian(x):
    # radius 1.5, sigma 0.5; the exponent is divided in double precision.
    v = np.exp((-x * x).astype(np.float64) / (2.0 * 0.5 * 0.5)).astype(F32)
    return np.where(x >= F32(1.5), F32(0), v)


def _triangle(x):
    return np.where(x < F32(1), F32(1) - x, F32(0)).astype(F32)


def _keys_cubic(x):
    inner = ((F32(1.5) * x - F32(2.5)) * x) * x + F32(1)
    outer = ((F32(-0.5) * x + F32(2.5)) * x - F32(4)) * x + F32(2)
    return np.where(x >= F32(2), F32(0), np.where(x >= F32(1), outer, inner)).astype(F32)


def _mitchell_cubic(x):
    inner = ((F32(7) / F32(6) * x - F32(2)) * x) * x + F32(8) / F32(9)
    outer = ((F32(-7) / F32(18) * x + F32(2)) * x - F32(10) / F32(3)) * x + F32(16) / F32(9)
    return np.where(x >= F32(2), F32(0), np.where(x >= F32(1), outer, inner)).astype(F32)


_KERNELS = {
    "lanczos3": _lanczos(3),
    "lanczos5": _lanczos(5),
    "gaussian": (_gaussian, F32(1.5)),
    "mitchellcubic": (_mitchell_cubic, F32(2)),
    "bilinear": (_triangle, F32(1)),
    "bicubic": (_keys_cubic, F32(2)),
}


# --------------------------------------------------------------------------- builders

def _scale_and_translate(in_size, out_size, method, antialias):
    """Weights of TF's ScaleAndTranslate op with scale out/in and no translation."""
    kernel, radius = _KERNELS[method]
    scale = F32(out_size) / F32(in_size)
    inv_scale = F32(1.0 / float(scale))
    kernel_scale = max(inv_scale, F32(1)) if antialias else F32(1)
    one_over_kernel_scale = F32(1) / kernel_scale
    reach = radius * kernel_scale
    w = np.zeros((out_size, in_size), np.float64)
    for x in range(out_size):
        sample = (F32(x) + F32(0.5)) * inv_scale
        start = int(np.ceil(sample - reach - F32(0.5)))
        end = int(np.floor(sample + reach - F32(0.5)))
        start = min(max(start, 0), in_size - 1)
        end = min(max(end, 0), in_size - 1) + 1
        src = np.arange(start, end)
        pos = (src.astype(F32) + F32(0.5)) - sample
        kw = kernel(np.abs(pos * one_over_kernel_scale))
        total = F32(0)
        for v in kw:  # sequential float32 sum, as TF
            total = F32(total + v)
        if abs(total) >= 1000.0 * np.finfo(F32).tiny:
            w[x, start:end] = kw * (F32(1) / total)
    return w


def _bilinear_half_pixel(in_size, out_size):
    """Weights of TF's ResizeBilinear with half_pixel_centers=True."""
    scale = F32(in_size) / F32(out_size)
    w = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        pos = (F32(i) + F32(0.5)) * scale - F32(0.5)
        fl = np.floor(pos)
        lower = max(int(fl), 0)
        upper = min(int(np.ceil(pos)), in_size - 1)
        lerp = float(pos - fl)
        w[i, lower] += 1.0 - lerp
        w[i, upper] += lerp
    return w


@functools.lru_cache(maxsize=None)
def _keys_table():
    """TF's 1025-entry Keys cubic (a = -0.5) table: K(t) and K(t + 1), t = i / 1024."""
    a = -0.5
    t = np.arange(1025, dtype=np.float64) / 1024.0
    near = (((a + 2) * t - (a + 3)) * t * t + 1).astype(F32)
    t1 = t + 1.0
    far = (((a * t1 - 5 * a) * t1 + 8 * a) * t1 - 4 * a).astype(F32)
    return near, far


def _bicubic_half_pixel(in_size, out_size):
    """Weights of TF's ResizeBicubic with half_pixel_centers=True.

    Four taps from a table of the Keys kernel at multiples of 1/1024; taps
    outside the image get weight 0 and the remaining ones are renormalized.
    """
    near, far = _keys_table()
    scale = F32(in_size) / F32(out_size)
    w = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        pos = (F32(i) + F32(0.5)) * scale - F32(0.5)
        base = int(np.floor(pos))
        delta = pos - F32(base)
        off = int(np.rint(delta * F32(1024)))
        taps = [far[off], near[off], near[1024 - off], far[1024 - off]]
        idx = [base - 1, base, base + 1, base + 2]
        taps = [t if 0 <= j < in_size else F32(0) for t, j in zip(taps, idx)]
        total = F32(F32(F32(taps[0] + taps[1]) + taps[2]) + taps[3])
        if abs(total) >= 1000.0 * np.finfo(F32).tiny:
            inv = F32(1) / total
            taps = [F32(t * inv) for t in taps]
        for t, j in zip(taps, idx):
            w[i, min(max(j, 0), in_size - 1)] += float(t)
    return w


def _nearest_index(in_size, out_size):
    """Source index of every output pixel for TF's ResizeNearestNeighbor (half-pixel)."""
    scale = F32(in_size) / F32(out_size)
    pos = (np.arange(out_size, dtype=F32) + F32(0.5)) * scale
    return np.clip(np.floor(pos).astype(np.int64), 0, in_size - 1)


def _area(in_size, out_size):
    """Weights of TF's ResizeArea: the overlap of each output cell with each input pixel."""
    scale = F32(in_size) / F32(out_size)
    w = np.zeros((out_size, in_size), np.float64)
    for o in range(out_size):
        lo = F32(o) * scale
        hi = F32(o + 1) * scale
        for i in range(int(np.floor(lo)), int(np.ceil(hi))):
            if i < lo:
                part = scale if i + 1 > hi else F32(i + 1) - lo
            else:
                part = hi - F32(i) if i + 1 > hi else F32(1)
            w[o, min(max(i, 0), in_size - 1)] += float(part) / float(scale)
    return w


def _check_size(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


def check_method(method):
    """Return ``method`` if it names a resize method, else raise ValueError listing them."""
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; valid methods are "
                         f"{', '.join(RESIZE_METHODS)}")
    return method


@functools.lru_cache(maxsize=256)
def _weights_cached(in_size, out_size, method, antialias):
    if method == "nearest":
        w = np.zeros((out_size, in_size), np.float64)
        w[np.arange(out_size), _nearest_index(in_size, out_size)] = 1.0
    elif method == "area":
        w = _area(in_size, out_size)
    elif method == "bilinear" and not antialias:
        w = _bilinear_half_pixel(in_size, out_size)
    elif method == "bicubic" and not antialias:
        w = _bicubic_half_pixel(in_size, out_size)
    else:
        w = _scale_and_translate(in_size, out_size, method, antialias)
    w.setflags(write=False)
    return w


def resize_weights(in_size, out_size, method="lanczos3", antialias=True) -> np.ndarray:
    """The out_size x in_size float64 matrix that resizes one axis like tf.image.resize.

    Row ``o`` holds the weight of every input pixel in output pixel ``o``; a
    2-D resize applies one matrix per axis. ``antialias`` has no effect for
    'nearest' and 'area', nor when ``out_size >= in_size``.
    See spec/images.md, "Resize". Returns a new writable array.
    """
    in_size = _check_size(in_size, "in_size")
    out_size = _check_size(out_size, "out_size")
    check_method(method)
    return _weights_cached(in_size, out_size, method, bool(antialias)).copy()


def nearest_index(in_size, out_size) -> np.ndarray:
    """Source index of every output pixel for method 'nearest' (spec/images.md, "Resize")."""
    return _nearest_index(_check_size(in_size, "in_size"), _check_size(out_size, "out_size"))


def weights_readonly(in_size, out_size, method, antialias):
    """The weight matrix of :func:`resize_weights`, cached and read-only: the one copy the
    reference and the adapters share, which callers must not modify (spec/images.md,
    "Separable form")."""
    return _weights_cached(int(in_size), int(out_size), method, bool(antialias))


#: Output rows per block of :func:`band_blocks`.
BAND_BLOCK_ROWS = 16


def band_blocks(w, rows=BAND_BLOCK_ROWS):
    """The non-zero band of a weight matrix, as blocks (internal).

    Returns a tuple of ``(o0, o1, i0, i1, block)``: output rows [o0, o1) take
    their non-zero weights only from input columns [i0, i1), and ``block`` is
    the contiguous read-only copy of ``w[o0:o1, i0:i1]``. Row blocks whose
    weights are all zero are left out (their outputs are 0). Applying the
    blocks gives the product with ``w`` without its zero terms.
    """
    w = np.asarray(w)
    nonzero = w != 0
    blocks = []
    for o0 in range(0, w.shape[0], rows):
        o1 = min(o0 + rows, w.shape[0])
        cols = np.flatnonzero(nonzero[o0:o1].any(axis=0))
        if cols.size == 0:
            continue
        i0, i1 = int(cols[0]), int(cols[-1]) + 1
        block = np.ascontiguousarray(w[o0:o1, i0:i1], dtype=np.float64)
        block.setflags(write=False)
        blocks.append((o0, o1, i0, i1, block))
    return tuple(blocks)


@functools.lru_cache(maxsize=256)
def _bands_cached(in_size, out_size, method, antialias):
    return band_blocks(_weights_cached(in_size, out_size, method, antialias))


def weights_bands(in_size, out_size, method, antialias):
    """Cached :func:`band_blocks` of :func:`weights_readonly` (internal)."""
    return _bands_cached(int(in_size), int(out_size), method, bool(antialias))


__all__ = ["RESIZE_METHODS", "resize_weights", "nearest_index", "check_method",
           "weights_readonly"]
