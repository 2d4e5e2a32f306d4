"""Index files: byte offsets and tile locations of every record (spec/index.md).

Format (slideflow-compatible): ``<stem>.index.npz`` beside ``<stem>.tfrecords``
holding ``arr_0``, int64 ``[[offset, length], ...]`` where ``length`` is the
full framed size (payload + 16), and ``locations``, int64 ``[[x, y], ...]``
(absent when records carry no loc_x/loc_y). Legacy ``<stem>.index`` (text, one
``offset length`` pair per line) and ``<stem>.index.npy`` (the ``arr_0`` array)
are read too. An index is validated against its file before use; a missing
index is built, an invalid one is rebuilt with a warning, never trusted.
"""

from __future__ import annotations

import os
import warnings
from array import array

import numpy as np

from .errors import IndexFileError, TFRecordError
from .example import parse_example, parse_tile
from .records import (FRAMING_BYTES, MAX_RECORD_BYTES, atomic_write, check_max_record_bytes,
                      is_gzip_file, read_header, scan_frames)

INDEX_SUFFIXES = (".index.npz", ".index.npy", ".index")


class IndexRebuildWarning(UserWarning):
    """An existing index file did not match its TFRecord and was rebuilt."""


def index_stem(path) -> str:
    """``folder/name.tfrecords`` -> ``folder/name`` (the prefix of its index files).

    spec/index.md, "Format".
    """
    path = os.fspath(path)
    root, ext = os.path.splitext(path)
    return root if ext in (".tfrecords", ".tfrecord") else path


def index_path(path) -> str:
    """Where :func:`build_index` writes the index of TFRecord ``path`` (spec/index.md, "Format")."""
    return index_stem(path) + ".index.npz"


def existing_index(path) -> str | None:
    """The index file found for ``path`` (first of .index.npz, .index.npy, .index), or None.

    spec/index.md, "Format".
    """
    stem = index_stem(path)
    for suffix in INDEX_SUFFIXES:
        if os.path.exists(stem + suffix):
            return stem + suffix
    return None


def _gzip_error(path) -> IndexFileError:
    return IndexFileError("the file is GZIP-compressed; an index needs random access, which "
                          "needs an uncompressed TFRecord file (decompress it first, e.g. "
                          "read_records(..., compression='GZIP') into write_records)", path=path)


def tile_location(payload):
    """(loc_x, loc_y) of a record's payload, or None when it has no (single int64) loc_x
    and loc_y (spec/index.md, "Locations")."""
    try:
        tile = parse_tile(payload)
    except TFRecordError:  # not a tile: look at the Example's features directly
        try:
            features = parse_example(payload)
        except TFRecordError:
            return None
        xy = [features.get(k) for k in ("loc_x", "loc_y")]
        if all(isinstance(v, np.ndarray) and v.dtype == np.int64 and v.shape == (1,)
               for v in xy):
            return int(xy[0][0]), int(xy[1][0])
        return None
    if tile.loc_x is None or tile.loc_y is None:
        return None
    return tile.loc_x, tile.loc_y


LOCATION_PAYLOAD_LIMIT = 16 << 20  # payloads read whole (for locations) up to this size


