"""The image pipeline: one tile's bytes to the image a loader yields
(spec/images.md, "Pipeline order").

decode -> crop -> resize -> stain normalization (+ augmentation when 'n') ->
augmentations in string order -> transform -> standardize.

:class:`Pipeline` holds the validated options; :meth:`Pipeline.draw` draws
the random parameters of a block of positions (pure, keyed); and
:meth:`Pipeline.apply` is the deterministic rest, the one place that order is
written: it runs with the ops of any backend whose ops take eager images (``ops=``:
:mod:`tilespec.ops` by default, ``tilespec_torch.ops`` in the PyTorch adapter).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import ops as reference_ops
from .augment import Draws, apply_steps, draw_augmentations, parse_augment
from .images import decode_image

from .ops import STANDARDIZE_MODES
from .resize import RESIZE_METHODS


def resolve_standardize(standardize, default: str) -> str | None:
    """True -> the backend's default mode; False/None -> None (keep uint8); a mode name -> it."""
    if standardize is True:
        return default
    if standardize is False or standardize is None:
        return None
    if standardize in STANDARDIZE_MODES:
        return standardize
    raise ValueError(f"standardize must be True, False, 'unit' or 'per_image'; got "
                     f"{standardize!r}")


def _positive_int(name, v):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    if v <= 0:
        raise ValueError(f"{name} must be > 0, got {v}")
    return int(v)


def check_bool(name: str, value) -> bool:
    """A boolean option: True or False (a NumPy bool too), else a TypeError naming the
    option and the value (spec/sampling.md, "Checked at construction"). A string such
    as 'False' is refused: it would read as true."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")


def stain_normalize(normalizer, img, *, perturbation=None):
    """Stain normalization as an ops namespace provides it (:meth:`Pipeline.apply`):
    ``normalizer.transform(img)``, with stain augmentation by ``perturbation`` (deltas
    of :func:`tilespec.stain.draw_stain_perturbation`) when given (spec/stain.md,
    "Transform"). The reference's, for an ops namespace without its own."""
    if perturbation is None:
        return normalizer.transform(img)
    return normalizer.transform(img, augment=True, perturbation=perturbation)


