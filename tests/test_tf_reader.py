"""spec/adapter_tf.md, "Two readers": the TF loader's C++ reading path (a
TFRecordDataset per tfrecord, chosen by the reference's plan) yields the Python
reader's stream bit for bit, on every option set routed to it; the routing rule;
errors that still name file and record.

The Python reader (``reader='python'``) is itself checked against the reference in
tests/test_tf_adapter.py (the default reader); here every loader asks for
``reader='auto'``, the C++ path wherever the rule routes it there.
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
from tilespec import testing as tt  # noqa: E402
from tilespec.index import load_index  # noqa: E402

LAYOUT = tt.TileDatasetLayout((("s0", "p0", "a", 7), ("s1", "p1", "b", 4),
                               ("s2", "p1", "a", 5)), tile_px=16, seed=1)
PNG = tt.TileDatasetLayout((("b0", "p0", "a", 3), ("b1", "p1", "b", 2), ("b2", "p2", "a", 6)),
                           tile_px=12, seed=3, image_format="png")


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    out = []
    for k, layout in enumerate((LAYOUT, PNG)):
        info = tt.write_tile_dataset(layout, tmp_path_factory.mktemp(f"rd{k}"))
        out.append(tilespec.Dataset(tfrecords=info["tfrecords"],
                                    annotations=info["annotations"]))
    return out


def tf_options(opts, slides):
    out = dict(opts)
    out["labels"] = tt.resolve_labels(opts.get("labels"), slides)
    if "rank" in out:
        out["shard_idx"], out["num_shards"] = out.pop("rank"), out.pop("num_replicas")
    return out


def items(ds, n=None):
    got = []
    for k, x in enumerate(ds):
        if n is not None and k >= n:
            break
        got.append(tuple(None if c is None else np.asarray(c) for c in x))
    return got


def same_bytes(u, v) -> bool:
    """Equal dtype, shape and content (strings by value, numbers by their bytes)."""
    if u.dtype != v.dtype or u.shape != v.shape:
        return False
    if u.dtype.kind == "O":
        return u.tolist() == v.tolist()
    return u.tobytes() == v.tobytes()


def assert_same(a, b):
    """Bit for bit: same length, and every field's dtype, shape and bytes."""
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        assert len(x) == len(y), k
        for u, v in zip(x, y):
            if u is None or v is None:
                assert u is None and v is None, k
                continue
            assert same_bytes(u, v), f"item {k} differs"


def elements(loader, reader, n):
    """The elements the image map receives from ``reader`` for the loader's options:
    dicts of raw bytes, drawn parameters, label, slide, location, stain target."""
    from tilespec_tf import loader as tfl

    got = []
    for k, e in enumerate(tfl.elements(loader.tilespec.base, reader=reader)):
        if n is not None and k >= n:
            break
        got.append(tuple((key, np.asarray(v)) for key, v in sorted(e.items())))
    return got


def assert_same_elements(a, b):
    assert len(a) == len(b)
    for k, (x, y) in enumerate(zip(a, b)):
        assert [key for key, _ in x] == [key for key, _ in y], k
        for (key, u), (_, v) in zip(x, y):
            assert same_bytes(u, v), f"element {k}: {key} differs"


def compare(ds, opts, n=9, images=False):
    """Both readers over the same options: the C++ path is taken and gives the Python
    reader's elements bit for bit (two finite epochs, or the first n positions of an
    infinite stream); with ``images`` the loaders' items too (bit for bit: only for
    options whose TensorFlow image ops are deterministic, i.e. uint8 without a
    normalizer: TensorFlow's float reductions may differ in the last bit from run to
    run, whichever reader fed them)."""
    cxx = ds.tensorflow(reader="auto", **opts)
    py = ds.tensorflow(reader="python", **opts)
    assert cxx.tilespec.reader == "c++", cxx.tilespec.python_reason
    assert py.tilespec.reader == "python"
    infinite = opts.get("infinite", True)
    B = opts.get("batch_size") or 1
    m = n * B if infinite else None
    for _ in range(1 if infinite else 2):  # finite: epochs 0 and 1
        a = elements(cxx, "auto", m)
        assert_same_elements(a, elements(py, "python", m))
    if images:
        for _ in range(1 if infinite else 2):
            assert_same(items(cxx, n), items(py, n))
    return len(a)


