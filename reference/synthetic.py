"""The built-in synthetic dataset (spec/records.md, "The demo dataset").

Deterministic tissue-like tiles: a pink eosin background with darker stroma
texture and purple haematoxylin nuclei. Slides of category ``tumor`` have
denser, larger nuclei than ``normal`` ones, so a small model can learn the
difference. Every pixel is a function of (seed, slide, tile index): the same
call writes byte-identical files on any machine with the same Pillow/libjpeg.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .annotations import write_annotations_csv
from .example import encode_tile
from .records import write_records


@dataclass(frozen=True)
class SlideSpec:
    """One synthetic slide: its name, patient, category, site and number of tiles."""

    slide: str
    patient: str
    category: str
    site: str
    tiles: int


# Patients with one or two slides, unequal tile counts, two categories and two
# sites: enough to show every balancing and clipping strategy.
DEFAULT_SLIDES = (
    SlideSpec("slide-a1", "patient-a", "tumor", "site-1", 40),
    SlideSpec("slide-a2", "patient-a", "tumor", "site-1", 16),
    SlideSpec("slide-b1", "patient-b", "normal", "site-1", 24),
    SlideSpec("slide-c1", "patient-c", "tumor", "site-2", 12),
    SlideSpec("slide-d1", "patient-d", "normal", "site-2", 32),
    SlideSpec("slide-d2", "patient-d", "normal", "site-2", 20),
)


def tissue_tile(rng: np.random.Generator, tile_px: int, tumor: bool) -> np.ndarray:
    """One H&E-like RGB tile (HWC uint8) drawn from ``rng``.

    spec/records.md, "The demo dataset".
    """
    h = w = tile_px
    # low-frequency tissue density and mid-frequency stroma fibres
    density = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma=tile_px / 8)
    density = (density - density.min()) / (np.ptp(density) + 1e-9)
    fibres = ndimage.gaussian_filter(rng.standard_normal((h, w)), sigma=(1.0, 3.0))
    fibres /= np.abs(fibres).max() + 1e-9
    base = np.array([236.0, 200.0, 222.0])      # pale eosin
    stroma = np.array([214.0, 120.0, 170.0])    # denser eosin
    t = np.clip(0.35 + 0.6 * density + 0.25 * fibres, 0, 1)[..., None]
    img = base * (1 - t) + stroma * t
    # nuclei: dark purple ellipses
    n_nuclei = int(rng.poisson((0.010 if tumor else 0.004) * h * w / 16))
    radius = (3.2 if tumor else 2.2) * tile_px / 64
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros((h, w))
    for cy, cx, ry, rx in zip(rng.uniform(0, h, n_nuclei), rng.uniform(0, w, n_nuclei),
                              rng.uniform(0.6, 1.4, n_nuclei) * radius,
                              rng.uniform(0.6, 1.4, n_nuclei) * radius):
        y0, y1 = max(int(cy - ry) - 1, 0), min(int(cy + ry) + 2, h)
        x0, x1 = max(int(cx - rx) - 1, 0), min(int(cx + rx) + 2, w)
        if y0 >= y1 or x0 >= x1:
            continue
        sub = ((yy[y0:y1, x0:x1] - cy) / ry) ** 2 + ((xx[y0:y1, x0:x1] - cx) / rx) ** 2
        mask[y0:y1, x0:x1] = np.maximum(mask[y0:y1, x0:x1], np.clip(1.5 - sub, 0, 1))
    nucleus = np.array([92.0, 52.0, 140.0])
    img = img * (1 - mask[..., None]) + nucleus * mask[..., None]
    img += rng.normal(0, 4.0, img.shape)        # sensor noise
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def encode_jpeg(img: np.ndarray, quality: int = 90) -> bytes:
    """Baseline JPEG, 4:2:0 chroma, standard tables (as the 'j' augmentation).

    spec/records.md, "The demo dataset"; spec/images.md, "JPEG".
    """
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling="4:2:0")
    return buf.getvalue()


def slide_records(spec: SlideSpec, *, tile_px: int, seed: int, quality: int = 90):
    """Yield the serialized tile records of one synthetic slide, in file order.

    spec/records.md, "The demo dataset".
    """
    stride = tile_px
    cols = 8
    for i in range(spec.tiles):
        key = [seed, *spec.slide.encode("utf-8"), i]
        rng = np.random.default_rng(key)
        img = tissue_tile(rng, tile_px, spec.category == "tumor")
        yield encode_tile(encode_jpeg(img, quality), spec.slide,
                          loc_x=(i % cols) * stride, loc_y=(i // cols) * stride)


def write_synthetic_dataset(root, *, slides=DEFAULT_SLIDES, tile_px: int = 64, seed: int = 0,
                            quality: int = 90) -> dict:
    """Write the demo dataset under ``root``; return its paths.

    spec/records.md, "The demo dataset".

    Layout: ``root/tfrecords/<slide>.tfrecords`` (one per slide) and
    ``root/annotations.csv`` with columns patient, slide, category, site, age.
    Returns ``{"tfrecords": folder, "annotations": csv path, "paths": [...]}``.
    """
    root = os.fspath(root)
    folder = os.path.join(root, "tfrecords")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for spec in slides:
        path = os.path.join(folder, f"{spec.slide}.tfrecords")
        write_records(path, slide_records(spec, tile_px=tile_px, seed=seed, quality=quality))
        paths.append(path)
    ann = write_annotations_csv(
        os.path.join(root, "annotations.csv"), ["patient", "slide", "category", "site", "age"],
        [[spec.patient, spec.slide, spec.category, spec.site,
          f"{40 + 7 * (sum(map(ord, spec.patient)) % 5) + 0.5 * k:.1f}"]
         for k, spec in enumerate(slides)])
    return {"tfrecords": folder, "annotations": ann, "paths": paths}


__all__ = ["write_synthetic_dataset", "tissue_tile", "encode_jpeg", "SlideSpec",
           "DEFAULT_SLIDES", "slide_records"]
