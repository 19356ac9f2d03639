"""What a dataset module declares, and the pieces every dataset shares.

A dataset module builds one `DatasetSpec`: what the data is (name, domain, classes, default resolution, split
rule, augmentation, where it comes from, its on-disk layout) and a `catalog` function that reads the published
layout into a `Catalog`: one table of samples with their labels, splits and groups, plus a picklable reader that
turns a sample id into an RGB image. Everything else (splitting, loading, training) is shared.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS

from errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
TEST_STREAM, VAL_STREAM = 0, 1  # independent random streams for the test and the validation split


class DataNotFound(Exception):
    """The dataset is not where `--data` points; the message says what exactly is missing."""


@dataclass
class Catalog:
    """Every sample of a dataset: a table with columns `sample`, `label`, `split`, `group`, and a reader.

    `sample` is the path relative to `--data`, or `<array>/<index>` for array-backed data. `split` is 'train',
    'val' or 'test' where the dataset fixes it, and '' where the split rule assigns it. `group` (e.g. a patient)
    keeps related samples on one side of every split; by default each sample is its own group.
    """

    samples: pd.DataFrame
    classes: list[str]
    read: Callable[[str], Image.Image]

    @classmethod
    def from_columns(
        cls,
        samples: Sequence[str],
        labels: Sequence[int],
        classes: list[str],
        read: Callable[[str], Image.Image],
        splits: Sequence[str] | str = "",
        groups: Sequence[str] | None = None,
    ) -> Catalog:
        table = pd.DataFrame({"sample": list(samples), "label": np.asarray(labels, dtype=np.int64)})
        table["split"] = splits if isinstance(splits, str) else list(splits)
        table["group"] = table["sample"] if groups is None else list(groups)
        return cls(table, classes, read)


@dataclass(frozen=True)
class DatasetSpec:
    """The declaration of one benchmark dataset."""

    name: str
    title: str
    domain: str
    num_classes: int | None  # None: as many as the data has (your own folder)
    image_size: tuple[int, int]  # default (height, width) for training and evaluation
    catalog: Callable[[Path, argparse.Namespace], Catalog]
    source: str  # where the data comes from and how to get it
    layout: str  # the expected on-disk layout under --data
    test_fraction: float | None = None  # split rule where there is no official test split
    augment: str = "hflip"  # 'none', 'hflip' or 'trivialaugment' (TrivialAugmentWide + flip)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    default_data: str = "data"
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None
    notes: str = ""


def find_dir(data: Path, marker: str, top_folders: Sequence[str] = ()) -> Path:
    """The directory holding `marker`: `data` itself or one of the dataset's own top folders inside it."""
    for candidate in [data, *(data / top for top in top_folders)]:
        if (candidate / marker).exists():
            return candidate
    looked = ", ".join(str(c / marker) for c in [data, *(data / top for top in top_folders)])
    raise DataNotFound(f"looked for {looked}")


def relative(path: Path, data: Path) -> str:
    """A sample id: the file's path relative to --data, with forward slashes."""
    return path.relative_to(data).as_posix()


class FileReader:
    """Reads image files relative to a root; picklable so DataLoader workers can use it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def __call__(self, sample: str) -> Image.Image:
        path = self.root / sample
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError) as err:
            raise UserError(
                f"Cannot read image {path}: {err}. The file is missing, truncated or not an image; replace or "
                f"delete it (and re-extract the dataset if many are affected), then run again."
            ) from err


class ArrayReader:
    """Serves images from in-memory uint8 arrays; sample ids are '<array>/<index>' (or '<index>' for one array)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def __call__(self, sample: str) -> Image.Image:
        name, _, index = sample.rpartition("/")
        return Image.fromarray(self.arrays[name][int(index)]).convert("RGB")


