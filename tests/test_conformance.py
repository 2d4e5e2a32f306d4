"""The conformance suite, run against every registered adapter (spec/adapters.md).

Like a test suite pointed at any implementation: every backend that an installed
distribution registers under the ``tilespec.adapters`` entry point (the NumPy
reference, the shipped torch and TensorFlow adapters, third-party ones) is checked
here against the reference: each of its image ops on random images, and its loader
item by item with :func:`tilespec.testing.assert_conforms`.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tilespec
from tilespec import ops as ref_ops
from tilespec import plugins, testing as tt

BACKENDS = plugins.backends()

# (op, argument strategy, grey-level tolerance from spec/images.md)
OP_CASES = {
    "flip_left_right": (st.just(()), 0),
    "flip_up_down": (st.just(()), 0),
    "rot90": (st.tuples(st.integers(0, 3)), 0),
    "jpeg": (st.tuples(st.integers(50, 100)), 0),
    "gaussian_blur": (st.tuples(st.sampled_from([0.5, 1.0, 1.5, 2.0])), 1),
    "resize": (st.tuples(st.integers(1, 40), st.sampled_from(
        ["lanczos3", "bilinear", "bicubic", "nearest", "area"]), st.booleans()), 1),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("op", sorted(OP_CASES))
@settings(max_examples=15)
@given(img=tt.images(2, 24), data=st.data())
def test_op_conforms(backend, op, img, data):
    ops = plugins.ops_for(backend)
    impl = getattr(ops, op, None)
    if impl is None:
        pytest.skip(f"{backend} does not implement {op}")
    args_strategy, levels = OP_CASES[op]
    args = data.draw(args_strategy)
    want = getattr(ref_ops, op)(img, *args)
    got = np.asarray(ops.to_numpy(impl(ops.from_numpy(img), *args)))
    assert got.shape == want.shape and got.dtype == want.dtype
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max(initial=0) <= levels, f"{backend}.{op}{args}: max diff {diff.max()}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["unit", "per_image"])
def test_standardize_conforms(backend, mode):
    ops = plugins.ops_for(backend)
    if getattr(ops, "standardize", None) is None:
        pytest.skip(f"{backend} does not implement standardize")
    img = np.random.default_rng(0).integers(0, 256, (17, 9, 3), dtype=np.uint8)
    got = np.asarray(ops.to_numpy(ops.standardize(ops.from_numpy(img), mode)))
    want = ref_ops.standardize(img, mode)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    layout = tt.TileDatasetLayout((("s0", "p0", "a", 7), ("s1", "p1", "b", 4),
                                   ("s2", "p1", "a", 5)), tile_px=16)
    info = tt.write_tile_dataset(layout, tmp_path_factory.mktemp("conf"))
    return tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])


LOADER_CASES = [
    dict(infinite=False, standardize=False, incl_slidenames=True, incl_loc=True),
    dict(infinite=False, batch_size=4, augment="xyr", standardize="unit", shuffle=True),
    dict(infinite=True, batch_size=3, augment="xyrjb", standardize="per_image",
         incl_slidenames=True),
    dict(infinite=False, resize_target=12, crop_left=2, crop_width=14, standardize=False),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", range(len(LOADER_CASES)))
def test_loader_conforms(backend, case, dataset):
    opts = dict(LOADER_CASES[case], seed=1234, labels="category")
    loader = plugins.make_loader(backend, dataset, opts)
    reference = dataset.numpy(**opts)
    layout = getattr(plugins.ops_for(backend), "layout", "HWC")
    n = 6 if opts["infinite"] else None
    count = tt.assert_conforms(loader, reference, n=n, layout=layout, options=opts)
    assert count == (6 if opts["infinite"] else len(reference))
