"""Pictures of what the reference does (spec/pictures.md): augmentation draws, sampling
weights against observed frequencies, one batch, and which records each rank and
worker reads.

Each picture is two steps. A pure function computes the figure's data from the
reference itself (:func:`augment_grid`, :func:`sampling_bars`, :func:`batch_sheet`,
:func:`shard_map`): the same draws, plans and loaders the reference uses, so a test
can check the data against them. A thin renderer (:func:`render`) draws the data
into a PNG with matplotlib (the ``plot`` extra: ``pip install "tilespec[plot]"``);
the image grids (augment, batch) and the shard map fall back to Pillow when
matplotlib is missing.
Nothing here is imported by ``import tilespec``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

#: How each augmentation op is named in a panel title (spec/images.md, "Augmentation draws").
STEP_NAMES = {"flip_left_right": "flip LR", "flip_up_down": "flip UD"}

PLOT_HINT = 'pip install "tilespec[plot]"'


class PlotUnavailableError(ImportError):
    """matplotlib (the ``plot`` extra) is needed for this picture and is not installed."""


# ------------------------------------------------------------------------------ data

@dataclass
class Panel:
    """One image of a grid with its title (lines joined by newlines)."""

    image: np.ndarray
    title: str


@dataclass
class ImageGrid:
    """A grid of panels (row-major, ``cols`` per row) under a figure ``title``."""

    kind: str
    title: str
    panels: list
    cols: int
    rows: int
    meta: dict = field(default_factory=dict)


def describe_steps(steps, stain_delta=None) -> str:
    """A panel title for drawn steps (spec/images.md, "Augmentation draws"): one line per
    step, in the order applied, e.g. ``flip LR`` / ``rot 270`` / ``JPEG q73`` /
    ``blur sigma 1.5``; ``stain dmean (+1.2, ...)`` for a stain perturbation (the first
    key of :func:`tilespec.stain.draw_stain_perturbation`'s deltas); ``no change``."""
    lines = []
    for s in steps:
        if s.op == "rot90":
            lines.append(f"rot {90 * int(s.args[0])}")
        elif s.op == "jpeg":
            lines.append(f"JPEG q{int(s.args[0])}")
        elif s.op == "gaussian_blur":
            lines.append(f"blur sigma {float(s.args[0]):g}")
        else:
            lines.append(STEP_NAMES.get(s.op, s.op))
    if stain_delta is not None:
        key = next(iter(stain_delta))
        v = np.ravel(stain_delta[key])[:3]
        short = {"target_means": "dmean", "target_stds": "dstd",
                 "stain_matrix_target": "dHE", "target_concentrations": "dconc"}.get(key, key)
        lines.insert(0, f"stain {short}\n(" + ", ".join(f"{x:+.2f}" for x in v) + ")")
    return "\n".join(lines) if lines else "no change"


def read_tiles(source, n: int = 4) -> list:
    """``n`` tiles for a picture: the first record of each tfrecord of ``source`` (a
    tfrecord, a folder, a list of them, or a :class:`tilespec.Dataset`), in path order,
    then the second records, ... Returns ``[(image uint8 HWC, slide, record, path)]``."""
    from .dataset import tfrecord_paths
    from .example import parse_tile
    from .images import decode_image
    from .index import load_index
    from .records import read_record_at

    paths = source.tfrecords() if hasattr(source, "tfrecords") else tfrecord_paths(source)
    offsets = []
    for p in paths:
        try:
            offsets.append(load_index(p)[0])
        except OSError:  # a read-only folder: no index written, scan instead
            from .index import compute_index
            offsets.append(compute_index(p)[0])
    out = []
    j = 0
    while len(out) < n and any(j < len(o) for o in offsets):
        for p, o in zip(paths, offsets):
            if j < len(o) and len(out) < n:
                tile = parse_tile(read_record_at(p, int(o[j][0]), record=j, path=p))
                out.append((decode_image(tile.image_raw), tile.slide, j, p))
        j += 1
    if not out:
        raise ValueError(f"{source}: no records to show")
    return out


def augment_grid(tiles, augment="xyrjb", *, normalizer=None, seed: int = 0,
                 draws: int = 5) -> ImageGrid:
    """One row per tile: the tile as decoded, then ``draws`` augmentations of it
    (spec/images.md, "Augmentation draws"; spec/pictures.md).

    ``tiles``: images, or ``(image, slide, ...)`` tuples as :func:`read_tiles` gives.
    Draw c of row i is stream position ``i * draws + c`` of stream (seed, rank 0,
    epoch 0): its steps are :func:`tilespec.augment.draw_augmentations`'s, applied by
    the reference pipeline (with ``normalizer``, without standardization: uint8), and
    its title is :func:`describe_steps` of them. ``meta`` keeps the positions and steps.
    """
    from .pipeline import Pipeline
    from .rng import stream_key

    pipe = Pipeline.from_options(augment=augment, normalizer=normalizer, standardize=False)
    key = stream_key(seed, 0, 0)
    panels, positions, steps = [], [], []
    for i, tile in enumerate(tiles):
        img, name = (tile, None) if isinstance(tile, np.ndarray) else (tile[0], tile[1])
        panels.append(Panel(img, f"original\n{name}" if name else "original"))
        pos = np.arange(i * draws, (i + 1) * draws, dtype=np.int64)
        d = pipe.draw(key, pos)
        for c in range(draws):
            z = None if d.stain is None else d.stain[c]
            delta = None
            if z is not None:
                from .stain import draw_stain_perturbation
                delta = draw_stain_perturbation(pipe.normalizer, z)
            panels.append(Panel(pipe.apply(img, d.steps[c], z),
                                describe_steps(d.steps[c], delta)))
            positions.append(int(pos[c]))
            steps.append(list(d.steps[c]))
    norm = f", normalizer {pipe.normalizer.method}" if pipe.normalizer is not None else ""
    title = (f"augment={pipe.augment!r}{norm}: each tile, then {draws} draws "
             f"(seed {seed}, stream positions 0..{len(positions) - 1})")
    return ImageGrid("augment", title, panels, cols=draws + 1, rows=len(panels) // (draws + 1),
                     meta={"positions": positions, "steps": steps, "seed": seed,
                           "augment": pipe.augment})


@dataclass
class Bars:
    """Weights against observed frequencies for one grouping (tfrecord, patient, ...)."""

    group: str
    names: list
    weights: np.ndarray
    observed: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass
class SamplingFigure:
    title: str
    bars: list
    draws: int
    seed: int
    level: float


def _band(weights, n: int, level: float):
    from scipy.stats import binom  # only here: scipy.stats costs a noticeable import

    lo, hi = binom.interval(level, n, np.clip(weights, 0.0, 1.0))
    return np.asarray(lo, dtype=float) / n, np.asarray(hi, dtype=float) / n


def sampling_bars(ds, *, draws: int = 6000, seed: int = 0, level: float = 0.95,
                  groups=("patient", "category")) -> SamplingFigure:
    """Each tfrecord's weight w_t (:meth:`tilespec.Dataset.sampling_table`) against how
    often the reference loader's infinite stream picks it in its first ``draws``
    positions, with the binomial ``level`` interval of that frequency under w_t
    (spec/dataset.md, spec/sampling.md, spec/pictures.md). The same per annotation
    column in ``groups`` (summed over the column's values; needs annotations; columns
    the dataset lacks are left out)."""
    table = ds.sampling_table()
    t, _ = ds.numpy(seed=seed, infinite=True).plan(0).records(0, draws)
    freq = np.bincount(t, minlength=len(table.paths)) / draws
    names = [os.path.basename(str(p)).rsplit(".", 1)[0] for p in table.paths]
    lo, hi = _band(table.weights, draws, level)
    bars = [Bars("tfrecord", names, table.weights.copy(), freq, lo, hi)]
    ann = ds.annotations
    if ann is not None:
        slides = [ds._slide(str(p)) for p in table.paths]
        for g in groups:
            if any(g not in ann.rows[s] for s in slides):
                continue
            values = [str(ann.rows[s][g]) for s in slides]
            keys = sorted(set(values))
            w = np.array([sum(table.weights[k] for k, v in enumerate(values) if v == key)
                          for key in keys])
            f = np.array([sum(freq[k] for k, v in enumerate(values) if v == key)
                          for key in keys])
            glo, ghi = _band(w, draws, level)
            bars.append(Bars(g, keys, w, f, glo, ghi))
    title = (f"{ds!r}: weight vs observed frequency in {draws} draws "
             f"(seed {seed}); band: binomial {level:.0%} interval")
    return SamplingFigure(title, bars, draws, seed, level)


def batch_sheet(ds, *, labels=None, batch_size: int = 16, seed: int = 0, augment=False,
                **options) -> ImageGrid:
    """The first batch of ``ds.numpy(...)`` (finite epoch 0, uint8, slide names and
    locations included) as a contact sheet, each panel titled with its label, slide
    and (loc_x, loc_y) (spec/sampling.md, "Loaders"; spec/pictures.md). ``labels``: a
    header name (titles show the label's value) or None."""
    names = None
    lab = None
    if labels is not None:
        lab, names = ds.labels(labels)
    loader = ds.numpy(labels=lab, batch_size=batch_size, seed=seed, augment=augment,
                      infinite=False, incl_slidenames=True, incl_loc=True, standardize=False,
                      **options)
    images, y, slides, xs, ys = next(iter(loader))
    loader.close()
    panels = []
    for k in range(len(images)):
        head = "" if y is None else (f"{names[int(y[k])]}\n" if names else f"{y[k]}\n")
        panels.append(Panel(images[k], f"{head}{slides[k]}\n({int(xs[k])}, {int(ys[k])})"))
    cols = min(8, len(panels))
    what = f"labels '{labels}', " if labels else ""
    title = (f"batch 0 of {ds!r}: {len(panels)} tiles, {what}augment={augment!r}, "
             f"seed {seed}; slide and (loc_x, loc_y) under each")
    return ImageGrid("batch", title, panels, cols=cols, rows=-(-len(panels) // cols),
                     meta={"labels": None if y is None else y.tolist(),
                           "slides": slides.tolist(), "loc_x": xs.tolist(),
                           "loc_y": ys.tolist()})


@dataclass
class ShardMap:
    """Who reads each record in one finite epoch (spec/sampling.md, "Partition",
    "Equal steps", "Workers").

    ``reader[t][j]``: the reader (``rank * num_workers + worker``) of record j of
    tfrecord t, -1 when no one reads it (clipped away, zero weight, dropped).
    ``reads``: every loader position as ``(rank, worker, batch, t, j, pad)``.
    """

    title: str
    names: list
    reader: list
    reads: list
    num_replicas: int
    num_workers: int
    batch_size: int


def shard_map(ds, *, num_replicas: int = 2, num_workers: int = 2, batch_size: int = 4,
              seed: int = 0, epoch: int = 0, shuffle: bool = False, uneven: str = "pad",
              elastic: bool = False) -> ShardMap:
    """Which records each rank x worker reads in finite epoch ``epoch``: the plans of
    :class:`tilespec.sampling.RankStream` for every rank, split into worker batches by
    :func:`tilespec.sampling.worker_batches` (spec/sampling.md; spec/pictures.md)."""
    from .sampling import RankStream, worker_batches

    table = ds.sampling_table()
    W = max(1, int(num_workers))
    reader = [np.full(int(c), -1, dtype=np.int64) for c in table.counts]
    reads = []
    for r in range(num_replicas):
        plan = RankStream(table.clip, table.weights, seed, rank=r, num_replicas=num_replicas,
                          epoch=epoch, infinite=False, shuffle=shuffle, batch_size=batch_size,
                          uneven=uneven, elastic=elastic)
        for w in range(W):
            for b, start, stop in worker_batches(w, W, batch_size, total=len(plan)):
                t, j = plan.records(start, stop)
                pads = plan.pads(start, stop)
                for tk, jk, pk in zip(t.tolist(), j.tolist(), pads.tolist()):
                    reads.append((r, w, b, tk, jk, bool(pk)))
                    if not pk:
                        reader[tk][jk] = r * W + w
    names = [os.path.basename(str(p)).rsplit(".", 1)[0] for p in table.paths]
    how = "elastic, " if elastic else ""
    title = (f"who reads each record: {num_replicas} ranks x {W} workers, batch "
             f"{batch_size}, {how}finite epoch {epoch}, shuffle={shuffle}, seed {seed}")
    return ShardMap(title, names, [list(map(int, x)) for x in reader], reads, num_replicas,
                    W, batch_size)


# ------------------------------------------------------------------------------ rendering

def have_matplotlib() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width, height):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise PlotUnavailableError(f"this picture needs matplotlib: {PLOT_HINT}") from e
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _render_grid_mpl(grid: ImageGrid, path):
    lines = max(p.title.count("\n") + 1 for p in grid.panels)
    cell_w, cell_h = 1.45, 1.35 + 0.13 * lines
    fig = _figure(cell_w * grid.cols, cell_h * grid.rows + 0.5)
    fig.suptitle(grid.title, fontsize=9, wrap=True)
    axes = fig.subplots(grid.rows, grid.cols, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(grid.panels):
            ax.set_axis_off()
            continue
        p = grid.panels[k]
        ax.imshow(p.image, interpolation="nearest")
        ax.set_title(p.title, fontsize=7, linespacing=1.1)
        if grid.kind == "augment" and k % grid.cols == 0:
            for s in ax.spines.values():
                s.set_linewidth(2)
    fig.savefig(path)


def _render_grid_pil(grid: ImageGrid, path):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    scale = max(1, 128 // max(p.image.shape[0] for p in grid.panels))
    th, tw = max(p.image.shape[0] for p in grid.panels) * scale, \
        max(p.image.shape[1] for p in grid.panels) * scale
    lines = max(p.title.count("\n") + 1 for p in grid.panels)
    line_h = 12
    cw, ch = max(tw, 110) + 10, th + lines * line_h + 14
    sheet = Image.new("RGB", (cw * grid.cols, ch * grid.rows + 24), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((6, 6), grid.title, fill="black", font=font)
    for k, p in enumerate(grid.panels):
        r, c = divmod(k, grid.cols)
        x0, y0 = c * cw + 5, r * ch + 24
        for i, text in enumerate(p.title.split("\n")):
            draw.text((x0, y0 + i * line_h), text, fill="black", font=font)
        im = Image.fromarray(np.ascontiguousarray(p.image)).resize((tw, th), Image.NEAREST)
        sheet.paste(im, (x0, y0 + lines * line_h + 4))
    sheet.save(path)


def _render_sampling(fig_data: SamplingFigure, path):
    n = len(fig_data.bars)
    widths = [max(2.2, 0.45 * len(b.names) + 1.0) for b in fig_data.bars]
    fig = _figure(sum(widths) + 0.6, 4.2)
    fig.suptitle(fig_data.title, fontsize=9, wrap=True)
    axes = fig.subplots(1, n, squeeze=False, width_ratios=widths)[0]
    for ax, b in zip(axes, fig_data.bars):
        x = np.arange(len(b.names))
        ax.bar(x - 0.2, b.weights, width=0.4, color="#4c72b0", label="weight w")
        ax.bar(x + 0.2, b.observed, width=0.4, color="#dd8452", label="observed")
        ax.errorbar(x + 0.2, (b.low + b.high) / 2, yerr=(b.high - b.low) / 2, fmt="none",
                    ecolor="black", capsize=3, linewidth=1,
                    label=f"{fig_data.level:.0%} band")
        ax.set_xticks(x, b.names, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"per {b.group}", fontsize=9)
        ax.set_ylim(0, max(float(np.max(b.high)), float(np.max(b.weights))) * 1.25)
        ax.tick_params(axis="y", labelsize=8)
    axes[0].set_ylabel("probability per draw", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.savefig(path)


PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
           "#8c8c8c", "#ccb974", "#64b5cd"]
UNREAD = "#e6e6e6"


def _reader_colours(R: int, W: int) -> list:
    """An RGB colour (floats in [0, 1]) per reader r * W + w: the rank's hue, lighter for
    later workers."""
    out = []
    for r in range(R):
        h = PALETTE[r % len(PALETTE)]
        base = np.array([int(h[k:k + 2], 16) / 255 for k in (1, 3, 5)])
        for w in range(W):
            f = 0.45 * w / W
            out.append(base * (1 - f) + f)
    return out


def _render_shards_pil(m: ShardMap, path):
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    R, W = m.num_replicas, m.num_workers
    colours = [tuple(int(255 * v) for v in c) for c in _reader_colours(R, W)]
    cell, left, top = 14, 90, 30
    width = max(len(x) for x in m.reader)
    legend_w, rows = 150, max(len(m.reader), R * W + 2)
    img = Image.new("RGB", (left + width * cell + legend_w, top + rows * cell + 10), "white")
    d = ImageDraw.Draw(img)
    d.text((6, 6), m.title, fill="black", font=font)
    pads = {(t, j) for (_, _, _, t, j, pad) in m.reads if pad}
    for t, row in enumerate(m.reader):
        y = top + t * cell
        d.text((6, y + 1), m.names[t], fill="black", font=font)
        for j, v in enumerate(row):
            x = left + j * cell
            d.rectangle([x, y, x + cell - 2, y + cell - 2], fill=colours[v] if v >= 0 else UNREAD)
            if (t, j) in pads:
                d.line([x + 3, y + 3, x + cell - 5, y + cell - 5], fill="black")
                d.line([x + 3, y + cell - 5, x + cell - 5, y + 3], fill="black")
    x0 = left + width * cell + 10
    entries = [(colours[r * W + w], f"rank {r} worker {w}") for r in range(R) for w in range(W)]
    entries.append((UNREAD, "not read"))
    for k, (c, label) in enumerate(entries):
        y = top + k * cell
        d.rectangle([x0, y, x0 + cell - 2, y + cell - 2], fill=c)
        d.text((x0 + cell + 4, y + 1), label, fill="black", font=font)
    if pads:
        y = top + len(entries) * cell
        d.text((x0, y + 1), "x: read again (pad)", fill="black", font=font)
    img.save(path)


def _render_shards(m: ShardMap, path):
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    R, W = m.num_replicas, m.num_workers
    width = max(len(x) for x in m.reader)
    grid = np.full((len(m.reader), width), np.nan)
    for t, row in enumerate(m.reader):
        grid[t, :len(row)] = row
    colours = _reader_colours(R, W)
    fig = _figure(min(16, 2.2 + 0.22 * width), 1.4 + 0.38 * len(m.reader))
    ax = fig.subplots()
    unread = np.where(grid == -1, 0.0, np.nan)
    ax.imshow(np.ma.masked_invalid(unread), cmap=ListedColormap([UNREAD]), vmin=0, vmax=1,
              aspect="auto", interpolation="nearest")
    ax.imshow(np.ma.masked_where(~(grid >= 0), grid), cmap=ListedColormap(colours),
              vmin=-0.5, vmax=R * W - 0.5, aspect="auto", interpolation="nearest")
    pads = [(t, j) for (_, _, _, t, j, pad) in m.reads if pad]
    if pads:
        ax.scatter([j for _, j in pads], [t for t, _ in pads], marker="x", color="black",
                   s=18, linewidths=1, label="read again (pad)")
    ax.set_yticks(range(len(m.names)), m.names, fontsize=8)
    ax.set_xlabel("record j in its tfrecord", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_xticks(np.arange(-0.5, width, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, len(m.names), 1), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    handles = [Patch(color=colours[r * W + w], label=f"rank {r} worker {w}")
               for r in range(R) for w in range(W)]
    handles.append(Patch(color=UNREAD, label="not read"))
    if pads:
        handles.append(ax.collections[0])
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
    ax.set_title(m.title, fontsize=9)
    fig.savefig(path)


def render(data, path) -> str:
    """Draw figure data from this module into the PNG ``path``; return the path.

    The image grids and the shard map use matplotlib when it is installed, Pillow
    otherwise; the sampling bars need matplotlib (:class:`PlotUnavailableError` names
    the extra to install)."""
    path = os.fspath(path)
    if os.path.dirname(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    if isinstance(data, ImageGrid):
        (_render_grid_mpl if have_matplotlib() else _render_grid_pil)(data, path)
    elif isinstance(data, SamplingFigure):
        _render_sampling(data, path)
    elif isinstance(data, ShardMap):
        (_render_shards if have_matplotlib() else _render_shards_pil)(data, path)
    else:
        raise TypeError(f"cannot render {type(data).__name__}")
    return path


__all__ = ["augment_grid", "sampling_bars", "batch_sheet", "shard_map", "read_tiles",
           "describe_steps", "render", "have_matplotlib", "ImageGrid", "Panel", "Bars",
           "SamplingFigure", "ShardMap", "PlotUnavailableError", "PLOT_HINT"]