def compute_index(path, *, verify: bool = True, locations: bool = True,
                  max_record_bytes: int = MAX_RECORD_BYTES):
    """Scan ``path`` and return ``(offsets_and_lengths, locations or None)``; write nothing.

    spec/index.md, "Building". Streams the file: headers are read and checked,
    and payloads of at most :data:`LOCATION_PAYLOAD_LIMIT` bytes are read one
    at a time to find their locations; larger payloads are never held in
    memory (skipped by seeking, their checksums streamed in 1 MiB chunks), and
    such a record has no location (no tile is that large). Memory is constant:
    at most one 16 MiB payload plus the result, 16 bytes per record (32 with
    locations), whatever the record or file size. Header checksums are always
    checked, payload checksums when ``verify`` (default). With
    ``locations=False`` no payload is read at all. Locations are None when any
    record lacks a single int64 ``loc_x`` or ``loc_y`` (or is not a
    tf.train.Example). A GZIP-compressed file raises :class:`IndexFileError`.
    An empty file (0 bytes) has zero records: both arrays are empty (0, 2)
    int64 (every one of its no records has a location). A record longer than
    ``max_record_bytes`` raises :class:`~tilespec.errors.RecordTooLargeError`, from its
    header alone (spec/reliability.md, "Size caps").
    """
    cap = check_max_record_bytes(max_record_bytes)
    path = os.fspath(path)
    if is_gzip_file(path):
        raise _gzip_error(path)
    flat = array("q")
    locs: array | None = array("q") if locations else None
    limit = LOCATION_PAYLOAD_LIMIT if locations else -1
    start = (0, 0)
    while start is not None:
        frames = scan_frames(path, verify=verify, max_payload=limit, start=start,
                             max_record_bytes=cap)
        start = None
        for offset, length, payload in frames:
            flat.extend((offset, FRAMING_BYTES + length))
            if locs is not None:
                xy = None if payload is None else tile_location(payload)
                if xy is None:  # no location can be complete now: stop reading payloads
                    locs, limit = None, -1
                    start = (offset + FRAMING_BYTES + length, len(flat) // 2)
                    frames.close()
                    break
                locs.extend(xy)
    arr = np.frombuffer(flat, dtype=np.int64).reshape(-1, 2).copy()
    loc_arr = None if locs is None else np.frombuffer(locs, dtype=np.int64).reshape(-1, 2).copy()
    return arr, loc_arr


def write_index(path, offsets_and_lengths, locations=None) -> str:
    """Write ``<stem>.index.npz`` for TFRecord ``path`` atomically; return its path.

    spec/index.md, "Format". Written to a temporary file beside it, then
    renamed: readers see the old index or the new one, never a partial one,
    and a failed write leaves no temporary file.
    """
    dest = index_path(path)
    arrays = {"arr_0": np.asarray(offsets_and_lengths, dtype=np.int64).reshape(-1, 2)}
    if locations is not None:
        arrays["locations"] = np.asarray(locations, dtype=np.int64).reshape(-1, 2)
        if arrays["locations"].shape != arrays["arr_0"].shape:
            raise ValueError(f"{dest}: {len(arrays['locations'])} locations for "
                             f"{len(arrays['arr_0'])} records")
    with atomic_write(dest) as fh:
        np.savez(fh, **arrays)
    return dest


def build_index(path, *, verify: bool = True, max_record_bytes: int = MAX_RECORD_BYTES):
    """Build and write the index of TFRecord ``path``; return ``(offsets_and_lengths,
    locations or None)``. spec/index.md, "Building".

    Both checksums of every record are verified (``verify=False`` skips the
    payload checksums), so a built index describes a file that reads cleanly
    (with no record over ``max_record_bytes``: spec/reliability.md, "Size caps").
    """
    arr, locs = compute_index(path, verify=verify, max_record_bytes=max_record_bytes)
    write_index(path, arr, locs)
    return arr, locs


def read_index_file(index_file):
    """Read an index file of any supported format; return ``(arr, locations or None)``.

    spec/index.md, "Format" and "Legacy formats". Raises
    :class:`IndexFileError` naming the file when it cannot be read or its
    arrays have the wrong shape or type.
    """
    index_file = os.fspath(index_file)
    try:
        if index_file.endswith(".npz"):
            with np.load(index_file, allow_pickle=False) as z:
                if "arr_0" not in z.files:
                    raise IndexFileError(f"index has no 'arr_0' array (has {z.files})",
                                         path=index_file)
                arr = np.asarray(z["arr_0"])
                locs = np.asarray(z["locations"]) if "locations" in z.files else None
        elif index_file.endswith(".npy"):
            arr = np.load(index_file, allow_pickle=False)
            locs = None
        else:
            with open(index_file, "rb") as fh:
                text = fh.read().decode("ascii")
            rows = [line.split() for line in text.splitlines() if line.strip()]
            arr = np.array(rows, dtype=np.int64) if rows else np.zeros((0, 2), np.int64)
            locs = None
    except IndexFileError:
        raise
    except Exception as e:  # any unreadable index is a reason to rebuild it, never to crash
        raise IndexFileError(f"cannot read index file: {type(e).__name__}: {e}",
                             path=index_file) from None
    if arr.ndim == 1 and arr.shape == (2,):  # one record, saved from a 1-D loadtxt result
        arr = arr.reshape(1, 2)
    if arr.size == 0:  # no records: slideflow saves np.array([]), float64 of shape (0,)
        arr = np.zeros((0, 2), np.int64)
        if locs is not None and locs.size == 0:
            locs = np.zeros((0, 2), np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.dtype.kind not in "iu":
        raise IndexFileError(f"index array has shape {arr.shape} and dtype {arr.dtype}, "
                             "expected integer [[offset, length], ...]", path=index_file)
    if locs is not None and (locs.ndim != 2 or locs.shape != arr.shape or
                             locs.dtype.kind not in "iu"):
        raise IndexFileError(f"locations array has shape {locs.shape} and dtype {locs.dtype}, "
                             f"expected integer {arr.shape}", path=index_file)
    return arr.astype(np.int64), None if locs is None else locs.astype(np.int64)


def index_problem(arr, file_size: int) -> str | None:
    """Why ``arr`` cannot be the index of a file of ``file_size`` bytes, or None if it can.

    spec/index.md, "Validation": offsets start at 0, every length is at least
    16, no record runs past the end of the file, each record starts where the
    previous one ends, and the last record ends at the end of the file.
    """
    if len(arr) == 0:
        return "index lists no records" if file_size else None
    off, ln = arr[:, 0], arr[:, 1]
    if off[0] != 0:
        return f"first offset is {off[0]}, not 0"
    bad = np.flatnonzero(ln < FRAMING_BYTES)
    if bad.size:
        return f"record {bad[0]} has length {ln[bad[0]]} < {FRAMING_BYTES}"
    past = np.flatnonzero((off < 0) | (off > file_size) | (ln > file_size - off))
    if past.size:  # checked before any sum, so no int64 overflow can hide a bad value
        i = past[0]
        return (f"record {i} (offset {off[i]}, length {ln[i]}) runs past the end of the "
                f"file ({file_size} bytes)")
    gaps = np.flatnonzero(off[1:] != off[:-1] + ln[:-1])
    if gaps.size:
        i = gaps[0] + 1
        return f"record {i} starts at {off[i]}, but record {i - 1} ends at {off[i - 1] + ln[i - 1]}"
    end = int(off[-1] + ln[-1])
    if end != file_size:
        return f"records end at byte {end}, but the file has {file_size} bytes"
    return None


def index_mismatch(path, arr, *, max_record_bytes: int = MAX_RECORD_BYTES) -> str | None:
    """Why ``arr`` is not the index of TFRecord ``path``, or None when it is.

    spec/index.md, "Validation": :func:`index_problem` against the file size,
    then the headers of the first and the last record are read (24 bytes):
    each must pass its checksum and give the length the index says (and be
    within ``max_record_bytes``, spec/reliability.md, "Size caps").
    """
    path = os.fspath(path)
    problem = index_problem(arr, os.path.getsize(path))
    if problem is not None or len(arr) == 0:
        return problem
    with open(path, "rb") as f:
        for i in sorted({0, len(arr) - 1}):
            offset, length = int(arr[i, 0]), int(arr[i, 1])
            f.seek(offset)
            try:
                n = read_header(f, path=path, record=i, offset=offset, verify=True,
                                max_record_bytes=max_record_bytes)
            except TFRecordError as e:
                return f"record {i} at byte {offset}: {e.reason}"
            if n is None or n + FRAMING_BYTES != length:
                return (f"record {i} at byte {offset} has a header for {n} payload bytes, "
                        f"but the index gives length {length}")
    return None


def load_index(path, *, build: bool = True, max_record_bytes: int = MAX_RECORD_BYTES):
    """Return ``(offsets_and_lengths, locations or None)`` for TFRecord ``path``.

    spec/index.md, "Loading". Uses an existing index when it validates against
    the file (:func:`index_mismatch`); otherwise builds (and writes) one,
    warning (:class:`IndexRebuildWarning`, naming both files) when an existing
    index was rejected. With ``build=False`` a missing or invalid index raises
    :class:`IndexFileError` instead. An empty TFRecord (0 bytes) has an empty
    index (0 records), built and written like any other; a GZIP-compressed one
    raises :class:`IndexFileError`. A build meeting a record over ``max_record_bytes``
    raises :class:`~tilespec.errors.RecordTooLargeError` (spec/reliability.md, "Size caps").
    """
    path = os.fspath(path)
    cap = check_max_record_bytes(max_record_bytes)
    if is_gzip_file(path):
        raise _gzip_error(path)
    found = existing_index(path)
    if found is not None:
        try:
            arr, locs = read_index_file(found)
            problem = index_mismatch(path, arr, max_record_bytes=cap)
        except IndexFileError as e:
            problem = e.reason
        if problem is None:
            return arr, locs
        if not build:
            raise IndexFileError(f"index {found} does not match its file: {problem}", path=path)
        warnings.warn(f"{found}: index does not match {path} ({problem}); rebuilding it",
                      IndexRebuildWarning, stacklevel=2)
    elif not build:
        raise IndexFileError(f"no index file ({index_path(path)} or a legacy "
                             f"{index_stem(path)}.index / .index.npy)", path=path)
    return build_index(path, max_record_bytes=cap)


def index_state(path) -> str:
    """The CLI's summary: 'missing', 'ok (<suffix>)' or 'invalid (<suffix>): <why>'.

    spec/index.md, "Validation".
    """
    found = existing_index(path)
    if found is None:
        return "missing"
    try:
        arr, _ = read_index_file(found)
        problem = index_mismatch(path, arr)
    except IndexFileError as e:
        problem = e.reason
    suffix = found[len(index_stem(path)):]
    return f"ok ({suffix})" if problem is None else f"invalid ({suffix}): {problem}"


__all__ = ["build_index", "load_index", "compute_index", "write_index", "read_index_file",
           "index_problem", "index_mismatch", "index_path", "existing_index", "index_state",
           "IndexRebuildWarning", "tile_location"]
