"""Slide labels from annotation headers (spec/dataset.md, "Labels").

``make_labels`` turns one or several annotation headers into a label per
slide. A categorical header's label is the index of the slide's value in the
header's sorted unique values (code-point order), or in the order an
``assign`` mapping fixes; a float header's label is the value parsed as a
finite float. One header gives one label per slide; several give a list.
"""

from __future__ import annotations

import math
import numbers
from typing import Mapping, Sequence

from .annotations import Annotations, LabelError

FORMATS = ("index", "name")


def parse_float(value: str, *, slide: str, header: str, source=None) -> float:
    """``value`` as a finite float, or a :class:`LabelError` naming slide, header and value.

    spec/dataset.md, "Labels".
    """
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise LabelError(f"slide {slide!r}, header {header!r}: value {value!r} is not a number",
                         path=source) from None
    if not math.isfinite(x):
        raise LabelError(f"slide {slide!r}, header {header!r}: value {value!r} is not a "
                         "finite number", path=source)
    return x


def _looks_float(value: str) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def is_float_values(values) -> bool:
    """True when every value parses as a finite float (and there is at least one).

    spec/dataset.md, "Labels" (``use_float='auto'``).
    """
    values = list(values)
    return bool(values) and all(_looks_float(v) for v in values)


def as_header_list(headers, ann: Annotations) -> list:
    """One header or a non-empty list of distinct headers, each an annotation column.

    spec/dataset.md, "Labels".
    """
    if isinstance(headers, str):
        headers = [headers]
    elif isinstance(headers, (list, tuple)):
        headers = list(headers)
    else:
        raise LabelError(f"headers must be a string or a list of strings, "
                         f"not {type(headers).__name__}")
    if not headers:
        raise LabelError("headers is empty; name at least one annotation header")
    dup = sorted({h for h in headers if headers.count(h) > 1})
    if dup:
        raise LabelError(f"header(s) listed twice: {', '.join(map(repr, dup))}")
    return ann.check_headers(headers)


def _values(ann: Annotations, slides: Sequence[str], header: str) -> list:
    out = []
    for s in slides:
        v = ann.rows[s][header]
        if v == "":
            raise LabelError(f"slide {s!r} ({ann.where[s]}) has a blank value for header "
                             f"{header!r}; exclude such slides with filter_blank={header!r}",
                             path=ann.source)
        out.append(v)
    return out


def resolve_use_float(use_float, headers: Sequence[str], ann: Annotations,
                      slides: Sequence[str]) -> dict:
    """``use_float`` (bool, 'auto' or {header: bool}) -> {header: bool}.

    spec/dataset.md, "Labels".
    """
    if isinstance(use_float, bool):
        return {h: use_float for h in headers}
    if isinstance(use_float, str) and use_float == "auto":
        return {h: is_float_values(ann.rows[s][h] for s in slides) for h in headers}
    if isinstance(use_float, Mapping):
        missing = [h for h in headers if h not in use_float]
        extra = [k for k in use_float if k not in headers]
        if missing or extra:
            raise LabelError("use_float dict must have exactly the headers as keys"
                             + (f"; missing {', '.join(map(repr, missing))}" if missing else "")
                             + (f"; not in headers {', '.join(map(repr, extra))}" if extra
                                else ""))
        for h in headers:
            if not isinstance(use_float[h], bool):
                raise LabelError(f"use_float[{h!r}] must be True or False, "
                                 f"got {use_float[h]!r}")
        return {h: use_float[h] for h in headers}
    raise LabelError(f"use_float must be True, False, 'auto' or a dict {{header: bool}}, "
                     f"got {use_float!r}")


