"""What ``tilespec demo`` shows after writing the synthetic dataset: a dataset with
annotations, balancing and clipping, the reference loader's stream (weights vs
observed frequencies), augmentation and resuming from a saved state (README.md, "Two
commands"; its pictures are spec/pictures.md's, its dataset spec/records.md's "The demo
dataset").
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


def pictures_demo(info: dict, out=sys.stdout, seed: int = 0) -> dict:
    """Write the demo's pictures (spec/pictures.md) under ``<demo dir>/pictures`` and print
    where they are: augment.png (the 'xyrjb' draws of four tiles), sampling.png
    (category-balanced weights vs observed frequencies), batch.png (a category-balanced
    batch), shards.png (2 ranks x 2 workers over clip(16)). Returns ``{name: path}``;
    the sampling picture needs matplotlib (the ``plot`` extra) and is skipped, saying
    so, without it (the others are drawn with Pillow)."""
    import os

    from . import show
    from .dataset import Dataset

    root = os.path.join(os.path.dirname(os.fspath(info["annotations"])), "pictures")
    ds = Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])
    balanced = ds.balance("category", strategy="category")
    made = {
        "augment": lambda: show.augment_grid(show.read_tiles(ds, 4), "xyrjb", seed=seed),
        "sampling": lambda: show.sampling_bars(balanced, draws=6000, seed=seed),
        "batch": lambda: show.batch_sheet(balanced, labels="category", batch_size=16,
                                          seed=seed, augment="xyr"),
        "shards": lambda: show.shard_map(ds.clip(16), num_replicas=2, num_workers=2,
                                         batch_size=4, seed=seed),
    }
    print("\npictures (spec/pictures.md):", file=out)
    paths = {}
    for name, make in made.items():
        try:
            paths[name] = show.render(make(), os.path.join(root, f"{name}.png"))
        except show.PlotUnavailableError:
            print(f"  {name}.png skipped: it needs matplotlib ({show.PLOT_HINT})", file=out)
            continue
        print(f"  {paths[name]}", file=out)
    return paths


def training_run(root, out=sys.stdout, *, epochs: int = 25, seed: int = 0, steps=None,
                 tile_px: int = 64, backend: str = "torch", val_k_fold: int = 2) -> dict:
    """``Project.train`` on the built-in dataset in ``root`` (spec/training.md, "The demo").

    The demo folder becomes a tilespec project (settings.json naming
    annotations.csv and tfrecords/, written once); a tiny CNN learns 'category'
    (tumor vs normal) over ``val_k_fold`` patient folds, category-balanced,
    augmented 'xyr', for ``epochs`` epochs of the training fold's tiles.
    Returns what ``Project.train`` returns.
    """
    import os

    from .project import ModelParams, create_project, load_project

    root = os.fspath(root)
    if os.path.exists(os.path.join(root, "settings.json")):
        project = load_project(root)
    else:
        project = create_project(root, "annotations.csv", "tfrecords", name="demo")
    hp = ModelParams(tile_px=tile_px, tile_um=tile_px, epochs=epochs, batch_size=32,
                     model="tiny_cnn", learning_rate=3e-3, augment="xyr")
    # one torch thread: tiny convolutions only spin with more (91.6 s instead of 6.4 s
    # with 2 threads on the 2-core VM under load)
    return project.train("category", hp, val_k_fold=val_k_fold, seed=seed, steps=steps,
                         backend=backend, out=out, threads=1 if backend == "torch" else None)


def training_demo(info: dict, out=sys.stdout, epochs: int = 25, seed: int = 0, steps=None,
                  tile_px: int = 64):
    """The demo's last step: :func:`training_run` through the PyTorch adapter, printing
    the per-fold metrics; say how to get the adapter when it is not installed.
    Returns ``Project.train``'s result, or None."""
    import os

    from .plugins import backends, install_hint

    if "torch" not in backends():
        print("\ntraining example skipped: the PyTorch adapter is not installed "
              f"({install_hint('torch')})", file=out)
        return None
    root = os.path.dirname(os.fspath(info["annotations"]))
    print(f"\nProject.train: a tiny CNN learns 'category' over 2 patient folds, {epochs} "
          "epochs (category-balanced, augment 'xyr'):", file=out)
    import time

    t0 = time.perf_counter()
    result = training_run(root, out, epochs=epochs, seed=seed, steps=steps, tile_px=tile_px)
    for f in result["folds"]:
        m = f["metrics"]
        auc = ", ".join(f"{k} {v:.3f}" for k, v in m["val_auc"].items())
        print(f"  fold {f['fold']}: validation accuracy {m['val_accuracy']:.3f} on "
              f"{m['val_tiles']} tiles of {', '.join(f['val_slides'])}; AUC {auc}", file=out)
    print(f"  ({time.perf_counter() - t0:.1f} s; results in {result['folder']})", file=out)
    return result
