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
