"""Make the tf.train.Example conformance vectors (spec/example.md, "Conformance").

    python spec/vectors/example/make_vectors.py          # rewrite *.bin and manifest.json
    python spec/vectors/example/make_vectors.py --tf     # also rewrite the TensorFlow one

Each vector is one serialized payload, ``<name>.bin``; ``manifest.json`` lists
every vector with a description, how it was made, and either the exact parse
result or ``"error": true`` (the payload must be rejected). Vectors made by
hand (bytes written field by field below, without tilespec) or by tilespec's
encoder are reproduced byte for byte by this script, which tests/test_example.py
checks. The ``tensorflow`` vector is stored as TensorFlow wrote it: protobuf
does not promise a map order, so only its expected value is fixed here, and its
bytes are rewritten only with ``--tf``.

Expected values in the manifest, per feature:
``{"type": "bytes", "value": [hex, ...]}`` (a list of byte strings),
``{"type": "int64", "value": ["-1", ...]}`` (decimal strings, exact in any
JSON reader) or ``{"type": "float32", "value": [bits, ...]}`` (each float32 as
8 hex digits of its IEEE 754 bit pattern, so NaN payloads and -0.0 are exact).
"""

from __future__ import annotations

import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# An 8x8 baseline JPEG (Pillow, quality 90), written out so the vector never
# depends on the installed libjpeg.
TINY_JPEG = bytes.fromhex(
    "ffd8ffe000104a46494600010100000100010000ffdb0043000302020302020303030304030304050805"
    "050404050a070706080c0a0c0c0b0a0b0b0d0e12100d0e110e0b0b1016101113141515150c0f1718161418"
    "12141514ffdb00430103040405040509050509140d0b0d14141414141414141414141414141414141414"
    "14141414141414141414141414141414141414141414141414141414ffc0001108000800080301220002"
    "1101031101ffc4001f0000010501010101010100000000000000000102030405060708090a0bffc400b5"
    "100002010303020403050504040000017d01020300041105122131410613516107227114328191a10823"
    "42b1c11552d1f02433627282090a161718191a25262728292a3435363738393a434445464748494a5354"
    "55565758595a636465666768696a737475767778797a838485868788898a92939495969798999aa2a3a4"
    "a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae1e2e3e4e5e6e7e8e9"
    "eaf1f2f3f4f5f6f7f8f9faffc4001f0100030101010101010101010000000000000102030405060708090a"
    "0bffc400b51100020102040403040705040400010277000102031104052131061241510761711322328108"
    "144291a1b1c109233352f0156272d10a162434e125f11718191a262728292a35363738393a434445464748"
    "494a535455565758595a636465666768696a737475767778797a82838485868788898a92939495969798"
    "999aa2a3a4a5a6a7a8a9aab2b3b4b5b6b7b8b9bac2c3c4c5c6c7c8c9cad2d3d4d5d6d7d8d9dae2e3e4e5e6"
    "e7e8e9eaf2f3f4f5f6f7f8f9faffda000c03010002110311003f00e7fe16fecbff00ea7fd13d3f868a28af"
    "bfcd389732facbfde0b8078bb37fec4a7fbcfeadea7fffd9")


# ------------------------------------------------------------ wire format, by hand
def varint(x: int) -> bytes:
    x &= (1 << 64) - 1  # negative int64: two's complement, 10 bytes
    out = bytearray()
    while x >= 0x80:
        out.append(x & 0x7F | 0x80)
        x >>= 7
    out.append(x)
    return bytes(out)


def tag(field: int, wire: int) -> bytes:
    return varint(field << 3 | wire)


