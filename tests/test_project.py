"""spec/dataset.md, "Projects" and "Training configuration"."""

import json
import os
import warnings

import pytest

import tilespec
from tilespec.annotations import ProjectError, SplitError
from tilespec.project import FoldDatasets, create_project, fold_datasets, load_project


@pytest.fixture()
def project(demo_dataset, tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    (root / "settings.json").write_text(json.dumps({
        "name": "demo",
        "annotations": os.path.relpath(demo_dataset["annotations"], root),
        "tfrecords": [os.path.relpath(demo_dataset["tfrecords"], root)],
    }))
    return load_project(str(root))


def test_load_project_and_dataset(project, demo_dataset):
    assert project.name == "demo"
    assert project.annotations == os.path.normpath(demo_dataset["annotations"])
    ds = project.dataset()
    assert len(ds.tfrecords()) == 6
    assert project.dataset(filters={"category": ["tumor"]}).slides() == [
        "slide-a1", "slide-a2", "slide-c1"]
    # the settings file itself may be given
    again = load_project(os.path.join(project.root, "settings.json"))
    assert again.tfrecords == project.tfrecords


def test_create_project(demo_dataset, tmp_path):
    p = create_project(tmp_path / "new", demo_dataset["annotations"], demo_dataset["tfrecords"])
    assert p.name == "new" and p.dataset().num_tiles == 144
    with pytest.raises(ProjectError, match="already exists"):
        create_project(tmp_path / "new", demo_dataset["annotations"], demo_dataset["tfrecords"])


@pytest.mark.parametrize("content,match", [
    (None, "project settings file not found"),
    ("{", "not valid JSON: .* line 1"),
    ("[]", "must be a JSON object"),
    ('{"annotations": "a.csv", "tfrecords": "t", "models": "m"}', "unknown setting"),
    ('{"tfrecords": "t"}', "missing setting 'annotations'"),
    ('{"annotations": "a.csv"}', "missing setting 'tfrecords'"),
    ('{"annotations": 3, "tfrecords": "t"}', "'annotations' must be a path"),
    ('{"annotations": "a.csv", "tfrecords": []}', "'tfrecords' must be a path or a non-empty"),
    ('{"annotations": "a.csv", "tfrecords": "t", "name": 1}', "'name' must be a string"),
    ('{"annotations": "missing.csv", "tfrecords": "t"}', "annotations file .*missing.csv not"),
    ('{"annotations": "a.csv", "tfrecords": "nowhere"}', "tfrecords folder .*nowhere not found"),
])
def test_bad_settings(tmp_path, content, match):
    (tmp_path / "a.csv").write_text("patient,slide\n")
    (tmp_path / "t").mkdir()
    if content is not None:
        (tmp_path / "settings.json").write_text(content)
    with pytest.raises(ProjectError, match=match) as e:
        load_project(tmp_path)
    assert str(e.value).startswith(str(tmp_path / "settings.json"))


def test_model_params():
    hp = tilespec.ModelParams(training_balance="tile", validation_balance=None)
    assert hp.training_balance == "tile" and hp.validation_balance is None
    assert tilespec.ModelParams().training_balance == "category"
    assert tilespec.ModelParams().validation_balance == "none"
    reg = tilespec.ModelParams(loss="mean_squared_error")
    assert reg.model_type() == "regression" and reg.training_balance == "patient"
    assert tilespec.ModelParams(loss="negative_log_likelihood").model_type() == "survival"
    assert tilespec.ModelParams(loss="custom_regression").model_type() == "regression"
    assert tilespec.ModelParams(loss="MSE").model_type() == "regression"
    assert hp == tilespec.ModelParams(training_balance="tile", validation_balance=None)
    with pytest.raises(ProjectError, match="unknown training_balance 'tiles'"):
        tilespec.ModelParams(training_balance="tiles")
    with pytest.raises(ProjectError, match="unknown validation_balance 'auto'"):
        tilespec.ModelParams(validation_balance="auto")
    with pytest.raises(ProjectError, match="needs a classification loss"):
        tilespec.ModelParams(loss="mean_squared_error", validation_balance="category")
    with pytest.raises(ProjectError, match="batch_size must be a positive integer"):
        tilespec.ModelParams(batch_size=0)
    with pytest.raises(TypeError):
        tilespec.ModelParams(not_a_param=1)


def test_fold_datasets_docs_example(project):
    """The docs' "During training" example: training_balance='tile', validation_balance=None,
    max_tiles=100 (here 20), propagated to every fold."""
    hp = tilespec.ModelParams(training_balance="tile", validation_balance=None)
    folds = list(project.fold_datasets("category", hp, val_k_fold=2, max_tiles=20))
    assert [f.fold for f in folds] == [1, 2]
    every = set()
    for f in folds:
        assert isinstance(f, FoldDatasets)
        assert not set(f.train.patients().values()) & set(f.val.patients().values())
        every |= set(f.val.slides())
        for ds in (f.train, f.val):
            assert ds.is_clipped and all(c == min(n["total"], 20)
                                         for c, n in zip(ds.clip_counts.values(),
                                                         ds.manifest().values()))
        tab = f.train.sampling_table()
        assert f.train.prob_weights is not None
        assert list(f.train.prob_weights.values()) == pytest.approx(list(tab.clip / tab.clip.sum()))
        assert f.val.prob_weights is None
    assert every == set(project.dataset().slides())


def test_fold_datasets_defaults_and_strategies(project):
    hp = tilespec.ModelParams()          # 'auto' -> category for classification
    (f,) = fold_datasets(project.dataset(), "category", hp, val_strategy="fixed",
                         val_fraction=0.5, seed=1)
    cats = f.train.labels("category", format="name")[0]
    mass = {}
    for p, w in f.train.prob_weights.items():
        c = cats[os.path.basename(p)[:-10]]
        mass[c] = mass.get(c, 0) + w
    assert all(v == pytest.approx(1 / len(mass)) for v in mass.values())
    (none,) = fold_datasets(project.dataset(), "category", hp, val_strategy="none")
    assert none.val is None and len(none.train.tfrecords()) == 6
    reg = tilespec.ModelParams(loss="mean_squared_error", validation_balance="patient")
    folds = list(fold_datasets(project.dataset(), "age", reg, val_k_fold=2))
    assert all(f.val.prob_weights is not None for f in folds)
    with pytest.raises(ProjectError, match="unknown val_strategy"):
        list(fold_datasets(project.dataset(), "category", hp, val_strategy="bootstrap"))
    with pytest.raises(ProjectError, match="params must be a ModelParams"):
        list(fold_datasets(project.dataset(), "category", {"training_balance": "tile"}))
    with pytest.raises(SplitError, match="cannot make 9 folds"):
        list(fold_datasets(project.dataset(), "category", hp, val_k_fold=9))


def test_fold_datasets_keeps_a_configured_dataset(project):
    ds = project.dataset().balance(strategy="patient").clip(5)
    hp = tilespec.ModelParams(training_balance="tile")
    with pytest.warns(UserWarning) as rec:
        folds = list(project.fold_datasets("category", hp, dataset=ds, val_k_fold=2,
                                           max_tiles=30))
    text = " ".join(str(r.message) for r in rec)
    assert "ignoring training_balance='tile'" in text and "ignoring max_tiles=30" in text
    for f in folds:
        assert set(f.train.clip_counts.values()) == {5}
        pts = f.train.patients()
        mass = {}
        for p, w in f.train.prob_weights.items():
            mass[pts[os.path.basename(p)[:-10]]] = mass.get(pts[os.path.basename(p)[:-10]],
                                                             0) + w
        assert all(v == pytest.approx(1 / len(mass)) for v in mass.values())


def test_fold_datasets_filters_blank_outcomes(tmp_path, demo_dataset):
    import csv
    rows = list(csv.DictReader(open(demo_dataset["annotations"])))
    rows[0]["category"] = ""
    hp = tilespec.ModelParams()
    ds = tilespec.Dataset(demo_dataset["tfrecords"], rows)
    folds = list(fold_datasets(ds, "category", hp, val_k_fold=2))
    seen = set()
    for f in folds:
        seen |= set(f.val.slides())
    assert "slide-a1" not in seen and len(seen) == 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reg = tilespec.ModelParams(loss="mean_squared_error")
        from tilespec.annotations import LabelError
        with pytest.raises(LabelError, match="is not a number"):
            list(fold_datasets(ds, "site", reg))
