"""Training through a project: folds, labels, metrics, results folders (spec/training.md).

:func:`train` is what ``Project.train`` runs. Everything that decides *what* a
model is trained and validated on lives here, in the reference, and is the same
for every backend: which datasets each fold uses (with which balance and clip),
the labels and their class indices, the seed of each fold, the loader options of
the training stream and of the validation pass, the length of an epoch, the
metrics and what is written to the run's folder. The framework-specific loop
(model, optimizer, backward pass) is an adapter's ``tilespec_train_fold`` hook
(spec/adapters.md); it gets a :class:`FoldRun` and reports every epoch back
through :meth:`FoldRun.end_epoch`, which computes the metrics here.

No framework is imported by this module.
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
import time
import warnings
from typing import Sequence

import numpy as np

from .annotations import ProjectError
from .rng import MAX_SEED, check_seed, new_seed

#: Models every trainer adapter builds by name (``ModelParams(model=...)``); a callable
#: ``(params, n_outcomes) -> model`` builds the user's own.
KNOWN_MODELS = ("tiny_cnn",)

#: Losses the trainers implement, by model type (names from slideflow's two backends).
TRAINABLE_LOSSES = {
    "classification": ("sparse_categorical_crossentropy", "CrossEntropy"),
    "regression": ("mean_squared_error", "MSE"),
}

#: Images every training and validation loader standardizes to (spec/images.md).
STANDARDIZE = "unit"

_RUN_NAME = re.compile(r"^(\d{5})-")


# -- metrics (pure) -----------------------------------------------------------------------------

def accuracy(y_true, probs) -> float:
    """Fraction of rows whose arg-max class is the true class (spec/training.md, "Metrics")."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    return float(np.mean(np.argmax(probs, axis=1) == y_true))


def cross_entropy(y_true, probs, eps: float = 1e-7) -> float:
    """Mean of ``-log p[y]`` with p clipped to [eps, 1] (spec/training.md, "Metrics")."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    p = np.clip(probs[np.arange(len(y_true)), y_true], eps, 1.0)
    return float(-np.mean(np.log(p)))


def rank_auc(positive, score) -> float:
    """Area under the ROC curve from ranks (Mann-Whitney U / (n+ n-)), ties counting one half.

    spec/training.md, "Metrics". ``positive``: booleans; ``score``: the higher,
    the more positive. NaN when one side is empty.
    """
    from scipy.stats import rankdata

    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)          # average ranks for ties
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def auc_per_class(y_true, probs) -> list:
    """One-vs-rest :func:`rank_auc` of every class column (spec/training.md, "Metrics")."""
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    return [rank_auc(y_true == c, probs[:, c]) for c in range(probs.shape[1])]


def mean_squared_error(y_true, pred) -> list:
    """Mean squared error of every output column (spec/training.md, "Metrics")."""
    y_true = np.asarray(y_true, dtype=np.float64).reshape(len(y_true), -1)
    pred = np.asarray(pred, dtype=np.float64).reshape(len(pred), -1)
    return [float(v) for v in np.mean((pred - y_true) ** 2, axis=0)]


def evaluate(model_type: str, y_true, y_score, names: Sequence[str]) -> dict:
    """The validation metrics of one pass (spec/training.md, "Metrics").

    classification (``y_score`` class probabilities, rows summing to 1):
    ``val_loss`` (cross-entropy), ``val_accuracy``, ``val_auc`` {class name: AUC};
    regression (``y_score`` predictions): ``val_loss`` (MSE over every output)
    and ``val_mse`` {outcome: MSE}.
    """
    if model_type == "classification":
        return {"val_loss": cross_entropy(y_true, y_score),
                "val_accuracy": accuracy(y_true, y_score),
                "val_auc": dict(zip(names, auc_per_class(y_true, y_score)))}
    per = mean_squared_error(y_true, y_score)
    return {"val_loss": float(np.mean(per)), "val_mse": dict(zip(names, per))}


# -- progress -------------------------------------------------------------------------------------

class Progress:
    """Per-epoch progress: a redrawn bar on a terminal, one plain line per epoch otherwise.

    spec/training.md, "Progress".
    """

    def __init__(self, out=None, width: int = 24):
        self.out = sys.stdout if out is None else out
        self.live = bool(getattr(self.out, "isatty", lambda: False)())
        self.width = width
        self._last = 0.0

    def step(self, label: str, done: int, total: int, loss: float) -> None:
        """Redraw the bar (terminals only, at most 10 times a second and at the end)."""
        if not self.live:
            return
        now = time.monotonic()
        if done < total and now - self._last < 0.1:
            return
        self._last = now
        filled = int(self.width * done / max(total, 1))
        bar = "#" * filled + "." * (self.width - filled)
        self.out.write(f"\r{label} [{bar}] {done}/{total} loss {loss:.4f}")
        self.out.flush()

    def line(self, text: str) -> None:
        """Print a line (after clearing the bar)."""
        if self.live:
            self.out.write("\r\033[K")
        print(text, file=self.out, flush=True)


def format_metrics(metrics: dict) -> str:
    """``key value`` pairs of an epoch's metrics, dicts expanded (spec/training.md)."""
    parts = []
    for k, v in metrics.items():
        if k in ("fold", "epoch", "steps", "tiles"):
            continue
        if isinstance(v, dict):
            parts.append(f"{k} " + " ".join(f"{n}={x:.3f}" for n, x in v.items()))
        elif isinstance(v, float):
            parts.append(f"{k} {v:.4f}")
        else:
            parts.append(f"{k} {v}")
    return "  ".join(parts)


