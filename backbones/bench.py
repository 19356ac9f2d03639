"""Where a fine-tuning run's time goes: the model, the data pipeline, or the loop that joins them.

Usage: python bench.py --dataset digits -models mobilenet --image-size 64 -bs 64

For each backbone, resolution and batch size, in one process:
  limit          training steps on synthetic batches already on the device: what the model alone allows
  data           images/s the data pipeline delivers to the device (decoded-image cache, augmentation on the device)
  loop           training steps on real data, end to end, as a run takes them (`train_one_epoch`)
  original_*     the same two for the original benchmark's pipeline, measured side by side: every image decoded
                 and resized with PIL every epoch and augmented per image in two workers, forward pass in fp32
It prints images/s for each, loop_over_limit (loop time per image over the limit's; 1 means the data costs
nothing), the gain over the original loop and peak memory, and writes them to a CSV. On CUDA each backbone is
measured in fp32 and mixed precision, channels_last off and on, torch.compile off and on.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import platform
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from backbones import datasets, models
from backbones.cost import peak_memory_mb
from backbones.datasets.common.spec import DatasetSpec
from backbones.errors import HelpFormatter, UserError, run_cli
from backbones.flags import add_batch_size, add_device, add_models, add_out, add_workers, frozen, positive_int
from backbones.loading import DataConfig, image_cache, load_splits, split_batches
from backbones.options import (
    add_data_arguments,
    data_config,
    image_size,
    parse_dataset_args,
)
from backbones.pipeline import DeviceBatches
from backbones.runfiles import git_commit, library_versions
from backbones.runtable import check_new_file, write_csv
from backbones.runtime import Precision, make_precision, resolve_device, seed_everything
from backbones.train_common import grad_scaler, train_one_epoch

ORIGINAL_WORKERS = 2


def build_parser(spec: DatasetSpec | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Measure training throughput: the model's limit on synthetic data, the data pipeline alone, "
        "the real loop, and the original benchmark's pipeline side by side.",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("--dataset", default="digits", choices=datasets.NAMES, help="the dataset, by its script's name")
    add_models(parser, ["mobilenet_v3_large"], "backbones to measure")
    default_size = "x".join(map(str, spec.image_size)) if spec else "the dataset's"
    add("--image-size", type=image_size, nargs="+", default=[default_size], help="resolutions, S or HxW each")
    add_batch_size(parser, [64], "batch sizes")
    add("--steps", type=positive_int, default=20, help="timed training steps (or batches) per measurement")
    add("--warmup", type=positive_int, default=3, help="untimed steps before each measurement")
    add("--weights", default="none", help="'none' or 'imagenet': the weights' values do not change the speed")
    add_data_arguments(parser, spec.default_data if spec else "data")
    add_workers(parser, "data-loading processes (ours)")
    add("--original", action=argparse.BooleanOptionalAction, default=True, help="also time the original pipeline")
    add_device(parser)
    add("--seed", type=int, default=0, help="seeds the splits, init and data order")
    add_out(parser, None, "CSV to write (default: results/bench-<dataset>-<time>.csv)")
    if spec and spec.add_arguments:
        spec.add_arguments(parser)
    return parser


@dataclass(frozen=True)
class BenchConfig:
    spec: DatasetSpec
    models: tuple[str, ...]
    image_sizes: tuple[tuple[int, int], ...]
    batch_sizes: tuple[int, ...]
    steps: int
    warmup: int
    weights: str
    original: bool  # also time the original benchmark's pipeline
    device: str
    data: DataConfig  # at the first size and batch size; each measurement replaces both
    out: Path


def parse_args(argv: list[str] | None) -> BenchConfig:
    spec, parsed = parse_dataset_args(build_parser, argv)
    names = models.resolve_names(parsed.models)
    for size, name in itertools.product(parsed.image_size, names):
        models.check_input_size(name, size)
    first = dataclasses.replace(data_config(spec, parsed), image_size=parsed.image_size[0], batch_size=parsed.bs[0])
    out = parsed.out or Path("results") / f"bench-{spec.name}-{datetime.now():%Y%m%d-%H%M%S}.csv"
    sizes = {"image_sizes": parsed.image_size, "batch_sizes": parsed.bs}
    return frozen(BenchConfig, parsed, spec=spec, models=names, data=first, out=out, **sizes)


# ------------------------------------------------------------------------------------------------ sources
def endless(batches: DeviceBatches) -> Iterator:
    """Epoch after epoch of `batches`, as a run draws them."""
    for epoch in itertools.count(1):
        batches.set_epoch(epoch)
        yield from batches


def synthetic(size: tuple[int, int], batch_size: int, classes: int, precision: Precision):
    """One batch already on the device, served forever: the step with no data cost at all."""
    images = precision.to_device(torch.randn(batch_size, 3, *size))
    labels = torch.randint(0, classes, (batch_size,), device=precision.device)
    return itertools.repeat((images, labels))


class OriginalImages(Dataset):
    """The original benchmark's dataset: each access decodes, resizes and augments one image with PIL."""

    def __init__(self, samples: pd.DataFrame, read, transform) -> None:
        self.ids, self.labels = samples["sample"].tolist(), samples["label"].tolist()
        self.read, self.transform = read, transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        return self.transform(self.read(self.ids[index])), self.labels[index]


