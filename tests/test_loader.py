"""spec/sampling.md, "Loaders" and "Indexed dataset": the NumPy reference loaders."""

import os
import shutil

import numpy as np
import pytest
from scipy import stats

import tilespec
from tilespec import ops
from tilespec.annotations import LabelError
from tilespec.loader import IndexedInterleaver, NumpyLoader
from tilespec.pipeline import Pipeline
from tilespec.records import read_records


@pytest.fixture(scope="module")
def ds(demo_dataset):
    return tilespec.Dataset(tfrecords=demo_dataset["tfrecords"],
                            annotations=demo_dataset["annotations"])


def record_ids(items):
    """(slide, loc_x, loc_y) identifies a record of the synthetic dataset."""
    return [(s, int(x), int(y)) for _, _, s, x, y in items]


def all_ids(ds):
    out = {}
    for t, p in enumerate(ds.tfrecords()):
        for j, payload in enumerate(read_records(p)):
            tile = tilespec.parse_tile(payload)
            out[(t, j)] = (tile.slide, tile.loc_x, tile.loc_y)
    return out


def test_finite_loader_emits_every_record_once_across_ranks(ds):
    ids = all_ids(ds)
    seen = []
    for r in range(3):
        L = ds.numpy(infinite=False, seed=5, rank=r, num_replicas=3, incl_slidenames=True,
                     incl_loc=True, standardize=False)
        items = list(L)
        assert len(items) == len(L)
        seen += record_ids(items)
    assert len(seen) == len(set(seen)) == len(ids) == ds.num_tiles
    assert set(seen) == set(ids.values())


def test_items_are_the_planned_records(ds):
    ids = all_ids(ds)
    L = ds.numpy(infinite=True, seed=9, incl_slidenames=True, incl_loc=True,
                 standardize=False)
    it = iter(L)
    got = record_ids([next(it) for _ in range(60)])
    t, j = L.plan(0).records(0, 60)
    assert got == [ids[(int(a), int(b))] for a, b in zip(t, j)]


def test_images_equal_the_pipeline_with_the_drawn_parameters(ds):
    L = ds.numpy(infinite=True, seed=2, augment="xyrjb", standardize="per_image")
    it = iter(L)
    items = [next(it) for _ in range(12)]
    plan = L.plan(0)
    t, j = plan.records(0, 12)
    draws = Pipeline.from_options(augment="xyrjb").draw(plan.key, np.arange(12))
    src = tilespec.loader.TileSource(ds.tfrecords())
    for k, (img, label) in enumerate(items):
        raw = tilespec.decode_image(src.read(int(t[k]), int(j[k])).image_raw)
        from tilespec.augment import apply_steps
        want = ops.standardize(apply_steps(raw, draws.steps[k]), "per_image")
        np.testing.assert_array_equal(img, want)
        assert label is None
    src.close()


def test_batches_shapes_dtypes_and_labels(ds):
    labels, unique = ds.labels("category")
    L = ds.numpy(labels=labels, batch_size=8, infinite=False, seed=1, incl_slidenames=True,
                 incl_loc=True, drop_last=True, standardize=True)
    batches = list(L)
    assert len(batches) == len(L) == ds.num_tiles // 8
    img, lab, slides, x, y = batches[0]
    assert img.shape == (8, 64, 64, 3) and img.dtype == np.float32
    assert img.min() >= -1 and img.max() <= 1
    assert lab.shape == (8,) and slides.shape == (8,) and x.dtype == np.int64
    assert [labels[s] for s in slides] == lab.tolist()
    # header names work directly too
    L2 = ds.numpy(labels="category", batch_size=8, infinite=False, seed=1)
    np.testing.assert_array_equal(next(iter(L2))[1], lab)


def test_no_labels_gives_none_and_uint8_when_not_standardized(ds):
    img, label = next(iter(ds.numpy(seed=0, standardize=False)))
    assert label is None and img.dtype == np.uint8 and img.shape == (64, 64, 3)
    b = next(iter(ds.numpy(seed=0, batch_size=4, standardize=False)))
    assert b[1] is None and b[0].shape == (4, 64, 64, 3)


def test_default_is_uint8_and_true_is_unit(ds):
    """spec/images.md, "Pipeline order" and semantics §4: standardize=False (uint8) is
    the default of both reference loaders; True is 'unit'."""
    img = next(iter(ds.numpy(seed=0)))[0]
    assert img.dtype == np.uint8
    unit = next(iter(ds.numpy(seed=0, standardize=True)))[0]
    np.testing.assert_array_equal(unit, ops.standardize(img, "unit"))
    indexed = tilespec.IndexedInterleaver(ds.tfrecords())
    assert indexed[0][0].dtype == np.uint8
    unit = tilespec.IndexedInterleaver(ds.tfrecords(), standardize=True)[0][0]
    np.testing.assert_array_equal(unit, ops.standardize(indexed[0][0], "unit"))


