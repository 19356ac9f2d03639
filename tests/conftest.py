"""Shared helpers: small datasets written in each dataset's published on-disk format, and a script runner."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "-model",
    "mobilenet_v3_large",
    "-bs",
    "8",
    "--weights",
    "none",
    "--image-size",
    "32",
    "--max-epochs",
    "1",
    "--patience",
    "1",
    "--workers",
    "0",
]


def run_script(
    script: str, *args: str, cwd: Path | None = None, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run a project script as a user would, capturing its output."""
    return subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )


def assert_clean_error(result: subprocess.CompletedProcess, *phrases: str) -> None:
    """A user error: non-zero exit, a message naming the problem, and no traceback."""
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    message = " ".join(result.stderr.split())  # the message is wrapped for the terminal
    for phrase in phrases:
        assert phrase in message, result.stderr


def finished_run(result: subprocess.CompletedProcess, out: Path) -> dict:
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith("Top-1 accuracy: "), result.stdout
    return json.loads((out / "metrics.json").read_text())


def noise_image(seed: int, size: tuple[int, int] = (12, 16), mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    return Image.fromarray(pixels).convert(mode)


def make_class_folders(root: Path, sizes: dict[str, int]) -> Path:
    """root/<class>/<i>.png, the layout of split.py's input and of imagefolder.py."""
    for index, (name, count) in enumerate(sizes.items()):
        (root / name).mkdir(parents=True)
        for i in range(count):
            noise_image(index * 1000 + i, (6, 6)).save(root / name / f"{i}.png")
    return root


def make_cifar10(root: Path, per_batch: int = 10, test: int = 20) -> Path:
    """cifar-10-batches-py/ as in the 'python version' archive: pickled dicts of uint8 rows and labels."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        count = test if name == "test_batch" else per_batch
        batch = {
            "batch_label": name,
            "labels": [i % 10 for i in range(count)],
            "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            "filenames": [f"img_{i}.png" for i in range(count)],
        }
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {
        "num_cases_per_batch": per_batch,
        "num_vis": 3072,
        "label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
    }
    (base / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return base


def make_cifar100(root: Path, train: int = 200, test: int = 100) -> Path:
    """cifar-100-python/{train, test, meta}: one pickle per split, fine and coarse labels."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, count in (("train", train), ("test", test)):
        batch = {"batch_label": name, "fine_labels": [i % 100 for i in range(count)],
                 "coarse_labels": [i % 20 for i in range(count)], "filenames": [f"{i}.png" for i in range(count)],
                 "data": rng.integers(0, 256, (count, 3072), dtype=np.uint8)}  # fmt: skip
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"fine_label_names": [f"fine_{i}" for i in range(100)], "coarse_label_names": [f"c{i}" for i in range(20)]}
    (base / "meta").write_bytes(pickle.dumps(meta, protocol=2))
    return base


EUROSAT_CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "Industrial", "Pasture",
                   "PermanentCrop", "Residential", "River", "SeaLake"]  # fmt: skip
UCMERCED_CLASSES = ["agricultural", "airplane", "baseballdiamond", "beach", "buildings", "chaparral",
                    "denseresidential", "forest", "freeway", "golfcourse", "harbor", "intersection",
                    "mediumresidential", "mobilehomepark", "overpass", "parkinglot", "river", "runway",
                    "sparseresidential", "storagetanks", "tenniscourt"]  # fmt: skip


def make_eurosat(root: Path, per_class: int = 10) -> Path:
    """eurosat/2750/<class>/<class>_<n>.jpg, as torchvision extracts EuroSAT.zip (RGB, 64x64)."""
    for index, name in enumerate(EUROSAT_CLASSES):
        folder = root / "eurosat" / "2750" / name
        folder.mkdir(parents=True)
        for n in range(1, per_class + 1):
            noise_image(index * 100 + n, (64, 64)).save(folder / f"{name}_{n}.jpg")
    return root / "eurosat"


def make_ucmerced(root: Path, per_class: int = 5) -> Path:
    """UCMerced_LandUse/Images/<class>/<class><nn>.tif, as in UCMerced_LandUse.zip."""
    for index, name in enumerate(UCMERCED_CLASSES):
        folder = root / "UCMerced_LandUse" / "Images" / name
        folder.mkdir(parents=True)
        for n in range(per_class):
            noise_image(index * 100 + n, (32, 32)).save(folder / f"{name}{n:02d}.tif")
    return root / "UCMerced_LandUse"


