"""spec/records.md: TFRecord framing, checksums and reading errors."""

import gzip
import json
import os
import runpy
import struct

import numpy as np

import pytest
from hypothesis import given, strategies as st

import tilespec
from tilespec import crc32c as crcmod
from tilespec.records import FRAMING_BYTES, frame_record, read_record_at, scan_records

payloads = st.lists(st.binary(max_size=300), max_size=8)


def test_crc32c_check_value():
    # The CRC-32C check value of b"123456789" (RFC 3720 / CRC catalogue).
    assert crcmod.crc32c(b"123456789") == 0xE3069283
    assert crcmod.crc32c_pure(b"123456789") == 0xE3069283


@given(st.binary(max_size=2000), st.integers(0, 2000))
def test_pure_crc_matches_backend_and_continues(data, cut):
    cut = min(cut, len(data))
    assert crcmod.crc32c_pure(data) == crcmod.crc32c(data)
    assert crcmod.crc32c_pure(data[cut:], crcmod.crc32c_pure(data[:cut])) == crcmod.crc32c(data)


def test_mask_formula():
    c = 0x12345678
    assert crcmod.mask(c) == ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) % 2**32


@given(payloads, st.sampled_from([None, "GZIP"]))
def test_round_trip(tmp_path_factory, records, compression):
    path = tmp_path_factory.mktemp("rt") / "f.tfrecords"
    if not records:
        records = [b""]
    assert tilespec.write_records(path, records, compression=compression) == len(records)
    assert list(tilespec.read_records(path, compression=compression)) == records


def test_random_access_by_offset(tmp_path):
    path = tmp_path / "f.tfrecords"
    recs = [b"a" * 5, b"", b"xyz" * 100]
    tilespec.write_records(path, recs)
    offsets = [o for o, _ in scan_records(path)]
    assert offsets == [0, 5 + 16, 5 + 16 + 16]
    with open(path, "rb") as f:
        for o, r in reversed(list(zip(offsets, recs))):
            assert read_record_at(f, o) == r


@given(st.binary(min_size=0, max_size=64), st.data())
def test_any_single_byte_flip_is_detected(tmp_path_factory, payload, data):
    framed = bytearray(frame_record(payload))
    i = data.draw(st.integers(0, len(framed) - 1))
    bit = data.draw(st.integers(0, 7))
    framed[i] ^= 1 << bit
    path = tmp_path_factory.mktemp("flip") / "f.tfrecords"
    path.write_bytes(bytes(framed))
    with pytest.raises(tilespec.TFRecordError):
        list(tilespec.read_records(path))


def _two_records(tmp_path):
    path = tmp_path / "t.tfrecords"
    tilespec.write_records(path, [b"first record", b"second record"])
    return path, bytearray(path.read_bytes())


def test_corrupt_length_names_file_record_offset(tmp_path):
    path, raw = _two_records(tmp_path)
    second = FRAMING_BYTES + len(b"first record")
    raw[second] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(tilespec.CorruptLengthError) as e:
        list(tilespec.read_records(path))
    assert (e.value.path, e.value.record, e.value.offset) == (str(path), 1, second)
    assert str(path) in str(e.value) and "record 1" in str(e.value)
    assert f"byte offset {second}" in str(e.value)


def test_corrupt_payload(tmp_path):
    path, raw = _two_records(tmp_path)
    raw[12] ^= 0x20
    path.write_bytes(bytes(raw))
    with pytest.raises(tilespec.CorruptDataError) as e:
        list(tilespec.read_records(path))
    assert (e.value.record, e.value.offset) == (0, 0)
    # with verify=False the corrupt payload is returned as stored
    assert next(tilespec.read_records(path, verify=False)) == b"First record"


def test_corrupt_payload_checksum(tmp_path):
    path, raw = _two_records(tmp_path)
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(tilespec.CorruptDataError) as e:
        list(tilespec.read_records(path))
    assert e.value.record == 1


