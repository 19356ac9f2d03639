"""CIFAR-100: 60,000 32x32 natural images in 100 fine classes, official 50,000/10,000 split."""

from __future__ import annotations

from pathlib import Path

from backbones.datasets.cifar10 import read_cifar
from backbones.datasets.common.download import TorchvisionDownload
from backbones.datasets.common.spec import Catalog, DatasetSpec, PaperRecipe, ReadOptions

TOP = "cifar-100-python"


def catalog(data: Path, options: ReadOptions) -> Catalog:
    batches = {"train": ["train"], "test": ["test"]}
    download = TorchvisionDownload("CIFAR100")
    return read_cifar(data, options, TOP, batches, ("meta", "fine_label_names"), "fine_labels", download)


SPEC = DatasetSpec(
    name="cifar100",
    title="CIFAR-100",
    domain="natural",
    num_classes=100,
    image_size=(256, 256),
    catalog=catalog,
    source="https://www.cs.toronto.edu/~kriz/cifar.html (downloaded automatically by torchvision)",
    layout=f"--data/{TOP}/{{train, test, meta}} (the 'python version' archive)",
    augment="trivialaugment",
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
    paper=PaperRecipe(  # CIFAR-10's statistics, as the original's script has them
        train_norm=((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
        test_norm=((0.4941, 0.4853, 0.4507), (0.2468, 0.2430, 0.2618)),
        augment="trivialaugment-first",
        ties_improve=True,
        sgd_phase=False,
    ),
)
