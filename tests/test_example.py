"""spec/example.md: the tf.train.Example codec, the tile schema and its fast path.

Wire bytes in these tests are written field by field by the small helpers
below (``varint``, ``tag``, ``ld``, ...), never by the encoder under test, so
the parser is checked against the protobuf wire format itself.
"""

import importlib.util
import json
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import tilespec
from tilespec import ExampleParseError, TFRecordError, TileSchemaError
from tilespec.example import (Tile, _NotPlain, _parse_tile_fast, encode_example,
                              encode_feature, encode_tile, parse_example, parse_tile,
                              tile_from_features)

VECTORS = os.path.join(os.path.dirname(__file__), os.pardir, "spec", "vectors", "example")


# ------------------------------------------------------------------ wire helpers
def varint(x: int) -> bytes:
    x &= (1 << 64) - 1
    out = bytearray()
    while x >= 0x80:
        out.append(x & 0x7F | 0x80)
        x >>= 7
    out.append(x)
    return bytes(out)


def tag(field, wire):
    return varint(field << 3 | wire)


def ld(field, payload):
    return tag(field, 2) + varint(len(payload)) + payload


def ld_padded(field, payload):
    """A length-delimited field whose length is a non-minimal 2-byte varint."""
    assert len(payload) < 128
    return tag(field, 2) + bytes([len(payload) | 0x80, 0]) + payload


def vi(field, x):
    return tag(field, 0) + varint(x)


def fx32(field, raw4):
    return tag(field, 5) + raw4


def fx64(field, raw8):
    return tag(field, 1) + raw8


def entry(key: bytes, feature: bytes) -> bytes:
    return ld(1, ld(1, key) + ld(2, feature))


def example(*entries: bytes) -> bytes:
    return ld(1, b"".join(entries))


def bytes_list(*vals):
    return ld(1, b"".join(ld(1, v) for v in vals))


def packed_ints(vals):
    return ld(1, b"".join(varint(v) for v in vals))


def unpacked_ints(vals):
    return b"".join(vi(1, v) for v in vals)


def packed_floats(vals):
    return ld(1, struct.pack(f"<{len(vals)}f", *vals))


def unpacked_floats(vals):
    return b"".join(fx32(1, struct.pack("<f", v)) for v in vals)


def int64_list(body):
    return ld(3, body)


def float_list(body):
    return ld(2, body)


def unknown(field, wire):
    """One unknown field of the given wire type."""
    return {0: vi(field, 2**63 + 5), 1: fx64(field, bytes(range(8))),
            2: ld(field, b"\x0a\x02hi"), 5: fx32(field, b"\x01\x02\x03\x04")}[wire]


def f32(bits):
    return np.array(bits, dtype=np.uint32).view(np.float32)


# ------------------------------------------------------------------ exact equality
def assert_value(got, exp, name=""):
    if isinstance(exp, list):
        assert type(got) is list, (name, got)
        assert all(type(x) is bytes for x in got), (name, got)
        assert got == exp, name
    else:
        assert isinstance(got, np.ndarray), (name, got)
        assert got.dtype == exp.dtype and got.ndim == 1 and got.shape == exp.shape, (name, got)
        assert got.tobytes() == exp.tobytes(), (name, got, exp)  # bitwise: NaN, -0.0


def assert_parsed(got, exp):
    assert isinstance(got, dict)
    assert sorted(got) == sorted(exp)
    for k in exp:
        assert_value(got[k], exp[k], k)


def i64(*v):
    return np.array(v, dtype=np.int64)


# ------------------------------------------------------- encoder input strategies
INT64 = st.one_of(st.sampled_from([-2**63, 2**63 - 1, 0, -1, 1, 127, 128, -129, 2**32]),
                  st.integers(-2**63, 2**63 - 1))
SPECIAL_BITS = [0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000,
                0x7FC00001, 0x7F800001, 0x00000001, 0x807FFFFF, 0x7F7FFFFF, 0x3DCCCCCD]
F32_BITS = st.one_of(st.sampled_from(SPECIAL_BITS), st.integers(0, 2**32 - 1))


def to_f32(values):
    """float64 -> float32, rounding to nearest (out of range: +-inf)."""
    with np.errstate(over="ignore"):
        return np.asarray(values, dtype=np.float64).astype(np.float32).ravel()


def _pair(value_st, expect):
    return value_st.map(lambda v: (v, expect(v)))


_bytes_values = st.one_of(
    _pair(st.lists(st.binary(max_size=12), max_size=4), list),
    _pair(st.binary(max_size=12), lambda v: [v]),
    _pair(st.binary(max_size=12).map(bytearray), lambda v: [bytes(v)]),
    _pair(st.text(max_size=6), lambda v: [v.encode("utf-8")]),
    _pair(st.lists(st.one_of(st.text(max_size=4), st.binary(max_size=4)), max_size=4),
          lambda v: [x.encode("utf-8") if isinstance(x, str) else x for x in v]),
    _pair(st.lists(st.binary(max_size=6), max_size=3).map(lambda v: np.array(v, dtype=object)),
          lambda a: [bytes(x) for x in a]),
    _pair(st.lists(st.text(max_size=4), max_size=3).map(lambda v: np.array(v, dtype=str)),
          lambda a: [str(x).encode("utf-8") for x in a]),
)
_int_values = st.one_of(
    _pair(st.lists(INT64, max_size=6).map(lambda v: np.array(v, dtype=np.int64)),
          lambda a: a.copy()),
    _pair(st.lists(INT64, min_size=1, max_size=6), lambda v: np.array(v, dtype=np.int64)),
    _pair(INT64, lambda v: np.array([v], dtype=np.int64)),
    _pair(INT64.map(np.int64), lambda v: np.array([v], dtype=np.int64)),
    _pair(st.sampled_from([np.int8, np.int16, np.int32, np.uint8, np.uint16, np.uint32])
          .flatmap(lambda dt: hnp.arrays(dt, st.integers(0, 5))),
          lambda a: a.astype(np.int64)),
    _pair(hnp.arrays(np.uint64, st.integers(0, 4), elements=st.integers(0, 2**63 - 1)),
          lambda a: a.astype(np.int64)),
    _pair(hnp.arrays(np.int64, st.tuples(st.integers(0, 3), st.integers(0, 3)),
                     elements=INT64), lambda a: a.ravel().copy()),
)
_float_values = st.one_of(
    _pair(st.lists(F32_BITS, max_size=6).map(f32), lambda a: a.copy()),
    _pair(F32_BITS.map(lambda b: f32([b])[0]), lambda v: np.array([v], dtype=np.float32)),
    _pair(st.lists(st.floats(), min_size=1, max_size=5), lambda v: to_f32([float(x) for x in v])),
    _pair(st.tuples(st.floats(width=32), st.lists(INT64, max_size=3)).map(
        lambda t: [*t[1], t[0]]), lambda v: to_f32([float(x) for x in v])),
    _pair(st.floats(), lambda v: to_f32([v])),
    _pair(hnp.arrays(np.float64, st.integers(0, 4)), to_f32),
    _pair(hnp.arrays(np.float16, st.integers(0, 4)), to_f32),
)
VALUES = st.one_of(_bytes_values, _int_values, _float_values)
FEATURES = st.dictionaries(st.text(max_size=10), VALUES, max_size=6)


