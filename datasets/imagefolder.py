"""Your own images: train/<class>/ and test/<class>/ (optionally val/<class>/), or one folder of class
subfolders split on the fly with the same splitter as split.py."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from datasets.base import (
    Catalog,
    DataNotFound,
    DatasetSpec,
    FileReader,
    class_dirs,
    encode_classes,
    scan_class_folders,
)
from errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--test_size",
        type=float,
        default=SPEC.test_fraction,
        help="fraction of each class held out for test when --data has no train/ and test/ folders",
    )


def scan(folder: Path) -> pd.DataFrame:
    table = scan_class_folders(folder)
    empty = [d.name for d in class_dirs(folder) if d.name not in set(table["class"])]
    if empty:
        raise UserError(
            f"These class folders under {folder} hold no images: {', '.join(empty)}. Add images (with an image "
            f"extension such as .jpg or .png) or remove the folders."
        )
    return table


def catalog(data: Path, args: argparse.Namespace) -> Catalog:
    if not data.is_dir():
        raise DataNotFound(f"{data} is not a folder")
    given = [split for split in ("train", "val", "test") if (data / split).is_dir()]
    if given and not {"train", "test"} <= set(given):
        raise DataNotFound(f"{data} has {'/, '.join(given)}/ but needs both train/ and test/")
    if given:
        tables = {split: scan(data / split) for split in given}
        train_classes = set(tables["train"]["class"])
        for split, table in tables.items():
            if set(table["class"]) != train_classes:
                only_train = sorted(train_classes - set(table["class"]))
                only_here = sorted(set(table["class"]) - train_classes)
                raise UserError(
                    f"The class folders of {data / split} differ from those of {data / 'train'}: missing there "
                    f"{only_train or 'none'}, extra there {only_here or 'none'}. Every split needs the same class "
                    f"folders; rename or add them."
                )
        table = pd.concat([t.assign(sample=f"{s}/" + t["sample"], split=s) for s, t in tables.items()])
    else:
        if not 0 < args.test_size < 1:
            raise UserError(f"--test_size must be between 0 and 1, got {args.test_size}.")
        table = scan(data).assign(split="")
    classes, labels = encode_classes(table["class"])
    if len(classes) < 2:
        raise DataNotFound(f"found {len(classes)} class folder(s) with images under {data}; need at least 2")
    return Catalog.from_columns(table["sample"], labels, classes, FileReader(data), table["split"].tolist())


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
    add_arguments=add_arguments,
)