CASES = [o for o in tt.covering_options(16) if not o.get("shuffle")]


@pytest.mark.parametrize("k", range(len(CASES)))
def test_cxx_reader_equals_python_reader_on_covering_options(datasets, k):
    ds = datasets[0]
    opts = tf_options(CASES[k], ds.slides())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert compare(ds, opts) > 0


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(opts=tt.loader_options(16), clip=st.sampled_from([None, 2, 5]),
       balance=st.sampled_from([None, "category", "slide"]),
       uneven=st.sampled_from(["pad", "drop"]))
def test_cxx_reader_equals_python_reader_drawn(datasets, opts, clip, balance, uneven):
    ds = datasets[0]
    if clip is not None:
        ds = ds.clip(clip)
    if balance is not None:
        ds = ds.balance("category" if balance == "category" else None,
                        strategy="slide" if balance == "slide" else "category")
    opts = dict(tf_options(opts, ds.slides()), shuffle=False, uneven=uneven)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compare(ds, opts, n=11)


@pytest.mark.parametrize("opts", [
    dict(infinite=False, seed=4, incl_slidenames=True, incl_loc=True, batch_size=2),
    dict(infinite=True, seed=5, labels="category", augment="xyr", shard_idx=1,
         num_shards=3),
    dict(infinite=False, seed=6, elastic=True, batch_size=2),  # elastic, one replica
    dict(infinite=False, seed=7, shard_idx=0, num_shards=4, uneven="pad", batch_size=3),
    dict(infinite=False, seed=7, shard_idx=3, num_shards=4, uneven="drop"),
])
def test_cxx_reader_on_ranks_pads_and_the_reference(datasets, opts):
    """Ranks with pads or drops, elastic with one replica, the images too; also against
    the reference itself."""
    ds = datasets[0]
    if opts.get("labels") == "category":
        opts = dict(opts, labels="category")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compare(ds, dict(opts, standardize=False), images=True)
        ref = dict(opts, standardize=False)
        if "shard_idx" in ref:
            ref["rank"], ref["num_replicas"] = ref.pop("shard_idx"), ref.pop("num_shards")
        n = None if not opts["infinite"] else 9
        tt.assert_conforms(ds.tensorflow(reader="auto", **dict(opts, standardize=False)), ds.numpy(**ref),
                           n=n, options=ref)


def test_the_routing_rule(datasets):
    """reader_for: the Python reader where the plan needs random access or a Python
    decision per record, each named."""
    ds = datasets[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = {"shuffle=True": dict(shuffle=True),
                 "on_error='skip'": dict(on_error="skip"),
                 "elastic=True with num_replicas > 1": dict(elastic=True, shard_idx=0,
                                                            num_shards=2, batch_size=2)}
        for why, opts in cases.items():
            d = ds.tensorflow(reader="auto", infinite=False, seed=1, **opts)
            assert d.tilespec.reader == "python" and why in d.tilespec.python_reason
        assert ds.tensorflow(reader="auto", infinite=False, seed=1).tilespec.reader == "c++"
        assert ds.tensorflow(reader="auto", infinite=False, elastic=True, batch_size=2).tilespec.reader == "c++"
        png = datasets[1].tensorflow(reader="auto", infinite=False)
        assert png.tilespec.reader == "python" and "PNG tiles" in png.tilespec.python_reason
        with pytest.raises(ValueError, match="reader must be one of"):
            ds.tensorflow(reader="cxx")


def _copy(ds, tmp_path):
    folder = tmp_path / "tfrecords"
    folder.mkdir()
    for p in ds.tfrecords():
        shutil.copy(p, folder)
    return folder


def test_a_record_over_the_cap_keeps_the_python_reader(datasets, tmp_path):
    """An index (built with a larger cap) holding a record over max_record_bytes: the
    Python reader raises that record's error at its turn (spec/reliability.md)."""
    ds = datasets[0]
    folder = _copy(ds, tmp_path)
    for p in sorted(folder.glob("*.tfrecords")):
        load_index(str(p))
    d = tilespec.Dataset(tfrecords=str(folder))
    biggest = max(int(load_index(str(p))[0][:, 1].max()) for p in folder.glob("*.tfrecords"))
    from tilespec.records import FRAMING_BYTES

    loader = d.tensorflow(reader="auto", infinite=False, max_record_bytes=biggest - FRAMING_BYTES - 1)
    assert loader.tilespec.reader == "python"
    assert "max_record_bytes" in loader.tilespec.python_reason
    with pytest.raises(Exception, match=r"tfrecords, record \d+, byte offset"):
        items(loader)


def _corrupt_payload(path, record):
    offsets = load_index(path)[0]
    with open(path, "r+b") as f:
        f.seek(int(offsets[record, 0]) + 12 + 5)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))


