"""Stain normalization in TensorFlow graph ops (spec/stain.md; spec/adapter_tf.md, "Stain").

:func:`transform` is the TensorFlow form of :meth:`tilespec.StainNormalizer.transform`
for HWC / NHWC ``tf.uint8`` tensors, eagerly or inside ``tf.function`` / ``tf.data``
maps, with no Python in the graph (no ``numpy_function``): the TF loader runs it in
its parallel map. It takes the reference's normalizer (method, fit, augmentation,
``on_blank``, ``blank_count``) and follows the reference's formulas in the
reference's order, in float64:

* tables of the 256 levels made by the reference's own functions: sRGB decoding
  (:mod:`tilespec.colour`) and optical density (:func:`tilespec.stain.optical_density`);
* brightness standardization: the 90th percentile read off the image's histogram
  (NumPy's linear interpolation, operation for operation), then the reference's
  ``to_uint8(v * 255 / p)`` of each level (the product first, then one division, as
  spec/stain.md says; ``tf.round`` rounds ties to even): bit-exact;
* Reinhard: L*a*b* by the reference's matrices and constants, population means and
  stds, the transfer, L*a*b* -> sRGB, round and clip; the masked methods keep the
  pixels with L* >= 93 (:data:`tilespec.stain.MASK_L_THRESHOLD`);
* Macenko: tissue pixels, covariance (ddof 1), ``tf.linalg.eigh`` with the
  reference's orientation rule, angle and concentration percentiles (NumPy's
  'linear'), least squares by the 2x2 normal equations, reconstruction.

Per-image targets come in as a vector (:func:`target_vectors`: the fit plus the
reference's :func:`~tilespec.stain.draw_stain_perturbation` deltas, validated by
``normalizer.deltas``), so the augmentation rule stays the reference's.

Blank images (spec/stain.md, "Blank images") are found by the reference's rules
(a)-(c) and the Reinhard std rule, evaluated in float64 on the same values. With
``on_blank='passthrough'`` the image comes back unchanged and is counted: eagerly
in ``normalizer.blank_count``, in a graph in a ``tf.Variable`` that
``normalizer.blank_count`` includes (``add_blank_counter``). With ``'error'``:
eagerly the reference's :class:`~tilespec.stain.BlankImageError` (the reference
transforms that image and raises), in a graph a ``tf.debugging.Assert`` whose
message names the rule (``InvalidArgumentError`` when the element is computed).
"""

from __future__ import annotations

import weakref

import numpy as np
import tensorflow as tf

from tilespec import colour as _colour
from tilespec import stain as _stain
from tilespec.stain import StainNormalizationError

from .ops import check_image

F64 = tf.float64
_LEVELS = np.arange(256, dtype=np.float64)
#: sRGB decoding of each uint8 level, and the optical density of each level (the reference's).
_LINEAR = _colour.srgb_to_linear(_LEVELS / 255.0)
_OD = _stain.optical_density(np.arange(256, dtype=np.uint8))

#: Blank rule codes (0: not blank) and their messages: the reference's reasons.
BLANK_MESSAGES = ("", _stain.BLANK_REASONS["single_colour"], _stain.BLANK_REASONS["few_tissue"],
                  _stain.BLANK_REASONS["no_plane"], _stain.BLANK_REASONS["no_stain"])
_HINT = " (StainNormalizer(on_blank='passthrough') leaves such images unchanged)"


def _c(a) -> tf.Tensor:
    return tf.constant(np.asarray(a, dtype=np.float64), F64)


# ----------------------------------------------------------------------------- targets

def target_size(method: str) -> int:
    """Length of a target vector of ``method``: its fit keys flattened in
    ``FIT_SHAPES`` order, row-major (6 for Reinhard, 8 for Macenko)."""
    return sum(int(np.prod(s)) for s in _stain.FIT_SHAPES[method].values())


# The Python side (targets, counters) is never converted by autograph: it is the
# reference's code, run once while tracing.
_python = tf.autograph.experimental.do_not_convert


