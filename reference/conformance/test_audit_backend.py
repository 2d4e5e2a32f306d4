"""The statistical audit of a backend's loader (spec/audit.md), with
``--tilespec-audit``: every check passes (about a minute per backend)."""

import pytest

from tilespec import plugins, testing as tt

TILESPEC_CONFORMANCE = True


def _layout(backend):
    return getattr(plugins.ops_for(backend), "layout", "HWC")


def factory(backend):
    """``make_loader(dataset, **options)`` of a backend, for :func:`tilespec.testing.audit`."""
    def make(ds, labels=None, **options):
        return plugins.make_loader(backend, ds, dict(options, labels=ds.loader_labels(labels)))
    return make


@pytest.mark.tilespec_audit
def test_audit_passes(backend):
    """Every check of the statistical audit passes (spec/audit.md)."""
    report = tt.audit(factory(backend), layout=_layout(backend), tiles=1000)
    print(report)
    report.assert_ok()
