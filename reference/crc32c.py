"""CRC32C (Castagnoli) and the TFRecord mask (spec/records.md, "Checksums").

``crc32c(data)`` uses the ``google_crc32c`` or ``crc32c`` package when one is
installed (hardware instructions, GB/s: the ``fast`` extra) and otherwise
:func:`crc32c_pure`. ``BACKEND`` names the one in use.

:func:`crc32c_pure` needs no CRC extension. Short inputs go through a
table-driven loop (slicing by 8, about 13 MB/s in CPython); inputs of
``_VECTOR_MIN`` bytes or more use a NumPy formulation that is 20-40 times
faster (about 300 MB/s; its tables are built on first use: ~15 ms, 1.3 MiB).
It rests on the linearity of the CRC over GF(2): with register 0 and no
final XOR ("raw" CRC),

* ``raw(X + Y) = shift(raw(X), len(Y)) ^ raw(Y)``, where ``shift(c, k)`` is
  the register ``c`` after ``k`` zero bytes;
* each byte's contribution depends only on its value and on how many bytes
  follow it, so ``raw`` of a block of ``_B`` bytes is the XOR of one table
  entry per byte (table ``_G``, ``_B`` x 256, one NumPy gather per input);
* leading zero bytes leave register 0 unchanged, so the input is padded at
  the front to whole blocks, and a start register ``c`` equals register 0
  with ``c`` XORed into the first four bytes (how ``crc`` and the standard
  initial value 0xFFFFFFFF enter).

Block CRCs are then combined with a second table (``_H``, shifts by whole
blocks) in groups of ``_K`` blocks, and the groups in a short Python loop.
Inputs over ``_PIECE`` bytes are done piece by piece, continuing the CRC, so
the temporaries stay small.
"""

from __future__ import annotations

import sys

_POLY = 0x82F63B78  # reflected Castagnoli polynomial
_MASK_DELTA = 0xA282EAD8


def _make_tables():
    t0 = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        t0.append(c)
    tables = [t0]
    for _ in range(7):
        prev = tables[-1]
        tables.append([(prev[n] >> 8) ^ t0[prev[n] & 0xFF] for n in range(256)])
    return tables


_T = _make_tables()
_LITTLE = sys.byteorder == "little"  # the 8-byte words below are read in native order


