"""tilespec_torch.stain (the torch stain normalizers behind ops.stain_normalize) against the
reference: every row of spec/stain.md, "Conformance (adapters)", blank images, errors, and
batching (spec/adapter_torch.md, "Ops")."""

import re

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

torch = pytest.importorskip("torch")

import tilespec  # noqa: E402
from tilespec import colour, testing as tt  # noqa: E402
from tilespec.stain import (FAMILY, FIT_PRESETS, METHODS, NORMAL_DRAWS, BlankImageError,  # noqa: E402
                            StainNormalizationError, StainNormalizer,
                            draw_stain_perturbation, standardize_brightness)
from tilespec.synthetic import encode_jpeg  # noqa: E402
from tilespec_torch import ops, stain  # noqa: E402

from test_stain import E_VEC2, H_VEC2, he_tile, lab_image, tissue  # noqa: E402

FEW = settings(max_examples=max(5, settings.default.max_examples // 5))

#: spec/stain.md, "Conformance (adapters)": (grey levels, fraction of values that differ).
BOUNDS = {"reinhard": (1, 0.01), "macenko": (2, 0.01)}   # by FAMILY


def torch_transform(norm, img, perturbation=None, **kw):
    """The torch transform of an HWC / NHWC array, as an array of the same layout."""
    return ops.to_numpy(stain.transform(norm, ops.from_numpy(img), perturbation=perturbation,
                                        **kw))


def diff(got, want):
    """(max |difference| in grey levels, fraction of values that differ)."""
    d = np.abs(got.astype(np.int16) - want.astype(np.int16))
    return int(d.max(initial=0)), float((d > 0).mean()) if d.size else 0.0


def assert_conforms(method, got, want):
    top, frac = diff(got, want)
    bound, max_frac = BOUNDS[FAMILY[method]]
    assert top <= bound and frac <= max_frac, (top, frac)
    return top, frac


def images_for(method, n=3, size=64, seed=0):
    if FAMILY[method] == "macenko":
        return np.stack([he_tile(seed + i, size=size)[0] for i in range(n)])
    return np.stack([tissue(seed + i, size=size) for i in range(n)])


def all_colours(step):
    """Every ``step``-th of the 2^24 uint8 RGB colours, and the corners of the cube, as a
    (3, 1, M) CHW image."""
    v = np.r_[np.arange(0, 1 << 24, step), 0xFFFFFF, 0xFF0000, 0x00FF00, 0x0000FF, 0x808080]
    rgb = np.stack([(v >> 16) & 255, (v >> 8) & 255, v & 255]).astype(np.uint8)
    return rgb[:, None, :]


# ----------------------------------------------------------------------------- colour

@pytest.mark.parametrize("dtype,bound", [(torch.float32, 1e-3), (torch.float64, 1e-9)])
def test_rgb_to_lab_of_uint8_colours(dtype, bound):
    """Row 'rgb_to_lab of uint8 colours': abs error <= 1e-3 (float64: rounding only)."""
    chw = all_colours(97)
    want = colour.rgb_to_lab(np.moveaxis(chw, 0, -1))
    got = stain.rgb_to_lab(torch.from_numpy(chw), dtype=dtype)
    assert got.dtype == dtype and got.shape == chw.shape
    err = np.abs(np.moveaxis(got.double().numpy(), 0, -1) - want).max()
    assert err <= bound
    # a batch converts each image alike
    batch = torch.from_numpy(np.stack([chw[..., :50], chw[..., 50:100]]))
    assert torch.equal(stain.rgb_to_lab(batch, dtype)[1], stain.rgb_to_lab(batch[1], dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_lab_round_trip_of_uint8_colours_is_exact(dtype):
    """Row 'lab_to_rgb then to_uint8 of rgb_to_lab(uint8)': exact, from the torch L*a*b* and
    from the reference's."""
    chw = torch.from_numpy(all_colours(61))
    assert torch.equal(stain.to_uint8(stain.lab_to_rgb(stain.rgb_to_lab(chw, dtype))), chw)
    ref_lab = torch.from_numpy(colour.rgb_to_lab(ops.to_numpy(chw))).permute(2, 0, 1)
    assert torch.equal(stain.to_uint8(stain.lab_to_rgb(ref_lab.to(dtype))), chw)


@given(arrays(np.float64, (3, 2, 5), elements=st.floats(-150.0, 150.0)))
def test_lab_to_rgb_out_of_gamut_and_both_branches(lab):
    """Not clipped, as the reference: any L*a*b* (either companding branch) converts alike."""
    want = np.moveaxis(colour.lab_to_rgb(np.moveaxis(lab, 0, -1)), -1, 0)
    got64 = stain.lab_to_rgb(torch.from_numpy(lab)).numpy()
    np.testing.assert_allclose(got64, want, rtol=1e-9, atol=1e-9)
    got32 = stain.lab_to_rgb(torch.from_numpy(lab).float()).double().numpy()
    np.testing.assert_allclose(got32, want, rtol=1e-4, atol=1e-4)


def test_to_uint8_rounds_half_to_even_clips_and_rejects_nan():
    x = torch.tensor([[[-0.2, 0.5 / 255, 1.5 / 255, 2.5 / 255, 254.5 / 255, 1.3]]] * 3,
                     dtype=torch.float64)
    np.testing.assert_array_equal(stain.to_uint8(x).numpy(), colour.to_uint8(x.numpy()))
    assert stain.to_uint8(x)[0, 0].tolist() == [0, 0, 2, 2, 254, 255]
    with pytest.raises(ValueError, match=re.escape("image has NaN values; cannot convert")):
        stain.to_uint8(torch.full((3, 2, 2), float("nan")))
    with pytest.raises(ValueError, match="floating-point torch tensor"):
        stain.to_uint8(torch.zeros((3, 2, 2), dtype=torch.uint8))


def test_colour_input_errors():
    with pytest.raises(ValueError, match="torch tensor"):
        stain.rgb_to_lab(np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="dtype torch.uint8"):
        stain.rgb_to_lab(torch.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        stain.rgb_to_lab(torch.zeros((3, 2, 2), dtype=torch.uint8), dtype=torch.float16)
    with pytest.raises(ValueError, match=r"CHW or NCHW .*got shape \(2, 2, 3\)"):
        stain.lab_to_rgb(torch.zeros((2, 2, 3)))
    with pytest.raises(ValueError, match="floating-point"):
        stain.lab_to_rgb(torch.zeros((3, 2, 2), dtype=torch.int32))


# ------------------------------------------------------------------ brightness, percentiles

def _images_with_ties():
    return st.builds(
        lambda seed, n, h, w, k: np.random.default_rng(seed).choice(
            np.random.default_rng(seed + 1).integers(0, 256, k), (n, h, w, 3)).astype(np.uint8),
        st.integers(0, 2**32 - 1), st.integers(1, 3), st.integers(1, 9), st.integers(1, 9),
        st.integers(1, 6))


@given(_images_with_ties())
def test_standardize_brightness_is_exact(batch):
    """Row 'brightness standardization': exact (the bound is 99.9% exact, off by <= 1)."""
    got = ops.to_numpy(stain.standardize_brightness(ops.from_numpy(batch)))
    want = np.stack([standardize_brightness(img) for img in batch])
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(ops.to_numpy(stain.standardize_brightness(
        ops.from_numpy(batch[0]))), want[0])


def test_standardize_brightness_seeded():
    imgs = [tissue(1, 64), he_tile(2, 64)[0], np.zeros((5, 7, 3), np.uint8),
            np.full((4, 4, 3), 255, np.uint8)]
    for img in imgs:
        np.testing.assert_array_equal(
            ops.to_numpy(stain.standardize_brightness(ops.from_numpy(img))),
            standardize_brightness(img))


@given(st.lists(st.integers(0, 255), min_size=1, max_size=300),
       st.sampled_from([0.0, 1.0, 50.0, 90.0, 99.0, 99.9, 100.0]))
def test_histogram_percentile_equals_numpy(values, q):
    counts = np.bincount(values, minlength=256)
    assert stain._hist_percentile(counts, q) == np.percentile(np.array(values, float), q)


@given(st.integers(0, 2**32 - 1), st.sampled_from([1, 2, 7, 100, 8191, 20000, 70000]),
       st.sampled_from(["normal", "sorted", "reversed", "few", "constant"]),
       st.booleans(), st.sampled_from([torch.float32, torch.float64]))
def test_percentile_equals_numpy(seed, n, kind, masked, dtype):
    """The tail selection (sample, threshold, fallback) gives NumPy's percentile exactly."""
    rng = np.random.default_rng(seed)
    x = {"normal": rng.normal(size=n), "sorted": np.sort(rng.normal(size=n)),
         "reversed": np.sort(rng.normal(size=n))[::-1].copy(),
         "few": rng.integers(0, 3, n).astype(float), "constant": np.full(n, 0.25)}[kind]
    x = torch.from_numpy(x).to(dtype)
    mask = torch.from_numpy(rng.random(n) < 0.7) if masked else None
    if mask is not None and not mask.any():
        mask[0] = True
    values = x.numpy() if mask is None else x.numpy()[mask.numpy()]
    for q in (1.0, 99.0, 90.0, 50.0, 0.0, 100.0):
        got = stain._percentile(x, q, mask, None if mask is None else int(mask.sum()),
                                torch.empty_like(x))
        assert got == np.percentile(values.astype(np.float64), q)


# ------------------------------------------------------------------ Macenko decomposition

@pytest.mark.parametrize("seed,h,e", [(0, None, None), (1, None, None), (2, H_VEC2, E_VEC2)])
def test_macenko_stain_matrix_and_max_concentrations(seed, h, e):
    """Rows 'Macenko fit' for the decomposition the transform uses (the adapter's fit is
    the reference's): entries within 1e-3, max concentrations within 1e-3 relative."""
    from tilespec.stain import _macenko_decompose

    kw = {} if h is None else {"h": h, "e": e}
    img = he_tile(seed, size=80, **kw)[0]
    he_ref, maxc_ref, _ = _macenko_decompose(img)
    x = stain._flat(ops.from_numpy(img).unsqueeze(0))
    take = stain._fresh
    idx = stain._index(x, take)
    levels = stain._brightness_levels(idx, 1)
    od64 = stain._lookup(stain._OD[levels], idx, torch.empty(x.shape, dtype=torch.float64))
    tissue_mask = torch.from_numpy(stain._OD_TISSUE[levels]).reshape(-1)[idx].all(dim=1)[0]
    he = stain._stain_matrix(od64[0], od64[0].float(), tissue_mask, take)
    np.testing.assert_allclose(he.numpy(), he_ref, atol=1e-3)
    pinv = torch.linalg.solve(he.T @ he, he.T)
    conc = (pinv.float() @ od64[0].float())
    maxc = [stain._percentile(conc[i], 99.0) for i in range(2)]
    np.testing.assert_allclose(maxc, maxc_ref, rtol=1e-3)


# ----------------------------------------------------------------------------- transforms

def _normalizers(method):
    norms = [StainNormalizer(method, fit_preset=p) for p in FIT_PRESETS[method]]
    fitted = StainNormalizer(method).fit(images_for(method, 1, 96, seed=40)[0])
    return norms + [fitted]


@pytest.mark.parametrize("method", METHODS)
def test_transform_bounds(method):
    """Rows 'Reinhard transform' (1 level, <= 1% differ) and 'Macenko transform' (2 levels,
    <= 1%), for each fit preset and a fitted target, one image and a batch."""
    batch = images_for(method, 4, 96, seed=20)
    for norm in _normalizers(method):
        want = norm.transform(batch)
        assert_conforms(method, torch_transform(norm, batch), want)
        assert_conforms(method, torch_transform(norm, batch[2]), want[2])


def test_transform_bounds_on_other_stains_and_sizes():
    for size, kw in ((40, {}), (128, {"h": H_VEC2, "e": E_VEC2})):
        img = he_tile(7, size=size, **kw)[0]
        norm = StainNormalizer("macenko")
        assert_conforms("macenko", torch_transform(norm, img), norm.transform(img))
    for method in ("reinhard", "reinhard_fast"):
        img = lab_image(3, 80)
        norm = StainNormalizer(method)
        assert_conforms(method, torch_transform(norm, img), norm.transform(img))


@pytest.mark.parametrize("method", METHODS)
def test_augmentation_with_the_same_z(method):
    """Row 'Augmentation with the same z': the transform bounds with perturbed targets, the
    perturbation drawn by the reference's draw_stain_perturbation."""
    batch = images_for(method, 3, 64, seed=30)
    norm = StainNormalizer(method)
    z = np.random.default_rng(5).standard_normal((3, NORMAL_DRAWS[method])) * 2
    delta = draw_stain_perturbation(norm, z)
    got = torch_transform(norm, batch, delta)
    want = norm.transform(batch, augment=True, perturbation=delta)
    assert_conforms(method, got, want)
    assert diff(got, torch_transform(norm, batch))[0] > 0        # the targets did move
    one = {k: v[1] for k, v in delta.items()}
    assert_conforms(method, torch_transform(norm, batch[1], one),
                    norm.transform(batch[1], augment=True, perturbation=one))
    # a missing key is a zero delta, as in the reference
    key = next(iter(delta))
    part = {key: delta[key]}
    assert_conforms(method, torch_transform(norm, batch, part),
                    norm.transform(batch, augment=True, perturbation=part))


@FEW
@given(method=st.sampled_from(METHODS), seed=st.integers(0, 10**6),
       size=st.integers(8, 72), z=arrays(np.float64, 8, elements=st.floats(-3, 3)))
def test_transform_bounds_property(method, seed, size, z):
    img = images_for(method, 1, size, seed=seed)[0]
    norm = StainNormalizer(method, on_blank="passthrough")
    delta = draw_stain_perturbation(norm, z[:NORMAL_DRAWS[method]])
    for pert in (None, delta):
        want = norm.transform(img) if pert is None else \
            norm.transform(img, augment=True, perturbation=pert)
        assert_conforms(method, torch_transform(norm, img, pert), want)


@pytest.mark.parametrize("method", METHODS)
def test_float64_is_the_reference_up_to_rounding(method):
    batch = images_for(method, 3, 64, seed=50)
    norm = StainNormalizer(method)
    top, frac = diff(torch_transform(norm, batch, dtype=torch.float64), norm.transform(batch))
    assert top <= 1 and frac <= 1e-4


@pytest.mark.parametrize("method", METHODS)
def test_batch_equals_per_image(method, monkeypatch):
    """Images are grouped by CHUNK_PIXELS; any grouping gives each image's own result."""
    batch = images_for(method, 5, 24, seed=60)
    norm = StainNormalizer(method)
    z = np.random.default_rng(6).standard_normal((5, NORMAL_DRAWS[method]))
    delta = draw_stain_perturbation(norm, z)
    singles = [torch_transform(norm, batch[i]) for i in range(5)]
    augmented = [torch_transform(norm, batch[i], {k: v[i] for k, v in delta.items()})
                 for i in range(5)]
    for chunk in (1, 24 * 24 * 2 + 5, 1 << 16):
        monkeypatch.setattr(stain, "CHUNK_PIXELS", chunk)
        np.testing.assert_array_equal(torch_transform(norm, batch), np.stack(singles))
        np.testing.assert_array_equal(torch_transform(norm, batch, delta), np.stack(augmented))
    assert torch_transform(norm, batch[:0]).shape == (0,) + batch.shape[1:]
    assert torch_transform(norm, batch[:0], {k: v[:0] for k, v in delta.items()}).shape[0] == 0


def test_workspace_limit_and_fresh_outputs(monkeypatch):
    """Scratch tensors over WORKSPACE_LIMIT are not kept; outputs never share memory with
    the scratch tensors, the input or each other; the input is not changed."""
    img = ops.from_numpy(tissue(3, 64))
    before = img.clone()
    norm = StainNormalizer("reinhard")
    first = stain.transform(norm, img)
    monkeypatch.setattr(stain, "_WORKSPACE", stain._Workspace())
    monkeypatch.setattr(stain, "WORKSPACE_LIMIT", 1000)
    second = stain.transform(norm, img)
    assert not stain._WORKSPACE.buffers
    assert torch.equal(first, second) and torch.equal(img, before)
    assert first.data_ptr() != second.data_ptr() != img.data_ptr()
    assert first.is_contiguous() and first.dtype == torch.uint8


def test_non_contiguous_input():
    batch = images_for("macenko", 2, 32, seed=70)
    norm = StainNormalizer("macenko")
    t = ops.from_numpy(batch)
    for view in (t.transpose(-1, -2), t.contiguous(memory_format=torch.channels_last),
                 t[:, :, ::2, 1::2]):
        np.testing.assert_array_equal(stain.transform(norm, view).numpy(),
                                      stain.transform(norm, view.contiguous()).numpy())


# ----------------------------------------------------------------------------- blank images

def _blank_cases():
    white = np.full((32, 32, 3), 255, np.uint8)
    pale_red = np.full((32, 32, 3), [240, 100, 100], np.uint8)   # rule (a): no tissue
    pale_red[:8] = 255
    flat = np.full((32, 32, 3), [120, 60, 160], np.uint8)        # rule (b): one stain colour
    flat[:8] = 255
    sparse = np.full((64, 64, 3), 255, np.uint8)                 # rule (c): 99th percentile of
    sparse.reshape(-1, 3)[::200] = he_tile(1, 5)[0].reshape(-1, 3)[:21]   # C is background
    grey = np.repeat(np.linspace(60, 200, 32 * 32).reshape(32, 32, 1), 3,
                     axis=2).astype(np.uint8)                    # a*, b* stds ~0: Reinhard
    single = np.full((16, 16, 3), [200, 120, 170], np.uint8)
    return {"macenko": [white, pale_red, flat, sparse],
            "reinhard": [white, single, grey], "reinhard_fast": [white, single, grey]}


def _error(fn):
    with pytest.raises(BlankImageError) as info:
        fn()
    return str(info.value), info.value.index, info.value.reason


@pytest.mark.parametrize("method", METHODS)
def test_blank_errors_are_the_references(method):
    good = images_for(method, 1, 64, seed=80)[0]
    for img in _blank_cases()[FAMILY[method] if FAMILY[method] == "macenko" else method.replace("_mask", "")]:
        norm = StainNormalizer(method)
        want = _error(lambda: norm.transform(img))
        assert "passthrough" in want[0]
        assert _error(lambda: stain.transform(norm, ops.from_numpy(img))) == want
        batch = np.stack([good[:img.shape[0], :img.shape[1]], img, img])
        want = _error(lambda: norm.transform(batch))
        assert want[1] == 1
        assert _error(lambda: stain.transform(norm, ops.from_numpy(batch))) == want
        assert norm.blank_count == 0


@pytest.mark.parametrize("method", METHODS)
def test_blank_passthrough_is_counted(method):
    good = images_for(method, 2, 64, seed=90)
    for img in _blank_cases()[FAMILY[method] if FAMILY[method] == "macenko" else method.replace("_mask", "")]:
        h, w = img.shape[:2]
        batch = np.stack([good[0, :h, :w], img, good[1, :h, :w], img])
        ref = StainNormalizer(method, on_blank="passthrough")
        got = StainNormalizer(method, on_blank="passthrough")
        want = ref.transform(batch)
        out = torch_transform(got, batch)
        assert got.blank_count == ref.blank_count == 2
        np.testing.assert_array_equal(out[[1, 3]], batch[[1, 3]])
        assert_conforms(method, out, want)
        assert torch_transform(got, img).tolist() == img.tolist() and got.blank_count == 3


@FEW
@given(seed=st.integers(0, 10**6), count=st.integers(0, 60), method=st.sampled_from(METHODS),
       passthrough=st.booleans())
def test_blank_decisions_agree(seed, count, method, passthrough):
    """White tiles with a few stained pixels: blank for both or neither, same message or
    count, otherwise within the bounds."""
    rng = np.random.default_rng(seed)
    img = np.full((40, 40, 3), 255, np.uint8)
    where = rng.choice(1600, count, replace=False)
    img.reshape(-1, 3)[where] = he_tile(seed, 8)[0].reshape(-1, 3)[:count]
    on_blank = "passthrough" if passthrough else "error"
    ref, got = StainNormalizer(method, on_blank=on_blank), StainNormalizer(method,
                                                                           on_blank=on_blank)
    try:
        want = ref.transform(img)
    except BlankImageError as e:
        assert _error(lambda: torch_transform(got, img)) == (str(e), e.index, e.reason)
        return
    assert_conforms(method, torch_transform(got, img), want)
    assert got.blank_count == ref.blank_count


def test_low_contrast_images_are_the_references():
    """An L*a*b* std under 1/100 of its target goes to the reference (exact); one a little
    above is normalized in float32, within the bounds."""
    from tilespec.stain import lab_mean_std

    for method in ("reinhard", "reinhard_fast"):
        norm = StainNormalizer(method)
        t_stds = norm.get_fit()["target_stds"]
        for s, deferred in ((0.002, True), (0.02, False)):
            img = lab_image(4, 48, mean=(62.0, 0.0, 0.0), std=(6.0, s, s))
            seen = standardize_brightness(img) if method == "reinhard" else img
            assert (t_stds > 100 * lab_mean_std(seen)[1]).any() == deferred
            got, want = torch_transform(norm, img), norm.transform(img)
            if deferred:
                np.testing.assert_array_equal(got, want)
            else:
                assert_conforms(method, got, want)


# ----------------------------------------------------------------------------- errors

def test_bad_images():
    norm = StainNormalizer("reinhard")
    with pytest.raises(ValueError, match="must be a torch tensor, got ndarray"):
        stain.transform(norm, np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match=r"CHW or NCHW RGB.*got shape \(4, 4, 3\)"):
        stain.transform(norm, torch.zeros((4, 4, 3), dtype=torch.uint8))
    with pytest.raises(ValueError, match="dtype torch.uint8, got torch.float32"):
        stain.transform(norm, torch.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="empty"):
        stain.transform(norm, torch.zeros((3, 0, 4), dtype=torch.uint8))
    with pytest.raises(StainNormalizationError, match="tilespec.StainNormalizer; got str"):
        stain.transform("reinhard", torch.zeros((3, 4, 4), dtype=torch.uint8))
    with pytest.raises(ValueError, match="float32 or torch.float64"):
        stain.transform(norm, torch.zeros((3, 4, 4), dtype=torch.uint8), dtype=torch.int32)


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_bad_perturbations_have_the_references_messages(method):
    norm = StainNormalizer(method)
    img = images_for(method, 2, 16)
    key = "target_means" if method == "reinhard" else "stain_matrix_target"
    shape = {"target_means": (3,), "stain_matrix_target": (3, 2)}[key]
    for pert in ({"nope": 0.0}, {key: np.zeros((5,))}, {key: np.full(shape, np.nan)},
                 [1, 2], {key: "x"}):
        for x in (img, img[0]):
            batch_pert = pert if x.ndim == 3 or not isinstance(pert, dict) or "nope" in pert \
                else {k: np.broadcast_to(v, (2,) + np.shape(v)) for k, v in pert.items()}
            with pytest.raises(StainNormalizationError) as want:
                norm.transform(x, augment=True, perturbation=batch_pert)
            with pytest.raises(StainNormalizationError) as got:
                torch_transform(norm, x, batch_pert)
            assert str(got.value) == str(want.value)


def test_ops_stain_normalize_is_this_transform():
    img = ops.from_numpy(he_tile(3, 40)[0])
    norm = StainNormalizer("macenko")
    delta = draw_stain_perturbation(norm, np.arange(8) / 8.0)
    assert torch.equal(ops.stain_normalize(norm, img), stain.transform(norm, img))
    assert torch.equal(ops.stain_normalize(norm, img, perturbation=delta),
                       stain.transform(norm, img, perturbation=delta))


# ----------------------------------------------------------------------------- in the loader

@pytest.fixture(scope="module")
def he_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("he-torch")
    for s in range(2):
        tilespec.write_records(str(folder / f"he-{s}.tfrecords"), [
            tilespec.encode_tile(encode_jpeg(he_tile(10 * s + i, 48)[0], 95), f"he-{s}",
                                 loc_x=48 * i, loc_y=0) for i in range(5)])
    return tilespec.Dataset(tfrecords=str(folder))


@pytest.mark.parametrize("method,augment", [("macenko", "n"), ("macenko", "xn"),
                                            ("reinhard", "rn"), ("reinhard_fast", "")])
def test_loader_conforms_with_torch_stain(he_dataset, method, augment):
    opts = dict(seed=3, infinite=False, augment=augment, standardize=False,
                normalizer=StainNormalizer(method, on_blank="passthrough"))
    for extra in ({}, {"batch_size": 4}):
        o = dict(opts, **extra)
        assert tt.assert_conforms(he_dataset.torch(**o), he_dataset.numpy(**o), layout="CHW",
                                  options=o) > 0