def _split(pairs):
    return {k: v for k, (v, _) in pairs.items()}, {k: e for k, (_, e) in pairs.items()}


# ------------------------------------------------------------------ round trip
@given(FEATURES)
def test_round_trip(pairs):
    features, expected = _split(pairs)
    with np.errstate(over="ignore"):
        data = encode_example(features)
    assert_parsed(parse_example(data), expected)
    assert_parsed(parse_example(bytearray(data)), expected)
    assert_parsed(parse_example(memoryview(data)), expected)


def test_round_trip_edges():
    features = {"": [], "empty_ints": np.zeros(0, np.int64), "empty_floats": np.zeros(0, np.float32),
                "ü☃𝄞": b"x", "ints": [-2**63, 2**63 - 1], "floats": f32(SPECIAL_BITS)}
    got = parse_example(encode_example(features))
    assert_parsed(got, {"": [], "empty_ints": i64(), "empty_floats": np.zeros(0, np.float32),
                        "ü☃𝄞": [b"x"], "ints": i64(-2**63, 2**63 - 1),
                        "floats": f32(SPECIAL_BITS)})


def test_float_rounding_to_float32():
    got = parse_example(encode_example({"f": [0.1, 1e300, -1e300, 1e-50, 2**24 + 1, 1]}))["f"]
    assert got.view(np.uint32).tolist() == [0x3DCCCCCD, 0x7F800000, 0xFF800000, 0, 0x4B800000,
                                            0x3F800000]


def test_encoder_bytes_are_plain_and_packed():
    # Feature{int64_list{packed [1, -1]}}: -1 is a 10-byte varint
    assert encode_feature("n", [1, -1]) == bytes.fromhex("1a0d0a0b01ffffffffffffffffff01")
    assert encode_feature("n", -2**63) == bytes.fromhex("1a0c0a0a80808080808080808001")
    assert encode_feature("f", [1.0, -0.0]) == ld(2, ld(1, struct.pack("<ff", 1.0, -0.0)))
    assert encode_feature("b", [b"a", b""]) == ld(1, ld(1, b"a") + ld(1, b""))
    assert encode_feature("e", []) == ld(1, b"")
    assert encode_feature("e", np.zeros(0, np.int64)) == ld(3, b"")
    assert encode_feature("e", np.zeros(0, np.float32)) == ld(2, b"")
    assert encode_example({"b": b"x", "a": 1}) == example(entry(b"b", bytes_list(b"x")),
                                                          entry(b"a", int64_list(packed_ints([1]))))
    assert encode_example({}) == ld(1, b"")


@pytest.mark.parametrize("value, error", [
    (True, TypeError), ([True, False], TypeError), (np.array([True]), TypeError),
    (2**63, ValueError), (-2**63 - 1, ValueError), ([1, 2**64], ValueError),
    (np.array([2**63], dtype=np.uint64), ValueError), (np.uint64(2**63), ValueError),
    (1j, TypeError), (np.array([1j]), TypeError), (None, TypeError), ([[1]], TypeError),
    (["a", 1], TypeError), ([b"a", 1.5], TypeError), ([1.5, 2**2000], ValueError),
    ("\ud800", ValueError), ({"a": 1}, TypeError),
    (np.array(["2020-01-01"], dtype="datetime64[D]"), TypeError),
])
def test_encoder_rejects_with_the_feature_name(value, error):
    with pytest.raises(error, match="'feat'"):
        encode_example({"feat": value})


def test_encoder_rejects_bad_names():
    with pytest.raises(TypeError, match="str"):
        encode_example({1: b"x"})
    with pytest.raises(ValueError, match="UTF-8"):
        encode_example({"a\udcff": b"x"})


# ------------------------------------------------------------------ fuzz
def _parse_outcome(data):
    try:
        return parse_example(data), None
    except ExampleParseError as e:
        return None, e


def _tile_outcome(data):
    try:
        return tile_from_features(parse_example(data)), None
    except (ExampleParseError, TileSchemaError) as e:
        return None, e


