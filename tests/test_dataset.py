"""spec/dataset.md: building datasets, annotations, balancing, clipping, splits, sampling table."""

import os
import tempfile
import warnings
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tilespec
from tilespec.annotations import (AnnotationError, BalanceError, ClipError, DatasetError,
                                  DatasetMismatchWarning, LabelError, SplitError)
from tilespec.dataset import (EmptyTFRecordWarning, fixed_split_patients, kfold_patients,
                              patient_order)
from tilespec.errors import TFRecordError
from tilespec.example import encode_tile
from tilespec.records import write_records

DEMO_N = {"slide-a1": 40, "slide-a2": 16, "slide-b1": 24, "slide-c1": 12, "slide-d1": 32,
          "slide-d2": 20}


def write_table(root, table, *, folder="tfrecords"):
    """Write tiny tfrecords for ``table`` [(slide, patient, category, n)]; return (folder, rows)."""
    path = os.path.join(str(root), folder)
    os.makedirs(path, exist_ok=True)
    for slide, _, _, n in table:
        write_records(os.path.join(path, f"{slide}.tfrecords"),
                      [encode_tile(bytes([i % 256]), slide) for i in range(n)])
    rows = [{"patient": p, "slide": s, "category": c} for s, p, c, _ in table]
    return path, rows


def quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return tilespec.Dataset(*args, **kwargs)


@pytest.fixture(scope="module")
def demo(demo_dataset):
    return quiet(demo_dataset["tfrecords"], demo_dataset["annotations"])


def by_slide(ds, mapping):
    return {os.path.basename(p)[: -len(".tfrecords")]: v for p, v in mapping.items()}


def fracs(mapping):
    return {k: Fraction(v).limit_denominator(10_000) for k, v in mapping.items()}


# -- building ----------------------------------------------------------------------------------

def test_demo_basics(demo, demo_dataset):
    assert demo.tfrecords() == sorted(os.path.abspath(p) for p in demo_dataset["paths"])
    assert demo.slides() == sorted(DEMO_N)
    assert by_slide(demo, {p: m["total"] for p, m in demo.manifest().items()}) == DEMO_N
    assert demo.manifest(key="name")["slide-a1"] == {"total": 40, "clipped": 40}
    assert demo.num_tiles == sum(DEMO_N.values())
    assert demo.patients()["slide-d2"] == "patient-d"
    assert demo.prob_weights is None and demo.clip_counts == {} and demo._clip == {}
    assert demo.unmatched_tfrecords == [] and demo.missing_slides == []
    assert not demo.is_balanced and not demo.is_clipped


def test_sources_folder_list_paths_rows(tmp_path):
    folder, rows = write_table(tmp_path, [("s1", "p1", "A", 3), ("s2", "p2", "B", 2)])
    folder2, rows2 = write_table(tmp_path, [("t1", "p3", "A", 1)], folder="more")
    a = quiet([folder, folder2], rows + rows2)
    b = quiet([os.path.join(folder2, "t1.tfrecords"), os.path.join(folder, "s2.tfrecords"),
               os.path.join(folder, "s1.tfrecords")], rows + rows2)
    assert a.tfrecords() == b.tfrecords() == sorted(a.tfrecords())
    assert a.slides() == ["s1", "s2", "t1"]
    # relative paths become absolute
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        c = quiet("tfrecords", rows)
    finally:
        os.chdir(cwd)
    assert c.tfrecords() == [os.path.join(folder, "s1.tfrecords"),
                             os.path.join(folder, "s2.tfrecords")]


def test_mismatches_are_reported(tmp_path):
    folder, rows = write_table(tmp_path, [("s1", "p1", "A", 3), ("s2", "p2", "B", 2),
                                          ("orphan", "p9", "A", 1)])
    rows = rows[:2] + [{"patient": "p5", "slide": "ghost", "category": "A"},
                       {"patient": "p6", "slide": "filtered-out", "category": "C"}]
    with pytest.warns(DatasetMismatchWarning) as rec:
        ds = tilespec.Dataset(folder, rows, filters={"category": ["A", "B"]})
    msg = str(rec[0].message)
    assert "1 tfrecord(s) have no annotation row" in msg and "orphan.tfrecords" in msg
    assert "1 annotated slide(s) have no tfrecord: ghost" in msg
    assert "filtered-out" not in msg
    assert ds.slides() == ["s1", "s2"]
    assert ds.unmatched_tfrecords == [os.path.join(folder, "orphan.tfrecords")]
    assert ds.missing_slides == ["ghost"]


def test_mismatch_listing_is_truncated(tmp_path):
    folder, rows = write_table(tmp_path, [("s1", "p1", "A", 1)])
    rows += [{"patient": f"q{i}", "slide": f"g{i:02d}", "category": "A"} for i in range(25)]
    with pytest.warns(DatasetMismatchWarning, match=r"25 annotated slide\(s\).*g19, \.\.\. "
                                                    r"and 5 more \(see Dataset.missing_slides\)"):
        ds = tilespec.Dataset(folder, rows)
    assert len(ds.missing_slides) == 25


