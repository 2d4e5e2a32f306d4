"""Stain normalizers: the reference (NumPy, float64) against the torch ops
(``tilespec_torch.stain.transform``, behind ``tilespec_torch.ops.stain_normalize``).

For each method ('reinhard', 'reinhard_fast', 'macenko'), without and with stain
augmentation (a perturbation from ``draw_stain_perturbation`` of fixed normal
draws), on one ``--size`` tile and on a batch of ``--batch`` tiles, it times

* **reference**: ``StainNormalizer.transform`` on the HWC / NHWC array;
* **torch**: ``tilespec_torch.stain.transform`` on the CHW / NCHW tensor,

one torch thread (``torch.set_num_threads(1)``) and one BLAS thread, in this
process. Each row is the median of ``--repeats`` runs (a single-tile run repeats
the call for about ``--run-ms`` ms) on the ``--clock`` clock (default CPU time
of this process: the machine may be shared), and shows ms per tile, tiles/s, the
torch speed-up over the reference row above it, the peak RSS growth in a run,
and how far the torch output is from the reference's (max grey levels, share of
values that differ; spec/stain.md, "Conformance (adapters)").

Tiles: Reinhard runs on ``tilespec.synthetic.tissue_tile`` tiles; Macenko on
Beer-Lambert H&E tiles (two stain vectors, random concentrations, 20% white
background), which it never finds blank (most synthetic tissue tiles are pale
enough to be blank for Macenko, spec/stain.md, "Blank images").

Run ``.venv/bin/python bench/torch_stain.py`` (``--quick``: batch 16, fewer and
shorter runs).
"""

from __future__ import annotations

import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: before NumPy loads its BLAS

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, format_table, measure, MiB, parser, write_json  # noqa: E402

import torch  # noqa: E402

from tilespec.stain import METHODS, StainNormalizer, draw_stain_perturbation  # noqa: E402
from tilespec.synthetic import tissue_tile  # noqa: E402
from tilespec_torch import ops, stain  # noqa: E402

#: Unit optical-density directions (R, G, B) of the Beer-Lambert tiles' two stains.
HEMATOXYLIN = np.array([0.65, 0.70, 0.29]) / np.linalg.norm([0.65, 0.70, 0.29])
EOSIN = np.array([0.25, 0.85, 0.46]) / np.linalg.norm([0.25, 0.85, 0.46])


def beer_lambert_tile(rng, size: int) -> np.ndarray:
    """An H&E-like tile: per pixel, concentrations of the two stains drawn from 0.3..1.5
    (a third of the pixels one stain only), 20% white; 255 exp(-OD) - 1, rounded."""
    n = size * size
    conc = rng.uniform(0.3, 1.5, (n, 2))
    only = rng.integers(0, 3, n)
    conc[only == 1, 1] = 0.0
    conc[only == 2, 0] = 0.0
    conc[rng.random(n) < 0.2] = 0.0
    img = 255.0 * np.exp(-(conc @ np.stack([HEMATOXYLIN, EOSIN]))) - 1.0
    return np.clip(np.rint(img), 0, 255).astype(np.uint8).reshape(size, size, 3)


def tiles(method: str, n: int, size: int) -> np.ndarray:
    if method == "macenko":
        return np.stack([beer_lambert_tile(np.random.default_rng([1, i]), size)
                         for i in range(n)])
    return np.stack([tissue_tile(np.random.default_rng([2, i]), size, i % 2 == 0)
                     for i in range(n)])


def calls_for(fn, run_s: float) -> int:
    """How many calls of ``fn`` last about ``run_s`` seconds (at least 1)."""
    fn()
    t0 = time.perf_counter()
    fn()
    return max(1, int(run_s / max(time.perf_counter() - t0, 1e-7)))


def conformance(got: np.ndarray, want: np.ndarray) -> tuple:
    d = np.abs(got.astype(np.int16) - want.astype(np.int16))
    return int(d.max()), float((d > 0).mean())


