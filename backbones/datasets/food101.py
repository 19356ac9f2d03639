"""Food-101: 101 dishes; official split of 75,750 training and 25,250 test images (750/250 per class)."""

from __future__ import annotations

import json
from pathlib import Path

from backbones.datasets.common.download import TorchvisionDownload, locate
from backbones.datasets.common.folders import relative, require_files, required
from backbones.datasets.common.readers import FileReader
from backbones.datasets.common.spec import Catalog, DatasetSpec, PaperRecipe, ReadOptions

TOP = "food-101"


def catalog(data: Path, options: ReadOptions) -> Catalog:
    base = locate(data, "meta/train.json", [TOP], options, TorchvisionDownload("Food101"))
    lists = {}
    for split in ("train", "test"):
        listed = required(base / "meta" / f"{split}.json").read_text()
        lists[split] = json.loads(listed)  # {class: ['class/image id', ...]}
    classes = sorted(lists["train"])
    samples, labels, splits = [], [], []
    for split, by_class in lists.items():
        for label, name in enumerate(classes):
            entries = by_class.get(name, [])
            samples += [relative(base / "images" / f"{entry}.jpg", data) for entry in entries]
            labels += [label] * len(entries)
            splits += [split] * len(entries)
    require_files(data, samples)
    return Catalog.from_columns(samples, labels, classes, FileReader(data), splits)


SPEC = DatasetSpec(
    name="food101",
    title="Food-101",
    domain="natural",
    num_classes=101,
    image_size=(256, 256),
    catalog=catalog,
    source="https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/ (downloaded automatically by torchvision)",
    layout=f"--data/{TOP}/{{images/<class>/<id>.jpg, meta/train.json, meta/test.json}}",
    augment="trivialaugment",
    paper=PaperRecipe(
        train_norm=((0.5453, 0.4438, 0.3439), (0.2698, 0.2722, 0.2768)),
        test_norm=((0.5486, 0.4471, 0.3466), (0.2649, 0.2689, 0.2760)),
        augment="trivialaugment-first",
        patience=(10, 20),
        ties_improve=True,
    ),
)
