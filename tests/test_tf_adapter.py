"""spec/adapter_tf.md: the TensorFlow adapter's loader against the reference.

Every test compares ``Dataset.tensorflow(...)`` with ``Dataset.numpy(...)`` given the
same options (``shard_idx``/``num_shards`` for ``rank``/``num_replicas``) through
:func:`tilespec.testing.assert_conforms`: same records, order, labels, slide names and
locations; images within spec/images.md's tolerances.
"""

import os
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

tf = pytest.importorskip("tensorflow")
tilespec_tf = pytest.importorskip("tilespec_tf")

import tilespec  # noqa: E402
from tilespec import plugins, testing as tt  # noqa: E402
from tilespec.annotations import LabelError  # noqa: E402
from tilespec.errors import TFRecordError  # noqa: E402
from tilespec.index import load_index  # noqa: E402

LAYOUTS = [
    tt.TileDatasetLayout((("s0", "p0", "a", 7), ("s1", "p1", "b", 4), ("s2", "p1", "a", 5)),
                         tile_px=16, seed=1),
    tt.TileDatasetLayout((("a0", "p0", "a", 1), ("a1", "p0", "b", 9)), tile_px=12, seed=2),
    tt.TileDatasetLayout((("b0", "p0", "a", 3), ("b1", "p1", "b", 2), ("b2", "p2", "a", 6),
                          ("b3", "p2", "b", 1)), tile_px=20, seed=3, image_format="png"),
]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    out = []
    for k, layout in enumerate(LAYOUTS):
        info = tt.write_tile_dataset(layout, tmp_path_factory.mktemp(f"tf{k}"))
        out.append(tilespec.Dataset(tfrecords=info["tfrecords"],
                                    annotations=info["annotations"]))
    return out


def reference_options(opts):
    """The NumpyLoader spelling of TF options (shard -> rank)."""
    ref = dict(opts)
    if "shard_idx" in ref:
        ref["rank"], ref["num_replicas"] = ref.pop("shard_idx"), ref.pop("num_shards")
    if ref.get("standardize", True) is True:
        ref["standardize"] = "per_image"     # TensorFlow's default mode
    return ref


def tolerance(opts):
    """image_tolerance, widened for 'per_image' after an inexact step: a one-level
    difference in some pixels also moves the image's mean (and std) by up to one
    level, so the standardized difference, read in grey levels, is bounded by twice
    the uint8 bound (seen: 1.005 levels for a 1-level resize difference on a 3 x 3
    image). The uint8 stream itself is checked with the plain bound.

    A JPEG round trip after an inexact step: the spec's mean bound (0.5 levels) is for
    tiles of realistic size; on the few-pixel images drawn here one DCT coefficient
    moved across a quantization step changes a whole 8 x 8 block, i.e. the whole
    image (seen: mean 0.556 and 3.8 levels on 6 x 6 images), so only the max bound
    is checked here."""
    tol = tt.image_tolerance(opts)
    if (tol.max_abs, tol.mean_abs) == tt.JPEG_AFTER_INEXACT:
        tol = tt.Tolerance(tol.max_abs, tol.max_abs)
    mode = reference_options(opts).get("standardize")
    if mode == "per_image" and not tol.exact:
        return tt.Tolerance(2 * tol.max_abs, 2 * tol.mean_abs)
    return tol


def conforms(ds, opts, n=None):
    loader = ds.tensorflow(**opts)
    ref = ds.numpy(**reference_options(opts))
    if opts.get("infinite", True) and n is None:
        n = 7
    count = tt.assert_conforms(loader, ref, n=n, options=opts, tolerance=tolerance(opts))
    if reference_options(opts).get("standardize") == "per_image" and \
            not tt.image_tolerance(opts).exact:
        u8 = dict(opts, standardize=False)
        tt.assert_conforms(ds.tensorflow(**u8), ds.numpy(**reference_options(u8)), n=n,
                           options=u8, tolerance=tolerance(u8))
    return count


# ------------------------------------------------------------------ adapter registration

def test_registered_as_tensorflow_adapter():
    info = {i["name"]: i for i in tilespec.adapters()}["tensorflow"]
    assert info["distribution"] == "tilespec-tf"
    assert info["framework"] == f"TensorFlow {tf.__version__}"
    assert plugins.ops_for("tensorflow").layout == "HWC"
    # the other backends' hooks are left to their adapters
    assert tilespec_tf.tilespec_ops("numpy") is None
    assert tilespec_tf.tilespec_make_loader("torch", None, {}) is None
    assert tilespec_tf.tilespec_make_indexed("numpy", [], {}) is None


