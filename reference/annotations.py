"""Slide annotations: reading, validating and filtering (spec/dataset.md, "Annotations").

An annotation table has one row per slide. Columns ``patient`` and ``slide``
are required; every other column is an outcome header. It comes from a CSV
file (UTF-8, an optional byte-order mark, first row the headers) or from a
list of row dicts. Values are text: header names and values are stripped of
surrounding whitespace, a value that is empty after stripping is *blank*, and
dict values that are not text are written with ``str`` (``None`` is blank).

This module also holds the error classes of the dataset chapter. They derive
from :class:`tilespec.errors.TFRecordError` (so one ``except`` catches every
tilespec error) and from :class:`ValueError` (they are all bad input).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

from .errors import TFRecordError

REQUIRED_COLUMNS = ("patient", "slide")


class DatasetError(TFRecordError, ValueError):
    """A dataset cannot be built or configured as asked (spec/dataset.md, "Errors")."""


class AnnotationError(DatasetError):
    """Annotations are missing, malformed, or name an unknown header."""


class LabelError(DatasetError):
    """Labels cannot be made from the annotations as asked."""


class BalanceError(DatasetError):
    """A balancing strategy or custom probability weights are invalid."""


class ClipError(DatasetError):
    """A clipping strategy or custom clip counts are invalid."""


class SplitError(DatasetError):
    """A train/validation split or k-fold split cannot be made."""


class ProjectError(DatasetError):
    """A project file or training configuration is invalid."""


class DatasetMismatchWarning(UserWarning):
    """Tfrecords without an annotation row, or annotation rows without a tfrecord."""


@dataclass(frozen=True)
class Annotations:
    """A validated annotation table.

    ``columns``: the headers in file order; ``rows``: slide -> {column: value}
    in file order; ``where``: slide -> a short location for messages ("line 4"
    or "row 2"); ``source``: the CSV path, or None for row dicts.
    """

    columns: tuple
    rows: Mapping[str, Mapping[str, str]]
    where: Mapping[str, str]
    source: str | None = None

    def __len__(self) -> int:
        """The number of rows (slides), as ``len()`` of slideflow's annotations DataFrame."""
        return len(self.rows)

    @property
    def headers(self) -> tuple:
        """The outcome headers: every column except patient and slide."""
        return tuple(c for c in self.columns if c not in REQUIRED_COLUMNS)

    def error(self, cls, reason: str):
        """An error of class ``cls`` located at this table's file (if any)."""
        return cls(reason, path=self.source)

    def check_headers(self, headers: Iterable[str], what: str = "header") -> list:
        """Return ``headers`` as a list; raise naming any that is not a column.

        spec/dataset.md, "Annotations".
        """
        headers = list(headers)
        for h in headers:
            if not isinstance(h, str):
                raise self.error(AnnotationError, f"{what} {h!r} is not a string")
            if h not in self.columns:
                raise self.error(AnnotationError,
                                 f"unknown {what} {h!r}; the annotation columns are "
                                 f"{', '.join(self.columns)}")
        return headers


def is_blank(value) -> bool:
    """True for a value that is empty after stripping whitespace (spec/dataset.md)."""
    return value is None or str(value).strip() == ""


def _cell(value) -> str:
    return "" if value is None else str(value).strip()


def _validate(columns: Sequence[str], records: Iterable[tuple], source: str | None,
              unit: str) -> Annotations:
    """Shared checks for CSV and row-dict tables; ``records`` yields (where, values)."""
    def fail(reason):
        return AnnotationError(reason, path=source)

    columns = [_cell(c) for c in columns]
    for i, c in enumerate(columns):
        if c == "":
            raise fail(f"column {i + 1} has an empty header name")
    dup = sorted({c for c in columns if columns.count(c) > 1})
    if dup:
        raise fail(f"duplicate column header(s): {', '.join(dup)}")
    for req in REQUIRED_COLUMNS:
        if req not in columns:
            raise fail(f"missing required column {req!r} (columns found: "
                       f"{', '.join(columns) or 'none'})")
    rows: dict = {}
    where: dict = {}
    for loc, values in records:
        if len(values) != len(columns):
            raise fail(f"{loc} has {len(values)} fields, the header has {len(columns)}")
        row = dict(zip(columns, (_cell(v) for v in values)))
        for req in REQUIRED_COLUMNS:
            if row[req] == "":
                raise fail(f"{loc}: blank {req!r}")
        slide = row["slide"]
        if slide in rows:
            first = rows[slide]
            diff = [c for c in columns if first[c] != row[c]]
            detail = ("; they conflict in " + ", ".join(
                f"{c!r} ({first[c]!r} vs {row[c]!r})" for c in diff)) if diff else \
                " (identical rows)"
            raise fail(f"slide {slide!r} appears twice, at {where[slide]} and {loc}{detail}; "
                       "each slide must have exactly one row")
        rows[slide] = row
        where[slide] = loc
    return Annotations(columns=tuple(columns), rows=rows, where=where, source=source)


