"""Sampling plans: which record sits at every position of a rank's stream
(spec/sampling.md).

Inputs, aligned with a dataset's tfrecords in sorted path order:
``clip`` (c_t, records kept from the start of each file) and ``weights`` (w_t,
from balancing). Everything here is a pure function of those arrays and
(seed, rank, num_replicas, epoch, infinite, shuffle); positions are planned a
block at a time with vectorized NumPy.

Exhaustion policies, as named constants:

``FINITE``
    Each step picks a tfrecord among those with owned records left, with
    probability proportional to its weight, and emits its next record; the
    epoch ends when every owned record of a positive-weight tfrecord has been
    emitted exactly once.
``INFINITE``
    Each step picks a tfrecord with probability proportional to its weight
    among tfrecords that own a record, and emits its next record, cycling
    through the tfrecord pass after pass. The stream never ends.

A loader reads its stream through a :class:`RankStream`: the same number of
positions on every rank (pads or drops, ``uneven``), and with ``elastic`` the
job's single stream cut into global batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .rng import SLOT_SAMPLE, check_seed, permutation, stream_key, uniforms

FINITE = "finite"
INFINITE = "infinite"
BLOCK = 1 << 16  # positions planned per vectorized step
CHOICES_AHEAD = 1024  # infinite-stream picks drawn at least at a time (kept for later calls)


def partition(clip, num_replicas: int, rank: int):
    """Rank ``rank``'s part of every tfrecord: ``(starts, sizes)`` int64 arrays.

    spec/sampling.md, "Partition". The first c_t records of tfrecord t are cut
    into R contiguous parts, part r going to rank r: every part has
    ``q_t = c_t // R`` records, and the ``m_t = c_t mod R`` left over go one
    each to the ranks ``f_t, f_t + 1, ..., f_t + m_t - 1`` (mod R), where
    ``f_t = (m_0 + ... + m_{t-1}) mod R``: the remainders are dealt round the
    ranks tfrecord after tfrecord, so rank totals differ by at most one record.
    """
    check_rank(rank, num_replicas)
    c = np.asarray(clip, dtype=np.int64)
    if c.ndim != 1 or (c < 0).any():
        raise ValueError(f"clip counts must be a 1-D array of integers >= 0, got {clip!r}")
    R = int(num_replicas)
    q, rem = np.divmod(c, R)
    first = (np.cumsum(rem) - rem) % R
    starts = rank * q + _in_cyclic(rank, first, rem, R)
    sizes = q + (_in_cyclic(rank + 1, first, rem, R) - _in_cyclic(rank, first, rem, R))
    return starts, sizes


def _in_cyclic(r: int, first, m, R: int):
    """How many of the ranks 0..r-1 lie in the cyclic run ``first, ..., first + m - 1``
    (mod R), for arrays ``first`` and ``m`` (0 <= m < R)."""
    end = first + m
    straight = np.maximum(0, np.minimum(np.minimum(end, R), r) - first)
    wrapped = np.maximum(0, np.minimum(end - R, r))
    return straight + wrapped


def live_records(clip, weights) -> int:
    """Kept records of positive-weight tfrecords: the records a job's epoch covers."""
    c = np.asarray(clip, dtype=np.int64)
    w = np.asarray(weights, dtype=np.float64)
    return int(c[w > 0].sum())