def test_returns_a_tf_dataset_with_typed_elements(datasets):
    ds = datasets[0]
    d = ds.tensorflow(labels="category", infinite=False, seed=3, incl_slidenames=True,
                      incl_loc=True, standardize=True)
    assert isinstance(d, tf.data.Dataset)
    img, label, slide, x, y = d.element_spec
    assert img.dtype == tf.float32 and img.shape.as_list() == [16, 16, 3]
    assert label.dtype == tf.int64 and slide.dtype == tf.string
    assert x.dtype == y.dtype == tf.int64
    assert d.seed == 3 and d.cardinality().numpy() == ds.num_tiles
    u8 = ds.tensorflow(standardize=False, batch_size=4, seed=1)
    assert u8.element_spec[0].dtype == tf.uint8
    assert type(u8.element_spec[1]).__name__ == "NoneTensorSpec"
    assert next(iter(u8))[1] is None
    assert u8.cardinality().numpy() == tf.data.INFINITE_CARDINALITY


def test_element_spec_has_the_static_image_shape(datasets):
    # spec/adapter_tf.md, "The loader": (H, W, 3) from the tiles (the first kept record),
    # after crop and resize; so Keras builds, and a batch's shape is never (0, 0, 0, 3)
    ds = datasets[1]                                            # 12 x 12 tiles
    for opts, hw in [({}, [12, 12]), ({"crop_left": 2, "crop_width": 8}, [8, 8]),
                     ({"resize_target": 20, "augment": "xyrjb"}, [20, 20]),
                     ({"crop_left": 1, "crop_width": 10, "resize_target": 6}, [6, 6])]:
        d = ds.tensorflow(batch_size=4, infinite=False, seed=5, standardize=False, **opts)
        assert d.element_spec[0].shape.as_list() == [None] + hw + [3]
        assert all(list(b[0].shape[1:]) == hw + [3] for b in d)
        one = ds.tensorflow(infinite=False, seed=5, **opts)
        assert one.element_spec[0].shape.as_list() == hw + [3]
    d = ds.tensorflow(batch_size=4, infinite=False, drop_last=True, seed=5)
    assert d.element_spec[0].shape.as_list() == [4, 12, 12, 3]
    # a transform keeps whatever shape TensorFlow infers for its output
    d = ds.tensorflow(infinite=False, seed=5, standardize=False,
                      transform=lambda x: x[:5, :7])
    assert d.element_spec[0].shape.as_list() == [5, 7, 3]
    # the indexed dataset too
    idx = tilespec_tf.loader.make_indexed(ds.tfrecords(), {"seed": 1})
    assert idx.element_spec[0].shape.as_list() == [12, 12, 3]


# ------------------------------------------------------------------ the stream, by property

