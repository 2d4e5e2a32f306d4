"""A tiny end-to-end training example on the built-in synthetic dataset
(spec/adapter_torch.md, "Training example").

A small CNN learns tumor vs normal from the synthetic tiles (``tilespec demo DIR``
writes them). The records are split with the sampling partition itself: the
training stream is rank 0 of 2 (the first half of every tfrecord) and the
validation pass is rank 1 (the second half), so no tile is in both. Training
samples an infinite, category-balanced, augmented ('xyr') stream; validation is
one finite pass without augmentation.

    python -m tilespec_torch.train DIR [--steps N] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch
from torch import nn

import tilespec


class TinyCNN(nn.Module):
    """Three strided convolutions, global average pooling, a linear classifier."""

    def __init__(self, classes: int = 2, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x):
        return self.head(self.features(x))


def _locate(tfrecords, annotations):
    """Accept the demo folder itself (with tfrecords/ and annotations.csv inside)."""
    if annotations is None:
        annotations = os.path.join(os.fspath(tfrecords), "annotations.csv")
        tfrecords = os.path.join(os.fspath(tfrecords), "tfrecords")
    return tfrecords, annotations


def train_demo(tfrecords, annotations=None, out=sys.stdout, steps: int = 200, seed: int = 0,
               batch_size: int = 32, log_every: int = 20, num_workers: int = 0) -> dict:
    """Train :class:`TinyCNN` for ``steps`` batches and report validation accuracy.

    spec/adapter_torch.md, "Training example". ``tfrecords`` is the folder of
    tfrecords (or the demo folder, with ``annotations=None``). Prints the mean
    loss every ``log_every`` steps and the final accuracy to ``out``; returns
    ``{"steps", "loss", "accuracy", "val_tiles", "categories", "seconds", "seed"}``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # tiny convolutions: more threads only spin on a busy machine
    try:
        return _train(tfrecords, annotations, out, steps, seed, batch_size, log_every,
                      num_workers)
    finally:
        torch.set_num_threads(threads)


def _train(tfrecords, annotations, out, steps, seed, batch_size, log_every, num_workers):
    t0 = time.perf_counter()
    tfrecords, annotations = _locate(tfrecords, annotations)
    ds = tilespec.Dataset(tfrecords=tfrecords, annotations=annotations)
    labels, categories = ds.labels("category")
    balanced = ds.balance(headers="category", strategy="category")
    train = balanced.torch(labels=labels, batch_size=batch_size, infinite=True, seed=seed,
                           augment="xyr", standardize=True, rank=0, num_replicas=2,
                           num_workers=num_workers)
    val = ds.torch(labels=labels, batch_size=64, infinite=False, seed=seed, standardize=True,
                   rank=1, num_replicas=2)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = TinyCNN(len(categories))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    print(f"training a tiny CNN on {ds.num_tiles // 2} tiles ({', '.join(map(str, categories))}; "
          f"category-balanced, augment 'xyr', batch {batch_size}, seed {train.seed})", file=out)
    model.train()
    running, count, loss_value = 0.0, 0, float("nan")
    for step, (images, target) in enumerate(train, start=1):
        opt.zero_grad()
        loss = loss_fn(model(images), target)
        loss.backward()
        opt.step()
        running += loss.item()
        count += 1
        if step % log_every == 0 or step == steps:
            loss_value = running / count
            print(f"  step {step:4d}  loss {loss_value:.4f}", file=out)
            running, count = 0.0, 0
        if step >= steps:
            break
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for images, target in val:
            correct += int((model(images).argmax(1) == target).sum())
            total += len(target)
    accuracy = correct / total if total else float("nan")
    seconds = time.perf_counter() - t0
    print(f"validation accuracy {accuracy:.3f} on {total} held-out tiles "
          f"({seconds:.1f} s)", file=out)
    return {"steps": steps, "loss": loss_value, "accuracy": accuracy, "val_tiles": total,
            "categories": list(categories), "seconds": seconds, "seed": train.seed}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tilespec_torch.train",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="the demo folder written by `tilespec demo DIR` (it is "
                        "written here first when it does not exist)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-workers", type=int, default=0)
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.dir, "annotations.csv")):
        from tilespec.synthetic import write_synthetic_dataset
        write_synthetic_dataset(args.dir)
    train_demo(args.dir, steps=args.steps, seed=args.seed, num_workers=args.num_workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
