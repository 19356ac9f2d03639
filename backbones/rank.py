"""Rank backbones for a dataset from their frozen features, before fine-tuning any of them.

Usage: python rank.py --dataset eurosat [-models all] [--runs runs/]

Each backbone's penultimate features of the training and validation splits are extracted once (no augmentation)
and cached; LogME and LEEP score the training split, kNN and a linear probe are fitted on it and scored on the
validation split. The test split is never read. With --runs, the ranking is checked against fine-tuned runs. With
--probe-images N the training split's part is a class-stratified sample of N images: cheaper, and noisier.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from backbones import datasets, models
from backbones.datasets.common.spec import DatasetSpec
from backbones.errors import HelpFormatter, UserError, run_cli
from backbones.files import atomic_write, cache_dir
from backbones.flags import add_batch_size, add_device, add_models, add_out, add_runs, add_workers, frozen, positive_int
from backbones.loading import DataConfig, image_cache, load_splits, split_batches, split_identity
from backbones.options import (
    add_data_arguments,
    data_config,
    image_size,
    parse_dataset_args,
)
from backbones.record import RANKING_SCORES
from backbones.runtable import (
    check_new_file,
    dataset_label,
    describe,
    find_runs,
    markdown_table,
    number,
    runs_table,
    write_csv,
)
from backbones.runtime import make_precision, resolve_device, seed_everything
from backbones.train_common import predict
from backbones.transferability import agreement, knn_accuracy, leep, linear_probe_accuracy, logme

# (column, heading, decimals): higher is better for every score
SCORES = tuple((column, name + unit, decimals) for column, name, unit, decimals in RANKING_SCORES)  # as shown


def build_parser(spec: DatasetSpec | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Rank backbones for a dataset from frozen features (LogME, kNN, linear probe, LEEP) before "
        "fine-tuning any of them; with --runs, check the ranking against fine-tuned runs (Kendall's tau, regret).",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("--dataset", required=True, choices=datasets.NAMES, help="the dataset, by its script's name")
    add_models(parser, ["all"], "backbones to rank")
    add("--weights", default="imagenet", help="'imagenet', 'none' (random init, a baseline) or a checkpoint FILE")
    default_size = "x".join(map(str, spec.image_size)) if spec else "the dataset's"
    add("--image-size", type=image_size, default=default_size, help="feature-extraction size, S or HxW")
    add_data_arguments(parser, spec.default_data if spec else "data")
    add("--seed", type=int, default=0, help="seeds the splits (as in training), random init, the probe and its sample")
    add(
        "--probe-images",
        type=positive_int,
        default=None,
        metavar="N",
        help="score from a class-stratified sample of N training images, not all of them: extraction and scoring "
        "cost about N/n of a full ranking, and the scores are noisier (default: every training image)",
    )
    add_batch_size(parser, 64, "batch size for feature extraction")
    add_workers(parser)
    add_device(parser)
    add_runs(parser, "folders of fine-tuned runs to check the ranking against", default=None)
    add_out(parser, None, "CSV to write (default: results/rank-<dataset>-<time>.csv)")
    if spec and spec.add_arguments:
        spec.add_arguments(parser)
    return parser


@dataclass(frozen=True)
class RankConfig:
    """A ranking as its flags define it: which backbones, with which weights, on which images."""

    spec: DatasetSpec
    models: tuple[str, ...]  # registry names, aliases and 'all' resolved
    weights: str  # 'imagenet', 'none' or a checkpoint file
    data: DataConfig  # the training and validation images, carved as a default-protocol run carves them
    device: str
    probe_images: int | None = None  # score from a sample of this many training images (None: all)
    runs: tuple[Path, ...] = ()  # fine-tuned runs to check the ranking against
    out: Path | None = None


def parse_args(argv: list[str] | None, known_only: bool = False) -> RankConfig:
    """The ranking's flags; with `known_only`, those of `argv` this parser knows, the rest ignored (`choose.py`
    passes a fine-tuning command line)."""
    spec, parsed = parse_dataset_args(build_parser, argv, known_only)
    names = tuple(models.resolve_names(parsed.models))
    for name in names:
        models.check_input_size(name, parsed.image_size)
    return frozen(RankConfig, parsed, spec=spec, models=names, data=data_config(spec, parsed), runs=parsed.runs or ())


# ----------------------------------------------------------------------------------------------- features
def read_features(path: Path, count: int) -> tuple | None:
    """(features, probabilities or None, labels) from a cache file, or None where it is absent or damaged (a
    truncated file, another shape): such a file is extracted again, never trusted."""
    try:
        with np.load(path) as saved:
            found = (saved["features"], saved.get("probabilities"), saved["labels"])
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    features, probabilities, labels = found
    if features.ndim != 2 or len(features) != count or labels.shape != (count,) or not np.isfinite(features).all():
        return None
    return found


def fingerprint(*modules: torch.nn.Module | None) -> str:
    """A hash of every weight: the cache follows the weights themselves, not a file name or a date."""
    digest = hashlib.sha1()
    for module in modules:
        for name, tensor in [] if module is None else module.state_dict().items():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def extract(name: str, config: RankConfig, catalog, samples: pd.DataFrame, images, log) -> tuple[dict, bool]:
    """{split: (features, source-class probabilities or None, labels)} for train and val, from the cache when
    the same weights already saw the same images at the same size. `images()` gives the decoded-image cache."""
    spec, data = config.spec, config.data
    seed_everything(data.seed)  # random-init weights are reproducible
    model, classifier = models.create_feature_extractor(name, models.Weights.parse(config.weights))
    weights = fingerprint(model, classifier)
    device = resolve_device(config.device)
    precision = make_precision(device)
    model.to(device)
    outputs, reused = {}, True
    for split in ("train", "val"):
        rows = samples[samples["split"] == split]
        key = hashlib.sha1(
            json.dumps(
                [
                    spec.name,
                    dataset_label(spec.name, data.own, spec.domain, data.data),
                    split,
                    name,
                    weights,
                    data.image_size,
                ]
                + rows["sample"].tolist()
                + rows["label"].tolist()
            ).encode()
        ).hexdigest()[:20]
        path = cache_dir() / "features" / f"{spec.name}-{split}-{name.replace(':', '_')}-{key}.npz"
        cached = read_features(path, len(rows))
        if cached is not None:
            outputs[split] = cached
            log(f"  {name} {split}: {len(rows)} images, features reused from the cache ({path})")
            continue
        if path.exists():
            log(f"  {name} {split}: the cached features in {path} are damaged (truncated?); extracting them again")
        reused = False
        batches = split_batches(spec, data, catalog, samples, split, precision, False, images())
        features, labels = predict(model, batches, precision, f"{name} {split}")
        saved = {"features": features.numpy(), "labels": labels.numpy()}
        if classifier is not None:
            with torch.inference_mode():
                saved["probabilities"] = torch.softmax(classifier.float().cpu()(features), dim=1).numpy()
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, functools.partial(np.savez, **saved))  # a killed extraction leaves no complete-looking file
        outputs[split] = (saved["features"], saved.get("probabilities"), saved["labels"])
    return outputs, reused


def probe_sample(samples: pd.DataFrame, images: int | None, seed: int) -> pd.DataFrame:
    """`samples` with its training split cut to a class-stratified sample of `images` (all where None or more than
    there are), drawn by `seed`; the validation and test splits untouched."""
    train = samples[samples["split"] == "train"]
    if images is None or images >= len(train):
        return samples
    try:
        kept, _ = train_test_split(train.index, train_size=images, stratify=train["label"], random_state=seed)
    except ValueError as err:  # fewer images than classes, or a class of one image
        raise UserError(
            f"--probe-images {images} cannot sample the {len(train)} training images class by class ({err}). Give "
            "at least one image per class, or leave --probe-images out to score from every training image."
        ) from err
    return samples.drop(train.index.difference(kept))


def score(outputs: dict, seed: int) -> dict:
    (train, train_probabilities, train_labels), (val, _, val_labels) = outputs["train"], outputs["val"]
    return {
        "logme": logme(train, train_labels),
        "knn": knn_accuracy(train, train_labels, val, val_labels),
        "linear": linear_probe_accuracy(train, train_labels, val, val_labels, seed),
        "leep": math.nan if train_probabilities is None else leep(train_probabilities, train_labels),
    }


# ----------------------------------------------------------------------------------------------- checking
def measured_top1(config: RankConfig, fingerprint: str, log) -> tuple[pd.Series, pd.Series, str]:
    """(mean test top-1 per backbone, mean fine-tuning seconds per backbone, the setting) from the runs under --runs
    that answer the question this ranking predicts: the same data, weights, resolution and training subset, full
    fine-tuning under the default protocol, and one training configuration (the one most backbones were run with)."""
    runs, skipped = find_runs(list(config.runs))
    for path, reason in skipped:
        log(f"  skipped {path}: {reason}")
    empty = pd.Series(dtype=float), pd.Series(dtype=float), ""
    if not runs:
        return empty
    table, _ = runs_table(runs)

    def same_setting(key: str) -> bool:
        setting = json.loads(key)
        return (
            setting["protocol"] == "val"
            and setting["weights"] == config.weights
            and math.isclose(setting.get("train_fraction", 1.0), config.data.train_fraction)
            and setting.get("shots") == config.data.shots
            and setting.get("finetune", "full") == "full"
        )

    same_size = table["image_size"].map(lambda size: size == tuple(config.data.image_size))
    table = table[(table["dataset_fingerprint"] == fingerprint) & same_size & table["setting"].map(same_setting)]
    if table.empty:
        return empty
    coverage = table.groupby("configuration").agg(backbones=("model", "nunique"), runs=("model", "size"))
    chosen = coverage.sort_values(["backbones", "runs"], ascending=False).index[0]
    others = table[table["configuration"] != chosen]
    if not others.empty:
        log(
            f"  {len(others)} matching run(s) with another training configuration are left out, e.g. "
            + others["folder"].iloc[0]
        )
    grouped = table[table["configuration"] == chosen].groupby("model")
    return (
        grouped["top1"].mean(),
        grouped["train_seconds"].mean(),
        describe(json.loads(table["setting"].iloc[0])),
    )


def out_path(config: RankConfig) -> Path:
    if config.out is None:
        return Path("results") / f"rank-{config.spec.name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.csv"
    check_new_file(config.out)
    return config.out


def main(argv: list[str] | None = None) -> pd.DataFrame:
    config = parse_args(argv)
    return rank(config, out_path(config))


def rank(config: RankConfig, out: Path, log=print) -> pd.DataFrame:
    """Rank `config.models` on the training and validation splits, print the table and write it to `out`."""
    spec, data = config.spec, config.data
    catalog, samples = load_splits(spec, data)
    fingerprint = split_identity(spec, data, catalog, samples)["dataset_fingerprint"]  # of the whole split
    counts = samples["split"].value_counts()
    if counts.get("train", 0) < 2 or counts.get("val", 0) < 1:
        raise UserError(
            f"{spec.title} under {data.data} gives {counts.get('train', 0)} training and {counts.get('val', 0)} "
            "validation images; ranking needs both. Add data or raise --val-fraction."
        )
    samples = probe_sample(samples, config.probe_images, data.seed)
    probed = int((samples["split"] == "train").sum())
    sampled = probed < counts["train"]
    sample = f"; scored from a class-stratified sample of {probed} training images" if sampled else ""
    log(
        f"Ranking {len(config.models)} backbones on {spec.title} ({counts['train']} train / {counts['val']} val images"
        f"{sample}; test split untouched) with {config.weights} weights at {data.image_size[0]}x{data.image_size[1]}"
    )
    # decoded once, and only if some backbone's features are not cached yet; the test images are never decoded
    images = functools.cache(lambda: image_cache(spec, data, catalog, samples, log, splits=("train", "val")))
    rows, started = [], time.perf_counter()
    for name in config.models:
        begun = time.perf_counter()
        outputs, reused = extract(name, config, catalog, samples, images, log)
        extracted = time.perf_counter()
        scores = score(outputs, data.seed)
        rows.append(
            {
                "backbone": name,
                **scores,
                "feature_dim": outputs["train"][0].shape[1],
                "features_seconds": extracted - begun,
                "score_seconds": time.perf_counter() - extracted,
                "features_cached": reused,
            }
        )
    total = time.perf_counter() - started
    table = ranking_table(rows)
    setting = {
        "dataset": dataset_label(spec.name, data.own, spec.domain, data.data),
        "weights": config.weights,
        "dataset_fingerprint": fingerprint,
        "resolution": "x".join(map(str, data.image_size)),
        "train_fraction": data.train_fraction,
        "shots": data.shots,
        "val_fraction": data.val_fraction,
        "seed": data.seed,
        "n_train": int(counts["train"]),
        "probe_images": probed if sampled else None,  # blank: every training image
        "n_val": int(counts["val"]),
    }
    print_ranking(table, total, log)
    if config.runs:
        table["measured_top1"] = check_against_runs(config, table, fingerprint, setting["dataset"], total, log)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(table.reset_index().assign(**setting), out)
    log(f"Ranking written to {out}")
    return table


def ranking_table(rows: list[dict]) -> pd.DataFrame:
    """One row per backbone, ranked by LogME, with each score's own rank."""
    table = pd.DataFrame(rows).set_index("backbone")
    table = table.sort_values("logme", ascending=False)
    table.insert(0, "rank", table["logme"].rank(ascending=False, method="min").astype(int))
    for column, _, _ in SCORES:
        table[f"{column}_rank"] = table[column].rank(ascending=False, method="min")
    return table