def check_total(data):
    """parse_example and parse_tile return or raise their own errors only, and
    parse_tile (fast path or not) equals the generic path, errors included."""
    parsed, err = _parse_outcome(data)
    if err is None:
        for k, v in parsed.items():
            assert isinstance(k, str)
            assert (isinstance(v, list) and all(type(x) is bytes for x in v)) or (
                isinstance(v, np.ndarray) and v.dtype in (np.int64, np.float32) and v.ndim == 1)
    else:
        assert isinstance(err, TFRecordError) and str(err).startswith("not a valid")
    expected_tile, expected_err = _tile_outcome(data)
    try:
        tile = parse_tile(data)
    except (ExampleParseError, TileSchemaError) as e:
        assert expected_err is not None and type(e) is type(expected_err)
        assert str(e) == str(expected_err)
    else:
        assert expected_err is None and tile == expected_tile
        assert type(tile.image_raw) is bytes and type(tile.slide) is str


@given(st.binary(max_size=300))
def test_fuzz_any_bytes(data):
    check_total(data)


TILES = st.builds(
    lambda img, slide, x, y: encode_tile(img, slide, x, y),
    st.binary(max_size=300), st.text(max_size=12),
    st.one_of(st.none(), INT64), st.one_of(st.none(), INT64))


SMALL_TILES = st.builds(
    lambda img, slide, x, y: encode_tile(img, slide, x, y),
    st.binary(max_size=6), st.text(max_size=3),
    st.one_of(st.none(), INT64), st.one_of(st.none(), INT64))


@st.composite
def mutated(draw):
    data = bytearray(draw(st.one_of(SMALL_TILES, TILES,
                                    FEATURES.map(lambda p: encode_example(_split(p)[0])))))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "set"]))
        i = draw(st.one_of(st.integers(0, min(len(data), 24)), st.integers(0, len(data))))
        if op == "truncate":
            del data[i:]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete":
            del data[i:i + draw(st.integers(1, 4))]
        elif i < len(data):
            data[i] = (data[i] ^ (1 << draw(st.integers(0, 7))) if op == "flip"
                       else draw(st.integers(0, 255)))
    return bytes(data)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_fuzz_mutated_encodings(data):
    with np.errstate(over="ignore"):
        check_total(data)


def test_fuzz_regressions():
    # an empty map entry as the last byte once read past the end in the fast path
    for data in [b"\x0a\x02\x0a\x00", b"\x0a\x01\x0a", b"\x0a\x00", b"\x0a", b"\x0a\x80"]:
        check_total(data)
    # a 10-byte loc_x varint above 64 bits was once accepted by the fast path
    bad = example(entry(b"image_raw", bytes_list(b"i")), entry(b"slide", bytes_list(b"s")),
                  entry(b"loc_x", int64_list(ld(1, b"\xff" * 9 + b"\x7f"))))
    with pytest.raises(ExampleParseError, match="64 bits"):
        parse_tile(bad)
    check_total(bad)
    # a Feature length one more than the bytes left once passed the fast path
    check_total(b'\n"\n\x11\n\timage_raw\x12\x05\n\x02\n\x00\n\r\n\x05slide\x12\x04'
                b'\n\x02\n\x00')


def test_every_single_byte_change_of_a_tile_record():
    """Exhaustive: every bit flip and every +-1 of every byte of small tile records."""
    for base in (encode_tile(b"\xff\xd8", "s", -1, 2**40), encode_tile(b"", "", None, 0)):
        for i in range(len(base)):
            for new in {base[i] ^ (1 << k) for k in range(8)} | {(base[i] + 1) % 256,
                                                                  (base[i] - 1) % 256}:
                check_total(base[:i] + bytes([new]) + base[i + 1:])
            check_total(base[:i])
            check_total(base[:i] + base[i + 1:])


def test_non_bytes_input_is_a_type_error():
    with pytest.raises(TypeError):
        parse_example("text")
    with pytest.raises(TypeError):
        parse_tile(12)


# ------------------------------------------------------------ hand-built wire format
def test_packed_and_unpacked_numbers_concatenate():
    data = example(
        entry(b"p", int64_list(packed_ints([1, 300, -1]))),
        entry(b"u", int64_list(unpacked_ints([1, 300, -1]))),
        entry(b"m", int64_list(packed_ints([1, 2]) + unpacked_ints([3]) + packed_ints([])
                               + packed_ints([4, 5]) + unpacked_ints([-6]))),
        entry(b"fp", float_list(packed_floats([1.5, -2.0]))),
        entry(b"fu", float_list(unpacked_floats([1.5, -2.0]))),
        entry(b"fm", float_list(unpacked_floats([1.0]) + packed_floats([2.0, 3.0])
                                + packed_floats([]) + unpacked_floats([4.0]))))
    got = parse_example(data)
    assert_parsed(got, {"p": i64(1, 300, -1), "u": i64(1, 300, -1), "m": i64(1, 2, 3, 4, 5, -6),
                        "fp": np.array([1.5, -2.0], np.float32),
                        "fu": np.array([1.5, -2.0], np.float32),
                        "fm": np.array([1, 2, 3, 4], np.float32)})


def test_negative_int64_are_ten_byte_varints():
    for v in [-1, -2, -2**63, -2**31, -300]:
        assert len(varint(v)) == 10
        assert_parsed(parse_example(example(entry(b"n", int64_list(packed_ints([v]))))),
                      {"n": i64(v)})
    # values at or above 2^63 written as unsigned varints read as their two's complement
    assert_parsed(parse_example(example(entry(b"n", int64_list(unpacked_ints([2**64 - 1]))))),
                  {"n": i64(-1)})
    # non-minimal varints (padded with 0x80 bytes) are accepted, as protobuf does
    assert_parsed(parse_example(example(entry(b"n", int64_list(
        tag(1, 0) + b"\x81\x80\x00")))), {"n": i64(1)})


LEVELS = ["example", "features", "entry", "feature", "bytes_list", "int64_list", "float_list"]


