"""spec/dataset.md, "Balancing" and "Clipping": the formulas as pure functions."""

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, strategies as st

from tilespec import balance as bal
from tilespec.annotations import BalanceError, ClipError, DatasetError
from tilespec.errors import TFRecordError

# Table E of spec/dataset.md
E_N = [30, 10, 25, 50, 5]
E_PATIENT = ["P1", "P1", "P2", "P3", "P4"]
E_CATEGORY = ["A", "A", "A", "B", "B"]


def frac(values):
    return [Fraction(float(v)).limit_denominator(10_000) for v in values]


# -- worked examples (table E) ---------------------------------------------------------------

@pytest.mark.parametrize("strategy,groups,expected", [
    ("slide", None, ["1/5"] * 5),
    (None, None, ["1/5"] * 5),
    ("none", None, ["1/5"] * 5),
    ("tile", None, ["1/4", "1/12", "5/24", "5/12", "1/24"]),
    ("patient", E_PATIENT, ["1/8", "1/8", "1/4", "1/4", "1/4"]),
    ("category", E_CATEGORY, ["1/6", "1/6", "1/6", "1/4", "1/4"]),
])
def test_table_e_weights(strategy, groups, expected):
    w = bal.balance_weights(strategy, E_N, groups)
    assert frac(w) == [Fraction(x) for x in expected]


def test_table_e_tile_after_clip():
    c = bal.clip_counts(None, E_N, 20)
    assert c.tolist() == [20, 10, 20, 20, 5]
    assert frac(bal.tile_weights(c)) == [Fraction(x) for x in
                                         ["4/15", "2/15", "4/15", "4/15", "1/15"]]


@pytest.mark.parametrize("strategy,max_tiles,groups,expected", [
    (None, 20, None, [20, 10, 20, 20, 5]),
    ("slide", 0, None, [5, 5, 5, 5, 5]),
    ("slide", 3, None, [3, 3, 3, 3, 3]),
    ("patient", 0, E_PATIENT, [4, 1, 5, 5, 5]),
    ("patient", 30, E_PATIENT, [23, 7, 25, 30, 5]),
    ("category", 0, E_CATEGORY, [25, 9, 21, 50, 5]),
    ("category", 40, E_CATEGORY, [19, 6, 15, 36, 4]),
])
def test_table_e_clips(strategy, max_tiles, groups, expected):
    assert bal.clip_counts(strategy, E_N, max_tiles, groups).tolist() == expected


def test_apportion_tie_goes_to_earlier():
    # 30 * 30/40 = 22.5 and 30 * 10/40 = 7.5: equal remainders, the earlier wins.
    assert bal.apportion([30, 10], 30).tolist() == [23, 7]
    assert bal.apportion([10, 30], 30).tolist() == [8, 22]   # 7.5 -> 8, 22.5 -> 22
    assert bal.apportion([1, 1, 1], 2).tolist() == [1, 1, 0]


def test_no_clip_without_max():
    assert bal.clip_counts(None, E_N, 0).tolist() == E_N


# -- properties ------------------------------------------------------------------------------

tables = st.integers(1, 12).flatmap(lambda t: st.tuples(
    st.lists(st.integers(0, 200), min_size=t, max_size=t),
    st.lists(st.sampled_from("pqrstu"), min_size=t, max_size=t),
    st.lists(st.sampled_from("ABC"), min_size=t, max_size=t),
))


def mass(weights, groups):
    out = {}
    for w, g in zip(weights, groups):
        out[g] = out.get(g, 0.0) + w
    return out


@given(tables, st.sampled_from(["slide", "tile", "patient", "category", None]))
def test_weights_are_a_distribution(table, strategy):
    n, patients, cats = table
    groups = patients if strategy == "patient" else cats
    if sum(n) == 0:     # no tiles to balance: an error naming the strategy, for every one
        name = bal.canonical_balance_strategy(strategy)
        with pytest.raises(BalanceError, match=f"cannot balance with strategy '{name}'"):
            bal.balance_weights(strategy, n, groups)
        return
    w = bal.balance_weights(strategy, n, groups)
    assert w.shape == (len(n),)
    assert (w >= 0).all()
    assert w.sum() == pytest.approx(1.0, abs=1e-12)


@given(tables)
def test_slide_uniform_tile_proportional(table):
    n, _, _ = table
    assert np.allclose(bal.slide_weights(len(n)), 1 / len(n))
    if sum(n):
        assert np.allclose(bal.balance_weights("slide", n), 1 / len(n))
        w = bal.balance_weights("tile", n)
        assert np.allclose(w * sum(n), n)


