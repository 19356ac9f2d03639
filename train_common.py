"""The one fine-tune/evaluate loop every dataset script shares.

Protocol (design.md): phase 1 AdamW until `--patience` epochs without validation improvement, reload the best
weights, phase 2 SGD with the same rule; the test set is evaluated once, on the best checkpoint. Selection uses
a validation split carved from the training data; `--protocol paper` reproduces the original's selection on the
test set and says so.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import errno
import fcntl
import json
import math
import os
import platform
import posixpath
import random
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset
from tqdm import tqdm

import datasets
import models
from datasets.base import (
    SPLITS,
    DataNotFound,
    DatasetSpec,
    FileReader,
    PaperRecipe,
    assign_splits,
    atomic_write,
    dataset_fingerprint,
    nested_subset,
    split_hashes,
)
from errors import UserError, run_cli
from metrics import fit_temperature, gflops, peak_memory_mb, quality, reliability_diagram, speed
from pipeline import DeviceBatches, SplitImages, cached_images

PROJECT_DIR = Path(__file__).resolve().parent
RESULT_COLUMNS = [
    "finished",
    "dataset",
    "model",
    "weights",
    "protocol",
    "seed",
    "image_size",
    "num_classes",
    "n_train",
    "n_val",
    "n_test",
    "train_fraction",
    "shots",
    "finetune",
    "top1",
    "top5",
    "balanced_accuracy",
    "macro_f1",
    "nll",
    "ece",
    "epochs",
    "train_seconds",
    "params",
    "gflops",
    "latency_ms_batch1",
    "device",
    "out",
]


# ----------------------------------------------------------------------------------------------- command line
def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """A finite number above 0 (learning rates): a typo fails here, not after hours of training."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value:g}")
    return value


def non_negative_float(text: str) -> float:
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value:g}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
    return value


def share(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def image_size(text: str) -> tuple[int, int]:
    """'224' or '448x672' (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 8:
        raise argparse.ArgumentTypeError(f"expected S or HxW with sides of at least 8 pixels, got '{text}'")
    return (parts[0], parts[-1])


def add_data_arguments(parser: argparse.ArgumentParser, default_data: str) -> None:
    """Where the dataset is and which of its images are used: shared by the dataset scripts and rank.py, so a
    ranking sees exactly the training and validation images a run with the same flags trains and selects on."""
    parser.add_argument(
        "--data", type=Path, default=Path(default_data), help="dataset root: where its archive was extracted"
    )
    parser.add_argument(
        "--download",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="download the dataset if it is missing and its source allows it; --no-download never does",
    )
    parser.add_argument(
        "--cache",
        choices=("auto", "disk", "off"),
        default="auto",
        help="'disk': decode and resize each image once into a memory-mapped file under $BACKBONES_CACHE that "
        "later epochs and runs on the same data read; 'auto': the same where it fits on disk; 'off': decode every "
        "image every epoch",
    )
    parser.add_argument(
        "--val-fraction",
        type=fraction,
        default=0.1,
        help="share of training data held out for validation, "
        "per class, where the dataset has no official validation split",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--train-fraction",
        type=share,
        default=1.0,
        help="train on this share of each class's training data (0 < F <= 1; nested: for one seed a smaller "
        "share is inside a larger one); validation is carved from it, the test set is never subsampled",
    )
    size.add_argument(
        "--shots",
        type=positive_int,
        default=None,
        help="train on K images per class (nested like --train-fraction), validation carved from them",
    )


def parse_dataset_args(
    build_parser: Callable[[DatasetSpec | None], argparse.ArgumentParser], argv: list[str] | None
) -> tuple[DatasetSpec, argparse.Namespace]:
    """For tools taking `--dataset NAME`, two passes: the dataset decides which of its own flags (BreakHis's
    -mag, ...) exist and the defaults shown by --help."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--dataset")
    known, _ = first.parse_known_args(argv)
    spec = datasets.spec(known.dataset) if known.dataset in datasets.NAMES else None
    args = build_parser(spec).parse_args(argv)
    return datasets.spec(args.dataset), args


