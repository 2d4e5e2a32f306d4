"""Stain normalization and stain augmentation (spec/stain.md).

``StainNormalizer(method)`` with methods ``'reinhard'``, ``'reinhard_fast'``,
``'reinhard_mask'``, ``'reinhard_fast_mask'``, ``'macenko'`` and ``'macenko_fast'``
(:data:`METHODS`). A normalizer holds a *fit* (the target parameters) and an
*augmentation space* (one standard deviation per target parameter)::

    norm = StainNormalizer("macenko")            # fit preset 'v3', augmentation preset 'v2'
    norm.fit(target_tile)                          # or norm.fit_preset("v1"), norm.set_fit(...)
    out = norm.transform(tile)                     # HWC or NHWC uint8 -> same shape uint8

Stain augmentation is split into two pure, deterministic steps so that the
random numbers can come from any generator (the loader supplies standard
normal variates from its counter-based generator, keyed per stream position):

    z = ...                                        # standard normal variates, shape (k,) or (N, k)
    delta = draw_stain_perturbation(norm, z)       # 1. draw: deltas = augmentation std * z
    out = norm.transform(tile, augment=True, perturbation=delta)   # 2. apply

``k = NORMAL_DRAWS[method]`` (6 for Reinhard, 8 for Macenko). For convenience
``transform(img, augment=True, rng=generator)`` draws ``z`` from a
``numpy.random.Generator`` itself; global ``np.random`` is never used.

slideflow's entry points (spec/stain.md, "Entry points"): ``fit`` from a preset name, an
image path or an array; ``get_fit``/``set_fit``; ``rgb_to_rgb``, ``jpeg_to_rgb``,
``png_to_rgb``, ``jpeg_to_jpeg``, ``png_to_png``, ``torch_to_torch``, ``tf_to_tf``,
``tf_to_rgb``; the module-level :func:`autoselect`. No framework is imported here
unless a tensor entry point is called (and then the adapter does the work).

All arithmetic is float64. Every float -> uint8 conversion rounds to nearest
(ties to even) and clips to [0, 255].
"""

from __future__ import annotations

import os
import sys
from types import MappingProxyType

import numpy as np

from .colour import lab_to_rgb, rgb_to_lab, to_uint8
from .errors import TFRecordError

METHODS = ("reinhard", "reinhard_fast", "reinhard_mask", "reinhard_fast_mask", "macenko",
           "macenko_fast")

#: The family of each method: 'reinhard' (colour transfer in L*a*b*) or 'macenko' (stain
#: separation); the fit keys, augmentation keys and normal draws are the family's.
FAMILY = MappingProxyType({"reinhard": "reinhard", "reinhard_fast": "reinhard",
                           "reinhard_mask": "reinhard", "reinhard_fast_mask": "reinhard",
                           "macenko": "macenko", "macenko_fast": "macenko"})
#: Methods that standardize brightness first (spec/stain.md, "Brightness standardization").
BRIGHTNESS = frozenset({"reinhard", "reinhard_mask", "macenko"})
#: Methods that leave background pixels (L* >= MASK_L_THRESHOLD) as they are.
MASKED = frozenset({"reinhard_mask", "reinhard_fast_mask"})
#: The method whose presets a method uses (slideflow's preset tags).
PRESET_OF = MappingProxyType({"reinhard": "reinhard", "reinhard_fast": "reinhard_fast",
                              "reinhard_mask": "reinhard", "reinhard_fast_mask": "reinhard_fast",
                              "macenko": "macenko", "macenko_fast": "macenko_fast"})

_FAMILY_FIT_SHAPES = {"reinhard": {"target_means": (3,), "target_stds": (3,)},
                      "macenko": {"stain_matrix_target": (3, 2), "target_concentrations": (2,)}}
_FAMILY_AUGMENT_KEYS = {"reinhard": {"means_stdev": "target_means", "stds_stdev": "target_stds"},
                        "macenko": {"matrix_stdev": "stain_matrix_target",
                                    "concentrations_stdev": "target_concentrations"}}

#: Fit parameters of each method, with their shapes.
FIT_SHAPES = MappingProxyType({m: _FAMILY_FIT_SHAPES[f] for m, f in FAMILY.items()})

#: Augmentation standard deviations of each method: {augment key: fit key it perturbs}.
AUGMENT_KEYS = MappingProxyType({m: _FAMILY_AUGMENT_KEYS[f] for m, f in FAMILY.items()})

#: Standard normal variates consumed per image by stain augmentation.
NORMAL_DRAWS = MappingProxyType({m: {"reinhard": 6, "macenko": 8}[f] for m, f in FAMILY.items()})

DEFAULT_FIT_PRESET = "v3"
DEFAULT_AUGMENT_PRESET = "v2"

# Constants (spec/stain.md, "Constants").
BRIGHTNESS_PERCENTILE = 90.0       # brightness standardization percentile
MACENKO_IO = 255.0                 # incident light intensity
MACENKO_ALPHA = 1.0                # angle percentiles: alpha and 100 - alpha
MACENKO_BETA = 0.15                # optical density below which a channel is transparent
MACENKO_MAXC_PERCENTILE = 99.0     # "max" concentration percentile
MIN_TISSUE_PIXELS = 3              # Macenko: fewer tissue pixels -> blank image
MIN_EIGENVALUE = 1e-10             # Macenko: 2nd largest OD covariance eigenvalue at most this -> blank
MIN_LAB_STD = 1e-6                 # Reinhard: a source L*a*b* std at most this -> blank
MACENKO_ORDER_TIE = 1e-9           # Macenko: red components closer than this order H and E as a tie
#: The blank rules' reasons (spec/stain.md, "Blank images"): the fixed lead of every
#: BlankImageError message of a transform, written once; the reference appends the
#: measured values, and an adapter that decides in its own ops (the TF graph) says the same.
BLANK_REASONS = {
    "single_colour": f"the image has a single colour, so it has no stain to normalize: an "
                     f"L*a*b* std <= {MIN_LAB_STD:g}",
    "few_tissue": f"the image is blank or background: fewer than {MIN_TISSUE_PIXELS} tissue "
                  f"pixels (optical density >= {MACENKO_BETA} in every channel)",
    # (no apostrophe in these reasons: TensorFlow escapes one in an assertion's message)
    "no_plane": f"a single stain colour: the optical densities of the tissue pixels do not "
                f"span a plane (second eigenvalue <= {MIN_EIGENVALUE:g})",
    "no_stain": "the image has no measurable stain: its 99th-percentile stain concentrations "
                "are not positive",
}
MASK_L_THRESHOLD = 93.0            # reinhard*_mask: pixels with L* at least this are background