def test_a_float_transform_before_standardize_names_the_option(ds):
    """A float image reaching standardization is an error that says how to fix it."""
    L = ds.numpy(seed=0, standardize=True, transform=lambda img: img / 255.0)
    with pytest.raises(ValueError, match=r"must have dtype uint8, got float64 .*"
                                         r"pass standardize=False \(the default\)"):
        next(iter(L))
    img = next(iter(ds.numpy(seed=0, transform=lambda img: img / 255.0)))[0]
    assert img.dtype == np.float64     # the default yields the transform's image as is


def test_resume_equals_uninterrupted(ds):
    kw = dict(infinite=False, seed=44, batch_size=5, incl_slidenames=True, incl_loc=True,
              augment="xr", standardize=False)
    full = [b for b in ds.numpy(**kw)]
    L = ds.numpy(**kw)
    it = iter(L)
    for _ in range(7):
        next(it)
    state = L.state_dict()
    assert state == {"seed": 44, "epoch": 0, "position": 35}
    R = ds.numpy(**{**kw, "seed": 1})
    R.load_state_dict(state)
    rest = list(R)
    assert len(rest) == len(full) - 7
    for a, b in zip(rest, full[7:]):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert R.state_dict() == {"seed": 44, "epoch": 1, "position": 0}


def test_epochs_advance_and_differ(ds):
    L = ds.numpy(infinite=False, seed=3, incl_slidenames=True, incl_loc=True,
                 standardize=False)
    e0 = record_ids(list(L))
    e1 = record_ids(list(L))
    assert sorted(e0) == sorted(e1) and e0 != e1 and L.epoch == 2


def test_seed_is_drawn_and_exposed(ds):
    L = ds.numpy()
    assert isinstance(L.seed, int) and 0 <= L.seed < 2**63
    assert L.state_dict()["seed"] == L.seed


def test_labels_follow_slide_name_inside_the_record(tmp_path, demo_dataset):
    src = os.path.join(demo_dataset["tfrecords"], "slide-c1.tfrecords")
    renamed = tmp_path / "renamed.tfrecords"
    shutil.copy(src, renamed)
    L = NumpyLoader([renamed], [12], [1.0], labels={"slide-c1": 7}, seed=0,
                    incl_slidenames=True)
    img, label, slide = next(iter(L))
    assert (label, slide) == (7, "slide-c1")
    L = NumpyLoader([renamed], [12], [1.0], labels={"renamed": 7}, seed=0)
    with pytest.raises(LabelError, match="slide 'slide-c1'.*renamed.tfrecords"):
        next(iter(L))


def test_on_error_skip_and_raise(tmp_path):
    recs = [tilespec.encode_tile(ops.jpeg_encode(np.full((8, 8, 3), i * 20, np.uint8), 90),
                                 "s", i, 0) for i in range(6)]
    recs[2] = tilespec.encode_tile(b"\xff\xd8\xff not really a jpeg", "s", 2, 0)
    path = tmp_path / "s.tfrecords"
    tilespec.write_records(path, recs)
    kw = dict(infinite=False, seed=0, incl_loc=True, standardize=False)
    with pytest.raises(tilespec.ImageDecodeError, match="s.tfrecords, record 2"):
        list(NumpyLoader([path], [6], [1.0], **kw))
    L = NumpyLoader([path], [6], [1.0], on_error="skip", **kw)
    with pytest.warns(UserWarning, match="skipped .*record 2"):
        got = sorted(int(x) for _, _, x, _ in L)
    assert got == [0, 1, 3, 4, 5]
    assert [(s["record"], s["path"]) for s in L.skipped] == [(2, str(path))]


def test_transform_errors_name_the_item(ds):
    def boom(img):
        raise RuntimeError("bad transform")

    L = ds.numpy(seed=0, transform=boom)
    with pytest.raises(RuntimeError, match="bad transform") as e:
        next(iter(L))
    assert any("stream position 0" in n for n in getattr(e.value, "__notes__", []))


