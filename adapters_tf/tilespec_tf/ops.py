"""Image operations on TensorFlow tensors (spec/adapter_tf.md, "Ops"; spec/images.md).

The TensorFlow adapter's native image is a ``tf.uint8`` tensor in HWC layout,
``(H, W, 3)``, or a batch ``(N, H, W, 3)``: the reference's layout. Each op
here is the TensorFlow form of the op of the same name in :mod:`tilespec.ops`
with the same parameters and results: exact for flips, rot90, crop, JPEG and
'nearest' resize; within one grey level for blur and the other resize
kernels (float32 products, rounded ties to even); standardization within
float32 rounding. The blur kernel is the reference's
(:func:`tilespec.ops.gaussian_kernel`), never recomputed.

Every float -> uint8 conversion goes through :func:`to_uint8` (round to
nearest, ties to even, then clip): TensorFlow's bare cast truncates and wraps.

The ops work eagerly and inside ``tf.function``/``tf.data`` maps. ``rot90``'s
``k``, ``jpeg``'s ``quality`` and ``gaussian_blur``'s ``sigma`` may be Python
numbers (eager use, the conformance suite) or, for the loader, scalar tensors
(:func:`jpeg_variable`, :func:`blur_drawn`, and :func:`drawn`: a drawn step by its
op's name).
"""

from __future__ import annotations

import numbers

import numpy as np
import tensorflow as tf

from tilespec import ops as _ref
from tilespec.augment import BLUR_SIGMAS
from tilespec.images import JPEG_MAGIC

layout = "HWC"
STANDARDIZE_MODES = _ref.STANDARDIZE_MODES
RESIZE_METHODS = _ref.RESIZE_METHODS


# --------------------------------------------------------------------------- boundary

def from_numpy(img) -> tf.Tensor:
    """HWC (or NHWC) NumPy image -> a tf.Tensor of the same layout and dtype."""
    arr = np.asarray(img)
    if arr.ndim not in (3, 4):
        raise ValueError(f"from_numpy takes an HWC or NHWC image, got shape {arr.shape}")
    return tf.convert_to_tensor(arr)


def to_numpy(img) -> np.ndarray:
    """tf.Tensor (HWC or NHWC) -> NumPy array of the same layout."""
    if hasattr(img, "numpy"):
        img = img.numpy()
    return np.asarray(img)


def check_image(img, what="image") -> tf.Tensor:
    img = tf.convert_to_tensor(img)
    if img.shape.rank is not None and (img.shape.rank not in (3, 4) or
                                       img.shape[-1] not in (None, 3)):
        raise ValueError(f"{what} must be HWC or NHWC RGB (last axis 3), got shape "
                         f"{tuple(img.shape)}")
    if img.dtype != tf.uint8:
        raise ValueError(f"{what} must have dtype uint8, got {img.dtype.name} "
                         f"(shape {tuple(img.shape)}){_ref.float_image_hint(img.dtype)}")
    return img


def to_uint8(x) -> tf.Tensor:
    """Round to nearest (ties to even, ``tf.round``) and clip to [0, 255], as uint8
    (spec/images.md, "uint8 conversion"). Never a bare cast."""
    x = tf.convert_to_tensor(x)
    if x.dtype == tf.uint8:
        return x
    if not x.dtype.is_floating:
        return tf.cast(tf.clip_by_value(x, 0, 255), tf.uint8)
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


# --------------------------------------------------------------------------- decode

def decode(data) -> tf.Tensor:
    """JPEG or PNG bytes (a scalar tf.string) -> HWC uint8 RGB (spec/images.md, "Decode").

    JPEG with libjpeg's exact integer IDCT (``dct_method='INTEGER_ACCURATE'``,
    what Pillow and the reference use); PNG otherwise. Grayscale becomes three
    channels, alpha is dropped. The loader checks the magic bytes before the
    bytes reach this op, so the reference's error names the record.
    """
    data = tf.convert_to_tensor(data, tf.string)
    is_jpeg = tf.equal(tf.strings.substr(data, 0, 3), JPEG_MAGIC)
    img = tf.cond(is_jpeg,
                  lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
                  lambda: tf.io.decode_png(data, channels=3, dtype=tf.uint8))
    img.set_shape([None, None, 3])
    return img


# --------------------------------------------------------------------------- geometry

def flip_left_right(img) -> tf.Tensor:
    """Mirror the columns (spec/images.md, "Flips")."""
    img = check_image(img)
    return tf.reverse(img, axis=[-2])


def flip_up_down(img) -> tf.Tensor:
    """Mirror the rows (spec/images.md, "Flips")."""
    img = check_image(img)
    return tf.reverse(img, axis=[-3])


def rot90(img, k) -> tf.Tensor:
    """Rotate k * 90 degrees counter-clockwise, ``tf.image.rot90`` (spec/images.md, "Rotation").

    ``k`` is an integer (taken modulo 4) or an int32 scalar tensor."""
    img = check_image(img)
    if not tf.is_tensor(k):
        k = _ref.check_int(k, "k") % 4
    return tf.image.rot90(img, k)