def _a(*rows):
    return np.array(rows, dtype=np.float64)


# Preset values are those of slideflow 3.0 (slideflow/norm/utils.py), stored as float64.
FIT_PRESETS = MappingProxyType({
    "reinhard": {
        "v1": {"target_means": _a(72.272896, 22.99831, -13.860236),
               "target_stds": _a(15.594496, 9.642087, 9.290526)},
        "v2": {"target_means": _a(72.909996, 20.8268, -4.9465137),
               "target_stds": _a(18.560713, 14.889295, 5.6756697)},
        "v3": {"target_means": _a(65.22132, 28.934267, -14.142519),
               "target_stds": _a(15.800227, 9.263783, 6.0213304)},
    },
    "reinhard_fast": {
        "v1": {"target_means": _a(63.71194, 20.716246, -12.290746),
               "target_stds": _a(14.52781, 8.344005, 8.300264)},
        "v2": {"target_means": _a(69.20197, 19.82498, -4.690998),
               "target_stds": _a(17.71583, 14.156416, 5.4176064)},
        "v3": {"target_means": _a(58.12343, 26.483482, -12.701005),
               "target_stds": _a(14.675022, 7.5744166, 5.226378)},
    },
    "macenko": {
        "v1": {"stain_matrix_target": _a([0.63111544, 0.24816133],
                                         [0.6962834, 0.8226449],
                                         [0.34188122, 0.5115382]),
               "target_concentrations": _a(1.4423684, 0.9685806)},
        "v2": {"stain_matrix_target": _a([0.5626, 0.2159],
                                         [0.7201, 0.8012],
                                         [0.4062, 0.5581]),
               "target_concentrations": _a(1.9705, 1.0308)},
        "v3": {"stain_matrix_target": _a([0.5062568, 0.2218694],
                                         [0.75322306, 0.8652155],
                                         [0.40691733, 0.42241502]),
               "target_concentrations": _a(1.7656903, 1.2797493)},
    },
    "macenko_fast": {
        "v1": {"stain_matrix_target": _a([0.6148019, 0.21480364],
                                         [0.7010872, 0.82317936],
                                         [0.36124164, 0.5255809]),
               "target_concentrations": _a(1.8029537, 0.9606744)},
        "v2": {"stain_matrix_target": _a([0.5626, 0.2159],
                                         [0.7201, 0.8012],
                                         [0.4062, 0.5581]),
               "target_concentrations": _a(1.9705, 1.0308)},
        "v3": {"stain_matrix_target": _a([0.52000326, 0.2623537],
                                         [0.73508584, 0.83495414],
                                         [0.4249617, 0.4630997]),
               "target_concentrations": _a(2.0259454, 1.4088874)},
    },
})

AUGMENT_PRESETS = MappingProxyType({
    "reinhard": {
        "v1": {"means_stdev": _a(1.1882676, 1.3114343, 1.1200949) * 5,
               "stds_stdev": _a(0.5123385, 0.37919158, 0.26019168) * 5},
        "v2": {"means_stdev": _a(1.1882676, 1.3114343, 1.1200949) * 3,
               "stds_stdev": _a(0.5123385, 0.37919158, 0.26019168) * 3},
    },
    "reinhard_fast": {
        "v1": {"means_stdev": _a(1.2963034, 1.0061347, 0.90867484) * 5,
               "stds_stdev": _a(0.47548684, 0.3956356, 0.23499836) * 5},
        "v2": {"means_stdev": _a(1.2963034, 1.0061347, 0.90867484) * 3,
               "stds_stdev": _a(0.47548684, 0.3956356, 0.23499836) * 3},
    },
    "macenko": {
        "v1": {"matrix_stdev": _a([0.00893346, 0.01153686],
                                  [0.00659814, 0.00722771],
                                  [0.00726339, 0.01352414]) * 5,
               "concentrations_stdev": _a(0.06665898, 0.06770515) * 5},
        "v2": {"matrix_stdev": _a([0.00893346, 0.01153686],
                                  [0.00659814, 0.00722771],
                                  [0.00726339, 0.01352414]) * 3,
               "concentrations_stdev": _a(0.06665898, 0.06770515) * 3},
    },
    "macenko_fast": {
        "v1": {"matrix_stdev": _a([0.00794701, 0.01137106],
                                  [0.00559027, 0.00642623],
                                  [0.00609103, 0.01144302]) * 5,
               "concentrations_stdev": _a(0.06623945, 0.08137263) * 5},
        "v2": {"matrix_stdev": _a([0.00794701, 0.01137106],
                                  [0.00559027, 0.00642623],
                                  [0.00609103, 0.01144302]) * 3,
               "concentrations_stdev": _a(0.06623945, 0.08137263) * 3},
    },
})

# The masked methods use the presets of the method they mask (slideflow's preset tags).
FIT_PRESETS = MappingProxyType({m: FIT_PRESETS[PRESET_OF[m]] for m in METHODS})
AUGMENT_PRESETS = MappingProxyType({m: AUGMENT_PRESETS[PRESET_OF[m]] for m in METHODS})


class StainNormalizationError(ValueError):
    """Bad normalizer configuration or input (unknown method/preset/key, bad shape or value)."""


class BlankImageError(StainNormalizationError):
    """An image has no stain to measure (spec/stain.md, "Blank images").

    ``index`` is the image's position in a batch (None for a single image).
    """

    def __init__(self, reason: str, *, index=None):
        self.reason = reason
        self.index = index
        where = f"image {index} of the batch: " if index is not None else ""
        super().__init__(where + reason)


# ----------------------------------------------------------------------------- helpers

def _check_method(method) -> str:
    if method not in METHODS:
        raise StainNormalizationError(f"unknown stain normalization method {method!r}; valid "
                                      f"methods: {', '.join(METHODS)}")
    return method


