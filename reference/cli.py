"""The ``tilespec`` command line: inspect, index, verify, demo (README.md, "Command
line"; ``inspect`` and ``index`` are specified in spec/index.md, "Loading", ``verify``
in spec/reliability.md, ``demo`` in spec/pictures.md).

Errors are reported as one line, ``tilespec: error: ...``, with exit code 1
(2 for bad usage).
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections import Counter

from . import __version__, jpeg
from .crc32c import BACKEND
from .dataset import TFRECORD_SUFFIXES
from .errors import TFRecordError
from .example import parse_example, parse_tile
from .images import MAX_TILE_PIXELS, image_size
from .index import IndexRebuildWarning, index_path, index_state, load_index
from .progress import Progress  # noqa: F401  (tilespec.cli.Progress: also used by tests)
from .records import MAX_RECORD_BYTES, read_records


class CLIError(Exception):
    """A user-facing problem reported as one line."""


def find_tfrecords(target) -> list[str]:
    """A file, or every ``*.tfrecords`` / ``*.tfrecord`` directly in a folder, sorted.

    README.md, "Command line"; spec/index.md, "Loading".
    """
    target = os.fspath(target)
    if os.path.isdir(target):
        found = sorted(os.path.join(target, n) for n in os.listdir(target)
                       if n.endswith(TFRECORD_SUFFIXES))
        if not found:
            raise CLIError(f"{target}: no .tfrecords files in this folder")
        return found
    if os.path.isfile(target):
        return [target]
    raise CLIError(f"{target}: no such file or folder")


def inspect_file(path) -> dict:
    """Summary of one TFRecord: records, features, image format/size, the decoder of its
    first image (:func:`tilespec.jpeg.decoder_of`), slides, index state.

    README.md, "Command line". Reads (and verifies) every record.
    """
    n = 0
    slides: Counter = Counter()
    features = None
    image = decoder = None
    for payload in read_records(path):
        if features is None:
            parsed = parse_example(payload)
            features = {k: ("bytes" if isinstance(v, list) else str(v.dtype))
                        for k, v in parsed.items()}
        tile = parse_tile(payload)
        if image is None:
            image = image_size(tile.image_raw)
            decoder = jpeg.decoder_of(tile.image_raw, MAX_TILE_PIXELS)
        slides[tile.slide] += 1
        n += 1
    return {"path": os.fspath(path), "records": n, "features": features, "image": image,
            "decoder": decoder, "slides": dict(slides), "index": index_state(path)}


def cmd_inspect(args, out=None) -> int:
    """``tilespec inspect FILE_OR_DIR``: a summary of every file, then the totals."""
    out = sys.stdout if out is None else out
    paths = find_tfrecords(args.target)
    total = 0
    for path in paths:
        s = inspect_file(path)
        total += s["records"]
        if s["records"] == 0:  # an empty TFRecord is valid: zero records
            print(f"{path}\n  records: 0\n  note: empty file, 0 records (valid)\n"
                  f"  index: {s['index']}", file=out)
            continue
        fmt, w, h = s["image"]
        feats = ", ".join(f"{k}:{v}" for k, v in s["features"].items())
        slides = ", ".join(f"{k} ({v})" for k, v in sorted(s["slides"].items()))
        print(f"{path}\n  records: {s['records']}\n  features: {feats}\n"
              f"  image: {fmt} {w}x{h}\n  decoder: {s['decoder']}\n  slides: {slides}\n"
              f"  index: {s['index']}", file=out)
    if len(paths) > 1:
        print(f"{len(paths)} files, {total} records", file=out)
    return 0


def cmd_index(args, out=None) -> int:
    """``tilespec index FILE_OR_DIR``: build missing or invalid indexes (verifying both
    checksums of every record while building), validate the others; write nothing
    when every index is valid."""
    out = sys.stdout if out is None else out
    paths = find_tfrecords(args.target)
    progress = Progress(len(paths), "indexing")
    written = 0
    records = 0
    try:
        for i, path in enumerate(paths, 1):
            before = index_state(path)
            with warnings.catch_warnings():
                # the reason is printed below, in `before`
                warnings.simplefilter("ignore", IndexRebuildWarning)
                arr, _ = load_index(path)
            records += len(arr)
            wrote = not before.startswith("ok")
            written += wrote
            if wrote or args.verbose:
                progress.clear()
                what = (f"wrote {os.path.basename(index_path(path))} (was {before})" if wrote
                        else f"index {before}")
                print(f"{path}: {len(arr)} records, {what}", file=out, flush=True)
            progress.step(i, path)
    finally:
        progress.close()
    print(f"{len(paths)} files, {records} records: {written} indexes written, "
          f"{len(paths) - written} valid", file=out)
    return 0


def _tile_px(text: str):
    """``--tile-px``: 'first' or a positive number of pixels."""
    if text == "first":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of pixels or 'first', got "
                                         f"{text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive number of pixels, got {value}")
    return value


def cmd_verify(args, out=None) -> int:
    """``tilespec verify PATH...``: check every record of every file, print one line per
    problem (files in order, as each file is done) and a summary table; exit code 1
    when anything is wrong (spec/reliability.md, "Report")."""
    from .verify import expand_paths, verify

    out = sys.stdout if out is None else out
    files = expand_paths(args.paths)
    if not files:
        raise CLIError(f"{' '.join(args.paths)}: no .tfrecords files found")
    progress = Progress(len(files), "verifying")

    def on_file(done, report):
        if report.problems or report.notes or args.verbose:
            progress.clear()
            for n in report.notes:  # not problems: "note:" before the kind
                print(f"{n.path}: note: {n.kind}: {' '.join(n.message.split())}", file=out)
            for p in report.problems:
                print(" ".join(str(p).split()), file=out)
            if args.verbose:
                print(f"{report.path}: {report.records} records, {len(report.problems)} "
                      f"problems, index {report.index}", file=out)
            out.flush()
        progress.step(done, report.path)

    try:
        result = verify(files, level=args.level, index=not args.no_index, jobs=args.jobs,
                        progress=on_file, max_record_bytes=args.max_record_bytes,
                        max_tile_pixels=args.max_tile_pixels, tile_size=args.tile_px)
    finally:
        progress.close()
    print(result.summary(), file=out)
    return 0 if result.ok else 1


def cmd_demo(args, out=None) -> int:
    """``tilespec demo [DIR]``: write the synthetic dataset, index and inspect it, show
    sampling on it, train a tiny model when the PyTorch adapter is installed, and write
    the pictures (DIR/pictures/*.png, spec/pictures.md)."""
    from .synthetic import write_synthetic_dataset

    out = sys.stdout if out is None else out
    root = args.dir
    print(f"tilespec {__version__} demo (CRC32C backend: {BACKEND})", file=out)
    info = write_synthetic_dataset(root, tile_px=args.tile_px)
    print(f"wrote {len(info['paths'])} tfrecords to {info['tfrecords']} and "
          f"annotations to {info['annotations']}", file=out)
    ns = argparse.Namespace(target=info["tfrecords"], verbose=True)
    cmd_index(ns, out)
    cmd_inspect(ns, out)
    from .demo import pictures_demo, sampling_demo, training_demo

    sampling_demo(info, out)
    if args.train_epochs > 0 and args.train_steps != 0:
        training_demo(info, out, epochs=args.train_epochs, steps=args.train_steps,
                      tile_px=args.tile_px)
    if not args.no_pictures:  # last, so the demo ends saying where they are
        pictures_demo(info, out)
    return 0


def cmd_adapters(args, out=None) -> int:
    """``tilespec adapters``: the installed adapters, then the known ones missing
    (spec/adapters.md, 'Discovery')."""
    from .plugins import KNOWN_ADAPTERS, adapters, install_hint

    out = sys.stdout if out is None else out

    infos = adapters()
    for info in infos:
        print(f"{info['name']:<12} {info['distribution']:<16} {info['version']:<8} "
              f"{info['framework']}", file=out)
    have = {i["name"] for i in infos}
    for name, (dist, _) in sorted(KNOWN_ADAPTERS.items()):
        if name not in have:
            print(f"{name:<12} {dist:<16} not installed ({install_hint(name)})", file=out)
    print(f"jpeg decoder: {jpeg.describe()}", file=out)
    return 0


def cmd_audit(args) -> int:
    """``tilespec audit MODULE:FACTORY``: the statistical conformance audit (spec/audit.md)."""
    import json

    from .audit import audit, load_factory

    if os.getcwd() not in sys.path:   # MODULE may be a file in the current folder
        sys.path.insert(0, os.getcwd())
    try:
        options = json.loads(args.options) if args.options else {}
        shards = json.loads(args.shards) if args.shards else None
    except json.JSONDecodeError as e:
        raise CLIError(f"--options/--shards must be JSON: {e}") from None
    if not isinstance(options, dict):
        raise CLIError(f"--options must be a JSON object, got {args.options!r}")
    try:
        factory = load_factory(args.factory)
    except (ImportError, AttributeError) as e:
        raise CLIError(f"cannot load {args.factory}: {e}") from None
    checks = [c for c in args.checks.split(",") if c] if args.checks else None
    report = audit(factory, options=options, tiles=args.tiles, seed=args.seed, shards=shards,
                   layout=args.layout, dataset=args.dataset, checks=checks)
    print(report)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report.to_dict(), fh, indent=1)
    return 0 if report.ok else 1
def open_dataset(target, annotations=None):
    """The :class:`tilespec.Dataset` a ``tilespec show`` command names: a project folder
    (settings.json), a folder holding ``tfrecords/`` and ``annotations.csv`` (as
    ``tilespec demo`` writes), or tfrecords (a file or a folder) with ``--annotations``."""
    from .dataset import Dataset

    target = os.fspath(target)
    if os.path.isdir(target) and annotations is None:
        if os.path.isfile(os.path.join(target, "settings.json")):
            from .project import load_project
            return load_project(target).dataset()
        tf, ann = os.path.join(target, "tfrecords"), os.path.join(target, "annotations.csv")
        if os.path.isdir(tf) and os.path.isfile(ann):
            return Dataset(tfrecords=tf, annotations=ann)
    return Dataset(tfrecords=target, annotations=annotations)


def _shaped(ds, args):
    """``ds`` clipped (``--clip``) and balanced (``--balance``) as the options say."""
    if getattr(args, "clip", 0):
        ds = ds.clip(args.clip, strategy=args.clip_strategy)
    if getattr(args, "balance", None):
        ds = ds.balance(args.headers if args.balance == "category" else None,
                        strategy=args.balance)
    return ds


def cmd_show(args, out=None) -> int:
    """``tilespec show augment|sampling|batch|shards ...``: write one picture (PNG) and
    print its path (spec/pictures.md)."""
    from . import show

    out = sys.stdout if out is None else out
    kind = args.picture
    if kind == "augment":
        source = args.target
        if os.path.isdir(source) and any(os.path.exists(os.path.join(source, n))
                                         for n in ("settings.json", "tfrecords")):
            source = open_dataset(source)  # a project or a demo folder
        data = show.augment_grid(show.read_tiles(source, args.rows), args.augment,
                                 normalizer=args.normalizer, seed=args.seed, draws=args.draws)
    else:
        ds = _shaped(open_dataset(args.target, args.annotations), args)
        if kind == "sampling":
            data = show.sampling_bars(ds, draws=args.draws, seed=args.seed)
        elif kind == "batch":
            data = show.batch_sheet(ds, labels=args.labels, batch_size=args.batch_size,
                                    seed=args.seed, augment=args.augment or False)
        else:
            data = show.shard_map(ds, num_replicas=args.ranks, num_workers=args.workers,
                                  batch_size=args.batch_size, seed=args.seed,
                                  shuffle=args.shuffle, uneven=args.uneven,
                                  elastic=args.elastic)
    try:
        path = show.render(data, args.output or f"{kind}.png")
    except show.PlotUnavailableError as e:
        raise CLIError(str(e)) from None
    print(path, file=out)
    return 0


def _add_show(sub):
    s = sub.add_parser("show", help="draw a picture (PNG): augment, sampling, batch, shards")
    pics = s.add_subparsers(dest="picture", required=True)

    def common(p, dataset=True):
        p.add_argument("target", metavar="PATH_OR_DATASET" if not dataset else "DATASET",
                       help="tfrecords (file or folder), a folder with tfrecords/ and "
                       "annotations.csv (as `tilespec demo` writes), or a project folder")
        p.add_argument("-o", "--output", help="PNG to write (default: ./<picture>.png)")
        p.add_argument("--seed", type=int, default=0)
        if dataset:
            p.add_argument("--annotations", help="annotations CSV (patients, categories)")
            p.add_argument("--balance", choices=("tile", "slide", "patient", "category"),
                           help="balance the dataset (Dataset.balance) before showing it")
            p.add_argument("--headers", default="category",
                           help="annotation column(s) of --balance category (default: "
                           "category)")
            p.add_argument("--clip", type=int, default=0, help="clip to N tiles per tfrecord "
                           "(Dataset.clip)")
            p.add_argument("--clip-strategy", choices=("slide", "patient", "category"),
                           default=None, help="clip per group instead of per tfrecord")
        p.set_defaults(func=cmd_show)
        return p

    p = common(pics.add_parser("augment", help="one row per tile: the tile, then several "
                               "augmentation draws titled with their parameters"), False)
    p.add_argument("--augment", default="xyrjb", help="augmentation string (default xyrjb)")
    p.add_argument("--normalizer", default=None, help="stain normalizer method "
                   "(reinhard, macenko, ...); needed for 'n'")
    p.add_argument("--rows", type=int, default=4, help="tiles (rows), default 4")
    p.add_argument("--draws", type=int, default=5, help="draws per tile, default 5")
    p = common(pics.add_parser("sampling", help="tfrecord weights vs observed frequencies "
                               "(and per patient/category) with the binomial 95%% band"))
    p.add_argument("--draws", type=int, default=6000, help="stream positions drawn")
    p = common(pics.add_parser("batch", help="one batch as a contact sheet: labels, slide "
                               "names, locations"))
    p.add_argument("--labels", default=None, help="annotation column for the labels")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--augment", default=None, help="augmentation string (default none)")
    p = common(pics.add_parser("shards", help="which records each rank x worker reads in a "
                               "finite epoch"))
    p.add_argument("--ranks", type=int, default=2, help="num_replicas (default 2)")
    p.add_argument("--workers", type=int, default=2, help="workers per rank (default 2)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--shuffle", action="store_true")
    p.add_argument("--uneven", choices=("pad", "drop"), default="pad")
    p.add_argument("--elastic", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``tilespec`` command (README.md, "Command line")."""
    p = argparse.ArgumentParser(prog="tilespec", description="TFRecord tile datasets: "
                                "inspect, index, verify, and a built-in demo dataset.")
    p.add_argument("--version", action="version", version=f"tilespec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("inspect", help="summarize a TFRecord file or a folder of them")
    s.add_argument("target")
    s.set_defaults(func=cmd_inspect)
    s = sub.add_parser("index", help="build missing or invalid indexes (verifying every "
                       "record's checksums), validate the others")
    s.add_argument("target")
    s.add_argument("-v", "--verbose", action="store_true", help="a line for every file")
    s.set_defaults(func=cmd_index)
    s = sub.add_parser("verify", help="check every record of TFRecord files (checksums, "
                       "Example, tile, image, index) and report every problem")
    s.add_argument("paths", nargs="+", metavar="PATH", help="files, or folders of them")
    s.add_argument("--level", choices=("records", "examples", "tiles", "images"),
                   default="images", help="how deep to check each record (default: images)")
    s.add_argument("--no-index", action="store_true", help="do not compare index files")
    s.add_argument("-j", "--jobs", type=int, default=None,
                   help="processes (default: one per CPU)")
    s.add_argument("-v", "--verbose", action="store_true", help="a line for every file")
    s.add_argument("--max-record-bytes", type=int, default=MAX_RECORD_BYTES, metavar="N",
                   help="the record-size cap: a record declaring more payload bytes is "
                        f"'record-cap' (default {MAX_RECORD_BYTES}, 64 MiB)")
    s.add_argument("--max-tile-pixels", type=int, default=MAX_TILE_PIXELS, metavar="N",
                   help="the image-size cap (width x height): a larger image is 'image-cap' "
                        f"and is not decoded (default {MAX_TILE_PIXELS}, 4096x4096)")
    s.add_argument("--tile-px", type=_tile_px, default=None, metavar="PX",
                   help="the tile size every image must have ('tile-size'): a number of "
                        "pixels, or 'first' for the size of each file's first image "
                        "(default: not checked)")
    s.set_defaults(func=cmd_verify)
    s = sub.add_parser("adapters", help="list installed adapters (backends)")
    s.set_defaults(func=cmd_adapters)
    s = sub.add_parser("demo", help="write, index and inspect the built-in synthetic dataset")
    s.add_argument("dir", nargs="?", default="demo-data")
    s.add_argument("--tile-px", type=int, default=64)
    s.add_argument("--train-epochs", type=int, default=25,
                   help="epochs of the training step (Project.train, PyTorch adapter; "
                   "0: no training)")
    s.add_argument("--train-steps", type=int, default=None,
                   help="batches per training epoch (default: an epoch of the training "
                   "fold's tiles; 0: no training)")
    s.add_argument("--no-pictures", action="store_true",
                   help="do not write the pictures (DIR/pictures/*.png)")
    s.set_defaults(func=cmd_demo)
    s = sub.add_parser("audit", help="audit a loader statistically against the spec "
                       "(traceable tiles; exit 1 if any check fails)")
    s.add_argument("factory", metavar="MODULE:FACTORY",
                   help="a callable make_loader(dataset, **options) returning an iterable")
    s.add_argument("--options", default=None, help="JSON object of base loader options")
    s.add_argument("--tiles", type=int, default=1000, help="items per random check "
                   "(default 1000)")
    s.add_argument("--seed", type=int, default=20261201)
    s.add_argument("--shards", default=None, help="JSON list of rank x worker configurations "
                   "(default [{\"num_replicas\": 2}, {\"num_replicas\": 3}])")
    s.add_argument("--layout", choices=("HWC", "CHW"), default=None,
                   help="the layout the loader promises (default: detected)")
    s.add_argument("--dataset", default=None, help="a traceable dataset folder (default: "
                   "written to a temporary folder)")
    s.add_argument("--checks", default=None, help="comma-separated checks to run (default: "
                   "all: finite, shards, clip, sampling, labels, fields, flip_x, flip_y, "
                   "rot90, jpeg, blur, standardize)")
    s.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")
    s.set_defaults(func=cmd_audit)
    _add_show(sub)
    return p


#: Environment the ``tilespec`` command sets for itself unless the user already set it:
#: TensorFlow's C++ logging at warnings-and-up hidden (errors still shown), and oneDNN's
#: custom ops off, whose start-up notice is printed before any logging setting applies.
QUIET_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}


def quiet_frameworks(environ=None) -> dict:
    """Keep TensorFlow's and oneDNN's start-up lines off the command's stderr
    (README.md, "Command line"). Only the command line and ``tilespec demo`` call this,
    in their own process: importing the library never changes the environment. A
    value the user set is kept. Returns what was set."""
    environ = os.environ if environ is None else environ
    added = {k: v for k, v in QUIET_ENVIRONMENT.items() if k not in environ}
    environ.update(added)
    return added


def main(argv=None) -> int:
    """Entry point of the ``tilespec`` command (README.md, "Command line").

    Returns the exit code: 0, 1 for an error (reported as one line,
    ``tilespec: error: ...``), 2 for bad usage, 130 when interrupted, 141
    when the output pipe was closed early.
    """
    args = build_parser().parse_args(argv)
    quiet_frameworks()
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # pragma: no cover - stdout without a file descriptor
            pass
        return 141
    except (CLIError, TFRecordError, OSError, ValueError) as e:
        message = " ".join(str(e).split())  # always one line
        print(f"tilespec: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tilespec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
