"""Datasets: tfrecords matched to annotations, with balancing, clipping and splits.

Implements spec/dataset.md (the formulas are :mod:`tilespec.balance`'s). A
:class:`Dataset` is a sorted list of tfrecord paths, each matched (by file stem)
to one annotation row, plus two configurations: balancing (probability weights
per tfrecord) and clipping (records kept per tfrecord). Methods (``balance``,
``clip``, ``filter``, the splits) return new datasets and leave the original as
it was. The one exception is assignment, as slideflow's documentation writes it:
``dataset.prob_weights = {...}`` and ``dataset.clip_counts = {...}`` (alias
``dataset._clip``) replace that dataset's configuration in place (spec/dataset.md,
"Assigning weights and clip counts"). A named strategy is remembered, not frozen:
its weights and counts are derived from the dataset's current tfrecords and clip
each time, so ``balance`` and ``clip`` compose in either order, and a
train/validation subset re-derives them for its own tfrecords.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import os
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import Hashable, Mapping, NamedTuple, Sequence

import numpy as np

from . import balance as bal
from .annotations import (AnnotationError, Annotations, BalanceError, ClipError, DatasetError,
                          DatasetMismatchWarning, SplitError, normalize_filters, passes,
                          read_annotations)
from .errors import TFRecordError
from .images import MAX_TILE_PIXELS, check_max_tile_pixels
from .index import load_index
from .records import MAX_RECORD_BYTES, check_max_record_bytes
from .labels import as_header_list, category_keys, is_float_values, make_labels

TFRECORD_SUFFIXES = (".tfrecords", ".tfrecord")
_SHOW = 20  # names listed in a mismatch warning before "... and N more"


class EmptyTFRecordWarning(UserWarning):
    """A dataset's tfrecord holds 0 records: kept (0 tiles in the manifest), never sampled
    (spec/dataset.md, "Empty tfrecords")."""


class SamplingTable(NamedTuple):
    """What the sampler consumes, aligned with ``Dataset.tfrecords()`` (spec/dataset.md).

    ``paths`` (str), ``counts`` n_t (int64), ``clip`` c_t (int64, n_t when
    unclipped), ``weights`` w_t (float64, summing to 1; 1/T when unbalanced).
    """

    paths: np.ndarray
    counts: np.ndarray
    clip: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True)
class _BalanceConfig:
    strategy: str
    headers: tuple | None
    force: bool


@dataclass(frozen=True)
class _ClipConfig:
    max_tiles: int
    strategy: str | None
    headers: tuple | None
    force: bool


def tfrecord_stem(path: str) -> str:
    """``/x/slide-1.tfrecords`` -> ``slide-1``: the name matched to the annotations' slide."""
    base = os.path.basename(path)
    for suffix in TFRECORD_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def _not_a_source(source) -> DatasetError:
    return DatasetError(f"tfrecords must be a folder, a path, or a list of them, "
                        f"not {type(source).__name__}")


def _source_path(item) -> str:
    """One entry of a tfrecords list as a path, or DatasetError naming it."""
    if not isinstance(item, (str, os.PathLike)):
        raise DatasetError(f"tfrecords: {item!r} is not a path")
    return os.fspath(item)


def find_tfrecords(source) -> list:
    """Absolute paths of the tfrecords in ``source``, sorted (spec/dataset.md, "Building").

    ``source`` is a folder, a tfrecord file, or a list of folders and files.
    A folder contributes its ``*.tfrecords`` / ``*.tfrecord`` files (not
    sub-folders). Two tfrecords with the same stem are an error.
    """
    if isinstance(source, (str, os.PathLike)):
        items = [source]
    elif isinstance(source, (list, tuple)):
        items = list(source)
        if not items:
            raise DatasetError("tfrecords: the list of folders/paths is empty")
    else:
        raise _not_a_source(source)
    found = []
    for item in items:
        p = os.path.abspath(_source_path(item))
        if os.path.isdir(p):
            found += [os.path.join(p, f) for f in sorted(os.listdir(p))
                      if f.endswith(TFRECORD_SUFFIXES) and os.path.isfile(os.path.join(p, f))]
        elif os.path.isfile(p):
            if not p.endswith(TFRECORD_SUFFIXES):
                raise DatasetError("not a tfrecord file (expected a .tfrecords or .tfrecord "
                                   "name)", path=p)
            found.append(p)
        else:
            raise DatasetError("tfrecords folder or file not found", path=p)
    by_stem: dict = {}
    for p in found:
        stem = tfrecord_stem(p)
        if stem in by_stem:
            raise DatasetError(f"two tfrecords have the stem {stem!r}: {by_stem[stem]} and {p}; "
                               "a slide must have exactly one tfrecord")
        by_stem[stem] = p
    return sorted(found)


def tfrecord_paths(source) -> list:
    """The tfrecords a loader reads (spec/sampling.md, "Indexed dataset"): a folder or a
    tfrecord path is read as by :func:`find_tfrecords` (sorted, absolute); a list keeps
    its order, each folder in it giving its sorted tfrecords and each file kept as
    given. A path that does not exist is a :class:`DatasetError` naming it."""
    if isinstance(source, (str, os.PathLike)):
        return find_tfrecords(source)
    if not isinstance(source, (list, tuple, np.ndarray)):
        raise _not_a_source(source)
    out = []
    for item in source:
        p = _source_path(item)
        if os.path.isdir(p):
            out += find_tfrecords(p)
        elif os.path.isfile(p):
            out.append(p)
        else:
            raise DatasetError("tfrecords folder or file not found", path=os.path.abspath(p))
    return out


