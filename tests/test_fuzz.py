"""Fuzzing the readers on damaged files (spec/reliability.md, "Fuzzing").

Whole TFRecord files (plain and GZIP), index files and image bytes are mutated
(bit flips, overwritten, inserted and deleted bytes, truncation, garbage
appended). Whatever the damage, only tilespec's own errors (subclasses of
:class:`tilespec.TFRecordError`) escape from reading, random access, scanning,
indexing, Example/tile parsing and image decoding; :func:`tilespec.verify`
never raises and agrees with the reader on where the first damage is.
tests/test_example.py fuzzes the Example codec on its own; here the parsers see
payloads that came out of damaged files.

Example counts come from the hypothesis profile (tests/conftest.py): ``ci``
40, ``dev`` 100, ``thorough`` 2000 (HYPOTHESIS_PROFILE=thorough).
"""

import gzip
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import tilespec
from tilespec.errors import TFRecordError
from tilespec.example import encode_example, encode_tile, parse_example, parse_tile
from tilespec.crc32c import masked_crc32c
from tilespec.images import decode_image, image_header, image_size
from tilespec.index import (IndexRebuildWarning, compute_index, index_path, load_index,
                            read_index_file, write_index)
from tilespec.records import frame_record, read_record_at, scan_frames, scan_records
from tilespec.verify import verify_file

FRAMING_KINDS = {"empty", "not-tfrecord", "length-crc", "truncated", "payload-crc",
                 "record-cap"}


def _image(fmt: str, seed: int) -> bytes:
    from PIL import Image
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
        buf, format=fmt, **({"quality": 80} if fmt == "JPEG" else {}))
    return buf.getvalue()


IMAGES = [_image("JPEG", 0), _image("PNG", 1), _image("JPEG", 2)]

PAYLOADS = st.one_of(
    st.builds(lambda i, s, x, y: encode_tile(IMAGES[i], s, x, y), st.integers(0, 2),
              st.text(max_size=4), st.one_of(st.none(), st.integers(-5, 1 << 40)),
              st.one_of(st.none(), st.integers(-5, 1 << 40))),
    st.builds(lambda d: encode_example(d), st.dictionaries(
        st.sampled_from(["loc_x", "loc_y", "slide", "image_raw", "z"]),
        st.one_of(st.integers(-3, 3), st.binary(max_size=5), st.floats(width=32)), max_size=4)),
    st.binary(max_size=40),
)


def _mutate(draw, data: bytearray, n_max=4) -> bytearray:
    for _ in range(draw(st.integers(1, n_max))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "append",
                                   "overwrite"]))
        # positions near the start (headers) are drawn often: that is where framing lives
        i = draw(st.one_of(st.integers(0, min(len(data), 16)), st.integers(0, len(data))))
        if op == "truncate":
            del data[i:]
        elif op == "append":
            data += draw(st.binary(min_size=1, max_size=20))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 8))]
        elif op == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=8))
            data[i:i + len(chunk)] = chunk
        elif i < len(data):
            data[i] = (data[i] ^ (1 << draw(st.integers(0, 7))) if op == "flip"
                       else draw(st.integers(0, 255)))
    return data


@st.composite
def damaged_files(draw):
    """(original payloads, damaged file bytes)."""
    payloads = draw(st.lists(PAYLOADS, min_size=1, max_size=5))
    data = bytearray(b"".join(frame_record(p) for p in payloads))
    return payloads, bytes(_mutate(draw, data))


def _tilespec_errors_only(fn):
    """Run fn; return its result or the TFRecordError it raised (anything else fails)."""
    try:
        return fn()
    except TFRecordError as e:
        assert str(e)  # a message, naming where when known
        return e


def _write(tmp_path_factory, data: bytes, name="f.tfrecords"):
    path = tmp_path_factory.mktemp("fuzz") / name
    path.write_bytes(data)
    return path


def _parse_all(payload):
    _tilespec_errors_only(lambda: parse_example(payload))
    tile = _tilespec_errors_only(lambda: parse_tile(payload))
    if isinstance(tile, tilespec.Tile):
        _tilespec_errors_only(lambda: decode_image(tile.image_raw))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(damaged_files())
