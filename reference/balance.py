"""Balancing weights and clip counts as pure functions (spec/dataset.md, "Balancing", "Clipping").

Every function works on arrays aligned with a dataset's tfrecords (sorted
path order): ``counts`` n_t (records per tfrecord), ``clip`` c_t, and
``groups`` (one hashable key per tfrecord: its patient, or its category
tuple). :class:`tilespec.Dataset` calls these; they read no files.
"""

from __future__ import annotations

import math
import numbers
import os
from typing import Hashable, Mapping, Sequence

import numpy as np

from .annotations import BalanceError, ClipError

BALANCE_STRATEGIES = ("slide", "tile", "patient", "category")
CLIP_STRATEGIES = ("slide", "patient", "category")


def canonical_balance_strategy(strategy) -> str:
    """``None``, ``'none'`` and ``'slide'`` -> ``'slide'``; other names checked.

    spec/dataset.md, "Balancing". An unknown name raises :class:`BalanceError`.
    """
    if strategy is None or strategy == "none":
        return "slide"
    if isinstance(strategy, str) and strategy in BALANCE_STRATEGIES:
        return strategy
    raise BalanceError(f"unknown balancing strategy {strategy!r}; valid: None, 'none', "
                       + ", ".join(repr(s) for s in BALANCE_STRATEGIES))