def test_filters(tmp_path):
    table = [("s1", "p1", "A", 3), ("s2", "p2", "B", 2), ("s3", "p3", "", 4)]
    folder, rows = write_table(tmp_path, table)
    assert quiet(folder, rows, filters={"category": ["A"]}).slides() == ["s1"]
    assert quiet(folder, rows, filters={"category": "B"}).slides() == ["s2"]
    assert quiet(folder, rows, filter_blank="category").slides() == ["s1", "s2"]
    assert quiet(folder, rows, filters={"patient": ("p1", "p3")},
                 filter_blank=["category"]).slides() == ["s1"]
    ds = quiet(folder, rows)
    sub = ds.filter({"category": ["A", "B"]}).filter(filter_blank="category")
    assert sub.slides() == ["s1", "s2"] and sub.filter_blank == ["category"]
    assert sub.filter({"category": ["B", "C"]}).slides() == ["s2"]
    assert sub.filters == {"category": ["A", "B"]}
    with pytest.raises(AnnotationError, match="unknown filter header 'grade'.*patient, slide, "
                                              "category"):
        quiet(folder, rows, filters={"grade": ["1"]})
    with pytest.raises(AnnotationError, match="unknown filter_blank header 'x'"):
        quiet(folder, rows, filter_blank="x")
    with pytest.raises(DatasetError, match="empty dataset.*filters=\\{'category': \\['Z'\\]\\}"):
        quiet(folder, rows, filters={"category": ["Z"]})
    with pytest.raises(DatasetError, match="empty dataset"):
        ds.filter({"category": ["Z"]})
    # numbers in filters compare as text
    rows_n = [dict(r, category=str(i)) for i, r in enumerate(rows)]
    assert quiet(folder, rows_n, filters={"category": [1]}).slides() == ["s2"]


# -- annotations -------------------------------------------------------------------------------

def write_csv(tmp_path, text, name="ann.csv"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return str(p)


def test_csv_annotations(tmp_path):
    folder, _ = write_table(tmp_path, [("s1", "p1", "A", 2), ("s2", "p2", "B", 1)])
    csv_path = write_csv(tmp_path, "\ufeffpatient, slide ,category\np1,s1, A \n\np2,s2,B\n")
    ds = quiet(folder, csv_path)
    assert ds.annotations.columns == ("patient", "slide", "category")
    assert ds.labels("category", format="name")[0] == {"s1": "A", "s2": "B"}
    assert ds.annotations.where["s2"] == "line 4"


@pytest.mark.parametrize("text,match", [
    ("slide,category\ns1,A\n", "missing required column 'patient' \\(columns found: slide, "
                               "category\\)"),
    ("patient,category\np1,A\n", "missing required column 'slide'"),
    ("patient,slide,x,x\np1,s1,1,2\n", "duplicate column header\\(s\\): x"),
    ("patient,slide,\np1,s1,1\n", "column 3 has an empty header name"),
    ("patient,slide,c\np1,s1\n", "line 2 has 2 fields, the header has 3"),
    ("patient,slide,c\np1,,A\n", "line 2: blank 'slide'"),
    ("patient,slide,c\n,s1,A\n", "line 2: blank 'patient'"),
    ("patient,slide,c\np1,s1,A\np2,s1,B\n",
     "slide 's1' appears twice, at line 2 and line 3; they conflict in 'patient' \\('p1' vs "
     "'p2'\\), 'c' \\('A' vs 'B'\\)"),
    ("patient,slide,c\np1,s1,A\np1,s1,A\n", "appears twice.*identical rows"),
    ("\n\n", "empty"),
])
def test_bad_csv(tmp_path, text, match):
    folder, _ = write_table(tmp_path, [("s1", "p1", "A", 1)])
    path = write_csv(tmp_path, text)
    with pytest.raises(AnnotationError, match=match) as e:
        tilespec.Dataset(folder, path)
    assert e.value.path == path and str(e.value).startswith(path)
    assert isinstance(e.value, TFRecordError) and isinstance(e.value, ValueError)


def test_bad_annotation_sources(tmp_path):
    folder, rows = write_table(tmp_path, [("s1", "p1", "A", 1)])
    with pytest.raises(AnnotationError, match="annotations file not found"):
        tilespec.Dataset(folder, str(tmp_path / "nope.csv"))
    with pytest.raises(AnnotationError, match="CSV path, a list of row dicts or a data frame"):
        tilespec.Dataset(folder, 42)
    with pytest.raises(AnnotationError, match="row 1 does not have the columns of row 0; "
                                              "missing 'category'"):
        tilespec.Dataset(folder, rows + [{"patient": "p2", "slide": "s2"}])
    with pytest.raises(AnnotationError, match="row 0 is a str"):
        tilespec.Dataset(folder, ["patient,slide"])
    with pytest.raises(AnnotationError, match="list of rows is empty"):
        tilespec.Dataset(folder, [])
    (tmp_path / "latin.csv").write_bytes(b"patient,slide\np\xe9,s1\n")
    with pytest.raises(AnnotationError, match="not UTF-8"):
        tilespec.Dataset(folder, str(tmp_path / "latin.csv"))
    # row dict values that are not text are written with str; None is blank
    ds = quiet(folder, [{"patient": "p1", "slide": "s1", "category": 7, "x": None}])
    assert ds.annotations.rows["s1"]["category"] == "7" and ds.annotations.rows["s1"]["x"] == ""


def test_bad_tfrecord_sources(tmp_path):
    folder, rows = write_table(tmp_path, [("s1", "p1", "A", 1)])
    other, _ = write_table(tmp_path, [("s1", "p1", "A", 2)], folder="dup")
    with pytest.raises(DatasetError, match="two tfrecords have the stem 's1'"):
        tilespec.Dataset([folder, other], rows)
    with pytest.raises(DatasetError, match="not found"):
        tilespec.Dataset(str(tmp_path / "missing"), rows)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a tfrecord file"):
        tilespec.Dataset(str(tmp_path / "notes.txt"), rows)
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DatasetError, match="no tfrecords found"):
        tilespec.Dataset(str(tmp_path / "empty"), rows)
    with pytest.raises(DatasetError, match="list of folders/paths is empty"):
        tilespec.Dataset([], rows)
    with pytest.raises(DatasetError, match="empty dataset"), \
            pytest.warns(DatasetMismatchWarning, match="no annotation row"):
        tilespec.Dataset(folder, [{"patient": "p", "slide": "other"}])


