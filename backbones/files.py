"""Writing files safely and the tool's cache folder: shared by everything that writes, light enough for the report
(no PyTorch)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through a temporary file and one rename, so a killed writer never leaves a file that looks
    complete and concurrent writers never interleave."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as file:
            write(file)
        os.replace(temporary, path)
    except BaseException:  # a failed write (disk full, interrupted) leaves nothing behind
        temporary.unlink(missing_ok=True)
        raise


def cache_dir() -> Path:
    """Where the tool keeps what it can rebuild (folder indexes): $BACKBONES_CACHE, else the user's cache folder."""
    if os.environ.get("BACKBONES_CACHE"):
        return Path(os.environ["BACKBONES_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "backbones"