def test_infinite_frequencies_match_each_balancing_strategy(ds):
    # Plan-level chi-square (no decoding): 30k positions per strategy, fixed seed.
    for strategy, headers in (("slide", None), ("tile", None), ("patient", None),
                              ("category", "category")):
        b = ds.balance(headers, strategy=strategy)
        table = b.sampling_table()
        L = b.numpy(seed=17)
        t, _ = L.plan(0).records(0, 30_000)
        counts = np.bincount(t, minlength=len(table.paths))
        p = stats.chisquare(counts, table.weights * counts.sum()).pvalue
        assert p > 1e-3, (strategy, counts, table.weights)


def test_clip_limits_the_stream(ds):
    c = ds.clip(5)
    L = c.numpy(infinite=False, seed=0, incl_loc=True, incl_slidenames=True,
                standardize=False)
    items = list(L)
    assert len(items) == 5 * len(ds.tfrecords())
    by_slide = {}
    for _, _, s, x, y in items:
        by_slide.setdefault(s, set()).add((x, y))
    # the first 5 records in file order: loc_y 0, loc_x 0..4 tiles of 64 px
    assert all(v == {(64 * k, 0) for k in range(5)} for v in by_slide.values())


def test_bad_loader_arguments(ds):
    with pytest.raises(ValueError, match="batch_size"):
        ds.numpy(batch_size=0)
    with pytest.raises(ValueError, match="on_error"):
        ds.numpy(on_error="ignore")
    with pytest.raises(ValueError, match="rank"):
        ds.numpy(rank=3, num_replicas=2)
    L = ds.numpy(batch_size=4, seed=0)
    with pytest.raises(ValueError, match="batch boundary"):
        L.load_state_dict({"seed": 0, "epoch": 0, "position": 3})
    with pytest.raises(ValueError, match="lacks"):
        L.load_state_dict({"seed": 0})


# ---------------------------------------------------------------- indexed dataset
def test_indexed_items_in_order_and_partitioned(ds):
    ids = all_ids(ds)
    paths = ds.tfrecords()
    seen = []
    for r in range(2):
        I = IndexedInterleaver(paths, rank=r, num_replicas=2, seed=0, incl_slidenames=True,
                               incl_loc=True, standardize=False)
        items = [I[i] for i in range(len(I))]
        got = record_ids(items)
        want = [ids[I.record(i)] for i in range(len(I))]
        assert got == want
        assert [I.record(i) for i in range(len(I))] == sorted(I.record(i) for i in range(len(I)))
        seen += got
    assert sorted(seen) == sorted(ids.values())


def test_indexed_shuffle_and_epochs(ds):
    paths = ds.tfrecords()
    I = IndexedInterleaver(paths, seed=4, shuffle=True, augment="xyr", standardize=False)
    order0 = [I.record(i) for i in range(len(I))]
    assert sorted(order0) != order0 and len(set(order0)) == len(I)
    img_a = I[3][0]
    I.set_epoch(1)
    order1 = [I.record(i) for i in range(len(I))]
    assert sorted(order1) == sorted(order0) and order1 != order0
    I.set_epoch(0)
    np.testing.assert_array_equal(I[3][0], img_a)


def test_indexed_clip_list_and_dict(ds):
    paths = ds.tfrecords()
    I = IndexedInterleaver(paths, clip=[2] * len(paths), seed=0)
    assert len(I) == 2 * len(paths)
    I = IndexedInterleaver(paths, clip={paths[0]: 1}, seed=0)
    assert len(I) == ds.num_tiles - ds.manifest()[paths[0]]["total"] + 1
    with pytest.raises(ValueError, match="clip has"):
        IndexedInterleaver(paths, clip=[1])
    with pytest.raises(ValueError, match="not in the dataset"):
        IndexedInterleaver(paths, clip={"/nowhere.tfrecords": 1})
    with pytest.raises(IndexError):
        IndexedInterleaver(paths, seed=0)[10_000]


def test_infinite_plan_small_calls_equal_one_call_and_own_their_arrays():
    """StreamPlan keeps picks drawn ahead (a performance cache): calls of any size, in
    order, resumed or repeated, give the same records, and writing into a returned
    array changes nothing later."""
    from tilespec.sampling import StreamPlan
    clip, w = np.array([7, 0, 30, 12]), np.array([1.0, 3.0, 0.5, 2.0])
    want = StreamPlan(clip, w, 5, infinite=True, shuffle=True).records(0, 5000)
    P = StreamPlan(clip, w, 5, infinite=True, shuffle=True)
    cuts = [0, 1, 64, 65, 1100, 1100, 3000, 5000]
    got = [P.records(a, b) for a, b in zip(cuts[:-1], cuts[1:])]
    for t, j in got:
        t[:] = 0  # the caller owns what it gets
        j[:] = -1
    t, j = P.records(0, 10)  # held ahead: the next calls slice what this one drew
    t[:] = 0
    for a, b in [(0, 10), (4000, 4100), (10, 20), (0, 5000), (999, 2100)]:
        t, j = P.records(a, b)
        np.testing.assert_array_equal(t, want[0][a:b])
        np.testing.assert_array_equal(j, want[1][a:b])


