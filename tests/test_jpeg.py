"""The JPEG decoder choice (spec/images.md, "The JPEG decoder"): on every case of the
decode contract, decode_image and the loaders' decode variants (which try
tilespec.jpeg's fast decoder first) give decode_pillow's pixels and errors, with the
fast decoder (simplejpeg, when installed) and with the Pillow fallback."""

import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import tilespec
from tilespec import jpeg
from tilespec.images import (decode_image, decode_into, decode_new, decode_pillow, decode_planar,
                             decode_view)

FAST = jpeg.DECODER == "simplejpeg"
needs_fast = pytest.mark.skipif(not FAST, reason="the fast decoder is not in use (simplejpeg "
                                "not installed, or TILESPEC_JPEG=pillow)")


def _save(img, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", **kw)
    return buf.getvalue()


def _image(seed, h=48, w=40):
    """A smooth gradient with noise: chroma that subsampling changes, edges that the
    IDCT rounds differently from a fast one."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:h, :w]
    base = np.stack([x * 5, y * 4, (x + y) * 3], axis=-1) % 256
    return np.clip(base + rng.integers(-40, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def _adobe(transform):
    payload = b"Adobe" + (100).to_bytes(2, "big") + bytes(4) + bytes((transform,))
    return b"\xff\xee" + (len(payload) + 2).to_bytes(2, "big") + payload


def _scan(data):
    """The offset of the entropy-coded data after the first SOS segment."""
    p = data.index(b"\xff\xda")
    return p + 2 + int.from_bytes(data[p + 2:p + 4], "big")


def _cases():
    img = _image(1)
    im = Image.fromarray(img)
    odd = Image.fromarray(_image(2, 29, 35))
    c = {}
    for name, sub in (("420", 2), ("422", 1), ("444", 0)):
        c[f"rgb {name}"] = _save(im, quality=90, subsampling=sub)
        c[f"odd {name}"] = _save(odd, quality=75, subsampling=sub)
        c[f"progressive {name}"] = _save(im, quality=90, subsampling=sub, progressive=True)
    c["q1"] = _save(im, quality=1)
    c["q100"] = _save(im, quality=100)
    c["1x1"] = _save(Image.fromarray(img[:1, :1]))
    # more than one 64 px block of decode_planar's transposing copy, cut at both edges
    c["odd 150x97"] = _save(Image.fromarray(_image(3, 150, 97)), quality=85)
    c["restart blocks"] = _save(im, quality=90, restart_marker_blocks=3)
    c["restart rows + progressive"] = _save(im, quality=90, restart_marker_rows=1,
                                            progressive=True)
    c["gray"] = _save(Image.fromarray(img[..., 0]), quality=90)
    c["gray progressive"] = _save(Image.fromarray(img[..., 0]), progressive=True)
    c["keep_rgb (Adobe 0)"] = _save(im, keep_rgb=True, subsampling=0)
    base = c["rgb 420"]
    c["Adobe 1 inserted"] = base[:2] + _adobe(1) + base[2:]
    c["Adobe 0 on YCbCr"] = base[:2] + _adobe(0) + base[2:]
    c["bytes after EOI"] = base + b"junk" * 5
    s = _scan(base)
    c["unexpected RST marker"] = base[:s + 40] + b"\xff\xd2" + base[s + 42:]
    cmyk = np.dstack([255 - img, img[..., :1] // 2])
    c["cmyk"] = _save(Image.fromarray(cmyk, "CMYK"), quality=95)
    c["cmyk progressive"] = _save(Image.fromarray(cmyk, "CMYK"), progressive=True)
    # libjpeg tells the colour space from the component count and the markers: an Adobe
    # transform it does not know is a warning (strict simplejpeg stops), a CMYK without
    # the Adobe marker is still CMYK
    bare = _drop_segment(base, b"\xff\xe0")  # no JFIF marker: libjpeg reads the rest
    c["no JFIF"] = bare
    c["Adobe 0, no JFIF"] = bare[:2] + _adobe(0) + bare[2:]
    c["Adobe 2, no JFIF"] = bare[:2] + _adobe(2) + bare[2:]
    c["cmyk without Adobe"] = _drop_segment(c["cmyk"], b"\xff\xee")
    return c


def _drop_segment(data, marker):
    """``data`` without its first segment of ``marker`` (before the first scan)."""
    p = data.index(marker, 0, data.index(b"\xff\xda"))
    return data[:p] + data[p + 2 + int.from_bytes(data[p + 2:p + 4], "big"):]


CASES = _cases()
PILLOW_ONLY = {"cmyk", "cmyk progressive", "cmyk without Adobe"}  # routed from the header
FAILS_FAST = {"unexpected RST marker", "Adobe 2, no JFIF"}  # libjpeg warns: strict stops


def _bad():
    base = CASES["rgb 420"]
    return {"truncated 30%": base[:len(base) * 3 // 10], "truncated 90%": base[:len(base) * 9 // 10],
            "no EOI": base[:-2], "header cut": base[:20], "magic only": base[:3],
            "no markers": base[:3] + b"x" * 100,
            "progressive cut": CASES["progressive 420"][:len(base) // 2],
            "png": b"\x89PNG\r\n\x1a\n" + bytes(30), "empty": b""}


BAD = _bad()


def _variants(data, expect):
    """Every decode the loaders use, each checked to give ``expect``."""
    got = decode_image(data)
    assert got.dtype == np.uint8 and got.flags.c_contiguous and got.flags.writeable
    assert np.array_equal(got, expect)
    assert np.array_equal(decode_view(data), expect)
    new = decode_new(data)
    assert new is None or (np.array_equal(new, expect) and new.flags.c_contiguous and
                           new.flags.writeable)
    out = np.full_like(expect, 7)
    assert not decode_into(data, out) or np.array_equal(out, expect)
    planar = np.full((3,) + expect.shape[:2], 7, np.uint8).transpose(1, 2, 0)
    assert not decode_into(data, planar) or np.array_equal(planar, expect)
    for transposed in (False, True):
        img = decode_planar(data, transposed=transposed)
        assert np.array_equal(img, expect) and img.flags.writeable
    return new


@pytest.mark.parametrize("case", sorted(CASES))
def test_contract_cases_equal_decode_pillow(case):
    data = CASES[case]
    expect = decode_pillow(data)
    fast = jpeg.decode_fast(data, tilespec.images.MAX_TILE_PIXELS)
    if FAST and case not in PILLOW_ONLY | FAILS_FAST:
        assert fast is not None and np.array_equal(fast, expect)  # the fast path runs
        out = np.full_like(expect, 7)
        planar = np.full((3,) + expect.shape[:2], 7, np.uint8).transpose(1, 2, 0)
        assert decode_into(data, out) and decode_into(data, planar)  # any JPEG mode
        assert decode_new(data) is not None
        # the planar layouts of decode_planar come from the fast decoder too
        assert decode_planar(data).transpose(2, 0, 1).flags.c_contiguous
        assert decode_planar(data, transposed=True).transpose(2, 1, 0).flags.c_contiguous
    else:
        assert fast is None  # routed to Pillow
    _variants(data, expect)


def _same(a, b):
    return (a is None and b is None) or (a is not None and b is not None and
                                         np.array_equal(a, b))


@needs_fast
@pytest.mark.parametrize("case", sorted(CASES) + sorted(BAD))
def test_the_choice_from_our_header_parse_is_libjpeg_s(case):
    """decode_fast's choice made from image_header's parse (``header=``) is the one made
    from libjpeg's reading of the header: the same size, and the component count tells
    the colour space as libjpeg does (1 Gray; 3 YCbCr or RGB; 4 CMYK or YCCK), so the
    result is the same (spec/images.md, "The JPEG decoder")."""
    import simplejpeg

    data = CASES.get(case, BAD.get(case))
    head = tilespec.images.image_header(data)
    if head is None or head[0] != "jpeg":
        return  # no parse to share: decode_fast reads the header itself
    _, w, h, channels = head
    try:
        sh, sw, colour, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        pass
    else:
        assert (sh, sw) == (h, w)
        assert (colour in ("YCbCr", "RGB", "Gray")) == (channels in (1, 3))
    cap = tilespec.images.MAX_TILE_PIXELS
    assert _same(jpeg.decode_fast(data, cap, header=head[1:]), jpeg.decode_fast(data, cap))
    for shape in ((h, w, 3), (h, w + 1, 3)):
        a, b = np.full(shape, 7, np.uint8), np.full(shape, 7, np.uint8)
        assert _same(jpeg.decode_fast(data, cap, a, header=head[1:]),
                     jpeg.decode_fast(data, cap, b))


@needs_fast
def test_the_loaders_decode_reads_no_second_header(monkeypatch):
    """decode_image and the loaders' variants hand decode_fast their own header parse, so
    libjpeg's header reading (simplejpeg.decode_jpeg_header) is not called again."""
    def no_header(data):
        raise AssertionError("decode_jpeg_header called")

    monkeypatch.setattr(jpeg, "_header", no_header)
    for case in ("rgb 420", "gray", "keep_rgb (Adobe 0)"):
        data = CASES[case]
        expect = decode_pillow(data)
        assert np.array_equal(decode_image(data), expect)
        out = np.zeros_like(expect)
        assert decode_into(data, out) and np.array_equal(out, expect)
        assert np.array_equal(decode_planar(data), expect)
    assert np.array_equal(decode_image(CASES["cmyk"]), decode_pillow(CASES["cmyk"]))


@needs_fast
def test_into_a_c_contiguous_buffer_writes_in_place():
    data = CASES["rgb 420"]
    expect = decode_pillow(data)
    batch = np.zeros((3,) + expect.shape, np.uint8)
    row = batch[1]
    got = jpeg.decode_fast(data, 1 << 30, row)
    assert got is row  # the batch row itself, decoded into
    assert np.array_equal(batch[1], expect) and not batch[0].any() and not batch[2].any()


@settings(max_examples=30)
@given(h=st.integers(1, 40), w=st.integers(1, 40), quality=st.integers(1, 100),
       subsampling=st.sampled_from([0, 1, 2]), progressive=st.booleans(),
       gray=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_random_images_equal_decode_image(h, w, quality, subsampling, progressive, gray,
                                          seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    if rng.random() < 0.5:
        img = _image(seed % 1000, h, w)
    im = Image.fromarray(img[..., 0] if gray else img)
    data = _save(im, quality=quality, subsampling=subsampling, progressive=progressive)
    expect = decode_pillow(data)
    fast = jpeg.decode_fast(data, tilespec.images.MAX_TILE_PIXELS)
    assert (fast is not None) == FAST
    if fast is not None:
        assert np.array_equal(fast, expect)
    head = tilespec.images.image_header(data)
    assert _same(jpeg.decode_fast(data, tilespec.images.MAX_TILE_PIXELS, header=head[1:]),
                 fast)
    new = _variants(data, expect)
    assert (new is not None) == (FAST or not gray)  # Pillow's packing takes RGB only


def _error(fn, *args, **kw):
    with pytest.raises(tilespec.ImageDecodeError) as e:
        fn(*args, **kw)
    return type(e.value), str(e.value)


@pytest.mark.parametrize("kind", sorted(BAD))
def test_errors_are_decode_pillow_s(kind):
    data = BAD[kind]
    expect = _error(decode_pillow, data)
    assert jpeg.decode_fast(data, tilespec.images.MAX_TILE_PIXELS) is None
    assert _error(decode_image, data) == expect
    assert _error(decode_view, data) == expect
    for transposed in (False, True):
        assert _error(decode_planar, data, transposed=transposed) == expect
    # the variants that may decline hand the bytes back to decode_image
    assert decode_new(data) is None and not decode_into(data, np.empty((48, 40, 3), np.uint8))


def test_the_size_cap_is_decode_pillow_s():
    data = CASES["rgb 420"]
    h, w = decode_pillow(data).shape[:2]
    assert jpeg.decode_fast(data, h * w - 1) is None
    expect = _error(decode_pillow, data, max_pixels=h * w - 1)
    assert expect[0] is tilespec.ImageTooLargeError
    assert _error(decode_image, data, max_pixels=h * w - 1) == expect
    assert _error(decode_view, data, h * w - 1) == expect
    assert _error(decode_planar, data, max_pixels=h * w - 1) == expect
    assert decode_new(data, h * w - 1) is None
    assert not decode_into(data, np.empty((h, w, 3), np.uint8), h * w - 1)
    assert np.array_equal(decode_image(data, max_pixels=h * w), decode_pillow(data))


def test_the_cap_is_read_from_our_own_header_parse(monkeypatch):
    """The cap is applied from image_header's parse before the fast decoder sees the
    bytes (spec/reliability.md, "Size caps"): it is never asked to decode them."""
    data = CASES["rgb 420"]
    h, w = decode_pillow(data).shape[:2]
    calls = []
    monkeypatch.setattr(tilespec.images, "decode_fast", lambda *a, **k: calls.append(a))
    with pytest.raises(tilespec.ImageTooLargeError):
        decode_image(data, max_pixels=h * w - 1)
    assert calls == []
    decode_image(data)
    assert len(calls) == 1  # within the cap the fast decoder is asked first


def test_pillow_s_bomb_limit_is_decode_pillow_s(monkeypatch):
    data = CASES["rgb 420"]  # 40 x 48 = 1920 pixels
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 900)  # 1920 > twice 900: Pillow refuses
    assert jpeg.decode_fast(data, 1 << 30) is None
    expect = _error(decode_pillow, data, max_pixels=1 << 30)
    assert expect[0] is tilespec.ImageTooLargeError
    assert _error(decode_image, data, max_pixels=1 << 30) == expect
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1919)  # over the limit: Pillow warns only
    assert np.array_equal(decode_image(data, max_pixels=1 << 30),
                          decode_pillow(data, max_pixels=1 << 30))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1920)
    assert (jpeg.decode_fast(data, 1 << 30) is not None) == FAST