def _with_unknown(level, extra):
    def at(lv, body, before=False):
        if lv != level:
            return body
        return extra + body if before else body + extra
    blist = ld(1, b"a") + (extra if level == "bytes_list" else b"") + ld(1, b"b")
    ilist = at("int64_list", packed_ints([7]), before=True)
    flist = at("float_list", packed_floats([0.5]))
    feature = at("feature", ld(1, blist), before=True)
    entries = (ld(1, at("entry", ld(1, b"b") + ld(2, feature), before=True))
               + entry(b"i", ld(3, ilist)) + entry(b"f", ld(2, flist)))
    return at("example", ld(1, at("features", entries)), before=True)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("wire", [0, 1, 2, 5])
def test_unknown_fields_are_skipped_at_every_level(level, wire):
    number = {"example": 2, "features": 3, "entry": 3, "feature": 4, "bytes_list": 2,
              "int64_list": 2, "float_list": 9}[level]
    extra = unknown(number, wire) + unknown(536870911, wire)  # the largest field number
    got = parse_example(_with_unknown(level, extra))
    assert_parsed(got, {"b": [b"a", b"b"], "i": i64(7), "f": np.array([0.5], np.float32)})


def test_empty_and_missing_parts():
    got = parse_example(example(
        entry(b"none", b""),                      # Feature with no list set
        entry(b"only_unknown", vi(7, 1)),         # ... and nothing known in it
        entry(b"eb", ld(1, b"")), entry(b"ef", ld(2, b"")), entry(b"ei", ld(3, b"")),
        ld(1, ld(2, bytes_list(b"k"))),           # an entry without a key: name ""
        ld(1, ld(1, b"nv")),                      # an entry without a value
        ld(1, b"")))                              # an empty entry: "" again, replaces
    assert_parsed(got, {"none": [], "only_unknown": [], "eb": [], "ef": np.zeros(0, np.float32),
                        "ei": i64(), "": [], "nv": []})
    assert parse_example(b"") == {}
    assert parse_example(ld(1, b"")) == {}


def test_repeated_map_key_last_wins():
    got = parse_example(example(entry(b"k", bytes_list(b"first")), entry(b"o", bytes_list(b"x")),
                                entry(b"k", int64_list(packed_ints([2])))))
    assert_parsed(got, {"k": i64(2), "o": [b"x"]})
    # the key field repeated inside one entry: the last key names the entry
    got = parse_example(ld(1, ld(1, ld(1, b"a") + ld(2, bytes_list(b"v")) + ld(1, b"b"))))
    assert_parsed(got, {"b": [b"v"]})
    # value before key
    got = parse_example(ld(1, ld(1, ld(2, bytes_list(b"v")) + ld(1, b"a"))))
    assert_parsed(got, {"a": [b"v"]})


def test_oneof_member_of_another_kind_replaces():
    got = parse_example(example(
        entry(b"a", bytes_list(b"x") + int64_list(packed_ints([1]))),
        entry(b"b", int64_list(packed_ints([1])) + float_list(packed_floats([2.0]))),
        entry(b"c", float_list(packed_floats([2.0])) + bytes_list(b"y")),
        entry(b"d", bytes_list(b"x") + int64_list(packed_ints([1])) + bytes_list(b"z")),
        entry(b"e", int64_list(packed_ints([1])) + int64_list(packed_ints([2]))),  # merges
        entry(b"f", bytes_list(b"x") + bytes_list(b"y")),
        entry(b"g", float_list(b"") + ld(1, b"")),    # replaced by an empty bytes_list
    ))
    assert_parsed(got, {"a": i64(1), "b": np.array([2.0], np.float32), "c": [b"y"], "d": [b"z"],
                        "e": i64(1, 2), "f": [b"x", b"y"], "g": []})


def test_value_field_twice_in_an_entry_merges():
    got = parse_example(ld(1, ld(1, ld(1, b"a") + ld(2, int64_list(packed_ints([1])))
                                 + ld(2, int64_list(packed_ints([2])))
                                 + ld(2, b""))))
    assert_parsed(got, {"a": i64(1, 2)})
    got = parse_example(ld(1, ld(1, ld(1, b"a") + ld(2, int64_list(packed_ints([1])))
                                 + ld(2, bytes_list(b"s")))))
    assert_parsed(got, {"a": [b"s"]})


def test_features_twice_merge():
    data = (example(entry(b"a", bytes_list(b"1")), entry(b"b", bytes_list(b"2")))
            + example(entry(b"b", bytes_list(b"3")), entry(b"c", bytes_list(b"4"))))
    assert_parsed(parse_example(data), {"a": [b"1"], "b": [b"3"], "c": [b"4"]})


REJECTED = {
    "11-byte varint": example(entry(b"n", int64_list(tag(1, 0) + b"\xff" * 10 + b"\x01"))),
    "11-byte packed varint": example(entry(b"n", int64_list(ld(1, b"\x80" * 10 + b"\x00")))),
    "varint over 64 bits": example(entry(b"n", int64_list(ld(1, b"\x80" * 9 + b"\x02")))),
    "11-byte length": b"\x0a" + b"\x80" * 10 + b"\x00",
    "6-byte tag": b"\x88\x80\x80\x80\x80\x00\x00",
    "field number 0": vi(0, 1),
    "field number 0 deep": example(entry(b"n", int64_list(vi(0, 1)))),
    "field number 2^29": vi(1 << 29, 1),
    "truncated varint": b"\x08\x80",
    "truncated tag": b"\x80",
    "truncated length": ld(1, b"abc")[:-1],
    "truncated fixed32": fx32(9, b"\x00\x00\x00\x00")[:-1],
    "truncated fixed64": fx64(9, bytes(8))[:-1],
    "length past the message": ld(1, ld(1, b"") + b"\x0a\x05") + b"abcde",
    "packed float length": example(entry(b"f", float_list(ld(1, bytes(5))))),
    "key not UTF-8": example(entry(b"\xc3\x28", b"")),
    "Example.features varint": vi(1, 3),
    "map entry fixed32": ld(1, fx32(1, bytes(4))),
    "key varint": ld(1, ld(1, vi(1, 3))),
    "value fixed64": ld(1, ld(1, fx64(2, bytes(8)))),
    "Feature.bytes_list varint": example(entry(b"k", vi(1, 0))),
    "Feature.float_list fixed32": example(entry(b"k", fx32(2, bytes(4)))),
    "bytes value varint": example(entry(b"k", ld(1, vi(1, 0)))),
    "float value varint": example(entry(b"k", float_list(vi(1, 0)))),
    "float value fixed64": example(entry(b"k", float_list(fx64(1, bytes(8))))),
    "int value fixed32": example(entry(b"k", int64_list(fx32(1, bytes(4))))),
}
for _wire in (3, 4, 6, 7):
    for _level in ("example", "features", "entry", "feature", "bytes_list"):
        REJECTED[f"wire type {_wire} in {_level}"] = _with_unknown(_level, tag(9, _wire))


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_with_example_parse_error(name):
    with pytest.raises(ExampleParseError, match="not a valid tf.train.Example") as info:
        parse_example(REJECTED[name])
    assert isinstance(info.value, TFRecordError)
    with pytest.raises(ExampleParseError):
        parse_tile(REJECTED[name])


