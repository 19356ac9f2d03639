"""What a dataset module declares, and the pieces every dataset shares.

A dataset module builds one `DatasetSpec`: what the data is (name, domain, classes, default resolution, split
rule, augmentation, where it comes from, its on-disk layout) and a `catalog` function that reads the published
layout into a `Catalog`: one table of samples with their labels, splits and groups, plus a picklable reader that
turns a sample id into an RGB image. Everything else (splitting, loading, training) is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import shutil
import tarfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.datasets.folder import IMG_EXTENSIONS

from backbones.errors import UserError
from backbones.files import atomic_write, cache_dir

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SPLITS = ("train", "val", "test")
TEST_STREAM, VAL_STREAM, SUBSET_STREAM = 0, 1, 2  # independent random streams: test, validation, low-data subset


class DataNotFound(Exception):
    """The dataset is not where `--data` points; the message says what exactly is missing."""


@dataclass
class Catalog:
    """Every sample of a dataset: a table with columns `sample`, `label`, `split`, `group`, and a reader.

    `sample` is the path relative to `--data`, or `<array>/<index>` for array-backed data. `split` is 'train',
    'val' or 'test' where the dataset fixes it, and '' where the split rule assigns it. `group` (e.g. a patient)
    keeps related samples on one side of every split; by default each sample is its own group.
    """

    samples: pd.DataFrame
    classes: list[str]
    read: Callable[[str], Image.Image]
    skipped: dict[str, int] = field(default_factory=dict)  # files left out as not images, by extension

    @classmethod
    def from_columns(
        cls,
        samples: Sequence[str],
        labels: Sequence[int],
        classes: list[str],
        read: Callable[[str], Image.Image],
        splits: Sequence[str] | str = "",
        groups: Sequence[str] | None = None,
        skipped: dict[str, int] | None = None,
    ) -> Catalog:
        table = pd.DataFrame({"sample": list(samples), "label": np.asarray(labels, dtype=np.int64)})
        table["split"] = splits if isinstance(splits, str) else list(splits)
        table["group"] = table["sample"] if groups is None else list(groups)
        return cls(table, classes, read, dict(skipped or {}))


@dataclass(frozen=True)
class ReadOptions:
    """What a catalog may do and which of the dataset's own options (BreakHis's `mag`, ...) were chosen."""

    download: bool = True
    own: dict = field(default_factory=dict)


Normalisation = tuple[tuple[float, float, float], tuple[float, float, float]]  # (mean, std) per channel, in [0, 1]


@dataclass(frozen=True)
class PaperRecipe:
    """How the original's script for a dataset trains and scores, reproduced by `--protocol paper`, its bugs
    included, so that numbers compare with its table. The defaults are what most of its scripts do; rows the
    original has no script for use them with the dataset's own statistics."""

    train_norm: Normalisation | None = None  # None: the dataset's own statistics; the original computed its own
    test_norm: Normalisation | None = None  # ... separately for the test images
    augment: str = "none"  # 'none', 'trivialaugment' (after the resize) or 'trivialaugment-first' (before it)
    patience: tuple[int, int] = (10, 10)  # epochs without test improvement: AdamW phase, SGD phase
    lr: float = 1e-3  # AdamW
    ties_improve: bool = False  # True: '>=' (an epoch equal to the best replaces it), False: '>'
    final_metric: str | None = None  # 'class-weighted': BreakHis's last figure, accuracy weighted by class per batch
    sgd_phase: bool = True  # False: the CIFAR scripts never reset their counter, so the SGD loop never runs
    eval_batch_multiple: int = 1  # test batch = this x -bs; the original averages top-1 over batches
    official_val: str = "train"  # what an official validation split becomes: 'train' or 'unused'

    @property
    def stale_after_improvement(self) -> int:
        """The patience counter after an improving epoch. The '>' scripts reset it to 0 and then count that epoch
        too, so they stop after patience - 1 epochs without improvement; the '>=' scripts count first, then reset."""
        return 0 if self.ties_improve else 1