def original_batches(spec: DatasetSpec, rows: pd.DataFrame, read, size, batch_size: int, device) -> Iterator:
    steps: list = [v2.Resize(size, antialias=True)]
    if spec.augment in ("hflip", "trivialaugment"):
        steps.append(v2.RandomHorizontalFlip())
    if spec.augment == "trivialaugment":
        steps.append(v2.TrivialAugmentWide())
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(spec.mean, spec.std)]
    loader = DataLoader(
        OriginalImages(rows, read, v2.Compose(steps)),
        batch_size=batch_size,
        shuffle=True,
        drop_last=len(rows) > batch_size,
        num_workers=ORIGINAL_WORKERS,
        pin_memory=device.type == "cuda",
        persistent_workers=True,
    )
    while True:
        for images, labels in loader:
            yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True)


# -------------------------------------------------------------------------------------------- measurements
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def images_per_s(source: Iterator, batch_size: int, steps: int, warmup: int, device, step=None) -> float:
    """Images/s of `steps` training steps on batches of `source` (or, without `step`, of just drawing them)."""
    run = step or (lambda batches: [synchronize(device) for _ in batches])
    run(itertools.islice(source, warmup))
    synchronize(device)
    started = time.perf_counter()
    run(itertools.islice(source, steps))
    synchronize(device)
    return batch_size * steps / (time.perf_counter() - started)


