"""Every code example of slideflow's "Dataloaders: Sampling and Augmentation" page
(/work/shared/slideflow-dataloaders-page.txt, the page tilespec implements), rewritten
with ``import tilespec`` in place of slideflow's objects: one test per example, each
running the example as the page writes it, then checking what the page says it gives.

Rewrites, and nothing else: ``sf.load_project(...)`` / ``project.dataset(...)`` are
tilespec's (a project folder made here); ``slideflow.io.torch.IndexedInterleaver`` is
``tilespec_torch.IndexedInterleaver``; torchvision cannot be installed, so ``T`` is a
namespace of plain callables on torch tensors written below (``Compose``,
``RandomResizedCrop``, ``Normalize``). The page's loops over infinite loaders stop
after a few items (``islice``), and its ``...`` arguments are filled in.
"""

import csv
import itertools
import math
import os
import shutil
import types

import numpy as np
import pytest
from scipy import stats

import tilespec
from tilespec import testing as tt
from tilespec.project import create_project

torch = pytest.importorskip("torch")
tf = pytest.importorskip("tensorflow")

TILE_PX = 32
#: slide, patient, HPV status, tiles (patient p2 has two slides)
SLIDES = (("slide1", "p1", "HPV-", 12), ("slide2", "p2", "HPV+", 6),
          ("slide3", "p2", "HPV+", 10), ("slide4", "p3", "HPV-", 14))
NUM_TILES = sum(s[3] for s in SLIDES)


