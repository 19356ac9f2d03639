"""BreakHis: breast-tumour histopathology at one magnification, benign vs malignant, split by patient."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from backbones.datasets.common.download import locate
from backbones.datasets.common.folders import relative
from backbones.datasets.common.readers import FileReader
from backbones.datasets.common.spec import Catalog, DataNotFound, DatasetSpec, PaperRecipe, ReadOptions

TOP = "BreaKHis_v1"
CLASSES = ["benign", "malignant"]
MAGNIFICATIONS = (40, 100, 200, 400)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-mag",
        "--magnification",
        dest="mag",
        type=int,
        choices=MAGNIFICATIONS,
        default=40,
        help="magnification to use, in X (default: 40)",
    )


# the original's own statistics per magnification, train and test images separately (its script had 200x active)
PAPER_NORMS = {
    40: (((0.8018, 0.6498, 0.7656), (0.1105, 0.1555, 0.1126)), ((0.8036, 0.6536, 0.7731), (0.1091, 0.1494, 0.1070))),
    100: (((0.7940, 0.6362, 0.7699), (0.1279, 0.1791, 0.1167)), ((0.7997, 0.6358, 0.7745), (0.1270, 0.1779, 0.1187))),
    200: (((0.7895, 0.6215, 0.7696), (0.1266, 0.1784, 0.1077)), ((0.7917, 0.6211, 0.7659), (0.1244, 0.1780, 0.1099))),
    400: (((0.7562, 0.5913, 0.7426), (0.1425, 0.2017, 0.1156)), ((0.7651, 0.5763, 0.7524), (0.1397, 0.1966, 0.1112))),
}


def paper_recipe(options: dict) -> PaperRecipe:
    train_norm, test_norm = PAPER_NORMS[options["mag"]]
    return PaperRecipe(train_norm=train_norm, test_norm=test_norm, eval_batch_multiple=2, final_metric="class-weighted")


def patient_of(folder: str) -> str:
    """'SOB_B_TA_14-21998AB' -> '14-21998': the patient number. One number appears under two letter suffixes
    (14-21998AB, 14-21998CD) and even two tumour types (14-13412), so the suffix does not name a patient."""
    match = re.search(r"(\d+-\d+)[A-Z]*$", folder)
    if match is None:
        raise DataNotFound(f"the patient folder {folder} is not named <class>_<type>_<year>-<number>[letters]")
    return match.group(1)


def catalog(data: Path, options: ReadOptions) -> Catalog:
    base = locate(data, "histology_slides/breast", [TOP], options) / "histology_slides" / "breast"
    samples, labels, groups = [], [], []
    for label, name in enumerate(CLASSES):
        # <class>/SOB/<tumour type>/<patient>/<mag>X/<image>.png
        for path in sorted((base / name).glob(f"SOB/*/*/{options.own['mag']}X/*.png")):
            samples.append(relative(path, data))
            labels.append(label)
            groups.append(patient_of(path.parent.parent.name))
    if not samples or len(set(labels)) < 2:
        raise DataNotFound(f"found no {options.own['mag']}X images under {base}/benign and {base}/malignant")
    return Catalog.from_columns(samples, labels, CLASSES, FileReader(data), groups=groups)


SPEC = DatasetSpec(
    name="breakhis",
    title="BreakHis",
    domain="medical",
    num_classes=2,
    image_size=(448, 672),
    catalog=catalog,
    source=(
        "https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/ "
        "(request the BreaKHis_v1.tar.gz archive there; no automatic download)"
    ),
    layout=(
        f"--data/{TOP}/histology_slides/breast/{{benign,malignant}}/SOB/<tumour type>/<patient>/<mag>X/*.png, "
        "e.g. benign/SOB/adenosis/SOB_B_A_14-22549AB/40X/SOB_B_A-14-22549AB-40-001.png"
    ),
    test_fraction=0.3,
    mean=(0.787, 0.622, 0.765),
    std=(0.106, 0.143, 0.092),
    add_arguments=add_arguments,
    own_options=("mag",),
    paper=paper_recipe,
    notes="split ~70/30 by patient (stratified on the patient's label), so no patient is in both train and test",
)
