"""`tilespec verify` and tilespec.verify (spec/reliability.md, "Checks", "Report",
"Resuming after damage", "Index agreement")."""

import gzip
import io
import os

import numpy as np
import pytest

import tilespec
from tilespec.cli import main
from tilespec.example import encode_example, encode_tile
from tilespec.index import compute_index, index_path, write_index
from tilespec.records import frame_record
from tilespec.verify import KINDS, Problem, verify, verify_file


@pytest.fixture
def slide(folder):
    """slide-b1: 24 tile records, with its index written."""
    path = folder / "slide-b1.tfrecords"
    tilespec.build_index(path)
    return path


def _rows(path):
    return compute_index(path, locations=False)[0]


def _flip(path, at, bit=1):
    data = bytearray(path.read_bytes())
    data[at] ^= bit
    path.write_bytes(bytes(data))


def _table(summary):
    """The summary table as {row name: (value, note)}."""
    out = {}
    for line in summary.splitlines():
        name, value, *note = line.strip().split(None, 2)
        out[name] = (int(value), note[0] if note else "")
    return out


def _only(result, kind):
    assert len(result.problems) == 1, result.problems
    p = result.problems[0]
    assert p.kind == kind, p
    return p


def test_clean_dataset(folder):
    for p in folder.iterdir():
        tilespec.build_index(p)
    result = verify(folder)
    assert result.ok and result.problems == []
    assert [os.path.basename(f.path) for f in result.files] == sorted(os.listdir(folder))[1::2]
    assert result.records == 144 and sum(f.good for f in result.files) == 144
    assert all(f.index == "ok (.index.npz)" and f.unread == 0 for f in result.files)
    assert result.counts() == {}
    table = _table(result.summary())
    assert table["files"] == (6, "0 with problems") and table["records"] == (144, "144 good")
    assert table["problems"] == (0, "") and table["indexes"] == (6, "6 ok")


def test_missing_index_is_not_a_problem(folder):
    result = verify(folder / "slide-c1.tfrecords")
    assert result.ok and result.files[0].index == "missing"
    assert verify(folder / "slide-c1.tfrecords", index=False).files[0].index == "not checked"


@pytest.mark.parametrize("where", ["payload", "payload-crc field"])
def test_flipped_payload_byte_or_payload_crc_continues(slide, where):
    rows = _rows(slide)
    k = 7
    off, length = int(rows[k, 0]), int(rows[k, 1])
    _flip(slide, off + 12 + 100 if where == "payload" else off + length - 2)
    result = verify(slide)
    p = _only(result, "payload-crc")
    assert (p.path, p.record, p.offset) == (str(slide), k, off)
    assert "goes on at the next record" in p.message
    f = result.files[0]
    assert f.records == 24 and f.good == 23 and f.unread == 0
    assert f.index == "ok (.index.npz)"  # offsets still agree


@pytest.mark.parametrize("at", [0, 5, 7, 8, 11])  # length bytes and length-crc bytes
def test_flipped_length_or_length_crc_stops_the_file(slide, at):
    rows = _rows(slide)
    k = 11
    off = int(rows[k, 0])
    _flip(slide, off + at, 0x10)
    result = verify(slide)
    p = _only(result, "length-crc")
    assert (p.record, p.offset) == (k, off)
    size = os.path.getsize(slide)
    f = result.files[0]
    assert f.records == k and f.good == k and f.unread == size - off
    assert f"{size - off} bytes left unread" in p.message
    assert f.index == "ok (.index.npz)"  # the index agrees with every record that was read


def test_flipped_first_header_is_not_a_tfrecord(slide):
    _flip(slide, 3)
    p = _only(verify(slide), "not-tfrecord")
    assert (p.record, p.offset) == (0, 0)


@pytest.mark.parametrize("cut", ["payload", "footer", "header"])
def test_truncated_file(slide, cut):
    rows = _rows(slide)
    k = 23 if cut != "header" else 23
    off, length = int(rows[k, 0]), int(rows[k, 1])
    keep = {"payload": off + 40, "footer": off + length - 1, "header": off + 5}[cut]
    slide.write_bytes(slide.read_bytes()[:keep])
    result = verify(slide)
    p = _only(result, "truncated")
    assert (p.record, p.offset) == (k, off)
    assert f"{keep - off} bytes left unread" in p.message
    assert result.files[0].records == k and result.files[0].unread == keep - off


