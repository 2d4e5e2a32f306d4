"""spec/images.md, "Pipeline order": :meth:`tilespec.pipeline.Pipeline.apply` with an
ops namespace (``ops=``), the one definition of the order every eager backend runs.

A namespace that records its calls (and otherwise is :mod:`tilespec.ops`) shows the
order, the arguments each op gets and the stain perturbation the reference draws;
without a ``stain_normalize`` of its own the namespace gets the reference's
transform. The torch adapter runs the same method with :mod:`tilespec_torch.ops`
(tests/test_torch_adapter.py, tests/test_conformance.py check its stream).
"""

import types

import numpy as np
import pytest

from tilespec import ops
from tilespec.augment import Step
from tilespec.pipeline import Pipeline, stain_normalize
from tilespec.stain import StainNormalizer, draw_stain_perturbation

STEPS = (Step("flip_left_right"), Step("rot90", (1,)), Step("gaussian_blur", (1.0,)))


def _tile(seed=0, px=40):
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, (px, px, 3)).astype(np.uint8)
    base[: px // 2, :, 0] = 230                     # some structure for the normalizer
    return base


def _recording(calls, with_stain=True):
    """tilespec.ops whose ops used by a pipeline append (name, extra arguments) to calls."""
    def wrap(name):
        fn = getattr(ops, name)

        def op(img, *args, **kwargs):
            calls.append((name, args))
            return fn(img, *args, **kwargs)
        return op

    ns = types.SimpleNamespace(**{n: wrap(n) for n in ("crop", "resize", "flip_left_right",
                                                       "flip_up_down", "rot90",
                                                       "gaussian_blur", "standardize")})
    if with_stain:
        def stain(normalizer, img, *, perturbation=None):
            calls.append(("stain_normalize", perturbation))
            return stain_normalize(normalizer, img, perturbation=perturbation)
        ns.stain_normalize = stain
    return ns


def _pipeline(augment, calls, standardize="unit"):
    def transform(img):
        calls.append(("transform", ()))
        return img
    return Pipeline.from_options(augment=augment, normalizer=StainNormalizer("reinhard"),
                                 transform=transform, standardize=standardize,
                                 crop_left=2, crop_width=32, resize_target=24)


@pytest.mark.parametrize("augment", ["xyrbn", "xyrb"])
def test_the_order_is_written_once_and_ops_get_the_reference_arguments(augment):
    calls = []
    p = _pipeline(augment, calls)
    z = np.random.default_rng(1).standard_normal(p.stain_draws)
    img = _tile()
    got = p.apply(img, STEPS, z, ops=_recording(calls))
    names = [c[0] for c in calls]
    assert names == ["crop", "resize", "stain_normalize", "flip_left_right", "rot90",
                     "gaussian_blur", "transform", "standardize"]
    assert calls[0][1] == (2, 32) and calls[1][1] == (24, "lanczos3", True)
    assert [c[1] for c in calls[3:6]] == [(), (1,), (1.0,)]
    assert calls[-1][1] == ("unit",)
    delta = calls[2][1]
    if "n" in augment:                # the reference draws the perturbation from stain_z
        want = draw_stain_perturbation(p.normalizer, z)
        assert delta.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(delta[k], want[k])
    else:
        assert delta is None
    calls.clear()
    default = p.apply(img, STEPS, z)   # tilespec.ops: the same image
    assert got.dtype == default.dtype == np.float32
    np.testing.assert_array_equal(got, default)


@pytest.mark.parametrize("augment", ["xn", "x"])
def test_without_its_own_stain_normalize_a_namespace_gets_the_reference_transform(augment):
    calls = []
    p = _pipeline(augment, calls, standardize=None)
    z = np.random.default_rng(2).standard_normal(p.stain_draws)
    img = _tile(3)
    got = p.apply(img, (Step("flip_up_down"),), z, ops=_recording(calls, with_stain=False))
    x = ops.resize(ops.crop(img, 2, 32), 24)
    if "n" in augment:
        x = p.normalizer.transform(x, augment=True,
                                   perturbation=draw_stain_perturbation(p.normalizer, z))
    else:
        x = p.normalizer.transform(x)
    want = ops.flip_up_down(x)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got, want)
    assert [c[0] for c in calls] == ["crop", "resize", "flip_up_down", "transform"]