@pytest.mark.parametrize("cut", [3, 12, 20, 28])
def test_truncated_file(tmp_path, cut):
    path, raw = _two_records(tmp_path)
    keep = FRAMING_BYTES + len(b"first record") + cut
    path.write_bytes(bytes(raw[:keep]))
    with pytest.raises(tilespec.TruncatedRecordError) as e:
        list(tilespec.read_records(path))
    assert e.value.record == 1 and e.value.offset == FRAMING_BYTES + len(b"first record")


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_empty_file_has_zero_records(tmp_path, compression):
    # semantics 1 (revision 2): a 0-byte file is a valid TFRecord of no records, read with
    # or without compression='GZIP' (TensorFlow reads both as no records)
    path = tmp_path / "empty.tfrecords"
    path.write_bytes(b"")
    assert list(tilespec.read_records(path, compression=compression)) == []
    assert list(tilespec.read_records(path, compression=compression, verify=False)) == []
    assert list(scan_records(path)) == []


def test_not_a_tfrecord(tmp_path):
    path = tmp_path / "notes.tfrecords"
    path.write_bytes(b"this is a plain text file, not TFRecord framing\n")
    with pytest.raises(tilespec.NotATFRecordError) as e:
        list(tilespec.read_records(path))
    assert "not a TFRecord file" in str(e.value) and e.value.record == 0


def test_gzip_read_as_plain_suggests_compression(tmp_path):
    path = tmp_path / "z.tfrecords"
    tilespec.write_records(path, [b"abc"], compression="GZIP")
    with pytest.raises(tilespec.NotATFRecordError, match="compression='GZIP'"):
        list(tilespec.read_records(path))
    assert list(tilespec.read_records(path, compression="GZIP")) == [b"abc"]


def test_distinct_error_classes():
    classes = {tilespec.CorruptLengthError, tilespec.CorruptDataError,
               tilespec.TruncatedRecordError, tilespec.EmptyFileError,
               tilespec.NotATFRecordError}
    assert len(classes) == 5
    assert all(issubclass(c, tilespec.TFRecordError) for c in classes)


def test_bad_compression_name(tmp_path):
    with pytest.raises(ValueError, match="ZLIB"):
        list(tilespec.read_records(tmp_path / "x", compression="ZLIB"))


def test_writer_rejects_non_bytes_and_leaves_no_file(tmp_path):
    path = tmp_path / "w.tfrecords"
    with pytest.raises(TypeError, match="record 1"):
        tilespec.write_records(path, [b"ok", "text"])
    assert not path.exists() and os.listdir(tmp_path) == []


def test_payloads_are_independent_bytes(tmp_path):
    path = tmp_path / "f.tfrecords"
    tilespec.write_records(path, [b"aaaa", b"bbbb"])
    got = list(tilespec.read_records(path))
    assert all(type(p) is bytes for p in got) and got == [b"aaaa", b"bbbb"]


def test_framing_layout():
    framed = frame_record(b"hello")
    length, lcrc = struct.unpack("<QI", framed[:12])
    assert length == 5 and lcrc == crcmod.masked_crc32c(framed[:8])
    assert framed[12:17] == b"hello"
    assert struct.unpack("<I", framed[17:])[0] == crcmod.masked_crc32c(b"hello")


def test_scan_records_verify_streams_payload_checksums(tmp_path):
    path = tmp_path / "big.tfrecords"
    tilespec.write_records(path, [os.urandom(5000), os.urandom(3)])
    assert [l for _, l in scan_records(path, verify=True, chunk_size=1000)] == [5016, 19]
    raw = bytearray(path.read_bytes())
    raw[4000] ^= 1
    path.write_bytes(bytes(raw))
    assert len(list(scan_records(path, verify=False))) == 2
    with pytest.raises(tilespec.CorruptDataError):
        list(scan_records(path, verify=True, chunk_size=1000))


def test_gzip_stream_errors_are_tfrecord_errors(tmp_path):
    path = tmp_path / "z.tfrecords"
    tilespec.write_records(path, [b"x" * 1000] * 3, compression="GZIP")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(tilespec.TFRecordError):
        list(tilespec.read_records(path, compression="GZIP"))
    assert gzip.decompress(raw)  # the intact file was valid GZIP


