"""From a dataset on disk to the batches a run trains and evaluates on: its splits, their identity, the cache.

Everything here reads a `DataConfig`, the typed record of which images a run uses and how they are fed, built
once from the command line by `options.data_config`.
"""

from __future__ import annotations

import os
import posixpath
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from backbones.datasets.common.readers import FileReader
from backbones.datasets.common.spec import (
    SPLITS,
    Catalog,
    DataNotFound,
    DatasetSpec,
    Normalisation,
    PaperRecipe,
    ReadOptions,
)
from backbones.datasets.common.splits import assign_splits, dataset_fingerprint, nested_subset, split_hashes
from backbones.errors import UserError
from backbones.pipeline import DeviceBatches, SplitImages, cached_images
from backbones.record import SPLIT_FLAGS
from backbones.runtime import Precision, world

IDENTITY_KEYS = ("dataset", "dataset_options", "dataset_fingerprint", "classes", "split_hashes")


@dataclass(frozen=True)
class DataConfig:
    """Which images a run reads and how they reach the model."""

    data: Path
    seed: int
    image_size: tuple[int, int]
    batch_size: int
    paper: PaperRecipe | None = None  # the original's recipe for the dataset, under --protocol paper
    own: dict = field(default_factory=dict)  # the dataset's own options (BreakHis's mag, ...)
    download: bool = True
    cache: str = "auto"
    workers: int = 0
    val_fraction: float = 0.1
    train_fraction: float = 1.0
    shots: int | None = None

    @property
    def read_options(self) -> ReadOptions:
        return ReadOptions(self.download, self.own)


def load_splits(spec: DatasetSpec, config: DataConfig, warn=None) -> tuple[Catalog, pd.DataFrame]:
    """Read the dataset and give every sample its split; a missing or mis-laid-out dataset is a `UserError`.
    What the user should know about the data goes to `warn` (default: standard error)."""
    warn = warn or warn_on_stderr
    if config.data.exists() and not config.data.is_dir():
        raise UserError(f"--data {config.data} is a file; it must be the folder the dataset was extracted into.")
    try:
        catalog = spec.catalog(config.data, config.read_options)
    except DataNotFound as err:
        raise UserError(
            f"{spec.title} was not found under --data {config.data}: {err}. Expected layout: {spec.layout}. "
            f"Get it from {spec.source}, or point --data at the folder it was extracted into."
        ) from err
    if catalog.skipped:
        counts = ", ".join(f"{n} {ext}" for ext, n in sorted(catalog.skipped.items(), key=lambda item: -item[1]))
        warn(
            f"{sum(catalog.skipped.values())} file(s) under {config.data} are not images this tool reads and were "
            f"left out ({counts}); convert them (to JPEG or PNG, say) to train on them."
        )
    samples = catalog.samples
    if config.paper is not None:  # the original split image by image, and trained on train (+ official val)
        if (samples["group"] != samples["sample"]).any():
            warn(
                f"--protocol paper splits {spec.title} image by image, as the original did, so images of one "
                "patient (or other group) can be on both sides of the split: the test score is inflated by that "
                "leak. The default protocol keeps each group on one side."
            )
        official_val = config.paper.official_val
        samples = samples.assign(split=samples["split"].replace("val", official_val), group=samples["sample"])
    val_fraction = 0.0 if config.paper is not None else config.val_fraction  # paper selects on the test set
    test_fraction = config.own.get(spec.test_fraction_option, spec.test_fraction)
    subset = None
    if config.train_fraction < 1 or config.shots is not None:
        subset = lambda pool: nested_subset(  # noqa: E731
            pool["label"], catalog.classes, config.seed, config.train_fraction, config.shots
        )
    samples = assign_splits(samples, test_fraction, val_fraction, config.seed, subset, spec.test_over_whole_set)
    warn_about_classes(spec, config, catalog, samples, warn)
    return catalog, samples


