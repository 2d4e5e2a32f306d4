"""Errors raised by tilespec (spec/records.md, "Errors").

Every reading and parsing error derives from :class:`TFRecordError` and says
where it happened: the file, the record number (0-based) and the byte offset of
the record's first framing byte, when they are known.
"""

from __future__ import annotations

import os


class TFRecordError(Exception):
    """Base of every error raised while reading, parsing or indexing records.

    Attributes ``path``, ``record`` and ``offset`` hold the location (``None``
    where not known); ``reason`` the bare description.
    """

    def __init__(self, reason: str, *, path=None, record=None, offset=None):
        self.reason = reason
        self.path = os.fspath(path) if path is not None else None
        self.record = record
        self.offset = offset
        super().__init__(self._format())

    def _format(self) -> str:
        where = []
        if self.path is not None:
            where.append(str(self.path))
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.offset is not None:
            where.append(f"byte offset {self.offset}")
        return (": ".join([", ".join(where), self.reason]) if where else self.reason)

    def located(self, *, path=None, record=None, offset=None):
        """Return a copy of this error with missing location fields filled in."""
        return type(self)(
            self.reason,
            path=self.path if self.path is not None else path,
            record=self.record if self.record is not None else record,
            offset=self.offset if self.offset is not None else offset,
        )


class EmptyFileError(TFRecordError):
    """Defined for code that catches it, never raised: an empty (0-byte) file is a
    valid TFRecord of zero records (spec/records.md, "Empty files")."""


class NotATFRecordError(TFRecordError):
    """The first record header is not TFRecord framing (wrong format, or GZIP read as plain)."""


class CorruptLengthError(TFRecordError):
    """A record's length field does not match its masked CRC32C."""


class RecordTooLargeError(CorruptLengthError):
    """A record's length field declares more payload bytes than the reader's
    ``max_record_bytes`` cap (spec/reliability.md, "Size caps"). Raised from the
    12-byte header alone, before any payload byte is read or allocated.
    ``length`` and ``cap`` hold the two numbers."""

    def __init__(self, reason: str, *, path=None, record=None, offset=None, length=None,
                 cap=None):
        self.length, self.cap = length, cap
        super().__init__(reason, path=path, record=record, offset=offset)

    def located(self, *, path=None, record=None, offset=None):
        e = super().located(path=path, record=record, offset=offset)
        e.length, e.cap = self.length, self.cap
        return e


class CorruptDataError(TFRecordError):
    """A record's payload does not match its masked CRC32C."""


class TruncatedRecordError(TFRecordError):
    """The file ends inside a record (header, payload or footer)."""


class ExampleParseError(TFRecordError):
    """A payload is not a valid tf.train.Example."""


class TileSchemaError(TFRecordError):
    """An Example lacks a tile feature or has it with the wrong type."""


class ImageDecodeError(TFRecordError):
    """Image bytes are not a decodable JPEG or PNG."""


class ImageTooLargeError(ImageDecodeError):
    """An image's header declares more pixels than the ``max_tile_pixels`` cap; found
    from the header alone, before any pixel is decoded (spec/reliability.md, "Size caps")."""


class TileSizeError(ImageDecodeError):
    """In a loader, a tile's size differs from the dataset's tile size (that of its
    first record) and the pipeline does not make all sizes equal
    (spec/reliability.md, "Size caps")."""


class IndexFileError(TFRecordError):
    """An index file cannot be read or does not describe its TFRecord."""
