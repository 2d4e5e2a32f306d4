"""Image pipeline cost: every op of ``tilespec.ops`` on a 256x256 tile, the stain
normalizers, decode, and the full ``'xyrjb'`` + standardize pipeline (issue 5).

Every workload runs on one synthetic H&E-like 256x256 RGB tile
(``tilespec.synthetic.tissue_tile``, encoded as JPEG quality 90 for the decode
rows), in this process only (one core). Each row is the median of
``--repeats`` runs; a run calls the op enough times to last about
``--run-ms`` milliseconds, so the figures are per call. Resize weight
matrices are cached by ``tilespec`` after their first use, as in a loader, so
the rows show the steady state. Rows marked "(for comparison)" do the same
job with Pillow or SciPy, to show what a compiled implementation costs; the
decode ones are the bare loops of the exact decoders (``common.exact_decoders``:
Pillow, and simplejpeg when it imports and its pixels equal Pillow's on the tile),
beside ``decode_image``, which decodes with ``tilespec.jpeg.DECODER``.

The pipeline rows draw the augmentations of ``--positions`` stream positions
(``Pipeline.draw``) and apply them (``Pipeline.apply``), from decoded pixels
and from JPEG bytes; tiles/s is their throughput on one core.

"One core": the BLAS behind NumPy's matrix products (resize) is limited
to one thread (OPENBLAS/OMP/MKL_NUM_THREADS=1, set before NumPy is imported,
unless the environment already sets them). On the shared 2-core development
machine a second BLAS thread made some rows 5x slower, not faster.

Run ``.venv/bin/python bench/images.py`` (``--quick`` for a smoke run); see
bench/README.md.
"""

from __future__ import annotations

import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: before NumPy loads its BLAS

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (environment, exact_decoders, format_table, measure, parser,  # noqa: E402
                    quick_defaults, write_json)

import tilespec  # noqa: E402
from tilespec import ops  # noqa: E402
from tilespec.jpeg import DECODER  # noqa: E402
from tilespec.pipeline import Pipeline  # noqa: E402
from tilespec.rng import stream_key  # noqa: E402
from tilespec.stain import StainNormalizer, draw_stain_perturbation  # noqa: E402
from tilespec.synthetic import encode_jpeg, tissue_tile  # noqa: E402

TILE_PX = 256
RESIZE_TO = 224      # downscale target (a common model input size)
UPSCALE_TO = 299     # upscale target (--upscale rows)


def calls_for(fn, run_s: float) -> int:
    """How many calls of ``fn`` last about ``run_s`` seconds (at least 1)."""
    fn()
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    return max(1, int(run_s / max(one, 1e-7)))


def op_cases(img, jpeg_bytes, args) -> list:
    """(group, name, fn) for every per-op row."""
    cases = [
        ("decode", f"decode_image (JPEG q90 bytes, {DECODER})",
         lambda: tilespec.decode_image(jpeg_bytes)),
        ("geometry", "flip_left_right", lambda: ops.flip_left_right(img)),
        ("geometry", "flip_up_down", lambda: ops.flip_up_down(img)),
    ]
    cases += [("geometry", f"rot90 k={k}", (lambda k=k: ops.rot90(img, k))) for k in (1, 2, 3)]
    cases.append(("geometry", f"crop left=16 width={RESIZE_TO}",
                  lambda: ops.crop(img, 16, RESIZE_TO)))
    targets = [RESIZE_TO] + ([UPSCALE_TO] if args.upscale else [])
    for size in targets:
        for method in ops.RESIZE_METHODS:
            for aa in (True, False):
                cases.append(("resize", f"resize {TILE_PX}->{size} {method} aa={aa}",
                              (lambda m=method, a=aa, s=size: ops.resize(img, s, m, a))))
    cases += [("blur", f"gaussian_blur sigma={s}", (lambda s=s: ops.gaussian_blur(img, s)))
              for s in (0.5, 1.0, 1.5, 2.0)]
    cases += [("jpeg", f"jpeg quality={q}", (lambda q=q: ops.jpeg(img, q))) for q in (50, 75, 100)]
    cases += [("standardize", f"standardize {m}", (lambda m=m: ops.standardize(img, m)))
              for m in ("unit", "per_image")]
    for method in ("reinhard", "reinhard_fast", "macenko"):
        norm = StainNormalizer(method)
        z = np.random.default_rng(0).standard_normal(norm.normal_draws)
        delta = draw_stain_perturbation(norm, z)
        cases.append(("stain", f"{method} transform (preset fit)",
                      (lambda n=norm: n.transform(img))))
        cases.append(("stain", f"{method} transform augment=True",
                      (lambda n=norm, d=delta: n.transform(img, augment=True, perturbation=d))))
    cases += comparison_cases(img, jpeg_bytes)
    return cases


