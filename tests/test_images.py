"""spec/images.md, "Decode": JPEG and PNG bytes to HWC uint8 RGB."""

import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

import tilespec
from tilespec.images import image_format, image_size


def _save(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rng(seed=0):
    return np.random.default_rng(seed)


def _check_layout(arr, h, w):
    assert arr.shape == (h, w, 3) and arr.dtype == np.uint8
    assert arr.flags.writeable and arr.flags.c_contiguous and arr.flags.owndata
    arr[0, 0, 0] ^= 1  # really writeable


def _smooth(h, w, seed=0):
    """A smooth RGB image: JPEG keeps it within a few levels."""
    rng = _rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = rng.uniform(40, 200, 3)
    img = base + 30 * np.sin(xx[..., None] / 7 + np.arange(3)) + 20 * np.cos(yy[..., None] / 5)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------- JPEG
def test_jpeg_rgb():
    img = _smooth(24, 40)
    data = _save(Image.fromarray(img), "JPEG", quality=95)
    out = tilespec.decode_image(data)
    _check_layout(out.copy(), 24, 40)
    assert np.abs(out.astype(int) - img).max() <= 12
    # exactly what Pillow (libjpeg ISLOW) decodes
    with Image.open(io.BytesIO(data)) as im:
        assert np.array_equal(out, np.asarray(im.convert("RGB")))
    assert image_format(data) == "jpeg" and image_size(data) == ("jpeg", 40, 24)


def test_jpeg_grayscale_gives_three_equal_channels():
    gray = _smooth(16, 20)[..., 0]
    data = _save(Image.fromarray(gray), "JPEG", quality=90)
    out = tilespec.decode_image(data)
    _check_layout(out.copy(), 16, 20)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "L" and np.array_equal(out[..., 0], np.asarray(im))


def test_jpeg_cmyk_conversion_rounds_to_nearest():
    cmyk = _rng(3).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    data = _save(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)
    out = tilespec.decode_image(data)
    _check_layout(out.copy(), 16, 16)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "CMYK"
        stored = np.asarray(im).astype(np.int64)
    c, k = stored[..., :3], stored[..., 3:]
    expect = np.floor((255 - c) * (255 - k) / 255 + 0.5)  # never a tie: 255 is odd
    assert np.array_equal(out, expect)


# ----------------------------------------------------------------- PNG
def test_png_rgb_is_exact():
    img = _rng(1).integers(0, 256, (9, 13, 3), dtype=np.uint8)
    out = tilespec.decode_image(_save(Image.fromarray(img), "PNG"))
    _check_layout(out.copy(), 9, 13)
    assert np.array_equal(out, img)


def test_png_rgba_drops_alpha():
    img = _rng(2).integers(0, 256, (9, 13, 4), dtype=np.uint8)
    out = tilespec.decode_image(_save(Image.fromarray(img, "RGBA"), "PNG"))
    _check_layout(out.copy(), 9, 13)
    assert np.array_equal(out, img[..., :3])  # colours as stored, not composited


def test_png_l_and_la():
    g = _rng(4).integers(0, 256, (7, 5), dtype=np.uint8)
    a = _rng(5).integers(0, 256, (7, 5), dtype=np.uint8)
    for im in (Image.fromarray(g), Image.fromarray(np.dstack([g, a]), "LA")):
        out = tilespec.decode_image(_save(im, "PNG"))
        _check_layout(out.copy(), 7, 5)
        assert np.array_equal(out, np.repeat(g[..., None], 3, axis=2))


def test_png_palette_is_expanded():
    img = _rng(6).integers(0, 256, (10, 10, 3), dtype=np.uint8)
    pal = Image.fromarray(img).quantize(8)
    palette = np.array(pal.getpalette()[: 3 * 8]).reshape(-1, 3)
    expect = palette[np.asarray(pal)]
    for kw in ({}, {"transparency": 2}):  # a tRNS entry does not change the colours
        data = _save(pal, "PNG", **kw)
        out = tilespec.decode_image(data)
        _check_layout(out.copy(), 10, 10)
        assert np.array_equal(out, expect)


def test_png_one_bit():
    bits = _rng(7).integers(0, 2, (6, 9)).astype(bool)
    out = tilespec.decode_image(_save(Image.fromarray(bits), "PNG"))
    assert np.array_equal(out, np.repeat(bits[..., None] * 255, 3, axis=2))


def _raw_png(width, height, depth, colour, pixel_bytes, seed=0):
    def chunk(kind, body):
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    rng = _rng(seed)
    rows = b"".join(b"\x00" + rng.integers(0, 256, width * pixel_bytes, dtype=np.uint8).tobytes()
                    for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("colour,pixel_bytes", [(0, 2), (2, 6), (4, 4), (6, 8)])
def test_png_16_bit_is_refused(colour, pixel_bytes):
    data = _raw_png(5, 4, 16, colour, pixel_bytes)
    with pytest.raises(tilespec.ImageDecodeError, match="16 bits per sample"):
        tilespec.decode_image(data)
    # the same layout at 8 bits decodes
    assert tilespec.decode_image(_raw_png(5, 4, 8, colour, pixel_bytes // 2)).shape == (4, 5, 3)


def test_pillow_16_bit_grayscale_png_is_refused():
    data = _save(Image.fromarray(_rng(8).integers(0, 65536, (4, 4), dtype=np.uint16)), "PNG")
    with pytest.raises(tilespec.ImageDecodeError, match="16 bits"):
        tilespec.decode_image(data)


# ----------------------------------------------------------------- other bytes
@pytest.mark.parametrize("kind,make,named", [
    ("gif", lambda: _save(Image.new("RGB", (4, 4)), "GIF"), "GIF"),
    ("bmp", lambda: _save(Image.new("RGB", (4, 4)), "BMP"), "BMP"),
    ("tiff", lambda: _save(Image.new("RGB", (4, 4)), "TIFF"), "TIFF"),
    ("webp", lambda: b"RIFF\x10\x00\x00\x00WEBPVP8 ", "WebP"),
    ("text", lambda: b"slide,label\nA,1\n", "text 'slide,label"),
    ("empty", lambda: b"", "empty"),
    ("binary", lambda: bytes(range(1, 40)), "unknown bytes"),
    ("example", lambda: tilespec.encode_tile(b"\xff\xd8\xff", "s"), "protobuf"),
])
def test_other_formats_are_named(kind, make, named):
    data = make()
    with pytest.raises(tilespec.ImageDecodeError) as e:
        tilespec.decode_image(data)
    assert named in str(e.value)
    assert ("expected JPEG or PNG" if kind == "empty" else "not JPEG or PNG") in str(e.value)
    assert f"{len(data)} bytes" in str(e.value)
    assert isinstance(e.value, tilespec.TFRecordError)
    with pytest.raises(tilespec.ImageDecodeError):
        image_size(data)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.3, 0.6, 0.9])
def test_truncated_images(fmt, keep):
    img = _rng(9).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    data = _save(Image.fromarray(img), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    cut = data[: int(len(data) * keep)]
    with pytest.raises(tilespec.ImageDecodeError, match=f"cannot decode {fmt}") as e:
        tilespec.decode_image(cut)
    assert f"{len(cut)} bytes" in str(e.value)


def test_jpeg_missing_only_its_end_marker_is_refused():
    img = _rng(10).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    data = _save(Image.fromarray(img), "JPEG", quality=90)
    assert data.endswith(b"\xff\xd9")
    with pytest.raises(tilespec.ImageDecodeError):
        tilespec.decode_image(data[:-2])


def test_corrupt_png_checksum_is_refused():
    data = bytearray(_save(Image.fromarray(_smooth(8, 8)), "PNG"))
    data[40] ^= 0xFF  # inside IDAT
    with pytest.raises(tilespec.ImageDecodeError):
        tilespec.decode_image(bytes(data))


def test_bytes_like_inputs():
    data = _save(Image.fromarray(_smooth(8, 8)), "PNG")
    expect = tilespec.decode_image(data)
    for wrapped in (bytearray(data), memoryview(data)):
        assert np.array_equal(tilespec.decode_image(wrapped), expect)


def test_each_decode_is_a_new_array():
    data = _save(Image.fromarray(_smooth(8, 8)), "PNG")
    a, b = tilespec.decode_image(data), tilespec.decode_image(data)
    a[:] = 0
    assert b.any()


# ----------------------------------------------------------------- TensorFlow agreement
@pytest.fixture(scope="module")
def tf():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return pytest.importorskip("tensorflow")


def _tf_jpeg(tf, data):
    return tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE").numpy()


def test_jpeg_equals_tensorflow_on_the_demo_tiles(tf, demo_dataset):
    n = 0
    for path in demo_dataset["paths"]:
        for payload in tilespec.read_records(path):
            data = tilespec.parse_tile(payload).image_raw
            assert np.array_equal(tilespec.decode_image(data), _tf_jpeg(tf, data))
            n += 1
    assert n == 144


@pytest.mark.parametrize("quality", [5, 50, 75, 90, 95, 100])
def test_jpeg_equals_tensorflow_on_random_images(tf, quality):
    rng = _rng(quality)
    for subsampling in ("4:4:4", "4:2:2", "4:2:0"):
        for progressive in (False, True):
            h, w = (int(v) for v in rng.integers(1, 70, 2))
            img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            data = _save(Image.fromarray(img), "JPEG", quality=quality,
                         subsampling=subsampling, progressive=progressive)
            assert np.array_equal(tilespec.decode_image(data), _tf_jpeg(tf, data)), \
                (quality, subsampling, progressive, h, w)
    gray = _smooth(33, 17)[..., 1]
    data = _save(Image.fromarray(gray), "JPEG", quality=quality)
    assert np.array_equal(tilespec.decode_image(data), _tf_jpeg(tf, data))


def test_tensorflow_default_idct_differs(tf):
    # why the spec names the exact IDCT: TF's default decoder gives other pixels
    img = _rng(11).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = _save(Image.fromarray(img), "JPEG", quality=75)
    fast = tf.io.decode_jpeg(data, channels=3).numpy()
    assert not np.array_equal(tilespec.decode_image(data), fast)


def test_cmyk_differs_from_tensorflow_by_at_most_one(tf):
    # TensorFlow truncates (255-C)(255-K)/255 where the reference rounds to nearest
    cmyk = _rng(12).integers(0, 256, (32, 32, 4), dtype=np.uint8)
    data = _save(Image.fromarray(cmyk, "CMYK"), "JPEG", quality=95)
    ours = tilespec.decode_image(data).astype(int)
    theirs = _tf_jpeg(tf, data).astype(int)
    assert set(np.unique(ours - theirs)) <= {0, 1} and (ours != theirs).any()


def test_png_equals_tensorflow(tf):
    rng = _rng(13)
    g = rng.integers(0, 256, (11, 14), dtype=np.uint8)
    rgb = rng.integers(0, 256, (11, 14, 3), dtype=np.uint8)
    images = [Image.fromarray(rgb), Image.fromarray(rng.integers(0, 256, (11, 14, 4),
                                                                 dtype=np.uint8), "RGBA"),
              Image.fromarray(g), Image.fromarray(np.dstack([g, g[::-1]]), "LA"),
              Image.fromarray(rgb).quantize(16), Image.fromarray(g > 100)]
    datas = [_save(im, "PNG") for im in images]
    datas.append(_save(Image.fromarray(rgb).quantize(16), "PNG", transparency=3))
    datas.append(_save(Image.fromarray(rgb), "PNG", optimize=True))
    datas.append(_raw_png(6, 5, 8, 2, 3, seed=14))
    for data in datas:
        assert np.array_equal(tilespec.decode_image(data),
                              tf.io.decode_png(data, channels=3).numpy())


def _damaged(kind):
    """Bad image bytes of several kinds, each failing at a known stage."""
    img = _rng(11).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    jpg = _save(Image.fromarray(img), "JPEG", quality=90)
    png = _save(Image.fromarray(img), "PNG")
    return {"jpeg header cut": jpg[:20], "jpeg magic only": jpg[:3],
            "jpeg no markers": jpg[:3] + b"x" * 100, "jpeg pixels cut": jpg[:len(jpg) // 2],
            "png header cut": png[:30], "png magic only": png[:8],
            "png idat cut": png[:len(png) // 2]}[kind]


@pytest.mark.parametrize("kind", ["jpeg header cut", "jpeg magic only", "jpeg no markers",
                                  "jpeg pixels cut", "png header cut", "png magic only",
                                  "png idat cut"])
def test_decode_errors_are_deterministic_and_say_what_failed(kind):
    # Pillow's own message names its file object with a memory address
    # ('<_io.BytesIO object at 0x...>'), different on every run; the error must not.
    data = _damaged(kind)
    fmt = kind.split()[0].upper()
    messages = []
    header_stage = not kind.endswith("cut") or "header" in kind
    for f in (tilespec.decode_image, tilespec.decode_image) + ((image_size,) if header_stage
                                                               else ()):
        with pytest.raises(tilespec.ImageDecodeError) as e:
            f(bytes(bytearray(data)))  # a new object each time
        messages.append(str(e.value))
    assert messages[0] == messages[1]
    for m in messages:
        assert " at 0x" not in m and "BytesIO" not in m, m
        assert m.startswith(f"cannot decode {fmt} image of {len(data)} bytes"), m
        assert m.count(":") >= 1 and m.rsplit(":", 1)[1].strip(), m  # a reason is given
    if not header_stage:
        # the header was read: the message has the image's size and says the pixels failed
        assert "(64x48 RGB): its pixel data cannot be read" in messages[0]
        assert image_size(data)[1:] == (64, 48)
    else:
        assert f"(first bytes {data[:8].hex(' ')}): its header cannot be read" in messages[0]
    if kind == "jpeg no markers":
        assert messages[0].endswith("no marker found")


def _header_pool():
    """JPEGs of a few sizes, qualities and layouts, and damaged copies of their headers."""
    pool = []
    for (h, w), q, kw in (((16, 24), 90, {}), ((16, 24), 50, {}), ((24, 16), 90, {}),
                          ((16, 24), 90, {"progressive": True}),
                          ((16, 24), 90, {"optimize": True})):
        pool.append(_save(Image.fromarray(_smooth(h, w, q)), "JPEG", quality=q, **kw))
    good = pool[0]
    sos = good.index(b"\xff\xda")
    end = sos + 2 + int.from_bytes(good[sos + 2:sos + 4], "big")
    pool += [good[:end], good[:end - 1], good[:sos], good[:end] + b"x",
             good[:end] + good[end + 5:],                       # another tail
             good[:sos] + b"\xff\xff" + good[sos:],            # fill bytes before SOS
             good[:sos] + b"junk" + good[sos:],                # junk between markers
             good[:sos - 1] + b"\x00" + good[sos:],            # a header byte changed
             good[:3] + b"\x01" + good[4:]]                    # an unknown marker
    return pool


HEADER_POOL = _header_pool()


@pytest.mark.parametrize("first", range(len(HEADER_POOL)))
def test_jpeg_header_cache_equals_the_walk(first):
    """spec/reliability.md, "Size caps": the header parse keeps the bytes through the
    first scan header of the last JPEG walked and gives a JPEG that starts with them the
    same parse; after any JPEG, every other one gets what the walk alone gives."""
    from tilespec import images

    for data in HEADER_POOL:
        images._jpeg_header(HEADER_POOL[first])  # prime with one header
        expect = images._walk_jpeg(data)[0]
        assert images._jpeg_header(data) == expect
        assert images._jpeg_header(data) == expect  # now from the kept bytes, if any
        for wrap in (bytearray, memoryview):
            assert images._jpeg_header(wrap(data)) == expect
    good = HEADER_POOL[0]
    assert images._walk_jpeg(good)[0] == (24, 16, 3)
    assert images._walk_jpeg(good[:100])[1] == 0  # cut before the scan: nothing kept
