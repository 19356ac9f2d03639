"""Tiny ImageNet: 200 ImageNet classes at 64x64; 500 training images per class, and the labelled val/ (50 per
class) is the test set (the official test/ has no labels)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from backbones.datasets.common.download import Archive, locate
from backbones.datasets.common.folders import prefix, relative, require_files, required, scan_class_folders
from backbones.datasets.common.readers import FileReader
from backbones.datasets.common.spec import Catalog, DataNotFound, DatasetSpec, ReadOptions

TOP = "tiny-imagenet-200"
ARCHIVE = Archive("http://cs231n.stanford.edu/tiny-imagenet-200.zip", md5="90528d7ca1a48142e341f4ef8d21d0de")


def catalog(data: Path, options: ReadOptions) -> Catalog:
    base = locate(data, "wnids.txt", [TOP], options, ARCHIVE)
    classes = sorted((base / "wnids.txt").read_text().split())
    train = scan_class_folders(base / "train") if (base / "train").is_dir() else pd.DataFrame(columns=["class"])
    absent = sorted(set(classes) - set(train["class"]))
    if absent:
        raise DataNotFound(f"wnids.txt lists {absent[0]} but {base / 'train' / absent[0] / 'images'} has no images "
                           f"({len(absent)} such classes; a partial extraction?)")  # fmt: skip
    train = train[train["class"].isin(classes)]
    annotations = required(base / "val" / "val_annotations.txt")
    test = pd.read_csv(annotations, sep="\t", header=None, usecols=[0, 1], names=["file", "class"], dtype=str)
    unknown = sorted(set(test["class"]) - set(classes))
    if unknown:
        raise DataNotFound(f"{annotations} labels images with {unknown[0]}, which wnids.txt does not list")
    test_samples = [relative(base / "val" / "images" / file, data) for file in test["file"]]
    require_files(data, test_samples)
    label = {wnid: index for index, wnid in enumerate(classes)}
    return Catalog.from_columns(
        (prefix(base / "train", data) + train["sample"]).tolist() + test_samples,
        [label[wnid] for wnid in train["class"]] + [label[wnid] for wnid in test["class"]],
        classes,
        FileReader(data),
        ["train"] * len(train) + ["test"] * len(test),
    )


SPEC = DatasetSpec(
    name="tinyimagenet",
    title="Tiny ImageNet",
    domain="natural",
    num_classes=200,
    image_size=(256, 256),
    catalog=catalog,
    source=f"{ARCHIVE.url} (downloaded automatically, MD5-checked)",
    layout=(
        f"--data/{TOP}/{{wnids.txt, train/<wnid>/images/<wnid>_<n>.JPEG, val/images/val_<n>.JPEG, "
        "val/val_annotations.txt}"
    ),
    mean=(0.480, 0.448, 0.398),
    std=(0.277, 0.269, 0.282),
    notes="the labelled val/ (10,000) is the test set; validation is carved from train/",
)
