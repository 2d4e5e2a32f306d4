"""The statistical audit (spec/audit.md): the reference and both adapters pass every
check; each deliberately wrong loader of tests/audit_faults.py is flagged by its
check (and, in the slow tier, by no other one); the CLI audits a plain torch Dataset.

The slow tier (full audits of every wrong loader and of both adapters: 88 s on the
idle 2-core machine, about 5 minutes when it is shared) runs with ``TILESPEC_SLOW=1``.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tilespec
from tilespec import testing as tt
from tilespec.audit import CHECKS, binom_p, binom_power, chi2_p, chi2_power
from tilespec.traceable import write_traceable_dataset

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from audit_faults import FAULTS, WORKER_SHARDS, reference  # noqa: E402

slow = pytest.mark.skipif(not os.environ.get("TILESPEC_SLOW"),
                          reason="slow tier: set TILESPEC_SLOW=1")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_traceable_dataset(tmp_path_factory.mktemp("audit"))["root"]


@pytest.fixture(scope="module")
def reference_report(root):
    return tt.audit(reference, dataset=root)


def test_reference_passes_every_check(reference_report):
    r = reference_report
    assert [c.name for c in r.checks] == list(CHECKS)
    assert r.ok, str(r)
    assert r.assert_ok() is r
    # measured figures next to the expected ones, a stated test and power
    for c in r.checks:
        assert c.measured and c.expected and c.test and c.power and c.n > 0, c
    assert "tilespec's draws" in r["rot90"].measured     # the direction was checked
    d = r.to_dict()
    assert d["ok"] and json.loads(json.dumps(d))["checks"][0]["name"] == "finite"
    text = str(r)
    assert "PASSED: 12 of 12" in text and "jpeg" in text
    assert r.seconds < 120


def test_report_failures_and_assert_ok(root):
    r = tt.audit(FAULTS["blur rate 17%"][0], dataset=root, checks=["blur", "finite"])
    assert not r.ok and [c.name for c in r.failures] == ["blur"]
    with pytest.raises(tt.ConformanceError, match=r"1 audit check\(s\) failed:\n- blur: fail"):
        r.assert_ok()
    assert "FAILED: 1 of 2" in str(r)


def test_testing_exposes_the_audit():
    from tilespec import audit as mod
    assert tt.audit is mod.audit and tt.AuditReport is mod.AuditReport


def test_a_loader_that_raises_is_an_error_not_a_crash(root):
    def broken(ds, **o):
        raise RuntimeError("no such option")
    r = tt.audit(broken, dataset=root, checks=["finite", "jpeg"])
    assert [c.status for c in r.checks] == ["error", "error"]
    assert "RuntimeError: no such option" in r["finite"].measured


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown audit check"):
        tt.audit(reference, checks=["nope"])
    with pytest.raises(ValueError, match="layout"):
        tt.audit(reference, layout="NHWC")


@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_is_flagged_by_its_check(name, root):
    """At the default sample size and seed, the bug's own check fails."""
    factory, want, kw = FAULTS[name]
    r = tt.audit(factory, dataset=root, checks=sorted(want), **kw)
    assert {c.name for c in r.failures} == want, str(r)


@slow
@pytest.mark.parametrize("name", sorted(FAULTS))
def test_fault_is_flagged_by_no_other_check(name, root):
    factory, want, kw = FAULTS[name]
    r = tt.audit(factory, dataset=root, **kw)
    assert {c.name for c in r.failures} == want, str(r)


def _backend(name):
    def make(ds, labels=None, **o):
        return getattr(ds, name)(labels=labels, **o)
    return make


ADAPTERS = {"torch": ("CHW", list(WORKER_SHARDS)), "tensorflow": ("HWC", None)}


@pytest.mark.parametrize("backend", sorted(ADAPTERS))
def test_adapter_passes_the_exact_checks(backend, root):
    layout, shards = ADAPTERS[backend]
    r = tt.audit(_backend(backend), dataset=root, layout=layout, shards=shards,
                 checks=["finite", "shards", "labels", "fields", "standardize"])
    assert r.ok, str(r)


@slow
@pytest.mark.parametrize("backend", sorted(ADAPTERS))
def test_adapter_passes_every_check(backend, root):
    layout, shards = ADAPTERS[backend]
    r = tt.audit(_backend(backend), dataset=root, layout=layout, shards=shards)
    assert r.ok, str(r)


def test_batched_loaders_are_unbatched(root):
    r = tt.audit(reference, dataset=root, options={"batch_size": 7},
                 checks=["finite", "fields", "flip_x"], tiles=200)
    assert r.ok, str(r)


def test_cli_audits_a_plain_torch_dataset(tmp_path):
    out = tmp_path / "report.json"
    env = dict(os.environ, PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "tilespec", "audit", "plain_torch_loader:make",
                        "--tiles", "300", "--json", str(out),
                        "--checks", "finite,shards,sampling,labels,flip_x,rot90,standardize"],
                       capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert p.returncode == 1, p.stdout + p.stderr
    rep = json.loads(out.read_text())
    status = {c["name"]: c["status"] for c in rep["checks"]}
    # one file after another: every record once, labels by the stored name, flips
    # with torch.rand at 1/2 -- but no ranks, no weights, no infinite stream, no rot90,
    # and x / 127.5 - 1 whatever standardize asks for
    assert status == {"finite": "pass", "shards": "fail", "sampling": "fail",
                      "labels": "pass", "flip_x": "pass", "rot90": "fail",
                      "standardize": "fail"}, p.stdout
    assert "per_image" in next(c for c in rep["checks"]
                               if c["name"] == "standardize")["measured"]
    assert "FAILED: 3 of 7" in p.stdout


def test_cli_usage_errors(tmp_path):
    p = subprocess.run([sys.executable, "-m", "tilespec", "audit", "nonexistent_mod:make"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 1 and "cannot load nonexistent_mod:make" in p.stderr
    p = subprocess.run([sys.executable, "-m", "tilespec", "audit", "x:y", "--options", "[1"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 1 and "JSON" in p.stderr


def test_statistics():
    assert binom_p(50, 100, 0.5) == 1.0 and binom_p(0, 100, 0.5) < 1e-20
    assert binom_power(1000, 0.1, 0.1) <= 0.001          # size at most alpha
    assert binom_power(1000, 0.1, 0.17) > 0.99
    assert 0.9 < binom_power(600, 0.5, 0.4) < 0.99
    # power against a simulation
    rng = np.random.default_rng(1)
    k = rng.binomial(300, 0.42, 2000)
    sim = np.mean([binom_p(int(x), 300, 0.5) < 0.001 for x in k])
    assert abs(sim - binom_power(300, 0.5, 0.42)) < 0.04
    assert chi2_power(1000, [0.25] * 4, [0.25] * 4) == pytest.approx(0.001, rel=0.01)
    assert chi2_p([25, 25, 25, 25], [1, 1, 1, 1]) == 1.0
