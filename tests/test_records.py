"""spec/records.md: TFRecord framing, checksums and reading errors."""

import gzip
import os
import struct

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


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tfrecords"
    path.write_bytes(b"")
    with pytest.raises(tilespec.EmptyFileError) as e:
        list(tilespec.read_records(path))
    assert str(path) in str(e.value)


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
