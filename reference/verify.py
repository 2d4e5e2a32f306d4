"""Check every record of TFRecord files and report every problem (spec/reliability.md).

:func:`verify` reads each file front to back and checks, per record: the
framing, the length checksum, the payload checksum, that the payload is a
tf.train.Example, that it is a tile record, and that its image decodes; then
it compares the file's index (when there is one) with what the scan found.
Unlike the readers it does not stop at the first problem: it reports each one
(file, record, byte offset, kind, message) and goes on wherever the framing
allows. Files are checked in a process pool, results come back in file order,
so the report is the same for any number of processes.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import zlib
from array import array
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from .crc32c import crc32c, mask
from .dataset import TFRECORD_SUFFIXES
from .errors import (ExampleParseError, ImageDecodeError, ImageTooLargeError, IndexFileError,
                     TileSchemaError)
from .example import parse_example, parse_tile
from .images import MAX_TILE_PIXELS, check_max_tile_pixels, decode_image
from .index import existing_index, index_stem, read_index_file, tile_location
from .records import (FOOTER_STRUCT, FRAMING_BYTES, GZIP_MAGIC, HEADER_BYTES, HEADER_STRUCT,
                      MAX_RECORD_BYTES, check_max_record_bytes, is_gzip_head, over_cap)

#: Problem kinds, in the order the summary lists them (spec/reliability.md, "Checks").
KINDS = ("missing", "io", "not-tfrecord", "length-crc", "truncated", "record-cap",
         "payload-crc", "gzip", "example", "tile", "image", "image-cap", "tile-size", "index")

#: Note kinds: facts worth a line that are not problems (spec/reliability.md, "Report").
NOTE_KINDS = ("empty",)
EMPTY_NOTE = "0 records (a valid TFRecord: TensorFlow writes one for a slide with no tiles)"

#: What each level checks beyond the previous one.
LEVELS = ("records", "examples", "tiles", "images")

DEFAULT_MAX_PAYLOAD = 64 << 20  # payloads parsed up to this size; larger: checksum only
_CHUNK = 1 << 20
POOL_MIN_BYTES = 32 << 20  # with jobs=None, files totalling less are checked in-process


@dataclass(frozen=True)
class Problem:
    """One problem found by :func:`verify` (spec/reliability.md, "Report")."""

    kind: str
    path: str
    record: int | None
    offset: int | None
    message: str

    def __str__(self) -> str:
        where = [self.path]
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.offset is not None:
            where.append(f"byte offset {self.offset}")
        return f"{', '.join(where)}: {self.kind}: {self.message}"


@dataclass
class FileReport:
    """What :func:`verify` found in one file."""

    path: str
    size: int = 0
    records: int = 0          # records whose framing was read (good or not)
    good: int = 0             # records with no problem
    checksum_only: int = 0    # payloads over max_payload: checksum checked, not parsed
    unread: int = 0           # bytes after the point where the scan had to stop
    compression: str | None = None
    index: str = "not checked"  # 'missing', 'ok (<suffix>)', 'disagrees (<suffix>)', ...
    problems: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # Problem objects of a NOTE_KINDS kind

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyResult:
    """The result of :func:`verify`: one :class:`FileReport` per file, in input order."""

    files: list

    @property
    def problems(self) -> list:
        """Every :class:`Problem`, files in order, records in order within a file."""
        return [p for f in self.files for p in f.problems]

    @property
    def notes(self) -> list:
        """Every note (a :class:`Problem` of a :data:`NOTE_KINDS` kind: not a problem,
        ``ok`` ignores it), files in order."""
        return [n for f in self.files for n in f.notes]

    @property
    def ok(self) -> bool:
        return all(f.ok for f in self.files)

    @property
    def records(self) -> int:
        return sum(f.records for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.size for f in self.files)

    def counts(self) -> Counter:
        """Problems by kind."""
        return Counter(p.kind for p in self.problems)

    def summary(self) -> str:
        """The summary table printed by ``tilespec verify`` (spec/reliability.md, "Report")."""
        bad_files = sum(not f.ok for f in self.files)
        good = sum(f.good for f in self.files)
        counts = self.counts()
        idx = Counter(f.index.split(" (")[0] for f in self.files)
        rows = [("files", len(self.files), f"{bad_files} with problems"),
                ("records", self.records, f"{good} good"),
                ("bytes", self.bytes, _human(self.bytes)),
                ("indexes", sum(idx[k] for k in ("ok", "disagrees", "unreadable")),
                 ", ".join(f"{n} {k}" for k, n in sorted(idx.items()))),
                ("problems", sum(counts.values()), "")]
        rows += [(f"  {k}", counts[k], "") for k in KINDS if counts[k]]
        notes = Counter(n.kind for n in self.notes)
        if notes["empty"]:
            rows.append(("empty", notes["empty"], "files with 0 records (valid, not a problem)"))
        unread = sum(f.unread for f in self.files)
        if unread:
            rows.append(("unread", unread, f"bytes ({_human(unread)}) after damage"))
        checksum_only = sum(f.checksum_only for f in self.files)
        if checksum_only:
            rows.append(("checksum-only", checksum_only, "records too large to parse"))
        w = max(len(r[0]) for r in rows)
        v = max(len(str(r[1])) for r in rows)
        return "\n".join(f"{name:<{w}}  {value:>{v}}  {note}".rstrip()
                         for name, value, note in rows)


def _human(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return ""  # pragma: no cover


def expand_paths(paths) -> list:
    """Files as given; a folder becomes its ``*.tfrecords`` / ``*.tfrecord`` files, sorted.

    spec/reliability.md, "Checks". A path that does not exist is kept (and
    reported as 'missing').
    """
    if isinstance(paths, (str, bytes, os.PathLike)):
        paths = [paths]
    out = []
    for p in paths:
        p = os.fspath(p)
        if os.path.isdir(p):
            out += sorted(os.path.join(p, n) for n in os.listdir(p)
                          if n.endswith(TFRECORD_SUFFIXES))
        else:
            out.append(p)
    return out


class _Scan:
    """Per-file state of the record walk."""

    def __init__(self, report: FileReport, level: int, max_payload: int,
                 max_record_bytes: int = MAX_RECORD_BYTES,
                 max_tile_pixels: int = MAX_TILE_PIXELS, tile_size=None):
        self.report = report
        self.level = level
        self.max_payload = max_payload
        self.max_record_bytes = max_record_bytes
        self.max_tile_pixels = max_tile_pixels
        self.tile_size = tile_size    # None (no check), "first", or (height, width, where)
        self.rows = array("q")        # [offset, framed length] per framed record
        self.locs = array("q")        # [x, y] per record (0, 0 where unknown)
        self.loc_state = array("b")   # 1 location, 0 none, -1 unknown (not parsed)

    def problem(self, kind, record, offset, message):
        self.report.problems.append(Problem(kind, self.report.path, record, offset, message))

    def payload(self, record, offset, payload):
        """Check a payload whose checksum passed; return True when it has no problem."""
        xy, state, ok = (0, 0), -1, True
        if self.level >= 1:
            try:
                if self.level >= 2:
                    tile = parse_tile(payload)
                    if tile.loc_x is not None and tile.loc_y is not None:
                        xy, state = (tile.loc_x, tile.loc_y), 1
                    else:
                        state = 0
                    if self.level >= 3:
                        img = decode_image(tile.image_raw, max_pixels=self.max_tile_pixels)
                        ok = self._tile_size(record, offset, img.shape)
                else:
                    parse_example(payload)
                    loc = tile_location(payload)
                    xy, state = (loc, 1) if loc is not None else ((0, 0), 0)
            except ExampleParseError as e:
                self.problem("example", record, offset, e.reason)
                ok, state = False, 0
            except TileSchemaError as e:
                self.problem("tile", record, offset, e.reason)
                ok = False
                if state == -1:
                    loc = tile_location(payload)
                    xy, state = (loc, 1) if loc is not None else ((0, 0), 0)
            except ImageTooLargeError as e:
                self.problem("image-cap", record, offset, e.reason)
                ok = False
            except ImageDecodeError as e:
                self.problem("image", record, offset, e.reason)
                ok = False
        self.locs.extend(xy)
        self.loc_state.append(state)
        return ok

    def _tile_size(self, record, offset, shape) -> bool:
        """Compare a decoded image's size with the tile size (the one given, else the
        file's first image's); a 'tile-size' problem when it differs."""
        h, w = shape[:2]
        if self.tile_size is None:
            return True
        if self.tile_size == "first":
            self.tile_size = (h, w, f"that of record {record}, the file's first image")
            return True
        if (h, w) == tuple(self.tile_size[:2]):
            return True
        th, tw, where = self.tile_size
        self.problem("tile-size", record, offset,
                     f"image is {w}x{h} (width x height), the tile size is {tw}x{th} "
                     f"({where}); a loader needs tiles of one size (or resize_target)")
        return False


def _walk(f, scan: _Scan, size: int | None):
    """Read records from ``f`` (at offset 0) until the end or until the framing is lost.

    ``size`` is the file size (None for a GZIP stream, where it is unknown).
    Returns the offset where reading stopped and whether it was a clean end.
    """
    report = scan.report
    offset = record = 0
    while True:
        head = f.read(HEADER_BYTES)
        if not head:
            if record == 0:  # valid: a TFRecord of zero records (a note, not a problem)
                report.notes.append(Problem("empty", report.path, None, None, EMPTY_NOTE))
            return offset, True
        left = None if size is None else size - offset
        if len(head) < HEADER_BYTES:
            scan.problem("truncated", record, offset,
                         f"file ends inside a record header ({len(head)} of {HEADER_BYTES} "
                         f"bytes); {len(head)} bytes left unread")
            return offset, False
        length, stored = HEADER_STRUCT.unpack(head)
        computed = mask(crc32c(head[:8]))
        if computed != stored:
            unread = "" if left is None else f"; {left} bytes left unread"
            if record == 0:
                hint = (" (it starts with the GZIP magic bytes but is not a GZIP stream "
                        "either)" if head[:2] == GZIP_MAGIC else "")
                scan.problem("not-tfrecord", 0, 0, "not a TFRecord file: the first record "
                             f"header fails its checksum{hint}{unread}")
            else:
                scan.problem("length-crc", record, offset,
                             f"length field fails its checksum (stored 0x{stored:08x}, "
                             f"computed 0x{computed:08x}; it reads {length}): the next record "
                             f"cannot be located, so the rest of the file is not "
                             f"checked{unread}")
            return offset, False
        end = offset + FRAMING_BYTES + length
        if size is not None and end > size:
            scan.problem("truncated", record, offset,
                         f"record of {length} payload bytes runs past the end of the file "
                         f"(needs {FRAMING_BYTES + length} bytes, {left} left); {left} "
                         "bytes left unread")
            return offset, False
        big = over_cap(length, scan.max_record_bytes)
        if big is not None and size is None:  # GZIP: reaching the next record means
            scan.problem("record-cap", record, offset,  # decompressing this one
                         f"{big.reason}; in a GZIP stream the next record lies behind it, "
                         "so the rest of the file is not checked")
            return offset, False
        report.records += 1
        scan.rows.extend((offset, FRAMING_BYTES + length))
        if big is not None:  # a sound length: step over the record, unread
            scan.problem("record-cap", record, offset,
                         f"{big.reason}; its length is sound, so checking goes on at the "
                         "next record")
            scan.locs.extend((0, 0))
            scan.loc_state.append(-1)
            f.seek(end)
            offset = end
            record += 1
            continue
        # payload: read whole when small enough to parse, else checksum over chunks
        payload = None
        if length <= scan.max_payload:
            payload = f.read(length)
            got = len(payload)
            crc = crc32c(payload)
        else:
            crc, got = 0, 0
            while got < length:
                chunk = f.read(min(_CHUNK, length - got))
                if not chunk:
                    break
                crc = crc32c(chunk, crc)
                got += len(chunk)
        footer = f.read(4) if got == length else b""
        if len(footer) < 4:
            # only reachable for a GZIP stream (or a file shrinking while read)
            report.records -= 1
            del scan.rows[-2:]
            scan.problem("truncated", record, offset,
                         f"stream ends inside the record ({got} of {length} payload bytes"
                         f"{', footer missing' if got == length else ''})")
            return offset, False
        (stored,) = FOOTER_STRUCT.unpack(footer)
        if mask(crc) != stored:
            scan.problem("payload-crc", record, offset,
                         f"payload of {length} bytes fails its checksum (stored "
                         f"0x{stored:08x}, computed 0x{mask(crc):08x}); the length is "
                         "sound, so checking goes on at the next record")
            scan.locs.extend((0, 0))
            scan.loc_state.append(-1)
        elif payload is None:
            report.checksum_only += 1
            report.good += 1
            scan.locs.extend((0, 0))
            scan.loc_state.append(-1)
        elif scan.payload(record, offset, payload):
            report.good += 1
        offset = end
        record += 1


def _check_index(scan: _Scan, complete: bool):
    """Compare the file's index with the scan (spec/reliability.md, "Index agreement")."""
    report = scan.report
    found = existing_index(report.path)
    if found is None:
        report.index = "missing"
        return
    suffix = found[len(index_stem(report.path)):]
    try:
        arr, locs = read_index_file(found)
    except IndexFileError as e:
        report.index = f"unreadable ({suffix})"
        scan.problem("index", None, None, f"index {found} cannot be used: {e.reason}")
        return
    rows = np.frombuffer(scan.rows, dtype=np.int64).reshape(-1, 2)
    n = min(len(arr), len(rows))
    diff = np.flatnonzero((arr[:n] != rows[:n]).any(axis=1))
    message = None
    if diff.size:
        k = int(diff[0])
        message = (k, int(rows[k, 0]),
                   f"index {found} gives record {k} offset {arr[k, 0]} and length "
                   f"{arr[k, 1]}; the file has it at offset {rows[k, 0]} with length "
                   f"{rows[k, 1]}")
    elif complete and len(arr) != len(rows):
        k = n
        off = int(arr[k, 0]) if len(arr) > len(rows) else int(rows[k, 0])
        message = (k, off, f"index {found} lists {len(arr)} records; the file has "
                   f"{len(rows)}")
    elif locs is not None:
        state = np.frombuffer(scan.loc_state, dtype=np.int8)[:n]
        got = np.frombuffer(scan.locs, dtype=np.int64).reshape(-1, 2)[:n]
        none = np.flatnonzero(state == 0)
        wrong = np.flatnonzero((state == 1) & (locs[:n] != got).any(axis=1))
        if none.size and (not wrong.size or none[0] < wrong[0]):
            k = int(none[0])
            message = (k, int(rows[k, 0]), f"index {found} gives record {k} a location, "
                       "but the record has no loc_x/loc_y")
        elif wrong.size:
            k = int(wrong[0])
            message = (k, int(rows[k, 0]), f"index {found} gives record {k} location "
                       f"{tuple(int(v) for v in locs[k])}; the record has "
                       f"{tuple(int(v) for v in got[k])}")
    if message is None:
        report.index = f"ok ({suffix})"
    else:
        report.index = f"disagrees ({suffix})"
        scan.problem("index", message[0], message[1], message[2])


