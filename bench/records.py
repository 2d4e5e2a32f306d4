"""Record-reading throughput: framing, CRC32C, tile parsing and JPEG decoding.

Writes a synthetic TFRecord file of 256x256 JPEG tiles (quality 90) to a
temporary folder, then times, each as the median of ``--repeats`` runs:

* sequential ``read_records`` with ``verify=True`` (the installed CRC
  backend), ``verify=False``, and ``verify=True`` with the pure CRC forced;
* raw CRC32C over the payloads: the backend, ``crc32c_pure`` and its
  plain-Python table loop (the pure path before it was vectorized);
* ``parse_tile`` and ``parse_example`` per record (payloads in memory);
* ``decode_image`` of the JPEGs (bytes in memory);
* read + parse_tile + decode, end to end.

Run ``.venv/bin/python bench/records.py`` (``--quick`` for a smoke run); see
bench/README.md for what each column means.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (at_least_one, environment, format_table, measure, parser,  # noqa: E402
                    print_table, quick_defaults, write_json)

import tilespec  # noqa: E402
import tilespec.records as records_mod  # noqa: E402
from tilespec import crc32c as crc_mod  # noqa: E402
from tilespec.synthetic import encode_jpeg, tissue_tile  # noqa: E402

TILE_PX = 256
QUALITY = 90


# ------------------------------------------------------------------ dataset
def make_tile_pool(n: int, seed: int = 0) -> list:
    """``n`` distinct JPEG tiles, alternately tumor-like and normal-like."""
    pool = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        pool.append(encode_jpeg(tissue_tile(rng, TILE_PX, tumor=i % 2 == 0), QUALITY))
    return pool


def write_dataset(path: str, n_records: int, pool: list) -> list:
    """Write ``n_records`` tile records cycling through ``pool``; return the payloads.

    Records differ in slide name and location even where the JPEG repeats.
    """
    payloads = []
    cols = 64
    for i in range(n_records):
        payloads.append(tilespec.encode_tile(pool[i % len(pool)], f"bench-slide-{i % 4}",
                                             loc_x=(i % cols) * TILE_PX,
                                             loc_y=(i // cols) * TILE_PX))
    tilespec.write_records(path, payloads)
    return payloads


# ------------------------------------------------------------------ pure CRC
@contextlib.contextmanager
def forced_crc(fn):
    """Make ``tilespec.records`` checksum with ``fn`` (e.g. ``crc32c_pure``).

    records.py binds ``masked_crc32c`` at import (``from .crc32c import
    masked_crc32c``) and looks it up as a module global in read_header and
    read_payload, so that global is the one to replace. Yields a one-element
    list counting the calls, so the caller can check the patch took effect.
    """
    calls = [0]
    original = records_mod.masked_crc32c
    mask = crc_mod.mask

    def masked(data):
        calls[0] += 1
        return mask(fn(data))

    records_mod.masked_crc32c = masked
    try:
        yield calls
    finally:
        records_mod.masked_crc32c = original


# ------------------------------------------------------------------ workloads
def read_all(path, verify):
    n = 0
    for _ in tilespec.read_records(path, verify=verify):
        n += 1
    return n


def crc_all(fn, payloads):
    for p in payloads:
        fn(p)


def parse_tiles(payloads):
    for p in payloads:
        tilespec.parse_tile(p)


def parse_examples(payloads):
    for p in payloads:
        tilespec.parse_example(p)


def decode_all(images):
    for b in images:
        tilespec.decode_image(b)


def end_to_end(path):
    n = 0
    for p in tilespec.read_records(path):
        tilespec.decode_image(tilespec.parse_tile(p).image_raw)
        n += 1
    return n


# ------------------------------------------------------------------ main
def run(args) -> dict:
    t_start = time.perf_counter()
    env = environment()
    env["crc32c_backend"] = crc_mod.BACKEND
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))

    with contextlib.ExitStack() as stack:
        folder = args.dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="tsbench-"))
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "bench.tfrecords")
        t0 = time.perf_counter()
        pool = make_tile_pool(args.unique)
        payloads = write_dataset(path, args.records, pool)
        t_write = time.perf_counter() - t0
        tiles = [tilespec.parse_tile(p) for p in payloads]
        images = [t.image_raw for t in tiles]

        n = len(payloads)
        file_bytes = os.path.getsize(path)
        payload_bytes = sum(map(len, payloads))
        image_bytes = sum(map(len, images))
        jpeg_sizes = [len(b) for b in pool]
        first = tilespec.decode_image(images[0])
        assert first.shape == (TILE_PX, TILE_PX, 3), first.shape
        dataset = {
            "records": n, "unique_jpegs": len(pool), "file_bytes": file_bytes,
            "payload_bytes": payload_bytes, "jpeg_bytes_mean": statistics.mean(jpeg_sizes),
            "jpeg_bytes_min": min(jpeg_sizes), "jpeg_bytes_max": max(jpeg_sizes),
            "tile_px": TILE_PX, "quality": QUALITY, "write_s": t_write,
        }
        print(f"dataset: {n} records of {TILE_PX}x{TILE_PX} JPEG q{QUALITY} tiles "
              f"({len(pool)} distinct), file {file_bytes / 1e6:.1f} MB, written in "
              f"{t_write:.1f} s")
        print(f"JPEG size: mean {dataset['jpeg_bytes_mean'] / 1000:.1f} kB, min "
              f"{min(jpeg_sizes) / 1000:.1f} kB, max {max(jpeg_sizes) / 1000:.1f} kB; "
              f"record payload mean {payload_bytes / n / 1000:.1f} kB")
        print(f"timing: median of {args.repeats} runs after 1 warm-up; rates from the "
              f"{args.clock} clock; file in page cache\n")

        reps = dict(repeats=args.repeats, trace=not args.no_tracemalloc, clock=args.clock)
        results = []

        def add(*a, **kw):
            r = measure(*a, **{**reps, **kw})
            results.append(r)
            if args.verbose:
                print(f"  {r.name}: {r.median * 1e3:.1f} ms", file=sys.stderr)
            return r

        add(f"read verify=True ({crc_mod.BACKEND})", lambda: read_all(path, True),
            items=n, nbytes=file_bytes)
        add("read verify=False", lambda: read_all(path, False), items=n, nbytes=file_bytes)
        if crc_mod.BACKEND != "pure":  # else the first row already is this one
            with forced_crc(crc_mod.crc32c_pure) as calls:
                add("read verify=True (pure CRC)", lambda: read_all(path, True),
                    items=n, nbytes=file_bytes)
            if calls[0] < 2 * n:
                raise RuntimeError("forcing the pure CRC had no effect: tilespec.records no "
                                   "longer calls its module-level masked_crc32c")
            add(f"crc32c {crc_mod.BACKEND}", lambda: crc_all(crc_mod.crc32c, payloads),
                items=n, nbytes=payload_bytes, note="payloads in memory")
        add("crc32c pure", lambda: crc_all(crc_mod.crc32c_pure, payloads),
            items=n, nbytes=payload_bytes, note="payloads in memory")
        sub = payloads[:min(n, args.table_records)]
        add("crc32c pure, table loop only", lambda: crc_all(crc_mod._crc32c_table, sub),
            items=len(sub), nbytes=sum(map(len, sub)), repeats=min(args.repeats, 3),
            note=f"first {len(sub)} payloads; the pure path before vectorizing")

        add("parse_tile", lambda: parse_tiles(payloads), items=n, nbytes=payload_bytes)
        add("parse_example", lambda: parse_examples(payloads), items=n, nbytes=payload_bytes)
        add("decode_image (Pillow JPEG)", lambda: decode_all(images), items=n,
            nbytes=image_bytes, note="MB/s of JPEG bytes")
        add("read+parse_tile+decode", lambda: end_to_end(path), items=n, nbytes=file_bytes,
            note=f"verify=True, {crc_mod.BACKEND}")

    print_table(results)
    derived = _derived(results)
    if derived:
        print()
        print(format_table(["derived", "value"], derived, align="lr"))
    total = time.perf_counter() - t_start
    print(f"\ntotal bench time {total:.1f} s")
    out = {"environment": env, "dataset": dataset, "repeats": args.repeats,
           "results": [r.as_dict() for r in results], "total_s": total}
    write_json(args.json, out)
    return out


def _derived(results) -> list:
    """Figures computed from two rows: CRC cost per record, decode share, speed-up."""
    by = {r.name: r for r in results}
    fast = by.get(f"read verify=True ({crc_mod.BACKEND})")
    pure = by.get("read verify=True (pure CRC)")
    if crc_mod.BACKEND == "pure":
        fast, pure = None, fast
    nover = by.get("read verify=False")
    dec = by.get("decode_image (Pillow JPEG)")
    e2e = by.get("read+parse_tile+decode")
    pure_crc = by.get("crc32c pure")
    table = by.get("crc32c pure, table loop only")
    rows = []
    if fast and nover:
        rows.append([f"CRC verification cost per record, {crc_mod.BACKEND}",
                     f"{(fast.median - nover.median) / fast.items * 1e6:.2f} us"])
    if pure and nover:
        rows.append(["CRC verification cost per record, pure",
                     f"{(pure.median - nover.median) / pure.items * 1e6:.2f} us"])
    if dec and e2e:
        rows.append(["decode share of end to end", f"{dec.median / e2e.median * 100:.0f}%"])
    if pure_crc and table:
        rows.append(["pure CRC speed-up over the table loop",
                     f"{pure_crc.mb_per_s / table.mb_per_s:.1f}x"])
    return rows


def parse_args(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--records", type=int, default=None,
                    help="records in the file (default 2000; 300 with --quick)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per benchmark, median reported (default 5; 3 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few records and repeats")
    ap.add_argument("--unique", type=int, default=None,
                    help="distinct JPEG tiles cycled through the file (default 24; 6 with "
                         "--quick); drawing one takes ~80 ms")
    ap.add_argument("--table-records", type=int, default=200,
                    help="payloads for the slow table-loop CRC row (default 200)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="compute rates from the median wall time (default) or process CPU "
                         "time (steadier on a busy machine)")
    ap.add_argument("--no-tracemalloc", action="store_true",
                    help="skip the extra traced run per benchmark (py peak column shows -)")
    ap.add_argument("--dir", help="write the dataset here and keep it (default: a temp dir)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = ap.parse_args(argv)
    quick_defaults(args, {"records": (2000, 300), "repeats": (5, 3), "unique": (24, 6)})
    at_least_one(ap, args, ("records", "repeats", "unique", "table_records"))
    return args


def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
