"""Reading tile records by offset: :class:`TileSource`, the I/O edge of every loader
(spec/sampling.md, "Loaders"; offsets from spec/index.md, "Loading"; damaged files and
size caps from spec/reliability.md, "on_error" and "Size caps").

A source opens a loader's tfrecords, loads (or builds) their indexes on first use,
keeps a bounded set of files open, and reads and parses one record at a time. With
``on_error='skip'``, a file that cannot be indexed is located by a headers-only
scan. It also gives what the loaders check at construction from the records
themselves: the slide names stored in them and the dataset's tile size.
"""

from __future__ import annotations

import io
import os
import warnings
from collections import OrderedDict

import numpy as np

from .errors import IndexFileError, RecordTooLargeError, TFRecordError, TruncatedRecordError
from .example import parse_tile, scan_tile_slide
from .images import MAX_TILE_PIXELS, check_image_header, image_size
from .index import load_index
from .records import (FRAMING_BYTES, HEADER_BYTES, MAX_RECORD_BYTES, check_max_record_bytes,
                      read_frame, read_header, read_record_at, scan_frames)


class TileSource:
    """Reads tile ``j`` of tfrecord ``t`` by offset (the I/O edge of the loaders,
    spec/sampling.md, "Loaders"; offsets from spec/index.md, "Loading").

    Indexes are loaded (built when missing) on first use of a tfrecord; at most
    ``max_open`` files are kept open, least recently used closed first.

    With ``on_error='skip'``, a file whose index cannot be loaded or built (its
    index build meets a damaged record) is located by a headers-only scan
    instead (spec/reliability.md, "on_error"), so each record is verified when
    read and skipped on its own; a damaged length field cuts the scan there.
    The outcome is cached per file: a damaged file is scanned once per source.

    Every read, index build and scan applies ``max_record_bytes``
    (spec/reliability.md, "Size caps"); the scan steps over a record above it
    (its length is sound), which is then skipped on its own when read.
    """

    def __init__(self, paths, *, max_open: int = 64, verify: bool = True,
                 on_error: str = "raise", max_record_bytes: int = MAX_RECORD_BYTES):
        self.paths = [os.fspath(p) for p in paths]
        self.max_open = max_open
        self.verify = verify
        self.on_error = on_error
        self.max_record_bytes = check_max_record_bytes(max_record_bytes)
        self._offsets: dict = {}
        self._lengths: dict = {}  # t -> framed sizes from the index (absent when scanned)
        self._cut: dict = {}  # t -> (record, error): records from there on are not located
        self._files: OrderedDict = OrderedDict()

    def reopened(self) -> "TileSource":
        """A source over the same files with file handles of its own, sharing the
        record offsets (and what headers-only scans found) loaded so far and from now
        on: for another iteration, thread or adapter pipeline over the same loader
        (spec/adapters.md, "What an adapter is")."""
        other = TileSource(self.paths, max_open=self.max_open, verify=self.verify,
                           on_error=self.on_error, max_record_bytes=self.max_record_bytes)
        other._offsets = self._offsets
        other._lengths = self._lengths
        other._cut = self._cut
        return other

    def offsets(self, t: int) -> np.ndarray:
        """The byte offsets of the records of tfrecord t, from its index (loaded or
        built on first use) or, with on_error='skip' where no index can be built, from
        a headers-only scan (spec/index.md; spec/reliability.md, "on_error")."""
        arr = self._offsets.get(t)
        if arr is None:
            path = self.paths[t]
            try:
                index = load_index(path, max_record_bytes=self.max_record_bytes)[0]
            except TFRecordError as e:
                if self.on_error != "skip":
                    raise
                arr = self._scan(t, e)
            else:
                arr = index[:, 0].copy()
                self._lengths[t] = index[:, 1].copy()
            self._offsets[t] = arr
        return arr

    def _scan(self, t: int, why: TFRecordError) -> np.ndarray:
        """Offsets of the records of a file that cannot be indexed, from its headers
        alone; a header that cannot be read ends the scan (it is the last entry,
        so reading that record raises its error; later records are not located)."""
        path = self.paths[t]
        found = []
        cut = None
        if isinstance(why, IndexFileError):
            cut = (0, why)  # GZIP: no record can be read by offset
        else:
            start = (0, 0)
            while start is not None:
                frames = scan_frames(path, verify=False, max_payload=-1, start=start,
                                     max_record_bytes=self.max_record_bytes)
                start = None
                try:
                    for offset, _, _ in frames:
                        found.append(offset)
                except RecordTooLargeError as e:  # a sound length: step over the record
                    found.append(e.offset)  # (skipped on its own when read)
                    start = (e.offset + FRAMING_BYTES + e.length, len(found))
                except TFRecordError as e:
                    cut = (len(found), e)
                    if e.offset is not None:
                        found.append(e.offset)  # the damaged record itself: skipped when read
                finally:
                    frames.close()
        arr = np.array(found, dtype=np.int64)
        note = ""
        if cut is not None:
            self._cut[t] = cut
            k, e = cut
            rest = "" if e.offset is None else (
                f"; {os.path.getsize(path) - e.offset} bytes from byte offset {e.offset} on "
                "are unread")
            note = (f"; the scan stops at record {k} ({e.reason}): records after it are "
                    f"not located and left out{rest}")
        warnings.warn(f"{path}: no index can be built ({why.reason}); with on_error='skip' "
                      f"its records are located by their headers ({len(arr)} found) and each "
                      f"is verified when read{note}", stacklevel=4)
        return arr

    def offset_of(self, t: int, j: int) -> int | None:
        """The byte offset of record j of tfrecord t where it is known, else None: what
        an error names (spec/reliability.md, "on_error")."""
        try:
            offsets = self.offsets(t)
        except TFRecordError:
            return None
        return int(offsets[j]) if 0 <= j < len(offsets) else None

    def slides(self, t: int) -> tuple:
        """The distinct slide names stored in the records of tfrecord t, in order of
        first appearance (spec/dataset.md, "Labels": what is read and when).

        Reads each record's header (its length checksum checked) and, by
        :func:`~tilespec.example.scan_tile_slide`, only the bytes that locate and
        hold its ``slide`` feature, not the image; a record in another layout is
        read whole and parsed. A record that cannot be read raises its error
        (with on_error='skip' it is left out: the loader skips it when read).
        """
        path = self.paths[t]
        names: dict = {}
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        try:
            for j, offset in enumerate(self.offsets(t).tolist()):
                try:
                    slide = self._record_slide(fd, path, j, offset)
                except TFRecordError as e:
                    if self.on_error != "skip":
                        raise e.located(path=path, record=j, offset=offset) from None
                    continue
                names.setdefault(slide, None)
        finally:
            os.close(fd)
        return tuple(names)

    def _record_slide(self, fd, path, j, offset) -> str:
        head = os.pread(fd, HEADER_BYTES + 256, offset)
        length = read_header(io.BytesIO(head[:HEADER_BYTES]), path=path, record=j,
                             offset=offset, verify=True, max_record_bytes=self.max_record_bytes)
        if length is None:
            raise TruncatedRecordError("offset is at or past the end of the file", path=path,
                                       record=j, offset=offset)
        start = offset + HEADER_BYTES
        pre = head[HEADER_BYTES:HEADER_BYTES + length]

        def read(pos, n):
            if pos + n <= len(pre):
                return pre[pos:pos + n]
            return os.pread(fd, min(n, max(0, length - pos)), start + pos)

        slide = scan_tile_slide(read, length)
        if slide is None:  # not the plain layout: read and parse the whole record
            with open(path, "rb") as f:
                payload = read_record_at(f, offset, verify=self.verify, record=j, path=path)
            slide = parse_tile(payload).slide
        return slide

    def tile_size(self, max_pixels: int = MAX_TILE_PIXELS):
        """The dataset's tile size, ``(height, width, where)``: the image size of the
        first record, tfrecords in order and records in file order, whose record and
        image header read within ``max_pixels`` (spec/reliability.md, "Size caps");
        ``where`` names that record. None when no record qualifies (every tfrecord
        empty, or damaged). Damaged records are passed over here: each raises (or is
        skipped, per ``on_error``) at its own turn. The one definition every check
        uses: crop boxes at construction, the per-item size check, Dataset.tile_size."""
        for t, path in enumerate(self.paths):
            try:
                n = len(self.offsets(t))
            except TFRecordError:  # no index can be built: the file raises at its turn
                continue
            for j in range(n):
                try:
                    raw = self.read(t, j).image_raw
                    hw = check_image_header(raw, max_pixels=max_pixels)
                    if hw is None:  # a header only Pillow reads: ask it (no cap, no warning)
                        _, w, h = image_size(raw)
                        if w * h > max_pixels:
                            continue
                        hw = (h, w)
                except (TFRecordError, IndexError):
                    continue
                return hw[0], hw[1], f"that of {path}, record {j}"
        return None

    def _file(self, t: int):
        files = self._files
        f = files.get(t)
        if f is not None:
            files.move_to_end(t)
            return f
        if len(files) >= self.max_open:
            _, old = files.popitem(last=False)
            old.close()
        f = files[t] = open(self.paths[t], "rb", buffering=1 << 16)  # a record or more per read
        return f

    def read(self, t: int, j: int):
        """The parsed :class:`~tilespec.example.Tile` of record j of tfrecord t, its
        read by offset (spec/records.md, "Random access") within ``max_record_bytes``
        (spec/reliability.md, "Size caps"); errors name file, record and offset."""
        offsets = self._offsets.get(t)
        if offsets is None:
            offsets = self.offsets(t)
        if not 0 <= j < len(offsets):
            cut = self._cut.get(t)
            if cut is not None and j >= 0:
                k, e = cut
                raise type(e)(f"not located: the file cannot be read past record {k} "
                              f"({e.reason})", path=self.paths[t], record=j)
            raise IndexError(f"{self.paths[t]} has {len(offsets)} records; record {j} "
                             "does not exist")
        path, offset = self.paths[t], int(offsets[j])
        lengths = self._lengths.get(t)
        f = self._file(t)
        payload = None if lengths is None else read_frame(
            f.fileno(), offset, int(lengths[j]), verify=self.verify,
            max_record_bytes=self.max_record_bytes)
        if payload is None:  # no extent known, or the bytes do not bear it out: by header
            payload = read_record_at(f, offset, verify=self.verify, record=j, path=path,
                                     max_record_bytes=self.max_record_bytes)
        try:
            return parse_tile(payload)
        except TFRecordError as e:
            raise e.located(path=path, record=j, offset=offset) from None

    def close(self):
        while self._files:
            self._files.popitem()[1].close()

    def __del__(self):  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass


__all__ = ["TileSource"]
