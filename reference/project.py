"""Projects and the dataset side of training configuration (spec/dataset.md, "Projects").

A project is a folder with a ``settings.json``, in one of two layouts.
tilespec's own::

    {"name": "demo", "annotations": "annotations.csv", "tfrecords": ["tfrecords"]}

``annotations`` is a CSV path and ``tfrecords`` a folder (or list of folders
and files); relative paths are read from the folder holding settings.json.
slideflow's (what ``slideflow.create_project`` writes)::

    {"name": "MyProject", "annotations": "./annotations.csv",
     "dataset_config": "./datasets.json", "sources": ["MyProject"],
     "models_dir": "./models", "eval_dir": "./eval", "slideflow_version": "3.0.2"}

with ``datasets.json`` mapping each source to its folders
(``{"MyProject": {"slides": ..., "roi": ..., "tiles": ..., "tfrecords": ...}}``);
a source's tfrecords of one tile size are in ``<tfrecords>/<tile_px>px_<tile_um>um``
(``<tile_px>px_10x`` for a magnification). :func:`load_project` reads either;
:meth:`Project.dataset` builds a :class:`~tilespec.Dataset`; :meth:`Project.train`
trains on it (spec/training.md). :class:`ModelParams` carries the hyperparameters
that shape the data (``training_balance``, ``validation_balance``), and
:func:`fold_datasets` yields, per cross-validation fold, the (train, val)
datasets a trainer would use, balanced and clipped as configured.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from typing import Iterator, NamedTuple

from .annotations import ProjectError
from .dataset import Dataset

SETTINGS_FILE = "settings.json"
SETTINGS_KEYS = ("name", "annotations", "tfrecords", "models_dir")
#: The keys of slideflow's settings.json (3.0); the layout is recognized by
#: ``dataset_config`` or ``sources``.
SLIDEFLOW_KEYS = ("name", "annotations", "dataset_config", "sources", "models_dir", "eval_dir",
                  "slideflow_version", "neptune_workspace", "neptune_api")

BALANCE_CHOICES = ("tile", "slide", "patient", "category", "none", None)

# Losses whose model type is not classification (names as slideflow's two backends use them).
REGRESSION_LOSSES = frozenset({
    "mean_squared_error", "mean_absolute_error", "mean_absolute_percentage_error",
    "mean_squared_logarithmic_error", "squared_hinge", "hinge", "logcosh",
    "L1", "MSE", "NLL", "HingeEmbedding", "SmoothL1", "CosineEmbedding",
})
SURVIVAL_LOSSES = frozenset({"negative_log_likelihood"})
# The classification losses of slideflow's two backends (every other known loss).
CLASSIFICATION_LOSSES = frozenset({
    "sparse_categorical_crossentropy", "categorical_crossentropy", "binary_crossentropy",
    "categorical_hinge", "huber", "kullback_leibler_divergence", "poisson",
    "batch_loss_crossentropy",
    "CrossEntropy", "CTC", "PoissonNLL", "GaussianNLL", "KLDiv", "BCE", "BCEWithLogits",
    "MarginRanking", "MultiLabelMargin", "Huber", "SoftMargin", "MultiLabelSoftMargin",
    "MultiMargin", "TripletMargin", "TripletMarginWithDistance",
})
KNOWN_LOSSES = CLASSIFICATION_LOSSES | REGRESSION_LOSSES | SURVIVAL_LOSSES
CUSTOM_LOSS_TYPES = ("classification", "regression", "survival")
#: slideflow's other ModelParams fields, with their defaults: accepted (and kept in
#: to_dict) so a slideflow call runs, but only at these values; tilespec's trainers do
#: not implement the others (spec/training.md, "ModelParams").
SLIDEFLOW_FIELDS = {
    "toplayer_epochs": 0, "pooling": "max", "learning_rate_decay": 0,
    "learning_rate_decay_steps": 100000, "hidden_layers": 0, "hidden_layer_width": 500,
    "optimizer": "Adam", "early_stop": False, "early_stop_patience": 0,
    "early_stop_method": "loss", "manual_early_stop_epoch": None,
    "manual_early_stop_batch": None, "uq": False, "trainable_layers": 0, "l1": 0, "l2": 0,
    "l1_dense": 0, "l2_dense": 0, "dropout": 0, "normalizer_source": None,
    "include_top": True, "drop_images": False,
}
_MAGNIFICATION = re.compile(r"^\d+(\.\d+)?x$", re.IGNORECASE)


def _same(value, default) -> bool:
    """``value`` is ``default`` (numbers compare as numbers; a bool is not a number)."""
    if isinstance(value, bool) or isinstance(default, bool) or default is None or \
            isinstance(default, str):
        return type(value) is type(default) and value == default
    return isinstance(value, (int, float)) and value == default


def check_tile_um(tile_um, where: str = "tile_um"):
    """An integer (microns) or a magnification string like '10x' (returned lower-cased).

    spec/dataset.md, "Projects".
    """
    if isinstance(tile_um, str):
        if not _MAGNIFICATION.match(tile_um):
            raise ProjectError(f"{where} must be an integer (microns) or a magnification such "
                               f"as '10x' or '2.5x', got {tile_um!r}")
        return tile_um.lower()
    if isinstance(tile_um, bool) or not isinstance(tile_um, int) or tile_um < 1:
        raise ProjectError(f"{where} must be a positive integer (microns) or a magnification "
                           f"such as '10x', got {tile_um!r}")
    return tile_um


def tile_size_label(tile_px: int, tile_um) -> str:
    """The folder name of one tile size: ``299px_302um``, or ``299px_10x`` for a
    magnification (spec/dataset.md, "Projects"; slideflow's labels)."""
    if isinstance(tile_px, bool) or not isinstance(tile_px, int) or tile_px < 1:
        raise ProjectError(f"tile_px must be a positive integer, got {tile_px!r}")
    tile_um = check_tile_um(tile_um)
    return f"{tile_px}px_{tile_um}" if isinstance(tile_um, str) else f"{tile_px}px_{tile_um}um"


class ModelParams:
    """Training hyperparameters, with slideflow's field names (spec/training.md, "ModelParams").

    ``training_balance``: 'auto' (the default: 'category' for classification,
    'patient' otherwise), 'tile', 'slide', 'patient', 'category', 'none' or
    None. ``validation_balance``: the same without 'auto' (default 'none').
    ``loss`` decides the model type (:meth:`model_type`) and must be one of
    slideflow's loss names (:data:`KNOWN_LOSSES`) or ``custom_<type>``.
    ``model`` names a model tilespec ships (``tilespec.training.KNOWN_MODELS``)
    or is a callable ``(params, n_outcomes) -> model``. ``epochs`` (an integer
    or a list of them: the largest is trained), ``batch_size``,
    ``learning_rate``, ``augment`` and ``normalizer`` drive ``Project.train``.
    Every value is checked here; an unknown name lists the valid ones.
    """

    def __init__(self, *, tile_px: int = 299, tile_um=302, epochs=3, batch_size: int = 16,
                 model="tiny_cnn", loss: str = "sparse_categorical_crossentropy",
                 learning_rate: float = 1e-4, augment="xyrj", normalizer=None,
                 training_balance="auto", validation_balance="none", **slideflow):
        from .training import KNOWN_MODELS

        unknown = [k for k in slideflow if k not in SLIDEFLOW_FIELDS]
        if unknown:
            raise TypeError(f"ModelParams got unexpected keyword argument(s) "
                            f"{', '.join(map(repr, unknown))}")
        for k, default in SLIDEFLOW_FIELDS.items():
            value = slideflow.get(k, default)
            if not _same(value, default):
                raise ProjectError(f"ModelParams: {k}={value!r} is a slideflow setting that "
                                   f"tilespec's trainers do not implement; only its default "
                                   f"{default!r} is accepted")

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
        if loss.startswith("custom_"):
            if loss[len("custom_"):] not in CUSTOM_LOSS_TYPES:
                raise ProjectError(f"ModelParams: unknown custom loss type {loss!r}; valid: "
                                   + ", ".join(f"'custom_{t}'" for t in CUSTOM_LOSS_TYPES))
        elif loss not in KNOWN_LOSSES:
            raise ProjectError(f"ModelParams: unknown loss {loss!r}; valid: "
                               + ", ".join(map(repr, sorted(KNOWN_LOSSES, key=str.lower)))
                               + ", or 'custom_<classification|regression|survival>'")
        if not callable(model) and model not in KNOWN_MODELS:
            raise ProjectError(f"ModelParams: unknown model {model!r}; valid: "
                               + ", ".join(map(repr, KNOWN_MODELS))
                               + ", or a callable (params, n_outcomes) -> model (slideflow's "
                               "Keras/torchvision architectures are not shipped)")
        for name, value in (("tile_px", tile_px), ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ProjectError(f"ModelParams: {name} must be a positive integer, "
                                   f"got {value!r}")
        self.tile_um = check_tile_um(tile_um, "ModelParams: tile_um")
        ep = epochs if isinstance(epochs, list) else [epochs]
        if not ep or any(isinstance(e, bool) or not isinstance(e, int) or e < 1 for e in ep):
            raise ProjectError(f"ModelParams: epochs must be a positive integer or a non-empty "
                               f"list of them, got {epochs!r}")
        if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) \
                or not learning_rate > 0 or learning_rate != learning_rate:
            raise ProjectError(f"ModelParams: learning_rate must be a positive number, "
                               f"got {learning_rate!r}")
        if not (augment is None or isinstance(augment, (bool, str))):
            raise ProjectError(f"ModelParams: augment must be a string of augmentation "
                               f"characters, True, False or None, got {augment!r}")
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
        for k, default in SLIDEFLOW_FIELDS.items():
            setattr(self, k, slideflow.get(k, default))

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


def balance_and_clip(dts: Dataset, strategy, headers, force: bool, max_tiles: int,
                     side: str, param: str) -> Dataset:
    """``dts`` balanced with ``strategy`` and clipped to ``max_tiles``, as a fold's side
    gets them (spec/dataset.md, "Training configuration", step 3): a dataset already
    balanced (clipped) keeps its own configuration, with a warning naming ``param``
    (``max_tiles``) and the ``side``."""
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
        train = balance_and_clip(train, params.training_balance, bal_headers, classification,
                                 max_tiles, "training", "training_balance")
        if val is not None:
            val = balance_and_clip(val, params.validation_balance, bal_headers, classification,
                                   max_tiles, "validation", "validation_balance")
        yield FoldDatasets(i, train, val)


class Project:
    """A loaded project: its settings and the datasets built from them (spec/dataset.md).

    ``tfrecords``: tilespec's layout, the folders/files named by settings.json;
    slideflow's, the tfrecords folder of every source in ``sources`` (a dict
    ``{source: folder}`` read from the dataset configuration ``dataset_config``).
    """

    def __init__(self, root: str, name: str, annotations: str, tfrecords: list, *,
                 sources: dict | None = None, dataset_config: str | None = None,
                 models_dir: str | None = None, settings: str | None = None):
        self.root = root
        self.name = name
        self.annotations = annotations
        self.tfrecords = tfrecords
        self.sources = sources            # None in tilespec's layout
        self.dataset_config = dataset_config
        self.models_dir = models_dir or os.path.join(root, "models")
        self.settings = settings or os.path.join(root, SETTINGS_FILE)

    @property
    def layout(self) -> str:
        """'slideflow' or 'tilespec': which settings.json layout the project has."""
        return "tilespec" if self.sources is None else "slideflow"

    def __repr__(self) -> str:
        return f"Project(root={self.root!r}, name={self.name!r})"

    def _folders(self, tile_px, tile_um, sources) -> list:
        """The tfrecords folders/files of ``project.dataset(tile_px, tile_um, sources=)``."""
        if (tile_px is None) != (tile_um is None):
            raise ProjectError(f"project.dataset: give both tile_px and tile_um, or neither "
                               f"(got tile_px={tile_px!r}, tile_um={tile_um!r})")
        if self.sources is None:
            if sources is not None:
                raise ProjectError("project.dataset: sources= needs a slideflow project "
                                   "(settings.json with 'sources' and 'dataset_config'); this "
                                   "one lists its tfrecords directly", path=self.settings)
            if tile_px is None:
                return list(self.tfrecords)
            label = tile_size_label(tile_px, tile_um)
            out = []
            for t in self.tfrecords:
                sub = os.path.join(t, label)
                if not os.path.isdir(sub):
                    raise ProjectError(_no_tile_folder(sub, t, label, f"'tfrecords' entry {t}"),
                                       path=self.settings)
                out.append(sub)
            return out
        if tile_px is None:
            raise ProjectError("project.dataset: this slideflow project keeps each tile size "
                               "in its own <tile_px>px_<tile_um>um folder; pass tile_px= and "
                               "tile_um=", path=self.settings)
        label = tile_size_label(tile_px, tile_um)
        names = self._source_names(sources)
        found, missing = [], []
        for n in names:
            sub = os.path.join(self.sources[n], label)
            (found if os.path.isdir(sub) else missing).append((n, sub))
        if not found:
            n, sub = missing[0]
            raise ProjectError(_no_tile_folder(sub, self.sources[n], label,
                                               f"source {n!r} (key {n}.tfrecords)")
                               + (f"; nor in source(s) {', '.join(repr(m) for m, _ in missing[1:])}"
                                  if len(missing) > 1 else ""), path=self.dataset_config)
        if missing:
            warnings.warn(f"{self.dataset_config}: source(s) "
                          + ", ".join(f"{n!r} ({sub})" for n, sub in missing)
                          + f" have no {label} folder; their tfrecords are left out",
                          stacklevel=3)
        return [sub for _, sub in found]

    def _source_names(self, sources) -> list:
        if sources is None:
            return list(self.sources)
        names = [sources] if isinstance(sources, str) else sources
        if not isinstance(names, (list, tuple)) or not names or \
                not all(isinstance(n, str) for n in names):
            raise ProjectError(f"sources must be a source name or a non-empty list of them, "
                               f"got {sources!r}")
        available = _read_dataset_config(self.dataset_config, self.settings)
        unknown = [n for n in names if n not in available]
        if unknown:
            raise ProjectError(f"unknown source(s) {', '.join(map(repr, unknown))}; sources in "
                               f"it: {', '.join(map(repr, available))}", path=self.dataset_config)
        self.sources = {**self.sources, **{n: available[n] for n in names}}
        return list(names)

    def dataset(self, tile_px=None, tile_um=None, *, filters=None, filter_blank=None,
                sources=None) -> Dataset:
        """The project's :class:`~tilespec.Dataset`, with optional filters.

        spec/dataset.md, "Projects". With ``tile_px`` and ``tile_um`` (an
        integer or a magnification like '10x') the tfrecords are those of the
        ``<tile_px>px_<tile_um>um`` (``<tile_px>px_10x``) folder of every
        tfrecords folder: each source's (slideflow layout; ``sources`` picks
        sources of the dataset configuration), or each listed one (tilespec
        layout). A slideflow project needs them; a tilespec project without
        them uses its folders as listed.
        """
        return Dataset(self._folders(tile_px, tile_um, sources), self.annotations,
                       filters=filters, filter_blank=filter_blank)

    def _training_dataset(self, params, filters=None, filter_blank=None) -> Dataset:
        """The dataset ``train`` splits when none is given: the tile size of ``params``
        in a slideflow project, the listed folders in a tilespec one (spec/training.md)."""
        if self.sources is not None:
            return self.dataset(params.tile_px, params.tile_um, filters=filters,
                                filter_blank=filter_blank)
        return self.dataset(filters=filters, filter_blank=filter_blank)

    def fold_datasets(self, outcomes, params: ModelParams, *, dataset: Dataset | None = None,
                      filters=None, filter_blank=None, **kwargs) -> Iterator[FoldDatasets]:
        """:func:`fold_datasets` on ``dataset`` (default: this project's, filtered).

        spec/dataset.md, "Training configuration".
        """
        if dataset is None:
            dataset = self._training_dataset(params, filters=filters, filter_blank=filter_blank)
        elif filters or filter_blank:
            dataset = dataset.filter(filters, filter_blank)
        return fold_datasets(dataset, outcomes, params, **kwargs)

    def train(self, outcomes, params: ModelParams, *, dataset: Dataset | None = None,
              val_dataset: Dataset | None = None, max_tiles: int = 0, val_k_fold=None,
              val_strategy: str = "k-fold", val_fraction=None, backend: str = "torch",
              model=None, seed=None, steps=None, balance_headers=None, filters=None,
              filter_blank=None, out=None, name=None, threads=None) -> dict:
        """Train a model per fold and return the per-fold metrics (spec/training.md).

        ``dataset`` and ``val_dataset`` given: one fold, both used as configured.
        Otherwise the project's dataset (or ``dataset``) is split into folds
        (``val_strategy`` 'k-fold' with ``val_k_fold`` (default 3), 'fixed' with
        ``val_fraction``, or 'none'), and ``params.training_balance`` /
        ``validation_balance`` and ``max_tiles`` are applied to every fold.
        ``backend``: 'torch' (default) or 'tensorflow', the adapter that trains;
        ``model``: overrides ``params.model``; ``seed``: the run's seed (drawn
        when None); ``steps``: batches per epoch instead of an epoch of tiles;
        ``out``: where progress goes (stdout); ``threads``: torch's intra-op
        threads while training (None: unchanged; 1 is fastest for tiny models on a
        busy machine). Results go to
        ``<models_dir>/NNNNN-<outcomes>/``.
        """
        from .training import train

        return train(self, outcomes, params, dataset=dataset, val_dataset=val_dataset,
                     max_tiles=max_tiles, val_k_fold=val_k_fold, val_strategy=val_strategy,
                     val_fraction=val_fraction, backend=backend, model=model, seed=seed,
                     steps=steps, balance_headers=balance_headers, filters=filters,
                     filter_blank=filter_blank, out=out, name=name, threads=threads)


def _no_tile_folder(sub: str, base: str, label: str, what: str) -> str:
    have = sorted(f for f in os.listdir(base) if os.path.isdir(os.path.join(base, f))) \
        if os.path.isdir(base) else None
    return (f"no tfrecords folder {sub} for {label} in {what}"
            + ("" if have is None else f"; tile-size folders there: {', '.join(have) or 'none'}")
            + ("" if have is not None else f" ({base} does not exist)"))


def _settings_path(path) -> str:
    path = os.path.abspath(os.fspath(path))
    return os.path.join(path, SETTINGS_FILE) if os.path.isdir(path) else path


def _read_json(path: str):
    if not os.path.isfile(path):
        raise ProjectError("file not found", path=path)
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except json.JSONDecodeError as e:
        raise ProjectError(f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}",
                           path=path) from None
    except UnicodeDecodeError as e:
        raise ProjectError(f"not UTF-8 text: {e}", path=path) from None


