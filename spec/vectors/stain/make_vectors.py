"""Make the known-answer vectors of spec/stain.md (written from the spec's text).

    python spec/vectors/stain/make_vectors.py         # rewrite *.json and manifest.json

A second, deliberately plain implementation of the exact formulas of spec/stain.md:
scalar Python floats and integers, read off the spec's sentences (its constants
tables included), with no import of tilespec or NumPy. tests/test_vectors_stain.py checks the
reference and the adapters' stain ops against these files, and that this script
rebuilds them byte for byte.
"""

from __future__ import annotations

import math
import os
import runpy
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
RNG = runpy.run_path(os.path.join(HERE, os.pardir, "sampling", "make_vectors.py"))

# ---------------------------------------------------------------- "Constants"
WHITE = (0.95047, 1.0, 1.08883)
PRIMARIES = ((0.64, 0.33), (0.30, 0.60), (0.15, 0.06))
EPS, KAPPA, DELTA = 216 / 24389, 24389 / 27, 6 / 29
DECODE_T, ENCODE_T = 0.04045, 0.0031308


def det3(m):
    return (m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]))


def inverse3(m):
    d = det3(m)
    cof = [[(m[(r + 1) % 3][(c + 1) % 3] * m[(r + 2) % 3][(c + 2) % 3]
             - m[(r + 1) % 3][(c + 2) % 3] * m[(r + 2) % 3][(c + 1) % 3]) for c in range(3)]
           for r in range(3)]
    return [[cof[c][r] / d for c in range(3)] for r in range(3)]   # adjugate / det


def matvec(m, v):
    return [m[r][0] * v[0] + m[r][1] * v[1] + m[r][2] * v[2] for r in range(3)]


def rgb_to_xyz_matrix():
    """Columns P_j = (x_j/y_j, 1, (1 - x_j - y_j)/y_j), s = P^-1 W, M = P diag(s)."""
    P = [[x / y for x, y in PRIMARIES], [1.0, 1.0, 1.0],
         [(1 - x - y) / y for x, y in PRIMARIES]]
    s = matvec(inverse3(P), WHITE)
    return [[P[r][c] * s[c] for c in range(3)] for r in range(3)]


M = rgb_to_xyz_matrix()
M_INV = inverse3(M)


def lin(c):
    return c / 12.92 if c <= DECODE_T else ((c + 0.055) / 1.055) ** 2.4


def enc(v):
    return 12.92 * v if v <= ENCODE_T else 1.055 * v ** (1 / 2.4) - 0.055


def f(t):
    return t ** (1 / 3) if t > EPS else (KAPPA * t + 16) / 116


def f_inv(u):
    return u ** 3 if u > DELTA else (116 * u - 16) / KAPPA


def xyz_to_lab(xyz):
    fx, fy, fz = (f(v / w) for v, w in zip(xyz, WHITE))
    return [116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)]


def lab_to_xyz(lab):
    fy = (lab[0] + 16) / 116
    fx, fz = fy + lab[1] / 500, fy - lab[2] / 200
    return [w * f_inv(u) for u, w in zip((fx, fy, fz), WHITE)]


def rgb8_to_lab(rgb):
    return xyz_to_lab(matvec(M, [lin(c / 255) for c in rgb]))


def lab_to_rgb(lab):
    return [enc(v) for v in matvec(M_INV, lab_to_xyz(lab))]


def rint(x):
    return round(x)  # ties to even


def to_uint8(x):
    """clip(rint(x), 0, 255), x on the 0..255 scale."""
    return int(min(max(rint(x), 0), 255))


# ---------------------------------------------------------------- vectors
def companding_vectors():
    ups = [0.0, 0.01, math.nextafter(DECODE_T, 0), DECODE_T, math.nextafter(DECODE_T, 1), 0.5, 1.0]
    downs = [-0.5, 0.0, math.nextafter(ENCODE_T, 0), ENCODE_T, math.nextafter(ENCODE_T, 1), 0.2,
             1.0, 1.5]
    return [{"direction": "decode", "c": ups, "linear": [lin(c) for c in ups]},
            {"direction": "encode", "v": downs, "srgb": [enc(v) for v in downs]}]


