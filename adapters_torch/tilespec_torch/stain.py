"""Stain normalization on torch tensors (spec/stain.md; spec/adapter_torch.md, "Ops").

:func:`transform` is the torch form of :meth:`tilespec.StainNormalizer.transform`
for CHW / NCHW ``torch.uint8`` tensors. It takes the reference's normalizer (its
method, fit, augmentation space, ``on_blank`` and ``blank_count``) and follows
the reference's formulas in the reference's order:

* Colour conversions (:func:`rgb_to_lab`, :func:`lab_to_rgb`, :func:`to_uint8`)
  use the reference's matrices and constants (:mod:`tilespec.colour`).
* Brightness standardization (:func:`standardize_brightness`): the 90th
  percentile of a uint8 image is read off its histogram (NumPy's linear
  interpolation, operation for operation), and the rescaling is a table of the
  256 levels made by the reference's own ``to_uint8``: bit-exact.
* Optical densities are a table of the 256 levels made by the reference's
  ``optical_density`` (exact), and so is the tissue test.
* Per-pixel arithmetic (L*a*b*, projections, least squares, reconstruction)
  runs in ``dtype`` (default :data:`DTYPE`, float32) on chunks of the batch;
  per-image statistics per image: L*a*b* means and stds, the optical-density
  covariance (float64), its eigenvectors (``torch.linalg.eigh``, float64), the
  angle and concentration percentiles (NumPy's linear interpolation).

Fitting stays with the reference (``StainNormalizer.fit``). Methods: 'reinhard',
'reinhard_fast', 'macenko' and 'macenko_fast' (Macenko without brightness
standardization) in torch ops; 'reinhard_mask' and 'reinhard_fast_mask' are handed
to the reference's transform image by image (spec/adapter_torch.md, "Ops").

Blank images (spec/stain.md, "Blank images") and edges. Images that are
certainly blank (Reinhard: a single colour; Macenko: rule (a), an exact count)
are, with ``on_blank='passthrough'``, returned unchanged and counted in
``normalizer.blank_count``. Every other image that a blank rule could catch, or
whose normalization would magnify float32 rounding (an L*a*b* std or a 99th
percentile concentration under 1/100 of its target, or Macenko stain vectors whose red
components, which order H and E, are within 1e-5), is handed to the reference's
transform, as are all blank images with ``on_blank='error'``: the reference then
raises its own :class:`~tilespec.stain.BlankImageError` (its message, with the
batch index), counts a passthrough, or returns its result. So blank decisions and
messages are the reference's, and such images are normalized exactly as the
reference does, at the reference's speed. (So is an image whose 2x2 normal
equations are singular.)

Scratch tensors are kept between calls (:class:`_Workspace`), a few MiB per thread.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch

from tilespec import colour as _colour
from tilespec import stain as _stain
from tilespec.stain import BlankImageError, StainNormalizationError

from .checks import check_image as _check_image

#: Float type of the per-pixel arithmetic (float32 meets spec/stain.md, "Conformance
#: (adapters)", and is about twice as fast as float64).
DTYPE = torch.float32
#: Images are transformed in groups of at most this many pixels (one image at least).
CHUNK_PIXELS = 1 << 16
#: Scratch tensors of up to this many elements are kept for the next call (per thread);
#: with the default chunk they hold about 6 MiB.
WORKSPACE_LIMIT = 3 << 18

# Images at the edge of a blank rule, or whose normalization would magnify float32
# rounding, go to the reference (module docstring): an L*a*b* std at most _EDGE_LAB_STD or
# under 1/_EDGE_GAIN of its target std; a second covariance eigenvalue at most
# _EDGE_EIGENVALUE; a 99th-percentile concentration at most _EDGE_CONCENTRATION or under
# 1/_EDGE_GAIN of its target. (float32 L*a*b* values are within 1e-4 of the reference's;
# at a gain of 100 that is 0.01 L*a*b* units. The covariance is float64.)
_EDGE_LAB_STD = 1e-3
_EDGE_GAIN = 100.0
_EDGE_EIGENVALUE = 10 * _stain.MIN_EIGENVALUE
_EDGE_CONCENTRATION = 1e-3
# ... and Macenko stain vectors whose red components (which order H and E) are within
# _EDGE_ORDER of each other: float32 angles (about 1e-7 rad off) could swap H and E there
# (a 1 x 11 nearly black image, red OD equal in every pixel, was 97 grey levels off).
_EDGE_ORDER = 1e-5

# ----------------------------------------------------------------------------- tables
# Computed once, in float64, by the reference's own functions.

_LEVELS = np.arange(256, dtype=np.uint8)
_LEVELS_F = _LEVELS.astype(np.float64)
#: sRGB decoding of each uint8 level (the values the reference looks up).
_LINEAR = _colour.srgb_to_linear(_LEVELS_F / 255.0)
#: Optical density of each level, and whether a channel at that level is tissue (OD >= beta).
_OD = _stain.optical_density(_LEVELS)
_OD_TISSUE = _OD >= _stain.MACENKO_BETA
#: Linear sRGB -> (X/Xn, Y/Yn, Z/Zn), and its inverse (the white folded into the matrices).
_RGB_TO_XYZN = _colour.SRGB_TO_XYZ / _colour.D65_WHITE[:, None]
_XYZN_TO_RGB = _colour.XYZ_TO_SRGB * _colour.D65_WHITE[None, :]

_EPS, _KAPPA, _DELTA = _colour.LAB_EPSILON, _colour.LAB_KAPPA, _colour.LAB_DELTA
_ENC = _colour.SRGB_ENCODE_THRESHOLD


@functools.lru_cache(maxsize=None)
def _const(name: str, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(globals()[name], dtype=dtype)


def _tensor(a, dtype) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=dtype)


# ----------------------------------------------------------------------------- checks

def _check_float(x, what) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{what} must be a floating-point torch tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}")
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"{what} must be CHW or NCHW (channel axis 3), got shape "
                         f"{tuple(x.shape)}")
    return x


def _check_dtype(dtype) -> torch.dtype:
    dtype = DTYPE if dtype is None else dtype
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


# ----------------------------------------------------------------------------- percentiles

def _lerp(a: float, b: float, t: float) -> float:
    """NumPy's percentile interpolation, operation for operation (from the nearer end)."""
    d = b - a
    return b - d * (1.0 - t) if t >= 0.5 else a + d * t


