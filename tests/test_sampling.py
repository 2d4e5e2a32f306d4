"""spec/sampling.md: partition, finite and infinite streams, workers, resume."""

import numpy as np
import pytest
from hypothesis import assume, given, settings, strategies as st
from scipy import stats

from tilespec.sampling import (RankStream, StreamPlan, finite_choices, num_batches,
                               occurrence_index, partition, worker_batches)
from tilespec.rng import stream_key, uniforms, SLOT_SAMPLE

clips = st.lists(st.integers(0, 30), min_size=1, max_size=8)
seeds = st.integers(0, 2**63 - 1)


@st.composite
def datasets(draw):
    clip = draw(clips)
    weights = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5]), min_size=len(clip),
                            max_size=len(clip)))
    return np.array(clip), np.array(weights)


def owned_records(clip, weights, rank, R):
    # zero-weight tfrecords take no part in the partition
    starts, sizes = partition(np.where(np.asarray(weights) > 0, clip, 0), R, rank)
    return {(t, int(starts[t]) + k) for t in range(len(clip)) for k in range(sizes[t])
            if weights[t] > 0}


@given(clips, st.integers(1, 6))
def test_partition_deals_remainders_round_the_ranks(clip, R):
    # spec/sampling.md, "Partition": contiguous parts in rank order; tfrecord t's
    # c_t mod R left-over records go to ranks f_t, f_t + 1, ... (mod R), f_t being the
    # left-overs dealt before t; so rank totals differ by at most one.
    parts = [partition(clip, R, r) for r in range(R)]
    f = 0
    for t, c in enumerate(clip):
        q, m = divmod(c, R)
        extra = {(f + k) % R for k in range(m)}
        at = 0
        for r in range(R):
            starts, sizes = parts[r]
            assert starts[t] == at and sizes[t] == q + (r in extra)
            at += sizes[t]
        assert at == c
        f = (f + m) % R
    L = sum(clip)
    assert [int(sizes.sum()) for _, sizes in parts] == [L // R + (r < L % R) for r in range(R)]


@given(datasets(), st.integers(1, 4), seeds, st.booleans())
def test_finite_ranks_disjoint_and_complete(ds, R, seed, shuffle):
    clip, w = ds
    seen = []
    for r in range(R):
        try:
            plan = StreamPlan(clip, w, seed, rank=r, num_replicas=R, infinite=False,
                              shuffle=shuffle)
        except ValueError:
            assert not owned_records(clip, w, r, R)
            continue
        t, j = plan.records(0, len(plan))
        got = list(zip(t.tolist(), j.tolist()))
        assert len(got) == len(set(got)) == len(plan)          # each owned record once
        assert set(got) == owned_records(clip, w, r, R)
        seen += got
    kept = {(t, j) for t in range(len(clip)) for j in range(clip[t]) if w[t] > 0}
    assert len(seen) == len(set(seen)) and set(seen) == kept


@given(datasets(), seeds, st.booleans(), st.booleans())
def test_same_seed_same_stream_and_fresh_plans_agree(ds, seed, infinite, shuffle):
    clip, w = ds
    assume((clip[w > 0] > 0).any())
    a = StreamPlan(clip, w, seed, infinite=infinite, shuffle=shuffle)
    b = StreamPlan(clip, w, seed, infinite=infinite, shuffle=shuffle)
    n = len(a) if not infinite else 200
    for x, y in zip(a.records(0, n), b.records(0, n)):
        np.testing.assert_array_equal(x, y)


def test_different_seeds_differ():
    clip, w = np.array([50, 50, 50]), np.ones(3)
    streams = {tuple(StreamPlan(clip, w, s, infinite=inf).records(0, 150)[0])
               for s in range(5) for inf in (False,)}
    assert len(streams) == 5


@given(datasets(), seeds, st.booleans(), st.booleans(), st.data())
def test_resume_at_any_position_equals_uninterrupted(ds, seed, infinite, shuffle, data):
    clip, w = ds
    assume((clip[w > 0] > 0).any())
    full = StreamPlan(clip, w, seed, infinite=infinite, shuffle=shuffle)
    n = len(full) if not infinite else 300
    t, j = full.records(0, n)
    p = data.draw(st.integers(0, n))
    resumed = StreamPlan(clip, w, seed, infinite=infinite, shuffle=shuffle)
    t2, j2 = resumed.records(p, n)
    np.testing.assert_array_equal(t2, t[p:])
    np.testing.assert_array_equal(j2, j[p:])


@given(datasets(), seeds, st.integers(1, 4), st.integers(1, 7), st.booleans(), st.booleans())
def test_worker_split_reassembles_the_stream(ds, seed, W, B, drop_last, infinite):
    clip, w = ds
    assume((clip[w > 0] > 0).any())
    plan = StreamPlan(clip, w, seed, infinite=infinite)
    total = None if infinite else len(plan)
    per_worker = []
    for k in range(W):
        it = worker_batches(k, W, B, total, drop_last)
        per_worker.append([next(it, None) for _ in range(60 // B + 2)] if infinite else list(it))
    # a loader takes batches round-robin from workers 0, 1, ..., W-1
    out = []
    for i in range(max(len(x) for x in per_worker)):
        for k in range(W):
            if i < len(per_worker[k]) and per_worker[k][i] is not None:
                out.append(per_worker[k][i])
    assert [b for b, _, _ in out] == list(range(len(out)))
    if not infinite:
        assert len(out) == num_batches(total, B, drop_last)
        covered = [p for _, s, e in out for p in range(s, e)]
        assert covered == list(range(len(covered)))
        assert len(covered) == (total // B * B if drop_last else total)
    if not out:  # drop_last with fewer positions than one batch
        assert drop_last and total < B
        return
    ref_t, ref_j = plan.records(0, out[-1][2])
    got_t = np.concatenate([plan.records(s, e)[0] for _, s, e in out])
    np.testing.assert_array_equal(got_t, ref_t)


def test_infinite_frequencies_match_weights():
    # 6 tfrecords, weights 1..6, clip sizes unequal; n = 60k picks; chi-square against the
    # weights. Fixed seed; power against a 5% shift of one weight is > 0.99 at this n.
    clip = np.array([3, 10, 1, 7, 20, 5])
    w = np.arange(1, 7, dtype=float)
    t, _ = StreamPlan(clip, w, 2024, infinite=True).records(0, 60_000)
    counts = np.bincount(t, minlength=6)
    assert stats.chisquare(counts, w / w.sum() * counts.sum()).pvalue > 1e-3


def test_infinite_leaves_out_zero_weight_and_empty_tfrecords():
    t, _ = StreamPlan([5, 0, 5, 5], [1, 1, 0, 1], 3, infinite=True).records(0, 5000)
    assert set(np.unique(t)) == {0, 3}


def test_finite_first_pick_follows_weights():
    # the first pick of a finite stream is t with probability w_t / sum(w); over 4000
    # epochs (independent keys) the counts match (chi-square, fixed seed).
    clip, w = np.array([4, 4, 4]), np.array([1.0, 2.0, 5.0])
    firsts = [StreamPlan(clip, w, 11, epoch=e, infinite=False).records(0, 1)[0][0]
              for e in range(4000)]
    counts = np.bincount(firsts, minlength=3)
    assert stats.chisquare(counts, w / w.sum() * 4000).pvalue > 1e-3


def test_finite_choice_rule_by_hand():
    # Replay the rule directly: at each step, inverse CDF of u_i over tfrecords with
    # records left.
    clip, w = np.array([3, 1, 2]), np.array([1.0, 3.0, 2.0])
    key = stream_key(99, 0, 0)
    got = finite_choices(clip, w, key)
    u = uniforms(key, np.arange(6), SLOT_SAMPLE)[:, 0]
    left = clip.copy()
    for i in range(6):
        wa = np.where(left > 0, w, 0)
        t = int(np.searchsorted(np.cumsum(wa), u[i] * wa.sum(), side="right"))
        assert got[i] == t
        left[t] -= 1


def test_within_tfrecord_order_file_order_without_shuffle():
    plan = StreamPlan([4, 3], [1, 1], 5, infinite=True)
    t, j = plan.records(0, 500)
    for k in range(2):
        seq = j[t == k]
        size = [4, 3][k]
        np.testing.assert_array_equal(seq, np.arange(len(seq)) % size)


def test_shuffle_gives_a_fresh_permutation_per_pass():
    plan = StreamPlan([6], [1], 5, infinite=True, shuffle=True)
    _, j = plan.records(0, 6 * 40)
    passes = j.reshape(40, 6)
    assert all(sorted(p) == list(range(6)) for p in passes.tolist())
    assert len({tuple(p) for p in passes.tolist()}) > 20
    # every record equally likely in first place: chi-square over 3000 passes
    _, j = StreamPlan([6], [1], 8, infinite=True, shuffle=True).records(0, 6 * 3000)
    firsts = np.bincount(j.reshape(3000, 6)[:, 0], minlength=6)
    assert stats.chisquare(firsts).pvalue > 1e-3


def test_ranks_own_contiguous_parts_with_offsets():
    plan = StreamPlan([10], [1], 1, rank=1, num_replicas=3, infinite=False)
    _, j = plan.records(0, len(plan))
    assert sorted(j.tolist()) == [4, 5, 6] and len(plan) == 3


def test_epochs_differ_for_finite():
    a = StreamPlan([20, 20], [1, 1], 4, epoch=0, infinite=False).records(0, 40)[0]
    b = StreamPlan([20, 20], [1, 1], 4, epoch=1, infinite=False).records(0, 40)[0]
    assert not np.array_equal(a, b)


def test_occurrence_index():
    c = np.array([2, 0, 2, 2, 1, 0])
    np.testing.assert_array_equal(occurrence_index(c, np.array([10, 20, 30])),
                                  [30, 10, 31, 32, 20, 11])


@pytest.mark.parametrize("kwargs,match", [
    (dict(rank=2, num_replicas=2), "rank"),
    (dict(num_replicas=0), "num_replicas"),
    (dict(epoch=-1), "epoch"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamPlan([3], [1], 0, **kwargs)


def test_bad_weights_and_nothing_to_sample():
    with pytest.raises(ValueError, match="weight of tfrecord 1"):
        StreamPlan([3, 3], [1, -1], 0)
    with pytest.raises(ValueError, match="expected 3 weights"):
        StreamPlan([3, 3, 3], [1, 1], 0)
    with pytest.raises(ValueError, match="nothing to sample"):
        StreamPlan([3, 0], [0, 1], 0)
    with pytest.raises(ValueError, match="batch_size"):
        next(worker_batches(0, 1, 0))


def test_worked_example():
    # spec/sampling.md, "Worked example"
    key = stream_key(99, 0, 0)
    assert key == (0x34BAEECF, 0x982DA0AB)
    u = uniforms(key, np.arange(6), SLOT_SAMPLE)[:, 0]
    np.testing.assert_allclose(u, [0.1412, 0.4903, 0.9439, 0.8170, 0.2585, 0.8140], atol=5e-5)
    t, j = StreamPlan([3, 1, 2], [1, 3, 2], 99, infinite=False).records(0, 6)
    assert t.tolist() == [0, 1, 2, 2, 0, 0] and j.tolist() == [0, 0, 0, 1, 1, 2]
    t, j = StreamPlan([3, 1, 2], [1, 3, 2], 99, infinite=True).records(0, 8)
    assert t.tolist() == [0, 1, 2, 2, 1, 2, 2, 1] and j.tolist() == [0, 0, 0, 1, 0, 0, 1, 0]
    parts = [partition([10, 5, 0], 3, r) for r in range(3)]
    assert [(s.tolist(), z.tolist()) for s, z in parts] == [
        ([0, 0, 0], [4, 1, 0]), ([4, 1, 0], [3, 2, 0]), ([7, 3, 0], [3, 2, 0])]


# ------------------------------------------------------------------ equal steps (ranks)
def epoch_of(stream, B, drop_last):
    """(records, pads) of the positions a loader yields in one finite epoch: whole
    batches of B (the last one partial, or dropped with drop_last)."""
    n = num_batches(len(stream), B, drop_last)
    stop = min(len(stream), n * (B or 1))
    t, j = stream.records(0, stop)
    return list(zip(t.tolist(), j.tolist())), stream.pads(0, stop).tolist(), n


@settings(max_examples=max(200, settings.default.max_examples))  # cheap: 10 ms an example
@given(datasets(), st.integers(1, 5), st.one_of(st.none(), st.integers(1, 7)), st.booleans(),
       st.sampled_from(["pad", "drop"]), st.booleans(), st.booleans(), seeds)
def test_equal_steps_on_every_rank(ds, R, B, drop_last, uneven, shuffle, elastic, seed):
    # spec/sampling.md, "Equal steps": for any dataset, clip, R, B and drop_last every
    # rank yields the same number of batches; pads stay within the policy's bound and
    # every record that is not a pad is yielded at most once (exactly once with 'pad'
    # and without drop_last), across all ranks.
    clip, w = ds
    L = int(clip[w > 0].sum())
    assume(L > 0)
    kw = dict(num_replicas=R, infinite=False, shuffle=shuffle, batch_size=B,
              drop_last=drop_last, uneven=uneven, elastic=elastic)
    if L < R and not elastic:
        for r in range(R):      # every rank refuses, not only those that would own nothing
            with pytest.raises(ValueError, match="owns no record"):
                RankStream(clip, w, seed, rank=r, **kw)
        return
    streams = [RankStream(clip, w, seed, rank=r, **kw) for r in range(R)]
    epochs = [epoch_of(s, B, drop_last) for s in streams]
    assert len({n for _, _, n in epochs}) == 1                  # equal steps
    assert all(len(s) == len(streams[0]) for s in streams)      # len() agrees too
    steps = epochs[0][2]
    assert [s.num_padded for s in streams] == [sum(p) for _, p, _ in
                                               (epoch_of(s, None, False) for s in streams)]
    pads = sum(s.num_padded for s in streams)
    G = (B or 1) * R
    if elastic:
        assert pads < G and (pads == 0 or (uneven == "pad" and not drop_last))
        assert steps == (L // G if uneven == "drop" or drop_last else -(-L // G))
    else:
        assert all(s.num_padded <= 1 and s.num_dropped <= 1 for s in streams)
        assert pads == (R - L % R) % R * (uneven == "pad")
    real = [rec for recs, pad, _ in epochs for rec, p in zip(recs, pad) if not p]
    assert len(real) == len(set(real))                          # non-pads at most once
    kept = {(t, j) for t in range(len(clip)) for j in range(clip[t]) if w[t] > 0}
    assert set(real) <= kept
    padded = {rec for recs, pad, _ in epochs for rec, p in zip(recs, pad) if p}
    assert padded <= kept                                       # pads repeat kept records
    if uneven == "pad" and not drop_last:
        assert set(real) == kept                                # every record once
    else:                                                       # what may be left out
        lost = sum(s.num_dropped for s in streams)
        bound = lost + (R * ((B or 1) - 1) if drop_last and not elastic else 0)
        assert len(kept) - len(real) <= bound
        assert lost <= (G - 1 if elastic else R - 1)


def test_equal_steps_clip_7_batch_4_two_ranks():
    # The case: 6 tfrecords clipped to 7 over 2 ranks was 24 and 18 records
    # (7 and 5 steps of 4 after a hang); remainders dealt round the ranks give 21 each.
    clip, w = np.full(6, 7), np.ones(6)
    lens = [len(RankStream(clip, w, 1, rank=r, num_replicas=2, infinite=False,
                           batch_size=4)) for r in range(2)]
    assert lens == [21, 21]
    # one record more than R divides: rank 1 pads one (its own first record again)
    s = [RankStream(np.array([7, 7, 7]), np.ones(3), 1, rank=r, num_replicas=2,
                    infinite=False, batch_size=4) for r in range(2)]
    assert [len(x) for x in s] == [11, 11] and [x.num_padded for x in s] == [0, 1]
    t, j = s[1].records(0, 11)
    assert (t[-1], j[-1]) == (t[0], j[0]) and s[1].pads(0, 11).tolist() == [False] * 10 + [True]
    assert s[1].positions(0, 11).tolist() == list(range(11))  # the pad has its own draws
    d = [RankStream(np.array([7, 7, 7]), np.ones(3), 1, rank=r, num_replicas=2,
                    infinite=False, batch_size=4, uneven="drop") for r in range(2)]
    assert [len(x) for x in d] == [10, 10] and [x.num_dropped for x in d] == [1, 0]


# ------------------------------------------------------------------ elastic streams
@settings(max_examples=max(100, settings.default.max_examples))
@given(datasets(), st.sampled_from([1, 2, 3, 4, 6, 12]), st.booleans(), st.booleans(),
       st.sampled_from(["pad", "drop"]), seeds)
def test_elastic_ranks_concatenate_to_the_global_stream(ds, R, infinite, shuffle, uneven,
                                                         seed):
    # spec/sampling.md, "Elastic streams": step b of rank r is global positions
    # b G + r B ... b G + r B + B - 1 (G = 12 here), so the ranks' batches at each step,
    # concatenated, are the R = 1 loader's batch b of size G, for any R.
    clip, w = ds
    assume((clip[w > 0] > 0).any())
    G = 12
    kw = dict(infinite=infinite, shuffle=shuffle, uneven=uneven, elastic=True)
    one = RankStream(clip, w, seed, batch_size=G, **kw)
    n = len(one) if not infinite else 5 * G
    want = [np.stack(one.records(0, n)), one.positions(0, n), one.pads(0, n)]
    B = G // R
    parts = [RankStream(clip, w, seed, rank=r, num_replicas=R, batch_size=B, **kw)
             for r in range(R)]
    assert all(len(p) * R == len(one) for p in parts)
    m = n // R
    got = [[np.stack(p.records(0, m)) for p in parts], [p.positions(0, m) for p in parts],
           [p.pads(0, m) for p in parts]]
    for w_, g in zip(want, got):     # interleave the ranks' micro-batches step by step
        steps = [np.concatenate([x[..., b * B:(b + 1) * B] for x in g], axis=-1)
                 for b in range(m // B)]
        joined = np.concatenate(steps, axis=-1) if steps else w_[..., :0]
        np.testing.assert_array_equal(joined, w_)
    assert np.array_equal(want[1], np.arange(n))   # the R = 1 stream is plain order