def test_array_stacker_fills_rows_and_gives_back_what_it_took():
    from tilespec.loader import ArrayStacker

    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, (4, 5, 3), dtype=np.uint8) for _ in range(3)]
    s = ArrayStacker(3)
    assert s.slot(0) is None                       # no batch before the first image
    assert s.put(0, imgs[0]) and s.put(1, imgs[1])
    assert s.slot(2).shape == (4, 5, 3)
    part = s.images(2)                              # fewer made (skips): a copy
    np.testing.assert_array_equal(part, np.stack(imgs[:2]))
    assert part.base is None or part.base is not s.buf
    assert not s.put(2, imgs[2][:, :4])            # another shape: refused, nothing written
    assert not s.put(2, imgs[2].astype(np.int16))  # another dtype
    assert not s.put(2, list(imgs[2]))             # not an array
    back = s.take_back(2)
    assert s.buf is None and len(back) == 2
    for b, im in zip(back, imgs):
        np.testing.assert_array_equal(b, im)
    assert s.take_back(0) == []


# -- the public surface adapters build on (spec/adapters.md, "What an adapter is") --------

def test_item_maker_replace_keeps_options_and_offsets_not_files(ds):
    L = ds.numpy(seed=3, augment="xy", incl_slidenames=True, incl_loc=True,
                 labels=ds.labels("category")[0], standardize=False)
    base = L.item_maker
    want = L.items(0, 6)
    flipped = Pipeline.from_options(augment="xy", standardize=False,
                                    transform=lambda im: im[::-1])
    other = base.replace(pipeline=flipped)
    assert (other.labels, other.incl_slidenames, other.incl_loc, other.on_error) == \
        (base.labels, True, True, "raise")
    assert other.source._offsets is base.source._offsets        # offsets shared ...
    same, _ = L.make_items(0, 6, maker=base.replace())
    got, _ = L.make_items(0, 6, maker=other)
    for a, b, c in zip(want, same, got):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[0][::-1], c[0])        # ... its pipeline applied
        assert a[1:] == b[1:] == c[1:]
    f = other.source._file(0)
    other.close()                                               # ... its files its own
    assert f.closed and not base.source._file(0).closed
    assert other.skipped == [] and other.num_skipped == 0


def test_make_items_with_a_stacker_equals_items_and_collate(ds):
    from tilespec.loader import ArrayStacker, collate

    L = ds.numpy(seed=5, augment="xyr", batch_size=4)
    items = L.items(8, 12)
    made, images = L.make_items(8, 12, stack=ArrayStacker, owned=False)
    assert all(m[0] is None for m in made)
    for got, want in zip(collate(made, images), collate(items)):
        np.testing.assert_array_equal(got, want)


def test_indexed_item_with_another_maker(ds):
    D = IndexedInterleaver(ds.tfrecords(), seed=2, augment="r", standardize=False)
    maker = D.item_maker.replace()
    for i in (0, 3, len(D) - 1):
        a, b = D[i], D.item(i, maker=maker)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:] == b[1:]


def test_reopened_source_shares_offsets_and_scan_cuts(tmp_path):
    from tilespec.loader import TileSource
    from tilespec.errors import TFRecordError

    path = str(tmp_path / "a.tfrecords")
    recs = [tilespec.encode_tile(tilespec.synthetic.encode_jpeg(
        np.full((8, 8, 3), 9 * i, np.uint8), 90), "s", loc_x=i, loc_y=0) for i in range(5)]
    tilespec.write_records(path, recs)
    data = bytearray(open(path, "rb").read())
    size = len(data) // 5
    data[2 * size + 3] ^= 0xFF                                   # a length field of record 2
    open(path, "wb").write(bytes(data))
    src = TileSource([path], on_error="skip")
    with pytest.warns(UserWarning, match="no index can be built"):
        n = len(src.offsets(0))
    again = src.reopened()
    assert again._offsets is src._offsets and again._cut is src._cut and len(again.offsets(0)) == n
    with pytest.raises(TFRecordError, match="not located"):      # the cut, known to both
        again.read(0, 4)
    assert again.read(0, 1).loc_x == 1
    again.close()
    assert src.read(0, 0).loc_x == 0
