"""The conformance suite as a pytest plugin (spec/adapters.md, "The conformance suite").

A third-party adapter runs the op-level and stream-level conformance tests against
its registered backend with::

    pytest --pyargs tilespec.conformance --tilespec-backend NAME

The plugin (:mod:`tilespec.conformance.plugin`) is registered with pytest through the
``pytest11`` entry point of the tilespec distribution, so the option exists in any
pytest run where tilespec is installed (``-p tilespec.conformance.plugin`` names it
explicitly). ``--tilespec-backend`` may be given several times; without it every
registered backend is tested. ``--tilespec-audit`` adds the statistical audit
(spec/audit.md) of each backend's loader. tilespec's own tests run the same tests
for numpy, torch and tensorflow (tests/test_conformance.py imports the tests of
tilespec.conformance.test_conformance).
"""
