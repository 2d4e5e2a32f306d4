"""The conformance suite shipped as ``tilespec.conformance`` (spec/adapters.md, "The
conformance suite"), run here for every registered backend (numpy, torch,
tensorflow) through the same pytest plugin a third-party adapter uses."""

import os
import subprocess
import sys

from tilespec.conformance.test_ops import *  # noqa: F401,F403  (the plugin parametrizes backend)
from tilespec.conformance.test_streams import *  # noqa: F401,F403
from tilespec.conformance.test_streams import dataset  # noqa: F401  (the fixture)

TILESPEC_CONFORMANCE = True


def test_plugin_runs_from_outside_the_repository(tmp_path):
    """``pytest --pyargs tilespec.conformance --tilespec-backend numpy`` from another
    folder; an unknown backend is a usage error naming the registered ones."""
    cmd = [sys.executable, "-m", "pytest", "--pyargs", "tilespec.conformance", "-q",
           "-p", "no:cacheprovider", "--tilespec-backend", "numpy", "-k", "not op_conforms"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "passed" in p.stdout and "1 skipped" in p.stdout   # the audit needs --tilespec-audit
    p = subprocess.run(cmd[:-4] + ["--tilespec-backend", "nope"], cwd=tmp_path,
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 4 and "not registered" in p.stderr and "numpy" in p.stderr