# Table E with two empty tfrecords: e1 of a patient (P5) and a category (C) of its own,
# e2 of patient P1 and category A, which have records elsewhere.
TABLE_E = [("s1", "P1", "A", 30), ("s2", "P1", "A", 10), ("s3", "P2", "A", 25),
           ("s4", "P3", "B", 50), ("s5", "P4", "B", 5)]
EMPTY_E = [("e1", "P5", "C", 0), ("e2", "P1", "A", 0)]


def _with_and_without_empty(tmp_path):
    folder, rows = write_table(tmp_path / "with", TABLE_E + EMPTY_E)
    with pytest.warns(EmptyTFRecordWarning) as seen:
        full = tilespec.Dataset(folder, rows)
    folder, rows = write_table(tmp_path / "without", TABLE_E)
    return full, quiet(folder, rows), seen


def test_empty_tfrecords_are_kept_with_0_tiles_and_one_warning(tmp_path):
    """spec/dataset.md, "Empty tfrecords" (semantics 1, revision 2)."""
    full, _, seen = _with_and_without_empty(tmp_path)
    assert len(seen) == 1  # one warning naming both files
    message = str(seen[0].message)
    assert "2 of the 7 tfrecord(s) are empty" in message
    assert all(os.path.join("with", "tfrecords", f"{s}.tfrecords") in message
               for s in ("e1", "e2"))
    assert full.slides() == ["e1", "e2", "s1", "s2", "s3", "s4", "s5"]
    assert full.manifest(key="name")["e1"] == {"total": 0, "clipped": 0}
    assert [os.path.basename(p) for p in full.empty_tfrecords()] == ["e1.tfrecords",
                                                                     "e2.tfrecords"]
    assert full.num_tiles == 120
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # derived datasets do not warn again
        full.balance(strategy="patient").clip(20).filter({"category": ["A", "C"]})


@pytest.mark.parametrize("strategy", ["slide", "tile", "patient", "category"])
def test_empty_tfrecords_get_weight_0_and_the_rest_as_without_them(tmp_path, strategy):
    """spec/dataset.md, "Empty tfrecords": w_t = 0 and the others' weights are those of
    the dataset without the empty tfrecords (T, P, K and m_g count non-empty ones)."""
    full, bare, _ = _with_and_without_empty(tmp_path)
    headers = "category" if strategy == "category" else None
    for a, b in ((full, bare), (full.clip(20), bare.clip(20))):
        wa = {os.path.basename(p): w for p, w in a.balance(headers, strategy).prob_weights.items()}
        wb = {os.path.basename(p): w for p, w in b.balance(headers, strategy).prob_weights.items()}
        assert wa.pop("e1.tfrecords") == wa.pop("e2.tfrecords") == 0.0
        assert wa == pytest.approx(wb, rel=1e-15, abs=0)
    # the unbalanced sampling table: 'slide' weights over the non-empty tfrecords
    t = full.sampling_table()
    assert t.weights.tolist() == [0.0, 0.0] + [0.2] * 5 and t.counts[:2].tolist() == [0, 0]


@pytest.mark.parametrize("call", [lambda d: d.clip(strategy="slide"),
                                  lambda d: d.clip(7, strategy="slide"),
                                  lambda d: d.clip(strategy="patient"),
                                  lambda d: d.clip(30, strategy="patient"),
                                  lambda d: d.clip(strategy="category", headers="category"),
                                  lambda d: d.clip(3)])
