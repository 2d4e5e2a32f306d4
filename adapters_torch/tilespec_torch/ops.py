"""Image operations on torch tensors (spec/adapter_torch.md, "Ops"; spec/images.md).

The PyTorch adapter's native image is a ``torch.uint8`` tensor in CHW layout,
``(3, H, W)``, or a batch ``(N, 3, H, W)``. Each op here is the torch form of
the op of the same name in :mod:`tilespec.ops`, with the same parameters and
the same results (exact for flips, rot90, crop, JPEG and 'nearest' resize;
within one grey level for blur and the other resize kernels, which are float
products summed in a different order; standardization within float32
rounding). Weight matrices and kernels are taken from the reference
(:mod:`tilespec.resize`, :func:`tilespec.ops.gaussian_kernel`), never
recomputed. JPEG goes through Pillow via the reference.

``from_numpy`` and ``to_numpy`` convert at the boundary (HWC NumPy <-> CHW torch).
``stain_normalize`` is the torch stain normalization of :mod:`tilespec_torch.stain`.
This module is the ops namespace of the ``tilespec_ops`` hook, which the loader hands
to the reference's :meth:`tilespec.pipeline.Pipeline.apply` (spec/images.md,
"Pipeline order").
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from tilespec import ops as _ref
from tilespec.loader import NumpyLoader
from tilespec.resize import check_method, nearest_index, weights_readonly

from . import stain
from .checks import check_image as _check_image

layout = "CHW"
#: What standardize=True means in this backend: the reference's mode (spec/adapter_torch.md,
#: "Options").
default_standardize = NumpyLoader.default_standardize
STANDARDIZE_MODES = _ref.STANDARDIZE_MODES


# --------------------------------------------------------------------------- boundary

def from_numpy(img) -> torch.Tensor:
    """HWC (or NHWC) NumPy image -> CHW (or NCHW) torch tensor (a new, contiguous tensor)."""
    arr = np.asarray(img)
    if arr.ndim not in (3, 4):
        raise ValueError(f"from_numpy takes an HWC or NHWC image, got shape {arr.shape}")
    return torch.from_numpy(np.ascontiguousarray(np.moveaxis(arr, -1, -3)))


def to_numpy(img) -> np.ndarray:
    """CHW (or NCHW) torch tensor -> HWC (or NHWC) NumPy array."""
    if isinstance(img, torch.Tensor):
        img = img.detach().cpu().numpy()
    arr = np.asarray(img)
    if arr.ndim not in (3, 4):
        raise ValueError(f"to_numpy takes a CHW or NCHW image, got shape {arr.shape}")
    return np.ascontiguousarray(np.moveaxis(arr, -3, -1))


# --------------------------------------------------------------------------- uint8

def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Round to nearest, ties to even (torch.round), clip to [0, 255], as uint8
    (spec/images.md, "uint8 conversion"). NaN is rejected."""
    if x.dtype == torch.uint8:
        return x.clone()
    if not x.is_floating_point():
        return x.clamp(0, 255).to(torch.uint8)
    if torch.isnan(x).any():
        raise ValueError(f"to_uint8: {int(torch.isnan(x).sum())} NaN value(s) in a tensor of "
                         f"shape {tuple(x.shape)}")
    return x.round().clamp_(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- geometry

def flip_left_right(img) -> torch.Tensor:
    """Mirror the columns (spec/images.md, "Flips")."""
    return torch.flip(_check_image(img), dims=(-1,))


def flip_up_down(img) -> torch.Tensor:
    """Mirror the rows (spec/images.md, "Flips")."""
    return torch.flip(_check_image(img), dims=(-2,))


def rot90(img, k) -> torch.Tensor:
    """Rotate by k * 90 degrees counter-clockwise, as np.rot90 on HWC (spec/images.md,
    "Rotation"). torch.rot90 over (H, W) turns from the first axis towards the second,
    the same direction."""
    _check_image(img)
    k = _ref.check_int(k, "k") % 4
    return torch.rot90(img, k, dims=(-2, -1)) if k else img.clone()  # flip: a new tensor


def crop(img, left, width) -> torch.Tensor:
    """The square box rows and columns [left, left+width) (spec/images.md, "Crop")."""
    _check_image(img)
    left, width = _ref.check_crop_box(left, width, img.shape[-2], img.shape[-1])
    return img[..., left:left + width, left:left + width].clone(memory_format=torch.contiguous_format)


# --------------------------------------------------------------------------- resize

@functools.lru_cache(maxsize=256)
def _weights(in_size, out_size, method, antialias, dtype):
    return torch.from_numpy(np.array(weights_readonly(in_size, out_size, method, antialias),
                                     dtype=np.float64)).to(dtype)


def _separable(img, wh, ww):
    """wh (h x H) over the rows and ww (w x W) over the columns of a uint8 image, float64."""
    x = img.to(torch.float64)
    return torch.matmul(torch.matmul(wh, x), ww.transpose(0, 1))


def resize(img, size, method="lanczos3", antialias=True) -> torch.Tensor:
    """Resize like tf.image.resize with the reference's weight matrices, rounded to uint8
    (spec/images.md, "Resize")."""
    _check_image(img)
    h_out, w_out = _ref.resize_size(size)
    check_method(method)
    h_in, w_in = img.shape[-2], img.shape[-1]
    if method == "nearest":
        rows = torch.from_numpy(nearest_index(h_in, h_out))
        cols = torch.from_numpy(nearest_index(w_in, w_out))
        return img.index_select(-2, rows).index_select(-1, cols).contiguous()
    wh = _weights(h_in, h_out, method, bool(antialias), torch.float64)
    ww = _weights(w_in, w_out, method, bool(antialias), torch.float64)
    return to_uint8(_separable(img, wh, ww))


# --------------------------------------------------------------------------- blur

@functools.lru_cache(maxsize=64)
def _blur_kernel(sigma):
    g = torch.from_numpy(_ref.gaussian_kernel(sigma))
    return g.view(1, 1, 1, -1).expand(3, 1, 1, -1).contiguous()


@functools.lru_cache(maxsize=256)
def _reflect_index(size, before, after):
    return torch.from_numpy(_ref.reflect_index(np.arange(-before, size + after), size))


def gaussian_blur(img, sigma) -> torch.Tensor:
    """Separable Gaussian blur (depthwise conv2d in float64) with the reference's kernel
    and mirror padding (edge not repeated), rounded to uint8 (spec/images.md,
    "Gaussian blur"). Padding indexes with the reference's reflect rule, so images
    smaller than the kernel fold the same way."""
    _check_image(img)
    sigma = _ref.check_sigma(sigma)
    kern = _blur_kernel(sigma)
    n = kern.shape[-1]
    before, after = (n - 1) // 2, n - 1 - (n - 1) // 2   # tap j sits at offset j - before
    batch = img.dim() == 4
    x = (img if batch else img.unsqueeze(0)).to(torch.float64)
    h, w = x.shape[-2], x.shape[-1]
    # columns (width axis), then rows (height axis)
    x = x.index_select(-1, _reflect_index(w, before, after))
    x = F.conv2d(x, kern, groups=3)
    x = x.index_select(-2, _reflect_index(h, before, after))
    x = F.conv2d(x, kern.transpose(-1, -2), groups=3)
    out = to_uint8(x)
    return out if batch else out[0]


# --------------------------------------------------------------------------- JPEG

def jpeg(img, quality) -> torch.Tensor:
    """JPEG round trip through Pillow, as :func:`tilespec.ops.jpeg` (spec/images.md, "JPEG")."""
    _check_image(img)
    return from_numpy(_ref.jpeg(to_numpy(img), quality))


# --------------------------------------------------------------------------- standardize

_HALF_255 = 127.5


def standardize(img, mode, *, out=None) -> torch.Tensor:
    """Standardize to float32 (spec/images.md, "Standardization").

    'unit': x / 127.5 - 1. 'per_image': (x - mean) / max(std, 1/sqrt(H*W*C)) with
    mean and population std over each image taken in float64 and rounded to float32,
    as the reference. ``out``, a float32 tensor of the image's shape (a batch row, for
    the loader's collate), receives the result, which is then ``out`` itself: for
    'unit' the conversion is done in place there, one pass fewer than a new tensor
    copied in (and the fastest way to read a rotated, non-contiguous image).
    """
    _check_image(img)
    _ref.check_standardize_mode(mode)
    if out is not None and (not isinstance(out, torch.Tensor) or out.dtype != torch.float32
                            or tuple(out.shape) != tuple(img.shape)):
        raise ValueError(f"standardize out= must be a float32 tensor of the image's shape "
                         f"{tuple(img.shape)}, got "
                         f"{getattr(out, 'dtype', type(out).__name__)} "
                         f"{tuple(getattr(out, 'shape', ()))}")
    if mode == "unit":
        x = img.to(torch.float32) if out is None else out.copy_(img)
        return x.div_(_HALF_255).sub_(1.0)
    x = img.to(torch.float32)
    n = img.shape[-3] * img.shape[-2] * img.shape[-1]
    rows = img.reshape(-1, n).to(torch.float64)
    mean = rows.mean(dim=1, keepdim=True)
    std = torch.sqrt(((rows - mean) ** 2).mean(dim=1, keepdim=True))
    adjusted = torch.clamp(std, min=1.0 / math.sqrt(n))
    result = ((x.reshape(-1, n) - mean.to(torch.float32)) / adjusted.to(torch.float32)
              ).reshape(img.shape)
    return result if out is None else out.copy_(result)


# --------------------------------------------------------------------------- stain

def stain_normalize(normalizer, img, *, perturbation=None) -> torch.Tensor:
    """Stain normalization of a CHW/NCHW uint8 tensor with a reference
    :class:`tilespec.StainNormalizer` (spec/stain.md; spec/adapter_torch.md, "Ops").
    Torch ops (:func:`tilespec_torch.stain.transform`): the reference's formulas with
    per-pixel arithmetic in float32, within spec/stain.md, "Conformance (adapters)" of
    the reference (Reinhard 1 grey level, Macenko 2). With ``perturbation`` (the deltas
    of :func:`tilespec.stain.draw_stain_perturbation`) it applies stain augmentation.
    The image is normalized as a contiguous tensor, so the result does not depend on
    its strides."""
    if isinstance(img, torch.Tensor):
        img = img.contiguous()
    return stain.transform(normalizer, img, perturbation=perturbation)


__all__ = ["flip_left_right", "flip_up_down", "rot90", "crop", "resize", "gaussian_blur",
           "jpeg", "standardize", "stain_normalize", "to_uint8", "from_numpy", "to_numpy",
           "layout", "default_standardize", "STANDARDIZE_MODES"]