@dataclass(frozen=True)
class DatasetSpec:
    """The declaration of one benchmark dataset."""

    name: str
    title: str
    domain: str
    num_classes: int | None  # None: as many as the data has (your own folder)
    image_size: tuple[int, int]  # default (height, width) for training and evaluation
    catalog: Callable[[Path, ReadOptions], Catalog]
    source: str  # where the data comes from and how to get it
    layout: str  # the expected on-disk layout under --data
    test_fraction: float | None = None  # split rule where there is no official test split
    test_fraction_option: str | None = None  # the dataset's own option that sets it instead (imagefolder's)
    test_over_whole_set: bool = False  # count the test split over all samples (Galaxy10), not class by class
    augment: str = "hflip"  # 'none', 'hflip' or 'trivialaugment' (TrivialAugmentWide + flip)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    default_data: str = "data"
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None  # the dataset's own flags ...
    own_options: tuple[str, ...] = ()  # ... and the names they are stored under
    notes: str = ""
    paper: PaperRecipe | Callable[[dict], PaperRecipe] = PaperRecipe()  # by the dataset's options (BreakHis -mag)

    def paper_recipe(self, options: dict) -> PaperRecipe:
        return self.paper(options) if callable(self.paper) else self.paper


def find_dir(data: Path, marker: str, top_folders: Sequence[str] = ()) -> Path:
    """The directory holding `marker`: `data` itself or one of the dataset's own top folders inside it."""
    for candidate in [data, *(data / top for top in top_folders)]:
        if (candidate / marker).exists():
            return candidate
    looked = ", ".join(str(c / marker) for c in [data, *(data / top for top in top_folders)])
    raise DataNotFound(f"looked for {looked}")


def required(path: Path, hint: str = "a partial extraction?") -> Path:
    """`path`, which the dataset's layout needs; its absence is reported by name."""
    if not path.exists():
        raise DataNotFound(f"{path} is missing ({hint})")
    return path


def relative(path: Path, data: Path) -> str:
    """A sample id: the file's path relative to --data, with forward slashes."""
    return path.relative_to(data).as_posix()


def prefix(folder: Path, data: Path) -> str:
    """What turns a path relative to `folder` into a sample id: '' or '<folder relative to --data>/'."""
    return "" if folder == data else relative(folder, data) + "/"


class FileReader:
    """Reads image files relative to a root; picklable so DataLoader workers can use it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def fingerprint(self, samples: Sequence[str]) -> str:
        """What changes when a source file does: its size and modification time (for the image cache's key)."""
        digest = hashlib.sha1(str(self.root.resolve()).encode())
        for sample in samples:
            try:
                info = os.stat(self.root / sample)
            except OSError as err:  # a dangling or looping symlink, or a file deleted since the listing
                raise UserError(
                    f"Cannot open {self.root / sample}: {err.strerror or err}. A broken or looping symbolic link, or "
                    "a file removed while the run started; fix or delete it, then run again."
                ) from err
            digest.update(f"{sample}:{info.st_size}:{info.st_mtime_ns};".encode())
        return digest.hexdigest()

    def __call__(self, sample: str) -> Image.Image:
        path = self.root / sample
        try:
            return open_image(path)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            raise UserError(
                f"Cannot read image {path}: {err}. The file is missing, truncated, not an image, or (a decompression "
                "bomb) far larger than any photograph; replace or delete it (and re-extract the dataset if many are "
                "affected), then run again."
            ) from err


def open_image(path: Path) -> Image.Image:
    """An image file as 8-bit RGB, turned upright as its EXIF orientation says (as a photo viewer shows it: a
    phone's portrait JPEG is stored sideways with a tag to turn it)."""
    with Image.open(path) as image:
        return to_rgb8(ImageOps.exif_transpose(image), path)


HIGH_DEPTH_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16}