def matrix_vectors():
    return [{"white": list(WHITE), "primaries_xy": [list(p) for p in PRIMARIES],
             "rgb_to_xyz": M, "xyz_to_rgb": M_INV,
             "rows_sum_to_white": [sum(row) for row in M]}]


def lab_vectors():
    t_eps = EPS * WHITE[1]            # Y/Yn exactly epsilon: the linear branch
    xyz = [list(WHITE), [0.0, 0.0, 0.0], [0.2, t_eps, 0.1], [0.2, math.nextafter(t_eps, 1), 0.1],
           [0.2, math.nextafter(t_eps, 0), 0.1], [0.5, 0.4, 0.3], [-0.01, 0.002, 1.2]]
    labs = [[100.0, 0.0, 0.0], [0.0, 0.0, 0.0], [8.0, 0.0, 0.0],  # L* = 8: fy = delta exactly
            [math.nextafter(8.0, 9), 0.0, 0.0], [math.nextafter(8.0, 0), 0.0, 0.0],
            [50.0, 20.0, -30.0], [30.0, -80.0, 90.0], [99.0, 120.0, -120.0]]
    return [{"direction": "xyz_to_lab", "xyz": xyz, "lab": [xyz_to_lab(v) for v in xyz]},
            {"direction": "lab_to_xyz", "lab": labs, "xyz": [lab_to_xyz(v) for v in labs]}]


COLOURS = [[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 128, 128],
           [10, 10, 10], [11, 11, 11], [1, 2, 3], [200, 120, 180], [92, 40, 130], [254, 253, 0]]


def rgb_lab_vectors():
    labs = [rgb8_to_lab(c) for c in COLOURS]
    return [{"rgb": COLOURS, "lab": labs, "back": [lab_to_rgb(v) for v in labs],
             "round_trip": [[to_uint8(255 * x) for x in lab_to_rgb(v)] for v in labs]}]


# presets, from the spec's tables
FIT = {
    "reinhard": {"v1": ([72.272896, 22.99831, -13.860236], [15.594496, 9.642087, 9.290526]),
                 "v2": ([72.909996, 20.8268, -4.9465137], [18.560713, 14.889295, 5.6756697]),
                 "v3": ([65.22132, 28.934267, -14.142519], [15.800227, 9.263783, 6.0213304])},
    "reinhard_fast": {"v1": ([63.71194, 20.716246, -12.290746], [14.52781, 8.344005, 8.300264]),
                      "v2": ([69.20197, 19.82498, -4.690998], [17.71583, 14.156416, 5.4176064]),
                      "v3": ([58.12343, 26.483482, -12.701005], [14.675022, 7.5744166, 5.226378])},
    "macenko": {"v1": ([[0.63111544, 0.24816133], [0.6962834, 0.8226449],
                        [0.34188122, 0.5115382]], [1.4423684, 0.9685806]),
                "v2": ([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]], [1.9705, 1.0308]),
                "v3": ([[0.5062568, 0.2218694], [0.75322306, 0.8652155],
                        [0.40691733, 0.42241502]], [1.7656903, 1.2797493])},
}
AUGMENT_BASE = {
    "reinhard": ([1.1882676, 1.3114343, 1.1200949], [0.5123385, 0.37919158, 0.26019168]),
    "reinhard_fast": ([1.2963034, 1.0061347, 0.90867484], [0.47548684, 0.3956356, 0.23499836]),
    "macenko": ([[0.00893346, 0.01153686], [0.00659814, 0.00722771], [0.00726339, 0.01352414]],
                [0.06665898, 0.06770515]),
}
FIT_KEYS = {"reinhard": ("target_means", "target_stds"),
            "reinhard_fast": ("target_means", "target_stds"),
            "macenko": ("stain_matrix_target", "target_concentrations")}
AUG_KEYS = {"reinhard": ("means_stdev", "stds_stdev"),
            "reinhard_fast": ("means_stdev", "stds_stdev"),
            "macenko": ("matrix_stdev", "concentrations_stdev")}


def scale(x, s):
    return [scale(v, s) for v in x] if isinstance(x, list) else x * s


