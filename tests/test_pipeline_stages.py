"""spec/images.md, "Pipeline order" and "Augmentation draws": the public names a backend
with a graph of its own walks (the TensorFlow map) instead of writing the order and the
character -> op table again: ``Pipeline.stages()`` and ``augment.OP_OF_CHAR``. Each is
checked against the code it names (``Pipeline.__call__``, ``draw_augmentations``)."""

import numpy as np
import pytest

from tilespec import ops
from tilespec.augment import OP_OF_CHAR, VALID_CHARS, apply_steps, draw_augmentations
from tilespec.images import decode_image
from tilespec.pipeline import Pipeline
from tilespec.rng import stream_key
from tilespec.stain import StainNormalizer
from tilespec.synthetic import encode_jpeg


def test_op_of_char_names_the_op_each_character_draws():
    assert set(OP_OF_CHAR) == set(VALID_CHARS) - {"n"}
    key = stream_key(3, 0, 0)
    for c, op in OP_OF_CHAR.items():
        draws = draw_augmentations(c, key, np.arange(400))  # b applies with p 0.1: ~40
        assert {s.op for steps in draws.steps for s in steps} == {op}


def _walk(p: Pipeline, data: bytes, steps):
    """The image of ``p`` for ``data`` made by walking ``p.stages()`` with the
    reference's ops, one function per stage name."""
    run = {"decode": decode_image,
           "crop": lambda i: ops.crop(i, p.crop_left, p.crop_width),
           "resize": lambda i: ops.resize(i, p.resize_target, p.resize_method, p.resize_aa),
           "stain": lambda i: p.normalizer.transform(i),
           "augment": lambda i: apply_steps(i, steps),
           "transform": p.transform,
           "standardize": lambda i: ops.standardize(i, p.standardize)}
    img = data
    for name in p.stages():
        img = run[name](img)
    return img


def _shift(img):
    """An order-revealing transform: drops the first row (a non-square image turns
    differently) and adds one level (after standardization it would add 1.0)."""
    return img[1:] + 1


CASES = [  # (options, the stages they run)
    ({}, ("decode",)),
    ({"augment": "xr"}, ("decode", "augment")),
    ({"crop_left": 2, "crop_width": 12, "resize_target": 7, "resize_method": "bilinear",
      "augment": "rj", "transform": _shift, "standardize": "unit"},
     ("decode", "crop", "resize", "augment", "transform", "standardize")),
    ({"normalizer": "reinhard", "augment": "yb", "transform": _shift},
     ("decode", "stain", "augment", "transform")),
    ({"normalizer": "macenko", "resize_target": 9, "standardize": "per_image"},
     ("decode", "resize", "stain", "standardize")),
]


@pytest.mark.parametrize("options,stages", CASES)
def test_stages_name_the_order_of_the_pipeline(options, stages):
    p = Pipeline.from_options(**options)
    assert p.stages() == stages
    rng = np.random.default_rng(5)
    data = encode_jpeg(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    for pos in range(6):
        steps = p.draw(stream_key(1, 0, 0), np.array([pos])).steps[0]
        np.testing.assert_array_equal(_walk(p, data, steps), p(data, steps))


def test_stain_augmentation_alone_is_the_stain_stage():
    p = Pipeline.from_options(normalizer=StainNormalizer("reinhard"), augment="n")
    assert p.stages() == ("decode", "stain")
