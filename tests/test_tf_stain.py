"""tilespec_tf.stain (stain normalization in TensorFlow graph ops, used by the TF loader)
against the reference: spec/stain.md, "Conformance (adapters)", on random, real-looking and
nearly-constant tiles, eagerly and in graphs; blank images; the loader's graph has no
Python op (spec/adapter_tf.md, "Stain")."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

tf = pytest.importorskip("tensorflow")
tilespec_tf = pytest.importorskip("tilespec_tf")

import tilespec  # noqa: E402
from tilespec import testing as tt  # noqa: E402
from tilespec.stain import (FAMILY, FIT_PRESETS, METHODS, BlankImageError,  # noqa: E402
                            StainNormalizationError, StainNormalizer, draw_stain_perturbation,
                            standardize_brightness)
from tilespec_tf import stain  # noqa: E402

from test_stain import he_tile, lab_image, tissue  # noqa: E402

FEW = settings(max_examples=max(5, settings.default.max_examples // 5))

#: spec/stain.md, "Conformance (adapters)": (grey levels, fraction of values that differ).
BOUNDS = {"reinhard": (1, 0.01), "macenko": (2, 0.01)}


def diff(got, want):
    d = np.abs(np.asarray(got).astype(np.int16) - want.astype(np.int16))
    return int(d.max(initial=0)), float((d > 0).mean()) if d.size else 0.0


def assert_conforms(method, got, want):
    top, frac = diff(got, want)
    bound, max_frac = BOUNDS[FAMILY[method]]
    assert top <= bound and frac <= max_frac, (method, top, frac)
    return top, frac


def real_looking(method, n, size, seed):
    if FAMILY[method] == "macenko":
        return np.stack([he_tile(seed + i, size=size)[0] for i in range(n)])
    return np.stack([tissue(seed + i, size=size) if i % 2 else lab_image(seed + i, size)
                     for i in range(n)])


def random_tiles(n, size, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def nearly_constant(method, n, size, seed):
    """A colour plus noise of +-2 levels: tiny but measurable spread."""
    rng = np.random.default_rng(seed)
    if FAMILY[method] == "macenko":
        base = he_tile(seed, size=size)[0].reshape(-1, 3)[:n]      # stained colours
    else:
        base = rng.integers(60, 200, (n, 3))
    noise = rng.integers(-2, 3, (n, size, size, 3))
    return np.clip(base[:, None, None, :] + noise, 0, 255).astype(np.uint8)


def tf_transform(norm, img, perturbation=None, graph=False):
    """The TF transform of an HWC / NHWC array, eagerly or in a tf.function graph."""
    if graph:
        return _graph_fn(norm, perturbation)(tf.constant(img)).numpy()
    return stain.transform(norm, tf.constant(img), perturbation=perturbation).numpy()


def _graph_fn(norm, perturbation=None):
    """A tf.function of ``norm``'s transform (NumPy perturbation captured as constants)."""
    return tf.function(lambda i: stain.transform(norm, i, perturbation=perturbation))


# ----------------------------------------------------------------------------- pieces

def _images_with_ties():
    return st.builds(
        lambda seed, h, w, k: np.random.default_rng(seed).choice(
            np.random.default_rng(seed + 1).integers(0, 256, k), (h, w, 3)).astype(np.uint8),
        st.integers(0, 2**32 - 1), st.integers(1, 9), st.integers(1, 9), st.integers(1, 6))


@FEW
@given(_images_with_ties())
def test_brightness_standardization_is_exact(img):
    got = stain.standardize_brightness(tf.constant(img)).numpy()
    np.testing.assert_array_equal(got, standardize_brightness(img))


def test_brightness_standardization_seeded():
    for img in (tissue(1, 64), he_tile(2, 64)[0], np.zeros((5, 7, 3), np.uint8),
                np.full((4, 4, 3), 255, np.uint8), random_tiles(1, 33, 3)[0]):
        np.testing.assert_array_equal(stain.standardize_brightness(tf.constant(img)).numpy(),
                                      standardize_brightness(img))


