"""spec/stain.md's exact formulas against the known answers of spec/vectors/stain/.

The vectors come from spec/vectors/stain/make_vectors.py, a plain scalar implementation
of the spec's text and constants tables. The reference must reproduce them (to a few
ulps where libm and NumPy evaluate pow/cbrt differently; exactly for uint8 results),
the adapters' own stain ops must meet spec/stain.md "Conformance (adapters)" on them,
the constants must agree with the published CIE / IEC 61966-2-1 values, and the script
must rebuild the committed files byte for byte.
"""

import importlib
import inspect
import json
import os
import re

import numpy as np
import pytest

from tilespec import colour, plugins, stain
from vector_files import assert_rebuilds, chapter, load

HERE, PLAIN = chapter("stain")
SPEC = os.path.join(os.path.dirname(__file__), os.pardir, "spec", "stain.md")
BACKENDS = plugins.backends()


def vectors(name):
    return load(HERE, name)


def adapter_stain_modules():
    """(backend, ops, its package's ``stain`` module or None) of every adapter but numpy."""
    out = []
    for b in BACKENDS:
        if b == "numpy":
            continue
        ops = plugins.ops_for(b)
        pkg = (inspect.getmodule(ops).__package__ or "").split(".")[0]
        try:
            mod = importlib.import_module(f"{pkg}.stain")
        except ImportError:
            mod = None
        out.append((b, ops, mod))
    return out


ADAPTERS = adapter_stain_modules()


def test_make_vectors_rebuilds_the_committed_files():
    assert_rebuilds(HERE, PLAIN)


def test_companding():
    dec, enc = vectors("companding.json")
    np.testing.assert_allclose(colour.srgb_to_linear(np.array(dec["c"])), dec["linear"],
                               rtol=1e-14, atol=0)
    np.testing.assert_allclose(colour.linear_to_srgb(np.array(enc["v"])), enc["srgb"],
                               rtol=1e-14, atol=0)


