"""Pure image operations (spec/images.md, "Operations", "Resize", "Conformance").

Three groups: algebraic properties of the NumPy reference (hypothesis), the
errors it raises, and agreement with TensorFlow within the tolerances the spec
states (skipped when TensorFlow is not installed).
"""

import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tilespec import ops
from tilespec.resize import RESIZE_METHODS

# Tolerances of spec/images.md, "Conformance".
RESIZE_FLOAT_TOL = 5e-4      # grey levels, float output before rounding
BLUR_FLOAT_TOL = 5e-4
STD_TOL = 1e-6               # per_image: |a-b| <= STD_TOL * (1 + |b| + mean/std)
SCALE_AND_TRANSLATE = ("lanczos3", "lanczos5", "gaussian", "mitchellcubic")


def random_image(seed, h, w, batch=None):
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if batch is None else (batch, h, w, 3)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def smooth_image(h, w, phase=0.0):
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([127.5 + 120 * np.sin(x / 7.0 + c + phase) * np.cos(y / 11.0 - c)
                    for c in range(3)], -1)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@st.composite
def images(draw, max_side=12, batch=None):
    h = draw(st.integers(1, max_side))
    w = draw(st.integers(1, max_side))
    seed = draw(st.integers(0, 2**32 - 1))
    n = draw(st.one_of(st.none(), st.integers(0, 3))) if batch is None else batch
    return random_image(seed, h, w, n)


# --------------------------------------------------------------------------- flips, rot90, crop

@given(images())
def test_flips_are_involutions(img):
    assert np.array_equal(ops.flip_left_right(ops.flip_left_right(img)), img)
    assert np.array_equal(ops.flip_up_down(ops.flip_up_down(img)), img)


@given(images())
def test_flip_definitions(img):
    assert np.array_equal(ops.flip_left_right(img), img[..., :, ::-1, :])
    assert np.array_equal(ops.flip_up_down(img), img[..., ::-1, :, :])


@given(images(), st.integers(-9, 9))
def test_rot90_matches_numpy_and_is_periodic(img, k):
    out = ops.rot90(img, k)
    assert np.array_equal(out, np.rot90(img, k, axes=(img.ndim - 3, img.ndim - 2)))
    assert np.array_equal(out, ops.rot90(img, k % 4))
    assert np.array_equal(ops.rot90(ops.rot90(img, k), -k), img)


@given(images())
def test_rot90_four_times_is_identity_and_two_is_both_flips(img):
    r = img
    for _ in range(4):
        r = ops.rot90(r, 1)
    assert np.array_equal(r, img)
    assert np.array_equal(ops.rot90(img, 2), ops.flip_up_down(ops.flip_left_right(img)))


def test_rot90_is_counter_clockwise():
    img = np.zeros((2, 3, 3), np.uint8)
    img[0, 2] = 255                      # top-right corner
    out = ops.rot90(img, 1)
    assert out.shape == (3, 2, 3)
    assert out[0, 0, 0] == 255           # top-right moves to top-left


@given(images(batch=3))
def test_batch_ops_equal_per_image(batch):
    for f in (ops.flip_left_right, ops.flip_up_down, lambda x: ops.rot90(x, 3),
              lambda x: ops.standardize(x, "per_image"), lambda x: ops.gaussian_blur(x, 1.0),
              lambda x: ops.resize(x, (5, 7)), lambda x: ops.resize(x, 4, "bicubic", False)):
        out = f(batch)
        for i in range(len(batch)):
            assert np.array_equal(out[i], f(batch[i]))


def test_ops_return_new_arrays():
    img = random_image(0, 6, 6)
    before = img.copy()
    outs = [ops.flip_left_right(img), ops.flip_up_down(img), ops.rot90(img, 0),
            ops.crop(img, 0, 6), ops.resize(img, 6, "nearest"), ops.gaussian_blur(img, 0.5)]
    for out in outs:
        assert not np.shares_memory(out, img)
    assert np.array_equal(img, before)