def _check_assign(assign, headers: Sequence[str], is_float: Mapping[str, bool]) -> dict:
    if assign is None:
        return {}
    if not isinstance(assign, Mapping):
        raise LabelError(f"assign must be a dict {{header: {{value: index}}}}, "
                         f"not {type(assign).__name__}")
    out = {}
    for h, mapping in assign.items():
        if h not in headers:
            raise LabelError(f"assign names header {h!r}, which is not among the headers "
                             f"{list(headers)}")
        if is_float[h]:
            raise LabelError(f"assign is given for header {h!r}, which is read as float")
        if not isinstance(mapping, Mapping) or not mapping:
            raise LabelError(f"assign[{h!r}] must be a non-empty dict {{value: index}}")
        ids = []
        for value, idx in mapping.items():
            if isinstance(idx, bool) or not isinstance(idx, numbers.Integral):
                raise LabelError(f"assign[{h!r}][{value!r}] = {idx!r} is not an integer")
            ids.append(int(idx))
        if sorted(ids) != list(range(len(ids))):
            raise LabelError(f"assign[{h!r}] indices must be 0..{len(ids) - 1}, each once; "
                             f"got {sorted(ids)}")
        out[h] = {str(v).strip(): int(i) for v, i in mapping.items()}
    return out


def make_labels(ann: Annotations, slides: Sequence[str], headers, use_float=False,
                assign=None, format: str = "index"):
    """Labels of ``slides`` from ``headers``: ``(labels {slide: label}, unique labels)``.

    spec/dataset.md, "Labels". ``unique labels`` is a list for one header and
    a dict {header: list} for several; for a float header it is an empty list.
    """
    if format not in FORMATS:
        raise LabelError(f"format must be 'index' or 'name', got {format!r}")
    headers = as_header_list(headers, ann)
    slides = list(slides)
    if not slides:
        raise LabelError("no slides to label")
    is_float = resolve_use_float(use_float, headers, ann, slides)
    assigned = _check_assign(assign, headers, is_float)
    per_header = {}
    uniques = {}
    for h in headers:
        values = _values(ann, slides, h)
        if is_float[h]:
            per_header[h] = [parse_float(v, slide=s, header=h, source=ann.source)
                             for s, v in zip(slides, values)]
            uniques[h] = []
            continue
        if h in assigned:
            mapping = assigned[h]
            for s, v in zip(slides, values):
                if v not in mapping:
                    raise LabelError(f"slide {s!r}, header {h!r}: value {v!r} is not in "
                                     f"assign[{h!r}] (which has {sorted(mapping)})",
                                     path=ann.source)
            unique = [v for v, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
        else:
            unique = sorted(set(values))
            mapping = {v: i for i, v in enumerate(unique)}
        uniques[h] = unique
        per_header[h] = values if format == "name" else [mapping[v] for v in values]
    if len(headers) == 1:
        h = headers[0]
        return dict(zip(slides, per_header[h])), uniques[h]
    labels = {s: [per_header[h][i] for h in headers] for i, s in enumerate(slides)}
    return labels, uniques


def category_keys(ann: Annotations, slides: Sequence[str], headers, *, force: bool = False,
                  what: str = "category balancing", error=LabelError) -> list:
    """One category per slide: the tuple of its values under ``headers``.

    spec/dataset.md, "Balancing" ('category'). Headers whose values all look
    like numbers are refused unless ``force`` (they are probably continuous),
    raising ``error`` (default :class:`LabelError`; the dataset passes its
    BalanceError or ClipError).
    """
    if headers is None:
        raise error(f"{what} needs headers (the annotation column(s) that define "
                         "the categories)")
    headers = as_header_list(headers, ann)
    if not force:
        floaty = [h for h in headers if is_float_values(ann.rows[s][h] for s in slides)]
        if floaty:
            raise error(f"{what}: header(s) {', '.join(map(repr, floaty))} look like "
                             "floats (every value is a number); categories need categorical "
                             "values. Pass force=True to treat each distinct value as a "
                             "category.", path=ann.source)
    cols = [_values(ann, slides, h) for h in headers]
    return [tuple(c[i] for c in cols) for i in range(len(slides))]


__all__ = ["make_labels", "parse_float", "is_float_values", "resolve_use_float",
           "category_keys", "as_header_list", "FORMATS"]
