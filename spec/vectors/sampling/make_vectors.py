"""Make the known-answer vectors of spec/sampling.md (written from the spec's text).

    python spec/vectors/sampling/make_vectors.py      # rewrite *.json and manifest.json

This file is a second, deliberately plain implementation of every exact formula of
spec/sampling.md: scalar Python integers and floats, one position at a time, read
off the spec's sentences, with no import of tilespec (or NumPy). The vectors it
writes are what an independent implementation must reproduce; tests/test_vectors_sampling.py
checks the reference against them and that this script rebuilds them byte for byte.

Floats are written by ``json`` (``repr``: the shortest decimal that reads back as the
same double), so every value is exact. A vector's ``uniforms`` field, where present,
replaces the generator: the test feeds those uniforms to the reference planner in
place of Philox's (``u_i`` of position i), which is how ties on a CDF boundary,
u = 0 and u just below 1 are reached (no seed is known to produce them).
"""

from __future__ import annotations

import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MASK = 0xFFFFFFFF
ULP = 2.0 ** -53                   # spacing of the uniforms
BELOW_ONE = 1.0 - ULP              # the largest uniform

# ---------------------------------------------------------------- Philox4x32-10
# Salmon, Moraes, Dror, Shaw (2011): the round multipliers and the Weyl key increments.
M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85


def philox(counter, key):
    """Four 32-bit words of Philox4x32-10 for a 4-word counter and a 2-word key."""
    c0, c1, c2, c3 = (c & MASK for c in counter)
    k0, k1 = (k & MASK for k in key)
    for _ in range(10):
        p0, p1 = M0 * c0, M1 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & MASK, (p0 >> 32) ^ c3 ^ k1, p0 & MASK
        k0, k1 = (k0 + W0) & MASK, (k1 + W1) & MASK
    return c0, c1, c2, c3


# ---------------------------------------------------------------- keying ("Randomness")
STREAM_DOMAIN = 0x74737031
SLOT_SAMPLE, SLOT_PERMUTE = 0, 1


def augment_slot(k):
    return 16 + k


def stream_key(seed, rank, epoch):
    """Steps 1 and 2: root key (seed mod 2^32, seed >> 32); the stream key is words 0, 1
    of philox(K, (r, e, 0, domain))."""
    w = philox((rank, epoch, 0, STREAM_DOMAIN), (seed % 2 ** 32, seed >> 32))
    return w[0], w[1]


def draw(key, i, slot, block):
    """Step 3: philox(stream key, (i mod 2^32, i >> 32, s, b))."""
    return philox((i % 2 ** 32, i >> 32, slot, block), key)


def unit(w_lo, w_hi):
    """u = ((w1 << 21) | (w0 >> 11)) * 2^-53 (an integer below 2^53, so exact as a double)."""
    return float((w_hi << 21) | (w_lo >> 11)) * 2.0 ** -53