def _resolve(root: str, p: str) -> str:
    """A settings path: absolute as is, relative (``./x`` or ``x``) from ``root``."""
    return os.path.normpath(os.path.join(root, os.path.expanduser(p)))


def _read_dataset_config(path: str, settings: str) -> dict:
    """``{source: tfrecords folder}`` of every source of a slideflow datasets.json."""
    if not os.path.isfile(path):
        raise ProjectError(f"'dataset_config': dataset configuration {path} not found",
                           path=settings)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise ProjectError(f"a dataset configuration must be a JSON object {{source: "
                           f"{{'tfrecords': folder, ...}}}}, not {type(data).__name__}", path=path)
    out = {}
    base = os.path.dirname(path)
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise ProjectError(f"source {name!r} must be an object with a 'tfrecords' folder, "
                               f"got {entry!r}", path=path)
        tfr = entry.get("tfrecords")
        if tfr is None:
            continue   # a source without tfrecords (slides only) has nothing to read here
        if not isinstance(tfr, str) or not tfr:
            raise ProjectError(f"key {name}.tfrecords must be a folder path, got {tfr!r}",
                               path=path)
        out[name] = _resolve(base, tfr)
    return out


def _load_slideflow(settings: str, data: dict) -> Project:
    root = os.path.dirname(settings)
    unknown = [k for k in data if k not in SLIDEFLOW_KEYS and k != "datasets"]
    if unknown:
        warnings.warn(f"{settings}: setting(s) {', '.join(map(repr, unknown))} are not read by "
                      f"tilespec (known: {', '.join(SLIDEFLOW_KEYS)})", stacklevel=3)
    for key in ("annotations", "dataset_config"):
        if key not in data:
            raise ProjectError(f"missing setting {key!r} (a slideflow project names its "
                               "annotations and its dataset configuration)", path=settings)
        if not isinstance(data[key], str) or not data[key]:
            raise ProjectError(f"{key!r} must be a path (string), got {data[key]!r}",
                               path=settings)
    key = "sources" if "sources" in data else "datasets"
    names = data.get(key)
    if names is None:
        raise ProjectError("missing setting 'sources' (the dataset sources of the project)",
                           path=settings)
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ProjectError(f"{key!r} must be a non-empty list of source names, got "
                           f"{data[key]!r}", path=settings)
    name = data.get("name", os.path.basename(root))
    if not isinstance(name, str):
        raise ProjectError(f"'name' must be a string, got {name!r}", path=settings)
    ann_path = _resolve(root, data["annotations"])
    if not os.path.isfile(ann_path):
        raise ProjectError(f"'annotations': annotations file {ann_path} not found",
                           path=settings)
    config = _resolve(root, data["dataset_config"])
    available = _read_dataset_config(config, settings)
    with_entry = set(_read_json(config))
    missing = [n for n in names if n not in with_entry]
    if missing:
        raise ProjectError(f"{key!r} names source(s) {', '.join(map(repr, missing))}, which "
                           f"{config} does not have (it has: "
                           f"{', '.join(map(repr, sorted(with_entry))) or 'none'})",
                           path=settings)
    no_tfr = [n for n in names if n not in available]
    if no_tfr:
        raise ProjectError(f"source(s) {', '.join(map(repr, no_tfr))} have no 'tfrecords' "
                           "folder", path=config)
    models = data.get("models_dir", "./models")
    if not isinstance(models, str) or not models:
        raise ProjectError(f"'models_dir' must be a path (string), got {models!r}",
                           path=settings)
    sources = {n: available[n] for n in names}
    return Project(root, name, ann_path, list(sources.values()), sources=sources,
                   dataset_config=config, models_dir=_resolve(root, models), settings=settings)


