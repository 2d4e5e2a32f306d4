"""The recorded stream (tests/data/stream_record.json, scripts/record_stream.py): every
loader of a fixed seed yields, bit for bit, what it yielded when the recording was taken
(at c5342d3, before issue 15 restructured the item path; spec/sampling.md, "Loaders",
"Indexed dataset"; spec/adapters.md).

The hashes depend on NumPy, Pillow, SciPy, torch, TensorFlow and the CPU, so the
comparison is skipped, naming what differs, in any other environment than the one that
recorded. To keep the suite fast the test compares a subset that still covers every
backend and every option dimension: the dataset's files, all NumPy loader and indexed
streams, all torch streams with 0 workers, the torch indexed dataset (directly and
through a 2-worker DataLoader), two torch streams with 2 workers and two TensorFlow
loader streams and one TensorFlow indexed stream (SUBSET). The whole recording is
compared by ``.venv/bin/python scripts/record_stream.py --compare
tests/data/stream_record.json``.
"""

import copy
import importlib.util
import json
import os

import numpy as np
import pytest

ROOT = os.path.join(os.path.dirname(__file__), os.pardir)
RECORD = os.path.join(ROOT, "tests", "data", "stream_record.json")

_spec = importlib.util.spec_from_file_location(
    "record_stream", os.path.join(ROOT, "scripts", "record_stream.py"))
rs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rs)

#: streams compared by the test (name prefixes); the script compares them all
SUBSET = (
    "dataset",
    "numpy/", "numpy_indexed/",
    "torch_w0/",
    "torch_w2/xyrjb_batch4_finite_shuffle_slides_loc",
    "torch_w2/macenko_passthrough_xyrjbn_rank1of2_batch3_finite",
    "torch_indexed/", "torch_indexed_dataloader_w2_batch4/",
    "tensorflow/xyrjb_batch4_finite_shuffle_slides_loc",
    "tensorflow/reinhard_crop_resize_std_items_take",
    "tensorflow_indexed/xyrjb_reinhard_crop_resize_shuffle_rank1of2_epoch1",
)


@pytest.fixture(scope="module")
def recorded():
    with open(RECORD) as fh:
        return json.load(fh)


def test_the_subset_names_recorded_streams_of_every_backend(recorded):
    names = list(recorded["streams"])
    for prefix in SUBSET:
        assert any(n.startswith(prefix) for n in names), prefix
    for backend in ("numpy/", "numpy_indexed/", "torch_w0/", "torch_w2/", "torch_indexed/",
                    "tensorflow/", "tensorflow_indexed/"):
        assert sum(n.startswith(backend) for n in names) >= 3, backend


def test_the_streams_are_the_recorded_ones(recorded):
    mismatch = rs.version_mismatch(recorded)
    if mismatch:
        pytest.skip("recorded in another environment: " + "; ".join(mismatch))
    diffs = rs.compare(recorded, only=SUBSET, log=None)
    assert not diffs, "\n".join(f"{name}: {what}" for name, what in diffs)


def test_a_changed_element_is_named(recorded):
    """The comparison fails on one changed bit of one field, naming the item and field,
    and on a changed count or error."""
    want = recorded["streams"]["numpy/xyrjb_batch4_finite_shuffle_slides_loc"]
    got = copy.deepcopy(want)
    got["items"][3][2] = "0" * 64
    got["sha256"] = "changed"
    assert rs.first_difference(want, want) is None
    assert rs.first_difference(want, got).startswith("item 3 field 'slide'")
    shorter = copy.deepcopy(want)
    for key in ("items", "shapes", "dtypes"):
        shorter[key] = shorter[key][:-1]
    shorter.update(n=want["n"] - 1, sha256="changed", error="ValueError: x")
    assert "elements recorded" in rs.first_difference(want, shorter)
    gone = {"unavailable": "ValueError: no"}
    assert rs.first_difference(want, gone).startswith("construction")


def test_the_hash_sees_dtype_shape_and_type():
    """Same bytes in another dtype, shape or type hash differently."""
    a = np.zeros(4, np.uint8)
    hashes = {rs.hash_field(x)[0] for x in (a, a.view(np.int8), a.reshape(2, 2), 0,
                                            np.int64(0), 0.0, None, "0", [0], (0,))}
    assert len(hashes) == 10
    assert rs.hash_field(np.arange(3))[0] == rs.hash_field(np.arange(3))[0]