def test_empty_tfrecords_take_no_part_in_clipping(tmp_path, call):
    full, bare, _ = _with_and_without_empty(tmp_path)
    ca = {os.path.basename(p): c for p, c in call(full).clip_counts.items()}
    cb = {os.path.basename(p): c for p, c in call(bare).clip_counts.items()}
    assert ca.pop("e1.tfrecords") == ca.pop("e2.tfrecords") == 0
    assert ca == cb
    assert sum(cb.values()) > 0  # an empty tfrecord's 0 is not the smallest count


def test_a_dataset_of_empty_tfrecords_builds_and_refuses_to_balance_or_load(tmp_path):
    folder, rows = write_table(tmp_path, EMPTY_E)
    with pytest.warns(EmptyTFRecordWarning, match="2 of the 2 tfrecord"):
        ds = tilespec.Dataset(folder, rows)
    assert ds.num_tiles == 0 and ds.sampling_table().weights.tolist() == [0.0, 0.0]
    assert ds.tile_size is None
    with pytest.raises(BalanceError, match="every one of the 2 tfrecord.*empty"):
        ds.balance(strategy="slide")
    for make in (lambda: ds.numpy(), lambda: ds.numpy(infinite=False, labels={"e1": 0}),
                 lambda: tilespec.IndexedInterleaver(ds.tfrecords())):
        with pytest.raises(DatasetError, match="every tfrecord of this loader is empty") as e:
            make()
        assert "e1.tfrecords" in str(e.value)


def test_unannotated_dataset(tmp_path):
    folder, _ = write_table(tmp_path, [("s1", "p1", "A", 3), ("s2", "p2", "B", 1)])
    ds = quiet(folder)
    assert ds.slides() == ["s1", "s2"]
    assert list(ds.balance(strategy="tile").prob_weights.values()) == [0.75, 0.25]
    assert ds.clip(2).num_tiles == 3
    for call in (ds.patients, lambda: ds.labels("category"),
                 lambda: ds.balance(strategy="patient"), lambda: ds.kfold_split(2),
                 lambda: ds.clip(strategy="patient")):
        with pytest.raises(AnnotationError, match="needs annotations"):
            call()
    # each message names the call that needed them
    for call, name in ((lambda: ds.balance(strategy="patient"), "balance(strategy='patient')"),
                       (lambda: ds.clip(strategy="patient"), "clip(strategy='patient')"),
                       (lambda: ds.clip(strategy="category", headers="category"),
                        "clip(strategy='category')"),
                       (lambda: ds.balance("category"), "balance(strategy='category')")):
        with pytest.raises(AnnotationError) as e:
            call()
        assert str(e.value).startswith(name + " needs annotations"), str(e.value)
    with pytest.raises(AnnotationError, match="need annotations"):
        tilespec.Dataset(folder, filters={"category": ["A"]})


# -- balancing ---------------------------------------------------------------------------------

def test_demo_worked_examples(demo):
    """spec/dataset.md, "Worked example (the demo dataset)"."""
    clipped = demo.clip(20, strategy="patient")
    assert by_slide(demo, clipped._clip) == {"slide-a1": 14, "slide-a2": 6, "slide-b1": 20,
                                              "slide-c1": 12, "slide-d1": 12, "slide-d2": 8}
    assert clipped.num_tiles == 72
    expect = {"slide-a1": Fraction(7, 36), "slide-a2": Fraction(1, 12), "slide-b1": Fraction(5, 18),
              "slide-c1": Fraction(1, 6), "slide-d1": Fraction(1, 6), "slide-d2": Fraction(1, 9)}
    assert fracs(by_slide(demo, clipped.balance(strategy="tile").prob_weights)) == expect
    assert fracs(by_slide(demo, demo.balance(strategy="tile").clip(20, "patient")
                          .prob_weights)) == expect
    site = demo.clip(strategy="category", headers="site")
    assert by_slide(demo, site.clip_counts) == {"slide-a1": 32, "slide-a2": 13, "slide-b1": 19,
                                                 "slide-c1": 12, "slide-d1": 32, "slide-d2": 20}
    assert fracs(by_slide(demo, demo.balance(strategy="patient").prob_weights)) == {
        "slide-a1": Fraction(1, 8), "slide-a2": Fraction(1, 8), "slide-b1": Fraction(1, 4),
        "slide-c1": Fraction(1, 4), "slide-d1": Fraction(1, 8), "slide-d2": Fraction(1, 8)}


def test_balance_and_clip_return_new_datasets(demo):
    b = demo.balance(strategy="tile")
    c = b.clip(10)
    assert demo.prob_weights is None and demo.clip_counts == {}
    assert b.clip_counts == {} and b.is_balanced and not b.is_clipped
    assert c.is_clipped and c.is_balanced
    assert set(c.clip_counts.values()) == {10}
    assert c.unclip().clip_counts == {} and c.unclip().is_balanced
    assert c.clip(0).clip_counts == {}
    assert demo.balance(strategy=None).prob_weights == demo.balance(strategy="none").prob_weights \
        == demo.balance(strategy="slide").prob_weights
    assert set(demo.balance(strategy="slide").prob_weights.values()) == {1 / 6}


