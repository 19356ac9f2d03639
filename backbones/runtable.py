"""Reading finished runs: find them, read and check each one, and put them in a table by setting and
configuration. Shared by report.py and rank.py, with the formatting both print with."""

from __future__ import annotations

import csv
import functools
import json
import math
import os
import unicodedata
import zipfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from backbones.errors import UserError
from backbones.files import atomic_write
from backbones.record import (
    ADDED_LATER,
    METRICS,
    NOT_CONFIGURATION,
    RANKING_ADDED_LATER,
    RANKING_KEY,
    RANKING_TEXT,
    REQUIRED,
    SETTING_DEFAULTS,
)
from backbones.runcheck import check_metrics, check_ranking, check_test_outputs, read_json, schema_problem
from backbones.runfolder import MARKERS, ChooseFolder, RunFolder


def find_runs(folders: Sequence[Path]) -> tuple[list[dict], list[tuple[str, str]]]:
    """Every finished run under `folders`, and (folder, reason) for everything that looked like a run but isn't."""
    runs, skipped = [], []
    for folder in folders:
        if not folder.is_dir():
            raise UserError(f"--runs {folder} is not a folder. Pass the folders your runs were written to.")
        found = 0
        for path, subfolders, files in os.walk(folder):
            choose = ChooseFolder(Path(path))
            if choose.settings.name in files and choose.pairs.name in subfolders:  # training state, not runs
                subfolders.remove(choose.pairs.name)
            if not any(name in files for name in MARKERS):
                continue
            subfolders.clear()  # a run folder holds no other runs
            found += 1
            run, reason = read_run(Path(path))
            if run is None:
                skipped.append((path, reason))
            else:
                runs.append(run)
        if not found:
            skipped.append((str(folder), "holds no runs"))
    return runs, skipped


def finished_runs(folders: Sequence[Path]) -> tuple[list[dict], list[tuple[str, str]]]:
    """`find_runs`, refusing folders that hold no finished run at all."""
    runs, skipped = find_runs(folders)
    if not runs:
        reasons = "; ".join(f"{path}: {reason}" for path, reason in skipped) or "nothing found"
        raise UserError(
            f"No finished runs under --runs {' '.join(map(str, folders))} ({reasons}). A finished run is a folder "
            "with the metrics.json that a dataset script writes at the end; point --runs at the folders given to "
            "--out (runs/ by default)."
        )
    return runs, skipped


def read_run(folder: Path) -> tuple[dict | None, str]:
    """One run's metrics, or None and why it cannot be used (`runcheck`: every field of its type and range, its
    test outputs of its shape)."""
    path = RunFolder(folder).metrics
    if not path.exists():
        return None, "no metrics.json: the run did not finish (killed or failed; see its log.txt)"
    run, problem = read_json(path)
    if problem:
        return None, problem
    if not isinstance(run, dict):
        return None, "metrics.json does not hold a run's metrics"
    problem = schema_problem(run, "metrics.json")
    if problem:
        return None, f"{problem}; update the tool to compare it"
    run = {**ADDED_LATER, **run}
    missing = [field for field in REQUIRED if field not in run]
    if missing:
        return None, f"written by an older version: metrics.json lacks {', '.join(missing)}"
    if run.get("eval_only"):
        return None, "an --eval-only evaluation of a checkpoint, not a fine-tuning run"
    problem = check_metrics(run)
    if problem:
        return None, f"metrics.json is malformed: {problem}"
    if RunFolder(folder).test_outputs.exists():
        try:
            logits, labels = test_outputs(str(folder))
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
            return None, f"test_outputs.npz cannot be read ({type(err).__name__}: {err})"
        problem = check_test_outputs(logits, labels, run)
        if problem:
            return None, problem
    run["folder"] = str(folder)
    return run, ""


def dataset_label(name: str, options: dict, domain: str, data: str | Path) -> str:
    """The data a run saw: the dataset, its own options (BreakHis -mag), and for your own folder, the folder."""
    return (
        name
        + (f" {Path(data).name}" if domain == "custom" else "")
        + "".join(f" {key}={value}" for key, value in sorted(options.items()))
    )


