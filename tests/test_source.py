"""spec/sampling.md, "Loaders" (reading records by offset), spec/reliability.md,
"on_error" (files that cannot be indexed) and spec/dataset.md, "Labels" (the slide
names stored in the records): :mod:`tilespec.source`."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tilespec
import tilespec.synthetic  # noqa: F401  (tilespec.synthetic.encode_jpeg below; run alone too)
from tilespec.errors import TFRecordError
from tilespec.source import TileSource


def test_reopened_source_shares_offsets_and_scan_cuts(tmp_path):
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


def _layouts():
    """Tile records of several layouts: features in any order, extra features, a
    repeated 'slide' entry (protobuf keeps the last), damaged lengths: scan_tile_slide
    must agree with parse_tile wherever it answers."""
    from tilespec.example import _put_len, encode_feature

    def entry(name, value):
        out = bytearray()
        _put_len(out, 1, name.encode())
        _put_len(out, 2, encode_feature(name, value))
        framed = bytearray()
        _put_len(framed, 1, out)
        return bytes(framed)

    @st.composite
    def layout(draw):
        entries = [entry("image_raw", [draw(st.binary(max_size=300))]),
                   entry("slide", [draw(st.text(max_size=12))])]
        if draw(st.booleans()):
            entries.append(entry("loc_x", [draw(st.integers(-2**40, 2**40))]))
        if draw(st.booleans()):
            entries.append(entry("extra", draw(st.lists(st.floats(width=32, allow_nan=False),
                                                         max_size=3))))
        if draw(st.booleans()):
            entries.append(entry("slide", [draw(st.text(max_size=5))]))
        entries = draw(st.permutations(entries))
        out = bytearray()
        _put_len(out, 1, b"".join(entries))
        damaged = draw(st.booleans())
        if damaged:                      # one byte changed: a damaged record
            i = draw(st.integers(0, len(out) - 1))
            out[i] = draw(st.integers(0, 255))
        return bytes(out), damaged

    return layout()


@settings(max_examples=60, deadline=None)
@given(record=_layouts(), window=st.sampled_from([1, 7, 256]))
def test_scan_tile_slide_agrees_with_parse_tile(record, window):
    from tilespec.example import scan_tile_slide

    data, damaged = record
    got = scan_tile_slide(lambda pos, n: data[pos:pos + n], len(data), window=window)
    try:
        want = tilespec.parse_tile(data).slide
    except tilespec.TFRecordError:
        want = None     # the scan may still find a slide: the loader then reads the record
    if got is not None and want is not None:
        assert got == want
    if not damaged:   # any order of entries, extra features, repeats: always answered
        assert got == want is not None


def test_reading_slide_names_skips_the_image_bytes():
    from tilespec.example import encode_tile, scan_tile_slide

    image = bytes(range(256)) * 400                      # a 100 KiB "image"
    data = encode_tile(image, "slide-x", 3, 4)
    asked = []

    def read(pos, n):
        asked.append(n)
        return data[pos:pos + n]

    assert scan_tile_slide(read, len(data)) == "slide-x"
    assert len(asked) <= 3 and sum(asked) <= 1024 and len(data) > 100 * 1024


def test_reads_by_the_index_extent_and_names_a_cut_as_before(tmp_path, monkeypatch):
    """TileSource.read reads a record with the extent its index gives (one pread, no file
    size asked: spec/records.md, "Random access"); a file cut after its index was built
    raises the error of the read by header, naming file, record and offset."""
    from tilespec import records

    path = str(tmp_path / "a.tfrecords")
    recs = [tilespec.encode_tile(bytes([i]) * 50, "s", loc_x=i, loc_y=0) for i in range(3)]
    tilespec.write_records(path, recs)
    src = TileSource([path])
    offsets = src.offsets(0).tolist()
    calls = []
    real = records._pread
    monkeypatch.setattr(records, "_pread", lambda *a: calls.append(a[1:]) or real(*a))
    assert [src.read(0, j).loc_x for j in range(3)] == [0, 1, 2]
    assert calls == [(len(r) + 16, o) for r, o in zip(recs, offsets)]
    src.close()
    data = open(path, "rb").read()
    open(path, "wb").write(data[:-5])  # the index still says 3 records
    with pytest.raises(tilespec.TruncatedRecordError) as e:
        src.read(0, 2)
    assert (e.value.path, e.value.record, e.value.offset) == (path, 2, offsets[2])
    with open(path, "rb") as f, pytest.raises(tilespec.TruncatedRecordError) as plain:
        tilespec.read_record_at(f, offsets[2], record=2, path=path)
    assert str(e.value) == str(plain.value)
