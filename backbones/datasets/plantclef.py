"""PlantCLEF (the benchmark's 20-species subset): given as train/ and val/ folders of class folders; the given
val/ is the test set, and validation is carved from train/."""

from __future__ import annotations

from pathlib import Path

from backbones.datasets.common.folders import find_dir, split_folders_catalog
from backbones.datasets.common.spec import Catalog, DataNotFound, DatasetSpec, PaperRecipe, ReadOptions

TOPS = ["plantclef", "PlantCLEF", "PlantCLEF_Subset"]  # the last is the original benchmark's folder name


def catalog(data: Path, options: ReadOptions) -> Catalog:
    root = find_dir(data, "train", TOPS)
    if not (root / "val").is_dir():
        raise DataNotFound(f"{root} has train/ but no val/ (the test split)")
    return split_folders_catalog(data, root, {"train": "train", "val": "test"})


SPEC = DatasetSpec(
    name="plantclef",
    title="PlantCLEF (20 species)",
    domain="plant",
    num_classes=20,
    image_size=(256, 256),
    catalog=catalog,
    source=(
        "https://www.imageclef.org/LifeCLEF (manual: PlantCLEF needs a registration). The original benchmark's "
        "20-species subset is not published anywhere; with any PlantCLEF subset of your own, lay it out as train/ "
        "and val/ class folders here, or run imagefolder.py on it"
    ),
    layout=(
        "--data/train/<species>/<image>.jpg and --data/val/<species>/<image>.jpg (or under --data/plantclef/ or "
        "--data/PlantCLEF_Subset/)"
    ),
    paper=PaperRecipe(
        train_norm=((0.4298, 0.4588, 0.3523), (0.2322, 0.2313, 0.2459)),
        test_norm=((0.4221, 0.4473, 0.3362), (0.2345, 0.2329, 0.2433)),
        eval_batch_multiple=2,
    ),
)