def _tile_size_option(tile_size):
    """None, 'first', an int (square) or (height, width) -> None, 'first' or
    (height, width, where)."""
    if tile_size is None or tile_size == "first":
        return tile_size
    pair = (tile_size, tile_size) if isinstance(tile_size, (int, np.integer)) else tile_size
    try:
        h, w = (int(v) for v in pair)
    except (TypeError, ValueError):
        raise ValueError(f"tile_size must be None, 'first', an integer or (height, width), got "
                         f"{tile_size!r}") from None
    if isinstance(tile_size, bool) or h < 1 or w < 1:
        raise ValueError(f"tile_size must be positive, got {tile_size!r}")
    return h, w, "given"


def verify_file(path, *, level: str = "images", index: bool = True,
                max_payload: int = DEFAULT_MAX_PAYLOAD,
                max_record_bytes: int = MAX_RECORD_BYTES,
                max_tile_pixels: int = MAX_TILE_PIXELS, tile_size=None) -> FileReport:
    """Check one file; return its :class:`FileReport` (spec/reliability.md, "Checks").

    Never raises for anything found in the file: every problem is a
    :class:`Problem` in the report. ``max_record_bytes`` and
    ``max_tile_pixels`` are the readers' caps ('record-cap', 'image-cap');
    ``tile_size`` (an int or (height, width), or 'first': the size of the
    file's first image; default None, no check) the size every image must have
    ('tile-size') (spec/reliability.md, "Size caps").
    """
    path = os.fspath(path)
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    report = FileReport(path)
    scan = _Scan(report, LEVELS.index(level), max_payload,
                 check_max_record_bytes(max_record_bytes),
                 check_max_tile_pixels(max_tile_pixels), _tile_size_option(tile_size))
    if not os.path.exists(path):
        scan.problem("missing", None, None, "no such file")
        return report
    if os.path.isdir(path):
        scan.problem("missing", None, None, "is a folder without .tfrecords files")
        return report
    try:
        report.size = size = os.path.getsize(path)
        with open(path, "rb") as raw:
            head = raw.read(HEADER_BYTES)
        if is_gzip_head(head):
            report.compression = "GZIP"
            with gzip.open(path, "rb") as f:
                try:
                    _walk(f, scan, None)
                except (OSError, EOFError, zlib.error) as e:  # damage in the GZIP layer
                    if (report.records == 0 and isinstance(e, gzip.BadGzipFile)
                            and str(e).startswith(("Not a gzipped file",
                                                   "Unknown compression method"))):
                        scan.problem("not-tfrecord", 0, 0, "not a TFRecord file: the first "
                                     "header fails its checksum, and the file starts with the "
                                     f"GZIP magic bytes but is not GZIP either ({e})")
                    else:
                        what = "ends early" if isinstance(e, EOFError) else "is corrupt"
                        scan.problem("truncated" if isinstance(e, EOFError) else "gzip",
                                     report.records, None,
                                     f"GZIP stream {what} after {report.records} complete "
                                     f"records ({type(e).__name__}: {e}); the rest cannot "
                                     "be read")
            report.index = "not applicable (GZIP)"
            return report
        with open(path, "rb", buffering=0) as raw:
            f = io.BufferedReader(raw, buffer_size=1 << 20)
            end, complete = _walk(f, scan, size)
        report.unread = size - end if not complete else 0
    except OSError as e:
        scan.problem("io", report.records or None, None, f"{type(e).__name__}: {e}")
        return report
    if index:
        _check_index(scan, complete)
    return report


