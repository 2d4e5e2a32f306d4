"""The ``tilespec`` command line: inspect, index, demo.

Errors are reported as one line, ``tilespec: error: ...``, with exit code 1
(2 for bad usage).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter

from . import __version__
from .crc32c import BACKEND
from .errors import TFRecordError
from .example import parse_example, parse_tile
from .images import image_size
from .index import index_state, load_index
from .records import read_records

TFRECORD_SUFFIXES = (".tfrecords", ".tfrecord")


class CLIError(Exception):
    """A user-facing problem reported as one line."""


def find_tfrecords(target) -> list[str]:
    """A file, or every ``*.tfrecords`` / ``*.tfrecord`` directly in a folder, sorted."""
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


class Progress:
    """A one-line progress display on stderr, shown only for several files."""

    def __init__(self, total: int, what: str, stream=sys.stderr):
        self.total, self.what, self.stream = total, what, stream
        self.live = total > 1 and getattr(stream, "isatty", lambda: False)()
        self.start = time.monotonic()

    def step(self, done: int, name: str):
        if self.live:
            rate = done / max(time.monotonic() - self.start, 1e-9)
            self.stream.write(f"\r{self.what} {done}/{self.total} files "
                              f"({rate:.1f}/s) {os.path.basename(name)[:40]:<40}")
            self.stream.flush()

    def close(self):
        if self.live:
            self.stream.write("\n")


def inspect_file(path) -> dict:
    """Summary of one TFRecord: records, features, image format/size, slides, index state."""
    n = 0
    slides: Counter = Counter()
    features = None
    image = None
    for payload in read_records(path):
        if features is None:
            parsed = parse_example(payload)
            features = {k: ("bytes" if isinstance(v, list) else str(v.dtype))
                        for k, v in parsed.items()}
        tile = parse_tile(payload)
        if image is None:
            image = image_size(tile.image_raw)
        slides[tile.slide] += 1
        n += 1
    return {"path": os.fspath(path), "records": n, "features": features, "image": image,
            "slides": dict(slides), "index": index_state(path)}


def cmd_inspect(args, out=sys.stdout) -> int:
    paths = find_tfrecords(args.target)
    total = 0
    for path in paths:
        s = inspect_file(path)
        total += s["records"]
        fmt, w, h = s["image"]
        feats = ", ".join(f"{k}:{v}" for k, v in s["features"].items())
        slides = ", ".join(f"{k} ({v})" for k, v in sorted(s["slides"].items()))
        print(f"{path}\n  records: {s['records']}\n  features: {feats}\n"
              f"  image: {fmt} {w}x{h}\n  slides: {slides}\n  index: {s['index']}", file=out)
    if len(paths) > 1:
        print(f"{len(paths)} files, {total} records", file=out)
    return 0


def cmd_index(args, out=sys.stdout) -> int:
    paths = find_tfrecords(args.target)
    progress = Progress(len(paths), "indexing")
    built = 0
    for i, path in enumerate(paths, 1):
        before = index_state(path)
        arr, locs = load_index(path)
        if before != index_state(path) or args.verbose:
            built += before != index_state(path)
            print(f"{path}: {len(arr)} records, index {index_state(path)}"
                  f"{' (was ' + before + ')' if before != index_state(path) else ''}",
                  file=out)
        progress.step(i, path)
    progress.close()
    print(f"{len(paths)} files checked, {built} indexes written", file=out)
    return 0


def cmd_demo(args, out=sys.stdout) -> int:
    from .synthetic import write_synthetic_dataset

    root = args.dir
    print(f"tilespec {__version__} demo (CRC32C backend: {BACKEND})", file=out)
    info = write_synthetic_dataset(root, tile_px=args.tile_px)
    print(f"wrote {len(info['paths'])} tfrecords to {info['tfrecords']} and "
          f"annotations to {info['annotations']}", file=out)
    ns = argparse.Namespace(target=info["tfrecords"], verbose=True)
    cmd_index(ns, out)
    cmd_inspect(ns, out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tilespec", description="TFRecord tile datasets: "
                                "inspect, index, and a built-in demo dataset.")
    p.add_argument("--version", action="version", version=f"tilespec {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("inspect", help="summarize a TFRecord file or a folder of them")
    s.add_argument("target")
    s.set_defaults(func=cmd_inspect)
    s = sub.add_parser("index", help="build missing or invalid indexes, verify the others")
    s.add_argument("target")
    s.add_argument("-v", "--verbose", action="store_true", help="a line for every file")
    s.set_defaults(func=cmd_index)
    s = sub.add_parser("demo", help="write, index and inspect the built-in synthetic dataset")
    s.add_argument("dir", nargs="?", default="demo-data")
    s.add_argument("--tile-px", type=int, default=64)
    s.set_defaults(func=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (CLIError, TFRecordError, OSError) as e:
        print(f"tilespec: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tilespec: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
