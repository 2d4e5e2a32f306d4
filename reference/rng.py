"""Counter-based randomness (spec/sampling.md, "Randomness").

Every random draw in tilespec is a pure function of where it is used. A draw
is identified by

    (seed, rank, epoch, position, slot, block)

and produced by Philox4x32-10 (Salmon et al., 2011), a counter-based
generator: no state is carried from one draw to the next, so any position of
any stream can be computed directly, in any order, by any worker or backend.

Keying, exactly:

1. ``seed`` is an integer in [0, 2**63). Its two 32-bit halves are the root
   key ``K = (seed mod 2**32, seed >> 32)``.
2. The stream key of (rank, epoch) is the first two output words of
   ``philox(K, counter=(rank, epoch, 0, STREAM_DOMAIN))``.
3. The four words of a draw are
   ``philox(stream_key, counter=(position mod 2**32, position >> 32, slot, block))``.

``slot`` says what the draw is for (``SLOT_SAMPLE`` for the sampling choice,
``SLOT_PERMUTE`` for shuffle permutations, ``augment_slot(k)`` for the k-th
character of an augmentation string); ``block`` numbers further groups of
four words when one use needs more than four. Two words make a uniform
double: ``u = ((w1 << 21) | (w0 >> 11)) * 2**-53`` in [0, 1) (53 bits: 32
from w1, 21 from w0), so one block yields two uniforms.

Everything here is vectorized over positions: a block of positions is one
NumPy call, not a Python object per draw.
"""

from __future__ import annotations

import secrets

import numpy as np

MAX_SEED = 2 ** 63
STREAM_DOMAIN = 0x7473_7031  # "tsp1": separates stream keys from draws
SLOT_SAMPLE = 0
SLOT_PERMUTE = 1
_AUGMENT_BASE = 16

_M0, _M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_LO = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def augment_slot(k: int) -> int:
    """Slot of the k-th (0-based) character of an augmentation string."""
    return _AUGMENT_BASE + int(k)


def new_seed() -> int:
    """A fresh seed from OS entropy, in [0, 2**63)."""
    return secrets.randbits(63)


def check_seed(seed) -> int:
    """Validate a user seed: an integer in [0, 2**63)."""
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    seed = int(seed)
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**63), got {seed}")
    return seed


def philox4x32(c0, c1, c2, c3, k0: int, k1: int):
    """Philox4x32-10 of counters (c0..c3, broadcastable uint32 arrays) under key (k0, k1).

    Returns four uint32 arrays. Known answers (Random123): counter 0 under key 0
    gives (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8).
    """
    c0, c1, c2, c3 = np.broadcast_arrays(*(np.asarray(c, dtype=np.uint64) & _LO
                                           for c in (c0, c1, c2, c3)))
    k0 &= 0xFFFFFFFF
    k1 &= 0xFFFFFFFF
    for r in range(10):
        p0 = _M0 * c0
        p1 = _M1 * c2
        c0, c1, c2, c3 = ((p1 >> _S32) ^ c1 ^ np.uint64(k0), p1 & _LO,
                          (p0 >> _S32) ^ c3 ^ np.uint64(k1), p0 & _LO)
        k0 = (k0 + _W0) & 0xFFFFFFFF
        k1 = (k1 + _W1) & 0xFFFFFFFF
    return tuple(c.astype(np.uint32) for c in (c0, c1, c2, c3))


def stream_key(seed: int, rank: int, epoch: int) -> tuple[int, int]:
    """The Philox key of stream (seed, rank, epoch) (step 2 of the keying)."""
    seed = check_seed(seed)
    w = philox4x32(rank, epoch, 0, STREAM_DOMAIN, seed & 0xFFFFFFFF, seed >> 32)
    return int(w[0]), int(w[1])


def words(key: tuple[int, int], positions, slot: int, block=0):
    """The four uint32 words of draw (positions, slot, block) under a stream key."""
    pos = np.asarray(positions, dtype=np.uint64)
    return philox4x32(pos & _LO, pos >> _S32, slot, block, key[0], key[1])


def _to_unit(w_lo, w_hi):
    hi = w_hi.astype(np.uint64) << np.uint64(21)
    return (hi | (w_lo.astype(np.uint64) >> np.uint64(11))).astype(np.float64) * 2.0 ** -53


def uniforms(key: tuple[int, int], positions, slot: int, n: int = 1) -> np.ndarray:
    """Uniform doubles in [0, 1): shape ``positions.shape + (n,)``.

    Uniform ``m`` comes from block ``m // 2``, words ``(2*(m%2), 2*(m%2)+1)``.
    """
    positions = np.asarray(positions)
    out = np.empty(positions.shape + (n,), dtype=np.float64)
    for b in range((n + 1) // 2):
        w = words(key, positions, slot, b)
        out[..., 2 * b] = _to_unit(w[0], w[1])
        if 2 * b + 1 < n:
            out[..., 2 * b + 1] = _to_unit(w[2], w[3])
    return out


def normals(key: tuple[int, int], positions, slot: int, n: int = 1) -> np.ndarray:
    """Standard normal variates by Box-Muller on :func:`uniforms` of the same slot.

    Normal pair (2m, 2m+1) uses uniforms (u1, u2) = (uniform 2m, uniform 2m+1):
    ``r = sqrt(-2 ln(1 - u1))``, ``z = (r cos(2 pi u2), r sin(2 pi u2))``.
    """
    m = n + (n % 2)
    u = uniforms(key, positions, slot, m)
    r = np.sqrt(-2.0 * np.log1p(-u[..., 0::2]))
    theta = 2.0 * np.pi * u[..., 1::2]
    z = np.empty_like(u)
    z[..., 0::2] = r * np.cos(theta)
    z[..., 1::2] = r * np.sin(theta)
    return z[..., :n]


def permutation(key: tuple[int, int], n: int, group: int, pass_: int) -> np.ndarray:
    """A random permutation of ``range(n)`` for (group, pass) under a stream key.

    The sort keys of item j are the 64 bits of words (0, 1) of draw
    (position = group * 2**32 + pass, slot = SLOT_PERMUTE, block = j); the
    permutation is the stable argsort of those keys (ties, 2**-64 likely, go
    to the lower j).
    """
    j = np.arange(n, dtype=np.uint64)
    pos = np.uint64((int(group) << 32) | (int(pass_) & 0xFFFFFFFF))
    w = philox4x32(pos & _LO, pos >> _S32, SLOT_PERMUTE, j, key[0], key[1])
    sort_key = (w[1].astype(np.uint64) << _S32) | w[0].astype(np.uint64)
    return np.argsort(sort_key, kind="stable")


__all__ = ["MAX_SEED", "SLOT_SAMPLE", "SLOT_PERMUTE", "augment_slot", "new_seed",
           "check_seed", "philox4x32", "stream_key", "words", "uniforms", "normals",
           "permutation"]
