"""Two TensorFlow workers under MultiWorkerMirroredStrategy (TF_CONFIG on 127.0.0.1
ports), each reading its shard through distribute_datasets_from_function and
input_context, trained by a custom loop with strategy.run: both take the same number
of steps, end with the same weights, and together read every kept record once, pads
aside (spec/adapter_tf.md, "Distributed"; spec/sampling.md, "Equal steps").

Before equal steps, clip(7) with batch 4 per replica gave the workers 6 and 5
batches; TensorFlow then handed the short one an empty batch of shape (0, 0, 0, 3) and
its Conv2D failed, aborting the other's collective. ``model.fit`` under this strategy
fails before its first step in Keras 3 with any dataset, ``from_tensor_slices`` too
(keras-team/keras#20585): each worker probes that and runs ``fit`` on the tilespec
dataset only where the probe works.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("tilespec_tf")

import tilespec  # noqa: E402

WORKER = textwrap.dedent("""
    import json, os, sys
    folder, annotations, out = sys.argv[1:4]
    import tensorflow as tf
    import keras
    import tilespec

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    GB = 8                                   # global batch: 4 per replica, 2 replicas
    ds = tilespec.Dataset(tfrecords=folder, annotations=annotations).clip(7)

    def make(ctx, extra=True):
        return ds.tensorflow(input_context=ctx, batch_size=ctx.get_per_replica_batch_size(GB),
                             labels="category", infinite=False, seed=5, standardize=True,
                             augment="xy", incl_slidenames=extra, incl_loc=extra)

    with strategy.scope():
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((64, 64, 3)),
                                  keras.layers.Conv2D(4, 5, strides=8),
                                  keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
        opt = keras.optimizers.SGD(0.1)

    @tf.function
    def step(x, y):
        def fn(x, y):
            with tf.GradientTape() as tape:
                per = keras.losses.sparse_categorical_crossentropy(
                    y, model(x, training=True), from_logits=True)
                loss = tf.nn.compute_average_loss(per, global_batch_size=GB)
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            return loss
        return strategy.run(fn, args=(x, y))

    steps, records, shapes, spec = 0, [], [], None
    local = make(tf.distribute.InputContext(2, task, 2))
    spec = local.element_spec[0].shape.as_list()
    length, pads = len(local), local.tilespec.num_padded
    for images, labels, slides, xs, _ in strategy.distribute_datasets_from_function(make):
        step(images, labels)
        steps += 1
        for s, x in zip(strategy.experimental_local_results(slides),
                        strategy.experimental_local_results(xs)):
            records += [(a.decode(), int(b)) for a, b in zip(s.numpy(), x.numpy())]
        shapes.append(strategy.experimental_local_results(images)[0].shape.as_list())
    weights = [float(tf.reduce_sum(tf.cast(w, tf.float64))) for w in model.weights]

    with strategy.scope():
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    try:       # does this Keras fit under MultiWorkerMirroredStrategy at all?
        probe = tf.data.Dataset.from_tensor_slices(
            (tf.zeros((8, 64, 64, 3)), tf.zeros((8,), tf.int64))).batch(4)
        model.fit(probe, epochs=1, verbose=0)
        fit = None
    except Exception as e:
        fit = "probe failed: " + type(e).__name__
    if fit is None:
        history = model.fit(strategy.distribute_datasets_from_function(
            lambda ctx: make(ctx, extra=False)), epochs=1, verbose=0)
        fit = len(history.history["loss"])
    json.dump({"task": task, "steps": steps, "records": records, "weights": weights,
               "shapes": shapes, "spec": spec, "len": length, "num_padded": pads,
               "fit": fit}, open(out, "w"))
""")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_multi_worker_mirrored_custom_loop_takes_equal_steps(tmp_path, demo_dataset):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    ports = _free_ports(2)
    procs = []
    for i in range(2):
        cfg = {"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
               "task": {"type": "worker", "index": i}}
        env = dict(os.environ, TF_CONFIG=json.dumps(cfg), CUDA_VISIBLE_DEVICES="",
                   TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen(
            [sys.executable, str(script), demo_dataset["tfrecords"],
             demo_dataset["annotations"], str(tmp_path / f"worker{i}.json")],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = []
    try:
        for p in procs:
            try:
                out, _ = p.communicate(timeout=240)
            except subprocess.TimeoutExpired:
                pytest.fail("a MultiWorkerMirroredStrategy worker did not finish in 240 s "
                            "(a hang)")
            outputs.append(out.decode(errors="replace"))
    finally:
        for p in procs:
            p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"worker {i} failed:\n{outputs[i][-3000:]}"
    res = [json.load(open(tmp_path / f"worker{i}.json")) for i in range(2)]
    assert [r["steps"] for r in res] == [r["len"] for r in res] == [6, 6]   # equal steps
    assert res[0]["weights"] == res[1]["weights"]
    # static shapes: every batch (the last of 1) is (n, 64, 64, 3), never (0, 0, 0, 3)
    assert all(r["spec"] == [None, 64, 64, 3] for r in res)
    assert all(r["shapes"] == [[4, 64, 64, 3]] * 5 + [[1, 64, 64, 3]] for r in res)
    records = [tuple(x) for r in res for x in r["records"]]
    kept = tilespec.Dataset(tfrecords=demo_dataset["tfrecords"],
                            annotations=demo_dataset["annotations"]).clip(7).num_tiles
    assert sum(r["num_padded"] for r in res) == 0
    assert len(records) == len(set(records)) == kept == 42                # disjoint, complete
    for r in res:     # fit where this Keras can fit under the strategy at all
        assert r["fit"] == 1 or r["fit"].startswith("probe failed"), r["fit"]
