"""Write the TFRecord framing conformance vectors (spec/records.md, "Conformance vectors").

Usage: python make_vectors.py [OUT_DIR]   (default: the folder of this script)

Every file is built byte by byte here, from the framing rule and CRC32C alone,
so the vectors do not depend on the reader they test. The manifest
(manifest.json) lists, for each file, either the payloads a reader must return
(hex) or the error it must raise: the tilespec error class, the 0-based record
number and the byte offset of that record's first framing byte. ``verify_false``
says what reading without checksum verification gives.

The GZIP twin is compressed with zlib at level 9, no file name, mtime 0; its
compressed bytes may differ with another zlib version, its content may not.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import sys

_POLY = 0x82F63B78


def crc32c(data: bytes) -> int:
    """Bitwise CRC-32C (Castagnoli), reflected, init and final xor 0xFFFFFFFF."""
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF


def masked(data: bytes) -> int:
    c = crc32c(data)
    return ((((c >> 15) | (c << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def frame(payload: bytes) -> bytes:
    length = struct.pack("<Q", len(payload))
    return (length + struct.pack("<I", masked(length)) + payload
            + struct.pack("<I", masked(payload)))


# Three records: an empty payload, a short text, every byte value once.
PAYLOADS = [b"", b"tilespec", bytes(range(256))]


def build() -> tuple[dict[str, bytes], dict]:
    """Return ({file name: bytes}, manifest)."""
    framed = [frame(p) for p in PAYLOADS]
    offsets = [0]
    for f in framed:
        offsets.append(offsets[-1] + len(f))
    valid = b"".join(framed)
    hexes = [p.hex() for p in PAYLOADS]
    files: dict[str, bytes] = {}
    entries = []

    files["valid.tfrecords"] = valid
    entries.append({
        "file": "valid.tfrecords", "compression": None, "records": hexes,
        "index": [[offsets[i], len(framed[i])] for i in range(3)],
        "checksums": [{"length_crc": f"0x{masked(struct.pack('<Q', len(p))):08x}",
                       "payload_crc": f"0x{masked(p):08x}"} for p in PAYLOADS],
        "what": "three valid records: empty, 'tilespec', bytes 0..255",
    })

    files["valid-gzip.tfrecords"] = gzip.compress(valid, compresslevel=9, mtime=0)
    entries.append({"file": "valid-gzip.tfrecords", "compression": "GZIP", "records": hexes,
                    "what": "the GZIP twin of valid.tfrecords"})

    def error(name, data, cls, record, offset, what, verify_false):
        files[name] = data
        entries.append({"file": name, "compression": None, "error": cls, "record": record,
                        "offset": offset, "records_before": hexes[:record or 0],
                        "verify_false": verify_false, "what": what})

    # Record 1's length field 8 -> 9 (bit 0 of its first byte): its checksum fails.
    # Unverified, the reader takes 9 payload bytes and the wrong footer, and then
    # finds a header that fails (not verified) and a huge length: truncated.
    raw = bytearray(valid)
    raw[offsets[1]] ^= 0x01
    error("corrupt-length.tfrecords", bytes(raw), "CorruptLengthError", 1, offsets[1],
          "record 1's length field has one bit flipped",
          {"error": "TruncatedRecordError", "record": 2, "offset": offsets[1] + 16 + 9})

    # One payload byte of record 2 changed: its payload checksum fails.
    raw = bytearray(valid)
    raw[offsets[2] + 12 + 100] ^= 0xFF
    changed = bytearray(PAYLOADS[2])
    changed[100] ^= 0xFF
    error("corrupt-payload.tfrecords", bytes(raw), "CorruptDataError", 2, offsets[2],
          "record 2's payload has one byte changed",
          {"records": hexes[:2] + [bytes(changed).hex()]})

    # Record 1's stored payload checksum changed (the payload is intact).
    raw = bytearray(valid)
    raw[offsets[2] - 1] ^= 0x80
    error("corrupt-footer.tfrecords", bytes(raw), "CorruptDataError", 1, offsets[1],
          "record 1's payload checksum (footer) has one bit flipped",
          {"records": hexes})

    # The file ends 56 bytes into record 2's payload.
    error("truncated.tfrecords", valid[:offsets[2] + 12 + 56], "TruncatedRecordError", 2,
          offsets[2], "the file ends inside record 2's payload",
          {"error": "TruncatedRecordError", "record": 2, "offset": offsets[2]})

    # The file ends inside record 1's header.
    error("truncated-header.tfrecords", valid[:offsets[1] + 5], "TruncatedRecordError", 1,
          offsets[1], "the file ends 5 bytes into record 1's header",
          {"error": "TruncatedRecordError", "record": 1, "offset": offsets[1]})

    files["empty.tfrecords"] = b""
    entries.append({"file": "empty.tfrecords", "compression": None, "records": [],
                    "index": [],
                    "what": "an empty file (0 bytes): a valid TFRecord of no records, as "
                            "TensorFlow writes it for no records"})
    files["empty-gzip.tfrecords"] = gzip.compress(b"", compresslevel=9, mtime=0)
    entries.append({"file": "empty-gzip.tfrecords", "compression": "GZIP", "records": [],
                    "what": "a GZIP stream of no data: no records"})

    error("not-a-tfrecord.tfrecords", b"patient,slide,category\npatient-a,slide-a1,tumor\n",
          "NotATFRecordError", 0, 0, "a CSV file: the first header fails its checksum",
          None)

    # The GZIP twin read as a plain file: the first header fails its checksum.
    files["gzip-read-as-plain.tfrecords"] = files["valid-gzip.tfrecords"]
    entries.append({"file": "gzip-read-as-plain.tfrecords", "compression": None,
                    "error": "NotATFRecordError", "record": 0, "offset": 0,
                    "records_before": [], "verify_false": None,
                    "what": "valid-gzip.tfrecords read without compression='GZIP'"})

    manifest = {
        "spec": "spec/records.md",
        "framing": "u64le length | u32le masked_crc32c(length bytes) | payload | "
                   "u32le masked_crc32c(payload)",
        "mask": "((c >> 15) | (c << 17)) + 0xA282EAD8 mod 2**32",
        "crc32c_check": {"input_hex": b"123456789".hex(), "crc32c": "0xe3069283",
                         "masked": f"0x{masked(b'123456789'):08x}"},
        "notes": "error offsets are the byte offset of the failing record's first framing "
                 "byte; record and offset are null where the error is about the whole file; "
                 "verify_false null means not specified (unverified reading of a file that "
                 "is not TFRecord framing is undefined)",
        "vectors": entries,
    }
    return files, manifest


def main(out_dir: str) -> None:
    files, manifest = build()
    os.makedirs(out_dir, exist_ok=True)
    for name, data in files.items():
        with open(os.path.join(out_dir, name), "wb") as fh:
            fh.write(data)
    with open(os.path.join(out_dir, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
