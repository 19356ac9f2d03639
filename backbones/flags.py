"""The flags several tools share, declared once with one default each (light: the report's tools import it)."""

from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
from typing import TypeVar

Config = TypeVar("Config")

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def add_batch_size(parser, default: int | list[int], what: str, dest: str = "bs") -> None:
    """-bs/--batch-size, the original's spelling first; a list `default` takes several (bench.py's)."""
    many = {"nargs": "+"} if isinstance(default, list) else {}
    parser.add_argument("-bs", "--batch-size", dest=dest, type=positive_int, default=default, help=what, **many)


def add_device(parser, what: str = "where to run", default: str | None = "auto") -> None:
    """--device; sweep.py's default None leaves the choice to each run."""
    parser.add_argument("--device", default=default, help=f"{what}: auto, cpu, cuda, cuda:N or mps")


def add_workers(parser, what: str = "data-loading processes") -> None:
    parser.add_argument(
        "--workers", type=non_negative_int, default=DEFAULT_WORKERS, help=f"{what} (default: min(4, cores))"
    )


def add_models(parser, default: list[str] | None, what: str = "backbones") -> None:
    """--models (and the original's -models); `default` None makes it required."""
    parser.add_argument(
        "--models",
        "-models",
        nargs="+",
        required=default is None,
        default=default,
        help=f"{what}: names, aliases, timm:<name>, or 'all' (the eleven)",
    )


def add_runs(parser, what: str = "folders holding run folders (searched deeply)", default=(Path("runs"),)) -> None:
    """--runs; rank.py's default None checks against no runs."""
    parser.add_argument("--runs", type=Path, nargs="+", default=None if default is None else list(default), help=what)


def add_out(parser, default: Path | None, what: str) -> None:
    """--out: what the tool writes, a file or a folder, with the tool's own default (None: one named in `what`)."""
    parser.add_argument("--out", type=Path, default=default, help=what)


def frozen(config_class: type[Config], parsed: argparse.Namespace, **resolved) -> Config:
    """The tool's frozen config from its parsed flags, field by field (lists become tuples), so that no Namespace
    leaves `parse_args`; `resolved` gives the fields computed from the flags rather than read from one."""
    values = {}
    for field in dataclasses.fields(config_class):
        value = resolved[field.name] if field.name in resolved else getattr(parsed, field.name)
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return config_class(**values)
