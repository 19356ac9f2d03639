"""EuroSAT (RGB): Sentinel-2 land-cover patches, 10 classes, 27,000 images of 64x64; split 70/30."""

from __future__ import annotations

from pathlib import Path

from backbones.datasets.common.download import TorchvisionDownload, locate
from backbones.datasets.common.folders import class_folder_catalog
from backbones.datasets.common.spec import Catalog, DatasetSpec, PaperRecipe, ReadOptions


def catalog(data: Path, options: ReadOptions) -> Catalog:
    base = locate(data, "2750", ["eurosat"], options, TorchvisionDownload("EuroSAT"))
    return class_folder_catalog(data, base / "2750")


SPEC = DatasetSpec(
    name="eurosat",
    title="EuroSAT",
    domain="remote sensing",
    num_classes=10,
    image_size=(224, 224),
    catalog=catalog,
    source="https://github.com/phelber/EuroSAT (RGB version; downloaded automatically by torchvision)",
    layout="--data/eurosat/2750/<class>/<class>_<n>.jpg (torchvision's layout of EuroSAT.zip)",
    test_fraction=0.3,
    mean=(0.344, 0.380, 0.408),
    std=(0.203, 0.137, 0.116),
    paper=PaperRecipe(
        train_norm=((0.3443, 0.3803, 0.4079), (0.2007, 0.1347, 0.1133)),
        test_norm=((0.3436, 0.3801, 0.4076), (0.2014, 0.1354, 0.1134)),
        eval_batch_multiple=2,
    ),
)