def warn_on_stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def warn_about_classes(spec: DatasetSpec, config: DataConfig, catalog: Catalog, samples: pd.DataFrame, warn) -> None:
    tested, present = set(samples.loc[samples["split"] == "test", "label"]), set(samples["label"])
    untested = [name for label, name in enumerate(catalog.classes) if label in present - tested]
    if untested:
        warn(
            f"{len(untested)} class(es) have no test image ({', '.join(untested[:5])}"
            f"{', ...' if len(untested) > 5 else ''}): too few images to hold one out. Their per-class accuracy is "
            "reported as missing and they are left out of macro-F1; add images to test them."
        )
    if spec.num_classes is not None and len(catalog.classes) != spec.num_classes:
        warn(
            f"{spec.title} has {spec.num_classes} classes but {config.data} holds {len(catalog.classes)}; "
            "training on the classes found. Check that --data points at the complete dataset."
        )


def split_identity(spec: DatasetSpec, config: DataConfig, catalog: Catalog, samples: pd.DataFrame) -> dict:
    """What decides which images a run trains, selects and is tested on; kept in its checkpoints and metrics."""
    custom = spec.domain == "custom"
    return {
        "dataset": spec.name,
        "dataset_options": config.own,
        "dataset_fingerprint": dataset_fingerprint(spec.name, config.own, catalog, config.data, custom),
        "classes": list(catalog.classes),
        "split_hashes": split_hashes(samples),
    }


def identity_differences(saved: dict, now: dict, saved_config: dict, config: dict) -> list[str]:
    """How the split a checkpoint was made on differs from the one this command would draw (empty: identical)."""
    differences = []
    if saved.get("dataset") != now["dataset"] or saved.get("dataset_options", {}) != now["dataset_options"]:
        differences.append(
            f"dataset {saved.get('dataset')} {saved.get('dataset_options', {})} there, "
            f"{now['dataset']} {now['dataset_options']} now"
        )
    if saved.get("classes") != now["classes"]:
        there, here = saved.get("classes") or [], now["classes"]
        if sorted(there) == sorted(here):
            first = next(i for i, (a, b) in enumerate(zip(there, here, strict=True)) if a != b)
            detail = f"the same names in another order (label {first} is {there[first]} there, {here[first]} now)"
        else:
            detail = f"{len(there)} classes there ({', '.join(map(str, there[:4]))}...), {len(here)} now " + (
                f"({', '.join(here[:4])}...)"
            )
        differences.append(f"class names differ: {detail}")
    changed = [s for s in SPLITS if saved.get("split_hashes", {}).get(s) != now["split_hashes"][s]]
    if changed:
        flags = [
            f"--{key.replace('_', '-')} {saved_config.get(key)} there, {config.get(key)} now"
            for key in sorted(SPLIT_FLAGS)
            if key in config and saved_config.get(key) != config.get(key)
        ]
        differences.append(
            f"the {'/'.join(changed)} split(s) hold other images"
            + (f" ({'; '.join(flags)})" if flags else " (same flags: the data under --data changed)")
        )
    return differences


def check_out_folder(out: Path | None, data: Path, catalog: Catalog) -> None:
    """A run folder inside the folder a dataset's images are listed from would be read as a class (or as images)
    by the next run on that data."""
    if not isinstance(catalog.read, FileReader):
        return
    root = (data / os.path.commonpath([posixpath.dirname(s) for s in catalog.samples["sample"]] or [""])).resolve()
    target = (out or Path("runs")).resolve()
    if target == root or root in target.parents:
        raise UserError(
            f"--out {out or 'runs/ (the default)'} lies inside {root}, the folder this dataset's images are read "
            "from: the next run on that data would read the run folder as part of the dataset. Write runs "
            "elsewhere, e.g. --out runs/<name>."
        )


def cached_splits(config: DataConfig, training: bool) -> tuple[str, ...]:
    """The splits worth decoding once into the cache: an evaluation reads no training images, and training images
    augmented before their resize (the original's CIFAR, Food-101, DTD) are decoded afresh each epoch."""
    if not training or (config.paper is not None and config.paper.augment == "trivialaugment-first"):
        return ("val", "test")
    return SPLITS