@pytest.mark.parametrize("wrap", [bytearray, memoryview])
def test_bytes_like_inputs(wrap):
    for case in ("rgb 420", "gray", "cmyk"):
        data = CASES[case]
        assert np.array_equal(decode_image(wrap(data)), decode_pillow(data))
        assert np.array_equal(decode_planar(wrap(data), transposed=True), decode_pillow(data))
    data = BAD["truncated 90%"]
    assert _error(decode_image, wrap(data)) == _error(decode_pillow, data)


def test_an_out_that_does_not_fit_is_refused():
    data = CASES["rgb 420"]
    h, w = decode_pillow(data).shape[:2]
    for out in (np.empty((h, w + 1, 3), np.uint8), np.empty((h, w, 3), np.float32),
                np.empty((h, w, 4), np.uint8), np.empty((w, h, 3), np.uint8)):
        assert jpeg.decode_fast(data, 1 << 30, out) is None
        assert not decode_into(data, out)
    frozen = np.empty((h, w, 3), np.uint8)
    frozen.flags.writeable = False
    assert jpeg.decode_fast(data, 1 << 30, frozen) is None
    assert not decode_into(data, frozen)
    # a layout other than pixel by pixel or plane by plane is refused by both decoders
    twisted = np.zeros((w, h, 3), np.uint8).transpose(1, 0, 2)
    assert not decode_into(data, twisted) and not twisted.any()