# ----------------------------------------------------------------- writing
def test_writer_of_zero_records_writes_what_tensorflow_writes(tmp_path):
    path = tmp_path / "none.tfrecords"
    assert tilespec.write_records(path, []) == 0
    assert path.read_bytes() == b""           # TFRecordWriter with no records: 0 bytes
    assert os.listdir(tmp_path) == ["none.tfrecords"]  # no temporary file left
    gz = tmp_path / "none-gzip.tfrecords"
    assert tilespec.write_records(gz, [], compression="GZIP") == 0
    raw = gz.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and gzip.decompress(raw) == b"" and len(raw) == 20
    assert list(tilespec.read_records(gz, compression="GZIP")) == []


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.tfrecords"
    tilespec.write_records(path, [b"old"])

    def records():
        yield b"new"
        raise RuntimeError("producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        tilespec.write_records(path, records())
    assert list(tilespec.read_records(path)) == [b"old"]
    assert os.listdir(tmp_path) == ["f.tfrecords"]


def test_written_file_has_normal_permissions(tmp_path):
    path = tmp_path / "f.tfrecords"
    tilespec.write_records(path, [b"x"])
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_gzip_output_is_deterministic_and_names_no_file(tmp_path):
    a, b = tmp_path / "a.tfrecords", tmp_path / "b.tfrecords"
    tilespec.write_records(a, [b"x" * 100, b"y"], compression="GZIP")
    tilespec.write_records(b, [b"x" * 100, b"y"], compression="GZIP")
    raw = a.read_bytes()
    assert raw == b.read_bytes()
    assert raw[:2] == b"\x1f\x8b" and raw[3] & 0x08 == 0  # FLG.FNAME not set
    assert raw[4:8] == b"\0\0\0\0"  # MTIME 0
    assert gzip.decompress(raw) == frame_record(b"x" * 100) + frame_record(b"y")


def test_compression_names(tmp_path):
    path = tmp_path / "z.tfrecords"
    tilespec.write_records(path, [b"abc"], compression="gzip")  # slideflow's spelling
    assert list(tilespec.read_records(path, compression="GZIP")) == [b"abc"]
    assert list(tilespec.read_records(path, compression="Gzip")) == [b"abc"]
    tilespec.write_records(path, [b"abc"], compression="")
    assert list(tilespec.read_records(path, compression=None)) == [b"abc"]
    with pytest.raises(ValueError, match="'GZIP'"):
        tilespec.write_records(path, [b"abc"], compression=1)


# ----------------------------------------------------------------- reading edge cases
def test_huge_unverified_length_is_truncation_not_memory_error(tmp_path):
    path = tmp_path / "big.tfrecords"
    raw = bytearray(frame_record(b"abc"))
    raw[0:8] = struct.pack("<Q", 2**62)
    path.write_bytes(bytes(raw))
    with pytest.raises(tilespec.NotATFRecordError):
        list(tilespec.read_records(path))
    with pytest.raises(tilespec.TruncatedRecordError, match="wanted 4611686018427387904"):
        list(tilespec.read_records(path, verify=False))


def test_large_payload_read_in_pieces(tmp_path, monkeypatch):
    from tilespec import records as recmod

    monkeypatch.setattr(recmod, "_READ_CHUNK", 1000)
    payload = os.urandom(5500)
    path = tmp_path / "f.tfrecords"
    tilespec.write_records(path, [payload, b"z"])
    assert list(tilespec.read_records(path)) == [payload, b"z"]
    path.write_bytes(path.read_bytes()[:3000])
    with pytest.raises(tilespec.TruncatedRecordError, match="got 2988"):
        list(tilespec.read_records(path))


def test_gzip_corruption_classes(tmp_path):
    path = tmp_path / "z.tfrecords"
    tilespec.write_records(path, [b"x" * 1000] * 5, compression="GZIP")
    raw = path.read_bytes()
    # the stored CRC32 of the GZIP member (second-to-last 4 bytes)
    bad = bytearray(raw)
    bad[-6] ^= 0xFF
    path.write_bytes(bytes(bad))
    with pytest.raises(tilespec.CorruptDataError, match="GZIP stream is corrupt") as e:
        list(tilespec.read_records(path, compression="GZIP"))
    assert e.value.path == str(path)
    # cut short: truncated
    path.write_bytes(raw[:-3])
    with pytest.raises(tilespec.TruncatedRecordError, match="GZIP stream"):
        list(tilespec.read_records(path, compression="GZIP"))
    # not GZIP at all
    tilespec.write_records(path, [b"plain"])
    with pytest.raises(tilespec.NotATFRecordError, match="not a GZIP file") as e:
        list(tilespec.read_records(path, compression="GZIP"))
    assert (e.value.record, e.value.offset) == (0, 0)


def test_gzip_deflate_damage_is_a_tfrecord_error(tmp_path):
    path = tmp_path / "z.tfrecords"
    tilespec.write_records(path, [os.urandom(3000) for _ in range(4)], compression="GZIP")
    raw = path.read_bytes()
    for i in range(12, len(raw) - 8, 97):
        bad = bytearray(raw)
        bad[i] ^= 0x55
        path.write_bytes(bytes(bad))
        with pytest.raises(tilespec.TFRecordError):
            list(tilespec.read_records(path, compression="GZIP"))


def test_is_gzip_file(tmp_path):
    from tilespec.records import is_gzip_file

    z, p = tmp_path / "z.tfrecords", tmp_path / "p.tfrecords"
    tilespec.write_records(z, [b"abc"], compression="GZIP")
    tilespec.write_records(p, [b"abc"])
    assert is_gzip_file(z) and not is_gzip_file(p)
    # a plain file whose first length field starts with the bytes 1f 8b is not GZIP
    q = tmp_path / "q.tfrecords"
    tilespec.write_records(q, [b"a" * 0x8B1F])
    assert q.read_bytes()[:2] == b"\x1f\x8b" and not is_gzip_file(q)
    assert list(tilespec.read_records(q)) == [b"a" * 0x8B1F]


def test_read_record_at_errors(tmp_path):
    path = tmp_path / "f.tfrecords"
    tilespec.write_records(path, [b"abc", b"defg"])
    with pytest.raises(tilespec.TruncatedRecordError, match="past the end"):
        read_record_at(path, path.stat().st_size)
    with pytest.raises(tilespec.CorruptLengthError) as e:
        read_record_at(path, 5, record=7)  # not the start of a record
    assert (e.value.path, e.value.record, e.value.offset) == (str(path), 7, 5)
    assert read_record_at(path, 19) == b"defg"


def _outcome(fn):
    """A call's payload, or its error as (class, message, path, record, offset)."""
    try:
        return fn()
    except tilespec.TFRecordError as e:
        return (type(e), str(e), e.path, e.record, e.offset)


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=4), st.data())
def test_read_by_extent_equals_read_by_header(tmp_path_factory, recs, data):
    """spec/records.md, "Random access": with the framed size an index gives, a record is
    read in one read, and the payload or error is what reading by the header gives, for
    sound, damaged (a flipped bit, a cut file) and lying extents, with verify on and off
    and any size cap."""
    raw = bytearray(b"".join(frame_record(r) for r in recs))
    offsets, sizes, at = [], [], 0
    for r in recs:
        offsets.append(at)
        sizes.append(len(r) + FRAMING_BYTES)
        at += len(r) + FRAMING_BYTES
    k = data.draw(st.integers(0, len(recs) - 1))
    damage = data.draw(st.sampled_from(["none", "flip", "flip", "cut"]))
    if damage == "flip":  # a bit of record k (header, payload or footer)
        i = data.draw(st.integers(offsets[k], offsets[k] + sizes[k] - 1))
        raw[i] ^= 1 << data.draw(st.integers(0, 7))
    elif damage == "cut":  # the file ends inside record k
        raw = raw[:data.draw(st.integers(offsets[k], offsets[k] + sizes[k] - 1))]
    path = tmp_path_factory.mktemp("extent") / "f.tfrecords"
    path.write_bytes(bytes(raw))
    length = data.draw(st.sampled_from([sizes[k]] * 4 + [sizes[k] - 1, sizes[k] + 1, 0, 15,
                                                         1 << 40]))
    verify = data.draw(st.booleans())
    cap = data.draw(st.sampled_from([tilespec.records.MAX_RECORD_BYTES, 8, 1]))
    with open(path, "rb") as f:
        def read(**kw):
            return _outcome(lambda: read_record_at(f, offsets[k], verify=verify, record=k,
                                                   path=str(path), max_record_bytes=cap, **kw))
        assert read(length=length) == read()
    if damage == "none" and length == sizes[k] and len(recs[k]) <= cap:
        assert read_record_at(path, offsets[k], length=length) == recs[k]