def crop(img, left, width) -> tf.Tensor:
    """The square box rows and columns [left, left+width) (spec/images.md, "Crop").

    A box outside the image raises ValueError (eager) or InvalidArgumentError
    (in a graph) naming the box and the image height and width."""
    img = check_image(img)
    left, width = _ref.check_int(left, "crop left"), _ref.check_int(width, "crop width")
    if width <= 0 or left < 0:
        raise ValueError(f"crop needs left >= 0 and width > 0, got left={left}, width={width}")
    shape = tf.shape(img)
    h, w = shape[-3], shape[-2]
    if tf.executing_eagerly():
        if left + width > int(h) or left + width > int(w):
            raise ValueError(f"crop box rows and columns [{left}, {left + width}) is outside "
                             f"the image of height {int(h)}, width {int(w)}")
    else:
        msg = f"crop box rows and columns [{left}, {left + width}) is outside the image"
        with tf.control_dependencies([
                tf.debugging.assert_less_equal(left + width, h, message=msg + " (height)"),
                tf.debugging.assert_less_equal(left + width, w, message=msg + " (width)")]):
            img = tf.identity(img)
    return img[..., left:left + width, left:left + width, :]


# --------------------------------------------------------------------------- resize

def _size_pair(size):
    if isinstance(size, (bool, np.bool_)):
        raise ValueError(f"resize size must be an integer or (height, width), got {size!r}")
    if isinstance(size, numbers.Integral):
        pair = (int(size), int(size))
    else:
        pair = tuple(int(_ref.check_int(v, "resize size")) for v in size)
        if len(pair) != 2:
            raise ValueError(f"resize size must be an integer or (height, width), got {size!r}")
    if min(pair) <= 0:
        raise ValueError(f"resize size must be positive, got {size!r}")
    return pair


def resize_float(img, size, method="lanczos3", antialias=True) -> tf.Tensor:
    """``tf.image.resize`` as float32 before rounding (spec/images.md, "Resize")."""
    img = check_image(img)
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; valid: {', '.join(RESIZE_METHODS)}")
    out = tf.image.resize(img, _size_pair(size), method=method, antialias=bool(antialias))
    return tf.cast(out, tf.float32)


def resize(img, size, method="lanczos3", antialias=True) -> tf.Tensor:
    """``tf.image.resize``, rounded to nearest and clipped to uint8 (spec/images.md, "Resize").

    'nearest' returns the input's pixels (uint8, nothing rounded)."""
    img = check_image(img)
    if method not in RESIZE_METHODS:
        raise ValueError(f"unknown resize method {method!r}; valid: {', '.join(RESIZE_METHODS)}")
    out = tf.image.resize(img, _size_pair(size), method=method, antialias=bool(antialias))
    return to_uint8(out)


# --------------------------------------------------------------------------- blur

def _reflect(i, n):
    """Fold indices into [0, n) mirroring without repeating the edge (np.pad 'reflect')."""
    period = tf.maximum(2 * (n - 1), 1)
    j = tf.math.floormod(i, period)
    j = tf.where(j >= n, period - j, j)
    return tf.where(n == 1, tf.zeros_like(j), j)


def _blur_float(img, kernel: np.ndarray) -> tf.Tensor:
    """Separable blur of uint8 ``img`` (HWC/NHWC) with a 1-D kernel, float32 result.

    Borders are mirrored by gathering reflected indices (``tf.pad(mode='REFLECT')``
    for images larger than the kernel's half width, and defined for any size),
    then rows and columns are convolved with ``tf.nn.depthwise_conv2d``.
    """
    n = len(kernel)
    before, after = (n - 1) // 2, n // 2
    batch = img.shape.rank == 4
    x = tf.cast(img if batch else img[None], tf.float32)
    shape = tf.shape(x)
    rows = _reflect(tf.range(-before, shape[1] + after), shape[1])
    cols = _reflect(tf.range(-before, shape[2] + after), shape[2])
    x = tf.gather(tf.gather(x, rows, axis=1), cols, axis=2)
    k = tf.constant(kernel, tf.float32)
    kr = tf.tile(tf.reshape(k, [n, 1, 1, 1]), [1, 1, 3, 1])   # along rows
    kc = tf.tile(tf.reshape(k, [1, n, 1, 1]), [1, 1, 3, 1])   # along columns
    x = tf.nn.depthwise_conv2d(x, kr, strides=[1, 1, 1, 1], padding="VALID")
    x = tf.nn.depthwise_conv2d(x, kc, strides=[1, 1, 1, 1], padding="VALID")
    return x if batch else x[0]


def gaussian_blur(img, sigma) -> tf.Tensor:
    """Separable Gaussian blur with mirror padding, rounded to uint8
    (spec/images.md, "Gaussian blur"); the reference's kernel."""
    img = check_image(img)
    kernel = _ref.gaussian_kernel(sigma)
    return to_uint8(_blur_float(img, kernel))


