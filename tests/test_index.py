"""spec/index.md: index files, building, validation, loading and rebuilding."""

import os
import shutil
import warnings

import numpy as np
import pytest

import tilespec
from tilespec import index as idx
from tilespec.index import (IndexRebuildWarning, compute_index, existing_index, index_path,
                            index_problem, index_state, read_index_file, write_index)
from tilespec.records import FRAMING_BYTES, read_record_at


@pytest.fixture
def slide(tmp_path, demo_dataset):
    """A private copy of one demo tfrecord (24 records with locations), no index."""
    src = demo_dataset["paths"][2]
    dst = tmp_path / os.path.basename(src)
    shutil.copyfile(src, dst)
    return dst


def _loaded_cleanly(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return tilespec.load_index(path, **kw)


def test_round_trip_on_the_demo_dataset(tmp_path, demo_dataset):
    for src in demo_dataset["paths"]:
        path = tmp_path / os.path.basename(src)
        shutil.copyfile(src, path)
        arr, locs = tilespec.build_index(path)
        tiles = [tilespec.parse_tile(p) for p in tilespec.read_records(path)]
        assert arr.dtype == np.int64 and arr.shape == (len(tiles), 2)
        assert locs.dtype == np.int64
        assert locs.tolist() == [[t.loc_x, t.loc_y] for t in tiles]
        assert os.path.exists(index_path(path))
        arr2, locs2 = _loaded_cleanly(path, build=False)
        assert np.array_equal(arr, arr2) and np.array_equal(locs, locs2)
        with open(path, "rb") as f:
            payloads = [read_record_at(f, int(o)) for o, _ in arr]
        assert payloads == list(tilespec.read_records(path))
        assert arr[0, 0] == 0 and int(arr[-1].sum()) == path.stat().st_size
        assert all(ln == FRAMING_BYTES + len(p) for (_, ln), p in zip(arr, payloads))


def test_index_file_layout_is_slideflow_compatible(slide):
    tilespec.build_index(slide)
    assert index_path(slide) == str(slide)[: -len(".tfrecords")] + ".index.npz"
    with np.load(index_path(slide)) as z:
        assert sorted(z.files) == ["arr_0", "locations"]
        assert z["arr_0"].dtype == np.int64 and z["locations"].dtype == np.int64


def test_load_builds_a_missing_index(slide):
    assert existing_index(slide) is None and index_state(slide) == "missing"
    with pytest.raises(tilespec.IndexFileError, match="no index file"):
        tilespec.load_index(slide, build=False)
    arr, locs = _loaded_cleanly(slide)
    assert len(arr) == 24 and locs.shape == (24, 2)
    assert index_state(slide) == "ok (.index.npz)"


def test_writing_is_atomic_and_leaves_no_temp_files(slide, monkeypatch):
    tilespec.build_index(slide)
    folder = slide.parent
    assert sorted(os.listdir(folder)) == sorted([slide.name, slide.stem + ".index.npz"])
    before = open(index_path(slide), "rb").read()

    def broken_replace(src, dst):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(idx.os, "replace", broken_replace)
    with pytest.raises(OSError, match="simulated"):
        tilespec.build_index(slide)
    monkeypatch.undo()
    assert sorted(os.listdir(folder)) == sorted([slide.name, slide.stem + ".index.npz"])
    assert open(index_path(slide), "rb").read() == before

    def broken_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 partial")
        raise OSError("write failed (simulated)")

    os.remove(index_path(slide))
    monkeypatch.setattr(idx.np, "savez", broken_savez)
    with pytest.raises(OSError, match="simulated"):
        tilespec.build_index(slide)
    monkeypatch.undo()
    assert os.listdir(folder) == [slide.name]


def test_write_index_rejects_mismatched_locations(slide):
    arr, locs = compute_index(slide)
    with pytest.raises(ValueError, match="23 locations for 24 records"):
        write_index(slide, arr, locs[:-1])
    assert os.listdir(slide.parent) == [slide.name]


def test_legacy_text_index_is_read(slide):
    arr, _ = compute_index(slide)
    text = str(slide)[: -len(".tfrecords")] + ".index"
    with open(text, "w") as fh:
        fh.writelines(f"{o} {n}\n" for o, n in arr)
    assert existing_index(slide) == text
    arr2, locs2 = _loaded_cleanly(slide, build=False)
    assert np.array_equal(arr, arr2) and locs2 is None
    assert index_state(slide) == "ok (.index)"


def test_legacy_npy_index_is_read(slide):
    arr, _ = compute_index(slide)
    npy = str(slide)[: -len(".tfrecords")] + ".index.npy"
    np.save(npy, arr)
    arr2, locs2 = _loaded_cleanly(slide, build=False)
    assert np.array_equal(arr, arr2) and locs2 is None


def test_npz_is_preferred_over_legacy_files(slide):
    arr, _ = compute_index(slide)
    stem = str(slide)[: -len(".tfrecords")]
    with open(stem + ".index", "w") as fh:
        fh.write("garbage\n")
    tilespec.build_index(slide)
    assert existing_index(slide) == stem + ".index.npz"
    assert np.array_equal(_loaded_cleanly(slide)[0], arr)


def test_single_record_text_index(tmp_path):
    path = tmp_path / "one.tfrecords"
    tilespec.write_records(path, [tilespec.encode_tile(b"img", "s", 1, 2)])
    (tmp_path / "one.index").write_text(f"0 {path.stat().st_size}\n")
    arr, locs = _loaded_cleanly(path, build=False)
    assert arr.tolist() == [[0, path.stat().st_size]] and locs is None
    np.save(tmp_path / "one.index.npy", np.array([0, path.stat().st_size]))  # 1-D
    assert read_index_file(tmp_path / "one.index.npy")[0].tolist() == arr.tolist()


def test_npz_without_locations_gives_none(slide):
    arr, _ = compute_index(slide)
    np.savez(index_path(slide), arr_0=arr)
    arr2, locs = _loaded_cleanly(slide, build=False)
    assert np.array_equal(arr, arr2) and locs is None


def test_slideflow_style_index_is_accepted(slide):
    # slideflow saves with np.savez(index_file, arr_0=..., locations=...), where the
    # arrays come from Python int lists (platform int64) and the name lacks ".npz".
    arr, locs = compute_index(slide)
    stem = str(slide)[: -len(".tfrecords")]
    np.savez(stem + ".index", arr_0=np.array(arr.tolist()), locations=np.array(locs.tolist()))
    assert os.path.exists(stem + ".index.npz")
    arr2, locs2 = _loaded_cleanly(slide, build=False)
    assert np.array_equal(arr, arr2) and np.array_equal(locs, locs2)


def test_records_without_locations(tmp_path):
    path = tmp_path / "noloc.tfrecords"
    tilespec.write_records(path, [tilespec.encode_tile(b"img", "s", 1, 2),
                                  tilespec.encode_tile(b"img", "s")])
    arr, locs = tilespec.build_index(path)
    assert len(arr) == 2 and locs is None
    with np.load(index_path(path)) as z:
        assert z.files == ["arr_0"]
    tilespec.write_records(path, [tilespec.encode_tile(b"img", "s", loc_x=5)])
    assert tilespec.build_index(path)[1] is None  # loc_y missing


def test_non_tile_records_are_indexed_without_locations(tmp_path):
    path = tmp_path / "generic.tfrecords"
    tilespec.write_records(path, [b"not a protobuf \xff\xff", b"x" * 40])
    arr, locs = tilespec.build_index(path)
    assert arr.tolist() == [[0, 33], [33, 56]] and locs is None
    # Examples that are not tiles but carry loc_x/loc_y still give locations
    tilespec.write_records(path, [tilespec.encode_example({"loc_x": [3], "loc_y": [-4]})])
    assert tilespec.build_index(path)[1].tolist() == [[3, -4]]


def _stale_index_cases(arr, size):
    a = arr.copy()
    yield "wrong count", a[:-1], None
    yield "offsets past end", np.vstack([a, [[size, 100]]]), None
    b = a.copy()
    b[:, 0] += 5
    yield "first offset not 0", b, None
    c = a.copy()
    c[3, 1] += 1
    yield "bad length", c, None
    d = a.copy()
    d[2, 1] = 3
    yield "length under 16", d, None
    e = a.copy()
    e[-1, 1] = 2**62
    yield "huge length", e, None
    yield "wrong shape", a[:, :1], None
    yield "float dtype", a.astype(np.float64), None


@pytest.mark.parametrize("case", range(8))
def test_disagreeing_index_is_rebuilt_with_a_warning(slide, case):
    good, good_locs = compute_index(slide)
    name, bad, _ = list(_stale_index_cases(good, slide.stat().st_size))[case]
    np.savez(index_path(slide), arr_0=bad, locations=good_locs[: len(bad)])
    with pytest.raises(tilespec.IndexFileError, match="does not match") as e:
        tilespec.load_index(slide, build=False)
    assert str(slide) in str(e.value) and index_path(slide) in str(e.value)
    assert index_state(slide).startswith("invalid (.index.npz)")
    with pytest.warns(IndexRebuildWarning) as w:
        arr, locs = tilespec.load_index(slide)
    msg = str(w[0].message)
    assert index_path(slide) in msg and str(slide) in msg and "rebuilding" in msg
    assert np.array_equal(arr, good) and np.array_equal(locs, good_locs)
    assert np.array_equal(_loaded_cleanly(slide, build=False)[0], good)  # rewritten


def test_file_truncated_after_indexing(slide):
    tilespec.build_index(slide)
    raw = slide.read_bytes()
    slide.write_bytes(raw[:-10])
    assert "runs past the end" in index_problem(read_index_file(index_path(slide))[0],
                                       slide.stat().st_size)
    with pytest.raises(tilespec.IndexFileError, match="does not match"):
        tilespec.load_index(slide, build=False)
    with pytest.warns(IndexRebuildWarning):  # the rebuild finds the truncation
        with pytest.raises(tilespec.TruncatedRecordError) as e:
            tilespec.load_index(slide)
    assert e.value.record == 23


def test_file_replaced_by_one_of_the_same_size(tmp_path):
    path = tmp_path / "f.tfrecords"
    tilespec.write_records(path, [b"a" * 10, b"b" * 20])
    tilespec.build_index(path)
    tilespec.write_records(path, [b"a" * 20, b"b" * 10])  # same size, other boundaries
    assert index_problem(read_index_file(index_path(path))[0], path.stat().st_size) is None
    with pytest.warns(IndexRebuildWarning, match="header for 20 payload bytes"):
        arr, _ = tilespec.load_index(path)
    assert arr.tolist() == [[0, 36], [36, 26]]


@pytest.mark.parametrize("content", [b"", b"garbage, not a zip", b"PK\x03\x04truncated zip",
                                     b"\x93NUMPY garbage"])
def test_garbage_index_file_is_rebuilt(slide, content):
    with open(index_path(slide), "wb") as fh:
        fh.write(content)
    with pytest.raises(tilespec.IndexFileError) as e:
        read_index_file(index_path(slide))
    assert index_path(slide) in str(e.value)
    with pytest.raises(tilespec.IndexFileError):
        tilespec.load_index(slide, build=False)
    with pytest.warns(IndexRebuildWarning, match="cannot read index file"):
        arr, _ = tilespec.load_index(slide)
    assert len(arr) == 24


def test_npz_without_arr_0_and_bad_locations(slide):
    arr, locs = compute_index(slide)
    np.savez(index_path(slide), offsets=arr)
    with pytest.raises(tilespec.IndexFileError, match="no 'arr_0'"):
        read_index_file(index_path(slide))
    np.savez(index_path(slide), arr_0=arr, locations=locs[:, :1])  # slideflow x-only rows
    with pytest.raises(tilespec.IndexFileError, match="locations array"):
        read_index_file(index_path(slide))
    with pytest.warns(IndexRebuildWarning):
        assert np.array_equal(tilespec.load_index(slide)[1], locs)


def test_garbage_text_index(slide):
    text = str(slide)[: -len(".tfrecords")] + ".index"
    for content in ("1 2 3\n", "a b\n", "\xff\xfe\n", ""):
        with open(text, "w", encoding="latin-1") as fh:
            fh.write(content)
        with pytest.raises(tilespec.IndexFileError):
            tilespec.load_index(slide, build=False)


def test_gzip_file_cannot_be_indexed(tmp_path):
    path = tmp_path / "z.tfrecords"
    tilespec.write_records(path, [tilespec.encode_tile(b"i", "s", 0, 0)], compression="GZIP")
    for call in (lambda: compute_index(path), lambda: tilespec.build_index(path),
                 lambda: tilespec.load_index(path), lambda: compute_index(path, locations=False)):
        with pytest.raises(tilespec.IndexFileError, match="random access") as e:
            call()
        assert "GZIP" in str(e.value) and str(path) in str(e.value)
    assert os.listdir(tmp_path) == ["z.tfrecords"]


def _empty_index_arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: (z[k].dtype, z[k].shape) for k in z.files}