def _flat(metrics: dict) -> dict:
    out = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update({f"{k}_{n}": x for n, x in v.items()})
        else:
            out[k] = v
    return out


# -- one fold -------------------------------------------------------------------------------------

class FoldRun:
    """One fold of a training run, as the adapters' ``tilespec_train_fold`` hook gets it.

    spec/training.md, "Folds". Attributes: ``fold`` (1-based) and ``n_folds``;
    ``train`` and ``val`` (:class:`~tilespec.Dataset`, val None without
    validation); ``labels`` ({slide: class index or float(s)}); ``names`` (the
    class names for classification, the outcome headers otherwise);
    ``n_outcomes`` (the model's output width); ``model_type``; ``params``;
    ``model`` (a name of :data:`KNOWN_MODELS` or a callable
    ``(params, n_outcomes) -> model``); ``seed`` (the fold's seed); ``epochs``;
    ``steps`` (batches per epoch when given, else None: ``len`` of the training
    loader); ``folder`` (where this fold writes, None on ranks other than 0);
    ``threads`` (the framework's intra-op threads while the fold trains, None: as set).

    The adapter builds its loaders from :meth:`train_options` and
    :meth:`val_options`, runs ``epochs`` epochs of :meth:`steps_per_epoch`
    batches, calls :meth:`step` after each batch, :meth:`end_epoch` after each
    epoch, writes the final weights to :meth:`weights_path` and returns
    :meth:`result`.
    """

    def __init__(self, *, fold, n_folds, train, val, labels, names, model_type, params, model,
                 seed, steps, folder, progress, backend, threads=None):
        self.fold, self.n_folds = fold, n_folds
        self.train, self.val = train, val
        self.labels = labels
        self.names = list(names)
        self.model_type = model_type
        self.n_outcomes = len(self.names)
        self.params = params
        self.model = model
        self.seed = seed
        self.epochs = max(params.epochs) if isinstance(params.epochs, list) else params.epochs
        self.steps = steps
        self.folder = folder
        self.progress = progress
        self.backend = backend
        self.threads = threads
        self.history: list = []
        self.weights: str | None = None
        self._t0 = time.perf_counter()

    @property
    def label(self) -> str:
        return f"fold {self.fold}/{self.n_folds}"

    def train_options(self) -> dict:
        """Options of the training loader (spec/training.md, "Loaders"): the infinite,
        augmented, seeded stream of the fold's training dataset (its balance and clip)."""
        p = self.params
        return dict(labels=self.labels, batch_size=p.batch_size, infinite=True, seed=self.seed,
                    augment=p.augment or False, normalizer=p.normalizer,
                    standardize=STANDARDIZE)

    def val_options(self) -> dict:
        """Options of the validation pass (spec/training.md, "Loaders"): one finite pass
        over every clipped record of the validation dataset, no augmentation, on one
        replica (every rank validates the whole set)."""
        p = self.params
        return dict(labels=self.labels, batch_size=p.batch_size, infinite=False, seed=self.seed,
                    augment=False, normalizer=p.normalizer, standardize=STANDARDIZE,
                    rank=0, num_replicas=1)

    def steps_per_epoch(self, loader=None) -> int:
        """``steps`` when given, else ``len(loader)``: one pass of the training set's
        clipped tile count (this rank's share) in batches (spec/training.md, "Epochs").
        Without ``loader``, the length of the reference loader of :meth:`train_options`."""
        if self.steps is not None:
            return self.steps
        if loader is None:
            loader = self.train.numpy(**self.train_options())
        return len(loader)

    def step(self, epoch: int, done: int, total: int, loss: float) -> None:
        """Report a finished batch (drives the progress bar on a terminal)."""
        self.progress.step(f"{self.label} epoch {epoch}/{self.epochs}", done, total, loss)

    def end_epoch(self, epoch: int, train_loss: float, steps: int, y_true=None,
                  y_score=None) -> dict:
        """Record epoch ``epoch`` (1-based): the mean training loss of its ``steps``
        batches and, with validation, the metrics of (``y_true``, ``y_score``)
        (:func:`evaluate`). Appends to the history, rewrites metrics.csv/json and
        prints one line. Returns the epoch's metrics."""
        metrics = {"fold": self.fold, "epoch": epoch, "steps": steps,
                   "tiles": steps * self.params.batch_size, "train_loss": float(train_loss)}
        if self.val is not None:
            if y_true is None or len(y_true) == 0:
                raise ProjectError(f"{self.label}: the validation pass yielded no tiles")
            metrics.update(evaluate(self.model_type, y_true, y_score, self.names))
            metrics["val_tiles"] = int(len(y_true))
        self.history.append(metrics)
        self._write_metrics()
        self.progress.line(f"{self.label} epoch {epoch}/{self.epochs}: {format_metrics(metrics)}")
        return metrics

    def weights_path(self, filename: str) -> str | None:
        """Where the final weights go (``<fold folder>/<filename>``), None on ranks > 0."""
        if self.folder is None:
            return None
        self.weights = os.path.join(self.folder, filename)
        return self.weights

    def result(self) -> dict:
        """The fold's summary: its last epoch's metrics, the history, the weights file."""
        last = dict(self.history[-1]) if self.history else {}
        return {"fold": self.fold, "metrics": last, "history": list(self.history),
                "weights": self.weights, "folder": self.folder,
                "train_slides": self.train.slides(),
                "val_slides": self.val.slides() if self.val is not None else [],
                "seconds": time.perf_counter() - self._t0}

    def _write_metrics(self) -> None:
        if self.folder is None:
            return
        with open(os.path.join(self.folder, "metrics.json"), "w", encoding="utf-8") as fh:
            json.dump(self.history, fh, indent=1)
            fh.write("\n")
        rows = [_flat(m) for m in self.history]
        cols = list(dict.fromkeys(k for r in rows for k in r))
        with open(os.path.join(self.folder, "metrics.csv"), "w", newline="",
                  encoding="utf-8") as fh:
            w = csv.DictWriter(fh, cols)
            w.writeheader()
            w.writerows(rows)


