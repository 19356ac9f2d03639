"""What a run leaves on disk: its folder and log, atomic writes, the results table, provenance and resume state."""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import os
import platform
import subprocess
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from filelock import FileLock

from backbones.errors import UserError
from backbones.files import atomic_write, cache_dir
from backbones.loading import identity_differences
from backbones.record import RESULT_COLUMNS, config_differences
from backbones.runfolder import RunFolder
from backbones.runtime import is_main

PROJECT_DIR = Path(__file__).resolve().parents[1]


class RunLog:
    """Prints a line and appends it to the run's log file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, line: str) -> None:
        if is_main():
            print(line, flush=True)
            self.to_file(line)

    def to_file(self, line: str) -> None:
        """Into the log file only (a line already shown, such as a warning given before the folder existed)."""
        if is_main():
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


def write_history(history: list[dict], path: Path) -> None:
    """The per-epoch history so far as a CSV, rewritten whole after every epoch (so a resumed run's is complete)."""
    atomic_write(path, lambda file: file.write(pd.DataFrame(history).to_csv(index=False).encode()))


def tensorboard_logger(folder: Path) -> Callable[[list[dict]], None]:
    """An `on_epoch` hook writing each epoch's numbers as TensorBoard scalars (the optional `tensorboard` package)."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(folder))

    def log(history: list[dict]) -> None:
        row = history[-1]
        for key, value in row.items():
            if key not in ("epoch", "phase"):
                writer.add_scalar(key, value, row["epoch"])
        writer.flush()

    return log


def atomic_save(obj: object, path: Path) -> None:
    """torch.save through a temporary file: a full disk or a kill leaves the previous file whole."""
    try:
        atomic_write(path, lambda file: torch.save(obj, file))
    except (OSError, RuntimeError) as err:  # torch.save reports a failed write as RuntimeError
        raise UserError(
            f"Saving {path} failed ({getattr(err, 'strerror', None) or err}). The previous {path.name} is untouched. "
            "Free some space (or fix the folder's permissions), then continue the run with --resume --out "
            f"{path.parent}."
        ) from err


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
    locks = cache_dir() / "locks"  # not beside the table: the user's folder stays as they left it
    locks.mkdir(parents=True, exist_ok=True)
    lock = locks / f"{hashlib.sha1(str(table.resolve()).encode()).hexdigest()[:16]}.lock"
    with FileLock(lock), open(table, "a+", newline="") as file:
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
    """Every library that shapes the numbers: the models, the image decoding and resizing, the splits and metrics."""
    import PIL
    import scipy
    import sklearn
    import timm
    import torchvision

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
        "scikit-learn": sklearn.__version__,
        "scipy": scipy.__version__,
        "pandas": pd.__version__,
    }


# what a killed run's checkpoint.pt holds (train_common.save_progress): the states, where the fit stood, its flags
RESUME_KEYS = ("model", "optimizer", "scaler", "rng", "config", "phase", "stale", "phase_epochs", "best", "history")


def read_resume_file(path: Path) -> dict:
    """A killed run's checkpoint.pt, refused with advice if it cannot be read or is not such a state."""
    restart = (
        "Delete it to restart this run from its first epoch in the same folder, or start a new run in a new --out."
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for a truncated or foreign file
        raise UserError(
            f"--resume: {path} cannot be read ({type(err).__name__}: {err}); it is damaged or truncated. {restart}"
        ) from err
    missing = [key for key in RESUME_KEYS if key not in state] if isinstance(state, dict) else list(RESUME_KEYS)
    if missing or not isinstance(state["config"], str) or not isinstance(state["history"], list):
        raise UserError(
            f"--resume: {path} is not the state a killed run of this tool leaves (it lacks or garbles "
            f"{', '.join(missing) or 'config or history'}). {restart}"
        )
    return state


def resume_state(out: Path | None, config: dict, identity: dict) -> dict | None:
    """The state a killed run in `out` left (None if it died before finishing an epoch), after checking that the
    command line (its flag values, `config`) asks for the same run on the same data, split the same way."""
    if out is None or not out.is_dir():
        given = "no --out was given" if out is None else f"--out {out} is not an existing folder"
        raise UserError(f"--resume continues the run in --out DIR, but {given}. Pass the folder of the killed run.")
    if RunFolder(out).finished:
        raise UserError(f"--resume: the run in {out} already finished (it has metrics.json); nothing to do.")
    path = RunFolder(out).resume
    if not path.exists():
        return None
    state = read_resume_file(path)
    saved = json.loads(state["config"])
    changed = identity_differences(state["identity"], identity, saved, config) if "identity" in state else []
    if changed:
        raise UserError(
            f"--resume: the run in {out} was trained on other data or another split: {'; '.join(changed)}. "
            "Resume it with the dataset, --data and flags it was started with, or start a new run in a new --out."
        )
    differences = config_differences(saved, config)
    if differences:
        raise UserError(
            f"--resume: the run in {out} was started with other flags ({'; '.join(differences)}). Resume it "
            "with the flags it was started with, or start a new run in a new --out."
        )
    if "identity" not in state:
        raise UserError(
            f"--resume: {path} was written by an older version of this tool and records neither the data nor the "
            "split it was trained on, so resuming could continue on other images. Start a new run in a new --out."
        )
    return state


def check_evaluation_split(config: dict, meta: dict, identity: dict) -> None:
    """--eval-only must score only images the checkpoint never trained or selected on, with its own class order
    (`config`: the command's flag values)."""
    if "split_hashes" not in meta:
        raise UserError(
            f"--eval-only: --weights {config['weights']} records no split (a plain state dict, or a checkpoint written "
            "by an older version), so nothing shows that its test images were never trained or selected on. Evaluate a "
            "best.pt written by this version of the tool, or fine-tune with --weights FILE instead."
        )
    differences = identity_differences(meta, identity, json.loads(meta.get("config", "{}")), config)
    if differences:
        raise UserError(
            f"--eval-only: --weights {config['weights']} was trained on another split than this command draws: "
            f"{'; '.join(differences)}. Its scores here could include images it trained or selected on, or use "
            "another class order. Evaluate it with the dataset, --data and split flags it was trained with."
        )