def _listing(names: Sequence[str], attr: str) -> str:
    shown = ", ".join(names[:_SHOW])
    more = len(names) - _SHOW
    return shown + (f", ... and {more} more (see Dataset.{attr})" if more > 0 else "")


# -- patient splits (pure) ----------------------------------------------------------------------

def patient_order(patients: Sequence[str], seed: int = 0) -> list:
    """Patients ordered by the SHA-256 hex digest of ``f"{seed}:{patient}"`` (UTF-8).

    spec/dataset.md, "Splits". The order is a seeded shuffle that depends on
    nothing but the seed and the names (no random number generator).
    """
    seed = _check_seed(seed)
    key = {p: hashlib.sha256(f"{seed}:{p}".encode("utf-8")).hexdigest() for p in patients}
    return sorted(set(patients), key=lambda p: (key[p], p))


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise SplitError(f"seed must be an integer, got {seed!r}")
    return int(seed)


def _strata_groups(order: Sequence[str], strata: Mapping[str, Hashable] | None) -> list:
    if strata is None:
        return [list(order)]
    missing = [p for p in order if p not in strata]
    if missing:
        raise SplitError(f"no stratum for patient(s) {', '.join(map(repr, missing))}")
    keys = sorted({strata[p] for p in order})
    return [[p for p in order if strata[p] == k] for k in keys]


def kfold_patients(patients: Sequence[str], k: int, *, seed: int = 0,
                   strata: Mapping[str, Hashable] | None = None) -> list:
    """Split patients into ``k`` folds (spec/dataset.md, "Splits").

    Patients are put in :func:`patient_order`; with ``strata`` they are then
    grouped by stratum (strata in sorted order, the seeded order kept within
    each). The i-th patient of that sequence goes to fold ``i mod k``. Every
    patient lands in exactly one fold; fold sizes differ by at most one, and
    so do the counts of any one stratum across folds. Folds are returned
    with their patients sorted.
    """
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 2:
        raise SplitError(f"k must be an integer >= 2, got {k!r}")
    order = patient_order(patients, seed)
    if k > len(order):
        raise SplitError(f"cannot make {k} folds from {len(order)} patient(s): every fold "
                         "needs at least one patient")
    folds: list = [[] for _ in range(k)]
    seq = [p for g in _strata_groups(order, strata) for p in g]
    for i, p in enumerate(seq):
        folds[i % k].append(p)
    return [sorted(f) for f in folds]