@pytest.mark.parametrize("garbage", [b"x" * 5, b"some garbage appended to the file\n" * 3])
def test_garbage_appended(slide, garbage):
    size = os.path.getsize(slide)
    with open(slide, "ab") as f:
        f.write(garbage)
    result = verify(slide)
    kind = "truncated" if len(garbage) < 12 else "length-crc"
    p = _only(result, kind)
    assert (p.record, p.offset) == (24, size)
    assert result.files[0].records == 24 and result.files[0].good == 24
    assert result.files[0].unread == len(garbage)


def test_not_a_tfrecord_and_empty_and_missing(tmp_path):
    csv = tmp_path / "table.tfrecords"
    csv.write_text("patient,slide\np1,s1\n" * 10)
    empty = tmp_path / "empty.tfrecords"
    empty.write_bytes(b"")
    result = verify([csv, empty, tmp_path / "nope.tfrecords"])
    assert [(p.kind, os.path.basename(p.path), p.record, p.offset) for p in result.problems] == [
        ("not-tfrecord", "table.tfrecords", 0, 0), ("missing", "nope.tfrecords", None, None)]
    assert result.files[0].unread == os.path.getsize(csv)
    # an empty file is valid (zero records): a note, not a problem
    assert result.files[1].ok and result.files[1].records == 0
    assert [(n.kind, os.path.basename(n.path)) for n in result.notes] == [
        ("empty", "empty.tfrecords")]
    assert result.notes[0].message.startswith("0 records")


def _tile(i, image=None):
    if image is None:
        from PIL import Image
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (i * 20 % 256, 100, 50)).save(buf, format="PNG")
        image = buf.getvalue()
    return encode_tile(image, "s1", i, 2 * i)


def _write(path, payloads):
    path.write_bytes(b"".join(frame_record(p) for p in payloads))
    return path


def test_undecodable_image_example_and_schema_problems(tmp_path):
    payloads = [_tile(i) for i in range(6)]
    payloads[1] = _tile(1, image=b"\xff\xd8\xff broken jpeg")
    payloads[3] = b"\x00\x01 not an Example"
    payloads[4] = encode_example({"slide": "s1", "loc_x": 1, "loc_y": 2})  # no image_raw
    path = _write(tmp_path / "mixed.tfrecords", payloads)
    offsets = _rows(path)[:, 0]
    result = verify(path)
    assert [(p.kind, p.record, p.offset) for p in result.problems] == [
        ("image", 1, offsets[1]), ("example", 3, offsets[3]), ("tile", 4, offsets[4])]
    assert "JPEG" in result.problems[0].message and "image_raw" in result.problems[2].message
    assert result.files[0].good == 3
    # each level checks less
    assert [p.kind for p in verify(path, level="tiles").problems] == ["example", "tile"]
    assert [p.kind for p in verify(path, level="examples").problems] == ["example"]
    assert verify(path, level="records").ok
    with pytest.raises(ValueError, match="level"):
        verify(path, level="pixels")


def test_payload_over_max_payload_is_checksum_only(tmp_path):
    path = _write(tmp_path / "t.tfrecords", [_tile(0), b"\x00" * 5000, _tile(2)])
    result = verify(path, max_payload=4096)
    assert result.ok and result.files[0].checksum_only == 1
    assert _table(result.summary())["checksum-only"] == (1, "records too large to parse")
    _flip(path, int(_rows(path)[1, 0]) + 12 + 4000)
    p = _only(verify(path, max_payload=4096), "payload-crc")
    assert p.record == 1