def uniform(key, i, slot, m):
    """Uniform m of a draw: block m // 2, words (w0, w1) for even m, (w2, w3) for odd m."""
    w = draw(key, i, slot, m // 2)
    return unit(w[0], w[1]) if m % 2 == 0 else unit(w[2], w[3])


def box_muller(u1, u2):
    """r = sqrt(-2 ln(1 - u1)), z = (r cos 2 pi u2, r sin 2 pi u2)."""
    r = math.sqrt(-2.0 * math.log(1.0 - u1))
    return r * math.cos(2.0 * math.pi * u2), r * math.sin(2.0 * math.pi * u2)


def normal(key, i, slot, m):
    """Normal m of a draw: the pair m // 2 is Box-Muller of uniforms (2p, 2p + 1) of the
    slot; an even m is its cosine, an odd m its sine."""
    p = m // 2
    z = box_muller(uniform(key, i, slot, 2 * p), uniform(key, i, slot, 2 * p + 1))
    return z[m % 2]


def permutation(key, n, group, pass_):
    """Stable argsort of the keys (w1 << 32) | w0 of the draws at position g 2^32 + p,
    slot 1, blocks j = 0..n-1 (equal keys keep the lower j first)."""
    keys = []
    for j in range(n):
        w = draw(key, group * 2 ** 32 + pass_, SLOT_PERMUTE, j)
        keys.append((w[1] << 32) | w[0])
    return sorted(range(n), key=lambda j: (keys[j], j))


# ---------------------------------------------------------------- "Partition"
def partition(clip, R, r):
    """Every part holds q_t records; the m_t left over go one each to the ranks
    f_t, ..., f_t + m_t - 1 (mod R), f_t the left-overs dealt before t (mod R); rank
    r's part starts after those of ranks 0..r-1."""
    starts, sizes = [], []
    dealt = 0
    for c in clip:
        q, m = divmod(c, R)
        first = dealt % R
        extra = [0] * R
        for i in range(m):
            extra[(first + i) % R] = 1
        starts.append(sum(q + extra[k] for k in range(r)))
        sizes.append(q + extra[r])
        dealt += m
    return starts, sizes


# ---------------------------------------------------------------- "Streams"
def choose(u, weights, candidates):
    """The smallest t in A with u * W_A < cumsum_A(w)_t (cumulative sums taken in index
    order over A, W_A the last of them; double arithmetic)."""
    W = 0.0
    for t in candidates:
        W += weights[t]
    x = u * W
    cum = 0.0
    for t in candidates:
        cum += weights[t]
        if x < cum:
            return t
    raise AssertionError("no tfrecord chosen")  # cannot happen for u < 1


def record(k, t, starts, sizes, shuffle, key, perm_cache):
    """The k-th pick of t: pass k // s_t, item k mod s_t, through the permutation of
    (group t, pass) with shuffle; plus the rank's start in t."""
    p, item = divmod(k, sizes[t])
    if shuffle:
        if (t, p) not in perm_cache:
            perm_cache[(t, p)] = permutation(key, sizes[t], t, p)
        item = perm_cache[(t, p)][item]
    return starts[t] + item


def plan(clip, weights, seed, rank=0, R=1, epoch=0, infinite=False, shuffle=False, n=None,
         uniforms=None):
    """(t, j) of positions 0..n-1 (the whole epoch when finite). ``uniforms`` replaces
    u_i (the first uniform of slot 0 at position i) when given."""
    key = stream_key(seed, rank, epoch)
    # a tfrecord of weight 0 takes no part in the partition ("Partition")
    starts, sizes = partition([c if w > 0 else 0 for c, w in zip(clip, weights)], R, rank)
    live = [t for t in range(len(clip)) if sizes[t] > 0 and weights[t] > 0]
    total = sum(sizes[t] for t in live)
    if not infinite:
        n = total
    picks = [0] * len(clip)
    perm_cache = {}
    ts, js = [], []
    for i in range(n):
        u = uniforms[i] if uniforms is not None else uniform(key, i, SLOT_SAMPLE, 0)
        A = live if infinite else [t for t in live if picks[t] < sizes[t]]
        t = choose(u, weights, A)
        ts.append(t)
        js.append(record(picks[t], t, starts, sizes, shuffle, key, perm_cache))
        picks[t] += 1
    return ts, js


# ---------------------------------------------------------------- the vectors
def philox_vectors():
    cases = [  # Random123's three known answers first: they check this file's Philox
        ((0, 0, 0, 0), (0, 0)),
        ((MASK,) * 4, (MASK,) * 2),
        ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)),
        ((1, 0, 0, 0), (0, 0)), ((0, 0, 0, 1), (0, 0)), ((0, 0, 0, 0), (1, 0)),
        ((0, 0, 0, 0), (0, 1)), ((7, 2 ** 31, 16, 3), (0x34BAEECF, 0x982DA0AB)),
    ]
    return [{"counter": list(c), "key": list(k), "words": list(philox(c, k))} for c, k in cases]


SEEDS = [0, 1, 99, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 0x0123456789ABCDEF, 2 ** 63 - 1]


def stream_key_vectors():
    out = []
    for seed in SEEDS:
        for rank, epoch in ((0, 0), (1, 0), (0, 1), (7, 12345), (2 ** 32 - 1, 2 ** 32 - 1)):
            out.append({"seed": str(seed), "rank": rank, "epoch": epoch,
                        "key": list(stream_key(seed, rank, epoch))})
    return out


POSITIONS = [0, 1, 2, 1023, 1024, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 40 + 7,
             2 ** 63 - 1]


def unit_vectors():
    """Words -> uniform by hand, at the ends of the range and of the dropped bits."""
    words = [(0, 0), (0x7FF, 0), (0x800, 0), (MASK, 0), (0, 1), (MASK, MASK), (0xFFFFF800, MASK),
             (0x12345678, 0x9ABCDEF0), (0, 0x80000000)]
    return [{"w_lo": lo, "w_hi": hi, "u": unit(lo, hi)} for lo, hi in words]