def _position(n: int, q: float):
    """(lower rank, upper rank, weight) of NumPy's 'linear' q-th percentile of n values."""
    pos = (n - 1) * (q / 100.0)
    if pos >= n - 1:
        return n - 1, n - 1, 0.0
    lo = math.floor(pos)
    return lo, lo + 1, pos - lo


def _hist_percentile(counts: np.ndarray, q: float) -> float:
    """q-th percentile of the values whose histogram over the levels 0..255 is ``counts``."""
    cum = np.cumsum(counts)
    lo, hi, t = _position(int(cum[-1]), q)
    a, b = np.searchsorted(cum, [lo, hi], side="right")   # the level of each rank
    return _lerp(float(a), float(b), t)


#: Sample size of :func:`_tail`'s first look.
_TAIL_SAMPLE = 2048


def _tail(x: torch.Tensor, k: int, largest: bool, mask=None, scratch=None) -> torch.Tensor:
    """The k largest (or smallest) values of a 1-D tensor, of those where ``mask`` is set
    when given, sorted from the extreme.

    topk over all values is slow on CPU, so a strided sample first gives a threshold
    that some more than k values pass; the k values are taken from those that pass
    when at least k do (then they hold the k wanted), else from all of them.
    """
    n = x.numel()
    if n >= 4 * _TAIL_SAMPLE and n > 16 * k:
        stride = n // _TAIL_SAMPLE
        sample = x[::stride] if mask is None else x[::stride][mask[::stride]]
        m = sample.numel()
        count = n if mask is None else int(mask.sum())
        r = min(m, int(k * m / count * 1.25) + 8)
        if m:
            thr = float(torch.topk(sample, r, largest=largest, sorted=True).values[-1])
            keep = (x >= thr) if largest else (x <= thr)
            if mask is not None:
                keep &= mask
            passed = x[keep]
            if passed.numel() >= k:
                return torch.topk(passed, k, largest=largest, sorted=True).values
    if mask is not None:     # the others sort past the end of the tail taken
        x = scratch.copy_(x).masked_fill_(~mask, -math.inf if largest else math.inf)
    return torch.topk(x, k, largest=largest, sorted=True).values


