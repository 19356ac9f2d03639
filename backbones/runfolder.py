"""The layout of the folders the tools write, in one place: each file a run (or a choose) writes and every reader
looks for, by name. Nothing else in the package spells a file name of a run folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _file(name: str) -> property:
    return property(lambda self: self.path / name, doc=f"<folder>/{name}")


@dataclass(frozen=True)
class RunFolder:
    """A fine-tuning run's folder (`--out`)."""

    path: Path

    config = _file("config.json")  # the command as given, to relaunch (--config) or resume it
    log = _file("log.txt")
    split = _file("split.csv")  # every sample, its label and split
    history = _file("history.csv")  # one row an epoch
    tensorboard = _file("tensorboard")  # with --tensorboard
    best = _file("best.pt")  # the selected weights and what they were trained on
    resume = _file("checkpoint.pt")  # the last epoch's full state, while the run is unfinished
    metrics = _file("metrics.json")  # written last: its presence marks a finished run
    test_outputs = _file("test_outputs.npz")  # logits and labels of the test split
    confusion = _file("confusion_matrix.csv")
    reliability = _file("reliability.png")
    robustness = _file("robustness.json")  # robustness.py's analysis of the run

    @property
    def finished(self) -> bool:
        return self.metrics.exists()


_ANY = RunFolder(Path())
MARKERS = tuple(path.name for path in (_ANY.metrics, _ANY.log, _ANY.split, _ANY.best))  # what makes a folder a run


@dataclass(frozen=True)
class ChooseFolder:
    """A choose.py folder: its settings, ranking, race and confirmation runs."""

    path: Path

    settings = _file("choose.json")  # the flags it was started with: its presence marks a choose's folder
    ranking = _file("ranking.csv")
    study = _file("race.db")  # the race's Optuna study (SQLite)
    pairs = _file("race")  # one training folder per (backbone, learning rate) pair: state, not finished runs
    race = _file("race.csv")
    race_plot = _file("race.png")
    confirmation = _file("confirm")  # the finalists' runs, one RunFolder each
    results = _file("results.csv")  # the confirmation runs' results table
    answer = _file("answer.json")
    summary = _file("choose.md")
    lock = _file("choose.lock")  # held by the worker taking a decision every worker shares (several may run)

    @staticmethod
    def lock_of(folder: Path) -> Path:
        """The lock a worker holds while it trains in `folder` (a race pair's or a confirmation run's)."""
        return folder.with_name(folder.name + ".lock")
