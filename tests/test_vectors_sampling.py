"""spec/sampling.md's exact formulas against the known answers of spec/vectors/sampling/.

The vectors are written by spec/vectors/sampling/make_vectors.py, a plain scalar
implementation of the spec's text (no tilespec); here the reference must give the same
numbers, and the script must rebuild the committed files byte for byte. Vectors with
given uniforms replace the generator in the reference module under test (monkeypatch),
so the planner meets ties, u = 0 and u just below 1 at the positions where it cuts its
vectorized windows. See spec/vectors.md for which formula each file pins.
"""


import numpy as np
import pytest

from tilespec import rng, sampling
from vector_files import assert_rebuilds, chapter, load

HERE, PLAIN = chapter("sampling")


def vectors(name):
    return load(HERE, name)


def key_of(v):
    return rng.stream_key(int(v["seed"]), v["rank"], v["epoch"])


def test_make_vectors_rebuilds_the_committed_files():
    assert_rebuilds(HERE, PLAIN)


def test_plain_philox_gives_random123_answers():
    # the plain implementation's own check (the reference's is in test_rng.py)
    v = vectors("philox.json")
    assert [tuple(x["words"]) for x in v[:3]] == [
        (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)]


@pytest.mark.parametrize("v", vectors("philox.json"), ids=lambda v: str(v["counter"]))
def test_philox(v):
    assert [int(w) for w in rng.philox4x32(*v["counter"], *v["key"])] == v["words"]


def test_stream_keys():
    for v in vectors("stream_keys.json"):
        assert list(key_of(v)) == v["key"], v


def test_words_to_uniform():
    for v in vectors("unit.json"):
        got = rng._to_unit(np.array([v["w_lo"]], np.uint32), np.array([v["w_hi"]], np.uint32))
        assert got[0] == v["u"], v


@pytest.mark.parametrize("v", vectors("uniforms.json"), ids=lambda v: f"seed{v['seed']}")
def test_uniforms(v):
    pos = np.array([int(p) for p in v["positions"]], dtype=np.uint64)
    got = rng.uniforms(key_of(v), pos, v["slot"], v["n"])
    np.testing.assert_array_equal(got, np.array(v["uniforms"]))
    for m in range(v["n"]):  # fewer uniforms: the same leading ones
        np.testing.assert_array_equal(rng.uniforms(key_of(v), pos, v["slot"], m + 1),
                                      got[:, :m + 1])


@pytest.mark.parametrize("v", vectors("normals.json"), ids=lambda v: f"seed{v['seed']}")
def test_normals(v):
    pos = np.array([int(p) for p in v["positions"]], dtype=np.uint64)
    got = rng.normals(key_of(v), pos, v["slot"], v["n"])
    # the same formula through libm and NumPy's log/cos/sin: a few ulps
    np.testing.assert_allclose(got, np.array(v["normals"]), rtol=1e-13, atol=1e-13)


def test_box_muller_of_given_uniforms(monkeypatch):
    v = vectors("box_muller.json")
    table = np.array([x["u"] for x in v])
    monkeypatch.setattr(rng, "uniforms", lambda key, positions, slot, n: table[positions][:, :n])
    got = rng.normals((0, 0), np.arange(len(v)), rng.augment_slot(0), 2)
    np.testing.assert_allclose(got, np.array([x["z"] for x in v]), rtol=1e-13, atol=1e-13)
    assert (got[:2] == 0).all()  # u1 = 0: r = 0 exactly


@pytest.mark.parametrize("v", vectors("permutations.json"),
                         ids=lambda v: f"n{v['n']}-g{v['group']}-p{v['pass']}")
def test_permutations(v):
    got = rng.permutation(key_of(v), v["n"], v["group"], v["pass"])
    assert got.tolist() == v["permutation"]


def test_permutation_sort_keys_and_ties(monkeypatch):
    for v in vectors("permutation_keys.json"):
        words = np.array(v["words"], dtype=np.uint32)

        def fake(c0, c1, c2, c3, k0, k1, words=words):
            assert int(c2) == rng.SLOT_PERMUTE
            j = np.asarray(c3, dtype=np.int64)
            zero = np.zeros(len(j), np.uint32)
            return words[j, 0], words[j, 1], zero, zero

        monkeypatch.setattr(rng, "philox4x32", fake)
        assert rng.permutation((1, 2), len(words), 0, 0).tolist() == v["permutation"], v


def test_partition():
    for v in vectors("partition.json"):
        for r, part in enumerate(v["parts"]):
            starts, sizes = sampling.partition(v["clip"], v["num_replicas"], r)
            assert (starts.tolist(), sizes.tolist()) == (part["starts"], part["sizes"]), (v, r)