@st.composite
def tf_options(draw):
    R = draw(st.integers(1, 3))
    opts = {"seed": draw(st.integers(0, 2**63 - 1)), "infinite": draw(st.booleans()),
            "shuffle": draw(st.booleans()), "shard_idx": draw(st.integers(0, R - 1)),
            "num_shards": R, "batch_size": draw(st.one_of(st.none(), st.integers(1, 5))),
            "drop_last": draw(st.booleans()),
            "uneven": draw(st.sampled_from(["pad", "drop"])), "elastic": draw(st.booleans()),
            "augment": draw(tt.augment_strings("xyrjb", max_size=4)),
            "standardize": draw(st.sampled_from([True, False, "unit", "per_image"])),
            "incl_slidenames": draw(st.booleans()), "incl_loc": draw(st.booleans()),
            "labels": draw(st.sampled_from([None, "category"]))}
    geometry = draw(st.sampled_from(["none", "crop", "resize", "both"]))
    if geometry in ("crop", "both"):
        opts.update(crop_left=draw(st.integers(0, 3)), crop_width=draw(st.integers(4, 8)))
    if geometry in ("resize", "both"):
        opts.update(resize_target=draw(st.integers(3, 24)),
                    resize_method=draw(st.sampled_from(["lanczos3", "bilinear", "nearest",
                                                        "area", "bicubic"])),
                    resize_aa=draw(st.booleans()))
    return opts


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
          max_examples=max(10, settings.default.max_examples // 4))  # ~0.3 s an example
@given(k=st.integers(0, len(LAYOUTS) - 1), opts=tf_options())
def test_stream_conforms_to_reference(datasets, k, opts):
    ds = datasets[k]
    try:
        ref = ds.numpy(**reference_options(opts))
        len(ref)
    except ValueError:  # a rank owning nothing: the reference refuses, so must the adapter
        with pytest.raises(ValueError):
            ds.tensorflow(**opts)
        return
    n = conforms(ds, opts)
    if not opts["infinite"]:
        assert n == len(ref)


def test_every_record_once_across_shards(datasets):
    # spec/sampling.md, "Equal steps": 16 records over 3 shards are 6 items on each, two
    # of them pads (a shard's first item again); every record once besides the pads
    ds = datasets[0]
    seen, lens, pads = [], [], 0
    for r in range(3):
        d = ds.tensorflow(infinite=False, shard_idx=r, num_shards=3, seed=11,
                          incl_slidenames=True, incl_loc=True, standardize=False)
        items = [(s.numpy(), int(x)) for _, _, s, x, _ in d]
        lens.append(len(items))
        pads += d.tilespec.num_padded
        seen += items[:len(items) - d.tilespec.num_padded]
        assert items[len(items) - d.tilespec.num_padded:] == items[:d.tilespec.num_padded]
    assert ds.num_tiles == 16 and lens == [6, 6, 6] and pads == 2
    assert len(seen) == len(set(seen)) == ds.num_tiles
    d = ds.tensorflow(infinite=False, shard_idx=0, num_shards=3, uneven="drop", seed=11)
    assert len(d) == 5 and int(d.cardinality()) == 5 and d.tilespec.num_dropped == 1


def test_input_context_sets_the_shard(datasets):
    ds = datasets[0]
    ctx = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=2,
                                     num_replicas_in_sync=3)
    d = ds.tensorflow(input_context=ctx, infinite=False, seed=4, standardize=False,
                      incl_loc=True)
    ref = ds.numpy(rank=2, num_replicas=3, infinite=False, seed=4, standardize=False,
                   incl_loc=True)
    assert tt.assert_conforms(d, ref, options={"incl_loc": True}) == len(ref)
    with pytest.raises(ValueError, match="input_context sets the shard"):
        ds.tensorflow(input_context=ctx, shard_idx=0, num_shards=2)


def test_shard_arguments_are_checked(datasets):
    ds = datasets[0]
    with pytest.raises(ValueError, match="not both"):
        ds.tensorflow(shard_idx=0, num_shards=2, rank=0, num_replicas=2)
    with pytest.raises(ValueError, match="shard_idx=1 is given without num_shards"):
        ds.tensorflow(shard_idx=1)
    with pytest.raises(ValueError, match="num_shards=2 is given without shard_idx"):
        ds.tensorflow(num_shards=2)
    with pytest.raises(ValueError, match="num_replicas=2 is given without rank"):
        ds.tensorflow(num_replicas=2)
    with pytest.raises(ValueError, match="shard_idx must be in"):
        ds.tensorflow(shard_idx=2, num_shards=2)
    # rank/num_replicas are accepted too (the reference's names)
    conforms(ds, dict(rank=1, num_replicas=2, infinite=False, seed=2, standardize=False))


def test_reference_errors_for_bad_options(datasets):
    ds = datasets[0]
    with pytest.raises(ValueError, match="unknown augmentation character"):
        ds.tensorflow(augment="xq")
    with pytest.raises(ValueError, match="crop_left and crop_width go together"):
        ds.tensorflow(crop_left=1)
    with pytest.raises(ValueError, match="batch_size"):
        ds.tensorflow(batch_size=0)
    with pytest.raises(ValueError, match="on_error"):
        ds.tensorflow(on_error="ignore")
    with pytest.raises(TypeError):
        ds.tensorflow(no_such_option=1)


def test_crop_outside_the_image_is_an_error(datasets):
    # checked against the tile size when the dataset is built (semantics 10, revision 2)
    with pytest.raises(ValueError, match=r"crop_left=10, crop_width=10: .* outside the tiles "
                       r"of 16 x 16 pixels .*s0.tfrecords"):
        datasets[0].tensorflow(crop_left=10, crop_width=10, seed=0, standardize=False)