def preset_vectors():
    out = []
    for method, presets in FIT.items():
        for name, values in presets.items():
            out.append({"kind": "fit", "method": method, "preset": name,
                        "values": dict(zip(FIT_KEYS[method], values))})
        for name, times in (("v1", 5), ("v2", 3)):
            out.append({"kind": "augment", "method": method, "preset": name,
                        "values": dict(zip(AUG_KEYS[method],
                                           (scale(b, times) for b in AUGMENT_BASE[method])))})
    return out


def perturbation(method, z, times=3):
    """{fit key: sigma * z}: Reinhard z[0:3] -> means, z[3:6] -> stds; Macenko z[0:6] ->
    the stain matrix row-major, z[6:8] -> concentrations."""
    s1, s2 = (scale(b, times) for b in AUGMENT_BASE[method])
    k1, k2 = FIT_KEYS[method]
    if method == "macenko":
        return {k1: [[s1[r][c] * z[2 * r + c] for c in range(2)] for r in range(3)],
                k2: [s2[i] * z[6 + i] for i in range(2)]}
    return {k1: [s1[i] * z[i] for i in range(3)], k2: [s2[i] * z[3 + i] for i in range(3)]}


def perturbation_vectors():
    """z from given numbers and from the loader's normals (augmentation 'n' at place k of
    the string reads normals 0..k-1 of slot 16 + k)."""
    out = []
    key = RNG["stream_key"](2024, 0, 0)
    for method, k in (("reinhard", 6), ("reinhard_fast", 6), ("macenko", 8)):
        zs = [[float(i + 1) for i in range(k)], [-0.5] * k]
        zs += [[RNG["normal"](key, i, RNG["augment_slot"](2), m) for m in range(k)]
               for i in (0, 1, 2 ** 32)]
        out.append({"method": method, "augment_preset": "v2", "z": zs,
                    "delta": [perturbation(method, z) for z in zs]})
    return out


def percentile(values, q):
    """v_i + f (v_{i+1} - v_i), i + f = (q / 100)(n - 1), values sorted; evaluated from the
    nearer end, v_{i+1} - (1 - f)(v_{i+1} - v_i) when f >= 1/2 (as NumPy)."""
    v = sorted(values)
    h = (q / 100) * (len(v) - 1)
    i = math.floor(h)
    fr = h - i
    if i + 1 >= len(v):
        return v[i]
    d = v[i + 1] - v[i]
    return v[i + 1] - d * (1 - fr) if fr >= 0.5 else v[i] + fr * d


def brightness(img, mask=False):
    """b(I) = to_uint8(I * 255 / p), p the 90th percentile of all values (with mask, of the
    pixels other than white); I itself when p = 0 or no pixel is left."""
    pixels = [px for row in img for px in row]
    kept = [px for px in pixels if not (mask and px == [255, 255, 255])]
    values = [v for px in kept for v in px]
    if not values:
        return img
    p = percentile(values, 90)
    if p == 0:
        return img
    return [[[to_uint8(v * 255 / p) for v in px] for px in row] for row in img]


def brightness_images():
    # 30 values; sorted, v_26 = 61 and v_27 = 63, so p = 61 + 0.1 (63 - 61) = 61.2 (f < 1/2):
    # 45 * 255 / p and 57 * 255 / p are 187.5 and 237.5 (ties: 188 and 238), while
    # (45 / p) * 255 = 187.49999999999997 would round to 187.
    values = [45, 57] + [10] * 24 + [61, 63, 200, 250]
    tie = [[values[6 * y + 3 * x:6 * y + 3 * x + 3] for x in range(2)] for y in range(5)]
    dark = [[[0, 0, 0]] * 3] * 3 + [[[9, 200, 7], [0, 0, 0], [0, 0, 0]]]    # p = 0
    white = [[[255, 255, 255], [120, 60, 200]], [[255, 255, 255], [30, 90, 150]]]
    tissue = [[[(y * 53 + x * 29 + c * 71) % 180 + 40 for c in range(3)] for x in range(4)]
              for y in range(3)]
    return {"tie": tie, "dark": dark, "white": white, "tissue": tissue}


def brightness_vectors():
    out = []
    for name, img in brightness_images().items():
        for mask in (False, True):
            out.append({"image": name, "pixels": img, "mask": mask,
                        "out": brightness(img, mask)})
    return out