# ------------------------------------------------------------- torchvision-style callables
class Compose:
    """``T.Compose``: apply the transforms in order."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class RandomResizedCrop:
    """``T.RandomResizedCrop`` on a CHW tensor: a random box of scale (0.08, 1) of the
    area and aspect ratio (3/4, 4/3) (log-uniform), resized to ``size`` (bilinear,
    antialiased when ``antialias``); a uint8 image stays uint8 (rounded, clipped),
    as torchvision does. Random numbers from torch's global generator, as torchvision."""

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), antialias=True):
        self.size = tuple(size) if not isinstance(size, int) else (size, size)
        self.scale, self.ratio, self.antialias = scale, ratio, antialias

    def box(self, h, w):
        area = h * w
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target = area * float(torch.empty(1).uniform_(*self.scale))
            aspect = math.exp(float(torch.empty(1).uniform_(*log_ratio)))
            cw = int(round(math.sqrt(target * aspect)))
            ch = int(round(math.sqrt(target / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(torch.randint(0, h - ch + 1, (1,)))
                left = int(torch.randint(0, w - cw + 1, (1,)))
                return top, left, ch, cw
        return 0, 0, h, w   # torchvision falls back to a central crop; the whole image here

    def __call__(self, img):
        top, left, ch, cw = self.box(img.shape[-2], img.shape[-1])
        crop = img[..., top:top + ch, left:left + cw]
        x = crop.to(torch.float32).unsqueeze(0)
        out = torch.nn.functional.interpolate(x, size=self.size, mode="bilinear",
                                              align_corners=False,
                                              antialias=self.antialias)[0]
        if img.dtype == torch.uint8:
            return out.round().clamp(0, 255).to(torch.uint8)
        return out


class Normalize:
    """``T.Normalize(mean, std)``: (x - mean) / std per channel of a CHW image.
    torchvision's wants a float image in [0, 1]; the page's example leaves that
    conversion out, so a uint8 image is scaled to [0, 1] first (what torchvision's
    ``ToDtype(torch.float32, scale=True)`` would do before it)."""

    def __init__(self, mean, std):
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, img):
        if img.dtype == torch.uint8:
            img = img.to(torch.float32) / 255
        return (img - self.mean) / self.std


T = types.SimpleNamespace(Compose=Compose, RandomResizedCrop=RandomResizedCrop,
                          Normalize=Normalize)


# ------------------------------------------------------------------------ the project
@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """``sf.load_project(...)``: a project folder holding the page's HPV_status dataset."""
    return _project(tmp_path_factory.mktemp("page"), SLIDES)


def _project(root, slides):
    layout = tt.TileDatasetLayout(tuple((s, p, "x", n) for s, p, _, n in slides),
                                  tile_px=TILE_PX)
    info = tt.write_tile_dataset(layout, root / "data")
    with open(info["annotations"], "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["patient", "slide", "HPV_status"])
        for s, p, hpv, _ in slides:
            w.writerow([p, s, hpv])
    create_project(root / "project", info["annotations"], info["tfrecords"])
    return tilespec.load_project(root / "project")


@pytest.fixture(scope="module")
def training_project(tmp_path_factory):
    """The page's project with three more patients, so that its default 3-fold
    cross-validation (stratified by outcome) has both classes on each side of every fold."""
    more = (("slide5", "p4", "HPV+", 8), ("slide6", "p5", "HPV-", 8),
            ("slide7", "p6", "HPV+", 8))
    return _project(tmp_path_factory.mktemp("page-train"), SLIDES + more)


@pytest.fixture
def dataset(project):
    """``dataset = project.dataset(...)``"""
    return project.dataset()


def record_ids(items):
    """(slide, loc_x) of items with incl_slidenames and incl_loc: names the record."""
    return [(tt.to_numpy(s).item(), int(x)) for _, _, s, x, _ in items]


def all_records():
    return {(s, i) for s, _, _, n in SLIDES for i in range(n)}


def slide_of_path(path):
    return os.path.basename(path).split(".")[0]


# ------------------------------------------------------------------------ Tensorflow
def test_tensorflow_with_labels(project):
    # Create a dataset object
    dataset = project.dataset()
    # Get the labels
    labels, unique_labels = dataset.labels('HPV_status')
    # Create a tensorflow dataset
    # that yields (image, label) tuples
    tf_dataset = dataset.tensorflow(labels=labels)
    for image, label in itertools.islice(tf_dataset, 8):
        # Do something with the image and label...
        assert image.dtype == tf.uint8 and image.shape == (TILE_PX, TILE_PX, 3)
        assert label.dtype == tf.int64 and int(label) in (0, 1)
    assert unique_labels == ["HPV+", "HPV-"]


def test_tensorflow_without_arguments_yields_uint8_and_none(dataset):
    """"If no arguments are provided ... (image, None) ... [tile_height, tile_width,
    num_channels] and type tf.uint8"."""
    tf_dataset = dataset.tensorflow()
    image, label = next(iter(tf_dataset))
    assert image.dtype == tf.uint8 and tuple(image.shape) == (TILE_PX, TILE_PX, 3)
    assert label is None


def test_tensorflow_slide_names_and_locations(dataset):
    tf_dataset = dataset.tensorflow(incl_slidenames=True, incl_loc=True)
    for image, label, slide, loc_x, loc_y in itertools.islice(tf_dataset, 8):
        assert slide.dtype == tf.string and loc_x.dtype == loc_y.dtype == tf.int64
        assert label is None
        # write_tile_dataset: loc_x is the tile's index, loc_y the slide's
        name = slide.numpy().decode()
        assert name == SLIDES[int(loc_y)][0] and 0 <= int(loc_x) < SLIDES[int(loc_y)][3]


@pytest.mark.parametrize("stain_augment", [False, True])
def test_tensorflow_image_preprocessing(dataset, stain_augment):
    """Every preprocessing option of .tensorflow(), in the page's order; stain
    normalization with and without 'n' (issue 13: it crashed without). The stream equals
    the reference loader's with the same options (per_image standardization)."""
    opts = dict(crop_left=4, crop_width=24, resize_target=20, resize_method="lanczos3",
                resize_aa=True, normalizer=tilespec.StainNormalizer("reinhard"),
                augment="xyrjb" + ("n" if stain_augment else ""),
                transform=tt.invert, standardize=True, seed=3, infinite=False)
    tf_dataset = dataset.tensorflow(**opts)
    image, label = next(iter(tf_dataset))
    assert image.dtype == tf.float32 and image.shape == (20, 20, 3)
    ref = dict(opts, standardize="per_image")
    # a new loader: iterating a finite one again starts its next epoch
    tt.assert_conforms(dataset.tensorflow(**opts), dataset.numpy(**ref), options=ref)


@pytest.mark.parametrize("method", ["reinhard", "reinhard_fast", "macenko"])
def test_tensorflow_normalizer_alone(dataset, method):
    """``normalizer=StainNormalizer(...)`` with no augmentation, the most common use."""
    opts = dict(normalizer=tilespec.StainNormalizer(method), infinite=False, seed=1)
    tf_dataset = dataset.tensorflow(**opts)
    assert tt.assert_conforms(tf_dataset, dataset.numpy(**opts), options=opts) == NUM_TILES


def test_tensorflow_sharding(dataset):
    # Shard the dataset for GPU 1 of 4
    shards = [dataset.tensorflow(infinite=False, incl_slidenames=True, incl_loc=True,
                                 shard_idx=k, num_shards=4) for k in range(4)]
    seen = [record_ids(s) for s in shards]
    flat = [r for s in seen for r in s]
    # every record once, besides the pads that give every shard the same number of
    # steps (spec/sampling.md, "Equal steps"; each repeats a record of its shard)
    pads = sum(s.tilespec.num_padded for s in shards)
    assert len(flat) == len(set(flat)) + pads and set(flat) == all_records()
    assert all(seen)


# ------------------------------------------------------------------------ PyTorch
def test_torch_without_arguments_yields_uint8_and_none(project):
    # Create a dataset object
    dataset = project.dataset()
    # Create a torch dataloader
    torch_dl = dataset.torch()
    for image, label in itertools.islice(torch_dl, 4):
        # Do something with the image...
        assert image.dtype == torch.uint8 and tuple(image.shape) == (3, TILE_PX, TILE_PX)
        assert label is None


def test_torch_image_preprocessing(dataset):
    """normalizer, augment (string order), transform, standardize (image / 127.5 - 1,
    torch.float32); the same stream as the reference's."""
    opts = dict(normalizer=tilespec.StainNormalizer("macenko"), augment="nxyrjb",
                transform=tt.invert, standardize=True, seed=5, infinite=False)
    torch_dl = dataset.torch(**opts)
    image, label = next(iter(torch_dl))
    assert image.dtype == torch.float32 and -1 <= float(image.min()) <= float(image.max()) <= 1
    tt.assert_conforms(dataset.torch(**opts), dataset.numpy(**opts), layout="CHW",
                       options=opts)
    u8 = next(iter(dataset.torch(augment="xyrj", seed=5)))[0]
    assert u8.dtype == torch.uint8     # "Default is False, returning a torch.uint8 image"


def test_torch_torchvision_style_transform(dataset):
    # Create a torch dataloader
    torch_dataloader = dataset.torch(
        transform=T.Compose([
            RandomResizedCrop(size=(224, 224), antialias=True),
            Normalize(mean=[0.485, 0.456, 0.406],
                      std=[0.229, 0.224, 0.225]),
        ])
    )
    for image, label in itertools.islice(torch_dataloader, 3):
        # Do something with the image and label...
        assert image.dtype == torch.float32 and tuple(image.shape) == (3, 224, 224)
        assert label is None
        back = image * torch.tensor([0.229, 0.224, 0.225])[:, None, None] + \
            torch.tensor([0.485, 0.456, 0.406])[:, None, None]
        assert -1e-5 <= float(back.min()) and float(back.max()) <= 1 + 1e-5


def test_torch_sharding_and_workers(dataset):
    # Shard the dataset for GPU 1 of 4
    shards = [dataset.torch(infinite=False, incl_slidenames=True, incl_loc=True,
                            rank=k, num_replicas=4, seed=7) for k in range(4)]
    seen = [record_ids(s) for s in shards]
    flat = [r for s in seen for r in s]
    pads = sum(s.num_padded for s in shards)     # spec/sampling.md, "Equal steps"
    assert len(flat) == len(set(flat)) + pads and set(flat) == all_records()
    # "partitions will be automatically further subdivided" among workers: each record
    # is still read once, and the stream is the same for any number of workers
    two = dataset.torch(infinite=False, incl_slidenames=True, incl_loc=True, rank=1,
                        num_replicas=4, num_workers=2, seed=7)
    assert record_ids(two) == seen[1]


# ------------------------------------------------------------------------ Labeling
def test_labels_follow_the_slide_name_inside_the_tfrecord(dataset, tmp_path):
    labels, unique_labels = dataset.labels('HPV_status')
    assert unique_labels == ["HPV+", "HPV-"]
    assert labels == {s: unique_labels.index(h) for s, _, h, _ in SLIDES}
    tf_dataset = dataset.tensorflow(labels=labels)
    assert tf_dataset.element_spec[1].dtype == tf.int64
    # "renaming a TFRecord file will not change the label of the tiles inside the file"
    src = dataset.tfrecords()[0]
    renamed = tmp_path / "renamed-slide4.tfrecords"
    shutil.copyfile(src, renamed)
    items = list(tilespec.IndexedInterleaver([renamed], labels=labels, incl_slidenames=True))
    assert {(s, lab) for _, lab, s in items} == {(slide_of_path(src),
                                                  labels[slide_of_path(src)])}


# ------------------------------------------------------------------------ Sampling
def test_infinite_by_default_with_uniform_sampling(dataset):
    """Infinite by default: more than one pass over the tiles; each tfrecord equally
    likely (chi-square over 4000 draws of the reference stream, p > 0.001)."""
    for loader in (dataset.torch(batch_size=8, seed=1), dataset.tensorflow(batch_size=8,
                                                                            seed=1)):
        assert sum(len(b[0]) for b in itertools.islice(loader, 2 * NUM_TILES // 8 + 1)) > \
            2 * NUM_TILES
    t, _ = dataset.numpy(seed=11).plan(0).records(0, 4000)
    counts = np.bincount(t, minlength=len(SLIDES))
    assert stats.chisquare(counts).pvalue > 1e-3


def test_finite_yields_every_tile_exactly_once(dataset):
    for make in (dataset.torch, dataset.tensorflow, dataset.numpy):
        ids = record_ids(make(infinite=False, incl_slidenames=True, incl_loc=True, seed=2))
        assert sorted(ids) == sorted(all_records())


def test_balance_slide(dataset):
    # Sample from TFRecords with equal probability
    dataset = dataset.balance(strategy='slide')
    assert set(dataset.prob_weights.values()) == {0.25}
    assert dataset.balance(strategy=None).prob_weights == dataset.prob_weights


def test_balance_patient(dataset):
    # Sample from TFRecords with probability proportional
    # to the number of tiles in each patient.
    dataset = dataset.balance(strategy='patient')
    w = {slide_of_path(p): v for p, v in dataset.prob_weights.items()}
    assert w == pytest.approx({"slide1": 1 / 3, "slide2": 1 / 6, "slide3": 1 / 6,
                               "slide4": 1 / 3})


def test_balance_tile(dataset):
    # Sample from TFRecords with probability proportional
    # to the number of tiles in each TFRecord.
    dataset = dataset.balance(strategy='tile')
    w = {slide_of_path(p): v for p, v in dataset.prob_weights.items()}
    assert w == pytest.approx({s: n / NUM_TILES for s, _, _, n in SLIDES})


def test_balance_category(dataset):
    # Sample from TFRecords with probability proportional
    # to the number of tiles in each category
    # "HPV-" and "HPV+".
    dataset = dataset.balance("HPV_status", strategy='category')
    w = {slide_of_path(p): v for p, v in dataset.prob_weights.items()}
    assert w == pytest.approx({"slide1": 1 / 4, "slide2": 1 / 4, "slide3": 1 / 4,
                               "slide4": 1 / 4})


def test_custom_balancing_by_assigning_prob_weights(dataset):
    dataset = dataset.balance(strategy='slide')
    assert len(dataset.prob_weights) == len(SLIDES)
    paths = dataset.tfrecords()
    dataset.prob_weights = {p: (3.0 if slide_of_path(p) == "slide2" else 0.0) for p in paths}
    assert dataset.prob_weights[paths[1]] == 1.0   # normalized
    # "Balancing is automatically applied to dataloaders created with .tensorflow() and
    # .torch()": every tile now comes from slide2
    for loader in (dataset.torch(incl_slidenames=True, seed=1),
                   dataset.tensorflow(incl_slidenames=True, seed=1)):
        slides = {tt.to_numpy(s).item() for _, _, s in itertools.islice(loader, 10)}
        assert slides == {"slide2"}


def test_clip_max_tiles(dataset):
    dataset = dataset.clip(8)
    assert {slide_of_path(p): c for p, c in dataset._clip.items()} == {
        "slide1": 8, "slide2": 6, "slide3": 8, "slide4": 8}


def test_clip_patient_and_category(dataset):
    patient = dataset.clip(8, strategy='patient')
    per_slide = {slide_of_path(p): c for p, c in patient._clip.items()}
    assert per_slide["slide2"] + per_slide["slide3"] == 8   # p2's two slides share the cap
    assert per_slide["slide1"] == per_slide["slide4"] == 8
    category = dataset.clip(10, strategy='category', headers='HPV_status')
    per_slide = {slide_of_path(p): c for p, c in category._clip.items()}
    assert per_slide["slide2"] + per_slide["slide3"] == 10
    assert per_slide["slide1"] + per_slide["slide4"] == 10


def test_custom_clipping_by_assigning_clip(dataset):
    dataset = dataset.clip(100)
    assert dataset._clip == {p: n for p, (_, _, _, n) in zip(dataset.tfrecords(), SLIDES)}
    paths = dataset.tfrecords()
    dataset._clip = {paths[0]: 2, paths[1]: 0, paths[2]: 3, paths[3]: 1}
    # "Undersampling via dataset clipping is automatically applied": the first c_t
    # records of each tfrecord, once each in a finite epoch
    for make in (dataset.torch, dataset.tensorflow):
        ids = record_ids(make(infinite=False, incl_slidenames=True, incl_loc=True))
        assert sorted(ids) == sorted([("slide1", 0), ("slide1", 1), ("slide3", 0),
                                      ("slide3", 1), ("slide3", 2), ("slide4", 0)])


# ------------------------------------------------------------------------ During training
def test_training_with_balanced_and_clipped_datasets(project):
    # Configure a training dataset with tile-level balancing
    # and clipping to max 100 tiles per TFRecord
    train = project.dataset().balance(strategy='tile').clip(100)
    # Get a validation dataset
    val = project.dataset()
    # Train a model
    project.train(
        'HPV_status',
        params=tilespec.ModelParams(tile_px=TILE_PX, epochs=1, batch_size=4),
        dataset=train,
        val_dataset=val,
    )


def test_training_with_model_params_balance_and_max_tiles(training_project):
    project = training_project
    # Configure hyperparameters with tile-level
    # balancing/oversampling for the training data
    hp = tilespec.ModelParams(
        tile_px=TILE_PX, epochs=1, batch_size=4,
        training_balance='tile',
        validation_balance=None,
    )
    # Train a model.
    # Undersample/clip data to max 100 tiles per TFRecord.
    result = project.train(
        'HPV_status',
        params=hp,
        max_tiles=100
    )
    assert len(result["folds"]) == 3      # the project's dataset, 3-fold cross-validation


# ------------------------------------------------------------------------ Direct indexing
def _page_indexed(project):
    from tilespec_torch import IndexedInterleaver
    # Create a dataset object
    dataset = project.dataset()
    # Get the TFRecords
    tfrecords = dataset.tfrecords()
    # Assemble labels
    labels, _ = dataset.labels("HPV_status")
    # Create an indexable dataset
    dts = IndexedInterleaver(
        tfrecords,
        labels=labels,
        augment="xyrj",
        transform=T.Compose([
            T.RandomResizedCrop(size=(224, 224),
                                antialias=True),
        ]),
        normalizer=None,
        standardize=True,
        shuffle=True,
        seed=42,
    )
    return dts, labels


def test_indexed_interleaver(project):
    dts, labels = _page_indexed(project)
    assert len(dts) == NUM_TILES
    image, label = dts[0]
    assert image.shape == torch.Size([3, 224, 224])
    assert image.dtype == torch.float32
    assert -1 <= float(image.min()) <= float(image.max()) <= 1   # standardize=True: 'unit'
    assert label in labels.values()


def test_indexed_interleaver_slide_names_locations_and_sharding(dataset):
    from tilespec_torch import IndexedInterleaver
    tfrecords = dataset.tfrecords()
    # Shard for GPU 1 of 4
    parts = [IndexedInterleaver(tfrecords, incl_slidenames=True, incl_loc=True,
                                rank=k, num_replicas=4) for k in range(4)]
    seen = [record_ids(d[i] for i in range(len(d))) for d in parts]
    flat = [r for s in seen for r in s]
    assert len(flat) == len(set(flat)) and set(flat) == all_records()
    image, label, slide, loc_x, loc_y = parts[0][0]
    # without labels the label is an empty tensor, so default_collate batches it
    # (spec/adapter_torch.md, "Indexed dataset")
    assert image.dtype == torch.uint8 and isinstance(slide, str)
    assert isinstance(label, torch.Tensor) and label.shape == (0,)


def test_indexed_interleaver_clip(dataset):
    from tilespec_torch import IndexedInterleaver
    # Specify TFRecord clipping values
    dts = IndexedInterleaver(
        tfrecords=dataset.tfrecords(),
        clip=[10, 5, 7, 100],  # Same length as tfrecords
        incl_slidenames=True, incl_loc=True,
    )
    assert len(dts) == 10 + 5 + 7 + 14
    ids = record_ids(dts[i] for i in range(len(dts)))
    assert sorted(ids) == sorted([("slide1", i) for i in range(10)] +
                                 [("slide2", i) for i in range(5)] +
                                 [("slide3", i) for i in range(7)] +
                                 [("slide4", i) for i in range(14)])


@pytest.mark.filterwarnings("ignore:'pin_memory' argument is set as true:UserWarning")
@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")
def test_indexed_interleaver_with_a_dataloader(project):
    from torch.utils.data import DataLoader
    dts, labels = _page_indexed(project)
    # Create a dataloader
    dl = DataLoader(
        dts,
        batch_size=32,
        num_workers=4,
        pin_memory=True,
        drop_last=True,
    )
    batches = 0
    for image, label in dl:
        # Do something with the image and label...
        assert image.shape == (32, 3, 224, 224) and image.dtype == torch.float32
        assert label.shape == (32,) and set(label.tolist()) <= set(labels.values())
        batches += 1
    assert batches == NUM_TILES // 32
