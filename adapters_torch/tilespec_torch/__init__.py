"""PyTorch adapter for tilespec (spec/adapter_torch.md): its hooks (spec/adapters.md,
"Hooks").

Registered under the entry-point group ``tilespec.adapters`` as the backend
``"torch"``: ``Dataset.torch(**options)`` returns a
:class:`tilespec_torch.loader.TorchLoader` (a ``torch.utils.data.DataLoader``),
``tilespec_torch.IndexedInterleaver`` is the map-style dataset, and
``tilespec_torch.ops`` the image operations on CHW tensors. The package's modules:
``loader`` (loaders and batching), ``memory`` (batch memory), ``ops`` (image
operations), ``stain`` (stain normalization behind ``ops.stain_normalize``),
``checks`` (the native image check they share) and ``train`` (the trainer of
``Project.train(backend='torch')``).

This module imports torch only when a hook needs it, so discovering adapters
(``tilespec adapters``) stays fast.
"""

from __future__ import annotations

from importlib import metadata

from tilespec.hookspecs import hookimpl

ADAPTER_NAME = "torch"
DISTRIBUTION = "tilespec-torch"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


@hookimpl
def tilespec_adapter_info():
    """spec/adapters.md, "Hooks"."""
    return {"name": ADAPTER_NAME, "framework": f"PyTorch {_version('torch')}",
            "distribution": DISTRIBUTION, "version": _version(DISTRIBUTION)}


@hookimpl
def tilespec_make_loader(backend, dataset, options):
    """``Dataset.torch(**options)`` (spec/adapter_torch.md, "Options"); None for other backends."""
    if backend != ADAPTER_NAME:
        return None
    from .loader import make_loader
    return make_loader(dataset, options)


@hookimpl
def tilespec_make_indexed(backend, tfrecords, options):
    """The torch :class:`IndexedInterleaver` (spec/adapter_torch.md); None for other backends."""
    if backend != ADAPTER_NAME:
        return None
    from .loader import IndexedInterleaver
    return IndexedInterleaver(tfrecords, **options)


@hookimpl
def tilespec_ops(backend):
    """The module :mod:`tilespec_torch.ops` (spec/adapter_torch.md, "Ops"); None for other
    backends."""
    if backend != ADAPTER_NAME:
        return None
    import importlib

    return importlib.import_module(f"{__name__}.ops")


@hookimpl
def tilespec_train_fold(backend, run):
    """One fold of ``Project.train(backend='torch')`` (spec/training.md, "Adapters");
    None for other backends."""
    if backend != ADAPTER_NAME:
        return None
    import importlib

    return importlib.import_module(f"{__name__}.train").train_fold(run)


def __getattr__(name):
    import importlib

    if name in ("IndexedInterleaver", "TorchLoader", "TorchPipeline", "collate"):
        return getattr(importlib.import_module(f"{__name__}.loader"), name)
    if name in ("ops", "loader", "train"):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'tilespec_torch' has no attribute {name!r}")


__all__ = ["ADAPTER_NAME", "IndexedInterleaver", "TorchLoader", "TorchPipeline", "collate",
           "ops", "tilespec_adapter_info", "tilespec_make_loader", "tilespec_make_indexed",
           "tilespec_ops", "tilespec_train_fold"]
