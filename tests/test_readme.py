"""README.md: every ``python`` block runs as written after ``tilespec demo``."""

import os
import re

import pytest

from tilespec.synthetic import write_synthetic_dataset

README = os.path.join(os.path.dirname(__file__), os.pardir, "README.md")


def python_blocks():
    with open(README, encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_has_runnable_examples():
    assert len(python_blocks()) >= 2


@pytest.mark.parametrize("k", range(len(python_blocks())))
def test_readme_block_runs(k, tmp_path, monkeypatch):
    write_synthetic_dataset(tmp_path / "demo-data")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(python_blocks()[k], f"README.md block {k}", "exec"), scope)
    if "loader" in scope:  # the loader example ran a whole finite epoch
        assert scope["state"] == {"seed": 42, "epoch": 1, "position": 0}
