"""What a dataset module declares: a `DatasetSpec` (what the data is, its split rule, where it comes from, its
on-disk layout, the original's recipe for it) and the `Catalog` its `catalog` function reads from disk: one table of
samples with their labels, splits and groups, plus a picklable reader that turns a sample id into an RGB image."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


SPLITS = ("train", "val", "test")


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
