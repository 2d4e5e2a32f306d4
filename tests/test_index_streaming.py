"""Index building and verification stream in constant memory, whatever the record
or file size (spec/index.md, "Building"; spec/reliability.md, "Streaming index").

The big file is sparse: the payloads of its huge records are holes (zeros) that
take no disk space, so a > 4 GB TFRecord costs a few kilobytes of disk. Each
full pass over it reads ~4.3 GB of zeros from the page cache (a few seconds).
"""

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import tilespec
from tilespec.crc32c import crc32c, mask, masked_crc32c
from tilespec.example import encode_tile, parse_tile
from tilespec.index import compute_index, index_path
from tilespec.records import frame_record, read_record_at, scan_frames, scan_records

HUGE = ((1 << 31) + 3, (1 << 31) + 5)  # each over 2 GiB; the last tile starts past 4 GiB
LIMIT = 100 << 20  # peak memory allowed for indexing / verifying the big file
CAP = 1 << 33  # a max_record_bytes that lets the 2 GiB records be read (the default refuses them)
_ZERO = bytes(1 << 24)


def _zeros_crc(n: int) -> int:
    crc = 0
    while n:
        k = min(n, len(_ZERO))
        crc = crc32c(_ZERO[:k] if k < len(_ZERO) else _ZERO, crc)
        n -= k
    return mask(crc)


def _tile(i: int) -> bytes:
    return encode_tile(b"\xff\xd8\xff not decoded here", f"slide-{i}", 10 * i, 20 * i)


def _sparse_capable(folder) -> str | None:
    """None when ``folder`` stores holes without allocating them, else why not."""
    probe = os.path.join(folder, "probe.sparse")
    try:
        with open(probe, "wb") as f:
            f.seek(256 << 20)
            f.write(b"x")
        used = os.stat(probe).st_blocks * 512
    except OSError as e:
        return f"cannot write a 256 MiB sparse probe file ({e})"
    finally:
        if os.path.exists(probe):
            os.remove(probe)
    if used > 16 << 20:
        return f"the filesystem allocated {used} bytes for a 256 MiB hole (not sparse)"
    return None


def _write_big(path):
    """tile 0, huge A, tile 1, huge B, tile 2; returns the expected [[offset, length]]."""
    rows = []
    with open(path, "wb") as f:
        for i in range(3):
            rec = frame_record(_tile(i))
            rows.append((f.tell(), len(rec)))
            f.write(rec)
            if i < 2:
                n = HUGE[i]
                length = n.to_bytes(8, "little")
                rows.append((f.tell(), n + 16))
                f.write(length + masked_crc32c(length).to_bytes(4, "little"))
                f.seek(n, os.SEEK_CUR)  # the payload: a hole of zeros
                f.write(_zeros_crc(n).to_bytes(4, "little"))
    return np.array(rows, dtype=np.int64)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    folder = tmp_path_factory.mktemp("big")
    why = _sparse_capable(folder)
    if why:
        pytest.skip(f"needs a sparse-capable filesystem for a 4.3 GB test file: {why}")
    path = folder / "big.tfrecords"
    try:
        rows = _write_big(path)
    except OSError as e:  # pragma: no cover - disk full, file size limit
        pytest.skip(f"cannot write the 4.3 GB sparse test file: {e}")
    assert os.path.getsize(path) == rows[-1].sum() > 4 << 30
    assert os.stat(path).st_blocks * 512 < 16 << 20  # it really is sparse
    yield path, rows
    for p in (path, index_path(path)):
        if os.path.exists(p):
            os.remove(p)


def _peak(fn):
    """(result, peak bytes traced by tracemalloc while running fn)."""
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


_RSS_SCRIPT = """
import json, sys, tracemalloc
import tilespec

def status(key):  # from /proc/self/status, in KiB
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

try:  # reset the peak-RSS mark to the current RSS (Linux 4.0+); if not, it only overestimates
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
except OSError:
    pass
before = status("VmRSS")
tracemalloc.start()
arr, locs = tilespec.build_index(sys.argv[1], max_record_bytes=int(sys.argv[2]))
peak = tracemalloc.get_traced_memory()[1]
print(json.dumps({"rows": arr.tolist(), "locs": locs is None,
                  "rss_delta_kb": status("VmHWM") - before, "traced_peak": peak}))
"""


