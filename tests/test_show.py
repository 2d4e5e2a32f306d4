"""spec/pictures.md: every picture is drawn from the reference's own data (draws, weights,
plans, batches), checked here against the reference computed independently."""

import os

import numpy as np
import pytest
from PIL import Image

import tilespec
from tilespec import show
from tilespec.augment import Step, apply_steps, draw_augmentations
from tilespec.cli import main
from tilespec.rng import augment_slot, normals, stream_key
from tilespec.stain import draw_stain_perturbation


@pytest.fixture(scope="module")
def ds(demo_dataset):
    return tilespec.Dataset(tfrecords=demo_dataset["tfrecords"],
                            annotations=demo_dataset["annotations"])


def _png(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_step_titles_name_each_parameter():
    steps = [Step("flip_left_right"), Step("flip_up_down"), Step("rot90", (3,)),
             Step("jpeg", (73,)), Step("gaussian_blur", (1.5,))]
    assert show.describe_steps(steps).split("\n") == [
        "flip LR", "flip UD", "rot 270", "JPEG q73", "blur sigma 1.5"]
    assert show.describe_steps([]) == "no change"
    delta = {"target_means": np.array([1.234, -0.5, 2.0]), "target_stds": np.zeros(3)}
    assert show.describe_steps([Step("rot90", (1,))], delta) == \
        "stain dmean\n(+1.23, -0.50, +2.00)\nrot 90"


def test_read_tiles_takes_the_first_record_of_each_tfrecord(ds):
    tiles = show.read_tiles(ds, 8)
    paths = ds.tfrecords()
    # 6 tfrecords: their first records, then the second records of the first two
    assert [(os.path.basename(p), j) for _, _, j, p in tiles] == \
        [(os.path.basename(p), 0) for p in paths] + \
        [(os.path.basename(paths[0]), 1), (os.path.basename(paths[1]), 1)]
    first = next(tilespec.read_records(paths[0]))
    assert np.array_equal(tiles[0][0], tilespec.decode_image(tilespec.parse_tile(first).image_raw))


@pytest.mark.parametrize("seed", [0, 12345])
def test_augment_grid_titles_are_the_reference_draws(ds, seed):
    tiles = show.read_tiles(ds, 3)
    grid = show.augment_grid(tiles, "xyrjb", seed=seed, draws=6)
    assert (grid.rows, grid.cols, len(grid.panels)) == (3, 7, 21)
    key = stream_key(seed, 0, 0)
    d = draw_augmentations("xyrjb", key, np.arange(18))
    for i, (img, slide, _, _) in enumerate(tiles):
        row = grid.panels[i * 7:(i + 1) * 7]
        assert row[0].title == f"original\n{slide}" and row[0].image is img
        for c in range(6):
            steps = d.steps[i * 6 + c]
            assert row[c + 1].title == show.describe_steps(steps)
            assert np.array_equal(row[c + 1].image, apply_steps(img, steps))
    assert grid.meta["positions"] == list(range(18))
    assert grid.meta["steps"] == [list(s) for s in d.steps]
    # the grid shows real variety: several different draws, an op of each kind over seeds
    assert len({p.title for p in grid.panels[1:]}) > 5


def test_augment_grid_stain_titles_are_the_drawn_perturbations(ds):
    norm = tilespec.StainNormalizer("reinhard")
    tiles = show.read_tiles(ds, 2)
    grid = show.augment_grid(tiles, "xn", normalizer=norm, seed=3, draws=2)
    z = normals(stream_key(3, 0, 0), np.arange(4), augment_slot(1), norm.normal_draws)
    d = draw_augmentations("xn", stream_key(3, 0, 0), np.arange(4), norm.normal_draws)
    for k, p in enumerate(grid.panels[1:3] + grid.panels[4:6]):
        assert p.title == show.describe_steps(d.steps[k], draw_stain_perturbation(norm, z[k]))
        assert p.title.startswith("stain dmean\n(")
    assert "normalizer reinhard" in grid.title


def test_sampling_bars_are_the_dataset_weights_and_the_loaders_picks(ds):
    b = ds.balance("category", strategy="category")
    fig = show.sampling_bars(b, draws=600, seed=5)
    table = b.sampling_table()
    tf = fig.bars[0]
    assert tf.group == "tfrecord" and np.array_equal(tf.weights, table.weights)
    # observed: what the reference loader actually reads in its first 600 items
    loader = b.numpy(seed=5, incl_slidenames=True)
    slides = [item[2] for _, item in zip(range(600), loader)]
    counts = [slides.count(os.path.basename(p).rsplit(".", 1)[0]) for p in table.paths]
    assert np.allclose(tf.observed, np.array(counts) / 600)
    from scipy.stats import binom
    lo, hi = binom.interval(0.95, 600, table.weights)
    assert np.allclose(tf.low, lo / 600) and np.allclose(tf.high, hi / 600)
    assert np.all(tf.low <= tf.weights) and np.all(tf.weights <= tf.high)
    groups = {bar.group: bar for bar in fig.bars[1:]}
    assert sorted(groups) == ["category", "patient"]
    pats = b.patients()
    names = [os.path.basename(p).rsplit(".", 1)[0] for p in table.paths]
    for bar, of in ((groups["patient"], lambda s: pats[s]),
                    (groups["category"], lambda s: b.annotations.rows[s]["category"])):
        for k, key in enumerate(bar.names):
            mine = [i for i, s in enumerate(names) if of(s) == key]
            assert bar.weights[k] == pytest.approx(table.weights[mine].sum())
            assert bar.observed[k] == pytest.approx(tf.observed[mine].sum())
    assert np.allclose(groups["category"].weights, [0.5, 0.5])  # category-balanced


def test_sampling_bars_without_annotations_show_tfrecords_only(demo_dataset):
    fig = show.sampling_bars(tilespec.Dataset(tfrecords=demo_dataset["tfrecords"]), draws=100)
    assert [b.group for b in fig.bars] == ["tfrecord"]
    assert np.allclose(fig.bars[0].weights, 1 / 6)


def test_batch_sheet_is_the_loaders_first_batch(ds):
    sheet = show.batch_sheet(ds, labels="category", batch_size=8, seed=9, augment="xy")
    lab, names = ds.labels("category")
    images, y, slides, xs, ys = next(iter(ds.numpy(
        labels=lab, batch_size=8, seed=9, augment="xy", infinite=False,
        incl_slidenames=True, incl_loc=True, standardize=False)))
    assert images.dtype == np.uint8 and len(sheet.panels) == 8
    for k, p in enumerate(sheet.panels):
        assert np.array_equal(p.image, images[k])
        assert p.title == f"{names[y[k]]}\n{slides[k]}\n({xs[k]}, {ys[k]})"
    assert sheet.meta["slides"] == slides.tolist() and sheet.meta["loc_x"] == xs.tolist()


@pytest.mark.parametrize("R,W,B,uneven", [(2, 2, 4, "pad"), (3, 2, 3, "pad"), (3, 1, 5, "drop")])
def test_shard_map_is_what_each_rank_and_worker_reads(ds, R, W, B, uneven):
    clipped = ds.clip(10)
    m = show.shard_map(clipped, num_replicas=R, num_workers=W, batch_size=B, seed=4,
                       uneven=uneven)
    table = clipped.sampling_table()
    locs = {os.path.basename(p).rsplit(".", 1)[0]: tilespec.load_index(p)[1]
            for p in table.paths}
    for r in range(R):
        loader = clipped.numpy(rank=r, num_replicas=R, batch_size=B, infinite=False, seed=4,
                               uneven=uneven, incl_slidenames=True, incl_loc=True,
                               standardize=False)
        mine = sorted((b, k, t, j) for k, (rr, w, b, t, j, _) in enumerate(m.reads) if rr == r)
        assert all(w == b % W for (rr, w, b, *_ ) in m.reads if rr == r)
        got = [(s, x, y) for batch in loader for s, x, y in zip(*batch[2:])]
        want = []
        for _, _, t, j in mine:
            name = m.names[t]
            want.append((name, *map(int, locs[name][j])))
        assert got == want
    # without pads every kept record is read exactly once; the rest are not read
    kept = [(t, j) for (_, _, _, t, j, pad) in m.reads if not pad]
    assert len(kept) == len(set(kept))
    for t, row in enumerate(m.reader):
        assert all(v == -1 for v in row[10:])
        assert all((v >= 0) == ((t, j) in set(kept)) for j, v in enumerate(row))
    if uneven == "pad":
        assert len(kept) == int(table.clip.sum())


def test_render_writes_readable_pngs(ds, tmp_path):
    a = show.render(show.augment_grid(show.read_tiles(ds, 2), "xr", draws=3), tmp_path / "a.png")
    s = show.render(show.sampling_bars(ds, draws=200), tmp_path / "s.png")
    b = show.render(show.batch_sheet(ds, batch_size=4), tmp_path / "b.png")
    h = show.render(show.shard_map(ds.clip(4), num_replicas=2, num_workers=1, batch_size=2),
                    tmp_path / "sub" / "h.png")
    for p in (a, s, b, h):
        w, hgt = _png(p)
        assert w >= 300 and hgt >= 200


def test_image_grids_fall_back_to_pillow(ds, tmp_path, monkeypatch):
    monkeypatch.setattr(show, "have_matplotlib", lambda: False)
    grid = show.augment_grid(show.read_tiles(ds, 2), "xr", draws=3)
    w, h = _png(show.render(grid, tmp_path / "a.png"))
    assert w == 4 * (64 * 2 + 10) and h > 2 * 128  # 64-px tiles drawn at twice their size
    m = show.shard_map(ds.clip(10), num_replicas=2, num_workers=2, batch_size=4)
    path = show.render(m, tmp_path / "s.png")
    with Image.open(path) as im:
        w, h = im.size
        assert w == 90 + 40 * 14 + 150 and h == 30 + 6 * 14 + 10  # 40: the longest tfrecord
        rgb = im.convert("RGB")
        # the cell of record j of tfrecord t has its reader's colour, grey when unread
        colours = [tuple(int(255 * v) for v in c) for c in show._reader_colours(2, 2)]
        for t in range(6):
            for j in range(10):
                v = m.reader[t][j]
                want = colours[v] if v >= 0 else (230, 230, 230)
                assert rgb.getpixel((90 + j * 14 + 6, 30 + t * 14 + 1)) == want


def test_plots_without_matplotlib_name_the_extra(ds, tmp_path, monkeypatch, capsys):
    import builtins
    real = builtins.__import__

    def no_mpl(name, *a, **k):
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_mpl)
    with pytest.raises(show.PlotUnavailableError, match=r'pip install "tilespec\[plot\]"'):
        show.render(show.sampling_bars(ds, draws=50), tmp_path / "s.png")
    assert not show.have_matplotlib()  # the grids and the shard map are drawn by Pillow
    _png(show.render(show.shard_map(ds, num_replicas=2, num_workers=1), tmp_path / "h.png"))
    root = os.path.dirname(ds.tfrecords()[0])
    assert main(["show", "sampling", root, "-o", str(tmp_path / "s.png")]) == 1
    assert capsys.readouterr().err.strip() == \
        'tilespec: error: this picture needs matplotlib: pip install "tilespec[plot]"'


def test_show_commands_write_each_picture(demo_dataset, tmp_path, capsys):
    root = os.path.dirname(demo_dataset["tfrecords"])
    for argv in (["augment", demo_dataset["tfrecords"], "--augment", "xyrjbn",
                  "--normalizer", "reinhard", "--rows", "2", "--draws", "3"],
                 ["sampling", root, "--balance", "patient", "--clip", "20", "--draws", "300"],
                 ["batch", root, "--labels", "category", "--batch-size", "6"],
                 ["shards", root, "--ranks", "3", "--workers", "2", "--elastic"]):
        out = tmp_path / f"{argv[0]}.png"
        assert main(["show", *argv, "-o", str(out)]) == 0, argv
        assert capsys.readouterr().out.strip() == str(out)
        _png(out)
