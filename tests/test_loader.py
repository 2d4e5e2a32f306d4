"""spec/sampling.md, "Loaders" and "Indexed dataset": the NumPy reference loaders."""

import os
import shutil

import numpy as np
import pytest
from scipy import stats

import tilespec
from tilespec import ops, testing as tt
from tilespec.annotations import LabelError
from tilespec.loader import IndexedInterleaver, NumpyLoader
from tilespec.pipeline import Pipeline

from conftest import BALANCINGS
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
    src = tilespec.source.TileSource(ds.tfrecords())
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
    with pytest.raises(LabelError, match="slide 'slide-c1'.*renamed.tfrecords"):
        NumpyLoader([renamed], [12], [1.0], labels={"renamed": 7}, seed=0)  # when built


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


# ---------------------------------------------------------------- equal steps, elastic
def test_equal_steps_loader_pads_with_its_first_item_and_fresh_draws(ds):
    # spec/sampling.md, "Equal steps": clip(7) over 4 ranks is 42 records, 11, 11, 10, 10:
    # ranks 2 and 3 repeat their first record as an 11th item (its own draws, position 10)
    d = ds.clip(7)
    out = []
    for r in range(4):
        L = d.numpy(infinite=False, seed=9, rank=r, num_replicas=4, batch_size=4,
                    incl_slidenames=True, incl_loc=True, standardize=False, augment="r")
        batches = list(L)
        assert len(batches) == len(L) == 3 and [len(b[0]) for b in batches] == [4, 4, 3]
        assert L.num_padded == (r >= 2) and L.num_dropped == 0
        items = [(b[0][k], b[2][k], int(b[3][k])) for b in batches for k in range(len(b[0]))]
        out.append(items)
        if r >= 2:
            assert items[-1][1:] == items[0][1:]           # the same record again
            t, j = L.plan(0).records(10, 11)
            key = L.plan(0).key
            steps = L.pipeline.draw(key, np.array([10])).steps[0]
            want = L.item_maker.make(int(t[0]), int(j[0]), 10, steps, None)[0]
            np.testing.assert_array_equal(items[-1][0], want)  # with position 10's draw
    ids = [i[1:] for r, rank in enumerate(out) for i in rank[:10 + (r < 2)]]
    assert len(ids) == len(set(ids)) == 42
    drop = [d.numpy(infinite=False, seed=9, rank=r, num_replicas=4, batch_size=4,
                    uneven="drop") for r in range(4)]
    assert [len(L) for L in drop] == [3] * 4 and [L.num_dropped for L in drop] == [1, 1, 0, 0]
    assert [sum(len(b[0]) for b in L) for L in drop] == [10] * 4


@pytest.mark.parametrize("kwargs,err,match", [
    (dict(uneven="even"), ValueError, "uneven must be one of"),
    (dict(uneven=None), ValueError, "uneven must be one of"),
    (dict(elastic="yes"), TypeError, "elastic must be True or False"),
    (dict(rank=1, num_replicas=200, infinite=False), ValueError, "owns no record"),
])
def test_equal_steps_options_are_checked_when_built(ds, kwargs, err, match):
    with pytest.raises(err, match=match):
        ds.clip(1).numpy(**kwargs)
    if "num_replicas" in kwargs:     # elastic: every rank reads from the whole stream
        assert len(ds.clip(1).numpy(elastic=True, **kwargs)) == 1


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


# -- the public surface adapters build on (spec/adapters.md, "What an adapter is") --------