def _verify_one(args):
    path, options = args
    return verify_file(path, **options)


def verify(paths, *, level: str = "images", index: bool = True, jobs: int | None = None,
           max_payload: int = DEFAULT_MAX_PAYLOAD, progress=None,
           max_record_bytes: int = MAX_RECORD_BYTES, max_tile_pixels: int = MAX_TILE_PIXELS,
           tile_size=None) -> VerifyResult:
    """Check every record of every file; return a :class:`VerifyResult`.

    spec/reliability.md, "Checks" and "Report". ``paths``: a path or a list of
    them; a folder means its ``*.tfrecords`` / ``*.tfrecord`` files. ``level``
    is how deep each record is checked: 'records' (framing and checksums),
    'examples' (+ Example parse), 'tiles' (+ tile schema), 'images' (+ image
    decode, the default). ``index``: compare each file with its index file
    when it has one. ``jobs``: processes, at most one per file (default: one
    per CPU when the files hold at least 32 MiB, else 1); 1 checks in this
    process. ``progress(done, report)`` is called
    with each :class:`FileReport`, in file order. The result does not depend on ``jobs``.
    ``max_record_bytes``, ``max_tile_pixels`` and ``tile_size``: as in
    :func:`verify_file` (spec/reliability.md, "Size caps").
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    files = expand_paths(paths)
    _tile_size_option(tile_size)
    options = {"level": level, "index": bool(index), "max_payload": int(max_payload),
               "max_record_bytes": check_max_record_bytes(max_record_bytes),
               "max_tile_pixels": check_max_tile_pixels(max_tile_pixels),
               "tile_size": tile_size}
    if jobs is None:  # a pool costs ~0.3 s to start: only worth it for enough data
        total = sum(os.path.getsize(p) for p in files if os.path.isfile(p))
        jobs = (os.cpu_count() or 1) if total >= POOL_MIN_BYTES else 1
    jobs = max(1, min(int(jobs), len(files)))
    reports = []
    if jobs == 1:
        results = map(_verify_one, ((p, options) for p in files))
        pool = None
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=jobs,
                                   mp_context=multiprocessing.get_context("spawn"))
        results = pool.map(_verify_one, zip(files, itertools.repeat(options)), chunksize=1)
    try:
        for i, report in enumerate(results, 1):
            reports.append(report)
            if progress is not None:
                progress(i, report)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return VerifyResult(reports)


__all__ = ["verify", "verify_file", "VerifyResult", "FileReport", "Problem", "KINDS", "LEVELS",
           "NOTE_KINDS",
           "expand_paths"]