def build_parser(spec: DatasetSpec) -> argparse.ArgumentParser:
    height, width = spec.image_size
    parser = argparse.ArgumentParser(
        description=f"Fine-tune an ImageNet-pretrained backbone on {spec.title} ({spec.domain}, "
        f"{spec.num_classes or 'any number of'} classes) and report test top-1 accuracy. Data: {spec.source}. "
        f"Layout: {spec.layout}.",
        formatter_class=HelpFormatter,
    )
    add = parser.add_argument
    add("-model", required=True, help=f"backbone: {', '.join(models.list_models())}, an alias, or timm:<name>")
    add("-bs", type=positive_int, default=32, help="batch size")
    add("--weights", default="imagenet", help="'imagenet' (pretrained), 'none' (random init) or a checkpoint FILE")
    add("--image-size", type=image_size, default=f"{height}x{width}", help="training/evaluation size, S or HxW")
    add("--max-epochs", type=positive_int, default=None, help="cap on epochs per optimizer phase (none: no cap)")
    add(
        "--patience",
        type=positive_int,
        default=None,
        help="epochs without improvement before a phase stops (default: 10; under --protocol paper the original's "
        "for the dataset)",
    )
    add(
        "--sgd-patience",
        type=positive_int,
        default=None,
        help="the same for the SGD phase (default: --patience; under --protocol paper the original's)",
    )
    add(
        "--lr",
        type=positive_float,
        default=None,
        help="AdamW learning rate, phase 1 (default: 0.001; under --protocol paper the original's, 0.0001 on Galaxy10)",
    )
    add("--weight-decay", type=non_negative_float, default=0.01, help="AdamW weight decay (phase 1)")
    add("--sgd-lr", type=positive_float, default=1e-3, help="SGD learning rate, momentum 0.9 (phase 2)")
    add_data_arguments(parser, spec.default_data)
    add(
        "--finetune",
        choices=("full", "head"),
        default="full",
        help="'full': train every weight; 'head': a linear probe (backbone and its BatchNorm statistics frozen)",
    )
    add(
        "--protocol",
        choices=("val", "paper"),
        default="val",
        help="'val': select checkpoints on the validation split; 'paper': the original's recipe for the dataset, "
        "selection on the test set included (optimistic; for comparison with its table only; see the README)",
    )
    add(
        "--bn-images",
        type=non_negative_int,
        default=None,
        help="before each evaluation, recompute BatchNorm statistics over this many training images (0: off; "
        "default: 2048, under --protocol paper 0 as in the original)",
    )
    add(
        "--seed",
        type=int,
        default=None,
        help="seeds splits, init and data order (default: 0, or the seed "
        "recorded in the --weights checkpoint with --eval-only)",
    )
    add("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    add("--workers", type=non_negative_int, default=min(4, os.cpu_count() or 1), help="data-loading processes")
    add("--compile", action="store_true", help="compile the model with torch.compile")
    add("--eval-only", action="store_true", help="evaluate --weights FILE on the test split without training")
    add("--out", type=Path, default=None, help="this run's folder (default: a new folder under runs/)")
    add(
        "--resume",
        action="store_true",
        help="continue the killed run in --out from its last completed epoch (same flags required)",
    )
    add("--results", type=Path, default=Path("results/results.csv"), help="results table to append a row to")
    if spec.add_arguments:
        spec.add_arguments(parser)
    return parser


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a flag's default unless it is None (then its help says what the default depends on)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def paper_recipe(spec: DatasetSpec, args: argparse.Namespace) -> PaperRecipe | None:
    """The original's recipe for this dataset under --protocol paper; None under the default protocol."""
    return spec.paper_recipe(dataset_options(spec, args)) if args.protocol == "paper" else None


def apply_protocol_defaults(spec: DatasetSpec, args: argparse.Namespace) -> None:
    """Fill the flags whose default depends on the protocol, so the saved configuration holds the values used."""
    paper = paper_recipe(spec, args)
    sgd_follows = args.patience is not None  # a patience the user gave applies to both phases
    if args.patience is None:
        args.patience = 10 if paper is None else paper.patience[0]
    if args.sgd_patience is None:
        args.sgd_patience = args.patience if paper is None or sgd_follows else paper.patience[1]
    if args.lr is None:
        args.lr = 1e-3 if paper is None else paper.lr
    if args.bn_images is None:
        args.bn_images = 2048 if paper is None else 0


def dataset_options(spec: DatasetSpec, args: argparse.Namespace) -> dict:
    """The values of the dataset's own flags (BreakHis's -mag, ...): they choose which data a run saw."""
    if spec.add_arguments is None:
        return {}
    probe = argparse.ArgumentParser(add_help=False)
    spec.add_arguments(probe)
    return {name: getattr(args, name) for name in vars(probe.parse_known_args([])[0])}


# ----------------------------------------------------------------------------------------------------- data
def world() -> tuple[int, int]:
    """(this process's rank, number of processes): (0, 1) unless launched by torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    """Only the first process writes files and prints."""
    return world()[0] == 0


def start_distributed(device_name: str) -> None:
    """Join the torchrun job this process was started in (NCCL on GPUs, gloo on CPUs); nothing otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")


def gather_shards(local: torch.Tensor) -> torch.Tensor:
    """Reassemble a tensor whose rows were strided over the processes (row i on rank i % size)."""
    rank, size = world()
    if size == 1:
        return local
    parts: list = [None] * size
    dist.all_gather_object(parts, local.cpu())
    full = parts[0].new_empty((sum(len(part) for part in parts), *parts[0].shape[1:]))
    for index, part in enumerate(parts):
        full[index::size] = part
    return full


def make_loader(
    dataset: Dataset, args: argparse.Namespace, device: torch.device, train: bool, batch_size: int
) -> DataLoader:
    """Training order is a permutation drawn from (seed, epoch) alone (`DeviceBatches.set_epoch`), so it does not
    depend on workers or on how many times a loader was iterated, and a resumed run needs no loader state; under
    torchrun each process takes its share of it. Evaluation sees a strided shard, so every evaluated sample is on
    exactly one process (no padding duplicates). The loader's own generator keeps worker seeding off the run's
    random stream."""
    rank, size = world()
    sampler = None
    if train:
        sampler = DistributedSampler(
            dataset, num_replicas=size, rank=rank, shuffle=True, seed=args.seed, drop_last=True
        )
    elif size > 1:
        dataset = Subset(dataset, range(rank, len(dataset), size))
    augments_first = isinstance(dataset, SplitImages) and dataset.augment_first is not None
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=train and len(dataset) > batch_size,  # a batch of one breaks BatchNorm in training mode
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0 and not augments_first,  # fresh workers see the new epoch
        generator=torch.Generator().manual_seed(args.seed),
    )


def image_cache(
    spec: DatasetSpec, args: argparse.Namespace, catalog, samples: pd.DataFrame, log, splits=SPLITS
) -> tuple:
    """(cache file, row of each sample) for the samples of `splits` (`cached_images`), or (None, None)."""
    label = spec.name + "".join(f"-{k}{v}" for k, v in sorted(dataset_options(spec, args).items()))
    used = samples.loc[samples["split"].isin(splits), "sample"]
    return cached_images(label, catalog.read, used, args.image_size, args.cache, args.workers, log)


