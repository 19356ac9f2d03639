"""One fine-tuning run's configuration: resolved once from its command line (and from the config.json of a run it
relaunches or resumes) into a frozen, typed `RunConfig`, and written back to config.json as flag values by name."""

from __future__ import annotations

import argparse
import importlib.util
from dataclasses import dataclass
from pathlib import Path

from backbones import models
from backbones.datasets.common.spec import DatasetSpec, PaperRecipe
from backbones.errors import UserError
from backbones.flags import frozen
from backbones.loading import DataConfig
from backbones.options import build_parser, data_config, paper_recipe
from backbones.record import SCHEMA
from backbones.runcheck import read_json, schema_problem
from backbones.runfolder import RunFolder
from backbones.train_common import TrainConfig

RELAUNCH_DROPS = ("out", "resume", "config")  # what --config FILE leaves behind: a relaunch is a new run


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
    everywhere after it. `given` holds the flags the command gave (with those of the run it relaunches or resumes),
    `flags` every flag's value; both by argparse name and JSON-ready, as config.json keeps them."""

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
    given: dict
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

    def to_json(self) -> dict:
        """config.json: the flags given by name (what `resolve` rebuilds this configuration from), every flag's
        value, and an equivalent command line to read, or to run with an older version of the tool."""
        script = f"{self.spec.name}.py"
        return {
            "schema": SCHEMA,
            "script": script,
            "argv": command_line(self.spec, self.given),
            "given": self.given,
            "config": self.flags,
        }


def resolve(spec: DatasetSpec, argv: list[str], base: dict | None = None) -> RunConfig:
    """The run `argv` asks for, checked: on top of `base` (typed flag values by name; by default, with --config FILE
    or --resume --out DIR, the flags that run was given), the protocol's defaults filled in and, with no --seed, the
    seed recorded in a --weights checkpoint (0 otherwise). A `UserError` names a flag that cannot work."""
    now = given_flags(spec, argv)
    start = saved_flags(spec, now) if base is None else base
    parser = build_parser(spec)
    for group in parser._mutually_exclusive_groups:  # --shots given now replaces a saved --train-fraction
        names = {action.dest for action in group._group_actions}
        if names & set(now):
            start = {name: value for name, value in start.items() if name not in names}
    parser.set_defaults(**start)
    for action in parser._actions:  # a flag the saved run gave (its -model) need not be given again
        action.required = action.required and action.dest not in start
    args = with_protocol_defaults(spec, parser.parse_args(argv))
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
    given = {name: value for name, value in {**start, **now}.items() if name != "config"}  # its flags absorbed
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
        given=json_ready(given),
        flags=json_ready(vars(args)),
    )


def given_flags(spec: DatasetSpec, argv: list[str]) -> dict:
    """The flags `argv` gives, by argparse name, typed as the parser reads them; those left to their default are
    absent."""
    parser, quiet = build_parser(spec), build_parser(spec)
    for action in quiet._actions:  # argparse tells which flags were given only when nothing else is filled in
        action.default, action.required = argparse.SUPPRESS, False
    quiet.format_usage, quiet.format_help = parser.format_usage, parser.format_help  # --help shows the defaults
    return vars(quiet.parse_args(argv))


def saved_flags(spec: DatasetSpec, now: dict) -> dict:
    """The flags an earlier run was given, typed, for the flags given now (`now`) to override: those of `--config
    FILE` (less its folder and --resume, so a relaunch is a new run), or with `--resume --out DIR` those of DIR's
    run. Empty without either, and for a run killed before it wrote its config.json."""
    if now.get("config") is not None:
        return {name: value for name, value in read_command(spec, now["config"]).items() if name not in RELAUNCH_DROPS}
    if now.get("resume") and now.get("out") is not None and RunFolder(now["out"]).config.exists():
        return read_command(spec, RunFolder(now["out"]).config)
    return {}


def read_command(spec: DatasetSpec, source: Path) -> dict:
    """The flags a run's config.json says it was given, each checked by the type its flag has on this command line;
    a file that is not such a config.json, is of another dataset's script or of a newer schema is refused."""
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
        script = saved["script"]
        if not isinstance(script, str):
            raise TypeError("its script is not a name")
        if script != f"{spec.name}.py":
            raise UserError(f"{source} is a run of {script}, not of {spec.name}.py; relaunch it with {script}.")
        if "given" not in saved:  # written before config.json kept the flags by name: its command line says them
            if not (isinstance(saved["argv"], list) and all(isinstance(token, str) for token in saved["argv"])):
                raise TypeError("its argv is not a command line")
            return given_flags(spec, saved["argv"])
        if not isinstance(saved["given"], dict):
            raise TypeError("its given flags are not flags by name")
        return typed_flags(spec, saved["given"])
    except (ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"{source} cannot be read as a run's config.json ({err}). Pass the config.json a run wrote in its folder."
        ) from err


def typed_flags(spec: DatasetSpec, values: dict) -> dict:
    """JSON flag values by name (`json_ready`'s) read back through the parser's own types and choices, so a value
    from a file is checked as strictly as one typed on the command line. A ValueError names the first bad one."""
    actions = {action.dest: action for action in build_parser(spec)._actions if action.option_strings}
    typed = {}
    for name, value in values.items():
        action = actions.get(name)
        if action is None or name == "help":
            raise ValueError(f"{name!r} is not a flag of {spec.name}.py")
        typed[name] = typed_value(action, value)
    return typed


def typed_value(action: argparse.Action, value: object) -> object:
    flag = action.option_strings[-1]
    if action.nargs == 0:  # a switch: --compile, --download/--no-download
        if not isinstance(value, bool):
            raise ValueError(f"{flag} is {value!r}, not true or false")
        return value
    if value is None and action.default is None:
        return None
    if isinstance(value, list) and value and all(type(side) is int for side in value):
        text = "x".join(map(str, value))  # an --image-size
    elif isinstance(value, (str, int, float)) and not isinstance(value, bool):
        text = str(value)
    else:
        raise ValueError(f"{flag} is {value!r}, not a value of that flag")
    try:
        parsed = action.type(text) if action.type else text
    except (argparse.ArgumentTypeError, ValueError, TypeError) as err:
        raise ValueError(f"{flag} is {value!r}: {err}") from err
    if action.choices is not None and parsed not in action.choices:
        raise ValueError(f"{flag} is {value!r}, not one of {', '.join(map(str, action.choices))}")
    return parsed


def command_line(spec: DatasetSpec, given: dict) -> list[str]:
    """The command line that gives the flags `given` (JSON values by name), in the parser's order."""
    tokens = []
    for action in build_parser(spec)._actions:
        if action.dest not in given or not action.option_strings:
            continue
        value = given[action.dest]
        longest = max(action.option_strings, key=len)
        if isinstance(action, argparse.BooleanOptionalAction):
            tokens.append(action.option_strings[0] if value else longest)  # --download, --no-download
        elif action.nargs == 0:
            tokens += [longest] if value else []
        elif value is not None:
            tokens += [longest, "x".join(map(str, value)) if isinstance(value, list) else str(value)]
    return tokens


def train_config(args: argparse.Namespace, paper: PaperRecipe | None) -> TrainConfig:
    return frozen(TrainConfig, args, paper=paper, sgd_phase=True)  # the race alone trains AdamW only


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


def json_ready(values: dict | argparse.Namespace) -> dict:
    """Flag values by argparse name as JSON-ready data (the `given` and `config` of config.json)."""
    values = vars(values) if isinstance(values, argparse.Namespace) else values
    return {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v) for k, v in values.items()}