# ------------------------------------------------------------------ epochs, seeds, labels

def test_each_finite_iteration_is_the_next_epoch(datasets):
    ds = datasets[0]
    opts = dict(infinite=False, seed=8, shuffle=True, augment="xyr", standardize=False,
                incl_loc=True)
    d = ds.tensorflow(**opts)
    ref = ds.numpy(**opts)
    for _ in range(3):   # epochs 0, 1, 2: new order and new draws each time
        assert tt.assert_conforms(d, ref, options=opts) == len(ref)
    assert d.tilespec.epoch == 3


def test_seed_is_drawn_and_exposed(datasets):
    ds = datasets[1]
    d = ds.tensorflow(augment="xyr", standardize=False, incl_loc=True)
    assert isinstance(d.seed, int) and 0 <= d.seed < 2**63
    opts = dict(augment="xyr", standardize=False, incl_loc=True, seed=d.seed)
    tt.assert_conforms(d, ds.numpy(**opts), n=10, options=opts)


def test_labels_float_and_multi_header(datasets):
    ds = datasets[0]
    slides = ds.slides()
    floats = {s: 0.5 + k for k, s in enumerate(slides)}
    d = ds.tensorflow(labels=floats, infinite=False, seed=1, standardize=False)
    assert d.element_spec[1].dtype == tf.float32
    conforms(ds, dict(labels=floats, infinite=False, seed=1, standardize=False))
    multi = {s: [k, 2 * k] for k, s in enumerate(slides)}
    d = ds.tensorflow(labels=multi, batch_size=3, seed=1, standardize=False)
    assert d.element_spec[1].shape.as_list() == [None, 2]
    conforms(ds, dict(labels=multi, batch_size=3, seed=1, standardize=False))


def test_missing_label_names_the_slide(datasets):
    ds = datasets[0]
    with pytest.raises(LabelError, match="has no label"):   # when built, not when read
        ds.tensorflow(labels={"s0": 1}, infinite=False, seed=0)
    with pytest.raises(LabelError):
        ds.numpy(labels={"s0": 1}, infinite=False, seed=0)


def test_transform_receives_a_tf_tensor(datasets):
    ds = datasets[0]
    seen = []

    def transform(img):
        seen.append(tf.is_tensor(img))
        return 255 - img

    d = ds.tensorflow(transform=transform, standardize=False, seed=3, infinite=False)
    ref = ds.numpy(transform=lambda im: 255 - im, standardize=False, seed=3, infinite=False)
    assert tt.assert_conforms(d, ref, options={}) == len(ref) and all(seen)


def test_stain_normalization_and_augmentation(datasets):
    ds = datasets[0]
    for method, aug in (("reinhard_fast", "n"), ("macenko", "xn")):
        opts = dict(normalizer=method, augment=aug, seed=5, standardize=False)
        d = ds.tensorflow(**opts)
        ref = ds.numpy(**opts)
        tt.assert_conforms(d, ref, n=6, options=opts)


def test_nondeterministic_map_keeps_the_records(datasets):
    ds = datasets[0]
    d = ds.tensorflow(infinite=False, seed=2, incl_loc=True, incl_slidenames=True,
                      deterministic=False, standardize=False)
    got = sorted((s.numpy(), int(x)) for _, _, s, x, _ in d)
    ref = sorted((s, int(x)) for _, _, s, x, _ in ds.numpy(infinite=False, seed=2,
                                                           incl_loc=True,
                                                           incl_slidenames=True,
                                                           standardize=False))
    assert [(a.decode(), b) for a, b in got] == ref


# ------------------------------------------------------------------ bad records

@pytest.fixture
def corrupt(datasets, tmp_path):
    """A copy of dataset 0 whose tfrecord s1 has record 2's payload corrupted."""
    src = datasets[0]
    folder = tmp_path / "tfrecords"
    folder.mkdir()
    for p in src.tfrecords():
        shutil.copy(p, folder)
    path = str(folder / "s1.tfrecords")
    offsets = load_index(path)[0]
    with open(path, "r+b") as f:
        f.seek(int(offsets[2, 0]) + 12 + 5)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    return tilespec.Dataset(tfrecords=str(folder))