def test_errors_name_the_feature_and_position():
    with pytest.raises(ExampleParseError, match=r"feature 'loc_x': .*wire type 1"):
        parse_example(example(entry(b"loc_x", int64_list(fx64(1, bytes(8))))))
    with pytest.raises(ExampleParseError, match=r"feature 'w': .*multiple of 4"):
        parse_example(example(entry(b"w", float_list(ld(1, bytes(3))))))
    with pytest.raises(ExampleParseError, match=r"wire type 3 .*group"):
        parse_example(tag(5, 3))
    with pytest.raises(ExampleParseError, match="at byte 2"):
        parse_example(ld(1, b"") + tag(0, 0) + b"\x00")


# ------------------------------------------------------------------ tile schema
TILE = Tile(b"\xff\xd8jpeg", "slide-1", 3, -4)


def tile_entries(t=TILE, x=None, y=None):
    return {"image_raw": entry(b"image_raw", bytes_list(t.image_raw)),
            "slide": entry(b"slide", bytes_list(t.slide.encode())),
            "loc_x": entry(b"loc_x", int64_list(x if x is not None else packed_ints([t.loc_x]))),
            "loc_y": entry(b"loc_y", int64_list(y if y is not None else packed_ints([t.loc_y])))}


@given(st.binary(max_size=2000), st.text(max_size=20), st.one_of(st.none(), INT64),
       st.one_of(st.none(), INT64))
def test_tile_round_trip_on_the_fast_path(image, slide, x, y):
    data = encode_tile(image, slide, x, y)
    expected = Tile(image, slide, x, y)
    assert _parse_tile_fast(data) == expected  # the plain layout never falls back
    assert parse_tile(data) == expected == tile_from_features(parse_example(data))
    assert parse_tile(bytearray(data)) == expected == parse_tile(memoryview(data))


NON_PLAIN = {
    "order": lambda e: example(e["loc_y"], e["slide"], e["loc_x"], e["image_raw"]),
    "unpacked loc": lambda e: example(*tile_entries(x=unpacked_ints([3]),
                                                    y=unpacked_ints([-4])).values()),
    "split loc": lambda e: example(*tile_entries(x=packed_ints([]) + unpacked_ints([3]),
                                                 y=packed_ints([-4]) + packed_ints([])).values()),
    "extra feature": lambda e: example(*e.values(), entry(b"label", bytes_list(b"tumor"))),
    "unknown field": lambda e: example(*e.values()) + vi(7, 1),
    "unknown in entry": lambda e: example(e["image_raw"], e["slide"], e["loc_x"],
                                          ld(1, ld(1, b"loc_y") + vi(3, 9)
                                             + ld(2, int64_list(packed_ints([-4]))))),
    "value before key": lambda e: example(e["image_raw"], e["slide"], e["loc_x"],
                                          ld(1, ld(2, int64_list(packed_ints([-4])))
                                             + ld(1, b"loc_y"))),
    "duplicate key": lambda e: example(entry(b"slide", bytes_list(b"old")), *e.values()),
    "features twice": lambda e: example(e["image_raw"], e["slide"]) + example(e["loc_x"],
                                                                              e["loc_y"]),
    "non-minimal lengths": lambda e: ld_padded(1, ld_padded(1, ld_padded(1, b"image_raw")
                                                            + ld(2, bytes_list(TILE.image_raw)))
                                               + e["slide"] + e["loc_x"] + e["loc_y"]),
    "no loc": lambda e: example(e["image_raw"], e["slide"]),
}


@pytest.mark.parametrize("name", sorted(NON_PLAIN))
def test_parse_tile_equals_generic_on_non_plain_layouts(name):
    data = NON_PLAIN[name](tile_entries())
    expected = TILE if name != "no loc" else TILE._replace(loc_x=None, loc_y=None)
    assert tile_from_features(parse_example(data)) == expected
    assert parse_tile(data) == expected
    check_total(data)


def varint_padded(x, pad):
    """``x`` as a varint padded with ``pad`` redundant bytes (still at most 10)."""
    raw = bytearray(varint(x))
    for _ in range(min(pad, 10 - len(raw))):
        raw[-1] |= 0x80
        raw.append(0)
    return bytes(raw)


