"""Colour conversions: sRGB <-> linear RGB <-> CIE XYZ (D65) <-> CIE L*a*b* (spec/stain.md, "Colour conversions").

Every function is vectorized over any leading dimensions (HWC, NHWC, a list
of pixels ``(..., 3)``) and computes in float64. RGB inputs are either uint8
(0..255, divided by 255) or floating point in nominal [0, 1]; outputs of the
inverse conversions are float64 and are *not* clipped, so out-of-gamut colours
survive a round trip. :func:`to_uint8` is the one place a float image becomes
uint8: scaled by 255, rounded to nearest (ties to even) and clipped to [0, 255].

The matrix from linear sRGB to XYZ is derived from the sRGB primaries and the
D65 white point used by the L*a*b* conversion, so white maps to exactly
L* = 100, a* = b* = 0 (up to float64 rounding).
"""

from __future__ import annotations

import numpy as np

#: D65 reference white, CIE 1931 2-degree observer, normalized to Y = 1.
D65_WHITE = np.array([0.95047, 1.0, 1.08883])

#: sRGB primaries (x, y chromaticities) of red, green and blue (IEC 61966-2-1).
SRGB_PRIMARIES_XY = np.array([[0.64, 0.33], [0.30, 0.60], [0.15, 0.06]])


def _rgb_to_xyz_matrix(primaries_xy: np.ndarray, white: np.ndarray) -> np.ndarray:
    """The 3x3 matrix M with XYZ = M @ rgb_linear whose columns are the primaries
    scaled so that rgb = (1, 1, 1) maps to ``white``."""
    x, y = primaries_xy[:, 0], primaries_xy[:, 1]
    unscaled = np.stack([x / y, np.ones(3), (1.0 - x - y) / y])   # column j: primary j, Y = 1
    scale = np.linalg.solve(unscaled, white)
    return unscaled * scale


#: Linear sRGB -> XYZ (rows X, Y, Z; columns R, G, B).
SRGB_TO_XYZ = _rgb_to_xyz_matrix(SRGB_PRIMARIES_XY, D65_WHITE)
#: XYZ -> linear sRGB, the exact inverse of :data:`SRGB_TO_XYZ` in float64.
XYZ_TO_SRGB = np.linalg.inv(SRGB_TO_XYZ)

#: CIE constants of the L*a*b* companding, exact fractions (not 0.008856 / 903.3).
LAB_EPSILON = 216.0 / 24389.0          # (6/29)^3
LAB_KAPPA = 24389.0 / 27.0             # (29/3)^3
LAB_DELTA = 6.0 / 29.0                 # cube root of LAB_EPSILON

#: sRGB companding constants.
SRGB_DECODE_THRESHOLD = 0.04045        # on encoded values
SRGB_ENCODE_THRESHOLD = 0.0031308      # on linear values


def _check_last_axis(arr: np.ndarray, what: str) -> None:
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"{what} must have 3 channels in its last axis; got shape {arr.shape}")


def _as_unit_rgb(rgb) -> np.ndarray:
    """uint8 -> float64 / 255; floating -> float64 as is; anything else is an error."""
    arr = np.asarray(rgb)
    _check_last_axis(arr, "RGB input")
    if arr.dtype == np.uint8:
        return arr.astype(np.float64) / 255.0
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float64)
    raise TypeError(f"RGB input must be uint8 (0..255) or floating point (0..1); got dtype "
                    f"{arr.dtype}")


def _as_float3(values, what: str) -> np.ndarray:
    arr = np.asarray(values)
    _check_last_axis(arr, what)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f"{what} must be numeric; got dtype {arr.dtype}")
    return arr.astype(np.float64)


def srgb_to_linear(c) -> np.ndarray:
    """Decode sRGB values in [0, 1]: c / 12.92 where c <= 0.04045, else ((c + 0.055) / 1.055)^2.4."""
    c = np.asarray(c, dtype=np.float64)
    out = np.divide(c, 12.92, out=np.empty_like(c))   # an array even for 0-d input
    high = c > SRGB_DECODE_THRESHOLD          # each branch is evaluated only where it is taken
    out[high] = np.power((c[high] + 0.055) / 1.055, 2.4)
    return out


#: srgb_to_linear(v / 255) for v = 0..255: the same values, looked up for uint8 input.
_SRGB_U8_TO_LINEAR = srgb_to_linear(np.arange(256) / 255.0)
_SRGB_U8_TO_LINEAR.setflags(write=False)