def to_rgb8(image: Image.Image, path: Path | str = "image") -> Image.Image:
    """An 8-bit RGB copy of `image`. 16-bit and 32-bit greyscale (medical, remote sensing) are rescaled by their bit
    depth rather than clipped at 255 as `convert("RGB")` does; float images must lie in [0, 1]."""
    if image.mode not in (*HIGH_DEPTH_MODES, "I", "F"):
        return image.convert("RGB")
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
            raise ValueError(
                f"it is a floating-point image with values from {pixels.min():g} to {pixels.max():g}; only floats in "
                "[0, 1] have a known scale. Convert it to 8- or 16-bit integers"
            )
        scale = 1.0
    else:
        if pixels.min() < 0:
            raise ValueError("it is a signed 32-bit image with negative values, which have no 8-bit equivalent")
        scale = 2.0 ** HIGH_DEPTH_MODES.get(image.mode, 16 if pixels.max() <= 65535 else 32) - 1
    return Image.fromarray(np.round(pixels * (255.0 / scale)).astype(np.uint8)).convert("RGB")


class ArrayReader:
    """Serves images from in-memory uint8 arrays; sample ids are '<array>/<index>' (or '<index>' for one array)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def fingerprint(self, samples: Sequence[str]) -> str:
        """A hash of the arrays' pixels (for the image cache's key)."""
        digest = hashlib.sha1()
        for name in sorted(self.arrays):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(self.arrays[name]).tobytes())
        return digest.hexdigest()

    def __call__(self, sample: str) -> Image.Image:
        name, _, index = sample.rpartition("/")
        return Image.fromarray(self.arrays[name][int(index)]).convert("RGB")


def held_out_count(members: int, fraction: float, keep_one: bool = True) -> int:
    """How many of a class's `members` a `fraction` hold-out takes: scikit-learn's `train_test_split` rule,
    ceil(fraction * n), which the original's split.py applied to each class. With `keep_one`, a class keeps at
    least one member on the other side (and a class of one gives none)."""
    count = math.ceil(fraction * members)
    return min(count, members - 1) if keep_one else min(count, members)


def stratified_holdout(
    labels: Sequence[int],
    fraction: float,
    seed: int,
    stream: int,
    groups: Sequence[str] | None = None,
    whole_set: bool = False,
    keep_one: bool = True,
) -> np.ndarray:
    """Boolean mask of the samples held out: `fraction` of each class (`held_out_count`), at random (seeded).

    Each class with two or more members keeps at least one on the other side (`keep_one`), which small datasets
    need and a plain `train_test_split(stratify=...)` cannot promise. With `groups`, whole groups move together
    and each group counts under its most common label, so no group (e.g. patient) is on both sides. With
    `whole_set`, ceil(fraction * all samples) are held out, spread over the classes by scikit-learn's stratified
    `train_test_split` (the original's count for a split over the whole set, such as Galaxy10's).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, stream])
    if whole_set:
        from sklearn.model_selection import train_test_split

        if groups is not None:
            raise ValueError("a whole-set hold-out takes no groups")
        present, counts = np.unique(labels, return_counts=True)
        held = math.ceil(fraction * len(labels))
        if counts.min() < 2 or held < len(present) or len(labels) - held < len(present):
            raise UserError(
                f"A split of {len(labels)} images over the whole set holds out {held} for test, but a stratified "
                f"split needs at least one image of each of the {len(present)} classes on each side, and at least "
                f"two images per class (the smallest class has {counts.min()}). The file holds too few images: "
                "use the complete dataset file."
            )
        state = int(rng.integers(2**31 - 1))
        _, held = train_test_split(np.arange(len(labels)), test_size=fraction, stratify=labels, random_state=state)
        return np.isin(np.arange(len(labels)), held)
    if groups is None:
        unit_of = np.arange(len(labels))
        unit_labels = labels
    else:
        unit_names, unit_of = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
        pairs, counts = np.unique(np.stack([unit_of, labels], axis=1), axis=0, return_counts=True)
        order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))  # by unit; its most common label first, ties: lowest
        first_of_unit = np.r_[True, pairs[order[1:], 0] != pairs[order[:-1], 0]]
        unit_labels = pairs[order[first_of_unit], 1]
    held_units = np.zeros(len(unit_labels), dtype=bool)
    for label in np.unique(unit_labels):
        members = np.flatnonzero(unit_labels == label)
        held_units[rng.permutation(members)[: held_out_count(len(members), fraction, keep_one)]] = True
    return held_units[unit_of]


