"""tf.train.Example codec, by hand from the protobuf wire format (spec/example.md).

Messages involved (field numbers in brackets)::

    Example   { Features features [1] }
    Features  { map<string, Feature> feature [1] }   # entries: key [1], value [2]
    Feature   { oneof: BytesList bytes_list [1] | FloatList float_list [2]
                       | Int64List int64_list [3] }
    BytesList { repeated bytes value [1] }
    FloatList { repeated float value [1] }           # packed or unpacked
    Int64List { repeated int64 value [1] }           # packed or unpacked

Parsed values: ``list[bytes]`` for bytes_list, ``np.ndarray`` int64 for
int64_list, ``np.ndarray`` float32 for float_list, and ``[]`` for a Feature
with no list set. Protobuf merge rules apply: repeated chunks concatenate, a
later map entry with the same key replaces the earlier one, a later oneof
member of another kind replaces the earlier one, unknown fields are skipped.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from .errors import ExampleParseError, TileSchemaError

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_BYTES, _FLOAT, _INT64 = 1, 2, 3  # Feature oneof field numbers
KINDS = {_BYTES: "bytes_list", _FLOAT: "float_list", _INT64: "int64_list"}


# ----------------------------------------------------------------- wire reading
def _varint(buf, pos: int, end: int):
    """Decode a base-128 varint at ``pos``; return (value, new position)."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ExampleParseError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if shift >= 63 and result >> 64:
                raise ExampleParseError("varint does not fit in 64 bits")
            return result, pos
        shift += 7
        if shift > 63:
            raise ExampleParseError("varint longer than 10 bytes")


def _fields(buf, pos: int, end: int):
    """Yield (field number, wire type, value) for each field in buf[pos:end].

    value is an int for varint/fixed fields and a (start, stop) pair for
    length-delimited fields.
    """
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ExampleParseError("field number 0 is invalid")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == _LEN:
            n, pos = _varint(buf, pos, end)
            if n > end - pos:
                raise ExampleParseError(f"length-delimited field {field} of {n} bytes runs "
                                        f"past its message ({end - pos} bytes left)")
            value = (pos, pos + n)
            pos += n
        elif wire == _I64:
            if pos + 8 > end:
                raise ExampleParseError("truncated fixed64 field")
            value = buf[pos:pos + 8]
            pos += 8
        elif wire == _I32:
            if pos + 4 > end:
                raise ExampleParseError("truncated fixed32 field")
            value = buf[pos:pos + 4]
            pos += 4
        else:
            raise ExampleParseError(f"unsupported wire type {wire} for field {field}")
        yield field, wire, value
    if pos != end:  # pragma: no cover - _fields consumes exactly
        raise ExampleParseError("message overruns its length")


