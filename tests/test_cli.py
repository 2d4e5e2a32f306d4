"""The `tilespec` command line (README.md, "Command line"; spec/records.md, spec/index.md)."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest

import tilespec
from tilespec import cli
from tilespec import index as idx
from tilespec.cli import Progress, main


def _one_error_line(capsys, rc):
    out, err = capsys.readouterr()
    assert rc == 1
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("tilespec: error: "), err
    return lines[0]


def test_demo(tmp_path, capsys):
    root = tmp_path / "demo"
    assert main(["demo", str(root), "--tile-px", "32", "--train-steps", "0"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "wrote 6 tfrecords" in out and "CRC32C backend" in out
    assert "6 files, 144 records: 6 indexes written, 0 valid" in out
    assert out.count("index: ok (.index.npz)") == 6 and "image: jpeg 32x32" in out
    assert sorted(os.listdir(root)) == ["annotations.csv", "pictures", "tfrecords"]
    assert len(os.listdir(root / "tfrecords")) == 12  # 6 tfrecords + 6 indexes
    pictures = [str(root / "pictures" / f"{n}.png") for n in ("augment", "sampling", "batch",
                                                               "shards")]
    assert sorted(os.listdir(root / "pictures")) == sorted(map(os.path.basename, pictures))
    assert all(f"\n  {p}\n" in out for p in pictures)  # the demo says where they are
    # a second demo rewrites identical files: the indexes stay valid
    assert main(["demo", str(root), "--tile-px", "32", "--train-steps", "0",
                 "--no-pictures"]) == 0
    out = capsys.readouterr().out
    assert "0 indexes written, 6 valid" in out and "pictures" not in out


def test_inspect_file(folder, capsys):
    path = folder / "slide-c1.tfrecords"
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == [
        str(path), "  records: 12",
        "  features: image_raw:bytes, slide:bytes, loc_x:int64, loc_y:int64",
        "  image: jpeg 64x64", f"  decoder: {tilespec.jpeg.DECODER}",
        "  slides: slide-c1 (12)", "  index: missing"]


def test_inspect_dir(folder, capsys):
    tilespec.build_index(folder / "slide-a1.tfrecords")
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.count("  records: ") == 6 and out.rstrip().endswith("6 files, 144 records")
    assert out.count("index: missing") == 5 and out.count("index: ok (.index.npz)") == 1
    # files are listed in sorted order
    names = [line for line in out.splitlines() if line.endswith(".tfrecords")]
    assert names == sorted(names) and len(names) == 6


def test_index_builds_then_writes_nothing(folder, capsys, monkeypatch):
    assert main(["index", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.count("wrote ") == 6 and "(was missing)" in out
    assert "6 files, 144 records: 6 indexes written, 0 valid" in out
    mtimes = {n: os.stat(folder / n).st_mtime_ns for n in os.listdir(folder)}

    def no_writes(*a, **k):
        raise AssertionError("an index was written on the second run")

    monkeypatch.setattr(idx, "write_index", no_writes)
    assert main(["index", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.strip() == "6 files, 144 records: 0 indexes written, 6 valid"
    assert {n: os.stat(folder / n).st_mtime_ns for n in os.listdir(folder)} == mtimes
    assert main(["index", "-v", str(folder)]) == 0
    assert capsys.readouterr().out.count("index ok (.index.npz)") == 6


def test_index_rebuilds_an_invalid_index(folder, capsys):
    path = folder / "slide-b1.tfrecords"
    tilespec.build_index(path)
    with open(idx.index_path(path), "wb") as fh:
        fh.write(b"not an index")
    assert main(["index", str(path)]) == 0
    out, err = capsys.readouterr()
    assert "wrote slide-b1.index.npz (was invalid (.index.npz): cannot read index file" in out
    assert err == ""  # the reason is in the output, not a Python warning


def test_index_verifies_checksums_while_building(folder, capsys):
    path = folder / "slide-d2.tfrecords"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    path.write_bytes(bytes(raw))
    line = _one_error_line(capsys, main(["index", str(folder)]))
    assert str(path) in line and "fails its checksum" in line and "record " in line
    assert not os.path.exists(idx.index_path(path))


def test_errors_are_one_line(tmp_path, folder, capsys):
    corrupt = tmp_path / "corrupt.tfrecords"
    raw = bytearray((folder / "slide-a2.tfrecords").read_bytes())
    raw[20] ^= 1
    corrupt.write_bytes(bytes(raw))
    line = _one_error_line(capsys, main(["inspect", str(corrupt)]))
    assert line.startswith(f"tilespec: error: {corrupt}, record 0, byte offset 0: ")

    line = _one_error_line(capsys, main(["inspect", str(tmp_path / "missing")]))
    assert line == f"tilespec: error: {tmp_path / 'missing'}: no such file or folder"

    empty_dir = tmp_path / "nothing"
    empty_dir.mkdir()
    (empty_dir / "notes.txt").write_text("hi")
    line = _one_error_line(capsys, main(["index", str(empty_dir)]))
    assert line == f"tilespec: error: {empty_dir}: no .tfrecords files in this folder"


    gz = tmp_path / "z.tfrecords"
    tilespec.write_records(gz, [b"x"], compression="GZIP")
    line = _one_error_line(capsys, main(["index", str(gz)]))
    assert "GZIP" in line and "random access" in line

    text = tmp_path / "notes.tfrecords"
    text.write_text("line one\nline two\n")
    line = _one_error_line(capsys, main(["inspect", str(text)]))
    assert "not a TFRecord file" in line


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["frobnicate"])
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def test_real_subprocess(tmp_path, demo_dataset):
    exe = os.path.join(os.path.dirname(sys.executable), "tilespec")
    if not os.path.exists(exe):
        pytest.skip("the tilespec console script is not installed in this environment")
    ok = subprocess.run([exe, "inspect", demo_dataset["paths"][0]], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0 and "records: 40" in ok.stdout and ok.stderr == ""
    bad = tmp_path / "bad.tfrecords"
    bad.write_bytes(b"\x00" * 30)
    run = subprocess.run([exe, "index", str(bad)], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"tilespec: error: {bad}, record 0, byte offset 0: not a TFRecord file: the first "
        "record header fails its checksum"]
    mod = subprocess.run([sys.executable, "-m", "tilespec", "--version"], capture_output=True,
                         text=True, timeout=120)
    assert mod.returncode == 0 and mod.stdout.strip() == f"tilespec {tilespec.__version__}"


# ----------------------------------------------------------------- progress display
class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def _frames(text):
    return [f for f in text.split("\r") if f.strip()]


def test_progress_on_a_tty():
    stream = FakeTTY()
    p = Progress(3, "indexing", stream=stream, interval=0)
    for i, name in enumerate(["/d/a.tfrecords", "/d/bb.tfrecords", "/d/c.tfrecords"], 1):
        p.step(i, name)
    frames = _frames(stream.getvalue())
    assert [f.split(" (")[0] for f in frames] == [
        "indexing 1/3 files", "indexing 2/3 files", "indexing 3/3 files"]
    assert frames[1].rstrip().endswith("bb.tfrecords") and "/s)" in frames[1]
    # a shorter frame blanks out the rest of a longer one
    assert all(len(f) >= len(frames[1].rstrip()) for f in frames[1:])
    p.close()
    assert stream.getvalue().endswith("\r")
    assert stream.getvalue().split("\r")[-2].strip() == ""  # line erased


def test_progress_for_many_files_is_throttled_and_ends_complete():
    stream = FakeTTY()
    p = Progress(5000, "indexing", stream=stream, interval=3600)
    for i in range(1, 5001):
        p.step(i, f"slide-{i}.tfrecords")
    frames = _frames(stream.getvalue())
    assert frames[0].startswith("indexing 1/5000 files")
    assert frames[-1].startswith("indexing 5000/5000 files")
    assert len(frames) == 2  # first and last only, within the interval


def test_progress_hidden_off_a_tty_or_for_one_file():
    for stream, total in ((io.StringIO(), 10), (FakeTTY(), 1)):
        p = Progress(total, "indexing", stream=stream, interval=0)
        for i in range(1, total + 1):
            p.step(i, "x.tfrecords")
        p.close()
        assert stream.getvalue() == ""


def test_progress_default_stream_is_current_stderr(capsys):
    p = Progress(2, "indexing")
    assert p.stream is sys.stderr  # the captured one, looked up when created


def test_index_command_with_progress_on_many_files(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(120):
        tilespec.write_records(folder / f"s{i:03d}.tfrecords",
                               [tilespec.encode_tile(b"\xff\xd8\xff", f"s{i}", i, 0)])
    stream = FakeTTY()
    monkeypatch.setattr(cli.sys, "stderr", stream)
    assert main(["index", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "120 files, 120 records: 120 indexes written, 0 valid" in out
    text = stream.getvalue()
    assert "indexing 120/120 files" in text
    assert text.endswith("\r") and text.split("\r")[-2].strip() == ""  # erased at the end


def test_demo_sampling_figures(demo_dataset):
    """The demo's printed frequencies come from the reference stream and match the weights."""
    import io

    from tilespec.demo import sampling_demo

    out = io.StringIO()
    figures = sampling_demo(demo_dataset, out)
    for strategy in ("tile", "slide", "patient", "category"):
        weights, freq = figures[strategy]
        assert abs(weights.sum() - 1) < 1e-9
        # 6000 draws: the standard error of one frequency is at most 0.0065
        assert np.max(np.abs(weights - freq)) < 0.03, strategy
    assert figures["resume_identical"] is True
    text = out.getvalue()
    assert "balance(strategy='category')" in text and "identical" in text


