"""spec/adapter_tf.md, "Keras": the loader inside ``model.fit``, finite and infinite."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("tilespec_tf")
keras = pytest.importorskip("keras")

import tilespec  # noqa: E402
from tilespec import testing as tt  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    layout = tt.TileDatasetLayout((("k0", "p0", "a", 9), ("k1", "p1", "b", 7),
                                   ("k2", "p2", "a", 5)), tile_px=16, seed=4)
    info = tt.write_tile_dataset(layout, tmp_path_factory.mktemp("keras"))
    return tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])


def tiny_model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def test_fit_on_a_finite_dataset_runs_whole_epochs(dataset):
    d = dataset.tensorflow(labels="category", infinite=False, batch_size=4, augment="xyr",
                           seed=1)
    model = tiny_model()
    hist = model.fit(d, epochs=2, verbose=0, shuffle=False)
    losses = hist.history["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))
    # one iteration per epoch: the next iteration of the dataset is epoch 2
    assert d.tilespec.epoch == 2


def test_fit_on_an_infinite_dataset_with_steps_per_epoch(dataset):
    d = dataset.tensorflow(labels="category", infinite=True, batch_size=5, augment="xyrjb",
                           standardize="unit", seed=2)
    model = tiny_model()
    hist = model.fit(d, epochs=2, steps_per_epoch=3, verbose=0, shuffle=False)
    assert len(hist.history["loss"]) == 2 and np.isfinite(hist.history["loss"]).all()
    # the model sees the reference's stream: evaluate on its first batches
    ref = dataset.numpy(labels="category", infinite=True, batch_size=5, augment="xyrjb",
                        standardize="unit", seed=2)
    it = iter(ref)
    x, y = next(it)
    got_x, got_y = next(iter(d))
    np.testing.assert_array_equal(got_y.numpy(), y)
    np.testing.assert_allclose(got_x.numpy(), x, atol=1e-6)
    assert np.isfinite(model.evaluate(d, steps=2, verbose=0))