def _to_int64(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def _parse_list(buf, start: int, end: int, kind: int, chunks: list):
    """Append the values of a BytesList/FloatList/Int64List message to ``chunks``."""
    for field, wire, value in _fields(buf, start, end):
        if field != 1:
            continue  # unknown field
        if kind == _BYTES:
            if wire != _LEN:
                raise ExampleParseError(f"bytes_list value has wire type {wire}")
            chunks.append(bytes(buf[value[0]:value[1]]))
        elif kind == _FLOAT:
            if wire == _LEN:
                s, e = value
                if (e - s) % 4:
                    raise ExampleParseError(f"packed float_list of {e - s} bytes is not a "
                                            "multiple of 4")
                chunks.append(np.frombuffer(buf, dtype="<f4", count=(e - s) // 4, offset=s))
            elif wire == _I32:
                chunks.append(np.frombuffer(value, dtype="<f4"))
            else:
                raise ExampleParseError(f"float_list value has wire type {wire}")
        else:
            if wire == _LEN:
                s, e = value
                vals = []
                while s < e:
                    v, s = _varint(buf, s, e)
                    vals.append(_to_int64(v))
                chunks.append(np.array(vals, dtype=np.int64))
            elif wire == _VARINT:
                chunks.append(np.array([_to_int64(value)], dtype=np.int64))
            else:
                raise ExampleParseError(f"int64_list value has wire type {wire}")


def _finish(kind, chunks):
    if kind is None:
        return []
    if kind == _BYTES:
        return chunks
    dtype = np.float32 if kind == _FLOAT else np.int64
    if not chunks:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(chunks).astype(dtype, copy=True)


def _parse_feature(buf, start, end):
    kind = None
    chunks: list = []
    for field, wire, value in _fields(buf, start, end):
        if field not in KINDS:
            continue
        if wire != _LEN:
            raise ExampleParseError(f"Feature.{KINDS[field]} has wire type {wire}")
        if field != kind:  # a different oneof member replaces the previous one
            kind, chunks = field, []
        _parse_list(buf, value[0], value[1], kind, chunks)
    return _finish(kind, chunks)


def parse_example(data) -> dict:
    """Parse a serialized tf.train.Example into ``{name: value}`` (spec/example.md).

    Raises :class:`ExampleParseError` (a :class:`TFRecordError`) on malformed
    input; no other exception escapes for any byte string.
    """
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    out: dict = {}
    try:
        for field, wire, value in _fields(buf, 0, len(buf)):
            if field != 1:
                continue
            if wire != _LEN:
                raise ExampleParseError(f"Example.features has wire type {wire}")
            for f2, w2, v2 in _fields(buf, value[0], value[1]):
                if f2 != 1:
                    continue
                if w2 != _LEN:
                    raise ExampleParseError(f"Features.feature has wire type {w2}")
                name = None
                fstart = fend = None
                for f3, w3, v3 in _fields(buf, v2[0], v2[1]):
                    if f3 == 1:
                        if w3 != _LEN:
                            raise ExampleParseError(f"feature key has wire type {w3}")
                        try:
                            name = bytes(buf[v3[0]:v3[1]]).decode("utf-8")
                        except UnicodeDecodeError as e:
                            raise ExampleParseError(f"feature key is not UTF-8: {e}") from None
                    elif f3 == 2:
                        if w3 != _LEN:
                            raise ExampleParseError(f"feature value has wire type {w3}")
                        fstart, fend = v3  # a repeated value field: the last one wins
                name = "" if name is None else name
                out[name] = [] if fstart is None else _parse_feature(buf, fstart, fend)
    except ExampleParseError as e:
        raise ExampleParseError(f"not a valid tf.train.Example: {e.reason}") from None
    return out


# ----------------------------------------------------------------- wire writing
def _put_varint(out: bytearray, v: int):
    v &= (1 << 64) - 1
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _put_len(out: bytearray, field: int, payload) -> None:
    _put_varint(out, (field << 3) | _LEN)
    _put_varint(out, len(payload))
    out += payload


def _classify(name, value):
    """Return (kind, normalized values) for one feature value given to the encoder."""
    if isinstance(value, (bytes, bytearray, memoryview, str)):
        value = [value]
    elif isinstance(value, (bool, np.bool_)):
        raise TypeError(f"feature {name!r}: booleans are not a tf.train.Example type")
    elif isinstance(value, (int, np.integer)):
        value = np.array([value], dtype=np.int64)
    elif isinstance(value, (float, np.floating)):
        value = np.array([value], dtype=np.float32)
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iu":
            if value.dtype.kind == "u" and value.size and value.max() >= 1 << 63:
                raise ValueError(f"feature {name!r}: value above int64 range")
            return _INT64, value.astype(np.int64).ravel()
        if value.dtype.kind == "f":
            return _FLOAT, value.astype(np.float32).ravel()
        if value.dtype.kind in "SO":
            value = list(value.ravel())
        else:
            raise TypeError(f"feature {name!r}: arrays of dtype {value.dtype} are not supported")
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, (bytes, bytearray, memoryview, str)) for v in value):
            return _BYTES, [v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in value]
        if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))
               for v in value):
            for v in value:
                if not -(1 << 63) <= int(v) < 1 << 63:
                    raise ValueError(f"feature {name!r}: {v} is outside the int64 range")
            return _INT64, np.array(value, dtype=np.int64)
        if all(isinstance(v, (int, float, np.integer, np.floating))
               and not isinstance(v, (bool, np.bool_)) for v in value):
            return _FLOAT, np.array(value, dtype=np.float32)
    raise TypeError(f"feature {name!r}: cannot encode value of type {type(value).__name__} "
                    "(expected bytes/str, int or float, a list of them, or a numeric array)")


def encode_feature(name, value) -> bytes:
    """Serialize one Feature message (spec/example.md, "Encoding")."""
    kind, vals = _classify(name, value)
    lst = bytearray()
    if kind == _BYTES:
        for v in vals:
            _put_len(lst, 1, v)
    elif kind == _FLOAT:
        if len(vals):
            _put_len(lst, 1, vals.astype("<f4").tobytes())
    else:
        if len(vals):
            packed = bytearray()
            for v in vals.tolist():
                _put_varint(packed, v)
            _put_len(lst, 1, packed)
    feat = bytearray()
    _put_len(feat, kind, lst)
    return bytes(feat)


def encode_example(features: Mapping) -> bytes:
    """Serialize ``{name: value}`` as a tf.train.Example (spec/example.md, "Encoding").

    Values: bytes/str or a list of them -> bytes_list; int, a list of ints or an
    integer array -> int64_list; float, a list of floats or a float array ->
    float_list. An empty list encodes as an empty bytes_list, an empty numeric
    array as an empty list of its kind. Numbers are written packed, as
    TensorFlow does; features in the mapping's order.
    """
    feats = bytearray()
    for name, value in features.items():
        if not isinstance(name, str):
            raise TypeError(f"feature names must be str, got {name!r}")
        entry = bytearray()
        _put_len(entry, 1, name.encode("utf-8"))
        _put_len(entry, 2, encode_feature(name, value))
        _put_len(feats, 1, entry)
    out = bytearray()
    _put_len(out, 1, feats)
    return bytes(out)


# ----------------------------------------------------------------- tile schema
class Tile(NamedTuple):
    """One tile record (spec/example.md, "Tile schema")."""

    image_raw: bytes
    slide: str
    loc_x: int | None
    loc_y: int | None


