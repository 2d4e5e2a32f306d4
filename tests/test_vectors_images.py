"""spec/images.md's exact formulas against the known answers of spec/vectors/images/.

The vectors come from spec/vectors/images/make_vectors.py, a plain scalar
implementation of the spec's text. The reference must reproduce them (weights within
1e-5: it evaluates them in float32, see spec/images.md "Arithmetic"), every registered
adapter's image ops must meet the spec's tolerances on the vector images, and the
script must rebuild the committed files byte for byte. Draw vectors with given
uniforms replace the generator in tilespec.augment (monkeypatch), so each threshold
is met exactly (u0 = 0.5, u1 = 3/4, quality boundaries q / 51, ...).
"""

import json
import struct

import numpy as np
import pytest

from tilespec import augment, ops, plugins, resize, rng
from vector_files import assert_rebuilds, chapter, load

HERE, PLAIN = chapter("images")
BACKENDS = plugins.backends()


def vectors(name):
    return load(HERE, name)


IMAGES = {k: np.array(v, dtype=np.uint8) for k, v in vectors("images.json")[0].items()}


def test_make_vectors_rebuilds_the_committed_files():
    assert_rebuilds(HERE, PLAIN)


def as_lists(steps):
    return [[s.op, list(s.args)] for s in steps]


@pytest.mark.parametrize("v", vectors("augment_draws.json"), ids=lambda v: v["augment"])
def test_augment_draws(v):
    key = rng.stream_key(int(v["seed"]), v["rank"], v["epoch"])
    pos = np.array([int(d["position"]) for d in v["draws"]], dtype=np.int64)
    got = augment.draw_augmentations(v["augment"], key, pos, v["stain_draws"])
    assert [as_lists(s) for s in got.steps] == [d["steps"] for d in v["draws"]]
    if v["stain_draws"]:
        np.testing.assert_allclose(got.stain, [d["stain"] for d in v["draws"]],
                                   rtol=1e-13, atol=1e-13)
    else:
        assert got.stain is None


@pytest.mark.parametrize("v", vectors("augment_given_uniforms.json"), ids=lambda v: v["char"])
def test_augment_thresholds(monkeypatch, v):
    """Which u range gets which step (flip, k, JPEG quality, blur on/off and sigma)."""
    table = np.array(v["u"], dtype=np.float64)

    def fake(key, positions, slot, n):
        assert slot == rng.augment_slot(0) and n == 2
        return table[np.asarray(positions)]

    monkeypatch.setattr(augment, "uniforms", fake)
    got = augment.draw_augmentations(v["char"], (0, 0), np.arange(len(table)))
    assert [as_lists(s) for s in got.steps] == [[s] if s else [] for s in v["steps"]]


def test_augment_threshold_vectors_reach_both_ends():
    steps = {v["char"]: v["steps"] for v in vectors("augment_given_uniforms.json")}
    assert {s[1][0] for s in steps["j"] if s} == set(range(50, 101))
    assert {s[1][0] for s in steps["b"] if s} == {0.5, 1.0, 1.5, 2.0}
    assert {s[1][0] for s in steps["r"] if s} == {1, 2, 3}


def rows_of(v):
    w = ops.resize_weights(v["in"], v["out"], v["method"], v["antialias"])
    return w[v["rows"]] if "rows" in v else w


@pytest.mark.parametrize("v", vectors("resize_weights.json"),
                         ids=lambda v: f"{v['method']}-{v['antialias']}-{v['in']}-{v['out']}")
def test_resize_weights(v):
    np.testing.assert_allclose(rows_of(v), np.array(v["weights"]), rtol=0, atol=1e-5)


def f32_exact(x):
    return struct.unpack("<f", struct.pack("<f", x))[0] == x


@pytest.mark.parametrize("v", vectors("resize_kernels.json"), ids=lambda v: v["kernel"])
def test_resize_kernels(v):
    kernel, radius = resize._KERNELS[v["kernel"]]
    assert float(radius) == v["radius"]
    # the reference takes float32 arguments: only the x exactly representable there
    xs = [(x, k) for x, k in zip(v["x"], v["k"]) if f32_exact(x)]
    got = kernel(np.array([x for x, _ in xs], dtype=np.float32))
    np.testing.assert_allclose(got, [k for _, k in xs], rtol=0, atol=2e-6)
    for (x, k), g in zip(xs, got):  # zero exactly where the formula is zero
        assert (g == 0) == (k == 0) or abs(k) < 1e-6, (x, k, g)


def resize_cases():
    return vectors("resize_images.json")


def check_uint8_against_float(got, exact, what):
    """spec/images.md, "Conformance": within 1 grey level of the float result's rounding,
    and different from it only where the float result is within 5e-4 of a tie."""
    want = np.clip(np.rint(exact), 0, 255)
    diff = np.abs(got.astype(np.float64) - want)
    assert diff.max(initial=0) <= 1, what
    near_tie = np.abs(np.abs(exact - np.floor(exact)) - 0.5) <= 5e-4
    assert not (diff > 0)[~near_tie].any(), what


@pytest.mark.parametrize("backend", BACKENDS)
def test_resize_of_the_vector_images(backend):
    impl = plugins.ops_for(backend)
    for v in resize_cases():
        img, exact = IMAGES[v["image"]], np.array(v["float"])
        args = (tuple(v["size"]), v["method"], v["antialias"])
        what = f"{backend}: resize{args} of image {v['image']}"
        if backend == "numpy":
            np.testing.assert_allclose(ops.resize_float(img, *args), exact, atol=5e-4,
                                       rtol=0, err_msg=what)
        got = np.asarray(impl.to_numpy(impl.resize(impl.from_numpy(img), *args)))
        assert got.shape == exact.shape and got.dtype == np.uint8, what
        check_uint8_against_float(got, exact, what)