def _preset(table, method: str, name, kind: str) -> dict:
    presets = table[method]
    if name not in presets:
        raise StainNormalizationError(f"unknown {kind} preset {name!r} for method {method!r}; "
                                      f"valid presets: {', '.join(presets)}")
    return {k: v.copy() for k, v in presets[name].items()}


def _check_image(img, what="image") -> tuple[np.ndarray, bool]:
    """Return (NHWC uint8 array, was_batch)."""
    if not isinstance(img, np.ndarray):
        raise StainNormalizationError(f"{what} must be a numpy uint8 array (HWC or NHWC); got "
                                      f"{type(img).__name__}")
    if img.dtype != np.uint8:
        from .ops import float_image_hint
        raise StainNormalizationError(f"{what} must have dtype uint8; got {img.dtype}"
                                      f"{float_image_hint(img.dtype)}")
    if img.ndim not in (3, 4) or img.shape[-1] != 3:
        raise StainNormalizationError(f"{what} must have shape (H, W, 3) or (N, H, W, 3); got "
                                      f"{img.shape}")
    if img.shape[-2] == 0 or img.shape[-3] == 0:
        raise StainNormalizationError(f"{what} has no pixels (shape {img.shape})")
    return (img, True) if img.ndim == 4 else (img[None], False)


def _white_mask(pixels: np.ndarray) -> np.ndarray:
    """True for pixels equal to (255, 255, 255); ``pixels`` is (M, 3) uint8."""
    return np.all(pixels == 255, axis=-1)


def standardize_brightness(img: np.ndarray, *, mask: bool = False) -> np.ndarray:
    """Scale an image so its 90th percentile becomes 255 (spec/stain.md, "Brightness standardization").

    ``p`` is the 90th percentile (linear interpolation) of all channel values of
    the image (of the pixels other than (255, 255, 255) when ``mask``); the result
    is ``clip(rint(img * 255 / p), 0, 255)`` as uint8. With ``p == 0`` (or no
    pixel left by the mask) the image is returned unchanged. Works on any
    ``(..., 3)`` uint8 array as one image.
    """
    pixels = img.reshape(-1, 3)
    values = pixels[~_white_mask(pixels)] if mask else pixels
    if values.size == 0:
        return img.copy()
    p = float(np.percentile(values.astype(np.float64), BRIGHTNESS_PERCENTILE))
    if p == 0.0:
        return img.copy()
    # I * 255 is exact; the division is the one rounding (not (I / p) * 255, which rounds
    # twice and, e.g. for p = 61.2, turns the tie 45 * 255 / p = 187.5 into 187.49999...)
    return _rint_uint8(img.astype(np.float64) * 255.0 / p)


def _rint_uint8(x: np.ndarray) -> np.ndarray:
    """clip(rint(x), 0, 255) as uint8, x on the 0..255 scale (spec/stain.md: to_uint8)."""
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- Reinhard

