"""A statistical conformance audit of any tile loader (spec/audit.md).

:func:`audit` builds a loader over the traceable dataset (:mod:`tilespec.traceable`)
with ``make_loader(dataset, **options)`` once per check, reads the record and the
operations applied back from every yielded image, and compares what it sees with
spec/sampling.md and spec/images.md: exact counts where the spec is exact, SciPy
tests with a stated alpha and power where it is random. It needs no shared seed, so
it checks loaders that have their own randomness; only the rotation direction
needs tilespec's draws (see spec/audit.md, "What it cannot detect").
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Mapping

import numpy as np
from scipy import stats

from . import augment
from .testing import ConformanceError, field_names, to_numpy
from .traceable import (SYMMETRIES, Tracer, image_hwc, symmetry_of, true_labels,
                        write_traceable_dataset)

ALPHA = 0.001
DEFAULT_TILES = 1000
DEFAULT_SEED = 20261201
DEFAULT_SHARDS = ({"num_replicas": 2}, {"num_replicas": 3})
CLIP = 10
SAMPLING_FACTOR = 2   # the sampling runs read this many times ``tiles`` items each
#: custom weights of the weighted sampling run (one tfrecord weight 0), by tfrecord order
CUSTOM_WEIGHTS = (3.0, 1.0, 2.0, 0.0, 1.0, 2.0)
JPEG_QUALITIES = tuple(range(30, 101))     # candidates; the spec draws 50..100
BLUR_SIGMAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
SPEC_SIGMAS = augment.BLUR_SIGMAS                                   # the sigmas the spec draws
SPEC_SIGMA_P = tuple(np.diff((0.0, *augment.BLUR_CDF, 1.0)).tolist())  # and their probabilities
CHECKS = ("finite", "shards", "clip", "sampling", "labels", "fields", "flip_x", "flip_y",
          "rot90", "jpeg", "blur", "standardize")


@dataclass
class Check:
    """One audit check's result (spec/audit.md)."""

    name: str
    status: str              # 'pass', 'fail', 'n/a' or 'error'
    measured: str
    expected: str
    test: str
    alpha: float | None = None
    power: str = ""
    n: int = 0
    details: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "n/a")


@dataclass
class AuditReport:
    """The checks of one audit; ``str()`` is a table (spec/audit.md, "The report")."""

    checks: list
    seconds: float
    tiles: int
    seed: int
    options: dict

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list:
        return [c for c in self.checks if not c.ok]

    def __getitem__(self, name: str) -> Check:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "seconds": round(self.seconds, 2), "tiles": self.tiles,
                "seed": self.seed, "options": {k: repr(v) if not isinstance(
                    v, (int, float, str, bool, type(None))) else v
                    for k, v in self.options.items()},
                "checks": [_jsonable(asdict(c)) for c in self.checks]}

    def __str__(self) -> str:
        w = max(len(c.name) for c in self.checks) if self.checks else 5
        lines = [f"{'check':<{w}}  result  measured", f"{'':<{w}}          expected | test | "
                 "alpha | power | n", "-" * 78]
        for c in self.checks:
            lines.append(f"{c.name:<{w}}  {c.status.upper():<6}  {c.measured}")
            lines.append(f"{'':<{w}}          {c.expected} | {c.test} | "
                         f"{'-' if c.alpha is None else f'{c.alpha:g}'} | {c.power or '-'} | {c.n}")
        lines.append("-" * 78)
        lines.append(f"{'PASSED' if self.ok else 'FAILED'}: {len(self.checks) - len(self.failures)}"
                     f" of {len(self.checks)} checks passed, {len(self.failures)} failed "
                     f"({self.seconds:.1f} s, tiles={self.tiles}, seed={self.seed})")
        return "\n".join(lines)

    def assert_ok(self) -> "AuditReport":
        """Raise :class:`ConformanceError` listing every failed check."""
        if not self.ok:
            raise ConformanceError(
                f"{len(self.failures)} audit check(s) failed:\n" + "\n".join(
                    f"- {c.name}: {c.status}: measured {c.measured}; expected {c.expected} "
                    f"({c.test})" for c in self.failures))
        return self


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        return None if not math.isfinite(float(x)) else float(x)
    return x


