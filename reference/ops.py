"""Pure image operations on uint8 RGB arrays (spec/images.md, "Operations").

Every function takes an HWC uint8 RGB image or an NHWC batch of them, takes
every parameter explicitly, draws nothing at random, never modifies its input
and returns a new array. Float results are turned into uint8 by
:func:`to_uint8` (round half to even, then clip to [0, 255]).
"""

from __future__ import annotations

import io
import math
import numbers

import numpy as np
from PIL import Image

from .images import decode_image
from .resize import (RESIZE_METHODS, band_blocks, check_method, nearest_index, resize_weights,
                     weights_bands, weights_readonly)

STANDARDIZE_MODES = ("unit", "per_image")


# --------------------------------------------------------------------------- checks

#: Appended to the error of an op that needs uint8 and is given a floating-point image
#: (spec/images.md, "Pipeline order"): the option that keeps a loader's images uint8.
FLOAT_IMAGE_HINT = ("a float image here comes from standardization or from a transform "
                    "that returns floats: pass standardize=False (the default) to keep "
                    "uint8 images, and standardize after your transform")


def float_image_hint(dtype) -> str:
    """``"; " + FLOAT_IMAGE_HINT`` when ``dtype`` (NumPy, torch or TensorFlow) is a
    floating-point type, else ''. Shared by the adapters' uint8 checks."""
    name = str(getattr(dtype, "name", dtype)).replace("torch.", "")
    return f"; {FLOAT_IMAGE_HINT}" if name.startswith(("float", "bfloat", "half", "double")) \
        else ""


def _check_image(img, what="image"):
    """Raise ValueError unless ``img`` is an HWC or NHWC uint8 RGB array."""
    if not isinstance(img, np.ndarray):
        raise ValueError(f"{what} must be a NumPy array, got {type(img).__name__}")
    if img.ndim not in (3, 4) or img.shape[-1] != 3:
        raise ValueError(f"{what} must be HWC or NHWC RGB (last axis 3), got shape "
                         f"{tuple(img.shape)}")
    if img.dtype != np.uint8:
        raise ValueError(f"{what} must have dtype uint8, got {img.dtype} "
                         f"(shape {tuple(img.shape)}){float_image_hint(img.dtype)}")
    if img.shape[-3] == 0 or img.shape[-2] == 0:
        raise ValueError(f"{what} is empty: shape {tuple(img.shape)}")
    return img


def check_int(value, name):
    """``value`` as an int, or ValueError naming ``name``: an integer, booleans refused
    (spec/images.md: rot90's k, crop box, JPEG quality)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _copy(view):
    """A new C-contiguous array with the contents of ``view``."""
    return np.array(view, order="C", copy=True)


def to_uint8(x) -> np.ndarray:
    """Round to nearest (ties to even, as np.rint, tf.round, torch.round) and clip to uint8.

    See spec/images.md, "uint8 conversion". NaN is rejected with ValueError;
    +-inf clip to 255 / 0.
    """
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.copy()
    if x.dtype.kind in "iub":
        return np.clip(x, 0, 255).astype(np.uint8)
    if x.dtype.kind != "f":
        raise ValueError(f"to_uint8 needs a real array, got dtype {x.dtype}")
    nan = np.isnan(x)
    if nan.any():
        raise ValueError(f"to_uint8: {int(nan.sum())} NaN value(s) in an array of shape "
                         f"{tuple(x.shape)}")
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- geometry

def _pillow_transpose(img, method):
    """Apply a Pillow pixel permutation (``Image.Transpose``) to every image of ``img``.

    An exact permutation of whole pixels, done in compiled code: NumPy copies a
    reversed or transposed view of 3-byte pixels element by element, several
    times slower. The result is a new writable C-contiguous array.
    """
    if img.ndim == 4:
        return np.stack([_pillow_transpose(im, method) for im in img]) if len(img) else \
            _copy(img if method in (_FLIP_LR, _ROT180) else img.transpose(0, 2, 1, 3))
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).transpose(method)).copy()


_FLIP_LR = Image.Transpose.FLIP_LEFT_RIGHT
_ROT180 = Image.Transpose.ROTATE_180
#: rot90's k (1, 2, 3) -> Pillow's counter-clockwise rotation.
_ROTATIONS = {1: Image.Transpose.ROTATE_90, 2: _ROT180, 3: Image.Transpose.ROTATE_270}


def flip_left_right(img) -> np.ndarray:
    """Mirror the columns: out[.., y, x, c] = img[.., y, W-1-x, c] (spec/images.md, "Flips")."""
    _check_image(img)
    return _pillow_transpose(img, _FLIP_LR)


def flip_up_down(img) -> np.ndarray:
    """Mirror the rows: out[.., y, x, c] = img[.., H-1-y, x, c] (spec/images.md, "Flips")."""
    _check_image(img)
    return _copy(img[..., ::-1, :, :])


def rot90(img, k) -> np.ndarray:
    """Rotate by k * 90 degrees counter-clockwise, as np.rot90 and tf.image.rot90.

    ``k`` is any integer, taken modulo 4. See spec/images.md, "Rotation".
    """
    _check_image(img)
    k = check_int(k, "k") % 4
    if k == 0:
        return _copy(img)
    return _pillow_transpose(img, _ROTATIONS[k])


def check_crop_box(left, width, height, img_width) -> tuple[int, int]:
    """``(left, width)`` as ints once the box rows and columns [left, left+width) is
    inside an image of ``height`` x ``img_width``; ValueError naming the box and the
    image size otherwise (spec/images.md, "Crop"). Shared by the adapters' crops."""
    left = check_int(left, "crop left")
    width = check_int(width, "crop width")
    if width <= 0:
        raise ValueError(f"crop width must be positive, got {width}")
    if left < 0 or left + width > height or left + width > img_width:
        raise ValueError(f"crop box rows and columns [{left}, {left + width}) is outside the "
                         f"image of height {height}, width {img_width}")
    return left, width


