"""TFRecord framing: reading and writing (spec/records.md).

A TFRecord file is a sequence of records, each framed as::

    uint64 length            little-endian, payload size in bytes
    uint32 masked_crc(length bytes)
    byte   payload[length]
    uint32 masked_crc(payload)

with ``masked_crc(b) = mask(crc32c(b))`` (see :mod:`tilespec.crc32c`). A file
may be GZIP-compressed as a whole (``compression='GZIP'``, as in TensorFlow).

Every error names the file, the 0-based record number and the byte offset of
the record's first framing byte (for GZIP files, the offset in the
decompressed stream).

Every reader takes ``max_record_bytes`` (default :data:`MAX_RECORD_BYTES`,
64 MiB): a header declaring a longer payload is a :class:`RecordTooLargeError`,
raised from the header alone, before any of the payload is read or allocated
(spec/reliability.md, "Size caps").
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import struct
import secrets
import zlib
from typing import BinaryIO, Iterable, Iterator

from .crc32c import crc32c, mask, masked_crc32c
from .errors import (CorruptDataError, CorruptLengthError, NotATFRecordError,
                     RecordTooLargeError, TFRecordError,
                     TruncatedRecordError)

HEADER_BYTES = 12  # length + its checksum
FOOTER_BYTES = 4   # payload checksum
FRAMING_BYTES = HEADER_BYTES + FOOTER_BYTES
COMPRESSIONS = (None, "GZIP")
#: The two bytes a GZIP stream starts with (spec/records.md, "GZIP").
GZIP_MAGIC = b"\x1f\x8b"
#: A record header: the payload length and its masked checksum (spec/records.md, "Framing").
HEADER_STRUCT = struct.Struct("<QI")
#: A record footer: the payload's masked checksum (spec/records.md, "Framing").
FOOTER_STRUCT = struct.Struct("<I")
_READ_CHUNK = 1 << 24  # payloads larger than this are read piece by piece
#: The default cap on a record's payload length (spec/reliability.md, "Size caps"):
#: hundreds of times a real tile record (a 512 px JPEG tile is about 100 KB).
MAX_RECORD_BYTES = 64 << 20


def check_max_record_bytes(value) -> int:
    """``max_record_bytes`` as an int, or ValueError: a positive integer
    (spec/reliability.md, "Size caps")."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"max_record_bytes must be a positive integer (bytes), got {value!r}")
    return int(value)


def _human(n: int) -> str:
    for unit, k in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << k:
            return f"{n / (1 << k):.4g} {unit}"
    return f"{n} bytes"


def over_cap(length: int, max_record_bytes: int, *, path=None, record=None, offset=None):
    """The :class:`RecordTooLargeError` for a header declaring ``length`` payload bytes
    when that is over ``max_record_bytes``, else None (spec/reliability.md, "Size
    caps"). The one rule every reader (and verify) applies to a header."""
    if length <= max_record_bytes:
        return None
    return RecordTooLargeError(
        f"record over the size cap: its header declares {length} payload bytes "
        f"({_human(length)}), more than max_record_bytes={max_record_bytes} "
        f"({_human(max_record_bytes)}); nothing of it was read (pass a larger "
        "max_record_bytes to read records this large)", path=path, record=record,
        offset=offset, length=length, cap=max_record_bytes)


def _check_compression(compression):
    """None/'' -> None; 'GZIP' in any case -> 'GZIP'; anything else is a ValueError."""
    if compression is None or compression == "":
        return None
    if isinstance(compression, str) and compression.upper() == "GZIP":
        return "GZIP"
    raise ValueError(f"compression must be None or 'GZIP', got {compression!r}")


def _stream_error(e: BaseException, what: str, path, record, offset):
    """Turn an exception of the GZIP layer into the TFRecordError it means."""
    if isinstance(e, EOFError):
        return TruncatedRecordError(f"file ends inside the GZIP stream while reading the {what} "
                                    f"({e})", path=path, record=record, offset=offset)
    if isinstance(e, gzip.BadGzipFile) and str(e).startswith("Not a gzipped file"):
        return NotATFRecordError(f"not a GZIP file, but compression='GZIP' was given ({e})",
                                 path=path, record=record, offset=offset)
    return CorruptDataError(f"GZIP stream is corrupt while reading the {what} ({e})",
                            path=path, record=record, offset=offset)


