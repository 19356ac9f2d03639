"""The race a `choose` ran, as choose.md and the report show it: where each (backbone, learning rate) pair left and
its validation top-1 at each rung, as a table and a plot. race.csv is read back like any other input: checked
before a value of it is used."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from backbones.runfolder import ChooseFolder  # noqa: E402
from backbones.runtable import markdown_table, md, number  # noqa: E402

MAX_PAIRS = 10_000


def rung_column(index: int, epochs: int) -> str:
    return f"val_top1_rung{index}_{epochs}ep"


def rungs_of(table: pd.DataFrame) -> list[tuple[int, int, str]]:
    """(index, epochs, column) of each rung's scores, in order."""
    found = [(re.fullmatch(r"val_top1_rung(\d+)_(\d+)ep", c), c) for c in table.columns]
    return sorted((int(m[1]), int(m[2]), c) for m, c in found if m)


def check_race(table: pd.DataFrame) -> str:
    """Why `table` is not a race table choose wrote ('' when it is)."""
    missing = [c for c in ("backbone", "lr", "last_rung", "finalist", "epochs", "seconds") if c not in table.columns]
    if missing:
        return f"it lacks the column(s) {', '.join(missing)}"
    if not 0 < len(table) <= MAX_PAIRS:
        return f"it holds {len(table)} pairs (1 to {MAX_PAIRS:,} expected)"
    rungs = rungs_of(table)
    if not rungs or [r[0] for r in rungs] != list(range(len(rungs))):
        return "its rung columns are not val_top1_rung0_<E>ep, val_top1_rung1_<E>ep, ..."
    try:
        numbers = table[["lr", "last_rung", "epochs", "seconds"] + [r[2] for r in rungs]].astype(float)
    except (TypeError, ValueError) as err:
        return f"a number column holds text ({err})"
    scores = numbers[[r[2] for r in rungs]]
    if not ((scores >= 0) & (scores <= 100) | scores.isna()).all().all():
        return "a validation top-1 lies outside 0-100"
    if not (numbers["lr"].map(math.isfinite) & (numbers["lr"] > 0)).all():
        return "a learning rate is not a positive number"
    if not numbers["last_rung"].between(-1, len(rungs) - 1).all() or (numbers[["epochs", "seconds"]] < 0).any().any():
        return "a rung, epoch count or time is out of range"
    if not table["finalist"].astype(str).isin(("True", "False")).all():
        return "the finalist column is not True/False"
    return ""


def read_race(path: Path) -> tuple[pd.DataFrame | None, str]:
    try:
        table = pd.read_csv(path, dtype={"backbone": str})
    except (OSError, ValueError, pd.errors.ParserError) as err:
        return None, f"{path} cannot be read as a table ({type(err).__name__})"
    problem = check_race(table)
    return (None, f"{path} is not a race table choose wrote: {problem}") if problem else (table, "")


def race_markdown(table: pd.DataFrame) -> str:
    """One row per pair: its learning rate, where it left, its validation top-1 at each rung, its cost."""
    columns = {
        "backbone": [md(b) for b in table["backbone"]],
        "lr": [f"{lr:g}" for lr in table["lr"]],
        "left": [
            "finalist" if str(finalist) == "True" else f"after rung {int(rung)}"
            for finalist, rung in zip(table["finalist"], table["last_rung"], strict=True)
        ],
        **{f"val top-1 % at {e} ep": [number(v, 2) for v in table[column]] for _, e, column in rungs_of(table)},
        "epochs": [int(e) for e in table["epochs"]],
        "seconds": [f"{s:.0f}" for s in table["seconds"]],
    }
    return markdown_table(columns)


def plot_race(table: pd.DataFrame, title: str, path: Path) -> None:
    """Validation top-1 at each rung's end, one line per pair, a cross where a pair left the race."""
    rungs = rungs_of(table)
    figure, axes = plt.subplots(figsize=(7, 4.5))
    colours = dict(zip(table["backbone"].unique(), plt.cm.tab20.colors * 8, strict=False))
    for _, row in table.iterrows():
        points = [(epochs, row[column]) for _, epochs, column in rungs if not pd.isna(row[column])]
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        colour = colours[row["backbone"]]
        axes.plot(xs, ys, "-o", color=colour, alpha=0.8, markersize=3, label=f"{row['backbone']} lr {row['lr']:g}")
        if str(row["finalist"]) != "True":
            axes.plot(xs[-1], ys[-1], "x", color=colour, markersize=9)
    axes.set_xscale("log", base=2)
    axes.set_xticks([epochs for _, epochs, _ in rungs], [str(epochs) for _, epochs, _ in rungs])
    axes.set_xlabel("epochs trained, at each rung's end")
    axes.set_ylabel("validation top-1 %")
    axes.set_title(f"{title} (x: left the race)")
    axes.legend(fontsize=6, ncol=2, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def race_sections(folders: Sequence[Path], out: Path) -> list[str]:
    """A section of report.md for each choose folder under `folders`: its race table and plot."""
    sections = []
    race_file = ChooseFolder(Path()).race.name
    paths = sorted(
        {p for folder in folders for p in folder.rglob(race_file) if ChooseFolder(p.parent).settings.exists()}
    )
    for number_, path in enumerate(paths, 1):
        table, problem = read_race(path)
        if table is None:
            sections.append(f"## Race {number_}\n\nLeft out: {md(problem)}.")
            continue
        image = f"race-{number_}.png"
        plot_race(table, f"Race {number_}", out / image)
        sections.append(
            f"## Race {number_}: {md(path.parent.name)}\n\nchoose.py's successive halving over (backbone, learning "
            "rate) pairs on the validation split: where each pair left, and its best validation top-1 at the end "
            f"of each rung.\n\n{race_markdown(table)}\n\n![Race {number_}]({image})"
        )
    return sections
