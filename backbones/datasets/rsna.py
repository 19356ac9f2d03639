"""RSNA Pneumonia Detection: chest radiographs (DICOM), lung opacity or not, one sample per patient."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from backbones.datasets.common.download import locate
from backbones.datasets.common.folders import relative
from backbones.datasets.common.readers import FileReader
from backbones.datasets.common.spec import Catalog, DataNotFound, DatasetSpec, ReadOptions
from backbones.errors import UserError

TOP = "rsna-pneumonia-detection-challenge"
LABELS_CSV = "stage_2_train_labels.csv"
IMAGES = "stage_2_train_images"


class DicomReader(FileReader):
    """Reads a DICOM radiograph into an 8-bit RGB image (MONOCHROME1 inverted, other depths rescaled)."""

    def __call__(self, sample: str) -> Image.Image:
        import pydicom

        path = self.root / sample
        try:
            dicom = pydicom.dcmread(path)
            pixels = dicom.pixel_array
        except Exception as err:  # pydicom raises several types for truncated or foreign files
            raise UserError(f"Cannot read DICOM file {path}: {type(err).__name__}: {err}. Re-extract it.") from err
        if pixels.dtype != np.uint8:
            pixels = pixels.astype(np.float64)
            span = max(float(pixels.max() - pixels.min()), 1e-9)
            pixels = np.round((pixels - pixels.min()) * (255.0 / span)).astype(np.uint8)
        if getattr(dicom, "PhotometricInterpretation", "") == "MONOCHROME1":
            pixels = 255 - pixels
        return Image.fromarray(pixels).convert("RGB")


def catalog(data: Path, options: ReadOptions) -> Catalog:
    base = locate(data, LABELS_CSV, [TOP], options)
    try:
        rows = pd.read_csv(base / LABELS_CSV, usecols=["patientId", "Target"])
    except (ValueError, pd.errors.ParserError) as err:
        raise DataNotFound(f"{base / LABELS_CSV} is not the challenge's label file ({err})") from err
    # A patient with several boxes has several rows; the image, and its label, is one.
    patients = rows.groupby("patientId", sort=True)["Target"].max()
    paths = [base / IMAGES / f"{patient}.dcm" for patient in patients.index]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataNotFound(
            f"{len(missing)} of {len(paths)} images listed in {LABELS_CSV} are missing, e.g. {missing[0]}"
        )
    samples = [relative(p, data) for p in paths]
    return Catalog.from_columns(samples, patients.to_numpy(), ["no_lung_opacity", "lung_opacity"], DicomReader(data))


SPEC = DatasetSpec(
    name="rsna",
    title="RSNA Pneumonia Detection",
    domain="medical",
    num_classes=2,
    image_size=(256, 256),
    catalog=catalog,
    source=(
        "https://www.kaggle.com/c/rsna-pneumonia-detection-challenge/data (needs a Kaggle login: accept the rules, "
        "then `kaggle competitions download -c rsna-pneumonia-detection-challenge` and unzip into --data)"
    ),
    layout=f"--data/{{{LABELS_CSV}, {IMAGES}/<patientId>.dcm}} (or inside --data/{TOP}/)",
    test_fraction=0.2,
    notes="one sample per patient (26,684 images), not one per label row (30,227): the original counted rows",
)