def stats(labs):
    n = len(labs)
    means = [sum(v[c] for v in labs) / n for c in range(3)]
    stds = [math.sqrt(sum((v[c] - means[c]) ** 2 for v in labs) / n) for c in range(3)]
    return means, stds


def reinhard(img, t_means, t_stds, fast):
    """out = to_uint8(255 rgb((Lab - m) s_t / s + m_t)) of S(I) (S = b for 'reinhard')."""
    src = img if fast else brightness(img)
    labs = [rgb8_to_lab(px) for row in src for px in row]
    m, s = stats(labs)
    out = [[to_uint8(255 * x) for x in
            lab_to_rgb([(v[c] - m[c]) * t_stds[c] / s[c] + t_means[c] for c in range(3)])]
           for v in labs]
    w = len(img[0])
    return [out[i:i + w] for i in range(0, len(out), w)]


def reinhard_vectors():
    imgs = brightness_images()
    out = []
    for method in ("reinhard", "reinhard_fast"):
        fast = method == "reinhard_fast"
        for name in ("tissue", "white"):
            img = imgs[name]
            fm, fs = stats([rgb8_to_lab(px) for row in (img if fast else brightness(img))
                            for px in row])
            for preset in ("v1", "v3"):
                t_means, t_stds = FIT[method][preset]
                out.append({"method": method, "image": name, "pixels": img,
                            "fit": {"target_means": fm, "target_stds": fs},
                            "target": preset, "out": reinhard(img, t_means, t_stds, fast)})
    return out


def jacobi_eigh(a):
    """Eigenvalues (ascending) and unit eigenvectors (columns) of a symmetric 3 x 3 matrix,
    by cyclic Jacobi rotations."""
    a = [row[:] for row in a]
    v = [[float(r == c) for c in range(3)] for r in range(3)]
    for _ in range(100):
        off = sum(a[r][c] ** 2 for r in range(3) for c in range(3) if r != c)
        if off < 1e-40:
            break
        for p, q in ((0, 1), (0, 2), (1, 2)):
            if a[p][q] == 0:
                continue
            theta = (a[q][q] - a[p][p]) / (2 * a[p][q])
            t = math.copysign(1.0, theta) / (abs(theta) + math.sqrt(theta * theta + 1))
            c = 1 / math.sqrt(t * t + 1)
            s = t * c
            for k in range(3):  # a <- J^T a J, v <- v J
                akp, akq = a[k][p], a[k][q]
                a[k][p], a[k][q] = c * akp - s * akq, s * akp + c * akq
            for k in range(3):
                apk, aqk = a[p][k], a[q][k]
                a[p][k], a[q][k] = c * apk - s * aqk, s * apk + c * aqk
            for k in range(3):
                vkp, vkq = v[k][p], v[k][q]
                v[k][p], v[k][q] = c * vkp - s * vkq, s * vkp + c * vkq
    order = sorted(range(3), key=lambda i: a[i][i])
    return [a[i][i] for i in order], [[v[r][i] for r in range(3)] for i in order]


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def macenko_decompose(img):
    """Steps 1-9 of spec/stain.md, "Macenko" (no mask): (HE as 3 rows of (H, E), maxC, C)."""
    pixels = [px for row in brightness(img) for px in row]
    od = [[-math.log((v + 1) / 255) for v in px] for px in pixels]
    tissue = [o for o in od if all(x >= 0.15 for x in o)]
    n = len(tissue)
    assert n >= 3
    mean = [sum(o[c] for o in tissue) / n for c in range(3)]
    cov = [[sum((o[r] - mean[r]) * (o[c] - mean[c]) for o in tissue) / (n - 1)
            for c in range(3)] for r in range(3)]
    lam, vecs = jacobi_eigh(cov)
    assert lam[1] > 1e-10
    e1, e2 = vecs[2], vecs[1]
    if sum(dot(o, e1) for o in tissue) < 0:
        e1 = [-x for x in e1]
    if max(e2, key=abs) < 0:
        e2 = [-x for x in e2]
    phi = [math.atan2(dot(o, e1), dot(o, e2)) for o in tissue]
    lo, hi = percentile(phi, 1), percentile(phi, 99)
    v_min = [a * math.cos(lo) + b * math.sin(lo) for a, b in zip(e2, e1)]
    v_max = [a * math.cos(hi) + b * math.sin(hi) for a, b in zip(e2, e1)]
    h, e = (v_min, v_max) if v_min[0] - v_max[0] > 1e-9 else (v_max, v_min)  # within 1e-9: tie
    # C = (HE^T HE)^-1 HE^T OD, a 2 x 2 system per pixel
    g = [[dot(h, h), dot(h, e)], [dot(e, h), dot(e, e)]]
    d = g[0][0] * g[1][1] - g[0][1] * g[1][0]
    conc = []
    for o in od:
        bh, be = dot(h, o), dot(e, o)
        conc.append([(g[1][1] * bh - g[0][1] * be) / d, (g[0][0] * be - g[1][0] * bh) / d])
    max_c = [percentile([c[k] for c in conc], 99) for k in range(2)]
    return [[h[r], e[r]] for r in range(3)], max_c, conc