@st.composite
def tile_layouts(draw):
    """A valid tile record in any layout, with the Tile it holds, and whether the
    layout is one the fast path must take (single fields, packed loc, no extras)."""
    image = draw(st.one_of(st.binary(max_size=60),  # and images with 2- and 3-byte lengths
                           st.binary(min_size=1, max_size=8).map(lambda b: b * 3000)))
    slide = draw(st.text(max_size=8))
    loc = {k: draw(st.one_of(st.none(), INT64)) for k in ("loc_x", "loc_y")}
    plain = True

    def ldx(field, payload):
        return tag(field, 2) + varint_padded(len(payload), draw(st.sampled_from([0, 0, 1, 3])))

    def ldx_(field, payload):
        return ldx(field, payload) + payload

    entries = [ldx_(1, ldx_(1, b"image_raw") + ldx_(2, ldx_(1, ldx_(1, image)))),
               ldx_(1, ldx_(1, b"slide") + ldx_(2, ldx_(1, ldx_(1, slide.encode()))))]
    for k, v in loc.items():
        if v is None:
            continue
        if draw(st.booleans()):
            body = ldx_(1, varint_padded(v, draw(st.sampled_from([0, 0, 1]))))
        else:
            body, plain = vi(1, v), False
        entries.append(ldx_(1, ldx_(1, k.encode()) + ldx_(2, ldx_(3, body))))
    if draw(st.booleans()):
        entries.append(entry(b"label", bytes_list(b"x")))
        plain = False
    entries = draw(st.permutations(entries))
    data = ldx_(1, b"".join(entries))
    if draw(st.booleans()):
        data += vi(9, 1)
        plain = False
    return data, Tile(image, slide, loc["loc_x"], loc["loc_y"]), plain


@given(tile_layouts())
def test_parse_tile_on_any_layout(case):
    data, expected, plain = case
    assert parse_tile(data) == expected == tile_from_features(parse_example(data))
    if plain:
        assert _parse_tile_fast(data) == expected
    else:
        with pytest.raises(_NotPlain):
            _parse_tile_fast(data)


def test_small_entries_read_once_are_read_alike_in_any_record():
    """The plain scan keeps its reading of small map entries by their bytes; the same
    entry in another record, at another place, beside other entries, twice, or in a
    record that is not plain gives what the generic parser gives (spec/example.md,
    "The fast path")."""
    from tilespec import example as ex

    e = tile_entries()
    other = tile_entries(Tile(b"\xff\xd8other", "slide-2", 3, 7))
    records = [example(*e.values()), example(e["loc_y"], e["image_raw"], e["slide"], e["loc_x"]),
               example(other["image_raw"], e["slide"], other["loc_x"], e["loc_y"]),
               example(e["image_raw"], e["slide"], e["slide"]),           # a key twice
               example(e["image_raw"], e["loc_x"], e["loc_y"]),           # no slide
               example(e["loc_x"], e["slide"]),                           # no image
               example(e["image_raw"], e["slide"], e["loc_x"][:-1]),       # an entry cut
               example(e["image_raw"], e["slide"], e["loc_x"]) + e["loc_y"],  # outside
               example(e["image_raw"], e["slide"], entry(b"loc_x", bytes_list(b"3")))]
    for order in (records, records[::-1]):
        ex._ENTRIES.clear()
        for data in order:
            assert _outcome(parse_tile, data) == _outcome(
                lambda d: tile_from_features(parse_example(d)), data)
    assert ex._ENTRIES  # the small entries were kept


def test_kept_entries_are_bounded(monkeypatch):
    from tilespec import example as ex

    monkeypatch.setattr(ex, "_ENTRIES_MAX", 50)
    ex._ENTRIES.clear()
    for i in range(200):
        assert parse_tile(encode_tile(b"img", "s", i, -i)) == Tile(b"img", "s", i, -i)
        assert len(ex._ENTRIES) <= 50


def _outcome(fn, data):
    try:
        return fn(data)
    except TFRecordError as e:
        return type(e), str(e)


SCHEMA_ERRORS = {
    "no image": (lambda e: example(e["slide"], e["loc_x"]), "'image_raw'"),
    "no slide": (lambda e: example(e["image_raw"]), "'slide'"),
    "image int64": (lambda e: example(entry(b"image_raw", int64_list(packed_ints([1]))),
                                      e["slide"]), "'image_raw' is an int64_list"),
    "slide float": (lambda e: example(e["image_raw"], entry(b"slide", float_list(b""))),
                    "'slide' is a float_list"),
    "loc_x bytes": (lambda e: example(e["image_raw"], e["slide"],
                                      entry(b"loc_x", bytes_list(b"1"))),
                    "'loc_x' is a bytes_list"),
    "loc_y float": (lambda e: example(e["image_raw"], e["slide"],
                                      entry(b"loc_y", float_list(packed_floats([1.0])))),
                    "'loc_y' is a float_list"),
    "loc_x empty": (lambda e: example(e["image_raw"], e["slide"], entry(b"loc_x", b"")),
                    "'loc_x' is an empty Feature"),
    "two images": (lambda e: example(entry(b"image_raw", bytes_list(b"a", b"b")), e["slide"]),
                   "'image_raw' has 2 values"),
    "no slide value": (lambda e: example(e["image_raw"], entry(b"slide", bytes_list())),
                       "'slide' has 0 values"),
    "empty slide Feature": (lambda e: example(e["image_raw"], entry(b"slide", b"")),
                            "'slide' has 0 values"),
    "two loc_y": (lambda e: example(e["image_raw"], e["slide"],
                                    entry(b"loc_y", int64_list(packed_ints([1, 2])))),
                  "'loc_y' has 2 values"),
    "slide not UTF-8": (lambda e: example(e["image_raw"], entry(b"slide", bytes_list(b"\xff"))),
                        "'slide' is not UTF-8"),
}


@pytest.mark.parametrize("name", sorted(SCHEMA_ERRORS))
def test_tile_schema_errors_name_the_feature(name):
    make, message = SCHEMA_ERRORS[name]
    data = make(tile_entries())
    with pytest.raises(TileSchemaError, match=message) as info:
        parse_tile(data)
    assert isinstance(info.value, TFRecordError)
    with pytest.raises(TileSchemaError, match=message):
        tile_from_features(parse_example(data))


