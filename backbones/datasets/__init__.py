"""One module per dataset; each declares a `SPEC` (a `common.spec.DatasetSpec`). What they share is in `common/`."""

from __future__ import annotations

import importlib
from pathlib import Path

NAMES = sorted(p.stem for p in Path(__file__).parent.glob("*.py") if p.stem != "__init__")


def spec(name: str):
    """The `DatasetSpec` of dataset `name` (a dataset script's name without .py)."""
    return importlib.import_module(f"backbones.datasets.{name}").SPEC
