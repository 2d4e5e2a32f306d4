"""Stream-level conformance: a backend's loader item by item against the reference
(spec/sampling.md and spec/adapters.md, "Conformance"), and, with
``--tilespec-audit``, the statistical audit of spec/audit.md."""

import pytest

import tilespec
from tilespec import plugins, testing as tt

TILESPEC_CONFORMANCE = True

LOADER_CASES = [
    dict(infinite=False, standardize=False, incl_slidenames=True, incl_loc=True),
    dict(infinite=False, batch_size=4, augment="xyr", standardize="unit", shuffle=True),
    dict(infinite=True, batch_size=3, augment="xyrjb", standardize="per_image",
         incl_slidenames=True),
    dict(infinite=False, resize_target=12, crop_left=2, crop_width=14, standardize=False),
    dict(infinite=False, rank=1, num_replicas=2, standardize=False, incl_loc=True),
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    layout = tt.TileDatasetLayout((("s0", "p0", "a", 7), ("s1", "p1", "b", 4),
                                   ("s2", "p1", "a", 5)), tile_px=16)
    info = tt.write_tile_dataset(layout, tmp_path_factory.mktemp("conf"))
    return tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])


def _layout(backend):
    return getattr(plugins.ops_for(backend), "layout", "HWC")


@pytest.mark.parametrize("case", range(len(LOADER_CASES)))
def test_loader_conforms(backend, case, dataset):
    """The backend's loader yields the reference's stream (records, fields, images
    within image_tolerance)."""
    opts = dict(LOADER_CASES[case], seed=1234, labels="category")
    loader = plugins.make_loader(backend, dataset, dict(
        opts, labels=dataset._loader_labels("category")))
    reference = dataset.numpy(**opts)
    n = 6 if opts["infinite"] else None
    count = tt.assert_conforms(loader, reference, n=n, layout=_layout(backend), options=opts)
    assert count == (6 if opts["infinite"] else len(reference))


def factory(backend):
    """``make_loader(dataset, **options)`` of a backend, for :func:`tilespec.testing.audit`."""
    def make(ds, labels=None, **options):
        return plugins.make_loader(backend, ds, dict(options, labels=ds._loader_labels(labels)))
    return make


@pytest.mark.tilespec_audit
def test_audit_passes(backend):
    """Every check of the statistical audit passes (spec/audit.md)."""
    report = tt.audit(factory(backend), layout=_layout(backend), tiles=1000)
    print(report)
    report.assert_ok()
