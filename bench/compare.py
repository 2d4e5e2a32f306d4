"""Every loader of this project beside the bare limits and plain tf.data, in one run (issue 18).

One command, one table, the same files for every row. The dataset: ``--tfrecords``
files (default 20) of ``--tiles`` records each (500) of ``--px`` px JPEG tiles at
quality 90 (``--unique`` distinct synthetic tissue tiles with noise, cycled),
written by TensorFlow's ``tf.io.TFRecordWriter`` as ``tf.train.Example`` records
with slideflow's feature names (``image_raw``, ``slide``, ``loc_x``, ``loc_y``),
indexed, and cached in a folder named after those parameters under the temp dir
(``--cache DIR`` to choose where, ``--dir DIR`` to name the folder itself).

The workload of every row: one finite pass over every tile, batch 64, augment
'xyr' (random flips and rot90), in uint8 (``standardize=False``) and in float32
('unit' standardization, x / 127.5 - 1: ``standardize=True`` of the numpy and torch
loaders; TensorFlow's True would be per_image, so its rows pass 'unit' by name and
the tf.data pipelines do the same arithmetic). The rows (``--only REGEX`` keeps the
rows whose key matches):

* ``bare/DEC/decode``: a bare loop, one core, over the JPEG bytes held in memory:
  decode only; DEC is ``pillow`` (``np.asarray(Image.open(...))``) and, when it
  imports, ``simplejpeg`` (``decode_jpeg(..., fastdct=False, fastupsample=False)``);
* ``bare/DEC/OPS/DTYPE``: the same decode plus the reference's drawn 'xyr' steps and
  (float32) 'unit' standardization, with ``tilespec.ops`` (OPS ``numpy``, HWC) or
  ``tilespec_torch.ops`` (``torch``, CHW, one torch thread);
* ``bare2/DEC/torch/DTYPE``: two such loops in two processes started at the same
  moment, each over half the tiles: what the machine gives two processes right now
  (the limit of the 2-worker and TensorFlow rows);
* ``bare/DEC/decode+stack``: the decode-only loop that also ``np.stack``-s every 64
  images into a batch (the "of +stack" column of ``numpy/decode``);
* ``bare/DEC/torch+stack/DTYPE``, ``bare2/DEC/torch+stack/DTYPE``: the torch loops that
  also ``torch.stack`` every 64 tiles into a (64, 3, H, W) batch, as a user's own loop
  would to make batches: the torch ops keep the decoder's pixel-by-pixel memory order
  (a permuted view), so the plain loops never change the layout, which a contiguous
  batch needs (the torch rows' "of +stack" column);
* ``numpy/decode``, ``numpy/DTYPE``: ``Dataset.numpy(batch_size=64, infinite=False,
  augment=..., standardize=...)`` (``decode``: no augmentation, uint8);
* ``torch/wW/DTYPE``: ``Dataset.torch(...)``, the ``torch.utils.data.DataLoader``
  users get, with ``num_workers`` W in ``--workers`` (0 1 2), one torch thread in
  the main process;
* ``tf/DTYPE``: ``Dataset.tensorflow(...)``;
* ``tfdata-usual/DTYPE``: tf.data as slideflow and most users write it: one
  ``TFRecordDataset`` per file, ``sample_from_datasets`` (equal weights),
  ``parse_single_example``, ``decode_jpeg`` (TensorFlow's default DCT),
  ``random_flip_left_right``, ``random_flip_up_down``, ``rot90`` by a random k,
  standardization, in ``map(num_parallel_calls=AUTOTUNE, deterministic=False)``,
  batch 64, prefetch AUTOTUNE;
* ``tfdata-bench/DTYPE``: the plain pipeline bench/tf_loader.py compares with
  (``plain_pipeline`` there: exact-IDCT decode, stateless draws, deterministic map),
  without ``repeat``.

Every row runs in a fresh process (so its peak RSS is its own), ``--repeats``
times (default 3), the rows' order rotated at each repeat so drift of the
machine's speed hits all rows alike. Per row: tiles/s (all tiles over the time
from building the loader to the last batch, first batch included, imports not; bare loops:
the loop alone), median and range over the repeats; the ratio to a stated
reference row (#N) and to the bare limit (the fastest exact decoder's bare loop of the
same ops and dtype; two at once for 2+ workers and the TensorFlow rows), each
the median over repeats of that repeat's ratio; time to the first batch; the peak
RSS of the process running the row (VmHWM: imports and, for bare loops, every
JPEG held in memory included) and of its largest worker process
(``RUSAGE_CHILDREN``, after the workers have exited; forked workers count pages
shared with the main process too). The load average is printed at the start
and at the end. ``--json FILE`` writes every figure.

Run ``.venv/bin/python bench/compare.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import (at_least_one, bare_decoders, children_peak_rss, environment,  # noqa: E402
                    exact_decoders, format_table, jpeg_pool, MiB, parser, peak_rss,
                    quick_defaults, write_json)

BATCH = 64
AUGMENT = "xyr"
QUALITY = 90
PARALLEL = 2           # processes of the "bare2" rows
FORMAT = 1             # bump when the cached dataset's layout changes
RESULT = "COMPARE-RESULT "


# ------------------------------------------------------------------ rows
@dataclass
class Row:
    """One line of the table: what runs (``kind`` and its parameters), and the keys
    of its reference row and bare limit (None: none)."""

    key: str
    name: str
    kind: str                      # bare, numpy, torch, tf, tfdata-usual, tfdata-bench
    dtype: str = "uint8"           # uint8 or float32 ('unit' standardization)
    decoder: str | None = None     # bare rows: pillow, simplejpeg
    ops: str | None = None         # bare rows: none, numpy, torch
    procs: int = 1                 # bare rows: processes at the same moment
    workers: int = 0               # torch rows
    augment: bool = True
    ref: str | None = None
    limit: list | None = None      # candidate limit keys: the fastest one is used
    stack: bool = False            # bare torch rows: torch.stack every BATCH tiles
    stacked: list | None = None    # candidate "+ stack" limit keys (torch rows)


def _dt(dtype: str) -> str:
    return "u8" if dtype == "uint8" else "f32"


def build_rows(decoders, dtypes, workers, exact=None) -> list:
    """Every row, in display order; ``decoders`` starts with the loaders' one (Pillow);
    the limits are the bare loops of the ``exact`` ones (default all)."""
    base = decoders[0]
    exact = decoders if exact is None else [d for d in decoders if d in exact]
    rows = []

    def bare_key(dec, ops, dtype, procs=1, stack=False):
        head = "bare" if procs == 1 else f"bare{procs}"
        if ops == "none":
            return f"{head}/{dec}/decode" + ("+stack" if stack else "")
        ops = ops + "+stack" if stack else ops
        return f"{head}/{dec}/{ops}/{_dt(dtype)}"

    for dec in decoders:
        rows.append(Row(bare_key(dec, "none", "uint8"), f"bare {dec} decode only, 1 core",
                        "bare", decoder=dec, ops="none", augment=False,
                        ref=None if dec == base else bare_key(base, "none", "uint8")))
    for dec in decoders:
        rows.append(Row(bare_key(dec, "none", "uint8", stack=True),
                        f"bare {dec} decode + np.stack, 1 core", "bare", decoder=dec,
                        ops="none", augment=False, stack=True,
                        ref=bare_key(dec, "none", "uint8")))
    for dtype in dtypes:
        for ops in ("numpy", "torch"):
            for dec in decoders:
                rows.append(Row(bare_key(dec, ops, dtype), f"bare {dec} + {ops} ops {dtype}, "
                                "1 core", "bare", dtype, decoder=dec, ops=ops,
                                ref=None if dec == base else bare_key(base, ops, dtype)))
    for dtype in dtypes:
        for dec in decoders:
            rows.append(Row(bare_key(dec, "torch", dtype, stack=True),
                            f"bare {dec} + torch ops {dtype} + torch.stack, 1 core", "bare",
                            dtype, decoder=dec, ops="torch", stack=True,
                            ref=bare_key(dec, "torch", dtype)))
    for dtype in dtypes:
        for dec in decoders:
            rows.append(Row(bare_key(dec, "torch", dtype, PARALLEL),
                            f"{PARALLEL} bare {dec} + torch ops {dtype} at once", "bare", dtype,
                            decoder=dec, ops="torch", procs=PARALLEL,
                            ref=bare_key(dec, "torch", dtype)))
            rows.append(Row(bare_key(dec, "torch", dtype, PARALLEL, stack=True),
                            f"{PARALLEL} bare {dec} + torch ops {dtype} + torch.stack at once",
                            "bare", dtype, decoder=dec, ops="torch", procs=PARALLEL, stack=True,
                            ref=bare_key(dec, "torch", dtype, stack=True)))

    def limit(ops, dtype, procs=1, stack=False):
        return [bare_key(d, ops, dtype, procs, stack) for d in exact]

    rows.append(Row("numpy/decode", "numpy loader, no augmentation, uint8", "numpy",
                    augment=False, ref=bare_key(base, "none", "uint8"),
                    limit=limit("none", "uint8"), stacked=limit("none", "uint8", stack=True)))
    for dtype in dtypes:
        rows.append(Row(f"numpy/{_dt(dtype)}", f"numpy loader {dtype}", "numpy", dtype,
                        ref=bare_key(base, "numpy", dtype), limit=limit("numpy", dtype)))
    for dtype in dtypes:
        for w in workers:
            ref = bare_key(base, "torch", dtype) if w == 0 else f"torch/w0/{_dt(dtype)}"
            procs = PARALLEL if w >= 2 else 1
            rows.append(Row(f"torch/w{w}/{_dt(dtype)}", f"torch num_workers={w} {dtype}",
                            "torch", dtype, workers=w, ref=ref,
                            limit=limit("torch", dtype, procs),
                            stacked=limit("torch", dtype, procs, stack=True)))
    for dtype in dtypes:
        usual = f"tfdata-usual/{_dt(dtype)}"
        two = limit("torch", dtype, PARALLEL)
        rows.append(Row(f"tf/{_dt(dtype)}", f"tilespec TensorFlow {dtype}", "tf", dtype,
                        ref=usual, limit=two))
        rows.append(Row(usual, f"tf.data the usual way {dtype}", "tfdata-usual", dtype,
                        limit=two))
        rows.append(Row(f"tfdata-bench/{_dt(dtype)}", f"tf.data as bench/tf_loader.py {dtype}",
                        "tfdata-bench", dtype, ref=usual, limit=two))
    return rows


def rotated(rows: list, repeat: int, repeats: int) -> list:
    """The run order of repeat ``repeat``: rows rotated by repeat/repeats of their
    number, so each row runs early, midway and late in turn."""
    k = (repeat * len(rows)) // max(1, repeats)
    return rows[k:] + rows[:k]


# ------------------------------------------------------------------ dataset
def dataset_folder(args) -> str:
    if args.dir:
        return args.dir
    root = args.cache or os.path.join(tempfile.gettempdir(), "tilespec-bench")
    return os.path.join(root, f"compare-v{FORMAT}-{args.tfrecords}x{args.tiles}-{args.px}px-"
                              f"q{QUALITY}-u{args.unique}-n{args.noise:g}")


def _manifest(args) -> dict:
    return {"format": FORMAT, "tfrecords": args.tfrecords, "tiles": args.tiles, "px": args.px,
            "quality": QUALITY, "unique": args.unique, "noise": args.noise}


def write_tfrecords(folder: str, tfrecords: int, tiles: int, pool: list, px: int) -> list:
    """``tfrecords`` files of ``tiles`` records each, written by TensorFlow's
    TFRecordWriter as tf.train.Example with slideflow's feature names."""
    import tensorflow as tf

    def feature(value):
        if isinstance(value, bytes):
            return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    paths = []
    for s in range(tfrecords):
        slide = f"bench-slide-{s:03d}"
        path = os.path.join(folder, slide + ".tfrecords")
        with tf.io.TFRecordWriter(path) as w:
            for i in range(tiles):
                ex = {"image_raw": pool[(s * tiles + i) % len(pool)], "slide": slide.encode(),
                      "loc_x": (i % 64) * px, "loc_y": (i // 64) * px}
                w.write(tf.train.Example(features=tf.train.Features(
                    feature={k: feature(v) for k, v in ex.items()})).SerializeToString())
        paths.append(path)
    return paths


def prepare(args, log) -> tuple:
    """The dataset's folder and tfrecord paths: reused when a finished one with the same
    parameters is there, else written to a new folder and renamed into place."""
    import tilespec

    folder = dataset_folder(args)
    manifest = os.path.join(folder, "compare.json")
    want = _manifest(args)
    with contextlib.suppress(OSError, ValueError):
        with open(manifest) as fh:
            have = json.load(fh)
        if {k: have.get(k) for k in want} == want:
            print(f"dataset: {folder} (cached)", file=log)
            return folder, [os.path.join(folder, p) for p in have["files"]]
    t0 = time.perf_counter()
    os.makedirs(os.path.dirname(os.path.abspath(folder)), exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(folder) + ".tmp-",
                           dir=os.path.dirname(os.path.abspath(folder)))
    try:
        pool = jpeg_pool(args.unique, px=args.px, quality=QUALITY, noise=args.noise)
        paths = write_tfrecords(tmp, args.tfrecords, args.tiles, pool, args.px)
        for p in paths:
            tilespec.load_index(p)     # build the indexes now, outside every timed run
        with open(os.path.join(tmp, "compare.json"), "w") as fh:
            json.dump(dict(want, files=[os.path.basename(p) for p in paths]), fh)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"dataset: {folder} (written in {time.perf_counter() - t0:.0f} s)", file=log)
    return folder, [os.path.join(folder, os.path.basename(p)) for p in paths]


def read_jpegs(paths) -> list:
    """The image bytes of every record, in file order (public reference API)."""
    import tilespec

    return [tilespec.parse_tile(p).image_raw for path in paths
            for p in tilespec.read_records(path)]


# ------------------------------------------------------------------ child: one row
def _bare(row: Row, spec: dict) -> dict:
    """A bare loop over in-memory JPEG bytes (part ``spec['part']`` of ``procs``)."""
    import warnings

    import numpy as np

    from tilespec.augment import draw_augmentations
    from tilespec.rng import stream_key

    jpegs = read_jpegs(spec["paths"])[spec.get("part", 0)::row.procs]
    decode = bare_decoders()[row.decoder]
    f32 = row.dtype == "float32"
    steps = draw_augmentations(AUGMENT, stream_key(spec["seed"], 0, 0),
                               np.arange(len(jpegs))).steps
    if row.ops == "none" and row.stack:
        batch = []

        def one(b, st):
            batch.append(decode(b))
            if len(batch) == BATCH:
                np.stack(batch)
                batch.clear()
    elif row.ops == "none":
        def one(b, st):
            decode(b)
    elif row.ops == "numpy":
        from tilespec import ops as nops

        def one(b, st):
            x = decode(b)
            for s in st:
                x = getattr(nops, s.op)(x, *s.args)
            if f32:
                nops.standardize(x, "unit")
    else:
        import torch

        from tilespec_torch import ops as tops

        torch.set_num_threads(1)
        warnings.simplefilter("ignore", UserWarning)   # from_numpy of a read-only array

        batch = []

        def one(b, st):
            x = torch.from_numpy(decode(b)).permute(2, 0, 1)
            for s in st:
                x = getattr(tops, s.op)(x, *s.args)
            if f32:
                x = tops.standardize(x, "unit")
            if row.stack:   # what a user's own loop does to make batches
                batch.append(x)
                if len(batch) == BATCH:
                    torch.stack(batch)
                    batch.clear()
    if spec.get("wait"):
        print("ready", flush=True)
        sys.stdin.readline()
    t0 = time.monotonic()
    t_first = t_half = None
    half = len(jpegs) // 2
    for i, (b, st) in enumerate(zip(jpegs, steps)):
        one(b, st)
        if i == BATCH - 1:
            t_first = time.monotonic()
        if i == half - 1:
            t_half = time.monotonic()
    t1 = time.monotonic()
    return {"tiles": len(jpegs), "start": t0, "first": (t_first or t1) - t0,
            "first_tiles": min(BATCH, len(jpegs)), "end": t1,
            "half": (t_half or t0) - t0, "half_tiles": half}


def _usual_tfdata(paths, dtype: str, seed: int):
    """tf.data as slideflow and most users write it (see the module docstring)."""
    import tensorflow as tf

    features = {"image_raw": tf.io.FixedLenFeature([], tf.string),
                "slide": tf.io.FixedLenFeature([], tf.string),
                "loc_x": tf.io.FixedLenFeature([], tf.int64),
                "loc_y": tf.io.FixedLenFeature([], tf.int64)}
    tf.random.set_seed(seed)
    files = [tf.data.TFRecordDataset(p) for p in paths]
    ds = tf.data.Dataset.sample_from_datasets(files, weights=[1 / len(paths)] * len(paths),
                                              seed=seed)

    def parse(record):
        ex = tf.io.parse_single_example(record, features)
        img = tf.io.decode_jpeg(ex["image_raw"], channels=3)
        img = tf.image.random_flip_left_right(img)
        img = tf.image.random_flip_up_down(img)
        img = tf.image.rot90(img, k=tf.random.uniform([], 0, 4, dtype=tf.int32))
        if dtype == "float32":
            img = tf.cast(img, tf.float32) / 127.5 - 1.0
        return img, ex["slide"]

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return ds.batch(BATCH).prefetch(tf.data.AUTOTUNE)


def _loader(row: Row, spec: dict) -> dict:
    """One finite pass of a loader, timed from building it to its last batch."""
    seed = spec["seed"]
    f32 = row.dtype == "float32"
    augment = AUGMENT if row.augment else False
    opts = dict(batch_size=BATCH, infinite=False, seed=seed, augment=augment)
    if row.kind in ("numpy", "torch", "tf"):
        import tilespec
        from tilespec.plugins import plugin_manager

        ds = tilespec.Dataset(tfrecords=spec["folder"])
        # imports outside the clock: the plugins (entry points) and below each adapter's
        # loader modules, which a loader's build imports lazily (with
        # PYTHONDONTWRITEBYTECODE=1, as on this VM, that is 100-190 ms of compiling)
        plugin_manager()
        import PIL.ImageFile  # noqa: F401
    if row.kind == "numpy":
        def make():
            return ds.numpy(standardize=f32, **opts)
    elif row.kind == "torch":
        import torch
        import tilespec_torch.loader  # noqa: F401  (imported before the clock starts)

        torch.set_num_threads(1)

        def make():
            return ds.torch(standardize=f32, num_workers=row.workers, **opts)
    elif row.kind == "tf":
        import tensorflow  # noqa: F401  (imported before the clock starts)
        import tilespec_tf.loader  # noqa: F401

        def make():
            return ds.tensorflow(standardize="unit" if f32 else False, **opts)
    elif row.kind == "tfdata-usual":
        def make():
            return _usual_tfdata(spec["paths"], row.dtype, seed)
    elif row.kind == "tfdata-bench":
        from tf_loader import plain_pipeline

        def make():
            return plain_pipeline(spec["paths"], seed=seed, infinite=False,
                                  standardize="unit" if f32 else False)
    else:
        raise ValueError(f"unknown row kind {row.kind!r}")
    t0 = time.monotonic()
    it = iter(make())
    first = next(it)
    t_first = time.monotonic()
    n_first = n = int(first[0].shape[0])
    dtype = str(first[0].dtype)
    half, t_half, n_half = spec.get("total", 0) // 2, None, None
    for batch in it:
        n += int(batch[0].shape[0])
        if t_half is None and n >= half:
            t_half, n_half = time.monotonic(), n
    t1 = time.monotonic()
    if t_half is None:
        t_half, n_half = t_first, n_first
    del it, first
    import gc

    gc.collect()
    return {"tiles": n, "start": t0, "first": t_first - t0, "first_tiles": n_first, "end": t1,
            "half": t_half - t0, "half_tiles": n_half, "image_dtype": dtype}


def child(spec: dict) -> dict:
    """Run one row (in a fresh process) and return its figures."""
    row = Row(**spec["row"])
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    out = _bare(row, spec) if row.kind == "bare" else _loader(row, spec)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    out.update(cpu_s=(ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
               children_cpu_s=kids.ru_utime + kids.ru_stime,
               peak_rss=peak_rss(),
               worker_peak_rss=(children_peak_rss() or None) if row.workers else None)
    return out


# ------------------------------------------------------------------ parent: run the rows
def _command(spec: dict) -> list:
    return [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _result(proc, out: str, err: str) -> dict:
    for line in out.splitlines():
        if line.startswith(RESULT):
            return json.loads(line[len(RESULT):])
    tail = (err.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {proc.returncode}: {tail}"}


def run_row(row: Row, base: dict, timeout: float) -> dict:
    """Run ``row`` in fresh process(es); figures of the row as a whole."""
    if row.procs == 1:
        proc = subprocess.run(_command(dict(base, row=asdict(row))), capture_output=True,
                              text=True, env=_env(), timeout=timeout)
        res = _result(proc, proc.stdout, proc.stderr)
        if "error" in res:
            return res
        wall = res["end"] - res["start"]
        return dict(res, rate=res["tiles"] / wall, seconds=wall,
                    steady_rate=(res["tiles"] - res["first_tiles"]) / max(1e-9, wall -
                                                                          res["first"]),
                    late_rate=(res["tiles"] - res["half_tiles"]) / max(1e-9, wall -
                                                                       res["half"]))
    procs = [subprocess.Popen(_command(dict(base, row=asdict(row), part=k, wait=True)),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=_env())
             for k in range(row.procs)]
    try:
        for p in procs:                  # each has read its bytes and drawn its steps
            if p.stdout.readline().strip() != "ready":
                break
        for p in procs:
            with contextlib.suppress(BrokenPipeError):
                p.stdin.write("go\n")
                p.stdin.flush()
        parts = []
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            parts.append(_result(p, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    bad = [r for r in parts if "error" in r]
    if bad:
        return bad[0]
    start, end = min(r["start"] for r in parts), max(r["end"] for r in parts)
    tiles = sum(r["tiles"] for r in parts)
    first = max(r["start"] + r["first"] for r in parts) - start
    half = max(r["start"] + r["half"] for r in parts) - start
    return {"tiles": tiles, "rate": tiles / (end - start), "seconds": end - start,
            "first": first, "steady_rate": (tiles - sum(r["first_tiles"] for r in parts)) /
            max(1e-9, end - start - first),
            "late_rate": (tiles - sum(r["half_tiles"] for r in parts)) /
            max(1e-9, end - start - half),
            "peak_rss": max(r["peak_rss"] for r in parts), "worker_peak_rss": None,
            "cpu_s": sum(r["cpu_s"] for r in parts), "children_cpu_s": 0.0, "parts": parts}


def check(row: Row, res: dict, total: int) -> dict:
    """``res``, or an error where the run did not cover every tile once or its images
    were not of the row's dtype."""
    if res["tiles"] != total:
        return {"error": f"{res['tiles']} tiles, expected {total}"}
    got = res.get("image_dtype")
    if got is not None and row.dtype not in got:
        return {"error": f"images of dtype {got}, expected {row.dtype}"}
    return res


# ------------------------------------------------------------------ summary
def summarize(rows: list, runs: dict) -> dict:
    """Per row key: median and range of tiles/s, ratios to the reference row and to the
    bare limit (medians over repeats of each repeat's ratio), first batch, peak RSS.

    ``runs[key]`` is the list of that row's results, one per repeat (in repeat order;
    a failed run is a dict with ``error``)."""
    def rates(key, what="rate"):
        return [None if "error" in r else r.get(what, r["rate"]) for r in runs.get(key, [])]

    def med(key):
        ok = [x for x in rates(key) if x is not None]
        return statistics.median(ok) if ok else None

    def ratio(key, other, what="rate"):
        pairs = [(a / b) for a, b in zip(rates(key, what), rates(other, what)) if a and b]
        return statistics.median(pairs) if pairs else None

    out = {}
    for row in rows:
        res = runs.get(row.key, [])
        ok = [r for r in res if "error" not in r]
        s = {"row": asdict(row), "runs": res,
             "errors": [r["error"] for r in res if "error" in r]}
        if ok:
            rs = [r["rate"] for r in ok]
            s.update(tiles=ok[0]["tiles"], rate=statistics.median(rs), rate_min=min(rs),
                     rate_max=max(rs),
                     steady_rate=statistics.median(r["steady_rate"] for r in ok),
                     late_rate=statistics.median(r.get("late_rate", r["steady_rate"])
                                                 for r in ok),
                     first_s=statistics.median(r["first"] for r in ok),
                     peak_rss=max(r["peak_rss"] for r in ok),
                     worker_peak_rss=max((r["worker_peak_rss"] or 0 for r in ok),
                                         default=0) or None,
                     cpu_per_tile_ms=statistics.median(
                         1e3 * (r["cpu_s"] + r["children_cpu_s"]) / r["tiles"] for r in ok))
            if row.ref and med(row.ref):
                s["vs_ref"] = ratio(row.key, row.ref)
                s["late_vs_ref"] = ratio(row.key, row.ref, "late_rate")
            cands = [k for k in (row.limit or []) if med(k)]
            if cands:
                best = max(cands, key=med)
                s.update(limit=best, vs_limit=ratio(row.key, best))
            cands = [k for k in (row.stacked or []) if med(k)]
            if cands:
                best = max(cands, key=med)
                s.update(stacked=best, vs_stacked=ratio(row.key, best))
        out[row.key] = s
    return out


def _rate(x) -> str:
    return "-" if x is None else f"{x:,.0f}"


def table(rows: list, summary: dict) -> str:
    number = {r.key: i + 1 for i, r in enumerate(rows)}
    lines = []
    for r in rows:
        s = summary[r.key]
        if "rate" not in s:
            lines.append([number[r.key], r.name, "failed: " + "; ".join(s["errors"])[:60]] +
                         [""] * 10)
            continue
        ref = "-" if "vs_ref" not in s else f"{s['vs_ref']:.2f}x #{number[r.ref]}"
        late = "-" if "late_vs_ref" not in s else f"{s['late_vs_ref']:.2f}x"
        lim = "-" if "vs_limit" not in s else f"{100 * s['vs_limit']:.0f}% #{number[s['limit']]}"
        stk = ("-" if "vs_stacked" not in s else
               f"{100 * s['vs_stacked']:.0f}% #{number[s['stacked']]}")
        lines.append([number[r.key], r.name, _rate(s["rate"]),
                      f"{_rate(s['rate_min'])}-{_rate(s['rate_max'])}", _rate(s["steady_rate"]),
                      _rate(s["late_rate"]), ref, late, lim, stk, f"{s['first_s']:.2f}",
                      f"{s['peak_rss'] / MiB:.0f}",
                      "-" if not (r.workers and s["worker_peak_rss"])
                      else f"{s['worker_peak_rss'] / MiB:.0f}"])
    return format_table(["#", "row", "tiles/s", "range", "after 1st", "2nd half", "vs ref",
                         "2nd half vs ref", "of limit", "of +stack", "1st batch s", "RSS MiB",
                         "worker MiB"], lines, align="rl" + "r" * 11)


# ------------------------------------------------------------------ main
def run(args) -> dict:
    log = sys.stderr
    t_start = time.perf_counter()
    load0 = os.getloadavg()
    folder, paths = prepare(args, log)
    # the limits use only decoders whose pixels equal Pillow's on these tiles (the first
    # file holds every distinct tile when --tiles >= --unique)
    decoders = list(bare_decoders())
    exact, inexact = exact_decoders(read_jpegs(paths[:1]))
    for name, why in inexact.items():
        print(f"decoder {name}: NOT exact ({why}): its bare loops are no limit", file=log)
    rows = build_rows(decoders, args.dtypes, args.workers, exact=list(exact))
    if args.only:
        rows = [r for r in rows if re.search(args.only, r.key)]
        if not rows:
            raise SystemExit(f"--only {args.only!r} matches no row")
    for p in paths:                      # into the page cache before any timed run
        with open(p, "rb") as fh:
            while fh.read(1 << 20):
                pass
    total = args.tfrecords * args.tiles
    base = {"folder": folder, "paths": paths, "seed": args.seed, "total": total}
    runs = {r.key: [] for r in rows}
    for rep in range(args.repeats):
        for row in rotated(rows, rep, args.repeats):
            try:
                res = run_row(row, base, args.timeout)
            except subprocess.TimeoutExpired:
                res = {"error": f"timed out after {args.timeout:.0f} s"}
            if "error" not in res:
                res = check(row, res, total)
            runs[row.key].append(res)
            print(f"  repeat {rep + 1}/{args.repeats} {row.key}: " +
                  (res["error"] if "error" in res else f"{res['rate']:,.0f} tiles/s"),
                  file=log, flush=True)
    load1 = os.getloadavg()
    summary = summarize(rows, runs)
    env = environment()
    for dist in ("torch", "tensorflow-cpu", "tensorflow", "simplejpeg"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            env[dist] = version(dist)
    sizes = [len(b) for b in read_jpegs(paths[:1])]
    print(f"{args.tfrecords} tfrecords x {args.tiles} tiles of {args.px} px JPEG q{QUALITY} "
          f"(first file: mean {statistics.mean(sizes) / 1e3:.1f} kB) written by "
          f"tf.io.TFRecordWriter; one finite pass, batch {BATCH}, augment '{AUGMENT}', float32 ="
          f" 'unit'; median of {args.repeats} interleaved repeats; cpus {os.cpu_count()}")
    print(f"load average at start {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}, at end "
          f"{load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
    print(table(rows, summary))
    print("vs ref: median over repeats of the row's tiles/s over row #N's in the same repeat;"
          " of limit: the same against the fastest exact decoder's bare loop #N of the same ops"
          " and dtype (two at once for 2+ workers and TensorFlow); of +stack: the same against"
          " the bare loop that also stacks every 64 tiles into a batch (np.stack, torch.stack:"
          " what"
          " a user's own loop does, and what a loader's batch costs). after 1st: tiles/s after the"
          " first batch; 2nd half: tiles/s over the second half of the tiles (a pipeline's"
          " buffers filled during a long first batch no longer count), and its ratio to the"
          " row #N of vs ref. RSS: peak of the process running the row; worker: its largest"
          " worker.")
    elapsed = time.perf_counter() - t_start
    print(f"total {elapsed:.0f} s")
    failed = [k for k, s in summary.items() if s["errors"]]
    out = {"environment": env, "args": vars(args), "dataset": folder, "tiles": total,
           "load_start": load0, "load_end": load1, "seconds": elapsed, "decoders": decoders,
           "inexact_decoders": inexact,
           "rows": summary, "failed": failed}
    write_json(args.json, out)
    return out


def parse_args(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--tfrecords", type=int, default=None, help="files (default 20; 2 --quick)")
    ap.add_argument("--tiles", type=int, default=None,
                    help="tiles per file (default 500; 96 --quick)")
    ap.add_argument("--px", type=int, default=None, help="tile size (default 256; 64 --quick)")
    ap.add_argument("--unique", type=int, default=None,
                    help="distinct JPEG tiles cycled (default 64; 4 --quick)")
    ap.add_argument("--noise", type=float, default=4.5,
                    help="Gaussian noise (grey levels) added to the synthetic tiles (4.5: "
                         "~18 kB at 256 px, like real tiles)")
    ap.add_argument("--repeats", type=int, default=None, help="repeats (default 3; 1 --quick)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2],
                    help="num_workers of the torch rows (default 0 1 2)")
    ap.add_argument("--dtypes", nargs="+", choices=["uint8", "float32"], default=None,
                    help="image dtypes of the rows (default both; float32 --quick)")
    ap.add_argument("--only", help="run only the rows whose key matches this regex "
                    "(e.g. 'bare|torch/w0')")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per row run")
    ap.add_argument("--cache", help="folder for the cached dataset (default: the temp dir)")
    ap.add_argument("--dir", help="the dataset's folder itself")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 x 96 tiles of 64 px, float32 rows, one repeat")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    quick_defaults(args, {"tfrecords": (20, 2), "tiles": (500, 96), "px": (256, 64),
                          "unique": (64, 4), "repeats": (3, 1),
                          "dtypes": (["uint8", "float32"], ["float32"])})
    at_least_one(ap, args, ["tfrecords", "tiles", "px", "unique", "repeats"])
    return args


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        print(RESULT + json.dumps(child(json.loads(argv[1]))), flush=True)
        return
    out = run(parse_args(argv))
    if out["failed"]:
        sys.exit(f"rows failed: {', '.join(out['failed'])}")


if __name__ == "__main__":
    main()