def stratified_holdout(
    labels: Sequence[int], fraction: float, seed: int, stream: int, groups: Sequence[str] | None = None
) -> np.ndarray:
    """Boolean mask of the samples held out: `fraction` of each class, chosen at random (seeded).

    Each class with two or more members keeps at least one on each side, which small datasets need and a
    plain `train_test_split(stratify=...)` cannot promise. With `groups`, whole groups move together and each
    group counts under its most common label, so no group (e.g. patient) is on both sides.
    """
    labels = np.asarray(labels)
    if groups is None:
        unit_of = np.arange(len(labels))
        unit_labels = labels
    else:
        unit_names, unit_of = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        unit_labels = np.array([np.bincount(labels[unit_of == u]).argmax() for u in range(len(unit_names))])
    rng = np.random.default_rng([seed, stream])
    held_units = np.zeros(len(unit_labels), dtype=bool)
    for label in np.unique(unit_labels):
        members = np.flatnonzero(unit_labels == label)
        count = int(round(len(members) * fraction))
        count = min(max(count, 1 if len(members) >= 2 else 0), len(members) - 1)
        held_units[rng.permutation(members)[:count]] = True
    return held_units[unit_of]


def assign_splits(samples: pd.DataFrame, test_fraction: float | None, val_fraction: float, seed: int) -> pd.DataFrame:
    """Fill in the splits the dataset leaves open: test by the dataset's rule, then validation from training."""
    samples = samples.copy()
    open_rows = samples["split"] == ""
    if open_rows.any():
        if test_fraction is None:
            raise ValueError("samples without a split in a dataset with no split rule")
        rows = samples[open_rows]
        held = stratified_holdout(rows["label"], test_fraction, seed, TEST_STREAM, rows["group"])
        samples.loc[open_rows, "split"] = np.where(held, "test", "train")
    if val_fraction > 0 and not (samples["split"] == "val").any():
        train_rows = samples["split"] == "train"
        rows = samples[train_rows]
        held = stratified_holdout(rows["label"], val_fraction, seed, VAL_STREAM, rows["group"])
        samples.loc[train_rows, "split"] = np.where(held, "val", "train")
    return samples


def locate(
    data: Path,
    marker: str,
    top_folders: Sequence[str],
    args: argparse.Namespace,
    download: Callable[[], object] | None = None,
) -> Path:
    """Find the dataset under `data`; if it is absent and a `download` is given (and allowed), fetch it first."""
    try:
        return find_dir(data, marker, top_folders)
    except DataNotFound:
        if download is None or not getattr(args, "download", True):
            raise
    print(f"Dataset not found under {data}; downloading it there (pass --no-download to forbid this).")
    try:
        download()
    except (OSError, RuntimeError) as err:
        raise UserError(
            f"Downloading the dataset into {data} failed ({type(err).__name__}: {err}). Check the network, or "
            f"fetch the archive on a connected machine, extract it into {data}, and run again with --no-download."
        ) from err
    return find_dir(data, marker, top_folders)


def class_dirs(root: Path) -> list[Path]:
    """The class subfolders of `root`, sorted; hidden folders are skipped."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_class_folders(root: Path) -> pd.DataFrame:
    """Every image under root/<class>/ (any depth), with its class name; hidden files are skipped."""
    rows = []
    for class_dir in class_dirs(root):
        for path in sorted(class_dir.rglob("*")):
            if path.is_file() and path.suffix.lower() in IMG_EXTENSIONS and not path.name.startswith("."):
                rows.append({"sample": path.relative_to(root).as_posix(), "class": class_dir.name})
    return pd.DataFrame(rows, columns=["sample", "class"])


def encode_classes(names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Sorted class names and each sample's label index: the one mapping the loaders and split.py share."""
    classes, labels = np.unique(np.asarray(names, dtype=str), return_inverse=True)
    return classes.tolist(), labels


def class_folder_catalog(data: Path, folder: Path, read: Callable[[str], Image.Image] | None = None) -> Catalog:
    """A published layout of one subfolder of images per class (UCMerced, EuroSAT, ...); split by the dataset's rule."""
    table = scan_class_folders(folder)
    if table.empty:
        raise DataNotFound(f"{folder} holds no class folders with images (a partial extraction?)")
    classes, labels = encode_classes(table["class"])
    samples = [relative(folder / sample, data) for sample in table["sample"]]
    return Catalog.from_columns(samples, labels, classes, read or FileReader(data))
