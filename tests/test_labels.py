"""spec/dataset.md, "Labels"."""

import pytest
from hypothesis import given, strategies as st

import tilespec
from tilespec.annotations import LabelError, annotations_from_rows
from tilespec.labels import category_keys, is_float_values, make_labels

ROWS = [
    {"patient": "p1", "slide": "s1", "kind": "tumor", "grade": "2", "age": "61.5", "note": "x"},
    {"patient": "p1", "slide": "s2", "kind": "tumor", "grade": "3", "age": "61.5", "note": ""},
    {"patient": "p2", "slide": "s3", "kind": "normal", "grade": "1", "age": "40", "note": "y"},
    {"patient": "p3", "slide": "s4", "kind": "benign", "grade": "1", "age": "NA", "note": "z"},
]
ANN = annotations_from_rows(ROWS)
SLIDES = ["s1", "s2", "s3", "s4"]


def test_categorical_indices_into_sorted_unique():
    labels, unique = make_labels(ANN, SLIDES, "kind")
    assert unique == ["benign", "normal", "tumor"]
    assert labels == {"s1": 2, "s2": 2, "s3": 1, "s4": 0}
    for s, i in labels.items():
        assert unique[i] == ANN.rows[s]["kind"]


def test_format_name():
    labels, unique = make_labels(ANN, SLIDES, "kind", format="name")
    assert labels == {"s1": "tumor", "s2": "tumor", "s3": "normal", "s4": "benign"}
    assert unique == ["benign", "normal", "tumor"]


def test_float_labels_and_auto():
    labels, unique = make_labels(ANN, SLIDES[:3], "age", use_float=True)
    assert labels == {"s1": 61.5, "s2": 61.5, "s3": 40.0}
    assert unique == []
    # 'auto': grade parses everywhere -> float; age has 'NA' -> categorical
    labels, unique = make_labels(ANN, SLIDES, ["grade", "age"], use_float="auto")
    assert labels["s1"] == [2.0, 1] and labels["s4"] == [1.0, 2]
    assert unique == {"grade": [], "age": ["40", "61.5", "NA"]}


def test_float_error_names_slide_header_value():
    with pytest.raises(LabelError, match=r"slide 's4', header 'age': value 'NA' is not a number"):
        make_labels(ANN, SLIDES, "age", use_float=True)
    rows = [dict(ROWS[0], age="inf")]
    with pytest.raises(LabelError, match="not a finite number"):
        make_labels(annotations_from_rows(rows), ["s1"], "age", use_float=True)


def test_use_float_dict():
    labels, unique = make_labels(ANN, SLIDES, ["kind", "grade"],
                                 use_float={"kind": False, "grade": True})
    assert labels["s2"] == [2, 3.0]
    assert unique == {"kind": ["benign", "normal", "tumor"], "grade": []}
    with pytest.raises(LabelError, match="missing 'grade'"):
        make_labels(ANN, SLIDES, ["kind", "grade"], use_float={"kind": False})
    with pytest.raises(LabelError, match="not in headers 'age'"):
        make_labels(ANN, SLIDES, "kind", use_float={"kind": False, "age": True})
    with pytest.raises(LabelError, match="True or False"):
        make_labels(ANN, SLIDES, "kind", use_float={"kind": "yes"})
    with pytest.raises(LabelError, match="use_float must be"):
        make_labels(ANN, SLIDES, "kind", use_float="maybe")


def test_several_headers_give_lists():
    labels, unique = make_labels(ANN, SLIDES, ["kind", "grade"])
    assert labels == {"s1": [2, 1], "s2": [2, 2], "s3": [1, 0], "s4": [0, 0]}
    assert unique == {"kind": ["benign", "normal", "tumor"], "grade": ["1", "2", "3"]}