def test_category_balance(demo):
    w = demo.balance("category").prob_weights
    assert all(v == pytest.approx(1 / 6) for v in w.values())
    w = by_slide(demo, demo.balance(["category", "site"], strategy="category").prob_weights)
    # categories (tumor, site-1) {a1, a2}, (normal, site-1) {b1}, (tumor, site-2) {c1},
    # (normal, site-2) {d1, d2}
    assert fracs(w) == {"slide-a1": Fraction(1, 8), "slide-a2": Fraction(1, 8),
                        "slide-b1": Fraction(1, 4), "slide-c1": Fraction(1, 4),
                        "slide-d1": Fraction(1, 8), "slide-d2": Fraction(1, 8)}


def test_balance_errors(demo, tmp_path):
    with pytest.raises(BalanceError, match="unknown balancing strategy 'tiles'"):
        demo.balance(strategy="tiles")
    with pytest.raises(BalanceError, match="needs headers"):
        demo.balance()
    with pytest.raises(BalanceError, match="only used with strategy='category'"):
        demo.balance("category", strategy="tile")
    with pytest.raises(AnnotationError, match="unknown header 'grade'"):
        demo.balance("grade")
    with pytest.raises(BalanceError, match="'age' look like floats.*force=True"):
        demo.balance("age", strategy="category")
    w = demo.balance("age", strategy="category", force=True).prob_weights
    assert sum(w.values()) == pytest.approx(1)
    folder, rows = write_table(tmp_path, [("s1", "p1", "A", 1), ("s2", "p2", "", 1)])
    with pytest.raises(LabelError, match="slide 's2' .* blank value for header 'category'"):
        quiet(folder, rows).balance("category")


def test_custom_prob_weights(demo):
    ds = demo.balance(strategy="tile")
    paths = ds.tfrecords()
    ds.prob_weights = {p: i for i, p in enumerate(paths)}
    assert list(ds.prob_weights.values()) == [i / 15 for i in range(6)]
    assert ds.sampling_table().weights.tolist() == [i / 15 for i in range(6)]
    # relative keys are made absolute
    rel = {os.path.relpath(p): 1 for p in paths}
    ds.prob_weights = rel
    assert set(ds.prob_weights.values()) == {1 / 6}
    bad = [
        ({p: 1 for p in paths[1:]}, "missing: " + paths[0]),
        (dict({p: 1 for p in paths}, **{"/x/y.tfrecords": 1}), "unknown: /x/y.tfrecords"),
        (dict({p: 1 for p in paths}, **{paths[2]: -0.5}), "negative"),
        ({p: 0 for p in paths}, "sum to 0"),
        (dict({p: 1 for p in paths}, **{paths[0]: float("nan")}), "not finite"),
        (dict({p: 1 for p in paths}, **{paths[0]: "1"}), "not a number"),
        ([1] * 6, "must be a dict"),
    ]
    for value, match in bad:
        with pytest.raises(BalanceError, match=match):
            ds.prob_weights = value
    assert set(ds.prob_weights.values()) == {1 / 6}   # unchanged by the failed assignments
    ds.prob_weights = None
    assert ds.prob_weights is None and not ds.is_balanced
    # custom weights survive a clip
    ds.prob_weights = {p: 2 if i == 0 else 1 for i, p in enumerate(paths)}
    assert ds.clip(5).prob_weights == ds.prob_weights


# -- clipping ----------------------------------------------------------------------------------

def test_clip_errors(demo):
    with pytest.raises(ClipError, match="max_tiles must be >= 0, got -1"):
        demo.clip(-1)
    with pytest.raises(ClipError, match="integer"):
        demo.clip(2.5)
    with pytest.raises(ClipError, match="unknown clipping strategy 'tile'"):
        demo.clip(5, strategy="tile")
    with pytest.raises(ClipError, match="needs headers"):
        demo.clip(5, strategy="category")
    with pytest.raises(ClipError, match="only used with strategy='category'"):
        demo.clip(5, strategy="patient", headers="site")
    with pytest.raises(ClipError, match="'age' look like floats"):
        demo.clip(strategy="category", headers="age")
    assert demo.clip(strategy="category", headers="age", force=True).num_tiles > 0


