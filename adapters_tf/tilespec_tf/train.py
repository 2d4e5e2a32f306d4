"""The Keras trainer of ``Project.train(backend='tensorflow')`` (spec/training.md,
"Adapters"; spec/adapter_tf.md, "Hooks": ``tilespec_train_fold``).

:func:`train_fold` is this adapter's ``tilespec_train_fold`` hook body, the same loop
as the PyTorch trainer's: the fold's infinite training stream from
``Dataset.tensorflow()`` (options from the reference's :class:`FoldRun`),
``run.epochs`` epochs of ``run.steps_per_epoch`` batches (``train_on_batch``), Adam at
``params.learning_rate``, sparse categorical cross-entropy on logits or MSE, one
finite validation pass per epoch whose labels and scores go back to the reference
(``run.end_epoch``). The final weights are written as a NumPy ``.npz`` of
``model.get_weights()`` (no HDF5 dependency).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def tiny_cnn(n_outcomes: int, tile_px: int, width: int = 16):
    """The Keras twin of the PyTorch adapter's TinyCNN: three strided 3x3 convolutions
    (ReLU), global average pooling, a dense head of logits (spec/training.md)."""
    keras = tf.keras
    inputs = keras.Input((tile_px, tile_px, 3))
    x = inputs
    for w in (width, 2 * width, 2 * width):
        x = keras.layers.Conv2D(w, 3, strides=2, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(n_outcomes)(x))


MODELS = {"tiny_cnn": lambda params, n: tiny_cnn(n, params.tile_px)}


def build_model(run):
    """The fold's Keras model: a shipped one by name or the user's callable."""
    if callable(run.model):
        model = run.model(run.params, run.n_outcomes)
        if not isinstance(model, tf.keras.Model):
            raise TypeError(f"model callable {run.model!r} returned "
                            f"{type(model).__name__}, not a keras Model")
        return model
    return MODELS[run.model](run.params, run.n_outcomes)


def validate(model, dataset, regression: bool):
    """(labels, scores) of one pass: softmax probabilities or predictions."""
    ys, scores = [], []
    for images, target in dataset:
        out = model(images, training=False)
        out = out if regression else tf.nn.softmax(out, axis=1)
        scores.append(np.asarray(out, dtype=np.float64))
        ys.append(np.asarray(target))
    if not ys:
        return np.zeros(0), np.zeros((0, 1))
    return np.concatenate(ys), np.concatenate(scores)


def train_fold(run) -> dict:
    """Train one fold as :class:`tilespec.training.FoldRun` describes it; return
    ``run.result()`` (spec/training.md, "Adapters")."""
    regression = run.model_type == "regression"
    tf.keras.utils.set_random_seed(run.seed % 2 ** 32)
    model = build_model(run)
    loss = (tf.keras.losses.MeanSquaredError() if regression else
            tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.compile(optimizer=tf.keras.optimizers.Adam(run.params.learning_rate), loss=loss)
    train = run.train.tensorflow(**run.train_options())
    val = run.val.tensorflow(**run.val_options()) if run.val is not None else None
    steps = run.steps_per_epoch()
    stream = iter(train)
    for epoch in range(1, run.epochs + 1):
        total = 0.0
        for i in range(steps):
            images, target = next(stream)
            if regression:
                target = tf.reshape(tf.cast(target, tf.float32), (-1, run.n_outcomes))
            total += float(model.train_on_batch(images, target))
            run.step(epoch, i + 1, steps, total / (i + 1))
        y_true = y_score = None
        if val is not None:
            y_true, y_score = validate(model, val, regression)
        run.end_epoch(epoch, total / steps, steps, y_true, y_score)
    path = run.weights_path("weights.npz")
    if path is not None:
        np.savez(path, *model.get_weights())
    return run.result()
