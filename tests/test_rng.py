"""spec/sampling.md, "Randomness": Philox4x32-10 keying, uniforms, normals, permutations."""

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import stats

from tilespec import rng

# Random123's published known answers for Philox4x32-10.
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_philox_known_answers(ctr, key, expected):
    assert tuple(int(w) for w in rng.philox4x32(*ctr, *key)) == expected


def test_philox_vectorized_equals_scalar():
    c0 = np.arange(50, dtype=np.uint64) * 7919
    vec = rng.philox4x32(c0, 3, 5, 9, 11, 13)
    for i in range(50):
        one = rng.philox4x32(int(c0[i]), 3, 5, 9, 11, 13)
        assert tuple(int(v[i]) for v in vec) == tuple(int(x) for x in one)


@given(st.integers(0, 2**63 - 1), st.integers(0, 7), st.integers(0, 50),
       st.integers(0, 2**40), st.integers(1, 40))
def test_draws_depend_only_on_their_position(seed, rank, epoch, start, n):
    key = rng.stream_key(seed, rank, epoch)
    block = rng.uniforms(key, np.arange(start, start + n), rng.SLOT_SAMPLE, 3)
    for i in (0, n - 1):
        one = rng.uniforms(key, np.array([start + i]), rng.SLOT_SAMPLE, 3)
        np.testing.assert_array_equal(block[i], one[0])
    assert ((block >= 0) & (block < 1)).all()


def test_stream_keys_separate_seed_rank_epoch():
    keys = {rng.stream_key(s, r, e) for s in (0, 1, 2**62) for r in range(3) for e in range(3)}
    assert len(keys) == 27


def test_slots_and_blocks_are_independent():
    key = rng.stream_key(5, 0, 0)
    pos = np.arange(1000)
    a = rng.uniforms(key, pos, rng.SLOT_SAMPLE, 4)
    b = rng.uniforms(key, pos, rng.augment_slot(0), 4)
    assert not np.isclose(a, b).any()
    # the 4 uniforms of one draw are pairwise uncorrelated (|r| < 0.1 at n=1000)
    r = np.corrcoef(a.T)
    assert np.abs(r[np.triu_indices(4, 1)]).max() < 0.1


def test_uniforms_are_uniform():
    # chi-square over 20 bins, n = 200k; a fixed seed, so this is an exact check of
    # one sample; its power against a 1% bias in one bin is > 0.99.
    u = rng.uniforms(rng.stream_key(123, 0, 0), np.arange(200_000), rng.SLOT_SAMPLE)[:, 0]
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    assert stats.chisquare(counts).pvalue > 1e-3
    assert stats.kstest(u, "uniform").pvalue > 1e-3


def test_normals_are_standard_normal():
    z = rng.normals(rng.stream_key(9, 1, 2), np.arange(50_000), rng.augment_slot(3), 3)
    assert z.shape == (50_000, 3)
    for k in range(3):
        assert stats.kstest(z[:, k], "norm").pvalue > 1e-3
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.03


def test_permutations_are_uniform_over_orders():
    key = rng.stream_key(77, 0, 0)
    seen = {}
    for g in range(6000):
        perm = tuple(rng.permutation(key, 3, g, 0))
        seen[perm] = seen.get(perm, 0) + 1
    assert sorted(seen) == sorted({(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1),
                                   (2, 1, 0)})
    assert stats.chisquare(list(seen.values())).pvalue > 1e-3


@given(st.integers(0, 300), st.integers(0, 100), st.integers(0, 100))
def test_permutation_is_a_permutation(n, group, pass_):
    p = rng.permutation(rng.stream_key(1, 0, 0), n, group, pass_)
    assert sorted(p.tolist()) == list(range(n))


@pytest.mark.parametrize("bad", [-1, 2**63, 1.5, "3", True, None])
def test_bad_seeds_rejected(bad):
    with pytest.raises((TypeError, ValueError), match="seed"):
        rng.check_seed(bad)


def test_new_seed_in_range_and_varies():
    seeds = {rng.new_seed() for _ in range(20)}
    assert len(seeds) > 1 and all(0 <= s < 2**63 for s in seeds)
