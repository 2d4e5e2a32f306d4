"""A torch Dataset written the obvious way (spec/audit.md, "Auditing your own loader"):
one file after another, random flips with ``torch.rand``. Audited from the command line
by tests/test_audit.py: ``tilespec audit plain_torch_loader:make``."""

import torch

import tilespec


class PlainTiles(torch.utils.data.Dataset):
    def __init__(self, paths, labels=None, augment="", standardize=True):
        self.tiles = [tilespec.parse_tile(p) for path in paths
                      for p in tilespec.read_records(path)]
        self.labels = labels
        self.augment = augment or ""
        self.standardize = standardize

    def __len__(self):
        return len(self.tiles)

    def __getitem__(self, i):
        tile = self.tiles[i]
        img = torch.from_numpy(tilespec.decode_image(tile.image_raw)).permute(2, 0, 1)
        if "x" in self.augment and torch.rand(1) < 0.5:
            img = img.flip(-1)
        if "y" in self.augment and torch.rand(1) < 0.5:
            img = img.flip(-2)
        if self.standardize:
            img = img.float() / 127.5 - 1
        label = self.labels[tile.slide] if self.labels else 0
        return img, label


def make(dataset, labels=None, augment="", standardize=True, batch_size=None, **ignored):
    """The factory ``tilespec audit`` calls: options it does not know are ignored."""
    ds = PlainTiles(dataset.tfrecords(), labels, augment if augment is not True else "xy",
                    standardize)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size)