@_python
def target_vectors(normalizer, n: int = 1, deltas=None) -> np.ndarray:
    """(n, k) float64: each image's target (the fit, plus ``deltas[key][i]`` from
    ``normalizer.deltas``) flattened as :func:`target_size` says."""
    fit = normalizer.get_fit()
    parts = []
    for key in _stain.FIT_SHAPES[normalizer.method]:
        v = np.broadcast_to(fit[key], (n,) + fit[key].shape)
        if deltas is not None:
            v = v + deltas[key]
        parts.append(np.reshape(v, (n, -1)))
    return np.concatenate(parts, axis=1).astype(np.float64)


@_python
def stain_targets(normalizer, normal_draws) -> np.ndarray:
    """(N, k) target vectors for N images from their standard normal draws (N, k'), by the
    reference's draw (spec/stain.md, "Stain augmentation"); ``normal_draws`` None: the fit."""
    if normal_draws is None:
        return target_vectors(normalizer)
    z = np.asarray(normal_draws, dtype=np.float64)
    n = z.shape[0]
    delta = _stain.draw_stain_perturbation(normalizer, z)
    return target_vectors(normalizer, n, normalizer.deltas(n, True, True, perturbation=delta))


# ----------------------------------------------------------------------------- pieces

def _percentile_sorted(v, q: float):
    """NumPy's 'linear' q-th percentile of the sorted 1-D float64 tensor ``v``."""
    n = tf.shape(v, out_type=tf.int64)[0]
    pos = tf.cast(n - 1, F64) * (q / 100.0)
    lo = tf.minimum(tf.cast(tf.floor(pos), tf.int64), n - 1)
    hi = tf.minimum(lo + 1, n - 1)
    t = pos - tf.cast(lo, F64)
    a, b = tf.gather(v, lo), tf.gather(v, hi)
    d = b - a
    return tf.where(t >= 0.5, b - d * (1.0 - t), a + d * t)


def standardize_brightness(img):
    """Brightness standardization of one uint8 image (any shape, last axis 3), as
    spec/stain.md, "Brightness standardization": bit-exact with the reference."""
    idx = tf.cast(tf.reshape(img, [-1]), tf.int32)
    counts = tf.math.bincount(idx, minlength=256, maxlength=256, dtype=tf.int64)
    cum = tf.cumsum(counts)
    n = cum[-1]
    pos = tf.cast(n - 1, F64) * (_stain.BRIGHTNESS_PERCENTILE / 100.0)
    lo = tf.minimum(tf.cast(tf.floor(pos), tf.int64), n - 1)
    hi = tf.minimum(lo + 1, n - 1)
    t = pos - tf.cast(lo, F64)
    ranks = tf.stack([lo, hi])
    levels = tf.cast(tf.searchsorted(cum, ranks, side="right"), F64)   # level of each rank
    a, b = levels[0], levels[1]
    d = b - a
    p = tf.where(t >= 0.5, b - d * (1.0 - t), a + d * t)
    safe_p = tf.where(p == 0.0, tf.ones_like(p), p)
    table = tf.clip_by_value(tf.round(_c(_LEVELS) * 255.0 / safe_p), 0.0, 255.0)
    table = tf.where(p == 0.0, _c(_LEVELS), table)
    return tf.reshape(tf.cast(tf.gather(table, idx), tf.uint8), tf.shape(img))


def _pow(x, a: float):
    """x^a for x > 0 as exp(a ln x): within a few float64 ulps of ``np.power``, and far
    cheaper than TensorFlow's float64 ``pow`` on CPU (0.4 + ~1 ms against 12 ms for 2e5
    values, measured)."""
    return tf.exp(a * tf.math.log(x))


def _cbrt(x):
    """Cube root of x > 0: :func:`_pow` and one Newton step (``np.cbrt``'s value to ~1 ulp)."""
    y = _pow(x, 1.0 / 3.0)
    return y - (y * y * y - x) / (3.0 * y * y)


