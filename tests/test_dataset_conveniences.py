"""spec/dataset.md: the conveniences slideflow's dataset tests use -- annotations from a data
frame (duck-typed, pandas optional), len(ds.annotations), min_tiles=, and balancing a
dataset whose tfrecords hold no tiles."""

import warnings

import numpy as np
import pytest

import tilespec
from tilespec import testing as tt
from tilespec.annotations import AnnotationError, BalanceError, DatasetError

LAYOUT = tt.TileDatasetLayout((("s0", "p0", "a", 3), ("s1", "p1", "b", 1), ("s2", "p1", "a", 5)),
                              tile_px=8, seed=7)


@pytest.fixture(scope="module")
def info(tmp_path_factory):
    return tt.write_tile_dataset(LAYOUT, tmp_path_factory.mktemp("conv"))


ROWS = [{"patient": "p0", "slide": "s0", "category": "a", "score": 1.5},
        {"patient": "p1", "slide": "s1", "category": "b", "score": None},
        {"patient": "p1", "slide": "s2", "category": "a", "score": float("nan")}]


class Frame:
    """The least a data frame needs: to_dict('records')."""

    def __init__(self, rows):
        self._rows = rows
        self.calls = []

    def to_dict(self, orient):
        self.calls.append(orient)
        return [dict(r) for r in self._rows]


def test_annotations_from_a_duck_typed_frame(info):
    frame = Frame(ROWS)
    ds = tilespec.Dataset(tfrecords=info["tfrecords"], annotations=frame)
    assert frame.calls == ["records"]
    assert ds.slides() == ["s0", "s1", "s2"] and len(ds.annotations) == 3
    assert ds.annotations.rows["s0"]["score"] == "1.5"
    # None and NaN are missing values: blank, so filter_blank drops those slides
    assert ds.annotations.rows["s1"]["score"] == "" == ds.annotations.rows["s2"]["score"]
    assert ds.filter(filter_blank="score").slides() == ["s0"]
    same = tilespec.Dataset(tfrecords=info["tfrecords"], annotations=[
        {k: ("" if v is None or v != v else v) for k, v in r.items()} for r in ROWS])
    assert same.annotations == ds.annotations


def test_bad_frames_are_named(info):
    class Broken:
        def to_dict(self, orient):
            raise ValueError("orient must be one of ...")

    with pytest.raises(AnnotationError, match=r"Broken.to_dict\('records'\) failed: orient"):
        tilespec.Dataset(tfrecords=info["tfrecords"], annotations=Broken())

    class Wrong:
        def to_dict(self, orient):
            return {"slide": {0: "s0"}}

    with pytest.raises(AnnotationError, match="gave a dict, not a list of row dicts"):
        tilespec.Dataset(tfrecords=info["tfrecords"], annotations=Wrong())
    with pytest.raises(AnnotationError, match="missing 'category'"):
        tilespec.Dataset(tfrecords=info["tfrecords"],
                         annotations=Frame([ROWS[0], {"patient": "p1", "slide": "s1",
                                                      "score": 2}]))
    with pytest.raises(AnnotationError, match="CSV path, a list of row dicts or a data frame"):
        tilespec.Dataset(tfrecords=info["tfrecords"], annotations=42)


def test_annotations_from_pandas(info):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(ROWS)
    ds = tilespec.Dataset(tfrecords=info["tfrecords"], annotations=frame)
    assert len(ds.annotations) == 3 and ds.annotations.rows["s2"]["score"] == ""
    assert ds.labels("category")[0] == tilespec.Dataset(
        tfrecords=info["tfrecords"], annotations=info["annotations"]).labels("category")[0]


def test_len_of_annotations_counts_rows(info):
    ds = tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])
    assert len(ds.annotations) == len(ds.annotations.rows) == 3


def test_min_tiles_drops_small_tfrecords(info):
    ds = tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])
    counts = {k: v["total"] for k, v in ds.manifest("name").items()}
    assert counts == {"s0": 3, "s1": 1, "s2": 5}
    for m, want in ((0, ["s0", "s1", "s2"]), (1, ["s0", "s1", "s2"]), (2, ["s0", "s2"]),
                    (3, ["s0", "s2"]), (4, ["s2"]), (5, ["s2"])):
        got = tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"],
                               min_tiles=m)
        assert got.slides() == want and got.min_tiles == m
        assert ds.filter(min_tiles=m).slides() == want          # slideflow's filter(min_tiles=)
        assert got.num_tiles == sum(counts[s] for s in want)
    # with the other filters; kept by derived datasets; unannotated datasets too
    assert ds.filter(filters={"category": ["a"]}, min_tiles=4).slides() == ["s2"]
    small = ds.filter(min_tiles=2)
    assert small.balance(strategy="slide").min_tiles == 2
    assert small.filter(min_tiles=4).min_tiles == 4
    bare = tilespec.Dataset(tfrecords=info["tfrecords"], min_tiles=2)
    assert bare.slides() == ["s0", "s2"]
    # the loaders read only what is kept
    slides = {str(s) for _, _, s in bare.numpy(infinite=False, seed=0, incl_slidenames=True)}
    assert slides == {"s0", "s2"}
    with pytest.raises(DatasetError, match=r"none of the 3 tfrecord\(s\) has at least "
                                           r"min_tiles=6 tiles \(the most is 5\)"):
        tilespec.Dataset(tfrecords=info["tfrecords"], min_tiles=6)
    for bad in (-1, 1.5, True, "2"):
        with pytest.raises(DatasetError, match="min_tiles must be an integer >= 0"):
            ds.filter(min_tiles=bad)


def test_balancing_tfrecords_without_tiles_names_the_strategy(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    for s in ("e0", "e1", "e2"):
        (folder / f"{s}.tfrecords").write_bytes(b"")
    rows = [{"patient": f"p{i % 2}", "slide": s, "category": "ab"[i % 2]}
            for i, s in enumerate(("e0", "e1", "e2"))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")        # 0-byte files may warn (on_error='skip')
        ds = tilespec.Dataset(tfrecords=str(folder), annotations=rows, on_error="skip")
    assert ds.num_tiles == 0
    for strategy, kw in (("slide", {}), ("tile", {}), ("patient", {}),
                         ("category", {"headers": "category"})):
        with pytest.raises(BalanceError, match=rf"cannot balance with strategy '{strategy}': "
                                               r"the dataset's 3 tfrecord\(s\) hold no tiles"):
            ds.balance(strategy=strategy, **kw)
    # one tfrecord with tiles is enough to balance
    assert np.isclose(sum(_one_nonempty(tmp_path).balance(strategy="slide").prob_weights
                          .values()), 1.0)


def _one_nonempty(tmp_path):
    info = tt.write_tile_dataset(tt.TileDatasetLayout((("f0", "p0", "a", 2),), tile_px=8, seed=1),
                                 tmp_path / "one")
    folder = tmp_path / "one" / "tfrecords"
    (folder / "f1.tfrecords").write_bytes(b"")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tilespec.Dataset(tfrecords=str(folder), on_error="skip")
