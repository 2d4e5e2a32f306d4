"""spec/adapter_tf.md, "The batch path": where the pipeline is decode, flips, rot90 and
'unit' standardization (or none of them), the TF loader makes its batches in Python
(the reference's reader and decoder, the drawn moves as one Pillow transpose) and hands
them to TensorFlow whole. Its stream is the TensorFlow image map's bit for bit (same
element_spec, items, dtypes, shapes and bytes), hence the reference's; the routing rule
names why the map is kept; batch arrays are never rewritten while TensorFlow holds them.
"""

import gc
import itertools
import threading
import time
import warnings

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
tilespec_tf = pytest.importorskip("tilespec_tf")

import tilespec  # noqa: E402
from tilespec import testing as tt  # noqa: E402
from tilespec.augment import Step, apply_steps  # noqa: E402
from tilespec.pipeline import Pipeline  # noqa: E402
from tilespec.errors import TFRecordError  # noqa: E402
from tilespec_tf import loader as tfl  # noqa: E402
from test_tf_adapter import assert_two_iterators_conform  # noqa: E402
from test_tf_reader import assert_same, items  # noqa: E402

LAYOUTS = [
    tt.TileDatasetLayout((("s0", "p0", "a", 7), ("s1", "p1", "b", 4), ("s2", "p1", "a", 5)),
                         tile_px=16, seed=1),
    tt.TileDatasetLayout((("b0", "p0", "a", 3), ("b1", "p1", "b", 2), ("b2", "p2", "a", 6)),
                         tile_px=12, seed=3, image_format="png"),
]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    out = []
    for k, layout in enumerate(LAYOUTS):
        info = tt.write_tile_dataset(layout, tmp_path_factory.mktemp(f"tb{k}"))
        out.append(tilespec.Dataset(tfrecords=info["tfrecords"],
                                    annotations=info["annotations"]))
    return out


# ------------------------------------------------------------------ the moves

@pytest.mark.parametrize("shape", [(5, 5, 3), (4, 7, 3)])
def test_move_of_is_the_references_steps(shape):
    """Every drawn combination of 'x', 'y', 'r' (in string order, any subset) as one
    Pillow transpose gives the reference's ops' pixels (rot90 only on square images,
    where the loader uses it)."""
    from PIL import Image
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    ks = range(4) if shape[0] == shape[1] else [0]
    for x, y, k in itertools.product([0, 1], [0, 1], ks):
        steps = tuple([Step("flip_left_right")] * x + [Step("flip_up_down")] * y +
                      ([Step("rot90", (k,))] if k else []))
        want = apply_steps(img, steps)
        m = tfl.move_of(Pipeline(augment="xyr"), steps)
        got = img if m is None else np.asarray(Image.fromarray(img).transpose(m))
        assert got.shape == want.shape and np.array_equal(got, want), steps
        assert (m is None) == (x == y and k == 2 * x)  # flipping both ways is rot180


@pytest.mark.parametrize("shape", [(5, 5, 3), (4, 7, 3), (300, 260, 3)])
def test_write_moved_is_pillows_transpose(shape):
    """Every Pillow transpose the batch path uses writes the row Pillow's transpose
    gives (the row flip by a NumPy copy of reversed rows, the others through Pillow in
    bands, also for tiles of more than one band)."""
    from PIL import Image
    img = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    for m in tuple(Image.Transpose)[:7]:
        want = np.asarray(Image.fromarray(img).transpose(m))
        row = np.zeros(want.shape, np.uint8)
        tfl.write_moved(img, m, row)
        assert np.array_equal(row, want), m


# ------------------------------------------------------------------ the stream

CASES = [
    dict(),
    dict(augment="xyr", batch_size=3, incl_slidenames=True, incl_loc=True),
    dict(augment="xyr", standardize="unit", batch_size=4, drop_last=True, labels="category"),
    dict(augment="ry", standardize="unit", shuffle=True, incl_loc=True),
    dict(augment="x", batch_size=2, shard_idx=1, num_shards=2, labels="float"),
    dict(augment="xyr", batch_size=5, infinite=True, incl_slidenames=True, labels="multi"),
    dict(augment="yx", infinite=True, shuffle=True, labels="category"),
]


def _labels(ds, opts):
    return dict(opts, labels=tt.resolve_labels(opts.get("labels"), ds.slides()))


@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("k", range(len(CASES)))
def test_batch_path_is_the_image_maps_stream_bit_for_bit(datasets, layout, k):
    ds = datasets[layout]
    opts = _labels(ds, dict(dict(infinite=False, seed=5, standardize=False), **CASES[k]))
    fast = ds.tensorflow(**opts)
    slow = ds.tensorflow(images="tensorflow", **opts)
    assert fast.tilespec.images == "python" and fast.tilespec.images_reason is None
    assert slow.tilespec.images == "tensorflow"
    assert fast.element_spec == slow.element_spec
    assert tf.data.experimental.cardinality(fast) == tf.data.experimental.cardinality(slow)
    n = 6 if opts["infinite"] else None
    for _ in range(1 if opts["infinite"] else 2):  # finite: epochs 0 and 1
        assert_same(items(fast, n), items(slow, n))
    ref = dict(opts)
    if "shard_idx" in ref:
        ref["rank"], ref["num_replicas"] = ref.pop("shard_idx"), ref.pop("num_shards")
    tt.assert_conforms(ds.tensorflow(**opts), ds.numpy(**ref), n=n, options=ref,
                       tolerance=tt.Tolerance(0, 0))


