"""Throughput and memory of the PyTorch loader against the bare-compute limit.

Writes ``--records`` tile records (256x256 JPEG, quality 90, drawn with
``tilespec.synthetic.tissue_tile``) into 4 tfrecords, then, in the same run:

* **bare**: a plain loop over the JPEG bytes held in memory doing only the
  decode and the same torch ops (the reference's drawn 'xyr' steps with
  ``tilespec_torch.ops``, then, for float32, 'unit' standardization), one torch
  thread, one process: tiles/s per core, median of ``--repeats`` runs; once with
  Pillow's decode and once with each faster decoder that imports and gives
  Pillow's pixels on these tiles (``common.exact_decoders``: simplejpeg); the
  fastest of those is the limit below (issue 18);
* **dtypes** (``--dtypes``, default both): every bare and loader row is run for
  uint8 batches (``standardize=False``, the default; bare loop: decode + ops) and
  for float32 ones (``standardize=True``; bare loop: decode + ops + 'unit'),
  interleaved within each repeat;
* **loader**: ``Dataset.torch(batch_size=64, augment='xyr', standardize=...,
  infinite=True, num_workers=W)`` for each W of ``--workers``: tiles/s over
  ``--batches`` batches after a warm-up of 2 batches, plus 7 per worker (worker
  start and the first use of each of a worker's 5 shared-memory batch slots are
  not counted), median of ``--repeats`` runs, and the peak RSS of the main
  process plus its workers, sampled every 10 batches;
* **limit** = bare tiles/s per core x max(1, W) worker processes, and the
  loader's share of it (target: at least 85%): each repeat runs the bare loop
  and then every loader, and the share is the median over repeats of the
  loader's rate over that repeat's limit (its range is shown too), so a
  drift of the machine's speed between runs does not enter it. The same share
  in CPU time: bare CPU seconds per tile over the loader's (main process and
  workers), per repeat, median: the cost that reading, parsing, sampling,
  batching and worker transport add, which other work on a shared machine
  moves far less than wall time; beside it the CPU microseconds per tile of the
  loader (main + workers) and of the main process alone (what the main process
  spends per batch on receiving, slot bookkeeping and the caller's loop, its
  share of the two cores with workers), and for W > 0 the rate over the
  num_workers=0 rate of the same repeat (target 1.7x for W=2); for W > 1 also W bare loops run
  at the same time in W processes (what the machine gives W processes at that
  moment, which on a shared machine can be far below W cores), and the main
  process's CPU use while the loader runs;
* **paired** (num_workers=0): ``--pairs`` alternations of ``--chunk`` batches'
  worth of bare loop and as many loader batches from one loader, about half a
  second each; the median of the pairs' ratios is the steadiest figure this
  bench gives on a machine whose speed drifts;
* **long run**: ``--long-tiles`` tiles (default 200,000) from one infinite
  loader with ``--long-workers`` workers, RSS (main + workers) sampled every
  50 batches: the value after 10% of the run, the peak and the last, to show
  memory stays flat.

Run ``.venv/bin/python bench/torch_loader.py`` (``--quick`` for a smoke run).
The machine may be shared: the wall-clock figures are as noisy as the machine.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (environment, exact_decoders, format_table, MiB, parser,  # noqa: E402
                    write_json)

import psutil  # noqa: E402
import torch  # noqa: E402

import tilespec  # noqa: E402
import tilespec.jpeg  # noqa: E402
from tilespec.augment import draw_augmentations  # noqa: E402
from tilespec.rng import stream_key  # noqa: E402
from tilespec.synthetic import encode_jpeg, tissue_tile  # noqa: E402
from tilespec_torch import ops  # noqa: E402

try:  # the decode the reference's item maker uses (no final copy), when it has one
    from tilespec.images import decode_view as _decode
except ImportError:  # pragma: no cover
    from tilespec import decode_image as _decode

#: Batches made before timing: in process 2; with workers also their start and the
#: first use of each of their shared-memory batch slots (prefetch_factor + 3 = 5 of
#: 50 MB, each faulted in on first use), so the timed batches are the steady state.
WARM_UP = 2
WORKER_SLOTS = 5
TILE_PX = 256
QUALITY = 90
BATCH = 64
AUGMENT = "xyr"


# ------------------------------------------------------------------ dataset
def make_pool(n: int, seed: int = 0) -> list:
    return [encode_jpeg(tissue_tile(np.random.default_rng([seed, i]), TILE_PX, i % 2 == 0),
                        QUALITY) for i in range(n)]


def write_dataset(folder: str, n_records: int, pool: list) -> tilespec.Dataset:
    os.makedirs(folder, exist_ok=True)
    files = 4
    for f in range(files):
        recs = [tilespec.encode_tile(pool[(f + files * i) % len(pool)], f"bench-slide-{f}",
                                     loc_x=i, loc_y=f)
                for i in range(n_records // files)]
        tilespec.write_records(os.path.join(folder, f"bench-slide-{f}.tfrecords"), recs)
    ds = tilespec.Dataset(tfrecords=folder)
    for p in ds.tfrecords():
        tilespec.load_index(p)
    return ds


# ------------------------------------------------------------------ workloads
def bare_loop(jpegs: list, steps: list, decode=None, standardize: bool = True) -> None:
    """Decode (default: Pillow's) + the torch ops of each tile's drawn steps (+ 'unit'
    standardize when ``standardize``: the float32 rows)."""
    decode = decode or _decode
    for data, st in zip(jpegs, steps):
        arr = decode(data)
        if arr.flags.writeable:
            x = torch.from_numpy(arr)
        else:  # a read-only decoder view, as the loader sees it (not written to)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                x = torch.from_numpy(arr)
        x = x.permute(2, 0, 1)
        for s in st:
            x = getattr(ops, s.op)(x, *s.args)
        if standardize:
            ops.standardize(x, "unit")


def decoders(jpegs: list) -> tuple:
    """``({name: decode}, {name: why not})``: the loader's Pillow decode as 'pillow' and
    every faster decoder whose pixels equal Pillow's on ``jpegs`` (issue 18: the limit
    is the fastest of these, Pillow's loop shown beside it)."""
    exact, inexact = exact_decoders(jpegs)
    return dict(exact, pillow=_decode), inexact


def _bare_worker(args):
    jpegs, steps, name, standardize = args
    torch.set_num_threads(1)
    decode = decoders(jpegs[:1])[0][name]
    bare_loop(jpegs[:BATCH], steps[:BATCH], decode, standardize)
    t0 = time.perf_counter()
    bare_loop(jpegs, steps, decode, standardize)
    return time.perf_counter() - t0


def bare_parallel(jpegs: list, steps: list, processes: int, decoder: str = "pillow",
                  standardize: bool = True) -> float:
    """Aggregate tiles/s of ``processes`` bare loops running at the same time (forked
    processes): what the machine gives W processes right now."""
    import multiprocessing as mp

    with mp.get_context("fork").Pool(processes) as pool:
        times = pool.map(_bare_worker, [(jpegs, steps, decoder, standardize)] * processes)
    return processes * len(jpegs) / max(times)


def rss_tree() -> int:
    proc = psutil.Process()
    total = proc.memory_info().rss
    for c in proc.children(recursive=True):
        try:
            total += c.memory_info().rss
        except psutil.Error:
            pass
    return total


def cpu_tree() -> float:
    """CPU seconds (user + system) used so far by this process and its children."""
    proc = psutil.Process()
    total = sum(proc.cpu_times()[:2])
    for c in proc.children(recursive=True):
        try:
            total += sum(c.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def loader_run(ds, workers: int, batches: int, standardize: bool = True) -> tuple:
    """(seconds for ``batches`` batches after warm-up, peak RSS of the process tree,
    CPU seconds of the main process, CPU seconds of the main process and its workers)."""
    L = ds.torch(batch_size=BATCH, augment=AUGMENT, standardize=standardize, infinite=True,
                 num_workers=workers, seed=0)
    it = iter(L)
    for _ in range(WARM_UP + (WORKER_SLOTS + 2) * workers):
        next(it)
    peak = rss_tree()
    c0 = time.process_time()
    tree0 = cpu_tree()
    t0 = time.perf_counter()
    for b in range(batches):
        imgs, _ = next(it)
        if b % 10 == 0:
            peak = max(peak, rss_tree())
    dt = time.perf_counter() - t0
    main_cpu = time.process_time() - c0
    tree = cpu_tree() - tree0
    it.close()
    return dt, peak, main_cpu, tree


def paired_run(ds, jpegs: list, steps: list, pairs: int, chunk: int, decode=None,
               standardize: bool = True) -> list:
    """In-process loader (num_workers=0) against the bare loop, alternating: ``pairs``
    times, ``chunk`` batches' worth of bare loop then ``chunk`` loader batches (about
    half a second each). Returns each pair's loader/bare tiles/s ratio: runs moments
    apart, so the machine's drifting speed cancels out of each ratio."""
    n = chunk * BATCH
    L = ds.torch(batch_size=BATCH, augment=AUGMENT, standardize=standardize, infinite=True,
                 num_workers=0, seed=0)
    it = iter(L)
    next(it)
    ratios = []
    for p in range(pairs):
        a = (p * n) % max(1, len(jpegs) - n)
        t0 = time.perf_counter()
        bare_loop(jpegs[a:a + n], steps[a:a + n], decode, standardize)
        bare = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(chunk):
            next(it)
        ratios.append(bare / (time.perf_counter() - t0))
    it.close()
    return ratios


def long_run(ds, workers: int, tiles: int, log=None, standardize: bool = True) -> dict:
    L = ds.torch(batch_size=BATCH, augment=AUGMENT, standardize=standardize, infinite=True,
                 num_workers=workers, seed=1)
    n_batches = -(-tiles // BATCH)
    samples = []
    t0 = time.perf_counter()
    it = iter(L)
    for b in range(n_batches):
        next(it)
        if b % 50 == 0 or b == n_batches - 1:
            samples.append((b, rss_tree()))
            if log and b % 500 == 0:
                print(f"  long run: batch {b}/{n_batches}, RSS {samples[-1][1] / MiB:.0f} MiB",
                      file=log)
    dt = time.perf_counter() - t0
    it.close()
    after_warm = next(r for b, r in samples if b >= n_batches // 10)
    return {"tiles": n_batches * BATCH, "workers": workers, "seconds": dt,
            "tiles_per_s": n_batches * BATCH / dt, "rss_at_10pct": after_warm,
            "rss_peak": max(r for _, r in samples), "rss_end": samples[-1][1],
            "rss_first": samples[0][1], "samples": len(samples)}


# ------------------------------------------------------------------ main
DTYPES = {"uint8": False, "float32": True}   # name -> standardize


def _median_share(xs) -> str:
    return f"{100 * statistics.median(xs):.0f}% ({100 * min(xs):.0f}-{100 * max(xs):.0f})"


def run(args) -> dict:
    torch.set_num_threads(1)
    log = sys.stderr if args.verbose else None
    pool = make_pool(args.unique)
    sizes = [len(p) for p in pool]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.dir or os.path.join(tmp, "tfrecords")
        ds = write_dataset(folder, args.records, pool)
        n_bare = n_tiles = args.batches * BATCH   # bare loop and loader: the same count
        jpegs = [pool[i % len(pool)] for i in range(n_bare)]
        steps = draw_augmentations(AUGMENT, stream_key(0, 0, 0), np.arange(n_bare)).steps
        decode, inexact = decoders(pool)
        for name, why in inexact.items():
            print(f"decoder {name}: NOT exact ({why}): not a limit")
        for d in decode.values():
            bare_loop(jpegs[:BATCH], steps[:BATCH], d)                # warm-up
        # Repeats interleave the bare loops and the loaders of every dtype, so each
        # repeat's fraction compares runs made moments apart (the machine's speed
        # drifts by 20-50%).
        bare_all = {(dt, name): ([], []) for dt in args.dtypes for name in decode}
        runs = {(dt, w): [] for dt in args.dtypes for w in args.workers}
        for _ in range(args.repeats):
            for dt in args.dtypes:
                std = DTYPES[dt]
                for name, d in decode.items():
                    c0 = time.process_time()
                    t0 = time.perf_counter()
                    bare_loop(jpegs, steps, d, std)
                    bare_all[dt, name][0].append(time.perf_counter() - t0)
                    bare_all[dt, name][1].append(time.process_time() - c0)
                for w in args.workers:
                    runs[dt, w].append(loader_run(ds, w, args.batches, std))
                    if log:
                        print(f"  {dt} workers={w}: {n_tiles / runs[dt, w][-1][0]:,.0f} tiles/s",
                              file=log)
        rows, results = [], {"inexact_decoders": inexact}
        header = ["workload", "tiles/s", "limit", "of limit (range)",
                  "CPU/tile bare:loader (range)", "CPU us/tile all | main",
                  "x num_workers=0", "W bare loops at once", "main CPU", "peak RSS MiB",
                  "spread"]
        for dt in args.dtypes:
            std = DTYPES[dt]
            # the limit: the fastest exact decoder's bare loop of this dtype
            best = min(decode, key=lambda k: statistics.median(bare_all[dt, k][0]))
            bare_times, bare_cpu = bare_all[dt, best]
            bare_rate = n_bare / statistics.median(bare_times)
            res = results[dt] = {
                "standardize": std, "bare_tiles_per_s_per_core": bare_rate,
                "bare_times_s": bare_times, "limit_decoder": best,
                "bare_by_decoder": {
                    k: {"tiles_per_s": n_bare / statistics.median(bare_all[dt, k][0]),
                        "times_s": bare_all[dt, k][0],
                        "cpu_us_per_tile": 1e6 * statistics.median(bare_all[dt, k][1]) / n_bare}
                    for k in decode}}
            for k, name in enumerate(decode):
                t, c = bare_all[dt, name]
                rows.append([f"{dt}: bare {name} decode+ops, 1 core" + (" (limit)" if name == best
                                                                         else ""),
                             f"{n_bare / statistics.median(t):,.0f}", "-", "-", "-",
                             f"{1e6 * statistics.median(c) / n_bare:.0f}", "-", "-", "-", "-",
                             f"{(max(t) - min(t)) / statistics.median(t) * 100:.0f}%"])
            for w in args.workers:
                rs = runs[dt, w]
                times = [r[0] for r in rs]
                peaks = [r[1] for r in rs]
                cpus = [r[2] / r[0] for r in rs]
                # each repeat: loader tiles/s over (that repeat's bare tiles/s x workers)
                fractions = [(n_tiles / t) / (n_bare / bt * max(1, w))
                             for t, bt in zip(times, bare_times)]
                rate = n_tiles / statistics.median(times)
                limit = bare_rate * max(1, w)
                par = bare_parallel(jpegs, steps, w, best, std) if w > 1 else None
                # CPU: bare CPU seconds per tile over the loader's (main + workers), per
                # repeat: what reading, parsing, sampling, batching and transport add,
                # much less sensitive than wall time to other work on the machine
                cpu_fracs = [(bc / n_bare) / (r[3] / n_tiles) for bc, r in zip(bare_cpu, rs)]
                all_us = statistics.median(1e6 * r[3] / n_tiles for r in rs)
                main_us = statistics.median(1e6 * r[2] / n_tiles for r in rs)
                speedup = None
                if w and 0 in args.workers:   # over num_workers=0 in the same repeat
                    speedup = [t0[0] / t for t0, t in zip(runs[dt, 0], times)]
                res[f"workers_{w}"] = {
                    "tiles_per_s": rate, "limit": limit, "fraction": statistics.median(fractions),
                    "fractions": fractions, "cpu_fraction": statistics.median(cpu_fracs),
                    "cpu_fractions": cpu_fracs, "cpu_us_per_tile": all_us,
                    "main_cpu_us_per_tile": main_us, "times_s": times, "peak_rss": max(peaks),
                    "bare_parallel": par, "main_cpu_fraction": statistics.median(cpus),
                    "over_workers_0": speedup}
                rows.append([f"{dt}: loader num_workers={w}", f"{rate:,.0f}", f"{limit:,.0f}",
                             _median_share(fractions), _median_share(cpu_fracs),
                             f"{all_us:.0f} | {main_us:.0f}",
                             "-" if speedup is None else
                             f"{statistics.median(speedup):.2f}x ({min(speedup):.2f}-"
                             f"{max(speedup):.2f})",
                             "-" if par is None else f"{par:,.0f} ({100 * rate / par:.0f}%)",
                             f"{100 * statistics.median(cpus):.0f}%", f"{max(peaks) / MiB:.0f}",
                             f"{(max(times) - min(times)) / statistics.median(times) * 100:.0f}%"])
        print(f"{args.records} records, 256x256 JPEG q{QUALITY} (mean "
              f"{np.mean(sizes) / 1e3:.1f} kB, {min(sizes) / 1e3:.1f}-{max(sizes) / 1e3:.1f}), "
              f"batch {BATCH}, augment "
              f"'{AUGMENT}' (float32: + standardize 'unit'), {args.batches} batches per run, "
              f"median of {args.repeats}; loader decode {tilespec.jpeg.DECODER}; cpus "
              f"{os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
        print(format_table(header, rows))
        if args.pairs and 0 in args.workers:
            for dt in args.dtypes:
                best = results[dt]["limit_decoder"]
                ratios = paired_run(ds, jpegs, steps, args.pairs, args.chunk, decode[best],
                                    DTYPES[dt])
                q = np.percentile(ratios, [25, 75])
                results[dt]["paired_workers_0"] = {"ratios": ratios,
                                                   "median": statistics.median(ratios)}
                print(f"{dt} num_workers=0 paired with the bare loop ({args.pairs} pairs of "
                      f"{args.chunk} batches, alternating): loader/bare median "
                      f"{100 * statistics.median(ratios):.0f}%, quartiles {100 * q[0]:.0f}-"
                      f"{100 * q[1]:.0f}%, range {100 * min(ratios):.0f}-{100 * max(ratios):.0f}%")
        if args.long_tiles:
            lr = long_run(ds, args.long_workers, args.long_tiles, log,
                          DTYPES[args.long_dtype])
            results["long_run"] = lr
            print(f"long run: {lr['tiles']:,} tiles, {args.long_dtype}, num_workers="
                  f"{lr['workers']}, {lr['tiles_per_s']:,.0f} tiles/s; RSS (main + workers) first "
                  f"{lr['rss_first'] / MiB:.0f} MiB, after 10% {lr['rss_at_10pct'] / MiB:.0f} MiB,"
                  f" peak {lr['rss_peak'] / MiB:.0f} MiB, end {lr['rss_end'] / MiB:.0f} MiB "
                  f"({lr['samples']} samples)")
    results["environment"] = dict(environment(), torch=torch.__version__,
                                  load=os.getloadavg(), decoder=tilespec.jpeg.DECODER)
    results["args"] = vars(args)
    write_json(args.json, results)
    return results


def parse_args(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--records", type=int, default=None, help="records written (default 2048)")
    ap.add_argument("--unique", type=int, default=None,
                    help="distinct JPEG tiles cycled through the files (default 16)")
    ap.add_argument("--batches", type=int, default=None,
                    help="timed batches per run (default 40; 8 with --quick)")
    ap.add_argument("--repeats", type=int, default=None,
                    help="runs per row, median reported (default 5; 2 with --quick)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--long-tiles", type=int, default=None,
                    help="tiles in the long infinite run (default 200000; 2000 with --quick; "
                         "0 skips it)")
    ap.add_argument("--long-workers", type=int, default=2)
    ap.add_argument("--long-dtype", choices=list(DTYPES), default="float32",
                    help="batches of the long run (default float32: the larger)")
    ap.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=list(DTYPES),
                    help="batch dtypes measured (default: uint8 float32)")
    ap.add_argument("--pairs", type=int, default=None,
                    help="alternating bare/loader pairs for num_workers=0 (default 30; 4 with "
                         "--quick; 0 skips them)")
    ap.add_argument("--chunk", type=int, default=8, help="batches per half of a pair")
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    ap.add_argument("--dir", help="write the dataset here (default: a temp dir)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = ap.parse_args(argv)
    q = args.quick
    args.records = args.records or (512 if q else 2048)
    args.unique = args.unique or (4 if q else 16)
    args.batches = args.batches or (8 if q else 40)
    args.repeats = args.repeats or (2 if q else 5)
    if args.pairs is None:
        args.pairs = 4 if q else 30
    if args.long_tiles is None:
        args.long_tiles = 2000 if q else 200_000
    return args


def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