def comparison_cases(img, jpeg_bytes) -> list:
    """The same jobs done by compiled code, for scale (not part of tilespec)."""
    from PIL import Image
    from scipy import ndimage

    pil = Image.fromarray(img)
    out = [
        ("compare", "Pillow resize LANCZOS 256->224 (for comparison)",
         lambda: np.asarray(pil.resize((RESIZE_TO, RESIZE_TO), Image.Resampling.LANCZOS))),
        ("compare", "Pillow resize BILINEAR 256->224 (for comparison)",
         lambda: np.asarray(pil.resize((RESIZE_TO, RESIZE_TO), Image.Resampling.BILINEAR))),
        ("compare", "scipy gaussian_filter sigma=1 mirror (for comparison)",
         lambda: ndimage.gaussian_filter(img, (1.0, 1.0, 0), mode="mirror", truncate=2.0)),
    ]
    exact, _ = exact_decoders([jpeg_bytes])
    out += [("compare", f"bare {name} decode to array (for comparison)",
             (lambda decode=decode: decode(jpeg_bytes))) for name, decode in exact.items()]
    return out


def pipeline_cases(img, jpeg_bytes, positions: int) -> list:
    """(name, fn, tiles) for the pipeline rows: draw + apply over ``positions`` positions."""
    key = stream_key(7, 0, 0)
    pos = np.arange(positions)
    cases = []

    def pipe(augment, standardize, normalizer=None, from_bytes=False, n=positions):
        p = Pipeline.from_options(augment=augment, standardize=standardize,
                                  normalizer=normalizer)

        def run():
            d = p.draw(key, np.arange(n))
            for k in range(n):
                z = None if d.stain is None else d.stain[k]
                if from_bytes:
                    p(jpeg_bytes, d.steps[k], z)
                else:
                    p.apply(img, d.steps[k], z)
        return run

    cases.append(("draw only 'xyrjb' (Pipeline.draw)", (lambda: Pipeline.from_options(
        augment="xyrjb").draw(key, pos)), positions))
    cases.append(("'xyrjb' + standardize unit: draw + apply", pipe("xyrjb", "unit"), positions))
    cases.append(("'xyrjb' + standardize per_image: draw + apply", pipe("xyrjb", "per_image"),
                  positions))
    cases.append(("decode + 'xyrjb' + standardize unit", pipe("xyrjb", "unit", from_bytes=True),
                  positions))
    cases.append(("no augmentation, standardize unit", pipe("", "unit"), positions))
    n_stain = max(4, positions // 16)
    cases.append(("macenko + 'xyrjbn' + standardize unit",
                  pipe("xyrjbn", "unit", normalizer=StainNormalizer("macenko"), n=n_stain),
                  n_stain))
    return cases


def step_census(positions: int) -> dict:
    """How often each op is drawn per tile by 'xyrjb' (explains the pipeline cost)."""
    d = Pipeline.from_options(augment="xyrjb").draw(stream_key(7, 0, 0), np.arange(positions))
    counts: dict = {}
    for steps in d.steps:
        for s in steps:
            counts[s.op] = counts.get(s.op, 0) + 1
    return {k: v / positions for k, v in sorted(counts.items())}


def run(args) -> dict:
    t_start = time.perf_counter()
    env = environment()
    env["blas_threads"] = os.environ.get("OPENBLAS_NUM_THREADS")
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    img = tissue_tile(np.random.default_rng([0, 1]), TILE_PX, tumor=True)
    jpeg_bytes = encode_jpeg(img, 90)
    print(f"tile: {TILE_PX}x{TILE_PX} RGB uint8, JPEG q90 {len(jpeg_bytes) / 1000:.1f} kB; "
          f"median of {args.repeats} runs of ~{args.run_ms} ms; {args.clock} clock; one core\n")
    reps = dict(repeats=args.repeats, trace=not args.no_tracemalloc, clock=args.clock)

    rows, results = [], []
    for group, name, fn in op_cases(img, jpeg_bytes, args):
        if args.only and args.only not in name:
            continue
        n = calls_for(fn, args.run_ms / 1000)

        def many(fn=fn, n=n):
            for _ in range(n):
                fn()
        r = measure(name, many, items=n, nbytes=n * img.nbytes, **reps)
        results.append(r)
        us = r.median / n * 1e6
        rows.append([group, name, f"{us:,.1f}", f"{n / r.median:,.0f}", f"{r.spread * 100:.0f}%",
                     "-" if r.py_peak is None else f"{r.py_peak / 2**20:.1f}"])
        if args.verbose:
            print(f"  {name}: {us:.1f} us", file=sys.stderr)
    print(format_table(["group", "op (256x256 unless named)", "us/call", "calls/s", "spread",
                        "py peak MiB"], rows, align="llrrrr"))

    prow, presults = [], []
    for name, fn, tiles in pipeline_cases(img, jpeg_bytes, args.positions):
        if args.only and args.only not in name:
            continue
        r = measure(name, fn, items=tiles, nbytes=tiles * img.nbytes, **reps)
        presults.append(r)
        prow.append([name, f"{tiles}", f"{r.median / tiles * 1e6:,.0f}",
                     f"{tiles / r.median:,.0f}", f"{r.spread * 100:.0f}%",
                     "-" if r.py_peak is None else f"{r.py_peak / 2**20:.1f}"])
    census = step_census(max(args.positions, 4000))
    if prow:
        print(f"\n== pipeline over {args.positions} stream positions (tiles/s on one core)")
        print(format_table(["pipeline", "tiles", "us/tile", "tiles/s", "spread", "py peak MiB"],
                           prow, align="lrrrrr"))
        print("steps drawn per tile by 'xyrjb': " +
              ", ".join(f"{k} {v:.3f}" for k, v in census.items()))

    total = time.perf_counter() - t_start
    print(f"\ntotal bench time {total:.1f} s")
    out = {"environment": env, "ops": [r.as_dict() for r in results],
           "pipeline": [r.as_dict() for r in presults], "steps_per_tile": census,
           "total_s": total}
    write_json(args.json, out)
    return out


def parse_args(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 3 repeats of ~20 ms, 64 pipeline positions")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed runs per row, median reported (default 5; 3 with --quick)")
    ap.add_argument("--run-ms", type=float, default=None,
                    help="target length of one run in ms (default 100; 20 with --quick)")
    ap.add_argument("--positions", type=int, default=None,
                    help="stream positions per pipeline run (default 256; 64 with --quick)")
    ap.add_argument("--upscale", action="store_true",
                    help=f"also resize {TILE_PX}->{UPSCALE_TO} with every method")
    ap.add_argument("--only", help="only rows whose name contains this text")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu",
                    help="median process CPU time (default, steadier on a shared machine) or "
                         "wall time")
    ap.add_argument("--no-tracemalloc", action="store_true",
                    help="skip the extra traced run per row (py peak column shows -)")
    ap.add_argument("--json", help="also write every run time and the environment as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = ap.parse_args(argv)
    quick_defaults(args, {"repeats": (5, 3), "run_ms": (100.0, 20.0), "positions": (256, 64)})
    if args.repeats < 1 or args.positions < 1 or args.run_ms <= 0:
        ap.error("--repeats, --positions and --run-ms must be positive")
    return args


def main(argv=None):
    run(parse_args(argv))


if __name__ == "__main__":
    main()
