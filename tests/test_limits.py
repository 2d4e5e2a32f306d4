"""Size caps (spec/reliability.md, "Size caps"): max_record_bytes in every record reader,
max_tile_pixels checked from image headers before decoding, the per-item tile-size check
of the loaders, and verify's 'record-cap', 'image-cap' and 'tile-size' problems.

Two hostile files are made here, small on disk:

- a GZIP tfrecord whose first header declares a 64 GiB record (with a valid length
  checksum) followed by 256 MiB of zeros (17 GZIP members, about 270 KB);
- a PNG of 12000 x 12000 grey pixels (about 140 KB) stored as a tile.

Peak memory is measured in a fresh process: Linux's peak resident size (VmHWM, reset
through /proc/self/clear_refs) less the resident size before each operation; for the
torch loader's workers, the largest peak of any worker (RUSAGE_CHILDREN ru_maxrss) of a
loader over the bombs less that of the same loader run first, in the same process, over
the good tiles alone.
"""

import gzip
import io
import json
import os
import struct
import subprocess
import sys
import warnings
import zlib

import numpy as np
import pytest

import tilespec
from tilespec.crc32c import masked_crc32c
from tilespec.example import encode_tile
from tilespec.images import MAX_TILE_PIXELS, check_image_header, image_header, image_size
from tilespec.index import compute_index, load_index
from tilespec.images import decode_into, decode_new, decode_planar, decode_view
from tilespec.loader import NumpyLoader
from tilespec.records import (MAX_RECORD_BYTES, frame_record, read_record_at, scan_frames,
                              write_records)
from tilespec.verify import verify, verify_file

GiB = 1 << 30
MiB = 1 << 20
READ_BOUND = 16 * MiB    # peak growth allowed for reading, verifying, indexing a hostile file
WORKER_BOUND = 64 * MiB  # ... and for a torch worker that meets one


# ----------------------------------------------------------------------------- hostile files

def _header(length: int) -> bytes:
    """A record header declaring ``length`` payload bytes, with a valid length checksum."""
    raw = struct.pack("<Q", length)
    return raw + struct.pack("<I", masked_crc32c(raw))


def write_gzip_bomb(path, declared=64 * GiB, zeros=256 * MiB):
    """A GZIP tfrecord: one header declaring ``declared`` bytes, then ``zeros`` zero bytes
    (each 16 MiB of them one GZIP member of about 16 KB)."""
    member = gzip.compress(bytes(16 * MiB), compresslevel=9, mtime=0)
    with open(path, "wb") as f:
        f.write(gzip.compress(_header(declared), mtime=0))
        for _ in range(zeros // (16 * MiB)):
            f.write(member)
    return path


def png_bomb(width=12000, height=12000) -> bytes:
    """An 8-bit grey PNG of width x height zero pixels (about 140 KB for 12000 x 12000)."""
    def chunk(cid, data):
        return (struct.pack(">I", len(data)) + cid + data
                + struct.pack(">I", zlib.crc32(cid + data) & 0xFFFFFFFF))
    co = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the row
    idat = b"".join(co.compress(row) for _ in range(height)) + co.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat)
            + chunk(b"IEND", b""))


def _jpeg(size=(16, 16), seed=0, **save) -> bytes:
    from PIL import Image
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=90, **save)
    return buf.getvalue()


def _with_sof_size(jpeg: bytes, width: int, height: int) -> bytes:
    """The JPEG with its frame header (SOF0) claiming width x height."""
    i = jpeg.index(b"\xff\xc0")
    return jpeg[:i + 5] + struct.pack(">HH", height, width) + jpeg[i + 9:]


@pytest.fixture(scope="module")
def bomb_png():
    data = png_bomb()
    assert len(data) < 200_000 and image_size(data) == ("png", 12000, 12000)
    return data


@pytest.fixture(scope="module")
def gzip_bomb(tmp_path_factory):
    path = write_gzip_bomb(tmp_path_factory.mktemp("gz") / "bomb.tfrecords")
    assert os.path.getsize(path) < 400_000
    return path


