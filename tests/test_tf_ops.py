"""spec/adapter_tf.md, "Ops": the TensorFlow image ops against the reference.

tests/test_conformance.py already checks every op of the hook on random single
images; here: batches, tensors as drawn parameters (the loader's form), decoding,
tiny images under blur, uint8 rounding, errors.
"""

import io

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

tf = pytest.importorskip("tensorflow")
tfops = pytest.importorskip("tilespec_tf.ops")

from tilespec import ops as ref  # noqa: E402
from tilespec import testing as tt  # noqa: E402
from tilespec.augment import BLUR_SIGMAS  # noqa: E402
from tilespec.images import decode_image  # noqa: E402


def np_(x):
    return tfops.to_numpy(x)


def levels(a, b):
    return int(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max(initial=0))


@settings(max_examples=max(5, settings.default.max_examples // 4))
@given(batch=tt.images(1, 20, batch=True), k=st.integers(-5, 5), data=st.data())
def test_batches_equal_the_stack_of_images(batch, k, data):
    x = tfops.from_numpy(batch)
    assert np.array_equal(np_(tfops.flip_left_right(x)), ref.flip_left_right(batch))
    assert np.array_equal(np_(tfops.flip_up_down(x)), ref.flip_up_down(batch))
    assert np.array_equal(np_(tfops.rot90(x, k)), ref.rot90(batch, k))
    size = data.draw(st.integers(1, 24))
    assert levels(np_(tfops.resize(x, size, "bilinear")), ref.resize(batch, size, "bilinear")) <= 1
    sigma = data.draw(st.sampled_from(BLUR_SIGMAS))
    assert levels(np_(tfops.gaussian_blur(x, sigma)), ref.gaussian_blur(batch, sigma)) <= 1
    q = data.draw(st.integers(50, 100))
    assert np.array_equal(np_(tfops.jpeg(x, q)), ref.jpeg(batch, q))
    np.testing.assert_allclose(np_(tfops.standardize(x, "per_image")),
                               ref.standardize(batch, "per_image"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 1, 3), (1, 7, 3), (2, 2, 3), (3, 9, 3), (5, 4, 3)])
@pytest.mark.parametrize("sigma", BLUR_SIGMAS)
def test_blur_on_images_smaller_than_the_kernel(shape, sigma):
    img = np.random.default_rng(shape[0] * 10 + shape[1]).integers(0, 256, shape, np.uint8)
    got = np_(tfops.gaussian_blur(tfops.from_numpy(img), sigma))
    assert got.shape == shape and levels(got, ref.gaussian_blur(img, sigma)) <= 1


def test_blur_float_is_within_spec_of_reference():
    img = np.random.default_rng(0).integers(0, 256, (31, 17, 3), np.uint8)
    for s in BLUR_SIGMAS:
        wh, ww = ref.blur_weights(31, s), ref.blur_weights(17, s)
        want = np.einsum("ai,bj,ijc->abc", wh, ww, img.astype(np.float64))
        got = np_(tfops._blur_float(tf.constant(img), ref.gaussian_kernel(s)))
        assert np.abs(got - want).max() < 5e-4


def test_drawn_parameters_as_tensors_match_python_numbers():
    img = np.random.default_rng(1).integers(0, 256, (12, 10, 3), np.uint8)
    x = tf.constant(img)
    blur = tf.function(tfops.blur_drawn)
    assert np.array_equal(np_(blur(x, tf.constant(0.0))), img)
    for s in BLUR_SIGMAS:
        assert np.array_equal(np_(blur(x, tf.constant(s))), np_(tfops.gaussian_blur(x, s)))
    jpeg = tf.function(tfops.jpeg_variable)
    for q in (50, 63, 77, 90, 100):
        assert np.array_equal(np_(jpeg(x, tf.constant(q))), ref.jpeg(img, q))
    for k in range(4):
        assert np.array_equal(np_(tfops.rot90(x, tf.constant(k))), ref.rot90(img, k))


def _encode(img, fmt, mode=None, **kw):
    buf = io.BytesIO()
    im = Image.fromarray(img)
    if mode:
        im = im.convert(mode)
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt,mode", [("JPEG", None), ("JPEG", "L"), ("PNG", None),
                                      ("PNG", "L"), ("PNG", "RGBA"), ("PNG", "P"),
                                      ("PNG", "LA")])