def _rgb_to_lab(pixels):
    """(P, 3) uint8 -> (P, 3) float64 L*a*b* (the reference's conversion)."""
    lin = tf.gather(_c(_LINEAR), tf.cast(pixels, tf.int32))
    xyz = tf.matmul(lin, _c(_colour.SRGB_TO_XYZ.T)) / _c(_colour.D65_WHITE)
    eps, kappa = _colour.LAB_EPSILON, _colour.LAB_KAPPA
    f = tf.where(xyz > eps, _cbrt(tf.maximum(xyz, eps)), (kappa * xyz + 16.0) / 116.0)
    fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]
    return tf.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=1)


def _lab_to_rgb(lab):
    """(P, 3) float64 L*a*b* -> sRGB in nominal [0, 1], not clipped."""
    fy = (lab[:, 0] + 16.0) / 116.0
    fx = fy + lab[:, 1] / 500.0
    fz = fy - lab[:, 2] / 200.0
    u = tf.stack([fx, fy, fz], axis=1)
    delta, kappa = _colour.LAB_DELTA, _colour.LAB_KAPPA
    xyz = tf.where(u > delta, u * u * u, (116.0 * u - 16.0) / kappa) * _c(_colour.D65_WHITE)
    lin = tf.matmul(xyz, _c(_colour.XYZ_TO_SRGB.T))
    thr = _colour.SRGB_ENCODE_THRESHOLD
    return tf.where(lin > thr, 1.055 * _pow(tf.maximum(lin, thr), 1.0 / 2.4) - 0.055,
                    12.92 * lin)


def _to_uint8_255(x):
    """x on the 0..255 scale -> uint8: round half to even, clip."""
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def _reinhard_one(img, target, brightness: bool, masked: bool):
    """(normalized HWC uint8, blank code) of one image with target vector (6,)."""
    j = standardize_brightness(img) if brightness else img
    pixels = tf.reshape(j, [-1, 3])
    lab = _rgb_to_lab(pixels)
    means = tf.reduce_mean(lab, axis=0)
    stds = tf.sqrt(tf.reduce_mean(tf.square(lab - means), axis=0))
    blank = tf.reduce_any(stds <= _stain.MIN_LAB_STD)
    safe = tf.where(stds <= _stain.MIN_LAB_STD, tf.ones_like(stds), stds)
    t_means, t_stds = target[0:3], target[3:6]
    out = _to_uint8_255(_lab_to_rgb((lab - means) * (t_stds / safe) + t_means) * 255.0)
    if masked:
        background = lab[:, 0] >= _stain.MASK_L_THRESHOLD
        out = tf.where(background[:, None], pixels, out)
    return tf.reshape(out, tf.shape(img)), tf.where(blank, 1, 0)