def check_rank(rank, num_replicas, names=("rank", "num_replicas")):
    """Validate (rank, num_replicas) and return them as ints: integers with
    0 <= rank < num_replicas, or both None for (0, 1). One of them without the other
    is an error saying which is missing (spec/sampling.md, "Checked at construction").
    ``names`` are the options' names in messages (the TF adapter's shard_idx/num_shards)."""
    if rank is None and num_replicas is None:
        return 0, 1
    if rank is None or num_replicas is None:
        given, missing = (names[0], names[1]) if num_replicas is None else (names[1], names[0])
        value = rank if num_replicas is None else num_replicas
        raise ValueError(f"{given}={value!r} is given without {missing}: give both "
                         f"{names[0]} and {names[1]} (or neither, for one replica)")
    for name, v in zip(names, (rank, num_replicas)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an integer, got {v!r}")
    if num_replicas < 1:
        raise ValueError(f"{names[1]} must be >= 1, got {num_replicas}")
    if not 0 <= rank < num_replicas:
        raise ValueError(f"{names[0]} must be in [0, {num_replicas}), got {rank}")
    return int(rank), int(num_replicas)


def check_weights(weights, n: int) -> np.ndarray:
    """Validate sampling weights: n finite values >= 0 with a positive sum."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,):
        raise ValueError(f"expected {n} weights, got shape {w.shape}")
    if not np.isfinite(w).all() or (w < 0).any():
        bad = np.flatnonzero(~np.isfinite(w) | (w < 0))[0]
        raise ValueError(f"weight of tfrecord {bad} is {w[bad]}: weights must be finite and >= 0")
    return w


def _choose(u, cdf):
    """Index t with cdf[t-1] <= u * total < cdf[t] (inverse-CDF choice)."""
    return np.searchsorted(cdf, u * cdf[-1], side="right").clip(max=len(cdf) - 1)


def finite_choices(sizes, weights, key) -> np.ndarray:
    """The tfrecord index chosen at every position of a finite stream.

    spec/sampling.md, "Finite streams". Position i draws u_i (slot SLOT_SAMPLE)
    and picks t by inverse CDF over the weights of the tfrecords that still
    have records at that step. Planned in phases: while no tfrecord runs out
    the choices are i.i.d., so a phase is one vectorized call; it ends at the
    pick that exhausts a tfrecord, which then leaves the CDF.
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    w = np.where(sizes > 0, np.asarray(weights, dtype=np.float64), 0.0)
    left = np.where(w > 0, sizes, 0)
    total = int(left.sum())
    out = np.empty(total, dtype=np.int64)
    u = np.empty(0)
    u_start = 0
    pos = 0
    while pos < total:
        active = left > 0
        wa = np.where(active, w, 0.0)
        cdf = np.cumsum(wa)
        # plan a window a little past the expected first exhaustion
        horizon = np.min(left[active] * (cdf[-1] / wa[active]))
        stop = min(total, pos + max(256, int(1.25 * horizon) + 32))
        if stop > u_start + len(u):  # uniforms are drawn ahead in large blocks
            u_start, u = pos, uniforms(key, np.arange(pos, min(total, max(stop, pos + BLOCK * 4))),
                                       SLOT_SAMPLE)[:, 0]
        c = _choose(u[pos - u_start:stop - u_start], cdf)
        counts = np.bincount(c, minlength=len(w))
        over = np.flatnonzero(counts >= left)
        over = over[active[over]]
        if not len(over):
            out[pos:stop] = c
            left -= counts
            pos = stop
            continue
        # the window position where an over-drawn tfrecord takes its last record: the
        # first position whose pick is the left[t]-th pick of its tfrecord t in `over`
        if len(over) <= 4:
            e = min(int(np.flatnonzero(c == t)[left[t] - 1]) for t in over)
        else:  # many at once (near the end of an epoch): vectorized over a short prefix
            size = 256
            while True:  # the shortest prefix (x4) in which some tfrecord runs out
                pre = c[:size]
                hit = over[np.bincount(pre, minlength=len(w))[over] >= left[over]]
                if len(hit) or size >= len(c):
                    break
                size *= 4
            in_hit = np.zeros(len(w), dtype=bool)
            in_hit[hit] = True
            idx = np.flatnonzero(in_hit[pre])
            occ = occurrence_index(pre[idx], np.zeros(len(w), dtype=np.int64))
            e = int(idx[np.flatnonzero(occ == left[pre[idx]] - 1)[0]])
        out[pos:pos + e + 1] = c[:e + 1]
        left -= np.bincount(c[:e + 1], minlength=len(w))
        pos += e + 1
    return out


def occurrence_index(choices, start_counts) -> np.ndarray:
    """k-th pick of its tfrecord, for each choice: ``start_counts[t] + earlier picks of t``."""
    n = len(choices)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(choices, kind="stable")
    sorted_c = choices[order]
    first = np.searchsorted(sorted_c, sorted_c, side="left")
    rank_in_group = np.arange(n) - first
    occ = np.empty(n, dtype=np.int64)
    occ[order] = rank_in_group
    return occ + np.asarray(start_counts, dtype=np.int64)[choices]


@dataclass
class StreamPlan:
    """The stream of one rank: position -> (tfrecord index, record index in file).

    spec/sampling.md, "Streams". ``clip`` and ``weights`` are aligned with the
    dataset's tfrecords (sorted paths). ``records(start, stop)`` returns the
    planned ``(t, j)`` arrays for positions [start, stop) (clamped to the end
    of a finite stream). Deterministic in (seed, rank, num_replicas, epoch).
    """

    clip: np.ndarray
    weights: np.ndarray
    seed: int
    rank: int = 0
    num_replicas: int = 1
    epoch: int = 0
    infinite: bool = True
    shuffle: bool = False
    _cache: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        self.clip = np.asarray(self.clip, dtype=np.int64)
        self.seed = check_seed(self.seed)
        self.weights = check_weights(self.weights, len(self.clip))
        # zero-weight tfrecords are never read: they take no part in the partition
        self.starts, self.sizes = partition(np.where(self.weights > 0, self.clip, 0),
                                            self.num_replicas, self.rank)
        if self.epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {self.epoch}")
        self.key = stream_key(self.seed, self.rank, self.epoch)
        self.live = (self.sizes > 0) & (self.weights > 0)
        if not self.live.any():
            raise ValueError(f"rank {self.rank} of {self.num_replicas} owns no record of a "
                             "tfrecord with positive weight: nothing to sample")
        self._finite = None
        self._resume = (0, np.zeros(len(self.clip), dtype=np.int64))  # (position, counts)
        self._cdf = np.cumsum(np.where(self.live, self.weights, 0.0))
        self._ahead = (0, np.zeros(0, dtype=np.int64))  # (first position, picks) drawn ahead

    @property
    def policy(self) -> str:
        return INFINITE if self.infinite else FINITE

    def __len__(self) -> int:
        """Positions in a finite stream: owned records of positive-weight tfrecords."""
        return int(self.sizes[self.live].sum())

    def records(self, start: int, stop: int):
        """``(t, j)`` int64 arrays for positions [start, stop)."""
        if start < 0 or stop < start:
            raise ValueError(f"bad position range [{start}, {stop})")
        if not self.infinite:
            if self._finite is None:
                c = finite_choices(self.sizes, self.weights, self.key)
                self._finite = (c, occurrence_index(c, np.zeros(len(self.clip), np.int64)))
            c, k = self._finite
            c, k = c[start:stop], k[start:stop]
            return c, self.starts[c] + self._within(c, k)
        counts = self._counts_at(start)
        c = self._choices(start, stop)
        k = occurrence_index(c, counts)
        self._resume = (stop, counts + np.bincount(c, minlength=len(self.clip)))
        return c, self.starts[c] + self._within(c, k)

    def records_at(self, positions):
        """``(t, j)`` int64 arrays for the given positions (any order; of a finite
        stream, each in [0, len(self)); of an infinite one, read as one range)."""
        positions = np.asarray(positions, dtype=np.int64)
        if not len(positions):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        lo, hi = int(positions.min()), int(positions.max()) + 1
        if lo < 0 or (not self.infinite and hi > len(self)):
            raise ValueError(f"positions outside [0, {len(self)}) of a finite stream")
        if hi - lo == len(positions) and (len(positions) == 1 or
                                          (np.diff(positions) == 1).all()):
            return self.records(lo, hi)
        if not self.infinite:
            self.records(0, 0)  # plans the epoch
            c, k = self._finite
            c, k = c[positions], k[positions]
            return c, self.starts[c] + self._within(c, k)
        t, j = self.records(lo, hi)
        return t[positions - lo], j[positions - lo]

    def _choices(self, start, stop):
        """Tfrecord picks of positions [start, stop) of an infinite stream. Picks are
        drawn :data:`CHOICES_AHEAD` positions at least at a time and kept, since a
        draw's cost is mostly fixed: small sequential calls slice the kept ones."""
        a, kept = self._ahead
        if not (a <= start and stop <= a + len(kept)):
            end = max(stop, start + CHOICES_AHEAD)
            u = uniforms(self.key, np.arange(start, end, dtype=np.int64), SLOT_SAMPLE)[:, 0]
            a, kept = self._ahead = (start, _choose(u, self._cdf))
        return kept[start - a:stop - a].copy()  # callers may write into what they get

    def _counts_at(self, position: int) -> np.ndarray:
        """Picks of every tfrecord before ``position`` (replayed in blocks to resume)."""
        pos, counts = self._resume
        if position < pos:
            pos, counts = 0, np.zeros(len(self.clip), dtype=np.int64)
        while pos < position:
            stop = min(position, pos + BLOCK)
            counts = counts + np.bincount(self._choices(pos, stop), minlength=len(self.clip))
            pos = stop
        self._resume = (pos, counts)
        return counts

    def _within(self, c, k):
        """Record within the rank's part of t for the k-th pick of t (pass k // size)."""
        size = self.sizes[c]
        passes, within = np.divmod(k, size)
        if not self.shuffle or not len(c):
            return within
        # group positions by (t, pass); each group reads one permutation
        order = np.lexsort((passes, c))
        cs, ps = c[order], passes[order]
        cut = np.flatnonzero((cs[1:] != cs[:-1]) | (ps[1:] != ps[:-1])) + 1
        out = np.empty_like(within)
        for a, b in zip(np.concatenate(([0], cut)), np.concatenate((cut, [len(c)]))):
            idx = order[a:b]
            out[idx] = self._permutation(int(cs[a]), int(ps[a]))[within[idx]]
        return out

    def _permutation(self, t: int, p: int) -> np.ndarray:
        perm = self._cache.get((t, p))
        if perm is None:
            if len(self._cache) > 4096:
                self._cache.clear()
            perm = permutation(self.key, int(self.sizes[t]), t, p)
            self._cache[(t, p)] = perm
        return perm


UNEVEN = ("pad", "drop")


def check_uneven(uneven) -> str:
    """Validate the equal-steps policy ``uneven``: 'pad' or 'drop'."""
    if not isinstance(uneven, str) or uneven not in UNEVEN:
        raise ValueError(f"uneven must be one of {UNEVEN}, got {uneven!r}")
    return uneven


@dataclass
class RankStream:
    """What one rank's loader reads in one epoch: loader position p -> stream position
    -> record ``(t, j)`` (spec/sampling.md, "Equal steps" and "Elastic streams").

    Without ``elastic`` the stream is rank r's own (a :class:`StreamPlan` over its
    partition) and loader position p is stream position p. A finite epoch has the
    same number of positions on every rank: N = ceil(L / R) with ``uneven='pad'``
    (a rank whose stream is one shorter repeats records: position p >= n holds the
    record of position (p - n) mod n, with the draws of position p), N = floor(L / R)
    with ``uneven='drop'`` (a rank whose stream is one longer leaves out its last
    position), L being the kept records of positive-weight tfrecords.

    With ``elastic`` the stream is the whole job's (the plan of rank 0 of 1, the same
    for any R) and global batch b is stream positions [b G, (b + 1) G), G = B R; rank
    r reads positions ``b G + r B + k`` (k < B) as its batch b, i.e. loader position
    p is stream position ``(p // B) G + r B + p mod B``. A finite epoch is padded to
    a whole number of global batches (``uneven='pad'``, the same rule as above), or
    its last partial global batch is dropped (``uneven='drop'`` or ``drop_last``).

    ``records(start, stop)``, ``positions(start, stop)`` (the stream positions, which
    key the draws) and ``pads(start, stop)`` take loader positions, clamped to the
    end of a finite epoch; ``len()`` is the epoch's loader positions (for an infinite
    loader, what a finite one would have); ``num_padded`` and ``num_dropped`` count
    this rank's pads and left-out positions per finite epoch.
    """

    clip: np.ndarray
    weights: np.ndarray
    seed: int
    rank: int = 0
    num_replicas: int = 1
    epoch: int = 0
    infinite: bool = True
    shuffle: bool = False
    batch_size: int | None = None
    drop_last: bool = False
    uneven: str = "pad"
    elastic: bool = False

    def __post_init__(self):
        check_rank(self.rank, self.num_replicas)
        check_uneven(self.uneven)
        if not isinstance(self.elastic, (bool, np.bool_)):
            raise TypeError(f"elastic must be True or False, got {self.elastic!r}")
        self.elastic = bool(self.elastic)
        clip = np.asarray(self.clip, dtype=np.int64)
        weights = check_weights(self.weights, len(clip))
        R, r = int(self.num_replicas), int(self.rank)
        B = self.B = 1 if self.batch_size is None else int(self.batch_size)
        if B < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        L = live_records(clip, weights)
        if self.elastic:
            self.stream = StreamPlan(clip, weights, self.seed, rank=0, num_replicas=1,
                                     epoch=self.epoch, infinite=self.infinite,
                                     shuffle=self.shuffle)
            G = self.global_batch_size = B * R
            whole = L // G if (self.uneven == "drop" or self.drop_last) else -(-L // G)
            self.length = whole * B
            last = (whole - 1) * G + r * B   # this rank's part of the last global batch
            self.num_padded = 0 if whole == 0 else max(0, last + B - max(L, last))
            mine = whole * G + r * B          # of the global batch left out
            self.num_dropped = max(0, min(L, mine + B) - mine)
        else:
            if L < R:
                raise ValueError(
                    f"rank {r} of {R}: {L} record(s) of positive-weight tfrecords for {R} "
                    "ranks, so some rank owns no record; every rank needs one (with "
                    "elastic=True every rank reads from the whole stream)")
            self.stream = StreamPlan(clip, weights, self.seed, rank=r, num_replicas=R,
                                     epoch=self.epoch, infinite=self.infinite,
                                     shuffle=self.shuffle)
            self.global_batch_size = None
            n = len(self.stream)
            self.length = -(-L // R) if self.uneven == "pad" else L // R
            self.num_padded = max(0, self.length - n)
            self.num_dropped = max(0, n - self.length)
        if self.infinite:
            self.num_padded = self.num_dropped = 0
        self.key = self.stream.key
        self.live, self.sizes, self.starts = (self.stream.live, self.stream.sizes,
                                              self.stream.starts)

    @property
    def policy(self) -> str:
        return self.stream.policy

    def __len__(self) -> int:
        return self.length

    def _range(self, start: int, stop: int) -> np.ndarray:
        if start < 0 or stop < start:
            raise ValueError(f"bad position range [{start}, {stop})")
        if not self.infinite:
            stop = max(start, min(stop, self.length))
        return np.arange(start, stop, dtype=np.int64)

    def positions(self, start: int, stop: int) -> np.ndarray:
        """The stream positions of loader positions [start, stop) (they key the draws)."""
        p = self._range(start, stop)
        if not self.elastic:
            return p
        q, k = np.divmod(p, self.B)
        return q * self.global_batch_size + self.rank * self.B + k

    def pads(self, start: int, stop: int) -> np.ndarray:
        """True where a loader position in [start, stop) is a pad (a repeated record)."""
        g = self.positions(start, stop)
        if self.infinite:
            return np.zeros(len(g), dtype=bool)
        return g >= len(self.stream)

    def records(self, start: int, stop: int):
        """``(t, j)`` int64 arrays for loader positions [start, stop)."""
        g = self.positions(start, stop)
        if not self.infinite:
            n = len(self.stream)
            g = np.where(g < n, g, (g - n) % n)
        return self.stream.records_at(g)


def worker_batches(worker: int, num_workers: int, batch_size: int | None, total=None,
                   drop_last: bool = False, start_batch: int = 0):
    """Yield ``(b, start, stop)`` for the batches worker ``worker`` produces.

    spec/sampling.md, "Workers". Worker w of W produces batches b with
    ``b mod W == w`` (b >= start_batch), batch b holding loader positions
    [b*B, (b+1)*B) (stream positions through :class:`RankStream`). For a finite stream of ``total`` positions the last
    batch is partial, or dropped with ``drop_last``.
    """
    check_rank(worker, num_workers, names=("worker", "num_workers"))
    B = 1 if batch_size is None else int(batch_size)
    if B < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    b = start_batch + ((worker - start_batch) % num_workers)
    while True:
        start, stop = b * B, (b + 1) * B
        if total is not None:
            if start >= total or (drop_last and stop > total):
                return
            stop = min(stop, total)
        yield b, start, stop
        b += num_workers


def num_batches(total: int, batch_size: int | None, drop_last: bool) -> int:
    """Batches in a finite stream of ``total`` positions."""
    B = 1 if batch_size is None else int(batch_size)
    return total // B if drop_last else -(-total // B)


__all__ = ["FINITE", "INFINITE", "UNEVEN", "partition", "StreamPlan", "RankStream",
           "check_uneven", "live_records", "finite_choices",
           "occurrence_index", "worker_batches", "num_batches", "check_rank", "check_weights"]