def test_empty_file_has_an_empty_index(tmp_path):
    # semantics 1 (revision 2): an empty TFRecord has zero records, so an empty index
    path = tmp_path / "e.tfrecords"
    path.write_bytes(b"")
    arr, locs = compute_index(path)
    assert arr.shape == locs.shape == (0, 2) and arr.dtype == locs.dtype == np.int64
    with pytest.raises(tilespec.IndexFileError, match="no index file"):
        tilespec.load_index(path, build=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # built like any missing index, no warning
        arr, locs = tilespec.load_index(path)
    assert arr.shape == (0, 2) and locs.shape == (0, 2)
    # the index written: int64 (0, 2) arrays (slideflow's np.array([]) would be float (0,))
    assert _empty_index_arrays(index_path(path)) == {"arr_0": (np.int64, (0, 2)),
                                                      "locations": (np.int64, (0, 2))}
    assert tilespec.load_index(path, build=False)[0].shape == (0, 2)   # valid: used as is
    assert index_state(path) == "ok (.index.npz)"


@pytest.mark.parametrize("legacy", ["text", "slideflow-npz", "npy"])
def test_empty_index_files_of_an_empty_tfrecord_are_valid(tmp_path, legacy):
    path = tmp_path / "e.tfrecords"
    path.write_bytes(b"")
    if legacy == "text":
        (tmp_path / "e.index").write_text("")  # slideflow reads an empty index as 0 records
    elif legacy == "npy":
        np.save(tmp_path / "e.index.npy", np.array([]))
    else:  # what slideflow 3.0's create_index saves for a file of no records
        np.savez(tmp_path / "e.index.npz", arr_0=np.array([]), locations=np.array([]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # accepted as it is: no rebuild warning
        arr, locs = tilespec.load_index(path, build=False)
    assert arr.shape == (0, 2) and arr.dtype == np.int64
    assert locs is None if legacy != "slideflow-npz" else locs.shape == (0, 2)
    # an empty index of a non-empty file is still invalid
    tilespec.write_records(path, [b"x"])
    with pytest.raises(tilespec.IndexFileError, match="index lists no records"):
        tilespec.load_index(path, build=False)


def test_building_verifies_checksums(slide):
    raw = bytearray(slide.read_bytes())
    arr, _ = compute_index(slide)
    raw[int(arr[5, 0]) + 40] ^= 1  # a payload byte of record 5
    slide.write_bytes(bytes(raw))
    for locations in (True, False):
        with pytest.raises(tilespec.CorruptDataError) as e:
            compute_index(slide, locations=locations)
        assert (e.value.record, e.value.offset) == (5, int(arr[5, 0]))
    assert len(compute_index(slide, verify=False, locations=False)[0]) == 24
    with pytest.raises(tilespec.CorruptDataError):
        tilespec.build_index(slide)
    assert existing_index(slide) is None


def test_compute_index_without_locations_matches(slide):
    arr, locs = compute_index(slide)
    arr2, none = compute_index(slide, locations=False)
    assert np.array_equal(arr, arr2) and none is None and locs is not None


def test_tfrecord_suffix_variants(tmp_path):
    path = tmp_path / "a.tfrecord"
    tilespec.write_records(path, [b"x"])
    assert index_path(path) == str(tmp_path / "a.index.npz")
    other = tmp_path / "b.data"
    assert index_path(other) == str(tmp_path / "b.data.index.npz")
