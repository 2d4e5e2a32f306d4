"""Op-level conformance: each image op of a backend against the reference
(spec/images.md, "Conformance"; spec/adapters.md, "The conformance suite")."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tilespec import ops as ref_ops
from tilespec import plugins, testing as tt

TILESPEC_CONFORMANCE = True

# (op, argument strategy, grey-level tolerance from spec/images.md)
OP_CASES = {
    "flip_left_right": (st.just(()), 0),
    "flip_up_down": (st.just(()), 0),
    "rot90": (st.tuples(st.integers(0, 3)), 0),
    "crop": (st.tuples(st.integers(0, 1), st.integers(1, 2)), 0),
    "jpeg": (st.tuples(st.integers(50, 100)), 0),
    "gaussian_blur": (st.tuples(st.sampled_from([0.5, 1.0, 1.5, 2.0])), 1),
    "resize": (st.tuples(st.integers(1, 40), st.sampled_from(
        ["lanczos3", "bilinear", "bicubic", "nearest", "area"]), st.booleans()), 1),
}


@pytest.mark.parametrize("op", sorted(OP_CASES))
@settings(max_examples=10, deadline=None)
@given(img=tt.images(3, 24), data=st.data())
def test_op_conforms(backend, op, img, data):
    """uint8 results within the op's bound (exact for the exact ops)."""
    ops = plugins.ops_for(backend)
    impl = getattr(ops, op, None)
    if impl is None:
        pytest.skip(f"{backend} does not implement {op}")
    args_strategy, levels = OP_CASES[op]
    args = data.draw(args_strategy)
    want = getattr(ref_ops, op)(img, *args)
    got = np.asarray(ops.to_numpy(impl(ops.from_numpy(img), *args)))
    assert got.shape == want.shape and got.dtype == want.dtype, \
        f"{backend}.{op}{args}: {got.shape} {got.dtype}, reference {want.shape} {want.dtype}"
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    assert diff.max(initial=0) <= levels, f"{backend}.{op}{args}: max diff {diff.max()}"


@pytest.mark.parametrize("mode", ["unit", "per_image"])
def test_standardize_conforms(backend, mode):
    """'unit' exact; 'per_image' within spec/images.md's bound, flat images included."""
    ops = plugins.ops_for(backend)
    if getattr(ops, "standardize", None) is None:
        pytest.skip(f"{backend} does not implement standardize")
    rng = np.random.default_rng(0)
    for img in (rng.integers(0, 256, (17, 9, 3), dtype=np.uint8),
                np.full((8, 8, 3), 77, dtype=np.uint8)):
        got = np.asarray(ops.to_numpy(ops.standardize(ops.from_numpy(img), mode)))
        want = ref_ops.standardize(img, mode)
        assert got.dtype == np.float32
        m = float(img.mean())
        s = max(float(img.std()), 1 / np.sqrt(img.size))
        tol = 0 if mode == "unit" else 1e-6 * (1 + np.abs(want) + m / s)
        assert np.all(np.abs(got.astype(np.float64) - want) <= tol + 1e-7), \
            f"{backend} standardize {mode!r}"