@pytest.mark.parametrize("verify", [True, False])
def test_read_by_extent_every_damage(tmp_path, verify):
    """Every single-bit flip (one bit per byte, rotating) and every cut of a file of three
    records, each record read with its true extent: the payload or error is that of the
    read by header (spec/records.md, "Random access")."""
    recs = [b"", b"abc", bytes(range(40))]
    good = b"".join(frame_record(r) for r in recs)
    offsets = [0, 16, 35]
    sizes = [16, 19, 56]
    path = tmp_path / "f.tfrecords"
    files = [good[:cut] for cut in range(len(good))]
    for i in range(len(good)):
        raw = bytearray(good)
        raw[i] ^= 1 << (i % 8)
        files.append(bytes(raw))
    differ = 0
    for raw in files:
        path.write_bytes(raw)
        with open(path, "rb") as f:
            for k in range(3):
                def read(**kw):
                    return _outcome(lambda: read_record_at(f, offsets[k], verify=verify,
                                                           record=k, **kw))
                plain = read()
                assert read(length=sizes[k]) == plain
                differ += plain != recs[k]
    assert differ > len(good)  # the damage was seen


def test_read_by_extent_is_one_read_and_no_stat(tmp_path, monkeypatch):
    """A sound record read with its extent costs one ``pread`` and no file-size call, and
    its payload is a new bytes object (spec/records.md, "Random access")."""
    from tilespec import records

    path = tmp_path / "f.tfrecords"
    recs = [b"abc", b"x" * 1000]
    tilespec.write_records(path, recs)
    calls = []
    real = records._pread
    monkeypatch.setattr(records, "_pread", lambda *a: calls.append(a[1:]) or real(*a))

    def no_stat(*a):
        raise AssertionError("fstat called")

    monkeypatch.setattr(records.os, "fstat", no_stat)

    class NoRead:
        def __init__(self, f):
            self.f = f

        def fileno(self):
            return self.f.fileno()

        def __getattr__(self, name):
            raise AssertionError(f"file.{name} used")

    with open(path, "rb") as f:
        got = read_record_at(NoRead(f), 19, length=1016)
    assert got == recs[1] and type(got) is bytes
    assert calls == [(1016, 19)]
    # a cut file: the short read sends the record to the header path, whose error it is
    path.write_bytes(path.read_bytes()[:-1])
    monkeypatch.undo()
    with open(path, "rb") as f, pytest.raises(tilespec.TruncatedRecordError) as e:
        read_record_at(f, 19, length=1016, record=1)
    assert (e.value.record, e.value.offset) == (1, 19)