def _percentile(x: torch.Tensor, q: float, mask=None, n=None, scratch=None) -> float:
    """q-th percentile (NumPy's linear interpolation) of a 1-D float tensor, or of its
    ``n`` elements where ``mask`` (bool) is set (``scratch``: a tensor like x). The two
    ranks needed come from the nearer tail, not a sort."""
    if mask is None:
        n = x.numel()
    lo, hi, t = _position(n, q)
    if hi < n // 2:          # the hi + 1 smallest values
        v = _tail(x, hi + 1, False, mask, scratch)
        a, b = float(v[lo]), float(v[hi])
    else:                    # the n - lo largest values
        v = _tail(x, n - lo, True, mask, scratch)
        a, b = float(v[n - 1 - lo]), float(v[n - 1 - hi])
    return _lerp(a, b, t)


# ----------------------------------------------------------------------------- scratch memory

class _Workspace(threading.local):
    """Scratch tensors kept between calls, per thread and per slot.

    A fresh large tensor is mapped page by page on first touch; on the development VM
    those page faults tripled the cost of a transform whenever the allocator had
    handed its free memory back to the system. Buffers up to :data:`WORKSPACE_LIMIT`
    elements are kept and reused; larger ones are allocated for the call only.
    """

    def __init__(self):
        self.buffers = {}

    def take(self, slot: str, shape, dtype) -> torch.Tensor:
        n = math.prod(shape)
        buf = self.buffers.get((slot, dtype))
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=dtype)
            if n <= WORKSPACE_LIMIT:
                self.buffers[(slot, dtype)] = buf
        return buf[:n].view(shape)


_WORKSPACE = _Workspace()