def nested_subset(
    labels: Sequence[int], classes: Sequence[str], seed: int, fraction: float = 1.0, shots: int | None = None
) -> np.ndarray:
    """Boolean mask of a stratified subset: `shots` samples of each class, or `fraction` of each (at least one).

    Each class's members are shuffled once per seed, whatever the size asked for, and the subset is a prefix of
    that order: for one seed, a smaller subset is always inside a larger one, so learning curves compare like
    with like.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng([seed, SUBSET_STREAM])
    keep = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        if shots is not None and shots > len(members):
            smallest = min(np.unique(labels, return_counts=True)[1])
            raise UserError(
                f"--shots {shots} asks for {shots} training images per class, but class '{classes[label]}' has "
                f"only {len(members)} outside the test set (the smallest class has {smallest}). Use --shots "
                f"{smallest} or fewer, or --train-fraction."
            )
        count = shots if shots is not None else max(1, int(round(len(members) * fraction)))
        keep[members[:count]] = True
    return keep


def assign_splits(
    samples: pd.DataFrame,
    test_fraction: float | None,
    val_fraction: float,
    seed: int,
    subset: Callable[[pd.DataFrame], np.ndarray] | None = None,
    test_over_whole_set: bool = False,
) -> pd.DataFrame:
    """Fill in the splits the dataset leaves open: test by the dataset's rule, then validation from training.

    With `subset` (a mask over the training samples), only those are used and the rest are marked 'unused'; an
    official validation split stays whole at every size (so learning curves stay nested), otherwise validation is
    carved from the subset (a user with ten images per class has only those). The test set is never subsampled.
    """
    samples = samples.copy()
    open_rows = samples["split"] == ""
    if open_rows.any():
        if test_fraction is None:
            raise ValueError("samples without a split in a dataset with no split rule")
        rows = samples[open_rows]
        groups = None if test_over_whole_set else rows["group"]
        held = stratified_holdout(rows["label"], test_fraction, seed, TEST_STREAM, groups, test_over_whole_set)
        samples.loc[open_rows, "split"] = np.where(held, "test", "train")
    if subset is not None:
        pool = samples["split"] == "train"
        samples.loc[pool, "split"] = np.where(subset(samples[pool]), "train", "unused")
    if val_fraction > 0 and not (samples["split"] == "val").any():
        train_rows = samples["split"] == "train"
        rows = samples[train_rows]
        held = stratified_holdout(rows["label"], val_fraction, seed, VAL_STREAM, rows["group"])
        samples.loc[train_rows, "split"] = np.where(held, "val", "train")
    return samples


def split_hashes(samples: pd.DataFrame) -> dict[str, str]:
    """A hash of each split's (sample, label) list: two runs with equal hashes trained, selected and tested on
    exactly the same images."""
    hashes = {}
    for split in SPLITS:
        rows = samples[samples["split"] == split].sort_values("sample")
        text = "\n".join(f"{sample}\t{label}" for sample, label in zip(rows["sample"], rows["label"], strict=True))
        hashes[split] = hashlib.sha1(text.encode()).hexdigest()[:16]
    return hashes


def dataset_fingerprint(name: str, options: dict, catalog: Catalog, data: Path, by_location: bool) -> str:
    """What the data is, whatever the seed: the dataset and its own options, the class names in label order and every
    sample with its label (sample ids are paths relative to --data, so one dataset on two machines agrees). For
    your own folder (`by_location`), where two different folders can share file names, its resolved path counts too."""
    digest = hashlib.sha1(json.dumps([name, sorted(options.items()), list(catalog.classes)], default=str).encode())
    if by_location:
        digest.update(str(Path(data).resolve()).encode())
    for sample, label in sorted(zip(catalog.samples["sample"], catalog.samples["label"].tolist(), strict=True)):
        digest.update(f"{sample}\t{label}\n".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Archive:
    """A file the source publishes at a stable URL: fetched with a progress bar and checked against its MD5 by
    torchvision's downloader, then extracted (unless it is the dataset file itself) by `safe_extract`."""

    url: str
    md5: str
    extract: bool = True

    def __call__(self, folder: Path) -> None:
        from torchvision.datasets.utils import download_url

        download_url(self.url, str(folder), md5=self.md5)
        if self.extract:
            archive = folder / Path(self.url).name
            safe_extract(archive, folder)
            archive.unlink()