@given(st.integers(1, 16), st.integers(1, 16), st.integers(0, 2**32 - 1), st.data())
def test_crop_then_resize_shapes(h, w, seed, data):
    img = random_image(seed, h, w)
    side = min(h, w)
    width = data.draw(st.integers(1, side))
    left = data.draw(st.integers(0, side - width))
    c = ops.crop(img, left, width)
    assert c.shape == (width, width, 3)
    assert np.array_equal(c, img[left:left + width, left:left + width])
    target = data.draw(st.one_of(st.integers(1, 9), st.tuples(st.integers(1, 9),
                                                             st.integers(1, 9))))
    method = data.draw(st.sampled_from(RESIZE_METHODS))
    out = ops.resize(c, target, method)
    hw = (target, target) if isinstance(target, int) else target
    assert out.shape == hw + (3,) and out.dtype == np.uint8


# --------------------------------------------------------------------------- resize

@pytest.mark.parametrize("method", RESIZE_METHODS)
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_weights_rows_sum_to_one(method, antialias):
    for n_in, n_out in [(1, 1), (1, 5), (5, 1), (7, 3), (3, 7), (30, 11), (11, 30), (16, 16)]:
        w = ops.resize_weights(n_in, n_out, method, antialias)
        assert w.shape == (n_out, n_in)
        # Positions are float32 (as in TF), so sums are 1 only to float32 precision.
        np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-5)
        if method in ("nearest", "area", "bilinear", "gaussian"):
            assert (w >= 0).all()


def test_resize_weights_is_a_fresh_copy():
    w = ops.resize_weights(8, 4)
    w[:] = 0
    assert ops.resize_weights(8, 4).sum() > 0


@pytest.mark.parametrize("method", SCALE_AND_TRANSLATE)
def test_antialias_only_matters_when_downscaling(method):
    for n_in, n_out in [(5, 9), (10, 31), (8, 8)]:
        assert np.array_equal(ops.resize_weights(n_in, n_out, method, True),
                              ops.resize_weights(n_in, n_out, method, False))
    assert not np.array_equal(ops.resize_weights(31, 10, method, True),
                              ops.resize_weights(31, 10, method, False))


def test_bilinear_upscale_same_with_or_without_antialias():
    for n_in, n_out in [(5, 9), (10, 31), (3, 4)]:
        np.testing.assert_allclose(ops.resize_weights(n_in, n_out, "bilinear", True),
                                   ops.resize_weights(n_in, n_out, "bilinear", False),
                                   atol=1e-6)


def test_nearest_and_area_ignore_antialias():
    for method in ("nearest", "area"):
        assert np.array_equal(ops.resize_weights(17, 5, method, True),
                              ops.resize_weights(17, 5, method, False))


def test_nearest_weights_pick_half_pixel_centres():
    w = ops.resize_weights(4, 2, "nearest")
    assert np.array_equal(w, [[0, 1, 0, 0], [0, 0, 0, 1]])   # floor((o + 0.5) * 2)
    assert np.array_equal(ops.resize_weights(2, 4, "nearest"),
                          [[1, 0], [1, 0], [0, 1], [0, 1]])


def test_area_weights_average_cells():
    np.testing.assert_allclose(ops.resize_weights(4, 2, "area"), [[.5, .5, 0, 0], [0, 0, .5, .5]])
    np.testing.assert_allclose(ops.resize_weights(3, 2, "area"),
                               [[2 / 3, 1 / 3, 0], [0, 1 / 3, 2 / 3]], atol=1e-7)


def test_bilinear_weights_half_pixel():
    # 2 -> 4: sample positions -0.25, 0.25, 0.75, 1.25.
    np.testing.assert_allclose(ops.resize_weights(2, 4, "bilinear", False),
                               [[1, 0], [.75, .25], [.25, .75], [0, 1]])


@pytest.mark.parametrize("method", RESIZE_METHODS)
def test_resize_keeps_constant_images(method):
    img = np.full((13, 9, 3), 201, np.uint8)
    for size in [(5, 4), (20, 31), (13, 9)]:
        for aa in (True, False):
            assert (ops.resize(img, size, method, aa) == 201).all()


@pytest.mark.parametrize("method", ["bilinear", "area", "nearest", "bicubic", "lanczos3"])
def test_resize_to_same_size_is_identity(method):
    img = random_image(3, 11, 7)
    assert np.array_equal(ops.resize(img, (11, 7), method), img)


