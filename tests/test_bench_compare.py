"""bench/compare.py (issue 18): its rows, run order, summary figures and dataset.

A benchmark, not a timed test: nothing here asserts a speed. The whole ``--quick``
run takes ~40 s of CPU (two minutes on the busy two-core development machine, most of
it starting TensorFlow in six fresh processes), so it runs by hand only:
``TILESPEC_BENCH_SMOKE=1 .venv/bin/python -m pytest tests/test_bench_compare.py``.
"""

import importlib.util
import json
import os
import subprocess
import sys
import types
from dataclasses import asdict, replace

import pytest

BENCH = os.path.join(os.path.dirname(__file__), os.pardir, "bench")


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("bench_compare",
                                                  os.path.join(BENCH, "compare.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_compare"] = mod      # its dataclass looks its module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        del sys.modules["bench_compare"]


def _args(compare, tmp_path, *extra):
    return compare.parse_args(["--quick", "--tfrecords", "2", "--tiles", "5", "--px", "32",
                               "--unique", "2", "--cache", str(tmp_path), *extra])


# ------------------------------------------------------------------ rows and order
def test_every_reference_and_limit_is_a_row(compare):
    rows = compare.build_rows(["pillow", "simplejpeg"], ["uint8", "float32"], [0, 1, 2])
    keys = [r.key for r in rows]
    assert len(keys) == len(set(keys))
    for r in rows:
        assert r.ref is None or r.ref in keys, r
        assert all(k in keys for k in r.limit or []), r
    by = {r.key: r for r in rows}
    # the 2-worker and TensorFlow rows are held to two bare loops at once, the others to one
    assert by["torch/w2/f32"].limit == ["bare2/pillow/torch/f32", "bare2/simplejpeg/torch/f32"]
    assert by["torch/w1/u8"].limit == ["bare/pillow/torch/u8", "bare/simplejpeg/torch/u8"]
    assert by["tf/u8"].ref == "tfdata-usual/u8"
    assert by["tfdata-bench/f32"].ref == "tfdata-usual/f32"
    assert by["torch/w2/u8"].ref == "torch/w0/u8"
    assert by["numpy/decode"].limit == ["bare/pillow/decode", "bare/simplejpeg/decode"]
    assert {r.kind for r in rows} == {"bare", "numpy", "torch", "tf", "tfdata-usual",
                                      "tfdata-bench"}
    # without simplejpeg: the same rows less its bare loops
    alone = compare.build_rows(["pillow"], ["uint8", "float32"], [0, 1, 2])
    assert [r.key for r in alone] == [k for k in keys if "simplejpeg" not in k]


def test_limits_only_from_exact_decoders(compare):
    rows = {r.key: r for r in compare.build_rows(["pillow", "simplejpeg"], ["float32"], [0, 2],
                                                 exact=["pillow"])}
    assert rows["torch/w0/f32"].limit == ["bare/pillow/torch/f32"]
    assert rows["torch/w2/f32"].limit == ["bare2/pillow/torch/f32"]
    assert "bare/simplejpeg/torch/f32" in rows          # still measured, shown beside


def test_exact_decoders_compares_pixels_with_pillow(compare):
    import numpy as np

    from tilespec.synthetic import encode_jpeg, tissue_tile

    common = sys.modules["common"]
    jpegs = [encode_jpeg(tissue_tile(np.random.default_rng(i), 16, i % 2 == 0)) for i in range(3)]
    pillow = common.bare_decoders()["pillow"]

    def off_by_one_on_third(b):
        x = np.array(pillow(b))
        if b == jpegs[2]:
            x[0, 0, 0] ^= 1
        return x

    def broken(b):
        raise OSError("no decoder")

    exact, inexact = common.exact_decoders(jpegs, {"pillow": pillow, "same": lambda b:
                                                   np.array(pillow(b)), "near":
                                                   off_by_one_on_third, "broken": broken})
    assert list(exact) == ["pillow", "same"]
    assert inexact == {"near": "tile 2 differs from Pillow's", "broken": "fails: no decoder"}


@pytest.mark.parametrize("n,repeats", [(26, 3), (7, 2), (5, 1), (3, 5)])
def test_rotation_runs_every_row_once_per_repeat_at_varying_places(compare, n, repeats):
    rows = list(range(n))
    orders = [compare.rotated(rows, r, repeats) for r in range(repeats)]
    assert all(sorted(o) == rows for o in orders)
    assert orders[0] == rows
    if 1 < repeats <= n:
        for row in rows:   # each row's place differs between repeats
            places = [o.index(row) for o in orders]
            assert len(set(places)) == repeats


# ------------------------------------------------------------------ summary
def _run(rate, tiles=100, **kw):
    return dict({"rate": rate, "tiles": tiles, "first": 0.5, "first_tiles": 64,
                 "steady_rate": rate * 1.1, "peak_rss": 100 << 20, "worker_peak_rss": None,
                 "cpu_s": tiles / rate, "children_cpu_s": 0.0}, **kw)


def test_summary_ratios_are_medians_of_per_repeat_ratios(compare):
    rows = compare.build_rows(["pillow", "simplejpeg"], ["float32"], [0])
    rows = [r for r in rows if r.key in ("bare/pillow/torch/f32", "bare/simplejpeg/torch/f32",
                                         "torch/w0/f32")]
    # the machine's speed drifts: repeat 2 runs everything at half speed
    runs = {"bare/pillow/torch/f32": [_run(1000), _run(500), _run(1000)],
            "bare/simplejpeg/torch/f32": [_run(2000), _run(1000), _run(1600)],
            "torch/w0/f32": [_run(900), _run(450, worker_peak_rss=5 << 20),
                             {"error": "exit 1: boom"}]}
    s = compare.summarize(rows, runs)
    t = s["torch/w0/f32"]
    assert t["rate"] == 675 and (t["rate_min"], t["rate_max"]) == (450, 900)
    assert t["vs_ref"] == pytest.approx(0.9)            # 900/1000 and 450/500
    assert t["limit"] == "bare/simplejpeg/torch/f32"    # the faster decoder's loop
    assert t["vs_limit"] == pytest.approx(0.45)         # 900/2000 and 450/1000
    assert t["errors"] == ["exit 1: boom"] and len(t["runs"]) == 3
    assert t["worker_peak_rss"] == 5 << 20 and t["peak_rss"] == 100 << 20
    assert t["cpu_per_tile_ms"] == pytest.approx((1e3 / 900 + 1e3 / 450) / 2)
    assert s["bare/simplejpeg/torch/f32"]["vs_ref"] == pytest.approx(2.0)
    assert "vs_ref" not in s["bare/pillow/torch/f32"]
    text = compare.table(rows, s)
    assert "0.90x #1" in text and "45% #2" in text


def test_summary_of_a_row_that_always_failed(compare):
    rows = compare.build_rows(["pillow"], ["uint8"], [0])
    s = compare.summarize(rows, {"torch/w0/u8": [{"error": "exit 1: no torch"}]})
    assert "rate" not in s["torch/w0/u8"] and s["torch/w0/u8"]["errors"]
    assert "vs_ref" not in s["torch/w0/u8"]
    assert "failed: exit 1: no torch" in compare.table(rows, s)


def test_check_refuses_short_passes_and_wrong_dtypes(compare):
    row = compare.Row("numpy/f32", "numpy loader float32", "numpy", "float32")
    good = _run(10, tiles=20, image_dtype="float32")
    assert compare.check(row, good, 20) is good
    assert "19 tiles, expected 20" in compare.check(row, _run(10, tiles=19), 20)["error"]
    bad = compare.check(row, _run(10, tiles=20, image_dtype="uint8"), 20)
    assert "dtype uint8, expected float32" in bad["error"]


# ------------------------------------------------------------------ dataset and rows
def test_dataset_is_written_by_tensorflow_with_slideflow_names_and_cached(compare, tmp_path):
    import tilespec

    args = _args(compare, tmp_path)
    log = types.SimpleNamespace(write=lambda s: None, flush=lambda: None)
    folder, paths = compare.prepare(args, log)
    assert len(paths) == 2 and folder.startswith(str(tmp_path))
    payloads = [p for path in paths for p in tilespec.read_records(path)]
    assert len(payloads) == 10
    assert set(tilespec.parse_example(payloads[0])) == {"image_raw", "slide", "loc_x", "loc_y"}
    tiles = [tilespec.parse_tile(p) for p in payloads]
    assert [t.slide for t in tiles[:5]] == ["bench-slide-000"] * 5
    assert tilespec.decode_image(tiles[0].image_raw).shape == (32, 32, 3)
    stamp = [os.stat(p).st_mtime_ns for p in paths]
    again = compare.prepare(args, log)                  # cached: nothing rewritten
    assert again == (folder, paths) and [os.stat(p).st_mtime_ns for p in paths] == stamp
    other = compare.prepare(_args(compare, tmp_path, "--tiles", "3"), log)[0]
    assert other != folder                              # other parameters, other folder


def test_rows_run_in_process_and_two_bare_loops_at_once(compare, tmp_path):
    args = _args(compare, tmp_path)
    log = types.SimpleNamespace(write=lambda s: None, flush=lambda: None)
    folder, paths = compare.prepare(args, log)
    base = {"folder": folder, "paths": paths, "seed": 0}
    rows = {r.key: r for r in compare.build_rows(["pillow"], ["uint8", "float32"], [0])}
    for key in ("bare/pillow/numpy/f32", "numpy/u8", "numpy/f32", "numpy/decode"):
        res = compare.child(dict(base, row=asdict(rows[key])))
        assert compare.check(rows[key], res, 10) is res, key
        assert res["first_tiles"] == 10 and res["peak_rss"] > 0
    # numpy ops: the two processes need no torch (quicker to start)
    two = replace(rows["bare2/pillow/torch/u8"], ops="numpy")
    both = compare.run_row(two, base, timeout=120)
    assert "error" not in both, both
    assert both["tiles"] == 10 and [p["tiles"] for p in both["parts"]] == [5, 5]
    assert both["rate"] > 0


@pytest.mark.skipif(not os.environ.get("TILESPEC_BENCH_SMOKE"),
                    reason="~40 s of CPU, minutes on a busy machine: run by hand with "
                           "TILESPEC_BENCH_SMOKE=1")
def test_quick_run(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, os.path.join(BENCH, "compare.py"), "--quick",
                           "--cache", str(tmp_path), "--json", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(out.read_text())
    assert figures["failed"] == [] and figures["tiles"] == 2 * 96
    for key, s in figures["rows"].items():
        assert s["rate"] > 0 and s["tiles"] == 192, key
    assert "tf.data the usual way float32" in proc.stdout
