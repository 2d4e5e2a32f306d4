"""Make the known-answer vectors of spec/images.md (written from the spec's text).

    python spec/vectors/images/make_vectors.py        # rewrite *.json and manifest.json

A second, deliberately plain implementation of the exact formulas of spec/images.md:
scalar Python floats (IEEE double) and integers, read off the spec's sentences, with
no import of tilespec or NumPy. float32 steps the spec prescribes (standardization)
are rounded with ``struct``. The random draws come from the plain generator of
spec/vectors/sampling/make_vectors.py. tests/test_vectors_images.py checks the reference
(and every adapter's image ops) against these files, and that this script rebuilds
them byte for byte.

Resize and blur weights are computed here in double precision from the formulas;
the reference evaluates them in float32 as TensorFlow does (spec/images.md,
"Arithmetic"), so they are compared within 1e-5 (a float32 position error times the
kernel's slope), far below any change of a formula.
"""

from __future__ import annotations

import math
import os
import runpy
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RNG = runpy.run_path(os.path.join(HERE, os.pardir, "sampling", "make_vectors.py"))
ULP = 2.0 ** -53
BELOW_ONE = 1.0 - ULP


def below(x):
    """The largest uniform (a multiple of 2^-53) below x."""
    return (math.ceil(x * 2 ** 53) - 1) * ULP


def above(x):
    """The smallest uniform at or above x (x itself when x is a multiple of 2^-53)."""
    return math.ceil(x * 2 ** 53) * ULP


def f32(x):
    return struct.unpack("<f", struct.pack("<f", x))[0]


# ---------------------------------------------------------------- "Augmentation draws"
SIGMAS = ((0.5, 0.5), (0.75, 1.0), (0.875, 1.5))   # (u1 below this, sigma), else 2.0


def step(c, u0, u1):
    """The step character c draws from (u0, u1); None for no step."""
    if c == "x":
        return ["flip_left_right", []] if u0 < 0.5 else None
    if c == "y":
        return ["flip_up_down", []] if u0 < 0.5 else None
    if c == "r":
        k = math.floor(4 * u0)
        return ["rot90", [k]] if k else None
    if c == "j":
        return ["jpeg", [50 + math.floor(51 * u1)]] if u0 < 0.5 else None
    if c == "b":
        if not u0 < 0.1:
            return None
        for limit, sigma in SIGMAS:
            if u1 < limit:
                return ["gaussian_blur", [sigma]]
        return ["gaussian_blur", [2.0]]
    raise ValueError(c)


def draws(augment, seed, rank, epoch, positions, stain_draws):
    key = RNG["stream_key"](seed, rank, epoch)
    out = []
    for i in positions:
        steps, stain = [], None
        for k, c in enumerate(augment):
            slot = RNG["augment_slot"](k)
            if c == "n":
                stain = [RNG["normal"](key, i, slot, m) for m in range(stain_draws)]
                continue
            s = step(c, RNG["uniform"](key, i, slot, 0), RNG["uniform"](key, i, slot, 1))
            if s:
                steps.append(s)
        out.append({"position": str(i), "steps": steps, "stain": stain})
    return out


def draw_vectors():
    pos = list(range(24)) + [2 ** 32 - 1, 2 ** 32, 2 ** 40 + 3]
    return [{"augment": a, "seed": str(s), "rank": r, "epoch": e, "stain_draws": k,
             "draws": draws(a, s, r, e, pos, k)}
            for a, s, r, e, k in (("xyrjb", 99, 0, 0, 0), ("bjrxyn", 2 ** 63 - 1, 3, 2, 6),
                                  ("xxrrnbb", 7, 1, 5, 8))]


def quality_disagreements():
    """Uniforms u1 where floor(51 u1) of the double product differs from the floor of the
    exact product k 51 / 2^53 (an integer implementation): the product rounds up onto q."""
    found = []
    for q in range(1, 51):
        k0 = math.ceil(q * 2 ** 53 / 51)
        for k in range(k0 - 4, k0):
            if math.floor(51 * (k * ULP)) != (51 * k) >> 53:
                found.append(k * ULP)
    return found


