"""spec/images.md, "Pipeline order", with spec/stain.md: stain normalization and stain
augmentation ('n') inside the reference loader (Dataset.numpy).

Every item is reproduced by hand from the keyed generator (spec/sampling.md,
"Randomness") and the ops applied one by one, so these tests pin down which draws
the loader uses and where in the pipeline the normalizer runs. The last section
checks that the loader's decode fast paths give exactly ``decode_image``.
"""

import io
import itertools
import re

import numpy as np
import pytest
from PIL import Image

import tilespec
from tilespec import ops
from tilespec.augment import apply_steps
from tilespec.errors import ImageDecodeError
from tilespec.images import decode_into, decode_new, decode_planar, decode_view
from tilespec.loader import PLAN_WINDOW, IndexedInterleaver
from tilespec.rng import augment_slot, normals, stream_key, uniforms
from tilespec.stain import StainNormalizer, draw_stain_perturbation

SEED = 4242


def he_tile(rng, px=64):
    """An H&E tile by Beer-Lambert: both stains in every pixel, so Macenko always finds
    tissue (the demo tiles are mostly pale background, which it calls blank)."""
    h = np.array([0.65, 0.70, 0.29])
    e = np.array([0.07, 0.99, 0.11])
    h, e = h / np.linalg.norm(h), e / np.linalg.norm(e)
    yy, xx = np.mgrid[0:px, 0:px] / px
    phase = rng.uniform(0, 2 * np.pi, 4)
    ch = 0.6 + 0.4 * np.sin(6 * xx + phase[0]) * np.cos(5 * yy + phase[1]) \
        + rng.gamma(2.0, 0.15, (px, px))
    ce = 0.5 + 0.3 * np.cos(4 * xx + phase[2]) * np.sin(7 * yy + phase[3]) \
        + rng.gamma(2.0, 0.1, (px, px))
    od = ch[..., None] * h + ce[..., None] * e
    img = 255.0 * np.exp(-od) - 1.0 + rng.normal(0, 2.0, (px, px, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    """4 tfrecords x 9 H&E tiles of 64x64: a finite epoch of 36 items keeps the stain
    maths quick."""
    from tilespec.synthetic import encode_jpeg

    folder = tmp_path_factory.mktemp("he")
    for s in range(4):
        rng = np.random.default_rng([11, s])
        tilespec.write_records(str(folder / f"he-{s}.tfrecords"), [
            tilespec.encode_tile(encode_jpeg(he_tile(rng), 90), f"he-{s}", loc_x=64 * i,
                                 loc_y=0) for i in range(9)])
    return tilespec.Dataset(tfrecords=str(folder))


@pytest.fixture(scope="module")
def records(ds):
    """(t, j) -> (decoded image, slide, loc_x, loc_y) for every record of the dataset."""
    out = {}
    for t, path in enumerate(ds.tfrecords()):
        for j, payload in enumerate(tilespec.read_records(path)):
            tile = tilespec.parse_tile(payload)
            out[(t, j)] = (tilespec.decode_image(tile.image_raw), tile.slide, tile.loc_x,
                           tile.loc_y)
    return out


def _normalizer(kind, records):
    """The normalizers under test: fitted on a dataset tile, or a preset."""
    if kind == "reinhard-fitted":
        return StainNormalizer("reinhard").fit(records[(0, 0)][0])
    if kind == "reinhard_fast-preset":
        return StainNormalizer("reinhard_fast").fit_preset("v1")
    if kind == "macenko-fitted":
        return StainNormalizer("macenko").fit(records[(1, 2)][0])
    if kind == "macenko-preset":
        return StainNormalizer("macenko").fit_preset("v2")
    raise AssertionError(kind)


KINDS = ["reinhard-fitted", "reinhard_fast-preset", "macenko-fitted", "macenko-preset"]


def _epoch(ds, **opts):
    """One finite epoch as {(slide, loc_x, loc_y): image}, plus the ordered list."""
    L = ds.numpy(infinite=False, incl_slidenames=True, incl_loc=True, **opts)
    items = list(L)
    assert len(items) == len(L) == 36
    return {(s, int(x), int(y)): img for img, _, s, x, y in items}, items


def _by_hand(augment, norm, key, i, img, *, crop=None, resize=None, standardize=None):
    """Position i's image built from the spec alone: its draws from the keyed generator,
    then crop -> resize -> normalizer (+ stain augmentation) -> steps in string order ->
    standardize, each a single tilespec.ops / StainNormalizer call."""
    if crop is not None:
        img = ops.crop(img, *crop)
    if resize is not None:
        img = ops.resize(img, resize)
    if "n" in augment:
        z = normals(key, np.array([i]), augment_slot(augment.index("n")), norm.normal_draws)[0]
        img = norm.transform(img, augment=True, perturbation=draw_stain_perturbation(norm, z))
    elif norm is not None:
        img = norm.transform(img)
    for k, c in enumerate(augment):
        if c == "n":
            continue
        u0, u1 = uniforms(key, np.array([i]), augment_slot(k), 2)[0]
        if c == "x" and u0 < 0.5:
            img = ops.flip_left_right(img)
        elif c == "y" and u0 < 0.5:
            img = ops.flip_up_down(img)
        elif c == "r" and int(4 * u0):
            img = ops.rot90(img, int(4 * u0))
        elif c == "j" and u0 < 0.5:
            img = ops.jpeg(img, 50 + int(51 * u1))
        elif c == "b" and u0 < 0.1:
            img = ops.gaussian_blur(img, 0.5 if u1 < 0.5 else 1.0 if u1 < 0.75 else
                                    1.5 if u1 < 0.875 else 2.0)
    if standardize is not None:
        img = ops.standardize(img, standardize)
    return img


# ----------------------------------------------------------------------------- draws

@pytest.mark.parametrize("kind", KINDS)
def test_stain_augmentation_is_keyed_by_seed(ds, records, kind):
    norm = _normalizer(kind, records)
    a, _ = _epoch(ds, seed=SEED, augment="n", normalizer=norm, standardize=False)
    b, _ = _epoch(ds, seed=SEED, augment="n", normalizer=norm, standardize=False)
    c, _ = _epoch(ds, seed=SEED + 1, augment="n", normalizer=norm, standardize=False)
    assert a.keys() == b.keys() == c.keys()
    # same seed: every image identical
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # another seed: the same records get other perturbations (not just another order)
    differ = sum(not np.array_equal(a[k], c[k]) for k in a)
    assert differ >= 30, f"only {differ} of 36 records changed with the seed"
    # and the perturbation is really applied: not the plain normalization
    unperturbed, _ = _epoch(ds, seed=SEED, normalizer=norm, standardize=False)
    assert sum(not np.array_equal(a[k], unperturbed[k]) for k in a) >= 30


@pytest.mark.parametrize("kind", KINDS)
def test_items_equal_the_drawn_steps_applied_by_hand(ds, records, kind):
    norm = _normalizer(kind, records)
    augment = "xnyr"  # 'n' in the middle: slot 16 + 1, applied before every step
    L = ds.numpy(infinite=False, seed=SEED, augment=augment, normalizer=norm,
                 standardize="unit")
    items = list(itertools.islice(iter(L), 12))
    plan = L.plan(0)
    key = stream_key(SEED, 0, 0)
    assert key == plan.key
    t, j = plan.records(0, 12)
    # the pipeline's own draws are the keyed generator's numbers
    draws = L.pipeline.draw(key, np.arange(12))
    np.testing.assert_array_equal(
        draws.stain, normals(key, np.arange(12), augment_slot(1), norm.normal_draws))
    for i in range(12):
        img = records[(int(t[i]), int(j[i]))][0]
        # 1. from the pipeline's draws, applied op by op
        delta = draw_stain_perturbation(norm, draws.stain[i])
        step_by_step = ops.standardize(
            apply_steps(norm.transform(img, augment=True, perturbation=delta), draws.steps[i]),
            "unit")
        # 2. from the spec's formulas alone
        by_hand = _by_hand(augment, norm, key, i, img, standardize="unit")
        assert items[i][0].dtype == np.float32
        np.testing.assert_array_equal(items[i][0], step_by_step)
        np.testing.assert_array_equal(items[i][0], by_hand)


def test_stain_draws_use_the_slot_of_n(ds, records):
    """'n' reads slot 16 + (its index in the string): moving it changes the draws."""
    norm = _normalizer("reinhard-fitted", records)
    a, _ = _epoch(ds, seed=SEED, augment="n", normalizer=norm, standardize=False)
    b, _ = _epoch(ds, seed=SEED, augment="xn", normalizer=norm, standardize=False)
    L = ds.numpy(infinite=False, seed=SEED, augment="xn", normalizer=norm)
    key = L.plan(0).key
    z1 = L.pipeline.draw(key, np.arange(5)).stain
    np.testing.assert_array_equal(z1, normals(key, np.arange(5), augment_slot(1), 6))
    z0 = ds.numpy(seed=SEED, augment="n", normalizer=norm).pipeline.draw(key, np.arange(5)).stain
    np.testing.assert_array_equal(z0, normals(key, np.arange(5), augment_slot(0), 6))
    assert not np.allclose(z0, z1)
    # records that 'x' did not flip still differ between 'n' and 'xn' (another slot)
    assert sum(not np.array_equal(a[k], b[k]) and not np.array_equal(a[k], b[k][:, ::-1])
               for k in a) >= 30


def test_batches_equal_the_items(ds, records):
    norm = _normalizer("macenko-preset", records)
    opts = dict(infinite=False, seed=SEED, augment="xyrn", normalizer=norm)
    items = list(ds.numpy(**opts))
    batches = list(ds.numpy(batch_size=8, **opts))
    got = np.concatenate([b[0] for b in batches])
    np.testing.assert_array_equal(got, np.stack([it[0] for it in items]))


# ----------------------------------------------------------------------------- order

def test_normalizer_runs_after_crop_and_resize_and_before_augmentations(ds, records):
    """spec/images.md, "Pipeline order": crop -> resize -> stain -> steps -> standardize,
    whatever the place of 'n' in the string ('j' comes first here)."""
    norm = _normalizer("reinhard-fitted", records)
    augment = "jn"
    crop, size = (8, 48), 40
    L = ds.numpy(infinite=False, seed=SEED, augment=augment, normalizer=norm,
                 crop_left=crop[0], crop_width=crop[1], resize_target=size,
                 standardize=False)
    n = 16
    items = list(itertools.islice(iter(L), n))
    key = L.plan(0).key
    t, j = L.plan(0).records(0, n)
    jpeg_drawn = 0
    crop_matters = 0
    for i in range(n):
        img = records[(int(t[i]), int(j[i]))][0]
        got = items[i][0]
        assert got.shape == (size, size, 3) and got.dtype == np.uint8
        np.testing.assert_array_equal(got, _by_hand(augment, norm, key, i, img, crop=crop,
                                                    resize=size))
        z = normals(key, np.array([i]), augment_slot(1), norm.normal_draws)[0]
        delta = draw_stain_perturbation(norm, z)
        # normalizing the whole tile before cropping is a different result
        early = ops.resize(ops.crop(norm.transform(img, augment=True, perturbation=delta),
                                    *crop), size)
        u0, u1 = uniforms(key, np.array([i]), augment_slot(0), 2)[0]
        if u0 < 0.5:
            early = ops.jpeg(early, 50 + int(51 * u1))
            jpeg_drawn += 1
            # string order (JPEG, then normalize) is not what the loader does
            late = norm.transform(ops.jpeg(ops.resize(ops.crop(img, *crop), size),
                                           50 + int(51 * u1)),
                                  augment=True, perturbation=delta)
            assert not np.array_equal(got, late)
        crop_matters += not np.array_equal(got, early)
    assert jpeg_drawn >= 3 and crop_matters >= n - 2


def test_normalizer_without_n_is_the_plain_transform(ds, records):
    norm = _normalizer("macenko-fitted", records)
    L = ds.numpy(infinite=False, seed=SEED, augment="xy", normalizer=norm, standardize=False)
    assert L.pipeline.draw(L.plan(0).key, np.arange(4)).stain is None
    items = list(itertools.islice(iter(L), 8))
    t, j = L.plan(0).records(0, 8)
    for i in range(8):
        img = records[(int(t[i]), int(j[i]))][0]
        np.testing.assert_array_equal(items[i][0],
                                      _by_hand("xy", norm, L.plan(0).key, i, img))


def test_normalizer_by_name(ds, records):
    """normalizer='macenko' is StainNormalizer('macenko') with its default presets."""
    a, _ = _epoch(ds, seed=SEED, augment="n", normalizer="macenko", standardize=False)
    b, _ = _epoch(ds, seed=SEED, augment="n", normalizer=StainNormalizer("macenko"),
                  standardize=False)
    assert all(np.array_equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- errors

@pytest.mark.parametrize("augment", ["n", "xn", "nxyrjb"])
def test_n_without_normalizer_is_a_clear_error(ds, augment):
    with pytest.raises(ValueError, match=r"augmentation 'n' \(stain augmentation\) needs a "
                                         r"stain normalizer"):
        ds.numpy(augment=augment)
    with pytest.raises(ValueError, match="needs a stain normalizer"):
        IndexedInterleaver(ds.tfrecords(), augment=augment)


def test_n_twice_is_an_error(ds):
    with pytest.raises(ValueError, match="'n' more than once"):
        ds.numpy(augment="nxn", normalizer="reinhard")


def test_unknown_normalizer_name(ds):
    with pytest.raises(ValueError, match="unknown stain normalization method 'vahadane'"):
        ds.numpy(augment="n", normalizer="vahadane")


# ----------------------------------------------------------------------------- decode paths

def _jpeg(img, **kw):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def _png(img):
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    return {"rgb jpeg": _jpeg(rgb), "rgb jpeg 4:4:4": _jpeg(rgb, subsampling=0),
            "grey jpeg": _jpeg(grey), "rgb png": _png(rgb), "grey png": _png(grey)}


@pytest.mark.parametrize("name", ["rgb jpeg", "rgb jpeg 4:4:4", "grey jpeg", "rgb png",
                                  "grey png"])
def test_loader_decode_paths_equal_decode_image(samples, name):
    data = samples[name]
    ref = tilespec.decode_image(data)
    view = decode_view(data)
    np.testing.assert_array_equal(view, ref)
    assert view.shape == ref.shape and view.dtype == np.uint8
    out = np.full(ref.shape, 7, np.uint8)
    done = decode_into(data, out)
    # Pillow's packing takes RGB JPEGs; the fast decoder grey ones too (spec/images.md)
    assert done == (name.startswith("rgb jpeg") or
                    (name == "grey jpeg" and tilespec.jpeg.DECODER != "pillow"))
    new = decode_new(data)
    assert (new is not None) == done
    if done:
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(new, ref)
        assert new.flags.writeable and new.flags.owndata and new.flags.c_contiguous
    # plane by plane: the same pixels, each channel contiguous
    planar = decode_planar(data)
    np.testing.assert_array_equal(planar, ref)
    assert planar.flags.writeable or not done
    assert planar.transpose(2, 0, 1).flags.c_contiguous == done
    turned = decode_planar(data, transposed=True)   # planes of the transposed image
    np.testing.assert_array_equal(turned, ref)
    assert turned.transpose(2, 1, 0).flags.c_contiguous == done
    slot = np.full((3,) + ref.shape[:2], 7, np.uint8)
    assert decode_into(data, slot.transpose(1, 2, 0)) == done
    if done:
        np.testing.assert_array_equal(slot.transpose(1, 2, 0), ref)
    # a slot of another size, or of any other layout, is refused, never written past
    big = np.zeros((ref.shape[0] + 1,) + ref.shape[1:], np.uint8)
    assert not decode_into(data, big)
    wide = np.zeros((ref.shape[0], ref.shape[1] * 2, 3), np.uint8)[:, ::2]
    assert not decode_into(data, wide) and not wide.any()
    twisted = np.zeros((ref.shape[1], ref.shape[0], 3), np.uint8).transpose(1, 0, 2)
    assert not decode_into(data, twisted) and not twisted.any()


@pytest.mark.parametrize("cut", [0, 3, 100, -10])
def test_loader_decode_paths_raise_decode_image_errors(samples, cut):
    data = samples["rgb jpeg"]
    bad = data[:cut] if cut > 0 else (b"" if cut == 0 else data[:cut] + b"\x00" * 3)
    with pytest.raises(ImageDecodeError) as ref:
        tilespec.decode_image(bad)
    with pytest.raises(ImageDecodeError) as got:
        decode_view(bad)
    def addr(e):  # Pillow names its BytesIO by address
        return re.sub(r" at 0x[0-9a-f]+", "", str(e.value))

    assert addr(got) == addr(ref)
    out = np.zeros((37, 53, 3), np.uint8)
    assert not decode_into(bad, out)
    assert decode_new(bad) is None
    for transposed in (False, True):
        with pytest.raises(ImageDecodeError) as planar:
            decode_planar(bad, transposed=transposed)
        assert addr(planar) == addr(ref)


def test_loader_decode_paths_fall_back_when_pillow_cannot_pack(samples, monkeypatch):
    """The one private Pillow call (``tilespec.images._pack``) failing, as it would on a
    Pillow that changed its encoder interface: the variants hand over to decode_image."""
    data = samples["rgb jpeg"]
    ref = tilespec.decode_image(data)

    def broken(im, rawmode, dest):
        raise AttributeError("module 'PIL.Image' has no attribute '_getencoder'")

    monkeypatch.setattr(tilespec.images, "_pack", broken)
    monkeypatch.setattr(tilespec.images, "decode_fast", lambda *a, **k: None)  # Pillow's path
    out = np.zeros(ref.shape, np.uint8)
    assert not decode_into(data, out) and decode_new(data) is None
    for transposed in (False, True):
        np.testing.assert_array_equal(decode_planar(data, transposed=transposed), ref)
    np.testing.assert_array_equal(decode_view(data), ref)


def test_batched_identity_loader_equals_decode_image(ds, records):
    """The batched loader with nothing after decode (decode straight into the batch)."""
    L = ds.numpy(infinite=False, seed=SEED, batch_size=7, standardize=False)
    batches = list(L)
    assert [len(b[0]) for b in batches] == [7] * 5 + [1]
    t, j = L.plan(0).records(0, 36)
    want = np.stack([records[(int(a), int(b))][0] for a, b in zip(t, j)])
    got = np.concatenate([b[0] for b in batches])
    assert got.dtype == np.uint8 and got.flags.writeable
    np.testing.assert_array_equal(got, want)
    # unbatched items are new writeable arrays, as decode_image returns
    img = next(iter(ds.numpy(seed=SEED, standardize=False)))[0]
    assert img.flags.writeable and img.flags.owndata


def test_loader_planning_window_is_invisible(ds):
    """The loader plans PLAN_WINDOW positions at a time: batches across a window boundary,
    and a loader resumed inside a window, hold the records planned in one call."""
    B = 384
    n_batches = PLAN_WINDOW // B + 2
    L = ds.numpy(seed=SEED, batch_size=B, standardize=False, incl_slidenames=True,
                 incl_loc=True)
    got = []
    for _, (_, _, s, x, y) in zip(range(n_batches), L):
        got += list(zip(s.tolist(), x.tolist(), y.tolist()))
    t, j = L.plan(0).records(0, n_batches * B)
    ids = {}
    for tt, path in enumerate(ds.tfrecords()):
        for jj, payload in enumerate(tilespec.read_records(path)):
            tile = tilespec.parse_tile(payload)
            ids[(tt, jj)] = (tile.slide, tile.loc_x, tile.loc_y)
    assert got == [ids[(int(a), int(b))] for a, b in zip(t, j)]
    R = ds.numpy(seed=SEED, batch_size=B, standardize=False, incl_slidenames=True,
                 incl_loc=True)
    R.load_state_dict({"seed": SEED, "epoch": 0, "position": B * (n_batches - 3)})
    tail = []
    for _, (_, _, s, x, y) in zip(range(3), R):
        tail += list(zip(s.tolist(), x.tolist(), y.tolist()))
    assert tail == got[-3 * B:]