def test_build_index_of_a_4gb_file_in_constant_memory(big):
    path, rows = big
    # a fresh process: its peak resident size (VmHWM, reset before the build) less its resident
    # size before it is what the build added. (Not ru_maxrss: Linux carries the parent's peak
    # into a child across fork + exec, so it reads high after the parent grew.)
    if not os.path.exists("/proc/self/status"):
        pytest.skip("needs /proc/self/status (Linux) to measure resident memory")
    run = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(path), str(CAP)],
                         capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["rows"] == rows.tolist() and got["locs"] is True  # huge records: no locations
    assert got["traced_peak"] < LIMIT, got["traced_peak"]
    assert got["rss_delta_kb"] * 1024 < LIMIT, got["rss_delta_kb"]
    # the index written is valid and gives random access past 4 GiB
    arr, locs = tilespec.load_index(path, build=False, max_record_bytes=CAP)
    assert np.array_equal(arr, rows) and locs is None
    with open(path, "rb") as f:
        for k, i in ((0, 0), (2, 1), (4, 2)):
            assert parse_tile(read_record_at(f, int(arr[k, 0]))).loc_x == 10 * i
    assert int(arr[4, 0]) > 1 << 32


def test_unverified_and_header_only_scans_seek_past_payloads(big):
    path, rows = big
    (arr, locs), peak = _peak(lambda: compute_index(path, verify=False, max_record_bytes=CAP))
    assert np.array_equal(arr, rows) and locs is None and peak < LIMIT
    assert list(scan_records(path, max_record_bytes=CAP)) == [tuple(r) for r in rows.tolist()]
    frames = list(scan_frames(path, max_payload=1 << 20, max_record_bytes=CAP))
    assert [p is None for _, _, p in frames] == [False, True, False, True, False]


def test_verify_a_4gb_file_in_constant_memory(big):
    path, rows = big
    result, peak = _peak(lambda: tilespec.verify(path, level="tiles", jobs=1,
                                                 max_record_bytes=CAP))
    assert result.ok, result.problems
    f = result.files[0]
    assert (f.records, f.good, f.checksum_only) == (5, 5, 2)
    assert peak < LIMIT, peak


def test_damage_inside_a_huge_payload(big, tmp_path):
    path, rows = big
    pos = int(rows[3, 0]) + 12 + HUGE[1] - 1000  # near the end of huge record B
    with open(path, "r+b") as f:
        f.seek(pos)
        f.write(b"\x01")
    try:
        result, peak = _peak(lambda: tilespec.verify(path, level="tiles", jobs=1, index=False,
                                                     max_record_bytes=CAP))
        assert [(p.kind, p.record, p.offset) for p in result.problems] == [
            ("payload-crc", 3, rows[3, 0])]
        assert result.files[0].records == 5 and result.files[0].good == 4  # tile 2 checked
        assert peak < LIMIT
        with pytest.raises(tilespec.CorruptDataError) as e:
            list(scan_records(path, verify=True, max_record_bytes=CAP))
        assert (e.value.record, e.value.offset) == (3, rows[3, 0])
    finally:
        with open(path, "r+b") as f:
            f.seek(pos)
            f.write(b"\x00")


def test_a_huge_length_past_the_end_allocates_nothing(tmp_path):
    n = 1 << 60  # a sound (checksummed) length, but the file is tiny
    length = n.to_bytes(8, "little")
    path = tmp_path / "t.tfrecords"
    path.write_bytes(frame_record(_tile(0)) + length + masked_crc32c(length).to_bytes(4, "little")
                     + b"\x00" * 100)
    for fn in (lambda: compute_index(path), lambda: compute_index(path, locations=False)):
        with pytest.raises(tilespec.TruncatedRecordError) as e:
            _peak(fn)
        assert e.value.record == 1 and "runs past the end" in e.value.reason
    result, peak = _peak(lambda: tilespec.verify(path, jobs=1, level="records"))
    assert [p.kind for p in result.problems] == ["truncated"] and peak < 4 << 20
    assert result.files[0].unread == 112


def test_the_default_cap_refuses_the_huge_records_from_their_headers(big):
    # spec/reliability.md, "Size caps": 2 GiB records are over the default 64 MiB cap; the
    # index build stops at the first one before reading it, verify steps over both
    path, rows = big
    with pytest.raises(tilespec.RecordTooLargeError) as e:
        _peak(lambda: compute_index(path))
    assert (e.value.record, e.value.offset, e.value.length) == (1, rows[1, 0], HUGE[0])
    result, peak = _peak(lambda: tilespec.verify(path, level="tiles", jobs=1, index=False))
    assert [(p.kind, p.record, p.offset) for p in result.problems] == [
        ("record-cap", 1, rows[1, 0]), ("record-cap", 3, rows[3, 0])]
    assert result.files[0].records == 5 and result.files[0].good == 3 and peak < 4 << 20
