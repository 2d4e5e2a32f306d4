"""Faults in the torch loader: corrupt records, failing transforms, early exit and killed
workers (spec/adapter_torch.md, "Errors and faults")."""

import gc
import os
import signal
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
psutil = pytest.importorskip("psutil")

import tilespec  # noqa: E402
from tilespec import ops as ref_ops  # noqa: E402
from tilespec import testing as tt  # noqa: E402


def _write(path, slide, values, corrupt=()):
    """One tfrecord of 8x8 constant tiles of grey ``values``; records in ``corrupt``
    get an undecodable image."""
    recs = []
    for i, v in enumerate(values):
        jpeg = ref_ops.jpeg_encode(np.full((8, 8, 3), v, np.uint8), 95)
        if i in corrupt:
            jpeg = b"\xff\xd8\xff not a jpeg"
        recs.append(tilespec.encode_tile(jpeg, slide, i, 0))
    tilespec.write_records(path, recs)
    return path


@pytest.fixture()
def corrupt_ds(tmp_path):
    folder = tmp_path / "tfrecords"
    folder.mkdir()
    _write(folder / "a.tfrecords", "a", [10 * i for i in range(8)], corrupt={2, 5})
    _write(folder / "b.tfrecords", "b", [100 + 10 * i for i in range(6)])
    # c: a payload byte flipped after writing (a CRC mismatch, caught when read)
    c = _write(folder / "c.tfrecords", "c", [200 + 5 * i for i in range(4)])
    tilespec.load_index(c)                     # index the good file first
    raw = bytearray(c.read_bytes())
    offsets, _ = tilespec.load_index(c)
    raw[int(offsets[1][0]) + 20] ^= 0xFF
    c.write_bytes(bytes(raw))
    return tilespec.Dataset(tfrecords=str(folder))


