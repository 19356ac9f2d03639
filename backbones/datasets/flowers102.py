"""Oxford Flowers-102: 102 flower species; official train (1,020) + val (1,020) for training, test 6,149."""

from __future__ import annotations

from pathlib import Path

from backbones.datasets.common.download import TorchvisionDownload, locate
from backbones.datasets.common.folders import relative
from backbones.datasets.common.readers import FileReader
from backbones.datasets.common.spec import Catalog, DataNotFound, DatasetSpec, PaperRecipe, ReadOptions

TOP = "flowers-102"


def catalog(data: Path, options: ReadOptions) -> Catalog:
    import torchvision
    from scipy.io import loadmat

    base = locate(data, "imagelabels.mat", [TOP], options, TorchvisionDownload("Flowers102"))
    if not (base / "setid.mat").is_file() or not (base / "jpg").is_dir():
        raise DataNotFound(f"{base} has imagelabels.mat but lacks setid.mat or jpg/ (a partial extraction?)")
    labels = loadmat(base / "imagelabels.mat", squeeze_me=True)["labels"]  # 1-based, one per image id
    set_ids = loadmat(base / "setid.mat", squeeze_me=True)
    samples, sample_labels, splits = [], [], []
    for key, split in (("trnid", "train"), ("valid", "val"), ("tstid", "test")):
        for image_id in set_ids[key]:
            samples.append(relative(base / "jpg" / f"image_{int(image_id):05d}.jpg", data))
            sample_labels.append(int(labels[int(image_id) - 1]) - 1)
            splits.append(split)
    classes = list(torchvision.datasets.Flowers102.classes)
    return Catalog.from_columns(samples, sample_labels, classes, FileReader(data), splits)


SPEC = DatasetSpec(
    name="flowers102",
    title="Oxford Flowers-102",
    domain="natural",
    num_classes=102,
    image_size=(256, 256),
    catalog=catalog,
    source="https://www.robots.ox.ac.uk/~vgg/data/flowers/102/ (downloaded automatically by torchvision)",
    layout=f"--data/{TOP}/{{jpg/image_00001.jpg..., imagelabels.mat, setid.mat}}",
    augment="trivialaugment",
    mean=(0.435, 0.378, 0.288),
    std=(0.297, 0.246, 0.270),
    notes="the official validation split (1,020) is the validation set; train + val = 2,040",
    paper=PaperRecipe(
        train_norm=((0.4326, 0.3817, 0.2961), (0.2928, 0.2445, 0.2716)),
        test_norm=((0.4367, 0.3762, 0.2849), (0.2958, 0.2430, 0.2661)),
        augment="trivialaugment",
        patience=(20, 20),
        ties_improve=True,
        official_val="unused",
    ),
)