def make_flowers102(root: Path, classes: int = 3, per_split: int = 2) -> Path:
    """flowers-102/ as torchvision lays out the official files: jpg/, imagelabels.mat, setid.mat (1-based)."""
    from scipy.io import savemat

    base = root / "flowers-102"
    (base / "jpg").mkdir(parents=True)
    labels, ids = [], {"trnid": [], "valid": [], "tstid": []}
    for split in ids:
        for label in range(1, classes + 1):
            for _ in range(per_split):
                labels.append(label)
                ids[split].append(len(labels))
                noise_image(len(labels)).save(base / "jpg" / f"image_{len(labels):05d}.jpg")
    savemat(base / "imagelabels.mat", {"labels": np.array([labels], dtype=np.uint8)})
    savemat(base / "setid.mat", {k: np.array([v], dtype=np.uint16) for k, v in ids.items()})
    return base


BREAKHIS_PATIENTS = {  # (class, tumour type folder, patient folder)
    ("benign", "adenosis", "SOB_B_A_14-22549AB"),
    ("benign", "fibroadenoma", "SOB_B_F_14-9133"),
    ("benign", "phyllodes_tumor", "SOB_B_PT_14-21998AB"),
    ("benign", "tubular_adenoma", "SOB_B_TA_14-3411F"),
    ("malignant", "ductal_carcinoma", "SOB_M_DC_14-13412"),
    ("malignant", "lobular_carcinoma", "SOB_M_LC_14-13412"),
    ("malignant", "mucinous_carcinoma", "SOB_M_MC_14-13418DE"),
    ("malignant", "papillary_carcinoma", "SOB_M_PC_14-9146"),
    ("malignant", "ductal_carcinoma", "SOB_M_DC_14-2523"),
}


def make_breakhis(root: Path, per_patient: int = 3) -> Path:
    """BreaKHis_v1/histology_slides/breast/<class>/SOB/<type>/<patient>/<mag>X/<file>.png; patient 14-13412 has
    two tumour types, as in the real data."""
    base = root / "BreaKHis_v1"
    for index, (label, tumour, patient) in enumerate(sorted(BREAKHIS_PATIENTS)):
        prefix, cls, kind, slide = patient.split("_")
        for mag in (40, 100, 200, 400):
            folder = base / "histology_slides" / "breast" / label / "SOB" / tumour / patient / f"{mag}X"
            folder.mkdir(parents=True)
            for i in range(1, per_patient + 1):
                noise_image(index * 1000 + mag + i, (46, 70)).save(
                    folder / f"{prefix}_{cls}_{kind}-{slide}-{mag}-{i:03d}.png"
                )
    return base


def make_rsna(root: Path, patients: int = 16) -> Path:
    """stage_2_train_labels.csv (one row per box; several for a patient with several boxes) and DICOM images."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    images = root / "stage_2_train_images"
    images.mkdir(parents=True)
    rows = ["patientId,x,y,width,height,Target"]
    rng = np.random.default_rng(0)
    for i in range(patients):
        patient = f"{i:08x}-0000-4000-8000-{i:012x}"
        if i % 2:  # positive: one to three boxes, one row each
            rows += [f"{patient},{100 + b},{200 + b},50.0,60.0,1" for b in range(1 + i % 3)]
        else:
            rows.append(f"{patient},,,,,0")
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        dicom = pydicom.Dataset()
        dicom.file_meta = meta
        dicom.PatientID, dicom.Modality = patient, "CR"
        dicom.SOPClassUID, dicom.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        dicom.Rows, dicom.Columns, dicom.SamplesPerPixel = 32, 32, 1
        dicom.PhotometricInterpretation = "MONOCHROME2"
        dicom.BitsAllocated, dicom.BitsStored, dicom.HighBit, dicom.PixelRepresentation = 8, 8, 7, 0
        dicom.PixelData = rng.integers(0, 256, (32, 32), dtype=np.uint8).tobytes()
        dicom.save_as(images / f"{patient}.dcm", enforce_file_format=True)
    (root / "stage_2_train_labels.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> tuple[Path, dict, subprocess.CompletedProcess]:
    """One short digits run from scratch, shared by the tests that inspect what a run leaves."""
    work = tmp_path_factory.mktemp("digits")
    out = work / "run"
    result = run_script(
        "digits.py",
        "-model",
        "mobilenet",
        "-bs",
        "64",
        "--weights",
        "none",
        "--max-epochs",
        "2",
        "--workers",
        "0",
        "--out",
        out,
        "--results",
        work / "results.csv",
    )
    return out, finished_run(result, out), result
