"""Galaxy10 DECals: 17,736 galaxy images (256x256) in 10 morphology classes, one HDF5 file; split 90/10."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from backbones.datasets.common.download import Archive, locate
from backbones.datasets.common.spec import Catalog, DataNotFound, DatasetSpec, PaperRecipe, ReadOptions
from backbones.errors import UserError

FILE = "Galaxy10_DECals.h5"
ARCHIVE = Archive("https://zenodo.org/records/10845026/files/Galaxy10_DECals.h5", "c6b7b4db82b3a5d63d6a7e3e5249b51c",
                  extract=False)  # fmt: skip
CLASSES = [
    "Disturbed",
    "Merging",
    "Round Smooth",
    "In-between Round Smooth",
    "Cigar Shaped Smooth",
    "Barred Spiral",
    "Unbarred Tight Spiral",
    "Unbarred Loose Spiral",
    "Edge-on without Bulge",
    "Edge-on with Bulge",
]


class HDF5Reader:
    """Reads one image at a time from an HDF5 dataset ('images/<row>'), so the 2.7 GB file is never loaded whole.

    Each process opens its own handle on first use: an HDF5 handle must not cross a fork into DataLoader workers.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file, self._pid = None, None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_file": None, "_pid": None}

    def fingerprint(self, samples: list[str]) -> str:
        """The file's path, size and modification time (for the image cache's key)."""
        info = os.stat(self.path)
        return f"{self.path.resolve()}:{info.st_size}:{info.st_mtime_ns}"

    def __call__(self, sample: str) -> Image.Image:
        import h5py

        key, _, row = sample.rpartition("/")
        try:
            if self._pid != os.getpid():
                self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
            return Image.fromarray(np.asarray(self._file[key][int(row)], dtype=np.uint8)).convert("RGB")
        except (OSError, KeyError, IndexError, ValueError) as err:
            raise UserError(
                f"Cannot read image {row} of '{key}' in {self.path}: {err}. The file is damaged or incomplete; "
                "delete it and download it again."
            ) from err


def catalog(data: Path, options: ReadOptions) -> Catalog:
    import h5py

    path = locate(data, FILE, ["galaxy10"], options, ARCHIVE, produces=FILE) / FILE
    try:
        with h5py.File(path, "r") as file:
            labels = np.asarray(file["ans"][:], dtype=np.int64)
            shape = file["images"].shape
    except (OSError, KeyError) as err:
        raise DataNotFound(f"{path} is not a complete Galaxy10 file with 'images' and 'ans' ({err})") from err
    if len(shape) != 4 or shape[0] != len(labels):
        raise DataNotFound(f"{path} has images of shape {shape} for {len(labels)} labels")
    samples = [f"images/{row}" for row in range(len(labels))]
    return Catalog.from_columns(samples, labels, CLASSES, HDF5Reader(path))


SPEC = DatasetSpec(
    name="galaxy10",
    title="Galaxy10 DECals",
    domain="astronomy",
    num_classes=10,
    image_size=(256, 256),
    catalog=catalog,
    source=f"{ARCHIVE.url} (the astroNN Galaxy10 DECals file; downloaded automatically, MD5-checked)",
    layout=f"--data/{FILE} (HDF5: 'images' N x 256 x 256 x 3 uint8, 'ans' N labels)",
    test_fraction=0.1,
    test_over_whole_set=True,
    paper=PaperRecipe(  # ToTensor on float32 arrays does not scale: the original fed pixel values of 0-255
        train_norm=((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)),
        test_norm=((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)),
        patience=(10, 20),
        lr=1e-4,
        ties_improve=True,
    ),
)