def crop(img, left, width) -> np.ndarray:
    """The square box rows [left, left+width), columns [left, left+width).

    A box not inside the image raises ValueError naming the box and the image
    size. See spec/images.md, "Crop".
    """
    _check_image(img)
    left, width = check_crop_box(left, width, img.shape[-3], img.shape[-2])
    return _copy(img[..., left:left + width, left:left + width, :])


# --------------------------------------------------------------------------- resize

def resize_size(size):
    """``size`` (an integer n for n x n, or ``(height, width)``) as a pair of positive
    ints, or ValueError (spec/images.md, "Resize")."""
    if isinstance(size, (bool, np.bool_)):
        raise ValueError(f"resize size must be an integer or (height, width), got {size!r}")
    if isinstance(size, numbers.Integral):
        pair = (int(size), int(size))
    else:
        try:
            pair = tuple(size)
        except TypeError:
            raise ValueError(f"resize size must be an integer or (height, width), "
                             f"got {size!r}") from None
        if len(pair) != 2 or not all(isinstance(v, numbers.Integral)
                                     and not isinstance(v, (bool, np.bool_)) for v in pair):
            raise ValueError(f"resize size must be an integer or (height, width), got {size!r}")
        pair = (int(pair[0]), int(pair[1]))
    if pair[0] <= 0 or pair[1] <= 0:
        raise ValueError(f"resize size must be positive, got {size!r}")
    return pair


def _apply_separable(img, wh, ww, blocks_h=None, blocks_w=None):
    """float64 result of applying wh (h x H) to the rows and ww (w x W) to the columns.

    Each weight matrix is applied by :func:`tilespec.resize.band_blocks`: row
    blocks times the column band holding their non-zero weights, so the zeros
    outside the band cost nothing (the sums are those of the dense product
    without its zero terms).
    """
    if blocks_h is None:
        blocks_h = band_blocks(wh)
    if blocks_w is None:
        blocks_w = band_blocks(ww)
    batch = img.ndim == 4
    x = img if batch else img[None]
    n, hgt, wid, c = x.shape
    h_out, w_out = wh.shape[0], ww.shape[0]
    x = x.reshape(n, hgt, wid * c).astype(np.float64)
    # Height pass: (h, H) @ (n, H, W*C) -> (n, h, W*C), one band of input rows per block.
    y = np.zeros((n, h_out, wid * c))
    for q0, q1, j0, j1, blk in blocks_h:
        np.matmul(blk, x[:, j0:j1], out=y[:, q0:q1])
    del x
    # Width pass on (n*h*C, W) rows: (n*h*C, W) @ (W, w) -> (n, h, C, w).
    y = np.ascontiguousarray(y.reshape(n, h_out, wid, c).transpose(0, 1, 3, 2)).reshape(-1, wid)
    z = np.zeros((y.shape[0], w_out))
    for q0, q1, j0, j1, blk in blocks_w:
        np.matmul(y[:, j0:j1], blk.T, out=z[:, q0:q1])
    del y
    z = np.ascontiguousarray(z.reshape(n, h_out, c, w_out).transpose(0, 1, 3, 2))
    return z if batch else z[0]


def resize_float(img, size, method="lanczos3", antialias=True) -> np.ndarray:
    """The float64 resize before rounding (spec/images.md, "Resize").

    Same arguments as :func:`resize`.
    """
    _check_image(img)
    h_out, w_out = resize_size(size)
    check_method(method)
    h_in, w_in = img.shape[-3], img.shape[-2]
    wh = weights_readonly(h_in, h_out, method, antialias)
    ww = weights_readonly(w_in, w_out, method, antialias)
    return _apply_separable(img, wh, ww, weights_bands(h_in, h_out, method, antialias),
                            weights_bands(w_in, w_out, method, antialias))