def test_make_items_with_a_stacker_equals_items_and_collate(ds):
    from tilespec.items import ArrayStacker, collate

    L = ds.numpy(seed=5, augment="xyr", batch_size=4)
    items = L.items(8, 12)
    made, images = L.make_items(8, 12, stack=ArrayStacker, owned=False)
    assert all(m[0] is None for m in made)
    for got, want in zip(collate(made, images), collate(items)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("augment, refuse, stacked", [
    (False, 0, False),      # nothing after decode: the first image is put, the rest decoded
    (False, 2, True),       # straight into their rows (put is not asked again)
    ("xyr", 0, False), ("xyr", 2, False), ("xyr", 5, False)])
def test_make_items_puts_the_images_back_when_the_stacker_refuses_one(ds, augment, refuse,
                                                                       stacked):
    from tilespec.items import ArrayStacker

    class Refusing(ArrayStacker):   # as an adapter's stacker refuses an image it cannot hold
        def put(self, k, img):
            return k != refuse and super().put(k, img)

    L = ds.numpy(seed=5, augment=augment, batch_size=6, standardize=False)
    want = L.items(6, 12)
    made, images = L.make_items(6, 12, stack=Refusing, owned=False)
    assert (images is not None) == stacked and len(made) == len(want) == 6
    if stacked:
        assert all(m[0] is None for m in made)
        made = [(img,) + m[1:] for img, m in zip(images, made)]
    for got, w in zip(made, want):
        np.testing.assert_array_equal(got[0], w[0])
        assert got[1:] == w[1:]


def test_indexed_item_with_another_maker(ds):
    D = IndexedInterleaver(ds.tfrecords(), seed=2, augment="r", standardize=False)
    maker = D.item_maker.replace()
    for i in (0, 3, len(D) - 1):
        a, b = D[i], D.item(i, maker=maker)
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1:] == b[1:]


# -- empty tfrecords (semantics 1, revision 2) ------------------------------------------------

@pytest.mark.parametrize("infinite", [False, True])
@pytest.mark.parametrize("balance", sorted(BALANCINGS))
def test_an_empty_tfrecord_is_never_sampled(empty_pair, balance, infinite):
    """spec/dataset.md, "Empty tfrecords": the stream of a dataset with empty tfrecords is
    the stream of the same dataset without them, item for item (same seed)."""
    full, bare = (BALANCINGS[balance](d) for d in empty_pair)
    opts = dict(labels="category", seed=3, infinite=infinite, augment="xyr", batch_size=4,
                incl_slidenames=True, incl_loc=True)
    n = 8 if infinite else None
    count = tt.assert_conforms(full.numpy(**opts), bare.numpy(**opts), n=n, options=opts,
                               tolerance=tt.Tolerance())
    assert count == (8 if infinite else 4)  # 16 records in batches of 4
    # with shuffle=True the passes are permuted by tfrecord index (spec/sampling.md), which
    # the empty tfrecords shift; which tfrecord each position picks is still the same
    opts["shuffle"] = True

    def picks(d):
        L = d.numpy(**opts)
        return [s for _, b in zip(range(n or len(L)), L) for s in b[2]]

    assert picks(full) == picks(bare)
    if not infinite:
        assert sorted(picks(full)) == ["s0"] * 7 + ["s1"] * 4 + ["s2"] * 5


def test_indexed_interleaver_over_an_empty_tfrecord(empty_pair):
    full, bare = empty_pair
    a = tilespec.IndexedInterleaver(full.tfrecords(), labels=full.labels("category")[0],
                                    seed=1, augment="xy", shuffle=True, incl_slidenames=True)
    b = tilespec.IndexedInterleaver(bare.tfrecords(), labels=bare.labels("category")[0],
                                    seed=1, augment="xy", shuffle=True, incl_slidenames=True)
    assert len(a) == len(b) == 16
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert np.array_equal(x[0], y[0]) and x[1:] == y[1:]
    # clip as a list aligned with the tfrecords: the empty ones take 0 whatever is asked
    assert [os.path.basename(p) for p in full.tfrecords()[:2]] == ["e0.tfrecords",
                                                                    "e1.tfrecords"]
    c = tilespec.IndexedInterleaver(full.tfrecords(), clip=[5, 5, 3, 2, 1], seed=1)
    assert len(c) == 6 and sorted(c.record(i)[0] for i in range(6)) == [2, 2, 2, 3, 3, 4]


# -- checked at construction (semantics 10, revision 2; spec/sampling.md) --------------------

