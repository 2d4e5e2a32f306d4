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
message field given twice is merged, a later map entry with the same key
replaces the earlier one, a later oneof member of another kind replaces the
earlier one, unknown fields are skipped.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple

import numpy as np

from .errors import ExampleParseError, TileSchemaError

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_WIRE_NAMES = {_VARINT: "varint", _I64: "64-bit", _LEN: "length-delimited", _I32: "32-bit"}
_BYTES, _FLOAT, _INT64 = 1, 2, 3  # Feature oneof field numbers
KINDS = {_BYTES: "bytes_list", _FLOAT: "float_list", _INT64: "int64_list"}
MAX_FIELD = (1 << 29) - 1  # the largest field number protobuf allows


# ----------------------------------------------------------------- wire reading
def _varint(buf, pos: int, end: int):
    """Decode a base-128 varint at ``pos``; return (value, new position).

    At most 10 bytes, and the value must fit in 64 bits (spec/example.md,
    "Wire format").
    """
    start = pos
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise ExampleParseError(f"truncated varint at byte {start}")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            if result >> 64:
                raise ExampleParseError(f"varint at byte {start} does not fit in 64 bits")
            return result, pos
        shift += 7
        if shift > 63:
            raise ExampleParseError(f"varint at byte {start} is longer than 10 bytes")


def _fields(buf, pos: int, end: int):
    """Yield (field number, wire type, value, tag position) for each field in buf[pos:end].

    value is an int for varint fields, a (start, stop) pair for
    length-delimited fields, and the raw bytes for fixed 32/64-bit fields.
    """
    while pos < end:
        at = pos
        key, pos = _varint(buf, pos, end)
        if pos - at > 5 or key >> 32:
            raise ExampleParseError(f"field tag at byte {at} is longer than 32 bits")
        field, wire = key >> 3, key & 7
        if field == 0:
            raise ExampleParseError(f"field number 0 at byte {at}")
        if field > MAX_FIELD:
            raise ExampleParseError(f"field number {field} at byte {at} is above {MAX_FIELD}")
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
        elif wire == _LEN:
            n, pos = _varint(buf, pos, end)
            if n > end - pos:
                raise ExampleParseError(f"length-delimited field {field} at byte {at} is "
                                        f"{n} bytes long but its message has {end - pos} "
                                        "bytes left")
            value = (pos, pos + n)
            pos += n
        elif wire == _I64:
            if pos + 8 > end:
                raise ExampleParseError(f"truncated 64-bit field {field} at byte {at}")
            value = buf[pos:pos + 8]
            pos += 8
        elif wire == _I32:
            if pos + 4 > end:
                raise ExampleParseError(f"truncated 32-bit field {field} at byte {at}")
            value = buf[pos:pos + 4]
            pos += 4
        else:
            what = "group" if wire in (3, 4) else "unknown"
            raise ExampleParseError(f"field {field} at byte {at} has wire type {wire} "
                                    f"({what}; not allowed in a tf.train.Example)")
        yield field, wire, value, at


def _wrong_wire(what: str, wire: int, at: int, expected: str) -> ExampleParseError:
    return ExampleParseError(f"{what} at byte {at} has wire type {wire} "
                             f"({_WIRE_NAMES.get(wire, wire)}), expected {expected}")


def _to_int64(u: int) -> int:
    return u - (1 << 64) if u >= 1 << 63 else u