# ------------------------------------------------------------------------ statistics
def binom_p(k: int, n: int, p: float) -> float:
    """Exact binomial test, equal tails: 2 min(P(X <= k), P(X >= k)), at most 1."""
    if n == 0:
        return 1.0
    return float(min(1.0, 2 * min(stats.binom.cdf(k, n, p), stats.binom.sf(k - 1, n, p))))


def binom_power(n: int, p0: float, p1: float, alpha: float = ALPHA) -> float:
    """Power of :func:`binom_p` at ``alpha`` against the true rate ``p1``."""
    if n == 0:
        return 0.0
    k = np.arange(n + 1)
    p = np.minimum(1, 2 * np.minimum(stats.binom.cdf(k, n, p0), stats.binom.sf(k - 1, n, p0)))
    return float(stats.binom.pmf(k[p < alpha], n, p1).sum())


def chi2_power(n: int, p0, p1, alpha: float = ALPHA) -> float:
    """Power of Pearson's chi-square goodness-of-fit test (noncentral chi-square)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    df = len(p0) - 1
    lam = n * float(((p1 - p0) ** 2 / p0).sum())
    return float(stats.ncx2.sf(stats.chi2.ppf(1 - alpha, df), df, lam))


def chi2_p(counts, probs) -> float:
    counts = np.asarray(counts, float)
    probs = np.asarray(probs, float)
    if counts.sum() == 0:
        return 1.0
    return float(stats.chisquare(counts, probs / probs.sum() * counts.sum()).pvalue)


def _fmt_p(p):
    return f"p={p:.2g}"


# ------------------------------------------------------------------------ reading items
@dataclass
class Seen:
    """One yielded item, decoded."""

    index: int
    image: np.ndarray      # HWC, as yielded (dtype kept)
    layout: str
    fields: dict
    rid: int | None
    symmetry: tuple | None
    flat: bool


def _unbatch(item, names):
    """Items of one yielded element (an item or a batch)."""
    item = tuple(item)
    img = to_numpy(item[0])
    if img.ndim == 4:
        n = img.shape[0]
        cols = [img] + [to_numpy(v) for v in item[1:]]
        out = []
        for i in range(n):
            out.append(tuple(None if c is None else (c[i] if np.ndim(c) else c) for c in cols))
        return out
    return [(img,) + tuple(to_numpy(v) for v in item[1:])]


def _read(loader, n, names, tracer, layout=None):
    """Decode the first ``n`` items (all when ``n`` is None) of ``loader``."""
    out = []
    it = iter(loader)
    try:
        while n is None or len(out) < n:
            try:
                elem = next(it)
            except StopIteration:
                break
            for item in _unbatch(elem, names):
                img, lay = image_hwc(item[0], layout)
                fields = {name: v for name, v in zip(names[1:], item[1:])}
                tr = tracer.identify(img)
                out.append(Seen(len(out), img, lay, fields, tr.rid, tr.symmetry, tr.flat))
                if n is not None and len(out) >= n:
                    break
    finally:
        close = getattr(it, "close", None) or getattr(loader, "close", None)
        if callable(close):
            try:
                close()
            except Exception:  # pragma: no cover - best effort
                pass
        del it
    return out


# ------------------------------------------------------------------------ the audit
class _Audit:
    def __init__(self, make_loader, options, root, tiles, seed, shards, layout, alpha):
        from .dataset import Dataset

        self.make_loader = make_loader
        self.options = dict(options or {})
        self.root = root
        self.tiles = int(tiles)
        self.seed = int(seed)
        self.shards = [dict(s) for s in (shards if shards is not None else DEFAULT_SHARDS)]
        self.layout = layout
        self.alpha = alpha
        self.dataset = Dataset(tfrecords=os.path.join(root, "tfrecords"),
                               annotations=os.path.join(root, "annotations.csv"))
        self.paths = self.dataset.tfrecords()
        geo = {k: self.options[k] for k in ("crop_left", "crop_width", "resize_target",
                                            "resize_method", "resize_aa") if k in self.options}
        self.tracer = Tracer(self.paths, **geo)
        self.layouts = set()

    def run(self, dataset=None, n=None, **opts):
        """Build a loader with the base options plus ``opts`` and decode its items."""
        o = dict(self.options)
        o.setdefault("seed", self.seed)
        o.update(opts)
        names = field_names(0, o)
        loader = self.make_loader(self.dataset if dataset is None else dataset, **o)
        seen = _read(loader, n, names, self.tracer, self.layout)
        self.layouts.update(s.layout for s in seen)
        return seen

    def finite_run(self, dataset=None, **opts):
        return self.run(dataset, None, infinite=False, augment=False, standardize=False,
                        **opts)

    # -- exact checks -----------------------------------------------------------------
    def _once(self, seen, expected_keys, allowed_dup=0):
        counts = {}
        unknown = 0
        for s in seen:
            if s.rid is None:
                unknown += 1
                continue
            counts[s.rid] = counts.get(s.rid, 0) + 1
        expect = {self.tracer.by_key[k] for k in expected_keys}
        dups = sum(c - 1 for c in counts.values() if c > 1)
        misses = len(expect - set(counts))
        extra = len(set(counts) - expect)
        ok = misses == 0 and extra == 0 and unknown == 0 and dups <= allowed_dup
        return ok, {"items": len(seen), "expected": len(expect), "duplicates": dups,
                    "missing": misses, "unexpected": extra, "unrecognized": unknown}

    def _kept(self, clip=None):
        table = self.dataset.sampling_table() if clip is None else clip.sampling_table()
        return [(t, j) for t in range(len(table.paths)) if table.weights[t] > 0
                for j in range(int(table.clip[t]))]

    def check_finite(self):
        seen = self.finite_run()
        ok, d = self._once(seen, self._kept())
        return Check("finite", "pass" if ok else "fail",
                     f"{d['items']} items: {d['duplicates']} duplicates, {d['missing']} missing, "
                     f"{d['unexpected']} unexpected, {d['unrecognized']} unrecognized",
                     f"each of {d['expected']} records exactly once",
                     "exact count (infinite=False, one epoch)", None, "1 (exact)", d["items"], d)

    def check_shards(self):
        L = len(self._kept())
        parts, bad = [], []
        total_items = 0
        for cfg in self.shards:
            R = int(cfg.get("num_replicas", 1))
            per_rank = []
            for r in range(R):
                seen = self.finite_run(**dict(cfg, rank=r, num_replicas=R))
                per_rank.append(seen)
                total_items += len(seen)
            sets = [set(s.rid for s in seen if s.rid is not None) for seen in per_rank]
            overlap = sum(len(sets[a] & sets[b]) for a in range(R) for b in range(a + 1, R))
            pads = (-L) % R
            ok, d = self._once([s for seen in per_rank for s in seen], self._kept(),
                               allowed_dup=pads)
            d.update(config=cfg, ranks=R, overlap_between_ranks=overlap,
                     per_rank=[len(x) for x in per_rank], pads_allowed=pads)
            ok = ok and overlap <= pads
            parts.append(d)
            if not ok:
                bad.append(d)
        measured = "; ".join(
            f"{_cfg(d['config'])}: items per rank {d['per_rank']}, overlap {d['overlap_between_ranks']}, "
            f"missing {d['missing']}, duplicates {d['duplicates']}" for d in parts)
        return Check("shards", "fail" if bad else "pass", measured,
                     f"ranks disjoint (at most R-1 pads), union = all {L} records",
                     "exact count per rank x worker configuration", None, "1 (exact)",
                     total_items, {"configs": parts})

    def check_clip(self):
        ds = self.dataset.clip(CLIP)
        seen = self.finite_run(ds)
        ok, d = self._once(seen, self._kept(ds))
        over = sum(1 for s in seen if s.rid is not None and
                   self.tracer.records[s.rid].index >= CLIP)
        d["beyond_clip"] = over
        ok = ok and over == 0
        return Check("clip", "pass" if ok else "fail",
                     f"{d['items']} items: {over} beyond the clip, {d['duplicates']} duplicates, "
                     f"{d['missing']} missing", f"the first {CLIP} records of each tfrecord "
                     "exactly once", "exact count (clip(10), one epoch)", None, "1 (exact)",
                     d["items"], d)

    # -- sampling ---------------------------------------------------------------------
    def check_sampling(self):
        n = SAMPLING_FACTOR * self.tiles
        T = len(self.paths)
        res = {}
        # run A: 'slide' balancing (equal weights)
        ds_a = self.dataset.balance(strategy="slide")
        w_a = np.asarray(ds_a.sampling_table().weights)
        # run B: custom weights with a zero, clipped
        ds_b = self.dataset.clip(CLIP + 2)
        cw = list(CUSTOM_WEIGHTS[:T]) + [1.0] * max(0, T - len(CUSTOM_WEIGHTS))
        ds_b.prob_weights = dict(zip(self.paths, cw))
        w_b = np.asarray(ds_b.sampling_table().weights)
        failed = []
        for name, ds, w in (("slide", ds_a, w_a), ("custom", ds_b, w_b)):
            seen = self.run(ds, n, infinite=True, augment=False, standardize=False)
            t = [self.tracer.records[s.rid].t for s in seen if s.rid is not None]
            counts = np.bincount(t, minlength=T)
            pos = w > 0
            p = chi2_p(counts[pos], w[pos])
            zero = int(counts[~pos].sum())
            beyond = 0
            if name == "custom":
                beyond = sum(1 for s in seen if s.rid is not None and
                             self.tracer.records[s.rid].index >= CLIP + 2)
            unknown = sum(1 for s in seen if s.rid is None)
            res[name] = {"counts": counts.tolist(), "weights": w.round(4).tolist(), "p": p,
                         "drawn_with_weight_0": zero, "beyond_clip": beyond,
                         "unrecognized": unknown, "items": len(seen)}
            if p < self.alpha or zero or beyond or unknown or len(seen) < n:
                failed.append(name)
        # power against one tfrecord's weight 50% higher (others renormalized) and
        # against the 'tile' weights (the dataset's counts)
        p1 = w_a.copy()
        p1[0] *= 1.5
        p1 /= p1.sum()
        tile = np.asarray(self.dataset.sampling_table().clip, float)
        power = (f"{chi2_power(n, w_a, p1, self.alpha):.3f} vs one weight x1.5; "
                 f"{chi2_power(n, w_a, tile / tile.sum(), self.alpha):.3f} vs 'tile' weights")
        a, b = res["slide"], res["custom"]
        return Check(
            "sampling", "fail" if failed else "pass",
            f"slide: counts {a['counts']} ({_fmt_p(a['p'])}); custom: counts {b['counts']} "
            f"({_fmt_p(b['p'])}), {b['drawn_with_weight_0']} drawn with weight 0, "
            f"{b['beyond_clip']} beyond clip",
            f"frequencies prop. to prob_weights {a['weights']} and {b['weights']}; "
            "weight 0 never drawn; clip honoured",
            "chi-square goodness of fit per tfrecord (2 infinite runs) + exact counts",
            self.alpha, power, 2 * n, res)

    # -- labels and fields ------------------------------------------------------------
    def _labelled(self):
        if not hasattr(self, "_labelled_seen"):
            labels, _cats = true_labels(self.root)
            self._labels = labels
            self._labelled_seen = self.finite_run(labels=labels, incl_slidenames=True,
                                                  incl_loc=True)
        return self._labelled_seen

    def check_labels(self):
        seen = self._labelled()
        bad, renamed, unknown = 0, 0, 0
        examples = []
        for s in seen:
            if s.rid is None:
                unknown += 1
                continue
            rec = self.tracer.records[s.rid]
            want = self._labels[rec.slide]
            got = s.fields.get("label")
            got = None if got is None else np.asarray(got).item()
            if got != want:
                bad += 1
                if len(examples) < 3:
                    examples.append(f"{rec.slide} record {rec.index}: {got!r} != {want!r}")
            if os.path.basename(rec.path).rsplit(".", 1)[0] != rec.slide:
                renamed += 1
        ok = bad == 0 and unknown == 0 and renamed > 0
        return Check("labels", "pass" if ok else "fail",
                     f"{bad} wrong of {len(seen)} ({renamed} from the renamed file)"
                     + (f": {'; '.join(examples)}" if examples else ""),
                     "labels[slide stored in the record] (never the file name)",
                     "exact, every record once", None, "1 (exact)", len(seen),
                     {"wrong": bad, "from_renamed_file": renamed, "unrecognized": unknown,
                      "examples": examples})

    def check_fields(self):
        seen = self._labelled()
        bad_slide, bad_loc, examples = 0, 0, []
        for s in seen:
            if s.rid is None:
                continue
            rec = self.tracer.records[s.rid]
            slide = s.fields.get("slide")
            slide = None if slide is None else str(np.asarray(slide).item())
            if slide != rec.slide:
                bad_slide += 1
                if len(examples) < 3:
                    examples.append(f"slide {slide!r} != {rec.slide!r}")
            loc = tuple(None if s.fields.get(k) is None else int(np.asarray(s.fields[k]).item())
                        for k in ("loc_x", "loc_y"))
            if loc != tuple(rec.loc):
                bad_loc += 1
                if len(examples) < 3:
                    examples.append(f"loc {loc} != {tuple(rec.loc)}")
        ok = bad_slide == 0 and bad_loc == 0
        return Check("fields", "pass" if ok else "fail",
                     f"{bad_slide} wrong slide names, {bad_loc} wrong locations of {len(seen)}"
                     + (f": {'; '.join(examples)}" if examples else ""),
                     "incl_slidenames / incl_loc values equal the record's",
                     "exact, every record once", None, "1 (exact)", len(seen),
                     {"wrong_slide": bad_slide, "wrong_loc": bad_loc, "examples": examples})

    # -- augmentation -----------------------------------------------------------------
    def _aug_run(self, char):
        # a seed of its own per character: the first character of every string reads
        # the same slot, so one seed would make the x, y and j checks the same draws
        seed = self.check_seed(char)
        return self.run(None, self.tiles, infinite=True, augment=char, standardize=False,
                        seed=seed)

    def _short(self, seen) -> str:
        """A note when an infinite stream ended early (the power shown is at the
        items it gave)."""
        return (f" (the infinite stream ended after {len(seen)} of {self.tiles} items)"
                if len(seen) < self.tiles else "")

    def check_seed(self, char) -> int:
        return int(self.options.get("seed", self.seed)) + "xyrjb".index(char)

    def check_flip(self, char):
        seen = self._aug_run(char)
        op = "flip_left_right" if char == "x" else "flip_up_down"
        g_on = symmetry_of([op])
        pat = [s for s in seen if s.rid is not None and not s.flat]
        on = sum(1 for s in pat if s.symmetry == g_on)
        other = sum(1 for s in pat if s.symmetry not in (g_on, (0, 0)))
        n = len(pat)
        p = binom_p(on, n, 0.5)
        ok = p >= self.alpha and other == 0 and n > 0
        return Check(f"flip_{char}", "pass" if ok else "fail",
                     f"rate {on / max(n, 1):.3f} ({on}/{n}, {_fmt_p(p)}), {other} other transforms"
                     + self._short(seen),
                     f"{op} with p = 0.5, nothing else", "exact binomial, two-sided",
                     self.alpha, f"{binom_power(n, 0.5, 0.4, self.alpha):.3f} vs p=0.4; "
                     f"{binom_power(n, 0.5, 0.25, self.alpha):.3f} vs p=0.25", n,
                     {"applied": on, "n": n, "other": other, "p": p})

    def check_rot90(self):
        from .rng import augment_slot, stream_key, uniforms

        seen = self._aug_run("r")
        pat = [s for s in seen if s.rid is not None and not s.flat]
        ks = np.array([s.symmetry[1] if s.symmetry[0] == 0 else -1 for s in pat])
        other = int((ks < 0).sum())
        counts = np.bincount(ks[ks >= 0], minlength=4)
        n = len(pat)
        p = chi2_p(counts, [0.25] * 4)
        # direction: only observable against tilespec's own draws (k and -k are both
        # uniform); items are stream positions 0, 1, ... of (seed, rank 0, epoch 0)
        seed = self.check_seed("r")
        u = uniforms(stream_key(int(seed), 0, 0), np.arange(len(seen), dtype=np.int64),
                     augment_slot(0), 2)[:, 0]
        kref = np.floor(4 * u).astype(int)
        idx = np.array([s.index for s in pat], dtype=int)
        kr = kref[idx] if len(idx) else np.zeros(0, int)
        odd = np.isin(kr, (1, 3)) & (ks >= 0)
        ccw = float((ks[odd] == kr[odd]).mean()) if odd.any() else float("nan")
        cw = float((ks[odd] == (-kr[odd]) % 4).mean()) if odd.any() else float("nan")
        if odd.sum() >= 20 and ccw > 0.9:
            direction, dir_ok = "counter-clockwise (agrees with tilespec's draws)", True
        elif odd.sum() >= 20 and cw > 0.9:
            direction, dir_ok = "CLOCKWISE (tilespec's draws k turn the other way)", False
        else:
            direction, dir_ok = "not observable (the loader's draws are its own)", True
        ok = p >= self.alpha and other == 0 and dir_ok and n > 0
        p1 = [0.35, 0.65 / 3, 0.65 / 3, 0.65 / 3]
        return Check("rot90", "pass" if ok else "fail",
                     f"k counts {counts.tolist()} ({_fmt_p(p)}), {other} flipped; direction "
                     f"{direction}" + self._short(seen), "k uniform on 0..3, rot90 counter-clockwise",
                     "chi-square on k; direction by agreement with tilespec's draws",
                     self.alpha, f"{chi2_power(n, [0.25] * 4, p1, self.alpha):.3f} vs "
                     "P(k=0)=0.35", n, {"counts": counts.tolist(), "p": p, "other": other,
                                        "ccw_agreement": ccw, "cw_agreement": cw,
                                        "direction": direction})

    def _scale(self, s):
        return "levels"

    def check_jpeg(self):
        seen = self._aug_run("j")
        pat = [s for s in seen if s.rid is not None and not s.flat]
        cands = [("none", None)] + [("jpeg", q) for q in JPEG_QUALITIES]
        qs, other, none_n = [], 0, 0
        for s in pat:
            if s.symmetry != (0, 0):
                other += 1
                continue
            op, q, _d, _dn = self.tracer.classify(s.image, s.rid, (0, 0), cands, coarse=5)
            if op == "none":
                none_n += 1
            else:
                qs.append(q)
        n = len(pat) - other
        nj = len(qs)
        p_rate = binom_p(nj, n, 0.5)
        qs = np.asarray(qs, int)
        in_range = qs[(qs >= 50) & (qs <= 100)]
        out_range = int(nj - len(in_range))
        counts = np.bincount(in_range - 50, minlength=51)
        p_q = chi2_p(counts, [1] * 51)
        p100 = binom_p(int(counts[50]), nj, 1 / 51)
        p50 = binom_p(int(counts[0]), nj, 1 / 51)
        ok = (p_rate >= self.alpha and p_q >= self.alpha and p100 >= self.alpha and
              p50 >= self.alpha and out_range == 0 and other == 0 and n > 0)
        # power of "never 100": the q=100 test rejects when none of n_j has q=100 and
        # P(0 | 1/51) * 2 < alpha; n_j ~ Binomial(n, 1/2)
        m = math.ceil(math.log(self.alpha / 2) / math.log(50 / 51))
        p_never = float(stats.binom.sf(m - 1, n, 0.5)) if n else 0.0
        lo = int(qs.min()) if nj else None
        hi = int(qs.max()) if nj else None
        return Check("jpeg", "pass" if ok else "fail",
                     f"rate {nj / max(n, 1):.3f} ({nj}/{n}, {_fmt_p(p_rate)}); quality "
                     f"{lo}..{hi}, {int(counts[50])} at 100 ({_fmt_p(p100)}), {int(counts[0])} "
                     f"at 50, {out_range} outside 50..100, uniformity {_fmt_p(p_q)}"
                     + self._short(seen),
                     "p = 0.5; quality uniform on 50..100",
                     "binomial (rate; q=50 and q=100 counts vs 1/51), chi-square over 51 qualities",
                     self.alpha, f"rate {binom_power(n, 0.5, 0.4, self.alpha):.3f} vs p=0.4; "
                     f"{p_never:.3f} vs 'never 100'", n,
                     {"applied": nj, "n": n, "p_rate": p_rate, "quality_counts": counts.tolist(),
                      "p_quality": p_q, "p_q100": p100, "p_q50": p50, "outside": out_range,
                      "other": other})

    def check_blur(self):
        seen = self._aug_run("b")
        pat = [s for s in seen if s.rid is not None and not s.flat]
        cands = [("none", None)] + [("blur", s) for s in BLUR_SIGMAS]
        sig, other = [], 0
        for s in pat:
            if s.symmetry != (0, 0):
                other += 1
                continue
            op, a, _d, _dn = self.tracer.classify(s.image, s.rid, (0, 0), cands)
            if op == "blur":
                sig.append(a)
        n = len(pat) - other
        nb = len(sig)
        p_rate = binom_p(nb, n, 0.1)
        sig = np.asarray(sig, float)
        counts = np.array([(sig == s).sum() for s in SPEC_SIGMAS])
        outside = int(nb - counts.sum())
        p_mix = chi2_p(counts, SPEC_SIGMA_P)
        ok = p_rate >= self.alpha and p_mix >= self.alpha and outside <= 0.01 * max(nb, 1) \
            and other == 0 and n > 0
        return Check("blur", "pass" if ok else "fail",
                     f"rate {nb / max(n, 1):.3f} ({nb}/{n}, {_fmt_p(p_rate)}); sigma "
                     f"0.5/1/1.5/2: {counts.tolist()} ({_fmt_p(p_mix)}), {outside} other"
                     + self._short(seen),
                     "p = 0.1; sigma 0.5, 1, 1.5, 2 with p 1/2, 1/4, 1/8, 1/8",
                     "binomial (rate), chi-square (sigma mix)", self.alpha,
                     f"rate {binom_power(n, 0.1, 0.17, self.alpha):.3f} vs p=0.17; mix "
                     f"{chi2_power(nb or int(0.1 * n), SPEC_SIGMA_P, (0.7, 0.1, 0.1, 0.1), self.alpha):.3f}"
                     " vs (0.7, 0.1, 0.1, 0.1)", n,
                     {"applied": nb, "n": n, "p_rate": p_rate, "sigma_counts": counts.tolist(),
                      "p_mix": p_mix, "outside": outside, "other": other})

    # -- layout, dtype, standardization -----------------------------------------------
    def check_standardize(self):
        from . import ops

        problems, n = [], 0
        worst = {}
        for mode in (False, "unit", "per_image"):
            seen = self.run(None, None, infinite=False, augment=False, standardize=mode)
            n += len(seen)
            flats = 0
            bad, err = 0, 0.0
            for s in seen:
                x = s.image
                if mode is False:
                    if x.dtype != np.uint8:
                        problems.append(f"standardize=False: dtype {x.dtype}, expected uint8")
                        break
                elif x.dtype != np.float32:
                    problems.append(f"standardize={mode!r}: dtype {x.dtype}, expected float32")
                    break
                if not np.all(np.isfinite(x.astype(np.float64))):
                    bad += 1
                    err = float("inf")
                    continue
                if s.flat:
                    flats += 1
                    if mode == "per_image":
                        e = float(np.abs(x).max())
                        err = max(err, e)
                        bad += e > 1e-6
                    continue
                if s.rid is None or s.symmetry != (0, 0):
                    bad += 1
                    continue
                base = self.tracer.records[s.rid].base
                if x.shape != base.shape:
                    problems.append(f"standardize={mode!r}: image shape {x.shape} (as HWC), "
                                    f"expected {base.shape}")
                    break
                ref = base if mode is False else ops.standardize(base, mode)
                d = np.abs(x.astype(np.float64) - ref.astype(np.float64))
                if mode == "per_image":
                    b = ref.astype(np.float64)
                    m = float(base.mean())
                    sd = max(float(base.std()), 1 / math.sqrt(base.size))
                    tol = 1e-6 * (1 + np.abs(b) + m / sd)
                else:
                    tol = 0.0 if mode is False else 1e-6
                e = float((d - tol).max())
                err = max(err, float(d.max()))
                bad += e > 0
            n_flat = sum(1 for r in self.tracer.records if r.flat is not None)
            if bad:
                problems.append(f"standardize={mode!r}: {bad} of {len(seen)} images wrong "
                                f"(max |diff| {err:.3g})")
            if flats != n_flat:
                problems.append(f"standardize={mode!r}: {flats} flat images, expected {n_flat}")
            worst[str(mode)] = err
        lay = sorted(self.layouts)
        if len(lay) > 1:
            problems.append(f"images in more than one layout: {lay}")
        if self.layout is not None and lay and lay != [self.layout]:
            problems.append(f"layout {lay}, expected {self.layout}")
        return Check("standardize", "fail" if problems else "pass",
                     ("; ".join(problems) if problems else
                      f"layout {'/'.join(lay)}; max |diff| uint8 {worst.get('False', 0):g}, unit "
                      f"{worst.get('unit', 0):.2g}, per_image {worst.get('per_image', 0):.2g}"),
                     "uint8 exact; 'unit' x/127.5-1 (1e-6); 'per_image' (x-mean)/max(std, "
                     "1/sqrt(N)) within spec/images.md's bound; flat tiles -> 0",
                     "exact comparison with the record's pixels (3 epochs)", None,
                     "1 (exact)", n, {"problems": problems, "layouts": lay, "max_diff": worst})


def _cfg(cfg):
    return ", ".join(f"{k}={v}" for k, v in cfg.items())


def audit(make_loader: Callable, *, options: Mapping | None = None, dataset=None,
          tiles: int = DEFAULT_TILES, seed: int = DEFAULT_SEED, shards=None,
          layout: str | None = None, checks=None, alpha: float = ALPHA,
          tile_px: int = 64, image_format: str = "png") -> AuditReport:
    """Audit a loader against the spec, statistically (spec/audit.md).

    ``make_loader(dataset, **options)`` returns an iterable of items (or batches) in
    the page's layout ``(image, label[, slide][, loc_x, loc_y])``; ``dataset`` is a
    :class:`tilespec.Dataset` over the traceable dataset (``dataset.tfrecords()``
    gives the files, ``dataset.sampling_table()`` the clip and weights). Each check
    calls it with ``options`` plus what the check sets (``infinite``, ``augment``,
    ``standardize``, ``seed``, ``labels``, ``incl_slidenames``, ``incl_loc``,
    ``rank``/``num_replicas`` and the entries of ``shards``).

    ``dataset``: the folder of a traceable dataset (:func:`write_traceable_dataset`),
    or None to write one (``tile_px``, ``image_format``) in a temporary folder.
    ``tiles``: items read by each random check. ``shards``: the rank x worker
    configurations of the shards check, dicts of loader options with
    ``num_replicas`` (default ``[{'num_replicas': 2}, {'num_replicas': 3}]``; add
    e.g. ``'num_workers': 2`` for a torch loader). ``layout``: 'HWC' or 'CHW' when
    the loader promises one (default: detected, and checked to be consistent).
    ``checks``: names to run (default all, :data:`CHECKS`). A check whose loader
    raises is reported as 'error'.
    """
    t0 = time.perf_counter()
    names = list(CHECKS if checks is None else checks)
    unknown = [c for c in names if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown audit check(s) {unknown}; valid: {', '.join(CHECKS)}")
    if layout not in (None, "HWC", "CHW"):
        raise ValueError(f"layout must be 'HWC', 'CHW' or None, got {layout!r}")
    tmp = None
    if dataset is None:
        tmp = tempfile.TemporaryDirectory(prefix="tilespec-audit-")
        dataset = write_traceable_dataset(tmp.name, tile_px=tile_px,
                                          image_format=image_format)["root"]
    elif isinstance(dataset, Mapping):
        dataset = dataset["root"]
    try:
        a = _Audit(make_loader, options, os.fspath(dataset), tiles, seed, shards, layout, alpha)
        methods = {"finite": a.check_finite, "shards": a.check_shards, "clip": a.check_clip,
                   "sampling": a.check_sampling, "labels": a.check_labels,
                   "fields": a.check_fields, "flip_x": lambda: a.check_flip("x"),
                   "flip_y": lambda: a.check_flip("y"), "rot90": a.check_rot90,
                   "jpeg": a.check_jpeg, "blur": a.check_blur,
                   "standardize": a.check_standardize}
        results = []
        for name in names:
            try:
                results.append(methods[name]())
            except Exception as e:  # the loader under audit failed: report, go on
                results.append(Check(name, "error", f"{type(e).__name__}: "
                                     f"{' '.join(str(e).split())[:300]}", "no error", "-"))
    finally:
        if tmp is not None:
            tmp.cleanup()
    return AuditReport(results, time.perf_counter() - t0, int(tiles), int(seed),
                       dict(options or {}))


def load_factory(spec: str) -> Callable:
    """``'module:attr'`` -> the callable (``tilespec audit``)."""
    import importlib

    if ":" not in spec:
        raise ValueError(f"expected MODULE:FACTORY, got {spec!r}")
    mod, attr = spec.split(":", 1)
    obj = importlib.import_module(mod)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{spec} is not callable")
    return obj


__all__ = ["audit", "AuditReport", "Check", "CHECKS", "binom_p", "binom_power", "chi2_p",
           "chi2_power", "load_factory", "DEFAULT_TILES"]
