"""UC Merced Land Use: 21 aerial scene classes, 100 images of 256x256 each; split 80/20."""

from __future__ import annotations

from pathlib import Path

from backbones.datasets.common.download import Archive, locate
from backbones.datasets.common.folders import class_folder_catalog
from backbones.datasets.common.spec import Catalog, DatasetSpec, PaperRecipe, ReadOptions

TOP = "UCMerced_LandUse"
ARCHIVE = Archive("http://weegee.vision.ucmerced.edu/datasets/UCMerced_LandUse.zip", "5b7ec56793786b6dc8a908e8854ac0e4")


def catalog(data: Path, options: ReadOptions) -> Catalog:
    return class_folder_catalog(data, locate(data, "Images", [TOP], options, ARCHIVE) / "Images")


SPEC = DatasetSpec(
    name="ucmerced",
    title="UC Merced Land Use",
    domain="remote sensing",
    num_classes=21,
    image_size=(256, 256),
    catalog=catalog,
    source=f"{ARCHIVE.url} (downloaded automatically, MD5-checked)",
    layout=f"--data/{TOP}/Images/<class>/<class><nn>.tif, e.g. {TOP}/Images/agricultural/agricultural00.tif",
    test_fraction=0.2,
    mean=(0.484, 0.490, 0.451),
    std=(0.218, 0.202, 0.196),
    paper=PaperRecipe(
        train_norm=((0.4820, 0.4889, 0.4487), (0.2196, 0.2033, 0.1971)),
        test_norm=((0.4825, 0.4862, 0.4495), (0.2174, 0.2024, 0.1962)),
        eval_batch_multiple=2,
    ),
)