def safe_extract(archive: Path, folder: Path) -> None:
    """Extract a .zip or tar archive into `folder`, refusing any member that would land outside it (absolute
    paths, '..', links pointing out, device files): a checksum proves which file arrived, not that it is benign."""
    target = Path(folder).resolve()
    if archive.suffix == ".zip" or zipfile.is_zipfile(archive):  # by name first: a truncated zip is no zip
        with zipfile.ZipFile(archive) as bundle:
            for name in bundle.namelist():
                destination = (target / name).resolve()
                if destination != target and target not in destination.parents:
                    raise ValueError(f"{archive.name} holds {name!r}, which would be written outside {target}")
            bundle.extractall(target)
        return
    with tarfile.open(archive) as bundle:
        try:
            bundle.extractall(target, filter="data")
        except tarfile.FilterError as err:
            raise ValueError(f"{archive.name} holds a member that is unsafe to extract: {err}") from err


@dataclass(frozen=True)
class TorchvisionDownload:
    """A dataset torchvision knows how to download (with its own URLs and checksums)."""

    dataset: str  # the class name in torchvision.datasets, e.g. 'CIFAR10'

    def __call__(self, folder: Path) -> None:
        import torchvision

        with data_filter_by_default():  # torchvision's own extraction passes no filter
            getattr(torchvision.datasets, self.dataset)(str(folder), download=True)


@contextlib.contextmanager
def data_filter_by_default():
    """Make `tarfile`'s 'data' filter the default for extractions that name none (Python's documented hook), so a
    tar member of an archive extracted by another library cannot land outside its folder either. (Zip extraction
    already drops absolute paths and '..'.)"""
    previous = tarfile.TarFile.extraction_filter
    tarfile.TarFile.extraction_filter = staticmethod(tarfile.data_filter)
    try:
        yield
    finally:
        tarfile.TarFile.extraction_filter = previous


def locate(
    data: Path,
    marker: str,
    top_folders: Sequence[str],
    options: ReadOptions,
    download: Callable[[Path], object] | None = None,
    produces: str | None = None,
) -> Path:
    """Find the dataset under `data`; if it is absent and a `download` is given (and allowed), fetch it first.

    `download(folder)` writes into a hidden staging folder inside `data`; only when it has finished (and passed
    its checksum) is what it produced (`produces`, by default the first top folder) moved into place, in one
    rename. A failed or killed download therefore never leaves a dataset that looks complete.
    """
    try:
        return find_dir(data, marker, top_folders)
    except DataNotFound:
        if download is None or not options.download:
            raise
    produced = produces or top_folders[0]
    target = data / produced
    if target.exists():
        raise DataNotFound(
            f"{target} exists but has no {marker} (a partial extraction?); delete {target} so it can be "
            f"downloaded again, or complete it by hand"
        )
    print(f"Dataset not found under {data}; downloading it there (pass --no-download to forbid this).", flush=True)
    staging = data / f".incomplete-{Path(produced).name}"
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed earlier attempt; never user data
    try:
        staging.mkdir(parents=True)
        download(staging)
        if not (staging / produced).exists():
            raise RuntimeError(f"the download did not produce {produced}")
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / produced, target)
    except Exception as err:  # network, checksum and archive errors all end the same way for the user
        raise DataNotFound(
            f"downloading it failed ({type(err).__name__}: {err}) and nothing was left behind; check the network, "
            "or fetch it on a connected machine"
        ) from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return find_dir(data, marker, top_folders)