# ----------------------------------------------------------------- conformance vectors
VECTORS = os.path.join(os.path.dirname(__file__), os.pardir, "spec", "vectors", "records")


def _manifest():
    with open(os.path.join(VECTORS, "manifest.json")) as fh:
        return json.load(fh)


def _read_vector(v, verify=True):
    got = []
    try:
        for payload in tilespec.read_records(os.path.join(VECTORS, v["file"]),
                                             compression=v["compression"], verify=verify):
            got.append(payload.hex())
    except tilespec.TFRecordError as e:
        return got, e
    return got, None


@pytest.mark.parametrize("v", _manifest()["vectors"], ids=lambda v: v["file"])
def test_conformance_vector(v):
    got, err = _read_vector(v)
    if "records" in v:
        assert err is None and got == v["records"]
    else:
        assert type(err).__name__ == v["error"]
        assert (err.record, err.offset) == (v["record"], v["offset"])
        assert got == v["records_before"]
        assert err.path.endswith(v["file"]) and v["file"] in str(err)
    expect = v.get("verify_false")
    if expect is not None:
        got, err = _read_vector(v, verify=False)
        if "records" in expect:
            assert err is None and got == expect["records"]
        else:
            assert type(err).__name__ == expect["error"]
            assert (err.record, err.offset) == (expect["record"], expect["offset"])