def _parse_list(buf, start: int, end: int, kind: int, chunks: list):
    """Append the values of a BytesList/FloatList/Int64List message to ``chunks``."""
    for field, wire, value, at in _fields(buf, start, end):
        if field != 1:
            continue  # unknown field
        if kind == _BYTES:
            if wire != _LEN:
                raise _wrong_wire("bytes_list value", wire, at,
                                  "2 (length-delimited)")
            chunks.append(bytes(buf[value[0]:value[1]]))
        elif kind == _FLOAT:
            if wire == _LEN:
                s, e = value
                if (e - s) % 4:
                    raise ExampleParseError(f"packed float_list at byte {at} has {e - s} "
                                            "bytes, not a multiple of 4")
                chunks.append(np.frombuffer(buf, dtype="<f4", count=(e - s) // 4, offset=s))
            elif wire == _I32:
                chunks.append(np.frombuffer(value, dtype="<f4"))
            else:
                raise _wrong_wire("float_list value", wire, at,
                                  "2 (packed) or 5 (32-bit)")
        else:
            if wire == _LEN:
                s, e = value
                vals = []
                try:
                    while s < e:
                        v, s = _varint(buf, s, e)
                        vals.append(_to_int64(v))
                except ExampleParseError as err:
                    raise ExampleParseError(f"packed int64_list at byte {at}: "
                                            f"{err.reason}") from None
                chunks.append(np.array(vals, dtype=np.int64))
            elif wire == _VARINT:
                chunks.append(np.array([_to_int64(value)], dtype=np.int64))
            else:
                raise _wrong_wire("int64_list value", wire, at,
                                  "2 (packed) or 0 (varint)")


def _finish(kind, chunks):
    if kind is None:
        return []
    if kind == _BYTES:
        return chunks
    dtype = np.float32 if kind == _FLOAT else np.int64
    if not chunks:
        return np.zeros(0, dtype=dtype)
    return np.concatenate(chunks).astype(dtype, copy=True)


def _parse_feature(buf, ranges):
    """Parse the Feature message made of the byte ranges ``ranges`` (one per
    occurrence of the map entry's value field; protobuf merges them)."""
    kind = None
    chunks: list = []
    for start, end in ranges:
        for field, wire, value, at in _fields(buf, start, end):
            if field not in KINDS:
                continue
            if wire != _LEN:
                raise _wrong_wire(f"Feature.{KINDS[field]}", wire, at,
                                  "2 (length-delimited)")
            if field != kind:  # a different oneof member replaces the previous one
                kind, chunks = field, []
            _parse_list(buf, value[0], value[1], kind, chunks)
    return _finish(kind, chunks)


def _as_buffer(data):
    if isinstance(data, bytes):
        return data
    try:
        return memoryview(data).cast("B")
    except TypeError:
        raise TypeError(f"expected a bytes-like object, got {type(data).__name__}") from None


def parse_example(data) -> dict:
    """Parse a serialized tf.train.Example into ``{name: value}`` (spec/example.md,
    "Parsing").

    Values are ``list[bytes]`` (bytes_list, or a Feature with no list set),
    int64 arrays (int64_list) and float32 arrays (float_list). Raises
    :class:`ExampleParseError` (a :class:`TFRecordError`) on malformed input;
    no other exception escapes for any bytes-like input.
    """
    buf = _as_buffer(data)
    out: dict = {}
    try:
        for field, wire, value, at in _fields(buf, 0, len(buf)):
            if field != 1:
                continue
            if wire != _LEN:
                raise _wrong_wire("Example.features", wire, at, "2 (length-delimited)")
            for f2, w2, v2, at2 in _fields(buf, value[0], value[1]):
                if f2 != 1:
                    continue
                if w2 != _LEN:
                    raise _wrong_wire("Features.feature map entry", w2, at2,
                                      "2 (length-delimited)")
                name = ""
                ranges = []
                for f3, w3, v3, at3 in _fields(buf, v2[0], v2[1]):
                    if f3 == 1:
                        if w3 != _LEN:
                            raise _wrong_wire("feature key", w3, at3, "2 (length-delimited)")
                        raw = bytes(buf[v3[0]:v3[1]])
                        try:
                            name = raw.decode("utf-8")  # a repeated key field: the last wins
                        except UnicodeDecodeError:
                            raise ExampleParseError(f"feature key at byte {at3} is not "
                                                    f"UTF-8: {raw[:40]!r}") from None
                    elif f3 == 2:
                        if w3 != _LEN:
                            raise _wrong_wire("feature value", w3, at3, "2 (length-delimited)")
                        ranges.append(v3)
                try:
                    out[name] = _parse_feature(buf, ranges)
                except ExampleParseError as e:
                    raise ExampleParseError(f"feature {name!r}: {e.reason}") from None
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


_BYTES_LIKE = (bytes, bytearray, memoryview, str)


def _utf8(name, s: str, what: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"feature {name!r}: {what} {s[:40]!r} cannot be encoded as UTF-8 "
                         f"({e.reason})") from None


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_number(v) -> bool:
    return _is_int(v) or isinstance(v, (float, np.floating))


def _classify(name, value):
    """Return (kind, normalized values) for one feature value given to the encoder
    (spec/example.md, "Encoding")."""
    if isinstance(value, _BYTES_LIKE):
        value = [value]
    elif isinstance(value, (bool, np.bool_)):
        raise TypeError(f"feature {name!r}: booleans are not a tf.train.Example type")
    elif _is_number(value):
        value = [value]
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iu":
            if value.dtype.kind == "u" and value.size and value.max() >= 1 << 63:
                raise ValueError(f"feature {name!r}: {value.max()} is outside the int64 range")
            return _INT64, value.astype(np.int64).ravel()
        if value.dtype.kind == "f":
            with np.errstate(over="ignore"):  # beyond float32's range: +-inf
                return _FLOAT, value.astype(np.float32).ravel()
        if value.dtype.kind in "SUO":
            value = list(value.ravel())
        else:
            raise TypeError(f"feature {name!r}: arrays of dtype {value.dtype} are not supported")
    if isinstance(value, (list, tuple)):
        if all(isinstance(v, _BYTES_LIKE) for v in value):
            return _BYTES, [_utf8(name, v, "value") if isinstance(v, str) else bytes(v)
                            for v in value]
        if all(_is_int(v) for v in value):
            for v in value:
                if not -(1 << 63) <= int(v) < 1 << 63:
                    raise ValueError(f"feature {name!r}: {v} is outside the int64 range")
            return _INT64, np.array([int(v) for v in value], dtype=np.int64)
        if all(_is_number(v) for v in value):
            try:
                with np.errstate(over="ignore"):
                    return _FLOAT, np.array(value, dtype=np.float32).reshape(-1)
            except OverflowError:  # an int too large for a float64
                raise ValueError(f"feature {name!r}: an integer in the float list is too "
                                 "large for a float") from None
    raise TypeError(f"feature {name!r}: cannot encode value of type {type(value).__name__} "
                    "(expected bytes/str, int or float, a list of them, or a numeric array)")


def encode_feature(name, value) -> bytes:
    """Serialize one Feature message (spec/example.md, "Encoding"); ``name`` is
    used in error messages only."""
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
    integer array -> int64_list; float, a list of numbers with a float among
    them or a float array -> float_list (rounded to float32). An empty list
    encodes as an empty bytes_list, an empty numeric array as an empty list of
    its kind. Numbers are written packed, as TensorFlow does; features in the
    mapping's order. Raises TypeError or ValueError, naming the feature, for a
    value it cannot encode.
    """
    feats = bytearray()
    for name, value in features.items():
        if not isinstance(name, str):
            raise TypeError(f"feature names must be str, got {name!r}")
        entry = bytearray()
        _put_len(entry, 1, _utf8(name, name, "the name"))
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


def _kind_of(v) -> str:
    if isinstance(v, list):
        return "bytes_list" if v else "empty Feature"
    return "int64_list" if v.dtype == np.int64 else "float_list"


def tile_from_features(features: Mapping) -> Tile:
    """Check a parsed Example against the tile schema and return it as a :class:`Tile`
    (spec/example.md, "Tile schema"). Raises :class:`TileSchemaError` naming the
    feature when one is missing, of the wrong kind, or not exactly one value."""
    def one(name, kind, required):
        v = features.get(name)
        if v is None:
            if required:
                raise TileSchemaError(f"tile record has no {name!r} feature "
                                      f"(features present: {sorted(features)})")
            return None
        got = _kind_of(v)
        if got != kind and not (got == "empty Feature" and kind == "bytes_list"):
            article = "an" if got[0] in "aeiou" else "a"
            raise TileSchemaError(f"tile feature {name!r} is {article} {got}, expected "
                                  f"{kind} with one value")
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
    """Parse a tile record (spec/example.md, "Tile schema" and "The fast path").

    A direct scan handles the plain layout TensorFlow and slideflow write
    without building the generic structures; any other layout falls back to
    :func:`parse_example`, so the result (or the error) always equals that of
    ``tile_from_features(parse_example(data))``.
    """
    if type(data) is bytes:  # the common case, without _parse_tile_fast's conversion
        try:
            return _scan_plain_tile(data)
        except (_NotPlain, IndexError):  # ran off the end too: not plain
            return tile_from_features(parse_example(data))
    try:
        return _parse_tile_fast(data)
    except _NotPlain:
        return tile_from_features(parse_example(data))


class _NotPlain(Exception):
    pass


_SLOTS = {b"image_raw": 0, b"slide": 1, b"loc_x": 2, b"loc_y": 3}


def _parse_tile_fast(buf) -> Tile:
    if not isinstance(buf, bytes):
        buf = bytes(_as_buffer(buf))
    try:
        return _scan_plain_tile(buf)
    except IndexError:  # ran off the end: not plain (the generic path says why)
        raise _NotPlain from None


_ENTRIES: dict = {}  # the bytes of a small map entry -> (slot, value): _scan_entry's reading
_ENTRIES_MAX = 4096  # entries kept at most (then forgotten at once): about 1 MiB at most


def _scan_plain_tile(buf: bytes) -> Tile:
    # Plain layout, every length exact:
    #   0a L { 0a L { 0a L key  12 L { tag L { 0a L value } } } }*
    # with tag 0a (bytes_list, one value) for image_raw/slide and 1a (int64_list,
    # one packed value) for loc_x/loc_y; each key at most once, in any order.
    # Each map entry is read by _scan_entry from its own bytes alone, so the reading of
    # a small one (the slide, a location: under 130 bytes) is kept by its bytes, and the
    # same entry in a later record (the slide of every record of a file, the locations
    # of a grid) is one dict lookup.
    n = len(buf)
    if buf[0] != 0x0A:
        raise _NotPlain
    size, pos = _fast_varint(buf, 1, n)
    if pos + size != n:
        raise _NotPlain
    vals: list = [None, None, None, None]
    entries = _ENTRIES
    while pos < n:
        if buf[pos] != 0x0A:
            raise _NotPlain
        size = buf[pos + 1]
        if size < 0x80:
            end = pos + 2 + size
            if end > n:
                raise _NotPlain
            raw = buf[pos:end]
            got = entries.get(raw)
            if got is None:
                got = _scan_entry(buf, pos + 2, end)
                if len(entries) >= _ENTRIES_MAX:
                    entries.clear()
                entries[raw] = got
        else:
            size, p = _fast_varint(buf, pos + 1, n)
            end = p + size
            if end > n:
                raise _NotPlain
            got = _scan_entry(buf, p, end)
        slot, value = got
        if vals[slot] is not None:
            raise _NotPlain
        vals[slot] = value
        pos = end
    image, slide, x, y = vals
    if image is None or slide is None:
        raise _NotPlain
    return Tile(image, slide, x, y)


def _scan_entry(buf: bytes, p: int, end: int):
    """``(slot, value)`` of the map entry whose fields are ``buf[p:end]``, in the plain
    layout (see :func:`_scan_plain_tile`): the slot of its key in :data:`_SLOTS`, and the
    image bytes, the slide name (str) or the location (int); else :class:`_NotPlain`.
    Nothing outside ``buf[p:end]`` is read, so the result is a function of those bytes."""
    if p + 2 > end or buf[p] != 0x0A:
        raise _NotPlain
    size, p = _fast_varint(buf, p + 1, end)   # the key
    q = p + size
    if q + 2 > end:
        raise _NotPlain
    slot = _SLOTS.get(buf[p:q])
    if slot is None or buf[q] != 0x12:
        raise _NotPlain
    size, p = _fast_varint(buf, q + 1, end)   # the Feature: the rest of the entry
    if p + size != end or p + 2 > end:
        raise _NotPlain
    kind = buf[p]
    size, p = _fast_varint(buf, p + 1, end)   # the list: the rest of the Feature
    if p + size != end or p >= end or buf[p] != 0x0A:
        raise _NotPlain
    size, p = _fast_varint(buf, p + 1, end)   # the value (or packed chunk): the rest
    if p + size != end:
        raise _NotPlain
    if slot <= 1:
        if kind != 0x0A:
            raise _NotPlain
        if slot == 0:
            return 0, buf[p:end]
        try:
            return 1, buf[p:end].decode("utf-8")
        except UnicodeDecodeError:
            raise _NotPlain from None
    v, p = _fast_varint(buf, p, end)
    if kind != 0x1A or p != end or v >> 64:
        raise _NotPlain
    return slot, v - (1 << 64) if v >> 63 else v


def _fast_varint(buf: bytes, pos: int, end: int):
    """A varint of at most 10 bytes ending before ``end``; anything else is not plain."""
    if pos + 3 <= end:  # one to three bytes (lengths below 2 MiB), unrolled
        b = buf[pos]
        if b < 0x80:
            return b, pos + 1
        c = buf[pos + 1]
        if c < 0x80:
            return (b & 0x7F) | (c << 7), pos + 2
        d = buf[pos + 2]
        if d < 0x80:
            return (b & 0x7F) | ((c & 0x7F) << 7) | (d << 14), pos + 3
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


def scan_tile_slide(read, length: int, window: int = 256):
    """The ``slide`` of a tile record of ``length`` payload bytes, reading only the
    parts of the payload that locate it, or None when the payload is not in the plain
    layout (the caller then parses the whole payload: spec/dataset.md, "Labels").

    ``read(pos, n)`` returns up to n payload bytes from ``pos``. Map entries are
    walked by their length prefixes: an entry whose key is not ``slide`` (the
    image) is skipped without being read; the ``slide`` entry is parsed as
    :func:`parse_tile` parses it (the last one wins, as protobuf merges), so the
    name equals ``parse_tile(payload).slide`` whenever both succeed. About 2
    reads of ``window`` bytes per record: the features header with the image
    entry's, then the rest.
    """
    buf, at = b"", 0

    def get(pos, n):
        nonlocal buf, at
        if pos < at or pos + n > at + len(buf):
            buf, at = read(pos, max(n, window)), pos
        return buf[pos - at:pos - at + n]

    def varint(pos):
        b = get(pos, 10)
        try:
            v, q = _fast_varint(b, 0, len(b))
        except _NotPlain:
            return None, None
        return v, pos + q

    head = get(0, 1)
    if head != b"\x0a":
        return None
    size, pos = varint(1)
    if size is None or pos + size != length:
        return None
    slide = None
    while pos < length:
        if get(pos, 1) != b"\x0a":
            return None
        size, p = varint(pos + 1)
        if size is None:
            return None
        end = p + size
        if end > length or get(p, 1) != b"\x0a":
            return None
        klen, k = varint(p + 1)
        if klen is None or klen > 64:
            return None
        if get(k, klen) == b"slide":
            if end - pos > (1 << 20):
                return None
            entry = get(pos, end - pos)
            try:
                feats = parse_example(bytes((0x0A,)) + _varint_bytes(len(entry)) + entry)
                slide = tile_from_features({"image_raw": [b""], "slide": feats["slide"]}).slide
            except (TileSchemaError, ExampleParseError, KeyError):
                return None
        pos = end
    return slide


def _varint_bytes(v: int) -> bytes:
    out = bytearray()
    _put_varint(out, v)
    return bytes(out)


def encode_tile(image_raw: bytes, slide: str, loc_x: int | None = None,
                loc_y: int | None = None) -> bytes:
    """Serialize a tile record (spec/example.md, "Tile schema"): image_raw, slide,
    then loc_x and loc_y when given."""
    if not isinstance(slide, str):
        raise TypeError(f"tile feature 'slide' must be a str, got {type(slide).__name__}")
    feats = {"image_raw": [bytes(image_raw)], "slide": [slide]}
    if loc_x is not None:
        feats["loc_x"] = [int(loc_x)]
    if loc_y is not None:
        feats["loc_y"] = [int(loc_y)]
    return encode_example(feats)


__all__ = ["parse_example", "encode_example", "encode_feature", "parse_tile", "encode_tile",
           "tile_from_features", "Tile", "TILE_FEATURES", "scan_tile_slide"]