def class_dirs(root: Path) -> list[Path]:
    """The class subfolders of `root`, sorted; hidden folders are skipped."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _walk_class_folders(root: Path) -> tuple[list[tuple[str, str]], dict[str, int], dict[str, int]]:
    """(sample, class) for every image under root/<class>/, the mtime of every folder walked, and how many files
    were left out as not images of a kind Pillow reads here, by extension."""
    rows, folder_times, skipped = [], {str(root): root.stat().st_mtime_ns}, {}
    for class_dir in class_dirs(root):
        for folder, subfolders, files in os.walk(class_dir):
            subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
            folder_times[folder] = os.stat(folder).st_mtime_ns
            prefix = Path(folder).relative_to(root).as_posix()
            for name in sorted(files):
                if name.startswith("."):
                    continue
                extension = os.path.splitext(name)[1].lower()
                if extension in IMG_EXTENSIONS:
                    rows.append((f"{prefix}/{name}", class_dir.name))
                else:
                    skipped[extension or "(none)"] = skipped.get(extension or "(none)", 0) + 1
    return rows, folder_times, skipped


def read_index(path: Path, root: Path) -> tuple[list[tuple[str, str]], dict[str, int]] | None:
    """The listing saved for `root`, if it is still valid; None for a missing, stale, damaged or foreign file.

    The index is plain JSON, checked field by field: a file planted in the cache can at worst cost a rescan, never
    run code or change what is listed (its folders' times must match the disk)."""
    try:
        saved = json.loads(path.read_text())
        folders, rows = saved["folders"], saved["rows"]
        if saved["root"] != str(root) or not isinstance(folders, dict) or not isinstance(rows, list):
            return None
        if str(root) not in folders or not all(os.stat(f).st_mtime_ns == t for f, t in folders.items()):
            return None
        if not all(isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r) for r in rows):
            return None
        skipped = saved["skipped"]
        if not all(isinstance(k, str) and isinstance(v, int) for k, v in skipped.items()):
            return None
        return [(sample, name) for sample, name in rows], skipped
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def scan_class_folders(root: Path) -> pd.DataFrame:
    """Every image under root/<class>/ (any depth), with its class name; hidden files are skipped.

    The listing is kept in an index under `cache_dir()`, valid while no folder it walked has changed (adding,
    removing or renaming a file changes its folder's mtime), so a second run on a large dataset does not walk
    tens of thousands of files again.
    """
    root = Path(root).resolve()
    index = cache_dir() / "index" / (hashlib.sha1(str(root).encode()).hexdigest()[:20] + ".json")
    found = read_index(index, root)
    if found is None:
        rows, folder_times, skipped = _walk_class_folders(root)
        # a folder changed in the last seconds may change again unseen within its mtime's resolution: no index then
        if max(folder_times.values()) < time.time_ns() - 2_000_000_000:
            with contextlib.suppress(OSError):  # an unwritable cache only costs the next run a rescan
                index.parent.mkdir(parents=True, exist_ok=True)
                saved = {"root": str(root), "folders": folder_times, "rows": rows, "skipped": skipped}
                atomic_write(index, lambda file: file.write(json.dumps(saved).encode()))
    else:
        rows, skipped = found
    table = pd.DataFrame(rows, columns=["sample", "class"])
    table.attrs["skipped"] = skipped
    return table