def _two_slide_file(tmp_path, demo_dataset):
    """A tfrecord holding the records of slide-c1 and then slide-d2 (two slide names)."""
    path = tmp_path / "mixed.tfrecords"
    recs = []
    for name in ("slide-c1", "slide-d2"):
        recs += list(read_records(os.path.join(demo_dataset["tfrecords"], f"{name}.tfrecords")))
    tilespec.write_records(path, recs)
    return path


def test_every_slide_name_in_the_records_needs_a_label(tmp_path, demo_dataset, ds):
    mixed = _two_slide_file(tmp_path, demo_dataset)
    for make in (lambda **kw: NumpyLoader([mixed], [32], [1.0], seed=0, **kw),
                 lambda **kw: IndexedInterleaver([mixed], seed=0, **kw)):
        make(labels={"slide-c1": 0, "slide-d2": 1})   # every name stored: fine
        with pytest.raises(LabelError) as e:           # the second name, record 12 on
            make(labels={"slide-c1": 0})
        assert "slide 'slide-d2'" in str(e.value) and str(mixed) in str(e.value)
    labels, _ = ds.labels("category")
    with pytest.raises(LabelError, match=r"slide 'slide-b1' \(stored in .*slide-b1.tfrecords\)"
                                         r" has no label.*\(1 more slide"):
        ds.numpy(labels={k: v for k, v in labels.items() if k not in ("slide-b1", "slide-d1")})


def test_record_slides_are_read_once_and_cached_on_the_dataset(demo_dataset, monkeypatch):
    from tilespec.source import TileSource

    ds = tilespec.Dataset(tfrecords=demo_dataset["tfrecords"],
                          annotations=demo_dataset["annotations"])
    calls = []
    real = TileSource.slides
    monkeypatch.setattr(TileSource, "slides", lambda self, t: calls.append(t) or real(self, t))
    ds.numpy()                                   # no labels: nothing read
    assert calls == []
    labels = ds.labels("category")[0]
    ds.numpy(labels=labels, infinite=False)
    assert len(calls) == 6                        # one read per tfrecord
    ds.numpy(labels=labels)
    ds.clip(5).balance(strategy="tile").numpy(labels=labels)   # derived: the same cache
    assert len(calls) == 6
    assert ds.record_slides() == {p: (os.path.basename(p)[:-len(".tfrecords")],)
                                  for p in ds.tfrecords()}


@pytest.mark.parametrize("value, match", [
    ("tumor", r"slide 'slide-a1' is 'tumor'.*Dataset.labels\(headers\)"),
    (["a", 1], r"Dataset.labels\(headers\)"),
    (None, r"slide 'slide-a1' is None: labels must be numbers"),
    ({"x": 1}, r"labels must be numbers or sequences of numbers of one length"),
])
def test_label_values_must_be_numbers(ds, value, match):
    labels = dict(ds.labels("category")[0], **{"slide-a1": value})
    for make in (lambda: ds.numpy(labels=labels),
                 lambda: IndexedInterleaver(ds.tfrecords(), labels=labels)):
        with pytest.raises(LabelError, match=match):
            make()


def test_label_shapes_must_agree(ds):
    labels = {s: [0.5, 1.0] for s in ds.slides()}
    ds.numpy(labels=labels)                                   # equal-length sequences: fine
    ds.numpy(labels={s: np.float32(i) for i, s in enumerate(ds.slides())})  # numpy numbers
    with pytest.raises(LabelError, match=r"one shape: slide 'slide-a1' has a sequence of 2 "
                                         r"numbers, slide 'slide-a2' has a sequence of 3"):
        ds.numpy(labels=dict(labels, **{"slide-a2": [1, 2, 3]}))
    with pytest.raises(LabelError, match="slide 'slide-a2' has a number"):
        ds.numpy(labels=dict(labels, **{"slide-a2": 1}))


BOOL_OPTIONS = ("infinite", "shuffle", "incl_slidenames", "incl_loc", "drop_last", "resize_aa")


