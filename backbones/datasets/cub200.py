"""Caltech-UCSD Birds-200-2011: 200 bird species; official split of 5,994 training and 5,794 test images."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from backbones.datasets.common.download import locate
from backbones.datasets.common.folders import relative, require_files, required
from backbones.datasets.common.readers import FileReader
from backbones.datasets.common.spec import Catalog, DataNotFound, DatasetSpec, PaperRecipe, ReadOptions

TOP = "CUB_200_2011"


def read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    """One of CUB's space-separated '<image id> <value>' files."""
    table = pd.read_csv(required(path), sep=" ", header=None, names=columns, dtype={columns[1]: str})
    return table.set_index(columns[0])


def catalog(data: Path, options: ReadOptions) -> Catalog:
    base = locate(data, "images.txt", [TOP], options)
    images = read_table(base / "images.txt", ["id", "path"])
    labels = read_table(base / "image_class_labels.txt", ["id", "class_id"])["class_id"].astype(int)
    is_train = read_table(base / "train_test_split.txt", ["id", "is_train"])["is_train"].astype(int)
    names = read_table(base / "classes.txt", ["class_id", "name"])["name"]  # '001.Black_footed_Albatross'
    images = images.join(labels).join(is_train)
    if images.isna().any().any():
        raise DataNotFound(f"images.txt, image_class_labels.txt and train_test_split.txt in {base} disagree on ids")
    samples = [relative(base / "images" / path, data) for path in images["path"]]
    require_files(data, samples)
    classes = [names.get(i, str(i)).split(".", 1)[-1] for i in range(1, int(names.index.max()) + 1)]
    splits = ["train" if flag == 1 else "test" for flag in images["is_train"]]
    return Catalog.from_columns(samples, images["class_id"] - 1, classes, FileReader(data), splits)


SPEC = DatasetSpec(
    name="cub200",
    title="CUB-200-2011",
    domain="natural",
    num_classes=200,
    image_size=(256, 256),
    catalog=catalog,
    source=(
        "https://www.vision.caltech.edu/datasets/cub_200_2011/ (manual: download CUB_200_2011.tgz and extract it "
        "into --data)"
    ),
    layout=(
        f"--data/{TOP}/{{images.txt, image_class_labels.txt, train_test_split.txt, classes.txt, "
        "images/<nnn>.<species>/*.jpg}"
    ),
    paper=PaperRecipe(
        train_norm=((0.4855, 0.4993, 0.4318), (0.2274, 0.2227, 0.2613)),
        test_norm=((0.4867, 0.4990, 0.4287), (0.2273, 0.2221, 0.2613)),
        eval_batch_multiple=2,
    ),
)