def read_annotations_csv(path) -> Annotations:
    """Read and validate an annotations CSV file (spec/dataset.md, "Annotations")."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AnnotationError("annotations file not found", path=path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            lines = list(csv.reader(fh))
    except UnicodeDecodeError as e:
        raise AnnotationError(f"not UTF-8 text: {e}", path=path) from None
    except csv.Error as e:
        raise AnnotationError(f"not a valid CSV file: {e}", path=path) from None
    # csv.reader yields [] for an empty line; line numbers count physical rows.
    numbered = [(n + 1, row) for n, row in enumerate(lines) if row and any(c.strip() for c in row)]
    if not numbered:
        raise AnnotationError("annotations file is empty (no header row)", path=path)
    (_, header), body = numbered[0], numbered[1:]
    return _validate(header, ((f"line {n}", row) for n, row in body), path, "line")


def annotations_from_rows(rows) -> Annotations:
    """Validate a list of row dicts (spec/dataset.md, "Annotations").

    The columns are the keys of the first row, in order; every row must have
    exactly those keys.
    """
    rows = list(rows)
    if not rows:
        raise AnnotationError("annotations: the list of rows is empty")
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise AnnotationError(f"annotations row {i} is a {type(r).__name__}, not a dict")
    columns = [str(k) for k in rows[0]]
    stripped = [_cell(c) for c in columns]

    def records():
        for i, r in enumerate(rows):
            keys = [_cell(k) for k in r]
            if sorted(keys) != sorted(stripped):
                missing = [c for c in stripped if c not in keys]
                extra = [k for k in keys if k not in stripped]
                raise AnnotationError(
                    f"annotations row {i} does not have the columns of row 0"
                    + (f"; missing {', '.join(map(repr, missing))}" if missing else "")
                    + (f"; extra {', '.join(map(repr, extra))}" if extra else ""))
            by_key = {_cell(k): v for k, v in r.items()}
            yield f"row {i}", [by_key[c] for c in stripped]

    return _validate(columns, records(), None, "row")


def annotations_from_frame(frame) -> Annotations:
    """A data frame -> :class:`Annotations` (spec/dataset.md, "Annotations"): anything with
    ``to_dict('records')`` (a pandas DataFrame; pandas is not needed), its rows read as
    row dicts, missing values (None, NaN) blank."""
    try:
        rows = frame.to_dict("records")
    except Exception as e:                                  # noqa: BLE001 - any frame's error
        raise AnnotationError(f"annotations: {type(frame).__name__}.to_dict('records') "
                              f"failed: {e}") from None
    if not isinstance(rows, (list, tuple)):
        raise AnnotationError(f"annotations: {type(frame).__name__}.to_dict('records') gave a "
                              f"{type(rows).__name__}, not a list of row dicts")
    return annotations_from_rows([{k: None if _missing(v) else v for k, v in r.items()}
                                  if isinstance(r, Mapping) else r for r in rows])


def _missing(value) -> bool:
    """None, a float NaN or pandas' NA / NaT (a data frame's missing values)."""
    return (value is None or (isinstance(value, float) and value != value)
            or type(value).__name__ in ("NAType", "NaTType"))


def read_annotations(source) -> Annotations:
    """A CSV path, a list of row dicts or a data frame -> :class:`Annotations` (spec/dataset.md)."""
    if isinstance(source, Annotations):
        return source
    if isinstance(source, (str, os.PathLike)):
        return read_annotations_csv(source)
    if isinstance(source, (list, tuple)):
        return annotations_from_rows(source)
    if callable(getattr(source, "to_dict", None)):
        return annotations_from_frame(source)
    raise AnnotationError(f"annotations must be a CSV path, a list of row dicts or a data frame "
                          f"(with to_dict('records')), not {type(source).__name__}")


def normalize_filters(ann: Annotations, filters, filter_blank) -> tuple:
    """Validate ``filters`` and ``filter_blank``; return ``({header: frozenset}, [headers])``.

    spec/dataset.md, "Filters". A filter value may be one value or a list,
    tuple or set of values; values are compared as text (``str``).
    """
    out = {}
    if filters:
        if not isinstance(filters, Mapping):
            raise AnnotationError(f"filters must be a dict {{header: [values]}}, "
                                  f"not {type(filters).__name__}")
        ann.check_headers(filters.keys(), "filter header")
        for h, vals in filters.items():
            if isinstance(vals, (list, tuple, set, frozenset)):
                vals = [_cell(v) for v in vals]
            else:
                vals = [_cell(vals)]
            out[h] = frozenset(vals)
    blank = []
    if filter_blank:
        blank = [filter_blank] if isinstance(filter_blank, str) else list(filter_blank)
        ann.check_headers(blank, "filter_blank header")
    return out, blank


def passes(row: Mapping[str, str], filters: Mapping[str, frozenset], blank: Sequence[str]) -> bool:
    """True when ``row`` passes every filter and is non-blank in every ``blank`` header.

    spec/dataset.md, "Building".
    """
    return (all(row[h] in allowed for h, allowed in filters.items())
            and not any(row[h] == "" for h in blank))


def write_annotations_csv(path, columns, rows) -> str:
    """Write an annotation table as the CSV file :func:`read_annotations_csv` reads
    (spec/dataset.md, "Annotations"): ``columns`` (``patient``, ``slide`` and the outcome
    headers) on the first line, then one line per row of ``rows`` (sequences aligned with
    ``columns``). Returns ``path``."""
    path = os.fspath(path)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(list(columns))
        writer.writerows(list(r) for r in rows)
    return path


__all__ = ["Annotations", "read_annotations", "read_annotations_csv", "annotations_from_rows",
           "write_annotations_csv",
           "normalize_filters", "passes", "is_blank", "REQUIRED_COLUMNS", "DatasetError",
           "AnnotationError", "LabelError", "BalanceError", "ClipError", "SplitError",
           "ProjectError", "DatasetMismatchWarning"]
