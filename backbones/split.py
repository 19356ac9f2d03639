"""Split a folder of class subfolders into train/test (and optionally val), stratified per class and seeded.

    python split.py --input_dir A --output_dir B --test_size 0.2

Counts like the original's split.py: scikit-learn's rule, ceil(test_size * n) of each class, and with --val_size
ceil((test + val) * n) held out, then the test share of those. Seeded on the sorted listing, so the same seed
gives the same split on every machine; with --val_size 0 it is the split the training loop makes on the fly.
The input is never modified; the output is built in a temporary folder and renamed into place, so an
interrupted split never leaves a half-written output behind.
"""

from __future__ import annotations

import argparse
import csv
import errno
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from torchvision.datasets.folder import IMG_EXTENSIONS

from backbones.datasets.common.folders import class_dirs, encode_classes, scan_class_folders
from backbones.datasets.common.splits import TEST_STREAM, VAL_STREAM, stratified_holdout
from backbones.errors import UserError, run_cli
from backbones.flags import frozen


def plan_split(input_dir: Path, test_size: float, val_size: float, seed: int) -> pd.DataFrame:
    """The table of what goes where: columns sample, class, label, split."""
    if not input_dir.is_dir():
        raise UserError(
            f"--input_dir {input_dir} is not a folder. Point it at a folder with one subfolder of "
            "images per class, e.g. A/cat/*.jpg and A/dog/*.jpg."
        )
    if not 0 < test_size < 1 or not 0 <= val_size < 1 or test_size + val_size >= 1:
        raise UserError(
            f"--test_size {test_size} and --val_size {val_size} are impossible: each is a fraction of "
            "all images, test in (0, 1), val in [0, 1), and together below 1 so some remain for "
            "training. For example --test_size 0.2 --val_size 0.1."
        )
    table = scan_class_folders(input_dir)
    if table.empty:
        raise UserError(
            f"--input_dir {input_dir} holds no images in class subfolders. Expected {input_dir}/<class>/"
            f"<image> with one of the extensions {', '.join(IMG_EXTENSIONS)}."
        )
    sizes = table["class"].value_counts().reindex([d.name for d in class_dirs(input_dir)], fill_value=0)
    if (sizes < 2).any():
        small = ", ".join(f"'{c}' ({n})" for c, n in sizes[sizes < 2].items())
        raise UserError(
            f"Each class needs at least 2 images to appear in both train and test; these have fewer: "
            f"{small}. Add images or remove those class folders."
        )
    table["label"] = encode_classes(table["class"])[1]
    # The original's count: per class, ceil((test + val) * n) are held out, then ceil(test / (test + val) * held)
    # of those are test and the rest val. With --val_size 0 this is the split the training loop makes on the fly.
    held = stratified_holdout(table["label"], test_size + val_size, seed, TEST_STREAM)
    table["split"] = np.where(held, "test", "train")
    if val_size > 0:
        share = test_size / (test_size + val_size)
        test = stratified_holdout(table.loc[held, "label"], share, seed, VAL_STREAM, keep_one=False)
        table.loc[held, "split"] = np.where(test, "test", "val")
    return table


def check_links(plan: pd.DataFrame, input_dir: Path) -> None:
    """Refuse images that are symbolic links to files outside --input_dir: a shared folder could otherwise have
    split.py copy any file the user can read (a key, a document) into the output they then share."""
    outside = [s for s in plan["sample"] if input_dir not in (input_dir / s).resolve().parents]
    if outside:
        raise UserError(
            f"{len(outside)} image(s) under --input_dir are symbolic links to files outside it (e.g. "
            f"{input_dir / outside[0]} -> {(input_dir / outside[0]).resolve()}); split.py does not follow links out "
            "of the folder it splits. Copy those images into the folder, or remove the links."
        )