def test_custom_clip(demo):
    ds = demo.clip(10)
    paths = ds.tfrecords()
    ds._clip = {paths[0]: 5, paths[1]: 1000}
    assert ds.clip_counts == {paths[0]: 5, paths[1]: 16, **{p: DEMO_N[os.path.basename(p)[:-10]]
                                                           for p in paths[2:]}}
    assert ds.num_tiles == 5 + 16 + 24 + 12 + 32 + 20
    ds.clip_counts = {paths[0]: 0}
    assert ds.sampling_table().clip[0] == 0
    with pytest.raises(ClipError, match="not a tfrecord of this dataset"):
        ds._clip = {"/no/such.tfrecords": 3}
    with pytest.raises(ClipError, match="negative"):
        ds._clip = {paths[0]: -3}
    with pytest.raises(ClipError, match="not an integer"):
        ds._clip = {paths[0]: 2.0}
    with pytest.raises(ClipError, match="must be a dict"):
        ds._clip = [1, 2]
    assert ds.clip_counts[paths[0]] == 0      # unchanged by the failed assignments
    ds._clip = {}
    assert not ds.is_clipped and ds.num_tiles == sum(DEMO_N.values())
    # a new clip replaces a custom one, starting from n_t
    ds._clip = {paths[0]: 1}
    assert ds.clip(30).clip_counts[paths[0]] == 30
    # 'tile' after a custom all-zero clip has nothing to weigh
    ds._clip = {p: 0 for p in paths}
    with pytest.raises(BalanceError, match="every .*count is 0"):
        ds.balance(strategy="tile")


def test_assignment_cache_rule(demo):
    """spec/dataset.md, "Assigning weights and clip counts": an assignment forgets the
    derived clip counts and weights together; n_t stays; earlier derived datasets and
    loaders keep theirs."""
    ds = demo.balance(strategy="tile")
    paths = ds.tfrecords()
    before = ds.prob_weights                      # cached 'tile' weights of the unclipped counts
    table_before = ds.sampling_table()
    child = ds.clip(5)
    loader = ds.numpy(batch_size=4, infinite=False, seed=0)
    ds._clip = {p: 1 for p in paths}              # every c_t = 1: 'tile' weights become 1/6
    assert ds.prob_weights == {p: 1 / 6 for p in paths} != before
    assert ds.sampling_table().weights.tolist() == [1 / 6] * 6
    assert ds.num_tiles == 6 and ds.manifest()[paths[0]] == {"total": 40, "clipped": 1}
    ds.clip_counts = None                         # back to n_t: the weights follow again
    assert ds.prob_weights == before
    ds.prob_weights = {p: 1 if i == 0 else 0 for i, p in enumerate(paths)}
    assert ds.sampling_table().weights.tolist() == [1, 0, 0, 0, 0, 0]
    assert ds.sampling_table().counts.tolist() == table_before.counts.tolist()
    ds.prob_weights = None                        # unbalanced: the 'slide' weights
    assert ds.sampling_table().weights.tolist() == [1 / 6] * 6
    # what was derived or built before the assignments is unchanged
    assert child.clip_counts == {p: 5 for p in paths}
    assert child.prob_weights == {p: 1 / 6 for p in paths}
    assert loader.weights.tolist() == table_before.weights.tolist()
    assert loader.clip.tolist() == table_before.clip.tolist() == table_before.counts.tolist()


def test_custom_clip_one_rule(demo):
    """The dataset's clip_counts and the indexed loader's clip= are one rule
    (tilespec.balance.custom_clip), with one exception type."""
    from tilespec.balance import custom_clip
    from tilespec.loader import IndexedInterleaver

    paths = demo.tfrecords()
    n = demo.sampling_table().counts
    got = custom_clip({paths[0]: 1000, os.path.relpath(paths[1]): 3}, paths, n)
    assert got.tolist() == [40, 3] + n[2:].tolist()
    assert custom_clip([0, 100, 1, 2, 3, 4], paths, n).tolist() == [0, 16, 1, 2, 3, 4]
    assert custom_clip(None, paths, n).tolist() == n.tolist()
    ds = demo.clip(10)
    ds._clip = {paths[0]: 1000, paths[1]: 3}
    assert list(ds.clip_counts.values()) == got.tolist()
    assert len(IndexedInterleaver(paths, clip={paths[0]: 1000, paths[1]: 3})) == sum(got)
    for bad in ({"/no/such.tfrecords": 1}, {paths[0]: -1}, {paths[0]: 1.5}):
        with pytest.raises(ClipError) as e1:
            custom_clip(bad, paths, n)
        with pytest.raises(ClipError) as e2:
            IndexedInterleaver(paths, clip=bad)
        with pytest.raises(ClipError) as e3:
            ds._clip = bad
        assert str(e1.value) == str(e2.value) == str(e3.value)
    with pytest.raises(ClipError, match="clip has 1 entries for 6 tfrecords"):
        IndexedInterleaver(paths, clip=[1])
    with pytest.raises(ClipError, match=r"clip\['.*'\] = True is not an integer"):
        custom_clip([True] * 6, paths, n)


# -- property tests over random datasets --------------------------------------------------------

tables = st.lists(st.tuples(st.sampled_from("pqrs"), st.sampled_from("AB"), st.integers(1, 30)),
                  min_size=1, max_size=6)


def build(root, table):
    rows = [(f"s{i}", p, c, n) for i, (p, c, n) in enumerate(table)]
    folder, ann = write_table(root, rows)
    return quiet(folder, ann), [n for *_, n in rows]


@given(tables, st.integers(0, 40), st.sampled_from([None, "slide", "patient", "category"]),
       st.sampled_from(["slide", "tile", "patient", "category"]))
