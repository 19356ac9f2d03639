"""Your own images: train/<class>/ and test/<class>/ (optionally val/<class>/), or one folder of class
subfolders split on the fly with the same splitter as split.py."""

from __future__ import annotations

import argparse
from pathlib import Path

from backbones.datasets.common.folders import class_dirs, encode_classes, scan_nonempty, split_folders_catalog
from backbones.datasets.common.readers import FileReader
from backbones.datasets.common.spec import Catalog, DataNotFound, DatasetSpec, ReadOptions
from backbones.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--test-size",
        "--test_size",
        dest="test_size",
        type=float,
        default=SPEC.test_fraction,
        help="fraction of each class held out for test when --data has no train/ and test/ folders",
    )


def catalog(data: Path, options: ReadOptions) -> Catalog:
    if not data.is_dir():
        raise DataNotFound(f"{data} is not a folder")
    folders = {folder.name for folder in class_dirs(data)}
    given = [split for split in ("train", "val", "test") if split in folders]
    # split folders only when they are all there is: beside other folders, 'train' is a class (CIFAR-100 has one)
    if given and folders <= {"train", "val", "test"} and not {"train", "test"} <= set(given):
        raise DataNotFound(f"{data} has {'/, '.join(given)}/ but needs both train/ and test/")
    if given and folders <= {"train", "val", "test"}:
        return split_folders_catalog(data, data, {split: split for split in given})
    if not 0 < options.own["test_size"] < 1:
        raise UserError(f"--test_size must be between 0 and 1, got {options.own['test_size']}.")
    table = scan_nonempty(data)
    classes, labels = encode_classes(table["class"])
    if len(classes) < 2:
        raise DataNotFound(f"found {len(classes)} class folder(s) with images under {data}; need at least 2")
    return Catalog.from_columns(table["sample"], labels, classes, FileReader(data), skipped=table.attrs["skipped"])


SPEC = DatasetSpec(
    name="imagefolder",
    title="your image folder",
    domain="custom",
    num_classes=None,
    image_size=(224, 224),
    catalog=catalog,
    source="your own images",
    layout=(
        "--data/train/<class>/<image> and --data/test/<class>/<image> (optionally --data/val/<class>/), or "
        "--data/<class>/<image>, split per class with --test_size"
    ),
    test_fraction=0.2,
    test_fraction_option="test_size",
    add_arguments=add_arguments,
    own_options=("test_size",),
)
