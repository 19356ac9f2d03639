"""Writing files safely and the tool's cache folder: shared by everything that writes, light enough for the report
(no PyTorch)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from filelock import FileLock, Timeout

from backbones.errors import UserError


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


def shared_lock(path: Path) -> FileLock:
    """The lock file `path` in a folder other processes write too (a choose's). One that is a symbolic link is
    refused: a crafted folder could point it at a file of the user's, which opening a lock may truncate."""
    if path.is_symlink():
        raise UserError(f"{path} is a symbolic link, not a lock file this tool made. Remove it, then run again.")
    return FileLock(path)


@contextmanager
def claim(path: Path) -> Iterator[bool]:
    """Whether this process holds the lock file `path` for the block; where another process (here, or on a machine
    sharing the folder) holds it, False at once rather than a wait. The operating system releases a lock when its
    holder dies, kill -9 included, so a dead worker's claim passes to the next one that asks."""
    lock = shared_lock(path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()