def test_batches_held_by_tensorflow_are_never_rewritten(datasets):
    """Every batch of an epoch kept at once (TensorFlow wraps 64-byte-aligned arrays
    without copying them): still the reference's, bit for bit."""
    ds = datasets[0]
    opts = dict(infinite=False, seed=9, augment="xyr", batch_size=2, standardize=False)
    held = list(ds.tensorflow(**opts))
    assert len(held) > len(tfl.THREADS * [0]) + 2
    tt.assert_conforms(held, ds.numpy(**opts), options=opts, tolerance=tt.Tolerance(0, 0))


def test_buffers_are_reused_only_when_free():
    pool = tfl._Buffers((4, 2, 2, 3))
    a, b = pool.get(4), pool.get(3)
    assert not np.shares_memory(a, b) and b.shape == (3, 2, 2, 3)
    assert a.ctypes.data % 64 == 0 and b.ctypes.data % 64 == 0
    c = pool.get(4)
    assert not np.shares_memory(c, a) and not np.shares_memory(c, b)
    del a
    d = pool.get(4)
    assert not np.shares_memory(d, b) and not np.shares_memory(d, c)
    assert len(pool.raws) == 3  # d took a's array again


def test_two_iterators_and_an_early_stop(datasets):
    ds = datasets[0]
    assert_two_iterators_conform(ds, dict(infinite=False, seed=12, augment="xyr",
                                          incl_loc=True, batch_size=2))
    inf = ds.tensorflow(infinite=True, seed=1, augment="xy", batch_size=3)
    it = iter(inf)
    next(it)
    assert any(t.name.startswith("tilespec-tf") for t in threading.enumerate())
    del it
    for _ in range(100):  # the generator is closed: its threads end
        gc.collect()
        if not any(t.name.startswith("tilespec-tf") for t in threading.enumerate()):
            break
        time.sleep(0.05)
    assert not any(t.name.startswith("tilespec-tf") for t in threading.enumerate())


def test_errors_name_file_and_record(tmp_path):
    """A JPEG that cannot be decoded: the reference's error, naming file and record
    (raised), or the reference's skip (skipped)."""
    from tilespec.example import encode_tile
    from tilespec.records import write_records

    good = tt.write_tile_dataset(LAYOUTS[0], tmp_path / "src")["paths"][0]
    payloads = list(tilespec.read_records(good))
    payloads.insert(3, encode_tile(b"\xff\xd8\xff\xe0 truncated", "s0", 99, 0))
    folder = tmp_path / "tfrecords"
    folder.mkdir()
    write_records(str(folder / "s0.tfrecords"), payloads)
    ds = tilespec.Dataset(tfrecords=str(folder))
    opts = dict(infinite=False, seed=0, augment="xyr", batch_size=2)
    d = ds.tensorflow(**opts)
    assert d.tilespec.images == "python"
    with pytest.raises(TFRecordError, match=r"s0.tfrecords.*record 3"):
        list(ds.numpy(**opts))
    with pytest.raises(Exception, match=r"s0.tfrecords.*record 3"):
        list(d)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        skip = dict(opts, on_error="skip")
        d = ds.tensorflow(**skip)
        ref = ds.numpy(**skip)
        tt.assert_conforms(d, ref, options=skip, tolerance=tt.Tolerance(0, 0))
    assert d.skipped == ref.skipped and [s["record"] for s in d.skipped] == [3]


# ------------------------------------------------------------------ the routing rule

def test_the_routing_rule(datasets):
    ds = datasets[0]
    cases = {"a stain normalizer": dict(normalizer="reinhard"),
             "a transform": dict(transform=lambda x: x),
             "resize_target": dict(resize_target=8),
             "a crop": dict(crop_left=1, crop_width=8),
             "augmentation 'b'": dict(augment="xb"),
             "augmentation 'j'": dict(augment="j"),
             "standardize='per_image'": dict(standardize=True),
             "images='tensorflow'": dict(images="tensorflow")}
    for why, opts in cases.items():
        d = ds.tensorflow(infinite=False, seed=1, **dict(dict(standardize=False), **opts))
        assert d.tilespec.images == "tensorflow" and why in d.tilespec.images_reason, why
    d = ds.tensorflow(infinite=False, seed=1, reader="auto")
    assert d.tilespec.images == "tensorflow" and "C++" in d.tilespec.images_reason
    assert d.tilespec.reader == "c++"
    d = ds.tensorflow(infinite=False, seed=1, reader="auto", shuffle=True)
    assert d.tilespec.images == "python" and d.tilespec.reader == "python"
    assert "shuffle=True" in d.tilespec.python_reason
    with pytest.raises(ValueError, match="images must be one of"):
        ds.tensorflow(images="numpy")
