"""tilespec.testing: assert_conforms, tolerances, strategies (spec/adapters.md, "Conformance")."""

import numpy as np
import pytest
from hypothesis import given, settings

import tilespec
from tilespec import testing as tt


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    layout = tt.TileDatasetLayout((("s0", "p0", "a", 5), ("s1", "p1", "b", 3)), tile_px=12)
    info = tt.write_tile_dataset(layout, tmp_path_factory.mktemp("small"))
    return tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])


OPTS = dict(seed=1, infinite=False, incl_slidenames=True, incl_loc=True, standardize=False)


def test_identical_streams_conform(small):
    n = tt.assert_conforms(small.numpy(**OPTS), small.numpy(**OPTS), options=OPTS)
    assert n == small.num_tiles


def test_label_difference_is_reported(small):
    a = small.numpy(labels={"s0": 0, "s1": 1}, **OPTS)
    b = small.numpy(labels={"s0": 0, "s1": 2}, **OPTS)
    with pytest.raises(tt.ConformanceError, match=r"item \d+, field 'label': 1, reference 2"):
        tt.assert_conforms(a, b, options=OPTS)


def test_image_difference_beyond_tolerance_is_reported(small):
    ref = list(small.numpy(**OPTS))
    bumped = [((img.astype(np.int16) + (k == 3)).clip(0, 255).astype(np.uint8), *rest)
              for k, (img, *rest) in enumerate(ref)]
    with pytest.raises(tt.ConformanceError, match=r"item 3, field 'image': max \|diff\| 1"):
        tt.assert_conforms(bumped, ref, options=OPTS)
    # one grey level is within the tolerance of a resized stream
    opts = dict(OPTS, resize_target=8)
    assert tt.assert_conforms(bumped, ref, options=opts) == len(ref)


def test_slide_and_loc_and_length_differences(small):
    ref = list(small.numpy(**OPTS))
    other = [(i, l, s + "x", x, y) for i, l, s, x, y in ref]
    with pytest.raises(tt.ConformanceError, match="field 'slide'"):
        tt.assert_conforms(other, ref, options=OPTS)
    other = [(i, l, s, x + 1, y) for i, l, s, x, y in ref]
    with pytest.raises(tt.ConformanceError, match="field 'loc_x'"):
        tt.assert_conforms(other, ref, options=OPTS)
    with pytest.raises(tt.ConformanceError, match="the loader ended after 2 items"):
        tt.assert_conforms(ref[:2], ref, options=OPTS)


def test_chw_layout_and_batches(small):
    opts = dict(OPTS, batch_size=3)
    ref = list(small.numpy(**opts))
    chw = [(np.moveaxis(b[0], -1, 1), *b[1:]) for b in ref]
    assert tt.assert_conforms(chw, ref, layout="CHW", options=opts) == len(ref)
    broken = [(b[0].copy(), *b[1:]) for b in ref]
    broken[1][0][2, 0, 0, 0] ^= 0xFF
    with pytest.raises(tt.ConformanceError, match="batch 1, row 2, field 'image'"):
        tt.assert_conforms(broken, ref, options=opts)


def test_standardized_images_compared_in_grey_levels(small):
    for mode in ("unit", "per_image"):
        opts = dict(OPTS, standardize=mode)
        ref = list(small.numpy(**opts))
        img = ref[0][0]
        scale = 127.5 if mode == "unit" else tt._levels_per_unit(img, mode)
        nudged = [(ref[0][0] + np.float32(0.9 / scale), *ref[0][1:])] + ref[1:]
        assert tt.assert_conforms(nudged, ref, options=dict(opts, resize_target=12)) == len(ref)
        with pytest.raises(tt.ConformanceError, match="field 'image'"):
            tt.assert_conforms(nudged, ref, options=opts)


@pytest.mark.parametrize("opts,expected", [
    ({}, (0, 0)),
    ({"augment": "xyr"}, (0, 0)),
    ({"augment": "xyrj"}, (0, 0)),
    ({"resize_target": 8, "resize_method": "nearest"}, (0, 0)),
    ({"resize_target": 8}, (1, 1)),
    ({"augment": "b"}, (1, 1)),
    ({"resize_target": 8, "augment": "bb"}, (3, 3)),
    ({"normalizer": "macenko"}, (2, 2)),
    ({"resize_target": 8, "augment": "xj"}, tt.JPEG_AFTER_INEXACT),
])
def test_image_tolerance_rules(opts, expected):
    tol = tt.image_tolerance(opts)
    assert (tol.max_abs, tol.mean_abs) == tuple(map(float, expected))


@given(tt.images(1, 9))
def test_images_strategy(img):
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3


@given(tt.augment_strings())
def test_augment_strings_are_valid(a):
    tilespec.augment.parse_augment(a)


@settings(max_examples=5)
@given(tt.tile_dataset_layouts(), tt.sampling_configs())
def test_layouts_write_loadable_datasets(tmp_path_factory, layout, config):
    info = tt.write_tile_dataset(layout, tmp_path_factory.mktemp("lay"))
    ds = tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])
    assert ds.num_tiles == sum(s[3] for s in layout.slides)
    assert 0 <= config["rank"] < config["num_replicas"]


def test_to_numpy_conversions():
    assert tt.to_numpy(None) is None
    assert tt.to_numpy(b"abc") == "abc"
    np.testing.assert_array_equal(tt.to_numpy([b"a", b"b"]), np.array(["a", "b"]))
    np.testing.assert_array_equal(tt.to_numpy(np.array([b"x"], dtype=object)), ["x"])