def require_files(data: Path, samples: Sequence[str]) -> None:
    """Check that every file a dataset's own lists name exists, listing each folder once (fast on 100k files)."""
    by_folder: dict[str, list[str]] = {}
    for sample in samples:
        folder, _, name = sample.rpartition("/")
        by_folder.setdefault(folder, []).append(name)
    for folder, names in by_folder.items():
        try:
            present = set(os.listdir(data / folder))
        except OSError:
            raise DataNotFound(f"the folder {data / folder} is missing (a partial extraction?)") from None
        missing = [name for name in names if name not in present]
        if missing:
            raise DataNotFound(
                f"{len(missing)} image(s) listed by the dataset are missing from {data / folder}, e.g. {missing[0]} "
                "(a partial extraction?)"
            )


def encode_classes(names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Sorted class names and each sample's label index: the one mapping the loaders and split.py share."""
    classes, labels = np.unique(np.asarray(names, dtype=str), return_inverse=True)
    return classes.tolist(), labels


def class_folder_catalog(data: Path, folder: Path, read: Callable[[str], Image.Image] | None = None) -> Catalog:
    """A published layout of one subfolder of images per class (UCMerced, EuroSAT, ...); split by the dataset's rule."""
    table = scan_class_folders(folder)
    if table.empty:
        raise DataNotFound(f"{folder} holds no class folders with images (a partial extraction?)")
    classes, labels = encode_classes(table["class"])
    samples = prefix(folder, data) + table["sample"]
    return Catalog.from_columns(samples, labels, classes, read or FileReader(data), skipped=table.attrs["skipped"])


def scan_nonempty(folder: Path) -> pd.DataFrame:
    """`scan_class_folders`, refusing class folders without images (a user's folder must not silently lose a class)."""
    table = scan_class_folders(folder)
    empty = [d.name for d in class_dirs(folder) if d.name not in set(table["class"])]
    if empty:
        raise UserError(
            f"These class folders under {folder} hold no images: {', '.join(empty)}. Add images (with an image "
            f"extension such as .jpg or .png) or remove the folders."
        )
    return table


def split_folders_catalog(data: Path, root: Path, folders: dict[str, str]) -> Catalog:
    """Images already split into folders of class folders, e.g. {'train': 'train', 'val': 'test'} maps
    root/train/<class>/ to the train split and root/val/<class>/ to the test split. Every folder must hold the
    same classes."""
    tables = {folder: scan_nonempty(root / folder) for folder in folders}
    first = next(iter(folders))
    reference = set(tables[first]["class"])
    for folder, table in tables.items():
        if set(table["class"]) != reference:
            only_first = sorted(reference - set(table["class"]))
            only_here = sorted(set(table["class"]) - reference)
            raise UserError(
                f"The class folders of {root / folder} differ from those of {root / first}: missing there "
                f"{only_first or 'none'}, extra there {only_here or 'none'}. Every split needs the same class "
                f"folders; rename or add them."
            )
    table = pd.concat(
        [tables[folder].assign(split=split, folder=folder) for folder, split in folders.items()], ignore_index=True
    )
    classes, labels = encode_classes(table["class"])
    if len(classes) < 2:
        raise DataNotFound(f"found {len(classes)} class folder(s) with images under {root}; need at least 2")
    samples = table["folder"].map(lambda folder: prefix(root / folder, data)) + table["sample"]
    skipped: dict[str, int] = {}
    for found in tables.values():
        for extension, count in found.attrs["skipped"].items():
            skipped[extension] = skipped.get(extension, 0) + count
    return Catalog.from_columns(samples, labels, classes, FileReader(data), table["split"].tolist(), skipped=skipped)
