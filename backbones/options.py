"""The command line: argument types, the flags each tool shares, and the typed configurations built from them."""

from __future__ import annotations

import argparse
import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from backbones import datasets, models
from backbones.datasets.common.spec import DatasetSpec, PaperRecipe
from backbones.errors import HelpFormatter, UserError
from backbones.flags import add_device, add_out, add_workers, non_negative_int
from backbones.loading import DataConfig
from backbones.runcheck import read_json, schema_problem
from backbones.runfolder import RunFolder
from backbones.train_common import TrainConfig


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
    add("-bs", "--batch-size", dest="bs", type=positive_int, default=32, help="batch size")
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


def with_saved_flags(spec: DatasetSpec, argv: list[str]) -> list[str]:
    """`argv` with the flags of an earlier run in front, so that the flags given now win: those of `--config FILE`
    (its folder and --resume left out, so a relaunch is a new run), or with `--resume --out DIR` those DIR's run
    was started with."""
    wanted = argparse.ArgumentParser(add_help=False)
    wanted.add_argument("--config", type=Path)
    wanted.add_argument("--resume", action="store_true")
    wanted.add_argument("--out", type=Path)
    given, _ = wanted.parse_known_args(argv)
    source = given.config or (RunFolder(given.out).config if given.resume and given.out else None)
    if source is None or (given.resume and not source.exists()):  # a run killed before writing it: flags as given
        return argv
    saved, problem = read_json(source)
    try:
        if problem:
            raise ValueError(problem)
        if not isinstance(saved, dict):
            raise TypeError("it holds no JSON object")
        newer = schema_problem(saved, str(source))
        if newer:
            raise UserError(
                f"{newer}: its flags may mean something else here. Update backbones to relaunch or resume that run."
            )
        script, flags = saved["script"], [str(flag) for flag in saved["argv"]]
        if not isinstance(script, str) or not isinstance(saved["argv"], list):
            raise TypeError("script or argv is of another type")
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"{source} cannot be read as a run's config.json ({err}). Pass the config.json a run wrote in its folder."
        ) from err
    if script != f"{spec.name}.py":
        raise UserError(f"{source} is a run of {script}, not of {spec.name}.py; relaunch it with {script}.")
    if given.config is not None:
        flags = without_flags(flags, ("--out", "--resume", "--config"))
    return [*flags, *without_flags(argv, ("--config",))]


def without_flags(argv: list[str], names: tuple[str, ...]) -> list[str]:
    """`argv` less the flags `names` and their values (`--out DIR` and `--out=DIR`; `--resume` takes none)."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token.split("=", 1)[0] in names:
            skip = "=" not in token and token != "--resume"
        else:
            kept.append(token)
    return kept


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


def train_config(args: argparse.Namespace, paper: PaperRecipe | None) -> TrainConfig:
    return TrainConfig(
        lr=args.lr,
        weight_decay=args.weight_decay,
        sgd_lr=args.sgd_lr,
        patience=args.patience,
        sgd_patience=args.sgd_patience,
        max_epochs=args.max_epochs,
        bn_images=args.bn_images,
        paper=paper,
        log_every=args.log_every,
    )


def with_protocol_defaults(spec: DatasetSpec, args: argparse.Namespace) -> argparse.Namespace:
    """`args` with the flags whose default depends on the protocol filled in, so that the saved configuration holds
    the values used (a copy: what was parsed is left as it was)."""
    paper = paper_recipe(spec, args)
    defaults = {"patience": 10, "lr": 1e-3, "bn_images": 2048} if paper is None else {
        "patience": paper.patience[0], "lr": paper.lr, "bn_images": 0, "sgd_patience": paper.patience[1]
    }  # fmt: skip
    if args.patience is not None or paper is None:  # a patience the user gave applies to both phases
        defaults["sgd_patience"] = args.patience or defaults["patience"]
    filled = {name: value for name, value in defaults.items() if getattr(args, name) is None}
    return argparse.Namespace(**{**vars(args), **filled})


@dataclass(frozen=True)
class Protocol:
    """How a run selects its checkpoints: 'val' on the validation split, or 'paper', the original's recipe for the
    dataset, selecting on the test set."""

    name: str
    recipe: PaperRecipe | None = None

    @property
    def selection(self) -> str:
        """The split checkpoints are chosen on."""
        return "test" if self.recipe is not None else "val"


@dataclass(frozen=True)
class RunConfig:
    """One fine-tuning run as its command line defines it, every default resolved: built once by `resolve`, read
    everywhere after it. `flags` is the same configuration by flag name, as config.json and the results table
    store it."""

    spec: DatasetSpec
    model: str  # the registry's name (an alias resolved)
    weights: models.Weights
    finetune: str  # 'full' or 'head'
    compile: bool
    protocol: Protocol
    data: DataConfig
    train: TrainConfig
    device: str
    tensorboard: bool
    eval_only: bool
    out: Path | None
    resume: bool
    results: Path
    flags: dict

    @property
    def seed(self) -> int:
        return self.data.seed

    @property
    def image_size(self) -> tuple[int, int]:
        return self.data.image_size

    @property
    def batch_size(self) -> int:
        return self.data.batch_size


def resolve(spec: DatasetSpec, argv: list[str]) -> RunConfig:
    """The run `argv` asks for, checked: the protocol's defaults filled in and, with no --seed, the seed recorded in
    a --weights checkpoint (0 otherwise). A `UserError` names a flag that cannot work."""
    args = with_protocol_defaults(spec, build_parser(spec).parse_args(argv))
    if args.eval_only and args.weights in ("imagenet", "none"):
        raise UserError(
            "--eval-only evaluates a trained checkpoint: pass it with --weights FILE (e.g. runs/<run>/best.pt)."
        )
    weights = models.Weights.parse(args.weights)  # a file is read here, once
    if args.seed is None:
        args = argparse.Namespace(**{**vars(args), "seed": int(weights.meta.get("seed", 0))})
    model = models.resolve_name(args.model)
    models.check_input_size(model, args.image_size)
    if args.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError(
            "--tensorboard needs the tensorboard package, which is not installed: pip install tensorboard. Or leave "
            "the flag out: history.csv in the run folder holds the same numbers."
        )
    recipe = paper_recipe(spec, args)
    return RunConfig(
        spec=spec,
        model=model,
        weights=weights,
        finetune=args.finetune,
        compile=args.compile,
        protocol=Protocol(args.protocol, recipe),
        data=data_config(spec, args, recipe),
        train=train_config(args, recipe),
        device=args.device,
        tensorboard=args.tensorboard,
        eval_only=args.eval_only,
        out=args.out,
        resume=args.resume,
        results=args.results,
        flags=flag_values(args),
    )


def flag_values(args: argparse.Namespace) -> dict:
    """Every flag's value as JSON-ready data, by its argparse name (the `config` of config.json)."""
    return {
        k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
    }