def test_dataset_properties(table, max_tiles, clip_strategy, bal_strategy):
    with tempfile.TemporaryDirectory() as root:
        ds, n = build(root, table)
        h = "category"
        c_args = dict(headers=h) if clip_strategy == "category" else {}
        b_args = dict(headers=h) if bal_strategy == "category" else {}
        if clip_strategy is None and not max_tiles:
            max_tiles = 1
        clipped = ds.clip(max_tiles, clip_strategy, **c_args)
        c = clipped.sampling_table().clip
        assert (c <= np.array(n)).all() and (c >= 0).all()
        if bal_strategy == "tile" and c.sum() == 0:
            return
        # either order gives the same weights: balance after clip uses clipped counts
        w1 = clipped.balance(strategy=bal_strategy, **b_args).prob_weights
        w2 = ds.balance(strategy=bal_strategy, **b_args).clip(max_tiles, clip_strategy,
                                                               **c_args).prob_weights
        assert w1 == w2
        w = np.array(list(w1.values()))
        assert (w >= 0).all() and w.sum() == pytest.approx(1)
        if bal_strategy == "slide":
            assert np.allclose(w, 1 / len(n))
        if bal_strategy == "tile":
            assert np.allclose(w, c / c.sum())
        if bal_strategy in ("patient", "category"):
            key = 0 if bal_strategy == "patient" else 1
            m = {}
            for (row, wt) in zip(table, w):
                m[row[key]] = m.get(row[key], 0) + wt
            assert all(v == pytest.approx(1 / len(m)) for v in m.values())
        if clip_strategy in ("patient", "category"):
            key = 0 if clip_strategy == "patient" else 1
            totals, kept = {}, {}
            for row, x, y in zip(table, n, c):
                totals[row[key]] = totals.get(row[key], 0) + x
                kept[row[key]] = kept.get(row[key], 0) + int(y)
            cap = max_tiles or min(totals.values())
            assert kept == {g: min(t, cap) for g, t in totals.items()}


@given(tables, st.integers(2, 4), st.integers(0, 3), st.booleans())
def test_kfold_is_patient_disjoint_and_covers(table, k, seed, stratify):
    with tempfile.TemporaryDirectory() as root:
        ds, _ = build(root, table)
        patients = set(ds.patients().values())
        labels = None
        if stratify:
            # one label per patient: the first category seen for it
            first = {}
            for p, cat, _ in table:
                first.setdefault(p, cat)
            labels = {s: first[p] for s, p in ds.patients().items()}
        if k > len(patients):
            with pytest.raises(SplitError, match=f"cannot make {k} folds"):
                ds.kfold_split(k, labels=labels, seed=seed)
            return
        folds = ds.kfold_split(k, labels=labels, seed=seed)
        assert len(folds) == k
        seen = []
        for train, val in folds:
            tp = set(train.patients().values()) if train_nonempty(train) else set()
            vp = set(val.patients().values())
            assert not tp & vp
            assert tp | vp == patients
            assert set(train.tfrecords()) | set(val.tfrecords()) == set(ds.tfrecords())
            seen += sorted(vp)
        assert sorted(seen) == sorted(patients)      # every patient validated exactly once
        sizes = [len(set(v.patients().values())) for _, v in folds]
        assert max(sizes) - min(sizes) <= 1


def train_nonempty(ds):
    return bool(ds.tfrecords())


# -- splits ------------------------------------------------------------------------------------

def test_split_worked_examples_table_e():
    """spec/dataset.md, "Splits", worked example (table E, seed 0)."""
    pts = ["P1", "P2", "P3", "P4"]
    strata = {"P1": "A", "P2": "A", "P3": "B", "P4": "B"}
    assert patient_order(pts, 0) == ["P2", "P4", "P3", "P1"]
    assert kfold_patients(pts, 2, seed=0) == [["P2", "P3"], ["P1", "P4"]]
    assert kfold_patients(pts, 2, seed=0, strata=strata) == [["P2", "P4"], ["P1", "P3"]]
    assert fixed_split_patients(pts, 0.5, seed=0, strata=strata) == (["P1", "P3"], ["P2", "P4"])


def test_split_worked_example_demo(demo):
    folds = demo.kfold_split(2, labels="category")
    assert [v.slides() for _, v in folds] == [["slide-b1", "slide-c1"],
                                               ["slide-a1", "slide-a2", "slide-d1", "slide-d2"]]
    assert folds[0][0].slides() == folds[1][1].slides()
    again = demo.split("category", val_strategy="k-fold", val_k_fold=2, k_fold_iter=2)
    assert again[1].slides() == folds[1][1].slides()


@given(st.lists(st.text(alphabet="abcdef", min_size=1, max_size=5), min_size=2, max_size=30,
                unique=True), st.integers(2, 5), st.integers(0, 10**6),
       st.lists(st.sampled_from("XYZ"), min_size=30, max_size=30))
