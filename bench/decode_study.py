"""JPEG decoders and encoders against the spec's decode contract (issue 18, item 1):
Pillow (``tilespec.images.decode_pillow``), simplejpeg and OpenCV, for pixel identity
and for speed; and whether simplejpeg's encoder gives the 'j' augmentation's bytes.

The contract is spec/images.md, "Decode" and "JPEG": libjpeg's exact integer IDCT
(ISLOW), fancy chroma upsampling, RGB out, grayscale as three equal channels,
CMYK (Adobe) converted with rounding, and an ``ImageDecodeError`` for truncated or
corrupt data. The reference is ``tilespec.images.decode_pillow``: ``decode_image``'s
Pillow decode, which defines the contract's pixels and errors (``decode_image`` itself
tries the fast decoder first since issue 18, item 1).

Cases are made here with Pillow's encoder (subsampling 4:4:4 / 4:2:2 / 4:2:0,
progressive, restart markers, grayscale, CMYK, ``keep_rgb`` = Adobe APP14
transform 0, odd sizes, qualities 1..100), by inserting marker segments into a
Pillow JPEG (an Adobe APP14 segment on YCbCr data, with transform 1 and with
transform 0, the latter read as RGB by every libjpeg; no JFIF APP0; EXIF
orientation 6; bytes after EOI) and by damaging one (cut at 30/60/90% and just
before EOI, bytes flipped in the scan, a marker in the scan, a bad Huffman table,
a header cut). Each decoder gets every case; a cell says:

- ``same``: the decoder's pixels equal ``decode_pillow``'s;
- ``diff N (k px)``: both decoded, the largest absolute difference is N grey levels
  and k pixels differ (or ``shape``: another shape);
- ``both err``: both raised (the decoder's error type follows after ``/``);
- ``ERR Type``: the decoder raised where ``decode_pillow`` decoded;
- ``decodes!``: the decoder returned pixels where ``decode_pillow`` raised.

Decoders (only the installed ones; ``--decoders`` to choose):

- ``pillow``: ``tilespec.images.decode_pillow`` (the reference; its own column is a check).
- ``simplejpeg``: ``simplejpeg.decode_jpeg(data, 'RGB', fastdct=False,
  fastupsample=False)`` (strict: libjpeg warnings, e.g. corrupt data, raise).
- ``simplejpeg-lax``: the same with ``strict=False``.
- ``opencv``: ``cv2.imdecode(buf, IMREAD_COLOR | IMREAD_IGNORE_ORIENTATION)``,
  BGR turned to RGB.
- ``decode_image``: ``tilespec.decode_image`` (``tilespec.jpeg.DECODER`` with its
  routing to Pillow: what every loader decodes with).

Speed: ``--tiles`` distinct ``--tile-px`` (default 256) px tissue tiles
(``tilespec.synthetic.tissue_tile``) encoded at quality 90, 4:2:0 (the loaders' common
case), decoded by every decoder in turn, ``--rounds`` rounds interleaved in this one
process, the order rotating from round to round; per decode: the median over rounds
of (round CPU time of this process / tiles), and the fastest round. Also simplejpeg
decoding into a preallocated buffer (``buffer=``), and the loaders' decode variants of
``tilespec.images`` (``decode_new``, ``decode_into`` into an (H, W, 3) array and into a
plane-by-plane one, ``decode_planar`` plane by plane and ``transposed``) twice: as they
run (the fast decoder, with one transposing copy for the planar layouts) and with the
fast decoder switched off (``tilespec.images.decode_fast`` replaced for the call: the
Pillow path, Pillow packing each plane). That A/B chose the planar layouts' path.

Encode ('j' augmentation, spec/images.md "JPEG"): ``tilespec.ops.jpeg_encode(img, q)``
(Pillow, 4:2:0, standard tables) against ``simplejpeg.encode_jpeg(img, q, 'RGB',
'420', fastdct=False)`` on random and smooth images of several sizes, each quality
in ``--qualities``: whole bytes equal; equal once the APP0 (JFIF) segments are left
out; quantization tables equal; scan bytes equal; decoded pixels equal.

The machine is shared: figures are indicative only; run it quietly for reported
figures. ``--quick`` is a smoke run (fewer tiles and rounds).

Run: ``.venv/bin/python bench/decode_study.py`` (``--quick``; ``--json PATH``).
"""