_STREAM_ERRORS = (OSError, EOFError, zlib.error)  # gzip.BadGzipFile is an OSError


def frame_record(payload) -> bytes:
    """The framed bytes of one record (spec/records.md, "Framing")."""
    length = struct.pack("<Q", len(payload))
    return b"".join((length, struct.pack("<I", masked_crc32c(length)), bytes(payload),
                     struct.pack("<I", masked_crc32c(payload))))


def write_records(path, records: Iterable[bytes], *, compression=None) -> int:
    """Write ``records`` (bytes-like payloads) to ``path``; return how many were written.

    spec/records.md, "Writing". The file is written to a temporary file in the
    same folder and renamed into place, so a reader never sees a half-written
    file and a failed write leaves nothing behind (an existing file at ``path``
    stays as it was). No records give the file TensorFlow's writer leaves: 0
    bytes, or with GZIP a GZIP stream of no data (spec/records.md, "Empty
    files"). GZIP output carries no file name and a zero timestamp, so equal records
    give equal bytes.
    """
    compression = _check_compression(compression)
    path = os.fspath(path)
    n = 0
    with atomic_write(path) as raw:
        out = (gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0)
               if compression else raw)
        try:
            for payload in records:
                if not isinstance(payload, (bytes, bytearray, memoryview)):
                    raise TypeError(f"{path}: record {n} is {type(payload).__name__}, "
                                    "expected bytes")
                out.write(frame_record(payload))
                n += 1
        finally:
            if out is not raw:
                out.close()
    return n