def given_draw_vectors():
    """Each character's step for given (u0, u1): u = 0, u just below 1, and both sides of
    every threshold (0.5, the quarters of r, 0.1 for blur, the sigma bounds 1/2, 3/4, 7/8,
    each JPEG quality boundary q / 51). The double 0.1 itself is no multiple of 2^-53, so
    the generator never draws it, but the rule u0 < 0.1 is stated for any double."""
    half = [0.0, ULP, below(0.5), 0.5, above(0.5 + ULP), BELOW_ONE]
    cases = {
        "x": [(u, 0.3) for u in half],
        "y": [(u, 0.9) for u in half],
        "r": [(u, 0.0) for u in (0.0, below(0.25), 0.25, below(0.5), 0.5, below(0.75), 0.75,
                                 BELOW_ONE)],
        "j": ([(below(0.5), u) for u in [0.0, ULP, BELOW_ONE] +
               [f(q / 51) for q in range(1, 51) for f in (below, above)] + quality_disagreements()]
              + [(0.5, 0.0), (BELOW_ONE, BELOW_ONE), (0.0, 0.5)]),
        "b": ([(u0, 0.3) for u0 in (0.0, below(0.1), 0.1, above(0.1), 0.5, BELOW_ONE)] +
              [(0.0, u1) for u1 in (0.0, below(0.5), 0.5, below(0.75), 0.75, below(0.875),
                                    0.875, BELOW_ONE)]),
    }
    return [{"char": c, "u": [list(p) for p in ps], "steps": [step(c, *p) for p in ps]}
            for c, ps in cases.items()]


# ---------------------------------------------------------------- "Resize"
def lanczos(R):
    def k(x):
        if x <= 0.001:
            return 1.0
        if x <= R:
            return R * math.sin(math.pi * x) * math.sin(math.pi * x / R) / (math.pi ** 2 * x * x)
        return 0.0
    return k, R


def gaussian(x):
    return math.exp(-x * x / (2 * 0.5 ** 2)) if x < 1.5 else 0.0


def triangle(x):
    return 1 - x if x < 1 else 0.0


def keys(x):
    if x < 1:
        return 1.5 * x ** 3 - 2.5 * x ** 2 + 1
    if x < 2:
        return -0.5 * x ** 3 + 2.5 * x ** 2 - 4 * x + 2
    return 0.0


def mitchell(x):
    if x < 1:
        return 7 / 6 * x ** 3 - 2 * x ** 2 + 8 / 9
    if x < 2:
        return -7 / 18 * x ** 3 + 2 * x ** 2 - 10 / 3 * x + 16 / 9
    return 0.0


KERNELS = {"lanczos3": lanczos(3), "lanczos5": lanczos(5), "gaussian": (gaussian, 1.5),
           "bilinear": (triangle, 1), "bicubic": (keys, 2), "mitchellcubic": (mitchell, 2)}
METHODS = ("lanczos3", "lanczos5", "bilinear", "bicubic", "nearest", "area", "gaussian",
           "mitchellcubic")


def clamp(i, n):
    return min(max(i, 0), n - 1)


def scale_and_translate(n, m, method, antialias):
    k, R = KERNELS[method]
    r = n / m
    w = max(r, 1.0) if antialias else 1.0
    A = [[0.0] * n for _ in range(m)]
    for o in range(m):
        t = (o + 0.5) * r
        lo = clamp(math.ceil(t - R * w - 0.5), n)
        hi = clamp(math.floor(t + R * w - 0.5), n)
        u = {i: k(abs(i + 0.5 - t) / w) for i in range(lo, hi + 1)}
        total = sum(u.values())
        for i, v in u.items():
            A[o][i] = v / total
    return A


def bilinear_half_pixel(n, m):
    A = [[0.0] * n for _ in range(m)]
    for o in range(m):
        p = (o + 0.5) * n / m - 0.5
        b = math.floor(p)
        f = p - b
        A[o][clamp(b, n)] += 1 - f
        A[o][clamp(b + 1, n)] += f
    return A