def _sparse_bomb(path):
    """A plain tfrecord: record 0 declares 64 GiB (a hole of zeros, so the length is
    within the file), record 1 a normal tile. None where holes are not sparse."""
    with open(path, "wb") as f:
        f.write(_header(64 * GiB))
        f.seek(64 * GiB, os.SEEK_CUR)
        f.write(b"\0\0\0\0")  # the footer (not checked: the record is never read)
        f.write(frame_record(encode_tile(_jpeg(), "s", 0, 0)))
    if os.stat(path).st_blocks * 512 > 16 * MiB:
        os.remove(path)
        return None
    return path


@pytest.fixture(scope="module")
def sparse_bomb(tmp_path_factory):
    try:
        path = _sparse_bomb(tmp_path_factory.mktemp("sparse") / "bomb.tfrecords")
    except OSError as e:  # pragma: no cover - file size limits
        pytest.skip(f"cannot write a sparse 64 GiB file: {e}")
    if path is None:  # pragma: no cover
        pytest.skip("the filesystem does not store holes sparsely")
    return path


# ------------------------------------------------------------------ memory, in a fresh process

_MEASURE = r"""
import json, os, resource, sys, warnings
warnings.simplefilter("ignore")

def status(key):  # KiB, from /proc/self/status
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))

def measure(fn):
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak-RSS mark is reset to the current RSS
    before = status("VmRSS")
    try:
        fn()
        err = None
    except Exception as e:
        err = [type(e).__name__, str(e)]
    return {"growth": (status("VmHWM") - before) * 1024, "error": err}

import tilespec
from tilespec.index import build_index
op, args = sys.argv[1], json.loads(sys.argv[2])
out = {}
if op == "readers":
    path, gz = args
    out["read_records"] = measure(lambda: list(tilespec.read_records(
        path, compression="GZIP" if gz else None)))
    out["verify"] = measure(lambda: out.__setitem__("problems", [
        [p.kind, p.record, p.offset] for p in tilespec.verify(path, jobs=1).problems]))
    out["build_index"] = measure(lambda: build_index(path))
elif op == "decode":
    from tilespec.example import parse_tile
    payload = list(tilespec.read_records(args[0]))[1]
    out["decode_image"] = measure(lambda: tilespec.decode_image(parse_tile(payload).image_raw))
    out["verify"] = measure(lambda: out.__setitem__("problems", [
        [p.kind, p.record, p.offset] for p in tilespec.verify(args[0], jobs=1).problems]))
    out["build_index"] = measure(lambda: build_index(args[0]))
elif op == "torch":
    import gc
    def run(folder, on_error):
        ds = tilespec.Dataset(folder, on_error="skip")
        loader = ds.torch(num_workers=2, multiprocessing_context="fork", batch_size=2,
                          infinite=False, on_error=on_error, standardize=False, seed=1)
        n = 0
        try:
            for batch in loader:
                n += len(batch[0])
            err = None
        except Exception as e:
            err = [type(e).__name__, str(e)]
        del loader
        gc.collect()
        return n, err
    def workers_peak():  # the largest peak of the workers that ended so far, bytes
        return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    clean, folder, on_error = args
    n0, err0 = run(clean, "raise")  # the same loader over good tiles only: the baseline
    assert err0 is None and n0 > 0, err0
    base = workers_peak()
    n, err = run(folder, on_error)
    out["torch"] = {"growth": workers_peak() - base, "error": err, "items": n,
                    "baseline_peak": base}
print(json.dumps(out))
"""