TILE_FEATURES = {"image_raw": "bytes_list", "slide": "bytes_list",
                 "loc_x": "int64_list", "loc_y": "int64_list"}


def tile_from_features(features: Mapping) -> Tile:
    """Check a parsed Example against the tile schema and return it as a :class:`Tile`."""
    def one(name, kind, required):
        v = features.get(name)
        if v is None:
            if required:
                raise TileSchemaError(f"tile record has no {name!r} feature "
                                      f"(features present: {sorted(features)})")
            return None
        got = ("bytes_list" if isinstance(v, list) else
               "int64_list" if v.dtype == np.int64 else "float_list")
        if isinstance(v, list) and not v and kind != "bytes_list":
            got = "empty"
        if got != kind:
            raise TileSchemaError(f"tile feature {name!r} is a {got}, expected {kind}")
        if len(v) != 1:
            raise TileSchemaError(f"tile feature {name!r} has {len(v)} values, expected 1")
        return v[0]

    image = one("image_raw", "bytes_list", True)
    slide = one("slide", "bytes_list", True)
    try:
        slide = slide.decode("utf-8")
    except UnicodeDecodeError:
        raise TileSchemaError(f"tile feature 'slide' is not UTF-8: {slide[:40]!r}") from None
    x = one("loc_x", "int64_list", False)
    y = one("loc_y", "int64_list", False)
    return Tile(image, slide, None if x is None else int(x), None if y is None else int(y))


def parse_tile(data) -> Tile:
    """Parse a tile record without building the generic structures (spec/example.md,
    "Tile schema"). Falls back to :func:`parse_example` for any layout other than
    the plain one TensorFlow and slideflow write, so the result always equals
    ``tile_from_features(parse_example(data))``.
    """
    try:
        return _parse_tile_fast(data)
    except _NotPlain:
        return tile_from_features(parse_example(data))


class _NotPlain(Exception):
    pass


_SMALL = {b"slide": 1, b"image_raw": 0, b"loc_x": 2, b"loc_y": 3}


def _parse_tile_fast(buf) -> Tile:
    # Plain layout: 0x0a L (0x0a L (0x0a L key) (0x12 L (tag L (0x0a/packed ...))))*
    if not isinstance(buf, bytes):
        buf = bytes(buf)
    n = len(buf)
    if n < 2 or buf[0] != 0x0A:
        raise _NotPlain
    pos = 1
    ln, pos = _fast_varint(buf, pos, n)
    if pos + ln != n:
        raise _NotPlain
    vals: list = [None, None, None, None]
    while pos < n:
        if buf[pos] != 0x0A:
            raise _NotPlain
        elen, pos = _fast_varint(buf, pos + 1, n)
        eend = pos + elen
        if eend > n or buf[pos] != 0x0A:
            raise _NotPlain
        klen, p = _fast_varint(buf, pos + 1, eend)
        key = buf[p:p + klen]
        p += klen
        slot = _SMALL.get(key)
        if slot is None or vals[slot] is not None or p >= eend or buf[p] != 0x12:
            raise _NotPlain
        flen, p = _fast_varint(buf, p + 1, eend)
        if p + flen != eend or p >= eend:
            raise _NotPlain
        kind = buf[p]
        llen, p = _fast_varint(buf, p + 1, eend)
        if p + llen != eend:
            raise _NotPlain
        if slot <= 1:
            if kind != 0x0A or p >= eend or buf[p] != 0x0A:
                raise _NotPlain
            vlen, q = _fast_varint(buf, p + 1, eend)
            if q + vlen != eend:
                raise _NotPlain
            vals[slot] = buf[q:eend]
        else:
            if kind != 0x1A or p >= eend or buf[p] != 0x0A:
                raise _NotPlain
            vlen, q = _fast_varint(buf, p + 1, eend)
            if q + vlen != eend:
                raise _NotPlain
            v, q = _fast_varint(buf, q, eend)
            if q != eend:
                raise _NotPlain
            vals[slot] = _to_int64(v)
        pos = eend
    image, slide, x, y = vals
    if image is None or slide is None:
        raise _NotPlain
    try:
        slide = slide.decode("utf-8")
    except UnicodeDecodeError:
        raise _NotPlain from None
    return Tile(image, slide, x, y)


def _fast_varint(buf: bytes, pos: int, end: int):
    result = 0
    shift = 0
    while pos < end and shift < 70:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
    raise _NotPlain


def encode_tile(image_raw: bytes, slide: str, loc_x: int | None = None,
                loc_y: int | None = None) -> bytes:
    """Serialize a tile record (spec/example.md, "Tile schema")."""
    feats = {"image_raw": [bytes(image_raw)], "slide": [slide.encode("utf-8")]}
    if loc_x is not None:
        feats["loc_x"] = [int(loc_x)]
    if loc_y is not None:
        feats["loc_y"] = [int(loc_y)]
    return encode_example(feats)


__all__ = ["parse_example", "encode_example", "encode_feature", "parse_tile", "encode_tile",
           "tile_from_features", "Tile", "TILE_FEATURES"]
