"""The PyTorch trainer of ``Project.train(backend='torch')`` (spec/training.md, "Adapters";
spec/adapter_torch.md, "Training").

:func:`train_fold` is this adapter's ``tilespec_train_fold`` hook body: it gets a
:class:`tilespec.training.FoldRun` from the reference (datasets, labels, seed, loader
options, epoch length) and runs the loop: the fold's infinite training stream from
``Dataset.torch()``, ``run.epochs`` epochs of ``run.steps_per_epoch`` batches each,
Adam at ``params.learning_rate`` on the CUDA device when there is one (else the CPU),
cross-entropy (classification) or MSE
(regression), then one finite validation pass per epoch whose labels and scores go
back to the reference (``run.end_epoch``), which computes the metrics. When
``torch.distributed`` is initialized the model is wrapped in
``DistributedDataParallel`` and the training loader takes rank and num_replicas from
the process group (each rank reads its own partition); every rank validates the whole
validation set and rank 0 writes the results.

The demo's training step (``tilespec demo``) goes through ``Project.train`` too:

    python -m tilespec_torch.train DIR [--epochs N] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from torch import nn


class TinyCNN(nn.Module):
    """Three strided convolutions, global average pooling, a linear head: the model
    ``ModelParams(model='tiny_cnn')`` names (spec/training.md, "Models and losses")."""

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


#: The models of ``tilespec.training.KNOWN_MODELS``, built for ``n_outcomes`` outputs.
MODELS = {"tiny_cnn": lambda params, n: TinyCNN(n)}


def build_model(run) -> nn.Module:
    """The fold's model: a shipped one by name or the user's callable (spec/training.md)."""
    if callable(run.model):
        model = run.model(run.params, run.n_outcomes)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model callable {run.model!r} returned "
                            f"{type(model).__name__}, not a torch.nn.Module")
        return model
    if run.model not in MODELS:  # pragma: no cover - the reference checks names first
        raise ValueError(f"unknown model {run.model!r}; valid: {', '.join(MODELS)}")
    return MODELS[run.model](run.params, run.n_outcomes)


def _distributed():
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized()


def _target(target, regression: bool):
    if regression:
        return target.to(torch.float32).reshape(len(target), -1)
    return target.to(torch.int64)


def device() -> torch.device:
    """The current CUDA device when CUDA is available (the process group's device under
    torchrun), else the CPU. The CUDA path is not exercised by the CPU test suite."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def validate(model, loader, regression: bool, dev=None):
    """(labels, scores) of one pass: class probabilities (softmax) or predictions."""
    dev = torch.device("cpu") if dev is None else dev
    model.eval()
    ys, scores = [], []
    with torch.no_grad():
        for images, target in loader:
            out = model(images.to(dev))
            out = out if regression else torch.softmax(out, dim=1)
            scores.append(out.double().cpu().numpy())
            ys.append(target.numpy())
    model.train()
    if not ys:
        return np.zeros(0), np.zeros((0, 1))
    return np.concatenate(ys), np.concatenate(scores)


def train_fold(run) -> dict:
    """Train one fold as :class:`tilespec.training.FoldRun` describes it; return
    ``run.result()`` (spec/training.md, "Adapters"). ``run.threads`` sets torch's
    intra-op threads for the fold (restored afterwards)."""
    before = torch.get_num_threads()
    if run.threads is not None:
        torch.set_num_threads(run.threads)
    try:
        return _train_fold(run)
    finally:
        torch.set_num_threads(before)


def _train_fold(run) -> dict:
    regression = run.model_type == "regression"
    with torch.random.fork_rng():
        torch.manual_seed(run.seed % 2 ** 64)
        dev = device()
        model = build_model(run).to(dev)
        train_loader = run.train.torch(**run.train_options())
        val_loader = run.val.torch(**run.val_options()) if run.val is not None else None
        net = model
        if _distributed():
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[dev] if dev.type == "cuda" else None)
        opt = torch.optim.Adam(net.parameters(), lr=run.params.learning_rate)
        loss_fn = nn.MSELoss() if regression else nn.CrossEntropyLoss()
        steps = run.steps_per_epoch(train_loader)
        if _distributed() and run.steps is None:
            # DDP needs the same number of backward passes on every rank: the shortest
            # rank's epoch (ranks' shares differ by at most a batch)
            on = dev if torch.distributed.get_backend() == "nccl" else torch.device("cpu")
            n = torch.tensor([steps], dtype=torch.int64, device=on)
            torch.distributed.all_reduce(n, op=torch.distributed.ReduceOp.MIN)
            steps = int(n.item())
        stream = iter(train_loader)
        net.train()
        try:
            for epoch in range(1, run.epochs + 1):
                total = 0.0
                for i in range(steps):
                    images, target = next(stream)
                    opt.zero_grad()
                    loss = loss_fn(net(images.to(dev)), _target(target, regression).to(dev))
                    loss.backward()
                    opt.step()
                    total += loss.item()
                    run.step(epoch, i + 1, steps, total / (i + 1))
                y_true = y_score = None
                if val_loader is not None:
                    y_true, y_score = validate(model, val_loader, regression, dev)
                run.end_epoch(epoch, total / steps, steps, y_true, y_score)
        finally:
            del stream
        path = run.weights_path("weights.pt")
        if path is not None:
            torch.save(model.state_dict(), path)
    return run.result()


def train_demo(root, out=sys.stdout, epochs: int = 2, seed: int = 0, steps=None) -> dict:
    """The demo's training step: ``Project.train`` on the built-in dataset in ``root``
    (written by ``tilespec demo root``); spec/training.md, "The demo"."""
    from tilespec.demo import training_run

    return training_run(root, out=out, epochs=epochs, seed=seed, steps=steps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tilespec_torch.train",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", help="the demo folder written by `tilespec demo DIR` (it is "
                        "written here first when it does not exist)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not os.path.exists(os.path.join(args.dir, "annotations.csv")):
        from tilespec.synthetic import write_synthetic_dataset
        write_synthetic_dataset(args.dir)
    train_demo(args.dir, epochs=args.epochs, seed=args.seed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