def fixed_split_patients(patients: Sequence[str], val_fraction, *, seed: int = 0,
                         strata: Mapping[str, Hashable] | None = None) -> tuple:
    """Split patients into (train, val) with ``floor(val_fraction * P)`` in val.

    spec/dataset.md, "Splits". ``val_fraction`` is read as the decimal it
    prints as (0.3 is 3/10). With ``strata`` the validation count is shared
    over the strata by largest remainder (ties to the earlier stratum), and
    each stratum gives its first patients in the seeded order.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, numbers.Real) or \
            not 0 < val_fraction < 1:
        raise SplitError(f"val_fraction must be a number strictly between 0 and 1, "
                         f"got {val_fraction!r}")
    order = patient_order(patients, seed)
    n_val = math.floor(Fraction(str(val_fraction)) * len(order))
    if not 0 < n_val < len(order):
        raise SplitError(f"val_fraction={val_fraction} of {len(order)} patient(s) gives "
                         f"{n_val} validation patient(s); both sides need at least one")
    groups = _strata_groups(order, strata)
    shares = bal.apportion([len(g) for g in groups], n_val) if len(groups) > 1 else [n_val]
    val = [p for g, a in zip(groups, shares) for p in g[:int(a)]]
    in_val = set(val)
    train = [p for p in order if p not in in_val]
    return sorted(train), sorted(val)


# -- the dataset --------------------------------------------------------------------------------

class Dataset:
    """Tfrecords matched to annotation rows, with balancing and clipping (spec/dataset.md).

    ``Dataset(tfrecords, annotations=None, filters=None, filter_blank=None,
    on_error='raise')``:

    - ``tfrecords``: a folder, a tfrecord path, or a list of folders/paths.
    - ``annotations``: a CSV path or a list of row dicts with columns
      ``patient``, ``slide`` and any outcome headers; None for a dataset of
      unannotated tfrecords (each tfrecord its own slide, no patients).
    - ``filters``: ``{header: [allowed values]}``; ``filter_blank``: header(s)
      whose blank values exclude a slide.
    - ``on_error``: what a tfrecord whose index cannot be loaded or built (a
      damaged record, no index yet; a GZIP file) does to construction. An empty
      (0-byte) tfrecord is not damaged: it is kept with 0 records and warned about
      once (:class:`EmptyTFRecordWarning`; spec/dataset.md, "Empty tfrecords").
      'raise' (default): the index error, naming the file. 'skip': its count n_t
      is the number of records its headers locate (the scan the loaders make
      with ``on_error='skip'``), with a warning naming the file; read it with a
      loader given ``on_error='skip'``. Derived datasets keep the setting.
      spec/dataset.md, "Counts".
    - ``max_record_bytes`` (default 64 MiB) and ``max_tile_pixels`` (default
      4096 x 4096): the size caps of spec/reliability.md, "Size caps", applied
      when the records are counted and passed to every loader of this dataset
      (:meth:`numpy`, :meth:`torch`, :meth:`tensorflow`) unless the loader is
      given its own. Derived datasets keep them.

    Tfrecords are matched to rows by file stem. Tfrecords without a row and
    rows (passing the filters) without a tfrecord are left out and reported
    in one :class:`DatasetMismatchWarning` (count and names) and in
    ``unmatched_tfrecords`` / ``missing_slides``. An empty result is an error.
    """

    def __init__(self, tfrecords, annotations=None, filters=None, filter_blank=None, *,
                 on_error: str = "raise", max_record_bytes: int = MAX_RECORD_BYTES,
                 max_tile_pixels: int = MAX_TILE_PIXELS, min_tiles: int = 0):
        if on_error not in ("raise", "skip"):
            raise DatasetError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        try:
            limits = {"max_record_bytes": check_max_record_bytes(max_record_bytes),
                      "max_tile_pixels": check_max_tile_pixels(max_tile_pixels)}
        except ValueError as e:
            raise DatasetError(str(e)) from None
        found = find_tfrecords(tfrecords)
        if not found:
            raise DatasetError(f"no tfrecords found in {tfrecords!r}")
        ann = read_annotations(annotations) if annotations is not None else None
        unmatched: list = []
        missing: list = []
        if ann is None:
            if filters or filter_blank:
                raise AnnotationError("filters and filter_blank need annotations")
            f_norm, blank = {}, []
            paths = found
        else:
            f_norm, blank = normalize_filters(ann, filters, filter_blank)
            by_stem = {tfrecord_stem(p): p for p in found}
            unmatched = [p for p in found if tfrecord_stem(p) not in ann.rows]
            kept = [s for s, row in ann.rows.items() if passes(row, f_norm, blank)]
            missing = [s for s in kept if s not in by_stem]
            paths = sorted(by_stem[s] for s in kept if s in by_stem)
            msgs = []
            if unmatched:
                msgs.append(f"{len(unmatched)} tfrecord(s) have no annotation row and are left "
                            f"out: {_listing(unmatched, 'unmatched_tfrecords')}")
            if missing:
                msgs.append(f"{len(missing)} annotated slide(s) have no tfrecord: "
                            f"{_listing(missing, 'missing_slides')}")
            if msgs:
                warnings.warn("; ".join(msgs), DatasetMismatchWarning, stacklevel=2)
        if not paths:
            raise DatasetError(
                f"empty dataset: none of the {len(found)} tfrecord(s) is left after matching "
                f"them to the annotation rows by stem"
                + (f" and applying filters={filters!r}" if filters else "")
                + (f" and filter_blank={filter_blank!r}" if filter_blank else ""),
                path=ann.source if ann is not None else None)
        self._setup(ann, tuple(paths), f_norm, blank, {}, None, None, on_error)
        self._limits = limits
        self.unmatched_tfrecords = unmatched
        self.missing_slides = missing
        counts = self._counts()  # read every n_t now: a bad tfrecord is a construction error
        empty = [p for p, n in zip(self._paths, counts) if n == 0]
        if empty:  # once per dataset built (derived datasets do not warn again)
            warnings.warn(f"{len(empty)} of the {len(counts)} tfrecord(s) are empty (0 records):"
                          f" {_listing(empty, 'empty_tfrecords()')}; they are kept with 0 tiles "
                          "and never sampled", EmptyTFRecordWarning, stacklevel=2)
        self._min_tiles = 0
        if min_tiles:
            self._keep_min_tiles(min_tiles)

    def _keep_min_tiles(self, min_tiles) -> None:
        """Leave out (in place) the tfrecords with fewer than ``min_tiles`` records n_t,
        as slideflow's ``min_tiles`` filter (spec/dataset.md, "Filters")."""
        if isinstance(min_tiles, bool) or not isinstance(min_tiles, numbers.Integral) \
                or min_tiles < 0:
            raise DatasetError(f"min_tiles must be an integer >= 0, got {min_tiles!r}")
        counts = self._counts()
        kept = tuple(p for p, n in zip(self._paths, counts) if n >= min_tiles)
        if not kept:
            raise DatasetError(f"empty dataset: none of the {len(self._paths)} tfrecord(s) has "
                               f"at least min_tiles={int(min_tiles)} tiles (the most is "
                               f"{int(counts.max())})")
        if kept != self._paths:
            derived = self._derive(paths=kept)      # the weights and clips of what is kept
            self._setup(self._ann, kept, self._filters, self._filter_blank, self._counts_cache,
                        derived._balance_cfg, derived._clip_cfg, self._on_error)
        self._min_tiles = max(self._min_tiles, int(min_tiles))

    @property
    def min_tiles(self) -> int:
        """The active min_tiles filter (0: none; spec/dataset.md, "Filters")."""
        return self._min_tiles

    # -- internal state ------------------------------------------------------------------------

    def _setup(self, ann, paths, filters, blank, counts_cache, balance_cfg, clip_cfg,
               on_error):
        self._ann: Annotations | None = ann
        self._on_error: str = on_error
        self._paths: tuple = paths
        self._path_set = frozenset(paths)
        self._filters = filters
        self._filter_blank = list(blank)
        self._counts_cache: dict = counts_cache       # shared by derived datasets
        self._files_cache: dict = counts_cache.setdefault(("files",), {})  # slides, tile size
        self._balance_cfg = balance_cfg               # None | _BalanceConfig | {path: weight}
        self._clip_cfg = clip_cfg                     # None | _ClipConfig | {path: count}
        self._cache: dict = {}

    def _derive(self, *, paths=None, balance_cfg=..., clip_cfg=...) -> "Dataset":
        new = object.__new__(Dataset)
        paths = self._paths if paths is None else tuple(paths)
        b = self._balance_cfg if balance_cfg is ... else balance_cfg
        c = self._clip_cfg if clip_cfg is ... else clip_cfg
        if paths != self._paths:
            keep = set(paths)
            if isinstance(b, dict):
                total = sum(v for p, v in b.items() if p in keep)
                if not total > 0:
                    raise BalanceError("the custom prob_weights of the tfrecords in this subset "
                                       "sum to 0")
                b = {p: v / total for p, v in b.items() if p in keep}
            if isinstance(c, dict):
                c = {p: v for p, v in c.items() if p in keep}
        new._setup(self._ann, paths, self._filters, self._filter_blank, self._counts_cache, b, c,
                   self._on_error)
        new._limits = self._limits
        new.unmatched_tfrecords = list(self.unmatched_tfrecords)
        new.missing_slides = list(self.missing_slides)
        new._min_tiles = getattr(self, "_min_tiles", 0)
        return new

    def _assign(self, *, balance_cfg=..., clip_cfg=...) -> None:
        """The one in-place change (spec/dataset.md, "Assigning weights and clip counts"):
        replace the balance and/or clip configuration and forget every array derived from
        the configurations (clip counts and weights, since 'tile' weights follow the clip);
        record counts stay. Datasets derived earlier keep their own configuration."""
        if balance_cfg is not ...:
            self._balance_cfg = balance_cfg
        if clip_cfg is not ...:
            self._clip_cfg = clip_cfg
        for derived in ("clip", "weights"):
            self._cache.pop(derived, None)

    def __copy__(self):
        return self._derive()

    def __deepcopy__(self, memo):
        return self._derive()

    def __repr__(self) -> str:
        return (f"Dataset({len(self._paths)} tfrecords, {len(self.slides())} slides, "
                f"balance={self._describe(self._balance_cfg)}, "
                f"clip={self._describe(self._clip_cfg)})")

    @staticmethod
    def _describe(cfg) -> str:
        if cfg is None:
            return "None"
        if isinstance(cfg, dict):
            return "custom"
        return repr(cfg.strategy if not isinstance(cfg, _ClipConfig) else
                    (cfg.max_tiles, cfg.strategy))

    def _slide(self, path: str) -> str:
        return tfrecord_stem(path)

    def _need_annotations(self, what: str) -> Annotations:
        if self._ann is None:
            raise AnnotationError(f"{what} needs annotations; this dataset has none")
        return self._ann

    def _key(self, path) -> str:
        if not isinstance(path, (str, os.PathLike)):
            raise DatasetError(f"{path!r} is not a tfrecord path")
        return os.path.abspath(os.fspath(path))

    # -- tfrecords, counts, annotations -------------------------------------------------------

    def tfrecords(self) -> list:
        """The tfrecord paths, absolute and sorted (spec/dataset.md, "Building")."""
        return list(self._paths)

    @property
    def on_error(self) -> str:
        """'raise' or 'skip': how a tfrecord that cannot be indexed was counted
        (spec/dataset.md, "Counts")."""
        return self._on_error

    def _counts(self) -> np.ndarray:
        if "counts" not in self._cache:
            out = []
            for p in self._paths:
                if p not in self._counts_cache:
                    self._counts_cache[p] = self._count(p)
                out.append(self._counts_cache[p])
            self._cache["counts"] = np.array(out, dtype=np.int64)
        return self._cache["counts"]

    def _count(self, path: str) -> int:
        """n_t of one tfrecord: its index's length; with on_error='skip', when no index
        can be loaded or built, the records located by the loaders' header scan."""
        cap = self._limits["max_record_bytes"]
        try:
            offsets, _ = load_index(path, max_record_bytes=cap)
            return len(offsets)
        except TFRecordError as e:
            if self._on_error != "skip":
                e.add_note("the dataset cannot count this tfrecord's records; "
                           "Dataset(..., on_error='skip') counts the records its headers "
                           "locate instead (read it with on_error='skip')")
                raise
        from .source import TileSource

        source = TileSource([path], on_error="skip", max_record_bytes=cap)
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            n = len(source.offsets(0))  # the very scan a skipping loader makes
        source.close()
        why = "; ".join(str(w.message) for w in seen) or f"{path}: no index can be built"
        warnings.warn(f"{why}. Dataset(on_error='skip') counts {n} record(s) for it",
                      UserWarning, stacklevel=4)
        return n

    def record_slides(self) -> dict:
        """``{path: (slide names stored in its records, distinct, in order of first
        appearance)}`` (spec/dataset.md, "Labels": what is read and when).

        Read on first use (a loader built with ``labels`` asks for it, to check
        every name has a label before the first batch) from each record's
        ``slide`` feature alone (:meth:`tilespec.source.TileSource.slides`: the
        image bytes are skipped, not read), then cached on the dataset and
        shared with the datasets derived from it.
        """
        from .source import TileSource

        todo = [p for p in self._paths if p not in self._files_cache.get("slides", {})]
        if todo:
            source = TileSource(todo, on_error=self._on_error)
            try:
                found = {p: source.slides(t) for t, p in enumerate(todo)}
            finally:
                source.close()
            self._files_cache.setdefault("slides", {}).update(found)
        cache = self._files_cache["slides"]
        return {p: cache[p] for p in self._paths}

    @property
    def tile_size(self):
        """``(height, width)`` of the dataset's tiles: the image of its first readable
        record, read from its header (:meth:`tilespec.source.TileSource.tile_size`,
        the one rule; cached), or None when no record reads (every tfrecord empty)
        (spec/dataset.md, "Counts"). Loaders check crop boxes and every tile against it."""
        from .source import TileSource

        key = ("tile_size", self._paths)
        if key not in self._files_cache:
            source = TileSource(self._paths, on_error=self._on_error,
                                max_record_bytes=self._limits["max_record_bytes"])
            try:
                size = source.tile_size(self._limits["max_tile_pixels"])
                self._files_cache[key] = None if size is None else size[:2]
            finally:
                source.close()
        return self._files_cache[key]

    def empty_tfrecords(self) -> list:
        """The tfrecords with 0 records, sorted (spec/dataset.md, "Empty tfrecords")."""
        return [p for p, n in zip(self._paths, self._counts()) if n == 0]

    def manifest(self, key: str = "path") -> dict:
        """``{path: {'total': n_t, 'clipped': c_t}}`` from the index files (with
        on_error='skip', header scans for tfrecords that cannot be indexed).

        spec/dataset.md, "Counts". ``key='name'`` keys it by slide name instead.
        """
        if key not in ("path", "name"):
            raise DatasetError(f"manifest key must be 'path' or 'name', got {key!r}")
        n, c = self._counts(), self._clip_array()
        return {(p if key == "path" else self._slide(p)): {"total": int(a), "clipped": int(b)}
                for p, a, b in zip(self._paths, n, c)}

    @property
    def num_tiles(self) -> int:
        """Records the dataset yields once: the sum of c_t (spec/dataset.md, "Counts")."""
        return int(self._clip_array().sum())

    def slides(self) -> list:
        """Slide names of the dataset's tfrecords, sorted (spec/dataset.md)."""
        return sorted(self._slide(p) for p in self._paths)

    def patients(self) -> dict:
        """``{slide: patient}`` for the dataset's slides (spec/dataset.md)."""
        ann = self._need_annotations("patients()")
        return {s: ann.rows[s]["patient"] for s in self.slides()}

    @property
    def annotations(self) -> Annotations | None:
        """The validated annotation table (all rows, before filters), or None.

        spec/dataset.md, "Annotations".
        """
        return self._ann

    @property
    def filters(self) -> dict:
        """The active filters, ``{header: sorted allowed values}`` (spec/dataset.md, "Building")."""
        return {h: sorted(v) for h, v in self._filters.items()}

    @property
    def filter_blank(self) -> list:
        """The active filter_blank headers (spec/dataset.md, "Building")."""
        return list(self._filter_blank)

    def filter(self, filters=None, filter_blank=None, min_tiles: int = 0) -> "Dataset":
        """A new dataset keeping the slides that also pass ``filters`` / ``filter_blank``
        and have at least ``min_tiles`` records.

        spec/dataset.md, "Filters". Filters add to the active ones (all must
        pass). The result keeps the balance and clip configuration.
        """
        if min_tiles and filters is None and filter_blank is None:
            new = self._derive()
            new._keep_min_tiles(min_tiles)
            return new
        ann = self._need_annotations("filter()")
        f_new, blank_new = normalize_filters(ann, filters, filter_blank)
        merged = dict(self._filters)
        for h, allowed in f_new.items():
            merged[h] = merged[h] & allowed if h in merged else allowed
        blank = self._filter_blank + [b for b in blank_new if b not in self._filter_blank]
        paths = [p for p in self._paths if passes(ann.rows[self._slide(p)], merged, blank)]
        if not paths:
            raise DatasetError(f"empty dataset: no slide passes filters={filters!r}"
                               + (f", filter_blank={filter_blank!r}" if filter_blank else ""))
        new = self._derive(paths=paths)
        new._filters, new._filter_blank = merged, blank
        if min_tiles:
            new._keep_min_tiles(min_tiles)
        return new

    # -- labels ---------------------------------------------------------------------------------

    def labels(self, headers, use_float=False, assign=None, format: str = "index"):
        """``(labels {slide: label}, unique labels)`` for ``headers`` (spec/dataset.md, "Labels").

        ``use_float``: False (categorical), True (float), 'auto' (float when
        every value is a number) or ``{header: bool}``. ``assign``:
        ``{header: {value: index}}`` fixing the indices of a categorical
        header. ``format``: 'index' (default) or 'name' for categorical labels.
        """
        ann = self._need_annotations("labels()")
        return make_labels(ann, self.slides(), headers, use_float, assign, format)

    @property
    def limits(self) -> dict:
        """``{'max_record_bytes': ..., 'max_tile_pixels': ...}``: this dataset's size caps,
        the defaults of its loaders (spec/reliability.md, "Size caps")."""
        return dict(self._limits)

    def _loader_options(self, kwargs) -> dict:
        """A loader's keyword arguments with this dataset's size caps where not given
        (the one place every backend's loader takes them from)."""
        return {**self._limits, **kwargs}

    def loader_labels(self, labels):
        """A loader's ``labels`` argument read for this dataset: None and a
        ``{slide: label}`` mapping as given, header name(s) as :meth:`labels` gives them
        (spec/dataset.md, "Labels"; the one reading every backend's loader uses)."""
        if labels is None or isinstance(labels, Mapping):
            return labels
        return self.labels(labels)[0]

    def numpy(self, labels=None, **kwargs):
        """The reference loader over this dataset (spec/sampling.md, "Loaders").

        ``labels``: None, ``{slide: label}`` (as returned by :meth:`labels`) or
        header name(s). Other keyword arguments are those of
        :class:`tilespec.loader.NumpyLoader` (batch_size, infinite, shuffle, seed,
        rank, num_replicas, augment, normalizer, transform, standardize,
        crop_left, crop_width, resize_target, resize_method, resize_aa,
        incl_slidenames, incl_loc, drop_last, on_error, uneven, elastic, max_record_bytes,
        max_tile_pixels: default this dataset's :attr:`limits`). The stream follows
        :meth:`sampling_table`: clip counts and balancing weights.
        """
        from .loader import NumpyLoader

        table = self.sampling_table()
        return NumpyLoader(list(table.paths), table.clip, table.weights,
                           labels=self.loader_labels(labels), record_slides=self.record_slides,
                           **self._loader_options(kwargs))

    def torch(self, labels=None, **kwargs):
        """A ``torch.utils.data.DataLoader`` over this dataset, from the PyTorch adapter
        (distribution ``tilespec-torch``; spec/adapters.md). Same stream as
        :meth:`numpy` with the same arguments."""
        from .plugins import make_loader

        return make_loader("torch", self, dict(self._loader_options(kwargs),
                                               labels=self.loader_labels(labels)))

    def tensorflow(self, labels=None, **kwargs):
        """A ``tf.data.Dataset`` over this dataset, from the TensorFlow adapter
        (distribution ``tilespec-tf``; spec/adapters.md). Same stream as
        :meth:`numpy` with the same arguments (``shard_idx``/``num_shards`` for
        rank/num_replicas)."""
        from .plugins import make_loader

        return make_loader("tensorflow", self, dict(self._loader_options(kwargs),
                                                    labels=self.loader_labels(labels)))

    def is_float(self, header: str) -> bool:
        """True when every value of ``header`` in this dataset is a finite number.

        spec/dataset.md, "Labels" (``use_float='auto'``).
        """
        ann = self._need_annotations("is_float()")
        ann.check_headers([header])
        return is_float_values(ann.rows[s][header] for s in self.slides())

    # -- groups ---------------------------------------------------------------------------------

    def _patient_groups(self, what: str) -> list:
        ann = self._need_annotations(what)
        return [ann.rows[self._slide(p)]["patient"] for p in self._paths]

    def _category_groups(self, headers, force: bool, what: str, error) -> list:
        ann = self._need_annotations(what)
        return category_keys(ann, [self._slide(p) for p in self._paths], headers, force=force,
                             what=what, error=error)

    def _strategy_groups(self, cfg, what: str, error):
        """The groups a clip or balance configuration's strategy works over: the
        patient or category key of each tfrecord, or None for the other strategies
        (spec/dataset.md, "Clipping" and "Balancing"). ``what`` ('clip' or 'balance')
        and ``error`` name the call in errors."""
        if cfg.strategy == "patient":
            return self._patient_groups(f"{what}(strategy='patient')")
        if cfg.strategy == "category":
            return self._category_groups(cfg.headers, cfg.force,
                                         f"{what}(strategy='category')", error)
        return None

    # -- clipping -------------------------------------------------------------------------------

    def _clip_array(self) -> np.ndarray:
        if "clip" not in self._cache:
            n = self._counts()
            cfg = self._clip_cfg
            if cfg is None:
                c = n.copy()
            elif isinstance(cfg, dict):  # a custom clip: c_t per tfrecord (custom_clip)
                c = np.array([cfg[p] for p in self._paths], dtype=np.int64)
            else:
                groups = self._strategy_groups(cfg, "clip", ClipError)
                c = bal.clip_counts(cfg.strategy, n, cfg.max_tiles, groups)
            self._cache["clip"] = c
        return self._cache["clip"]

    def clip(self, max_tiles: int = 0, strategy: str | None = None, headers=None, *,
             force: bool = False) -> "Dataset":
        """A new dataset with clip counts c_t (spec/dataset.md, "Clipping").

        - no strategy: c_t = min(n_t, max_tiles); ``clip(0)`` removes clipping.
        - 'slide': every c_t = min(n_t, m), m = min(max_tiles, smallest n_t)
          (smallest n_t when max_tiles is 0).
        - 'patient' / 'category' (``headers`` required): ``max_tiles`` caps each
          patient's / category's total (default: the smallest total); a group
          over the cap is clipped proportionally, by largest remainder.

        A new clip replaces an earlier one (it always starts from n_t); the
        balance configuration is kept and re-derived from the new counts.
        """
        max_tiles = bal.check_max_tiles(max_tiles)
        strategy = bal.canonical_clip_strategy(strategy)
        if strategy == "category":
            if headers is None:
                raise ClipError("clip(strategy='category') needs headers")
            headers = tuple(as_header_list(headers, self._need_annotations(
                "clip(strategy='category')")))
        elif headers is not None:
            raise ClipError(f"headers are only used with strategy='category', not "
                            f"strategy={strategy!r}")
        if strategy is None and not max_tiles:
            return self.unclip()
        new = self._derive(clip_cfg=_ClipConfig(max_tiles, strategy, headers, bool(force)))
        new._clip_array()       # validate now: errors belong to the clip() call
        new._weights_array()
        return new

    def unclip(self) -> "Dataset":
        """A new dataset without clipping (c_t = n_t) (spec/dataset.md, "Clipping")."""
        return self._derive(clip_cfg=None)

    @property
    def is_clipped(self) -> bool:
        """True when a clip (named or custom) is configured (spec/dataset.md, "Clipping")."""
        return self._clip_cfg is not None

    def _get_clip(self) -> dict:
        if self._clip_cfg is None:
            return {}
        return {p: int(c) for p, c in zip(self._paths, self._clip_array())}

    def _set_clip(self, value) -> None:
        if value is None or (isinstance(value, Mapping) and not value):
            cfg = None
        elif isinstance(value, Mapping):
            c = bal.custom_clip(value, self._paths, self._counts())
            cfg = dict(zip(self._paths, c.tolist()))
        else:
            raise ClipError(f"clip counts must be a dict {{tfrecord path: count}} or None, "
                            f"not {type(value).__name__}")
        self._assign(clip_cfg=cfg)

    clip_counts = property(
        _get_clip, _set_clip,
        doc="Clip counts ``{path: c_t}`` ({} when unclipped); assigning a dict sets a custom "
            "clip in place (read by :func:`tilespec.balance.custom_clip`: known tfrecords, "
            "integers >= 0; a value above n_t is read as n_t; a tfrecord left out is not "
            "clipped). spec/dataset.md, 'Custom clipping' and 'Assigning weights and clip "
            "counts'.")
    _clip = clip_counts  # the name slideflow's documentation uses

    # -- balancing ------------------------------------------------------------------------------

    def _weights_array(self) -> np.ndarray | None:
        if "weights" not in self._cache:
            cfg = self._balance_cfg
            if cfg is None:
                w = None
            elif isinstance(cfg, dict):
                w = np.array([cfg[p] for p in self._paths])
            else:
                groups = self._strategy_groups(cfg, "balance", BalanceError)
                w = bal.balance_weights(cfg.strategy, self._clip_array(), groups,
                                        counts=self._counts())
            self._cache["weights"] = w
        return self._cache["weights"]

    def balance(self, headers=None, strategy: str | None = "category", *,
                force: bool = False) -> "Dataset":
        """A new dataset with probability weights w_t (spec/dataset.md, "Balancing").

        - 'slide', None or 'none': w_t = 1/T.
        - 'tile': w_t = c_t / sum(c) (clipped counts).
        - 'patient': w_t = 1 / (P * m_p(t)), m_p(t) the tfrecords of t's patient.
        - 'category' (the default; ``headers`` required): w_t = 1 / (K * m_k(t))
          over the K categories (tuples of the headers' values); headers whose
          values are all numbers are refused unless ``force=True``.
        """
        strategy_name = bal.canonical_balance_strategy(strategy)
        if strategy_name == "category":
            if headers is None:
                raise BalanceError("balance(strategy='category') needs headers (the "
                                   "annotation column(s) that define the categories)")
            headers = tuple(as_header_list(headers, self._need_annotations(
                "balance(strategy='category')")))
        elif headers is not None:
            raise BalanceError(f"headers are only used with strategy='category', not "
                               f"strategy={strategy!r}")
        new = self._derive(balance_cfg=_BalanceConfig(strategy_name, headers, bool(force)))
        new._weights_array()    # validate now
        return new

    @property
    def is_balanced(self) -> bool:
        """True when balancing (named or custom) is configured (spec/dataset.md, "Balancing")."""
        return self._balance_cfg is not None

    @property
    def prob_weights(self) -> dict | None:
        """``{path: w_t}`` summing to 1, or None when no balancing is configured.

        Assigning a dict sets custom weights: it must have exactly the
        dataset's tfrecords as keys, finite values >= 0, a positive sum; it is
        stored divided by its sum. Assigning None removes balancing. Assignment changes
        this dataset in place (spec/dataset.md, "Custom weights" and "Assigning weights
        and clip counts").
        """
        w = self._weights_array()
        return None if w is None else {p: float(x) for p, x in zip(self._paths, w)}

    @prob_weights.setter
    def prob_weights(self, value) -> None:
        if value is None:
            cfg = None
        elif isinstance(value, Mapping):
            keyed = {}
            for k, v in value.items():
                p = self._key(k)
                if p in keyed:
                    raise BalanceError(f"prob_weights names {p} twice")
                keyed[p] = v
            unknown = [k for k in keyed if k not in self._path_set]
            missing = [p for p in self._paths if p not in keyed]
            if unknown or missing:
                raise BalanceError(
                    "prob_weights must have exactly the dataset's tfrecords as keys"
                    + (f"; unknown: {_listing(unknown, 'tfrecords()')}" if unknown else "")
                    + (f"; missing: {_listing(missing, 'tfrecords()')}" if missing else ""))
            norm = bal.normalize_weights([keyed[p] for p in self._paths], list(self._paths))
            cfg = dict(zip(self._paths, (float(x) for x in norm)))
        else:
            raise BalanceError(f"prob_weights must be a dict {{tfrecord path: weight}} or None, "
                               f"not {type(value).__name__}")
        self._assign(balance_cfg=cfg)

    # -- the sampler's view ---------------------------------------------------------------------

    def sampling_table(self) -> SamplingTable:
        """Arrays aligned with :meth:`tfrecords`: paths, n_t, c_t, w_t.

        spec/dataset.md, "The sampling table". Unbalanced datasets get the
        'slide' weights (1/T over the non-empty tfrecords, 0 for empty ones; all 0
        when every tfrecord is empty); unclipped ones c_t = n_t.
        """
        n = self._counts().copy()
        c = self._clip_array().copy()
        w = self._weights_array()
        if w is not None:
            w = w.copy()
        elif (n > 0).any():
            w = bal.balance_weights("slide", c, counts=n)
        else:  # every tfrecord is empty: nothing can be sampled (loaders refuse it)
            w = np.zeros(len(n))
        return SamplingTable(np.array(self._paths, dtype=str), n, c, w)

    # -- splits ---------------------------------------------------------------------------------

    def _patient_map(self) -> dict:
        """{patient: [paths]} (annotations required)."""
        ann = self._need_annotations("splitting by patient")
        out: dict = {}
        for p in self._paths:
            out.setdefault(ann.rows[self._slide(p)]["patient"], []).append(p)
        return out

    def _strata(self, labels, pmap: Mapping[str, list]) -> dict | None:
        if labels is None:
            return None
        ann = self._ann
        if isinstance(labels, Mapping):
            per_slide = {}
            for paths in pmap.values():
                for p in paths:
                    s = self._slide(p)
                    if s not in labels:
                        raise SplitError(f"labels has no entry for slide {s!r}")
                    v = labels[s]
                    per_slide[s] = tuple(v) if isinstance(v, (list, np.ndarray)) else v
        else:
            headers = as_header_list(labels, ann)
            slides = [self._slide(p) for ps in pmap.values() for p in ps]
            keys = category_keys(ann, slides, headers, force=True, what="stratified split")
            per_slide = dict(zip(slides, keys))
        strata = {}
        for patient, paths in pmap.items():
            values = {per_slide[self._slide(p)] for p in paths}
            if len(values) > 1:
                raise SplitError(f"patient {patient!r} has slides with different labels "
                                 f"({', '.join(map(repr, sorted(values, key=repr)))}); a "
                                 "stratified split needs one label per patient")
            strata[patient] = values.pop()
        try:
            sorted(set(strata.values()))
        except TypeError:
            raise SplitError("labels for a stratified split must be comparable (all strings "
                             "or all numbers)") from None
        return strata

    def _subset_by_patients(self, pmap: Mapping[str, list], patients) -> "Dataset":
        return self._derive(paths=sorted(p for pt in patients for p in pmap[pt]))

    def kfold_split(self, k: int, *, labels=None, seed: int = 0) -> tuple:
        """``k`` (train, val) pairs, fold i validating on patient fold i.

        spec/dataset.md, "Splits". No patient is in both sides of a pair and
        every patient validates exactly once. ``labels``: a header (or list),
        or ``{slide: label}``, to stratify by; every patient must have one
        label. The subsets keep the balance and clip configuration, re-derived
        for their own tfrecords.
        """
        pmap = self._patient_map()
        folds = kfold_patients(list(pmap), k, seed=seed, strata=self._strata(labels, pmap))
        out = []
        for i, val in enumerate(folds):
            train = [p for j, f in enumerate(folds) if j != i for p in f]
            out.append((self._subset_by_patients(pmap, train),
                        self._subset_by_patients(pmap, val)))
        return tuple(out)

    def split(self, labels=None, *, val_strategy: str = "fixed", val_fraction=None,
              val_k_fold: int | None = None, k_fold_iter: int | None = None,
              seed: int = 0) -> tuple:
        """One (train, val) split by patient (spec/dataset.md, "Splits").

        ``val_strategy='fixed'`` with ``val_fraction``; or ``'k-fold'`` with
        ``val_k_fold`` (K) and ``k_fold_iter`` (1..K), the pair
        ``kfold_split(K)[k_fold_iter - 1]``.
        """
        if val_strategy == "fixed":
            if val_fraction is None:
                raise SplitError("val_strategy='fixed' needs val_fraction")
            pmap = self._patient_map()
            train, val = fixed_split_patients(list(pmap), val_fraction, seed=seed,
                                              strata=self._strata(labels, pmap))
            return self._subset_by_patients(pmap, train), self._subset_by_patients(pmap, val)
        if val_strategy == "k-fold":
            if val_k_fold is None or k_fold_iter is None:
                raise SplitError("val_strategy='k-fold' needs val_k_fold (K) and k_fold_iter "
                                 "(1..K)")
            if isinstance(k_fold_iter, bool) or not isinstance(k_fold_iter, numbers.Integral) \
                    or not 1 <= k_fold_iter <= val_k_fold:
                raise SplitError(f"k_fold_iter must be in 1..{val_k_fold}, got {k_fold_iter!r}")
            return self.kfold_split(val_k_fold, labels=labels, seed=seed)[k_fold_iter - 1]
        raise SplitError(f"unknown val_strategy {val_strategy!r}; valid: 'fixed', 'k-fold'")


__all__ = ["Dataset", "SamplingTable", "EmptyTFRecordWarning", "find_tfrecords",
           "tfrecord_paths", "tfrecord_stem", "patient_order",
           "kfold_patients", "fixed_split_patients"]