def test_blur_weights_and_offsets():
    for v in vectors("blur_weights.json"):
        assert len(ops.gaussian_kernel(v["sigma"])) == len(v["offsets"])
        np.testing.assert_allclose(ops.blur_weights(v["size"], v["sigma"]), v["weights"],
                                   rtol=1e-12, atol=1e-15, err_msg=str(v["sigma"]))


def test_reflect_index():
    for v in vectors("reflect.json"):
        assert ops.reflect_index(np.array(v["i"]), v["n"]).tolist() == v["refl"], v["n"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_blur_of_the_vector_images(backend):
    impl = plugins.ops_for(backend)
    for v in vectors("blur_images.json"):
        img, exact = IMAGES[v["image"]], np.array(v["float"])
        got = np.asarray(impl.to_numpy(impl.gaussian_blur(impl.from_numpy(img), v["sigma"])))
        assert got.shape == exact.shape and got.dtype == np.uint8
        check_uint8_against_float(got, exact, f"{backend}: blur {v['sigma']} of {v['image']}")


ZIGZAG = sorted(range(64), key=lambda i: (i // 8 + i % 8,
                                          (i % 8) if (i // 8 + i % 8) % 2 == 0 else i // 8))


def dqt_tables(data):
    """The 8-bit quantization tables of a JPEG, by table id, in row order."""
    tables, i = {}, 2
    while i < len(data):
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDB:
            seg = data[i + 4:i + 2 + length]
            while seg:
                assert seg[0] >> 4 == 0, "8-bit tables only"
                natural = [0] * 64
                for z, pos in enumerate(ZIGZAG):
                    natural[pos] = seg[1 + z]
                tables[seg[0] & 15] = natural
                seg = seg[65:]
        if marker == 0xDA:
            break
        i += 2 + length
    return tables


def test_zigzag_order():
    assert ZIGZAG[:10] == [0, 1, 8, 16, 9, 2, 3, 10, 17, 24] and ZIGZAG[-1] == 63


@pytest.mark.parametrize("v", vectors("jpeg_tables.json"), ids=lambda v: str(v["quality"]))
def test_jpeg_quantization_tables(v):
    data = ops.jpeg_encode(IMAGES["c"], v["quality"])
    assert dqt_tables(data) == {0: v["luma"], 1: v["chroma"]}


def test_to_uint8():
    for v in vectors("to_uint8.json"):
        x = np.array([float(x) for x in v["x"]])
        assert ops.to_uint8(x).tolist() == v["uint8"], v["x"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_standardize(backend):
    impl = plugins.ops_for(backend)
    for v in vectors("standardize.json"):
        if v["mode"] == "unit":
            img = np.array(v["values"], dtype=np.uint8).reshape(1, -1, 1).repeat(3, axis=2)
            want = np.array(v["standardized"], dtype=np.float32).reshape(1, -1, 1).repeat(3, 2)
        else:
            img = IMAGES[v["image"]] if "pixels" not in v else np.array(v["pixels"], np.uint8)
            want = np.array(v["standardized"], dtype=np.float32).reshape(img.shape)
        got = np.asarray(impl.to_numpy(impl.standardize(impl.from_numpy(img), v["mode"])))
        if got.shape != want.shape:  # CHW adapters return CHW floats
            got = np.moveaxis(got, 0, -1)
        if v["mode"] == "unit":
            np.testing.assert_array_equal(got, want, err_msg=backend)
        else:  # spec/images.md, "Conformance": 1e-6 (1 + |b| + mean/s)
            bound = 1e-6 * (1 + np.abs(want) + 255)
            assert (np.abs(got - want) <= bound).all(), (backend, v["image"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_geometry(backend):
    impl = plugins.ops_for(backend)
    for v in vectors("geometry.json"):
        got = getattr(impl, v["op"])(impl.from_numpy(IMAGES["a"]), *v["args"])
        assert np.asarray(impl.to_numpy(got)).tolist() == v["out"], (backend, v["op"], v["args"])


@pytest.mark.skipif("tensorflow" not in BACKENDS, reason="the TensorFlow adapter is not installed")
def test_tf_adapter_applies_the_drawn_steps_of_the_vectors():
    """The TF loader encodes each character's draw as one number (tilespec_tf.loader.
    encode_steps) and decodes it in the graph (rot90 by k, jpeg_variable, blur_drawn):
    every distinct step of the threshold vectors must come back as the same op."""
    import tensorflow as tf
    from tilespec_tf import loader as tfloader, ops as tfops

    img = tf.constant(IMAGES["c"])
    seen = set()
    for v in vectors("augment_given_uniforms.json"):
        for s in v["steps"]:
            key = (v["char"], json.dumps(s))
            if key in seen:
                continue
            seen.add(key)
            steps = [augment.Step(s[0], tuple(s[1]))] if s else []
            p = tfloader.encode_steps(v["char"], steps)[0]
            if v["char"] == "b":
                got = tfops.blur_drawn(img, tf.constant(p))
                want = tfops.gaussian_blur(img, s[1][0]) if s else img
            elif v["char"] == "j":
                if not s:
                    assert p == 0
                    continue
                if s[1][0] not in (50, 67, 68, 99, 100):  # the ends and a rounding edge
                    continue
                got = tfops.jpeg_variable(img, tf.constant(p))
                want = tfops.jpeg(img, s[1][0])
            elif v["char"] == "r":
                got = tf.image.rot90(img, int(p))
                want = tfops.rot90(img, s[1][0]) if s else img
            else:
                assert p == (1.0 if s else 0.0)
                continue
            assert np.array_equal(got.numpy(), want.numpy()), key
    assert len(seen) > 60  # every distinct step was seen (those of JPEG encoded, 5 applied)