def test_resize_nearest_equals_rounded_float():
    img = random_image(4, 9, 13)
    assert np.array_equal(ops.resize(img, (4, 20), "nearest"),
                          ops.to_uint8(ops.resize_float(img, (4, 20), "nearest")))


# --------------------------------------------------------------------------- blur

@pytest.mark.parametrize("sigma,size", [(0.5, 3), (1.0, 5), (1.5, 7), (2.0, 9), (0.75, 4),
                                        (0.2, 1)])
def test_blur_kernel_size_sum_and_symmetry(sigma, size):
    g = ops.gaussian_kernel(sigma)
    assert len(g) == size == int(4 * sigma + 1)
    assert abs(g.sum() - 1) < 1e-12
    offsets = np.arange(size) - (size - 1) // 2
    expected = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    np.testing.assert_allclose(g, expected / expected.sum(), rtol=1e-12)
    if size % 2:
        np.testing.assert_array_equal(g, g[::-1])
        assert g.argmax() == size // 2


@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 255),
       st.sampled_from([0.5, 1.0, 1.5, 2.0, 3.3]))
def test_blur_preserves_constant_images(h, w, value, sigma):
    img = np.full((h, w, 3), value, np.uint8)
    assert np.array_equal(ops.gaussian_blur(img, sigma), img)


@given(images(), st.sampled_from([0.5, 1.0, 2.0]))
def test_blur_stays_within_input_range_and_commutes_with_flips(img, sigma):
    out = ops.gaussian_blur(img, sigma)
    assert out.shape == img.shape and out.dtype == np.uint8
    if img.size:
        assert out.min() >= img.min() and out.max() <= img.max()
    # Symmetric kernel and mirror padding: blur commutes with flips and rot90.
    assert np.array_equal(ops.gaussian_blur(ops.flip_left_right(img), sigma),
                          ops.flip_left_right(out))
    assert np.array_equal(ops.gaussian_blur(ops.rot90(img, 1), sigma), ops.rot90(out, 1))


def test_blur_mirror_padding_does_not_repeat_the_edge():
    assert list(ops.reflect_index(np.arange(-3, 8), 5)) == [3, 2, 1, 0, 1, 2, 3, 4, 3, 2, 1]
    assert list(ops.reflect_index(np.arange(-2, 3), 1)) == [0] * 5
    # One row [0, 90, 0, ...] blurred with sigma 0.5 (kernel 3): the edge pixel's mirror
    # neighbour is pixel 1 (90), not pixel 0 itself.
    g = ops.gaussian_kernel(0.5)
    img = np.zeros((1, 4, 3), np.uint8)
    img[0, 1] = 90
    out = ops.gaussian_blur(img, 0.5)
    assert out[0, 0, 0] == np.rint(90 * 2 * g[0])


# --------------------------------------------------------------------------- standardize, uint8

@given(images())
def test_standardize_unit(img):
    out = ops.standardize(img, "unit")
    assert out.dtype == np.float32 and out.shape == img.shape
    assert np.array_equal(out, img.astype(np.float32) / np.float32(127.5) - np.float32(1))
    assert out.size == 0 or (out.min() >= -1 and out.max() <= 1)


@given(images(max_side=16))
def test_standardize_per_image(img):
    out = ops.standardize(img, "per_image")
    assert out.dtype == np.float32 and out.shape == img.shape
    flat_in = img.reshape(-1, *img.shape[-3:]).astype(np.float64)
    flat_out = out.reshape(flat_in.shape).astype(np.float64)
    for x, y in zip(flat_in, flat_out):
        assert abs(y.mean()) < 1e-4
        if x.std() * np.sqrt(x.size) >= 1:       # std above the floor 1/sqrt(N)
            assert abs(y.std() - 1) < 1e-4
        if x.min() == x.max():
            assert (y == 0).all()


def test_standardize_floor_on_std():
    img = np.full((4, 4, 3), 50, np.uint8)
    img[0, 0, 0] = 51
    x = img.astype(np.float64)
    expected = (x - x.mean()) / max(x.std(), 1 / np.sqrt(48))
    assert x.std() < 1 / np.sqrt(48)
    bound = STD_TOL * (1 + np.abs(expected) + x.mean() * np.sqrt(48))
    assert (np.abs(ops.standardize(img, "per_image") - expected) <= bound).all()