def _fresh(slot, shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


# ----------------------------------------------------------------------------- colour
# The conversions write into scratch tensors of lin's shape, taken from ``take(slot,
# shape, dtype)`` (the workspace, or fresh tensors for the public functions).

def _flat(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> (..., 3, H*W)."""
    return x.reshape(x.shape[:-2] + (x.shape[-2] * x.shape[-1],))


def _above(x: torch.Tensor, threshold: float, out: torch.Tensor) -> torch.Tensor:
    """1.0 where x > threshold, else 0.0, in x's dtype. (x - threshold is exactly 0 only
    when x == threshold, so ceil(clip(x - threshold, 0, 1)) is the comparison; on CPU it
    is several times faster than a comparison and a cast.)"""
    return torch.sub(x, threshold, out=out).clamp_(0.0, 1.0).ceil_()


def _select(mask, high, low, out) -> torch.Tensor:
    """high where mask is 1, low where it is 0 (both finite): lerp gives its end point
    exactly at weight 1 and its start at weight 0, and is vectorized, unlike torch.where."""
    return torch.lerp(low, high, mask, out=out)


def _linear_to_lab(lin: torch.Tensor, take) -> torch.Tensor:
    """Linear sRGB (..., 3, P), >= 0, in take('a') -> L*a*b* in take('b'); overwrites
    the slots a to d."""
    shape, dt = lin.shape, lin.dtype
    a, b, c, d = (take(k, shape, dt) for k in "abcd")
    t = torch.matmul(_const("_RGB_TO_XYZN", dt), lin, out=b)          # X/Xn, Y/Yn, Z/Zn
    # f(t): t^(1/3) above epsilon (as exp(ln t / 3): pow with a fractional exponent is
    # over twice as slow), else (kappa t + 16) / 116
    torch.log(t, out=c).mul_(1.0 / 3.0).exp_()
    _above(t, _EPS, d)
    t.mul_(_KAPPA).add_(16.0).div_(116.0)
    f = _select(d, c, t, out=a)
    fx, fy, fz = f.unbind(-2)
    L, A, B = b.unbind(-2)
    torch.mul(fy, 116.0, out=L).sub_(16.0)
    torch.sub(fx, fy, out=A).mul_(500.0)
    torch.sub(fy, fz, out=B).mul_(200.0)
    return b


def _lab_to_srgb(lab: torch.Tensor, take) -> torch.Tensor:
    """L*a*b* (..., 3, P) in take('b') -> sRGB in nominal [0, 1], not clipped, in
    take('b'); overwrites the slots a to d."""
    shape, dt = lab.shape, lab.dtype
    a, b, c, d = (take(k, shape, dt) for k in "abcd")
    L, A, B = lab.unbind(-2)
    fx, fy, fz = c.unbind(-2)
    torch.add(L, 16.0, out=fy).div_(116.0)                   # fy = (L* + 16) / 116
    torch.div(A, 500.0, out=fx).add_(fy)                     # fx = fy + a* / 500
    torch.div(B, -200.0, out=fz).add_(fy)                    # fz = fy - b* / 200
    # f^-1(u): u^3 above delta, else (116 u - 16) / kappa; times the white (in the matrix)
    _above(c, _DELTA, d)
    torch.mul(c, c, out=a).mul_(c)
    c.mul_(116.0).sub_(16.0).div_(_KAPPA)
    xyzn = _select(d, a, c, out=b)
    lin = torch.matmul(_const("_XYZN_TO_RGB", dt), xyzn, out=a)
    # sRGB encoding: 12.92 v at or below 0.0031308, else 1.055 v^(1/2.4) - 0.055
    torch.clamp(lin, min=_ENC, out=c).log_().mul_(1.0 / 2.4).exp_().mul_(1.055).sub_(0.055)
    _above(lin, _ENC, d)
    lin.mul_(12.92)
    return _select(d, c, lin, out=b)


def _to_uint8_into(x: torch.Tensor, out: torch.Tensor) -> None:
    """x on the 0..255 scale -> uint8 ``out``, rounding x in place (ties to even). NaN is
    an error, with the reference's message."""
    if not torch.isfinite(x.sum()) and torch.isnan(x).any():   # the sum: a cheap first look
        raise ValueError("image has NaN values; cannot convert to uint8")
    out.copy_(x.round_().clamp_(0, 255))


def rgb_to_lab(img, dtype=None) -> torch.Tensor:
    """uint8 sRGB image (CHW or NCHW) -> CIE L*a*b* (D65), same shape, in ``dtype``
    (default :data:`DTYPE`) (spec/stain.md, "Colour conversions")."""
    _check_image(img)
    dtype = _check_dtype(dtype)
    x = _flat(img)
    lin = torch.index_select(_const("_LINEAR", dtype), 0, x.reshape(-1).long(),
                             out=_fresh("a", x.shape, dtype).view(-1)).view(x.shape)
    return _linear_to_lab(lin, _fresh_like(a=lin)).reshape(img.shape)


def lab_to_rgb(lab) -> torch.Tensor:
    """CIE L*a*b* (CHW or NCHW, float32 or float64) -> sRGB in nominal [0, 1], not
    clipped, same dtype (spec/stain.md, "Colour conversions")."""
    _check_float(lab, "L*a*b* input")
    _check_dtype(lab.dtype)
    x = _flat(lab).clone()
    return _lab_to_srgb(x, _fresh_like(b=x)).reshape(lab.shape)


def _fresh_like(**given):
    """A ``take`` that hands out the given tensors by slot, and new ones for other slots
    (one per slot)."""
    def take(slot, shape, dtype):
        if slot not in given:
            given[slot] = torch.empty(shape, dtype=dtype)
        return given[slot]
    return take


def to_uint8(rgb01) -> torch.Tensor:
    """Float sRGB in nominal [0, 1] -> uint8: clip(round(255 x), 0, 255), ties to even
    (spec/stain.md, "Rounding"). NaN is an error."""
    if not isinstance(rgb01, torch.Tensor) or not rgb01.is_floating_point():
        raise ValueError(f"to_uint8 takes a floating-point torch tensor, got "
                         f"{getattr(rgb01, 'dtype', type(rgb01).__name__)}")
    out = torch.empty(rgb01.shape, dtype=torch.uint8)
    _to_uint8_into(rgb01 * 255.0, out)
    return out


# ----------------------------------------------------------------------------- brightness

def _index(x: torch.Tensor, take) -> torch.Tensor:
    """(n, 3, P) uint8 -> int64 value + 256 * image index, to look up per-image tables."""
    offset = torch.arange(0, 256 * x.shape[0], 256, dtype=torch.int64).view(-1, 1, 1)
    return torch.add(x, offset, out=take("idx", x.shape, torch.int64))


def _brightness_levels(idx: torch.Tensor, n: int) -> np.ndarray:
    """(n, 256) uint8: brightness standardization maps level v of image i to
    ``levels[i, v]``. ``idx`` as :func:`_index` makes it."""
    counts = torch.bincount(idx.reshape(-1), minlength=256 * n).reshape(n, 256).numpy()
    levels = np.empty((n, 256), np.uint8)
    for i in range(n):
        p = _hist_percentile(counts[i], _stain.BRIGHTNESS_PERCENTILE)
        # the reference's to_uint8(img * 255 / p), on the 256 levels
        levels[i] = (_LEVELS if p == 0.0 else
                     np.clip(np.rint(_LEVELS_F * 255.0 / p), 0, 255).astype(np.uint8))
    return levels


def _lookup(table: np.ndarray, idx: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Per-image tables (n, 256) looked up at ``idx`` (n, 3, P) from :func:`_index`."""
    flat = torch.from_numpy(np.ascontiguousarray(table).reshape(-1)).to(out.dtype)
    return torch.index_select(flat, 0, idx.reshape(-1), out=out.view(-1)).view(idx.shape)


def standardize_brightness(img) -> torch.Tensor:
    """Brightness standardization of a CHW image, or of each image of an NCHW batch
    (spec/stain.md, "Brightness standardization"); bit-exact."""
    _check_image(img)
    x = _flat(img if img.dim() == 4 else img.unsqueeze(0))
    idx = _index(x, _fresh)
    out = torch.empty(x.shape, dtype=torch.uint8)
    return _lookup(_brightness_levels(idx, x.shape[0]), idx, out).reshape(img.shape)


# ----------------------------------------------------------------------------- Reinhard

def _reinhard(x, targets, brightness, dtype, out, take):
    """Reinhard transform of a group x (n, 3, P) uint8 with per-image targets into ``out``.
    Returns (blank, edge): indices of the images that are blank (a single colour) and of
    those at the edge (for the reference)."""
    n = x.shape[0]
    idx = _index(x, take)
    table = _LINEAR[_brightness_levels(idx, n)] if brightness else np.tile(_LINEAR, (n, 1))
    lab = _linear_to_lab(_lookup(table, idx, take("a", x.shape, dtype)), take)
    lab -= lab.mean(dim=-1, keepdim=True)                      # lab - means
    # Population std (ddof 0) with the mean's rounding error taken out (the corrected
    # two-pass formula), so a constant channel has std ~0 in float32 too.
    residual = lab.mean(dim=-1)
    var = torch.mul(lab, lab, out=take("c", x.shape, dtype)).mean(dim=-1)
    stds = var.sub_(residual * residual).clamp_(min=0.0).sqrt_()
    t_stds = _tensor(targets["target_stds"], dtype)
    edge = ((stds <= _EDGE_LAB_STD) | (t_stds.abs() > _EDGE_GAIN * stds)).any(dim=-1)
    scale = t_stds / stds
    scale[edge] = 0.0                                          # their output is not used
    lab *= scale.unsqueeze(-1)                                 # * t_stds / stds
    lab += (_tensor(targets["target_means"], dtype) - residual * scale).unsqueeze(-1)
    rgb = _lab_to_srgb(lab, take)
    _to_uint8_into(rgb.mul_(255.0), out)
    single = (x.amax(dim=-1) == x.amin(dim=-1)).all(dim=-1)    # one colour: blank
    return _indices(single), _indices(edge & ~single)


def _indices(mask: torch.Tensor) -> list:
    return torch.nonzero(mask).flatten().tolist()


# ----------------------------------------------------------------------------- Macenko

def _macenko(x, targets, dtype, out, take, brightness=True):
    """Macenko transform of a group x (n, 3, P) uint8 with per-image targets into ``out``
    (``brightness=False``: 'macenko_fast'). Returns (blank, edge): indices of the images
    that are blank by rule (a) and of those for the reference."""
    n, _, p = x.shape
    idx = _index(x, take)
    levels = _brightness_levels(idx, n) if brightness else np.tile(_LEVELS, (n, 1))
    od64 = _lookup(_OD[levels], idx, take("od64", x.shape, torch.float64))   # (n, 3, P)
    od = od64 if dtype == torch.float64 else take("od", x.shape, dtype).copy_(od64)
    # A pixel is tissue when each channel's level is; brightness standardization and OD
    # are monotone, so the tissue levels of an image are 0..k-1 and it is enough to test
    # the largest channel.
    tissue_levels = _OD_TISSUE[levels]
    k = tissue_levels.sum(axis=1)
    assert all(tissue_levels[i, :k[i]].all() for i in range(n))
    tissue = x.amax(dim=1) < torch.from_numpy(k).view(n, 1)              # (n, P)
    blank, edge = [], []
    pinv = torch.zeros(n, 2, 3, dtype=torch.float64)
    for i in range(n):
        he = _stain_matrix(od64[i], od[i], tissue[i], take)
        if not isinstance(he, torch.Tensor):
            (blank if he == "blank" else edge).append(i)
            continue
        try:
            pinv[i] = torch.linalg.solve(he.T @ he, he.T)      # normal equations: C = pinv OD
        except torch.linalg.LinAlgError:
            edge.append(i)
    conc = torch.bmm(pinv.to(dtype), od, out=take("conc", (n, 2, p), dtype))
    recon = torch.zeros(n, 3, 2, dtype=torch.float64)
    he_t = _tensor(targets["stain_matrix_target"], torch.float64)
    maxc_t = _tensor(targets["target_concentrations"], torch.float64)
    q = _stain.MACENKO_MAXC_PERCENTILE
    for i in range(n):
        if i in blank or i in edge:
            continue
        max_c = torch.tensor([_percentile(conc[i, 0], q), _percentile(conc[i, 1], q)],
                             dtype=torch.float64)
        # rule (c), and faint stains whose rescaling would magnify float32 rounding
        if not (torch.isfinite(max_c).all() and (maxc_t[i].abs() <= _EDGE_GAIN * max_c).all()
                and (max_c > _EDGE_CONCENTRATION).all()):
            edge.append(i)
            continue
        recon[i] = he_t[i] * (maxc_t[i] / max_c)             # HE_t diag(maxC_t / maxC)
    rec = torch.bmm(recon.to(dtype), conc, out=take("a", x.shape, dtype))   # OD'
    rec.neg_().exp_()                                        # Io exp(-OD') - 1
    rec *= _stain.MACENKO_IO
    rec -= 1.0
    _to_uint8_into(rec, out)
    return blank, sorted(edge)


def _stain_matrix(od64, od, tissue, take):
    """Stain matrix HE (3, 2) float64 of one image from its optical densities (3, P)
    (float64, and in the per-pixel dtype) and tissue mask (P,); "blank" by rule (a),
    "edge" by rule (b) or near it."""
    p = tissue.numel()
    n_t = int(tissue.sum())
    if n_t < _stain.MIN_TISSUE_PIXELS:
        return "blank"
    all_tissue = n_t == p
    w = take("w", (p,), torch.float64).copy_(tissue)
    total = od64 @ w                                           # sum of the tissue ODs
    centred = torch.sub(od64, (total / n_t).unsqueeze(1), out=take("centred", (3, p),
                                                                    torch.float64))
    if not all_tissue:
        centred *= w                                           # other pixels drop out
    cov = (centred @ centred.T) * (1.0 / (n_t - 1))            # np.cov: ddof 1
    eigvals, eigvecs = torch.linalg.eigh(cov)                  # ascending
    if not float(eigvals[1]) > _EDGE_EIGENVALUE:
        return "edge"
    e1, e2 = eigvecs[:, 2], eigvecs[:, 1]
    if float(e1 @ total) < 0:                                  # sum of OD . e1 >= 0
        e1 = -e1
    if float(e2[torch.argmax(e2.abs())]) < 0:                  # largest component > 0
        e2 = -e2
    proj = torch.matmul(torch.stack([e1, e2]).to(od.dtype), od,
                        out=take("proj", (2, p), od.dtype))
    phi = torch.atan2(proj[0], proj[1], out=take("phi", (p,), od.dtype))
    mask, count = (None, None) if all_tissue else (tissue, n_t)
    scratch = take("masked", (p,), od.dtype)
    phi_min = _percentile(phi, _stain.MACENKO_ALPHA, mask, count, scratch)
    phi_max = _percentile(phi, 100.0 - _stain.MACENKO_ALPHA, mask, count, scratch)
    v_min = e2 * math.cos(phi_min) + e1 * math.sin(phi_min)
    v_max = e2 * math.cos(phi_max) + e1 * math.sin(phi_max)
    if abs(float(v_min[0]) - float(v_max[0])) <= _EDGE_ORDER:
        return "edge"   # which vector is H (the larger red OD) is a near tie: float32 angles
                        # could swap H and E, so the reference decides
    first = float(v_min[0]) - float(v_max[0]) > _stain.MACENKO_ORDER_TIE   # (never near here)
    h, e = (v_min, v_max) if first else (v_max, v_min)
    return torch.stack([h, e], dim=1)


# ----------------------------------------------------------------------------- transform

def transform(normalizer, img, *, perturbation=None, dtype=None) -> torch.Tensor:
    """Normalize a CHW or NCHW uint8 tensor with a :class:`tilespec.StainNormalizer`; a
    new tensor of the same shape, uint8 (spec/stain.md, "Transform").

    ``perturbation`` (the deltas of :func:`tilespec.stain.draw_stain_perturbation`:
    fit shapes for a CHW image, ``(N,) +`` those for a batch) turns on stain
    augmentation; it is validated by the reference (``normalizer.deltas``), with its
    messages. ``dtype``: float type of the per-pixel arithmetic (default
    :data:`DTYPE`). Results are within spec/stain.md, "Conformance (adapters)" of
    the reference's; blank images as the module docstring says.
    """
    if not isinstance(normalizer, _stain.StainNormalizer):
        raise StainNormalizationError(f"normalizer must be a tilespec.StainNormalizer; got "
                                      f"{type(normalizer).__name__}")
    _check_image(img)
    dtype = _check_dtype(dtype)
    batch = img.dim() == 4
    x = _flat(img if batch else img.unsqueeze(0))
    n = x.shape[0]
    deltas = normalizer.deltas(n, batch, perturbation is not None, perturbation=perturbation)
    fit = normalizer.get_fit()
    if deltas is None:
        targets = {k: np.broadcast_to(v, (n,) + v.shape) for k, v in fit.items()}
    else:
        targets = {k: v + deltas[k] for k, v in fit.items()}   # the reference's fit + delta_i
    out = torch.empty_like(x)
    blank, edge = [], []
    step = max(1, CHUNK_PIXELS // x.shape[-1])
    for s in range(0, n, step):
        part = slice(s, min(n, s + step))
        group = {k: v[part] for k, v in targets.items()}
        brightness = normalizer.method in _stain.BRIGHTNESS
        if normalizer.method in _stain.MASKED:
            # reinhard_mask, reinhard_fast_mask: the reference's transform, image by image
            e = list(range(part.stop - part.start))
            b = []
        elif _stain.FAMILY[normalizer.method] == "macenko":
            b, e = _macenko(x[part], group, dtype, out[part], _WORKSPACE.take, brightness)
        else:
            b, e = _reinhard(x[part], group, brightness, dtype, out[part], _WORKSPACE.take)
        blank += [s + i for i in b]
        edge += [s + i for i in e]
    if normalizer.on_blank == "passthrough":
        for i in blank:
            out[i] = x[i]
        normalizer.blank_count += len(blank)
    else:
        edge += blank          # the reference raises its own error for the first of them
    for i in sorted(edge):
        out[i] = _reference_one(normalizer, img, i, batch, deltas)
    return out.reshape(img.shape)


def _reference_one(normalizer, img, i, batch, deltas) -> torch.Tensor:
    """Image i through the reference's transform, which raises its BlankImageError (named
    by batch index) or returns its result; (3, P) uint8."""
    one = (img[i] if batch else img).permute(1, 2, 0).numpy()
    try:
        if deltas is None:
            res = normalizer.transform(one)
        else:
            res = normalizer.transform(one, augment=True,
                                       perturbation={k: v[i] for k, v in deltas.items()})
    except BlankImageError as e:
        raise BlankImageError(e.reason, index=i if batch else None) from None
    return torch.from_numpy(np.ascontiguousarray(res.transpose(2, 0, 1))).reshape(3, -1)


__all__ = ["transform", "rgb_to_lab", "lab_to_rgb", "to_uint8", "standardize_brightness",
           "DTYPE", "CHUNK_PIXELS", "WORKSPACE_LIMIT"]
