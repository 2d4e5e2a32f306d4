"""Cost of the size checks made before a tile is decoded (spec/reliability.md,
"Size caps"): the header parse per tile, and decode with and without the checks.

Workloads, on one synthetic 256x256 tissue tile (JPEG quality 90, and PNG):

* ``header``: :func:`tilespec.images.image_header` alone (the parse of the JPEG
  markers / PNG chunks up to the pixel data);
* ``without``: the decode without the checks: ``Image.open`` of the bytes,
  ``load``, ``np.asarray`` (:func:`tilespec.images.decode_view` less its checks);
* ``with``: what a loader does per tile: the item check
  (:meth:`tilespec.items.ItemMaker.check_image`'s :func:`check_image_header` with the dataset's
  tile size) then :func:`decode_view` (whose :func:`open_image` reuses that parse
  of the same bytes object, and checks Pillow's own reading of the size again).

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
from common import at_least_one, environment, format_table, parser, quick_defaults, \
    write_json  # noqa: E402

from tilespec.images import check_image_header, image_header  # noqa: E402
from tilespec.images import decode_view  # noqa: E402
from tilespec.synthetic import encode_jpeg, tissue_tile  # noqa: E402

TILE_PX = 256


def _old_decode(data):
    """The decode before the checks, for an RGB tile: decode_view's former body (JPEG),
    decode_image's (PNG: it hands on an owned array)."""
    jpeg = data[:2] == b"\xff\xd8"
    with Image.open(io.BytesIO(data), formats=["JPEG" if jpeg else "PNG"]) as im:
        im.load()
        arr = np.asarray(im)
    if not jpeg and not (arr.flags.writeable and arr.flags.c_contiguous and arr.flags.owndata):
        arr = np.array(arr, order="C")
    return arr


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
    data = [data, bytes(bytearray(data))]

    def header(d):
        return image_header(d)

    def with_check(d):
        check_image_header(d, tile_size=tile_size)
        return decode_view(d)

    work = {"header": header, "without": _old_decode, "with": with_check}
    names = list(work)
    times = {k: [] for k in names}
    for fn in work.values():  # warm up
        _block(fn, data, 3)
    for r in range(rounds):
        for k in names[r % 3:] + names[:r % 3]:
            times[k].append(_block(work[k], data, tiles))
    ratios = [w / wo for w, wo in zip(times["with"], times["without"])]
    return {"header_us": statistics.median(times["header"]) * 1e6,
            "without_us": statistics.median(times["without"]) * 1e6,
            "with_us": statistics.median(times["with"]) * 1e6,
            "added_us": statistics.median(w - wo for w, wo in zip(times["with"],
                                                                   times["without"])) * 1e6,
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
    rows = [[name, f"{len(inputs[name])}", f"{r['header_us']:.1f}", f"{r['without_us']:.0f}",
             f"{r['with_us']:.0f}", f"{r['added_us']:.1f}",
             f"{r['ratio']:.3f} ({r['ratio_range'][0]:.3f}-{r['ratio_range'][1]:.3f})"]
            for name, r in results.items()]
    print(format_table(["tile (256 px)", "bytes", "header us", "decode before us",
                        "check+decode us", "added us", "ratio with/without (range)"], rows))
    write_json(args.json, {"environment": environment(), "tiles": args.tiles,
                           "rounds": args.rounds, "results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