def test_to_uint8_rounds_half_to_even_and_clips():
    x = np.array([0.5, 1.5, 2.5, 3.49, -0.4, -7, 254.5, 255.5, 300, np.inf, -np.inf])
    assert ops.to_uint8(x).tolist() == [0, 2, 2, 3, 0, 0, 254, 255, 255, 255, 0]
    assert ops.to_uint8(np.array([-5, 300], np.int64)).tolist() == [0, 255]
    with pytest.raises(ValueError, match="NaN"):
        ops.to_uint8(np.array([1.0, np.nan]))


# --------------------------------------------------------------------------- JPEG

def test_jpeg_round_trip_shape_and_determinism():
    img = smooth_image(24, 40)
    out = ops.jpeg(img, 75)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out, ops.jpeg(img, 75))
    assert np.abs(out.astype(int) - img).mean() < 4
    assert np.array_equal(ops.jpeg(np.stack([img, img]), 75)[1], out)


def test_jpeg_encoding_is_baseline_420():
    from PIL import Image

    data = ops.jpeg_encode(smooth_image(16, 16), 90)
    assert b"\xff\xc0" in data and b"\xff\xc2" not in data       # SOF0 (baseline)
    with Image.open(io.BytesIO(data)) as im:
        assert im.layer[0][1:3] == (2, 2) and im.layer[1][1:3] == (1, 1)   # 4:2:0


# --------------------------------------------------------------------------- errors

BAD_SHAPES = [(8, 8), (8, 8, 4), (8, 8, 1), (2, 8, 8, 1), (1, 2, 8, 8, 3), (3, 8, 8)]


@pytest.mark.parametrize("shape", BAD_SHAPES)
def test_non_rgb_shapes_are_rejected(shape):
    img = np.zeros(shape, np.uint8)
    for f in (ops.flip_left_right, ops.flip_up_down, lambda x: ops.rot90(x, 1),
              lambda x: ops.crop(x, 0, 1), lambda x: ops.resize(x, 4),
              lambda x: ops.gaussian_blur(x, 1.0), lambda x: ops.jpeg(x, 80),
              lambda x: ops.standardize(x, "unit")):
        with pytest.raises(ValueError, match=r"shape \(" + ", ".join(map(str, shape))):
            f(img)


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int64, np.bool_])
def test_non_uint8_is_rejected(dtype):
    img = np.zeros((4, 4, 3), dtype)
    for f in (ops.flip_left_right, lambda x: ops.resize(x, 2), lambda x: ops.jpeg(x, 80),
              lambda x: ops.standardize(x, "per_image"), lambda x: ops.gaussian_blur(x, 1)):
        with pytest.raises(ValueError, match=np.dtype(dtype).name):
            f(img)


def test_non_arrays_and_empty_images_are_rejected():
    with pytest.raises(ValueError, match="NumPy array"):
        ops.flip_left_right([[[0, 0, 0]]])
    with pytest.raises(ValueError, match="empty"):
        ops.resize(np.zeros((0, 4, 3), np.uint8), 2)


@pytest.mark.parametrize("left,width", [(-1, 3), (0, 9), (6, 3), (8, 1), (2, 7)])
def test_crop_outside_the_image_names_box_and_size(left, width):
    img = np.zeros((8, 10, 3), np.uint8)
    with pytest.raises(ValueError) as e:
        ops.crop(img, left, width)
    msg = str(e.value)
    assert f"[{left}, {left + width})" in msg and "height 8, width 10" in msg


@pytest.mark.parametrize("left,width", [(0, 0), (1, -2), (1.0, 2), (0, True), ("0", 2)])
def test_crop_bad_arguments(left, width):
    with pytest.raises(ValueError, match="crop"):
        ops.crop(np.zeros((8, 8, 3), np.uint8), left, width)


@pytest.mark.parametrize("size", [0, -3, (0, 4), (4, -1), (4,), (1, 2, 3), 2.5, (2.0, 3),
                                  True, "4", None])