def setting_of(run: dict, label: str) -> dict:
    """What a number answers: runs in different settings are never averaged or ranked together. `label` names the
    data (`dataset_labels`)."""
    size = "x".join(map(str, run["image_size"]))
    setting = {
        "dataset": label,
        "domain": run["domain"],
        "protocol": run["protocol"],
        "weights": run["weights"],
        "resolution": size + (" (default)" if run["image_size"] == run["default_image_size"] else ""),
    }
    for key, default in SETTING_DEFAULTS.items():
        if run["config"].get(key, default) != default:
            setting[key] = run["config"][key]
    return setting


def dataset_labels(runs: list[dict]) -> list[str]:
    """A readable name for each run's data, one per dataset fingerprint: where different data share a name (two
    folders both called 'photos', a partial copy of a benchmark), each gets its fingerprint's first digits."""
    names = [
        dataset_label(run["dataset"], run["dataset_options"], run["domain"], run.get("data") or run["config"]["data"])
        for run in runs
    ]
    fingerprints = defaultdict(set)
    for name, run in zip(names, runs, strict=True):
        fingerprints[name].add(run["dataset_fingerprint"])
    return [
        name + (f" #{run['dataset_fingerprint'][:6]}" if len(fingerprints[name]) > 1 else "")
        for name, run in zip(names, runs, strict=True)
    ]


def runs_table(runs: list[dict]) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """One row per run with its setting, configuration and metrics; of repeated runs, only the newest is kept."""
    rows = []
    for run, label in zip(runs, dataset_labels(runs), strict=True):
        setting = setting_of(run, label)
        selected = run.get("best_selection_top1")  # absent from older runs; 0.0 is a score, not a missing one
        configuration = {k: v for k, v in run["config"].items() if k not in NOT_CONFIGURATION}
        rows.append(
            {
                "setting": json.dumps(setting, sort_keys=True),
                **setting,
                "model": run["model"],
                "configuration": json.dumps(configuration, sort_keys=True),
                "seed": run["seed"],
                "params": run["params"],
                "dataset_fingerprint": run["dataset_fingerprint"],
                "n_train": run["n_train"],
                "n_test": run["n_test"],
                "image_size": tuple(run["image_size"]),  # (height, width), for code; the setting's text is for people
                "default_size": run["image_size"] == run["default_image_size"],
                **{column: math.nan if run[column] is None else float(run[column]) for column, _, _ in METRICS},
                "selection_top1": math.nan if selected is None else float(selected),  # what the run selected on
                "finished": run["finished"],
                "folder": run["folder"],
                "history": run.get("history", []),  # as validated with the record: the plots read no file again
                "classes": run["classes"],
            }
        )
    table = pd.DataFrame(rows).sort_values(["finished", "folder"], ascending=False)
    key = ["setting", "model", "configuration", "seed"]
    repeated = table.duplicated(key, keep="first")
    newest = table.drop_duplicates(key).set_index(key)["folder"]
    skipped = [
        (
            row.folder,
            f"repeats {newest[tuple(getattr(row, k) for k in key)]} (same setting, configuration and seed); "
            "the newer run is used",
        )
        for row in table[repeated].itertuples()
    ]
    table = table[~repeated].copy()
    table["label"] = table.apply(lambda row: row_label(row, table), axis=1)
    return table.sort_values(["setting", "label", "seed"]).reset_index(drop=True), skipped


def row_label(row: pd.Series, table: pd.DataFrame) -> str:
    """The backbone's name, plus the configuration values that tell its rows apart within the setting."""
    same = table[(table["setting"] == row["setting"]) & (table["model"] == row["model"])]
    configurations = [json.loads(c) for c in same["configuration"].unique()]
    if len(configurations) == 1:
        return row["model"]
    own = json.loads(row["configuration"])
    differing = sorted(k for k in own if any(c.get(k) != own[k] for c in configurations))
    return f"{row['model']} ({', '.join(f'{k}={own[k]}' for k in differing)})"


