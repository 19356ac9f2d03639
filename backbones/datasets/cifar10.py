"""CIFAR-10: 60,000 32x32 natural images in 10 classes, official 50,000/10,000 split."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from backbones.datasets.common.download import TorchvisionDownload, locate
from backbones.datasets.common.folders import required
from backbones.datasets.common.readers import ArrayReader
from backbones.datasets.common.spec import Catalog, DatasetSpec, PaperRecipe, ReadOptions
from backbones.errors import UserError

TOP = "cifar-10-batches-py"
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCHES = ["test_batch"]


class PlainUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds (dicts, lists, strings, numbers and NumPy arrays): a file under
    --data that names any other class or function is refused instead of running it."""

    ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("_codecs", "encode"),  # how a protocol-2 pickle written by Python 3 stores bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it asks to load {module}.{name}, which no CIFAR batch holds")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict:
    """One pickled batch of the 'python version' archive: uint8 rows of 3x32x32 (channel-major) and labels."""
    with open(required(path), "rb") as file:
        try:
            batch = PlainUnpickler(file, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
            raise UserError(
                f"{path} is not a CIFAR batch in the published 'python version' format ({err}). Delete the dataset "
                "folder and let the script download it again, or re-extract the official archive."
            ) from err
    if not isinstance(batch, dict):
        raise UserError(f"{path} is not a CIFAR batch (it holds a {type(batch).__name__}, not a dictionary).")
    return batch


def read_cifar(
    data: Path,
    options: ReadOptions,
    top: str,
    batches: dict[str, list[str]],
    meta: tuple[str, str],
    label_key: str,
    download: Callable[[Path], object],
) -> Catalog:
    """The CIFAR 'python version' layout: pickled batches per split and a meta file naming the classes."""
    base = locate(data, meta[0], [top], options, download)
    classes = read_batch(base / meta[0]).get(meta[1])
    if not isinstance(classes, list):
        raise UserError(f"{base / meta[0]} lacks the '{meta[1]}' list of class names; re-extract the dataset.")
    arrays, samples, labels, splits = {}, [], [], []
    for split, names in batches.items():
        for name in names:
            batch = read_batch(base / name)
            if not {"data", label_key} <= set(batch):
                raise UserError(f"{base / name} has no 'data' or '{label_key}' entry; re-extract the dataset.")
            arrays[name] = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
            samples += [f"{name}/{i}" for i in range(len(arrays[name]))]
            labels += list(batch[label_key])
            splits += [split] * len(arrays[name])
    return Catalog.from_columns(samples, labels, list(classes), ArrayReader(arrays), splits)


def catalog(data: Path, options: ReadOptions) -> Catalog:
    batches = {"train": TRAIN_BATCHES, "test": TEST_BATCHES}
    download = TorchvisionDownload("CIFAR10")
    return read_cifar(data, options, TOP, batches, ("batches.meta", "label_names"), "labels", download)


SPEC = DatasetSpec(
    name="cifar10",
    title="CIFAR-10",
    domain="natural",
    num_classes=10,
    image_size=(256, 256),
    catalog=catalog,
    source="https://www.cs.toronto.edu/~kriz/cifar.html (downloaded automatically by torchvision)",
    layout=f"--data/{TOP}/{{data_batch_1..5, test_batch, batches.meta}} (the 'python version' archive)",
    augment="trivialaugment",
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    paper=PaperRecipe(
        train_norm=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        test_norm=((0.4941, 0.4853, 0.4507), (0.2468, 0.2430, 0.2618)),
        augment="trivialaugment-first",
        ties_improve=True,
        sgd_phase=False,
    ),
)