def bicubic_half_pixel(n, m):
    A = [[0.0] * n for _ in range(m)]
    for o in range(m):
        p = (o + 0.5) * n / m - 0.5
        b = math.floor(p)
        f = round(1024 * (p - b)) / 1024          # round(): ties to even
        taps = {b - 1: f32(keys(1 + f)), b: f32(keys(f)), b + 1: f32(keys(1 - f)),
                b + 2: f32(keys(2 - f))}
        taps = {i: v for i, v in taps.items() if 0 <= i < n}
        total = sum(taps.values())
        for i, v in taps.items():
            A[o][i] += v / total
    return A


def nearest(n, m):
    A = [[0.0] * n for _ in range(m)]
    for o in range(m):
        A[o][min(math.floor((o + 0.5) * n / m), n - 1)] = 1.0
    return A


def area(n, m):
    r = n / m
    A = [[0.0] * n for _ in range(m)]
    for o in range(m):
        a, b = o * r, (o + 1) * r
        for i in range(n):
            A[o][i] = max(0.0, min(b, i + 1) - max(a, i)) / r
    return A


def resize_weights(n, m, method, antialias):
    if method == "nearest":
        return nearest(n, m)
    if method == "area":
        return area(n, m)
    if method == "bilinear" and not antialias:
        return bilinear_half_pixel(n, m)
    if method == "bicubic" and not antialias:
        return bicubic_half_pixel(n, m)
    return scale_and_translate(n, m, method, antialias)


# (n, m) pairs: the Gaussian kernel exactly at its radius 1.5 (4 -> 2 without antialias,
# 5 -> 4 with it), the Lanczos and cubic kernels exactly at theirs (6 -> 2: x = 3, 2),
# one input pixel, one output pixel, equal sizes, up and down by non-integer factors.
SIZE_PAIRS = ((4, 2), (5, 4), (6, 2), (10, 2), (1, 3), (3, 1), (6, 6), (3, 7), (7, 3), (11, 5))


def resize_weight_vectors():
    out = []
    for method in METHODS:
        for antialias in (True, False):
            for n, m in SIZE_PAIRS:
                out.append({"method": method, "antialias": antialias, "in": n, "out": m,
                            "weights": resize_weights(n, m, method, antialias)})
    # bicubic without antialias: f = 1/2048 and 3/2048 exactly (rint ties to even: 0 and 2)
    A = bicubic_half_pixel(2, 2048)
    out.append({"method": "bicubic", "antialias": False, "in": 2, "out": 2048,
                "rows": [512, 513, 1535], "weights": [A[512], A[513], A[1535]]})
    return out


def kernel_vectors():
    """Kernel values at given x: at and either side of each support radius and branch."""
    xs = (0.0, 0.0005, 0.001, 0.0011, 0.00390625, 0.0078125, 0.125, 0.5, 0.9999999999999999,
          1.0, 1.5 - 2 ** -52, 1.5,
          1.5000000000000002, 2 - 2 ** -52, 2.0, 2.5, 3.0, 3.0000000000000004, 4.5, 5.0, 5.5)
    return [{"kernel": name, "radius": KERNELS[name][1], "x": list(xs),
             "k": [KERNELS[name][0](x) for x in xs]} for name in KERNELS]


# ---------------------------------------------------------------- vector images
def image(h, w, salt):
    return [[[(y * 37 + x * 11 + c * 101 + salt) % 256 for c in range(3)] for x in range(w)]
            for y in range(h)]


IMAGES = {"a": image(4, 5, 0), "b": image(3, 2, 77), "c": image(6, 6, 5)}


def apply(A_h, A_w, img):
    h, w = len(img), len(img[0])
    rows = [[[sum(A_h[p][i] * img[i][x][c] for i in range(h)) for c in range(3)]
             for x in range(w)] for p in range(len(A_h))]
    return [[[sum(A_w[q][j] * rows[p][j][c] for j in range(w)) for c in range(3)]
             for q in range(len(A_w))] for p in range(len(rows))]


