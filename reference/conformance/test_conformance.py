"""The conformance suite, run against every registered adapter (spec/adapters.md,
"The conformance suite").

Shipped in the distribution as ``tilespec.conformance``: ``pytest --pyargs
tilespec.conformance --tilespec-backend NAME`` runs it against one backend (the
plugin, :mod:`tilespec.conformance.plugin`, parametrizes ``backend``; without the
option every registered backend: the NumPy reference, the shipped torch and
TensorFlow adapters, third-party ones). tilespec's own tests/test_conformance.py runs
these same tests. Each backend is checked against the reference:

- each of its image ops on images drawn to reach the ops' edge regions
  (:func:`tilespec.testing.edge_images`: constant, nearly constant, saturated,
  rounding ties, 1-pixel and 1-row images), ``to_uint8`` at rounding ties;
- its loader and its indexed dataset item by item with
  :func:`tilespec.testing.assert_conforms`, over options drawn from the whole option
  space (:func:`tilespec.testing.loader_options`, :func:`~tilespec.testing.indexed_options`).
"""

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import tilespec
from tilespec import ops as ref_ops
from tilespec import plugins, testing as tt
from tilespec.augment import BLUR_SIGMAS
from tilespec.resize import RESIZE_METHODS
from tilespec.stain import METHODS, StainNormalizer

#: the plugin parametrizes ``backend`` in this module (--tilespec-backend)
TILESPEC_CONFORMANCE = True
#: run outside tilespec's own tests (no profile of theirs loaded) a loader example can
#: take a second: no deadline, and slow data generation is not a failure
SLOW_OK = [HealthCheck.too_slow]


def examples(n: int) -> int:
    """``n`` drawn examples under the ci and dev profiles; the thorough profile
    (HYPOTHESIS_PROFILE=thorough) scales them with its own count (x 50)."""
    default = settings.default.max_examples
    return n if default <= 100 else default * n // 40
TILE_PX = 16
#: Options compared per drawn combination: items (or batches) of an infinite stream.
INFINITE_ITEMS = 5


def _ops(backend, name):
    ops = plugins.ops_for(backend)
    impl = getattr(ops, name, None)
    if impl is None:
        pytest.skip(f"{backend} does not implement {name}")
    return ops, impl


def _crop_args(img, data):
    h, w = img.shape[-3], img.shape[-2]
    width = data.draw(st.integers(1, min(h, w)), label="width")
    return (data.draw(st.integers(0, min(h, w) - width), label="left"), width)


def _draw_args(op, img, data):
    if op in ("flip_left_right", "flip_up_down"):
        return ()
    if op == "rot90":
        return (data.draw(st.integers(-4, 7), label="k"),)
    if op == "jpeg":
        return (data.draw(st.integers(0, 100), label="quality"),)
    if op == "gaussian_blur":
        return (data.draw(st.one_of(st.sampled_from(BLUR_SIGMAS),
                                    st.floats(0.3, 3.3)), label="sigma"),)
    if op == "crop":
        return _crop_args(img, data)
    if op == "resize":
        return (data.draw(st.integers(1, 40), label="size"),
                data.draw(st.sampled_from(RESIZE_METHODS), label="method"),
                data.draw(st.booleans(), label="antialias"))
    raise AssertionError(op)


EXACT_OPS = ("flip_left_right", "flip_up_down", "rot90", "crop", "jpeg")


@pytest.mark.parametrize("op", sorted(EXACT_OPS + ("gaussian_blur", "resize")))
@settings(max_examples=examples(25), deadline=None,
          suppress_health_check=SLOW_OK)
@given(single=tt.edge_images(1, 24), batch=tt.edge_images(1, 12, batch=True),
       data=st.data())
def test_op_conforms(backend, op, single, batch, data):
    """spec/images.md, "Conformance": flips, rot90, crop and JPEG exact; resize and blur
    within one grey level, and resize different only at a rounding tie of the
    reference's float result (within 5e-4 of a half-integer)."""
    ops, impl = _ops(backend, op)
    img = batch if data.draw(st.booleans(), label="batched") else single
    args = _draw_args(op, img, data)
    want = getattr(ref_ops, op)(img, *args)
    got = np.asarray(ops.to_numpy(impl(ops.from_numpy(img), *args)))
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, want.shape)
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    levels = 0 if op in EXACT_OPS else 1
    assert diff.max(initial=0) <= levels, f"{backend}.{op}{args}: max diff {diff.max()}"
    if op == "resize" and diff.any():
        f = ref_ops.resize_float(img, *args)
        tie = np.abs(f - np.floor(f) - 0.5) <= 5e-4
        assert tie[diff > 0].all(), (f"{backend}.resize{args}: uint8 differs where the "
                                     f"reference's float result is no tie: "
                                     f"{f[(diff > 0) & ~tie][:5]}")


