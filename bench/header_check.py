"""Cost of the size checks made before a tile is decoded (spec/reliability.md,
"Size caps"): the header parse per tile, and decode with and without the checks.

Workloads, on one synthetic 256x256 tissue tile (JPEG quality 90, and PNG):

* ``header``: :func:`tilespec.images.image_header` alone (the parse of the JPEG
  markers / PNG chunks up to the pixel data);
* ``without``: the bare decode, without the checks, by the fastest exact decoder
  (``common.exact_decoders``: simplejpeg when it imports and its pixels equal
  Pillow's on this tile; PNG: Pillow), and for JPEG Pillow's bare decode beside it
  (``Image.open`` of the bytes, ``load``, ``np.asarray``);
* ``with``: what a loader does per tile: the item check
  (:meth:`tilespec.items.ItemMaker.check_image`'s :func:`check_image_header` with the dataset's
  tile size) then :func:`decode_view` (which decodes with ``tilespec.jpeg.DECODER``
  and reuses that parse of the same bytes object for its cap; on the Pillow path it
  checks Pillow's own reading of the size again).

The ratio with/without is against the bare loop of the decoder ``decode_view``
uses (``tilespec.jpeg.DECODER`` for JPEG, Pillow for PNG).

Each workload cycles through two equal copies of the bytes, so no call reuses the
previous call's parse.

The three are interleaved in one run: each round times a block of ``--tiles``
calls of each, in an order that rotates from round to round, so a change in the
machine's speed hits all of them alike; the figures are medians over
``--rounds`` rounds, per call (CPU time of this process), and the ratio
with/without is the median of the rounds' ratios. On the shared development
machine figures swing with its load; run it quietly for reported figures.

Run ``.venv/bin/python bench/header_check.py`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import at_least_one, bare_decoders, environment, exact_decoders, format_table, \
    parser, quick_defaults, write_json  # noqa: E402

from tilespec.images import check_image_header, image_header  # noqa: E402
from tilespec.images import decode_view  # noqa: E402
from tilespec.jpeg import DECODER  # noqa: E402
from tilespec.synthetic import encode_jpeg, tissue_tile  # noqa: E402

TILE_PX = 256


def _bare_png(data):
    """Pillow's bare decode of an RGB PNG as a loader hands it on (an owned array)."""
    with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
        im.load()
        arr = np.asarray(im)
    if not (arr.flags.writeable and arr.flags.c_contiguous and arr.flags.owndata):
        arr = np.array(arr, order="C")
    return arr


def bare_loops(data) -> tuple:
    """``({name: decode}, name)``: the bare decoders timed for these bytes (JPEG: the
    exact ones of ``common.exact_decoders``, Pillow first; PNG: Pillow), and the one
    ``decode_view`` uses, its ratio's reference."""
    if data[:2] != b"\xff\xd8":
        return {"pillow": _bare_png}, "pillow"
    exact, inexact = exact_decoders([data], bare_decoders())
    for name, why in inexact.items():
        print(f"{name}: not used for a limit ({why})")
    return exact, (DECODER if DECODER in exact else "pillow")


def _block(fn, datas, n) -> float:
    """CPU seconds per call of ``fn`` over n calls, cycling through ``datas`` (equal
    bytes in distinct objects, so no call reuses the previous call's header parse)."""
    k = len(datas)
    t = time.process_time()
    for i in range(n):
        fn(datas[i % k])
    return (time.process_time() - t) / n


def run(data, tiles: int, rounds: int) -> dict:
    tile_size = (TILE_PX, TILE_PX, "bench")
    bare, used = bare_loops(data)
    data = [data, bytes(bytearray(data))]

    def header(d):
        return image_header(d)

    def with_check(d):
        check_image_header(d, tile_size=tile_size)
        return decode_view(d)

    work = {"header": header, **{f"without {k}": fn for k, fn in bare.items()},
            "with": with_check}
    names = list(work)
    times = {k: [] for k in names}
    for fn in work.values():  # warm up
        _block(fn, data, 3)
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            times[name].append(_block(work[name], data, tiles))
    ref = times[f"without {used}"]
    ratios = [w / wo for w, wo in zip(times["with"], ref)]
    return {"header_us": statistics.median(times["header"]) * 1e6,
            "without_us": {k: statistics.median(times[f"without {k}"]) * 1e6 for k in bare},
            "decoder": used,
            "with_us": statistics.median(times["with"]) * 1e6,
            "added_us": statistics.median(w - wo for w, wo in zip(times["with"], ref)) * 1e6,
            "ratio": statistics.median(ratios),
            "ratio_range": (min(ratios), max(ratios))}


def main(argv=None) -> int:
    ap = parser(__doc__)
    ap.add_argument("--tiles", type=int, default=None, help="calls per block (default 200)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 15)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: 20 calls, 3 rounds")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args(argv)
    quick_defaults(args, {"tiles": (200, 20), "rounds": (15, 3)})
    at_least_one(ap, args, ["tiles", "rounds"])
    tile = tissue_tile(np.random.default_rng(0), TILE_PX, tumor=False)
    buf = io.BytesIO()
    Image.fromarray(tile).save(buf, format="PNG")
    inputs = {"JPEG q90": encode_jpeg(tile, 90), "PNG": buf.getvalue()}
    results = {name: run(data, args.tiles, args.rounds) for name, data in inputs.items()}
    rows = [[name, f"{len(inputs[name])}", f"{r['header_us']:.1f}",
             ", ".join(f"{k} {v:.0f}" for k, v in r["without_us"].items()), r["decoder"],
             f"{r['with_us']:.0f}", f"{r['added_us']:.1f}",
             f"{r['ratio']:.3f} ({r['ratio_range'][0]:.3f}-{r['ratio_range'][1]:.3f})"]
            for name, r in results.items()]
    print(format_table(["tile (256 px)", "bytes", "header us", "bare decode us",
                        "decode_view's", "check+decode us", "added us",
                        "ratio with/bare (range)"], rows))
    print("load average:", os.getloadavg())
    write_json(args.json, {"environment": environment(), "tiles": args.tiles,
                           "rounds": args.rounds, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
