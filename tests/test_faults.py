"""Fault behaviour of the reference loaders (spec/reliability.md, "on_error" and
"Faults"): corrupt records skipped exactly, errors naming the item, no leaked
file descriptors or threads."""

import gc
import os
import shutil
import struct
import threading
import warnings

import numpy as np
import pytest

import tilespec
from tilespec.crc32c import masked_crc32c
from tilespec.index import compute_index
from tilespec.loader import IndexedInterleaver

psutil = pytest.importorskip("psutil")


def _damage(path, k, how):
    """Damage record k of ``path`` in place, keeping every record's size (so an index
    built before stays valid): 'payload' flips a payload byte (payload checksum fails),
    'length' flips a length byte (length checksum fails), 'image' rewrites the JPEG
    magic bytes and fixes the checksum (a sound record whose image does not decode)."""
    from tilespec.index import existing_index
    rows = (tilespec.load_index(path, build=False)[0] if existing_index(path)
            else compute_index(path, locations=False)[0])
    off, length = int(rows[k, 0]), int(rows[k, 1])
    data = bytearray(open(path, "rb").read())
    if how == "payload":
        data[off + 12 + 60] ^= 0x04
    elif how == "length":
        data[off + 1] ^= 0x01
    else:
        payload = data[off + 12: off + length - 4]
        at = bytes(payload).find(b"\xff\xd8\xff")
        payload[at:at + 3] = b"BAD"
        data[off + 12: off + length - 4] = payload
        data[off + length - 4: off + length] = struct.pack("<I", masked_crc32c(bytes(payload)))
    open(path, "wb").write(bytes(data))


# (slide, record, damage): a payload checksum, a length checksum, an image
DAMAGE = [("slide-a1", 3, "payload"), ("slide-a1", 31, "image"), ("slide-b1", 5, "length"),
          ("slide-d1", 0, "payload"), ("slide-d2", 19, "image")]


@pytest.fixture(scope="module")
def datasets(demo_dataset, tmp_path_factory):
    """(clean Dataset, damaged Dataset, {(t, j) damaged}); indexes built before damage."""
    root = tmp_path_factory.mktemp("faults")
    out = []
    for name in ("clean", "damaged"):
        folder = root / name
        folder.mkdir()
        for p in demo_dataset["paths"]:
            shutil.copyfile(p, folder / os.path.basename(p))
            tilespec.build_index(folder / os.path.basename(p))
        out.append(folder)
    for slide, k, how in DAMAGE:
        _damage(out[1] / f"{slide}.tfrecords", k, how)
    clean = tilespec.Dataset(tfrecords=str(out[0]), annotations=demo_dataset["annotations"])
    bad = tilespec.Dataset(tfrecords=str(out[1]), annotations=demo_dataset["annotations"])
    names = [os.path.basename(p)[:-len(".tfrecords")] for p in bad.tfrecords()]
    damaged = {(names.index(s), k) for s, k, _ in DAMAGE}
    return clean, bad, damaged


OPTS = dict(seed=11, incl_slidenames=True, incl_loc=True, standardize=False)


def _ids(items):
    return [(s, int(x), int(y)) for _, _, s, x, y in items]