from __future__ import annotations

import io
import os
import statistics
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import environment, format_table, parser, quick_defaults, write_json  # noqa: E402

import tilespec  # noqa: E402
from tilespec.images import decode_into, decode_new, decode_pillow, decode_planar  # noqa: E402
from tilespec.jpeg import DECODER  # noqa: E402
from tilespec.ops import jpeg_encode  # noqa: E402
from tilespec.synthetic import tissue_tile  # noqa: E402


# ------------------------------------------------------------------ cases
def _save(img, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload


def _segments(data: bytes):
    """[(marker, start, end)] of the marker segments before the first scan (SOS
    included, its end the start of the entropy-coded data)."""
    out, p = [], 2
    while p + 4 <= len(data) and data[p] == 0xFF:
        m = data[p + 1]
        end = p + 2 + int.from_bytes(data[p + 2:p + 4], "big")
        out.append((m, p, end))
        if m == 0xDA:
            break
        p = end
    return out


def _insert_after_soi(data: bytes, seg: bytes) -> bytes:
    return data[:2] + seg + data[2:]


def _without(data: bytes, marker: int) -> bytes:
    for m, a, b in _segments(data):
        if m == marker:
            return data[:a] + data[b:]
    return data


def _adobe(transform: int) -> bytes:
    return _segment(0xEE, b"Adobe" + (100).to_bytes(2, "big") + bytes(4) + bytes((transform,)))


def _scan_start(data: bytes) -> int:
    return [b for m, _, b in _segments(data) if m == 0xDA][0]


def _flip(data: bytes, frac: float, n: int = 4) -> bytes:
    """``n`` scan bytes from ``frac`` of the scan inverted (never making a 0xFF)."""
    out = bytearray(data)
    s = _scan_start(data)
    p = s + int((len(data) - 2 - s) * frac)
    for i in range(p, p + n):
        out[i] = out[i] ^ 0x5A if out[i] ^ 0x5A != 0xFF and out[i] != 0xFF else out[i]
    return bytes(out)


def _bad_huffman(data: bytes) -> bytes:
    """The first DHT segment's code counts made impossible (all 16 lengths 255)."""
    out = bytearray(data)
    for m, a, b in _segments(data):
        if m == 0xC4:
            out[a + 5:a + 21] = bytes([255] * 16)
            break
    return bytes(out)


def images(seed: int = 0):
    rng = np.random.default_rng(seed)
    tile = tissue_tile(rng, 256, True)
    noise = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    odd = tissue_tile(rng, 256, False)[:141, :253]
    return tile, noise, odd


def cases(seed: int = 0) -> dict:
    """{name: JPEG bytes} of the contract's cases (see the module docstring)."""
    tile, noise, odd = images(seed)
    im, odd_im = Image.fromarray(tile), Image.fromarray(odd)
    c = {}
    for name, sub in (("4:2:0", 2), ("4:2:2", 1), ("4:4:4", 0)):
        c[f"rgb {name} q90"] = _save(im, quality=90, subsampling=sub)
        c[f"odd 253x141 {name}"] = _save(odd_im, quality=90, subsampling=sub)
        c[f"progressive {name}"] = _save(im, quality=90, subsampling=sub, progressive=True)
    for q in (1, 5, 50, 75, 100):
        c[f"rgb 4:2:0 q{q}"] = _save(im, quality=q, subsampling=2)
    c["noise 64x80 q95 4:2:0"] = _save(Image.fromarray(noise), quality=95, subsampling=2)
    c["1x1"] = _save(Image.fromarray(tile[:1, :1]), quality=90)
    c["7x3 4:2:0"] = _save(Image.fromarray(tile[:3, :7]), quality=90, subsampling=2)
    c["optimized huffman"] = _save(im, quality=90, optimize=True)
    try:
        c["restart every 4 blocks"] = _save(im, quality=90, restart_marker_blocks=4)
        c["restart every row"] = _save(im, quality=90, restart_marker_rows=1)
        c["restart + progressive"] = _save(im, quality=90, restart_marker_rows=2,
                                           progressive=True)
    except TypeError:  # a Pillow without these options (before 11.1)
        pass
    c["grayscale"] = _save(Image.fromarray(tile[..., 1]), quality=90)
    c["grayscale progressive"] = _save(Image.fromarray(tile[..., 1]), quality=90,
                                       progressive=True)
    cmyk = np.dstack([255 - tile, tile[..., 1:2] // 3])
    c["CMYK (Adobe, inverted)"] = _save(Image.fromarray(cmyk, "CMYK"), quality=95)
    c["CMYK progressive"] = _save(Image.fromarray(cmyk, "CMYK"), quality=95, progressive=True)
    try:
        c["RGB keep_rgb (Adobe transform 0)"] = _save(im, quality=90, keep_rgb=True,
                                                      subsampling=0)
    except TypeError:  # pragma: no cover - Pillow < 10.3
        pass
    try:  # samplings Pillow does not write: simplejpeg's encoder (libjpeg-turbo)
        import simplejpeg
        for name in ("440", "411"):
            c[f"{name[0]}:{name[1]}:{name[2]} (simplejpeg-encoded)"] = simplejpeg.encode_jpeg(
                tile, 90, "RGB", name, fastdct=False)
    except ImportError:
        pass
    base = c["rgb 4:2:0 q90"]
    c["Adobe APP14 transform 1"] = _insert_after_soi(base, _adobe(1))
    c["Adobe APP14 transform 0 on YCbCr"] = _insert_after_soi(base, _adobe(0))
    c["no JFIF APP0"] = _without(base, 0xE0)
    exif = Image.Exif()
    exif[0x0112] = 6
    c["EXIF orientation 6"] = _save(im, quality=90, exif=exif.tobytes())
    c["bytes after EOI"] = base + b"\x00junk" * 10
    c["two images (MPO-like)"] = base + base
    # damaged
    for keep in (0.3, 0.6, 0.9):
        c[f"truncated {int(keep * 100)}%"] = base[:int(len(base) * keep)]
    c["no EOI"] = base[:-2]
    c["progressive truncated 60%"] = c["progressive 4:2:0"][:int(len(base) * 0.6)]
    c["corrupt scan bytes"] = _flip(base, 0.5)
    c["corrupt scan early"] = _flip(base, 0.05, 16)
    scan = _scan_start(base)
    c["RST marker in sequential scan"] = base[:scan + 100] + b"\xff\xd3" + base[scan + 102:]
    c["bad Huffman table"] = _bad_huffman(base)
    c["header cut"] = base[:20]
    c["magic only"] = base[:3]
    c["no markers"] = base[:3] + b"x" * 100
    return c


# ------------------------------------------------------------------ decoders
def decoders() -> dict:
    """{name: fn(bytes) -> HWC uint8 RGB} of the installed decoders."""
    out = {"pillow": decode_pillow}
    try:
        import simplejpeg
    except ImportError:
        simplejpeg = None
    if simplejpeg is not None:
        def sj(data, strict=True):
            return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False,
                                          fastupsample=False, strict=strict)
        out["simplejpeg"] = sj
        out["simplejpeg-lax"] = lambda data: sj(data, strict=False)
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION

        def cv(data):
            arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
            if arr is None:
                raise ValueError("cv2.imdecode returned None")
            return np.ascontiguousarray(arr[..., ::-1])
        out["opencv"] = cv
    out[f"decode_image ({DECODER})"] = tilespec.decode_image
    return out


def _run(fn, data):
    try:
        return fn(data), None
    except Exception as e:  # noqa: BLE001 - the study records every failure
        return None, e


def compare(case_bytes: dict, decs: dict):
    """rows [case, cell per decoder], and {decoder: number of cells not same/both err}."""
    rows, bad = [], {name: 0 for name in decs}
    for case, data in case_bytes.items():
        ref, ref_err = _run(decode_pillow, data)
        row = [case]
        for name, fn in decs.items():
            got, err = _run(fn, data)
            if ref_err is not None and err is not None:
                cell = f"both err / {type(err).__name__}"
            elif ref_err is not None:
                cell = "decodes!"
            elif err is not None:
                cell = f"ERR {type(err).__name__}: {str(err)[:40]}"
            elif got.shape != ref.shape or got.dtype != ref.dtype:
                cell = f"shape {got.shape}"
            else:
                d = np.abs(got.astype(np.int16) - ref.astype(np.int16))
                cell = "same" if not d.any() else \
                    f"diff {int(d.max())} ({int(d.any(axis=-1).sum())} px)"
            if not (cell == "same" or cell.startswith("both err")):
                bad[name] += 1
            row.append(cell)
        rows.append(row)
    return rows, bad


# ------------------------------------------------------------------ speed
def speed(tiles, rounds: int, decs: dict):
    """{name: per-decode µs of each round}, rounds interleaved."""
    fns = dict(decs)
    try:
        import simplejpeg

        h, w = decode_pillow(tiles[0]).shape[:2]
        buf = np.empty((h, w, 3), np.uint8)

        def into(data):
            return simplejpeg.decode_jpeg(data, colorspace="RGB", fastdct=False,
                                          fastupsample=False, buffer=buf)
        fns["simplejpeg buffer="] = into
    except (ImportError, TypeError):
        pass
    shape = decode_pillow(tiles[0]).shape
    out = np.empty(shape, np.uint8)
    planar = np.empty((3,) + shape[:2], np.uint8).transpose(1, 2, 0)
    variants = {"decode_new": decode_new,
                "decode_into HWC": lambda data: decode_into(data, out),
                "decode_into CHW": lambda data: decode_into(data, planar),
                "decode_planar": decode_planar,
                "decode_planar transposed": lambda data: decode_planar(data, transposed=True)}
    for name, fn in variants.items():
        fns[f"{name} ({DECODER})"] = fn
        if DECODER != "pillow":
            fns[f"{name} (pillow)"] = _without_fast(fn)
    times = {name: [] for name in fns}
    names = list(fns)
    for name, fn in fns.items():  # warm-up, and every row's pixels checked
        got = fn(tiles[0])
        if "decode_into" in name:
            got = out if "HWC" in name else planar
        if not np.array_equal(got, decode_pillow(tiles[0])):
            raise AssertionError(f"{name}: pixels differ from decode_pillow's")
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = fns[name]
            t0 = time.process_time()
            for data in tiles:
                fn(data)
            times[name].append((time.process_time() - t0) / len(tiles) * 1e6)
    return times


def _none(*args, **kw):
    return None


def _without_fast(fn):
    """``fn`` run with ``tilespec.images.decode_fast`` answering None: the Pillow path
    of the decode variants (what ``TILESPEC_JPEG=pillow`` gives), in this process."""
    def run(data):
        saved = tilespec.images.decode_fast
        tilespec.images.decode_fast = _none
        try:
            return fn(data)
        finally:
            tilespec.images.decode_fast = saved
    return run


# ------------------------------------------------------------------ encode
def _split(data: bytes):
    """(segments other than APP0 as bytes, DQT payloads, scan bytes)."""
    segs = _segments(data)
    scan = segs[-1][2]
    kept = b"".join(data[a:b] for m, a, b in segs if m != 0xE0) + data[scan:]
    dqt = b"".join(data[a + 4:b] for m, a, b in segs if m == 0xDB)
    return kept, dqt, data[scan:]


def encode_study(qualities):
    """rows [quality, whole bytes equal, equal without APP0, DQT equal, scan equal,
    pixels equal], each 'k/n' over the images, and the largest pixel difference;
    None without simplejpeg."""
    try:
        import simplejpeg
    except ImportError:
        return None
    rng = np.random.default_rng(1)
    imgs = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in
            ((64, 64), (37, 53), (1, 1), (16, 9))]
    tile, _, odd = images(0)
    imgs += [tile, odd]
    rows = []
    for q in qualities:
        counts, worst = [0] * 5, 0
        for img in imgs:
            a = jpeg_encode(img, q)
            b = simplejpeg.encode_jpeg(np.ascontiguousarray(img), quality=q, colorspace="RGB",
                                       colorsubsampling="420", fastdct=False)
            (ka, da, sa), (kb, db, sb) = _split(a), _split(b)
            pa, pb = decode_pillow(a), decode_pillow(b)
            worst = max(worst, int(np.abs(pa.astype(int) - pb).max()))
            same = (a == b, ka == kb, da == db, sa == sb, np.array_equal(pa, pb))
            counts = [c + bool(s) for c, s in zip(counts, same)]
        rows.append([q] + [f"{c}/{len(imgs)}" for c in counts] + [worst])
    return rows


def main(argv=None):
    ap = parser(__doc__)
    ap.add_argument("--quick", action="store_true", help="smoke run")
    ap.add_argument("--tiles", type=int, default=None, help="distinct tiles timed")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds")
    ap.add_argument("--tile-px", type=int, default=256, help="timed tiles' side (default 256)")
    ap.add_argument("--qualities", default="0,1,5,10,25,49,50,51,75,90,95,99,100",
                    help="encode study qualities, comma separated")
    ap.add_argument("--decoders", default=None, help="comma separated subset")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    quick_defaults(args, {"tiles": (40, 8), "rounds": (15, 3)})
    decs = decoders()
    if args.decoders:
        want = args.decoders.split(",")
        decs = {k: v for k, v in decs.items() if k.split()[0] in want or k in want}
    env = environment()
    libs = {}
    for mod in ("simplejpeg", "cv2", "PIL"):
        try:
            libs[mod] = __import__(mod).__version__
        except ImportError:
            libs[mod] = "not installed"
    print("environment:", env)
    print("libraries:", libs, "| load average:", os.getloadavg())
    print()

    rows, bad = compare(cases(), decs)
    print("Pixel identity with tilespec.images.decode_pillow (Pillow):")
    print(format_table(["case"] + list(decs), rows))
    print("cells that are neither 'same' nor 'both err':",
          ", ".join(f"{k} {v}" for k, v in bad.items()))
    print()

    rng = np.random.default_rng(7)
    tiles = [jpeg_encode(tissue_tile(rng, args.tile_px, bool(i % 2)), 90)
             for i in range(args.tiles)]
    times = speed(tiles, args.rounds, decs)
    ref = statistics.median(times["pillow"])
    srows = [[name, f"{statistics.median(t):.0f}", f"{min(t):.0f}",
              f"{ref / statistics.median(t):.2f}x"] for name, t in times.items()]
    print(f"Decode speed, {args.tile_px} px q90 4:2:0 tissue tiles ({args.tiles} tiles x "
          f"{args.rounds} interleaved rounds, one process):")
    print(format_table(["decoder", "median us/decode", "best round us", "vs pillow"], srows))
    ab = {}
    for name in times:
        if name.endswith(f" ({DECODER})") and name.replace(DECODER, "pillow") in times \
                and DECODER != "pillow":
            base = name[:-len(DECODER) - 3]
            r = [p / f for p, f in zip(times[name.replace(DECODER, "pillow")], times[name])]
            ab[base] = (statistics.median(r), min(r), max(r))
    if ab:
        print(f"A/B, each round's Pillow path time / {DECODER} path time (median, range):")
        print(format_table(["variant", "ratio", "range"],
                           [[k, f"{m:.2f}", f"{lo:.2f}-{hi:.2f}"]
                            for k, (m, lo, hi) in ab.items()]))
    print("load average after the timing:", os.getloadavg())
    print()

    qualities = [int(q) for q in args.qualities.split(",")]
    erows = encode_study(qualities)
    if erows is not None:
        print("Encode: tilespec.ops.jpeg_encode (Pillow) vs simplejpeg.encode_jpeg("
              "fastdct=False, '420'), images equal out of 6:")
        print(format_table(["quality", "bytes", "bytes w/o APP0", "DQT", "scan", "pixels",
                            "max diff"], erows))
    write_json(args.json, {"environment": env, "libraries": libs, "identity": rows,
                           "speed_us": times, "ab": ab, "encode": erows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