def _macenko_one(img, target, brightness: bool):
    """(normalized HWC uint8, blank code) of one image with target vector (8,)."""
    j = standardize_brightness(img) if brightness else img
    od = tf.gather(_c(_OD), tf.cast(tf.reshape(j, [-1, 3]), tf.int32))      # (P, 3)
    tissue = tf.reduce_all(od >= _stain.MACENKO_BETA, axis=1)
    od_t = tf.boolean_mask(od, tissue)
    n_t = tf.shape(od_t)[0]
    he_t = tf.reshape(target[0:6], [3, 2])
    maxc_t = target[6:8]
    fallback = (tf.reshape(img, [-1, 3]), tf.constant(2))

    def decompose():
        centred = od_t - tf.reduce_mean(od_t, axis=0)
        cov = tf.matmul(centred, centred, transpose_a=True) / tf.cast(n_t - 1, F64)
        eigvals, eigvecs = tf.linalg.eigh(cov)                               # ascending
        e1, e2 = eigvecs[:, 2], eigvecs[:, 1]
        e1 = tf.where(tf.reduce_sum(tf.linalg.matvec(od_t, e1)) < 0.0, -e1, e1)
        e2 = tf.where(tf.gather(e2, tf.argmax(tf.abs(e2))) < 0.0, -e2, e2)
        phi = tf.sort(tf.atan2(tf.linalg.matvec(od_t, e1), tf.linalg.matvec(od_t, e2)))
        phi_min = _percentile_sorted(phi, _stain.MACENKO_ALPHA)
        phi_max = _percentile_sorted(phi, 100.0 - _stain.MACENKO_ALPHA)
        v_min = e2 * tf.cos(phi_min) + e1 * tf.sin(phi_min)
        v_max = e2 * tf.cos(phi_max) + e1 * tf.sin(phi_max)
        first = v_min[0] - v_max[0] > _stain.MACENKO_ORDER_TIE   # the reference's tie rule
        h = tf.where(first, v_min, v_max)
        e = tf.where(first, v_max, v_min)
        he = tf.stack([h, e], axis=1)                                        # (3, 2)
        plane = eigvals[1] > _stain.MIN_EIGENVALUE
        gram = tf.matmul(he, he, transpose_a=True)
        gram = tf.where(plane, gram, tf.eye(2, dtype=F64))   # rule (b) images are not used
        conc = tf.linalg.solve(gram, tf.matmul(he, od, transpose_a=True, transpose_b=True))
        conc_sorted = tf.sort(conc, axis=1)
        max_c = tf.stack([_percentile_sorted(conc_sorted[0], _stain.MACENKO_MAXC_PERCENTILE),
                          _percentile_sorted(conc_sorted[1], _stain.MACENKO_MAXC_PERCENTILE)])
        good_c = tf.reduce_all(tf.math.is_finite(max_c)) & tf.reduce_all(max_c > 0.0)
        safe_c = tf.where(good_c, max_c, tf.ones_like(max_c))
        rec = tf.matmul(he_t, conc * (maxc_t / safe_c)[:, None])             # OD' (3, P)
        out = _to_uint8_255(_stain.MACENKO_IO * tf.exp(-tf.transpose(rec)) - 1.0)
        code = tf.where(plane, tf.where(good_c, 0, 4), 3)
        return out, code

    out, code = tf.cond(n_t < _stain.MIN_TISSUE_PIXELS, lambda: fallback, decompose)
    return tf.reshape(out, tf.shape(img)), code


def normalize_one(img, target, method: str):
    """(normalized image, blank code) of one HWC uint8 image with its target vector: the
    pure graph computation (code 0: normalized; else the blank rule, see BLANK_MESSAGES;
    the image returned for a blank code is not to be used)."""
    brightness = method in _stain.BRIGHTNESS
    if _stain.FAMILY[method] == "macenko":
        return _macenko_one(img, target, brightness)
    return _reinhard_one(img, target, brightness, method in _stain.MASKED)


# ----------------------------------------------------------------------------- blanks

_COUNTERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@_python
def blank_counter(normalizer) -> tf.Variable:
    """The int64 ``tf.Variable`` counting the blank images graphs pass through for
    ``normalizer`` (created once per normalizer, outside any graph; included in
    ``normalizer.blank_count``)."""
    var = _COUNTERS.get(normalizer)
    if var is None:
        with tf.init_scope():
            var = tf.Variable(0, dtype=tf.int64, trainable=False, name="stain_blank_count")
        normalizer.add_blank_counter(lambda v=var: int(v.numpy()))
        _COUNTERS[normalizer] = var
    return var


def graph_one(normalizer, img, target):
    """One HWC uint8 image normalized in graph ops with its target vector, blank images
    handled by ``normalizer.on_blank`` (module docstring). For ``tf.data`` maps."""
    out, code = normalize_one(img, target, normalizer.method)
    blank = code > 0
    if normalizer.on_blank == "passthrough":
        counter = blank_counter(normalizer)
        add = counter.assign_add(tf.cast(blank, tf.int64), read_value=False)
        with tf.control_dependencies([add]):
            return tf.where(blank, img, out)
    message = tf.gather(tf.constant(list(BLANK_MESSAGES)), code)
    check = tf.debugging.Assert(tf.logical_not(blank), [
        f"stain normalization ({normalizer.method!r}) of a blank image:", message, _HINT])
    with tf.control_dependencies([check]):
        return tf.identity(out)