def test_errors_name_file_and_record(datasets, tmp_path):
    """A payload failing its checksum (TensorFlow's reader stops at it), bytes that are
    no image, a record without location under incl_loc, a tile of another size: the
    C++ path raises the reference's error naming file and record."""
    from tilespec.synthetic import encode_jpeg

    ds = datasets[0]
    folder = _copy(ds, tmp_path)
    path = str(folder / "s1.tfrecords")
    load_index(path)
    _corrupt_payload(path, 2)
    d = tilespec.Dataset(tfrecords=str(folder))
    loader = d.tensorflow(reader="auto", infinite=False, seed=6)
    assert loader.tilespec.reader == "c++"
    with pytest.raises(Exception, match=r"s1.tfrecords, record 2, byte offset"):
        items(loader)

    def one_file(name, recs):
        sub = tmp_path / name
        sub.mkdir()
        p = str(sub / "s.tfrecords")
        tilespec.write_records(p, recs)
        return tilespec.Dataset(tfrecords=[p]), p

    good = [tilespec.encode_tile(encode_jpeg(np.full((8, 8, 3), 20 * i, np.uint8)), "s", i, i)
            for i in range(5)]
    cases = {
        "bad": (good[:3] + [tilespec.encode_tile(b"BAD: no image", "s", 3, 3)], {},
                r"record 3"),
        "noloc": (good[:2] + [tilespec.encode_tile(good[0] and encode_jpeg(
            np.zeros((8, 8, 3), np.uint8)), "s")], {"incl_loc": True},
            r"record 2: incl_loc=True but the record has no loc_x/loc_y"),
        "size": (good[:1] + [tilespec.encode_tile(encode_jpeg(np.zeros((8, 16, 3), np.uint8)),
                                                  "s", 1, 1)], {},
                 r"record 1.*tile size differs"),
    }
    for name, (recs, opts, msg) in cases.items():
        d, p = one_file(name, recs)
        loader = d.tensorflow(reader="auto", infinite=False, seed=0, **opts)
        assert loader.tilespec.reader == "c++"
        with pytest.raises(Exception, match=rf"{p}, {msg}"):
            items(loader)
        with pytest.raises(Exception, match=msg):
            list(d.numpy(infinite=False, seed=0, **opts))


def test_many_tfrecords_keep_the_python_reader(datasets, monkeypatch):
    """Each tfrecord the C++ path reads holds an open file and a read buffer: above
    MAX_CXX_TFRECORDS live tfrecords the Python reader (a bounded set of open files)."""
    from tilespec_tf import loader as tfl

    ds = datasets[0]
    monkeypatch.setattr(tfl, "MAX_CXX_TFRECORDS", 2)
    d = ds.tensorflow(reader="auto", infinite=False, seed=1)
    assert d.tilespec.reader == "python" and "MAX_CXX_TFRECORDS" in d.tilespec.python_reason
    assert ds.tensorflow(reader="auto", infinite=False, seed=1, shard_idx=0, num_shards=1).tilespec.reader \
        == "python"
    monkeypatch.setattr(tfl, "MAX_CXX_TFRECORDS", 3)
    assert ds.tensorflow(reader="auto", infinite=False, seed=1).tilespec.reader == "c++"
