"""The command line: argument types, the flags each tool shares, and the data configuration built from them
(`runconfig` resolves a fine-tuning run's whole configuration)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

from backbones import datasets, models
from backbones.datasets.common.spec import DatasetSpec, PaperRecipe
from backbones.errors import HelpFormatter
from backbones.flags import add_batch_size, add_device, add_out, add_workers, non_negative_int, positive_int
from backbones.loading import DataConfig


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
    build_parser: Callable[[DatasetSpec | None], argparse.ArgumentParser],
    argv: list[str] | None,
    known_only: bool = False,
) -> tuple[DatasetSpec, argparse.Namespace]:
    """For tools taking `--dataset NAME`, two passes: the dataset decides which of its own flags (BreakHis's
    -mag, ...) exist and the defaults shown by --help."""
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--dataset")
    first.add_argument("--data")  # declared, so that `--data DIR` is not read as an abbreviation of --dataset
    known, _ = first.parse_known_args(argv)
    spec = datasets.spec(known.dataset) if known.dataset in datasets.NAMES else None
    parser = build_parser(spec)
    args = parser.parse_known_args(argv)[0] if known_only else parser.parse_args(argv)
    return datasets.spec(args.dataset), args


def build_parser(spec: DatasetSpec) -> argparse.ArgumentParser:
    """The fine-tune command line, its flags in groups as --help shows them."""
    parser = argparse.ArgumentParser(
        description=f"Fine-tune an ImageNet-pretrained backbone on {spec.title} ({spec.domain}, "
        f"{spec.num_classes or 'any number of'} classes) and report test top-1 accuracy. Data: {spec.source}. "
        f"Layout: {spec.layout}.",
        formatter_class=HelpFormatter,
    )
    add_model_arguments(parser.add_argument_group("backbone"), spec)
    add_training_arguments(parser.add_argument_group("training"))
    add_data_arguments(parser.add_argument_group("data"), spec.default_data)
    if spec.add_arguments:
        spec.add_arguments(parser.add_argument_group(f"{spec.title} only"))
    add_run_arguments(parser.add_argument_group("run"))
    return parser


def add_model_arguments(group, spec: DatasetSpec) -> None:
    height, width = spec.image_size
    add = group.add_argument
    names = ", ".join(models.list_models())
    add("-model", "--model", dest="model", required=True, help=f"backbone: {names}, an alias, or timm:<name>")
    add_batch_size(group, 32, "batch size")
    add("--weights", default="imagenet", help="'imagenet' (pretrained), 'none' (random init) or a checkpoint FILE")
    add("--image-size", type=image_size, default=f"{height}x{width}", help="training/evaluation size, S or HxW")
    add(
        "--finetune",
        choices=("full", "head"),
        default="full",
        help="'full': train every weight; 'head': a linear probe (backbone and its BatchNorm statistics frozen)",
    )
    add("--compile", action="store_true", help="compile the model with torch.compile")


def add_training_arguments(group) -> None:
    add = group.add_argument
    add(
        "--protocol",
        choices=("val", "paper"),
        default="val",
        help="'val': select checkpoints on the validation split; 'paper': the original's recipe for the dataset, "
        "selection on the test set included (optimistic; for comparison with its table only; see the README)",
    )
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


def add_run_arguments(group) -> None:
    add = group.add_argument
    add(
        "--config",
        type=Path,
        default=None,
        help="a run's config.json: run again with the flags it was started with (flags given here win; a new "
        "--out, or a fresh folder by default)",
    )
    add_device(group)
    add_workers(group)
    add(
        "--log-every",
        type=positive_float,
        default=30.0,
        help="when the output is not a terminal (sweeps, Slurm, nohup): seconds between progress lines with "
        "images/s, loss and the time left (a terminal shows a progress bar)",
    )
    add(
        "--tensorboard",
        action="store_true",
        help="also log every epoch's numbers for TensorBoard, in <out>/tensorboard/ (needs: pip install tensorboard)",
    )
    add("--eval-only", action="store_true", help="evaluate --weights FILE on the test split without training")
    add_out(group, None, "this run's folder (default: a new folder under runs/)")
    add(
        "--resume",
        action="store_true",
        help="continue the killed run in --out from its last completed epoch, with the flags it was started with "
        "(read from its config.json; any given here must match)",
    )
    add("--results", type=Path, default=Path("results/results.csv"), help="results table to append a row to")


def dataset_options(spec: DatasetSpec, args: argparse.Namespace) -> dict:
    """The values of the dataset's own flags (BreakHis's -mag, ...): they choose which data a run saw."""
    return {name: getattr(args, name) for name in spec.own_options}


def paper_recipe(spec: DatasetSpec, args: argparse.Namespace) -> PaperRecipe | None:
    """The original's recipe for this dataset under --protocol paper; None under the default protocol."""
    return spec.paper_recipe(dataset_options(spec, args)) if args.protocol == "paper" else None


def data_config(spec: DatasetSpec, args: argparse.Namespace, paper: PaperRecipe | None = None) -> DataConfig:
    """Which images the command reads and how; with `paper` (`paper_recipe`), as the original's script read them.
    rank.py and bench.py read them as the default protocol does."""
    return DataConfig(
        data=args.data,
        seed=args.seed,
        image_size=args.image_size,
        batch_size=args.bs,
        paper=paper,
        own=dataset_options(spec, args),
        download=args.download,
        cache=args.cache,
        workers=args.workers,
        val_fraction=args.val_fraction,
        train_fraction=args.train_fraction,
        shots=args.shots,
    )