@pytest.mark.parametrize("batch_size", [None, 1, 3])
def test_skip_corrupt_record_agrees_with_reference(corrupt, batch_size):
    opts = dict(infinite=False, seed=6, on_error="skip", batch_size=batch_size,
                incl_slidenames=True, incl_loc=True, augment="xy", standardize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = corrupt.tensorflow(**opts)
        ref = corrupt.numpy(**opts)
        n = tt.assert_conforms(d, ref, options=opts)
    assert n >= len(ref) - 1
    assert len(d.skipped) == 1 == len(ref.skipped)
    assert {k: d.skipped[0][k] for k in ("position", "path", "record")} == \
        {k: ref.skipped[0][k] for k in ("position", "path", "record")}


def test_skip_a_whole_batch(corrupt):
    # batch_size 1: the batch of the corrupt record is left out, as in the reference
    opts = dict(infinite=True, seed=1, on_error="skip", batch_size=1, incl_loc=True,
                standardize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tt.assert_conforms(corrupt.tensorflow(**opts), corrupt.numpy(**opts), n=40,
                           options=opts)


def test_raise_on_corrupt_record(corrupt):
    with pytest.raises(TFRecordError, match=r"s1.tfrecords.*record 2"):
        list(corrupt.numpy(infinite=False, seed=6))
    with pytest.raises(Exception, match=r"s1.tfrecords.*record 2"):
        list(corrupt.tensorflow(infinite=False, seed=6))


def test_undecodable_image_is_skipped_like_the_reference(tmp_path):
    from tilespec.example import encode_tile
    from tilespec.records import write_records

    folder = tmp_path / "tfrecords"
    folder.mkdir()
    good = tt.write_tile_dataset(LAYOUTS[0], tmp_path / "src")["paths"][0]
    payloads = [p for p in tilespec.read_records(good)]
    payloads.insert(3, encode_tile(b"\xff\xd8\xff\xe0 truncated", "s0", 99, 0))
    write_records(str(folder / "s0.tfrecords"), payloads)
    ds = tilespec.Dataset(tfrecords=str(folder))
    opts = dict(infinite=False, seed=0, on_error="skip", incl_loc=True, standardize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = ds.tensorflow(**opts)
        ref = ds.numpy(**opts)
        assert tt.assert_conforms(d, ref, options=opts) == len(payloads) - 1
    assert [s["record"] for s in d.skipped] == [s["record"] for s in ref.skipped] == [3]


# ------------------------------------------------------------------ indexed dataset

def test_indexed_dataset_equals_indexed_interleaver(datasets):
    ds = datasets[0]
    opts = dict(shuffle=True, seed=9, rank=1, num_replicas=2, augment="xyr",
                standardize=False, incl_slidenames=True, incl_loc=True, labels=None)
    d = plugins.make_indexed("tensorflow", ds.tfrecords(), opts)
    ref = tilespec.IndexedInterleaver(ds.tfrecords(), **opts)
    assert tt.assert_conforms(d, (ref[i] for i in range(len(ref))), options=opts) == len(ref)


def _tile_file(path, n, *, bad=(), no_loc=()):
    """n small JPEG tiles; records in ``bad`` hold bytes that are neither JPEG nor PNG,
    those in ``no_loc`` have no loc_x/loc_y."""
    from tilespec.synthetic import encode_jpeg
    recs = [tilespec.encode_tile(b"BAD: not an image" if i in bad else
                                 encode_jpeg(np.full((8, 8, 3), i * 20, np.uint8)),
                                 "s", *(() if i in no_loc else (i, 2 * i))) for i in range(n)]
    tilespec.write_records(path, recs)
    return str(path)


def test_indexed_dataset_skips_like_the_indexed_interleaver(tmp_path):
    """spec/adapter_tf.md, "The indexed dataset": on_error as the reference's item rule."""
    path = _tile_file(tmp_path / "s.tfrecords", 6, bad={1, 4})
    opts = dict(on_error="skip", standardize=False, incl_loc=True, seed=0, augment="xy")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = plugins.make_indexed("tensorflow", [path], dict(opts, epoch=2))
        ref = tilespec.IndexedInterleaver([path], **opts)
        ref.set_epoch(2)
        want = [ref[i] for i in range(len(ref))]
        got = list(d)
    assert [i for i, item in enumerate(want) if item is None] == [1, 4]
    assert tt.assert_conforms(got, [w for w in want if w is not None], options=opts) == 4
    assert d.skipped == ref.item_maker.skipped  # the same log: epoch, position, ..., error
    assert [(s["epoch"], s["record"]) for s in d.skipped] == [(2, 1), (2, 4)]
    assert d.skipped[0]["error"].startswith(f"{path}, record 1, byte offset ")
    # on_error='raise': the reference's error, naming the file and the record
    with pytest.raises(tilespec.ImageDecodeError, match=r"record 1"):
        ref_raise = tilespec.IndexedInterleaver([path], **dict(opts, on_error="raise"))
        ref_raise[1]
    d = plugins.make_indexed("tensorflow", [path], dict(opts, on_error="raise"))
    with pytest.raises(Exception, match=rf"{path}, record 1, byte offset"):
        list(d)


@pytest.mark.parametrize("indexed", [False, True])
def test_incl_loc_on_a_record_without_location_is_an_error(tmp_path, indexed):
    """spec/sampling.md, "Loaders": incl_loc=True needs loc_x/loc_y in every record read
    (the reference's ItemMaker.fields), in the loader and in the indexed dataset."""
    path = _tile_file(tmp_path / "s.tfrecords", 5, no_loc={3})
    msg = rf"{path}, record 3: incl_loc=True but the record has no loc_x/loc_y"
    if indexed:
        ref = tilespec.IndexedInterleaver([path], incl_loc=True, standardize=False)
        with pytest.raises(LabelError, match=msg):
            ref[3]
        d = plugins.make_indexed("tensorflow", [path], {"incl_loc": True,
                                                        "standardize": False})
    else:
        ds = tilespec.Dataset(tfrecords=[path])
        with pytest.raises(LabelError, match=msg):
            list(ds.numpy(infinite=False, seed=0, incl_loc=True, standardize=False))
        d = ds.tensorflow(infinite=False, seed=0, incl_loc=True)
    with pytest.raises(Exception, match=msg):
        list(d)
    # without incl_loc the same records are read
    d = (plugins.make_indexed("tensorflow", [path], {"standardize": False}) if indexed else
         tilespec.Dataset(tfrecords=[path]).tensorflow(infinite=False, seed=0))
    assert len(list(d)) == 5


def test_skip_log_is_the_reference_log_across_epochs(corrupt):
    """One skip rule and log (spec/reliability.md, "on_error"): the same entries, epoch
    included, as the reference loader over two finite epochs."""
    opts = dict(infinite=False, seed=6, on_error="skip", shuffle=True, standardize=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = corrupt.tensorflow(**opts)
        ref = corrupt.numpy(**opts)
        for _ in range(2):
            list(d)
            list(ref)
    assert [s["epoch"] for s in ref.skipped] == [0, 1]
    assert d.skipped == ref.skipped and d.tilespec.num_skipped == ref.num_skipped == 2


def assert_two_iterators_conform(ds, opts):
    """Two iterators of one ``ds.tensorflow(**opts)`` advanced in turn (epochs 0 and 1,
    interleaved) each give the reference's stream, whole."""
    d = ds.tensorflow(**opts)
    a, b = iter(d), iter(d)
    got_a, got_b = [], []
    for x, y in zip(a, b):
        got_a.append(x)
        got_b.append(y)
    ref = ds.numpy(**opts)
    assert tt.assert_conforms(got_a, ref, options=opts) == len(ref)
    assert tt.assert_conforms(got_b, ref, options=opts) == len(ref)


def test_two_iterators_of_one_dataset_read_independently(datasets):
    assert_two_iterators_conform(datasets[0], dict(infinite=False, seed=12,
                                                   standardize=False, incl_loc=True))


def _bad_tile_file(path, n, bad):
    from tilespec.synthetic import encode_jpeg
    recs = [tilespec.encode_tile(b"\xff\xd8\xff not a jpeg" if i in bad else
                                 encode_jpeg(np.full((8, 8, 3), i * 20, np.uint8)),
                                 os.path.basename(str(path)), i, 0) for i in range(n)]
    tilespec.write_records(path, recs)
    return str(path)


@pytest.mark.parametrize("batch_size", [None, 2])
def test_all_records_bad_raises_like_the_reference(tmp_path, batch_size):
    """spec/reliability.md, 'on_error': an infinite stream that can never yield stops."""
    from tilespec.items import AllRecordsSkippedError
    paths = [_bad_tile_file(tmp_path / f"{k}.tfrecords", 3, bad=range(3)) for k in range(2)]
    ds = tilespec.Dataset(tfrecords=paths)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = ds.tensorflow(infinite=True, seed=3, on_error="skip", batch_size=batch_size,
                          standardize=False)
        with pytest.raises(Exception, match="skipped all 6 records"):
            next(iter(d))
        with pytest.raises(AllRecordsSkippedError):
            next(iter(ds.numpy(infinite=True, seed=3, on_error="skip")))


def test_skip_log_is_bounded_and_count_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(tilespec.items, "SKIP_LOG_LIMIT", 3)
    path = _bad_tile_file(tmp_path / "s.tfrecords", 4, bad={1})
    ds = tilespec.Dataset(tfrecords=[path])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = ds.tensorflow(infinite=True, seed=0, on_error="skip", batch_size=4,
                          standardize=False)
        got = list(d.take(30))  # each batch is one pass over the file: record 1 is skipped
    assert all(b[0].shape[0] == 3 for b in got)
    # 30 batches hold 30 skips (prefetching may have read further)
    assert len(d.skipped) == 3 and d.tilespec.num_skipped >= 30
    assert [s["record"] for s in d.skipped] == [1, 1, 1]


# ------------------------------------------------------------------ empty tfrecords

@pytest.mark.parametrize("infinite", [False, True])
def test_stream_over_empty_tfrecords_is_the_stream_without_them(empty_pair, infinite):
    """Semantics 1 (revision 2): an empty tfrecord is never sampled, in every strategy."""
    from conftest import BALANCINGS

    for balance in sorted(BALANCINGS):
        full, bare = (BALANCINGS[balance](d) for d in empty_pair)
        opts = dict(labels="category", seed=2, infinite=infinite, augment="xy", batch_size=4,
                    incl_slidenames=True, standardize=False)
        tt.assert_conforms(full.tensorflow(**opts), bare.numpy(**opts),
                           n=6 if infinite else None, options=opts)


def test_indexed_over_empty_tfrecords(empty_pair):
    full, bare = empty_pair
    opts = dict(seed=1, shuffle=True, incl_slidenames=True, standardize=False,
                labels=full.labels("category")[0])
    got = plugins.make_indexed("tensorflow", full.tfrecords(), opts)
    ref = tilespec.IndexedInterleaver(bare.tfrecords(), **opts)
    assert tt.assert_conforms(got, (ref[i] for i in range(len(ref))), options=opts) == 16


def test_only_empty_tfrecords_is_an_error_when_built(tmp_path):
    info = tt.write_tile_dataset(tt.TileDatasetLayout((("e0", "p", "a", 0),)), tmp_path)
    with pytest.warns(UserWarning, match="empty"):
        ds = tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])
    with pytest.raises(ValueError, match="every tfrecord of this loader is empty.*e0"):
        ds.tensorflow()
    with pytest.raises(ValueError, match="every tfrecord of this loader is empty.*e0"):
        plugins.make_indexed("tensorflow", info["tfrecords"], {})


def test_bad_options_are_refused_when_built(datasets, tmp_path):
    """Semantics 10 (revision 2): the reference's checks, made once for every backend."""
    ds = datasets[0]
    with pytest.raises(TypeError, match="deterministic must be True or False, got 'yes'"):
        ds.tensorflow(deterministic="yes")
    with pytest.raises(TypeError, match="infinite must be True or False, got 'False'"):
        ds.tensorflow(infinite="False")
    with pytest.raises(LabelError, match=r"slide 's1' \(stored in .*s1.tfrecords\)"):
        ds.tensorflow(labels={"s0": 0, "s2": 1})
    folder = os.path.dirname(ds.tfrecords()[0])
    got = plugins.make_indexed("tensorflow", folder, {"seed": 0, "standardize": False})
    ref = tilespec.IndexedInterleaver(ds.tfrecords(), seed=0, standardize=False)
    assert tt.assert_conforms(got, (ref[i] for i in range(len(ref))),
                              options={"standardize": False}) == 16
    with pytest.raises(TFRecordError, match="tfrecords folder or file not found"):
        plugins.make_indexed("tensorflow", str(tmp_path / "missing"), {})