def test_assign():
    assign = {"kind": {"normal": 0, "tumor": 1, "benign": 2, "unseen": 3}}
    labels, unique = make_labels(ANN, SLIDES, "kind", assign=assign)
    assert unique == ["normal", "tumor", "benign", "unseen"]
    assert labels == {"s1": 1, "s2": 1, "s3": 0, "s4": 2}
    with pytest.raises(LabelError, match="value 'benign' is not in assign"):
        make_labels(ANN, SLIDES, "kind", assign={"kind": {"normal": 0, "tumor": 1}})
    with pytest.raises(LabelError, match="indices must be 0..1"):
        make_labels(ANN, SLIDES[:3], "kind", assign={"kind": {"normal": 0, "tumor": 2}})
    with pytest.raises(LabelError, match="not among the headers"):
        make_labels(ANN, SLIDES, "kind", assign={"grade": {"1": 0}})
    with pytest.raises(LabelError, match="read as float"):
        make_labels(ANN, SLIDES, "grade", use_float=True, assign={"grade": {"1": 0}})
    with pytest.raises(LabelError, match="not an integer"):
        make_labels(ANN, SLIDES[:1], "kind", assign={"kind": {"tumor": "0"}})


def test_blank_value_is_an_error():
    with pytest.raises(LabelError, match=r"slide 's2' \(row 1\) has a blank value for header "
                                         r"'note'.*filter_blank"):
        make_labels(ANN, SLIDES, "note")


def test_bad_arguments():
    with pytest.raises(LabelError, match="format must be"):
        make_labels(ANN, SLIDES, "kind", format="int")
    with pytest.raises(tilespec.annotations.AnnotationError, match="unknown header 'stage'"):
        make_labels(ANN, SLIDES, "stage")
    with pytest.raises(LabelError, match="listed twice"):
        make_labels(ANN, SLIDES, ["kind", "kind"])
    with pytest.raises(LabelError, match="headers is empty"):
        make_labels(ANN, SLIDES, [])
    with pytest.raises(LabelError, match="string or a list"):
        make_labels(ANN, SLIDES, 3)


def test_category_keys_refuses_floats_unless_forced():
    with pytest.raises(LabelError, match="'grade' look like floats"):
        category_keys(ANN, SLIDES, "grade")
    assert category_keys(ANN, SLIDES, "grade", force=True) == [("2",), ("3",), ("1",), ("1",)]
    assert category_keys(ANN, SLIDES, ["kind", "grade"], force=True)[0] == ("tumor", "2")


@given(st.lists(st.sampled_from(["a", "b", "c", "1", "2.5", "-3", "1e3", "nan", ""]),
                min_size=1, max_size=8))
def test_is_float_values(values):
    expect = all(v not in ("a", "b", "c", "nan", "") for v in values)
    assert is_float_values(values) == expect


@given(st.lists(st.text(alphabet="abcXYZ_-", min_size=1, max_size=4), min_size=1, max_size=10))
def test_index_labels_round_trip(values):
    rows = [{"patient": f"p{i}", "slide": f"s{i}", "h": v} for i, v in enumerate(values)]
    ann = annotations_from_rows(rows)
    slides = [f"s{i}" for i in range(len(values))]
    labels, unique = make_labels(ann, slides, "h")
    assert unique == sorted(set(values))
    assert [unique[labels[s]] for s in slides] == values


def test_demo_dataset_example(demo_dataset):
    """Worked example of spec/dataset.md, "Labels"."""
    ds = tilespec.Dataset(demo_dataset["tfrecords"], demo_dataset["annotations"])
    labels, unique = ds.labels("category")
    assert unique == ["normal", "tumor"]
    assert labels == {"slide-a1": 1, "slide-a2": 1, "slide-b1": 0, "slide-c1": 1,
                      "slide-d1": 0, "slide-d2": 0}
    labels, unique = ds.labels(["category", "site"])
    assert labels["slide-c1"] == [1, 1]
    assert unique == {"category": ["normal", "tumor"], "site": ["site-1", "site-2"]}
    # labels cover the dataset's slides only
    sub = ds.filter({"site": "site-2"})
    assert set(sub.labels("category")[0]) == {"slide-c1", "slide-d1", "slide-d2"}
    ages, _ = ds.labels("age", use_float="auto")
    assert all(isinstance(v, float) for v in ages.values())
    assert ds.is_float("age") and not ds.is_float("site")