def lab_mean_std(img: np.ndarray, *, mask: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std (ddof 0) of an image's L*a*b* values (spec/stain.md, "Reinhard").

    With ``mask``, pixels equal to (255, 255, 255) are left out. Returns two float64 (3,) arrays.
    """
    lab = rgb_to_lab(img).reshape(-1, 3)
    if mask:
        lab = lab[~_white_mask(img.reshape(-1, 3))]
    if lab.shape[0] == 0:
        raise BlankImageError("every pixel is white (255, 255, 255); nothing to measure")
    return lab.mean(axis=0), lab.std(axis=0)


def _reinhard_fit_one(img: np.ndarray, brightness: bool, mask: bool) -> dict:
    white = _white_mask(img.reshape(-1, 3)) if mask else None
    if brightness:
        img = standardize_brightness(img, mask=mask)
    lab = rgb_to_lab(img).reshape(-1, 3)
    if white is not None:
        lab = lab[~white]
    if lab.shape[0] == 0:
        raise BlankImageError("every pixel is white (255, 255, 255); nothing to fit")
    stds = lab.std(axis=0)
    if np.any(stds <= MIN_LAB_STD):
        raise BlankImageError(f"the image has a single colour (L*a*b* stds {_fmt(stds)}); "
                              "nothing to fit")
    return {"target_means": lab.mean(axis=0), "target_stds": stds}


def _reinhard_transform_one(img: np.ndarray, brightness: bool, t_means, t_stds,
                            masked: bool = False) -> np.ndarray:
    if brightness:
        img = standardize_brightness(img)
    lab = rgb_to_lab(img)
    background = lab[..., 0] >= MASK_L_THRESHOLD if masked else None
    flat = lab.reshape(-1, 3)
    means, stds = flat.mean(axis=0), flat.std(axis=0)
    if np.any(stds <= MIN_LAB_STD):
        raise BlankImageError(f"{BLANK_REASONS['single_colour']} (stds {_fmt(stds)})")
    lab -= means                    # (lab - means) * (t_stds / stds) + t_means, in place
    lab *= t_stds / stds
    lab += t_means
    out = to_uint8(lab_to_rgb(lab))
    if masked:
        out[background] = img[background]      # background: S(I) as it is
    return out


def background_mask(img: np.ndarray, *, brightness: bool = True) -> np.ndarray:
    """The background pixels of 'reinhard_mask' (``brightness``) or 'reinhard_fast_mask'
    (spec/stain.md, "Reinhard with a background mask"): True where L* of S(img) is at
    least :data:`MASK_L_THRESHOLD` (93). Shape ``img.shape[:-1]``."""
    if brightness:
        img = standardize_brightness(img)
    return rgb_to_lab(img)[..., 0] >= MASK_L_THRESHOLD


# ----------------------------------------------------------------------------- Macenko

def optical_density(pixels: np.ndarray) -> np.ndarray:
    """OD = -ln((I + 1) / Io), Io = 255, float64 (spec/stain.md, "Macenko")."""
    return -np.log((pixels.astype(np.float64) + 1.0) / MACENKO_IO)


def _macenko_decompose(img: np.ndarray, *, mask: bool = False, brightness: bool = True):
    """Stain matrix (3, 2), max concentrations (2,) and concentrations (2, M) of one image.

    Concentrations are those of every pixel, in row-major order (of the
    non-white pixels when ``mask``). ``brightness=False`` ('macenko_fast') skips
    brightness standardization. Raises :class:`BlankImageError`.
    """
    pixels = img.reshape(-1, 3)
    white = _white_mask(pixels) if mask else np.zeros(len(pixels), dtype=bool)
    if brightness:
        pixels = standardize_brightness(pixels, mask=mask)
    od = optical_density(pixels)
    tissue = np.all(od >= MACENKO_BETA, axis=1) & ~white
    od_t = od[tissue]
    n_tissue = od_t.shape[0]
    if n_tissue < MIN_TISSUE_PIXELS:
        raise BlankImageError(f"{BLANK_REASONS['few_tissue']}; only {n_tissue} tissue pixel(s)")
    eigvals, eigvecs = np.linalg.eigh(np.cov(od_t, rowvar=False))   # ascending eigenvalues
    if not eigvals[1] > MIN_EIGENVALUE:
        raise BlankImageError(f"{BLANK_REASONS['no_plane']}; it is {eigvals[1]:.3g}")
    e1, e2 = eigvecs[:, 2], eigvecs[:, 1]
    if (od_t @ e1).sum() < 0:
        e1 = -e1
    if e2[np.argmax(np.abs(e2))] < 0:
        e2 = -e2
    phi = np.arctan2(od_t @ e1, od_t @ e2)
    phi_min, phi_max = np.percentile(phi, [MACENKO_ALPHA, 100.0 - MACENKO_ALPHA])
    v_min = e2 * np.cos(phi_min) + e1 * np.sin(phi_min)
    v_max = e2 * np.cos(phi_max) + e1 * np.sin(phi_max)
    # H has the larger red component; closer than MACENKO_ORDER_TIE is a tie (H = v_max),
    # so a red OD that is the same in every pixel (both components ~0) orders the same
    # way in every implementation, whatever the sign of its rounding noise
    h, e = (v_min, v_max) if v_min[0] - v_max[0] > MACENKO_ORDER_TIE else (v_max, v_min)
    he = np.stack([h, e], axis=1)
    od_c = od[~white]
    conc = np.linalg.solve(he.T @ he, he.T @ od_c.T)                 # least squares, (2, M)
    max_c = np.percentile(conc, MACENKO_MAXC_PERCENTILE, axis=1)
    if not (np.all(np.isfinite(max_c)) and np.all(max_c > 0)):
        raise BlankImageError(f"{BLANK_REASONS['no_stain']} ({_fmt(max_c)})")
    return he, max_c, conc


def _macenko_transform_one(img: np.ndarray, he_t, maxc_t, brightness: bool = True) -> np.ndarray:
    _, max_c, conc = _macenko_decompose(img, brightness=brightness)
    conc = conc * (maxc_t / max_c)[:, None]
    out = (he_t @ conc).T
    # MACENKO_IO * exp(-od) - 1, rounded and clipped, in place (the same operations).
    np.negative(out, out=out)
    np.exp(out, out=out)
    out *= MACENKO_IO
    out -= 1.0
    np.rint(out, out=out)
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8).reshape(img.shape)


def _fmt(x) -> str:
    return np.array2string(np.asarray(x), precision=6, separator=", ")


# ----------------------------------------------------------------------------- draws

def draw_stain_perturbation(normalizer_or_method, normal_draws, *, augment_preset=None) -> dict:
    """Turn standard normal variates into per-image target deltas (spec/stain.md, "Stain augmentation").

    Pure and deterministic: ``delta = sigma * z`` where ``sigma`` are the
    augmentation standard deviations, those of the given :class:`StainNormalizer`
    or, for a method name, of ``augment_preset`` (default 'v2').

    ``normal_draws``: shape ``(k,)`` for one image or ``(N, k)`` for N images,
    ``k = NORMAL_DRAWS[method]``, used in this order:

    * Reinhard: z[0:3] -> target_means (L*, a*, b*), z[3:6] -> target_stds (L*, a*, b*).
    * Macenko: z[0:6] -> stain_matrix_target in row-major order (R_H, R_E, G_H, G_E,
      B_H, B_E), z[6:8] -> target_concentrations (H, E).

    Returns ``{fit key: delta}`` with shapes ``fit shape`` or ``(N,) + fit shape``,
    to pass as ``transform(..., augment=True, perturbation=...)``.
    """
    if isinstance(normalizer_or_method, StainNormalizer):
        if augment_preset is not None:
            raise StainNormalizationError("augment_preset is only used with a method name; a "
                                          "StainNormalizer uses its own augmentation space")
        method = normalizer_or_method.method
        sigma = normalizer_or_method.get_augment()
    else:
        method = _check_method(normalizer_or_method)
        sigma = _preset(AUGMENT_PRESETS, method, augment_preset or DEFAULT_AUGMENT_PRESET,
                        "augmentation")
    k = NORMAL_DRAWS[method]
    z = np.asarray(normal_draws, dtype=np.float64)
    if z.ndim not in (1, 2) or z.shape[-1] != k:
        raise StainNormalizationError(f"normal_draws for {method!r} must have shape ({k},) or "
                                      f"(N, {k}); got {z.shape}")
    if not np.all(np.isfinite(z)):
        raise StainNormalizationError("normal_draws has non-finite values")
    lead = z.shape[:-1]
    if FAMILY[method] == "macenko":
        return {"stain_matrix_target": z[..., 0:6].reshape(lead + (3, 2)) * sigma["matrix_stdev"],
                "target_concentrations": z[..., 6:8] * sigma["concentrations_stdev"]}
    return {"target_means": z[..., 0:3] * sigma["means_stdev"],
            "target_stds": z[..., 3:6] * sigma["stds_stdev"]}


# ----------------------------------------------------------------------------- the class

class StainNormalizer:
    """H&E stain normalizer (spec/stain.md).

    ``method``: 'reinhard' (Reinhard colour transfer in L*a*b* after brightness
    standardization), 'reinhard_fast' (the same without brightness
    standardization) or 'macenko' (Macenko stain separation, with brightness
    standardization).

    ``fit_preset`` (default 'v3') and ``augment_preset`` (default 'v2') pick the
    initial fit and augmentation space. ``on_blank`` says what ``transform`` does
    with an image that has no stain to measure (spec/stain.md, "Blank images"):
    'error' (default) raises :class:`BlankImageError`, 'passthrough' returns that
    image unchanged and counts it in ``blank_count``. ``fit`` always raises.
    Keyword arguments ``**fit_params`` are passed to :meth:`set_fit` after the preset.
    """

    def __init__(self, method: str, *, fit_preset: str = DEFAULT_FIT_PRESET,
                 augment_preset: str = DEFAULT_AUGMENT_PRESET, on_blank: str = "error",
                 **fit_params):
        self._method = _check_method(method)
        if on_blank not in ("error", "passthrough"):
            raise StainNormalizationError(f"on_blank must be 'error' or 'passthrough'; got "
                                          f"{on_blank!r}")
        self.on_blank = on_blank
        self._blank_counters: list = []
        self._blank_count = 0
        self._fit: dict = {}
        self._augment: dict = {}
        self.fit_preset(fit_preset)
        self.augment_preset(augment_preset)
        if fit_params:
            self.set_fit(**fit_params)

    # -- blank counting ----------------------------------------------------

    @property
    def blank_count(self) -> int:
        """Images passed through unchanged as blank (``on_blank='passthrough'``), by this
        normalizer's transform and by every adapter counter added with
        :meth:`add_blank_counter` (spec/stain.md, "Blank images")."""
        return self._blank_count + sum(int(c()) for c in self._blank_counters)

    @blank_count.setter
    def blank_count(self, value: int) -> None:
        self._blank_count = int(value) - sum(int(c()) for c in self._blank_counters)

    def add_blank_counter(self, counter) -> None:
        """Add a zero-argument callable giving the number of blank images an adapter passed
        through itself (e.g. a counter inside a TensorFlow graph); :attr:`blank_count`
        includes it. A pickled or copied normalizer keeps the counts, not the counters."""
        if not callable(counter):
            raise StainNormalizationError("add_blank_counter takes a callable returning an int")
        self._blank_counters.append(counter)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_blank_count"] = self.blank_count
        state["_blank_counters"] = []
        return state

    # -- configuration -----------------------------------------------------

    @property
    def method(self) -> str:
        """The normalization method (read-only)."""
        return self._method

    @property
    def normal_draws(self) -> int:
        """Standard normal variates consumed per image by stain augmentation."""
        return NORMAL_DRAWS[self._method]

    def __repr__(self) -> str:
        fit = ", ".join(f"{k}={_fmt(v)}" for k, v in self._fit.items())
        return f"StainNormalizer({self._method!r}, {fit})"

    def fit_preset(self, name: str) -> "StainNormalizer":
        """Set the fit to a preset ('v1', 'v2', 'v3'; spec/stain.md, "Presets"). Returns self."""
        self._fit = _preset(FIT_PRESETS, self._method, name, "fit")
        return self

    def augment_preset(self, name: str) -> "StainNormalizer":
        """Set the augmentation space to a preset ('v1', 'v2'; spec/stain.md, "Presets"). Returns self."""
        self._augment = _preset(AUGMENT_PRESETS, self._method, name, "augmentation")
        return self

    def get_fit(self, as_list: bool = False) -> dict:
        """The current fit as ``{key: float64 array}`` (copies; spec/stain.md, "Fit parameters");
        ``as_list=True``: nested lists of floats instead of arrays."""
        if as_list:
            return {k: v.tolist() for k, v in self._fit.items()}
        return {k: v.copy() for k, v in self._fit.items()}

    def get_augment(self) -> dict:
        """The augmentation standard deviations as ``{key: float64 array}`` (copies)."""
        return {k: v.copy() for k, v in self._augment.items()}

    def set_fit(self, **params) -> "StainNormalizer":
        """Set some or all fit parameters (spec/stain.md, "Fit parameters"). Returns self.

        Keys: target_means (3,), target_stds (3,) for Reinhard; stain_matrix_target
        (3, 2), target_concentrations (2,) for Macenko. Values must be finite;
        target_stds >= 0 and target_concentrations > 0. Nothing is changed when
        any value is rejected.
        """
        shapes = FIT_SHAPES[self._method]
        new = {}
        for key, value in params.items():
            if key not in shapes:
                raise StainNormalizationError(
                    f"unknown fit parameter {key!r} for method {self._method!r}; valid keys: "
                    f"{', '.join(shapes)}")
            new[key] = _check_values(key, value, shapes[key])
        if "target_stds" in new and np.any(new["target_stds"] < 0):
            raise StainNormalizationError(f"target_stds must be >= 0; got "
                                          f"{_fmt(new['target_stds'])}")
        if "target_concentrations" in new and np.any(new["target_concentrations"] <= 0):
            raise StainNormalizationError(f"target_concentrations must be > 0; got "
                                          f"{_fmt(new['target_concentrations'])}")
        if not new:
            raise StainNormalizationError(f"set_fit needs at least one of: {', '.join(shapes)}")
        self._fit.update(new)
        return self

    def set_augment(self, preset: str | None = None, **stds) -> "StainNormalizer":
        """Set some or all augmentation standard deviations (finite, >= 0). Returns self.

        Keys: means_stdev (3,), stds_stdev (3,) for Reinhard; matrix_stdev (3, 2),
        concentrations_stdev (2,) for Macenko. A zero std leaves that parameter
        unperturbed. ``preset`` ('v1', 'v2') is :meth:`augment_preset`, applied first.
        """
        base = (None if preset is None else
                _preset(AUGMENT_PRESETS, self._method, preset, "augmentation"))
        keys = AUGMENT_KEYS[self._method]
        shapes = FIT_SHAPES[self._method]
        new = {}
        for key, value in stds.items():
            if key not in keys:
                raise StainNormalizationError(
                    f"unknown augmentation parameter {key!r} for method {self._method!r}; "
                    f"valid keys: {', '.join(keys)}")
            arr = _check_values(key, value, shapes[keys[key]])
            if np.any(arr < 0):
                raise StainNormalizationError(f"{key} must be >= 0; got {_fmt(arr)}")
            new[key] = arr
        if not new and base is None:
            raise StainNormalizationError(f"set_augment needs a preset or at least one of: "
                                          f"{', '.join(keys)}")
        if base is not None:
            self._augment = base
        self._augment.update(new)
        return self

    # -- fit ---------------------------------------------------------------

    def fit(self, img=None, *, mask: bool = False, **fit_params) -> "StainNormalizer":
        """Fit the target to an image (HWC uint8) or the mean fit of a batch (NHWC). Returns self.

        spec/stain.md, "Fitting". ``img`` may also be a preset name ('v1', 'v2',
        'v3': :meth:`fit_preset`), the path of a JPEG or PNG file (decoded as
        spec/images.md, "Decode", then fitted), or None with ``**fit_params``
        (:meth:`set_fit`). ``mask=True`` leaves pixels equal to (255, 255, 255)
        in the input out of every statistic. A blank image always raises
        :class:`BlankImageError` (naming its batch index).
        """
        if img is None:
            if not fit_params:
                raise StainNormalizationError(
                    f"fit() of {self._method!r} needs an image (HWC/NHWC uint8 array), a preset "
                    f"name ({', '.join(FIT_PRESETS[self._method])}), an image file path, or "
                    "fit parameters as keywords")
            return self.set_fit(**fit_params)
        if fit_params:
            raise StainNormalizationError(f"fit() takes an image or fit parameters, not both; "
                                          f"got {', '.join(fit_params)}")
        if isinstance(img, os.PathLike):
            img = os.fspath(img)
        if isinstance(img, str):
            if img in FIT_PRESETS[self._method]:
                return self.fit_preset(img)
            if not os.path.isfile(img):
                raise StainNormalizationError(
                    f"fit({img!r}) of {self._method!r}: not a preset "
                    f"({', '.join(FIT_PRESETS[self._method])}) and no such file")
            from .images import decode_image
            with open(img, "rb") as f:
                data = f.read()
            try:
                img = decode_image(data)
            except TFRecordError as e:          # ImageDecodeError
                raise StainNormalizationError(f"fit({img!r}): {e}") from None
        batch, was_batch = _check_image(img, f"fit target of {self._method!r}")
        if batch.shape[0] == 0:
            raise StainNormalizationError("fit target is an empty batch")
        fits = []
        for i, one in enumerate(batch):
            try:
                fits.append(self._fit_one(one, mask))
            except BlankImageError as e:
                raise BlankImageError(e.reason, index=i if was_batch else None) from None
        mean = {k: np.mean([f[k] for f in fits], axis=0) for k in fits[0]}
        return self.set_fit(**mean)

    def _fit_one(self, img: np.ndarray, mask: bool) -> dict:
        brightness = self._method in BRIGHTNESS
        if FAMILY[self._method] == "macenko":
            he, max_c, _ = _macenko_decompose(img, mask=mask, brightness=brightness)
            return {"stain_matrix_target": he, "target_concentrations": max_c}
        return _reinhard_fit_one(img, brightness, mask)

    # -- transform ---------------------------------------------------------

    def transform(self, img, augment: bool = False, *, rng=None, perturbation=None) -> np.ndarray:
        """Normalize an HWC or NHWC uint8 image to the fit; same shape, uint8 (spec/stain.md, "Transform").

        With ``augment=True`` the target of image i is ``fit + delta_i``, with
        ``delta`` either ``perturbation`` (from :func:`draw_stain_perturbation`:
        shapes ``fit shape`` for an HWC image, ``(N,) + fit shape`` for a batch) or
        drawn from ``rng`` (a ``numpy.random.Generator``: one call
        ``rng.standard_normal(k)`` for an image, ``rng.standard_normal((N, k))``
        for a batch, k = ``normal_draws``). Exactly one of the two is required;
        neither may be given with ``augment=False``.
        """
        if not isinstance(img, np.ndarray):
            framework = _framework(img)
            if framework == "torch":
                return self.torch_to_torch(img, augment=augment, rng=rng,
                                           perturbation=perturbation)
            if framework == "tensorflow":
                return self.tf_to_tf(img, augment=augment, rng=rng, perturbation=perturbation)
            if isinstance(img, (bytes, bytearray, memoryview, str)):
                raise StainNormalizationError(
                    f"{self._method!r} transform() takes an image array or tensor, not "
                    f"{type(img).__name__}; use jpeg_to_rgb/png_to_rgb or jpeg_to_jpeg/png_to_png "
                    "for encoded images")
        batch, was_batch = _check_image(img, f"{self._method!r} input")
        n = batch.shape[0]
        deltas = self._deltas(n, was_batch, augment, rng, perturbation)
        out = np.empty_like(batch)
        for i in range(n):
            target = {k: v + deltas[k][i] for k, v in self._fit.items()} if deltas else self._fit
            try:
                out[i] = self._transform_one(batch[i], target)
            except BlankImageError as e:
                if self.on_blank == "passthrough":
                    self.blank_count += 1
                    out[i] = batch[i]
                else:
                    raise BlankImageError(
                        e.reason + " (StainNormalizer(on_blank='passthrough') leaves such "
                        "images unchanged)", index=i if was_batch else None) from None
        return out if was_batch else out[0]

    def _transform_one(self, img: np.ndarray, target: dict) -> np.ndarray:
        brightness = self._method in BRIGHTNESS
        if FAMILY[self._method] == "macenko":
            return _macenko_transform_one(img, target["stain_matrix_target"],
                                          target["target_concentrations"], brightness)
        return _reinhard_transform_one(img, brightness, target["target_means"],
                                       target["target_stds"], self._method in MASKED)

    # -- slideflow's entry points (spec/stain.md, "Entry points") ----------

    def rgb_to_rgb(self, image, augment: bool = False, *, rng=None, perturbation=None):
        """:meth:`transform` of an HWC or NHWC uint8 array (spec/stain.md, "Entry points")."""
        if not isinstance(image, np.ndarray):
            raise StainNormalizationError(
                f"{self._method!r} rgb_to_rgb takes a numpy uint8 array (HWC or NHWC); got "
                f"{type(image).__name__}")
        return self.transform(image, augment, rng=rng, perturbation=perturbation)

    def _decode(self, data, entry: str) -> np.ndarray:
        from .images import decode_image
        if isinstance(data, str):
            raise StainNormalizationError(
                f"{self._method!r} {entry} takes JPEG or PNG bytes; got a str (use fit(path) "
                "or read the file's bytes)")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise StainNormalizationError(f"{self._method!r} {entry} takes JPEG or PNG bytes; got "
                                          f"{type(data).__name__}")
        try:
            return decode_image(bytes(data))
        except TFRecordError as e:              # ImageDecodeError
            raise StainNormalizationError(f"{self._method!r} {entry}: {e}") from None

    def jpeg_to_rgb(self, data, augment: bool = False, *, rng=None, perturbation=None):
        """Decode JPEG (or PNG) bytes (spec/images.md, "Decode") and normalize: HWC uint8."""
        return self.transform(self._decode(data, "jpeg_to_rgb"), augment, rng=rng,
                              perturbation=perturbation)

    def png_to_rgb(self, data, augment: bool = False, *, rng=None, perturbation=None):
        """Decode PNG (or JPEG) bytes (spec/images.md, "Decode") and normalize: HWC uint8."""
        return self.transform(self._decode(data, "png_to_rgb"), augment, rng=rng,
                              perturbation=perturbation)

    def jpeg_to_jpeg(self, data, augment: bool = False, *, quality: int = 100, rng=None,
                     perturbation=None) -> bytes:
        """:meth:`jpeg_to_rgb`, encoded as baseline 4:2:0 JPEG at ``quality`` (default 100,
        as slideflow; spec/images.md, "JPEG")."""
        from .ops import jpeg_encode
        return jpeg_encode(self.jpeg_to_rgb(data, augment, rng=rng, perturbation=perturbation),
                           quality)

    def png_to_png(self, data, augment: bool = False, *, rng=None, perturbation=None) -> bytes:
        """:meth:`png_to_rgb`, encoded as PNG (lossless: decoding gives the normalized array)."""
        import io

        from PIL import Image
        out = self.png_to_rgb(data, augment, rng=rng, perturbation=perturbation)
        buf = io.BytesIO()
        Image.fromarray(out, "RGB").save(buf, format="PNG")
        return buf.getvalue()

    def _perturbation(self, n: int, batch: bool, augment: bool, rng, perturbation):
        """The perturbation dict :meth:`transform` would apply (rng drawn the same way), or None."""
        self._deltas(n, batch, augment, None if rng is None else _NoDraw, perturbation)
        if rng is not None:
            return draw_stain_perturbation(
                self, rng.standard_normal((n, self.normal_draws) if batch else self.normal_draws))
        return perturbation

    def torch_to_torch(self, image, *args, augment: bool = False, rng=None, perturbation=None):
        """Normalize a torch tensor, returned in its layout and dtype (spec/stain.md, "Entry points").

        ``image``: uint8 CHW, HWC, NCHW or NHWC (channels first when the channel axis,
        0 or 1, has 3 entries, as slideflow's ``is_cwh``; else channels last), or a
        floating tensor of whole numbers in 0..255 of those layouts; or a dict whose
        'tile_image' is one. The pixels go through the torch adapter
        (``tilespec_torch.stain.transform``; the reference when it is not installed).
        Extra positional ``args`` come back unchanged: ``(image, *args)``.
        """
        if isinstance(image, dict) and "tile_image" in image:
            out = dict(image)
            out["tile_image"] = self.torch_to_torch(image["tile_image"], augment=augment, rng=rng,
                                                    perturbation=perturbation)
            return (out, *args) if args else out
        import torch
        if not isinstance(image, torch.Tensor):
            raise StainNormalizationError(f"{self._method!r} torch_to_torch takes a torch tensor; "
                                          f"got {type(image).__name__}")
        channels_first = _channels_first(image, self._method, "torch_to_torch")
        x = _whole_uint8(image, self._method, "torch_to_torch", torch)
        batch = x.dim() == 4
        chw = x if channels_first else x.permute((0, 3, 1, 2) if batch else (2, 0, 1))
        delta = self._perturbation(chw.shape[0] if batch else 1, batch, augment, rng,
                                   perturbation)
        try:
            from tilespec_torch import stain as torch_stain
        except ImportError:
            torch_stain = None
        if torch_stain is not None:
            out = torch_stain.transform(self, chw.contiguous(), perturbation=delta)
        else:
            hwc = chw.permute((0, 2, 3, 1) if batch else (1, 2, 0)).numpy()
            res = self.transform(np.ascontiguousarray(hwc), delta is not None,
                                 perturbation=delta)
            out = torch.from_numpy(res).permute((0, 3, 1, 2) if batch else (2, 0, 1))
        if not channels_first:
            out = out.permute((0, 2, 3, 1) if batch else (1, 2, 0))
        out = out.contiguous().to(image.dtype)
        return (out, *args) if args else out

    def tf_to_tf(self, image, *args, augment: bool = False, rng=None, perturbation=None):
        """Normalize an HWC or NHWC ``tf.uint8`` tensor with TensorFlow ops
        (``tilespec_tf.stain.transform``; works eagerly and in graphs), or a dict whose
        'tile_image' is one (spec/stain.md, "Entry points"). Extra positional ``args``
        come back unchanged: ``(image, *args)``."""
        if isinstance(image, dict) and "tile_image" in image:
            out = dict(image)
            out["tile_image"] = self.tf_to_tf(image["tile_image"], augment=augment, rng=rng,
                                              perturbation=perturbation)
            return (out, *args) if args else out
        from tilespec_tf import stain as tf_stain
        shape = getattr(image, "shape", None)
        rank = None if shape is None else len(shape)
        n = int(shape[0]) if rank == 4 and shape[0] is not None else 1
        delta = self._perturbation(n, rank == 4, augment, rng, perturbation)
        out = tf_stain.transform(self, image, perturbation=delta)
        return (out, *args) if args else out

    def tf_to_rgb(self, image, augment: bool = False, *, rng=None, perturbation=None):
        """An eager HWC or NHWC ``tf.uint8`` tensor normalized by the reference: a numpy
        uint8 array (spec/stain.md, "Entry points")."""
        if _framework(image) != "tensorflow" or not hasattr(image, "numpy"):
            raise StainNormalizationError(f"{self._method!r} tf_to_rgb takes an eager TensorFlow "
                                          f"tensor; got {type(image).__name__}")
        return self.transform(image.numpy(), augment, rng=rng, perturbation=perturbation)

    def deltas(self, n: int, batch: bool, augment: bool = False, *, rng=None,
               perturbation=None):
        """The per-image target deltas :meth:`transform` would use for ``n`` images, validated
        as it validates them (spec/stain.md, "Stain augmentation").

        ``batch``: whether the input is a batch (NHWC; perturbation shapes ``(n,) + fit
        shape``) or one image (``n == 1``; fit shapes). Returns None without ``augment``,
        else ``{fit key: float64 array (n,) + fit shape}`` (zeros for a key missing from
        ``perturbation``); image i's target is ``fit[key] + deltas[key][i]``. Raises
        :class:`StainNormalizationError` with transform's messages. For adapters that
        apply the transform themselves.
        """
        return self._deltas(n, batch, augment, rng, perturbation)

    def _deltas(self, n, was_batch, augment, rng, perturbation):
        if not augment:
            if rng is not None or perturbation is not None:
                raise StainNormalizationError("rng and perturbation are only used with "
                                              "augment=True")
            return None
        if (rng is None) == (perturbation is None):
            raise StainNormalizationError(
                "augment=True needs exactly one of rng (a numpy.random.Generator) or "
                "perturbation (from draw_stain_perturbation); no global random state is used")
        if rng is _NoDraw:                     # validation only (see _perturbation)
            return None
        if rng is not None:
            if not isinstance(rng, np.random.Generator):
                raise StainNormalizationError(f"rng must be a numpy.random.Generator; got "
                                              f"{type(rng).__name__}")
            z = rng.standard_normal((n, self.normal_draws) if was_batch else self.normal_draws)
            perturbation = draw_stain_perturbation(self, z)
        if not isinstance(perturbation, dict):
            raise StainNormalizationError(f"perturbation must be a dict of fit-key deltas; got "
                                          f"{type(perturbation).__name__}")
        shapes = FIT_SHAPES[self._method]
        deltas = {}
        for key, value in perturbation.items():
            if key not in shapes:
                raise StainNormalizationError(
                    f"unknown perturbation key {key!r} for method {self._method!r}; valid keys: "
                    f"{', '.join(shapes)}")
            shape = ((n,) if was_batch else ()) + shapes[key]
            arr = _check_values(f"perturbation[{key!r}]", value, shape)
            deltas[key] = arr if was_batch else arr[None]
        for key, shape in shapes.items():
            deltas.setdefault(key, np.zeros((n,) + shape))
        return deltas


_NoDraw = object()


def _framework(x) -> str | None:
    """'torch' or 'tensorflow' for their tensors (never importing either), else None."""
    module = type(x).__module__ or ""
    if module.startswith("torch") and "torch" in sys.modules:
        return "torch"
    if module.startswith(("tensorflow", "tf_keras", "keras")) and "tensorflow" in sys.modules:
        return "tensorflow"
    return None


_ACCEPTED = ("uint8 (or floating with whole values in 0..255) of shape (3, H, W), (H, W, 3), "
             "(N, 3, H, W) or (N, H, W, 3)")


def _channels_first(image, method, entry) -> bool:
    shape = tuple(image.shape)
    if len(shape) == 3 and (shape[0] == 3 or shape[-1] == 3):
        return shape[0] == 3
    if len(shape) == 4 and (shape[1] == 3 or shape[-1] == 3):
        return shape[1] == 3
    raise StainNormalizationError(f"{method!r} {entry}: input of shape {shape} and dtype "
                                  f"{image.dtype}; accepted: {_ACCEPTED}")


def _whole_uint8(image, method, entry, torch):
    """A uint8 tensor with the pixels of ``image``: uint8 as is; floating only when every
    value is a whole number in 0..255 (converted exactly)."""
    if image.dtype == torch.uint8:
        return image
    bad = None
    if image.is_floating_point():
        if image.numel() and not bool(((image >= 0) & (image <= 255) &
                                       (image == torch.round(image))).all()):
            lo, hi = float(image.min()), float(image.max())
            bad = f"values from {lo:g} to {hi:g}, not all whole numbers in 0..255"
        else:
            return image.to(torch.uint8)
    where = f" ({bad})" if bad else ""
    raise StainNormalizationError(f"{method!r} {entry}: input of shape {tuple(image.shape)} and "
                                  f"dtype {image.dtype}{where}; accepted: {_ACCEPTED}")


def autoselect(method: str, source=None, backend: str | None = None, **fit_params):
    """A :class:`StainNormalizer` for ``method``, fitted to ``source`` when given (a preset
    name or an image path/array, as :meth:`StainNormalizer.fit`), like slideflow's
    ``sf.norm.autoselect`` (spec/stain.md, "Entry points").

    ``backend`` ('tensorflow', 'torch', 'opencv', 'numpy' or None) is checked and
    otherwise unused: one normalizer serves every loader, each adapter running it with
    its own ops. ``fit_params`` go to the constructor (:meth:`StainNormalizer.set_fit`).
    """
    if backend not in (None, "tensorflow", "torch", "opencv", "numpy"):
        raise StainNormalizationError(f"unknown backend {backend!r}; valid: 'tensorflow', "
                                      "'torch', 'opencv', 'numpy' or None")
    norm = StainNormalizer(method, **fit_params)
    if source is not None and source != "dataset":
        norm.fit(source)
    return norm


def _check_values(key: str, value, shape) -> np.ndarray:
    try:
        arr = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise StainNormalizationError(f"{key} must be numeric; got {value!r}") from None
    if arr.shape != tuple(shape):
        raise StainNormalizationError(f"{key} must have shape {tuple(shape)}; got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise StainNormalizationError(f"{key} has non-finite values: {_fmt(arr)}")
    return arr


__all__ = ["StainNormalizer", "autoselect", "background_mask", "draw_stain_perturbation", "standardize_brightness",
           "lab_mean_std", "optical_density", "StainNormalizationError", "BlankImageError",
           "METHODS", "FAMILY", "BRIGHTNESS", "MASKED", "MASK_L_THRESHOLD", "FIT_SHAPES", "AUGMENT_KEYS", "NORMAL_DRAWS", "FIT_PRESETS",
           "AUGMENT_PRESETS", "DEFAULT_FIT_PRESET", "DEFAULT_AUGMENT_PRESET",
           "BLANK_REASONS", "BRIGHTNESS_PERCENTILE", "MACENKO_ALPHA", "MACENKO_BETA", "MACENKO_IO",
           "MACENKO_MAXC_PERCENTILE", "MACENKO_ORDER_TIE", "MIN_EIGENVALUE", "MIN_LAB_STD",
           "MIN_TISSUE_PIXELS"]