# -- the run --------------------------------------------------------------------------------------

def _model_ref(model) -> str:
    if isinstance(model, str):
        return model
    return f"<callable {getattr(model, '__module__', '?')}.{getattr(model, '__qualname__', model)}>"


def _jsonable(value):
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if callable(value):
        return _model_ref(value)
    return repr(value)


def new_run_folder(models_dir: str, name: str) -> str:
    """``models_dir/NNNNN-name``, NNNNN one more than the highest run number there
    (spec/training.md, "Results")."""
    os.makedirs(models_dir, exist_ok=True)
    taken = [int(m.group(1)) for f in os.listdir(models_dir) if (m := _RUN_NAME.match(f))]
    folder = os.path.join(models_dir, f"{max(taken, default=-1) + 1:05d}-{name}")
    os.makedirs(folder)
    return folder


def _class_check(fold: int, side: str, ds, labels: dict, names: Sequence[str], outcome: str):
    present = sorted({labels[s] for s in ds.slides()})
    if len(present) < 2:
        only = names[present[0]] if present else "none"
        raise ProjectError(
            f"fold {fold}: every {side} slide ({len(ds.slides())}: "
            f"{', '.join(ds.slides()[:10])}{', ...' if len(ds.slides()) > 10 else ''}) has "
            f"{outcome} = {only!r}; a classifier needs at least two classes on each side "
            f"(classes: {', '.join(map(repr, names))}). Use fewer folds (val_k_fold) or "
            f"other datasets")


