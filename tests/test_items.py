"""spec/sampling.md, "Loaders" (items), and spec/reliability.md, "on_error" (skips):
reading a record into an item, :mod:`tilespec.items`."""

import numpy as np
import pytest

import tilespec
from tilespec import ops
from tilespec.annotations import LabelError
from tilespec.items import ArrayStacker, ItemMaker
from tilespec.pipeline import Pipeline


@pytest.fixture(scope="module")
def ds(demo_dataset):
    return tilespec.Dataset(tfrecords=demo_dataset["tfrecords"],
                            annotations=demo_dataset["annotations"])


def _tiles(tmp_path, bad=None, loc=True):
    """A tfrecord of six 8 x 8 JPEG tiles of slide 's' (tile i at loc (i, 0), or no
    location); record ``bad`` holds bytes that are not an image."""
    recs = [tilespec.encode_tile(ops.jpeg_encode(np.full((8, 8, 3), i * 20, np.uint8), 90),
                                 "s", *((i, 0) if loc else ())) for i in range(6)]
    if bad is not None:
        recs[bad] = tilespec.encode_tile(b"\xff\xd8\xff not really a jpeg", "s",
                                         *((bad, 0) if loc else ()))
    path = tmp_path / "s.tfrecords"
    tilespec.write_records(path, recs)
    return str(path)


def _maker(path, **kw):
    opts = dict(labels=None, pipeline=Pipeline.from_options(), incl_slidenames=False,
                incl_loc=False, on_error="raise")
    return ItemMaker([path], **dict(opts, **kw))


def test_array_stacker_fills_rows_and_gives_back_what_it_took():
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


# -- the two steps of an item: read, then fields (spec/adapters.md, "What an adapter is") -

def test_read_then_fields_give_the_loaders_items(ds):
    labels = ds.labels("category")[0]
    L = ds.numpy(seed=4, labels=labels, incl_slidenames=True, incl_loc=True,
                 standardize=False)
    maker = L.item_maker
    t, j = L.plan(0).records(0, 8)
    for k, (tk, jk) in enumerate(zip(t.tolist(), j.tolist())):
        want = L.items(k, k + 1)[0]
        tile, image = maker.read(tk, jk, k, tilespec.decode_image)
        np.testing.assert_array_equal(image, want[0])
        path = maker.source.paths[tk]
        assert maker.fields(tile, path, jk) == want[1:]
        assert want[1:3] == (labels[tile.slide], tile.slide)
        bare, none = maker.read(tk, jk, k)                  # no decode: the tile alone
        assert none is None and bare.image_raw == tile.image_raw


def test_read_raises_located_or_skips_and_logs(tmp_path):
    path = _tiles(tmp_path, bad=2)
    maker = _maker(path)
    offset = maker.source.offset_of(0, 2)
    assert offset > 0
    with pytest.raises(tilespec.ImageDecodeError) as e:
        maker.read(0, 2, 7, tilespec.decode_image)
    assert (e.value.path, e.value.record, e.value.offset) == (path, 2, offset)
    assert maker.num_skipped == 0 and maker.skipped == []
    skipping = _maker(path, on_error="skip")
    with pytest.warns(UserWarning, match=r"skipped .*s.tfrecords record 2 \(stream position 7\)"):
        assert skipping.read(0, 2, 7, tilespec.decode_image) is None
    assert skipping.num_skipped == 1
    assert [(s["position"], s["path"], s["record"]) for s in skipping.skipped] == [(7, path, 2)]
    assert f"byte offset {offset}" in skipping.skipped[0]["error"]
    tile, image = skipping.read(0, 3, 8, tilespec.decode_image)   # the others are read
    assert tile.loc_x == 3 and image.shape == (8, 8, 3) and skipping.num_skipped == 1


def test_read_uses_the_source_it_is_given(tmp_path):
    maker = _maker(_tiles(tmp_path))
    other = maker.source.reopened()
    tile, _ = maker.read(0, 4, 0, source=other)
    assert tile.loc_x == 4
    assert list(other._files) == [0] and list(maker.source._files) == []
    other.close()
    maker.close()


def test_fields_need_a_location_with_incl_loc(tmp_path):
    path = _tiles(tmp_path, loc=False)
    maker = _maker(path, labels={"s": 5}, incl_slidenames=True)
    tile, _ = maker.read(0, 1, 0)
    assert maker.fields(tile, path, 1) == (5, "s")
    with_loc = _maker(path, labels={"s": 5}, incl_loc=True)
    with pytest.raises(LabelError, match=r"s.tfrecords, record 1: incl_loc=True but the "
                                         r"record has no loc_x/loc_y"):
        with_loc.fields(tile, path, 1)
    unlabelled = _maker(path, labels={"t": 0})
    with pytest.raises(LabelError, match=r"slide 's' \(stored in .*s.tfrecords\) has no label"):
        unlabelled.fields(tile, path, 1)