@pytest.mark.parametrize("case", ["shifted", "fewer", "more", "locations", "garbage"])
def test_index_that_disagrees_with_its_file(slide, case):
    arr, locs = compute_index(slide)
    k = 5
    if case == "shifted":  # records 5 and 6 merged: same total, wrong boundaries
        arr = np.delete(arr, k + 1, axis=0)
        arr[k, 1] += _rows(slide)[k + 1, 1]
        locs = np.delete(locs, k + 1, axis=0)
        want = (k, arr[k, 0])
    elif case == "fewer":
        arr, locs, k = arr[:-1], locs[:-1], 23
        want = (23, _rows(slide)[23, 0])
    elif case == "more":
        arr = np.vstack([arr, [[arr[-1, 0] + arr[-1, 1], 100]]])
        locs = np.vstack([locs, [[0, 0]]])
        want = (24, arr[24, 0])
    elif case == "locations":
        locs = locs.copy()
        locs[k] = [9999, 1]
        want = (k, arr[k, 0])
    if case == "garbage":
        open(index_path(slide), "wb").write(b"not a zip")
        want = (None, None)
    else:
        write_index(slide, arr, locs)
    result = verify(slide)
    p = _only(result, "index")
    assert (p.record, p.offset) == want
    assert index_path(slide) in p.message
    assert result.files[0].index.startswith("unreadable" if case == "garbage" else "disagrees")
    assert result.files[0].good == 24  # the records themselves are fine


def test_index_with_locations_for_a_record_without_any(tmp_path):
    payloads = [_tile(0), encode_tile(_tile_png(), "s1"), _tile(2)]
    path = _write(tmp_path / "t.tfrecords", payloads)
    arr = _rows(path)
    write_index(path, arr, [[0, 0], [1, 2], [2, 4]])
    p = _only(verify(path), "index")
    assert (p.record, p.offset) == (1, arr[1, 0]) and "no loc_x/loc_y" in p.message


def _tile_png():
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buf, format="PNG")
    return buf.getvalue()


def test_several_kinds_in_one_file_and_ordering(slide):
    rows = _rows(slide)
    _flip(slide, int(rows[2, 0]) + 30)
    _flip(slide, int(rows[9, 0]) + 30)
    _flip(slide, int(rows[15, 0]) + 1)
    result = verify(slide)
    assert [(p.kind, p.record, p.offset) for p in result.problems] == [
        ("payload-crc", 2, rows[2, 0]), ("payload-crc", 9, rows[9, 0]),
        ("length-crc", 15, rows[15, 0])]
    assert result.counts() == {"payload-crc": 2, "length-crc": 1}
    assert result.files[0].good == 13


def test_gzip_files(tmp_path, slide):
    gz = tmp_path / "z.tfrecords"
    gz.write_bytes(gzip.compress(slide.read_bytes(), mtime=0))
    result = verify(gz)
    assert result.ok and result.files[0].compression == "GZIP" and result.records == 24
    assert result.files[0].index.startswith("not applicable")
    gz.write_bytes(gz.read_bytes()[:-4000])
    result = verify(gz)
    assert [p.kind for p in result.problems] == ["truncated"]
    assert result.problems[0].record == result.records


def test_damaged_gzip_layer(tmp_path, slide):
    gz = tmp_path / "z.tfrecords"
    good = gzip.compress(slide.read_bytes(), mtime=0)
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF  # inside the deflate data
    gz.write_bytes(bytes(data))
    kinds = [p.kind for p in verify(gz).problems]
    assert kinds and kinds[-1] in ("gzip", "payload-crc", "length-crc")
    # the GZIP magic bytes, then something that is neither GZIP nor TFRecord
    gz.write_bytes(b"\x1f\x8b" + b"not gzip at all" * 3)
    p = _only(verify(gz), "not-tfrecord")
    assert (p.record, p.offset) == (0, 0) and "GZIP" in p.message


def test_result_is_the_same_with_a_process_pool(folder):
    for name in ("slide-a1", "slide-d2"):
        p = folder / f"{name}.tfrecords"
        _flip(p, int(_rows(p)[3, 0]) + 50)
    serial = verify(folder, jobs=1)
    pooled = verify(folder, jobs=2)
    assert serial.problems == pooled.problems and len(serial.problems) == 2
    assert [f.__dict__ for f in serial.files] == [f.__dict__ for f in pooled.files]
    seen = []
    verify(folder, jobs=2, progress=lambda done, report: seen.append((done, report.path)))
    assert seen == [(i + 1, f.path) for i, f in enumerate(serial.files)]


