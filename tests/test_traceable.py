"""Traceable tiles (spec/audit.md, "Traceable tiles"): every image the reference can
yield from them is decoded back to its record, its flips/rotation, its JPEG quality
and its blur sigma, for every parameter value the augmentations draw."""

import numpy as np
import pytest

import tilespec
from tilespec import ops
from tilespec.augment import BLUR_SIGMAS, apply_steps, draw_augmentations
from tilespec.rng import stream_key
from tilespec.traceable import (MIN_DISTANCE, SYMMETRIES, Tracer, _patterns, apply_symmetry,
                                explain_symmetry, image_hwc, symmetry_of, true_labels,
                                write_traceable_dataset)


@pytest.fixture(scope="module", params=["png", "jpeg"])
def traced(request, tmp_path_factory):
    info = write_traceable_dataset(tmp_path_factory.mktemp("tr"), image_format=request.param)
    ds = tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])
    return info, ds, Tracer(ds.tfrecords())


def test_patterns_are_far_apart_under_every_symmetry():
    pats = _patterns(40, 3)
    variants = np.array([apply_symmetry(p, g).ravel() for p in pats for g in SYMMETRIES])
    d = (variants[:, None] != variants[None]).sum(2)
    np.fill_diagonal(d, 64)
    assert d.min() >= MIN_DISTANCE
    assert (pats.reshape(40, -1).sum(1) == 32).all()   # balanced: 32 pale cells each


def test_dataset_layout(traced):
    info, ds, tr = traced
    assert len(tr) == ds.num_tiles == 120
    stems = {p.rsplit("/", 1)[1].split(".")[0] for p in ds.tfrecords()}
    slides = {r.slide for r in tr.records}
    assert "renamed-f" in stems and "tr-f" in slides and "renamed-f" not in slides
    counts = sorted(np.bincount([r.t for r in tr.records]).tolist())
    assert len(set(counts)) > 2                            # unequal counts
    labels, cats = true_labels(info["root"])
    assert cats == ["normal", "tumor"] and labels["tr-f"] != labels["renamed-f"]
    assert sum(r.flat is not None for r in tr.records) == 2


def test_symmetry_algebra():
    assert symmetry_of([]) == (0, 0)
    assert symmetry_of(["flip_left_right", "flip_up_down"]) == symmetry_of([("rot90", 2)])
    assert len({symmetry_of([("rot90", k)]) for k in range(4)}) == 4
    # one explanation per symmetry for a single character; two for 'xyr' (16 -> 8)
    assert explain_symmetry((1, 0), "x") == [{"x0": 1}]
    assert all(len(explain_symmetry(g, "xyr")) == 2 for g in SYMMETRIES)


def _all_steps():
    """Every parameter value of every augmentation character, alone."""
    yield []
    yield [tilespec.augment.Step("flip_left_right")]
    yield [tilespec.augment.Step("flip_up_down")]
    for k in (1, 2, 3):
        yield [tilespec.augment.Step("rot90", (k,))]
    for q in range(50, 101):
        yield [tilespec.augment.Step("jpeg", (q,))]
    for s in BLUR_SIGMAS:
        yield [tilespec.augment.Step("gaussian_blur", (s,))]


def test_decodes_every_parameter_value(traced):
    """For each single step the reference can draw, a few records: the record and the
    symmetry are recovered from uint8, 'unit' and 'per_image' images in HWC and CHW,
    and the JPEG quality / blur sigma exactly."""
    _info, _ds, tr = traced
    rng = np.random.default_rng(0)
    rids = rng.choice(tr.patterned, 3, replace=False)
    jc = [("none", None)] + [("jpeg", q) for q in range(30, 101)]
    bc = [("none", None)] + [("blur", s) for s in (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)]
    for steps in _all_steps():
        g = symmetry_of([(s.op, *s.args) for s in steps if s.op in
                         ("flip_left_right", "flip_up_down", "rot90")])
        for rid in rids:
            img = apply_steps(tr.records[rid].base, steps)
            for mode in (None, "unit", "per_image"):
                v = img if mode is None else ops.standardize(img, mode)
                for layout in ("HWC", "CHW"):
                    y = v if layout == "HWC" else np.moveaxis(v, -1, 0)
                    x, lay = image_hwc(y)
                    assert lay == layout
                    t = tr.identify(x)
                    assert (t.rid, t.symmetry) == (rid, g), (steps, mode, layout)
            if steps and steps[0].op == "jpeg":
                op, q, d, _ = tr.classify(img, rid, g, jc, coarse=5)
                assert (op, q, d) == ("jpeg", steps[0].args[0], 0)
                # from 'unit' too (exactly invertible)
                u = ops.standardize(img, "unit")
                assert tr.classify(u, rid, g, jc, scale="unit", coarse=5)[:2] == ("jpeg", q)
            elif steps and steps[0].op == "gaussian_blur":
                op, s, d, _ = tr.classify(img, rid, g, bc)
                assert (op, s, d) == ("blur", steps[0].args[0], 0)
                p = ops.standardize(img, "per_image")
                assert tr.classify(p, rid, g, bc, scale="affine")[:2] == ("blur", s)
            else:
                assert tr.classify(img, rid, g, jc, coarse=5)[:3] == ("none", None, 0)