def test_target_vectors_are_fit_plus_the_references_deltas():
    norm = StainNormalizer("macenko")
    z = np.random.default_rng(1).standard_normal((4, 8))
    vec = stain.stain_targets(norm, z)
    delta = draw_stain_perturbation(norm, z)
    fit = norm.get_fit()
    np.testing.assert_array_equal(vec[:, :6], (fit["stain_matrix_target"] +
                                               delta["stain_matrix_target"]).reshape(4, 6))
    np.testing.assert_array_equal(vec[:, 6:], fit["target_concentrations"] +
                                  delta["target_concentrations"])
    np.testing.assert_array_equal(stain.stain_targets(norm, None)[0, 6:],
                                  fit["target_concentrations"])
    with pytest.raises(StainNormalizationError, match=r"shape \(8,\) or \(N, 8\)"):
        stain.stain_targets(norm, np.zeros((2, 6)))


# ----------------------------------------------------------------------------- conformance

@pytest.mark.parametrize("method", METHODS)
def test_transform_conforms_on_real_random_and_nearly_constant_tiles(method):
    """Every fit preset; one image and a batch; eagerly and in a tf.function graph."""
    kinds = {"real": real_looking(method, 3, 64, 10), "random": random_tiles(2, 48, 11),
             "nearly constant": nearly_constant(method, 2, 40, 12)}
    for preset in FIT_PRESETS[method]:
        norm = StainNormalizer(method, fit_preset=preset, on_blank="passthrough")
        for kind, batch in kinds.items():
            want = norm.transform(batch)
            assert_conforms(method, tf_transform(norm, batch), want)
            assert_conforms(method, tf_transform(norm, batch[0]), want[0])
    # measured: float64 graph ops give the reference's values exactly on these tiles
    norm = StainNormalizer(method)
    batch = real_looking(method, 2, 64, 20)
    assert diff(tf_transform(norm, batch, graph=True), norm.transform(batch)) == (0, 0.0)


@pytest.mark.parametrize("method", METHODS)
def test_augmentation_with_the_same_perturbation(method):
    batch = real_looking(method, 3, 48, 30)
    norm = StainNormalizer(method)
    z = np.random.default_rng(5).standard_normal((3, norm.normal_draws)) * 2
    delta = draw_stain_perturbation(norm, z)
    want = norm.transform(batch, augment=True, perturbation=delta)
    got = tf_transform(norm, batch, delta)
    assert_conforms(method, got, want)
    assert diff(got, tf_transform(norm, batch))[0] > 0         # the targets did move
    assert_conforms(method, tf_transform(norm, batch, delta, graph=True), want)
    one = {k: v[1] for k, v in delta.items()}
    assert_conforms(method, tf_transform(norm, batch[1], one),
                    norm.transform(batch[1], augment=True, perturbation=one))


@FEW
@given(method=st.sampled_from(METHODS), seed=st.integers(0, 10**6), size=st.integers(8, 48),
       kind=st.sampled_from(["real", "random", "nearly constant"]))
def test_transform_conforms_property(method, seed, size, kind):
    img = {"real": real_looking, "nearly constant": nearly_constant}.get(
        kind, lambda m, n, s, sd: random_tiles(n, s, sd))(method, 1, size, seed)[0]
    norm = StainNormalizer(method, on_blank="passthrough")
    assert_conforms(method, tf_transform(norm, img), norm.transform(img))