def ld(field: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return tag(field, 2) + varint(len(payload)) + payload


def entry(key: bytes, feature: bytes) -> bytes:
    """One Features.feature map entry: key [1], value [2]."""
    return ld(1, ld(1, key) + ld(2, feature))


def f32(x: float) -> bytes:
    return struct.pack("<f", x)


def unknown_fields(field: int) -> bytes:
    """One unknown field of each allowed wire type (0, 1, 2, 5), numbered from ``field``."""
    return (tag(field, 0) + varint(150) + tag(field + 1, 1) + bytes(range(8))
            + ld(field + 2, b"\x0a\x03abc") + tag(field + 3, 5) + b"\xff\xff\xff\xff")


# ----------------------------------------------------------------- expected values
def b(*vals: bytes) -> dict:
    return {"type": "bytes", "value": [v.hex() for v in vals]}


def i64(*vals: int) -> dict:
    return {"type": "int64", "value": [str(v) for v in vals]}


def f32bits(*bits: int) -> dict:
    return {"type": "float32", "value": [f"{x:08x}" for x in bits]}


def f32vals(*vals: float) -> dict:
    return f32bits(*(struct.unpack("<I", f32(v))[0] for v in vals))


# --------------------------------------------------------------------- the vectors
def _tile_plain():
    from tilespec import encode_tile
    return encode_tile(TINY_JPEG, "slide-001", 512, 1024)


def _numbers_packed_unpacked():
    ints = (ld(1, varint(1) + varint(2)) + tag(1, 0) + varint(3)          # packed, unpacked
            + tag(1, 0) + varint(300) + ld(1, varint(4) + varint(5)))    # unpacked, packed
    floats = (tag(1, 5) + f32(1.5) + ld(1, f32(2.5) + f32(-3.0))          # unpacked, packed
              + ld(1, b"") + tag(1, 5) + f32(0.25))                      # empty chunk, unpacked
    return ld(1, entry(b"ints", ld(3, ints)) + entry(b"floats", ld(2, floats)))


def _int64_extremes():
    import numpy as np
    from tilespec import encode_example
    return encode_example({"extremes": np.array([-1, -2**63, 2**63 - 1, 0, -300, 127, 128],
                                                dtype=np.int64)})


def _unknown_fields():
    bytes_list = ld(1, b"kept") + unknown_fields(2) + ld(1, b"too")
    int_list = unknown_fields(5) + ld(1, varint(7))
    feature = unknown_fields(4) + ld(1, bytes_list) + unknown_fields(9)
    entry_a = ld(1, unknown_fields(3) + ld(1, b"a") + unknown_fields(7) + ld(2, feature))
    entry_n = ld(1, ld(1, b"n") + ld(2, ld(3, int_list)) + unknown_fields(10))
    features = unknown_fields(2) + entry_a + unknown_fields(100) + entry_n
    return unknown_fields(2) + ld(1, features) + unknown_fields(536870908)  # max field numbers


def _empty_features():
    return ld(1, entry(b"no_list", b"")                    # Feature with no list set
              + entry(b"empty_bytes", ld(1, b""))
              + entry(b"empty_floats", ld(2, b""))
              + entry(b"empty_ints", ld(3, b""))
              + entry(b"empty_packed", ld(3, ld(1, b"")))  # a packed chunk of no values
              + ld(1, ld(2, ld(1, ld(1, b"x"))))           # an entry with no key: name ""
              + ld(1, ld(1, b"no_value")))                  # an entry with no value


def _merges():
    first = entry(b"k", ld(1, ld(1, b"old")))
    later = entry(b"k", ld(3, ld(1, varint(9))))           # the same key again: it replaces
    split_value = ld(1, ld(1, b"v") + ld(2, ld(3, ld(1, varint(1))))
                     + ld(1, b"v") + ld(2, ld(3, ld(1, varint(2)))))  # value twice: merged
    return (ld(1, first + entry(b"a", ld(1, ld(1, b"1"))))
            + ld(1, later + split_value))                  # Features twice: maps merge


def _oneof_replace():
    feature = (ld(1, ld(1, b"gone")) + ld(3, ld(1, varint(5)))       # int64_list replaces
               + ld(3, ld(1, varint(6))))                           # same member: merges
    back = ld(3, ld(1, varint(5))) + ld(2, tag(1, 5) + f32(1.0)) + ld(1, ld(1, b"last"))
    return ld(1, entry(b"x", feature) + entry(b"y", back))


FLOAT_SPECIALS = (0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7FC00001, 0x7F800001,
                  0x80000000, 0x00000000, 0x00000001, 0x80000001, 0x7F7FFFFF, 0xFF7FFFFF,
                  0x00800000, 0x3F800000)


def _float_specials():
    import numpy as np
    from tilespec import encode_example
    return encode_example({"specials": np.array(FLOAT_SPECIALS, dtype=np.uint32)
                          .view(np.float32)})


TF_FEATURES = {
    "image_raw": b(TINY_JPEG),
    "slide": b(b"slide-tf"),
    "loc_x": i64(0),
    "loc_y": i64(-7),
    "weights": f32vals(0.5, -0.0, 3.25),
    "ids": i64(-2**63, 2**63 - 1, 1),
    "none": b(),
}


def _tensorflow():
    """Written with TensorFlow's own tf.train.Example (only with --tf)."""
    import tensorflow as tf
    feats = {}
    for name, spec in TF_FEATURES.items():
        if spec["type"] == "bytes" and not spec["value"]:
            feats[name] = tf.train.Feature()
        elif spec["type"] == "bytes":
            feats[name] = tf.train.Feature(bytes_list=tf.train.BytesList(
                value=[bytes.fromhex(v) for v in spec["value"]]))
        elif spec["type"] == "int64":
            feats[name] = tf.train.Feature(int64_list=tf.train.Int64List(
                value=[int(v) for v in spec["value"]]))
        else:
            feats[name] = tf.train.Feature(float_list=tf.train.FloatList(
                value=[struct.unpack(">f", bytes.fromhex(v))[0]
                       for v in spec["value"]]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


VALID = [
    ("tile_plain", "encoder", _tile_plain,
     "A tile record as slideflow writes it: image_raw (a JPEG), slide, loc_x, loc_y.",
     {"image_raw": b(TINY_JPEG), "slide": b(b"slide-001"), "loc_x": i64(512),
      "loc_y": i64(1024)}),
    ("numbers_packed_unpacked", "hand", _numbers_packed_unpacked,
     "Packed and unpacked chunks mixed in one int64_list and one float_list; the chunks "
     "concatenate in order (an empty packed chunk adds nothing).",
     {"ints": i64(1, 2, 3, 300, 4, 5), "floats": f32vals(1.5, 2.5, -3.0, 0.25)}),
    ("int64_extremes", "encoder", _int64_extremes,
     "Negative int64 values are 10-byte varints; the extremes of the range.",
     {"extremes": i64(-1, -2**63, 2**63 - 1, 0, -300, 127, 128)}),
    ("unknown_fields", "hand", _unknown_fields,
     "Unknown fields of wire types 0, 1, 2 and 5 in every message (Example, Features, "
     "map entry, Feature, BytesList, Int64List), up to field number 2^29 - 1: skipped.",
     {"a": b(b"kept", b"too"), "n": i64(7)}),
    ("empty_features", "hand", _empty_features,
     "A Feature with no list set, empty lists of each kind, an entry with no key "
     "(name \"\") and an entry with no value.",
     {"no_list": b(), "empty_bytes": b(), "empty_floats": f32bits(), "empty_ints": i64(),
      "empty_packed": i64(), "": b(b"x"), "no_value": b()}),
    ("merges", "hand", _merges,
     "Features given twice (maps merge); a repeated key (the later entry replaces the "
     "earlier one, whatever its kind); a value field given twice in one entry (merged).",
     {"k": i64(9), "a": b(b"1"), "v": i64(1, 2)}),
    ("oneof_replace", "hand", _oneof_replace,
     "A later oneof member of another kind replaces the earlier one; the same member "
     "again merges with it.",
     {"x": i64(5, 6), "y": b(b"last")}),
    ("float_specials", "encoder", _float_specials,
     "float32 specials, bit for bit: +-inf, quiet and signalling NaNs with payloads and "
     "either sign, +-0, subnormals, +-max, the smallest normal, 1.",
     {"specials": f32bits(*FLOAT_SPECIALS)}),
    ("empty_example", "hand", lambda: b"",
     "An empty payload is an Example with no features.", {}),
    ("tensorflow", "tensorflow", _tensorflow,
     "Written by TensorFlow 2.21 (tf.train.Example.SerializeToString): a tile record "
     "plus float and int64 lists and a Feature with no list set; map order as TF chose.",
     TF_FEATURES),
]

REJECTED = [
    ("err_varint_11_bytes", "A varint of 11 bytes (the value of loc_x).",
     lambda: ld(1, entry(b"loc_x", ld(3, tag(1, 0) + b"\xff" * 10 + b"\x01")))),
    ("err_varint_over_64_bits", "A 10-byte varint whose last byte is 0x02 (a value of 2^64).",
     lambda: ld(1, entry(b"loc_x", ld(3, tag(1, 0) + b"\x80" * 9 + b"\x02")))),
    ("err_field_zero", "A field with number 0 in the Example.",
     lambda: tag(0, 0) + varint(1)),
    ("err_group", "An unknown field of wire type 3 (start group) in the Example.",
     lambda: ld(1, entry(b"a", b"")) + tag(9, 3) + tag(9, 4)),
    ("err_truncated", "A length-delimited field running past the end of its message.",
     lambda: ld(1, entry(b"a", b""))[:-1]),
    ("err_key_not_utf8", "A feature key that is not UTF-8.",
     lambda: ld(1, entry(b"\xff", b""))),
    ("err_wrong_wire_type", "Feature.int64_list (field 3) with wire type 0.",
     lambda: ld(1, entry(b"a", tag(3, 0) + varint(1)))),
    ("err_float_length", "A packed float_list of 6 bytes (not a multiple of 4).",
     lambda: ld(1, entry(b"a", ld(2, ld(1, bytes(6)))))),
]


def build(with_tf: bool = False) -> tuple[dict, dict]:
    """Return (manifest, {file name: bytes}) for every vector this script reproduces
    (the TensorFlow one only when ``with_tf``)."""
    manifest = {"description": "tf.train.Example conformance vectors (spec/example.md, "
                               "'Conformance'); made by make_vectors.py.",
                "vectors": []}
    files = {}
    for name, source, make, description, expected in VALID:
        manifest["vectors"].append({"name": name, "file": f"{name}.bin", "source": source,
                                    "description": description, "expected": expected})
        if source != "tensorflow" or with_tf:
            files[f"{name}.bin"] = make()
    for name, description, make in REJECTED:
        manifest["vectors"].append({"name": name, "file": f"{name}.bin", "source": "hand",
                                    "description": description, "error": True})
        files[f"{name}.bin"] = make()
    return manifest, files


def manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=1) + "\n"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    manifest, files = build(with_tf="--tf" in argv)
    for fname, data in files.items():
        with open(os.path.join(HERE, fname), "wb") as f:
            f.write(data)
    with open(os.path.join(HERE, "manifest.json"), "w", encoding="utf-8") as f:
        f.write(manifest_text(manifest))
    print(f"wrote {len(files)} vectors and manifest.json to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
