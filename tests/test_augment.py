"""spec/images.md, "Augmentation draws" and "Pipeline order"."""

import numpy as np
import pytest
from scipy import stats

from tilespec import ops
from hypothesis import given, strategies as st

from tilespec.augment import (MOVE_OPS, Step, apply_steps, draw_augmentations, moved_view,
                              parse_augment)
from tilespec.pipeline import Pipeline
from tilespec.rng import augment_slot, stream_key, uniforms

N = 40_000
KEY = stream_key(31337, 0, 0)
POS = np.arange(N)


def _ops(draws, op):
    return [next((s for s in steps if s.op == op), None) for steps in draws.steps]


@pytest.mark.parametrize("augment,expected", [
    (True, "xyrjb"), (False, ""), (None, ""), ("", ""), ("xx", "xx"), ("nxr", "nxr")])
def test_parse_augment(augment, expected):
    assert parse_augment(augment) == expected


@pytest.mark.parametrize("bad,err,match", [
    ("xq", ValueError, "'q'.*valid characters are x, y, r, j, b, n"),
    ("nn", ValueError, "'n' more than once"),
    (3, TypeError, "augment must be"),
])
def test_parse_augment_errors(bad, err, match):
    with pytest.raises(err, match=match):
        parse_augment(bad)


def test_n_without_normalizer_is_an_error():
    with pytest.raises(ValueError, match="needs a stain normalizer"):
        Pipeline.from_options(augment="xn")
    with pytest.raises(ValueError, match="needs a stain normalizer"):
        draw_augmentations("n", KEY, POS[:3])


def test_flip_rates_are_one_half():
    # binomial test, n = 40k: power > 0.99 against p = 0.51.
    d = draw_augmentations("xy", KEY, POS)
    for op in ("flip_left_right", "flip_up_down"):
        k = sum(s is not None for s in _ops(d, op))
        assert stats.binomtest(k, N, 0.5).pvalue > 1e-3


def test_rotation_k_uniform():
    d = draw_augmentations("r", KEY, POS)
    ks = [s.args[0] if s else 0 for s in _ops(d, "rot90")]
    counts = np.bincount(ks, minlength=4)
    assert stats.chisquare(counts).pvalue > 1e-3


def test_jpeg_rate_and_quality():
    d = draw_augmentations("j", KEY, POS)
    qs = [s.args[0] for s in _ops(d, "jpeg") if s is not None]
    assert stats.binomtest(len(qs), N, 0.5).pvalue > 1e-3
    assert min(qs) == 50 and max(qs) == 100
    counts = np.bincount(qs, minlength=101)[50:]
    assert len(counts) == 51 and stats.chisquare(counts).pvalue > 1e-3


def test_blur_rate_and_sigma_mix():
    d = draw_augmentations("b", KEY, POS)
    sig = [s.args[0] for s in _ops(d, "gaussian_blur") if s is not None]
    assert stats.binomtest(len(sig), N, 0.1).pvalue > 1e-3
    counts = [sig.count(s) for s in (0.5, 1.0, 1.5, 2.0)]
    expected = np.array([1 / 2, 1 / 4, 1 / 8, 1 / 8]) * len(sig)
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_draws_follow_the_documented_formulas():
    # 'j' at string index 1 reads uniforms of slot augment_slot(1) at each position
    d = draw_augmentations("xj", KEY, POS[:500])
    u = uniforms(KEY, POS[:500], augment_slot(1), 2)
    for i, s in enumerate(_ops(d, "jpeg")):
        if u[i, 0] < 0.5:
            assert s == Step("jpeg", (50 + int(np.floor(51 * u[i, 1])),))
        else:
            assert s is None


def test_each_character_draws_independently_and_repeats_apply_twice():
    d = draw_augmentations("xx", KEY, POS[:2000])
    n_flips = [sum(s.op == "flip_left_right" for s in steps) for steps in d.steps]
    counts = np.bincount(n_flips, minlength=3)
    assert stats.chisquare(counts, [500, 1000, 500]).pvalue > 1e-3


