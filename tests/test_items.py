"""spec/sampling.md, "Loaders" (items), and spec/reliability.md, "on_error" (skips):
reading a record into an item, :mod:`tilespec.items`."""

import numpy as np
import pytest

import tilespec
from tilespec.items import ArrayStacker
from tilespec.pipeline import Pipeline


@pytest.fixture(scope="module")
def ds(demo_dataset):
    return tilespec.Dataset(tfrecords=demo_dataset["tfrecords"],
                            annotations=demo_dataset["annotations"])


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

