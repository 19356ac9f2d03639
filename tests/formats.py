"""Small datasets written in each dataset's published on-disk format (as the source distributes it, or as
torchvision lays it out where torchvision downloads it)."""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


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
    ("benign", "phyllodes_tumor", "SOB_B_PT_14-21998CD"),  # one patient number under two letter suffixes
    ("benign", "tubular_adenoma", "SOB_B_TA_14-3411F"),
    ("malignant", "ductal_carcinoma", "SOB_M_DC_14-13412"),
    ("malignant", "lobular_carcinoma", "SOB_M_LC_14-13412"),
    ("malignant", "mucinous_carcinoma", "SOB_M_MC_14-13418DE"),
    ("malignant", "papillary_carcinoma", "SOB_M_PC_14-9146"),
    ("malignant", "ductal_carcinoma", "SOB_M_DC_14-2523"),
}


def make_breakhis(root: Path, per_patient: int = 3) -> Path:
    """BreaKHis_v1/histology_slides/breast/<class>/SOB/<type>/<patient>/<mag>X/<file>.png; patient 14-13412 has
    two tumour types and 14-21998 two letter suffixes, as in the real data."""
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


def wnid(index: int) -> str:
    return f"n{1443537 + index:08d}"


def make_tinyimagenet(root: Path, classes: int = 200, train: int = 2, val: int = 1) -> Path:
    """tiny-imagenet-200/ as in tiny-imagenet-200.zip: wnids.txt, words.txt, train/<wnid>/{images/, boxes},
    val/{images/, val_annotations.txt} (tab-separated: file, wnid, box), and the unlabelled test/images/."""
    base = root / "tiny-imagenet-200"
    wnids = [wnid(i) for i in range(classes)]
    for folder in ("val/images", "test/images"):
        (base / folder).mkdir(parents=True)
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))  # not sorted, as published
    (base / "words.txt").write_text("".join(f"{w}\tthing {i}, other name\n" for i, w in enumerate(wnids)))
    annotations = []
    for i, name in enumerate(wnids):
        (base / "train" / name / "images").mkdir(parents=True)
        boxes = []
        for n in range(train):
            noise_image(i * 10 + n, (64, 64)).save(base / "train" / name / "images" / f"{name}_{n}.JPEG")
            boxes.append(f"{name}_{n}.JPEG\t0\t0\t63\t63\n")
        (base / "train" / name / f"{name}_boxes.txt").write_text("".join(boxes))
        for _ in range(val):
            file = f"val_{len(annotations)}.JPEG"
            noise_image(50_000 + len(annotations), (64, 64)).save(base / "val" / "images" / file)
            annotations.append(f"{file}\t{name}\t3\t5\t60\t61\n")
    (base / "val" / "val_annotations.txt").write_text("".join(annotations))
    noise_image(99_999, (64, 64)).save(base / "test" / "images" / "test_0.JPEG")
    return base


def make_stanforddogs(
    root: Path, classes: int = 120, train: int = 1, test: int = 1, lists_folder: bool = False
) -> Path:
    """Images/<wnid>-<breed>/<wnid>_<n>.jpg from images.tar, and {file,train,test}_list.mat from lists.tar
    (`file_list` and `annotation_list` as N x 1 cell arrays, `labels` N x 1, 1-based)."""
    from scipy.io import savemat

    lists_dir = root / "lists" if lists_folder else root
    lists_dir.mkdir(parents=True, exist_ok=True)
    entries = {"train": [], "test": []}
    for i in range(classes):
        folder = f"{wnid(i)}-Breed_{i}"
        (root / "Images" / folder).mkdir(parents=True)
        for split, count in (("train", train), ("test", test)):
            for n in range(count):
                file = f"{folder}/{wnid(i)}_{len(entries[split]) + 100 * n}{split[:2]}.jpg"
                noise_image(i * 10 + n + (5 if split == "test" else 0), (40, 48)).save(root / "Images" / file)
                entries[split].append((file, i + 1))
    for split, rows in [*entries.items(), ("file", entries["train"] + entries["test"])]:
        files = [file for file, _ in rows]
        savemat(lists_dir / f"{split}_list.mat", {
            "file_list": np.array(files, dtype=object).reshape(-1, 1),
            "annotation_list": np.array([f.removesuffix(".jpg") for f in files], dtype=object).reshape(-1, 1),
            "labels": np.array([label for _, label in rows], dtype=np.float64).reshape(-1, 1),
        })  # fmt: skip
    return root