def split_batches(
    spec: DatasetSpec, args, catalog, samples: pd.DataFrame, split: str, precision, train: bool, cache: tuple
) -> DeviceBatches:
    """Device-ready batches of one split: decoded (or read from `cache`), augmented when `train`, normalised."""
    rows = samples[samples["split"] == split]
    paper = paper_recipe(spec, args)
    first = train and paper is not None and paper.augment == "trivialaugment-first"
    images = SplitImages(
        rows["sample"], rows["label"], catalog.read, args.image_size, *((None, None) if first else cache),
        augment_first_seed=args.seed if first else None,
    )  # fmt: skip
    if paper is None:
        norm, flip, trivial = (spec.mean, spec.std), spec.augment != "none", spec.augment == "trivialaugment"
        batch_size = args.bs
    else:  # no flips; TrivialAugmentWide where the original has it; its train and test statistics
        norm = (paper.train_norm if train else paper.test_norm) or (spec.mean, spec.std)
        flip, trivial = False, paper.augment == "trivialaugment"
        batch_size = args.bs if train else args.bs * paper.eval_batch_multiple
    loader = make_loader(images, args, precision.device, train, batch_size)
    return DeviceBatches(loader, norm, precision, args.seed, flip and train, trivial and train)


# ---------------------------------------------------------------------------------------------------- model
@dataclass
class Precision:
    """How tensors are computed on this device: mixed precision and memory format (CUDA only)."""

    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def to_device(self, images: torch.Tensor) -> torch.Tensor:
        images = images.to(self.device, non_blocking=True)
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"Unknown --device '{name}'. Use auto, cpu, cuda, cuda:N or mps.") from err
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise UserError(
            f"--device {name} was asked for, but this machine has {torch.cuda.device_count()} CUDA "
            "devices visible to PyTorch. Use --device cpu, or check the driver and CUDA_VISIBLE_DEVICES."
        )
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise UserError("--device mps was asked for, but MPS is not available here. Use --device cpu.")
    return device


def make_precision(device: torch.device) -> Precision:
    if device.type != "cuda":
        return Precision(device, None, False)
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return Precision(device, dtype, True)


# ----------------------------------------------------------------------------------------------------- loop
def frozen_norms(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose weights are frozen (linear probing): they keep their pretrained statistics."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters())
    ]


def train_mode(model: nn.Module) -> None:
    model.train()
    for norm in frozen_norms(model):
        norm.eval()


def train_one_epoch(model, loader, optimizer, scaler, precision: Precision, desc: str) -> tuple[float, float]:
    """One pass over the training data; returns (mean loss, top-1 %) counted over samples."""
    train_mode(model)
    criterion = nn.CrossEntropyLoss()
    total_loss, correct, seen = 0.0, 0, 0
    bar = tqdm(loader, desc=desc, leave=False, disable=None)
    for images, labels in bar:
        with precision.autocast():
            logits = model(images)
            loss = criterion(logits, labels)
        value = loss.item()
        if not math.isfinite(value):
            raise Diverged(desc, "training loss", value)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        total_loss += value * len(labels)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(labels)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{100 * correct / seen:.2f}%")
    if world()[1] > 1:  # over every process's samples
        totals = torch.tensor([total_loss, correct, seen], dtype=torch.float64, device=precision.device)
        dist.all_reduce(totals)
        total_loss, correct, seen = totals.tolist()
    return total_loss / max(seen, 1), 100 * correct / max(seen, 1)


class Diverged(UserError):
    """The loss left the finite numbers: nothing after that point is a result, so the run stops there."""

    def __init__(self, where: str, what: str, value: float) -> None:
        super().__init__(
            f"Training diverged in {where}: the {what} became {value}. Nothing from that epoch was kept (a non-finite "
            "loss is never the best checkpoint). Lower that phase's learning rate (--lr for AdamW, --sgd-lr for SGD), "
            "for example ten times, and start a new run."
        )


@dataclass
class Evaluation:
    loss: float
    top1: float  # over samples
    batch_top1: float  # the mean of each batch's top-1, as the original's scripts average it
    logits: torch.Tensor
    labels: torch.Tensor


@torch.inference_mode()
def predict(model, loader, precision: Precision, desc: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's outputs (float32, on the CPU) and the labels for every sample of `loader`, in order."""
    model.eval()
    all_outputs, all_labels = [], []
    for images, labels in tqdm(loader, desc=desc, leave=False, disable=None):
        with precision.autocast():
            all_outputs.append(model(images).float().cpu())
        all_labels.append(labels)
    return gather_shards(torch.cat(all_outputs)), gather_shards(torch.cat(all_labels))


def evaluate(model, loader, precision: Precision, desc: str) -> Evaluation:
    """Loss and top-1 over every sample of `loader`, and top-1 averaged over its batches (a short last batch
    weighs as much as a full one: the original's count, kept for `--protocol paper`)."""
    logits, labels = predict(model, loader, precision, desc)
    loss = nn.functional.cross_entropy(logits, labels).item()
    hits = (logits.argmax(1) == labels).float()
    batch_top1 = torch.stack([batch.mean() for batch in hits.split(loader.loader.batch_size)]).mean().item()
    return Evaluation(loss, 100 * hits.mean().item(), 100 * batch_top1, logits, labels)


@torch.no_grad()
def recompute_bn_stats(model, loader, precision: Precision, max_images: int) -> None:
    """Re-estimate BatchNorm running statistics from training images ("precise BN").

    Torchvision's MobileNetV3/EfficientNet use BN momentum 0.01, so after a short run the running statistics still
    describe the initial weights and evaluation falls to chance. A cumulative average over fresh batches fixes
    that for every backbone, and is what the checkpoint then stores.
    """
    frozen = frozen_norms(model)
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m not in frozen
    ]
    if not norms or max_images <= 0:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average
    train_mode(model)
    seen = 0
    for images, _ in loader:
        with precision.autocast():
            model(images)
        seen += len(images)
        if seen >= max_images:
            break
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
        if world()[1] > 1:  # each process saw its own images: average, so every process evaluates the same model
            for statistic in (m.running_mean, m.running_var):
                dist.all_reduce(statistic)
                statistic /= world()[1]