@pytest.mark.parametrize("name", BOOL_OPTIONS)
@pytest.mark.parametrize("bad", ["False", 0, None, 1.0])
def test_boolean_options_must_be_bools(ds, name, bad):
    with pytest.raises(TypeError, match=f"{name} must be True or False, got {bad!r}"):
        ds.numpy(**{name: bad})
    if name not in ("infinite", "drop_last"):   # the indexed dataset's options
        with pytest.raises(TypeError, match=f"{name} must be True or False"):
            IndexedInterleaver(ds.tfrecords(), **{name: bad})


def test_numpy_bools_are_bools(ds):
    L = ds.numpy(infinite=np.False_, shuffle=np.True_, drop_last=np.bool_(False), seed=0)
    assert L.infinite is False and L.shuffle is True and len(list(L)) == 144


def test_crop_box_is_checked_against_the_tile_size(ds):
    assert ds.tile_size == (64, 64)
    ds.numpy(crop_left=0, crop_width=64)                      # the whole tile: fine
    for make in (lambda **kw: ds.numpy(**kw),
                 lambda **kw: IndexedInterleaver(ds.tfrecords(), **kw)):
        with pytest.raises(ValueError) as e:
            make(crop_left=60, crop_width=8)
        assert "crop_left=60, crop_width=8" in str(e.value)
        assert "[60, 68) is outside the tiles of 64 x 64 pixels" in str(e.value)
        assert "slide-a1.tfrecords" in str(e.value)           # the record it was read from


def test_tile_size_skips_empty_tfrecords(empty_pair):
    full, _ = empty_pair
    assert full.tile_size == (16, 16)
    assert full.numpy(crop_left=4, crop_width=12) is not None
    with pytest.raises(ValueError, match=r"16 x 16 pixels .*s0.tfrecords"):
        full.numpy(crop_left=4, crop_width=13)


def test_indexed_interleaver_takes_a_folder_or_a_file(ds, demo_dataset, tmp_path):
    folder = demo_dataset["tfrecords"]
    a = IndexedInterleaver(folder, seed=0)
    assert a.paths == ds.tfrecords() and len(a) == 144
    one = os.path.join(folder, "slide-c1.tfrecords")
    b = IndexedInterleaver(one, seed=0)
    assert b.paths == [one] and len(b) == 12
    mixed = IndexedInterleaver([one, folder], seed=0)          # a list keeps its order
    assert mixed.paths == [one] + ds.tfrecords()
    missing = tmp_path / "nope"
    for source in (str(missing), [one, str(missing)]):
        with pytest.raises(tilespec.TFRecordError) as e:
            IndexedInterleaver(source)
        assert str(e.value) == f"{missing}: tfrecords folder or file not found"
        assert not isinstance(e.value, FileNotFoundError)


@pytest.mark.parametrize("kw, message", [
    (dict(rank=1), "rank=1 is given without num_replicas"),
    (dict(rank=0), "rank=0 is given without num_replicas"),
    (dict(num_replicas=2), "num_replicas=2 is given without rank"),
])
def test_rank_and_num_replicas_go_together(ds, kw, message):
    for make in (lambda: ds.numpy(**kw), lambda: IndexedInterleaver(ds.tfrecords(), **kw)):
        with pytest.raises(ValueError, match=message):
            make()
    L = ds.numpy(rank=1, num_replicas=2, infinite=False)   # both: fine
    assert (L.rank, L.num_replicas) == (1, 2)


def test_custom_weights_on_empty_tfrecords_are_never_used(empty_pair):
    full, bare = (d.balance(strategy="slide") for d in empty_pair)
    weights = {"e0": 5.0, "e1": 1.0, "s0": 1.0, "s1": 2.0, "s2": 3.0}
    full.prob_weights = {p: weights[os.path.basename(p)[:2]] for p in full.tfrecords()}
    bare.prob_weights = {p: weights[os.path.basename(p)[:2]] for p in bare.tfrecords()}
    for infinite in (False, True):
        opts = dict(seed=9, infinite=infinite, batch_size=5, incl_slidenames=True)
        tt.assert_conforms(full.numpy(**opts), bare.numpy(**opts), n=6 if infinite else None,
                           options=opts, tolerance=tt.Tolerance())