@dataclass(frozen=True)
class Pipeline:
    """Validated pipeline options (spec/images.md, "Pipeline order").

    ``standardize`` is already resolved: None or a mode name.
    """

    augment: str = ""
    normalizer: Any = None
    transform: Callable | None = None
    standardize: str | None = None
    crop_left: int | None = None
    crop_width: int | None = None
    resize_target: int | None = None
    resize_method: str = "lanczos3"
    resize_aa: bool = True

    @classmethod
    def from_options(cls, *, augment=False, normalizer=None, transform=None, standardize=False,
                     crop_left=None, crop_width=None, resize_target=None,
                     resize_method="lanczos3", resize_aa=True, default_standardize="unit"):
        """Validate loader keyword arguments into a pipeline."""
        augment = parse_augment(augment)
        if "n" in augment and normalizer is None:
            raise ValueError("augmentation 'n' (stain augmentation) needs a stain normalizer: "
                             "pass normalizer=StainNormalizer(...)")
        if isinstance(normalizer, str):
            from .stain import StainNormalizer
            normalizer = StainNormalizer(normalizer)
        if transform is not None and not callable(transform):
            raise TypeError(f"transform must be callable, got {transform!r}")
        if (crop_left is None) != (crop_width is None):
            raise ValueError("crop_left and crop_width go together: give both or neither "
                             f"(got crop_left={crop_left!r}, crop_width={crop_width!r})")
        if crop_width is not None:
            _positive_int("crop_width", crop_width)
            if isinstance(crop_left, bool) or not isinstance(crop_left, (int, np.integer)) \
                    or crop_left < 0:
                raise ValueError(f"crop_left must be an integer >= 0, got {crop_left!r}")
        if resize_target is not None:
            resize_target = _positive_int("resize_target", resize_target)
        if resize_method not in RESIZE_METHODS:
            raise ValueError(f"unknown resize_method {resize_method!r}; valid: "
                             f"{', '.join(RESIZE_METHODS)}")
        return cls(augment=augment, normalizer=normalizer, transform=transform,
                   standardize=resolve_standardize(standardize, default_standardize),
                   crop_left=crop_left, crop_width=crop_width, resize_target=resize_target,
                   resize_method=resize_method, resize_aa=check_bool("resize_aa", resize_aa))

    @property
    def stain_draws(self) -> int:
        return self.normalizer.normal_draws if self.normalizer is not None else 0

    def draw(self, key, positions) -> Draws:
        """The random parameters of ``positions`` under stream key ``key`` (pure)."""
        return draw_augmentations(self.augment, key, positions, self.stain_draws)

    def geometry(self, img, ops=None):
        """Crop, then resize (uint8 -> uint8), with ``ops`` (default :mod:`tilespec.ops`):
        the 'crop' and 'resize' stages of :meth:`apply`."""
        for stage in ("crop", "resize"):
            if stage in self._after_decode:
                img = self.run_stage(stage, img, ops=ops)
        return img

    def apply(self, img, steps, stain_z=None, ops=None):
        """Everything after decode, for one uint8 image and its drawn parameters: the
        stages of :meth:`stages` after 'decode', in the order of :attr:`STAGES`
        (spec/images.md, "Pipeline order"), each run by :meth:`run_stage`.

        ``ops``: the image operations to run them with, an ops namespace of
        spec/adapters.md, "Hooks" (``tilespec_ops``) whose ops take and return eager
        images of one layout; default :mod:`tilespec.ops` (HWC NumPy arrays). It must
        have ``crop`` and ``resize`` (when the pipeline crops or resizes), every op a
        step names (:func:`tilespec.augment.apply_steps`) and ``standardize(img, mode)``
        (when the pipeline standardizes); for stain normalization it may have
        ``stain_normalize(normalizer, img, *, perturbation=None)`` (the normalized
        image; with ``perturbation``, the deltas of
        :func:`tilespec.stain.draw_stain_perturbation`, stain augmentation), else
        :func:`stain_normalize` (the reference's transform) serves. The transform gets
        the image in that layout. The perturbation is drawn here, by the reference, for
        every backend.
        """
        ops = reference_ops if ops is None else ops
        for stage in self._after_decode:
            img = self.run_stage(stage, img, steps, stain_z, ops)
        return img

    def run_stage(self, stage: str, img, steps=(), stain_z=None, ops=None):
        """One stage of :meth:`apply` (a name of :attr:`STAGES` other than 'decode'):
        'crop' (``ops.crop``), 'resize' (``ops.resize``), 'stain' (the normalizer, with
        the perturbation drawn from ``stain_z`` when the augmentation string has 'n'),
        'augment' (the drawn ``steps`` in string order), 'transform' (the user's
        callable), 'standardize' (``ops.standardize``) (spec/images.md, "Pipeline order")."""
        ops = reference_ops if ops is None else ops
        if stage == "crop":
            return ops.crop(img, self.crop_left, self.crop_width)
        if stage == "resize":
            return ops.resize(img, self.resize_target, self.resize_method, self.resize_aa)
        if stage == "stain":
            delta = None
            if "n" in self.augment:
                from .stain import draw_stain_perturbation
                delta = draw_stain_perturbation(self.normalizer, stain_z)
            normalize = getattr(ops, "stain_normalize", stain_normalize)
            return normalize(self.normalizer, img, perturbation=delta)
        if stage == "augment":
            return apply_steps(img, steps, ops=ops)
        if stage == "transform":
            return self.transform(img)
        if stage == "standardize":
            return ops.standardize(img, self.standardize)
        raise ValueError(f"unknown pipeline stage {stage!r}; stages after decode: "
                         f"{', '.join(self.STAGES[1:])}")

    @functools.cached_property
    def _after_decode(self) -> tuple:
        """:meth:`stages` after 'decode', computed once (the options are frozen)."""
        return self.stages()[1:]

    def __call__(self, image_bytes, steps=(), stain_z=None) -> np.ndarray:
        """decode + :meth:`apply`."""
        return self.apply(decode_image(image_bytes), steps, stain_z)

    #: The stages of the image pipeline, in order (spec/images.md, "Pipeline order").
    STAGES = ("decode", "crop", "resize", "stain", "augment", "transform", "standardize")

    def stages(self) -> tuple:
        """The names of the stages this pipeline runs, in :attr:`STAGES` order
        (spec/images.md, "Pipeline order"): 'decode' always; 'crop', 'resize',
        'transform' and 'standardize' when their option is set; 'stain' with a
        normalizer (its augmentation too, when ``augment`` has 'n'); 'augment' when
        ``augment`` has a character other than 'n' (the drawn steps, in string order).
        A backend whose image work is a graph of its own (the TensorFlow map) walks
        these instead of writing the order again."""
        on = {"decode": True, "crop": self.crop_width is not None,
              "resize": self.resize_target is not None, "stain": self.normalizer is not None,
              "augment": bool(self.augment.replace("n", "")),
              "transform": self.transform is not None, "standardize": self.standardize is not None}
        return tuple(s for s in self.STAGES if on[s])


__all__ = ["Pipeline", "stain_normalize", "resolve_standardize", "check_bool", "STANDARDIZE_MODES", "RESIZE_METHODS"]
