"""Stanford Cars: 196 car models; official split of 8,144 training and 8,041 test images."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from datasets.base import Catalog, DatasetSpec, FileReader, locate, relative, require_files, required

TOP = "stanford_cars"


def read_mat(path: Path, key: str) -> np.ndarray:
    from scipy.io import loadmat

    return np.atleast_1d(loadmat(required(path, "see the expected layout"), squeeze_me=True)[key])


def catalog(data: Path, args: argparse.Namespace) -> Catalog:
    base = locate(data, "devkit/cars_meta.mat", [TOP], args)
    classes = [str(name) for name in read_mat(base / "devkit" / "cars_meta.mat", "class_names")]
    samples, labels, splits = [], [], []
    for split, annotation_file, folder in (
        ("train", base / "devkit" / "cars_train_annos.mat", "cars_train"),
        ("test", base / "cars_test_annos_withlabels.mat", "cars_test"),  # the test labels ship separately
    ):
        for annotation in read_mat(annotation_file, "annotations"):  # per image: bbox, class (1-based), fname
            samples.append(relative(base / folder / str(annotation["fname"]), data))
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
        "cars_test_annos_withlabels.mat}"
    ),
)
