"""spec/adapters.md: hook specifications, discovery, dispatch, missing adapters."""

import types
from importlib import metadata

import numpy as np
import pytest

import tilespec
from tilespec import hookimpl, plugins


@pytest.fixture
def fresh_plugins():
    plugins.reset()
    yield plugins
    plugins.reset()


def test_reference_is_registered_as_numpy_adapter(fresh_plugins):
    info = {i["name"]: i for i in tilespec.adapters()}
    assert info["numpy"]["distribution"] == "tilespec"
    assert plugins.ops_for("numpy").flip_left_right is tilespec.ops.flip_left_right


def test_dispatch_to_numpy_equals_dataset_numpy(demo_dataset, fresh_plugins):
    ds = tilespec.Dataset(tfrecords=demo_dataset["tfrecords"],
                          annotations=demo_dataset["annotations"])
    a = plugins.make_loader("numpy", ds, dict(seed=3, infinite=False, standardize=False))
    b = ds.numpy(seed=3, infinite=False, standardize=False)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x[0], y[0])


def test_missing_adapter_names_the_distribution(demo_dataset, fresh_plugins):
    ds = tilespec.Dataset(tfrecords=demo_dataset["tfrecords"])
    with pytest.raises(tilespec.AdapterNotInstalledError,
                       match=r"Dataset.jax\(\) needs the 'jax' adapter.*Installed adapters: "):
        plugins.make_loader("jax", ds, {})
    with pytest.raises(tilespec.AdapterNotInstalledError, match="image ops for 'jax'"):
        plugins.ops_for("jax")


def test_known_adapters_name_their_distributions():
    assert plugins.KNOWN_ADAPTERS["torch"][0] == "tilespec-torch"
    assert plugins.KNOWN_ADAPTERS["tensorflow"][0] == "tilespec-tf"


def test_shipped_adapters_declare_entry_points():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="tilespec.adapters")}
    assert eps.get("torch") == "tilespec_torch" and eps.get("tensorflow") == "tilespec_tf"


def test_third_party_adapter_is_discovered_and_dispatched(demo_dataset, fresh_plugins):
    calls = []
    fake = types.ModuleType("tilespec_fake")

    @hookimpl
    def tilespec_adapter_info():
        return {"name": "fake", "framework": "Fake 1.0", "distribution": "tilespec-fake",
                "version": "1.0"}

    @hookimpl
    def tilespec_make_loader(backend, dataset, options):
        if backend != "fake":
            return None
        calls.append(options)
        return "a fake loader"

    fake.tilespec_adapter_info = tilespec_adapter_info
    fake.tilespec_make_loader = tilespec_make_loader
    plugins.plugin_manager().register(fake, name="fake")
    assert "fake" in plugins.backends()
    ds = tilespec.Dataset(tfrecords=demo_dataset["tfrecords"])
    assert plugins.make_loader("fake", ds, {"seed": 1}) == "a fake loader"
    assert calls == [{"seed": 1}]
    # other backends still go to their own adapters
    assert plugins.make_loader("numpy", ds, {"seed": 1}).seed == 1

