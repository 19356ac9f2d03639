"""Reading the folder layouts datasets ship in: class subfolders (listed once into an index), train/val/test
folders, and the markers that show where under --data a dataset lies."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS

from backbones.datasets.common.readers import FileReader
from backbones.datasets.common.spec import Catalog, DataNotFound
from backbones.errors import UserError
from backbones.files import atomic_write, cache_dir


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
