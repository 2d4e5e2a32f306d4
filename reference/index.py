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

import numpy as np

from .errors import IndexFileError, TFRecordError
from .example import parse_tile
from .records import FRAMING_BYTES, read_header, read_payload, scan_records

INDEX_SUFFIXES = (".index.npz", ".index.npy", ".index")


def index_stem(path) -> str:
    """``folder/name.tfrecords`` -> ``folder/name`` (the prefix of its index files)."""
    path = os.fspath(path)
    root, ext = os.path.splitext(path)
    return root if ext in (".tfrecords", ".tfrecord") else path


def index_path(path) -> str:
    """Where :func:`build_index` writes the index of TFRecord ``path``."""
    return index_stem(path) + ".index.npz"


def existing_index(path) -> str | None:
    """The index file found for ``path`` (first of .index.npz, .index.npy, .index), or None."""
    stem = index_stem(path)
    for suffix in INDEX_SUFFIXES:
        if os.path.exists(stem + suffix):
            return stem + suffix
    return None


def compute_index(path, *, verify: bool = True, locations: bool = True):
    """Scan ``path`` and return ``(offsets_and_lengths, locations or None)``; write nothing.

    spec/index.md, "Building". Reads one record at a time (constant memory).
    With ``locations=False`` payloads are not read at all (headers only, seeking
    past payloads; ``verify`` then streams payload checksums in chunks).
    Locations are None when any record lacks loc_x or loc_y.
    """
    path = os.fspath(path)
    if not locations:
        rows = np.array(list(scan_records(path, verify=verify)), dtype=np.int64).reshape(-1, 2)
        return rows, None
    rows = []
    locs: list | None = []
    with open(path, "rb", buffering=1 << 20) as f:
        offset = 0
        record = 0
        while True:
            length = read_header(f, path=path, record=record, offset=offset, verify=True)
            if length is None:
                break
            payload = read_payload(f, length, path=path, record=record, offset=offset,
                                   verify=verify)
            if locs is not None:
                try:
                    tile = parse_tile(payload)
                except TFRecordError as e:
                    raise e.located(path=path, record=record, offset=offset) from None
                if tile.loc_x is None or tile.loc_y is None:
                    locs = None
                else:
                    locs.append((tile.loc_x, tile.loc_y))
            rows.append((offset, FRAMING_BYTES + length))
            offset += FRAMING_BYTES + length
            record += 1
    if not rows:
        from .errors import EmptyFileError
        raise EmptyFileError("empty file: no records", path=path)
    arr = np.array(rows, dtype=np.int64).reshape(-1, 2)
    loc_arr = None if locs is None else np.array(locs, dtype=np.int64).reshape(-1, 2)
    return arr, loc_arr


def write_index(path, offsets_and_lengths, locations=None) -> str:
    """Write ``<stem>.index.npz`` for TFRecord ``path`` atomically; return its path."""
    dest = index_path(path)
    tmp = f"{dest}.tmp-{os.getpid()}.npz"
    arrays = {"arr_0": np.asarray(offsets_and_lengths, dtype=np.int64)}
    if locations is not None:
        arrays["locations"] = np.asarray(locations, dtype=np.int64)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return dest


def build_index(path, *, verify: bool = True):
    """Build and write the index of TFRecord ``path``; return ``(offsets_and_lengths,
    locations or None)``. spec/index.md, "Building"."""
    arr, locs = compute_index(path, verify=verify)
    write_index(path, arr, locs)
    return arr, locs


def read_index_file(index_file):
    """Read an index file of any supported format; return ``(arr, locations or None)``.

    Raises :class:`IndexFileError` naming the file when it cannot be read.
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
    except (OSError, ValueError, UnicodeDecodeError, KeyError, EOFError) as e:
        raise IndexFileError(f"cannot read index file: {e}", path=index_file) from None
    if arr.ndim != 2 or arr.shape[1] != 2 or arr.dtype.kind not in "iu":
        raise IndexFileError(f"index array has shape {arr.shape} and dtype {arr.dtype}, "
                             "expected integer [[offset, length], ...]", path=index_file)
    if locs is not None and (locs.ndim != 2 or locs.shape != arr.shape or
                             locs.dtype.kind not in "iu"):
        raise IndexFileError(f"locations array has shape {locs.shape}, expected {arr.shape}",
                             path=index_file)
    return arr.astype(np.int64), None if locs is None else locs.astype(np.int64)


def index_problem(arr, file_size: int) -> str | None:
    """Why ``arr`` cannot be the index of a file of ``file_size`` bytes, or None if it can.

    spec/index.md, "Validation": offsets start at 0, each record starts where
    the previous one ends, every length is at least 16, the last record ends at
    the end of the file.
    """
    if len(arr) == 0:
        return "index lists no records" if file_size else None
    off, ln = arr[:, 0], arr[:, 1]
    if off[0] != 0:
        return f"first offset is {off[0]}, not 0"
    bad = np.flatnonzero(ln < FRAMING_BYTES)
    if bad.size:
        return f"record {bad[0]} has length {ln[bad[0]]} < {FRAMING_BYTES}"
    gaps = np.flatnonzero(off[1:] != off[:-1] + ln[:-1])
    if gaps.size:
        i = gaps[0] + 1
        return f"record {i} starts at {off[i]}, but record {i - 1} ends at {off[i - 1] + ln[i - 1]}"
    end = int(off[-1] + ln[-1])
    if end != file_size:
        return f"records end at byte {end}, but the file has {file_size} bytes"
    return None


def load_index(path, *, build: bool = True):
    """Return ``(offsets_and_lengths, locations or None)`` for TFRecord ``path``.

    spec/index.md, "Loading". Uses an existing index when it validates against
    the file; otherwise builds (and writes) one, warning when an existing index
    was rejected. With ``build=False`` a missing or invalid index raises
    :class:`IndexFileError` instead.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    found = existing_index(path)
    if found is not None:
        try:
            arr, locs = read_index_file(found)
            problem = index_problem(arr, size)
        except IndexFileError as e:
            problem = e.reason
        if problem is None:
            return arr, locs
        if not build:
            raise IndexFileError(f"index {found} does not match its file: {problem}", path=path)
        warnings.warn(f"{found}: index does not match {path} ({problem}); rebuilding it",
                      stacklevel=2)
    elif not build:
        raise IndexFileError("no index file", path=path)
    return build_index(path)


def index_state(path) -> str:
    """One word for the CLI: 'missing', 'ok (<format>)' or 'invalid: <why>'."""
    found = existing_index(path)
    if found is None:
        return "missing"
    try:
        arr, _ = read_index_file(found)
        problem = index_problem(arr, os.path.getsize(path))
    except IndexFileError as e:
        problem = e.reason
    suffix = found[len(index_stem(path)):]
    return f"ok ({suffix})" if problem is None else f"invalid ({suffix}): {problem}"


__all__ = ["build_index", "load_index", "compute_index", "write_index", "read_index_file",
           "index_problem", "index_path", "existing_index", "index_state"]