def resize(img, size, method="lanczos3", antialias=True) -> np.ndarray:
    """Resize like tf.image.resize, then round to nearest and clip to uint8.

    ``size`` is an int (square) or (height, width); ``method`` one of
    'lanczos3' (default), 'lanczos5', 'bilinear', 'bicubic', 'nearest', 'area',
    'gaussian', 'mitchellcubic'. ``antialias`` widens the kernel when
    downscaling. See spec/images.md, "Resize".
    """
    _check_image(img)
    h_out, w_out = resize_size(size)
    check_method(method)
    if method == "nearest":
        rows = nearest_index(img.shape[-3], h_out)
        cols = nearest_index(img.shape[-2], w_out)
        # Two axis gathers: several times faster than one 2-D fancy index.
        return np.ascontiguousarray(img.take(rows, axis=-3).take(cols, axis=-2))
    return _float_to_uint8(resize_float(img, (h_out, w_out), method, antialias))


# --------------------------------------------------------------------------- blur

def gaussian_kernel(sigma) -> np.ndarray:
    """The normalized 1-D Gaussian kernel of :func:`gaussian_blur` (float64).

    Size n = int(4*sigma + 1); tap j (0-based) sits at offset j - (n-1)//2 and
    has weight exp(-offset^2 / (2 sigma^2)) / (sum of all such). See
    spec/images.md, "Gaussian blur".
    """
    sigma = check_sigma(sigma)
    n = int(4 * sigma + 1)
    offsets = np.arange(n) - (n - 1) // 2
    g = np.exp(-(offsets.astype(np.float64) ** 2) / (2.0 * sigma * sigma))
    return g / g.sum()


def check_sigma(sigma):
    """``sigma`` as a positive finite float, or ValueError (spec/images.md, "Gaussian blur")."""
    if isinstance(sigma, (bool, np.bool_)) or not isinstance(sigma, numbers.Real):
        raise ValueError(f"blur sigma must be a positive number, got {sigma!r}")
    sigma = float(sigma)
    if not (sigma > 0 and math.isfinite(sigma)):
        raise ValueError(f"blur sigma must be a positive finite number, got {sigma!r}")
    return sigma


def reflect_index(i, size) -> np.ndarray:
    """Mirror index i into [0, size) without repeating the edge (np.pad 'reflect')."""
    i = np.asarray(i)
    if size == 1:
        return np.zeros_like(i)
    period = 2 * (size - 1)
    j = np.mod(i, period)
    return np.where(j >= size, period - j, j)


def blur_weights(size, sigma) -> np.ndarray:
    """size x size float64 matrix of :func:`gaussian_blur` along one axis, borders folded in."""
    g = gaussian_kernel(sigma)
    offsets = np.arange(len(g)) - (len(g) - 1) // 2
    w = np.zeros((size, size), np.float64)
    rows = np.arange(size)
    for off, weight in zip(offsets, g):
        np.add.at(w, (rows, reflect_index(rows + off, size)), weight)
    return w