def image_cache(
    spec: DatasetSpec, config: DataConfig, catalog: Catalog, samples: pd.DataFrame, log, splits=SPLITS
) -> tuple:
    """(cache file, row of each sample) for the samples of `splits` (`cached_images`), or (None, None)."""
    label = spec.name + "".join(f"-{k}{v}" for k, v in sorted(config.own.items()))
    used = samples.loc[samples["split"].isin(splits), "sample"]
    return cached_images(label, catalog.read, used, config.image_size, config.cache, config.workers, log)


def split_batches(
    spec: DatasetSpec,
    config: DataConfig,
    catalog: Catalog,
    samples: pd.DataFrame,
    split: str,
    precision: Precision,
    train: bool,
    cache: tuple,
) -> DeviceBatches:
    """Device-ready batches of one split: decoded (or read from `cache`), augmented when `train`, normalised."""
    rows = samples[samples["split"] == split]
    paper = config.paper
    first = train and paper is not None and paper.augment == "trivialaugment-first"
    images = SplitImages(
        rows["sample"], rows["label"], catalog.read, config.image_size, *((None, None) if first else cache),
        augment_first_seed=config.seed if first else None,
    )  # fmt: skip
    norm = training_normalisation(spec, paper) if train else evaluation_normalisation(spec, paper)
    if paper is None:
        flip, trivial = spec.augment != "none", spec.augment == "trivialaugment"
        batch_size = config.batch_size
    else:  # no flips; TrivialAugmentWide where the original has it; its train and test statistics
        flip, trivial = False, paper.augment == "trivialaugment"
        batch_size = config.batch_size if train else config.batch_size * paper.eval_batch_multiple
    loader = make_loader(images, config, precision.device, train, batch_size)
    return DeviceBatches(loader, norm, precision, config.seed, flip and train, trivial and train)


def training_normalisation(spec: DatasetSpec, paper: PaperRecipe | None) -> Normalisation:
    """(mean, std) of the training images: the dataset's, or under `--protocol paper` the original's train ones."""
    return (paper.train_norm if paper is not None else None) or (spec.mean, spec.std)


def evaluation_normalisation(spec: DatasetSpec, paper: PaperRecipe | None) -> Normalisation:
    """(mean, std) of evaluated images: the dataset's, or under `--protocol paper` the original's test ones."""
    return (paper.test_norm if paper is not None else None) or (spec.mean, spec.std)


def drops_last_batch(images: int, batch_size: int, paper: bool) -> bool:
    """Whether training drops its last, incomplete batch. The default protocol does: a handful of images gives
    BatchNorm noisy batch statistics, and the images left out differ every epoch (the order is drawn anew), so none
    is left out for good. The original keeps it, and so does `--protocol paper`, but for a last batch of a single
    image, which BatchNorm cannot train on (the original would stop with an error there)."""
    if images <= batch_size:
        return False
    return images % batch_size == 1 if paper else images % batch_size != 0


def make_loader(dataset: Dataset, config: DataConfig, device: torch.device, train: bool, batch_size: int) -> DataLoader:
    """Training order is a permutation drawn from (seed, epoch) alone (`DeviceBatches.set_epoch`), so it does not
    depend on workers or on how many times a loader was iterated, and a resumed run needs no loader state; under
    torchrun each process takes its share of it. Evaluation sees a strided shard, so every evaluated sample is on
    exactly one process (no padding duplicates). The loader's own generator keeps worker seeding off the run's
    random stream."""
    rank, size = world()
    sampler = None
    if train:
        sampler = DistributedSampler(
            dataset, num_replicas=size, rank=rank, shuffle=True, seed=config.seed, drop_last=True
        )
    elif size > 1:
        dataset = Subset(dataset, range(rank, len(dataset), size))
    augments_first = isinstance(dataset, SplitImages) and dataset.augment_first is not None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train and drops_last_batch(len(sampler), batch_size, config.paper is not None),
        num_workers=config.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=config.workers > 0 and not augments_first,  # fresh workers see the new epoch
        generator=torch.Generator().manual_seed(config.seed),
    )
