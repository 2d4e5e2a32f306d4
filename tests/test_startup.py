"""A quiet and quick start (README.md, "Command line"): what `import tilespec` loads, the
command line's framework logging, and progress displays (tilespec.progress)."""

import io
import json
import os
import subprocess
import sys

import pytest

import tilespec
from tilespec import cli, plugins
from tilespec.progress import Progress

HEAVY = ("scipy", "hypothesis", "matplotlib", "torch", "tensorflow", "PIL.JpegImagePlugin",
         "PIL.PngImagePlugin")


def _run(code, env=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=env)


def test_import_loads_no_heavy_module_and_leaves_the_environment_alone():
    code = ("import os, sys, json; before = dict(os.environ); import tilespec; "
            "print(json.dumps([sorted(m for m in sys.modules if m.split('.')[0] in "
            "('scipy', 'hypothesis', 'matplotlib', 'torch', 'tensorflow') or "
            "m.startswith('PIL.') and m.endswith('Plugin')), dict(os.environ) == before]))")
    run = _run(code)
    assert run.returncode == 0, run.stderr
    heavy, same_env = json.loads(run.stdout)
    assert heavy == [] and same_env


def test_quiet_frameworks_keeps_what_the_user_set():
    env = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    added = cli.quiet_frameworks(env)
    assert added == {"TF_ENABLE_ONEDNN_OPTS": "0"}
    assert env == {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_ENABLE_ONEDNN_OPTS": "0"}
    assert cli.quiet_frameworks(env) == {}


def test_tensorflow_under_the_command_line_settings_prints_nothing():
    pytest.importorskip("tensorflow")
    env = {k: v for k, v in os.environ.items() if k not in cli.QUIET_ENVIRONMENT}
    code = ("from tilespec.cli import quiet_frameworks; quiet_frameworks(); "
            "import tensorflow as tf; print(int(tf.reduce_sum(tf.range(4))))")
    run = _run(code, env)
    assert run.returncode == 0 and run.stdout.strip() == "6"
    assert run.stderr == ""  # without the settings: 4-8 lines (absl, oneDNN, CPU features)


def test_missing_adapter_says_which_extra_to_install(demo_dataset, monkeypatch):
    monkeypatch.setattr(plugins, "_pm", None)
    pm = plugins.plugin_manager()
    for name in ("torch", "tensorflow"):
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
    try:
        ds = tilespec.Dataset(tfrecords=demo_dataset["tfrecords"])
        with pytest.raises(tilespec.AdapterNotInstalledError) as e:
            ds.torch(batch_size=2)
        assert str(e.value) == (
            "Dataset.torch() needs the 'torch' adapter (distribution 'tilespec-torch'), "
            'which is not installed: pip install "tilespec[torch]". Installed adapters: '
            "numpy.")
        with pytest.raises(tilespec.AdapterNotInstalledError,
                           match=r'pip install "tilespec\[tensorflow\]"'):
            ds.tensorflow(batch_size=2)
        out = io.StringIO()
        cli.cmd_adapters(None, out)
        assert 'tilespec-torch   not installed (pip install "tilespec[torch]")' in out.getvalue()
    finally:
        plugins.reset()


# ----------------------------------------------------------------- progress
class FakeTTY(io.StringIO):
    def isatty(self):
        return True


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_plain_lines_off_a_terminal_at_most_every_interval():
    clock, stream = Clock(), io.StringIO()
    p = Progress(100, "verifying", stream=stream, plain_interval=10, clock=clock)
    for i in range(1, 101):
        clock.t = i * 0.5          # 50 s in all: a line at 10, 20, 30, 40 and 50 s
        p.step(i, f"/d/s{i}.tfrecords")
    p.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"verifying {n}/100 files" for n in (20, 40, 60, 80, 100)]
    assert lines[0] == "verifying 20/100 files (2.0/s) s20.tfrecords"
    assert "\r" not in stream.getvalue()


def test_a_short_run_off_a_terminal_prints_nothing():
    stream = io.StringIO()
    p = Progress(1000, "indexing", stream=stream)
    for i in range(1, 1001):
        p.step(i, "x.tfrecords")
    p.close()
    assert stream.getvalue() == ""


@pytest.mark.parametrize("batch_size", [None, 16])
def test_loader_progress_bar_over_a_finite_epoch(demo_dataset, monkeypatch, batch_size):
    ds = tilespec.Dataset(tfrecords=demo_dataset["tfrecords"])
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    loader = ds.numpy(batch_size=batch_size, infinite=False, seed=1, progress=True)
    plain = ds.numpy(batch_size=batch_size, infinite=False, seed=1)
    n = len(loader)
    got = list(loader)
    assert len(got) == n == len(list(plain))
    frames = [f for f in tty.getvalue().split("\r") if f.strip()]
    unit = "items" if batch_size is None else "batches"
    assert frames[0].startswith(f"epoch 0 1/{n} {unit}")
    assert frames[-1].startswith(f"epoch 0 {n}/{n} {unit}")
    assert tty.getvalue().endswith("\r")  # erased at the end of the epoch
    # the second epoch's bar, resumed mid-epoch: counts what is left
    tty.seek(0)
    tty.truncate()
    if batch_size:
        loader.load_state_dict({"seed": 1, "epoch": 1, "position": 3 * batch_size})
        assert len(list(loader)) == n - 3
        frames = [f for f in tty.getvalue().split("\r") if f.strip()]
        assert frames[-1].startswith(f"epoch 1 {n - 3}/{n - 3} batches")


def test_loader_progress_needs_a_finite_epoch(demo_dataset):
    ds = tilespec.Dataset(tfrecords=demo_dataset["tfrecords"])
    with pytest.raises(ValueError, match="progress=True shows a bar over a finite epoch"):
        ds.numpy(progress=True)
    with pytest.raises(TypeError, match="progress"):
        ds.numpy(progress="yes", infinite=False)


def test_torch_loader_progress_bar(demo_dataset, monkeypatch):
    pytest.importorskip("tilespec_torch")
    ds = tilespec.Dataset(tfrecords=demo_dataset["tfrecords"])
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    dl = ds.torch(batch_size=32, infinite=False, seed=1, progress=True, num_workers=0)
    assert len(list(dl)) == len(dl) == 5
    frames = [f for f in tty.getvalue().split("\r") if f.strip()]
    assert frames[-1].startswith("epoch 0 5/5 batches")


def test_tensorflow_loader_refuses_progress(demo_dataset):
    pytest.importorskip("tilespec_tf")
    ds = tilespec.Dataset(tfrecords=demo_dataset["tfrecords"])
    with pytest.raises(ValueError, match="progress=True is for the numpy and torch loaders"):
        ds.tensorflow(batch_size=4, infinite=False, progress=True)