def test_tf_to_tf_and_tf_to_rgb_entry_points():
    norm = StainNormalizer("reinhard_mask")
    img = real_looking("reinhard", 2, 32, 40)
    x = tf.constant(img)
    np.testing.assert_array_equal(norm.tf_to_tf(x).numpy(), stain.transform(norm, x).numpy())
    np.testing.assert_array_equal(norm.tf_to_rgb(x[0]), norm.transform(img[0]))
    np.testing.assert_array_equal(norm.transform(x).numpy(), norm.tf_to_tf(x).numpy())
    a = norm.tf_to_tf(x, augment=True, rng=np.random.default_rng(3)).numpy()
    b = norm.transform(img, True, rng=np.random.default_rng(3))
    assert_conforms("reinhard_mask", a, b)
    out, label = norm.tf_to_tf(x[0], 7)
    assert label == 7 and out.shape == (32, 32, 3)
    assert set(norm.tf_to_tf({"tile_image": x[0], "k": 1})) == {"tile_image", "k"}
    graph = tf.function(lambda t: norm.tf_to_tf(t))
    np.testing.assert_array_equal(graph(x).numpy(), norm.tf_to_tf(x).numpy())
    with pytest.raises(ValueError, match=r"'reinhard_mask' input must have dtype uint8, got "
                                         r"float32 \(shape \(32, 32, 3\)\)"):
        norm.tf_to_tf(tf.cast(x[0], tf.float32))
    with pytest.raises(StainNormalizationError, match="tf_to_rgb takes an eager TensorFlow"):
        norm.tf_to_rgb(img)


# ----------------------------------------------------------------------------- blank images

def _blank_cases():
    white = np.full((32, 32, 3), 255, np.uint8)
    pale_red = np.full((32, 32, 3), [240, 100, 100], np.uint8)   # rule (a): no tissue
    pale_red[:8] = 255
    flat = np.full((32, 32, 3), [120, 60, 160], np.uint8)        # rule (b): one stain colour
    flat[:8] = 255
    single = np.full((32, 32, 3), [200, 120, 170], np.uint8)     # Reinhard: one colour
    return {"macenko": [white, pale_red, flat], "reinhard": [white, single]}


@pytest.mark.parametrize("method", ["reinhard", "reinhard_fast_mask", "macenko", "macenko_fast"])
def test_blank_images(method):
    good = real_looking(method, 1, 32, 80)[0]
    strict = StainNormalizer(method)
    lenient = StainNormalizer(method, on_blank="passthrough")
    strict_graph, lenient_graph = _graph_fn(strict), _graph_fn(lenient)   # traced once each
    for k, img in enumerate(_blank_cases()[FAMILY[method]]):
        # eagerly, 'error' raises the reference's error, with the batch index
        with pytest.raises(BlankImageError) as want:
            strict.transform(img)
        with pytest.raises(BlankImageError) as got:
            stain.transform(strict, tf.constant(img))
        assert got.value.reason.startswith(want.value.reason.split(" (StainNormalizer")[0])
        batch = np.stack([good, img])
        with pytest.raises(BlankImageError, match="image 1 of the batch"):
            stain.transform(strict, tf.constant(batch))
        # in a graph, 'error' is an assertion naming the rule
        with pytest.raises(tf.errors.InvalidArgumentError, match="blank image"):
            strict_graph(tf.constant(batch))
        # 'passthrough': unchanged and counted, eagerly and in a graph
        out = stain.transform(lenient, tf.constant(batch)).numpy()
        np.testing.assert_array_equal(out[1], batch[1])
        assert_conforms(method, out[0], lenient.transform(batch[0]))
        assert lenient.blank_count == 3 * k + 1
        out = lenient_graph(tf.constant(batch)).numpy()
        np.testing.assert_array_equal(out[1], batch[1])
        assert lenient.blank_count == 3 * k + 2
        lenient.transform(batch)                               # the reference adds its own
        assert lenient.blank_count == 3 * k + 3


# ----------------------------------------------------------------------------- the loader

PY_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def _map_ops(ds):
    """(ops of the loader's map functions and every function they call, all ops of the
    dataset graph), from its serialized GraphDef."""
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(ds._as_serialized_graph().numpy())
    funcs = {f.signature.name: f for f in graph.library.function}

    def called(attrs):
        for v in attrs.values():
            if v.HasField("func"):
                yield v.func.name
            for f in v.list.func:
                yield f.name

    # the loader's maps (from_generator's own FlatMapDataset, whose function calls the
    # generator through a Python op, is not one of them)
    maps = {"MapDataset", "ParallelMapDataset", "ParallelMapDatasetV2"}
    todo = [name for n in graph.node if n.op in maps for name in called(n.attr)]
    assert todo, "no map in the loader's graph"
    seen, ops = set(), set()
    while todo:
        name = todo.pop()
        if name in seen or name not in funcs:
            continue
        seen.add(name)
        for node in funcs[name].node_def:
            ops.add(node.op)
            todo += list(called(node.attr))
    every = {n.op for n in graph.node} | {n.op for f in graph.library.function
                                          for n in f.node_def}
    return ops, every


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    layout = tt.TileDatasetLayout((("s0", "p0", "a", 3), ("s1", "p1", "b", 2)), tile_px=16,
                                  seed=4)
    info = tt.write_tile_dataset(layout, tmp_path_factory.mktemp("tfstain"))
    return tilespec.Dataset(tfrecords=info["tfrecords"])