def test_plain_layout_with_bad_slide_falls_back_to_the_schema_error():
    data = encode_tile(b"img", "x")[:-1] + b"\xff"  # the slide's one byte
    with pytest.raises(_NotPlain):
        _parse_tile_fast(data)
    with pytest.raises(TileSchemaError, match="'slide' is not UTF-8"):
        parse_tile(data)


def test_encode_tile_layout_and_errors():
    assert encode_tile(b"i", "s", 1, 2) == example(
        entry(b"image_raw", bytes_list(b"i")), entry(b"slide", bytes_list(b"s")),
        entry(b"loc_x", int64_list(packed_ints([1]))), entry(b"loc_y", int64_list(packed_ints([2]))))
    assert encode_tile(b"i", "s") == example(entry(b"image_raw", bytes_list(b"i")),
                                             entry(b"slide", bytes_list(b"s")))
    with pytest.raises(TypeError, match="slide"):
        encode_tile(b"i", b"s")
    with pytest.raises(ValueError, match="loc_x"):
        encode_tile(b"i", "s", 2**63)


# ------------------------------------------------------ non-plain encodings, modelled
@st.composite
def wire_example(draw, entry_unknowns=True):
    """A valid Example written in any legal way, with the value it must parse to:
    chunks packed or not, unknown fields, a replaced oneof member or map entry,
    lists, values and Features split over several fields, key and value swapped."""
    names = draw(st.lists(st.text(max_size=6), unique=True, max_size=5))
    expected = {}
    entries = []

    def unknowns(forbidden):
        out = b""
        for _ in range(draw(st.integers(0, 2))):
            field = draw(st.integers(1, 40).filter(lambda f: f not in forbidden))
            out += unknown(field, draw(st.sampled_from([0, 1, 2, 5])))
        return out

    def split(fields):
        """Cut a list of fields in one or two runs (a message given once or twice)."""
        k = draw(st.integers(0, len(fields))) if draw(st.booleans()) else len(fields)
        return [b"".join(fields[:k]), b"".join(fields[k:])] if k < len(fields) else [
            b"".join(fields)]

    def list_fields(kind, values):
        fields = [unknowns({1})]
        i = 0
        while i < len(values):
            j = draw(st.integers(i + 1, len(values)))
            chunk = values[i:j]
            if kind == 1:
                fields += [ld(1, v) for v in chunk]
            elif draw(st.booleans()):  # packed
                fields.append(ld(1, b"".join(varint(v) for v in chunk) if kind == 3
                                 else b"".join(chunk)))
            else:
                fields += [vi(1, v) if kind == 3 else fx32(1, v) for v in chunk]
            if kind != 1 and draw(st.booleans()):
                fields.append(ld(1, b""))  # an empty packed chunk adds nothing
            fields.append(unknowns({1}))
            i = j
        return fields

    for name in names:
        kind = draw(st.sampled_from([0, 1, 2, 3]))
        if kind == 0:
            values, exp = [], []
        elif kind == 1:
            values = draw(st.lists(st.binary(max_size=5), max_size=4))
            exp = list(values)
        elif kind == 2:
            bits = draw(st.lists(F32_BITS, max_size=4))
            values = [struct.pack("<I", b) for b in bits]
            exp = f32(bits)
        else:
            values = draw(st.lists(INT64, max_size=4))
            exp = i64(*values)
        feature = []
        if kind and draw(st.booleans()):  # an earlier oneof member of another kind
            feature.append(ld(draw(st.sampled_from([k for k in (1, 2, 3) if k != kind])), b""))
        feature.append(unknowns({1, 2, 3}))
        if kind:
            feature += [ld(kind, part) for part in split(list_fields(kind, values))]
        fields = [ld(2, part) for part in split(feature)]
        fields.insert(draw(st.integers(0, len(fields))), ld(1, name.encode()))  # key anywhere
        if entry_unknowns:
            fields.insert(draw(st.integers(0, len(fields))), unknowns({1, 2}))
        if draw(st.booleans()):  # an earlier entry with the same key, replaced
            entries.append(entry(name.encode(), bytes_list(b"stale")))
        entries.append(ld(1, b"".join(fields)))
        expected[name] = exp
    out = unknowns({1})
    for part in split(entries):  # Features given once or twice
        out += ld(1, unknowns({1}) + part) + unknowns({1})
    return out, expected


@given(wire_example())
def test_any_legal_encoding_parses_to_its_value(pair):
    data, expected = pair
    assert_parsed(parse_example(data), expected)
    check_total(data)


# ------------------------------------------------------------------ conformance
def _manifest():
    with open(os.path.join(VECTORS, "manifest.json"), encoding="utf-8") as f:
        return json.load(f)["vectors"]


def _expected(spec):
    out = {}
    for name, v in spec.items():
        if v["type"] == "bytes":
            out[name] = [bytes.fromhex(x) for x in v["value"]]
        elif v["type"] == "int64":
            out[name] = np.array([int(x) for x in v["value"]], dtype=np.int64)
        else:
            out[name] = f32([int(x, 16) for x in v["value"]])
    return out


def _vector_names():
    return [v["name"] for v in _manifest()]


@pytest.mark.parametrize("name", _vector_names())
def test_conformance_vector(name):
    vec = next(v for v in _manifest() if v["name"] == name)
    with open(os.path.join(VECTORS, vec["file"]), "rb") as f:
        data = f.read()
    if vec.get("error"):
        with pytest.raises(ExampleParseError):
            parse_example(data)
    else:
        assert_parsed(parse_example(data), _expected(vec["expected"]))
    check_total(data)


def test_vectors_cover_the_spec():
    names = set(_vector_names())
    assert len([n for n in names if not n.startswith("err_")]) >= 8
    assert {"tile_plain", "numbers_packed_unpacked", "int64_extremes", "unknown_fields",
            "empty_features", "merges", "float_specials", "tensorflow"} <= names