def _crc32c_table(data, crc: int = 0) -> int:
    """Table-driven CRC32C (slicing by 8), plain Python: the short-input path
    of :func:`crc32c_pure` and the reference its NumPy path is tested against."""
    t0, t1, t2, t3, t4, t5, t6, t7 = _T
    mv = memoryview(data).cast("B")
    n = len(mv)
    c = crc ^ 0xFFFFFFFF
    full = n - n % 8 if _LITTLE else 0
    if full:
        for w in mv[:full].cast("Q"):
            x = c ^ (w & 0xFFFFFFFF)
            hi = w >> 32
            c = (t7[x & 0xFF] ^ t6[(x >> 8) & 0xFF] ^ t5[(x >> 16) & 0xFF] ^ t4[x >> 24]
                 ^ t3[hi & 0xFF] ^ t2[(hi >> 8) & 0xFF] ^ t1[(hi >> 16) & 0xFF] ^ t0[hi >> 24])
    for b in mv[full:]:
        c = t0[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


# ------------------------------------------------------------ NumPy path
_B = 256            # block size in bytes: _G is _B x 256 uint32 (256 KiB); keep _B * 256 <= 2**16
_K = 256            # blocks per group: _H is _K x 4 x 256 uint32 (1 MiB)
_VECTOR_MIN = 256   # shorter inputs take the table loop (NumPy's ~25 us fixed cost dominates)
_PIECE = 1 << 20    # longer inputs go in pieces of this size: temporaries stay ~16 MiB
_np_tables = None


def _build_np_tables():
    import numpy as np

    t0 = np.array(_T[0], dtype=np.uint32)
    # _G[j, b]: raw CRC of byte b at offset j of a _B-byte block (followed by _B-1-j zeros).
    g = np.empty((_B, 256), dtype=np.uint32)
    row = t0.copy()
    g[_B - 1] = row
    for j in range(_B - 2, -1, -1):
        row = t0[row & 0xFF] ^ (row >> 8)
        g[j] = row
    # shift(x, _B) = XOR_j g[j, byte j of x] (x as 4 little-endian bytes then _B-4 zeros),
    # so _H[k, j, b] = shift(b << 8j, (k+1) * _B) is built by applying that k times.
    h = np.empty((_K, 4, 256), dtype=np.uint32)
    h[0] = g[:4]
    for k in range(1, _K):
        p = h[k - 1]
        h[k] = (g[0][p & 0xFF] ^ g[1][(p >> 8) & 0xFF] ^ g[2][(p >> 16) & 0xFF]
                ^ g[3][p >> 24])
    off_g = np.arange(_B, dtype=np.uint16) << 8   # _B * 256 == 2**16: uint16 indexes suffice
    # index rows of _H for the _K-1 blocks of a group that are followed by others
    off_h = ((np.arange(_K - 2, -1, -1, dtype=np.intp)[:, None] * 4
              + np.arange(4, dtype=np.intp)) * 256)
    last = [h[_K - 1, j].tolist() for j in range(4)]  # shift by one whole group
    return np, g.ravel(), off_g, h.ravel(), off_h, last


def _crc32c_numpy(data, crc: int = 0) -> int:
    global _np_tables
    if _np_tables is None:
        _np_tables = _build_np_tables()
    np, g, off_g, h, off_h, (s0, s1, s2, s3) = _np_tables
    src = np.frombuffer(memoryview(data).cast("B"), dtype=np.uint8)
    n = src.size
    m = -(-n // _B)                       # blocks, the first one zero-padded in front
    pad = m * _B - n
    buf = np.empty(m * _B, dtype=np.uint8)
    buf[:pad] = 0
    buf[pad:] = src
    buf[pad:pad + 4] ^= np.frombuffer((crc ^ 0xFFFFFFFF).to_bytes(4, "little"), np.uint8)
    idx = np.empty((m, _B), dtype=np.uint16)
    np.bitwise_or(buf.reshape(m, _B), off_g, out=idx)
    if m <= _K:                           # one group of m blocks
        blocks = np.bitwise_xor.reduce(g.take(idx), axis=1)[None, :]
        rows = off_h[_K - m:]
    else:                                 # whole groups of _K; zero blocks in front
        groups = -(-m // _K)
        blocks = np.zeros(groups * _K, dtype=np.uint32)
        np.bitwise_xor.reduce(g.take(idx), axis=1, out=blocks[groups * _K - m:])
        blocks = blocks.reshape(groups, _K)
        rows = off_h
    # every block but the last of its group is shifted by the blocks after it
    head = blocks[:, :-1].astype("<u4").view(np.uint8).reshape(len(blocks), -1, 4)
    part = h.take(head + rows).reshape(len(blocks), -1)
    sums = (np.bitwise_xor.reduce(part, axis=1) ^ blocks[:, -1]).tolist()
    c = 0
    for v in sums:
        c = s0[c & 0xFF] ^ s1[(c >> 8) & 0xFF] ^ s2[(c >> 16) & 0xFF] ^ s3[c >> 24] ^ v
    return c ^ 0xFFFFFFFF


def crc32c_pure(data, crc: int = 0) -> int:
    """CRC32C of ``data`` (bytes-like), continuing from ``crc``, without a CRC extension.

    spec/records.md, "Checksums". Equal to :func:`crc32c` for every input.
    """
    n = len(data) if type(data) is bytes else memoryview(data).nbytes
    if n < _VECTOR_MIN:
        return _crc32c_table(data, crc)
    if n <= _PIECE:
        return _crc32c_numpy(data, crc)
    mv = memoryview(data).cast("B")
    for start in range(0, n, _PIECE):
        piece = mv[start:start + _PIECE]
        crc = (_crc32c_numpy if len(piece) >= _VECTOR_MIN else _crc32c_table)(piece, crc)
    return crc


try:  # pragma: no cover - which branch runs depends on the environment
    import google_crc32c as _g

    if getattr(_g, "implementation", "c") != "c":
        raise ImportError("google_crc32c without its C extension")

    def crc32c(data, crc: int = 0) -> int:
        """CRC32C of ``data`` continuing from ``crc`` (google_crc32c backend)."""
        return _g.extend(crc, data) if crc else _g.value(data)

    BACKEND = "google_crc32c"
except ImportError:  # pragma: no cover
    try:
        import crc32c as _c

        def crc32c(data, crc: int = 0) -> int:
            """CRC32C of ``data`` continuing from ``crc`` (crc32c backend)."""
            return _c.crc32c(data, crc)

        BACKEND = "crc32c"
    except ImportError:
        crc32c = crc32c_pure
        BACKEND = "pure"


def mask(crc: int) -> int:
    """TFRecord masking: rotate right by 15 bits, add 0xA282EAD8 (mod 2**32)."""
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def masked_crc32c(data) -> int:
    """The checksum stored in TFRecord framing: ``mask(crc32c(data))``."""
    return mask(crc32c(data))