# ----------------------------------------------------------------------------- transform

def transform(normalizer, img, *, perturbation=None) -> tf.Tensor:
    """Normalize an HWC or NHWC uint8 tensor with a :class:`tilespec.StainNormalizer` in
    TensorFlow ops; same shape, uint8 (spec/stain.md, "Transform").

    ``perturbation`` (the deltas of :func:`tilespec.stain.draw_stain_perturbation`: fit
    shapes for an HWC image, ``(N,) +`` those for a batch; validated by
    ``normalizer.deltas``) turns on stain augmentation; a batch in a graph needs a
    static batch size then. Works eagerly and inside ``tf.function``. Results are within
    spec/stain.md, "Conformance (adapters)" of the reference's; blank images as the
    module docstring says.
    """
    if not isinstance(normalizer, _stain.StainNormalizer):
        raise StainNormalizationError(f"normalizer must be a tilespec.StainNormalizer; got "
                                      f"{type(normalizer).__name__}")
    img = check_image(img, f"{normalizer.method!r} input")
    if img.shape.rank is None:
        raise StainNormalizationError(f"{normalizer.method!r} input must have a known rank "
                                      "(HWC or NHWC)")
    batch = img.shape.rank == 4
    n = (img.shape[0] if batch else 1)
    if perturbation is not None and n is None:
        raise StainNormalizationError(f"{normalizer.method!r}: a perturbation needs a static "
                                      "batch size")
    if n is None:
        targets = tf.broadcast_to(_c(target_vectors(normalizer)),
                                  [tf.shape(img)[0], target_size(normalizer.method)])
    else:
        targets = _c(_targets(normalizer, n, batch, perturbation))
    if tf.executing_eagerly():
        return _eager(normalizer, img, targets, batch, perturbation)
    if not batch:
        return graph_one(normalizer, img, targets[0])
    return tf.map_fn(lambda a: graph_one(normalizer, a[0], a[1]), (img, targets),
                     fn_output_signature=tf.uint8)


@_python
def _targets(normalizer, n, batch, perturbation):
    """(n, k) target vectors, the perturbation validated by the reference."""
    deltas = normalizer.deltas(n, batch, perturbation is not None, perturbation=perturbation)
    return target_vectors(normalizer, n, deltas)


def _eager(normalizer, img, targets, batch, perturbation):
    imgs = img if batch else img[None]
    outs, blanks = [], []
    for i in range(int(imgs.shape[0])):
        out, code = normalize_one(imgs[i], targets[i], normalizer.method)
        if int(code):
            blanks.append(i)
            out = imgs[i]
        outs.append(out)
    if blanks and normalizer.on_blank == "error":
        i = blanks[0]
        one = {k: v[i] for k, v in perturbation.items()} if batch and perturbation else perturbation
        try:    # the reference's BlankImageError, with its message and the batch index
            normalizer.transform(imgs[i].numpy(), augment=perturbation is not None,
                                 perturbation=one)
        except _stain.BlankImageError as e:
            raise _stain.BlankImageError(e.reason + _HINT, index=i if batch else None) from None
        raise _stain.BlankImageError(BLANK_MESSAGES[int(normalize_one(
            imgs[i], targets[i], normalizer.method)[1])] + _HINT, index=i if batch else None)
    normalizer.blank_count += len(blanks)
    if not outs:
        return tf.identity(img)
    out = tf.stack(outs)
    return out if batch else out[0]


__all__ = ["transform", "standardize_brightness", "graph_one", "normalize_one", "stain_targets", "target_vectors",
           "target_size", "blank_counter", "BLANK_MESSAGES"]