def _quiet(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn()


def test_damage_is_what_verify_reports(datasets):
    _, bad, damaged = datasets
    result = tilespec.verify(bad.tfrecords())
    kinds = {(os.path.basename(p.path), p.record): p.kind for p in result.problems}
    assert kinds == {(f"{s}.tfrecords", k): {"payload": "payload-crc", "length": "length-crc",
                                             "image": "image"}[h] for s, k, h in DAMAGE}


@pytest.mark.parametrize("batch_size", [None, 8])
def test_finite_skip_yields_every_good_record_once(datasets, batch_size):
    clean, bad, damaged = datasets
    ref = clean.numpy(infinite=False, **OPTS)
    want = list(ref)
    plan_t, plan_j = ref.plan(0).records(0, len(want))
    bad_positions = [i for i, tj in enumerate(zip(plan_t.tolist(), plan_j.tolist()))
                     if tj in damaged]
    assert len(bad_positions) == len(damaged)
    L = bad.numpy(infinite=False, on_error="skip", batch_size=batch_size, **OPTS)
    with pytest.warns(UserWarning, match="skipped"):
        got = list(L)
    if batch_size:  # unstack the batches
        assert all(len(b[0]) <= batch_size for b in got)
        got = [tuple(None if col is None else col[r] for col in batch)
               for batch in got for r in range(len(batch[0]))]
    keep = [want[i] for i in range(len(want)) if i not in bad_positions]
    assert _ids(got) == _ids(keep)
    assert len(set(_ids(got))) == len(got) == len(want) - len(damaged)
    for a, b in zip(got, keep):
        np.testing.assert_array_equal(a[0], b[0])
    assert sorted(s["position"] for s in L.skipped) == bad_positions
    paths = bad.tfrecords()
    assert {(paths.index(s["path"]), s["record"]) for s in L.skipped} == damaged
    for s in L.skipped:  # each entry's error says what was wrong
        assert s["error"] and ("checksum" in s["error"] or "JPEG or PNG" in s["error"])
    # raise (the default) stops at the first damaged position, naming it
    with pytest.raises(tilespec.TFRecordError) as e:
        list(bad.numpy(infinite=False, **OPTS))
    t0, j0 = int(plan_t[bad_positions[0]]), int(plan_j[bad_positions[0]])
    assert (e.value.path, e.value.record) == (paths[t0], j0)


def test_infinite_skip_matches_a_clean_run_minus_skipped_positions(datasets):
    clean, bad, damaged = datasets
    n = 400  # positions; the damaged records come round several times
    ref = clean.numpy(infinite=True, **OPTS)
    it = iter(ref)
    want = [next(it) for _ in range(n)]
    t, j = ref.plan(0).records(0, n)
    bad_positions = [i for i in range(n) if (int(t[i]), int(j[i])) in damaged]
    assert len(bad_positions) > len(damaged)  # some damaged record was drawn twice
    L = bad.numpy(infinite=True, on_error="skip", **OPTS)
    it = iter(L)
    got = _quiet(lambda: [next(it) for _ in range(n - len(bad_positions))])
    assert L.position == n  # the stream advanced past the skipped positions
    keep = [want[i] for i in range(n) if i not in bad_positions]
    assert _ids(got) == _ids(keep)
    assert [s["position"] for s in L.skipped] == bad_positions
    L.close()
    ref.close()


def test_indexed_interleaver_skip(datasets):
    clean, bad, damaged = datasets
    ref = IndexedInterleaver(clean.tfrecords(), **OPTS)
    D = IndexedInterleaver(bad.tfrecords(), on_error="skip", **OPTS)
    assert len(D) == len(ref) == 144
    none = []
    for i in range(len(D)):
        item = _quiet(lambda: D[i])
        if item is None:
            none.append(D.record(i))
        else:
            assert _ids([item]) == _ids([ref[i]])
    assert set(none) == damaged and len(none) == len(damaged)
    assert len(D._items.skipped) == len(damaged)
    D.close()
    ref.close()


def _copy_without_index(demo_dataset, tmp_path, slide="slide-c1"):
    src = [p for p in demo_dataset["paths"] if p.endswith(f"{slide}.tfrecords")][0]
    path = tmp_path / f"{slide}.tfrecords"
    shutil.copyfile(src, path)  # no index yet
    return path


def test_skip_when_the_index_must_be_built_on_a_damaged_file(demo_dataset, tmp_path):
    path = _copy_without_index(demo_dataset, tmp_path)
    _damage(path, 4, "payload")
    L = tilespec.loader.NumpyLoader([path], [12], [1.0], infinite=False, on_error="skip",
                                    **OPTS)
    got = _quiet(lambda: list(L))
    assert len(got) == 11 and [s["record"] for s in L.skipped] == [4]
    assert "checksum" in L.skipped[0]["error"] and "byte offset" in L.skipped[0]["error"]
    assert not os.path.exists(tilespec.index.index_path(path))  # nothing written
    # the map-style dataset can be built too, and skips just that record
    with pytest.warns(UserWarning, match="headers"):
        D = IndexedInterleaver([path], on_error="skip", **OPTS)
    assert len(D) == 12
    items = _quiet(lambda: [D[i] for i in range(len(D))])
    assert [i for i, item in enumerate(items) if item is None] == [4]
    D.close()
    # on_error='raise' still refuses the file at construction
    with pytest.raises(tilespec.CorruptDataError, match="record 4"):
        IndexedInterleaver([path], **OPTS)


def test_skip_headers_scan_stops_at_a_damaged_length(demo_dataset, tmp_path):
    path = _copy_without_index(demo_dataset, tmp_path)
    rows = compute_index(path, locations=False)[0]
    _damage(path, 7, "length")
    size = os.path.getsize(path)
    with pytest.warns(UserWarning, match=rf"record 7 .*{size - int(rows[7, 0])} bytes from "
                      rf"byte offset {int(rows[7, 0])} on are unread"):
        D = IndexedInterleaver([path], on_error="skip", **OPTS)
    assert len(D) == 8  # records 0-6 located, and the damaged one (skipped when read)
    items = _quiet(lambda: [D[i] for i in range(len(D))])
    assert [i for i, item in enumerate(items) if item is None] == [7]
    assert D._items.skipped[0]["error"].startswith(f"{path}, record 7, byte offset "
                                                   f"{int(rows[7, 0])}: length field")
    D.close()
    # a stream planned with the file's true count: records after the cut are skipped
    L = tilespec.loader.NumpyLoader([path], [len(rows)], [1.0], infinite=False,
                                    on_error="skip", **OPTS)
    got = _quiet(lambda: list(L))
    assert sorted(int(x) for *_, x, _ in got) == sorted(int(x) for *_, x, _ in items[:7])
    assert sorted(s["record"] for s in L.skipped) == list(range(7, len(rows)))
    assert all("not located" in s["error"] for s in L.skipped if s["record"] > 7)


def test_a_damaged_file_is_scanned_once(demo_dataset, tmp_path, monkeypatch):
    path = _copy_without_index(demo_dataset, tmp_path)
    _damage(path, 2, "payload")
    calls = []
    real = tilespec.source.load_index
    monkeypatch.setattr(tilespec.source, "load_index",
                        lambda p, **kw: calls.append(p) or real(p, **kw))
    L = tilespec.loader.NumpyLoader([path], [12], [1.0], infinite=True, on_error="skip",
                                    **OPTS)
    it = iter(L)
    got = _quiet(lambda: [next(it) for _ in range(40)])  # record 2 comes round 4 times
    assert len(got) == 40 and L.position == 44 and L.num_skipped == 4
    assert calls == [str(path)]
    L.close()


def _tile_file(path, n, bad=()):
    from tilespec.synthetic import encode_jpeg
    recs = [tilespec.encode_tile(b"\xff\xd8\xff not a jpeg" if i in bad else
                                 encode_jpeg(np.full((8, 8, 3), i * 20, np.uint8)),
                                 os.path.basename(str(path)), i, 0) for i in range(n)]
    tilespec.write_records(path, recs)
    return path


@pytest.mark.parametrize("infinite", [True, False])
@pytest.mark.parametrize("batch_size", [None, 2])
def test_a_loader_whose_records_are_all_bad_raises(tmp_path, infinite, batch_size):
    paths = [_tile_file(tmp_path / f"{k}.tfrecords", 5, bad=range(5)) for k in range(3)]
    L = tilespec.loader.NumpyLoader(paths, [5, 5, 3], [1.0, 2.0, 1.0], infinite=infinite,
                                    on_error="skip", batch_size=batch_size, seed=3,
                                    incl_loc=True)
    with pytest.raises(tilespec.items.AllRecordsSkippedError,
                       match=r"all 13 records .*3 tfrecord\(s\) \(.*0.tfrecords, .*1.tfrecords, "
                             r".*2.tfrecords\).*first error logged: .*tfrecords, record \d+, "
                             r"byte offset \d+: cannot decode"):
        _quiet(lambda: list(L))
    assert 13 <= L.num_skipped == len(L.skipped)  # stops within one pass of the records


def test_skipping_most_records_of_a_heavy_file_does_not_raise(tmp_path):
    """The guard counts distinct records: a run of skips longer than the dataset, drawn
    from one file's bad records, is not 'everything is bad'."""
    bad = _tile_file(tmp_path / "bad.tfrecords", 4, bad=range(4))
    good = _tile_file(tmp_path / "good.tfrecords", 4)
    L = tilespec.loader.NumpyLoader([bad, good], [4, 4], [1000.0, 1.0], infinite=True,
                                    on_error="skip", seed=0, incl_loc=True)
    it = iter(L)
    got = _quiet(lambda: [next(it) for _ in range(3)])
    assert len(got) == 3 and L.num_skipped > 8
    L.close()


def test_the_skip_log_is_bounded_and_the_count_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(tilespec.items, "SKIP_LOG_LIMIT", 5)
    path = _tile_file(tmp_path / "s.tfrecords", 4, bad={1})
    L = tilespec.loader.NumpyLoader([path], [4], [1.0], infinite=True, on_error="skip",
                                    seed=0, incl_loc=True, batch_size=4)
    it = iter(L)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        batches = [next(it) for _ in range(20)]  # record 1 comes round 20 times
    assert all(len(b[0]) == 3 for b in batches)
    assert L.num_skipped == 20 and len(L.skipped) == 5
    assert [s["position"] for s in L.skipped] == [1, 5, 9, 13, 17]
    msgs = [str(x.message) for x in w]
    assert len(msgs) == 6 and "only counted" in msgs[-1]  # one warning per logged skip, one more
    L.close()


# ------------------------------------------------------------------------- errors
def test_transform_error_names_file_record_and_position(datasets):
    clean, _, _ = datasets
    calls = []

    def transform(img):
        calls.append(1)
        if len(calls) == 6:
            raise ZeroDivisionError("transform failed on purpose")
        return img

    L = clean.numpy(infinite=True, transform=transform, **OPTS)
    t, j = L.plan(0).records(0, 6)
    path, record = L.paths[int(t[5])], int(j[5])
    it = iter(L)
    for _ in range(5):
        next(it)
    with pytest.raises(ZeroDivisionError, match="on purpose") as e:
        next(it)
    # the user's exception, with where it happened attached (PEP 678 note)
    notes = getattr(e.value, "__notes__", [])
    assert f"while processing {path}, record {record}, stream position 5" in notes
    L.close()


def test_a_damaged_record_error_names_file_record_and_offset(datasets):
    _, bad, _ = datasets
    path = [p for p in bad.tfrecords() if p.endswith("slide-b1.tfrecords")][0]
    D = IndexedInterleaver([path], **OPTS)
    with pytest.raises(tilespec.CorruptLengthError) as e:
        D[5]
    arr, _ = tilespec.load_index(path)
    assert (e.value.path, e.value.record, e.value.offset) == (path, 5, int(arr[5, 0]))
    D.close()


def test_image_errors_name_file_record_and_offset(datasets):
    _, bad, _ = datasets
    path = [p for p in bad.tfrecords() if p.endswith("slide-d2.tfrecords")][0]
    offset = int(tilespec.load_index(path)[0][19, 0])
    D = IndexedInterleaver([path], **OPTS)
    with pytest.raises(tilespec.ImageDecodeError) as e:
        D[19]
    assert (e.value.path, e.value.record, e.value.offset) == (path, 19, offset)
    D.close()
    D = IndexedInterleaver([path], on_error="skip", **OPTS)
    with pytest.warns(UserWarning, match=rf"skipped {path} record 19 .*JPEG or PNG"):
        assert D[19] is None
    assert D._items.skipped[0]["error"].startswith(f"{path}, record 19, byte offset {offset}: ")
    D.close()


# ---------------------------------------------------------------- resources
def _open_tfrecords(folder):
    return [f.path for f in psutil.Process().open_files() if f.path.startswith(str(folder))]


def _state():
    return threading.active_count(), psutil.Process().num_threads()


@pytest.mark.parametrize("how", ["with", "close", "del", "break"])
def test_leaving_an_infinite_loader_early_leaks_nothing(datasets, how):
    clean, _, _ = datasets
    folder = os.path.dirname(clean.tfrecords()[0])
    gc.collect()
    before_files, before_threads = _open_tfrecords(folder), _state()
    assert before_files == []
    if how == "break":  # leaving the loop is enough: no close(), no garbage collection
        L = clean.numpy(infinite=True, batch_size=4, **OPTS)
        for k, _ in enumerate(L):
            if k == 10:
                assert _open_tfrecords(folder)  # files are open while iterating
                break
        assert _open_tfrecords(folder) == []
        it = iter(L)  # and the loader goes on where it stopped, reopening its files
        assert L.position == 44 and len(next(it)[0]) == 4 and _open_tfrecords(folder)
        it.close()
    elif how == "with":
        with clean.numpy(infinite=True, batch_size=4, **OPTS) as L:
            it = iter(L)  # an iterator still alive: only the with block closes the files
            for _ in range(10):
                next(it)
            assert _open_tfrecords(folder)
        assert _open_tfrecords(folder) == []
        del it
    else:
        L = clean.numpy(infinite=True, batch_size=4, **OPTS)
        it = iter(L)
        for _ in range(10):
            next(it)
        assert _open_tfrecords(folder)
        if how == "close":
            L.close()
        else:
            del L, it
            gc.collect()
    assert _open_tfrecords(folder) == []
    assert _state() == before_threads


def test_close_then_iterate_again_reopens(datasets):
    clean, _, _ = datasets
    L = clean.numpy(infinite=True, **OPTS)
    it = iter(L)
    first = next(it)
    L.close()
    second = next(it)  # files are reopened on demand
    assert _ids([first]) != [] and len(second) == 5
    L.close()
    folder = os.path.dirname(clean.tfrecords()[0])
    assert _open_tfrecords(folder) == []


# ------------------------------------------------ a Dataset holding a file that cannot be indexed

def _locs(path):
    source = tilespec.source.TileSource([path])
    n = len(source.offsets(0))
    out = [(t.loc_x, t.loc_y) for t in (source.read(0, j) for j in range(n))]
    source.close()
    return out


def _folder_with(demo_dataset, tmp_path, damage=None, slides=("slide-b1", "slide-c1")):
    """A folder of copies (no index files) of ``slides``; ``damage`` = (slide, k, how)."""
    folder = tmp_path / "tf"
    folder.mkdir()
    for s in slides:
        _copy_without_index(demo_dataset, folder, s)
    if damage is not None:
        _damage(folder / f"{damage[0]}.tfrecords", damage[1], damage[2])
    return folder


def _ann(demo_dataset, tmp_path, slides):
    import csv
    rows = list(csv.DictReader(open(demo_dataset["annotations"])))
    path = tmp_path / "ann.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["slide"] in slides)
    return str(path)


def test_dataset_default_refuses_a_file_that_cannot_be_indexed(demo_dataset, tmp_path):
    folder = _folder_with(demo_dataset, tmp_path, ("slide-c1", 4, "payload"))
    bad = str(folder / "slide-c1.tfrecords")
    with pytest.raises(tilespec.CorruptDataError, match=rf"{bad}, record 4") as e:
        tilespec.Dataset(tfrecords=str(folder))
    assert any("on_error='skip'" in n for n in e.value.__notes__)
    with pytest.raises(tilespec.annotations.DatasetError, match="on_error must be 'raise' or 'skip'"):
        tilespec.Dataset(tfrecords=str(folder), on_error="ignore")


def test_dataset_skip_counts_a_damaged_file_by_its_headers(demo_dataset, tmp_path):
    slides = ("slide-b1", "slide-c1")
    folder = _folder_with(demo_dataset, tmp_path, ("slide-c1", 4, "payload"), slides)
    bad = str(folder / "slide-c1.tfrecords")
    src = [p for p in demo_dataset["paths"] if p.endswith("slide-c1.tfrecords")][0]
    n_c1 = len(compute_index(src, locations=False)[0])  # the damaged copy's headers are sound
    with pytest.warns(UserWarning, match=rf"{bad}: no index can be built .*counts {n_c1} "
                      r"record\(s\) for it") as rec:
        ds = tilespec.Dataset(tfrecords=str(folder), annotations=_ann(demo_dataset, tmp_path,
                                                                     slides), on_error="skip")
    assert rec[0].filename == __file__  # the warning points at the caller
    assert ds.on_error == "skip"
    assert not os.path.exists(tilespec.index.index_path(bad))  # nothing written
    counts = {os.path.basename(p): v["total"] for p, v in ds.manifest().items()}
    assert counts["slide-c1.tfrecords"] == n_c1
    # a skipping loader yields every good record exactly once
    got = _quiet(lambda: list(ds.numpy(on_error="skip", infinite=False, **OPTS)))
    ids = _ids(got)
    assert len(ids) == len(set(ids)) == ds.num_tiles - 1
    locs = _locs(src)
    assert sorted((x, y) for s, x, y in ids if s == "slide-c1") == \
        sorted(locs[:4] + locs[5:])
    # a loader that does not skip still refuses the file when it reaches it
    with pytest.raises(tilespec.CorruptDataError, match=rf"{bad}"):
        list(ds.numpy(infinite=False, **OPTS))
    # derived datasets keep the setting (and the counts)
    derived = [ds.clip(5), ds.balance("category"), ds.filter({"category": ["tumor"]}),
               *ds.kfold_split(2)[0], ds.unclip()]
    for d in derived:
        assert d.on_error == "skip"
        assert "Dataset" in repr(d)
    tumor = ds.filter({"category": ["tumor"]})
    assert tumor.tfrecords() == [bad] and tumor.num_tiles == n_c1
    got = _quiet(lambda: list(tumor.clip(6).numpy(on_error="skip", infinite=False, **OPTS)))
    assert sorted((x, y) for _, x, y in _ids(got)) == sorted(locs[:4] + locs[5:6])


def test_dataset_skip_with_a_damaged_length_counts_up_to_the_cut(demo_dataset, tmp_path):
    folder = _folder_with(demo_dataset, tmp_path, ("slide-c1", 7, "length"), ("slide-c1",))
    with pytest.warns(UserWarning, match=r"the scan stops at record 7.*counts 8 record\(s\)"):
        ds = tilespec.Dataset(tfrecords=str(folder), on_error="skip")
    assert ds.num_tiles == 8  # records 0-6 and the damaged one, skipped when read
    L = ds.numpy(on_error="skip", infinite=False, **OPTS)
    got = _quiet(lambda: list(L))
    src = [p for p in demo_dataset["paths"] if p.endswith("slide-c1.tfrecords")][0]
    assert sorted((x, y) for _, x, y in _ids(got)) == sorted(_locs(src)[:7])
    assert [s["record"] for s in L.skipped] == [7]


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_an_empty_file_is_not_damaged(demo_dataset, tmp_path, on_error):
    # semantics 1 (revision 2): a 0-byte tfrecord is valid, zero records, with either
    # setting; it is warned about once as empty, never as a file whose index cannot be built
    folder = _folder_with(demo_dataset, tmp_path, slides=("slide-c1",))
    (folder / "slide-z9.tfrecords").write_bytes(b"")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        ds = tilespec.Dataset(tfrecords=str(folder), on_error=on_error)
    assert [type(w.message).__name__ for w in seen] == ["EmptyTFRecordWarning"]
    assert "slide-z9.tfrecords" in str(seen[0].message)
    assert [v["total"] for v in ds.manifest(key="name").values()] == [12, 0]
    L = ds.numpy(on_error=on_error, infinite=False, **OPTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")   # nothing skipped, nothing warned
        got = list(L)
    assert L.num_skipped == 0
    src = [p for p in demo_dataset["paths"] if p.endswith("slide-c1.tfrecords")][0]
    assert sorted((x, y) for _, x, y in _ids(got)) == sorted(_locs(src))