def test_kfold_patients_properties(patients, k, seed, labels):
    if k > len(patients):
        return
    strata = dict(zip(patients, labels))
    folds = kfold_patients(patients, k, seed=seed, strata=strata)
    flat = [p for f in folds for p in f]
    assert sorted(flat) == sorted(patients)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for s in set(strata.values()):
        per = [sum(strata[p] == s for p in f) for f in folds]
        assert max(per) - min(per) <= 1
    assert kfold_patients(list(reversed(patients)), k, seed=seed, strata=strata) == folds


@given(st.integers(2, 40), st.sampled_from([0.1, 0.2, 0.25, 0.3, 0.5, 0.7, 0.9]),
       st.integers(0, 100))
def test_fixed_split_properties(n, f, seed):
    pts = [f"pt{i}" for i in range(n)]
    n_val = int(Fraction(str(f)) * n)
    if not 0 < n_val < n:
        with pytest.raises(SplitError, match="both sides need at least one"):
            fixed_split_patients(pts, f, seed=seed)
        return
    strata = {p: "AB"[i % 2] for i, p in enumerate(pts)}
    train, val = fixed_split_patients(pts, f, seed=seed, strata=strata)
    assert len(val) == n_val and not set(train) & set(val)
    assert sorted(train + val) == sorted(pts)
    a = sum(strata[p] == "A" for p in val)
    exact = Fraction(n_val * sum(v == "A" for v in strata.values()), n)
    assert exact - 1 < a < exact + 1


def test_split_errors(demo, tmp_path):
    with pytest.raises(SplitError, match="k must be an integer >= 2"):
        demo.kfold_split(1)
    with pytest.raises(SplitError, match="cannot make 5 folds from 4 patient"):
        demo.kfold_split(5)
    with pytest.raises(SplitError, match="needs val_fraction"):
        demo.split()
    with pytest.raises(SplitError, match="strictly between 0 and 1"):
        demo.split(val_fraction=1.5)
    with pytest.raises(SplitError, match="k_fold_iter must be in 1..3"):
        demo.split(val_strategy="k-fold", val_k_fold=3, k_fold_iter=0)
    with pytest.raises(SplitError, match="unknown val_strategy 'bootstrap'"):
        demo.split(val_strategy="bootstrap", val_fraction=0.5)
    with pytest.raises(SplitError, match="seed must be an integer"):
        demo.kfold_split(2, seed="x")
    with pytest.raises(SplitError, match="patient 'patient-a' has slides with different labels"):
        demo.kfold_split(2, labels="age")
    with pytest.raises(SplitError, match="no entry for slide"):
        demo.kfold_split(2, labels={"slide-a1": 0})


def test_subsets_rederive_strategies(demo):
    ds = demo.balance(strategy="patient").clip(strategy="patient")
    train, val = ds.split(val_fraction=0.5, seed=3)
    for sub in (train, val):
        pts = set(sub.patients().values())
        m = {}
        for p, w in sub.prob_weights.items():
            pt = sub.patients()[os.path.basename(p)[:-10]]
            m[pt] = m.get(pt, 0) + w
        assert all(v == pytest.approx(1 / len(pts)) for v in m.values())
        totals = {}
        for p, c in sub.clip_counts.items():
            pt = sub.patients()[os.path.basename(p)[:-10]]
            totals[pt] = totals.get(pt, 0) + c
        assert len(set(totals.values())) == 1    # every patient clipped to the subset's min
    # custom weights are restricted and renormalized
    custom = demo.balance(strategy="slide")
    custom.prob_weights = {p: i + 1 for i, p in enumerate(custom.tfrecords())}
    sub = custom.filter({"site": "site-2"})
    assert sum(sub.prob_weights.values()) == pytest.approx(1)
    assert by_slide(sub, sub.prob_weights)["slide-c1"] == pytest.approx(4 / 15)


# -- sampling table ----------------------------------------------------------------------------

def test_sampling_table(demo):
    t = demo.sampling_table()
    paths, counts, clip, weights = t
    assert paths.tolist() == demo.tfrecords()
    assert counts.dtype == np.int64 and clip.dtype == np.int64 and weights.dtype == np.float64
    assert counts.tolist() == [DEMO_N[s] for s in demo.slides()]
    assert (clip == counts).all() and np.allclose(weights, 1 / 6)
    ds = demo.clip(20, "patient").balance(strategy="tile")
    t = ds.sampling_table()
    assert t.clip.tolist() == [14, 6, 20, 12, 12, 8]
    assert np.allclose(t.weights, t.clip / 72)
    t.clip[0] = 0                     # a copy: the dataset is unchanged
    assert ds.sampling_table().clip[0] == 14


def test_copy_and_repr(demo):
    import copy
    ds = demo.balance(strategy="tile").clip(5)
    cp = copy.deepcopy(ds)
    assert cp.prob_weights == ds.prob_weights and cp.clip_counts == ds.clip_counts
    cp.prob_weights = None
    assert ds.prob_weights is not None
    assert "6 tfrecords" in repr(ds) and "'tile'" in repr(ds)
