"""The TensorFlow adapter's hooks (spec/adapter_tf.md, "Hooks"; spec/adapters.md).

Registered under the entry-point group ``tilespec.adapters`` as the backend
``"tensorflow"``: ``Dataset.tensorflow(**options)`` and the indexed dataset
(:mod:`tilespec_tf.loader`), the image ops (:mod:`tilespec_tf.ops`, stain
normalization in :mod:`tilespec_tf.stain`) and the Keras trainer
(:mod:`tilespec_tf.train`). TensorFlow is imported only when a hook for this backend
is called, so discovering adapters stays fast.
"""

from __future__ import annotations

from importlib import metadata

from tilespec import hookimpl

ADAPTER_NAME = "tensorflow"
DISTRIBUTION = "tilespec-tf"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@hookimpl
def tilespec_adapter_info():
    """spec/adapters.md, "Hooks": name, framework, distribution, version."""
    tf_version = _version("tensorflow-cpu") or _version("tensorflow") or "not installed"
    return {"name": ADAPTER_NAME, "framework": f"TensorFlow {tf_version}",
            "distribution": DISTRIBUTION, "version": _version(DISTRIBUTION) or "0.1.0"}


@hookimpl
def tilespec_make_loader(backend, dataset, options):
    """``Dataset.tensorflow(**options)``: a tf.data.Dataset (spec/adapter_tf.md, "The loader")."""
    if backend != ADAPTER_NAME:
        return None
    from .loader import make_dataset
    return make_dataset(dataset, options)


@hookimpl
def tilespec_make_indexed(backend, tfrecords, options):
    """A finite tf.data.Dataset of IndexedInterleaver's items in index order
    (spec/adapter_tf.md, "Indexed dataset")."""
    if backend != ADAPTER_NAME:
        return None
    from .loader import make_indexed
    return make_indexed(tfrecords, options)


@hookimpl
def tilespec_ops(backend):
    """The TensorFlow image ops (spec/adapter_tf.md, "Ops")."""
    if backend != ADAPTER_NAME:
        return None
    from .ops import TFOps
    return TFOps


@hookimpl
def tilespec_train_fold(backend, run):
    """One fold of ``Project.train(backend='tensorflow')`` (spec/training.md, "Adapters")."""
    if backend != ADAPTER_NAME:
        return None
    from .train import train_fold
    return train_fold(run)