def test_cli_lists_adapters(capsys):
    assert main(["adapters"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("numpy")
    assert "tilespec-torch" in out and "tilespec-tf" in out


def test_cli_reports_the_jpeg_decoder(capsys, monkeypatch):
    """`tilespec adapters` ends with the JPEG decoder chosen at import (spec/images.md,
    "The JPEG decoder"), `tilespec inspect` names each file's."""
    assert main(["adapters"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.startswith(f"jpeg decoder: {tilespec.jpeg.DECODER} ")
    monkeypatch.setenv("TILESPEC_JPEG", "Pillow")
    run = subprocess.run([sys.executable, "-m", "tilespec.cli", "adapters"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    import PIL
    assert run.stdout.splitlines()[-1] == f"jpeg decoder: pillow {PIL.__version__} " \
                                          "(TILESPEC_JPEG=pillow)"


def test_inspect_names_the_decoder_of_each_file(tmp_path, capsys):
    from PIL import Image

    from tilespec.records import write_records

    def tfrecord(name, fmt, mode):
        buf = io.BytesIO()
        Image.new(mode, (8, 8), 90).save(buf, format=fmt)
        path = tmp_path / f"{name}.tfrecords"
        write_records(path, [tilespec.encode_tile(buf.getvalue(), name)])
        return path

    want = {"rgb": tilespec.jpeg.DECODER, "cmyk": "pillow", "png": "pillow"}
    paths = {"rgb": tfrecord("rgb", "JPEG", "RGB"), "cmyk": tfrecord("cmyk", "JPEG", "CMYK"),
             "png": tfrecord("png", "PNG", "RGB")}
    for name, path in paths.items():
        assert main(["inspect", str(path)]) == 0
        assert f"  decoder: {want[name]}" in capsys.readouterr().out.splitlines()


def test_demo_trains_through_project_train(tmp_path):
    """The demo's last step is Project.train on the built-in dataset (a few epochs here;
    test_training.py checks what it learns)."""
    pytest.importorskip("torch")
    from tilespec.demo import training_demo
    from tilespec.synthetic import write_synthetic_dataset

    info = write_synthetic_dataset(tmp_path / "demo", tile_px=32)
    out = io.StringIO()
    result = training_demo(info, out, epochs=2, tile_px=32)
    text = out.getvalue()
    assert "Project.train: a tiny CNN learns 'category' over 2 patient folds" in text
    assert [f["fold"] for f in result["folds"]] == [1, 2]
    for f in result["folds"]:
        assert f"fold {f['fold']}: validation accuracy" in text
        assert 0.0 <= f["metrics"]["val_accuracy"] <= 1.0 and np.isfinite(f["metrics"]["val_loss"])
    assert os.path.isfile(tmp_path / "demo" / "settings.json")
    assert os.path.isdir(result["folder"]) and result["folder"].startswith(str(tmp_path))


def test_demo_without_torch_adapter_says_how_to_get_it(demo_dataset, monkeypatch):
    from tilespec import demo, plugins

    monkeypatch.setattr(plugins, "backends", lambda: ["numpy"])
    out = io.StringIO()
    assert demo.training_demo(demo_dataset, out) is None
    assert 'pip install "tilespec[torch]"' in out.getvalue()


def test_an_empty_file_is_inspected_and_indexed_as_zero_records(folder, capsys):
    # semantics 1 (revision 2): a 0-byte tfrecord is valid, with zero records
    empty = folder / "slide-e1.tfrecords"
    empty.write_bytes(b"")
    assert main(["inspect", str(empty)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[:3] == [str(empty), "  records: 0",
                                    "  note: empty file, 0 records (valid)"]
    assert main(["index", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"{empty}: 0 records, wrote slide-e1.index.npz (was missing)" in out
    assert out.splitlines()[-1] == "7 files, 144 records: 7 indexes written, 0 valid"
    assert main(["inspect", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "index: ok (.index.npz)" in out and out.splitlines()[-1] == "7 files, 144 records"
