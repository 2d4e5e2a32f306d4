"""Shared helpers for the benchmarks in bench/ (see bench/README.md).

* :func:`measure` runs a workload ``repeats`` times and keeps every run's
  wall and CPU time, the peak resident-memory growth over the runs and, from
  one extra run under :mod:`tracemalloc`, the peak of Python-visible
  allocations.
* :func:`print_table` prints rows of results as an aligned text table.
* :func:`environment` describes the machine and library versions.
* :func:`peak_rss`, :func:`children_peak_rss`: the peak resident memory of this
  process and of its largest waited-for child (a bench running each workload in
  a fresh process reports these per workload).
* :func:`jpeg_pool`: distinct synthetic JPEG tiles for the benches' datasets.
* :func:`bare_decoders`, :func:`exact_decoders`: the decoders a bench's bare loop
  may use (Pillow, and simplejpeg when it imports) and those whose pixels equal
  Pillow's on the bench's own tiles: a bare-loop limit is the fastest exact one,
  with Pillow's loop shown beside it (issue 18).
* :func:`parser`, :func:`quick_defaults`, :func:`at_least_one` and
  :func:`write_json`: the scripts' command line (description from the
  docstring, defaults that ``--quick`` shrinks, counts that must be >= 1) and
  their ``--json`` output.

Throughput is computed from the median wall-clock time (``time.perf_counter``)
of the runs, or from the median CPU time of this process
(``time.process_time``) with ``clock="cpu"``. The benches here are single
threaded, so on a machine shared with other work CPU time is the steadier
measure; a wall time well above the CPU time says the run was crowded out.
"""

from __future__ import annotations

import argparse
import gc
import json
import numbers
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from dataclasses import dataclass, field
from typing import Callable, Sequence

MiB = 1 << 20


# ------------------------------------------------------------------ memory
def _status_kib(key: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), or None."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) of this process; True on success.

    Linux >= 4.0: writing 5 to /proc/self/clear_refs resets it.
    """
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Context manager: ``.delta`` = peak RSS during the block minus RSS at its start,
    in bytes (None where the platform cannot tell).

    Uses VmHWM after resetting it (Linux); elsewhere ``ru_maxrss``, which only
    sees growth beyond the process's earlier peak.
    """

    def __enter__(self):
        gc.collect()
        self._hwm = _reset_peak_rss() and _status_kib("VmHWM") is not None
        if self._hwm:
            self._start = _status_kib("VmRSS") * 1024
        else:
            self._start = _maxrss_bytes()
        self.delta = None
        return self

    def __exit__(self, *exc):
        if self._hwm:
            peak = _status_kib("VmHWM")
            self.delta = None if peak is None else max(0, peak * 1024 - self._start)
        else:
            self.delta = max(0, _maxrss_bytes() - self._start)
        return False


def _maxrss_bytes() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def peak_rss() -> int:
    """Peak resident memory of this process so far, in bytes: VmHWM (Linux), else
    ``ru_maxrss``."""
    hwm = _status_kib("VmHWM")
    return hwm * 1024 if hwm is not None else _maxrss_bytes()


def children_peak_rss() -> int:
    """Peak resident memory, in bytes, of the largest child process of this process
    that has ended and been waited for (``RUSAGE_CHILDREN``; 0 when none has)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def tracemalloc_peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated through Python's allocators while ``fn()`` runs.

    Counts objects, NumPy arrays and bytes; not memory that C libraries
    allocate themselves (e.g. Pillow's decoder buffers): see :class:`PeakRSS`.
    """
    gc.collect()
    was = tracemalloc.is_tracing()
    if not was:
        tracemalloc.start()
    tracemalloc.reset_peak()
    base, _ = tracemalloc.get_traced_memory()
    try:
        fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if not was:
            tracemalloc.stop()
    return max(0, peak - base)