# ------------------------------------------------------------------------------------------------- run files
class RunLog:
    """Prints a line and appends it to the run's log file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        if not is_main():
            return
        print(line, flush=True)
        with open(self.path, "a") as file:
            file.write(line + "\n")


def make_out_dir(requested: Path | None, name: str, resume: bool = False) -> Path:
    """A fresh folder for this run; an existing non-empty folder is never reused, except to resume it."""
    if resume:
        return requested
    if requested is not None:
        if requested.exists() and (not requested.is_dir() or any(requested.iterdir())):
            raise UserError(
                f"--out {requested} already exists and is not an empty folder; this tool never overwrites a run. "
                f"Choose a new --out, or leave it out to get a fresh folder under runs/."
            )
        try:
            requested.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(
                f"--out {requested} cannot be created ({err.strerror or err}). Choose a folder in a writable place."
            ) from err
        return requested
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    for attempt in range(1, 1000):
        path = Path("runs") / f"{name}-{stamp}" if attempt == 1 else Path("runs") / f"{name}-{stamp}-{attempt}"
        try:
            path.mkdir(parents=True, exist_ok=False)
            return path
        except FileExistsError:
            continue
        except OSError as err:
            raise UserError(f"Cannot create a run folder under runs/ ({err.strerror or err}); pass --out DIR.") from err
    raise UserError("Could not create a fresh run folder under runs/; pass --out DIR.")


def atomic_save(obj: object, path: Path) -> None:
    atomic_write(path, lambda file: torch.save(obj, file))


def write_json(data: dict, path: Path) -> None:
    atomic_write(path, lambda file: file.write((json.dumps(data, indent=2, default=str) + "\n").encode()))


def check_results_table(table: Path) -> list[str] | None:
    """The header of the results table at `table` (None while it is new or empty), after checking that the file can
    be written and is a results table: a run must not learn at its end, hours in, that its row has nowhere to go."""
    try:
        if table.exists():
            with open(table, "r+", newline="") as file:  # r+: readable and writable, and nothing created
                header = next(csv.reader(file), None)
        else:
            folder = next(p for p in table.absolute().parents if p.exists())
            if not folder.is_dir() or not os.access(folder, os.W_OK):
                raise OSError(errno.EACCES, f"{folder} is not a writable folder")
            header = None
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise UserError(
            f"--results {table} cannot be written or read ({getattr(err, 'strerror', None) or err}). Pass a CSV file "
            "in a writable folder (default results/results.csv)."
        ) from err
    if header is not None and not (set(header) <= set(RESULT_COLUMNS) and {"dataset", "model", "top1"} <= set(header)):
        raise UserError(
            f"--results {table} is not a results table written by this tool (its header is {','.join(header)[:200]}); "
            "appending a row would corrupt it. Pass a new file or an earlier results table."
        )
    return header


def append_result(row: dict, table: Path) -> None:
    """Append one row under an exclusive lock, so concurrent runs never interleave or corrupt the table. An older
    table keeps its own columns; a file whose last line lacks its newline gets one first."""
    check_results_table(table)
    table.parent.mkdir(parents=True, exist_ok=True)
    with open(table, "a+", newline="") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        file.seek(0)
        header = next(csv.reader(file), None)
        writer = csv.DictWriter(file, fieldnames=header or RESULT_COLUMNS, extrasaction="ignore")
        file.seek(0, os.SEEK_END)
        if header is None:
            writer.writeheader()
        elif file.tell() > 0:
            file.seek(file.tell() - 1)
            last = file.read(1)
            file.seek(0, os.SEEK_END)
            if last != "\n":
                file.write("\n")
        writer.writerow(row)
        file.flush()
        os.fsync(file.fileno())


def git_commit() -> str | None:
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_DIR, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=PROJECT_DIR,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    import timm
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
    }


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------------------ main
def load_splits(spec: DatasetSpec, args: argparse.Namespace):
    """Read the dataset and give every sample its split; a missing or mis-laid-out dataset is a `UserError`."""
    if args.data.exists() and not args.data.is_dir():
        raise UserError(f"--data {args.data} is a file; it must be the folder the dataset was extracted into.")
    try:
        catalog = spec.catalog(args.data, args)
    except DataNotFound as err:
        raise UserError(
            f"{spec.title} was not found under --data {args.data}: {err}. Expected layout: {spec.layout}. "
            f"Get it from {spec.source}, or point --data at the folder it was extracted into."
        ) from err
    samples = catalog.samples
    paper = paper_recipe(spec, args)
    if paper is not None:  # the original split image by image, and trained on train (+ official val on some rows)
        if (samples["group"] != samples["sample"]).any():
            print(
                f"warning: --protocol paper splits {spec.title} image by image, as the original did, so images of one "
                "patient (or other group) can be on both sides of the split: the test score is inflated by that "
                "leak. The default protocol keeps each group on one side.",
                file=sys.stderr,
            )
        samples = samples.assign(split=samples["split"].replace("val", paper.official_val), group=samples["sample"])
    val_fraction = 0.0 if args.protocol == "paper" else args.val_fraction
    test_fraction = getattr(args, "test_size", spec.test_fraction)  # a dataset may let the user set it
    subset = None
    if args.train_fraction < 1 or args.shots is not None:
        subset = lambda pool: nested_subset(  # noqa: E731
            pool["label"], catalog.classes, args.seed, args.train_fraction, args.shots
        )
    samples = assign_splits(samples, test_fraction, val_fraction, args.seed, subset, spec.test_over_whole_set)
    tested, present = set(samples.loc[samples["split"] == "test", "label"]), set(samples["label"])
    untested = [name for label, name in enumerate(catalog.classes) if label in present - tested]
    if untested:
        print(
            f"warning: {len(untested)} class(es) have no test image ({', '.join(untested[:5])}"
            f"{', ...' if len(untested) > 5 else ''}): too few images to hold one out. Their per-class accuracy is "
            "reported as missing and they are left out of macro-F1; add images to test them.",
            file=sys.stderr,
        )
    if spec.num_classes is not None and len(catalog.classes) != spec.num_classes:
        print(
            f"warning: {spec.title} has {spec.num_classes} classes but {args.data} holds {len(catalog.classes)}; "
            "training on the classes found. Check that --data points at the complete dataset.",
            file=sys.stderr,
        )
    return catalog, samples


SPLIT_FLAGS = ("seed", "val_fraction", "train_fraction", "shots", "protocol", "test_size")


def split_identity(spec: DatasetSpec, args: argparse.Namespace, catalog, samples: pd.DataFrame) -> dict:
    """What decides which images a run trains, selects and is tested on; kept in its checkpoints and metrics."""
    options = dataset_options(spec, args)
    return {
        "dataset": spec.name,
        "dataset_options": options,
        "dataset_fingerprint": dataset_fingerprint(spec.name, options, catalog, args.data, spec.domain == "custom"),
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
            for key in SPLIT_FLAGS
            if key in config and saved_config.get(key) != config.get(key)
        ]
        differences.append(
            f"the {'/'.join(changed)} split(s) hold other images"
            + (f" ({'; '.join(flags)})" if flags else " (same flags: the data under --data changed)")
        )
    return differences


def check_out_folder(out: Path | None, data: Path, catalog) -> None:
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


def check_memory(batch_size: int, size: tuple[int, int], device: torch.device) -> None:
    """Refuse, before any work, a batch whose input images alone exceed the device's memory."""
    needed = batch_size * 3 * size[0] * size[1] * 4  # one float32 batch, before any activation
    if device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
    elif hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    else:
        return
    if needed > total:
        raise UserError(
            f"--image-size {size[0]}x{size[1]} at -bs {batch_size} needs {needed / 2**30:,.1f} GiB for one batch of "
            f"input images alone (activations need many times more), and this {device.type} device has "
            f"{total / 2**30:,.1f} GiB. Lower --image-size or -bs."
        )


