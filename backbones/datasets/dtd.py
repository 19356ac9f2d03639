"""Describable Textures Dataset: 47 texture classes, 120 images each; partition 1: train 1, val 1 and test 1,
1,880 images each (40 per class)."""

from __future__ import annotations

from pathlib import Path

from backbones.datasets.common.download import TorchvisionDownload, locate
from backbones.datasets.common.folders import encode_classes, relative, require_files, required
from backbones.datasets.common.readers import FileReader
from backbones.datasets.common.spec import IMAGENET_MEAN, IMAGENET_STD, Catalog, DatasetSpec, PaperRecipe, ReadOptions

PARTITION = 1


def catalog(data: Path, options: ReadOptions) -> Catalog:
    # the archive extracts to dtd/; torchvision's DTD keeps it one level deeper, in dtd/dtd/
    marker = f"labels/train{PARTITION}.txt"
    base = locate(data, marker, ["dtd", "dtd/dtd"], options, TorchvisionDownload("DTD"), produces="dtd")
    samples, names, splits = [], [], []
    for split in ("train", "val", "test"):
        listed = required(base / "labels" / f"{split}{PARTITION}.txt").read_text().split()
        for line in listed:  # 'banded/banded_0002.jpg'
            samples.append(relative(base / "images" / line, data))
            names.append(line.split("/")[0])
            splits.append(split)
    require_files(data, samples)
    classes, labels = encode_classes(names)
    return Catalog.from_columns(samples, labels, classes, FileReader(data), splits)


SPEC = DatasetSpec(
    name="dtd",
    title="Describable Textures (DTD)",
    domain="texture",
    num_classes=47,
    image_size=(256, 256),
    catalog=catalog,
    source="https://www.robots.ox.ac.uk/~vgg/data/dtd/ (downloaded automatically by torchvision)",
    layout="--data/dtd/{images/<class>/<class>_<n>.jpg, labels/train1.txt, val1.txt, test1.txt} (or dtd/dtd/...)",
    augment="trivialaugment",
    notes="the official val 1 (1,880) is the validation set",
    paper=PaperRecipe(
        train_norm=(IMAGENET_MEAN, IMAGENET_STD),
        test_norm=(IMAGENET_MEAN, IMAGENET_STD),
        augment="trivialaugment-first",
        official_val="unused",
    ),
)