def blur_drawn(img, sigma) -> tf.Tensor:
    """:func:`gaussian_blur` for a drawn ``sigma`` tensor (one of the augmentation's
    sigmas, or 0 for no blur), as a switch over the precomputed kernels."""
    idx = tf.cast(tf.round(tf.cast(sigma, tf.float32) * 2.0), tf.int32)  # 0, 1, 2, 3, 4
    branches = [lambda: img] + [
        (lambda s=s: to_uint8(_blur_float(img, _ref.gaussian_kernel(s)))) for s in BLUR_SIGMAS]
    assert [round(2 * s) for s in BLUR_SIGMAS] == [1, 2, 3, 4]
    return tf.switch_case(idx, branches)


# --------------------------------------------------------------------------- JPEG

def _decode_jpeg(data):
    return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE")


def jpeg(img, quality) -> tf.Tensor:
    """JPEG round trip: ``tf.io.encode_jpeg`` at ``quality`` (baseline, 4:2:0, standard
    tables: the same scan as Pillow's), decoded with the exact IDCT
    (spec/images.md, "JPEG")."""
    img = check_image(img)
    if tf.is_tensor(quality):
        return jpeg_variable(img, quality)
    quality = _ref.check_int(quality, "JPEG quality")
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 0..100, got {quality}")
    if img.shape.rank == 4:
        return tf.map_fn(lambda im: jpeg(im, quality), img)
    return _decode_jpeg(tf.io.encode_jpeg(img, quality=quality))


def jpeg_variable(img, quality) -> tf.Tensor:
    """:func:`jpeg` at a quality given as an int32 scalar tensor (the loader's draws).

    ``EncodeJpegVariableQuality`` is the encoder of ``tf.io.encode_jpeg`` with the
    quality as an input (the same defaults: baseline, 4:2:0, no optimization);
    it is decoded with the exact IDCT, not ``adjust_jpeg_quality``'s fast one."""
    img = tf.convert_to_tensor(img)
    q = tf.cast(quality, tf.int32)
    out = _decode_jpeg(tf.raw_ops.EncodeJpegVariableQuality(images=img, quality=q))
    out.set_shape(img.shape)
    return out


# --------------------------------------------------------------------------- drawn steps

def drawn(op: str, img, p) -> tf.Tensor:
    """The step of reference op ``op`` (the name a drawn :class:`tilespec.augment.Step`
    carries) applied with its drawn parameter ``p``, a float32 scalar tensor: 1 for an
    applied flip, k for ``rot90``, the quality for ``jpeg``, sigma for
    ``gaussian_blur``; 0 for no step (spec/adapter_tf.md, "The loader"). The loader's
    map applies each augmentation character's op this way."""
    if op == "rot90":
        return tf.image.rot90(img, tf.cast(p, tf.int32))
    if op == "gaussian_blur":
        return blur_drawn(img, p)
    if op == "jpeg":
        return tf.cond(p > 0, lambda: jpeg_variable(img, p), lambda: img)
    if op in ("flip_left_right", "flip_up_down"):
        flip = flip_left_right if op == "flip_left_right" else flip_up_down
        return tf.cond(p > 0, lambda: flip(img), lambda: img)
    raise ValueError(f"no drawn form of op {op!r}")


# --------------------------------------------------------------------------- standardize

def standardize(img, mode) -> tf.Tensor:
    """Standardize to float32 (spec/images.md, "Standardization"): 'unit' is
    x / 127.5 - 1; 'per_image' is ``tf.image.per_image_standardization``."""
    img = check_image(img)
    _ref.check_standardize_mode(mode)
    if mode == "unit":
        return tf.cast(img, tf.float32) / tf.constant(127.5, tf.float32) - 1.0
    return tf.image.per_image_standardization(img)


class TFOps:
    """The object the ``tilespec_ops`` hook returns (spec/adapters.md, "Hooks")."""

    layout = layout
    default_standardize = "per_image"   # what standardize=True means (spec/adapter_tf.md)
    from_numpy = staticmethod(from_numpy)
    to_numpy = staticmethod(to_numpy)
    flip_left_right = staticmethod(flip_left_right)
    flip_up_down = staticmethod(flip_up_down)
    rot90 = staticmethod(rot90)
    crop = staticmethod(crop)
    resize = staticmethod(resize)
    gaussian_blur = staticmethod(gaussian_blur)
    jpeg = staticmethod(jpeg)
    standardize = staticmethod(standardize)
    decode = staticmethod(decode)
    to_uint8 = staticmethod(to_uint8)


__all__ = ["from_numpy", "to_numpy", "to_uint8", "decode", "flip_left_right", "flip_up_down",
           "rot90", "crop", "resize", "resize_float", "gaussian_blur", "blur_drawn", "jpeg",
           "jpeg_variable", "drawn", "standardize", "TFOps", "layout"]