def _per_image_bound(img, want):
    """spec/images.md, "Conformance": |a - b| <= 1e-6 (1 + |b| + mean/s)."""
    x = img.astype(np.float64)
    axes = tuple(range(x.ndim - 3, x.ndim))
    n = img.shape[-3] * img.shape[-2] * 3
    mean = x.mean(axis=axes, keepdims=True)
    s = np.maximum(x.std(axis=axes, keepdims=True), 1 / np.sqrt(n))
    return 1e-6 * (1 + np.abs(want) + mean / s)


@pytest.mark.parametrize("mode", ["unit", "per_image"])
@settings(max_examples=examples(30), deadline=None,
          suppress_health_check=SLOW_OK)
@given(single=tt.edge_images(1, 24), batch=tt.edge_images(1, 12, batch=True),
       batched=st.booleans())
def test_standardize_conforms(backend, mode, single, batch, batched):
    """'unit' exact; 'per_image' within the spec's bound, on constant images (std 0, the
    floor 1/sqrt(N) acts), nearly constant ones (std just above 0), 1-pixel images..."""
    ops, impl = _ops(backend, "standardize")
    img = batch if batched else single
    got = np.asarray(ops.to_numpy(impl(ops.from_numpy(img), mode)))
    want = ref_ops.standardize(img, mode)
    assert got.dtype == np.float32 and got.shape == want.shape
    if mode == "unit":
        np.testing.assert_array_equal(got, want)
    else:
        err = np.abs(got.astype(np.float64) - want)
        bound = _per_image_bound(img, want)
        assert (err <= bound).all(), f"worst {float((err / bound).max()):.3g} x the bound"
        if (img == img.reshape(-1)[0]).all():
            assert not got.any()   # a constant image becomes all zeros


@settings(max_examples=examples(20), deadline=None,
          suppress_health_check=SLOW_OK)
@given(x=tt.tie_floats())
def test_to_uint8_conforms_at_ties(backend, x):
    """to_uint8 exact: ties to even, clipping, +-inf (spec/images.md, "uint8 conversion")."""
    ops, impl = _ops(backend, "to_uint8")
    got = np.asarray(ops.to_numpy(impl(ops.from_numpy(x))))
    np.testing.assert_array_equal(got, ref_ops.to_uint8(x))


@pytest.mark.parametrize("method", METHODS)
@settings(max_examples=examples(10), deadline=None,
          suppress_health_check=SLOW_OK)
@given(img=tt.edge_images(1, 16), augment=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_stain_normalize_conforms(backend, method, img, augment, seed):
    """An adapter's stain_normalize against the reference's transform within
    spec/stain.md's bound, edge images included: blank ones raise the reference's
    error (on_blank='error') or pass through unchanged (on_blank='passthrough')."""
    from tilespec.stain import BlankImageError, draw_stain_perturbation

    ops, impl = _ops(backend, "stain_normalize")
    delta = None
    if augment:
        z = np.random.default_rng(seed).standard_normal(StainNormalizer(method).normal_draws)
        delta = draw_stain_perturbation(StainNormalizer(method), z)
    for on_blank in ("error", "passthrough"):
        ref_norm = StainNormalizer(method, on_blank=on_blank)
        kw = dict(augment=True, perturbation=delta) if augment else {}
        try:
            want = ref_norm.transform(img, **kw)
        except BlankImageError as e:
            with pytest.raises(BlankImageError) as got_e:
                impl(StainNormalizer(method, on_blank=on_blank), ops.from_numpy(img),
                     perturbation=delta)
            assert str(got_e.value) == str(e)
            continue
        got = np.asarray(ops.to_numpy(impl(StainNormalizer(method, on_blank=on_blank),
                                           ops.from_numpy(img), perturbation=delta)))
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        assert diff.max(initial=0) <= tt.LEVELS[method], f"max diff {diff.max()}"


def test_float_image_errors_name_the_option(backend):
    """An op that needs uint8 given a float image says which option keeps images uint8."""
    ops, impl = _ops(backend, "standardize")
    img = np.zeros((4, 4, 3), np.float32)
    with pytest.raises(ValueError, match=r"pass standardize=False \(the default\)"):
        impl(ops.from_numpy(img), "unit")


# ------------------------------------------------------------------------ loaders

@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    layout = tt.TileDatasetLayout((("s0", "p0", "a", 7), ("s1", "p1", "b", 4),
                                   ("s2", "p1", "a", 5)), tile_px=TILE_PX)
    info = tt.write_tile_dataset(layout, tmp_path_factory.mktemp("conf"))
    return tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])


