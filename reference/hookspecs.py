"""Hook specifications: what an adapter provides (spec/adapters.md).

An adapter is a module (or object) registered under the entry-point group
``tilespec.adapters`` that implements some of these hooks with
``@tilespec.hookimpl``. The NumPy reference is registered the same way, as
the adapter named ``"numpy"``. Every hook that takes a ``backend`` must
return None for a backend it does not implement, so several adapters can be
installed side by side (first non-None answer wins).
"""

from __future__ import annotations

import pluggy

PROJECT = "tilespec"
ENTRY_POINT_GROUP = "tilespec.adapters"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def tilespec_adapter_info():
    """Describe this adapter.

    Return a dict with ``name`` (the backend name, e.g. ``"torch"``: the
    method ``Dataset.<name>()`` and the ``backend`` value the other hooks
    answer to), ``framework`` (e.g. ``"PyTorch 2.13.0"``), ``distribution``
    (the installable distribution, e.g. ``"tilespec-torch"``) and
    ``version``. Called once per adapter when listing adapters.
    """


@hookspec(firstresult=True)
def tilespec_make_loader(backend, dataset, options):
    """Build the loader of ``Dataset.<backend>(**options)`` over ``dataset``.

    ``dataset`` is a :class:`tilespec.Dataset`; ``options`` the keyword
    arguments as given by the user (the adapter validates them, ideally
    through :class:`tilespec.pipeline.Pipeline` and
    :class:`tilespec.loader.NumpyLoader`, so errors match the reference). The
    loader must yield the reference's stream (spec/sampling.md): same records,
    order, labels, slide names and locations as ``dataset.numpy(**options)``
    with the same seed, and images within spec/images.md's tolerances.
    Return None when ``backend`` is not this adapter's.
    """


@hookspec(firstresult=True)
def tilespec_make_indexed(backend, tfrecords, options):
    """Build the map-style dataset equal item by item to
    ``tilespec.IndexedInterleaver(tfrecords, **options)``; None when
    ``backend`` is not this adapter's."""


@hookspec(firstresult=True)
def tilespec_ops(backend):
    """The adapter's image operations, or None when ``backend`` is not this adapter's.

    An object (typically a module) with the functions of :mod:`tilespec.ops`
    that the adapter reimplements — ``flip_left_right``, ``flip_up_down``,
    ``rot90``, ``crop``, ``resize``, ``gaussian_blur``, ``jpeg``,
    ``standardize`` — taking and returning the framework's native images (the
    adapter's layout: HWC or CHW, single image or batch), optionally ``to_uint8``
    and ``stain_normalize(normalizer, img, *, perturbation=None)``, plus
    ``from_numpy(hwc_uint8)`` and ``to_numpy(native) -> HWC array`` converting
    at the boundary, ``layout`` ('HWC' or 'CHW') and ``default_standardize`` (the
    mode ``standardize=True`` means; 'unit' when absent). An op left out is not
    part of the adapter. The conformance
    suite (:mod:`tilespec.testing`) checks every op present against the
    reference within the spec's tolerances.
    """


@hookspec(firstresult=True)
def tilespec_train_fold(backend, run):
    """Train one fold of ``Project.train`` (spec/training.md, "Adapters").

    ``run`` is a :class:`tilespec.training.FoldRun`: the fold's datasets,
    labels, params, model (a name of ``tilespec.training.KNOWN_MODELS`` or a
    callable ``(params, n_outcomes) -> model``), seed and folder. Build the
    loaders with ``run.train.<backend>(**run.train_options())`` and
    ``run.val.<backend>(**run.val_options())``, train ``run.epochs`` epochs of
    ``run.steps_per_epoch(loader)`` batches (calling ``run.step`` per batch
    and ``run.end_epoch`` per epoch with the validation labels and scores:
    class probabilities or predictions), write the weights to
    ``run.weights_path(name)`` when it is not None, and return
    ``run.result()``. Return None when ``backend`` is not this adapter's.
    """