def macenko_transform(img, he_t, maxc_t):
    """C' = C maxC_t / maxC per stain, OD' = HE_t C', out = to_uint8(255 exp(-OD') - 1)."""
    _, max_c, conc = macenko_decompose(img)
    out = []
    for c in conc:
        c2 = [c[k] * maxc_t[k] / max_c[k] for k in range(2)]
        out.append([to_uint8(255 * math.exp(-(he_t[r][0] * c2[0] + he_t[r][1] * c2[1])) - 1)
                    for r in range(3)])
    w = len(img[0])
    return [out[i:i + w] for i in range(0, len(out), w)]


def he_image():
    """A 5 x 6 Beer-Lambert H&E tile (Io = 255, known stain vectors) with one white pixel."""
    H, E = (0.65, 0.70, 0.29), (0.07, 0.99, 0.11)
    nh, ne = math.sqrt(dot(H, H)), math.sqrt(dot(E, E))
    img = []
    for y in range(5):
        row = []
        for x in range(6):
            k = 6 * y + x    # 30 distinct (H, E) concentration pairs
            ch, ce = 0.2 + 0.031 * k, 0.15 + 0.027 * ((11 * k) % 30)
            row.append([to_uint8(255 * math.exp(-(ch * H[c] / nh + ce * E[c] / ne)) - 1)
                        for c in range(3)])
        img.append(row)
    img[0][0] = [255, 255, 255]
    return img


def macenko_vectors():
    img = he_image()
    he, max_c, _ = macenko_decompose(img)
    out = []
    for preset in ("v1", "v2"):
        he_t, maxc_t = FIT["macenko"][preset]
        out.append({"image": img,
                    "fit": {"stain_matrix_target": he, "target_concentrations": max_c},
                    "target": preset, "out": macenko_transform(img, he_t, maxc_t)})
    return out


FILES = {
    "companding.json": ("sRGB decoding and encoding at and around the thresholds",
                        "Colour conversions 1", companding_vectors),
    "matrices.json": ("the RGB -> XYZ matrix derived from the primaries and the D65 white, "
                      "and its inverse", "Constants; Colour conversions 2", matrix_vectors),
    "lab.json": ("XYZ <-> L*a*b* at and around epsilon and delta", "Colour conversions 3-4",
                 lab_vectors),
    "rgb_lab.json": ("uint8 sRGB -> L*a*b* -> sRGB (float and uint8)", "Colour conversions",
                     rgb_lab_vectors),
    "presets.json": ("fit and augmentation presets", "Presets", preset_vectors),
    "perturbation.json": ("draw_stain_perturbation: z -> {fit key: sigma z}, preset v2",
                          "Stain augmentation", perturbation_vectors),
    "brightness.json": ("brightness standardization, with and without mask",
                        "Brightness standardization", brightness_vectors),
    "reinhard.json": ("Reinhard fit of an image and transform to a preset target", "Reinhard",
                      reinhard_vectors),
    "macenko.json": ("Macenko fit of a Beer-Lambert tile and transform to preset targets",
                     "Macenko", macenko_vectors),
}


def build():
    """{file name: text} of every vector file and the manifest."""
    return RNG["build_files"]("spec/stain.md", FILES)


def main():
    return RNG["write_files"](build(), HERE)


if __name__ == "__main__":
    sys.exit(main())
