"""tilespec: an executable specification of slideflow-style TFRecord tile loading.

The NumPy reference implementation. Each module implements one chapter of spec/ (or
one part of it) and names it in its docstring: records, example, index, images, ops,
augment, stain, dataset, balance, sampling, rng, loader, project, training, verify,
plugins and testing among them. This package holds the names most programs need
(spec/records.md, spec/dataset.md, spec/sampling.md, spec/stain.md,
spec/adapters.md); see README.md, "Library".
"""

from .crc32c import BACKEND as CRC32C_BACKEND
from .errors import (CorruptDataError, CorruptLengthError, EmptyFileError, ExampleParseError,
                     ImageDecodeError, ImageTooLargeError, IndexFileError, NotATFRecordError,
                     RecordTooLargeError, TFRecordError, TileSchemaError, TileSizeError,
                     TruncatedRecordError)
from .example import Tile, encode_example, encode_tile, parse_example, parse_tile
from .images import decode_image
from . import ops
from .index import build_index, load_index
from .records import read_record_at, read_records, write_records
from .verify import verify  # spec/reliability.md
from .stain import StainNormalizer  # spec/stain.md
from . import stain as norm  # slideflow's name for it: tilespec.norm.autoselect(...)
from .project import Dataset, ModelParams, load_project  # spec/dataset.md
from .loader import IndexedInterleaver, NumpyLoader  # spec/sampling.md
from .hookspecs import hookimpl  # spec/adapters.md
from .plugins import AdapterNotInstalledError, adapters

__version__ = "0.1.0"

__all__ = [
    "read_records", "write_records", "read_record_at", "parse_example", "encode_example",
    "parse_tile", "encode_tile", "Tile", "build_index", "load_index", "decode_image",
    "TFRecordError", "EmptyFileError", "NotATFRecordError", "CorruptLengthError",
    "CorruptDataError", "TruncatedRecordError", "ExampleParseError", "TileSchemaError",
    "ImageDecodeError", "IndexFileError", "CRC32C_BACKEND",
    "RecordTooLargeError", "ImageTooLargeError", "TileSizeError",
    "StainNormalizer", "Dataset", "ModelParams", "load_project", "NumpyLoader",
    "IndexedInterleaver", "ops", "hookimpl", "adapters", "AdapterNotInstalledError",
]
