"""Sampling plans and the reference loader: planning cost per sample, and tiles/s
decode-only against a bare loop of Pillow decodes (issue 4's targets).

Part 1, planning: ``StreamPlan(...).records(0, N)`` for finite and infinite
streams over several dataset shapes (number of tfrecords, records each,
uniform or uneven weights, shuffle on or off), and the infinite stream planned
one batch of 64 at a time and one window of 4096 positions at a time (what
the reference loader asks for; it slices its batches from the window). Cost per sample =
median run time / samples planned. Target: under 1 microsecond.

Part 2, loader: a synthetic dataset of 256x256 JPEG tiles (quality 90, about
18 kB) written to a temporary folder; one run = one finite epoch of
``Dataset.numpy(batch_size=64, infinite=False, standardize=False)`` (no
augmentation), against one run of a bare loop that decodes the same JPEG
bytes, held in memory, with Pillow into NumPy arrays
(``np.asarray(Image.open(io.BytesIO(b)))``) and with every faster decoder that
imports and gives Pillow's pixels on these tiles (``common.exact_decoders``:
simplejpeg); the fastest of those loops is the limit, Pillow's shown beside it.
The workloads are interleaved round by round, so all see the same machine load.
Target: the loader at least 85% of the limit's tiles/s.

Run ``.venv/bin/python bench/sampling.py`` (``--quick`` for a smoke run); see
bench/README.md for the columns and options.
"""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (PeakRSS, Result, environment, format_table, measure,  # noqa: E402
                    parser, print_table, quick_defaults, tracemalloc_peak, write_json,
                    at_least_one, exact_decoders, jpeg_pool)

import tilespec  # noqa: E402
from tilespec.sampling import StreamPlan  # noqa: E402

TILE_PX = 256
QUALITY = 90