def test_damaged_file_reading_raises_only_tilespec_errors(tmp_path_factory, case):
    payloads, data = case
    path = _write(tmp_path_factory, data)
    got = []

    def read(verify):
        for p in tilespec.read_records(path, verify=verify):
            got.append(p)
            _parse_all(p)

    err = _tilespec_errors_only(lambda: read(True))
    if err is None:  # every record passed both checksums: the file was left intact
        assert got == payloads or b"".join(map(frame_record, got)) == data
    got.clear()
    _tilespec_errors_only(lambda: read(False))
    _tilespec_errors_only(lambda: list(scan_records(path, verify=True)))
    _tilespec_errors_only(lambda: list(scan_frames(path, verify=True, max_payload=16)))
    with open(path, "rb") as f:
        for off in sorted({0, 1, 12, len(data) // 2, max(len(data) - 1, 0), len(data)}):
            _tilespec_errors_only(lambda: read_record_at(f, off))
    _tilespec_errors_only(lambda: compute_index(path))


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(damaged_files())
def test_verify_never_raises_and_agrees_with_the_reader(tmp_path_factory, case):
    payloads, data = case
    path = _write(tmp_path_factory, data)
    report = verify_file(path, index=False)
    err = _tilespec_errors_only(lambda: list(tilespec.read_records(path)))
    framing = [p for p in report.problems if p.kind in FRAMING_KINDS]
    if isinstance(err, TFRecordError):
        # the reader stops at the first framing problem; verify reports it at the same place
        assert framing, (err, report.problems)
        assert (framing[0].record, framing[0].offset) == (err.record, err.offset), \
            (err, framing[0])
    else:
        assert framing == []
        assert report.records == len(err) and report.unread == 0
    # every problem is located and described
    for p in report.problems:
        assert p.path == str(path) and p.message
        assert p.kind in FRAMING_KINDS | {"example", "tile", "image", "image-cap"}
    assert report.good + len({p.record for p in report.problems
                              if p.kind not in ("truncated", "length-crc", "not-tfrecord",
                                                "empty")}) == report.records


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PAYLOADS, min_size=1, max_size=4), st.data())
def test_damaged_gzip_files(tmp_path_factory, payloads, data):
    raw = b"".join(frame_record(p) for p in payloads)
    damaged = bytes(_mutate(data.draw, bytearray(gzip.compress(raw, mtime=0)), n_max=2))
    path = _write(tmp_path_factory, damaged)
    got = _tilespec_errors_only(lambda: list(tilespec.read_records(path, compression="GZIP")))
    if not isinstance(got, TFRecordError):
        # a damaged trailer can pass when the data is intact; a file cut to 0 bytes is an
        # empty file, which is valid (zero records, semantics 1, revision 2)
        assert got == payloads or got or damaged == b""
    report = verify_file(path)
    assert all(p.path == str(path) for p in report.problems)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(PAYLOADS, min_size=1, max_size=4), st.data())
def test_damaged_index_files_are_rebuilt_or_rejected(tmp_path_factory, payloads, data):
    path = _write(tmp_path_factory, b"".join(frame_record(p) for p in payloads))
    good, good_locs = compute_index(path)
    write_index(path, good, good_locs)
    idx = index_path(path)
    with open(idx, "rb") as f:
        blob = bytearray(f.read())
    with open(idx, "wb") as f:
        f.write(bytes(_mutate(data.draw, blob, n_max=3)))
    _tilespec_errors_only(lambda: read_index_file(idx))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", IndexRebuildWarning)
        arr, locs = load_index(path)  # the file is fine: a damaged index is never trusted
    assert np.array_equal(arr, good)
    # verify either agrees with the index or reports it, never raises
    with open(idx, "wb") as f:
        f.write(bytes(_mutate(data.draw, bytearray(blob), n_max=3)))
    kinds = {p.kind for p in verify_file(path).problems}
    assert kinds <= {"index", "example", "tile", "image"}


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(IMAGES), st.data())
def test_damaged_images_raise_only_image_errors(image, data):
    damaged = bytes(_mutate(data.draw, bytearray(image), n_max=3))
    try:
        out = decode_image(damaged)
    except tilespec.ImageDecodeError as e:
        assert str(e)
    else:
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
    # the size checked before decoding is never smaller than the size Pillow decodes
    head = image_header(damaged)
    try:
        _, w, h = image_size(damaged)
    except tilespec.ImageDecodeError:
        return
    if head is not None:
        assert head[1] * head[2] >= w * h, (head, w, h)


# ------------------------------------------------ lengths and image sizes near the caps
# spec/reliability.md, "Size caps": small caps drawn per example, so records and images
# near and above them stay a few bytes.

def _header(length: int) -> bytes:
    raw = struct.pack("<Q", length)
    return raw + struct.pack("<I", masked_crc32c(raw))


