"""tilespec_torch.ops against the reference ops (spec/adapter_torch.md, "Ops")."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")

from tilespec import StainNormalizer, ops as ref  # noqa: E402
from tilespec import testing as tt  # noqa: E402
from tilespec.stain import draw_stain_perturbation  # noqa: E402
from tilespec_torch import ops  # noqa: E402

FEW = settings(max_examples=max(5, settings.default.max_examples // 4))


def run(op, img, *args):
    """The torch op on the CHW form of ``img``, as an HWC array."""
    out = getattr(ops, op)(ops.from_numpy(img), *args)
    assert isinstance(out, torch.Tensor)
    return ops.to_numpy(out)


def levels(a, b):
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max(initial=0))


def test_layout_and_boundary_conversion():
    img = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    t = ops.from_numpy(img)
    assert t.shape == (3, 2, 3) and t.dtype == torch.uint8 and t.is_contiguous()
    assert int(t[1, 0, 2]) == int(img[0, 2, 1])
    np.testing.assert_array_equal(ops.to_numpy(t), img)
    assert ops.layout == "CHW"
    with pytest.raises(ValueError, match="HWC or NHWC"):
        ops.from_numpy(np.zeros((4, 4), np.uint8))


@FEW
@given(img=tt.images(1, 20), k=st.integers(-5, 5))
def test_exact_geometry(img, k):
    for op, args in (("flip_left_right", ()), ("flip_up_down", ()), ("rot90", (k,))):
        np.testing.assert_array_equal(run(op, img, *args), getattr(ref, op)(img, *args))


@FEW
@given(batch=tt.images(1, 16, batch=True), k=st.integers(0, 3), q=st.integers(50, 100))
def test_batches_are_stacks_of_single_results(batch, k, q):
    for op, args in (("flip_left_right", ()), ("flip_up_down", ()), ("rot90", (k,)),
                     ("jpeg", (q,)), ("gaussian_blur", (1.0,)), ("resize", (7, "bilinear"))):
        got = run(op, batch, *args)
        singles = np.stack([run(op, im, *args) for im in batch])
        np.testing.assert_array_equal(got, singles)


@FEW
@given(img=tt.images(1, 24), data=st.data())
def test_crop_is_exact(img, data):
    h, w = img.shape[:2]
    width = data.draw(st.integers(1, min(h, w)))
    left = data.draw(st.integers(0, min(h, w) - width))
    np.testing.assert_array_equal(run("crop", img, left, width), ref.crop(img, left, width))


def test_crop_outside_the_image_names_the_box():
    img = ops.from_numpy(np.zeros((8, 10, 3), np.uint8))
    with pytest.raises(ValueError, match=r"\[5, 9\) is outside the image of height 8, width 10"):
        ops.crop(img, 5, 4)


@FEW
@given(img=tt.images(1, 24), size=st.integers(1, 30),
       method=st.sampled_from(ref.RESIZE_METHODS), aa=st.booleans())
def test_resize_within_one_level(img, size, method, aa):
    want = ref.resize(img, size, method, aa)
    got = run("resize", img, size, method, aa)
    assert got.shape == want.shape
    assert levels(got, want) <= (0 if method == "nearest" else 1)


@FEW
@given(img=tt.images(1, 24), sigma=st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.3]))
def test_blur_within_one_level(img, sigma):
    """Includes images smaller than the kernel: mirror padding folds like the reference."""
    assert levels(run("gaussian_blur", img, sigma), ref.gaussian_blur(img, sigma)) <= 1


@FEW
@given(img=tt.images(2, 24), q=st.integers(0, 100))
def test_jpeg_is_exact(img, q):
    np.testing.assert_array_equal(run("jpeg", img, q), ref.jpeg(img, q))


@FEW
@given(img=tt.images(1, 24, batch=True), mode=st.sampled_from(["unit", "per_image"]))
def test_standardize(img, mode):
    got = ops.standardize(ops.from_numpy(img), mode)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(ops.to_numpy(got), ref.standardize(img, mode), rtol=1e-5,
                               atol=1e-5)


def test_unit_standardize_is_bit_exact():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    got = ops.to_numpy(ops.standardize(ops.from_numpy(img), "unit"))
    np.testing.assert_array_equal(got, ref.standardize(img, "unit"))


@FEW
@given(img=tt.images(1, 24), mode=st.sampled_from(["unit", "per_image"]),
       k=st.integers(0, 3))
def test_standardize_into_out_equals_a_new_result(img, mode, k):
    """out= (a batch row) holds exactly what a new tensor would, also for the
    non-contiguous layout a rotation leaves."""
    x = ops.rot90(ops.from_numpy(img), k)
    batch = torch.full((2,) + tuple(x.shape), float("nan"))
    got = ops.standardize(x, mode, out=batch[1])
    assert got.data_ptr() == batch[1].data_ptr()
    assert torch.equal(batch[1], ops.standardize(x, mode))
    assert torch.isnan(batch[0]).all()


def test_standardize_rejects_a_bad_out():
    img = ops.from_numpy(np.zeros((4, 4, 3), np.uint8))
    for bad in (torch.empty((3, 4, 5)), torch.empty((3, 4, 4), dtype=torch.float64),
                np.empty((3, 4, 4), np.float32)):
        with pytest.raises(ValueError, match="out= must be a float32 tensor"):
            ops.standardize(img, "unit", out=bad)


def test_to_uint8_rounds_ties_to_even_and_clips():
    x = torch.tensor([0.5, 1.5, 2.5, -3.0, 300.0, 254.5], dtype=torch.float64)
    assert ops.to_uint8(x).tolist() == [0, 2, 2, 0, 255, 254]
    with pytest.raises(ValueError, match="NaN"):
        ops.to_uint8(torch.tensor([float("nan")]))


@pytest.mark.parametrize("bad, what", [
    (np.zeros((3, 4, 4), np.float32), "dtype"),
    (np.zeros((4, 4, 4), np.uint8), "channel axis 3"),
    (np.zeros((4, 4), np.uint8), "CHW or NCHW"),
])
def test_bad_images_are_rejected(bad, what):
    for op, args in (("flip_left_right", ()), ("rot90", (1,)), ("resize", (3,)),
                     ("gaussian_blur", (1.0,)), ("standardize", ("unit",))):
        with pytest.raises(ValueError, match=what):
            getattr(ops, op)(torch.from_numpy(bad), *args)


def test_bad_parameters_are_rejected():
    img = ops.from_numpy(np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown resize method"):
        ops.resize(img, 3, "cubic")
    with pytest.raises(ValueError, match="sigma"):
        ops.gaussian_blur(img, -1)
    with pytest.raises(ValueError, match="unknown standardize mode"):
        ops.standardize(img, "z")
    with pytest.raises(ValueError, match="k must be an integer"):
        ops.rot90(img, 1.0)


def test_ops_do_not_modify_their_input():
    img = np.random.default_rng(0).integers(0, 256, (9, 9, 3), dtype=np.uint8)
    t = ops.from_numpy(img)
    before = t.clone()
    for op, args in (("flip_left_right", ()), ("rot90", (0,)), ("crop", (0, 9)),
                     ("resize", (9, "nearest")), ("gaussian_blur", (1.0,)),
                     ("standardize", ("unit",))):
        out = getattr(ops, op)(t, *args)
        assert out.data_ptr() != t.data_ptr()
    assert torch.equal(t, before)


@pytest.mark.parametrize("method", ["reinhard", "reinhard_fast", "macenko"])
def test_stain_normalize_equals_reference(method, demo_dataset):
    import tilespec

    path = sorted(p for p in __import__("os").listdir(demo_dataset["tfrecords"])
                  if p.endswith(".tfrecords"))[0]
    payload = next(tilespec.read_records(f"{demo_dataset['tfrecords']}/{path}"))
    img = tilespec.decode_image(tilespec.parse_tile(payload).image_raw)
    norm = StainNormalizer(method)
    tol = tt.image_tolerance({"normalizer": method})   # float32 torch ops: test_torch_stain.py
    assert levels(ops.to_numpy(ops.stain_normalize(norm, ops.from_numpy(img))),
                  norm.transform(img)) <= tol.max_abs
    z = np.random.default_rng(1).standard_normal(norm.normal_draws)
    delta = draw_stain_perturbation(norm, z)
    assert levels(ops.to_numpy(ops.stain_normalize(norm, ops.from_numpy(img), perturbation=delta)),
                  norm.transform(img, augment=True, perturbation=delta)) <= tol.max_abs