# ------------------------------------------------------------------ timing
@dataclass
class Result:
    """One measured workload: ``items`` records and ``nbytes`` bytes per run."""

    name: str
    times: list = field(default_factory=list)      # wall seconds, one per run
    cpu_times: list = field(default_factory=list)  # process CPU seconds, one per run
    items: int = 0
    nbytes: int = 0
    rss_delta: int | None = None                   # bytes, max over the runs
    py_peak: int | None = None                     # bytes, tracemalloc run
    note: str = ""
    clock: str = "wall"                            # which median the rates use

    @property
    def wall(self) -> float:
        return statistics.median(self.times)

    @property
    def cpu(self) -> float:
        return statistics.median(self.cpu_times)

    @property
    def median(self) -> float:
        """The median run time on ``clock``: what the rates are computed from."""
        return self.cpu if self.clock == "cpu" else self.wall

    @property
    def spread(self) -> float:
        """(max - min) / median of the run times on ``clock``."""
        t = self.cpu_times if self.clock == "cpu" else self.times
        m = statistics.median(t)
        return (max(t) - min(t)) / m if m else 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.median if self.median else float("inf")

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.median / 1e6 if self.median else float("inf")

    def as_dict(self) -> dict:
        return {"name": self.name, "clock": self.clock, "median_s": self.median,
                "wall_median_s": self.wall, "cpu_median_s": self.cpu, "times_s": self.times,
                "cpu_times_s": self.cpu_times,
                "items": self.items, "bytes": self.nbytes, "items_per_s": self.items_per_s,
                "mb_per_s": self.mb_per_s, "rss_delta_bytes": self.rss_delta,
                "tracemalloc_peak_bytes": self.py_peak, "note": self.note}


