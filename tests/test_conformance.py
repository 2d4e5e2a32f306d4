"""The conformance suite (spec/adapters.md, "The conformance suite"), run here for
every registered backend (numpy, torch, tensorflow) through the same pytest plugin
and the same tests a third-party adapter runs with ``pytest --pyargs
tilespec.conformance --tilespec-backend NAME``: the tests live in
``tilespec.conformance.test_conformance`` (reference/conformance/)."""

import os
import subprocess
import sys

from tilespec.conformance.test_conformance import *  # noqa: F401,F403  (tests and fixture)

#: the plugin parametrizes ``backend`` in this module too (every registered backend)
TILESPEC_CONFORMANCE = True


def test_plugin_runs_from_outside_the_repository(tmp_path):
    """``pytest --pyargs tilespec.conformance --tilespec-backend numpy`` from another
    folder collects the shipped tests; an unknown backend is a usage error naming the
    registered ones."""
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "tilespec.conformance", "-q",
           "-p", "no:cacheprovider", "--tilespec-backend", "numpy", "-k",
           "float or default_is_uint8 or audit"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "3 passed, 1 skipped" in p.stdout   # the audit needs --tilespec-audit
    p = subprocess.run(cmd[:-4] + ["--tilespec-backend", "nope"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 4 and "not registered" in p.stderr and "numpy" in p.stderr