def uniform_vectors():
    out = []
    for seed, rank, epoch, slot in ((99, 0, 0, SLOT_SAMPLE), (5, 3, 2, augment_slot(0)),
                                    (2 ** 63 - 1, 1, 7, augment_slot(5))):
        key = stream_key(seed, rank, epoch)
        out.append({"seed": str(seed), "rank": rank, "epoch": epoch, "slot": slot,
                    "positions": [str(i) for i in POSITIONS], "n": 5,
                    "uniforms": [[uniform(key, i, slot, m) for m in range(5)] for i in POSITIONS]})
    return out


def normal_vectors():
    out = []
    for seed, rank, epoch, slot, n in ((99, 0, 0, augment_slot(4), 6),
                                       (7, 2, 1, augment_slot(0), 3),
                                       (2 ** 63 - 1, 0, 3, augment_slot(2), 8)):
        key = stream_key(seed, rank, epoch)
        out.append({"seed": str(seed), "rank": rank, "epoch": epoch, "slot": slot,
                    "positions": [str(i) for i in POSITIONS], "n": n,
                    "normals": [[normal(key, i, slot, m) for m in range(n)] for i in POSITIONS]})
    return out


def box_muller_vectors():
    """Box-Muller of given uniform pairs: u1 = 0 (r = 0), u1 just below 1 (the largest r),
    and u2 at the quarter turns."""
    pairs = [(0.0, 0.0), (0.0, 0.3), (BELOW_ONE, 0.0), (BELOW_ONE, 0.25), (0.5, 0.5),
             (0.5, 0.75), (ULP, BELOW_ONE), (0.25, 0.125), (0.9, 0.6)]
    return [{"u": [u1, u2], "z": list(box_muller(u1, u2))} for u1, u2 in pairs]


def permutation_vectors():
    out = []
    for seed, rank, epoch, n, group, pass_ in ((99, 0, 0, 0, 0, 0), (99, 0, 0, 1, 0, 0),
                                               (99, 0, 0, 7, 0, 0), (99, 0, 0, 7, 0, 1),
                                               (99, 0, 0, 7, 1, 0), (3, 1, 4, 20, 5, 3),
                                               (3, 1, 4, 12, 2 ** 32 - 1, 0),
                                               (2 ** 63 - 1, 2, 9, 33, 17, 2 ** 31)):
        key = stream_key(seed, rank, epoch)
        out.append({"seed": str(seed), "rank": rank, "epoch": epoch, "n": n, "group": group,
                    "pass": pass_, "permutation": permutation(key, n, group, pass_)})
    return out


def permutation_key_vectors():
    """Sort keys from given words (no generator): ties keep the lower j first; the high word
    w1 decides before w0."""
    cases = [
        [(5, 1), (4, 1), (6, 0)],                       # w1 first: (6, 0) is smallest
        [(1, 2), (1, 2), (0, 2), (1, 2)],               # equal keys in j order
        [(MASK, 0), (0, 1), (0, 0)],
        [(0, MASK), (MASK, MASK - 1), (3, 3), (3, 3), (2, 3)],
    ]
    out = []
    for words in cases:
        keys = [(w1 << 32) | w0 for w0, w1 in words]
        out.append({"words": [list(w) for w in words],
                    "permutation": sorted(range(len(keys)), key=lambda j: (keys[j], j))})
    return out


def partition_vectors():
    out = []
    for clip, R in (((10, 3, 0), 3), ((0, 1, 2, 5, 7), 4), ((6,), 1), ((5, 5), 7), ((100, 101), 8)):
        out.append({"clip": list(clip), "num_replicas": R,
                    "parts": [dict(zip(("starts", "sizes"), partition(clip, R, r)))
                              for r in range(R)]})
    return out


def _below(x):
    """The largest uniform (multiple of 2^-53) below x, for x in (0, 1]."""
    return (math.ceil(x * 2 ** 53) - 1) * 2.0 ** -53