def fold_labels(pairs, outcomes: list, model_type: str):
    """(labels {slide: label}, names) over every fold's train and val slides.

    spec/training.md, "Labels". Classification (one outcome): class indices
    into the sorted union of the class names of all folds' slides, so every
    fold (and an explicit validation dataset) uses the same indices.
    Regression: floats (a list per slide for several outcomes), names the
    outcome headers.
    """
    if model_type == "classification":
        if len(outcomes) != 1:
            raise ProjectError(f"train supports one categorical outcome; got {outcomes!r} "
                               "(several outcomes need a regression loss)")
        by_name: dict = {}
        for ds in (d for pair in pairs for d in pair if d is not None):
            by_name.update(ds.labels(outcomes[0], format="name")[0])
        names = sorted(set(by_name.values()))
        index = {n: i for i, n in enumerate(names)}
        return {s: index[v] for s, v in by_name.items()}, names
    labels: dict = {}
    for ds in (d for pair in pairs for d in pair if d is not None):
        lab, _ = ds.labels(outcomes if len(outcomes) > 1 else outcomes[0], use_float=True)
        labels.update(lab)
    return labels, list(outcomes)


def _check_tile_size(ds, tile_px: int) -> None:
    from .example import parse_tile
    from .images import decode_image
    from .index import load_index
    from .records import read_record_at

    for path, n in zip(ds.tfrecords(), ds.sampling_table().counts):
        if n:
            offsets, _ = load_index(path)
            tile = parse_tile(read_record_at(path, int(offsets[0][0])))
            h, w = decode_image(tile.image_raw).shape[:2]
            if (h, w) != (tile_px, tile_px):
                raise ProjectError(f"tiles are {w}x{h} px but params.tile_px is {tile_px}; "
                                   f"pass ModelParams(tile_px={w}, ...) or tfrecords of "
                                   f"{tile_px} px tiles", path=path)
            return


def check_trainable(params, model, backend: str) -> None:
    """The loss, model and backend of a run are ones the trainers implement.

    spec/training.md, "Models and losses".
    """
    kind = params.model_type()
    losses = TRAINABLE_LOSSES.get(kind, ())
    if params.loss not in losses:
        valid = ", ".join(repr(x) for v in TRAINABLE_LOSSES.values() for x in v)
        raise ProjectError(f"train: loss {params.loss!r} ({kind}) is not implemented by "
                           f"tilespec's trainers; implemented: {valid}")
    if not callable(model) and model not in KNOWN_MODELS:
        raise ProjectError(f"train: unknown model {model!r}; valid: "
                           + ", ".join(map(repr, KNOWN_MODELS))
                           + ", or a callable (params, n_outcomes) -> model")
    if not isinstance(backend, str):
        raise ProjectError(f"backend must be a string such as 'torch' or 'tensorflow', "
                           f"got {backend!r}")