@given(tables)
def test_group_strategies_give_equal_mass(table):
    n, patients, cats = table
    for groups in (patients, cats):
        m = mass(bal.group_weights(groups), groups)
        assert all(v == pytest.approx(1 / len(m)) for v in m.values())
        # ... shared equally by each group's tfrecords
        w = bal.group_weights(groups)
        for g in set(groups):
            ws = {w[i] for i in range(len(groups)) if groups[i] == g}
            assert max(ws) == pytest.approx(min(ws))


@given(tables, st.integers(0, 300), st.sampled_from([None, "slide", "patient", "category"]))
def test_clip_never_exceeds_n(table, max_tiles, strategy):
    n, patients, cats = table
    groups = patients if strategy == "patient" else cats
    c = bal.clip_counts(strategy, n, max_tiles, groups)
    assert c.dtype == np.int64
    assert (c >= 0).all() and (c <= np.array(n)).all()
    if strategy is None and max_tiles:
        assert c.tolist() == [min(x, max_tiles) for x in n]
    if strategy == "slide":
        full = [x for x in n if x > 0] or [0]  # empty tfrecords take no part in the minimum
        m = min(full) if not max_tiles else min(min(full), max_tiles)
        assert c.tolist() == [min(x, m) for x in n]


@given(tables, st.integers(0, 300), st.sampled_from(["patient", "category"]))
def test_group_caps_hit_exactly(table, max_tiles, strategy):
    n, patients, cats = table
    groups = patients if strategy == "patient" else cats
    c = bal.clip_groups(n, groups, max_tiles)
    totals = {g: sum(x for x, h in zip(n, groups) if h == g) for g in set(groups)}
    # the default cap: the smallest total of a group with records (empty groups take no part)
    cap = max_tiles or min([t for t in totals.values() if t > 0], default=0)
    for g, total in totals.items():
        kept = sum(int(x) for x, h in zip(c, groups) if h == g)
        assert kept == min(total, cap)
        if total <= cap:   # untouched
            assert all(int(x) == y for x, y, h in zip(c, n, groups) if h == g)


@given(st.lists(st.integers(0, 500), min_size=1, max_size=10), st.data())
def test_apportion_is_proportional(counts, data):
    total = sum(counts)
    if total == 0:
        return
    cap = data.draw(st.integers(0, total - 1))
    a = bal.apportion(counts, cap)
    assert int(a.sum()) == cap
    for x, share in zip(counts, a):
        exact = Fraction(cap * x, total)
        assert exact - 1 < share < exact + 1     # each share is its quota rounded
        assert share <= x


@given(tables)
def test_tile_weights_follow_clip(table):
    # "balance after clip uses clipped counts": 'tile' weights of clipped counts
    n, _, _ = table
    c = bal.clip_counts(None, n, 7)
    if c.sum():
        assert np.allclose(bal.balance_weights("tile", c), c / c.sum())


# -- custom weights and clip values ----------------------------------------------------------

def test_normalize_weights():
    w = bal.normalize_weights([1, 3, 0], ["a", "b", "c"])
    assert w.tolist() == [0.25, 0.75, 0.0]


@pytest.mark.parametrize("values,match", [
    ([1, -1], "negative"),
    ([0, 0], "sum to 0"),
    ([1, float("nan")], "not finite"),
    ([1, float("inf")], "not finite"),
    ([1, "2"], "not a number"),
    ([1, True], "not a number"),
])
def test_bad_weights(values, match):
    with pytest.raises(BalanceError, match=match):
        bal.normalize_weights(values, ["a", "b"])


@pytest.mark.parametrize("value,match", [(-1, ">= 0"), (2.5, "integer"), (True, "integer"),
                                         ("3", "integer")])
def test_bad_max_tiles(value, match):
    with pytest.raises(ClipError, match=match):
        bal.check_max_tiles(value)
    assert bal.check_max_tiles(np.int64(4)) == 4


def test_bad_clip_values():
    with pytest.raises(ClipError, match="negative"):
        bal.check_clip_values({"x": -2})
    with pytest.raises(ClipError, match="not an integer"):
        bal.check_clip_values({"x": 1.5})
    assert bal.check_clip_values({"x": np.int32(3)}) == {"x": 3}


def test_unknown_strategies():
    with pytest.raises(BalanceError, match="unknown balancing strategy 'tiles'"):
        bal.balance_weights("tiles", [1, 2])
    with pytest.raises(ClipError, match="unknown clipping strategy 'tile'"):
        bal.clip_counts("tile", [1, 2], 3)


def test_tile_zero_sum_and_errors_are_tilespec_errors():
    with pytest.raises(BalanceError, match="every .*count is 0") as e:
        bal.tile_weights([0, 0])
    assert isinstance(e.value, DatasetError) and isinstance(e.value, TFRecordError)
    assert isinstance(e.value, ValueError)