def given_uniforms(monkeypatch, table):
    """Make the sampling module read u_i = table[i] (0.5 past the table: the planners
    draw ahead of what they are asked for)."""
    table = np.asarray(table, dtype=np.float64)

    def fake(key, positions, slot, n=1):
        assert slot == rng.SLOT_SAMPLE and n == 1
        p = np.asarray(positions, dtype=np.int64)
        out = np.full(p.shape + (1,), 0.5)
        inside = p < len(table)
        out[inside, 0] = table[p[inside]]
        return out

    monkeypatch.setattr(sampling, "uniforms", fake)


@pytest.mark.parametrize("v", vectors("choice.json"), ids=lambda v: str(v["weights"]))
def test_choice_rule(monkeypatch, v):
    given_uniforms(monkeypatch, v["u"])
    n, T = len(v["u"]), len(v["weights"])
    if not n:
        pytest.skip("no uniforms")
    # infinite stream: A is every live tfrecord at every position
    plan = sampling.StreamPlan([n] * T, v["weights"], seed=0, infinite=True)
    assert plan.records(0, n)[0].tolist() == v["t"]
    # finite epoch, no tfrecord running out within the first n positions
    got = sampling.finite_choices([n] * T, v["weights"], (0, 0))[:n]
    assert got.tolist() == v["t"]


def chunked(plan, n, sizes):
    """records(0, n) asked in consecutive chunks of the given sizes (cycled)."""
    out_t, out_j, pos, i = [], [], 0, 0
    while pos < n:
        stop = min(n, pos + sizes[i % len(sizes)])
        t, j = plan.records(pos, stop)
        out_t += t.tolist()
        out_j += j.tolist()
        pos, i = stop, i + 1
    return out_t, out_j


def check_plan(v, make, n_inf):
    fin = make(infinite=False)
    assert len(fin) == len(v["finite"]["t"])
    t, j = fin.records(0, len(fin))
    assert (t.tolist(), j.tolist()) == (v["finite"]["t"], v["finite"]["j"])
    assert chunked(make(infinite=False), len(fin), [3, 250, 1]) == (v["finite"]["t"],
                                                                     v["finite"]["j"])
    if "infinite" not in v:
        return
    want = (v["infinite"]["t"], v["infinite"]["j"])
    n = len(want[0]) if n_inf is None else n_inf
    t, j = make(infinite=True).records(0, n)
    assert (t.tolist(), j.tolist()) == want
    for sizes in ([1], [1023, 1, 1024, 1025], [7, 1000]):
        assert chunked(make(infinite=True), n, sizes) == want, sizes
    for start in (1, 1023, 1024, 1025, n - 3):  # a fresh plan resumes mid-stream
        if 0 <= start < n:
            t, j = make(infinite=True).records(start, n)
            assert (t.tolist(), j.tolist()) == (want[0][start:], want[1][start:]), start
    plan = make(infinite=True)  # one plan asked out of order, backwards by one
    for a, b in ((500, 1600), (499, 600), (1600, n), (0, 5), (1024, 1030), (1023, 1024), (7, 9)):
        a, b = min(a, n), min(b, n)
        t, j = plan.records(a, b)
        assert (t.tolist(), j.tolist()) == (want[0][a:b], want[1][a:b]), (a, b)


PLANS = vectors("plans.json")


@pytest.mark.parametrize("v", PLANS, ids=lambda v: v["name"])
@pytest.mark.parametrize("blocks", ["default", "small"])
def test_plans(monkeypatch, v, blocks):
    if blocks == "small":  # move the planners' block and draw-ahead boundaries inside
        monkeypatch.setattr(sampling, "BLOCK", 37)
        monkeypatch.setattr(sampling, "CHOICES_AHEAD", 3)

    def make(infinite):
        return sampling.StreamPlan(v["clip"], v["weights"], int(v["seed"]), v["rank"],
                                   v["num_replicas"], v["epoch"], infinite=infinite,
                                   shuffle=v["shuffle"])

    check_plan(v, make, None)


@pytest.mark.parametrize("v", vectors("plans_given_uniforms.json"), ids=lambda v: v["name"])
def test_plans_of_given_uniforms(monkeypatch, v):
    given_uniforms(monkeypatch, v["uniforms"])

    def make(infinite):
        return sampling.StreamPlan(v["clip"], v["weights"], 0, infinite=infinite)

    check_plan(v, make, None)


def test_worked_example_is_in_the_vectors():
    v = PLANS[0]
    assert (v["clip"], v["weights"], v["seed"]) == ([3, 1, 2], [1.0, 3.0, 2.0], "99")
    # the spec's tables (spec/sampling.md, "Worked example")
    assert v["finite"] == {"t": [0, 1, 2, 2, 0, 0], "j": [0, 0, 0, 1, 1, 2]}
    assert v["infinite"] == {"t": [0, 1, 2, 2, 1, 2, 2, 1], "j": [0, 0, 0, 1, 0, 0, 1, 0]}
