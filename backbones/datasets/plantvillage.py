"""PlantVillage (the 39-class release without augmentation): 38 leaf disease/healthy classes plus background,
55,448 images; split 80/20."""

from __future__ import annotations

from pathlib import Path

from backbones.datasets.common.folders import class_dirs, class_folder_catalog
from backbones.datasets.common.spec import Catalog, DataNotFound, DatasetSpec, PaperRecipe, ReadOptions

TOPS = ["Plant_leave_diseases_dataset_without_augmentation", "Plant_leaf_diseases_dataset_without_augmentation"]


def find_class_root(data: Path, tops: list[str]) -> Path:
    """The folder of class folders: one of the release's top folders, or --data itself; a single wrapper folder
    (what many unzip tools add) is looked through."""
    if not data.is_dir():
        raise DataNotFound(f"{data} is not a folder")
    for top in tops:
        if (data / top).is_dir():
            return data / top
    folder = data
    while len(subfolders := class_dirs(folder)) == 1:
        folder = subfolders[0]
    if len(subfolders) < 2:
        raise DataNotFound(f"{data} holds no class folders")
    return folder


def catalog(data: Path, options: ReadOptions) -> Catalog:
    return class_folder_catalog(data, find_class_root(data, TOPS))


SPEC = DatasetSpec(
    name="plantvillage",
    title="PlantVillage",
    domain="plant",
    num_classes=39,
    image_size=(256, 256),
    catalog=catalog,
    source=(
        "https://data.mendeley.com/datasets/tywbtsjrjv/1 (manual: download "
        "Plant_leaf_diseases_dataset_without_augmentation.zip and extract it into --data)"
    ),
    layout=f"--data/{TOPS[0]}/<class>/<image>.jpg (39 class folders), or --data/<class>/<image>.jpg",
    test_fraction=0.2,
    paper=PaperRecipe(
        train_norm=((0.4666, 0.4891, 0.4118), (0.2006, 0.1771, 0.2194)),
        test_norm=((0.4669, 0.4890, 0.4129), (0.2002, 0.1768, 0.2193)),
        eval_batch_multiple=2,
    ),
)