def _data_fds():
    """Descriptors of this process open on dataset files (tfrecords and their indexes).

    Counting every descriptor of the process flaked under load (a lazily opened pipe
    of torch/multiprocessing counted as a leak); the files are what a loader opens."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            continue
        if ".tfrecords" in target or ".index" in target:
            n += 1
    return n


def _resources():
    proc = psutil.Process()
    return _data_fds(), proc.num_threads(), {c.pid for c in proc.children(recursive=True)}


def _settled(before, timeout=10.0):
    """Wait until children, fds and threads are back to ``before``; return the final state."""
    deadline = time.monotonic() + timeout
    while True:
        gc.collect()
        now = _resources()
        if (now[0] <= before[0] and now[1] <= before[1] and now[2] <= before[2]) \
                or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


def _assert_no_leaks(before):
    fds, threads, children = _settled(before)
    assert children <= before[2], f"leaked child processes {children - before[2]}"
    assert fds <= before[0], f"open file descriptors {before[0]} -> {fds}"
    assert threads <= before[1], f"threads {before[1]} -> {threads}"


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("batch_size", [None, 3])
def test_skip_agrees_with_reference_and_counts(corrupt_ds, num_workers, batch_size):
    opts = dict(infinite=False, seed=8, on_error="skip", incl_slidenames=True, incl_loc=True,
                standardize=False, augment="xy", batch_size=batch_size)
    R = corrupt_ds.numpy(**opts)
    L = corrupt_ds.torch(num_workers=num_workers, **opts)
    with pytest.warns(UserWarning, match=r"skipped .*a.tfrecords record [25]"):
        with pytest.warns(UserWarning, match=r"skipped .*c.tfrecords record 1"):
            tt.assert_conforms(L, R, layout="CHW", options=opts)
    key = sorted((s["position"], os.path.basename(s["path"]), s["record"]) for s in L.skipped)
    assert key == sorted((s["position"], os.path.basename(s["path"]), s["record"])
                         for s in R.skipped)
    assert [k[1:] for k in sorted(key, key=lambda k: k[1:])] == \
        [("a.tfrecords", 2), ("a.tfrecords", 5), ("c.tfrecords", 1)]
    # every good record exactly once
    L2 = corrupt_ds.torch(num_workers=num_workers, **opts)
    with pytest.warns(UserWarning):
        got = []
        for item in L2:
            slides, xs = item[2], item[3]
            if batch_size is None:
                slides, xs = [slides], [xs]
            got += [(s, int(x)) for s, x in zip(slides, xs)]
    assert sorted(got) == sorted([("a", i) for i in range(8) if i not in (2, 5)]
                                 + [("b", i) for i in range(6)] + [("c", 0), ("c", 2), ("c", 3)])
    assert len(L2.skipped) == 3


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_record_raises_naming_it(corrupt_ds, num_workers):
    L = corrupt_ds.torch(num_workers=num_workers, infinite=False, seed=8)
    with pytest.raises(Exception, match=r"(a.tfrecords, record [25]|c.tfrecords.*record 1)"):
        list(L)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_transform_error_names_the_item_and_the_cause(tmp_path, num_workers):
    folder = tmp_path / "t"
    folder.mkdir()
    _write(folder / "a.tfrecords", "a", [10 * i for i in range(8)])
    ds = tilespec.Dataset(tfrecords=str(folder))
    opts = dict(infinite=False, seed=3, shuffle=True, batch_size=2)
    # the stream position of record 5 (grey 50) in the reference's plan
    R = ds.numpy(**opts)
    t, j = R.plan(0).records(0, len(R.plan(0)))
    k = int(np.flatnonzero(j == 5)[0])

    def transform(img):
        if int(img[0, 0, 0]) == 50:
            raise ValueError("the transform failed on grey 50")
        return img

    before = _resources()
    L = ds.torch(num_workers=num_workers, transform=transform, **opts)
    with pytest.raises(ValueError, match="the transform failed on grey 50") as err:
        list(L)
    text = str(err.value) + "".join(getattr(err.value, "__notes__", []))
    assert f"a.tfrecords, record 5, stream position {k}" in text
    del L, err
    _assert_no_leaks(before)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_early_exit_from_an_infinite_loader_leaks_nothing(tmp_path, num_workers):
    folder = tmp_path / "e"
    folder.mkdir()
    for s in range(3):
        _write(folder / f"s{s}.tfrecords", f"s{s}", [s * 30 + i for i in range(5)])
    ds = tilespec.Dataset(tfrecords=str(folder))
    for f in ds.tfrecords():
        tilespec.load_index(f)
    before = _resources()
    L = ds.torch(num_workers=num_workers, batch_size=4, augment="xyr", seed=1)
    for i, batch in enumerate(L):
        if i == 5:
            break
    assert L.state_dict()["position"] == 24
    del batch
    _assert_no_leaks(before)
    # the same loader can be iterated again and resumes where it stopped
    it = iter(L)
    next(it)
    assert L.state_dict()["position"] == 28
    it.close()
    del it, L
    _assert_no_leaks(before)


def test_a_killed_worker_gives_a_clear_error_and_no_leaks(tmp_path):
    folder = tmp_path / "k"
    folder.mkdir()
    _write(folder / "a.tfrecords", "a", list(range(12)))
    ds = tilespec.Dataset(tfrecords=str(folder))
    tilespec.load_index(ds.tfrecords()[0])
    before = _resources()

    def slow(img):
        time.sleep(0.05)
        return img

    L = ds.torch(num_workers=2, batch_size=2, seed=0, transform=slow)
    it = iter(L)
    next(it)
    workers = [c for c in psutil.Process().children() if c.pid not in before[2]]
    assert len(workers) >= 2
    os.kill(workers[0].pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match=r"DataLoader worker \(pid"):
        for _ in range(200):
            next(it)
    it.close()
    del it, L
    _assert_no_leaks(before)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_infinite_stream_of_only_corrupt_records_stops(tmp_path, num_workers):
    from tilespec.items import AllRecordsSkippedError

    folder = tmp_path / "bad"
    folder.mkdir()
    _write(folder / "a.tfrecords", "a", [0, 1, 2], corrupt={0, 1, 2})
    ds = tilespec.Dataset(tfrecords=str(folder))
    L = ds.torch(num_workers=num_workers, batch_size=2, seed=0, on_error="skip")
    with pytest.warns(UserWarning):
        with pytest.raises(Exception, match="skipped all 3 records"):
            next(iter(L))
    R = ds.numpy(batch_size=2, seed=0, on_error="skip")
    with pytest.warns(UserWarning), pytest.raises(AllRecordsSkippedError):
        next(iter(R))


def test_num_skipped_counts_every_skip(corrupt_ds):
    opts = dict(infinite=False, seed=8, on_error="skip", batch_size=3)
    L = corrupt_ds.torch(num_workers=2, **opts)
    with pytest.warns(UserWarning):
        list(L)
    assert L.num_skipped == 3 == len(L.skipped)


def _small_ds(tmp_path, name):
    folder = tmp_path / name
    folder.mkdir()
    for s in range(2):
        _write(folder / f"s{s}.tfrecords", f"s{s}", [s * 40 + i for i in range(6)])
    ds = tilespec.Dataset(tfrecords=str(folder))
    for f in ds.tfrecords():
        tilespec.load_index(f)
    return ds


def test_keyboard_interrupt_in_a_transform_propagates_and_leaks_nothing(tmp_path):
    """Ctrl-C while the loader works (num_workers=0): KeyboardInterrupt itself reaches
    the caller (never wrapped or swallowed) and files are released."""
    ds = _small_ds(tmp_path, "ki")
    calls = []

    def transform(img):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return img

    before = _resources()
    L = ds.torch(num_workers=0, batch_size=2, infinite=True, seed=0, transform=transform)
    with pytest.raises(KeyboardInterrupt):
        for _ in L:
            pass
    del L
    _assert_no_leaks(before)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_keyboard_interrupt_in_the_training_loop_leaks_nothing(tmp_path, num_workers):
    """Ctrl-C in the user's loop over an infinite loader with workers: the workers, their
    files and threads are gone once the loader is dropped."""
    ds = _small_ds(tmp_path, f"kl{num_workers}")
    before = _resources()
    L = ds.torch(num_workers=num_workers, batch_size=2, infinite=True, seed=0, augment="x")
    with pytest.raises(KeyboardInterrupt):
        for i, batch in enumerate(L):
            if i == 7:
                raise KeyboardInterrupt
    del L, batch
    _assert_no_leaks(before)