def _measure(op, *args):
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux /proc/self/clear_refs to measure peak memory")
    run = subprocess.run([sys.executable, "-c", _MEASURE, op, json.dumps([str(a) if
                          isinstance(a, os.PathLike) else a for a in args])],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_gzip_bomb_raises_the_cap_error_in_bounded_memory(gzip_bomb):
    with pytest.raises(tilespec.RecordTooLargeError) as e:
        list(tilespec.read_records(gzip_bomb, compression="GZIP"))
    err = e.value
    assert (err.path, err.record, err.offset) == (str(gzip_bomb), 0, 0)
    assert (err.length, err.cap) == (64 * GiB, MAX_RECORD_BYTES)
    assert isinstance(err, tilespec.CorruptLengthError)
    assert str(gzip_bomb) in str(err) and "record over the size cap" in str(err)
    got = _measure("readers", gzip_bomb, True)
    assert got["read_records"]["error"][0] == "RecordTooLargeError"
    assert got["problems"] == [["record-cap", 0, 0]]
    assert got["build_index"]["error"][0] == "IndexFileError"  # GZIP: no index at all
    for op in ("read_records", "verify", "build_index"):
        assert got[op]["growth"] < READ_BOUND, (op, got[op])


def test_gzip_bomb_within_a_raised_cap_costs_what_the_stream_holds(tmp_path):
    # a length under the cap that lies: the reader reads what arrives, in 16 MiB pieces
    path = write_gzip_bomb(tmp_path / "b.tfrecords", declared=40 * MiB, zeros=32 * MiB)
    with pytest.raises(tilespec.TruncatedRecordError) as e:
        list(tilespec.read_records(path, compression="GZIP"))
    assert (e.value.record, e.value.offset) == (0, 0) and "wanted 41943040" in e.value.reason


def test_sparse_bomb_plain_file(sparse_bomb):
    path = sparse_bomb
    with pytest.raises(tilespec.RecordTooLargeError) as e:
        list(tilespec.read_records(path))
    assert (e.value.record, e.value.offset, e.value.length) == (0, 0, 64 * GiB)
    with pytest.raises(tilespec.RecordTooLargeError):
        read_record_at(path, 0)
    with pytest.raises(tilespec.RecordTooLargeError):
        compute_index(path)
    with pytest.raises(tilespec.RecordTooLargeError):
        load_index(path)
    assert not os.path.exists(tilespec.index.index_path(path))  # nothing written
    # a raised cap reads it as far as the index: the length is sound
    arr, _ = compute_index(path, verify=False, locations=False, max_record_bytes=1 << 40)
    assert arr[:, 0].tolist() == [0, 64 * GiB + 16]
    # verify steps over the record (its length is sound) and checks the next one
    report = verify_file(path, index=False)
    assert [(p.kind, p.record, p.offset) for p in report.problems] == [("record-cap", 0, 0)]
    assert (report.records, report.good) == (2, 1)
    got = _measure("readers", path, False)
    for op in ("read_records", "verify", "build_index"):
        assert got[op]["growth"] < READ_BOUND, (op, got[op])
    assert got["build_index"]["error"][0] == "RecordTooLargeError"


def test_sparse_bomb_is_skipped_by_a_skipping_loader(sparse_bomb):
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        L = NumpyLoader([sparse_bomb], [2], [1.0], infinite=False, on_error="skip",
                        standardize=False)
        items = list(L)
    text = " ".join(str(w.message) for w in seen)
    assert "located by their headers (2 found)" in text and "record over the size cap" in text
    assert len(items) == 1 and L.num_skipped == 1
    assert L.skipped[0]["record"] == 0 and "byte offset 0" in L.skipped[0]["error"]


def test_png_bomb_raises_the_cap_error_before_decoding(bomb_png, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning would fail here
        with pytest.raises(tilespec.ImageTooLargeError, match="12000x12000"):
            tilespec.decode_image(bomb_png)
        for fn in (decode_view, decode_planar):
            with pytest.raises(tilespec.ImageTooLargeError):
                fn(bomb_png)
        assert image_header(bomb_png) == ("png", 12000, 12000, 1)
        jpeg_bomb = _with_sof_size(_jpeg(), 12000, 12000)
        assert decode_new(jpeg_bomb) is None  # the caller then decodes and raises
        assert decode_into(jpeg_bomb, np.empty((1, 1, 3), np.uint8)) is False
        for fn in (decode_view, decode_planar, tilespec.decode_image):
            with pytest.raises(tilespec.ImageTooLargeError):
                fn(jpeg_bomb)
    path = tmp_path / "bomb.tfrecords"
    write_records(path, [encode_tile(_jpeg(), "s", 0, 0), encode_tile(bomb_png, "s", 1, 0)])
    got = _measure("decode", path)
    assert got["decode_image"]["error"][0] == "ImageTooLargeError"
    assert got["problems"] == [["image-cap", 1, os.path.getsize(path) - len(frame_record(
        encode_tile(bomb_png, "s", 1, 0)))]]
    assert got["build_index"]["error"] is None  # an index does not decode
    for op in ("decode_image", "verify", "build_index"):
        assert got[op]["growth"] < READ_BOUND, (op, got[op])


def _good_folder(tmp_path):
    """Just the good tfrecords of :func:`_bomb_folder`."""
    folder = tmp_path / "clean"
    folder.mkdir()
    _write_good(folder)
    return folder


def _write_good(folder):
    for k in range(2):
        write_records(folder / f"good{k}.tfrecords",
                      [encode_tile(_jpeg(seed=k * 10 + i), f"good{k}", i, 0) for i in range(4)])


def _bomb_folder(tmp_path, bomb_png, gzip_bomb=None):
    """Two good tfrecords of 16 px JPEG tiles; one with the PNG bomb as record 2; and
    the GZIP bomb (not indexable: with on_error='skip' all of it is skipped)."""
    folder = tmp_path / ("tfrecords" if gzip_bomb is None else "tfrecords-gz")
    folder.mkdir()
    _write_good(folder)
    write_records(folder / "png.tfrecords",
                  [encode_tile(_jpeg(seed=99 + i), "png", i, 0) for i in range(2)]
                  + [encode_tile(bomb_png, "png", 2, 0)])
    if gzip_bomb is not None:
        os.symlink(gzip_bomb, folder / "zgzip.tfrecords")
    return folder


def test_torch_loader_with_two_workers_meets_both_bombs(tmp_path, bomb_png, gzip_bomb):
    pytest.importorskip("tilespec_torch")
    clean = _good_folder(tmp_path)
    got = _measure("torch", clean, _bomb_folder(tmp_path, bomb_png), "raise")["torch"]
    assert got["error"][0] == "ImageTooLargeError", got
    assert "png.tfrecords, record 2, byte offset" in got["error"][1], got
    assert got["growth"] < WORKER_BOUND, got
    got = _measure("torch", clean, _bomb_folder(tmp_path, bomb_png, gzip_bomb), "skip")["torch"]
    assert got["error"] is None and got["items"] == 8 + 2, got
    assert got["growth"] < WORKER_BOUND, got


def test_loader_names_file_record_and_offset_of_the_png_bomb(tmp_path, bomb_png, gzip_bomb):
    folder = _bomb_folder(tmp_path, bomb_png, gzip_bomb)
    with pytest.warns(UserWarning, match="GZIP"):
        ds = tilespec.Dataset(folder, on_error="skip")
    png = str(folder / "png.tfrecords")
    L = NumpyLoader([png], [3], [1.0], infinite=False, standardize=False)
    with pytest.raises(tilespec.ImageTooLargeError) as e:
        list(L)
    offset = int(load_index(png)[0][2, 0])
    assert (e.value.path, e.value.record, e.value.offset) == (png, 2, offset)
    with pytest.warns(UserWarning):
        items = list(ds.numpy(infinite=False, on_error="skip", standardize=False))
    assert len(items) == 10


# ----------------------------------------------------------------------- the record-size cap

def test_cap_boundary_in_every_reader(tmp_path):
    payloads = [b"a" * 100, b"b" * 101, b"c"]
    path = tmp_path / "t.tfrecords"
    write_records(path, payloads)
    assert list(tilespec.read_records(path, max_record_bytes=101)) == payloads
    with pytest.raises(tilespec.RecordTooLargeError) as e:
        list(tilespec.read_records(path, max_record_bytes=100))
    assert (e.value.record, e.value.offset, e.value.length, e.value.cap) == (1, 116, 101, 100)
    assert "declares 101 payload bytes" in e.value.reason and "max_record_bytes=100" in str(
        e.value)
    gz = tmp_path / "g.tfrecords"
    write_records(gz, payloads, compression="GZIP")
    with pytest.raises(tilespec.RecordTooLargeError) as e:
        list(tilespec.read_records(gz, compression="GZIP", max_record_bytes=100))
    assert (e.value.record, e.value.offset) == (1, 116)
    with pytest.raises(tilespec.RecordTooLargeError):
        read_record_at(path, 116, max_record_bytes=100, record=1)
    assert read_record_at(path, 0, max_record_bytes=100) == payloads[0]
    with pytest.raises(tilespec.RecordTooLargeError):
        list(scan_frames(path, max_record_bytes=100))
    with pytest.raises(tilespec.RecordTooLargeError):
        compute_index(path, max_record_bytes=100)
    assert len(compute_index(path, max_record_bytes=101)[0]) == 3
    with pytest.raises(tilespec.RecordTooLargeError):
        load_index(path, max_record_bytes=100)
    # an index already built is used, but its over-cap record is refused when read
    load_index(path)
    source = tilespec.source.TileSource([path], max_record_bytes=100)
    with pytest.raises(tilespec.RecordTooLargeError) as e:
        source.read(0, 1)
    assert (e.value.path, e.value.record, e.value.offset) == (str(path), 1, 116)
    source.close()
    report = verify_file(path, level="records", max_record_bytes=100, index=False)
    assert [(p.kind, p.record, p.offset) for p in report.problems] == [("record-cap", 1, 116)]
    assert (report.records, report.good) == (3, 2)
    report = verify_file(gz, level="records", max_record_bytes=100)
    assert [(p.kind, p.record) for p in report.problems] == [("record-cap", 1)]
    assert "not checked" in report.problems[0].message and report.records == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "64"])