@st.composite
def capped_files(draw):
    """(cap, file bytes): payload lengths drawn around a drawn cap, and some headers
    rewritten, with a valid checksum, to lengths near, above or far above it."""
    cap = draw(st.integers(1, 64))
    payloads = draw(st.lists(st.one_of(
        st.integers(max(0, cap - 2), cap + 2).map(bytes), PAYLOADS), min_size=1, max_size=5))
    frames = [bytearray(frame_record(p)) for p in payloads]
    for k in draw(st.lists(st.integers(0, len(frames) - 1), max_size=2)):
        n = draw(st.one_of(st.integers(max(0, cap - 2), cap + 2), st.integers(cap, 1 << 40),
                           st.sampled_from([1 << 31, 64 << 30, (1 << 64) - 1])))
        frames[k][:12] = _header(n)
    return cap, b"".join(frames)


def _over_cap_is_sound(err, cap, size=None):
    if isinstance(err, tilespec.RecordTooLargeError):
        assert err.cap == cap and err.length > cap and "over the size cap" in str(err)
        if size is not None:  # an uncompressed file: only lengths within the file
            assert err.offset + 16 + err.length <= size


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(capped_files())
def test_lengths_near_and_above_the_cap(tmp_path_factory, case):
    cap, data = case
    path = _write(tmp_path_factory, data)
    err = _tilespec_errors_only(lambda: list(tilespec.read_records(path, max_record_bytes=cap)))
    _over_cap_is_sound(err, cap, len(data))
    if not isinstance(err, TFRecordError):
        assert all(len(p) <= cap for p in err)
    for fn in (lambda: list(scan_frames(path, verify=True, max_record_bytes=cap)),
               lambda: compute_index(path, max_record_bytes=cap),
               lambda: read_record_at(path, 0, max_record_bytes=cap)):
        _over_cap_is_sound(_tilespec_errors_only(fn), cap, len(data))
    report = verify_file(path, level="records", index=False, max_record_bytes=cap)
    framing = [p for p in report.problems if p.kind in FRAMING_KINDS]
    if isinstance(err, TFRecordError):  # verify's first framing problem is the reader's
        assert framing and (framing[0].record, framing[0].offset) == (err.record, err.offset)
        assert (framing[0].kind == "record-cap") == isinstance(err, tilespec.RecordTooLargeError)
    else:
        assert framing == []
    gz = _write(tmp_path_factory, gzip.compress(data, mtime=0))
    err = _tilespec_errors_only(lambda: list(tilespec.read_records(
        gz, compression="GZIP", max_record_bytes=cap)))
    _over_cap_is_sound(err, cap)
    report = verify_file(gz, level="records", max_record_bytes=cap)
    framing = [p for p in report.problems if p.kind in FRAMING_KINDS]
    if isinstance(err, TFRecordError):
        assert framing and framing[0].record == err.record


def _resized(image: bytes, w: int, h: int) -> bytes:
    """The image with its header (JPEG SOF0, PNG IHDR with its CRC) claiming w x h."""
    if image[:3] == b"\xff\xd8\xff":
        i = image.index(b"\xff\xc0")
        return image[:i + 5] + struct.pack(">HH", h, w) + image[i + 9:]
    ihdr = image[12:16] + struct.pack(">II", w, h) + image[24:29]
    return image[:12] + ihdr + struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF) + image[33:]


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(IMAGES), st.integers(1, 65535), st.integers(1, 65535), st.data())
def test_image_headers_near_and_above_the_cap(image, w, h, data):
    from tilespec.images import decode_planar, decode_view
    n = w * h
    small = 1 << 16  # an image within its cap is decoded: keep those small
    caps = []
    if n > 1:  # just below the image: over the cap
        caps.append(st.integers(max(1, n - 3), n - 1))
    if n <= small or n > tilespec.images.MAX_TILE_PIXELS:
        caps.append(st.just(tilespec.images.MAX_TILE_PIXELS))
    if n <= small:  # at or above the image: decoded
        caps += [st.just(n), st.integers(n, small)]
    cap = data.draw(st.one_of(caps))
    damaged = _resized(image, w, h)
    assert image_header(damaged)[1:3] == (w, h)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning, ever
        for decode in (lambda d: decode_image(d, max_pixels=cap),
                       lambda d: decode_view(d, cap), lambda d: decode_planar(d, False, cap)):
            if n > cap:
                with pytest.raises(tilespec.ImageTooLargeError):
                    decode(damaged)
                continue
            try:
                out = decode(damaged)
            except tilespec.ImageDecodeError as e:
                assert not isinstance(e, tilespec.ImageTooLargeError)
            else:
                assert out.shape == (h, w, 3) and out.dtype == np.uint8