def test_conformance_manifest_facts():
    m = _manifest()
    check = m["crc32c_check"]
    data = bytes.fromhex(check["input_hex"])
    assert crcmod.crc32c(data) == int(check["crc32c"], 16)
    assert crcmod.masked_crc32c(data) == int(check["masked"], 16)
    valid = m["vectors"][0]
    path = os.path.join(VECTORS, valid["file"])
    assert [list(r) for r in scan_records(path)] == valid["index"]
    for payload, sums in zip(valid["records"], valid["checksums"]):
        p = bytes.fromhex(payload)
        assert crcmod.masked_crc32c(p) == int(sums["payload_crc"], 16)
        assert crcmod.masked_crc32c(struct.pack("<Q", len(p))) == int(sums["length_crc"], 16)
    assert {v["error"] for v in m["vectors"] if "error" in v} == {
        "CorruptLengthError", "CorruptDataError", "TruncatedRecordError", "NotATFRecordError"}


def test_generator_reproduces_the_vectors(tmp_path):
    gen = runpy.run_path(os.path.join(VECTORS, "make_vectors.py"))
    gen["main"](str(tmp_path))
    for name in os.listdir(tmp_path):
        ours = (tmp_path / name).read_bytes()
        stored = open(os.path.join(VECTORS, name), "rb").read()
        if name.endswith("gzip.tfrecords") or name == "gzip-read-as-plain.tfrecords":
            assert gzip.decompress(ours) == gzip.decompress(stored)  # zlib may differ
        else:
            assert ours == stored, name
    assert sorted(os.listdir(tmp_path)) == sorted(
        n for n in os.listdir(VECTORS) if n != "make_vectors.py" and not n.startswith("__"))


# ----------------------------------------------------------------- TensorFlow interop
@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


def _tf_write(tf, path, records, compression=None):
    options = tf.io.TFRecordOptions(compression_type=compression or "")
    with tf.io.TFRecordWriter(str(path), options) as w:
        for r in records:
            w.write(r)


def _interop_records():
    rng = np.random.default_rng(7)
    recs = [b"", b"\x00", bytes(rng.integers(0, 256, 70000, dtype=np.uint8))]
    recs += [bytes(rng.integers(0, 256, int(n), dtype=np.uint8))
             for n in rng.integers(0, 3000, 20)]
    recs.append(tilespec.encode_tile(b"\xff\xd8\xff" + b"j" * 50, "slide-1", 10, -3))
    return recs


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_zero_records_both_ways_with_tensorflow(tf, tmp_path, compression):
    theirs, ours = tmp_path / "tf.tfrecords", tmp_path / "ours.tfrecords"
    _tf_write(tf, theirs, [], compression)
    tilespec.write_records(ours, [], compression=compression)
    assert list(tilespec.read_records(theirs, compression=compression)) == []
    assert list(tf.data.TFRecordDataset(str(ours), compression_type=compression or "")) == []
    if compression is None:  # byte-identical: both 0 bytes
        assert ours.read_bytes() == theirs.read_bytes() == b""
    else:  # the same GZIP stream of no data (header fields such as the OS byte may differ)
        assert gzip.decompress(ours.read_bytes()) == gzip.decompress(theirs.read_bytes()) == b""


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_tensorflow_written_files_read_exactly(tf, tmp_path, compression):
    recs = _interop_records()
    path = tmp_path / "tf.tfrecords"
    _tf_write(tf, path, recs, compression)
    assert list(tilespec.read_records(path, compression=compression)) == recs
    if compression is None:  # and the index we build reads each record back
        offsets = [o for o, _ in scan_records(path, verify=True)]
        with open(path, "rb") as f:
            assert [read_record_at(f, o) for o in offsets] == recs


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_our_files_read_by_tensorflow(tf, tmp_path, compression):
    recs = _interop_records()
    path = tmp_path / "ours.tfrecords"
    tilespec.write_records(path, recs, compression=compression)
    ds = tf.data.TFRecordDataset(str(path), compression_type=compression or "")
    assert [t.numpy() for t in ds] == recs
    if compression is None:  # byte-identical to TensorFlow's writer
        _tf_write(tf, tmp_path / "tf.tfrecords", recs)
        assert path.read_bytes() == (tmp_path / "tf.tfrecords").read_bytes()