def test_resize_bad_size(size):
    with pytest.raises(ValueError, match="resize size"):
        ops.resize(np.zeros((8, 8, 3), np.uint8), size)


def test_resize_bad_method_lists_valid_ones():
    with pytest.raises(ValueError) as e:
        ops.resize(np.zeros((8, 8, 3), np.uint8), 4, method="lanczos")
    for name in ("'lanczos'",) + RESIZE_METHODS:
        assert name in str(e.value)
    with pytest.raises(ValueError, match="lanczos3"):
        ops.resize_weights(8, 4, "Bilinear")
    with pytest.raises(ValueError, match="out_size must be positive"):
        ops.resize_weights(8, 0)


@pytest.mark.parametrize("sigma", [0, -1, float("nan"), float("inf"), "1", None, True])
def test_blur_bad_sigma(sigma):
    with pytest.raises(ValueError, match="sigma"):
        ops.gaussian_blur(np.zeros((4, 4, 3), np.uint8), sigma)


def test_other_bad_arguments():
    img = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(ValueError, match="0..100"):
        ops.jpeg(img, 101)
    with pytest.raises(ValueError, match="0..100"):
        ops.jpeg(img, -1)
    with pytest.raises(ValueError, match="quality"):
        ops.jpeg(img, 75.0)
    with pytest.raises(ValueError, match="k must be an integer"):
        ops.rot90(img, 1.0)
    with pytest.raises(ValueError, match="unit, per_image"):
        ops.standardize(img, "fixed")


# --------------------------------------------------------------------------- against TensorFlow

@pytest.fixture(scope="module")
def tf():
    tf = pytest.importorskip("tensorflow")
    return tf


def test_geometry_matches_tf(tf):
    for img in (random_image(10, 9, 14), random_image(11, 5, 7, batch=2)):
        assert np.array_equal(ops.flip_left_right(img), tf.image.flip_left_right(img).numpy())
        assert np.array_equal(ops.flip_up_down(img), tf.image.flip_up_down(img).numpy())
        for k in range(-1, 5):
            assert np.array_equal(ops.rot90(img, k), tf.image.rot90(img, k).numpy())
        for left, width in [(0, 5), (2, 3), (4, 1)]:
            assert np.array_equal(ops.crop(img, left, width),
                                  tf.image.crop_to_bounding_box(img, left, left, width,
                                                                width).numpy())


def test_standardize_matches_tf(tf):
    rng = np.random.default_rng(12)
    cases = [random_image(s, s, s) for s in (1, 2, 7, 64, 299)]
    cases += [rng.integers(100, 103, (64, 64, 3)).astype(np.uint8),
              np.full((8, 8, 3), 7, np.uint8), random_image(13, 20, 30, batch=3),
              (200 + (rng.random((50, 50, 3)) < 0.01)).astype(np.uint8)]
    for img in cases:
        assert np.array_equal(ops.standardize(img, "unit"),
                              (tf.cast(img, tf.float32) / 127.5 - 1).numpy())
        ref = tf.image.per_image_standardization(img).numpy().astype(np.float64)
        out = ops.standardize(img, "per_image").astype(np.float64)
        x = img.reshape(-1, *img.shape[-3:]).astype(np.float64)
        mean = x.mean(axis=(1, 2, 3))
        std = np.maximum(x.std(axis=(1, 2, 3)), 1 / np.sqrt(x[0].size))
        bound = STD_TOL * (1 + np.abs(ref) + (mean / std).reshape(img.shape[:-3] + (1, 1, 1)))
        assert (np.abs(out - ref) <= bound).all(), img.shape


RESIZE_SHAPES = {
    "down-square": ((64, 64), (29, 29)),
    "up-square": ((29, 29), (64, 64)),
    "down-rect": ((60, 45), (23, 31)),
    "up-rect": ((23, 31), (60, 45)),
    "mixed": ((40, 20), (25, 47)),
}


def _assert_rounding_agrees(ref_float, ours_uint8, tol):
    """uint8 results may differ by 1 only where TF's float is within tol of a tie."""
    ref_uint8 = np.clip(np.rint(ref_float), 0, 255)
    diff = np.abs(ref_uint8 - ours_uint8)
    assert diff.max(initial=0) <= 1
    near_tie = np.abs(np.abs(ref_float - np.floor(ref_float)) - 0.5) <= tol
    assert near_tie[diff > 0].all()


