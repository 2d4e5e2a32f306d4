"""The known-answer files of spec/vectors/<chapter>/ (spec/vectors.md): loading them,
and the check that each chapter's make_vectors.py rebuilds them byte for byte; shared
by tests/test_vectors_sampling.py, test_vectors_images.py and test_vectors_stain.py."""

import json
import os
import runpy

ROOT = os.path.join(os.path.dirname(__file__), os.pardir, "spec", "vectors")


def chapter(name: str):
    """(folder, the namespace of its make_vectors.py) of spec/vectors/``name``."""
    here = os.path.join(ROOT, name)
    return here, runpy.run_path(os.path.join(here, "make_vectors.py"))


def load(here: str, name: str):
    """The ``vectors`` list of the JSON file ``name`` in ``here``."""
    with open(os.path.join(here, name), encoding="utf-8") as f:
        return json.load(f)["vectors"]


def assert_rebuilds(here: str, plain: dict) -> None:
    """The plain script's ``build()`` gives exactly the committed JSON files."""
    files = plain["build"]()
    committed = {n for n in os.listdir(here) if n.endswith(".json")}
    assert committed == set(files)
    for name, text in files.items():
        with open(os.path.join(here, name), encoding="utf-8") as f:
            assert f.read() == text, f"{name} differs from what make_vectors.py writes"