def test_decode_matches_reference(fmt, mode):
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (19, 23, 3), np.uint8)
    data = _encode(img, fmt, mode, **({"quality": 80} if fmt == "JPEG" else {}))
    got = np_(tfops.decode(tf.constant(data)))
    assert got.dtype == np.uint8 and np.array_equal(got, decode_image(data))


def test_decode_uses_the_exact_idct():
    """The default (fast) IDCT differs from the reference; ours must not."""
    img = np.random.default_rng(3).integers(0, 256, (64, 64, 3), np.uint8)
    data = _encode(img, "JPEG", quality=75)
    exact = np_(tfops.decode(tf.constant(data)))
    fast = tf.io.decode_jpeg(data).numpy()
    assert np.array_equal(exact, decode_image(data)) and not np.array_equal(fast, exact)


def test_to_uint8_rounds_ties_to_even_and_clips():
    x = tf.constant([-300.0, -0.6, 0.5, 1.5, 2.5, 254.5, 255.4, 256.0, 1e9, -np.inf, np.inf])
    assert np_(tfops.to_uint8(x)).tolist() == [0, 0, 0, 2, 2, 254, 255, 255, 255, 0, 255]
    # a bare cast would truncate (and wrap): the trap this conversion avoids
    assert tf.cast(tf.constant([2.7]), tf.uint8).numpy().tolist() == [2]
    assert np_(tfops.to_uint8(tf.constant([2.7]))).tolist() == [3]


def test_resize_nearest_is_exact_and_uint8():
    img = np.random.default_rng(4).integers(0, 256, (13, 9, 3), np.uint8)
    got = tfops.resize(tf.constant(img), (20, 5), "nearest")
    assert got.dtype == tf.uint8 and np.array_equal(np_(got), ref.resize(img, (20, 5), "nearest"))


def test_resize_float_close_to_reference():
    img = np.random.default_rng(5).integers(0, 256, (29, 29, 3), np.uint8)
    for method in ("lanczos3", "bicubic", "area"):
        got = np_(tfops.resize_float(tf.constant(img), 17, method))
        assert np.abs(got - ref.resize_float(img, 17, method)).max() < 5e-4


def test_errors_name_the_problem():
    img = tf.zeros((8, 8, 3), tf.uint8)
    with pytest.raises(ValueError, match=r"outside the image of height 8, width 8"):
        tfops.crop(img, 4, 5)
    with pytest.raises(ValueError, match="dtype uint8"):
        tfops.flip_left_right(tf.zeros((4, 4, 3), tf.float32))
    with pytest.raises(ValueError, match="last axis 3"):
        tfops.rot90(tf.zeros((4, 4, 4), tf.uint8), 1)
    with pytest.raises(ValueError, match="quality must be in 0..100"):
        tfops.jpeg(img, 101)
    with pytest.raises(ValueError, match="unknown resize method"):
        tfops.resize(img, 4, "cubic")
    with pytest.raises(ValueError, match="standardize mode"):
        tfops.standardize(img, "zscore")
    with pytest.raises(ValueError, match="sigma"):
        tfops.gaussian_blur(img, 0)
    assert np.array_equal(np_(tfops.crop(img, 2, 6)), np.zeros((6, 6, 3), np.uint8))


def test_crop_in_a_graph_checks_the_box():
    f = tf.function(lambda x: tfops.crop(x, 3, 4),
                    input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    assert f(tf.zeros((7, 7, 3), tf.uint8)).shape == (4, 4, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="crop box"):
        f(tf.zeros((6, 9, 3), tf.uint8))
