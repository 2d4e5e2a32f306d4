"""The PyTorch loader and indexed dataset against the reference (spec/adapter_torch.md)."""

import os
import tempfile

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

torch = pytest.importorskip("torch")

import tilespec  # noqa: E402
from tilespec import plugins, testing as tt  # noqa: E402
import tilespec_torch  # noqa: E402
from tilespec_torch.loader import TorchLoader  # noqa: E402

FEW = settings(max_examples=max(4, settings.default.max_examples // 5))


def _dataset(layout, root):
    info = tt.write_tile_dataset(layout, root)
    return tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"]), info


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    layout = tt.TileDatasetLayout((("s0", "p0", "a", 7), ("s1", "p1", "b", 4),
                                   ("s2", "p1", "a", 5)), tile_px=16)
    return _dataset(layout, tmp_path_factory.mktemp("torch"))[0]


def _items_options():
    return st.fixed_dictionaries({
        "augment": st.sampled_from(["", "xyr", "xyrj", "b", "xyrjb", True]),
        "standardize": st.sampled_from([False, True, "per_image"]),
        "incl_slidenames": st.booleans(), "incl_loc": st.booleans(),
    })


@FEW
@given(layout=tt.tile_dataset_layouts(max_slides=3, max_tiles=5),
       cfg=tt.sampling_configs(max_replicas=2, max_batch=4), opts=_items_options(),
       num_workers=st.sampled_from([0, 1, 2]), balance=st.sampled_from([None, "tile",
                                                                         "category"]))
def test_loader_conforms_to_reference(layout, cfg, opts, num_workers, balance):
    with tempfile.TemporaryDirectory() as root:
        dataset, _ = _dataset(layout, root)
        if balance:
            dataset = dataset.balance(headers="category" if balance == "category" else None,
                                      strategy=balance)
        options = dict(cfg, **opts, labels="category")
        try:
            reference = dataset.numpy(**options)
        except ValueError as e:      # e.g. a rank that owns nothing: the adapter must agree
            with pytest.raises(type(e), match="owns no record"):
                dataset.torch(num_workers=num_workers, **options)
            return
        loader = dataset.torch(num_workers=num_workers, **options)
        assert isinstance(loader, torch.utils.data.DataLoader)
        assert loader.seed == reference.seed and len(loader) == len(reference)
        n = 7 if cfg["infinite"] else None
        tt.assert_conforms(loader, reference, n=n, layout="CHW", options=options)
        assert loader.state_dict() == reference.state_dict()


def test_items_layout_dtypes_and_fields(ds):
    L = ds.torch(infinite=False, seed=3, labels="category", standardize=False,
                 incl_slidenames=True, incl_loc=True)
    img, label, slide, x, y = next(iter(L))
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8
    assert isinstance(slide, str) and isinstance(x, int) and isinstance(label, int)
    B = ds.torch(infinite=False, seed=3, labels="category", batch_size=4, incl_slidenames=True,
                 incl_loc=True, standardize=True)
    imgs, labels, slides, xs, ys = next(iter(B))
    assert imgs.shape == (4, 3, 16, 16) and imgs.dtype == torch.float32
    assert labels.dtype == torch.int64 and labels.shape == (4,)
    assert isinstance(slides, list) and xs.dtype == torch.int64 and ys.shape == (4,)
    assert float(imgs.min()) >= -1 and float(imgs.max()) <= 1


def test_no_labels_gives_none_and_multi_outcome_labels_stack(ds):
    imgs, labels = next(iter(ds.torch(batch_size=3, seed=0)))
    assert labels is None
    img, label = next(iter(ds.torch(seed=0)))
    assert label is None
    labels_map, _ = ds.labels(["category", "patient"])
    opts = dict(batch_size=5, seed=1, infinite=False, labels=labels_map, incl_slidenames=True)
    L = ds.torch(**opts)
    _, labels, slides = next(iter(L))
    assert labels.shape == (5, 2)
    assert [list(map(int, row)) for row in labels] == [list(labels_map[s]) for s in slides]
    assert L.state_dict()["position"] == 5      # the loader resumes where it stopped
    tt.assert_conforms(ds.torch(**opts), ds.numpy(**opts), layout="CHW", options=opts)


def test_float_labels(ds):
    labels = {s: 0.5 + i for i, s in enumerate(ds.slides())}
    _, lab = next(iter(ds.torch(batch_size=2, seed=0, labels=labels)))
    assert lab.dtype == torch.float64


@pytest.mark.parametrize("num_workers", [0, 2])
def test_resume_mid_epoch_continues_the_stream(ds, num_workers):
    opts = dict(batch_size=2, seed=11, infinite=False, augment="xyr", incl_loc=True)
    full = ds.numpy(**opts)
    want = list(full)
    L = ds.torch(num_workers=num_workers, **opts)
    it = iter(L)
    first = [next(it) for _ in range(3)]
    state = L.state_dict()
    assert state == {"seed": 11, "epoch": 0, "position": 6}
    del it
    M = ds.torch(num_workers=num_workers, **dict(opts, seed=999))
    M.load_state_dict(state)
    tt.assert_conforms(first + list(M), want, layout="CHW", options=opts)
    assert M.state_dict() == {"seed": 11, "epoch": 1, "position": 0}


@pytest.mark.parametrize("persistent", [False, True])
def test_epochs_follow_the_reference(ds, persistent):
    opts = dict(batch_size=3, seed=5, infinite=False, shuffle=True, augment="xy",
                incl_slidenames=True, incl_loc=True)
    R = ds.numpy(**opts)
    L = ds.torch(num_workers=2, persistent_workers=persistent, **opts)
    for epoch in range(3):
        assert L.state_dict()["epoch"] == epoch
        tt.assert_conforms(L, R, layout="CHW", options=opts)
    if persistent:
        L._iterator._shutdown_workers()


def test_seed_is_drawn_and_exposed(ds):
    L = ds.torch()
    assert isinstance(L.seed, int) and 0 <= L.seed < 2**63
    assert L.state_dict()["seed"] == L.seed


def test_rank_defaults_without_a_process_group(ds):
    L = ds.torch(seed=0)
    assert (L.reference.rank, L.reference.num_replicas) == (0, 1)
    L = ds.torch(seed=0, rank=1, num_replicas=2)
    assert (L.reference.rank, L.reference.num_replicas) == (1, 2)


@pytest.mark.parametrize("bad", [
    dict(augment="xq"), dict(batch_size=0), dict(on_error="ignore"), dict(crop_left=2),
    dict(resize_method="cubic"), dict(standardize="z"), dict(rank=2, num_replicas=2),
    dict(augment="n"), dict(transform=3), dict(seed=-1),
])
def test_option_errors_match_the_reference(ds, bad):
    with pytest.raises(Exception) as ref_err:
        ds.numpy(**bad)
    with pytest.raises(type(ref_err.value)) as err:
        ds.torch(**bad)
    assert str(err.value) == str(ref_err.value)


def test_torch_options_reach_the_dataloader(ds):
    L = ds.torch(num_workers=1, prefetch_factor=3, pin_memory=False, seed=0)
    assert isinstance(L, TorchLoader)
    assert (L.num_workers, L.prefetch_factor, L.pin_memory) == (1, 3, False)
    assert ds.torch(seed=0).pin_memory == torch.cuda.is_available()
    with pytest.raises(ValueError, match="prefetch_factor"):
        ds.torch(num_workers=0, prefetch_factor=2)


def test_transform_gets_chw_uint8_tensors(ds):
    seen = []

    def transform(img):
        seen.append((tuple(img.shape), img.dtype))
        return torch.flip(img, dims=(-1,))

    opts = dict(seed=2, infinite=False, transform=transform, standardize=False)
    L = ds.torch(**opts)
    R = ds.numpy(**dict(opts, transform=lambda im: im[:, ::-1]))
    tt.assert_conforms(L, R, layout="CHW", options=opts)
    assert set(seen) == {((3, 16, 16), torch.uint8)}


def test_stain_normalization_in_the_loader(ds):
    opts = dict(seed=4, infinite=False, batch_size=4, augment="xn",
                normalizer=tilespec.StainNormalizer("reinhard_fast"), standardize=False)
    tt.assert_conforms(ds.torch(**opts), ds.numpy(**opts), layout="CHW", options=opts)


# -------------------------------------------------------------------- indexed dataset
@FEW
@given(layout=tt.tile_dataset_layouts(max_slides=3, max_tiles=5), data=st.data())
def test_indexed_interleaver_equals_reference(layout, data):
    with tempfile.TemporaryDirectory() as root:
        _, info = _dataset(layout, root)
        R = data.draw(st.integers(1, 2))
        clip = data.draw(st.lists(st.integers(0, 6), min_size=len(info["paths"]),
                                  max_size=len(info["paths"])))
        opts = dict(clip=clip, rank=data.draw(st.integers(0, R - 1)), num_replicas=R,
                    shuffle=data.draw(st.booleans()), seed=data.draw(st.integers(0, 2**63 - 1)),
                    augment=data.draw(st.sampled_from(["", "xyr", "xyrjb"])),
                    standardize=data.draw(st.sampled_from([False, True])),
                    incl_slidenames=True, incl_loc=True,
                    labels={s[0]: i for i, s in enumerate(layout.slides)})
        ref = tilespec.IndexedInterleaver(info["paths"], **opts)
        got = plugins.make_indexed("torch", info["paths"], opts)
        assert isinstance(got, torch.utils.data.Dataset) and len(got) == len(ref)
        epoch = data.draw(st.integers(0, 3))
        ref.set_epoch(epoch)
        got.set_epoch(epoch)
        tt.assert_conforms((got[i] for i in range(len(got))), (ref[i] for i in range(len(ref))),
                           layout="CHW", options=opts)


def test_indexed_interleaver_with_a_plain_dataloader(ds):
    paths = ds.tfrecords()
    opts = dict(seed=3, shuffle=True, augment="xyr", standardize=False, incl_loc=True,
                incl_slidenames=True, labels={s: i for i, s in enumerate(ds.slides())})
    T = tilespec_torch.IndexedInterleaver(paths, **opts)
    ref = tilespec.IndexedInterleaver(paths, **opts)
    L = torch.utils.data.DataLoader(T, batch_size=4, num_workers=2, shuffle=False)
    seen = 0
    for b, (imgs, labels, slides, xs, ys) in enumerate(L):
        for r in range(len(imgs)):
            i = b * 4 + r
            img, label, slide, x, y = ref[i]
            np.testing.assert_array_equal(imgs[r].permute(1, 2, 0).numpy(), img)
            assert (int(labels[r]), slides[r], int(xs[r]), int(ys[r])) == (label, slide, x, y)
            seen += 1
    assert seen == len(ref) == 16


def test_indexed_errors_match_the_reference(ds):
    with pytest.raises(ValueError, match="clip has 1 entries for 3 tfrecords"):
        tilespec_torch.IndexedInterleaver(ds.tfrecords(), clip=[1])
    T = tilespec_torch.IndexedInterleaver(ds.tfrecords(), seed=0)
    with pytest.raises(IndexError, match="index 16 out of range"):
        T[16]


# -------------------------------------------------------------------- hooks
def test_hooks_answer_only_for_torch(ds):
    assert tilespec_torch.tilespec_make_loader("numpy", ds, {}) is None
    assert tilespec_torch.tilespec_make_indexed("tensorflow", [], {}) is None
    assert tilespec_torch.tilespec_ops("numpy") is None
    assert tilespec_torch.tilespec_ops("torch") is tilespec_torch.ops
    info = tilespec_torch.tilespec_adapter_info()
    assert info["name"] == "torch" and info["distribution"] == "tilespec-torch"
    assert info["framework"].startswith("PyTorch 2.")
    assert "torch" in plugins.backends()


# -------------------------------------------------------------------- batch memory
def test_batch_buffers_are_reused_only_when_no_tensor_uses_them():
    from tilespec_torch.memory import BufferPool

    pool = BufferPool(keep=2)
    shape = (8, 3, 128, 128)                       # 1.5 MiB of float32 -> 4 MiB below
    a = pool.tensor((16,) + shape[1:], torch.float32)
    a.fill_(1.0)
    ptr = a.data_ptr()
    view = a[3]
    del a
    b = pool.tensor((16,) + shape[1:], torch.float32)
    assert b.data_ptr() != ptr                     # a view still holds the first mapping
    del view
    c = pool.tensor((16,) + shape[1:], torch.float32)
    assert c.data_ptr() == ptr                     # now it is free again
    assert pool.tensor(shape[1:], torch.float32).numel() == 3 * 128 * 128  # small: plain


@pytest.mark.parametrize("mode", [None, "unit", "per_image"])
def test_stacked_batches_equal_stacked_ops(mode):
    from tilespec_torch import ops
    from tilespec_torch.loader import stack_images

    rng = np.random.default_rng(0)
    imgs = [ops.rot90(ops.from_numpy(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)), k)
            for k in range(4)]
    got = stack_images(imgs, mode)
    want = torch.stack([im if mode is None else ops.standardize(im, mode) for im in imgs])
    assert got.dtype == want.dtype and torch.equal(got, want)
    with pytest.raises(ValueError, match="different shapes"):
        stack_images([imgs[0], imgs[0][:, :5]], mode)


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
@pytest.mark.parametrize("pin", [False, True])
def test_worker_buffers_never_change_a_batch_the_caller_still_holds(ds, pin):
    """Workers reuse shared-memory batch buffers only once the main process has freed
    every tensor and view of the batch: batches and views kept while the stream goes
    on still equal the reference at the end."""
    opts = dict(batch_size=4, seed=9, augment="xyr", standardize=True)
    want = ds.numpy(**opts)
    ref_batches = [next(iter(want))[0] for _ in range(30)]
    L = ds.torch(num_workers=2, pin_memory=pin, **opts)
    kept = {}
    for b, (imgs, _) in enumerate(L):
        if b % 5 == 0:
            kept[b] = imgs
        elif b % 7 == 0:
            kept[b] = imgs[1:3]            # only a view of the batch
        if b == 29:
            break
    for b, t in kept.items():
        ref = ref_batches[b] if b % 5 == 0 else ref_batches[b][1:3]
        np.testing.assert_array_equal(t.permute(0, 2, 3, 1).numpy(), ref, err_msg=f"batch {b}")


@pytest.mark.parametrize("standardize", [False, True])
def test_a_tile_of_another_shape_in_a_batch_is_an_error_naming_rows(ds, standardize):
    """The stacker puts tiles into the batch as they are made; a tile of another
    shape raises as stacking them afterwards would (with standardize=False the
    images are taken back and stack_images raises)."""
    calls = []

    def transform(img):
        calls.append(1)
        return img[:, :-1] if len(calls) == 3 else img

    L = ds.torch(seed=1, batch_size=4, transform=transform, standardize=standardize)
    with pytest.raises(ValueError, match=r"different shapes: row 0 is \(3, 16, 16\), row 2 "
                                         r"is \(3, 15, 16\)"):
        next(iter(L))


def test_a_tile_of_another_dtype_is_stacked_as_torch_stacks_it(ds):
    """Without standardization a transform may change the dtype of some tiles: the
    images made so far are taken back exactly and torch.stack decides (it promotes),
    as NumPy does in the reference."""
    def t_torch(img):
        return img.to(torch.float32) + 0.5 if int(img[0, 0, 0]) % 2 else img

    def t_numpy(img):
        return img.astype(np.float32) + 0.5 if int(img[0, 0, 0]) % 2 else img

    opts = dict(seed=5, batch_size=6, standardize=False, infinite=False)
    got = [b[0] for b in ds.torch(transform=t_torch, **opts)]
    want = [b[0] for b in ds.numpy(transform=t_numpy, **opts)]
    assert len(got) == len(want)
    mixed = 0
    for g, w in zip(got, want):
        mixed += w.dtype == np.float32
        assert g.dtype == (torch.float32 if w.dtype == np.float32 else torch.uint8)
        np.testing.assert_array_equal(g.permute(0, 2, 3, 1).numpy(), w)
    assert mixed                                   # the case was exercised


def test_a_dropped_worker_batch_frees_its_buffer_slot():
    from tilespec_torch.memory import WorkerPool

    flags = torch.zeros((2, 3), dtype=torch.int64)
    pool = WorkerPool(flags, 1, generation=7)
    pool.tensor((4, 3, 32, 32), torch.float32)
    _, slot, token = pool.last
    assert int(flags[1, slot]) == token != 0
    pool.release_last()
    assert int(flags[1, slot]) == 0 and pool.last is None
    pool.release_last()                            # nothing handed out: no effect
    assert not flags.any()


def test_decode_layout_follows_the_drawn_steps(ds):
    """Tiles that will only be flipped and turned by an odd multiple of 90 degrees
    are decoded transposed, so the turned CHW tensor is contiguous; the pixels are
    decode_image's either way, and the ops give the reference's image."""
    from tilespec.augment import Step
    from tilespec.pipeline import Pipeline
    from tilespec_torch import ops
    from tilespec_torch.loader import TorchPipeline, _decode_for

    path = ds.tfrecords()[0]
    data = next(iter(tilespec.read_records(path)))
    data = tilespec.parse_tile(data).image_raw
    ref = tilespec.decode_image(data)
    flip, r1, r2, r3 = (Step("flip_left_right"), Step("rot90", (1,)), Step("rot90", (2,)),
                        Step("rot90", (3,)))
    plain = _decode_for(TorchPipeline(Pipeline.from_options(augment="xyr")))
    cropped = _decode_for(TorchPipeline(Pipeline.from_options(augment="xyr", crop_left=0,
                                                              crop_width=8)))
    cases = [(plain, (), False), (plain, (flip,), False), (plain, (flip, r1), True),
             (plain, (r3,), True), (plain, (r2,), False), (plain, (Step("jpeg", (50,)), r1), False),
             (cropped, (r1,), False)]
    for decode, steps, transposed in cases:
        img = decode(data, steps)
        np.testing.assert_array_equal(img, ref)
        chw = torch.from_numpy(img).permute(2, 0, 1)
        assert chw.is_contiguous() == (not transposed), steps
        x = chw
        for s in steps:
            x = getattr(ops, s.op)(x, *s.args)
        want = ref
        for s in steps:
            want = getattr(tilespec.ops, s.op)(want, *s.args)
        np.testing.assert_array_equal(ops.to_numpy(x), want)
        if transposed:
            assert x.is_contiguous()


DIHEDRAL = [(), ("flip_left_right",), ("flip_up_down",), ("rot90", 1), ("rot90", 2),
            ("rot90", 3), ("flip_left_right", ("rot90", 1)), ("flip_up_down", ("rot90", 3)),
            ("flip_left_right", "flip_up_down", ("rot90", 2))]


def _steps(spec):
    from tilespec.augment import Step

    if spec and isinstance(spec[0], str) and len(spec) == 2 and isinstance(spec[1], int):
        spec = (spec,)
    return tuple(Step(s[0], (s[1],)) if isinstance(s, tuple) else Step(s) for s in spec)


@pytest.mark.parametrize("spec", DIHEDRAL)
@pytest.mark.parametrize("mode", [None, "unit", "per_image"])
@pytest.mark.parametrize("shape", [(20, 20), (70, 130), (1, 3)])
def test_a_moved_view_goes_into_its_row_as_the_torch_ops_put_it(spec, mode, shape):
    """Batched, with nothing per item but flips and turns, a tile reaches the stacker as a
    NumPy view (tilespec.augment.moved_view) and is copied into its row once: the row
    equals the torch ops' image, standardized by ops.standardize, for every element of
    the square's symmetry group, square and non-square tiles."""
    from tilespec.augment import moved_view
    from tilespec_torch import ops
    from tilespec_torch.loader import TensorStacker

    steps = _steps(spec)
    img = np.random.default_rng(len(steps)).integers(0, 256, shape + (3,), dtype=np.uint8)
    want = ops.from_numpy(img)
    for s in steps:
        want = getattr(ops, s.op)(want, *s.args)
    if mode is not None:
        want = ops.standardize(want, mode)
    view = moved_view(img, steps).transpose(2, 0, 1)
    assert np.shares_memory(view, img)            # no pixel copied before the row
    stacker = TensorStacker(2, mode)
    assert stacker.put(1, view) and stacker.put(0, view)
    got = stacker.images(2)
    assert got.dtype == want.dtype and got.is_contiguous()
    assert torch.equal(got[0], want) and torch.equal(got[1], want)


@pytest.mark.parametrize("standardize", [False, True])
def test_batched_moves_only_tiles_take_the_view_path_and_equal_the_reference(ds, standardize):
    """The loader's batches through the moved-view path (augment 'xyr', nothing else per
    item) are the reference's, and every tile of them took that path (its decode is
    pixel by pixel, its image a view handed to the stacker); 'xyrj' tiles with a JPEG
    step go through the torch ops instead, and still equal the reference."""
    import tilespec_torch.loader as tl

    seen = []
    real = tl.TensorStacker.put

    def put(self, k, img):
        seen.append(isinstance(img, np.ndarray))
        return real(self, k, img)

    for augment, views in (("xyr", True), ("xyrj", None)):
        seen.clear()
        opts = dict(batch_size=8, seed=5, augment=augment, standardize=standardize,
                    infinite=False)
        want = [b[0] for b in ds.numpy(**opts)]
        tl.TensorStacker.put = put
        try:
            got = [b[0] for b in ds.torch(**opts)]
        finally:
            tl.TensorStacker.put = real
        assert len(got) == len(want)
        for g, w in zip(got, want):
            if standardize:
                np.testing.assert_allclose(ops_to_numpy(g), w, rtol=0, atol=1e-6)
            else:
                np.testing.assert_array_equal(ops_to_numpy(g), w)
        if views:
            assert seen and all(seen)
        else:
            assert any(seen) and not all(seen)


def ops_to_numpy(x):
    from tilespec_torch import ops

    return ops.to_numpy(x)


@pytest.mark.parametrize("persistent", [False, True])
def test_batches_in_held_slots_come_by_reference_and_equal_the_reference(ds, persistent,
                                                                          monkeypatch):
    """Once a slot's buffer has reached the main process, the worker sends that slot's
    batches as a SlotRef (no file descriptor per batch) and the main process rebuilds
    them on the storage it holds: most batches of a 2-worker epoch come so, and every
    batch of two epochs (persistent workers or not) equals the reference's."""
    from tilespec_torch import memory

    used = []
    real = memory.SlotTable.tensor

    def tensor(self, ref):
        used.append(ref)
        return real(self, ref)

    monkeypatch.setattr(memory.SlotTable, "tensor", tensor)
    opts = dict(batch_size=1, seed=4, augment="xyr", infinite=False)
    want = ds.numpy(**opts)
    L = ds.torch(num_workers=2, persistent_workers=persistent, prefetch_factor=1, **opts)
    n = 0
    for epoch in range(2):
        ref = [b[0] for b in want]
        for k, (img, _) in enumerate(L):   # each batch dropped before the next: slots reused
            np.testing.assert_array_equal(img.permute(0, 2, 3, 1).numpy(), ref[k])
            n += 1
        assert k == len(ref) - 1
    slots = 2 * (1 + 3)                    # workers x (prefetch_factor + 3)
    assert len(used) >= n - 2 * slots      # all but the first batch of each slot, per epoch
    assert all(isinstance(r, memory.SlotRef) for r in used)


def test_the_main_process_keeps_slot_mappings_and_releases_unused_slots(ds):
    """Batches from a worker come back in the main process in the same few mappings
    (one per slot: no fresh mapping to fault in per batch), and a slot is reused only
    once the caller dropped every tensor of its batch (kept batches stay intact,
    checked against the reference)."""
    opts = dict(batch_size=4, seed=3, augment="xyr", standardize=True)
    ref = iter(ds.numpy(**opts))
    L = ds.torch(num_workers=1, pin_memory=False, **opts)
    import weakref

    pointers, kept = [], []
    for b, (imgs, _) in enumerate(L):
        pointers.append(imgs.untyped_storage().data_ptr())
        want = next(ref)[0]
        if b in (3, 4):
            kept.append((imgs, want))
        if b == 10:
            dropped = weakref.ref(imgs.untyped_storage())
        if b == 39:
            assert dropped() is not None        # its mapping outlives the batch ...
            break
    slots = L.prefetch_factor + 3
    assert len(set(pointers[10:])) <= slots     # ... and serves the slot's next batches
    for imgs, want in kept:                     # held while 35 more batches came
        np.testing.assert_array_equal(imgs.permute(0, 2, 3, 1).numpy(), want)


# -------------------------------------------------------------------- empty tfrecords
@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("infinite", [False, True])
def test_loader_over_empty_tfrecords_is_the_stream_without_them(empty_pair, num_workers,
                                                                 infinite):
    """Semantics 1 (revision 2): empty tfrecords are never sampled, in every strategy."""
    from conftest import BALANCINGS

    for balance in sorted(BALANCINGS):
        full, bare = (BALANCINGS[balance](d) for d in empty_pair)
        opts = dict(labels="category", seed=2, infinite=infinite, augment="xy", batch_size=4,
                    incl_slidenames=True, standardize=False)
        n = 6 if infinite else None
        tt.assert_conforms(full.torch(num_workers=num_workers, **opts), bare.numpy(**opts),
                           n=n, layout="CHW", options=opts)


def test_indexed_interleaver_over_empty_tfrecords(empty_pair):
    full, bare = empty_pair
    opts = dict(seed=1, shuffle=True, incl_slidenames=True, labels=full.labels("category")[0])
    T = tilespec_torch.IndexedInterleaver(full.tfrecords(), **opts)
    ref = tilespec.IndexedInterleaver(bare.tfrecords(), **opts)
    assert len(T) == len(ref) == 16
    tt.assert_conforms((T[i] for i in range(len(T))), (ref[i] for i in range(len(ref))),
                       layout="CHW", options=opts)


def test_a_dataset_of_only_empty_tfrecords_is_an_error_when_built(tmp_path):
    info = tt.write_tile_dataset(tt.TileDatasetLayout((("e0", "p", "a", 0),)), tmp_path)
    with pytest.warns(UserWarning, match="empty"):
        ds = tilespec.Dataset(tfrecords=info["tfrecords"], annotations=info["annotations"])
    for make in (lambda: ds.torch(num_workers=2), lambda: ds.torch(infinite=True),
                 lambda: tilespec_torch.IndexedInterleaver(info["tfrecords"])):
        with pytest.raises(ValueError, match="every tfrecord of this loader is empty"):
            make()


# -------------------------------------------------------------------- indexed: page usage
@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true")
def test_indexed_interleaver_without_labels_under_a_plain_dataloader(ds):
    """The page's DataLoader(dts, batch_size=32, num_workers=2, pin_memory=True,
    drop_last=True) with default_collate works without labels: the label is an empty
    tensor (spec/adapter_torch.md, "Indexed dataset")."""
    T = tilespec_torch.IndexedInterleaver(ds.tfrecords(), seed=3, augment="xy",
                                          standardize=False)
    ref = tilespec.IndexedInterleaver(ds.tfrecords(), seed=3, augment="xy", standardize=False)
    img, label = T[0]
    assert isinstance(label, torch.Tensor) and label.shape == (0,) and ref[0][1] is None
    L = torch.utils.data.DataLoader(T, batch_size=4, num_workers=2, pin_memory=True,
                                    drop_last=True)
    batches = list(L)
    assert len(batches) == 4  # 16 items
    for b, (imgs, labels) in enumerate(batches):
        assert imgs.shape == (4, 3, 16, 16) and imgs.dtype == torch.uint8
        assert labels.shape == (4, 0)
        for r in range(4):
            np.testing.assert_array_equal(imgs[r].permute(1, 2, 0).numpy(), ref[b * 4 + r][0])
    # a loss given the empty label fails on its shape instead of learning a made-up class
    with pytest.raises(RuntimeError):
        torch.nn.functional.cross_entropy(torch.zeros(4, 2), labels)


def test_indexed_epochs_advance_only_by_set_epoch(ds):
    """spec/adapter_torch.md, "Indexed dataset": set_epoch(e) picks epoch e's shuffle and
    augmentation; without it every pass of a DataLoader is the same epoch."""
    T = tilespec_torch.IndexedInterleaver(ds.tfrecords(), seed=5, shuffle=True,
                                          augment="xyrj", incl_loc=True)
    L = torch.utils.data.DataLoader(T, batch_size=16, num_workers=0)

    def one_pass():
        imgs, _, xs, ys = next(iter(L))
        return imgs, list(zip(xs.tolist(), ys.tolist()))

    a_img, a = one_pass()
    b_img, b = one_pass()                     # no set_epoch: the same epoch again
    assert a == b and torch.equal(a_img, b_img)
    T.set_epoch(1)
    c_img, c = one_pass()
    assert T.epoch == 1 and c != a and sorted(c) == sorted(a)   # another order, same items
    T.set_epoch(0)
    assert one_pass()[1] == a                 # epochs are a function of their number
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
        T.set_epoch(-1)
    # persistent workers keep their copy of the dataset; set_epoch still reaches them
    P = torch.utils.data.DataLoader(T, batch_size=16, num_workers=1, persistent_workers=True)

    def locs(loader):
        _, _, xs, ys = next(iter(loader))
        return list(zip(xs.tolist(), ys.tolist()))

    assert locs(P) == a
    T.set_epoch(1)
    assert locs(P) == c


# -------------------------------------------------------------------- checked when built
def test_bad_options_are_refused_when_the_loader_is_built(ds, tmp_path):
    """Semantics 10 (revision 2): the reference's checks, made once for every backend."""
    for kw, err, match in [
            (dict(infinite="False"), TypeError, "infinite must be True or False, got 'False'"),
            (dict(pin_memory="yes"), TypeError, "pin_memory must be True or False"),
            (dict(persistent_workers=1, num_workers=1), TypeError,
             "persistent_workers must be True or False, got 1"),
            (dict(rank=1), ValueError, "rank=1 is given without num_replicas"),
            (dict(num_replicas=2), ValueError, "num_replicas=2 is given without rank"),
            (dict(labels={"s0": 0}), tilespec.annotations.LabelError,
             r"slide 's1' \(stored in .*s1.tfrecords\) has no label"),
            (dict(labels={"s0": "a", "s1": "b", "s2": "a"}), tilespec.annotations.LabelError,
             r"Dataset.labels\(headers\)"),
            (dict(crop_left=8, crop_width=9), ValueError,
             r"\[8, 17\) is outside the tiles of 16 x 16 pixels")]:
        with pytest.raises(err, match=match):
            ds.torch(**kw)
    with pytest.raises(TypeError, match="shuffle must be True or False"):
        tilespec_torch.IndexedInterleaver(ds.tfrecords(), shuffle="True")


def test_indexed_interleaver_takes_a_path_string(ds, tmp_path):
    folder = os.path.dirname(ds.tfrecords()[0])
    T = tilespec_torch.IndexedInterleaver(folder, seed=0)
    assert T.reference.paths == ds.tfrecords() and len(T) == 16
    assert len(tilespec_torch.IndexedInterleaver(ds.tfrecords()[1], seed=0)) == 4
    with pytest.raises(tilespec.TFRecordError) as e:
        tilespec_torch.IndexedInterleaver(str(tmp_path / "missing"))
    assert str(e.value) == f"{tmp_path / 'missing'}: tfrecords folder or file not found"
# ------------------------------------------------------------------ elastic streams
# spec/sampling.md, "Elastic streams": with elastic=True the job has one stream; step b
# of rank r is global positions b G + r B ... b G + r B + B - 1, so the ranks' batches at
# a step, concatenated, are the R = 1 loader's batch b of size G, for any R and any
# number of workers, and a state saved with R ranks resumes on R' ranks (same G).
ELASTIC = tt.TileDatasetLayout((("e0", "p0", "a", 7), ("e1", "p1", "b", 4),
                                ("e2", "p1", "a", 5), ("e3", "p2", "b", 9)), tile_px=8, seed=4)
G = 12


@pytest.fixture(scope="module")
def elastic_ds(tmp_path_factory):
    ds = _dataset(ELASTIC, tmp_path_factory.mktemp("elastic"))[0]
    return ds.balance("category", strategy="category")


def _elastic(ds, backend, R, r, workers, **kw):
    opts = dict(dict(batch_size=G // R, rank=r, num_replicas=R, elastic=True, seed=77,
                     labels="category", augment="xyr", standardize=False,
                     incl_slidenames=True, incl_loc=True), **kw)
    if backend == "numpy":
        return ds.numpy(**opts)
    return ds.torch(num_workers=workers, **opts)


def _hwc(x):
    x = tt.to_numpy(x)
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 and x.shape[1] == 3 else x


def _global_steps(loaders, steps=None):
    """The ranks' batches step by step, each step's fields concatenated in rank order."""
    its = [iter(L) for L in loaders]
    out = []
    while steps is None or len(out) < steps:
        parts = [next(it, None) for it in its]
        if all(p is None for p in parts):
            break
        assert all(p is not None for p in parts), "ranks took different numbers of steps"
        out.append([np.concatenate([_hwc(p[k]) for p in parts]) for k in range(len(parts[0]))])
    for it in its:
        if hasattr(it, "close"):
            it.close()
    return out


def _assert_same_steps(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend,workers", [("numpy", 0), ("torch", 0), ("torch", 2)])
@pytest.mark.parametrize("infinite", [False, True])
def test_elastic_steps_equal_the_single_rank_stream(elastic_ds, backend, workers, infinite):
    steps = None if not infinite else 4
    want = _global_steps([_elastic(elastic_ds, "numpy", 1, 0, 0, infinite=infinite)], steps)
    if not infinite:   # 25 records, padded to 3 global batches of 12
        assert len(want) == 3 and [len(s[0]) for s in want] == [12, 12, 12]
    for R in (1, 2, 3, 4):
        loaders = [_elastic(elastic_ds, backend, R, r, workers, infinite=infinite)
                   for r in range(R)]
        if not infinite:
            assert {len(L) for L in loaders} == {3}
            assert sum(L.num_padded for L in loaders) == 36 - 25
        _assert_same_steps(_global_steps(loaders, steps), want)


@pytest.mark.parametrize("backend,workers", [("numpy", 0), ("torch", 2)])
@pytest.mark.parametrize("R,R2", [(2, 4), (4, 1)])
def test_elastic_resume_on_another_number_of_ranks(elastic_ds, backend, workers, R, R2):
    k = 1
    want = _global_steps([_elastic(elastic_ds, "numpy", 1, 0, 0, infinite=False)])
    before = [_elastic(elastic_ds, backend, R, r, workers, infinite=False) for r in range(R)]
    _assert_same_steps(_global_steps(before, k), want[:k])
    states = [L.state_dict() for L in before]
    assert all(s == states[0] for s in states)          # every rank saves the same state
    assert states[0] == {"seed": 77, "epoch": 0, "position": k * G, "global_batch_size": G}
    after = [_elastic(elastic_ds, backend, R2, r, workers, infinite=False) for r in range(R2)]
    for L in after:
        L.load_state_dict(states[0])
    _assert_same_steps(_global_steps(after), want[k:])
    assert all(L.state_dict()["epoch"] == 1 for L in after)
    wrong = _elastic(elastic_ds, backend, R2, 0, workers, infinite=False, batch_size=5)
    with pytest.raises(ValueError, match="global batch size 12"):
        wrong.load_state_dict(states[0])
    plain = elastic_ds.numpy(batch_size=3, seed=77)
    with pytest.raises(ValueError, match="elastic=True"):
        plain.load_state_dict(states[0])
