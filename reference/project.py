"""Projects and the dataset side of training configuration (spec/dataset.md, "Projects").

A project is a folder with a ``settings.json``::

    {"name": "demo", "annotations": "annotations.csv", "tfrecords": ["tfrecords"]}

``annotations`` is a CSV path and ``tfrecords`` a folder (or list of folders
and files); relative paths are read from the folder holding settings.json.
:func:`load_project` reads it; :meth:`Project.dataset` builds a
:class:`~tilespec.Dataset`. :class:`ModelParams` carries the hyperparameters
that shape the data (``training_balance``, ``validation_balance``), and
:func:`fold_datasets` yields, per cross-validation fold, the (train, val)
datasets a trainer would use, balanced and clipped as configured.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Iterator, NamedTuple

from .annotations import ProjectError
from .dataset import Dataset

SETTINGS_FILE = "settings.json"
SETTINGS_KEYS = ("name", "annotations", "tfrecords")

BALANCE_CHOICES = ("tile", "slide", "patient", "category", "none", None)

# Losses whose model type is not classification (names as slideflow's two backends use them).
REGRESSION_LOSSES = frozenset({
    "mean_squared_error", "mean_absolute_error", "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error", "squared_hinge", "hinge", "logcosh",
    "L1", "MSE", "NLL", "HingeEmbedding", "SmoothL1", "CosineEmbedding",
})
SURVIVAL_LOSSES = frozenset({"negative_log_likelihood"})


class ModelParams:
    """Training hyperparameters; here only the data-shaping ones act (spec/dataset.md, "Projects").

    ``training_balance``: 'auto' (the default: 'category' for classification,
    'patient' otherwise), 'tile', 'slide', 'patient', 'category', 'none' or
    None. ``validation_balance``: the same without 'auto' (default 'none').
    ``loss`` decides the model type (:meth:`model_type`). The other fields are
    stored for the adapters and checked only for type.
    """

    def __init__(self, *, tile_px: int = 299, tile_um=302, epochs=3, batch_size: int = 16,
                 model: str = "xception", loss: str = "sparse_categorical_crossentropy",
                 learning_rate: float = 1e-4, augment="xyrj", normalizer=None,
                 training_balance="auto", validation_balance="none"):
        self.tile_px = tile_px
        self.tile_um = tile_um
        self.epochs = epochs
        self.batch_size = batch_size
        self.model = model
        self.loss = loss
        self.learning_rate = learning_rate
        self.augment = augment
        self.normalizer = normalizer
        if not isinstance(loss, str) or not loss:
            raise ProjectError(f"ModelParams: loss must be a non-empty string, got {loss!r}")
        for name, value in (("tile_px", tile_px), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProjectError(f"ModelParams: {name} must be a positive integer, "
                                   f"got {value!r}")
        if training_balance == "auto":
            training_balance = "category" if self.model_type() == "classification" else "patient"
        for name, value in (("training_balance", training_balance),
                            ("validation_balance", validation_balance)):
            if value not in BALANCE_CHOICES:
                raise ProjectError(f"ModelParams: unknown {name} {value!r}; valid: "
                                   + ", ".join(map(repr, BALANCE_CHOICES))
                                   + (", 'auto'" if name == "training_balance" else ""))
            if value == "category" and self.model_type() != "classification":
                raise ProjectError(f"ModelParams: {name}='category' needs a classification "
                                   f"loss; loss {loss!r} makes a {self.model_type()} model")
        self.training_balance = training_balance
        self.validation_balance = validation_balance

    def model_type(self) -> str:
        """'classification', 'regression' or 'survival', from the loss (or 'custom_<type>').

        spec/dataset.md, "Training configuration".
        """
        if self.loss.startswith("custom_"):
            return self.loss[len("custom_"):]
        if self.loss in SURVIVAL_LOSSES:
            return "survival"
        if self.loss in REGRESSION_LOSSES:
            return "regression"
        return "classification"

    def to_dict(self) -> dict:
        """The parameters as a plain dict (spec/dataset.md, "Training configuration")."""
        return dict(vars(self))

    def __eq__(self, other) -> bool:
        return isinstance(other, ModelParams) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "ModelParams(" + ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items()) + ")"


class FoldDatasets(NamedTuple):
    """One cross-validation fold: its number (1-based), train and validation datasets."""

    fold: int
    train: Dataset
    val: Dataset | None


def _apply(dts: Dataset, strategy, headers, force: bool, max_tiles: int, side: str,
           param: str) -> Dataset:
    if strategy not in (None, "none"):
        if dts.is_balanced:
            warnings.warn(f"{side} dataset is already balanced; ignoring {param}={strategy!r}",
                          stacklevel=3)
        else:
            dts = dts.balance(headers if strategy == "category" else None, strategy,
                              force=force)
    if max_tiles:
        if dts.is_clipped:
            warnings.warn(f"{side} dataset is already clipped; ignoring max_tiles={max_tiles}",
                          stacklevel=3)
        else:
            dts = dts.clip(max_tiles)
    return dts


def fold_datasets(dataset: Dataset, outcomes, params: ModelParams, *,
                  val_strategy: str = "k-fold", val_k_fold: int = 3, val_fraction=None,
                  max_tiles: int = 0, balance_headers=None,
                  seed: int = 0) -> Iterator[FoldDatasets]:
    """Yield the configured (train, val) datasets of every fold (spec/dataset.md, "Projects").

    1. Slides blank in any outcome header are filtered out; labels are checked
       (float for regression/survival, categorical for classification).
    2. ``val_strategy``: 'k-fold' (``val_k_fold`` folds, stratified by the
       outcomes for classification), 'fixed' (one split, ``val_fraction``) or
       'none' (one fold, the whole dataset, no validation).
    3. Train gets ``params.training_balance``, val ``params.validation_balance``
       (category headers: ``balance_headers``, default the outcomes); both get
       ``clip(max_tiles)`` when ``max_tiles`` > 0. A dataset that arrives
       already balanced or clipped keeps its own configuration (a warning
       names the ignored parameter).
    """
    if not isinstance(params, ModelParams):
        raise ProjectError(f"params must be a ModelParams, not {type(params).__name__}")
    outcomes = [outcomes] if isinstance(outcomes, str) else list(outcomes)
    if not outcomes:
        raise ProjectError("outcomes is empty; name at least one annotation header")
    dataset = dataset.filter(filter_blank=outcomes)
    classification = params.model_type() == "classification"
    dataset.labels(outcomes, use_float=not classification)   # surfaces label errors early
    strata = outcomes if classification else None
    bal_headers = outcomes if balance_headers is None else balance_headers
    if val_strategy == "k-fold":
        pairs = dataset.kfold_split(val_k_fold, labels=strata, seed=seed)
    elif val_strategy == "fixed":
        pairs = (dataset.split(strata, val_strategy="fixed", val_fraction=val_fraction,
                               seed=seed),)
    elif val_strategy == "none":
        pairs = ((dataset, None),)
    else:
        raise ProjectError(f"unknown val_strategy {val_strategy!r}; valid: 'k-fold', 'fixed', "
                           "'none'")
    for i, (train, val) in enumerate(pairs, start=1):
        train = _apply(train, params.training_balance, bal_headers, classification, max_tiles,
                       "training", "training_balance")
        if val is not None:
            val = _apply(val, params.validation_balance, bal_headers, classification, max_tiles,
                         "validation", "validation_balance")
        yield FoldDatasets(i, train, val)


class Project:
    """A loaded project: its settings and the datasets built from them (spec/dataset.md)."""

    def __init__(self, root: str, name: str, annotations: str, tfrecords: list):
        self.root = root
        self.name = name
        self.annotations = annotations
        self.tfrecords = tfrecords

    def __repr__(self) -> str:
        return f"Project(root={self.root!r}, name={self.name!r})"

    def dataset(self, filters=None, filter_blank=None) -> Dataset:
        """The project's :class:`~tilespec.Dataset`, with optional filters.

        spec/dataset.md, "Projects".
        """
        return Dataset(self.tfrecords, self.annotations, filters=filters,
                       filter_blank=filter_blank)

    def fold_datasets(self, outcomes, params: ModelParams, *, dataset: Dataset | None = None,
                      filters=None, filter_blank=None, **kwargs) -> Iterator[FoldDatasets]:
        """:func:`fold_datasets` on ``dataset`` (default: this project's, filtered).

        spec/dataset.md, "Training configuration".
        """
        if dataset is None:
            dataset = self.dataset(filters=filters, filter_blank=filter_blank)
        elif filters or filter_blank:
            dataset = dataset.filter(filters, filter_blank)
        return fold_datasets(dataset, outcomes, params, **kwargs)


def _settings_path(path) -> str:
    path = os.path.abspath(os.fspath(path))
    return os.path.join(path, SETTINGS_FILE) if os.path.isdir(path) else path


def load_project(path) -> Project:
    """Read a project folder (or its settings.json) (spec/dataset.md, "Projects")."""
    settings = _settings_path(path)
    if not os.path.isfile(settings):
        raise ProjectError("project settings file not found", path=settings)
    try:
        with open(settings, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise ProjectError(f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}",
                           path=settings) from None
    except UnicodeDecodeError as e:
        raise ProjectError(f"not UTF-8 text: {e}", path=settings) from None
    if not isinstance(data, dict):
        raise ProjectError(f"settings must be a JSON object, not {type(data).__name__}",
                           path=settings)
    unknown = [k for k in data if k not in SETTINGS_KEYS]
    if unknown:
        raise ProjectError(f"unknown setting(s) {', '.join(map(repr, unknown))}; known: "
                           + ", ".join(SETTINGS_KEYS), path=settings)
    for key in ("annotations", "tfrecords"):
        if key not in data:
            raise ProjectError(f"missing setting {key!r}", path=settings)
    root = os.path.dirname(settings)
    name = data.get("name", os.path.basename(root))
    if not isinstance(name, str):
        raise ProjectError(f"'name' must be a string, got {name!r}", path=settings)
    ann = data["annotations"]
    if not isinstance(ann, str) or not ann:
        raise ProjectError(f"'annotations' must be a path (string), got {ann!r}", path=settings)
    tfr = data["tfrecords"]
    tfr = [tfr] if isinstance(tfr, str) else tfr
    if not isinstance(tfr, list) or not tfr or not all(isinstance(t, str) and t for t in tfr):
        raise ProjectError(f"'tfrecords' must be a path or a non-empty list of paths, got "
                           f"{data['tfrecords']!r}", path=settings)
    ann_path = os.path.normpath(os.path.join(root, ann))
    if not os.path.isfile(ann_path):
        raise ProjectError(f"annotations file {ann_path} not found", path=settings)
    tfr_paths = [os.path.normpath(os.path.join(root, t)) for t in tfr]
    for t in tfr_paths:
        if not os.path.exists(t):
            raise ProjectError(f"tfrecords folder {t} not found", path=settings)
    return Project(root, name, ann_path, tfr_paths)


def create_project(root, annotations, tfrecords, name: str | None = None) -> Project:
    """Write ``root/settings.json`` naming ``annotations`` and ``tfrecords``; load it.

    spec/dataset.md, "Projects". Paths are stored as given (relative ones are
    read from ``root``). An existing settings.json is an error.
    """
    root = os.path.abspath(os.fspath(root))
    os.makedirs(root, exist_ok=True)
    settings = os.path.join(root, SETTINGS_FILE)
    if os.path.exists(settings):
        raise ProjectError("a project already exists here", path=settings)
    tfr = [os.fspath(t) for t in tfrecords] if isinstance(tfrecords, (list, tuple)) \
        else os.fspath(tfrecords)
    data = {"name": name if name is not None else os.path.basename(root),
            "annotations": os.fspath(annotations), "tfrecords": tfr}
    with open(settings, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    return load_project(root)


__all__ = ["ModelParams", "Project", "FoldDatasets", "fold_datasets", "load_project",
           "create_project"]
