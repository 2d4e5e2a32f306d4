"""Record the streams of every loader of a fixed seed, and compare them later bit for bit.

Issue 15 ("one home for every per-item rule") restructures the item path of the
reference and both adapters and must change no behaviour. This script writes a small
synthetic dataset deterministically (``tilespec.synthetic.write_synthetic_dataset``,
seed 0, into a temporary folder), then reads it through the public API of every
backend -- ``Dataset.numpy()``, ``Dataset.torch()`` with ``num_workers`` 0 and 2,
``Dataset.tensorflow()``, ``tilespec.IndexedInterleaver`` and the adapters' indexed
datasets (``tilespec.plugins.make_indexed``; the torch one also through a plain
``torch.utils.data.DataLoader`` with two workers) -- in a few option sets that
together cover ``augment='xyrjb'`` (and ``'xyrjbn'``), the Reinhard and Macenko
normalizers, crop and resize (down and up), ``standardize`` False/True/'per_image',
``incl_slidenames``, ``incl_loc``, categorical and float labels and none,
``batch_size`` set and None, a finite epoch and a bounded take of an infinite
stream, ``shuffle``, ``rank``/``num_replicas=2``, a clipped and balanced dataset,
indexed epochs set with ``set_epoch`` (the ``epoch`` option for tf.data) and a clip.

Every element of the first N items (or batches) of each stream is hashed: SHA-256
over its kind (python type, ``torch``, ``tf`` or ``ndarray``), dtype, shape and bytes,
so an image, label, slide name or location that changes in any bit, dtype, shape or
type shows. A stream an option set cannot build in a backend is recorded as
unavailable with the error's type and message; an error met while iterating is
recorded after the items before it. The written tfrecord files are hashed too (the
stream ``dataset``), so a changed input is told apart from a changed loader.

    .venv/bin/python scripts/record_stream.py --out tests/data/stream_record.json
    .venv/bin/python scripts/record_stream.py --compare tests/data/stream_record.json

``--compare`` prints one line per stream (same / DIFFERENT with the first differing
item and field) and exits 1 on any difference. ``--only NAME_PREFIX`` (repeatable)
restricts either mode to the streams whose names start with one of the prefixes.
Hashes depend on the library versions (NumPy, Pillow, SciPy, torch, TensorFlow) and on
the CPU (SIMD paths, thread counts): compare on the machine and environment that
recorded (the JSON's ``versions``), before and after a change.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import os
import platform
import re
import sys
import tempfile
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402

SEED = 7
TILE_PX = 64


# ----------------------------------------------------------------------------- data

def write_dataset(root: str) -> dict:
    """The recorded dataset: four slides (3 patients, 2 categories, 2 sites) of 9 to
    23 tiles, 64 x 64 JPEG tiles of the synthetic writer with seed 0."""
    from tilespec.synthetic import SlideSpec, write_synthetic_dataset

    slides = (SlideSpec("rec-a1", "patient-a", "tumor", "site-1", 23),
              SlideSpec("rec-a2", "patient-a", "tumor", "site-1", 9),
              SlideSpec("rec-b1", "patient-b", "normal", "site-1", 17),
              SlideSpec("rec-c1", "patient-c", "normal", "site-2", 14))
    return write_synthetic_dataset(root, slides=slides, tile_px=TILE_PX, seed=0)


# --------------------------------------------------------------------------- hashing

def _kind_dtype_shape_bytes(x):
    """(kind, dtype, shape, bytes) of one field value."""
    if x is None:
        return "None", "", [], b""
    mod = type(x).__module__
    if mod.startswith("torch"):
        a = x.detach().cpu().contiguous().numpy()
        return "torch", str(x.dtype), list(a.shape), a.tobytes()
    if mod.startswith("tensorflow") or mod.startswith("tf"):
        if hasattr(x, "numpy"):
            a = np.asarray(x.numpy())
            dtype = x.dtype.name
            if a.dtype.kind in "OSU":      # tf.string
                return "tf", dtype, list(a.shape), _join_bytes(a.ravel().tolist())
            return "tf", dtype, list(a.shape), np.ascontiguousarray(a).tobytes()
    if isinstance(x, np.ndarray) or isinstance(x, np.generic):
        a = np.asarray(x)
        kind = "ndarray" if isinstance(x, np.ndarray) else f"np.{type(x).__name__}"
        if a.dtype.kind in "OUS":
            vals = [v if isinstance(v, bytes) else str(v).encode("utf-8")
                    for v in a.ravel().tolist()]
            return kind, str(a.dtype), list(a.shape), _join_bytes(vals)
        return kind, str(a.dtype), list(a.shape), np.ascontiguousarray(a).tobytes()
    if isinstance(x, bool):
        return "bool", "", [], repr(x).encode()
    if isinstance(x, int):
        return "int", "", [], repr(x).encode()
    if isinstance(x, float):
        return "float", "", [], np.float64(x).tobytes()
    if isinstance(x, str):
        return "str", "", [], x.encode("utf-8")
    if isinstance(x, bytes):
        return "bytes", "", [], x
    if isinstance(x, (list, tuple)):
        parts = [_kind_dtype_shape_bytes(v) for v in x]
        inner = sorted({f"{k}:{d}" for k, d, _, _ in parts})
        blob = b"".join(hashlib.sha256(_describe(p).encode() + p[3]).digest() for p in parts)
        return type(x).__name__, "|".join(inner), [len(x)], blob
    raise TypeError(f"cannot hash a field of type {type(x).__name__}")


def _join_bytes(values) -> bytes:
    return b"".join(len(v).to_bytes(8, "little") + v for v in values)


def _describe(p) -> str:
    kind, dtype, shape, _ = p
    return f"{kind}:{dtype}:{shape}"


def hash_field(x) -> tuple[str, str, list]:
    """(sha256 hex, 'kind:dtype', shape) of one field."""
    p = _kind_dtype_shape_bytes(x)
    h = hashlib.sha256(_describe(p).encode() + b"\0" + p[3]).hexdigest()
    return h, f"{p[0]}:{p[1]}", p[2]


def field_names(n: int, opts: dict) -> list:
    names = ["image", "label"]
    if opts.get("incl_slidenames"):
        names.append("slide")
    if opts.get("incl_loc"):
        names += ["loc_x", "loc_y"]
    if len(names) != n:
        return [f"field{i}" for i in range(n)]
    return names


def _clean(msg, root: str) -> str:
    """An error's first line, without the temporary folder's name or TensorFlow's
    graph-function names (numbered per process)."""
    msg = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", str(msg).replace(root, "<root>"))
    return msg.splitlines()[0][:300] if msg else ""


def record_items(make, n: int | None, opts: dict, root: str) -> dict:
    """Hash the first ``n`` elements (all with None) of the iterable ``make()`` builds."""
    try:
        it = make()
    except Exception as e:  # noqa: BLE001 - recorded, not dropped
        return {"unavailable": f"{type(e).__name__}: {_clean(e, root)}"}
    items, shapes, dtypes, error = [], [], [], None
    try:
        source = iter(it) if n is None else itertools.islice(iter(it), n)
        for el in source:
            fields = list(el) if isinstance(el, (tuple, list)) else [el]
            hs = [hash_field(f) for f in fields]
            items.append([h for h, _, _ in hs])
            dtypes.append([d for _, d, _ in hs])
            shapes.append([s for _, _, s in hs])
    except Exception as e:  # noqa: BLE001 - recorded after the items before it
        error = f"{type(e).__name__}: {_clean(e, root)}"
    finally:
        close = getattr(it, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()
    names = field_names(len(items[0]), opts) if items else []
    overall = hashlib.sha256(json.dumps([items, dtypes, shapes, error]).encode()).hexdigest()
    out = {"n": len(items), "sha256": overall, "fields": names, "items": items,
           "shapes": shapes, "dtypes": dtypes}
    if error is not None:
        out["error"] = error
    return out


# --------------------------------------------------------------------------- streams

def _loader_sets(ds, clipped, labels_cat, labels_float):
    """(name, dataset, options, n): n the elements taken (None: the whole finite epoch)."""
    return [
        # finite pass, batched, shuffled, every field, augment xyrjb, uint8
        ("xyrjb_batch4_finite_shuffle_slides_loc", ds,
         dict(labels=labels_cat, batch_size=4, infinite=False, shuffle=True, seed=SEED,
              augment="xyrjb", incl_slidenames=True, incl_loc=True), None),
        # unbatched take of an infinite stream, reinhard, crop then resize down, standardize
        ("reinhard_crop_resize_std_items_take", ds,
         dict(labels=labels_cat, batch_size=None, infinite=True, seed=SEED + 1,
              augment="xyrjb", normalizer="reinhard", crop_left=4, crop_width=40,
              resize_target=32, standardize=True, incl_loc=True), 12),
        # rank 1 of 2, macenko (blank tiles passed through) with stain augmentation,
        # finite, batched, float labels
        ("macenko_passthrough_xyrjbn_rank1of2_batch3_finite", ds,
         dict(labels=labels_float, batch_size=3, infinite=False, seed=SEED + 2,
              augment="xyrjbn", normalizer=("macenko", "passthrough"), rank=1,
              num_replicas=2, incl_slidenames=True, standardize=False), None),
        # the same with the default on_blank='error': the pale 'normal' tiles are blank
        # to Macenko, so the stream raises BlankImageError at its first one
        ("macenko_blank_raises_rank1of2_batch3_finite", ds,
         dict(labels=labels_float, batch_size=3, infinite=False, seed=SEED + 2,
              augment="xyrjb", normalizer="macenko", rank=1, num_replicas=2,
              incl_slidenames=True), None),
        # rank 0 of 2, shuffled infinite take, resize up (bilinear), per_image, no labels
        ("rank0of2_shuffle_resize_up_per_image_take", ds,
         dict(labels=None, batch_size=5, infinite=True, shuffle=True, seed=SEED + 3,
              augment="xyrjb", resize_target=80, resize_method="bilinear",
              standardize="per_image", incl_slidenames=True, incl_loc=True), 4),
        # clipped and balanced dataset, crop only, standardize False
        ("clip_balance_crop_batch8_take", clipped,
         dict(labels=labels_cat, batch_size=8, infinite=True, seed=SEED + 4,
              augment="xyrjb", crop_left=8, crop_width=48, incl_loc=True), 5),
    ]


def _indexed_sets(labels_cat, labels_float, paths):
    """(name, options, epoch, n)."""
    return [
        ("xyrjb_reinhard_crop_resize_shuffle_rank1of2_epoch1",
         dict(labels=labels_cat, rank=1, num_replicas=2, shuffle=True, seed=SEED + 5,
              augment="xyrjb", normalizer="reinhard", crop_left=6, crop_width=50,
              resize_target=40, incl_slidenames=True, incl_loc=True), 1, 10),
        ("macenko_clip_std_epoch0",
         dict(labels=labels_float, clip={paths[0]: 5, paths[2]: 30}, seed=SEED + 6,
              augment="xyrjb", normalizer="macenko", standardize=True, incl_loc=True),
         0, 10),
        ("nolabels_shuffle_epoch2",
         dict(labels=None, shuffle=True, seed=SEED + 7, augment="xyrjb",
              incl_slidenames=True), 2, 8),
    ]


def _built(opts: dict) -> dict:
    """The options a loader is given: a normalizer written (method, on_blank) becomes a
    new ``StainNormalizer`` for each stream (it counts blank images)."""
    opts = dict(opts)
    if isinstance(opts.get("normalizer"), tuple):
        from tilespec import StainNormalizer

        method, on_blank = opts["normalizer"]
        opts["normalizer"] = StainNormalizer(method, on_blank=on_blank)
    return opts


def _tf_options(opts):
    tf_opts = _built(opts)
    if "rank" in tf_opts:                      # the TF spelling (both are accepted)
        tf_opts["shard_idx"] = tf_opts.pop("rank")
        tf_opts["num_shards"] = tf_opts.pop("num_replicas")
    return tf_opts


def stream_makers(info: dict):
    """Yield (name, make, n, opts) for every recorded stream, TensorFlow last (torch's
    worker processes fork before TensorFlow is imported). Nothing is built until
    ``make()`` is called."""
    import tilespec
    from tilespec import plugins

    ds = tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])
    clipped = ds.clip(10).balance("category", strategy="category")
    labels_cat = ds.labels("category")[0]
    labels_float = ds.labels("age", use_float=True)[0]
    paths = ds.tfrecords()
    loaders = _loader_sets(ds, clipped, labels_cat, labels_float)
    indexed = _indexed_sets(labels_cat, labels_float, paths)

    def ref_indexed(opts, epoch):
        def make():
            idx = tilespec.IndexedInterleaver(paths, **_built(opts))
            idx.set_epoch(epoch)
            return (idx[i] for i in range(len(idx)))
        return make

    for name, d, opts, n in loaders:
        yield f"numpy/{name}", (lambda d=d, o=opts: d.numpy(**_built(o))), n, opts
    for name, opts, epoch, n in indexed:
        yield f"numpy_indexed/{name}", ref_indexed(opts, epoch), n, opts
    for workers in (0, 2):
        for name, d, opts, n in loaders:
            yield (f"torch_w{workers}/{name}",
                   (lambda d=d, o=opts, w=workers: d.torch(num_workers=w, **_built(o))), n, opts)

    def torch_indexed(opts, epoch):
        def make():
            idx = plugins.make_indexed("torch", paths, _built(opts))
            idx.set_epoch(epoch)
            return (idx[i] for i in range(len(idx)))
        return make

    for name, opts, epoch, n in indexed:
        yield f"torch_indexed/{name}", torch_indexed(opts, epoch), n, opts
    # the torch indexed dataset as users batch it: a plain DataLoader, two workers
    name, opts, epoch, _ = indexed[0]

    def torch_indexed_dl(opts=opts, epoch=epoch):
        import torch

        idx = plugins.make_indexed("torch", paths, _built(opts))
        idx.set_epoch(epoch)
        return torch.utils.data.DataLoader(idx, batch_size=4, num_workers=2)

    yield f"torch_indexed_dataloader_w2_batch4/{name}", torch_indexed_dl, 3, opts
    for name, d, opts, n in loaders:
        yield (f"tensorflow/{name}",
               (lambda d=d, o=opts: d.tensorflow(**_tf_options(o))), n, opts)

    def tf_indexed(opts, epoch):
        return lambda: plugins.make_indexed("tensorflow", paths,
                                            dict(_built(opts), epoch=epoch))

    for name, opts, epoch, n in indexed:
        yield f"tensorflow_indexed/{name}", tf_indexed(opts, epoch), n, opts


def _file_hashes(info: dict, root: str) -> dict:
    items = []
    for p in sorted(info["paths"]) + [info["annotations"]]:
        with open(p, "rb") as fh:
            items.append([hashlib.sha256(fh.read()).hexdigest()])
    names = [os.path.relpath(p, root) for p in sorted(info["paths"]) + [info["annotations"]]]
    return {"n": len(items), "sha256": hashlib.sha256(json.dumps(items).encode()).hexdigest(),
            "fields": ["file"], "files": names, "items": items,
            "shapes": [[[]] for _ in items], "dtypes": [["bytes:"] for _ in items]}


def versions() -> dict:
    import PIL
    import scipy

    out = {"python": platform.python_version(), "numpy": np.__version__,
           "pillow": PIL.__version__, "scipy": scipy.__version__}
    from importlib.metadata import PackageNotFoundError, version

    for key, dists in (("torch", ("torch",)), ("tensorflow", ("tensorflow-cpu", "tensorflow"))):
        out[key] = None
        for dist in dists:
            with contextlib.suppress(PackageNotFoundError):
                out[key] = version(dist)
                break
    out["cpu"] = cpu_id()
    return out


def cpu_id() -> str:
    """The CPU model and count: SIMD paths and thread counts can change float results."""
    model = platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    return f"{model} x {os.cpu_count()}"


def _wanted(only):
    """A predicate on stream names: all streams (None), or those starting with a prefix
    of ``only``."""
    if only is None:
        return lambda name: True
    return lambda name: any(name.startswith(p) for p in only)


def record(only=None, log=None, wanted=None) -> dict:
    """Write the dataset, record every stream (those whose names start with one of
    ``only``'s prefixes, or for which ``wanted(name)`` is true); return the JSON-ready
    record: ``{"versions", "seed", "streams": {name: stream}}``."""
    wanted = _wanted(only) if wanted is None else wanted
    streams = {}
    with tempfile.TemporaryDirectory(prefix="tilespec-record-") as root, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = write_dataset(root)
        if wanted("dataset"):
            streams["dataset"] = _file_hashes(info, root)
        for name, make, n, opts in stream_makers(info):
            if not wanted(name):
                continue
            t0 = time.perf_counter()
            streams[name] = record_items(make, n, opts, root)
            if log is not None:
                s = streams[name]
                what = s.get("unavailable") or f"{s['n']} elements" + (
                    f", then {s['error']}" if "error" in s else "")
                print(f"  {name}: {what} ({time.perf_counter() - t0:.1f} s)", file=log)
    return {"versions": versions(), "seed": SEED, "streams": streams}


# --------------------------------------------------------------------------- compare

def first_difference(want: dict, got: dict) -> str | None:
    """None when the two recordings of a stream are the same, else where they first
    differ (item, field, what)."""
    if want.get("sha256") == got.get("sha256") and want.get("unavailable") == \
            got.get("unavailable") and want.get("error") == got.get("error"):
        return None
    if "unavailable" in want or "unavailable" in got:
        return (f"construction: recorded {want.get('unavailable', 'built')!r}, "
                f"now {got.get('unavailable', 'built')!r}")
    names = want.get("fields") or []
    for k, (wi, gi) in enumerate(zip(want["items"], got["items"])):
        if wi == gi and want["dtypes"][k] == got["dtypes"][k]:
            continue
        if len(wi) != len(gi):
            return f"item {k}: {len(wi)} fields recorded, {len(gi)} now"
        for f, (wh, gh) in enumerate(zip(wi, gi)):
            if wh == gh:
                continue
            field = names[f] if f < len(names) else f"field{f}"
            if "files" in want:                       # the dataset's files
                field = want["files"][k]
            wd, gd = want["dtypes"][k][f], got["dtypes"][k][f]
            ws, gs = want["shapes"][k][f], got["shapes"][k][f]
            extra = ""
            if wd != gd:
                extra = f" (type/dtype {wd} -> {gd})"
            elif ws != gs:
                extra = f" (shape {ws} -> {gs})"
            else:
                extra = f" (same {wd} {ws}, other bytes)"
            return f"item {k} field {field!r}{extra}"
    if want["n"] != got["n"]:
        return f"{want['n']} elements recorded, {got['n']} now"
    if want.get("error") != got.get("error"):
        return (f"after item {got['n']}: recorded error {want.get('error')!r}, "
                f"now {got.get('error')!r}")
    return "the stream's hash differs"


def compare(recorded: dict, only=None, log=sys.stdout) -> list:
    """Recompute the streams of ``recorded`` (those matching ``only``), print one line
    each, and return [(name, difference)] for the streams that differ."""
    want = recorded["streams"]
    names = [n for n in want if _wanted(only)(n)]
    keep = set(names)
    now = record(wanted=lambda name: name in keep or (only is None and name not in want),
                 log=None)["streams"]
    diffs = []
    for name in names:
        if name not in now:
            diffs.append((name, "no longer recorded"))
        else:
            d = first_difference(want[name], now[name])
            if d is not None:
                diffs.append((name, d))
        state = "same" if not diffs or diffs[-1][0] != name else f"DIFFERENT: {diffs[-1][1]}"
        if log is not None:
            print(f"{name}: {state}", file=log)
    for name in now:
        if name not in want:
            diffs.append((name, "new stream, not in the recording"))
            if log is not None:
                print(f"{name}: DIFFERENT: new stream, not in the recording", file=log)
    return diffs


def version_mismatch(recorded: dict, keys=("numpy", "pillow", "scipy", "torch",
                                            "tensorflow", "cpu")) -> list:
    """The entries of ``recorded['versions']`` that differ from this environment's."""
    now = versions()
    return [f"{k} {recorded['versions'].get(k)} recorded, {now.get(k)} here"
            for k in keys if recorded["versions"].get(k) != now.get(k)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--out", help="record the streams into this JSON file")
    g.add_argument("--compare", help="recompute the streams of this JSON file and compare")
    p.add_argument("--only", action="append", help="stream name prefix (repeatable)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    if args.out:
        rec = record(only=args.only, log=sys.stdout)
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(rec, fh, indent=1, sort_keys=True)
            fh.write("\n")
        print(f"{len(rec['streams'])} streams written to {args.out} "
              f"in {time.perf_counter() - t0:.1f} s")
        return 0
    with open(args.compare) as fh:
        recorded = json.load(fh)
    for line in version_mismatch(recorded):
        print(f"warning: {line}: hashes may differ for that reason alone")
    diffs = compare(recorded, only=args.only)
    n = sum(1 for s in recorded["streams"]
            if args.only is None or any(s.startswith(q) for q in args.only))
    print(f"{n - len(diffs)} of {n} streams the same, {len(diffs)} different "
          f"({time.perf_counter() - t0:.1f} s)")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
