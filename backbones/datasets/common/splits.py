"""Splitting a catalog: stratified, grouped and seeded hold-outs for test and validation, nested low-data
subsets, and the hashes that say which data and which split a run used."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from backbones.datasets.common.spec import SPLITS, Catalog
from backbones.errors import UserError

TEST_STREAM, VAL_STREAM, SUBSET_STREAM = 0, 1, 2  # independent random streams: test, validation, low-data subset


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
