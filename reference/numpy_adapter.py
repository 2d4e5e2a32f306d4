"""The NumPy reference, registered as the adapter ``"numpy"`` (spec/adapters.md).

It answers the hooks of :mod:`tilespec.hookspecs` with the reference itself,
so the conformance suite can run against it like against any other adapter.
"""

from __future__ import annotations

import numpy as np

from . import __version__
from . import ops as _ops
from .hookspecs import hookimpl
from .loader import NumpyLoader

NAME = "numpy"


class NumpyOps:
    """The reference ops with identity conversions (HWC uint8 NumPy arrays)."""

    layout = "HWC"
    default_standardize = NumpyLoader.default_standardize  # what standardize=True means
    flip_left_right = staticmethod(_ops.flip_left_right)
    flip_up_down = staticmethod(_ops.flip_up_down)
    rot90 = staticmethod(_ops.rot90)
    crop = staticmethod(_ops.crop)
    resize = staticmethod(_ops.resize)
    gaussian_blur = staticmethod(_ops.gaussian_blur)
    jpeg = staticmethod(_ops.jpeg)
    standardize = staticmethod(_ops.standardize)

    @staticmethod
    def from_numpy(img):
        return np.asarray(img)

    @staticmethod
    def to_numpy(img):
        return np.asarray(img)


@hookimpl
def tilespec_adapter_info():
    return {"name": NAME, "framework": f"NumPy {np.__version__}", "distribution": "tilespec",
            "version": __version__}


@hookimpl
def tilespec_make_loader(backend, dataset, options):
    if backend != NAME:
        return None
    return dataset.numpy(**options)


@hookimpl
def tilespec_make_indexed(backend, tfrecords, options):
    if backend != NAME:
        return None
    from .loader import IndexedInterleaver
    return IndexedInterleaver(tfrecords, **options)


@hookimpl
def tilespec_ops(backend):
    return NumpyOps if backend == NAME else None