def train(project, outcomes, params, *, dataset=None, val_dataset=None, max_tiles: int = 0,
          val_k_fold=None, val_strategy: str = "k-fold", val_fraction=None,
          backend: str = "torch", model=None, seed=None, steps=None, balance_headers=None,
          filters=None, filter_blank=None, out=None, name: str | None = None,
          threads=None) -> dict:
    """``Project.train``: build every fold, then train them in order (spec/training.md).

    Returns ``{"folder": run folder or None, "seed": run seed, "folds": [fold
    result, ...]}``; each fold result has ``metrics`` (the last epoch's),
    ``history`` (every epoch's), ``weights``, ``train_slides``, ``val_slides``.
    Every input error (loss, model, outcomes, labels, a fold with one class,
    tile size) is raised before the first batch.
    """
    from .plugins import missing_adapter, backends, train_fold
    from .project import ModelParams, balance_and_clip, fold_datasets

    if not isinstance(params, ModelParams):
        raise ProjectError(f"params must be a ModelParams, not {type(params).__name__}")
    model = params.model if model is None else model
    check_trainable(params, model, backend)
    if backend == "numpy":
        raise ProjectError("the NumPy reference loads data but does not train; use "
                           "backend='torch' or backend='tensorflow'")
    if backend not in backends():
        raise missing_adapter(backend, f"Project.train(backend={backend!r})")
    outcomes = [outcomes] if isinstance(outcomes, str) else list(outcomes)
    if not outcomes:
        raise ProjectError("outcomes is empty; name at least one annotation header")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                              or steps < 1):
        raise ProjectError(f"steps must be a positive integer or None, got {steps!r}")
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ProjectError(f"threads must be a positive integer or None, got {threads!r}")
        if backend != "torch":
            raise ProjectError("threads= is applied by the torch trainer only; TensorFlow's "
                               "threads are set with tf.config.threading before it starts")
    seed = new_seed() if seed is None else check_seed(seed)
    model_type = params.model_type()
    classification = model_type == "classification"
    split_seed = seed
    base = project._training_dataset(params, filters, filter_blank) if dataset is None else None
    if dataset is not None and (filters or filter_blank):
        dataset = dataset.filter(filters, filter_blank)
    for ds in (base, dataset, val_dataset):
        if ds is not None:
            if ds.annotations is None:
                raise ProjectError("train needs annotated datasets (the outcomes are "
                                   "annotation columns); this one has no annotations")
            ds.annotations.check_headers(outcomes, what="outcome header")
    if dataset is not None and val_dataset is not None:
        if max_tiles:
            warnings.warn(f"max_tiles={max_tiles} is ignored: dataset= and val_dataset= are "
                          "used as configured", stacklevel=3)
        pairs = [(dataset.filter(filter_blank=outcomes), val_dataset.filter(filter_blank=outcomes))]
        how = "given datasets"
    elif val_dataset is not None:
        bal = outcomes if balance_headers is None else balance_headers
        tr = balance_and_clip(base.filter(filter_blank=outcomes), params.training_balance, bal,
                              classification, max_tiles, "training", "training_balance")
        pairs = [(tr, val_dataset.filter(filter_blank=outcomes))]
        how = "project dataset, given val_dataset"
    else:
        src = dataset if dataset is not None else base
        kw = dict(val_strategy=val_strategy, val_fraction=val_fraction, max_tiles=max_tiles,
                  balance_headers=balance_headers, seed=split_seed)
        if val_strategy == "k-fold":
            kw["val_k_fold"] = 3 if val_k_fold is None else val_k_fold
        pairs = [(f.train, f.val) for f in fold_datasets(src, outcomes, params, **kw)]
        how = f"{val_strategy} split"
    labels, names = fold_labels(pairs, outcomes, model_type)
    for i, (tr, va) in enumerate(pairs, start=1):
        if classification:
            _class_check(i, "training", tr, labels, names, outcomes[0])
            if va is not None:
                _class_check(i, "validation", va, labels, names, outcomes[0])
        if va is not None:
            both = sorted(set(tr.slides()) & set(va.slides()))
            if both:
                warnings.warn(f"fold {i}: {len(both)} slide(s) are in both the training and "
                              f"the validation dataset: {', '.join(both[:10])}", stacklevel=3)
    _check_tile_size(pairs[0][0], params.tile_px)

    rank = _rank()
    progress = Progress(out)
    folder = None
    if rank == 0:
        folder = new_run_folder(project.models_dir, name or "-".join(outcomes))
        with open(os.path.join(folder, "params.json"), "w", encoding="utf-8") as fh:
            json.dump({"project": project.name, "outcomes": outcomes, "model_type": model_type,
                       "names": names, "backend": backend, "model": _model_ref(model),
                       "seed": seed, "steps": steps, "max_tiles": max_tiles, "datasets": how,
                       "val_strategy": None if val_dataset is not None else val_strategy, "val_k_fold": val_k_fold, "val_fraction": val_fraction,
                       "hp": _jsonable(params.to_dict())}, fh, indent=2)
            fh.write("\n")
    progress.line(f"training {len(pairs)} fold(s) ({how}) of a {_model_ref(model)} "
                  f"{model_type} model on {outcomes} with {backend}, seed {seed}"
                  + (f"; results in {folder}" if folder else ""))
    results = []
    for i, (tr, va) in enumerate(pairs, start=1):
        fold_dir = None
        if folder is not None:
            fold_dir = os.path.join(folder, f"fold{i}")
            os.makedirs(fold_dir)
            with open(os.path.join(fold_dir, "slides.json"), "w", encoding="utf-8") as fh:
                json.dump({"train": tr.slides(), "val": va.slides() if va is not None else [],
                           "train_tfrecords": tr.tfrecords(),
                           "val_tfrecords": va.tfrecords() if va is not None else [],
                           "train_clip": {os.path.basename(p): c["clipped"]
                                          for p, c in tr.manifest().items()},
                           "train_weights": None if tr.prob_weights is None else
                           {os.path.basename(p): w for p, w in tr.prob_weights.items()}},
                          fh, indent=1)
                fh.write("\n")
        run = FoldRun(fold=i, n_folds=len(pairs), train=tr, val=va, labels=labels, names=names,
                      model_type=model_type, params=params, model=model,
                      seed=(seed + i) % MAX_SEED, steps=steps, folder=fold_dir,
                      progress=progress, backend=backend, threads=threads)
        results.append(train_fold(backend, run))
    summary = {"folder": folder, "seed": seed, "folds": results}
    if folder is not None:
        with open(os.path.join(folder, "results.json"), "w", encoding="utf-8") as fh:
            json.dump({"seed": seed, "folds": [{k: v for k, v in r.items()
                                                if k != "history"} for r in results]},
                      fh, indent=1)
            fh.write("\n")
    for r in results:
        progress.line(f"fold {r['fold']}: {format_metrics(r['metrics'])}")
    return summary


def _rank() -> int:
    """This process's rank when torch.distributed is initialized (torch already
    imported by the caller), else 0."""
    torch = sys.modules.get("torch")
    if torch is None:
        return 0
    dist = getattr(torch, "distributed", None)
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


__all__ = ["train", "FoldRun", "Progress", "KNOWN_MODELS", "TRAINABLE_LOSSES", "accuracy",
           "cross_entropy", "rank_auc", "auc_per_class", "mean_squared_error", "evaluate",
           "fold_labels", "new_run_folder", "check_trainable"]