def test_survives_the_worst_documented_chain(traced):
    """jpeg(50) then blur(2) after every symmetry, and crop/resize as configured."""
    _info, ds, _tr = traced
    for geo in ({}, {"crop_left": 4, "crop_width": 56}, {"resize_target": 48},
                {"crop_left": 8, "crop_width": 48, "resize_target": 96}):
        tr = Tracer(ds.tfrecords(), **geo)
        for rid in tr.patterned[::7]:
            for g in SYMMETRIES:
                img = ops.gaussian_blur(ops.jpeg(np.ascontiguousarray(
                    apply_symmetry(tr.records[rid].base, g)), 50), 2.0)
                t = tr.identify(ops.standardize(img, "per_image"))
                assert (t.rid, t.symmetry) == (rid, g), geo


def test_decodes_the_reference_loaders_stream(traced):
    """Items of the reference loader with augment='xyrjb': the recovered symmetry is the
    one the drawn steps compose to, and the JPEG quality the drawn one when only 'j'
    ran after the flips."""
    _info, ds, tr = traced
    seed = 7
    loader = ds.numpy(infinite=True, augment="xyrjb", seed=seed, standardize=False)
    draws = draw_augmentations("xyrjb", stream_key(seed, 0, 0), np.arange(300))
    jc = [("none", None)] + [("jpeg", q) for q in range(30, 101)]
    checked = 0
    for i, (img, _label) in zip(range(300), loader):
        t = tr.identify(img)
        rec = loader.plan(0).records(i, i + 1)
        rid = tr.by_key[(int(rec[0][0]), int(rec[1][0]))]
        if tr.records[rid].flat is not None:
            assert t.flat
            continue
        steps = draws.steps[i]
        geo = [(s.op, *s.args) for s in steps if s.op in ("flip_left_right", "flip_up_down",
                                                          "rot90")]
        assert (t.rid, t.symmetry) == (rid, symmetry_of(geo))
        rest = [s for s in steps if s.op not in ("flip_left_right", "flip_up_down", "rot90")]
        if [s.op for s in rest] == ["jpeg"]:
            assert tr.classify(img, rid, t.symmetry, jc, coarse=5)[:2] == ("jpeg",
                                                                          rest[0].args[0])
            checked += 1
    assert checked > 100


@pytest.mark.parametrize("method", ["reinhard", "macenko"])
def test_survives_stain_normalization_and_augmentation(traced, method):
    """The record and symmetry are recovered after stain normalization with stain
    augmentation ('n'), as the reference loader applies it."""
    _info, ds, tr = traced
    loader = ds.numpy(infinite=True, augment="xyrn", normalizer=method, seed=3,
                      standardize=False)
    draws = draw_augmentations("xyr", stream_key(3, 0, 0), np.arange(60))
    plan = loader.plan(0)
    for i, (img, _label) in zip(range(60), loader):
        t, j = plan.records(i, i + 1)
        rid = tr.by_key[(int(t[0]), int(j[0]))]
        if tr.records[rid].flat is not None:
            continue
        g = symmetry_of([(s.op, *s.args) for s in draws.steps[i]])
        got = tr.identify(img)
        assert (got.rid, got.symmetry) == (rid, g)


def test_decode_tells_everything_about_a_reference_item(traced):
    """decode() of 'xyrjb' items: record, symmetry (and the x/y/r assignments that give
    it), JPEG quality and blur sigma, from uint8 and 'unit' images."""
    from tilespec.traceable import decode

    _info, ds, tr = traced
    for std in (False, "unit"):
        loader = ds.numpy(infinite=True, augment="xyrjb", seed=11, standardize=std)
        draws = draw_augmentations("xyrjb", stream_key(11, 0, 0), np.arange(30))
        plan = loader.plan(0)
        for i, (img, _label) in zip(range(30), loader):
            t, j = plan.records(i, i + 1)
            rid = tr.by_key[(int(t[0]), int(j[0]))]
            d = decode(tr, img, augment="xyrjb", standardize=std)
            assert d["rid"] == rid
            if d["flat"]:
                continue
            steps = draws.steps[i]
            want = {s.op: s.args for s in steps}
            assert d["jpeg"] == (want["jpeg"][0] if "jpeg" in want else None), (i, steps)
            assert d["blur"] == (want["gaussian_blur"][0] if "gaussian_blur" in want
                                 else None), (i, steps)
            geo = [(s.op, *s.args) for s in steps if s.op in ("flip_left_right",
                                                               "flip_up_down", "rot90")]
            assert d["symmetry"] == symmetry_of(geo) and len(d["xyr"]) == 2
            assert d["slide"] == tr.records[rid].slide