def choice_vectors():
    """The choice rule on given uniforms: ties exactly on a cumulative weight, zero weights
    before, between and after positive ones, u = 0, u just below 1, and u where
    ``u * W < cum`` and ``u < cum / W`` disagree (a normalized CDF is a different rule)."""
    cases = [
        ((1.0, 1.0, 2.0), (0.0, 0.25, _below(0.25), 0.5, _below(0.5), 0.75, BELOW_ONE)),
        ((1.0, 0.0, 1.0), (0.0, 0.5, _below(0.5), BELOW_ONE)),
        ((0.0, 1.0, 1.0), (0.0, ULP, 0.5, BELOW_ONE)),
        ((1.0, 1.0, 0.0), (0.5, BELOW_ONE)),
        ((0.0, 0.0, 3.0, 0.0, 1.0, 0.0), (0.0, 0.75, _below(0.75), BELOW_ONE)),
        ((1 / 3, 1 / 3, 1 / 3), (1 / 3, _below(1 / 3), 2 / 3, _below(2 / 3), BELOW_ONE)),
        ((0.1, 0.2, 0.7), (0.1, 0.3, _below(0.3), 0.30000000000000004, BELOW_ONE)),
        ((1.0,), (0.0, BELOW_ONE)),
    ]
    for weights in ((5.0, 0.3, 1.1), (0.23, 0.23, 0.22), (0.78, 0.34, 0.21)):
        cases.append((weights, _disagreements(weights)))
    out = []
    for weights, us in cases:
        A = [t for t in range(len(weights)) if weights[t] > 0]
        out.append({"weights": list(weights), "u": list(us),
                    "t": [choose(u, weights, A) for u in us]})
    return out


def _disagreements(weights):
    """The uniforms within 8 steps of a cumulative weight where the rule u * W < cum and
    the rule u < cum / W pick different tfrecords, with their neighbours."""
    W, cum, found = 0.0, [], []
    for w in weights:
        W += w
        cum.append(W)
    for c in cum[:-1]:
        k0 = round(c / W * 2 ** 53)
        for k in range(k0 - 8, k0 + 9):
            u = k * 2.0 ** -53
            if (u * W < c) != (u < c / W):
                found += [(k - 1) * 2.0 ** -53, u, (k + 1) * 2.0 ** -53]
    assert found, weights
    return tuple(found)


PLAN_CASES = [
    # name, clip, weights, seed, rank, R, epoch, shuffle, infinite positions (None: finite only)
    ("worked_example", (3, 1, 2), (1.0, 3.0, 2.0), 99, 0, 1, 0, False, 8),
    ("worked_example_shuffled", (3, 1, 2), (1.0, 3.0, 2.0), 99, 0, 1, 0, True, 40),
    ("zero_weight_and_empty", (5, 0, 7, 3, 4), (0.25, 0.5, 0.0, 0.25, 1e-3), 7, 1, 2, 3, True, 60),
    ("many_small", (2, 3, 2, 2, 3, 2, 2, 3, 1, 2), (1, 2, 1, 3, 1, 1, 2, 1, 5, 1), 11, 0, 1, 0,
     False, 50),
    ("prefix_growth", (100,) * 6, (1.0,) * 6, 2 ** 63 - 1, 0, 1, 1, True, None),
    ("two_rare", (1, 2, 600), (1.0, 1.0, 50.0), 5, 0, 1, 0, False, None),
    ("infinite_blocks", (3, 5, 1, 8), (0.5, 1.0, 0.25, 2.0), 12345, 2, 3, 0, True, 2100),
]


def plan_vectors():
    out = []
    for name, clip, weights, seed, rank, R, epoch, shuffle, n_inf in PLAN_CASES:
        weights = [float(w) for w in weights]
        v = {"name": name, "clip": list(clip), "weights": weights, "seed": str(seed),
             "rank": rank, "num_replicas": R, "epoch": epoch, "shuffle": shuffle}
        v["finite"] = dict(zip(("t", "j"), plan(clip, weights, seed, rank, R, epoch, False,
                                                shuffle)))
        if n_inf:
            v["infinite"] = dict(zip(("t", "j"), plan(clip, weights, seed, rank, R, epoch, True,
                                                      shuffle, n_inf)))
        out.append(v)
    return out


def _table(n, rare):
    """Uniforms 0.75 everywhere (tfrecord 1 of weights (1, 1)) except 0.25 at ``rare``."""
    return [0.25 if i in rare else 0.75 for i in range(n)]