def run(args) -> dict:
    torch.set_num_threads(1)
    env = environment()
    env["torch"] = torch.__version__
    env["torch_threads"] = torch.get_num_threads()
    print("environment: " + ", ".join(f"{k}={v}" for k, v in env.items()))
    print(f"tiles: {args.size}x{args.size}; batch {args.batch}; median of {args.repeats} "
          f"runs; {args.clock} clock; torch per-pixel dtype {stain.DTYPE}\n")
    rows, results = [], []
    for method in METHODS:
        if args.only and args.only not in method:
            continue
        norm = StainNormalizer(method)
        batch = tiles(method, args.batch, args.size)
        z = np.random.default_rng(0).standard_normal((args.batch, norm.normal_draws))
        for augment in (False, True):
            delta = draw_stain_perturbation(norm, z) if augment else None
            for n in (1, args.batch):
                arr = batch[0] if n == 1 else batch
                pert = None if delta is None else \
                    ({k: v[0] for k, v in delta.items()} if n == 1 else delta)
                t = ops.from_numpy(arr)
                kw = {} if pert is None else {"augment": True, "perturbation": pert}
                ref_fn = (lambda a=arr, kw=kw: norm.transform(a, **kw))
                torch_fn = (lambda t=t, p=pert: stain.transform(norm, t, perturbation=p))
                dist = conformance(ops.to_numpy(torch_fn()), ref_fn())
                base = None
                for impl, fn in (("reference", ref_fn), ("torch", torch_fn)):
                    calls = calls_for(fn, args.run_ms / 1000) if n == 1 else 1

                    def many(fn=fn, calls=calls):
                        for _ in range(calls):
                            fn()
                    what = "1 tile" if n == 1 else f"batch {n}"
                    name = f"{method} {'augment ' if augment else ''}{what} {impl}"
                    r = measure(name, many, items=calls * n, nbytes=calls * arr.nbytes,
                                repeats=args.repeats, trace=False, clock=args.clock)
                    results.append(r)
                    ms = r.median / (calls * n) * 1e3
                    speed = "" if base is None else f"{base / ms:.1f}x"
                    base = ms if base is None else base
                    rows.append([method, "yes" if augment else "no", n, impl, f"{ms:.2f}",
                                 f"{1e3 / ms:,.0f}", speed, f"{r.spread * 100:.0f}%",
                                 "-" if r.rss_delta is None else f"{r.rss_delta / MiB:.1f}",
                                 "" if impl == "reference" else f"{dist[0]} / {dist[1]:.4%}"])
                    if args.verbose:
                        print(f"  {name}: {ms:.2f} ms/tile", file=sys.stderr)
    print(format_table(["method", "augment", "tiles", "impl", "ms/tile", "tiles/s", "speed-up",
                        "spread", "RSS +MiB", "vs ref: max / differ"], rows,
                       align="llrlrrrrrl"))
    out = {"environment": env, "args": vars(args), "results": [r.as_dict() for r in results]}
    write_json(args.json, out)
    return out


def main(argv=None) -> None:
    ap = parser(__doc__)
    ap.add_argument("--quick", action="store_true", help="batch 16, 3 runs of ~100 ms")
    ap.add_argument("--size", type=int, default=256, help="tile side in pixels (256)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (64; quick 16)")
    ap.add_argument("--repeats", type=int, default=None, help="timed runs per row (5; quick 3)")
    ap.add_argument("--run-ms", type=float, default=None,
                    help="length of a single-tile run in ms (300; quick 100)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="cpu",
                    help="which median the rates use (default cpu: the machine may be shared)")
    ap.add_argument("--only", help="only methods whose name contains this text")
    ap.add_argument("--json", help="also write every run time and the environment as JSON")
    ap.add_argument("-v", "--verbose", action="store_true", help="progress on stderr")
    args = ap.parse_args(argv)
    args.batch = args.batch or (16 if args.quick else 64)
    args.repeats = args.repeats or (3 if args.quick else 5)
    args.run_ms = args.run_ms or (100 if args.quick else 300)
    run(args)


if __name__ == "__main__":
    main()