def measure(name: str, fn: Callable[[], object], *, items: int, nbytes: int,
            repeats: int = 5, warmup: int = 1, trace: bool = True, note: str = "",
            clock: str = "wall") -> Result:
    """Run ``fn()`` ``warmup`` times untimed, then ``repeats`` times timed.

    Returns a :class:`Result` with every run's wall and CPU time (rates use
    the median on ``clock``, "wall" or "cpu"), the largest peak-RSS growth
    seen in a timed run and, when ``trace``, the tracemalloc peak of one extra
    run (tracing slows Python code, so that run is never timed).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock must be 'wall' or 'cpu', got {clock!r}")
    for _ in range(warmup):
        fn()
    res = Result(name, items=items, nbytes=nbytes, note=note, clock=clock)
    for _ in range(repeats):
        with PeakRSS() as mem:
            c0 = time.process_time()
            t0 = time.perf_counter()
            fn()
            res.times.append(time.perf_counter() - t0)
            res.cpu_times.append(time.process_time() - c0)
        if mem.delta is not None:
            res.rss_delta = max(res.rss_delta or 0, mem.delta)
    if trace:
        res.py_peak = tracemalloc_peak(fn)
    return res


# ------------------------------------------------------------------ output
def _num(x: float) -> str:
    if x == float("inf"):
        return "inf"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _mib(b) -> str:
    return "-" if b is None else f"{b / MiB:.1f}"


def result_row(r: Result) -> list:
    return [r.name, _num(r.items_per_s), _num(r.mb_per_s), f"{r.wall * 1e3:.1f}",
            f"{r.cpu * 1e3:.1f}", f"{r.spread * 100:.0f}%", _mib(r.py_peak),
            _mib(r.rss_delta), r.note]


RESULT_HEADER = ["benchmark", "records/s", "MB/s", "wall ms", "cpu ms", "spread",
                 "py peak MiB", "RSS +MiB", "note"]


def format_table(header: Sequence[str], rows: Sequence[Sequence], *,
                 align: str | None = None) -> str:
    """An aligned plain-text table; ``align`` is one 'l'/'r' per column
    (default: first column left, the rest right, the last left)."""
    cols = len(header)
    if align is None:
        align = "l" + "r" * (cols - 2) + "l" if cols > 1 else "l"
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(cols)]

    def line(r):
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)]
        return "  ".join(parts).rstrip()

    out = [line(cells[0]), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


def print_table(results: Sequence[Result], file=None) -> None:
    """Print :class:`Result` rows under :data:`RESULT_HEADER`."""
    print(format_table(RESULT_HEADER, [result_row(r) for r in results]), file=file)


def environment() -> dict:
    """Python, platform, CPU count and the versions of the libraries the benches use."""
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "cpus": os.cpu_count()}
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("numpy", "pillow", "google-crc32c", "crc32c"):
        try:
            env[dist] = version(dist)
        except PackageNotFoundError:
            env[dist] = None
    return env


# ------------------------------------------------------------------ data
def jpeg_pool(n: int, *, px: int = 256, quality: int = 90, noise: float = 0.0,
              seed: int = 0) -> list:
    """``n`` distinct px x px JPEG tiles (bytes) at ``quality``: ``tissue_tile`` plus
    Gaussian noise of standard deviation ``noise`` grey levels (4.5 brings 256 px q90
    tiles to about 18 kB, like real ones; 0 leaves tissue_tile's ~15 kB)."""
    import numpy as np

    from tilespec.synthetic import encode_jpeg, tissue_tile

    pool = []
    for i in range(n):
        img = tissue_tile(np.random.default_rng([seed, i]), px, tumor=i % 2 == 0)
        if noise > 0:
            extra = np.random.default_rng([seed, i, 1]).normal(0.0, noise, img.shape)
            img = np.clip(np.rint(img + extra), 0, 255).astype(np.uint8)
        pool.append(encode_jpeg(img, quality))
    return pool


# ------------------------------------------------------------------ decoders
def bare_decoders() -> dict:
    """``{name: decode}``, ``decode(jpeg_bytes)`` -> HWC uint8 RGB array: 'pillow'
    (``np.asarray(Image.open(...))``: exact ISLOW IDCT, fancy upsampling; the array may
    be read-only) first, then 'simplejpeg' (``fastdct`` and ``fastupsample`` off) when
    it imports."""
    import io

    import numpy as np
    from PIL import Image

    out = {"pillow": lambda b: np.asarray(Image.open(io.BytesIO(b)))}
    try:
        import simplejpeg
    except ImportError:
        return out
    out["simplejpeg"] = lambda b: simplejpeg.decode_jpeg(b, colorspace="RGB", fastdct=False,
                                                         fastupsample=False)
    return out


def exact_decoders(jpegs, decoders: dict | None = None) -> tuple:
    """``(exact, inexact)``: the decoders of ``decoders`` (default
    :func:`bare_decoders`) whose pixels equal Pillow's on every JPEG of ``jpegs``
    (``{name: decode}``, Pillow first), and ``{name: why}`` for the others (the first
    tile that differs, or the error)."""
    import numpy as np

    decoders = bare_decoders() if decoders is None else decoders
    ref = [decoders["pillow"](b) for b in jpegs]
    exact, inexact = {}, {}
    for name, decode in decoders.items():
        try:
            bad = next((i for i, (b, r) in enumerate(zip(jpegs, ref))
                        if not np.array_equal(decode(b), r)), None)
        except Exception as e:  # noqa: BLE001  (any failure: not usable as a limit)
            inexact[name] = f"fails: {e}"
            continue
        if bad is None:
            exact[name] = decode
        else:
            inexact[name] = f"tile {bad} differs from Pillow's"
    return exact, inexact


# ------------------------------------------------------------------ command line, output
def parser(doc: str) -> argparse.ArgumentParser:
    """A bench script's argument parser: the first paragraph of its docstring ``doc``
    as the description, kept as written."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def quick_defaults(args, defaults: dict) -> None:
    """Fill each option left unset (None): ``defaults`` maps its name to
    ``(full, quick)``, the value without and with ``--quick``."""
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)


def at_least_one(ap: argparse.ArgumentParser, args, names) -> None:
    """Exit through ``ap.error`` naming the first option of ``names`` below 1."""
    for name in names:
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1")


def _plain(obj):
    return float(obj) if isinstance(obj, numbers.Real) else str(obj)


def write_json(path: str | None, data) -> None:
    """Write ``data`` to ``path`` as JSON (nothing when ``path`` is None: no ``--json``);
    NumPy numbers become floats, anything else not JSON its ``str``."""
    if path:
        with open(path, "w") as fh:
            json.dump(data, fh, indent=1, default=_plain)