@contextlib.contextmanager
def out_of_memory_as_user_error():
    """An allocation that fails mid-run becomes a clear message rather than a traceback."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not isinstance(err, torch.OutOfMemoryError) and "not enough memory" not in str(err):
            raise
        first = str(err).strip().splitlines()[0][:300]
        raise UserError(
            f"Out of memory: {first}. Lower -bs or --image-size (memory grows with both), or use a device with more "
            "memory; the run folder can be deleted."
        ) from err


def read_resume_file(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a truncated or foreign file
        raise UserError(
            f"--resume: {path} cannot be read ({type(err).__name__}: {err}); it is damaged or truncated. Delete it to "
            "restart this run from its first epoch in the same folder, or start a new run with a new --out."
        ) from err


def check_evaluation_split(args: argparse.Namespace, meta: dict, identity: dict) -> None:
    """--eval-only must score only images the checkpoint never trained or selected on, with its own class order."""
    if "split_hashes" not in meta:
        raise UserError(
            f"--eval-only: --weights {args.weights} records no split (a plain state dict, or a checkpoint written by "
            "an older version), so nothing shows that its test images were never trained or selected on. Evaluate a "
            "best.pt written by this version of the tool, or fine-tune with --weights FILE instead."
        )
    differences = identity_differences(meta, identity, json.loads(meta.get("config", "{}")), run_config(args))
    if differences:
        raise UserError(
            f"--eval-only: --weights {args.weights} was trained on another split than this command draws: "
            f"{'; '.join(differences)}. Its scores here could include images it trained or selected on, or use "
            "another class order. Evaluate it with the dataset, --data and split flags it was trained with."
        )


def check_input_size(model_name: str, size: tuple[int, int]) -> None:
    """Refuse, before any work, a size the backbone cannot take (WaveMix: multiples of 32)."""
    multiple = models.input_multiple(model_name)
    if any(side % multiple for side in size):
        raise UserError(
            f"{model_name} needs an input height and width that are multiples of {multiple}, got "
            f"--image-size {size[0]}x{size[1]}; try {max(multiple, round(size[0] / multiple) * multiple)}."
        )


def main(spec: DatasetSpec, argv: list[str] | None = None) -> dict:
    """Fine-tune (or with --eval-only, evaluate) one backbone on one dataset; returns the metrics written."""
    args = build_parser(spec).parse_args(argv)
    apply_protocol_defaults(spec, args)
    paper = paper_recipe(spec, args)
    model_name = models.resolve_name(args.model)
    if not args.eval_only:
        check_results_table(args.results)
    checkpoint_meta = {}
    if args.eval_only:
        if args.weights in ("imagenet", "none"):
            raise UserError(
                "--eval-only evaluates a trained checkpoint: pass it with --weights FILE (e.g. runs/<run>/best.pt)."
            )
        checkpoint_meta = models.load_checkpoint(Path(args.weights)).get("meta", {})
    if args.seed is None:
        args.seed = int(checkpoint_meta.get("seed", 0))
    check_input_size(model_name, args.image_size)
    seed_everything(args.seed)
    start_distributed(args.device)
    device = resolve_device(args.device)
    check_memory(args.bs, args.image_size, device)
    precision = make_precision(device)

    catalog, samples = load_splits(spec, args)
    check_out_folder(args.out, args.data, catalog)
    num_classes = len(catalog.classes)
    trained_for = checkpoint_meta.get("num_classes", num_classes)
    if trained_for != num_classes:
        raise UserError(
            f"--weights {args.weights} was trained for {trained_for} classes ({checkpoint_meta.get('dataset')}), "
            f"but {spec.title} has {num_classes}; evaluating it would score an untrained head. Pass a "
            f"checkpoint trained on {spec.title}."
        )
    identity = split_identity(spec, args, catalog, samples)
    if args.eval_only:
        check_evaluation_split(args, checkpoint_meta, identity)
    counts = samples["split"].value_counts()
    n_train, n_val, n_test = (int(counts.get(s, 0)) for s in ("train", "val", "test"))
    if n_train == 0 or n_test == 0 or (args.protocol == "val" and not args.eval_only and n_val == 0):
        raise UserError(
            f"{spec.title} under {args.data} gives {n_train} training, {n_val} validation and "
            f"{n_test} test images; every split needs at least one. Add data or raise --val-fraction."
        )

    model = models.create_model(model_name, num_classes, args.weights)
    if args.finetune == "head":
        models.freeze_all_but_head(model, model_name)
    params = sum(p.numel() for p in model.parameters())
    model.to(device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    forward = torch.compile(model) if args.compile else model
    train_forward = forward
    if world()[1] > 1:  # gradients are averaged over the processes; evaluation runs on the plain model
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        train_forward = torch.compile(ddp) if args.compile else ddp

    mode = "evaluation of " + args.weights if args.eval_only else f"protocol {args.protocol}"
    if not args.eval_only:
        mode += ", linear probe (backbone frozen)" if args.finetune == "head" else ", full fine-tuning"
    if args.shots is not None or args.train_fraction < 1:
        size = f"{args.shots} per class" if args.shots is not None else f"{args.train_fraction:g} of each class"
        mode += f", training data: {size} ({int(counts.get('unused', 0))} images unused)"
    name = f"{spec.name}-{model_name.replace(':', '_')}-s{args.seed}"
    resumed = resume_state(args, run_config(args), identity) if args.resume else None
    out = [make_out_dir(args.out, name, resume=args.resume) if is_main() else None]
    if world()[1] > 1:
        dist.broadcast_object_list(out)  # the folder the first process made
    out = out[0]
    if is_main() and not (out / "config.json").exists():  # the command as given; a resumed run keeps the first
        command = sys.argv[1:] if argv is None else argv
        write_json({"script": Path(sys.argv[0]).name, "argv": command, "config": run_config(args)}, out / "config.json")
    log = RunLog(out / "log.txt")
    log(
        f"{spec.title}: {n_train} train / {n_val} val / {n_test} test images, {num_classes} classes; "
        f"{model_name} ({params / 1e6:.1f}M params, weights {args.weights}) at {args.image_size[0]}x"
        f"{args.image_size[1]} on {device}{' with ' + str(precision.amp_dtype) if precision.amp_dtype else ''}; "
        f"{mode}; seed {args.seed}; writing to {out}"
    )
    if paper is not None:
        log(
            "PROTOCOL paper: checkpoints are chosen on the TEST set, as in the original benchmark. The accuracy "
            "below is optimistically biased; use it only to compare with the original's numbers. The original's "
            f"recipe: {describe_recipe(paper, args)}."
        )
    if is_main():
        samples[["sample", "label", "split"]].to_csv(out / "split.csv", index=False)

    read = ("val", "test") if args.eval_only else SPLITS  # an evaluation reads no training images
    if paper is not None and paper.augment == "trivialaugment-first":
        read = ("val", "test")  # training images are augmented before their resize, so each epoch decodes them
    cache = image_cache(spec, args, catalog, samples, log, read)

    def loader(split: str, train: bool) -> DeviceBatches:
        return split_batches(spec, args, catalog, samples, split, precision, train, cache)

    test_loader = loader("test", train=False)
    history: list[dict] = []
    best: dict = {}
    train_seconds, train_loader = 0.0, None
    if not args.eval_only:
        train_loader = loader("train", train=True)
        select_loader = test_loader if args.protocol == "paper" else loader("val", train=False)
        select_name = "test" if args.protocol == "paper" else "val"
        meta = {
            "dataset": spec.name,
            "model": model_name,
            "num_classes": num_classes,
            "classes": catalog.classes,
            "seed": args.seed,
            "image_size": list(args.image_size),
            "config": json.dumps(run_config(args)),
            **identity,
        }
        started = time.perf_counter()
        best, history = fit(
            model,
            forward,
            train_loader,
            select_loader,
            select_name,
            precision,
            args,
            meta,
            out,
            log,
            resumed,
            train_forward,
            paper,
        )
        train_seconds = (
            time.perf_counter() - started + (sum(h["seconds"] for h in resumed["history"]) if resumed else 0)
        )

    temperature = None
    if n_val and args.protocol == "val":  # calibrate on validation data only; the test set stays untouched
        val = evaluate(forward, loader("val", train=False), precision, "val")
        temperature = fit_temperature(val.logits.numpy(), val.labels.numpy())
        if temperature is None:
            temperature = 1.0
            log(
                "Temperature scaling: the validation split is classified with full confidence, so the fitted "
                "temperature would only be the search's bound; T is kept at 1."
            )
    test = evaluate(forward, test_loader, precision, "test")
    test_logits, test_labels = test.logits.numpy(), test.labels.numpy()
    scores = quality(test_logits, test_labels, num_classes, temperature)
    if not is_main():  # the first process measures the cost and writes the files
        dist.destroy_process_group()
        return {}
    cost = measure_cost(model, forward, args, precision, history, train_loader)
    metrics = {
        "dataset": spec.name,
        **identity,
        "data": str(args.data.resolve()),
        "domain": spec.domain,
        "model": model_name,
        "weights": args.weights,
        "seed": args.seed,
        "protocol": args.protocol,
        "eval_only": args.eval_only,
        "selection": None if args.eval_only else ("test" if args.protocol == "paper" else "val"),
        "num_classes": num_classes,
        "n_train": n_train,
        "n_val": n_val,
        "n_test": n_test,
        "n_unused": int(counts.get("unused", 0)),
        "train_fraction": args.train_fraction,
        "shots": args.shots,
        "finetune": args.finetune,
        "image_size": list(args.image_size),
        "default_image_size": list(spec.image_size),
        **{k: round(v, 6) if isinstance(v, float) else v for k, v in scores.items()},
        "test_loss": round(test.loss, 6),
        "top1_batch_mean": round(test.batch_top1, 4) if paper else None,  # what the original reports
        "paper_recipe": dataclasses.asdict(paper) if paper else None,
        "epochs": len(history),
        "best_epoch": best.get("epoch"),
        "best_selection_top1": round(best["top1"], 4) if best else None,
        "train_seconds": round(train_seconds, 2),
        "params": params,
        **cost,
        "device": str(device),
        "processes": world()[1],
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "amp_dtype": str(precision.amp_dtype) if precision.amp_dtype else None,
        "history": history,
        "config": run_config(args),
        "versions": library_versions(),
        "git_commit": git_commit(),
        "finished": datetime.now().isoformat(timespec="seconds"),
        "out": str(out),
    }
    np.savez_compressed(out / "test_outputs.npz", logits=test_logits.astype(np.float32), labels=test_labels)
    pd.DataFrame(scores["confusion_matrix"], index=catalog.classes, columns=catalog.classes).rename_axis(
        "true \\ predicted"
    ).to_csv(out / "confusion_matrix.csv")
    reliability_diagram(test_logits, test_labels, out / "reliability.png", f"{spec.title}, {model_name}")
    write_json(metrics, out / "metrics.json")
    (out / RESUME_FILE).unlink(missing_ok=True)  # finished: best.pt is what is worth keeping
    if not args.eval_only:
        append_result({**metrics, "image_size": "x".join(map(str, args.image_size))}, args.results)
    log(
        ("top-5 n/a (5 classes or fewer)" if metrics["top5"] is None else f"top-5 {metrics['top5']:.2f}%")
        + f", balanced accuracy {metrics['balanced_accuracy']:.2f}%, macro-F1 "
        f"{metrics['macro_f1']:.2f}% | NLL {metrics['nll']:.4f}, Brier {metrics['brier']:.4f}, ECE "
        f"{metrics['ece']:.4f}"
        + (f" ({metrics['ece_temperature_scaled']:.4f} at T={temperature:.3f})" if temperature else "")
        + f" | {cost['gflops']:.2f} GFLOPs, {cost['latency_ms_batch1']:.1f} ms at batch 1, "
        f"{cost['throughput_images_per_s']:.0f} img/s at batch {args.bs}, peak memory {cost['peak_memory_mb']:.0f} MB"
    )
    log(f"{len(history)} epochs in {train_seconds:.0f}s; files in {out}")
    if paper is not None:
        log(f"Top-1 over test images: {test.top1:.2f}%; averaged over test batches as the original does:")
    log(f"Top-1 accuracy: {(test.batch_top1 if paper else test.top1):.2f}%")
    if world()[1] > 1:
        dist.destroy_process_group()
    return metrics


def describe_recipe(paper: PaperRecipe, args: argparse.Namespace) -> str:
    """The original's recipe in words, for the run's log."""
    augment = {
        "none": "no augmentation",
        "trivialaugment": "TrivialAugmentWide after the resize",
        "trivialaugment-first": "TrivialAugmentWide before the resize",
    }[paper.augment]
    norm = "the dataset's statistics" if paper.train_norm is None else "its own train and test statistics"
    phases = f"patience {args.patience} (AdamW)" + (f" and {args.sgd_patience} (SGD)" if paper.sgd_phase else "")
    return (
        f"{augment}, no flips; {norm}; no BatchNorm re-estimation (--bn-images "
        f"{args.bn_images}); {phases}; AdamW lr {args.lr:g}; a checkpoint replaces the best on "
        f"{'>=' if paper.ties_improve else '>'} batch-averaged test top-1 (test batches of "
        f"{args.bs * paper.eval_batch_multiple})"
    )


def measure_cost(model, forward, args, precision: Precision, history: list[dict], train_loader) -> dict:
    """What the backbone costs: FLOPs per image, inference speed, training speed and peak memory."""
    cost = {"gflops": gflops(model, args.image_size, precision.device)}
    cost.update(speed(forward, args.image_size, args.bs, precision))
    cost["seconds_per_epoch"] = float(np.mean([h["seconds"] for h in history])) if history else None
    cost["train_images_per_s"] = None
    if history and train_loader is not None:
        loader = train_loader.loader
        per_epoch = len(loader) * args.bs if loader.drop_last else len(loader.dataset)
        cost["train_images_per_s"] = per_epoch * len(history) / sum(h["train_pass_seconds"] for h in history)
    cost["peak_memory_mb"], cost["peak_memory_kind"] = peak_memory_mb(precision.device)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in cost.items()}


RESUME_FILE = "checkpoint.pt"
IDENTITY_KEYS = ("dataset", "dataset_options", "dataset_fingerprint", "classes", "split_hashes")
NOT_RESUME_RELEVANT = {"resume", "workers", "cache", "device", "results", "download", "data", "out"}


def run_config(args: argparse.Namespace) -> dict:
    """The command line as JSON-ready values."""
    return {
        k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
    }


def resume_state(args: argparse.Namespace, config: dict, identity: dict) -> dict | None:
    """The state a killed run in --out left (None if it died before finishing an epoch), after checking that the
    command line asks for the same run on the same data, split the same way."""
    if args.out is None or not args.out.is_dir():
        given = "no --out was given" if args.out is None else f"--out {args.out} is not an existing folder"
        raise UserError(f"--resume continues the run in --out DIR, but {given}. Pass the folder of the killed run.")
    if (args.out / "metrics.json").exists():
        raise UserError(f"--resume: the run in {args.out} already finished (it has metrics.json); nothing to do.")
    path = args.out / RESUME_FILE
    if not path.exists():
        return None
    state = read_resume_file(path)
    saved = json.loads(state["config"])
    changed = identity_differences(state["identity"], identity, saved, config) if "identity" in state else []
    if changed:
        raise UserError(
            f"--resume: the run in {args.out} was trained on other data or another split: {'; '.join(changed)}. "
            "Resume it with the dataset, --data and flags it was started with, or start a new run in a new --out."
        )
    differences = [
        f"{key} {saved.get(key)!r} there, {config.get(key)!r} now"
        for key in sorted(set(saved) | set(config))
        if key not in NOT_RESUME_RELEVANT and saved.get(key) != config.get(key)
    ]
    if differences:
        raise UserError(
            f"--resume: the run in {args.out} was started with other flags ({'; '.join(differences)}). Resume it "
            "with the flags it was started with, or start a new run in a new --out."
        )
    if "identity" not in state:
        raise UserError(
            f"--resume: {path} was written by an older version of this tool and records neither the data nor the "
            "split it was trained on, so resuming could continue on other images. Start a new run in a new --out."
        )
    return state


def rng_state() -> dict:
    """Every random stream a run draws from (data order and augmentation come from seed and epoch alone), so a
    resumed run draws exactly what an uninterrupted one would."""
    numpy_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [numpy_state[0], torch.from_numpy(numpy_state[1].astype(np.int64)), *numpy_state[2:]],
        "python": random.getstate(),
    }


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    random.setstate(tuple(tuple(part) if isinstance(part, list) else part for part in state["python"]))


def fit(
    model,
    forward,
    train_loader,
    select_loader,
    select_name,
    precision,
    args,
    meta,
    out,
    log,
    resumed=None,
    train_forward=None,
    paper: PaperRecipe | None = None,
):
    """The two-phase protocol. Every improvement is saved to best.pt, and each phase ends by reloading it, so
    phase 2 starts from the best weights so far and the model leaves `fit` at the selected checkpoint. Under
    `paper` (the original's recipe) an epoch improves on its batch-averaged top-1 alone, ties counting where the
    original's script compares with '>=', and the CIFAR scripts' SGD phase does not run, as there."""
    phases = [
        ("adamw", lambda p: torch.optim.AdamW(p, lr=args.lr, weight_decay=args.weight_decay), args.patience),
        ("sgd", lambda p: torch.optim.SGD(p, lr=args.sgd_lr, momentum=0.9), args.sgd_patience),
    ]
    if paper is not None and not paper.sgd_phase:
        log("The original's script for this dataset never runs its SGD phase (its patience counter is not reset), "
            "so under --protocol paper neither does this run.")  # fmt: skip
        phases = phases[:1]
    scaler = torch.amp.GradScaler(precision.device.type, enabled=precision.amp_dtype == torch.float16)
    best: dict = {}
    history: list[dict] = []
    first_phase, stale, phase_epochs = 0, 0, 0
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        scaler.load_state_dict(resumed["scaler"])
        best, history = resumed["best"], resumed["history"]
        first_phase, stale, phase_epochs = resumed["phase"], resumed["stale"], resumed["phase_epochs"]
        log(f"resuming after epoch {len(history)} ({phases[first_phase][0]}, {stale} epochs without improvement)")
    for index, (phase, make_optimizer, patience) in enumerate(phases):
        if index < first_phase:
            continue
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        if resumed is not None and index == first_phase:
            optimizer.load_state_dict(resumed["optimizer"])
            restore_rng(resumed["rng"])
        else:
            stale, phase_epochs = 0, 0
        while stale < patience and (args.max_epochs is None or phase_epochs < args.max_epochs):
            epoch = len(history) + 1
            started = time.perf_counter()
            train_loader.set_epoch(epoch)  # the sampler's order and the augmentation draws
            train_loss, train_top1 = train_one_epoch(
                train_forward or forward, train_loader, optimizer, scaler, precision, f"epoch {epoch} {phase}"
            )
            train_pass = time.perf_counter() - started
            recompute_bn_stats(forward, train_loader, precision, args.bn_images)
            selection = evaluate(forward, select_loader, precision, select_name)
            if not math.isfinite(selection.loss):
                raise Diverged(f"epoch {epoch} {phase}", f"{select_name} loss", selection.loss)
            phase_epochs += 1
            if paper is None:
                score = selection.top1
                improved = not best or (score, -selection.loss) > (best["top1"], -best["loss"])
            else:
                score = selection.batch_top1
                improved = not best or score > best["top1"] or (paper.ties_improve and score == best["top1"])
            if improved:
                best = {"epoch": epoch, "top1": score, "loss": selection.loss}
            if improved and is_main():
                atomic_save(
                    {"model": model.state_dict(), "meta": {**meta, "epoch": epoch, "phase": phase}}, out / "best.pt"
                )
            stale = 0 if improved else stale + 1
            seconds = time.perf_counter() - started
            history.append(
                {
                    "epoch": epoch,
                    "phase": phase,
                    "train_loss": round(train_loss, 6),
                    "train_top1": round(train_top1, 4),
                    f"{select_name}_loss": round(selection.loss, 6),
                    f"{select_name}_top1": round(score, 4),
                    "seconds": round(seconds, 2),
                    "train_pass_seconds": round(train_pass, 2),
                }
            )
            if is_main():
                atomic_save(  # everything needed to continue from here if the run is killed
                    {
                        "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "phase": index,
                        "stale": stale,
                        "phase_epochs": phase_epochs,
                        "best": best,
                        "history": history,
                        "rng": rng_state(),
                        "config": meta["config"],
                        "identity": {k: meta[k] for k in IDENTITY_KEYS},
                    },
                    out / RESUME_FILE,
                )
            log(
                f"epoch {epoch:3d} {phase:5s} train loss {train_loss:.4f} acc {train_top1:6.2f}% | {select_name} "
                f"loss {selection.loss:.4f} acc {score:6.2f}% | {seconds:5.1f}s" + ("  *best*" if improved else "")
            )
        if world()[1] > 1:
            dist.barrier()  # best.pt is written by the first process
        model.load_state_dict(torch.load(out / "best.pt", map_location=precision.device, weights_only=True)["model"])
    return best, history


def run(spec: DatasetSpec) -> None:
    """Entry point of a dataset script."""

    def guarded() -> None:
        with out_of_memory_as_user_error():
            main(spec)

    run_cli(guarded)