@pytest.mark.parametrize("method", RESIZE_METHODS)
@pytest.mark.parametrize("antialias", [True, False])
def test_resize_matches_tf(tf, method, antialias):
    for seed, (name, (size_in, size_out)) in enumerate(RESIZE_SHAPES.items()):
        for img in (random_image(seed, *size_in), smooth_image(*size_in)):
            ref = tf.image.resize(img, size_out, method=method, antialias=antialias).numpy()
            ours = ops.resize(img, size_out, method, antialias)
            assert ours.shape == size_out + (3,)
            if method == "nearest":
                assert ref.dtype == np.uint8 and np.array_equal(ours, ref)
                continue
            ref = ref.astype(np.float64)
            err = np.abs(ops.resize_float(img, size_out, method, antialias) - ref).max()
            assert err <= RESIZE_FLOAT_TOL, (name, err)
            _assert_rounding_agrees(ref, ours, RESIZE_FLOAT_TOL)


def test_resize_matches_tf_on_edge_sizes(tf):
    rng = np.random.default_rng(14)
    for method in RESIZE_METHODS:
        for size_in, size_out in [((1, 1), (3, 2)), ((5, 1), (1, 4)), ((2, 9), (7, 1)),
                                  ((37, 3), (4, 38))]:
            img = rng.integers(0, 256, size_in + (3,), dtype=np.uint8)
            for aa in (True, False):
                ref = tf.image.resize(img, size_out, method=method, antialias=aa).numpy()
                ours = ops.resize_float(img, size_out, method, aa)
                assert np.abs(ours - ref).max() <= RESIZE_FLOAT_TOL, (method, size_in, aa)


JPEG_QUALITIES = [0, 25, 50, 63, 75, 88, 95, 100]


def _after_app0(data):
    """JPEG bytes from the first segment after the SOI and JFIF APP0 marker segments."""
    assert data[:4] == b"\xff\xd8\xff\xe0"
    return data[4 + int.from_bytes(data[4:6], "big"):]


def test_jpeg_matches_tf_exactly(tf):
    imgs = [random_image(15, 32, 32), smooth_image(37, 53), random_image(16, 17, 9),
            np.full((16, 16, 3), 200, np.uint8), smooth_image(8, 64, phase=1.0)]
    for q in JPEG_QUALITIES:
        for img in imgs:
            encoded = tf.io.encode_jpeg(img, quality=q).numpy()
            ref = tf.io.decode_jpeg(encoded, dct_method="INTEGER_ACCURATE").numpy()
            assert np.array_equal(ops.jpeg(img, q), ref), q
            # Same tables, same scan: only the JFIF header (pixel density) differs.
            assert _after_app0(ops.jpeg_encode(img, q)) == _after_app0(encoded), q


def _tf_blur(tf, img, sigma):
    n = int(4 * sigma + 1)
    offsets = np.arange(n) - (n - 1) // 2
    g = np.exp(-offsets ** 2 / (2 * sigma ** 2))
    g /= g.sum()
    kernel = np.tile(np.outer(g, g).astype(np.float32)[:, :, None, None], (1, 1, 3, 1))
    a, b = (n - 1) // 2, n - 1 - (n - 1) // 2
    x = tf.pad(tf.cast(img[None], tf.float32), [[0, 0], [a, b], [a, b], [0, 0]], mode="REFLECT")
    return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "VALID")[0].numpy()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.5, 2.0, 0.75])
def test_blur_matches_tf_filter(tf, sigma):
    for img in (random_image(17, 40, 40), random_image(18, 23, 31), smooth_image(30, 30)):
        ref = _tf_blur(tf, img, sigma).astype(np.float64)
        wh = ops.blur_weights(img.shape[0], sigma)
        ww = ops.blur_weights(img.shape[1], sigma)
        ours_float = np.einsum("ih,hwc,jw->ijc", wh, img.astype(np.float64), ww)
        assert np.abs(ours_float - ref).max() <= BLUR_FLOAT_TOL
        _assert_rounding_agrees(ref, ops.gaussian_blur(img, sigma), BLUR_FLOAT_TOL)