def linear_to_srgb(v) -> np.ndarray:
    """Encode linear values: 12.92 v where v <= 0.0031308, else 1.055 v^(1/2.4) - 0.055.

    Defined for every real v (negative values take the linear branch), so no
    clipping happens here.
    """
    v = np.asarray(v, dtype=np.float64)
    out = np.multiply(12.92, v, out=np.empty_like(v))
    high = v > SRGB_ENCODE_THRESHOLD          # each branch is evaluated only where it is taken
    out[high] = 1.055 * np.power(v[high], 1.0 / 2.4) - 0.055
    return out


def rgb_to_xyz(rgb) -> np.ndarray:
    """sRGB (uint8 or float in [0, 1]) -> CIE XYZ (D65, Y of white = 1), float64."""
    arr = np.asarray(rgb)
    if arr.dtype == np.uint8:
        _check_last_axis(arr, "RGB input")
        lin = _SRGB_U8_TO_LINEAR[arr]         # the same values as srgb_to_linear(arr / 255)
    else:
        lin = srgb_to_linear(_as_unit_rgb(arr))
    return lin @ SRGB_TO_XYZ.T


def xyz_to_rgb(xyz) -> np.ndarray:
    """CIE XYZ -> sRGB as float64 in nominal [0, 1], not clipped."""
    lin = _as_float3(xyz, "XYZ input") @ XYZ_TO_SRGB.T
    return linear_to_srgb(lin)


def _lab_f(t: np.ndarray) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    out = np.cbrt(t, out=np.empty_like(t))
    low = ~(t > LAB_EPSILON)                  # the linear branch, only where it is taken
    out[low] = (LAB_KAPPA * t[low] + 16.0) / 116.0
    return out


def _lab_f_inv(u: np.ndarray) -> np.ndarray:
    u = np.asarray(u, dtype=np.float64)
    out = np.multiply(116.0, u, out=np.empty_like(u))
    out -= 16.0
    out /= LAB_KAPPA
    high = u > LAB_DELTA                      # the cube, only where it is taken
    out[high] = u[high] ** 3
    return out


def xyz_to_lab(xyz) -> np.ndarray:
    """CIE XYZ -> CIE L*a*b* relative to :data:`D65_WHITE`, float64."""
    f = _lab_f(_as_float3(xyz, "XYZ input") / D65_WHITE)
    fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def lab_to_xyz(lab) -> np.ndarray:
    """CIE L*a*b* -> CIE XYZ (D65), float64; the exact inverse of :func:`xyz_to_lab`."""
    lab = _as_float3(lab, "L*a*b* input")
    fy = (lab[..., 0] + 16.0) / 116.0
    fx = fy + lab[..., 1] / 500.0
    fz = fy - lab[..., 2] / 200.0
    return _lab_f_inv(np.stack([fx, fy, fz], axis=-1)) * D65_WHITE


def rgb_to_lab(rgb) -> np.ndarray:
    """sRGB (uint8 0..255 or float 0..1; HWC, NHWC or (..., 3)) -> L*a*b*, float64.

    spec/stain.md, "Colour conversions". L* is in [0, 100] for in-gamut colours.
    """
    return xyz_to_lab(rgb_to_xyz(rgb))


def lab_to_rgb(lab) -> np.ndarray:
    """L*a*b* -> sRGB as float64 in nominal [0, 1], not clipped (spec/stain.md, "Colour conversions")."""
    return xyz_to_rgb(lab_to_xyz(lab))


def to_uint8(rgb01) -> np.ndarray:
    """Float sRGB in nominal [0, 1] -> uint8: clip(rint(255 * x), 0, 255) (spec/stain.md, "Rounding").

    NaN is an error (it has no nearest grey level).
    """
    x = np.asarray(rgb01, dtype=np.float64) * 255.0
    if np.isnan(x).any():
        raise ValueError("image has NaN values; cannot convert to uint8")
    np.rint(x, out=x)
    np.clip(x, 0, 255, out=x)
    return x.astype(np.uint8)


__all__ = ["rgb_to_lab", "lab_to_rgb", "rgb_to_xyz", "xyz_to_rgb", "xyz_to_lab", "lab_to_xyz",
           "srgb_to_linear", "linear_to_srgb", "to_uint8", "D65_WHITE", "SRGB_PRIMARIES_XY",
           "SRGB_TO_XYZ", "XYZ_TO_SRGB", "LAB_EPSILON", "LAB_KAPPA", "LAB_DELTA",
           "SRGB_ENCODE_THRESHOLD", "SRGB_DECODE_THRESHOLD"]
