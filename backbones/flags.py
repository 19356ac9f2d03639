"""The flags several tools share, declared once with one default each (light: the report's tools import it)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def add_device(parser, what: str = "where to run") -> None:
    parser.add_argument("--device", default="auto", help=f"{what}: auto, cpu, cuda, cuda:N or mps")


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


def add_runs(parser) -> None:
    parser.add_argument(
        "--runs", type=Path, nargs="+", default=[Path("runs")], help="folders holding run folders (searched deeply)"
    )
