"""The check of this adapter's native image (spec/adapter_torch.md, "Ops").

The PyTorch adapter's images are ``torch.uint8`` tensors, CHW ``(3, H, W)`` or a
batch NCHW ``(N, 3, H, W)``. :func:`check_image` is the one test of that, with the
messages of :mod:`tilespec.ops` (spec/images.md): the ops (:mod:`tilespec_torch.ops`),
the stain normalizers (:mod:`tilespec_torch.stain`) and the loader
(:mod:`tilespec_torch.loader`) all use it, and it depends on nothing else of the
adapter, so those modules import it without importing each other.
"""

from __future__ import annotations

import torch

from tilespec.ops import float_image_hint


def check_image(img, what="image"):
    """``img`` itself if it is a CHW or NCHW uint8 RGB tensor with at least one row and
    column, else a ValueError naming ``what`` (spec/images.md, "Pipeline order": a
    float image gets :data:`tilespec.ops.FLOAT_IMAGE_HINT`)."""
    if not isinstance(img, torch.Tensor):
        raise ValueError(f"{what} must be a torch tensor, got {type(img).__name__}")
    if img.dim() not in (3, 4) or img.shape[-3] != 3:
        raise ValueError(f"{what} must be CHW or NCHW RGB (channel axis 3), got shape "
                         f"{tuple(img.shape)}")
    if img.dtype != torch.uint8:
        raise ValueError(f"{what} must have dtype torch.uint8, got {img.dtype} "
                         f"(shape {tuple(img.shape)}){float_image_hint(img.dtype)}")
    if img.shape[-2] == 0 or img.shape[-1] == 0:
        raise ValueError(f"{what} is empty: shape {tuple(img.shape)}")
    return img


__all__ = ["check_image"]