def make_cub200(root: Path, classes: int = 200, per_class: int = 2) -> Path:
    """CUB_200_2011/ as in CUB_200_2011.tgz: space-separated id files and images/<nnn>.<Species>/<file>.jpg."""
    base = root / "CUB_200_2011"
    images, labels, split, names = [], [], [], []
    for c in range(1, classes + 1):
        folder = f"{c:03d}.Species_number_{c}"
        names.append(f"{c} {folder}\n")
        (base / "images" / folder).mkdir(parents=True)
        for n in range(per_class):
            image_id = len(images) + 1
            file = f"{folder}/Species_Number_{c}_{n:04d}_{image_id}.jpg"
            noise_image(image_id, (30, 40)).save(base / "images" / file)
            images.append(f"{image_id} {file}\n")
            labels.append(f"{image_id} {c}\n")
            split.append(f"{image_id} {1 if n % 2 == 0 else 0}\n")
    for name, lines in (("images.txt", images), ("image_class_labels.txt", labels),
                        ("train_test_split.txt", split), ("classes.txt", names)):  # fmt: skip
        (base / name).write_text("".join(lines))
    return base


def make_stanfordcars(root: Path, classes: int = 196, train: int = 1, test: int = 1) -> Path:
    """stanford_cars/ as torchvision's StanfordCars expects: devkit/{cars_meta.mat, cars_train_annos.mat},
    cars_train/, cars_test/ and cars_test_annos_withlabels.mat (annotations: 1 x N struct arrays)."""
    from scipy.io import savemat

    base = root / "stanford_cars"
    for folder in ("devkit", "cars_train", "cars_test"):
        (base / folder).mkdir(parents=True)
    fields = [(name, "O") for name in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")]
    for split, count, mat in (("train", train, base / "devkit" / "cars_train_annos.mat"),
                              ("test", test, base / "cars_test_annos_withlabels.mat")):  # fmt: skip
        rows = []
        for c in range(classes):
            for n in range(count):
                fname = f"{len(rows) + 1:05d}.jpg"
                noise_image(c * 10 + n + (5 if split == "test" else 0), (30, 50)).save(base / f"cars_{split}" / fname)
                rows.append((np.uint8(3), np.uint8(4), np.uint16(40), np.uint16(30), np.uint8(c + 1), fname))
        savemat(mat, {"annotations": np.array(rows, dtype=fields).reshape(1, -1)})
    names = np.array([f"Make{c} Model {c} 2012" for c in range(classes)], dtype=object).reshape(1, -1)
    savemat(base / "devkit" / "cars_meta.mat", {"class_names": names})
    return base


def make_food101(root: Path, classes: int = 101, train: int = 1, test: int = 1) -> Path:
    """food-101/ as in food-101.tar.gz: images/<class>/<id>.jpg and meta/{train,test}.json, classes.txt."""
    base = root / "food-101"
    (base / "meta").mkdir(parents=True)
    names = [f"dish_{c:03d}" for c in range(classes)]
    lists = {"train": {}, "test": {}}
    for c, name in enumerate(names):
        (base / "images" / name).mkdir(parents=True)
        for split, count in (("train", train), ("test", test)):
            lists[split][name] = []
            for n in range(count):
                image_id = 1000 + c * 100 + n + (50 if split == "test" else 0)
                noise_image(image_id, (32, 40)).save(base / "images" / name / f"{image_id}.jpg")
                lists[split][name].append(f"{name}/{image_id}")
    for split, by_class in lists.items():
        (base / "meta" / f"{split}.json").write_text(json.dumps(by_class))
        (base / "meta" / f"{split}.txt").write_text("".join(f"{e}\n" for v in by_class.values() for e in v))
    (base / "meta" / "classes.txt").write_text("".join(f"{n}\n" for n in names))
    return base


def make_dtd(root: Path, classes: int = 47, per_split: int = 1) -> Path:
    """dtd/dtd/ as torchvision's DTD extracts dtd-r1.0.1.tar.gz: images/<class>/<class>_<nnnn>.jpg and
    labels/{train,val,test}<1..10>.txt listing '<class>/<file>'."""
    base = root / "dtd" / "dtd"
    (base / "labels").mkdir(parents=True)
    lists = {"train": [], "val": [], "test": []}
    for c in range(classes):
        name = f"texture{c:02d}"
        (base / "images" / name).mkdir(parents=True)
        for split in lists:
            for _ in range(per_split):
                file = f"{name}/{name}_{len(lists[split]) * 3 + len(split):04d}.jpg"
                noise_image(c * 100 + len(lists[split]) + len(split), (36, 36)).save(base / "images" / file)
                lists[split].append(file)
    for partition in range(1, 11):  # other partitions shuffle the same images; 1 is the one used
        order = lists if partition == 1 else {"train": lists["test"], "val": lists["val"], "test": lists["train"]}
        for split, files in order.items():
            (base / "labels" / f"{split}{partition}.txt").write_text("".join(f"{f}\n" for f in files))
    return base.parent


def make_plantvillage(root: Path, sizes: dict[str, int]) -> Path:
    """Plant_leave_diseases_dataset_without_augmentation/<class>/image (<n>).JPG, as in the Mendeley zip."""
    base = root / "Plant_leave_diseases_dataset_without_augmentation"
    for c, (name, count) in enumerate(sizes.items()):
        (base / name).mkdir(parents=True)
        for n in range(1, count + 1):
            noise_image(c * 100 + n, (32, 32)).save(base / name / f"image ({n}).JPG", format="JPEG")
    return base


def make_galaxy10(root: Path, per_class: int = 3) -> Path:
    """Galaxy10_DECals.h5 as astroNN publishes it: 'images' (N x 256 x 256 x 3 uint8), 'ans' (uint8), and the
    per-galaxy 'ra', 'dec', 'redshift', 'pxscale'."""
    import h5py

    labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
    np.random.default_rng(0).shuffle(labels)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "Galaxy10_DECals.h5"
    with h5py.File(path, "w") as file:
        file.create_dataset("images", data=np.random.default_rng(1).integers(0, 256, (len(labels), 256, 256, 3),
                                                                               dtype=np.uint8))  # fmt: skip
        file.create_dataset("ans", data=labels)
        for key in ("ra", "dec", "redshift", "pxscale"):
            file.create_dataset(key, data=np.zeros(len(labels)))
    return path


@dataclass(frozen=True)
class Fixture:
    """A small copy of one dataset in its published layout, and what its reader must find there (counted by hand
    from the builder's arguments)."""

    build: Callable[[Path], object]  # writes the dataset under the folder it is given (--data)
    images: int
    classes: int  # the dataset's class list as its reader declares it (the published list where it has one)
    flags: tuple[str, ...] = ()  # the dataset's own flags


# Every dataset script's fixture: tests/test_dataset_battery.py runs the same checks on each, and fails for a dataset
# that has none here, so a new dataset comes with its fixture and needs no other test edit.
FIXTURES = {
    "breakhis": Fixture(lambda root: make_breakhis(root, per_patient=3), 30, 2, ("-mag", "100")),  # 10 patients
    "cifar10": Fixture(make_cifar10, 5 * 10 + 20, 10),  # five batches of 10, a test batch of 20
    "cifar100": Fixture(make_cifar100, 200 + 100, 100),
    "cub200": Fixture(lambda root: make_cub200(root, per_class=3), 200 * 3, 200),
    "digits": Fixture(lambda root: root.mkdir(parents=True), 1797, 10),  # bundled with scikit-learn
    "dtd": Fixture(lambda root: make_dtd(root, per_split=1), 47 * 3, 47),  # train1, val1, test1: one a class each
    "eurosat": Fixture(lambda root: make_eurosat(root, per_class=10), 10 * 10, 10),
    "flowers102": Fixture(lambda root: make_flowers102(root, classes=3, per_split=2), 3 * 3 * 2, 102),
    "food101": Fixture(lambda root: make_food101(root, train=2, test=1), 101 * 3, 101),
    "galaxy10": Fixture(lambda root: make_galaxy10(root, per_class=10), 10 * 10, 10),
    "imagefolder": Fixture(lambda root: make_class_folders(root, {"a": 10, "b": 6, "c": 5}), 21, 3),
    "plantclef": Fixture(
        lambda root: (
            make_class_folders(root / "train", {f"s{i:02d}": 3 for i in range(20)}),
            make_class_folders(root / "val", {f"s{i:02d}": 1 for i in range(20)}),
        ),
        20 * 3 + 20,
        20,
    ),  # fmt: skip
    "plantvillage": Fixture(lambda root: make_plantvillage(root, {"Apple___healthy": 10, "Corn___rust": 10}), 20, 2),
    "rsna": Fixture(lambda root: make_rsna(root, patients=16), 16, 2),  # one image a patient, however many boxes
    "stanfordcars": Fixture(lambda root: make_stanfordcars(root, train=2, test=1), 196 * 3, 196),
    "stanforddogs": Fixture(lambda root: make_stanforddogs(root, train=2, test=1), 120 * 3, 120),
    "tinyimagenet": Fixture(lambda root: make_tinyimagenet(root, train=2, val=1), 200 * 3, 200),  # test/ unlabelled
    "ucmerced": Fixture(lambda root: make_ucmerced(root, per_class=5), 21 * 5, 21),
}