def _as_counts(counts, what="counts", error=BalanceError) -> np.ndarray:
    arr = np.asarray(counts)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise error(f"{what} must be a 1-D array of integers, got shape {arr.shape} "
                    f"dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    if (arr < 0).any():
        raise error(f"{what} must be >= 0, got {arr.min()}")
    return arr


def slide_weights(n: int) -> np.ndarray:
    """'slide' balancing: w_t = 1/T for T tfrecords (spec/dataset.md, "Balancing")."""
    if n < 1:
        raise BalanceError("cannot balance an empty list of tfrecords")
    return np.full(n, 1.0 / n)


def tile_weights(clip) -> np.ndarray:
    """'tile' balancing: w_t = c_t / sum(c) (spec/dataset.md, "Balancing")."""
    c = _as_counts(clip, "clip counts")
    total = int(c.sum())
    if c.size == 0 or total == 0:
        raise BalanceError("'tile' balancing needs at least one record: every (clipped) "
                           "count is 0")
    return c / total


def group_weights(groups: Sequence[Hashable]) -> np.ndarray:
    """Equal mass per group, split equally over its tfrecords: w_t = 1 / (G * m_g(t)).

    spec/dataset.md, "Balancing" ('patient' and 'category').
    """
    groups = list(groups)
    if not groups:
        raise BalanceError("cannot balance an empty list of tfrecords")
    sizes: dict = {}
    for g in groups:
        sizes[g] = sizes.get(g, 0) + 1
    n_groups = len(sizes)
    return np.array([1.0 / (n_groups * sizes[g]) for g in groups])


def balance_weights(strategy, clip, groups: Sequence[Hashable] | None = None,
                    counts=None) -> np.ndarray:
    """Weights for ``strategy`` given clipped counts and (for 'patient'/'category') groups.

    spec/dataset.md, "Balancing" and "Empty tfrecords". With ``counts`` (n_t),
    an empty tfrecord (n_t = 0) gets w_t = 0 and the strategy's formula runs
    over the other tfrecords alone (T, P, K and m_g count non-empty tfrecords
    only), as if the empty ones were not in the dataset.
    """
    strategy = canonical_balance_strategy(strategy)
    c = _as_counts(clip, "clip counts")
    if groups is not None and len(groups) != c.size:
        raise BalanceError(f"strategy {strategy!r} needs one group per tfrecord")
    keep = np.ones(c.size, bool) if counts is None else _as_counts(counts) > 0
    if counts is not None and keep.shape != c.shape:
        raise BalanceError(f"got {keep.size} counts for {c.size} tfrecords")
    if c.size and not keep.any():
        raise BalanceError(f"cannot balance with strategy {strategy!r}: the dataset's "
                           f"{c.size} tfrecord(s) hold no tiles (every one of the {c.size} "
                           "tfrecord(s) is empty, 0 records)")
    if c.size and int(c.sum()) == 0:
        raise BalanceError(f"cannot balance with strategy {strategy!r}: the dataset's "
                           f"{c.size} tfrecord(s) hold no tiles (every clipped count is 0)")
    w = np.zeros(c.size)
    if strategy == "slide":
        w[keep] = slide_weights(int(keep.sum()))
    elif strategy == "tile":
        w[keep] = tile_weights(c[keep])
    elif groups is None:
        raise BalanceError(f"strategy {strategy!r} needs one group per tfrecord")
    else:
        w[keep] = group_weights([g for g, k in zip(groups, keep) if k])
    return w


def normalize_weights(values: Sequence, names: Sequence[str]) -> np.ndarray:
    """Validate custom weights aligned with ``names``; return them divided by their sum.

    spec/dataset.md, "Custom weights": each is a real number, finite and >= 0,
    and the sum is positive.
    """
    out = np.empty(len(values))
    for i, (v, name) in enumerate(zip(values, names)):
        if isinstance(v, bool) or not isinstance(v, numbers.Real):
            raise BalanceError(f"prob_weights[{name!r}] = {v!r} is not a number")
        v = float(v)
        if not math.isfinite(v):
            raise BalanceError(f"prob_weights[{name!r}] = {v!r} is not finite")
        if v < 0:
            raise BalanceError(f"prob_weights[{name!r}] = {v!r} is negative")
        out[i] = v
    total = out.sum()
    if not total > 0:
        raise BalanceError("prob_weights sum to 0; at least one weight must be positive")
    return out / total


def check_max_tiles(max_tiles) -> int:
    """``max_tiles`` must be an integer >= 0 (0 or None: not given). spec/dataset.md, "Clipping"."""
    if max_tiles is None:
        return 0
    if isinstance(max_tiles, bool) or not isinstance(max_tiles, numbers.Integral):
        raise ClipError(f"max_tiles must be an integer >= 0, got {max_tiles!r}")
    if max_tiles < 0:
        raise ClipError(f"max_tiles must be >= 0, got {max_tiles}")
    return int(max_tiles)


def canonical_clip_strategy(strategy) -> str | None:
    """None or one of 'slide', 'patient', 'category' (spec/dataset.md, "Clipping")."""
    if strategy is None or (isinstance(strategy, str) and strategy in CLIP_STRATEGIES):
        return strategy
    raise ClipError(f"unknown clipping strategy {strategy!r}; valid: None, "
                    + ", ".join(repr(s) for s in CLIP_STRATEGIES))


def apportion(counts, cap: int) -> np.ndarray:
    """Split ``cap`` over ``counts`` proportionally, by largest remainder.

    spec/dataset.md, "Clipping". Requires sum(counts) > cap >= 0. Each share
    starts at floor(cap * n_t / N); the leftover units go, one each, to the
    largest remainders (cap * n_t mod N), ties to the earlier tfrecord. The
    result sums to ``cap`` exactly and never exceeds n_t.
    """
    n = [int(x) for x in _as_counts(counts, error=ClipError)]
    total = sum(n)
    if not 0 <= cap < total:
        raise ClipError(f"apportion needs 0 <= cap < total, got cap={cap}, total={total}")
    share = [cap * x // total for x in n]
    rem = [cap * x % total for x in n]
    left = cap - sum(share)
    for i in sorted(range(len(n)), key=lambda i: (-rem[i], i))[:left]:
        share[i] += 1
    return np.array(share, dtype=np.int64)


def clip_to_max(counts, max_tiles: int) -> np.ndarray:
    """c_t = min(n_t, max_tiles) (spec/dataset.md, "Clipping")."""
    n = _as_counts(counts, error=ClipError)
    return np.minimum(n, check_max_tiles(max_tiles))


def clip_slide(counts, max_tiles: int = 0) -> np.ndarray:
    """'slide': every c_t = min(n_t, m) with m = min(max_tiles, min n) (or min n).

    spec/dataset.md, "Clipping".
    """
    n = _as_counts(counts, error=ClipError)
    if n.size == 0:
        raise ClipError("cannot clip an empty list of tfrecords")
    max_tiles = check_max_tiles(max_tiles)
    full = n[n > 0]  # empty tfrecords (n_t = 0) take no part: spec/dataset.md, "Empty tfrecords"
    if not full.size:
        return n.copy()
    m = int(full.min()) if not max_tiles else min(max_tiles, int(full.min()))
    return np.minimum(n, m)


def clip_groups(counts, groups: Sequence[Hashable], cap: int = 0) -> np.ndarray:
    """'patient' / 'category': each group's total capped at ``cap``, clipped proportionally.

    spec/dataset.md, "Clipping". ``cap`` 0 means the smallest group total
    among the groups with records (a group of empty tfrecords only takes no
    part). A group over the cap is :func:`apportion`-ed to exactly ``cap``; a
    group at or under it keeps every n_t.
    """
    n = _as_counts(counts, error=ClipError)
    groups = list(groups)
    if len(groups) != n.size:
        raise ClipError(f"got {len(groups)} groups for {n.size} tfrecords")
    if n.size == 0:
        raise ClipError("cannot clip an empty list of tfrecords")
    members: dict = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    totals = {g: int(n[idx].sum()) for g, idx in members.items()}
    if not any(totals.values()):
        return n.copy()
    cap = check_max_tiles(cap) or min(v for v in totals.values() if v > 0)
    out = n.copy()
    for g, idx in members.items():
        if totals[g] > cap:
            out[idx] = apportion(n[idx], cap)
    return out


def clip_counts(strategy, counts, max_tiles: int = 0,
                groups: Sequence[Hashable] | None = None) -> np.ndarray:
    """Clip counts for ``strategy`` (None, 'slide', 'patient', 'category').

    spec/dataset.md, "Clipping". With no strategy, ``max_tiles`` 0 means no
    clipping (c_t = n_t).
    """
    strategy = canonical_clip_strategy(strategy)
    max_tiles = check_max_tiles(max_tiles)
    n = _as_counts(counts, error=ClipError)
    if strategy is None:
        return clip_to_max(n, max_tiles) if max_tiles else n.copy()
    if strategy == "slide":
        return clip_slide(n, max_tiles)
    if groups is None:
        raise ClipError(f"strategy {strategy!r} needs one group per tfrecord")
    return clip_groups(n, groups, max_tiles)


def _clip_value(name, v) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise ClipError(f"clip[{name!r}] = {v!r} is not an integer")
    if v < 0:
        raise ClipError(f"clip[{name!r}] = {v!r} is negative")
    return int(v)


def check_clip_values(clip: Mapping[str, object]) -> dict:
    """Validate custom clip values: integers >= 0 (spec/dataset.md, "Custom clipping")."""
    return {name: _clip_value(name, v) for name, v in clip.items()}


def custom_clip(clip, paths: Sequence, counts) -> np.ndarray:
    """Clip counts c_t of a custom clip, aligned with ``paths`` (spec/dataset.md,
    "Custom clipping"): the one rule for ``Dataset.clip_counts = {...}`` and a
    loader's ``clip=`` argument.

    ``clip`` is None (c_t = n_t), a mapping ``{tfrecord path: count}`` (paths are
    compared made absolute; a tfrecord left out is not clipped) or a sequence
    aligned with ``paths``. Every count is an integer >= 0, and a count above n_t
    reads as n_t. Errors are :class:`ClipError` (a ``ValueError``) naming the
    tfrecord and the value.
    """
    n = _as_counts(counts, error=ClipError)
    if len(n) != len(paths):
        raise ClipError(f"{len(n)} counts for {len(paths)} tfrecords")
    if clip is None:
        return n.copy()
    if isinstance(clip, Mapping):
        known = [os.path.abspath(os.fspath(p)) for p in paths]
        known_set = set(known)
        keyed = {}
        for k, v in clip.items():
            if not isinstance(k, (str, os.PathLike)):
                raise ClipError(f"clip names {k!r}, which is not a tfrecord path")
            p = os.path.abspath(os.fspath(k))
            if p not in known_set:
                raise ClipError(f"clip names {k!r}, which is not a tfrecord of this dataset "
                                "(a tfrecord not in the dataset cannot be clipped)")
            keyed[p] = _clip_value(k, v)
        values = [keyed.get(p, a) for p, a in zip(known, n.tolist())]
    else:
        values = list(clip)
        if len(values) != len(paths):
            raise ClipError(f"clip has {len(values)} entries for {len(paths)} tfrecords")
        values = [_clip_value(os.fspath(p), v) for p, v in zip(paths, values)]
    return np.minimum(np.array(values, dtype=np.int64), n)


__all__ = ["BALANCE_STRATEGIES", "CLIP_STRATEGIES", "canonical_balance_strategy",
           "canonical_clip_strategy", "slide_weights", "tile_weights", "group_weights",
           "balance_weights", "normalize_weights", "check_max_tiles", "apportion",
           "clip_to_max", "clip_slide", "clip_groups", "clip_counts", "check_clip_values",
           "custom_clip"]