def gaussian_blur(img, sigma) -> np.ndarray:
    """Separable Gaussian blur with mirror padding, rounded to nearest uint8.

    Kernel size int(4*sigma + 1), weights exp(-x^2/(2 sigma^2)) normalized to
    sum 1, borders mirrored without repeating the edge pixel. See
    spec/images.md, "Gaussian blur".
    """
    _check_image(img)
    from scipy import ndimage  # here, not at import: it is 0.3 s of `import tilespec`

    g = gaussian_kernel(sigma)
    k = len(g)
    axes = (img.ndim - 3, img.ndim - 2)
    # The kernel's tap j sits at offset j - (k-1)//2; correlate1d centres tap k//2
    # on the output pixel unless shifted by origin.
    origin = (k - 1) // 2 - k // 2
    if min(img.shape[a] for a in axes) < k:
        # Tiny images: fold the borders explicitly (refl with period 2(n-1)),
        # then take the valid part, so nothing depends on how SciPy extends
        # lines shorter than the kernel.
        x = img
        for a in axes:
            idx = reflect_index(np.arange(-((k - 1) // 2), x.shape[a] + k // 2), x.shape[a])
            x = np.take(x, idx, axis=a)
        y = ndimage.correlate1d(x, g, axis=axes[0], output=np.float64, mode="constant",
                                origin=origin)
        ndimage.correlate1d(y, g, axis=axes[1], output=y, mode="constant", origin=origin)
        sl = [slice(None)] * img.ndim
        for a in axes:
            sl[a] = slice((k - 1) // 2, (k - 1) // 2 + img.shape[a])
        y = y[tuple(sl)]
    else:
        # Rows then columns, float64, mirror borders without repeating the edge
        # (SciPy 'mirror' is np.pad 'reflect').
        y = ndimage.correlate1d(img, g, axis=axes[0], output=np.float64, mode="mirror",
                                origin=origin)
        ndimage.correlate1d(y, g, axis=axes[1], output=y, mode="mirror", origin=origin)
    return _float_to_uint8(y)


def _float_to_uint8(y):
    """:func:`to_uint8` of a finite float64 array that may be overwritten."""
    np.rint(y, out=y)
    np.clip(y, 0, 255, out=y)
    return y.astype(np.uint8)


# --------------------------------------------------------------------------- JPEG

def jpeg_encode(img, quality) -> bytes:
    """Baseline JPEG bytes of one HWC image: 4:2:0 chroma, libjpeg's standard tables
    scaled to ``quality`` (0..100), no optimization (spec/images.md, "JPEG")."""
    _check_image(img)
    if img.ndim != 3:
        raise ValueError(f"jpeg_encode takes one HWC image, got shape {tuple(img.shape)}")
    quality = check_int(quality, "JPEG quality")
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 0..100, got {quality}")
    buf = io.BytesIO()
    Image.fromarray(img, "RGB").save(buf, format="JPEG", quality=quality, subsampling=2,
                                     optimize=False, progressive=False)
    return buf.getvalue()


def jpeg(img, quality) -> np.ndarray:
    """JPEG round trip: :func:`jpeg_encode` at ``quality``, then decode with the exact
    integer IDCT. See spec/images.md, "JPEG"."""
    _check_image(img)
    if img.ndim == 4:
        return np.stack([jpeg(im, quality) for im in img]) if len(img) else img.copy()
    return decode_image(jpeg_encode(img, quality))


# --------------------------------------------------------------------------- standardize

def check_standardize_mode(mode) -> str:
    """``mode`` when it is one of :data:`STANDARDIZE_MODES`, else ValueError listing
    them (spec/images.md, "Standardization"). Shared by the adapters' standardize."""
    if mode not in STANDARDIZE_MODES:
        raise ValueError(f"unknown standardize mode {mode!r}; valid modes are "
                         f"{', '.join(STANDARDIZE_MODES)}")
    return mode


def standardize(img, mode) -> np.ndarray:
    """Standardize to float32 (spec/images.md, "Standardization").

    'unit': x / 127.5 - 1. 'per_image': (x - mean) / max(std, 1/sqrt(H*W*C)),
    mean and (population) std over each image, as tf.image.per_image_standardization.
    """
    _check_image(img)
    check_standardize_mode(mode)
    x = img.astype(np.float32)
    if mode == "unit":
        # In place: the same float32 division and subtraction, no temporaries.
        x /= np.float32(127.5)
        x -= np.float32(1)
        return x
    n = img.shape[-3] * img.shape[-2] * img.shape[-1]
    rows = img.reshape(-1, n)
    means = np.empty((rows.shape[0], 1), np.float64)
    adjusted = np.empty((rows.shape[0], 1), np.float64)
    for i, row in enumerate(rows):
        total, squares = _sum_and_squares(row)
        # mean = S/N and the population variance (N*Q - S^2) / N^2 from the exact integer
        # sums S and Q, each correctly rounded to float64 (Python int division), so the
        # float64 statistics are as accurate as float64 allows; rounded to float32 below.
        means[i, 0] = total / n
        std = math.sqrt((n * squares - total * total) / (n * n))
        adjusted[i, 0] = max(std, 1.0 / math.sqrt(n))
    # Subtract and divide in float32, with the mean and std rounded to float32.
    out = x.reshape(-1, n)
    out -= means.astype(np.float32)
    out /= adjusted.astype(np.float32)
    return x


#: Values per chunk of :func:`_sum_and_squares` (64 KiB of float64).
_SUM_CHUNK = 8192


def _sum_and_squares(values):
    """Exact (sum, sum of squares) of a 1-D uint8 array, as Python ints.

    Summed in float64 chunks: every partial sum is an integer below 2**53
    (255**2 * N for N up to 1.3e11 values), hence exact in any order.
    """
    total = 0
    squares = 0
    for start in range(0, values.shape[0], _SUM_CHUNK):
        f = values[start:start + _SUM_CHUNK].astype(np.float64)
        total += int(f.sum())
        squares += int(np.dot(f, f))
    return total, squares


__all__ = ["flip_left_right", "flip_up_down", "rot90", "crop", "resize", "resize_float",
           "resize_weights", "RESIZE_METHODS", "gaussian_blur", "gaussian_kernel",
           "blur_weights", "reflect_index", "jpeg", "jpeg_encode", "standardize",
           "STANDARDIZE_MODES", "to_uint8", "FLOAT_IMAGE_HINT", "float_image_hint",
           "check_int", "resize_size", "check_sigma", "check_crop_box", "check_standardize_mode"]