@functools.cache  # a run's outputs serve every tie test, kappa pair, calibration and mistakes table it is in
def test_outputs(folder: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(logits, labels) a run saved for its test split (`test_outputs.npz`), read once; None where absent."""
    path = RunFolder(Path(folder)).test_outputs
    if not path.exists():
        return None
    with np.load(path) as saved:
        return saved["logits"], saved["labels"]


def correct_vector(folder: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, whether each test image was classified correctly) from a run's saved test logits."""
    saved = test_outputs(folder)
    if saved is None:
        return None
    logits, labels = saved
    return labels, logits.argmax(axis=1) == labels


def describe(setting: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in setting.items())


def number(value: float, decimals: int) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{decimals}f}"


def mean_std(board: pd.DataFrame, column: str, decimals: int) -> list[str]:
    """A board's `<column>_mean` and `_std` as 'mean ± std' (the mean alone for one seed, blank where none)."""
    return [
        number(mean, decimals) + (f" ± {number(std, decimals)}" if std > 0 else "")  # NaN (one seed) is not > 0
        if not math.isnan(mean)
        else ""
        for mean, std in zip(board[f"{column}_mean"], board[f"{column}_std"], strict=True)
    ]


MARKDOWN_SPECIAL = "\\|`*[]<>"  # with [ and ] escaped, no "![x](y)" or "[x](y)" can form


def md(value: object) -> str:
    """Text from a run or its data (a class, model or folder name) made safe inside report.md: on one line (control
    characters become spaces) and every character Markdown gives a meaning backslash-escaped, so a name can never
    add a table column, a heading, a link or an image. report_html.py undoes the escapes."""
    text = "".join(" " if unicodedata.category(c)[0] == "C" else c for c in str(value))
    return "".join("\\" + c if c in MARKDOWN_SPECIAL else c for c in text)


def check_new_file(path: Path, flag: str = "--out") -> None:
    """Before any long work: `path` must be new (this tool never overwrites a file, nor writes through a link left
    there) and its folder creatable and writable."""
    if path.exists() or path.is_symlink():
        raise UserError(f"{flag} {path} already exists; this tool never overwrites a file. Choose a new name.")
    folder = next(p for p in path.absolute().parents if p.exists())
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UserError(f"{flag} {path}: {folder} is not a writable folder. Choose a path in a writable place.")


def write_csv(frame: pd.DataFrame, path: Path, index: bool = False) -> None:
    """A table meant for spreadsheets: text cells a spreadsheet would run as a formula (=, +, -, @ first) get a
    leading apostrophe, and every text cell is quoted, so a name holding a line break (even a lone carriage
    return) stays one cell."""

    def neutral(value: object) -> object:
        return "'" + value if isinstance(value, str) and value[:1] in ("=", "+", "-", "@") else value

    frame = frame.map(neutral)
    if index:
        frame.index = frame.index.map(neutral)
    text = frame.to_csv(index=index, quoting=csv.QUOTE_NONNUMERIC)
    atomic_write(path, lambda file: file.write(text.encode()))  # a link planted at `path` is replaced, not followed


def markdown_table(columns: dict[str, list]) -> str:
    """A Markdown table; every heading and cell is escaped with `md` (numbers are left as they are)."""
    headings = list(columns)
    lines = ["| " + " | ".join(map(md, headings)) + " |", "|" + "|".join(" --- " for _ in headings) + "|"]
    lines += ["| " + " | ".join(md(v) for v in row) + " |" for row in zip(*columns.values(), strict=True)]
    return "\n".join(lines)


def read_rankings(paths: Sequence[Path], what: str = "--rankings") -> pd.DataFrame:
    """rank.py's tables, one row per (data, weights, resolution, training data size, backbone); a later file wins.
    `what` names the file in an error (the flag that gave it)."""
    tables = []
    for path in paths:
        try:
            tables.append(pd.read_csv(path, dtype=dict.fromkeys(RANKING_TEXT, str)))
        except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise UserError(f"{what} {path} cannot be read ({err}); pass CSVs written by rank.py.") from err
        tables[-1] = tables[-1].assign(**{k: v for k, v in RANKING_ADDED_LATER.items() if k not in tables[-1]})
        problem = check_ranking(tables[-1])
        if problem:
            raise UserError(f"{what} {path} is not a table rank.py wrote: {problem}. Rerun rank.py to get one.")
    if not tables:
        return pd.DataFrame()
    return pd.concat(tables).drop_duplicates(list(RANKING_KEY), keep="last")
