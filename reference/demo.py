"""What ``tilespec demo`` shows after writing the synthetic dataset: a dataset with
annotations, balancing and clipping, the reference loader's stream (weights vs
observed frequencies), augmentation and resuming from a saved state.
"""

from __future__ import annotations

import sys

import numpy as np


def sampling_demo(info: dict, out=sys.stdout, seed: int = 7) -> dict:
    """Print the sampling part of the demo; return the figures it printed."""
    from .dataset import Dataset

    ds = Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])
    print(f"\ndataset: {len(ds.tfrecords())} tfrecords, {ds.num_tiles} tiles, "
          f"{len(set(ds.patients().values()))} patients", file=out)
    labels, names = ds.labels("category")
    print(f"labels 'category': {dict(enumerate(names))}", file=out)
    figures = {}
    n = 6000
    for strategy, headers in (("tile", None), ("slide", None), ("patient", None),
                              ("category", "category")):
        b = ds.balance(headers, strategy=strategy)
        table = b.sampling_table()
        t, _ = b.numpy(seed=seed).plan(0).records(0, n)
        freq = np.bincount(t, minlength=len(table.paths)) / n
        figures[strategy] = (table.weights, freq)
        print(f"\nbalance(strategy={strategy!r}): weight vs observed frequency over {n} "
              "draws of the infinite stream", file=out)
        for p, w, f in zip(table.paths, table.weights, freq):
            name = p.rsplit("/", 1)[-1]
            print(f"  {name:<22} {w:6.3f}  {f:6.3f}", file=out)
    clipped = ds.clip(16, strategy="patient")
    print(f"\nclip(16, strategy='patient'): "
          f"{ {k.rsplit('/', 1)[-1]: v for k, v in clipped.clip_counts.items()} }", file=out)
    loader = clipped.balance("category", strategy="category").numpy(
        labels=labels, batch_size=16, infinite=False, seed=seed, augment="xyrjb",
        standardize=True, incl_slidenames=True)
    batches = list(loader)
    imgs = batches[0][0]
    print(f"finite epoch, category-balanced, augment='xyrjb', standardize=True ('unit'): "
          f"{len(batches)} batches "
          f"of {imgs.shape[1:]} {imgs.dtype} in [{imgs.min():.2f}, {imgs.max():.2f}]; "
          f"labels of batch 0: {batches[0][1].tolist()}", file=out)
    resumed = clipped.balance("category", strategy="category").numpy(
        labels=labels, batch_size=16, infinite=False, seed=0, augment="xyrjb",
        standardize=True, incl_slidenames=True)
    resumed.load_state_dict({"seed": seed, "epoch": 0, "position": 32})
    same = all(np.array_equal(a[0], b[0]) for a, b in zip(resumed, batches[2:]))
    print(f"resumed at position 32 from state (seed={seed}, epoch=0): the remaining "
          f"{len(batches) - 2} batches are {'identical' if same else 'DIFFERENT'}", file=out)
    figures["resume_identical"] = same
    return figures


def training_demo(info: dict, out=sys.stdout, steps: int = 200, seed: int = 0):
    """Train the PyTorch adapter's tiny example model on the demo dataset
    (spec/adapter_torch.md, "Training example"); say how to get it when the adapter
    is not installed. Returns the adapter's figures, or None."""
    from .plugins import backends

    if "torch" not in backends():
        print("\ntraining example skipped: the PyTorch adapter is not installed "
              "(pip install torch==2.13.0, then pip install -e adapters_torch/)", file=out)
        return None
    import importlib

    train = importlib.import_module("tilespec_torch.train")  # the adapter, not the reference
    print(f"\ntraining a tiny CNN for {steps} steps through Dataset.torch() "
          "(category-balanced, augment='xyr'):", file=out)
    return train.train_demo(info["tfrecords"], info["annotations"], out=out, steps=steps,
                            seed=seed)