def resize_image_vectors():
    out = []
    for name, size in (("a", (2, 3)), ("a", (7, 8)), ("b", (5, 1))):
        img = IMAGES[name]
        for method in METHODS:
            for aa in (True, False):
                A_h = resize_weights(len(img), size[0], method, aa)
                A_w = resize_weights(len(img[0]), size[1], method, aa)
                out.append({"image": name, "size": list(size), "method": method,
                            "antialias": aa, "float": apply(A_h, A_w, img)})
    return out


# ---------------------------------------------------------------- "Gaussian blur"
def blur_offsets(sigma):
    """n = int(4 sigma + 1) taps at offsets j - (n-1)//2, j = 0..n-1 (one more tap after the
    centre than before when n is even)."""
    n = int(4 * sigma + 1)
    return [j - (n - 1) // 2 for j in range(n)]


def refl(i, n):
    if n == 1:
        return 0
    i %= 2 * (n - 1)
    return i if i < n else 2 * (n - 1) - i


def blur_weights(n, sigma):
    d = blur_offsets(sigma)
    e = [math.exp(-x * x / (2 * sigma ** 2)) for x in d]
    total = sum(e)
    A = [[0.0] * n for _ in range(n)]
    for y in range(n):
        for x, v in zip(d, e):
            A[y][refl(y + x, n)] += v / total
    return A


def blur_vectors():
    return [{"size": n, "sigma": s, "offsets": blur_offsets(s), "weights": blur_weights(n, s)}
            for s in (0.5, 1.0, 1.5, 2.0, 0.75, 3.3) for n in (1, 2, 3, 5, 10)]


def reflect_vectors():
    return [{"n": n, "i": list(range(-12, 13)), "refl": [refl(i, n) for i in range(-12, 13)]}
            for n in (1, 2, 3, 5)]


def blur_image_vectors():
    out = []
    for name in ("a", "b"):
        img = IMAGES[name]
        for sigma in (0.5, 1.0, 1.5, 2.0):
            out.append({"image": name, "sigma": sigma,
                        "float": apply(blur_weights(len(img), sigma),
                                       blur_weights(len(img[0]), sigma), img)})
    return out


# ---------------------------------------------------------------- "JPEG"
LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57,
        69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64,
        81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
CHROMA = ([17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99,
           99, 99, 99, 47, 66] + [99] * 38)  # ITU T.81 Annex K, tables K.1 and K.2 (row order)


def quant_table(base, q):
    """Entries (base * factor + 50) // 100 clamped to [1, 255]; factor 5000 // q for q < 50
    (q = 0 counts as 1; integer division, as libjpeg), 200 - 2q otherwise."""
    q = max(q, 1)
    factor = 5000 // q if q < 50 else 200 - 2 * q
    return [min(max((b * factor + 50) // 100, 1), 255) for b in base]


def jpeg_table_vectors():
    return [{"quality": q, "luma": quant_table(LUMA, q), "chroma": quant_table(CHROMA, q)}
            for q in (0, 1, 2, 3, 7, 24, 25, 26, 30, 33, 49, 50, 51, 63, 75, 88, 95, 99, 100)]


# ---------------------------------------------------------------- conversions
def to_uint8_vectors():
    xs = [0.0, 0.49999999999999994, 0.5, 1.5, 2.5, 3.5, 127.5, 128.5, 254.5, 255.5, 255.49,
          256.0, -0.5, -0.50001, -1.0, 1e300, -1e300, 0.5000000000000001, 2.4999999999999996]
    out = []
    for x in xs:
        r = round(x) if abs(x) < 1e15 else (math.inf if x > 0 else -math.inf)  # ties to even
        out.append(int(min(max(r, 0), 255)))
    return [{"x": xs, "uint8": out}, {"x": ["inf", "-inf"], "uint8": [255, 0]}]


def standardize_vectors():
    unit = [f32(f32(float(v)) / f32(127.5)) - 1.0 for v in range(256)]
    unit = [f32(x) for x in unit]
    out = [{"mode": "unit", "values": list(range(256)), "standardized": unit}]
    for name in ("a", "b", "c"):
        img = IMAGES[name]
        vals = [v for row in img for px in row for v in px]
        N = len(vals)
        mean = sum(vals) / N
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / N)
        m32, s32 = f32(mean), f32(max(std, 1 / math.sqrt(N)))
        out.append({"mode": "per_image", "image": name,
                    "standardized": [f32(f32(v - m32) / s32) for v in vals]})
    # a constant image, and one whose std (0.276) is below the floor 1/sqrt(12) = 0.289
    for name, pixels in (("constant", [[[9, 9, 9]] * 2] * 2),
                         ("low_contrast", [[[9, 9, 9], [9, 9, 9]], [[9, 9, 9], [9, 9, 10]]])):
        vals = [v for row in pixels for px in row for v in px]
        N = len(vals)
        mean = sum(vals) / N
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / N)
        m32, s32 = f32(mean), f32(max(std, 1 / math.sqrt(N)))
        out.append({"mode": "per_image", "image": name, "pixels": pixels,
                    "standardized": [f32(f32(v - m32) / s32) for v in vals]})
    return out


def geometry_vectors():
    """Flips, rot90 (k = -1..5) and crops of image 'a' (4 x 5), index formula by formula."""
    img = IMAGES["a"]
    H, W = len(img), len(img[0])

    def rot(im, k):
        for _ in range(k % 4):  # out[i, j] = img[j, W-1-i]
            h, w = len(im), len(im[0])
            im = [[im[j][w - 1 - i] for j in range(h)] for i in range(w)]
        return im

    out = [{"op": "flip_left_right", "args": [],
            "out": [[img[y][W - 1 - x] for x in range(W)] for y in range(H)]},
           {"op": "flip_up_down", "args": [],
            "out": [[img[H - 1 - y][x] for x in range(W)] for y in range(H)]}]
    out += [{"op": "rot90", "args": [k], "out": rot(img, k)} for k in range(-1, 6)]
    out += [{"op": "crop", "args": [l, w],
             "out": [[img[y][x] for x in range(l, l + w)] for y in range(l, l + w)]}
            for l, w in ((0, 1), (0, 4), (1, 3), (3, 1))]
    return out


FILES = {
    "augment_draws.json": ("steps and stain normals drawn for positions of a stream",
                           "Augmentation draws", draw_vectors),
    "augment_given_uniforms.json": ("the step each character draws from given (u0, u1)",
                                    "Augmentation draws", given_draw_vectors),
    "resize_weights.json": ("resize weight matrices A (out x in) of every method, antialias "
                            "on and off", "Resize", resize_weight_vectors),
    "resize_kernels.json": ("kernel values k(x) at and around each support radius",
                            "Resize: Scale-and-translate", kernel_vectors),
    "resize_images.json": ("float resize of the vector images (before rounding)", "Resize",
                           resize_image_vectors),
    "blur_weights.json": ("blur tap offsets and one-axis matrices, borders folded in",
                          "Gaussian blur", blur_vectors),
    "reflect.json": ("refl(i, n)", "Gaussian blur", reflect_vectors),
    "blur_images.json": ("float blur of the vector images (before rounding)", "Gaussian blur",
                         blur_image_vectors),
    "jpeg_tables.json": ("quantization tables (row order) by quality", "JPEG",
                         jpeg_table_vectors),
    "to_uint8.json": ("x -> uint8 (ties to even, clipped)", "uint8 conversion", to_uint8_vectors),
    "standardize.json": ("'unit' of every uint8 value; 'per_image' of the vector images "
                         "(row-major H, W, C values)", "Standardization", standardize_vectors),
    "geometry.json": ("flips, rot90 and crops of image 'a'", "Flips, Rotation, Crop",
                      geometry_vectors),
    "images.json": ("the vector images (H x W x 3 lists)", "Conventions", lambda: [IMAGES]),
}


def build():
    """{file name: text} of every vector file and the manifest."""
    return RNG["build_files"]("spec/images.md", FILES)


def main():
    return RNG["write_files"](build(), HERE)


if __name__ == "__main__":
    sys.exit(main())