def trainer(name: str, classes: int, precision: Precision, compile_model: bool, weights: str):
    """A fresh model and a function training it on an iterable of batches, exactly as a run does."""
    model = models.create_model(name, classes, weights).to(precision.device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    return training_steps(torch.compile(model) if compile_model else model, model.parameters(), precision, "bench")


def training_steps(forward, parameters, precision: Precision, desc: str, log_every: float = 30.0):
    """A function training `forward` on an iterable of batches as a run's AdamW phase does (its default learning
    rate and weight decay: a step's time does not depend on them)."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-3, weight_decay=0.01)
    scaler = grad_scaler(precision)
    return lambda batches: train_one_epoch(forward, batches, optimizer, scaler, precision, desc, log_every)


def variants(device: torch.device) -> list[tuple[Precision, bool]]:
    """(precision, compile) to measure: on CUDA fp32 and mixed precision x channels_last x compile."""
    if device.type != "cuda":
        return [(make_precision(device), False)]
    mixed = make_precision(device).amp_dtype
    return [
        (Precision(device, amp, channels_last), compile_model)
        for amp in (None, mixed)
        for channels_last in (False, True)
        for compile_model in (False, True)
    ]


def measure(config: BenchConfig, data: DataConfig, catalog, samples, name: str, device, cache) -> list[dict]:
    """The figures of one backbone at one size and batch size (`data.image_size`, `data.batch_size`), per variant."""
    spec, steps, warmup = config.spec, config.steps, config.warmup
    classes, size, batch_size = len(catalog.classes), data.image_size, data.batch_size
    rows, original = [], {}
    if config.original:
        fp32 = Precision(device, None, False)
        train = samples[samples["split"] == "train"]
        source = original_batches(spec, train, catalog.read, size, batch_size, device)
        original = {
            "original_data_img_s": images_per_s(source, batch_size, steps, warmup, device),
            "original_loop_img_s": images_per_s(
                source, batch_size, steps, warmup, device, trainer(name, classes, fp32, False, config.weights)
            ),
        }
    for precision, compile_model in variants(device):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        step = trainer(name, classes, precision, compile_model, config.weights)
        limit = images_per_s(synthetic(size, batch_size, classes, precision), batch_size, steps, warmup, device, step)
        ours = endless(split_batches(spec, data, catalog, samples, "train", precision, True, cache))
        data = images_per_s(ours, batch_size, steps, warmup, device)
        loop = images_per_s(ours, batch_size, steps, warmup, device, step)
        memory, memory_kind = peak_memory_mb(device)
        row = {
            "backbone": name,
            "image_size": f"{size[0]}x{size[1]}",
            "batch_size": batch_size,
            "precision": str(precision.amp_dtype).removeprefix("torch.") if precision.amp_dtype else "fp32",
            "channels_last": precision.channels_last,
            "compile": compile_model,
            "limit_img_s": limit,
            "data_img_s": data,
            "loop_img_s": loop,
            "loop_over_limit": limit / loop,
            **original,
            "gain_over_original": loop / original["original_loop_img_s"] if original else None,
            "peak_memory_mb": memory,
            "memory_kind": memory_kind,
        }
        rows.append(row)
        print(
            f"{name} {row['image_size']} bs {batch_size} {row['precision']}"
            f"{' channels_last' if precision.channels_last else ''}{' compiled' if compile_model else ''}: "
            f"limit {limit:.1f}, data {data:.1f}, loop {loop:.1f} img/s (loop/limit {limit / loop:.2f})"
            + (
                f"; original loop {original['original_loop_img_s']:.1f} img/s, x{row['gain_over_original']:.2f}"
                if original
                else ""
            ),  # fmt: skip
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> pd.DataFrame:
    config = parse_args(argv)
    spec, base = config.spec, config.data  # the default protocol's images
    seed_everything(base.seed)
    device = resolve_device(config.device)
    catalog, samples = load_splits(spec, base)
    n_train = int((samples["split"] == "train").sum())
    if n_train < max(config.batch_sizes):
        raise UserError(
            f"{spec.title} gives {n_train} training images, fewer than a batch of {max(config.batch_sizes)}; lower -bs."
        )
    out = config.out
    check_new_file(out)
    print(
        f"Benchmarking {', '.join(config.models)} on {spec.title} ({n_train} training images) on "
        f"{device} ({torch.get_num_threads()} threads), --cache {base.cache}, {base.workers} workers; "
        f"{config.warmup} + {config.steps} steps per figure"
    )
    results = []
    for size in config.image_sizes:
        at_size = dataclasses.replace(base, image_size=size)
        started = time.perf_counter()
        cache = image_cache(spec, at_size, catalog, samples, print)
        cache_seconds = time.perf_counter() - started
        for name, batch_size in itertools.product(config.models, config.batch_sizes):
            one = dataclasses.replace(at_size, batch_size=batch_size)
            for row in measure(config, one, catalog, samples, name, device, cache):
                results.append({**row, "cache_seconds": cache_seconds})
    table = pd.DataFrame(results).assign(
        dataset=spec.name,
        cache=base.cache,
        workers=base.workers,
        original_workers=ORIGINAL_WORKERS,
        steps=config.steps,
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        cpu_threads=torch.get_num_threads(),
        **library_versions(),
        git_commit=git_commit(),
    )
    print(table.drop(columns=["dataset", "memory_kind"]).round(2).to_string(index=False))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(table, out)
    print(f"Written to {out}")
    return table


if __name__ == "__main__":
    run_cli(main)