@contextlib.contextmanager
def atomic_write(path) -> Iterator[BinaryIO]:
    """``with atomic_write(path) as f:`` writes ``f`` (binary), a new temporary file beside
    ``path``, and renames it onto ``path`` when the block ends; an error in the block
    removes it and leaves ``path`` as it was (spec/records.md, "Writing": a reader sees the
    old file or the new one, never a partial one). Every file tilespec writes (records,
    index files) is written this way."""
    tmp, fd = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _create_temp(path):
    """Create a new, empty temporary file beside ``path``; return ``(name, fd)``.

    A random name opened with O_EXCL (never an existing file); permissions as
    for any new file (0o666 less the umask), so the renamed file has them too.
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return tmp, os.open(tmp, flags, 0o666)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue
    raise FileExistsError(f"cannot create a temporary file beside {path}")  # pragma: no cover


def _open(path, compression) -> BinaryIO:
    path = os.fspath(path)
    if compression == "GZIP":
        return gzip.open(path, "rb")
    return open(path, "rb", buffering=1 << 20)


def _read_exact(f: BinaryIO, n: int, path, record, offset, what: str) -> bytes:
    try:
        if n <= _READ_CHUNK:
            data = f.read(n)
        else:  # a huge (possibly corrupt, unverified) length: allocate only what arrives
            parts = []
            left = n
            while left:
                part = f.read(min(left, _READ_CHUNK))
                if not part:
                    break
                parts.append(part)
                left -= len(part)
            data = b"".join(parts)
    except _STREAM_ERRORS as e:  # GZIP/zlib problems surface here
        raise _stream_error(e, what, path, record, offset) from e
    if len(data) != n:
        raise TruncatedRecordError(f"file ends inside the {what} (wanted {n} bytes, "
                                   f"got {len(data)})", path=path, record=record, offset=offset)
    return data


def read_header(f: BinaryIO, *, path=None, record=0, offset=0, verify=True,
                max_record_bytes: int = MAX_RECORD_BYTES, size: int | None = None):
    """Read one record header at the current position; return the payload length,
    or ``None`` at a clean end of file. spec/records.md, "Reading".

    A length over ``max_record_bytes`` is a :class:`RecordTooLargeError`
    (checked after the length checksum, also with ``verify=False``), except
    where ``size`` (the file's size, known for uncompressed files) shows the
    record runs past the end of the file: that is truncation, which the
    caller reports (reading only what the file holds), as without a cap.
    """
    try:
        head = f.read(HEADER_BYTES)
    except _STREAM_ERRORS as e:
        raise _stream_error(e, "record header", path, record, offset) from e
    if not head:
        return None
    if len(head) != HEADER_BYTES:
        raise TruncatedRecordError(f"file ends inside the record header (got {len(head)} of "
                                   f"{HEADER_BYTES} bytes)", path=path, record=record,
                                   offset=offset)
    length, stored = HEADER_STRUCT.unpack(head)
    if verify:
        computed = masked_crc32c(head[:8])
        if computed != stored:
            if record == 0:
                hint = (" (the file starts with the GZIP magic bytes: read it with "
                        "compression='GZIP')" if head[:2] == GZIP_MAGIC else "")
                raise NotATFRecordError(
                    f"not a TFRecord file: the first record header fails its checksum{hint}",
                    path=path, record=record, offset=offset)
            raise CorruptLengthError(
                f"length field fails its checksum (stored 0x{stored:08x}, computed "
                f"0x{computed:08x}; length field reads {length})",
                path=path, record=record, offset=offset)
    if length > max_record_bytes and (size is None or
                                      offset + FRAMING_BYTES + length <= size):
        raise over_cap(length, max_record_bytes, path=path, record=record, offset=offset)
    return length


def read_payload(f: BinaryIO, length: int, *, path=None, record=0, offset=0, verify=True) -> bytes:
    """Read a payload of ``length`` bytes and its footer; verify the payload checksum.

    spec/records.md, "Reading".
    """
    payload = _read_exact(f, length, path, record, offset, "record payload")
    (stored,) = FOOTER_STRUCT.unpack(_read_exact(f, FOOTER_BYTES, path, record, offset,
                                           "payload checksum"))
    if verify:
        computed = masked_crc32c(payload)
        if computed != stored:
            raise CorruptDataError(f"payload of {length} bytes fails its checksum (stored "
                                   f"0x{stored:08x}, computed 0x{computed:08x})",
                                   path=path, record=record, offset=offset)
    return payload


def is_gzip_file(path) -> bool:
    """True when ``path`` starts with the GZIP magic bytes and is not TFRecord framing.

    spec/records.md, "GZIP". A plain TFRecord file can begin with the bytes
    1f 8b (a first record of a length ending in 0x8b1f), so the first header's
    checksum decides.
    """
    with open(os.fspath(path), "rb") as f:
        return is_gzip_head(f.read(HEADER_BYTES))


def is_gzip_head(head: bytes) -> bool:
    """True when a file's first bytes ``head`` (up to :data:`HEADER_BYTES`) start a GZIP
    stream rather than TFRecord framing: the GZIP magic bytes, and no valid first record
    header (spec/records.md, "GZIP")."""
    if not head.startswith(GZIP_MAGIC):
        return False
    return len(head) < HEADER_BYTES or masked_crc32c(head[:8]) != HEADER_STRUCT.unpack(head)[1]


def read_records(path, *, verify: bool = True, compression=None,
                 max_record_bytes: int = MAX_RECORD_BYTES) -> Iterator[bytes]:
    """Yield the payload of every record in ``path``, in file order.

    spec/records.md, "Reading". Each payload is a new ``bytes`` object (never a
    view of a reused buffer). With ``verify=True`` (default) both checksums of
    every record are checked. Raises a :class:`TFRecordError` subclass naming
    file, record and offset on any problem. An empty file (0 bytes, or a GZIP
    stream of no data) yields nothing: a valid TFRecord of zero records
    (spec/records.md, "Empty files"). A record longer than ``max_record_bytes`` is a
    :class:`RecordTooLargeError` before any of it is read (spec/reliability.md,
    "Size caps"; in an uncompressed file, a record running past the end of the
    file is truncation, as without a cap, and only what the file holds is read).
    Payloads over 16 MiB are read in 16 MiB pieces (GZIP streams included), so a
    length that lies costs at most what the stream holds, up to the cap (twice
    that while the pieces are joined).
    """
    compression = _check_compression(compression)
    cap = check_max_record_bytes(max_record_bytes)
    path = os.fspath(path)
    with _open(path, compression) as f:
        size = None if compression else os.fstat(f.fileno()).st_size
        offset = 0
        record = 0
        while True:
            length = read_header(f, path=path, record=record, offset=offset, verify=verify,
                                 max_record_bytes=cap, size=size)
            if length is None:  # a clean end (at once for an empty file: zero records)
                return
            yield read_payload(f, length, path=path, record=record, offset=offset,
                               verify=verify)
            offset += FRAMING_BYTES + length
            record += 1


def read_record_at(f_or_path, offset: int, *, verify: bool = True, record=None,
                   path=None, max_record_bytes: int = MAX_RECORD_BYTES,
                   length: int | None = None) -> bytes:
    """Read the single record whose framing starts at byte ``offset``.

    spec/records.md, "Random access". ``f_or_path`` is a path or an open binary
    file (uncompressed files only). ``record`` and ``path`` only label errors.
    A length over ``max_record_bytes`` is a :class:`RecordTooLargeError`
    (spec/reliability.md, "Size caps").

    ``length``, the record's framed size where an index gives it (payload + 16
    bytes, as in index files), lets a real file's record be read in one read
    (:func:`read_frame`); where the bytes read do not bear it out, the record is
    read as without it, so the payload and every error are the same either way.
    """
    if isinstance(f_or_path, (str, bytes, os.PathLike)):
        with open(f_or_path, "rb") as f:
            return read_record_at(f, offset, verify=verify, record=record,
                                  path=os.fspath(f_or_path),
                                  max_record_bytes=max_record_bytes, length=length)
    f = f_or_path
    if length is not None and _pread is not None:
        try:
            fd = f.fileno()
        except (AttributeError, OSError, ValueError):  # not a real file: read it below
            fd = None
        if fd is not None:
            payload = read_frame(fd, offset, length, verify=verify,
                                 max_record_bytes=max_record_bytes)
            if payload is not None:
                return payload
    if path is None:
        path = getattr(f, "name", None)
    f.seek(offset)
    try:
        size = os.fstat(f.fileno()).st_size
    except (AttributeError, OSError, ValueError):  # not a real file: cap whatever it holds
        size = None
    length = read_header(f, path=path, record=record, offset=offset, verify=verify,
                         max_record_bytes=max_record_bytes, size=size)
    if length is None:
        raise TruncatedRecordError("offset is at or past the end of the file", path=path,
                                   record=record, offset=offset)
    return read_payload(f, length, path=path, record=record, offset=offset, verify=verify)


_pread = getattr(os, "pread", None)  # POSIX; elsewhere records are read as without a length
_unpack_header = HEADER_STRUCT.unpack_from
_unpack_footer = FOOTER_STRUCT.unpack_from


def read_frame(fd: int, offset: int, length: int, *, verify: bool = True,
               max_record_bytes: int = MAX_RECORD_BYTES) -> bytes | None:
    """The payload of the record at byte ``offset`` of the open file ``fd``, read in one
    read of its ``length`` framed bytes (the extent an index gives), or None where these
    bytes do not make a sound record of that extent (spec/records.md, "Random access").

    The payload is a new ``bytes`` object. Both checksums are checked (with ``verify``;
    without it, only the length field), and the payload must be within
    ``max_record_bytes``. None for a short read (the file ends inside the extent: it
    was cut or shrank), a header whose length is not ``length`` - 16, a checksum that
    fails or a payload over the cap: the caller then reads the record by its header
    (:func:`read_record_at` without ``length``), which raises the error that names the
    file, record and offset, or, where the file changed in between, returns what the
    file now holds. No file size is asked for: a short read tells truncation.
    """
    n = length - FRAMING_BYTES
    if n < 0 or n > max_record_bytes or _pread is None:
        return None
    data = _pread(fd, length, offset)
    if len(data) != length:
        return None
    declared, stored = _unpack_header(data)
    if declared != n:
        return None
    payload = data[HEADER_BYTES:HEADER_BYTES + n]
    if verify:
        if (mask(crc32c(data[:8])) != stored or
                mask(crc32c(payload)) != _unpack_footer(data, HEADER_BYTES + n)[0]):
            return None
    return payload


def scan_records(path, *, verify: bool = False, chunk_size: int = 1 << 20,
                 max_record_bytes: int = MAX_RECORD_BYTES):
    """Yield ``(offset, length)`` for every record, reading headers and seeking past
    payloads, in constant memory. spec/index.md, "Building".

    ``length`` is the full framed size (payload + 16 bytes), as in index files.
    With ``verify=True`` each payload checksum is also checked, streamed in
    chunks of ``chunk_size`` bytes. Uncompressed files only. A length over
    ``max_record_bytes`` is a :class:`RecordTooLargeError`.
    """
    for offset, length, _ in scan_frames(path, verify=verify, chunk_size=chunk_size,
                                         max_record_bytes=max_record_bytes):
        yield offset, FRAMING_BYTES + length


def scan_frames(path, *, verify: bool = False, chunk_size: int = 1 << 20,
                max_payload: int = 0, start: tuple = (0, 0),
                max_record_bytes: int = MAX_RECORD_BYTES):
    """Yield ``(offset, payload length, payload or None)`` for every record of an
    uncompressed file, in constant memory. spec/index.md, "Building".

    Header checksums are always checked. A payload of at most ``max_payload``
    bytes is read and returned (its checksum checked when ``verify``); a larger
    one is never held in memory: it is skipped by seeking, or, with ``verify``,
    its checksum is computed over chunks of ``chunk_size`` bytes. A record that
    would run past the end of the file is :class:`TruncatedRecordError` before
    any of its payload is read. Memory is therefore at most ``max_payload`` +
    ``chunk_size`` + a 64 KiB read buffer, whatever the record or file size.
    ``start=(offset, record)`` resumes a scan at a record boundary found earlier.
    A header declaring more than ``max_record_bytes`` is a
    :class:`RecordTooLargeError` (its ``length`` says where the next record
    starts, for a caller that resumes past it).
    """
    from .crc32c import crc32c, mask

    cap = check_max_record_bytes(max_record_bytes)
    path = os.fspath(path)
    size = os.path.getsize(path)
    chunk_size = max(1, int(chunk_size))
    with open(path, "rb", buffering=0) as raw:
        f = io.BufferedReader(raw, buffer_size=64 * 1024)
        offset, record = (int(v) for v in start)
        while True:
            if f.tell() != offset:
                f.seek(offset)
            length = read_header(f, path=path, record=record, offset=offset, verify=True,
                                 max_record_bytes=cap, size=size)
            if length is None:  # a clean end (an empty file has zero records)
                return
            end = offset + FRAMING_BYTES + length
            if end > size:
                raise TruncatedRecordError(
                    f"record of {length} payload bytes runs past the end of the file "
                    f"({size} bytes; the record needs {end - size} more)", path=path,
                    record=record, offset=offset)
            payload = None
            if length <= max_payload:
                payload = read_payload(f, length, path=path, record=record, offset=offset,
                                       verify=verify)
            elif verify:
                crc = 0
                left = length
                while left:
                    chunk = f.read(min(chunk_size, left))
                    if not chunk:  # the file shrank while being read
                        raise TruncatedRecordError(
                            f"file ends inside the record payload ({left} of {length} bytes "
                            "missing)", path=path, record=record, offset=offset)
                    crc = crc32c(chunk, crc)
                    left -= len(chunk)
                footer = _read_exact(f, FOOTER_BYTES, path, record, offset, "payload checksum")
                (stored,) = FOOTER_STRUCT.unpack(footer)
                if mask(crc) != stored:
                    raise CorruptDataError(
                        f"payload of {length} bytes fails its checksum (stored 0x{stored:08x}, "
                        f"computed 0x{mask(crc):08x})", path=path, record=record, offset=offset)
            yield offset, length, payload
            offset = end
            record += 1


__all__ = ["read_records", "write_records", "read_record_at", "read_frame", "scan_records", "scan_frames",
           "frame_record", "MAX_RECORD_BYTES", "check_max_record_bytes", "over_cap",
           "is_gzip_file", "is_gzip_head", "atomic_write", "GZIP_MAGIC", "HEADER_STRUCT",
           "FOOTER_STRUCT", "HEADER_BYTES", "FOOTER_BYTES",
           "read_header", "read_payload", "TFRecordError", "FRAMING_BYTES", "COMPRESSIONS"]
