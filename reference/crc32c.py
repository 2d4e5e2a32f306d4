"""CRC32C (Castagnoli) and the TFRecord mask (spec/records.md, "Checksums").

``crc32c(data)`` uses the ``google_crc32c`` or ``crc32c`` package when one is
installed (hardware instructions, GB/s) and otherwise a pure-Python
table-driven implementation (slicing by 8). ``BACKEND`` names the one in use.
"""

from __future__ import annotations

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


def crc32c_pure(data, crc: int = 0) -> int:
    """Pure-Python CRC32C of ``data`` (bytes-like), continuing from ``crc``."""
    t0, t1, t2, t3, t4, t5, t6, t7 = _T
    mv = memoryview(data).cast("B")
    n = len(mv)
    c = crc ^ 0xFFFFFFFF
    full = n - n % 8
    i = 0
    if full:
        words = mv[:full].cast("Q")
        for w in words:
            x = c ^ (w & 0xFFFFFFFF)
            hi = w >> 32
            c = (t7[x & 0xFF] ^ t6[(x >> 8) & 0xFF] ^ t5[(x >> 16) & 0xFF] ^ t4[x >> 24]
                 ^ t3[hi & 0xFF] ^ t2[(hi >> 8) & 0xFF] ^ t1[(hi >> 16) & 0xFF] ^ t0[hi >> 24])
        i = full
    for b in mv[i:]:
        c = t0[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


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
