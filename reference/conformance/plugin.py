"""pytest hooks of the conformance suite (spec/adapters.md, "The conformance suite").

Options: ``--tilespec-backend NAME`` (repeatable; default every registered backend)
and ``--tilespec-audit`` (also run the statistical audit, spec/audit.md). The
``backend`` fixture is parametrized over the chosen backends.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser):
    group = parser.getgroup("tilespec", "tilespec conformance suite")
    group.addoption("--tilespec-backend", action="append", default=None, metavar="NAME",
                    help="backend to test (repeatable; default: every registered one)")
    group.addoption("--tilespec-audit", action="store_true", default=False,
                    help="also run the statistical audit of each backend's loader")


def selected_backends(config) -> list:
    """The backends named by ``--tilespec-backend`` (checked to be registered), or all."""
    from tilespec import plugins

    have = plugins.backends()
    chosen = config.getoption("tilespec_backend", None) if config is not None else None
    if not chosen:
        return have
    names = [n for c in chosen for n in c.split(",") if n]
    missing = [n for n in names if n not in have]
    if missing:
        raise pytest.UsageError(f"--tilespec-backend {', '.join(missing)}: not registered; "
                                f"registered backends: {', '.join(have)}")
    return names


def pytest_generate_tests(metafunc):
    # only the conformance modules (flagged TILESPEC_CONFORMANCE = True): the plugin is
    # loaded in every pytest run where tilespec is installed
    if "backend" in metafunc.fixturenames and \
            getattr(metafunc.module, "TILESPEC_CONFORMANCE", False):
        metafunc.parametrize("backend", selected_backends(metafunc.config))


def pytest_configure(config):
    if config.getoption("tilespec_backend", None):
        selected_backends(config)   # an unknown name is a usage error, before collection
    config.addinivalue_line("markers", "tilespec_audit: the statistical audit "
                            "(runs with --tilespec-audit)")


def pytest_collection_modifyitems(config, items):
    if config.getoption("tilespec_audit", False):
        return
    skip = pytest.mark.skip(reason="the audit runs with --tilespec-audit")
    for item in items:
        if "tilespec_audit" in item.keywords:
            item.add_marker(skip)