def _labels(dataset, kind):
    if kind == "category":
        return dataset.labels("category")[0]
    return tt.resolve_labels(kind, dataset.slides())


def _reference_options(backend, opts):
    """The reference loader's spelling of a backend's options: standardize=True is
    the backend's default mode (its ops' ``default_standardize``, 'unit' if unset)."""
    ref = dict(opts)
    if ref.get("standardize") is True:
        ref["standardize"] = getattr(plugins.ops_for(backend), "default_standardize", "unit")
    return ref


def _conforms_or_fails_alike(make_loader, make_reference, opts, layout, n):
    """assert_conforms, or, where the reference raises (at construction or at item k),
    the loader raises too, by item k, with the reference's message in its error."""
    ref_items = []
    try:
        for item in make_reference():
            ref_items.append(item)
            if n is not None and len(ref_items) >= n:
                break
    except Exception as e:  # noqa: BLE001 - the loader must fail alike
        with pytest.raises(Exception) as got:
            for k, _ in enumerate(make_loader()):
                if k >= len(ref_items):
                    break    # item k is where the reference failed
        first = str(e).splitlines()[0][:60]
        assert first in str(got.value), (str(e), str(got.value))
        return None
    return tt.assert_conforms(make_loader(), ref_items, n=n, layout=layout, options=opts)


#: Every stain method without 'n' (a normalizer with no stain draws) and with it.
STAIN_EXAMPLES = ([dict(normalizer=m, infinite=False, seed=1) for m in METHODS] +
                  [dict(normalizer=StainNormalizer(m), augment="xn", infinite=False, seed=2)
                   for m in METHODS])


def _with_examples(examples):
    def decorate(f):
        for opts in examples:
            f = example(opts=opts)(f)
        return f
    return decorate


#: Explicit examples of every loader: the stain regressions, the defaults, and a list
#: in which every value of every option occurs (tilespec.testing.covering_options).
#: Stain normalization after an inexact resize: the normalizer amplifies a one-level
#: difference of its input (found by a random draw: the TF adapter differed by 7 and
#: 9 grey levels here until its normalizer step was given the reference's resize).
STAIN_AFTER_RESIZE = [
    dict(normalizer="reinhard", crop_left=0, crop_width=4, resize_target=3,
         resize_method="bilinear", seed=0, infinite=False),
    dict(normalizer="macenko", resize_target=12, resize_method="area", seed=0,
         infinite=False)]
LOADER_EXAMPLES = (STAIN_EXAMPLES + STAIN_AFTER_RESIZE + [dict(seed=3, infinite=False)] +
                   tt.covering_options(TILE_PX))
INDEXED_EXAMPLES = ([dict(normalizer="reinhard", seed=1, epoch=0), dict(seed=1, epoch=1)] +
                    tt.covering_options(TILE_PX, indexed=True, num_tfrecords=3))


@settings(max_examples=examples(20), deadline=None,
          suppress_health_check=SLOW_OK)
@_with_examples(LOADER_EXAMPLES)
@given(opts=tt.loader_options(TILE_PX))
def test_loader_conforms_over_the_option_space(backend, dataset, opts):
    """``Dataset.<backend>(**opts)`` yields ``Dataset.numpy(**opts)``'s stream, for
    options drawn from the whole option space (tilespec.testing.loader_options)."""
    opts = dict(opts, labels=_labels(dataset, opts.get("labels")))
    layout = getattr(plugins.ops_for(backend), "layout", "HWC")
    n = None if opts.get("infinite") is False else INFINITE_ITEMS
    ref_opts = _reference_options(backend, opts)
    count = _conforms_or_fails_alike(
        lambda: plugins.make_loader(backend, dataset, opts),
        lambda: dataset.numpy(**ref_opts), ref_opts, layout, n)
    if count is not None:
        assert count == (n if n is not None else len(dataset.numpy(**ref_opts)))


