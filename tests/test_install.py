"""Installing tilespec as packages (README.md, "Two commands"; spec/adapters.md, "Discovery
and errors"): the extras ``tilespec[torch]`` and ``tilespec[tensorflow]`` pull the adapter
distributions and the pinned framework builds.

``test_wheels_install_and_run_a_torch_loader`` builds the three wheels, installs
``tilespec[torch]`` into a fresh virtual environment with ``--find-links`` to them and runs
a torch loader from outside the repository. It installs torch (about 1 GB) and takes
minutes, so it runs only when asked: ``TILESPEC_INSTALL_TEST=1 .venv/bin/python -m pytest
tests/test_install.py``.
"""

import configparser
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(path):
    c = configparser.ConfigParser()
    c.read(os.path.join(ROOT, path))
    return c


def _requires(text):
    return [line.strip() for line in text.strip().splitlines() if line.strip()
            and not line.strip().startswith("#")]


def test_extras_pull_the_adapters_and_the_readme_pins():
    extras = _cfg("setup.cfg")["options.extras_require"]
    torch_cfg, tf_cfg = _cfg("adapters_torch/setup.cfg"), _cfg("adapters_tf/setup.cfg")
    assert _requires(extras["torch"]) == [
        f"tilespec-torch=={torch_cfg['metadata']['version']}", "torch==2.13.0"]
    assert _requires(extras["tensorflow"]) == [
        f"tilespec-tf=={tf_cfg['metadata']['version']}", "tensorflow-cpu==2.21.0"]
    assert torch_cfg["metadata"]["name"] == "tilespec-torch"
    assert tf_cfg["metadata"]["name"] == "tilespec-tf"
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    # the pins are the README's (and scripts/setup.sh's)
    assert "torch==2.13.0" in readme and "tensorflow-cpu==2.21.0" in readme
    with open(os.path.join(ROOT, "scripts", "setup.sh"), encoding="utf-8") as f:
        setup = f.read()
    assert "pip install torch==2.13.0" in setup and "pip install tensorflow-cpu==2.21.0" in setup


@pytest.mark.skipif(not os.environ.get("TILESPEC_INSTALL_TEST"),
                    reason="slow (installs torch into a fresh venv): set TILESPEC_INSTALL_TEST=1")
def test_wheels_install_and_run_a_torch_loader(tmp_path):
    dist, venv, work = tmp_path / "dist", tmp_path / "venv", tmp_path / "elsewhere"
    work.mkdir()

    def run(*cmd, cwd=work, timeout=1800):
        r = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                           timeout=timeout, env=dict(os.environ, PIP_DISABLE_PIP_VERSION_CHECK="1"))
        assert r.returncode == 0, f"{cmd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
        return r

    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dist, ROOT,
        os.path.join(ROOT, "adapters_torch"), os.path.join(ROOT, "adapters_tf"), cwd=ROOT)
    wheels = sorted(os.listdir(dist))
    assert [w.split("-")[0] for w in wheels] == ["tilespec", "tilespec_tf", "tilespec_torch"]
    run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", "--find-links", dist, "tilespec[torch]==0.1.0")
    script = textwrap.dedent("""
        import json, os, sys
        import numpy as np
        import tilespec, tilespec_torch, torch
        from tilespec.synthetic import write_synthetic_dataset
        info = write_synthetic_dataset("data", tile_px=32)
        ds = tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])
        labels, _ = ds.labels("category")
        opts = dict(labels=labels, batch_size=8, infinite=False, seed=3, augment="xyr",
                    standardize=True)
        got = list(ds.torch(num_workers=2, **opts))
        want = list(ds.numpy(**opts))
        same = len(got) == len(want) and all(
            np.allclose(g[0].permute(0, 2, 3, 1).numpy(), w[0], atol=1e-6)
            and np.array_equal(g[1].numpy(), w[1]) for g, w in zip(got, want))
        print(json.dumps({"tilespec": tilespec.__file__, "adapter": tilespec_torch.__file__,
                          "torch": torch.__version__, "batches": len(got), "same": same,
                          "backends": tilespec.plugins.backends()}))
    """)
    out = json.loads(run(py, "-c", script).stdout.strip().splitlines()[-1])
    site = str(venv)
    assert out["tilespec"].startswith(site) and out["adapter"].startswith(site)  # not the repo
    assert out["torch"].startswith("2.13.0") and out["backends"] == ["numpy", "torch"]
    assert out["batches"] == 18 and out["same"]
    adapters = run(venv / "bin" / "tilespec", "adapters").stdout
    assert "tilespec-torch" in adapters and 'not installed (pip install "tilespec[tensorflow]")' \
        in adapters