def given_uniform_plan_vectors():
    """Plans whose u_i are given, placing an exhaustion where the reference's planner
    cuts: its first finite window holds positions 0..255 here (256 is its minimum), so
    tfrecord 0 (one record) runs out on the window's last position, just after it, or
    just before; then ties, u = 0 and u just below 1 inside a plan."""
    cases = [
        ("exhausted_at_window_end", (1, 400), (1.0, 1.0), _table(401, {255})),
        ("exhausted_just_after_window", (1, 400), (1.0, 1.0), _table(401, {256})),
        ("exhausted_just_before_window_end", (1, 400), (1.0, 1.0), _table(401, {254})),
        ("exhausted_at_second_window_end", (2, 600), (1.0, 1.0), _table(602, {3, 511})),
        ("exhausted_just_after_second_window", (2, 600), (1.0, 1.0), _table(602, {3, 512})),
        ("ties_on_boundaries", (3, 3, 3), (1.0, 1.0, 2.0),
         [0.25, 0.5, 0.0, BELOW_ONE, 0.25, 0.5, 0.25, 0.5, 0.75]),
        ("zero_weight_between", (2, 5, 2), (1.0, 0.0, 1.0), [0.5, 0.5, 0.0, _below(0.5)]),
        ("all_exhaust_in_one_window", (2,) * 7, (1.0,) * 7,
         [(i * 0.6180339887498949) % 1.0 for i in range(14)]),
    ]
    out = []
    for name, clip, weights, us in cases:
        ts, js = plan(clip, weights, 0, uniforms=us)
        out.append({"name": name, "clip": list(clip), "weights": list(weights), "uniforms": us,
                    "finite": {"t": ts, "j": js},
                    "infinite": dict(zip(("t", "j"), plan(clip, weights, 0, infinite=True,
                                                          n=len(us), uniforms=us)))})
    return out


FILES = {
    "philox.json": ("Philox4x32-10 words of (counter, key)", "Generator", philox_vectors),
    "stream_keys.json": ("stream key of (seed, rank, epoch); seeds are decimal strings",
                         "Keying 1-2", stream_key_vectors),
    "unit.json": ("words (w0, w1) -> uniform u", "Uniforms", unit_vectors),
    "uniforms.json": ("uniforms 0..n-1 of (stream, position, slot); positions are decimal "
                      "strings", "Keying 3, Uniforms", uniform_vectors),
    "normals.json": ("normals 0..n-1 of (stream, position, slot)", "Normals", normal_vectors),
    "box_muller.json": ("Box-Muller of given (u1, u2)", "Normals", box_muller_vectors),
    "permutations.json": ("permutation of n items for (group, pass) of a stream",
                          "Permutations", permutation_vectors),
    "permutation_keys.json": ("stable argsort of the keys (w1 << 32) | w0 of given words",
                              "Permutations", permutation_key_vectors),
    "partition.json": ("every rank's (starts, sizes) of clip over R ranks", "Partition",
                       partition_vectors),
    "choice.json": ("tfrecord chosen for given u over weights (zero-weight ones are not "
                    "candidates)", "Streams: choice rule", choice_vectors),
    "plans.json": ("finite epoch and first positions of the infinite stream, (t, j) per "
                   "position", "Streams", plan_vectors),
    "plans_given_uniforms.json": ("plans with u_i given (replacing the generator)",
                                  "Streams: choice rule, finite, infinite",
                                  given_uniform_plan_vectors),
}


def dump(doc):
    """JSON with one vector per line (small diffs, exact floats)."""
    head = {k: v for k, v in doc.items() if k != "vectors"}
    lines = [json.dumps(head)[:-1] + ', "vectors": [']
    lines += [" " + json.dumps(v) + ("," if i < len(doc["vectors"]) - 1 else "")
              for i, v in enumerate(doc["vectors"])]
    return "\n".join(lines) + "\n]}\n"


def build_files(chapter, table):
    """{file name: text} of every vector file of ``chapter`` (a table {name: (what,
    section, make)}) and its manifest; the other chapters' scripts build theirs with it."""
    files, manifest = {}, {"description": f"Known answers of {chapter}, made by "
                                          "make_vectors.py from the spec's text.", "files": []}
    for name, (what, section, make) in table.items():
        files[name] = dump({"chapter": chapter, "section": section,
                            "description": what, "vectors": make()})
        manifest["files"].append({"file": name, "section": section, "description": what})
    files["manifest.json"] = json.dumps(manifest, indent=1) + "\n"
    return files


def write_files(files, folder):
    """Write what :func:`build_files` made into ``folder``."""
    for name, text in files.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            f.write(text)
    print(f"wrote {len(files)} files to {folder}")
    return 0


def build():
    """{file name: text} of every vector file and the manifest."""
    return build_files("spec/sampling.md", FILES)


def main():
    return write_files(build(), HERE)


if __name__ == "__main__":
    sys.exit(main())