def _indexed_items(ds):
    if hasattr(ds, "__getitem__") and hasattr(ds, "__len__"):
        return [ds[i] for i in range(len(ds))]
    return list(ds)


def _make_indexed(backend, paths, opts, epoch):
    ds = plugins.make_indexed(backend, paths, opts)
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(epoch)
    elif epoch:   # a dataset without set_epoch takes the epoch as an option (tf.data)
        ds = plugins.make_indexed(backend, paths, dict(opts, epoch=epoch))
    return ds


@settings(max_examples=examples(10), deadline=None,
          suppress_health_check=SLOW_OK)
@_with_examples(INDEXED_EXAMPLES)
@given(opts=tt.indexed_options(TILE_PX, 3))
def test_indexed_conforms_over_the_option_space(backend, dataset, opts):
    """The backend's indexed dataset equals ``tilespec.IndexedInterleaver`` item by item,
    for options drawn from the whole option space (tilespec.testing.indexed_options)."""
    opts = dict(opts)
    epoch = opts.pop("epoch")
    opts["labels"] = _labels(dataset, opts.get("labels"))
    paths = dataset.tfrecords()
    layout = getattr(plugins.ops_for(backend), "layout", "HWC")
    ref_opts = _reference_options(backend, opts)

    def reference():
        ref = tilespec.IndexedInterleaver(paths, **ref_opts)
        ref.set_epoch(epoch)
        return _indexed_items(ref)

    _conforms_or_fails_alike(lambda: iter(_indexed_items(_make_indexed(backend, paths, opts,
                                                                       epoch))),
                             reference, ref_opts, layout, None)


def test_default_is_uint8_and_true_is_the_backends_mode(backend, dataset):
    """semantics §4: standardize=False (uint8) is the default of every loader and indexed
    dataset; True is the backend's mode ('unit' for NumPy and torch, 'per_image' for
    TensorFlow)."""
    paths = dataset.tfrecords()
    mode = getattr(plugins.ops_for(backend), "default_standardize", "unit")
    for make in (lambda **kw: plugins.make_loader(backend, dataset, dict(seed=4, **kw)),
                 lambda **kw: plugins.make_indexed(backend, paths, dict(seed=4, **kw))):
        img = tt.to_numpy(next(iter(_first(make())))[0])
        assert img.dtype == np.uint8
        std = tt.to_numpy(next(iter(_first(make(standardize=True))))[0])
        assert std.dtype == np.float32
        hwc = np.moveaxis(img, 0, -1) if getattr(plugins.ops_for(backend), "layout",
                                                 "HWC") == "CHW" else img
        want = ref_ops.standardize(hwc, mode)
        got = np.moveaxis(std, 0, -1) if std.shape != want.shape else std
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _first(ds):
    if hasattr(ds, "__getitem__") and hasattr(ds, "__len__"):
        return [ds[0]]
    return ds


def _to_float(backend):
    """A transform returning float32 images, for the shipped backends."""
    if backend == "numpy":
        return lambda img: img.astype(np.float32) / 255
    if backend == "torch":
        return lambda img: img.float() / 255
    if backend == "tensorflow":
        import tensorflow as tf
        return lambda img: tf.cast(img, tf.float32) / 255
    pytest.skip(f"no float transform written for {backend}")


def test_a_float_transform_before_standardize_names_the_option(backend, dataset):
    """A transform returning floats followed by standardization: the error names the
    option that fixes it, in every backend; without standardization (the default) the
    transform's float image is yielded as it is."""
    to_float = _to_float(backend)
    with pytest.raises(Exception, match=r"standardize=False \(the default\)"):
        next(iter(plugins.make_loader(backend, dataset, dict(seed=0, standardize=True,
                                                             transform=to_float))))
    img = tt.to_numpy(next(iter(plugins.make_loader(backend, dataset,
                                                    dict(seed=0, transform=to_float))))[0])
    assert img.dtype == np.float32 and 0 <= img.min() and img.max() <= 1