def test_cap_values_are_checked(tmp_path, bad):
    path = tmp_path / "t.tfrecords"
    write_records(path, [b"x"])
    with pytest.raises(ValueError, match="max_record_bytes"):
        list(tilespec.read_records(path, max_record_bytes=bad))
    with pytest.raises(ValueError, match="max_tile_pixels"):
        tilespec.verify(path, max_tile_pixels=bad)
    with pytest.raises(tilespec.annotations.DatasetError, match="max_record_bytes"):
        tilespec.Dataset(path, max_record_bytes=bad)


def test_dataset_caps_reach_its_loaders(tmp_path):
    path = tmp_path / "t.tfrecords"
    write_records(path, [encode_tile(_jpeg((32, 32)), "t", 0, 0)])
    with pytest.raises(tilespec.RecordTooLargeError):
        tilespec.Dataset(path, max_record_bytes=100)
    ds = tilespec.Dataset(path, max_tile_pixels=32 * 31)
    assert ds.limits == {"max_record_bytes": MAX_RECORD_BYTES, "max_tile_pixels": 992}
    assert ds.clip(1).limits == ds.limits  # derived datasets keep them
    with pytest.raises(tilespec.ImageTooLargeError, match="32x32"):
        next(iter(ds.numpy(standardize=False)))
    img, _ = next(iter(ds.numpy(standardize=False, max_tile_pixels=1024)))
    assert img.shape == (32, 32, 3)