@pytest.mark.parametrize("compression", [None, "GZIP"])
def test_our_tile_examples_parse_in_tensorflow(tf, tmp_path, compression, demo_dataset):
    path = tmp_path / "tiles.tfrecords"
    source = list(tilespec.read_records(demo_dataset["paths"][1]))
    tiles = [tilespec.parse_tile(p) for p in source]
    tilespec.write_records(path, (tilespec.encode_tile(t.image_raw, t.slide, t.loc_x, t.loc_y)
                                  for t in tiles), compression=compression)
    ds = tf.data.TFRecordDataset(str(path), compression_type=compression or "")
    n = 0
    for tensor, tile in zip(ds, tiles):
        ex = tf.train.Example.FromString(tensor.numpy())
        f = ex.features.feature
        assert f["image_raw"].bytes_list.value == [tile.image_raw]
        assert f["slide"].bytes_list.value == [tile.slide.encode()]
        assert list(f["loc_x"].int64_list.value) == [tile.loc_x]
        assert list(f["loc_y"].int64_list.value) == [tile.loc_y]
        n += 1
    assert n == len(tiles) == 16


def test_tensorflow_agrees_on_the_vectors(tf):
    for v in _manifest()["vectors"]:
        path = os.path.join(VECTORS, v["file"])
        ds = tf.data.TFRecordDataset(path, compression_type=v["compression"] or "")
        if "records" in v:  # the empty vectors included: TensorFlow reads them as no records
            assert [t.numpy().hex() for t in ds] == v["records"], v["file"]
        elif v["file"] == "truncated-header.tfrecords":
            # TensorFlow ends silently at a partial header (spec/records.md, differences)
            assert [t.numpy().hex() for t in ds] == v["records_before"]
        else:
            with pytest.raises(tf.errors.OpError):
                list(ds)


# ----------------------------------------------------------------- the demo dataset
def test_demo_dataset_layout(demo_dataset):
    from tilespec.synthetic import DEFAULT_SLIDES

    assert [os.path.basename(p) for p in demo_dataset["paths"]] == [
        f"{s.slide}.tfrecords" for s in DEFAULT_SLIDES]
    for spec, path in zip(DEFAULT_SLIDES, demo_dataset["paths"]):
        tiles = [tilespec.parse_tile(p) for p in tilespec.read_records(path)]
        assert len(tiles) == spec.tiles
        assert {t.slide for t in tiles} == {spec.slide}
        assert [(t.loc_x, t.loc_y) for t in tiles] == [
            ((i % 8) * 64, (i // 8) * 64) for i in range(spec.tiles)]
        assert all(t.image_raw[:3] == b"\xff\xd8\xff" for t in tiles)
    with open(demo_dataset["annotations"]) as fh:
        rows = [line.rstrip("\n").split(",") for line in fh]
    assert rows[0] == ["patient", "slide", "category", "site", "age"]
    assert [r[1] for r in rows[1:]] == [s.slide for s in DEFAULT_SLIDES]


def test_demo_dataset_is_deterministic(tmp_path):
    from tilespec.synthetic import SlideSpec, write_synthetic_dataset

    slides = (SlideSpec("s-1", "p-1", "tumor", "site-1", 3),
              SlideSpec("s-2", "p-2", "normal", "site-1", 2))
    a = write_synthetic_dataset(tmp_path / "a", slides=slides, tile_px=16)
    b = write_synthetic_dataset(tmp_path / "b", slides=slides, tile_px=16)
    c = write_synthetic_dataset(tmp_path / "c", slides=slides, tile_px=16, seed=1)
    for pa, pb, pc in zip(a["paths"], b["paths"], c["paths"]):
        assert open(pa, "rb").read() == open(pb, "rb").read() != open(pc, "rb").read()


def test_demo_tumor_tiles_have_more_nuclei():
    from tilespec.synthetic import tissue_tile

    def dark_fraction(tumor):
        rng = np.random.default_rng(5)
        tiles = [tissue_tile(rng, 64, tumor) for _ in range(20)]
        return np.mean([(t.astype(int).sum(axis=2) < 330).mean() for t in tiles])

    assert dark_fraction(True) > 2 * dark_fraction(False)