def test_steps_keep_string_order():
    d = draw_augmentations("rx", KEY, POS[:200])
    for steps in d.steps:
        names = [s.op for s in steps]
        if len(names) == 2:
            assert names == ["rot90", "flip_left_right"]


def test_draws_are_per_position():
    a = draw_augmentations("xyrjb", KEY, np.arange(100, 200))
    b = draw_augmentations("xyrjb", KEY, np.array([150]))
    assert a.steps[50] == b.steps[0]


def test_apply_steps_uses_ops():
    img = np.random.default_rng(0).integers(0, 256, (16, 12, 3), dtype=np.uint8)
    steps = [Step("flip_left_right"), Step("rot90", (1,)), Step("jpeg", (80,))]
    want = ops.jpeg(ops.rot90(ops.flip_left_right(img), 1), 80)
    np.testing.assert_array_equal(apply_steps(img, steps), want)


def test_pipeline_order():
    img = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    calls = []

    def transform(x):
        calls.append(x.copy())
        return x

    p = Pipeline.from_options(augment="x", crop_left=4, crop_width=30, resize_target=20,
                              transform=transform, standardize="per_image")
    out = p.apply(img, [Step("flip_left_right")])
    mid = ops.flip_left_right(ops.resize(ops.crop(img, 4, 30), 20))
    np.testing.assert_array_equal(calls[0], mid)
    np.testing.assert_array_equal(out, ops.standardize(mid, "per_image"))


@pytest.mark.parametrize("kwargs,match", [
    (dict(crop_left=0), "crop_left and crop_width go together"),
    (dict(crop_left=-1, crop_width=4), "crop_left"),
    (dict(resize_target=0), "resize_target must be > 0"),
    (dict(resize_method="cubic"), "unknown resize_method"),
    (dict(standardize="minmax"), "standardize must be"),
    (dict(transform=5), "transform must be callable"),
])
def test_pipeline_option_errors(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        Pipeline.from_options(**kwargs)


def test_crop_outside_image_is_an_error():
    p = Pipeline.from_options(crop_left=30, crop_width=20)
    with pytest.raises(ValueError):
        p.apply(np.zeros((40, 40, 3), np.uint8), [])


def test_standardize_defaults():
    assert Pipeline.from_options(standardize=True).standardize == "unit"
    assert Pipeline.from_options(standardize=True,
                                 default_standardize="per_image").standardize == "per_image"
    assert Pipeline.from_options(standardize=False).standardize is None


_MOVE = st.one_of(st.sampled_from([Step("flip_left_right"), Step("flip_up_down")]),
                  st.integers(-5, 5).map(lambda k: Step("rot90", (k,))))


@given(steps=st.lists(_MOVE, max_size=5), h=st.integers(1, 6), w=st.integers(1, 6),
       batch=st.booleans())
def test_moved_view_is_apply_steps_as_a_view(steps, h, w, batch):
    """spec/images.md, "Rotation": any run of flips and turns is one view of the image,
    equal to the ops (HWC and NHWC, square or not), with no pixel copied."""
    img = np.arange(2 * h * w * 3, dtype=np.uint8).reshape(2, h, w, 3)
    x = img if batch else img[0]
    want = (np.stack([apply_steps(t, steps) for t in x]) if batch else apply_steps(x, steps))
    got = moved_view(x, steps)
    np.testing.assert_array_equal(got, want)
    assert np.shares_memory(got, img)


def test_moved_view_is_none_once_a_step_is_not_a_move():
    img = np.zeros((4, 4, 3), dtype=np.uint8)
    assert set(MOVE_OPS) == {"flip_left_right", "flip_up_down", "rot90"}
    assert moved_view(img, (Step("rot90", (1,)), Step("jpeg", (60,)))) is None
    assert moved_view(img, (Step("gaussian_blur", (0.5,)),)) is None