# ------------------------------------------------------------------ planning
def plan_cases(quick: bool) -> list:
    """(name, clip, weights, infinite, shuffle, positions, per_call) for the planning rows."""
    rng = np.random.default_rng(7)
    cases = []
    shapes = [(10, 1000), (100, 1000), (1000, 100)] if quick else \
        [(10, 1000), (100, 1000), (1000, 100), (1000, 1000)]
    for T, n in shapes:
        clip = np.full(T, n)
        uneven_clip = rng.integers(n // 4, 2 * n, T)
        uniform = np.full(T, 1.0 / T)
        uneven = rng.gamma(0.5, size=T) + 1e-3
        N = int(clip.sum())
        cases += [
            (f"finite  T={T} n={n} uniform", clip, uniform, False, False, N, None),
            (f"finite  T={T} n~{n} uneven w", uneven_clip, uneven, False, False,
             int(uneven_clip.sum()), None),
            (f"infinite T={T} n={n} uneven w", clip, uneven, True, False, N, None),
        ]
    T, n = shapes[1]
    clip, w = np.full(T, n), np.full(T, 1.0 / T)
    cases += [
        (f"finite  T={T} n={n} shuffle", clip, w, False, True, T * n, None),
        (f"infinite T={T} n={n} shuffle", clip, w, True, True, T * n, None),
        (f"infinite T={T} n={n} per batch of 64", clip, w, True, False,
         (8192 if quick else 32768), 64),
        (f"infinite T={T} n={n} per window of 4096 (loader)", clip, w, True, False,
         (16384 if quick else 65536), 4096),
        (f"finite  T={T} n={n} per batch of 64", clip, w, False, False, T * n, 64),
    ]
    return cases


def plan_workload(clip, weights, infinite, shuffle, positions, per_call, seed=11):
    """One run: a fresh plan (nothing cached) asked for ``positions`` positions."""
    def run():
        plan = StreamPlan(clip, weights, seed, infinite=infinite, shuffle=shuffle)
        if per_call is None:
            t, _ = plan.records(0, positions)
            assert len(t) == positions
        else:
            for a in range(0, positions, per_call):
                plan.records(a, min(a + per_call, positions))
    return run


# ------------------------------------------------------------------ tiles
def write_dataset(folder: str, tfrecords: int, per_file: int, pool: list) -> list:
    """``tfrecords`` files of ``per_file`` tile records each, cycling through ``pool``."""
    paths = []
    for s in range(tfrecords):
        path = os.path.join(folder, f"bench-slide-{s:03d}.tfrecords")
        tilespec.write_records(path, (
            tilespec.encode_tile(pool[(s * per_file + i) % len(pool)], f"bench-slide-{s:03d}",
                                 loc_x=(i % 64) * TILE_PX, loc_y=(i // 64) * TILE_PX)
            for i in range(per_file)))
        paths.append(path)
    return paths


def bare_decode(images):
    """The baseline: Pillow decodes of in-memory JPEG bytes into HWC uint8 arrays."""
    for b in images:
        np.asarray(Image.open(io.BytesIO(b)))


def decode_loop(decode, images):
    """A bare loop with another decoder (``common.bare_decoders``)."""
    for b in images:
        decode(b)


def pillow_load(images):
    """Pillow's decode alone, without making an array (for reference)."""
    for b in images:
        with Image.open(io.BytesIO(b)) as im:
            im.load()


def decode_image_loop(images):
    for b in images:
        tilespec.decode_image(b)


def epoch(loader) -> int:
    """One finite epoch of a loader; returns the number of tiles."""
    n = 0
    for batch in loader:
        n += len(batch[0]) if isinstance(batch[0], np.ndarray) and batch[0].ndim == 4 else 1
    return n


def interleaved(workloads: dict, *, items: int, nbytes: int, repeats: int, clock: str,
                trace: bool) -> list:
    """Time ``workloads`` (name -> fn) round-robin: each round runs every workload once.

    One untimed warm-up round first. Returns a :class:`Result` per workload,
    with peak-RSS growth over its runs and (``trace``) one traced run.
    """
    for fn in workloads.values():
        fn()
    res = {k: Result(k, items=items, nbytes=nbytes, clock=clock) for k in workloads}
    for _ in range(repeats):
        for k, fn in workloads.items():
            with PeakRSS() as mem:
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                res[k].times.append(time.perf_counter() - t0)
                res[k].cpu_times.append(time.process_time() - c0)
            if mem.delta is not None:
                res[k].rss_delta = max(res[k].rss_delta or 0, mem.delta)
    if trace:
        for k, fn in workloads.items():
            res[k].py_peak = tracemalloc_peak(fn)
    return list(res.values())


def ratio_per_round(base: Result, other: Result) -> float:
    """Median over rounds of base time / other time (= other's tiles/s as a fraction)."""
    a = base.cpu_times if base.clock == "cpu" else base.times
    b = other.cpu_times if other.clock == "cpu" else other.times
    return statistics.median(x / y for x, y in zip(a, b))


# ------------------------------------------------------------------ main
def run(args) -> dict:
    t_start = time.perf_counter()
    env = environment()
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    out = {"environment": env}

    if not args.skip_plan:
        print(f"\n== planning: fresh StreamPlan + records(0, N); median of {args.repeats} "
              f"runs, {args.clock} clock")
        rows, plan_results = [], []
        for name, clip, w, inf, shuf, N, per_call in plan_cases(args.quick):
            r = measure(name, plan_workload(clip, w, inf, shuf, N, per_call), items=N,
                        nbytes=0, repeats=args.repeats, trace=not args.no_tracemalloc,
                        clock=args.clock)
            plan_results.append(r)
            us = r.median / N * 1e6
            rows.append([name, f"{N:,}", f"{us:.3f}", "yes" if us < 1.0 else "NO",
                         f"{r.spread * 100:.0f}%",
                         "-" if r.py_peak is None else f"{r.py_peak / 2**20:.1f}",
                         "-" if r.rss_delta is None else f"{r.rss_delta / 2**20:.1f}"])
            if args.verbose:
                print(f"  {name}: {us:.3f} us/sample", file=sys.stderr)
        print(format_table(["plan", "samples", "us/sample", "< 1 us", "spread",
                            "py peak MiB", "RSS +MiB"], rows, align="lrrrrrr"))
        out["planning"] = [r.as_dict() for r in plan_results]

    if not args.skip_loader:
        with contextlib.ExitStack() as stack:
            folder = args.dir or stack.enter_context(tempfile.TemporaryDirectory(
                prefix="tsbench-sampling-"))
            os.makedirs(folder, exist_ok=True)
            t0 = time.perf_counter()
            pool = jpeg_pool(args.unique, px=TILE_PX, quality=QUALITY, noise=args.noise)
            paths = write_dataset(folder, args.tfrecords, args.per_file, pool)
            ds = tilespec.Dataset(tfrecords=paths)
            images = [tilespec.parse_tile(p).image_raw
                      for path in paths for p in tilespec.read_records(path)]
            n = len(images)
            jpeg_bytes = sum(map(len, images))
            sizes = [len(b) for b in pool]
            print(f"\n== loader: {args.tfrecords} tfrecords x {args.per_file} = {n} tiles of "
                  f"{TILE_PX}x{TILE_PX} JPEG q{QUALITY} ({len(pool)} distinct, mean "
                  f"{statistics.mean(sizes) / 1000:.1f} kB, {min(sizes) / 1000:.1f}-"
                  f"{max(sizes) / 1000:.1f} kB), written in {time.perf_counter() - t0:.1f} s")
            opts = dict(infinite=False, standardize=False, seed=3)
            batched = ds.numpy(batch_size=args.batch_size, **opts)
            # the limit: the fastest decoder whose pixels equal Pillow's on these tiles,
            # Pillow's loop beside it (issue 18)
            exact, inexact = exact_decoders(pool)
            for name, why in inexact.items():
                print(f"decoder {name}: NOT exact ({why}): not a limit")
            workloads = {"bare Pillow decode -> array": lambda: bare_decode(images)}
            for name, decode in exact.items():
                if name != "pillow":
                    workloads[f"bare {name} decode -> array"] = (
                        lambda d=decode: decode_loop(d, images))
            n_bare = len(workloads)
            workloads[f"Dataset.numpy batch_size={args.batch_size}"] = lambda: epoch(batched)
            if not args.quick:
                unbatched = ds.numpy(**opts)
                workloads.update({
                    "Dataset.numpy unbatched": lambda: epoch(unbatched),
                    "tilespec.decode_image": lambda: decode_image_loop(images),
                    "Pillow decode only (im.load)": lambda: pillow_load(images),
                })
            assert epoch(batched) == n
            print(f"timing: {args.repeats} interleaved rounds after a warm-up round; "
                  f"rates from the median {args.clock} time; files in page cache\n")
            results = interleaved(workloads, items=n, nbytes=jpeg_bytes, repeats=args.repeats,
                                  clock=args.clock, trace=not args.no_tracemalloc)
            base = max(results[:n_bare], key=lambda r: r.items_per_s)   # the limit
            for r in results:
                if r is not base:
                    r.note = f"{ratio_per_round(base, r) * 100:.0f}% of bare"
            base.note = "the limit (bare)"
            print_table(results)
            loader = results[n_bare]
            ratio = loader.items_per_s / base.items_per_s
            print(f"\nloader / {base.name} (tiles/s, medians): {ratio * 100:.1f}%  "
                  f"(median of per-round ratios {ratio_per_round(base, loader) * 100:.1f}%; "
                  f"target >= 85%: {'met' if ratio >= 0.85 else 'NOT met'})")
            out["loader"] = {"tiles": n, "jpeg_bytes_mean": statistics.mean(sizes),
                             "limit": base.name, "inexact_decoders": inexact,
                             "ratio": ratio, "results": [r.as_dict() for r in results]}
            batched.close()

    total = time.perf_counter() - t_start
    print(f"\ntotal bench time {total:.1f} s")
    out["total_s"] = total
    write_json(args.json, out)
    return out


def parse_args(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: fewer plan shapes, 256 tiles, 3 repeats, two loader rows")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs (rounds) per workload, median reported (default 7; 3 "
                         "with --quick)")
    ap.add_argument("--tfrecords", type=int, default=None,
                    help="tfrecord files in the loader dataset (default 8; 4 with --quick)")
    ap.add_argument("--per-file", type=int, default=None,
                    help="tile records per file (default 128; 64 with --quick)")
    ap.add_argument("--batch-size", type=int, default=64, help="loader batch size (default 64)")
    ap.add_argument("--unique", type=int, default=None,
                    help="distinct JPEG tiles cycled through the files (default 16; 6 with "
                         "--quick); drawing one takes ~80 ms")
    ap.add_argument("--noise", type=float, default=4.5,
                    help="extra Gaussian noise (grey levels) on the synthetic tiles; 4.5 "
                         "gives ~18 kB JPEGs, 0 gives tissue_tile's ~15 kB")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu",
                    help="rates from the median process CPU time (default: steadier on a "
                         "shared machine) or wall time")
    ap.add_argument("--skip-plan", action="store_true", help="skip the planning rows")
    ap.add_argument("--skip-loader", action="store_true", help="skip the loader rows")
    ap.add_argument("--no-tracemalloc", action="store_true",
                    help="skip the extra traced run per workload (py peak column shows -)")
    ap.add_argument("--dir", help="write the loader dataset here and keep it")
    ap.add_argument("--json", help="also write every run time and the environment as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = ap.parse_args(argv)
    quick_defaults(args, {"repeats": (7, 3), "tfrecords": (8, 4), "per_file": (128, 64),
                          "unique": (16, 6)})
    at_least_one(ap, args, ("repeats", "tfrecords", "per_file", "unique", "batch_size"))
    return args


def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
