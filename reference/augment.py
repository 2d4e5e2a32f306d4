"""Augmentation strings and their random draws (spec/images.md, "Augmentation draws").

Drawing and applying are separate steps. :func:`draw_augmentations` turns an
augmentation string and a block of stream positions into concrete steps (an
op name and its arguments) using only the counter-based generator of
:mod:`tilespec.rng`; :func:`apply_steps` applies steps to an image with the
pure ops of :mod:`tilespec.ops`. An adapter takes the same steps and applies
them with its own ops, so both backends see identical parameters.

Character k of the string draws from slot ``augment_slot(k)`` at the item's
position: two uniforms ``(u0, u1)`` from block 0, or standard normals for 'n'.

====  ==============================  ==========================================
char  operation                       draw
====  ==============================  ==========================================
x     flip_left_right                 applied when u0 < 0.5
y     flip_up_down                    applied when u0 < 0.5
r     rot90(k)                        k = floor(4 u0) (k = 0 is no step)
j     jpeg(quality)                   applied when u0 < 0.5; quality = 50 + floor(51 u1)
b     gaussian_blur(sigma)            applied when u0 < 0.1; sigma = 0.5 if u1 < 1/2,
                                      1.0 if u1 < 3/4, 1.5 if u1 < 7/8, else 2.0
n     stain augmentation              z = normals(..., k = normalizer.normal_draws)
====  ==============================  ==========================================
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .rng import augment_slot, normals, uniforms

VALID_CHARS = "xyrjbn"
DEFAULT_AUGMENT = "xyrjb"
FLIP_P = 0.5
JPEG_P = 0.5
JPEG_QUALITY = (50, 100)            # inclusive
BLUR_P = 0.1
BLUR_SIGMAS = (0.5, 1.0, 1.5, 2.0)
BLUR_CDF = (0.5, 0.75, 0.875)       # u1 thresholds between the sigmas
#: Each augmentation character's operation: the :mod:`tilespec.ops` function that its
#: drawn :class:`Step` names (the table above); 'n' has none (its draw goes to the
#: stain normalizer). A backend that applies the steps in a graph of its own maps
#: characters to ops with this.
OP_OF_CHAR = {"x": "flip_left_right", "y": "flip_up_down", "r": "rot90", "j": "jpeg",
              "b": "gaussian_blur"}


#: The ops that only move pixels (no arithmetic, the image's size kept or W and H
#: swapped): a run of their steps is one view of the image (:func:`moved_view`).
MOVE_OPS = ("flip_left_right", "flip_up_down", "rot90")


class Step(NamedTuple):
    """One concrete image operation: a :mod:`tilespec.ops` function name and its arguments."""

    op: str
    args: tuple = ()


def parse_augment(augment) -> str:
    """Normalize an ``augment`` argument to a string of operation characters.

    spec/images.md, "Augmentation draws". ``True`` means ``'xyrjb'``; ``False``,
    ``None`` and ``''`` mean no augmentation. A string may repeat a character
    (it applies twice), except 'n' (one stain perturbation per image).
    """
    if augment is True:
        return DEFAULT_AUGMENT
    if augment is None or augment is False:
        return ""
    if not isinstance(augment, str):
        raise TypeError(f"augment must be a string of {VALID_CHARS!r}, True, False or None; "
                        f"got {augment!r}")
    bad = sorted({c for c in augment if c not in VALID_CHARS})
    if bad:
        raise ValueError(f"unknown augmentation character(s) {', '.join(map(repr, bad))} in "
                         f"{augment!r}; valid characters are {', '.join(VALID_CHARS)} "
                         "(x: flip left-right, y: flip up-down, r: rotate 90k, j: JPEG, "
                         "b: blur, n: stain augmentation)")
    if augment.count("n") > 1:
        raise ValueError(f"augmentation {augment!r} has 'n' more than once; stain "
                         "augmentation perturbs the normalizer target once per image")
    return augment


class Draws(NamedTuple):
    """The drawn augmentation of a block of positions.

    ``steps[i]``: the list of :class:`Step` for position ``positions[i]``, in
    string order. ``stain[i]``: the standard normal variates for stain
    augmentation of that position (None without 'n').
    """

    positions: np.ndarray
    steps: list
    stain: np.ndarray | None


def draw_augmentations(augment: str, key, positions, stain_draws: int = 0) -> Draws:
    """Draw every augmentation parameter for ``positions`` (spec/images.md, "Augmentation draws").

    ``key`` is the stream key of (seed, rank, epoch); ``stain_draws`` the number
    of normals a stain augmentation needs (``StainNormalizer.normal_draws``),
    required when ``augment`` contains 'n'.
    """
    positions = np.asarray(positions, dtype=np.int64)
    n = len(positions)
    per_char = []
    stain = None
    for k, c in enumerate(augment):
        if c == "n":
            if stain_draws <= 0:
                raise ValueError("augmentation 'n' (stain augmentation) needs a stain "
                                 "normalizer: pass normalizer=...")
            stain = normals(key, positions, augment_slot(k), stain_draws)
            continue
        u = uniforms(key, positions, augment_slot(k), 2)
        u0, u1 = u[:, 0], u[:, 1]
        op = OP_OF_CHAR[c]
        if c in "xy":
            per_char.append([Step(op) if a else None for a in u0 < FLIP_P])
        elif c == "r":
            ks = np.floor(4 * u0).astype(int)
            per_char.append([Step(op, (int(q),)) if q else None for q in ks])
        elif c == "j":
            lo, hi = JPEG_QUALITY
            q = lo + np.floor((hi - lo + 1) * u1).astype(int)
            per_char.append([Step(op, (int(qq),)) if a else None
                             for a, qq in zip(u0 < JPEG_P, q)])
        elif c == "b":
            sigma = np.asarray(BLUR_SIGMAS)[np.searchsorted(BLUR_CDF, u1, side="right")]
            per_char.append([Step(op, (float(s),)) if a else None
                             for a, s in zip(u0 < BLUR_P, sigma)])
    steps = [[col[i] for col in per_char if col[i] is not None] for i in range(n)]
    return Draws(positions, steps, stain)


def apply_steps(img: np.ndarray, steps, ops=None) -> np.ndarray:
    """Apply drawn steps in order with ``ops`` (default :mod:`tilespec.ops`)."""
    if ops is None:
        from . import ops
    for step in steps:
        img = getattr(ops, step.op)(img, *step.args)
    return img


def moved_view(img: np.ndarray, steps):
    """``apply_steps(img, steps)`` as a view of ``img`` (no pixel copied) when every
    step is one of :data:`MOVE_OPS`, else None (spec/images.md, "Flips" and
    "Rotation"). ``img`` is an HWC (or NHWC) array.

    The same pixels as the ops, by their definitions: flip_left_right is
    ``img[..., :, ::-1, :]``, flip_up_down ``img[..., ::-1, :, :]``, rot90(k)
    ``np.rot90`` over (H, W) by k mod 4. A batched loader copies the view straight
    into its batch row in whatever layout that row has (the torch adapter: CHW), so a
    tile's flips and turns cost no pass over the image of their own.
    """
    for step in steps:
        if step.op == "flip_left_right":
            img = img[..., :, ::-1, :]
        elif step.op == "flip_up_down":
            img = img[..., ::-1, :, :]
        elif step.op == "rot90":
            k = int(step.args[0]) % 4   # np.rot90 over (H, W), spelled out (faster)
            if k == 1:
                img = img[..., :, ::-1, :].swapaxes(-3, -2)
            elif k == 2:
                img = img[..., ::-1, ::-1, :]
            elif k == 3:
                img = img[..., ::-1, :, :].swapaxes(-3, -2)
        else:
            return None
    return img


__all__ = ["parse_augment", "moved_view", "MOVE_OPS", "draw_augmentations", "apply_steps", "Step",
           "Draws", "OP_OF_CHAR",
           "VALID_CHARS", "DEFAULT_AUGMENT", "BLUR_SIGMAS", "BLUR_CDF"]
