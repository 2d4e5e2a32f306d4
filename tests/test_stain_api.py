"""spec/stain.md, "Entry points" and the masked / fast methods: StainNormalizer as slideflow
users call it (fit from a preset, a path or an array; get_fit/set_fit; the rgb/jpeg/png/torch
conversions; autoselect), 'reinhard_mask', 'reinhard_fast_mask' and 'macenko_fast'."""

import io
import pathlib

import numpy as np
import pytest
from PIL import Image

import tilespec
from tilespec import colour, ops
from tilespec.images import decode_image
from tilespec.stain import (FIT_PRESETS, MASK_L_THRESHOLD, METHODS, NORMAL_DRAWS,
                            StainNormalizationError, StainNormalizer, _macenko_decompose,
                            autoselect, background_mask, draw_stain_perturbation,
                            standardize_brightness)
from tilespec.synthetic import encode_jpeg

from test_stain import he_tile, tissue


def png_bytes(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def with_background(img, rows=6, level=245):
    """``img`` with its first ``rows`` rows a light grey (L* >= 93: background)."""
    out = img.copy()
    out[:rows] = level
    return out


# ----------------------------------------------------------------------------- fit

def test_fit_from_preset_path_array_and_keywords(tmp_path):
    target = tissue(3, 64)
    by_array = StainNormalizer("reinhard").fit(target).get_fit()
    png = tmp_path / "target.png"
    png.write_bytes(png_bytes(target))
    for path in (str(png), png):                                  # str or os.PathLike
        got = StainNormalizer("reinhard").fit(path).get_fit()
        assert all(np.array_equal(got[k], by_array[k]) for k in got)
    jpg = tmp_path / "target.jpg"
    jpg.write_bytes(encode_jpeg(target, 95))
    got = StainNormalizer("reinhard").fit(str(jpg)).get_fit()
    want = StainNormalizer("reinhard").fit(decode_image(jpg.read_bytes())).get_fit()
    assert all(np.array_equal(got[k], want[k]) for k in got)
    # a preset name is fit_preset
    norm = StainNormalizer("macenko")
    assert norm.fit("v1") is norm
    assert np.array_equal(norm.get_fit()["stain_matrix_target"],
                          FIT_PRESETS["macenko"]["v1"]["stain_matrix_target"])
    # keywords (slideflow: fit(None, **params)) are set_fit
    norm.fit(target_concentrations=[1.5, 1.0])
    assert norm.get_fit()["target_concentrations"].tolist() == [1.5, 1.0]


def test_fit_errors_name_method_and_what_is_accepted(tmp_path):
    norm = StainNormalizer("macenko_fast")
    with pytest.raises(StainNormalizationError,
                       match=r"'nope\.png'\) of 'macenko_fast': not a preset \(v1, v2, v3\) and no "
                             "such file"):
        norm.fit("nope.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(StainNormalizationError, match=r"bad\.png.*not JPEG or PNG"):
        norm.fit(str(bad))
    with pytest.raises(StainNormalizationError, match="needs an image.*preset name"):
        norm.fit()
    with pytest.raises(StainNormalizationError, match="not both"):
        norm.fit(he_tile(0, 32)[0], target_concentrations=[1.0, 1.0])
    with pytest.raises(StainNormalizationError, match="fit target of 'macenko_fast' must have "
                                                      "dtype uint8; got float64"):
        norm.fit(np.zeros((4, 4, 3)))


def test_get_fit_as_list_and_set_augment_preset():
    norm = StainNormalizer("reinhard_mask")
    lists = norm.get_fit(as_list=True)
    assert lists == {k: v.tolist() for k, v in FIT_PRESETS["reinhard"]["v3"].items()}
    assert isinstance(lists["target_means"], list)
    v1 = StainNormalizer("reinhard_mask", augment_preset="v1").get_augment()
    norm.set_augment(preset="v1")
    assert all(np.array_equal(norm.get_augment()[k], v1[k]) for k in v1)
    norm.set_augment(preset="v2", means_stdev=[0.0, 0.0, 1.0])
    assert norm.get_augment()["means_stdev"].tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(StainNormalizationError, match="'v9'"):
        norm.set_augment(preset="v9")
    before = norm.get_augment()
    with pytest.raises(StainNormalizationError, match=">= 0"):
        norm.set_augment(preset="v1", stds_stdev=[-1.0, 0.0, 0.0])    # nothing changed
    assert all(np.array_equal(norm.get_augment()[k], before[k]) for k in before)


# ----------------------------------------------------------------------------- conversions

@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_byte_round_trips_equal_the_array_path(method):
    img = he_tile(4, 48)[0] if method == "macenko" else tissue(4, 48)
    norm = StainNormalizer(method)
    want = norm.transform(img)
    np.testing.assert_array_equal(norm.rgb_to_rgb(img), want)
    png = png_bytes(img)
    np.testing.assert_array_equal(norm.png_to_rgb(png), want)
    np.testing.assert_array_equal(decode_image(norm.png_to_png(png)), want)   # lossless
    jpg = encode_jpeg(img, 90)
    decoded = decode_image(jpg)
    np.testing.assert_array_equal(norm.jpeg_to_rgb(jpg), norm.transform(decoded))
    for q in (100, 60):                        # the quality is the JPEG encoder's
        out = norm.jpeg_to_jpeg(jpg, quality=q)
        assert out[:3] == b"\xff\xd8\xff"
        np.testing.assert_array_equal(decode_image(out), ops.jpeg(norm.transform(decoded), q))
    assert norm.jpeg_to_jpeg(jpg) == norm.jpeg_to_jpeg(jpg, quality=100)      # slideflow's default
    # augmentation through the byte paths draws as transform does
    got = norm.png_to_rgb(png, True, rng=np.random.default_rng(9))
    np.testing.assert_array_equal(got, norm.transform(img, True, rng=np.random.default_rng(9)))
    z = np.random.default_rng(2).standard_normal(NORMAL_DRAWS[method])
    delta = draw_stain_perturbation(norm, z)
    np.testing.assert_array_equal(decode_image(norm.png_to_png(png, True, perturbation=delta)),
                                  norm.transform(img, True, perturbation=delta))


def test_conversion_errors():
    norm = StainNormalizer("reinhard_fast")
    with pytest.raises(StainNormalizationError, match="'reinhard_fast' transform.*jpeg_to_rgb"):
        norm.transform(b"\xff\xd8\xff")
    with pytest.raises(StainNormalizationError, match="jpeg_to_rgb takes JPEG or PNG bytes; got a str"):
        norm.jpeg_to_rgb("tile.jpg")
    with pytest.raises(StainNormalizationError, match="png_to_rgb: image bytes are empty"):
        norm.png_to_rgb(b"")
    with pytest.raises(StainNormalizationError, match="rgb_to_rgb takes a numpy uint8 array"):
        norm.rgb_to_rgb([[[1, 2, 3]]])
    with pytest.raises(StainNormalizationError, match="exactly one of rng"):
        norm.png_to_rgb(png_bytes(tissue(1, 16)), True)


try:
    import torch
except ImportError:                                   # pragma: no cover
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


@needs_torch
@pytest.mark.parametrize("method", ["reinhard", "reinhard_fast_mask", "macenko_fast"])
def test_torch_to_torch_layouts_dtypes_and_batches(method):
    imgs = np.stack([he_tile(5 + i, 40)[0] for i in range(3)]) if "macenko" in method else \
        np.stack([with_background(tissue(5 + i, 40)) for i in range(3)])
    norm = StainNormalizer(method)
    want = norm.transform(imgs)
    hwc = torch.from_numpy(imgs)
    chw = hwc.permute(0, 3, 1, 2).contiguous()
    tol = 2 if "macenko" in method else 1          # spec/stain.md, "Conformance (adapters)"
    outs = {}
    for name, x in (("NHWC", hwc), ("NCHW", chw), ("HWC", hwc[1]), ("CHW", chw[1])):
        for dtype in (torch.uint8, torch.float32, torch.float64):
            out = norm.torch_to_torch(x.to(dtype))
            assert out.shape == x.shape and out.dtype == dtype, (name, dtype)
            pixels = out.to(torch.uint8)
            if name.startswith("N"):
                pixels = pixels if name == "NHWC" else pixels.permute(0, 2, 3, 1)
                ref = want
            else:
                pixels = pixels if name == "HWC" else pixels.permute(1, 2, 0)
                ref = want[1]
            d = np.abs(pixels.numpy().astype(int) - ref.astype(int))
            assert d.max() <= tol and (d > 0).mean() <= 0.01, (name, dtype)
            outs[name, dtype] = pixels
    # HWC and CHW give the same pixels, single and batched, whatever the dtype
    for dtype in (torch.uint8, torch.float32, torch.float64):
        assert torch.equal(outs["NHWC", dtype], outs["NCHW", dtype])
        assert torch.equal(outs["HWC", dtype], outs["CHW", dtype])
        assert torch.equal(outs["HWC", dtype], outs["NHWC", torch.uint8][1])
    # the adapter's transform, which torch_to_torch delegates to
    from tilespec_torch import stain as torch_stain
    assert torch.equal(norm.torch_to_torch(chw), torch_stain.transform(norm, chw))
    # transform() of a torch tensor dispatches to torch_to_torch
    assert torch.equal(norm.transform(chw), norm.torch_to_torch(chw))


@needs_torch
def test_torch_to_torch_augment_args_dict_and_errors():
    norm = StainNormalizer("reinhard")
    img = tissue(6, 32)
    chw = torch.from_numpy(img).permute(2, 0, 1).contiguous()
    a = norm.torch_to_torch(chw, augment=True, rng=np.random.default_rng(4))
    z = np.random.default_rng(4).standard_normal(6)
    b = norm.torch_to_torch(chw, augment=True, perturbation=draw_stain_perturbation(norm, z))
    assert torch.equal(a, b) and not torch.equal(a, norm.torch_to_torch(chw))
    # slideflow's forms: extra args come back; a dict's 'tile_image' is normalized
    out, label, slide = norm.torch_to_torch(chw, 3, "s1")
    assert torch.equal(out, norm.torch_to_torch(chw)) and (label, slide) == (3, "s1")
    d = norm.torch_to_torch({"tile_image": chw, "slide": "s1"})
    assert d["slide"] == "s1" and torch.equal(d["tile_image"], out)
    for bad, what in ((torch.zeros(3, 8, 8, dtype=torch.int32), "torch.int32"),
                      (torch.zeros(8, 8, 4, dtype=torch.uint8), r"\(8, 8, 4\)"),
                      (torch.full((3, 8, 8), 0.5), "not all whole numbers in 0..255"),
                      (torch.full((3, 8, 8), 300.0), "values from 300 to 300")):
        with pytest.raises(StainNormalizationError,
                           match=rf"'reinhard' torch_to_torch: input of shape .*{what}.*accepted: "
                                 r"uint8 \(or floating"):
            norm.torch_to_torch(bad)
    with pytest.raises(StainNormalizationError, match="takes a torch tensor; got ndarray"):
        norm.torch_to_torch(img)


# ----------------------------------------------------------------------------- autoselect

def test_autoselect(tmp_path):
    norm = autoselect("reinhard_fast", "v1")
    assert norm.method == "reinhard_fast"
    assert norm.get_fit(as_list=True) == {k: v.tolist() for k, v in
                                          FIT_PRESETS["reinhard_fast"]["v1"].items()}
    assert autoselect("macenko").get_fit(as_list=True) == StainNormalizer("macenko").get_fit(
        as_list=True)                                          # no source: the default v3
    path = tmp_path / "t.png"
    target = he_tile(2, 48)[0]
    path.write_bytes(png_bytes(target))
    got = tilespec.norm.autoselect("macenko", str(path), backend="torch").get_fit()
    want = StainNormalizer("macenko").fit(target).get_fit()
    assert all(np.array_equal(got[k], want[k]) for k in got)
    assert autoselect("reinhard", target_means=[60.0, 10.0, 0.0]).get_fit()[
        "target_means"].tolist() == [60.0, 10.0, 0.0]
    with pytest.raises(StainNormalizationError, match="unknown backend 'jax'"):
        autoselect("reinhard", backend="jax")
    with pytest.raises(StainNormalizationError, match="unknown stain normalization method"):
        autoselect("vahadane")
    assert tilespec.norm.StainNormalizer is StainNormalizer


# ----------------------------------------------------------------------------- masked methods

def test_background_mask_rule_is_l_star_at_least_93():
    # greys: L* of 233 is 92.1, of 236 is 93.2 (after brightness standardization these stay)
    greys = np.arange(225, 246, dtype=np.uint8)
    img = np.repeat(greys[None, :, None], 3, axis=2)
    lab = colour.rgb_to_lab(img)[..., 0]
    mask = background_mask(img, brightness=False)
    np.testing.assert_array_equal(mask, lab >= MASK_L_THRESHOLD)
    assert mask.any() and not mask.all()
    np.testing.assert_array_equal(background_mask(img),
                                  colour.rgb_to_lab(standardize_brightness(img))[..., 0] >= 93.0)


@pytest.mark.parametrize("method,base", [("reinhard_mask", "reinhard"),
                                         ("reinhard_fast_mask", "reinhard_fast")])
def test_masked_reinhard_leaves_background_and_normalizes_the_rest(method, base):
    """Background (L* of S(I) >= 93) keeps S(I)'s pixels; every other pixel is the unmasked
    method's output (the statistics are those of the whole image, as slideflow's)."""
    brightness = base == "reinhard"
    for seed in range(3):
        img = with_background(tissue(seed, 48), rows=10, level=240 + seed)
        for fit in ("v1", "v3"):
            masked = StainNormalizer(method, fit_preset=fit)
            plain = StainNormalizer(base, fit_preset=fit)
            out = masked.transform(img)
            s = standardize_brightness(img) if brightness else img
            bg = background_mask(img, brightness=brightness)
            assert bg[:10].all() and 0 < bg.mean() < 0.5
            np.testing.assert_array_equal(out[bg], s[bg])
            np.testing.assert_array_equal(out[~bg], plain.transform(img)[~bg])
            if not brightness:
                np.testing.assert_array_equal(out[bg], img[bg])     # left exactly as they are
        # augmentation moves the tissue, never the background
        z = np.random.default_rng(seed).standard_normal(6) * 3
        delta = draw_stain_perturbation(masked, z)
        aug = masked.transform(img, True, perturbation=delta)
        np.testing.assert_array_equal(aug[bg], s[bg])
        np.testing.assert_array_equal(aug[~bg], plain.transform(img, True,
                                                                perturbation=delta)[~bg])
        # the fit is the unmasked method's fit
        a, b = StainNormalizer(method).fit(img).get_fit(), StainNormalizer(base).fit(img).get_fit()
        assert all(np.array_equal(a[k], b[k]) for k in a)
    # a batch is each image alone
    batch = np.stack([with_background(tissue(s, 32)) for s in range(3)])
    norm = StainNormalizer(method)
    np.testing.assert_array_equal(norm.transform(batch),
                                  np.stack([norm.transform(i) for i in batch]))


def test_macenko_fast_is_macenko_without_brightness_standardization():
    img = standardize_brightness(he_tile(3, 64)[0])  # then b(I) = I
    np.testing.assert_array_equal(standardize_brightness(img), img)
    for fit in ("v1", "v2"):
        fast = StainNormalizer("macenko_fast", fit_preset=fit)
        fast.set_fit(**StainNormalizer("macenko", fit_preset=fit).get_fit())
        np.testing.assert_array_equal(fast.transform(img),
                                      StainNormalizer("macenko", fit_preset=fit).transform(img))
    dim = (img * 0.8).astype(np.uint8)               # b(dim) != dim
    he, max_c, _ = _macenko_decompose(dim, brightness=False)
    fit = StainNormalizer("macenko_fast").fit(dim).get_fit()
    np.testing.assert_array_equal(fit["stain_matrix_target"], he)
    np.testing.assert_array_equal(fit["target_concentrations"], max_c)
    slow = StainNormalizer("macenko").fit(dim).get_fit()
    assert not np.allclose(slow["target_concentrations"], max_c, rtol=1e-3)
    # the fit of a tile then its transform gives the tile back (within Macenko's rounding)
    raw = he_tile(5, 64)[0]                          # Beer-Lambert, not standardized
    norm = StainNormalizer("macenko_fast").fit(raw)
    assert np.abs(norm.transform(raw).astype(int) - raw).mean() < 1.0


def test_every_method_is_listed_and_has_presets():
    assert METHODS == ("reinhard", "reinhard_fast", "reinhard_mask", "reinhard_fast_mask",
                       "macenko", "macenko_fast")
    for m in METHODS:
        norm = StainNormalizer(m)
        assert norm.normal_draws == (8 if m.startswith("macenko") else 6)
        assert sorted(FIT_PRESETS[m]) == ["v1", "v2", "v3"]