# --------------------------------------------------------------------------- image headers

@pytest.mark.parametrize("fmt,mode,extra", [
    ("JPEG", "RGB", {}), ("JPEG", "L", {}), ("JPEG", "CMYK", {}),
    ("JPEG", "RGB", {"progressive": True}), ("JPEG", "RGB", {"subsampling": 0}),
    ("PNG", "RGB", {}), ("PNG", "L", {}), ("PNG", "RGBA", {}), ("PNG", "P", {}),
    ("PNG", "LA", {})])
def test_image_header_gives_pillows_size(fmt, mode, extra):
    from PIL import Image
    rng = np.random.default_rng(3)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)).convert(mode).save(
        buf, format=fmt, **extra)
    data = buf.getvalue()
    head = image_header(data)
    assert head[:3] == (fmt.lower(), 53, 37) and image_size(data) == head[:3]
    channels = {"RGB": 3, "L": 1, "CMYK": 4, "RGBA": 4, "P": 3, "LA": 2}[mode]
    assert head[3] == channels


def test_a_jpeg_claiming_65535_squared_is_refused_from_its_header():
    data = _with_sof_size(_jpeg(), 65535, 65535)
    assert image_header(data) == ("jpeg", 65535, 65535, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(tilespec.ImageTooLargeError, match="65535x65535"):
            tilespec.decode_image(data)


def test_the_largest_of_several_frame_headers_counts():
    small = _jpeg()
    i = small.index(b"\xff\xc0")
    n = struct.unpack(">H", small[i + 2:i + 4])[0]
    sof = small[i:i + 2 + n]
    big = _with_sof_size(sof, 20000, 20000)
    data = small[:i] + big + small[i:]  # a huge frame header, then the real one
    assert image_header(data)[1:3] == (20000, 20000)
    with pytest.raises(tilespec.ImageTooLargeError):
        tilespec.decode_image(data)


def test_pixel_cap_boundary_and_pillows_own_limit(monkeypatch):
    data = _jpeg((40, 30))
    assert tilespec.decode_image(data, max_pixels=1200).shape == (30, 40, 3)
    with pytest.raises(tilespec.ImageTooLargeError, match="max_tile_pixels=1199"):
        tilespec.decode_image(data, max_pixels=1199)
    assert check_image_header(data, max_pixels=1200) == (30, 40)
    # Pillow's global limit below our cap: its warning is caught for this call only,
    # its error (twice its limit) is ours; Image.MAX_IMAGE_PIXELS itself is not changed
    from PIL import Image
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tilespec.decode_image(data).shape == (30, 40, 3)  # 1200 > 1000: would warn
        assert Image.MAX_IMAGE_PIXELS == 1000
        with pytest.raises(tilespec.ImageTooLargeError, match="MAX_IMAGE_PIXELS"):
            tilespec.decode_image(_jpeg((50, 50)))  # 2500 > 2 * 1000


# ------------------------------------------------------------------------- tile-size check

def _mixed(tmp_path):
    """a.tfrecords: 3 tiles of 16 x 16; b.tfrecords: 16 x 16, then one 12 x 10 (w x h)."""
    a, b = tmp_path / "a.tfrecords", tmp_path / "b.tfrecords"
    write_records(a, [encode_tile(_jpeg(seed=i), "a", i, 0) for i in range(3)])
    write_records(b, [encode_tile(_jpeg(seed=5), "b", 0, 0),
                      encode_tile(_jpeg((12, 10), seed=6), "b", 1, 0)])
    return [a, b]


def test_a_tile_of_another_size_is_an_error_naming_both_sizes(tmp_path):
    paths = _mixed(tmp_path)
    L = NumpyLoader(paths, [3, 2], [1.0, 1.0], infinite=False, standardize=False)
    with pytest.raises(tilespec.TileSizeError) as e:
        list(L)
    offset = int(load_index(paths[1])[0][1, 0])
    assert (e.value.path, e.value.record, e.value.offset) == (str(paths[1]), 1, offset)
    assert "this tile is 12x10" in str(e.value) and "16x16" in str(e.value)
    assert f"that of {paths[0]}, record 0" in str(e.value)
    with pytest.warns(UserWarning, match="tile size differs"):
        L = NumpyLoader(paths, [3, 2], [1.0, 1.0], infinite=False, standardize=False,
                        on_error="skip", batch_size=2)
        batches = list(L)
    assert sum(len(b[0]) for b in batches) == 4 and L.num_skipped == 1


def test_a_pipeline_that_makes_sizes_equal_accepts_every_size(tmp_path):
    paths = _mixed(tmp_path)
    items = list(NumpyLoader(paths, [3, 2], [1.0, 1.0], infinite=False, standardize=False,
                             resize_target=8))
    assert len(items) == 5 and {i[0].shape for i in items} == {(8, 8, 3)}
    # a crop box that fits every tile makes them equal too; one that does not fit the
    # 12 x 10 tile is its tile-size error
    items = list(NumpyLoader(paths, [3, 2], [1.0, 1.0], infinite=False, standardize=False,
                             crop_left=1, crop_width=8))
    assert len(items) == 5 and {i[0].shape for i in items} == {(8, 8, 3)}
    with pytest.raises(tilespec.TileSizeError, match="crop box") as e:
        list(NumpyLoader(paths[1:], [2], [1.0], infinite=False, standardize=False,
                         crop_left=2, crop_width=12))
    assert e.value.record == 1


def test_the_indexed_dataset_and_the_adapters_apply_the_same_check(tmp_path):
    paths = _mixed(tmp_path)
    ref = tilespec.IndexedInterleaver(paths, standardize=False)
    with pytest.raises(tilespec.TileSizeError):
        ref[4]
    assert ref[3][0].shape == (16, 16, 3)
    ds = tilespec.Dataset([str(p) for p in paths])
    torch = pytest.importorskip("tilespec_torch")
    with pytest.raises(tilespec.TileSizeError, match="12x10"):
        list(ds.torch(infinite=False, standardize=False, batch_size=5))
    tf_adapter = pytest.importorskip("tilespec_tf")
    with pytest.raises(Exception, match="12x10"):
        list(ds.tensorflow(infinite=False, standardize=False))
    assert torch and tf_adapter


def test_verify_tile_size_and_image_cap(tmp_path):
    paths = _mixed(tmp_path)
    report = verify_file(paths[1], index=False)
    assert report.ok  # not checked by default
    report = verify_file(paths[1], index=False, tile_size="first")
    assert [(p.kind, p.record) for p in report.problems] == [("tile-size", 1)]
    assert "12x10" in report.problems[0].message
    report = verify_file(paths[1], index=False, tile_size=24)
    assert [(p.kind, p.record) for p in report.problems] == [("tile-size", 0), ("tile-size", 1)]
    report = verify_file(paths[1], index=False, max_tile_pixels=200)  # 16 x 16 is 256
    assert [(p.kind, p.record) for p in report.problems] == [("image-cap", 0)]
    result = verify(paths, tile_size=(10, 12), max_tile_pixels=MAX_TILE_PIXELS, jobs=1)
    assert result.counts()["tile-size"] == 4


def test_cli_verify_caps(tmp_path, capsys):
    from tilespec.cli import main
    paths = _mixed(tmp_path)
    assert main(["verify", str(paths[1]), "--no-index"]) == 0
    assert main(["verify", str(paths[1]), "--no-index", "--tile-px", "first"]) == 1
    out = capsys.readouterr().out
    assert f"{paths[1]}, record 1, byte offset" in out and ": tile-size: " in out
    assert main(["verify", str(paths[1]), "--max-tile-pixels", "200"]) == 1
    assert ": image-cap: " in capsys.readouterr().out
    assert main(["verify", str(paths[1]), "--max-record-bytes", "100"]) == 1
    assert ": record-cap: " in capsys.readouterr().out


def test_the_tf_indexed_dataset_checks_too(tmp_path):
    pytest.importorskip("tilespec_tf")
    from tilespec import plugins
    paths = _mixed(tmp_path)
    d = plugins.make_indexed("tensorflow", [str(p) for p in paths], {"standardize": False})
    with pytest.raises(Exception, match="12x10"):
        list(d)


def test_a_damaged_first_record_is_passed_over_for_the_tile_size(tmp_path):
    paths = _mixed(tmp_path)
    data = bytearray(paths[0].read_bytes())
    data[20] ^= 1  # record 0's payload: its checksum fails
    paths[0].write_bytes(bytes(data))
    tilespec.build_index(paths[1])
    maker = NumpyLoader(paths[1:], [2], [1.0], standardize=False).item_maker
    assert maker.tile_size() == (16, 16, f"that of {paths[1]}, record 0")
    # with the damaged file first, the size comes from the next file's record 0, and the
    # damaged record raises its own error at its turn (here: first)
    # (b's weight is 0, so the stream is a's records in order whatever the seed)
    L = NumpyLoader(paths, [3, 2], [1.0, 0.0], infinite=False, standardize=False)
    with pytest.raises(tilespec.TFRecordError) as e:
        list(L)
    assert L.item_maker.tile_size()[:2] == (16, 16)
    assert (e.value.path, e.value.record) == (str(paths[0]), 0)
    assert not isinstance(e.value, tilespec.TileSizeError)
