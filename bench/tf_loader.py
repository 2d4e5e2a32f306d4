"""TensorFlow adapter throughput: ``Dataset.tensorflow()`` vs a plain tf.data pipeline.

Writes ``--slides`` TFRecord files of 256x256 JPEG tiles (quality 90) to a
temporary folder, then times, each as the median of ``--repeats`` runs of
``--batches`` batches of 64 (a fresh iterator per run, so start-up is included
in both):

* ``tilespec tf (C++ reader)``: ``Dataset.tensorflow(reader="auto", infinite=True, batch_size=64,
  augment='xyr', standardize='per_image')``: the reference's plan and draws, records
  read by a ``TFRecordDataset`` per file chosen by the plan (spec/adapter_tf.md,
  "Two readers"), TensorFlow image ops in a parallel deterministic map;
* ``tilespec tf (Python reader)``: the same with ``reader='python'`` (the default): records read
  by offset by the reference (Python, CRC-checked) in a generator;
* ``plain tf.data``: one ``TFRecordDataset`` per file (repeated),
  ``sample_from_datasets`` with equal weights, ``parse_single_example``, and
  the same ops (exact-IDCT decode, flips and rot90 drawn with stateless TF
  random ops, ``per_image_standardization``) in a parallel deterministic map,
  batch 64, prefetch.

``--standardize`` (``per_image``, the default, ``unit`` or ``none``) sets the
standardization of every row; with ``unit`` or ``none`` the Python reader's row takes
the batch path (spec/adapter_tf.md, "The batch path": batches made in Python by the
reference's decoder and one Pillow transpose per tile), and a row ``tilespec tf
(Python reader, image map)`` (``images='tensorflow'``) is timed beside it.

With ``--normalizer METHOD`` two more rows, interleaved with those: the same
``Dataset.tensorflow()`` with ``normalizer=StainNormalizer(METHOD,
on_blank='passthrough')``, its stain step in TensorFlow graph ops (what the loader
does) and, for comparison, through ``tf.numpy_function`` calling the reference
(what it did before; rebuilt here by the bench only).

It prints tiles/s, the ratio of the two, and the peak resident-memory growth
of a run. Run ``.venv/bin/python bench/tf_loader.py`` (``--quick`` for a smoke
run). On a machine shared with other work, wall times vary: compare the two
rows of one run, not runs on different days.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, format_table, measure, parser, write_json  # noqa: E402

import tilespec  # noqa: E402
from tilespec.synthetic import encode_jpeg, tissue_tile  # noqa: E402

TILE_PX = 256
QUALITY = 90
BATCH = 64
AUGMENT = "xyr"


def write_dataset(folder: str, slides: int, per_slide: int, unique: int) -> list:
    """``slides`` tfrecords of ``per_slide`` records, cycling ``unique`` distinct JPEGs."""
    pool = [encode_jpeg(tissue_tile(np.random.default_rng([7, i]), TILE_PX, tumor=i % 2 == 0),
                        QUALITY) for i in range(unique)]
    paths = []
    for s in range(slides):
        recs = [tilespec.encode_tile(pool[(s * per_slide + i) % unique], f"slide{s}",
                                     loc_x=i * TILE_PX, loc_y=s * TILE_PX)
                for i in range(per_slide)]
        path = os.path.join(folder, f"slide{s}.tfrecords")
        tilespec.write_records(path, recs)
        paths.append(path)
    for p in paths:
        tilespec.load_index(p)  # build the indexes now, outside the timed runs
    return paths


def plain_pipeline(paths, seed: int = 0, standardize="per_image", infinite: bool = True):
    """TFRecordDataset + sample_from_datasets + the same ops, no tilespec.

    ``standardize``: a mode of ``tilespec_tf.ops.standardize`` or False (uint8 images);
    ``infinite=False``: one pass over every record (no ``repeat``; bench/compare.py).
    """
    import tensorflow as tf

    from tilespec_tf import ops as tfops

    features = {"image_raw": tf.io.FixedLenFeature([], tf.string),
                "slide": tf.io.FixedLenFeature([], tf.string),
                "loc_x": tf.io.FixedLenFeature([], tf.int64),
                "loc_y": tf.io.FixedLenFeature([], tf.int64)}
    files = [tf.data.TFRecordDataset(p) for p in paths]
    if infinite:
        files = [f.repeat() for f in files]
    ds = tf.data.Dataset.sample_from_datasets(files, weights=[1 / len(paths)] * len(paths),
                                              seed=seed)
    ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(2)))

    def fn(record, rseed):
        ex = tf.io.parse_single_example(record, features)
        img = tf.io.decode_jpeg(ex["image_raw"], channels=3, dct_method="INTEGER_ACCURATE")
        u = tf.random.stateless_uniform([3], seed=rseed)
        img = tf.cond(u[0] < 0.5, lambda: tf.reverse(img, [1]), lambda: img)
        img = tf.cond(u[1] < 0.5, lambda: tf.reverse(img, [0]), lambda: img)
        img = tf.image.rot90(img, tf.cast(tf.floor(4 * u[2]), tf.int32))
        if standardize:
            img = tfops.standardize(img, standardize)
        return img, ex["slide"]

    ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(BATCH).prefetch(tf.data.AUTOTUNE)


@contextlib.contextmanager
def numpy_function_stain():
    """While active, loaders built use ``tf.numpy_function`` and the reference for their
    stain step (the loader before its stain step became graph ops)."""
    import tensorflow as tf

    from tilespec.stain import FIT_SHAPES
    from tilespec_tf import loader

    def graph_one(normalizer, img, target):
        fit = normalizer.get_fit()

        def run(im, t):
            delta, at = {}, 0
            for key, shape in FIT_SHAPES[normalizer.method].items():
                size = int(np.prod(shape))
                delta[key] = t[at:at + size].reshape(shape) - fit[key]
                at += size
            return normalizer.transform(im, augment=True, perturbation=delta)

        return tf.numpy_function(run, [img, target], tf.uint8, stateful=False)

    saved = loader.tfstain.graph_one
    loader.tfstain.graph_one = graph_one
    try:
        yield
    finally:
        loader.tfstain.graph_one = saved


def consume(ds, batches: int) -> int:
    n = 0
    for img, *_ in ds.take(batches):
        n += int(img.shape[0])
    return n


def run(args) -> dict:
    import tensorflow as tf

    env = environment()
    env["tensorflow"] = tf.__version__
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    with contextlib.ExitStack() as stack:
        folder = args.dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="tstf-"))
        os.makedirs(folder, exist_ok=True)
        t0 = time.perf_counter()
        paths = write_dataset(folder, args.slides, args.per_slide, args.unique)
        size = sum(os.path.getsize(p) for p in paths)
        print(f"dataset: {args.slides} tfrecords x {args.per_slide} records of {TILE_PX}x"
              f"{TILE_PX} JPEG q{QUALITY}, {size / 1e6:.1f} MB ({time.perf_counter() - t0:.1f} s"
              " to write)")
        ds = tilespec.Dataset(tfrecords=folder)
        std = {"none": False}.get(args.standardize, args.standardize)
        mine = dict(infinite=True, batch_size=BATCH, augment=AUGMENT,
                    standardize=std, seed=1, incl_slidenames=True)
        ours = ds.tensorflow(reader="auto", **mine)
        assert ours.tilespec.reader == "c++", ours.tilespec.python_reason
        ours_py = ds.tensorflow(reader="python", **mine)
        plain = plain_pipeline(paths, seed=1, standardize=std)
        tiles = args.batches * BATCH
        results = []
        # interleave the workloads' runs so all see the same machine load
        order = [("plain tf.data", plain), ("tilespec tf (C++ reader)", ours),
                 ("tilespec tf (Python reader)", ours_py)]
        batch_path = ours_py.tilespec.images == "python"
        if batch_path:  # spec/adapter_tf.md, "The batch path": and the image map beside it
            order[2] = ("tilespec tf (Python reader, batch path)", ours_py)
            order.append(("tilespec tf (Python reader, image map)",
                          ds.tensorflow(reader="python", images="tensorflow", **mine)))
        if args.normalizer:
            norm = tilespec.StainNormalizer(args.normalizer, on_blank="passthrough")
            opts = dict(infinite=True, batch_size=BATCH, augment=AUGMENT,
                        standardize=std, seed=1, incl_slidenames=True, normalizer=norm)
            graph = ds.tensorflow(**opts)
            with numpy_function_stain():
                numpy_fn = ds.tensorflow(**opts)
            order += [(f"+ {args.normalizer} graph ops", graph),
                      (f"+ {args.normalizer} numpy_function", numpy_fn)]
        for name, d in order:
            results.append(measure(name, lambda d=d: consume(d, args.batches), items=tiles,
                                   nbytes=0, repeats=args.repeats, warmup=1, trace=False))
        if args.repeats > 1:   # a second round, reversed, to even out drift in machine load
            for (name, d), r in zip(reversed(order), reversed(results)):
                extra = measure(name, lambda d=d: consume(d, args.batches), items=tiles,
                                nbytes=0, repeats=args.repeats, warmup=0, trace=False)
                r.times += extra.times
                r.cpu_times += extra.cpu_times
                r.rss_delta = max(r.rss_delta or 0, extra.rss_delta or 0)
    rows = []
    plain_rate = results[0].items_per_s
    for r in results:
        rows.append([r.name, f"{r.items_per_s:,.0f}", f"{r.items_per_s / plain_rate:.2f}",
                     f"{r.wall * 1e3:.0f}", f"{r.cpu * 1e3:.0f}",
                     f"{r.cpu / tiles * 1e6:.0f}", f"{r.spread * 100:.0f}%",
                     "-" if r.rss_delta is None else f"{r.rss_delta / 2**20:.0f}"])
    print(f"\n{tiles} tiles per run ({args.batches} batches of {BATCH}), augment {AUGMENT!r} + "
          f"standardize {args.standardize}, median of {len(results[0].times)} runs")
    print(format_table(["pipeline", "tiles/s", "vs plain", "wall ms", "cpu ms",
                        "cpu us/tile", "spread", "RSS +MiB"], rows))
    out = {"environment": env, "results": [r.as_dict() for r in results],
           "ratio": results[1].items_per_s / plain_rate,
           "ratio_python_reader": results[2].items_per_s / plain_rate,
           "cpu_per_tile_cxx_vs_python": results[1].cpu / results[2].cpu}
    print(f"CPU per tile, C++ reader / Python reader: {out['cpu_per_tile_cxx_vs_python']:.2f} "
          "(same run, interleaved)")
    if batch_path:
        out["batch_path_vs_image_map"] = results[2].items_per_s / results[3].items_per_s
        out["cpu_per_tile_batch_path_vs_image_map"] = results[2].cpu / results[3].cpu
        print(f"batch path vs image map: {out['batch_path_vs_image_map']:.2f}x the tiles/s, "
              f"{out['cpu_per_tile_batch_path_vs_image_map']:.2f}x the CPU per tile (same run)")
    if args.normalizer:
        out["stain_graph_vs_numpy_function"] = results[-2].items_per_s / results[-1].items_per_s
        print(f"stain step in graph ops vs tf.numpy_function: "
              f"{out['stain_graph_vs_numpy_function']:.2f}x the tiles/s (same run)")
    return out


def main(argv=None):
    p = parser(__doc__)
    p.add_argument("--slides", type=int, default=8)
    p.add_argument("--per-slide", type=int, default=250)
    p.add_argument("--unique", type=int, default=32, help="distinct JPEGs cycled")
    p.add_argument("--batches", type=int, default=40, help="batches of 64 per run")
    p.add_argument("--repeats", type=int, default=3, help="runs per round (two rounds)")
    p.add_argument("--dir", help="write the dataset here instead of a temporary folder")
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--normalizer", help="also time a stain normalizer of this method (graph ops "
                   "and numpy_function), e.g. reinhard or macenko")
    p.add_argument("--standardize", choices=["per_image", "unit", "none"], default="per_image",
                   help="standardization of every row (default per_image; 'unit' and 'none' "
                   "take tilespec's batch path, timed beside its image map)")
    p.add_argument("--quick", action="store_true", help="smoke run: 10 batches, 1 round of 2")
    args = p.parse_args(argv)
    if args.quick:
        args.batches, args.repeats, args.per_slide, args.unique = 10, 1, 100, 8
    out = run(args)
    write_json(args.json, out)


if __name__ == "__main__":
    main()