def test_matrices_and_white():
    v = vectors("matrices.json")[0]
    assert colour.D65_WHITE.tolist() == v["white"]
    assert colour.SRGB_PRIMARIES_XY.tolist() == v["primaries_xy"]
    np.testing.assert_allclose(colour.SRGB_TO_XYZ, v["rgb_to_xyz"], rtol=1e-14, atol=1e-16)
    np.testing.assert_allclose(colour.XYZ_TO_SRGB, v["xyz_to_rgb"], rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(colour.SRGB_TO_XYZ.sum(axis=1), v["white"], rtol=1e-15)


def test_constants_against_published_values():
    # CIE 15:2004, D65 (2-degree observer): X, Y, Z = 95.047, 100.000, 108.883; IEC
    # 61966-2-1:1999 gives its chromaticity as x = 0.3127, y = 0.3290
    X, Y, Z = colour.D65_WHITE
    assert (X, Y, Z) == (0.95047, 1.0, 1.08883)
    assert abs(X / (X + Y + Z) - 0.3127) < 1e-4 and abs(Y / (X + Y + Z) - 0.3290) < 1e-4
    # IEC 61966-2-1:1999 (4 decimals, derived there from the rounded white x, y)
    iec = [[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]]
    iec_inv = [[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415],
               [0.0557, -0.2040, 1.0570]]
    np.testing.assert_allclose(colour.SRGB_TO_XYZ, iec, atol=2.5e-4, rtol=0)
    np.testing.assert_allclose(colour.XYZ_TO_SRGB, iec_inv, atol=4e-4, rtol=0)
    # the CIE's exact companding fractions, their published decimals
    assert abs(colour.LAB_EPSILON - 0.008856) < 5e-7 and abs(colour.LAB_KAPPA - 903.3) < 0.03
    assert colour.LAB_DELTA ** 3 == pytest.approx(colour.LAB_EPSILON, rel=1e-15)


def test_the_spec_tables_of_the_matrices():
    """spec/stain.md prints M and its inverse to 10 digits: they are the derived ones."""
    with open(SPEC, encoding="utf-8") as f:
        text = f.read()
    rows = re.findall(r"^\s*\| [XYZ] \| ([-\d.]+) \| ([-\d.]+) \| ([-\d.]+) \|$", text, re.M)
    np.testing.assert_allclose(np.array(rows, float), colour.SRGB_TO_XYZ, atol=6e-11, rtol=0)
    inv = re.search(r"M⁻¹ \(computed in float64\):\s*(\[\[.*?\]\])\.", text, re.S).group(1)
    inv = json.loads(inv.replace("−", "-").replace("\n", " "))
    np.testing.assert_allclose(inv, colour.XYZ_TO_SRGB, atol=6e-11, rtol=0)


def test_lab():
    fwd, back = vectors("lab.json")
    np.testing.assert_allclose(colour.xyz_to_lab(np.array(fwd["xyz"])), fwd["lab"],
                               rtol=1e-13, atol=1e-12)
    np.testing.assert_allclose(colour.lab_to_xyz(np.array(back["lab"])), back["xyz"],
                               rtol=1e-13, atol=1e-15)


def test_rgb_lab_round_trip():
    v = vectors("rgb_lab.json")[0]
    rgb = np.array(v["rgb"], dtype=np.uint8)
    np.testing.assert_allclose(colour.rgb_to_lab(rgb), v["lab"], rtol=1e-13, atol=1e-11)
    np.testing.assert_allclose(colour.lab_to_rgb(np.array(v["lab"])), v["back"], rtol=1e-12,
                               atol=1e-12)
    assert colour.to_uint8(colour.lab_to_rgb(colour.rgb_to_lab(rgb))).tolist() == v["round_trip"]
    assert v["round_trip"] == v["rgb"]


@pytest.mark.parametrize("backend,ops,mod", ADAPTERS, ids=[a[0] for a in ADAPTERS])
def test_adapter_colour_conversions(backend, ops, mod):
    if mod is None or not hasattr(mod, "rgb_to_lab"):
        pytest.skip(f"{backend} has no colour conversions of its own")
    v = vectors("rgb_lab.json")[0]
    img = ops.from_numpy(np.array(v["rgb"], dtype=np.uint8).reshape(1, -1, 3))
    lab = mod.rgb_to_lab(img)
    got = np.asarray(ops.to_numpy(lab) if ops.layout == "HWC" else
                     np.moveaxis(np.asarray(lab), 0, -1)).reshape(-1, 3)
    np.testing.assert_allclose(got, v["lab"], atol=1e-3, rtol=0)   # spec: 1e-3 per component
    back = np.asarray(mod.to_uint8(mod.lab_to_rgb(lab)))
    back = (back if ops.layout == "HWC" else np.moveaxis(back, 0, -1)).reshape(-1, 3)
    assert back.tolist() == v["rgb"]                                # exact


def test_presets():
    for v in vectors("presets.json"):
        norm = stain.StainNormalizer(v["method"])
        if v["kind"] == "fit":
            got = norm.fit_preset(v["preset"]).get_fit()
        else:
            got = norm.augment_preset(v["preset"]).get_augment()
        assert set(got) == set(v["values"]), v
        for k, want in v["values"].items():
            np.testing.assert_allclose(got[k], want, rtol=1e-15, atol=0, err_msg=str(v))


@pytest.mark.parametrize("v", vectors("perturbation.json"), ids=lambda v: v["method"])
def test_stain_perturbation(v):
    one = [stain.draw_stain_perturbation(v["method"], z, augment_preset=v["augment_preset"])
           for z in v["z"]]
    batch = stain.draw_stain_perturbation(v["method"], np.array(v["z"]))
    for i, want in enumerate(v["delta"]):
        assert set(one[i]) == set(want)
        for k in want:
            np.testing.assert_allclose(one[i][k], want[k], rtol=1e-15, atol=0)
            np.testing.assert_allclose(batch[k][i], want[k], rtol=1e-15, atol=0)


def test_loader_normals_are_the_perturbation_draws():
    # the vectors' z of positions 0, 1, 2^32 are the normals augmentation 'n' at place 2
    # of the string draws (spec/images.md, "Augmentation draws")
    from tilespec import augment, rng
    v = vectors("perturbation.json")[2]
    draws = augment.draw_augmentations("xyn", rng.stream_key(2024, 0, 0),
                                       np.array([0, 1, 2 ** 32]), stain_draws=8)
    np.testing.assert_allclose(draws.stain, v["z"][2:], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("v", vectors("brightness.json"), ids=lambda v: f"{v['image']}-{v['mask']}")
def test_brightness_standardization(v):
    img = np.array(v["pixels"], dtype=np.uint8)
    assert stain.standardize_brightness(img, mask=v["mask"]).tolist() == v["out"]


@pytest.mark.parametrize("backend,ops,mod", ADAPTERS, ids=[a[0] for a in ADAPTERS])
def test_adapter_brightness_standardization(backend, ops, mod):
    if mod is None or not hasattr(mod, "standardize_brightness"):
        pytest.skip(f"{backend} has no brightness standardization of its own")
    for v in vectors("brightness.json"):
        if v["mask"]:
            continue
        got = mod.standardize_brightness(ops.from_numpy(np.array(v["pixels"], dtype=np.uint8)))
        got = np.asarray(ops.to_numpy(got))
        assert got.tolist() == v["out"], (backend, v["image"])


@pytest.mark.parametrize("v", vectors("reinhard.json"),
                         ids=lambda v: f"{v['method']}-{v['image']}-{v['target']}")
def test_reinhard(v):
    img = np.array(v["pixels"], dtype=np.uint8)
    fit = stain.StainNormalizer(v["method"]).fit(img).get_fit()
    for k, want in v["fit"].items():
        np.testing.assert_allclose(fit[k], want, rtol=1e-12, atol=1e-12)
    norm = stain.StainNormalizer(v["method"], fit_preset=v["target"])
    assert norm.transform(img).tolist() == v["out"]
    for backend, ops, _ in ADAPTERS:  # their own per-pixel arithmetic: within 1 grey level
        if getattr(ops, "stain_normalize", None) is None:
            continue
        got = np.asarray(ops.to_numpy(ops.stain_normalize(norm, ops.from_numpy(img))))
        diff = np.abs(got.astype(int) - np.array(v["out"]))
        assert diff.max() <= 1, backend


@pytest.mark.parametrize("v", vectors("macenko.json"), ids=lambda v: v["target"])
def test_macenko(v):
    img = np.array(v["image"], dtype=np.uint8)
    fit = stain.StainNormalizer("macenko").fit(img).get_fit()
    for k, want in v["fit"].items():
        np.testing.assert_allclose(fit[k], want, rtol=1e-9, atol=1e-12)
    norm = stain.StainNormalizer("macenko", fit_preset=v["target"])
    assert norm.transform(img).tolist() == v["out"]
    for backend, ops, _ in ADAPTERS:  # spec/stain.md, "Conformance (adapters)": 2 levels
        if getattr(ops, "stain_normalize", None) is None:
            continue
        got = np.asarray(ops.to_numpy(ops.stain_normalize(norm, ops.from_numpy(img))))
        assert np.abs(got.astype(int) - np.array(v["out"])).max() <= 2, backend