def load_project(path) -> Project:
    """Read a project folder (or its settings.json), in tilespec's or slideflow's layout.

    spec/dataset.md, "Projects".
    """
    settings = _settings_path(path)
    if not os.path.isfile(settings):
        raise ProjectError("project settings file not found", path=settings)
    data = _read_json(settings)
    if not isinstance(data, dict):
        raise ProjectError(f"settings must be a JSON object, not {type(data).__name__}",
                           path=settings)
    if "dataset_config" in data or "sources" in data:
        if "tfrecords" in data:
            raise ProjectError("settings mix tilespec's layout ('tfrecords') with slideflow's "
                               "('dataset_config'/'sources'); use one", path=settings)
        return _load_slideflow(settings, data)
    unknown = [k for k in data if k not in SETTINGS_KEYS]
    if unknown:
        raise ProjectError(f"unknown setting(s) {', '.join(map(repr, unknown))}; known: "
                           + ", ".join(SETTINGS_KEYS)
                           + " (or slideflow's layout: dataset_config, sources, ...)",
                           path=settings)
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
    models = data.get("models_dir", "models")
    if not isinstance(models, str) or not models:
        raise ProjectError(f"'models_dir' must be a path (string), got {models!r}",
                           path=settings)
    ann_path = os.path.normpath(os.path.join(root, ann))
    if not os.path.isfile(ann_path):
        raise ProjectError(f"annotations file {ann_path} not found", path=settings)
    tfr_paths = [os.path.normpath(os.path.join(root, t)) for t in tfr]
    for t in tfr_paths:
        if not os.path.exists(t):
            raise ProjectError(f"tfrecords folder {t} not found", path=settings)
    return Project(root, name, ann_path, tfr_paths, models_dir=_resolve(root, models),
                   settings=settings)


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
           "create_project", "tile_size_label", "check_tile_um", "KNOWN_LOSSES",
           "balance_and_clip"]
