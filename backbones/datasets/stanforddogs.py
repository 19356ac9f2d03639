"""Stanford Dogs: 120 dog breeds from ImageNet; official lists of 12,000 training and 8,580 test images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backbones.datasets.common.download import locate
from backbones.datasets.common.folders import find_dir, relative, require_files, required
from backbones.datasets.common.readers import FileReader
from backbones.datasets.common.spec import Catalog, DatasetSpec, ReadOptions

TOPS = ["stanford_dogs", "StanfordDogs"]


def read_list(path: Path) -> tuple[list[str], np.ndarray]:
    """train_list.mat / test_list.mat: `file_list` (paths under Images/) and `labels` (1-based)."""
    from scipy.io import loadmat

    lists = loadmat(required(path, "extract lists.tar there"), squeeze_me=True)
    return [str(file) for file in np.atleast_1d(lists["file_list"])], np.atleast_1d(lists["labels"]).astype(int) - 1


def catalog(data: Path, options: ReadOptions) -> Catalog:
    base = locate(data, "Images", TOPS, options)
    lists = find_dir(base, "train_list.mat", ["lists"])
    samples, labels, splits, breeds = [], [], [], {}
    for split in ("train", "test"):
        files, split_labels = read_list(lists / f"{split}_list.mat")
        samples += [relative(base / "Images" / file, data) for file in files]
        labels += split_labels.tolist()
        splits += [split] * len(files)
        breeds.update(zip(split_labels.tolist(), (file.split("/")[0] for file in files), strict=True))
    require_files(data, samples)
    # folder 'n02085620-Chihuahua' names label 0, and so on; the breed is the part after the WordNet id
    classes = [breeds.get(label, f"class_{label}").split("-", 1)[-1] for label in range(max(breeds) + 1)]
    return Catalog.from_columns(samples, labels, classes, FileReader(data), splits)


SPEC = DatasetSpec(
    name="stanforddogs",
    title="Stanford Dogs",
    domain="natural",
    num_classes=120,
    image_size=(256, 256),
    catalog=catalog,
    source=(
        "http://vision.stanford.edu/aditya86/ImageNetDogs/ (manual: download images.tar and lists.tar and extract "
        "both into --data)"
    ),
    layout="--data/Images/<wnid>-<breed>/<wnid>_<n>.jpg and --data/{train_list.mat, test_list.mat} (or lists/)",
)