# --------------------------------------------------------------------------- fast paths
# The ops compute faster than their definitions (banded resize products, SciPy blur
# passes, integer statistics, Pillow pixel permutations); these tests hold them to
# the definitions in spec/images.md.

def _dense_separable(img, wh, ww):
    """The spec's definition: out = A_H @ img @ A_W.T per channel, float64."""
    return np.einsum("pi,...ijc,qj->...pqc", wh, img.astype(np.float64), ww)


@pytest.mark.parametrize("method", [m for m in RESIZE_METHODS if m != "nearest"])
def test_banded_resize_equals_the_dense_product(method):
    rng = np.random.default_rng(31)
    for (h, w), size in [((37, 23), (11, 50)), ((8, 64), (64, 9)), ((5, 5), (1, 1)),
                         ((1, 40), (3, 17))]:
        img = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
        for aa in (True, False):
            wh = ops.resize_weights(h, size[0], method, aa)
            ww = ops.resize_weights(w, size[1], method, aa)
            want = _dense_separable(img, wh, ww)
            got = ops.resize_float(img, size, method, aa)
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-9)
            assert np.array_equal(ops.resize(img, size, method, aa), ops.to_uint8(want)) or \
                np.all(np.abs(want - np.floor(want) - 0.5)[ops.resize(img, size, method, aa)
                                                           != ops.to_uint8(want)] < 1e-9)


def test_band_blocks_cover_every_non_zero_weight():
    from tilespec.resize import band_blocks
    for method in RESIZE_METHODS:
        w = ops.resize_weights(97, 40, method)
        rebuilt = np.zeros_like(w)
        for o0, o1, i0, i1, block in band_blocks(w, rows=7):
            rebuilt[o0:o1, i0:i1] = block
        assert np.array_equal(rebuilt, w)


@pytest.mark.parametrize("sigma", [0.5, 0.75, 1.0, 2.0, 3.3])
def test_blur_equals_the_folded_matrix_definition(sigma):
    rng = np.random.default_rng(7)
    for shape in [(1, 1), (1, 6), (2, 3), (4, 13), (13, 4), (30, 31)]:
        img = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
        want = _dense_separable(img, ops.blur_weights(shape[0], sigma),
                                ops.blur_weights(shape[1], sigma))
        got = ops.gaussian_blur(img, sigma).astype(np.float64)
        # Equal to the rounded definition except at a rounding tie of the float result.
        differ = got != ops.to_uint8(want)
        assert np.all(np.abs(want[differ] - np.floor(want[differ]) - 0.5) < 1e-9), shape


def test_per_image_statistics_equal_the_two_pass_float64_definition():
    rng = np.random.default_rng(11)
    for i in range(200):
        h, w = rng.integers(1, 40, 2)
        lo = int(rng.integers(0, 250))
        img = rng.integers(lo, min(256, lo + 1 + int(rng.integers(1, 30))) if i % 2 else 256,
                           (h, w, 3), dtype=np.uint8)
        rows = img.reshape(1, -1).astype(np.float64)
        mean = rows.mean()
        std = np.sqrt(np.mean((rows - mean) ** 2))
        adj = max(std, 1.0 / np.sqrt(rows.size))
        want = (img.astype(np.float32) - np.float32(mean)) / np.float32(adj)
        assert np.array_equal(ops.standardize(img, "per_image"), want)


def test_geometry_on_views_and_empty_batches():
    img = np.random.default_rng(3).integers(0, 256, (9, 14, 3), dtype=np.uint8)
    view = img[1::2, ::-1]                      # not contiguous
    assert np.array_equal(ops.flip_left_right(view), view[:, ::-1])
    for k in range(4):
        got = ops.rot90(view, k)
        assert np.array_equal(got, np.rot90(view, k)) and got.flags.c_contiguous
        assert got.flags.writeable and not np.shares_memory(got, img)
    empty = np.zeros((0, 5, 7, 3), np.uint8)
    assert ops.flip_left_right(empty).shape == (0, 5, 7, 3)
    assert ops.rot90(empty, 1).shape == (0, 7, 5, 3)