@pytest.mark.parametrize("method,augment", [("macenko", "n"), ("macenko", "xy"),
                                            ("reinhard", False), ("reinhard_mask", "xn")])
def test_loader_stain_step_is_graph_ops(small, method, augment):
    """No numpy_function / py_function in the loader's map with a normalizer (with and
    without 'n'); the stain ops are there; the Python op of from_generator is found, so the
    inspection does see such ops."""
    norm = StainNormalizer(method, on_blank="passthrough")
    # The Python reader: the image map is the same function with either reader, and the
    # C++ reader's map also holds the reference's slow path for records failing its
    # checks (a numpy_function run only then; spec/adapter_tf.md, "Two readers").
    ds = small.tensorflow(normalizer=norm, augment=augment, seed=1, standardize=False,
                          infinite=False, reader="python")
    ops, every = _map_ops(ds)
    assert not ops & PY_OPS, ops & PY_OPS
    assert ("SelfAdjointEigV2" in ops) == (FAMILY[method] == "macenko")
    assert "Bincount" in ops or "DenseBincount" in ops          # brightness histogram
    assert every & PY_OPS                                       # the generator's own op
    probe = tf.data.Dataset.range(2).map(lambda x: tf.numpy_function(lambda v: v, [x], tf.int64))
    assert _map_ops(probe)[0] & PY_OPS                          # the check can fail
    opts = dict(normalizer=norm, augment=augment, seed=1, standardize=False, infinite=False)
    tt.assert_conforms(ds, small.numpy(**opts), options=opts)


def test_loader_without_n_and_batched(small):
    """A normalizer without 'n' (the fit for every tile), batched, and 'per_image'."""
    for opts in (dict(normalizer="macenko_fast", augment="xyr", seed=2, infinite=False,
                      standardize=False, batch_size=2),
                 dict(normalizer=StainNormalizer("reinhard_fast_mask"), seed=3, infinite=False,
                      standardize="per_image")):
        d = small.tensorflow(**opts)
        tt.assert_conforms(d, small.numpy(**opts), options=opts)


def test_loader_reads_the_fit_when_iterated(small):
    """The targets come from the generator: a fit changed after building is used."""
    norm = StainNormalizer("reinhard")
    opts = dict(normalizer=norm, seed=4, infinite=False, standardize=False)
    d = small.tensorflow(**opts)
    norm.fit_preset("v1")
    tt.assert_conforms(d, small.numpy(**opts), options=opts)


def test_graph_blank_messages_carry_the_reference_reasons_verbatim():
    """The graph assertion of a blank image (``tilespec_tf.stain``) raises an error
    whose text holds each reference reason as written (tilespec.stain.BLANK_REASONS),
    so the conformance rule "same item, the reference's message" holds: TensorFlow
    escapes some characters (an apostrophe) when it prints an assertion's strings."""
    import tensorflow as tf

    from tilespec.stain import BLANK_REASONS

    @tf.function
    def fail(code):
        message = tf.gather(tf.constant(list(stain.BLANK_MESSAGES)), code)
        check = tf.debugging.Assert(tf.equal(code, 0), ["blank:", message])
        with tf.control_dependencies([check]):
            return tf.identity(code)

    for code in range(1, len(stain.BLANK_MESSAGES)):
        reason = stain.BLANK_MESSAGES[code]
        assert reason in BLANK_REASONS.values()
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            fail(tf.constant(code))
        assert reason in str(info.value), (reason, str(info.value))
