"""Shared fixtures and hypothesis profiles.

Profiles: ``ci`` (default under CI: few examples, no deadline), ``dev`` (the
default locally) and ``thorough`` (run by hand: HYPOTHESIS_PROFILE=thorough).
"""

import os
import shutil

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE",
                                     "ci" if os.environ.get("CI") else "dev"))

SPEC_VECTORS = os.path.join(os.path.dirname(__file__), os.pardir, "spec", "vectors")


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """The built-in synthetic dataset, written once per test session."""
    from tilespec.synthetic import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("demo"))


@pytest.fixture
def folder(tmp_path, demo_dataset):
    """A private copy of the demo tfrecords folder (no index files), for tests that
    change or index it (test_cli.py, test_verify.py)."""
    dst = tmp_path / "tfrecords"
    dst.mkdir()
    for p in demo_dataset["paths"]:
        shutil.copyfile(p, dst / os.path.basename(p))
    return dst


# A dataset with two empty (0-byte) tfrecords (semantics 1, revision 2) and its twin
# without them: e0 shares patient p0 and category a with s0; e1 has patient p2 alone.
EMPTY_LAYOUT = (("s0", "p0", "a", 7), ("e0", "p0", "a", 0), ("s1", "p1", "b", 4),
                ("e1", "p2", "b", 0), ("s2", "p1", "a", 5))


@pytest.fixture(scope="session")
def empty_pair(tmp_path_factory):
    """``(with_empty, without_empty)`` tilespec Datasets (16 px JPEG tiles)."""
    import warnings

    import tilespec
    from tilespec import testing as tt

    info = tt.write_tile_dataset(tt.TileDatasetLayout(EMPTY_LAYOUT, tile_px=16, seed=5),
                                 tmp_path_factory.mktemp("empty"))
    full = [p for p, s in zip(info["paths"], EMPTY_LAYOUT) if s[3]]
    with warnings.catch_warnings():  # the empty files; the rows without a tfrecord
        warnings.simplefilter("ignore")
        return (tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"]),
                tilespec.Dataset(tfrecords=full, annotations=info["annotations"]))


#: balance calls for the empty-tfrecord stream tests: every strategy, and none
BALANCINGS = {"none": lambda d: d, "slide": lambda d: d.balance(strategy="slide"),
              "tile": lambda d: d.balance(strategy="tile"),
              "patient": lambda d: d.balance(strategy="patient"),
              "category": lambda d: d.balance("category", strategy="category")}
