"""Stanford Cars: 196 car models; official split of 8,144 training and 8,041 test images."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from backbones.datasets.common.folders import find_dir, relative, require_files, required
from backbones.datasets.common.readers import FileReader
from backbones.datasets.common.spec import Catalog, DataNotFound, DatasetSpec, ReadOptions

TOP = "stanford_cars"


def read_mat(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    return np.atleast_1d(loadmat(required(path, "see the expected layout"), squeeze_me=True)[key])


MIRROR = {"devkit": "car_devkit/devkit", "cars_train": "cars_train/cars_train", "cars_test": "cars_test/cars_test"}


def find_base(data: Path) -> Path:
    """The folder holding torchvision's layout (devkit/, cars_train/, cars_test/) or the common mirror's, which
    nests each one level deeper (car_devkit/devkit/, cars_train/cars_train/, cars_test/cars_test/)."""
    for marker in ("devkit/cars_meta.mat", f"{MIRROR['devkit']}/cars_meta.mat"):
        with contextlib.suppress(DataNotFound):
            return find_dir(data, marker, [TOP])
    raise DataNotFound(
        f"looked for devkit/cars_meta.mat (torchvision's layout) and car_devkit/devkit/cars_meta.mat (the mirror's) "
        f"in {data} and {data / TOP}"
    )


def folder(base: Path, name: str) -> Path:
    nested = base / MIRROR[name]
    return nested if nested.is_dir() else base / name


def test_labels(base: Path) -> Path:
    """The test annotations with labels, which ship apart from the archives (mirrors may add ' (1)' to the name)."""
    found = sorted(base.glob("cars_test_annos_withlabels*.mat"))
    return found[0] if found else required(base / "cars_test_annos_withlabels.mat", "the test labels ship separately")


def catalog(data: Path, options: ReadOptions) -> Catalog:
    base = find_base(data)
    devkit = folder(base, "devkit")
    classes = [str(name) for name in read_mat(devkit / "cars_meta.mat", "class_names")]
    samples, labels, splits = [], [], []
    for split, annotation_file, images in (
        ("train", devkit / "cars_train_annos.mat", folder(base, "cars_train")),
        ("test", test_labels(base), folder(base, "cars_test")),
    ):
        for annotation in read_mat(annotation_file, "annotations"):  # per image: bbox, class (1-based), fname
            samples.append(relative(images / str(annotation["fname"]), data))
            labels.append(int(annotation["class"]) - 1)
            splits.append(split)
    require_files(data, samples)
    return Catalog.from_columns(samples, labels, classes, FileReader(data), splits)


SPEC = DatasetSpec(
    name="stanfordcars",
    title="Stanford Cars",
    domain="natural",
    num_classes=196,
    image_size=(256, 256),
    catalog=catalog,
    source=(
        "a mirror of the original archives, as the original host is gone and torchvision's download is disabled "
        "(e.g. Kaggle's Stanford Cars): car_devkit.tgz, cars_train.tgz, cars_test.tgz and "
        "cars_test_annos_withlabels.mat, laid out as torchvision's StanfordCars expects"
    ),
    layout=(
        f"--data/{TOP}/{{devkit/cars_meta.mat, devkit/cars_train_annos.mat, cars_train/*.jpg, cars_test/*.jpg, "
        "cars_test_annos_withlabels.mat}, or as the common mirror ships it: car_devkit/devkit/, "
        "cars_train/cars_train/, cars_test/cars_test/ and cars_test_annos_withlabels*.mat beside them"
    ),
)