def materialise(plan: pd.DataFrame, input_dir: Path, output_dir: Path, mode: str) -> None:
    """Write the split into a temporary sibling of output_dir, then move it into place; the partial copy of a
    split.py killed before that is removed first."""
    try:
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        for leftover in output_dir.parent.glob(f".{output_dir.name}.partial-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.partial-", dir=output_dir.parent))
    except OSError as err:
        raise UserError(
            f"--output_dir {output_dir} cannot be created in {output_dir.parent} ({err.strerror or err}). Choose a "
            "folder in a writable place."
        ) from err
    try:
        for row in plan.itertuples():
            source = (input_dir / row.sample).resolve()
            target = staging / row.split / row.sample
            target.parent.mkdir(parents=True, exist_ok=True)
            if mode == "hardlink":
                try:
                    os.link(source, target)
                    continue
                except OSError as err:
                    if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    print(
                        f"note: cannot hard-link {source} into {output_dir.parent} ({err.strerror}: another "
                        "filesystem, or one without hard links); copying the rest instead",
                        flush=True,
                    )
                    mode = "copy"
            if mode == "copy":
                shutil.copy2(source, target)
            else:
                os.symlink(source, target)
        plan.assign(destination=plan["split"] + "/" + plan["sample"])[
            ["sample", "class", "split", "destination"]
        ].to_csv(staging / "manifest.csv", index=False, quoting=csv.QUOTE_NONNUMERIC)
        if output_dir.exists():
            output_dir.rmdir()  # known to be empty
        staging.rename(output_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


@dataclass(frozen=True)
class SplitConfig:
    input_dir: Path
    output_dir: Path
    test_size: float
    val_size: float
    seed: int
    mode: str


def parse_args(argv: list[str] | None = None) -> SplitConfig:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--input_dir", "--input-dir", dest="input_dir", type=Path, required=True,
        help="folder with one subfolder of images per class",
    )  # fmt: skip
    parser.add_argument(
        "--output_dir",
        "--output-dir",
        dest="output_dir",
        type=Path,
        required=True,
        help="new or empty folder to write train/, test/ (and val/) and manifest.csv into",
    )
    parser.add_argument(
        "--test_size", "--test-size", dest="test_size", type=float, default=0.2,
        help="fraction of each class for test (default: 0.2)",
    )  # fmt: skip
    parser.add_argument(
        "--val_size",
        "--val-size",
        dest="val_size",
        type=float,
        default=0.0,
        help="fraction of each class for val/ (default: 0, "
        "no val/ folder; training then carves its own validation split)",
    )
    parser.add_argument(
        "--seed",
        "--random_state",
        "--random-state",
        dest="seed",
        type=int,
        default=0,
        help="random seed; the same seed gives the same split on every machine (--random_state: the original's "
        "name for it; the original shuffled the unsorted folder listing, so its exact files cannot be reproduced) "
        "(default: 0)",
    )
    parser.add_argument(
        "--mode",
        choices=("copy", "symlink", "hardlink"),
        default="copy",
        help="how files reach the output: copies, symbolic links or hard links (default: copy)",
    )
    return frozen(SplitConfig, parser.parse_args(argv))


def main(argv: list[str] | None = None) -> pd.DataFrame:
    config = parse_args(argv)
    input_dir, output_dir = config.input_dir.resolve(), config.output_dir.resolve()
    if output_dir.exists() and (not output_dir.is_dir() or any(output_dir.iterdir())):
        raise UserError(
            f"--output_dir {config.output_dir} already exists and is not empty; split.py never "
            "overwrites. Choose a new folder or empty this one."
        )
    if output_dir == input_dir or input_dir in output_dir.parents:
        raise UserError(
            f"--output_dir {config.output_dir} is inside --input_dir {config.input_dir}; the input must stay "
            "untouched, and would then be re-scanned as a class. Choose a folder outside it."
        )
    plan = plan_split(input_dir, config.test_size, config.val_size, config.seed)
    check_links(plan, input_dir)
    materialise(plan, input_dir, output_dir, config.mode)

    counts = plan.groupby(["class", "split"]).size().unstack(fill_value=0)
    counts = counts.reindex(columns=[s for s in ("train", "val", "test") if s in counts.columns])
    counts.loc["total"] = counts.sum()
    print(counts.to_string())
    out = config.output_dir
    print(f"Wrote {len(plan)} images ({config.mode}) to {out}; manifest: {out}/manifest.csv")
    return plan


if __name__ == "__main__":
    run_cli(main)