def test_make_vectors_reproduces_the_committed_files():
    spec = importlib.util.spec_from_file_location("make_vectors",
                                                  os.path.join(VECTORS, "make_vectors.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    manifest, files = mod.build(with_tf=False)
    with open(os.path.join(VECTORS, "manifest.json"), encoding="utf-8") as f:
        assert f.read() == mod.manifest_text(manifest)
    committed = {v["file"] for v in manifest["vectors"]}
    assert set(files) == committed - {"tensorflow.bin"}
    for fname, data in files.items():
        with open(os.path.join(VECTORS, fname), "rb") as f:
            assert f.read() == data, fname
    assert sorted(n for n in os.listdir(VECTORS) if n.endswith(".bin")) == sorted(committed)


# ------------------------------------------------------------------ TensorFlow interop
@pytest.fixture(scope="module")
def pb():
    """tf.train: Example, Features, Feature and the lists (TensorFlow, imported once)."""
    tf = pytest.importorskip("tensorflow")
    return tf.train


def from_pb(ex):
    out = {}
    for name, feat in ex.features.feature.items():
        kind = feat.WhichOneof("kind")
        if kind is None:
            out[name] = []
        elif kind == "bytes_list":
            out[name] = list(feat.bytes_list.value)
        elif kind == "int64_list":
            out[name] = np.array(feat.int64_list.value, dtype=np.int64)
        else:
            out[name] = np.array(feat.float_list.value, dtype=np.float32)
    return out


def to_pb(pb, features, no_list_when_empty=True):
    feats = {}
    for name, v in features.items():
        if isinstance(v, list) and not v and no_list_when_empty and len(name) % 2:
            feats[name] = pb.Feature()
        elif isinstance(v, list):
            feats[name] = pb.Feature(bytes_list=pb.BytesList(value=v))
        elif v.dtype == np.int64:
            feats[name] = pb.Feature(int64_list=pb.Int64List(value=v.tolist()))
        else:
            feats[name] = pb.Feature(float_list=pb.FloatList(value=v.tolist()))
    return pb.Example(features=pb.Features(feature=feats))


# quiet NaNs only: a signalling NaN passed through a Python float comes back quiet
TF_FLOATS = st.lists(st.one_of(st.floats(width=32, allow_nan=False),
                               st.sampled_from([0x7FC00000, 0xFFC00001]).map(lambda b: f32([b])[0])),
                     max_size=4).map(lambda v: np.array(v, dtype=np.float32))
TF_FEATURES = st.dictionaries(st.text(max_size=8), st.one_of(
    st.lists(st.binary(max_size=8), max_size=3), st.lists(INT64, max_size=4).map(lambda v: i64(*v)),
    TF_FLOATS), max_size=5)


@settings(max_examples=25)
@given(TF_FEATURES)
def test_tensorflow_reads_what_we_write(pb, features):
    data = encode_example(features)
    assert_parsed(from_pb(pb.Example.FromString(data)), features)
    # byte for byte what protobuf writes (one feature at a time: map order is free)
    for name, value in features.items():
        one = {name: value}
        assert encode_example(one) == to_pb(pb, one, no_list_when_empty=False).SerializeToString()


@settings(max_examples=25)
@given(TF_FEATURES)
def test_we_read_what_tensorflow_writes(pb, features):
    ex = to_pb(pb, features)
    assert_parsed(parse_example(ex.SerializeToString()), from_pb(ex))
    assert_parsed(from_pb(ex), features)


def test_tf_train_example_written_tile(pb):
    ex = pb.Example(features=pb.Features(feature={
        "slide": pb.Feature(bytes_list=pb.BytesList(value=[b"s-1"])),
        "image_raw": pb.Feature(bytes_list=pb.BytesList(value=[b"\x89PNG"])),
        "loc_x": pb.Feature(int64_list=pb.Int64List(value=[-5])),
        "loc_y": pb.Feature(int64_list=pb.Int64List(value=[2**40]))}))
    data = ex.SerializeToString()
    assert parse_tile(data) == Tile(b"\x89PNG", "s-1", -5, 2**40)
    assert _parse_tile_fast(data) == parse_tile(data)  # any feature order is still plain


def _entries_hold_unknown_fields(data):
    """Whether any map entry holds a field other than key/value: upb, the protobuf
    behind Python's tf.train.Example, then drops the whole entry (spec/example.md)."""
    def fields(buf):
        pos = 0
        while pos < len(buf):
            key, pos = _read_varint(buf, pos)
            if key & 7 == 2:
                n, pos = _read_varint(buf, pos)
                yield key >> 3, buf[pos:pos + n]
                pos += n
            elif key & 7 == 0:
                pos = _read_varint(buf, pos)[1]
                yield key >> 3, None
            else:
                pos += 8 if key & 7 == 1 else 4
                yield key >> 3, None
    for f1, feats in fields(data):
        if f1 == 1 and feats is not None:
            for f2, ent in fields(feats):
                if f2 == 1 and ent is not None:
                    if any(f3 not in (1, 2) for f3, _ in fields(ent)):
                        return True
    return False


def _read_varint(buf, pos):
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return result, pos


@settings(max_examples=50)
@given(wire_example(entry_unknowns=False))
def test_protobuf_agrees_on_legal_non_plain_encodings(pb, pair):
    data, expected = pair
    assert_parsed(from_pb(pb.Example.FromString(data)), expected)


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(mutated(), wire_example().map(lambda p: p[0])))
def test_protobuf_agrees_wherever_we_accept(pb, data):
    from google.protobuf.message import DecodeError
    ours, err = _parse_outcome(data)
    try:
        theirs = from_pb(pb.Example.FromString(data))
    except DecodeError:
        theirs = None
    if theirs is None:  # protobuf rejects: so do we
        assert err is not None
    elif ours is not None:
        assume(not _entries_hold_unknown_fields(data))
        assert_parsed(ours, theirs)