def print_ranking(table: pd.DataFrame, total: float, log) -> None:
    columns = {"rank": table["rank"].tolist(), "backbone": table.index.tolist()}
    for column, heading, decimals in SCORES:
        columns[heading] = [number(v, decimals) for v in table[column]]
    columns["seconds"] = [
        f"{f + s:.1f}" + (" (cached features)" if cached else "")
        for f, s, cached in zip(
            table["features_seconds"], table["score_seconds"], table["features_cached"], strict=True
        )
    ]
    log("\n" + markdown_table(columns) + "\n")
    log(f"Ranked by LogME. Total {total:.1f} s for {len(table)} backbones.")


def check_against_runs(
    config: RankConfig, table: pd.DataFrame, fingerprint: str, dataset: str, total: float, log
) -> pd.Series:
    """The measured top-1 of each backbone under --runs, after printing how well each score predicted it."""
    measured, finetune_seconds, measured_setting = measured_top1(config, fingerprint, log)
    if measured.empty:
        log(f"No fine-tuned runs of {dataset} with --weights {config.weights} under --runs to check.")
        return measured
    log(f"\nAgainst fine-tuned runs ({measured_setting}):")
    for column, heading, _ in SCORES:
        result = agreement(table[column], measured)
        if result:
            verdict = "the true best" if result["pick_is_best"] else f"true best: {result['true_best']}"
            log(
                f"  {heading}: Kendall's tau {result['kendall_tau']:+.2f} over {result['backbones']} "
                f"backbones; first pick {result['pick']} ({verdict}), regret {result['regret']:.2f} points"
            )
    mean_finetune = float(finetune_seconds.mean())
    log(
        f"  Cost: ranking {len(table)} backbones took {total:.1f} s; fine-tuning one took {mean_finetune:.1f} "
        f"s on average in these runs (ranking costs {100 * total / mean_finetune:.1f}% of one fine-tuning run)."
    )
    return measured


if __name__ == "__main__":
    run_cli(main)