def test_choice_values():
    assert jpeg.choose_decoder("pillow") == ("pillow", None)
    assert jpeg.choose_decoder(" Pillow ") == ("pillow", None)
    name, mod = jpeg.choose_decoder(os.environ.get(jpeg.CHOICE_ENV))  # as at import
    assert name == jpeg.DECODER and (mod is None) == (name == "pillow")
    with pytest.raises(ValueError, match="TILESPEC_JPEG='turbo': expected one of auto, "
                                         "simplejpeg, pillow"):
        jpeg.choose_decoder("turbo")


def test_simplejpeg_forced_but_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "simplejpeg", None)  # import simplejpeg now fails
    assert jpeg.choose_decoder("auto") == ("pillow", None)
    with pytest.raises(ImportError, match=r"TILESPEC_JPEG=simplejpeg but simplejpeg is not "
                                          r"installed \(pip install 'tilespec\[fast\]'\)"):
        jpeg.choose_decoder("simplejpeg")


_FALLBACK = r"""
import json, sys
if sys.argv[1] == "blocked":
    sys.modules["simplejpeg"] = None  # as if the fast extra were not installed
import numpy as np
import tilespec
from tilespec import jpeg
from tilespec.images import decode_image, decode_pillow, decode_planar
sys.path.insert(0, sys.argv[2])
import test_jpeg as t
same = all(np.array_equal(decode_image(d), decode_pillow(d)) and
           np.array_equal(decode_planar(d, transposed=True), decode_pillow(d))
           for d in t.CASES.values())
errors = all(t._error(decode_image, d) == t._error(decode_pillow, d) for d in t.BAD.values())
none = all(jpeg.decode_fast(d, 1 << 30) is None for d in t.CASES.values())
print(json.dumps([jpeg.DECODER, same, errors, none]))
"""


@pytest.mark.parametrize("how", ["blocked", "env"])
def test_pillow_fallback(how):
    env = dict(os.environ)
    if how == "env":
        env["TILESPEC_JPEG"] = "pillow"
    else:
        env.pop("TILESPEC_JPEG", None)
    run = subprocess.run([sys.executable, "-c", _FALLBACK, how, os.path.dirname(__file__)],
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout.strip().splitlines()[-1]) == ["pillow", True, True, True]


def test_bad_choice_fails_at_import():
    env = dict(os.environ, TILESPEC_JPEG="fastest")
    run = subprocess.run([sys.executable, "-c", "import tilespec.jpeg"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert run.returncode != 0
    assert "TILESPEC_JPEG='fastest': expected one of auto, simplejpeg, pillow" in run.stderr