def test_problem_formatting():
    p = Problem("payload-crc", "a.tfrecords", 3, 120, "bad")
    assert str(p) == "a.tfrecords, record 3, byte offset 120: payload-crc: bad"
    assert str(Problem("missing", "b", None, None, "no such file")) == "b: missing: no such file"
    assert set(KINDS) >= {"payload-crc", "length-crc", "truncated", "index", "image"}


def test_verify_file_matches_verify(slide):
    assert verify_file(slide).__dict__ == verify(slide).files[0].__dict__


# ------------------------------------------------------------------------------ the CLI
def test_cli_clean(folder, capsys):
    assert main(["verify", str(folder)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.splitlines()[0].startswith("files")
    table = _table(out)
    assert table["records"] == (144, "144 good") and table["indexes"] == (0, "6 missing")


def test_cli_reports_problems_and_fails(folder, capsys):
    a1 = folder / "slide-a1.tfrecords"
    rows = _rows(a1)
    _flip(a1, int(rows[4, 0]) + 40)
    c1 = folder / "slide-c1.tfrecords"
    c1.write_bytes(c1.read_bytes()[:-3])
    assert main(["verify", str(folder), str(folder / "missing.tfrecords"), "-j", "1"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{a1}, record 4, byte offset {rows[4, 0]}: payload-crc: ")
    assert out[1].startswith(f"{c1}, record 11, byte offset ") and ": truncated: " in out[1]
    assert out[2] == f"{folder / 'missing.tfrecords'}: missing: no such file"
    table = _table("\n".join(out[3:]))
    assert table["payload-crc"] == table["truncated"] == table["missing"] == (1, "")
    assert table["files"] == (7, "3 with problems") and table["problems"] == (3, "")
    assert table["unread"][0] == os.path.getsize(c1) - _rows_prefix(c1)


def _rows_prefix(path):
    """Where the last (truncated) record of ``path`` starts."""
    return verify(path).problems[0].offset


def test_cli_verbose_and_levels(folder, capsys):
    assert main(["verify", "-v", "--level", "records", "--no-index",
                 str(folder / "slide-c1.tfrecords")]) == 0
    out = capsys.readouterr().out
    assert "slide-c1.tfrecords: 12 records, 0 problems, index not checked" in out


def test_cli_progress_on_a_terminal(folder, capsys, monkeypatch):
    import sys

    class TTY(io.StringIO):
        def isatty(self):
            return True

    tty = TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert main(["verify", str(folder), "-j", "1"]) == 0
    shown = tty.getvalue()
    assert "verifying 6/6 files" in shown and shown.endswith("\r")


def test_cli_usage_errors(tmp_path, capsys):
    empty = tmp_path / "nothing"
    empty.mkdir()
    assert main(["verify", str(empty)]) == 1
    assert "no .tfrecords files" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["verify"])
    assert e.value.code == 2


def test_cli_an_empty_file_is_a_note_not_a_failure(folder, capsys):
    # semantics 1 (revision 2): TensorFlow leaves a 0-byte file for a slide with no tiles
    empty = folder / "slide-e1.tfrecords"
    empty.write_bytes(b"")
    assert main(["verify", str(folder), "-j", "1"]) == 0   # nothing else is wrong: exit 0
    out = capsys.readouterr().out
    assert f"{empty}: note: empty: 0 records" in out
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.strip()
                and not line.startswith(str(folder)))
    assert rows["files"].startswith("7") and rows["files"].endswith("0 with problems")
    assert rows["problems"].strip() == "0"
    assert rows["empty"].startswith("1 ")
    # with a real problem the exit code is 1 and the note is still listed
    (folder / "bad.tfrecords").write_text("not a tfrecord")
    assert main(["verify", str(folder), "-j", "1"]) == 1
    out = capsys.readouterr().out
    assert f"{empty}: note: empty: 0 records" in out and "not-tfrecord" in out
