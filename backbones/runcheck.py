"""What a run's files must hold before a number from them is used: run folders are shared (a colleague's runs/
unpacked beside yours, a report folder sent by mail), so report.py and robustness.py read them as untrusted.
Each check returns '' when the file is sound, else the reason the run (or analysis) is skipped."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from backbones import datasets
from backbones.record import (
    FAMILIES,
    METRICS,
    RANKING_ADDED_LATER,
    RANKING_KEY,
    RANKING_SCORES,
    RANKING_TEXT,
    SCHEMA,
)

PERCENT = {"top1", "top5", "balanced_accuracy", "macro_f1"}
OPTIONAL_NUMBERS = {"top5", "ece_temperature_scaled", "peak_memory_mb"}  # None where not applicable or measurable
MODEL_NAME = re.compile(r"(timm:)?[A-Za-z0-9_.\-]+")  # a registered name or timm:<name>: letters, digits, _.-
HEX = re.compile(r"[0-9a-f]{6,64}")
MAX_FILE_BYTES = 256 * 2**20  # no run file of this tool comes near; a larger one is not read


def read_json(path: Path) -> tuple[object, str]:
    """(the parsed file, '') or (None, why it cannot be read): unreadable, not JSON, nested too deeply for
    Python's parser, or far larger than any file this tool writes."""
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            return None, f"{path.name} is {path.stat().st_size / 2**20:.0f} MiB, larger than any file a run writes"
        return json.loads(path.read_text()), ""
    except (OSError, UnicodeDecodeError, ValueError) as err:
        return None, f"{path.name} cannot be read ({type(err).__name__}: {err})"
    except RecursionError:
        return None, f"{path.name} is nested too deeply to be a file this tool wrote"


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_count(value: object, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def is_size(value: object) -> bool:
    return isinstance(value, list) and len(value) == 2 and all(is_count(side, 1) for side in value)


def is_text(value: object) -> bool:
    return isinstance(value, str) and value.isprintable()


def schema_problem(record: dict, name: str) -> str:
    """'' where this version reads the run file `record` (every schema up to `SCHEMA`; a file without one predates
    versioning, schema 0), else why not: a newer version's fields may mean something else."""
    schema = record.get("schema", 0)
    if is_count(schema) and schema <= SCHEMA:
        return ""
    return f"{name} is of schema {schema!r}, newer than this version of the tool reads ({SCHEMA})"


def check_metrics(run: dict) -> str:
    """metrics.json: every field a comparison reads, of its type and in its range."""
    for column, _, _ in METRICS:
        value = run[column]
        if value is None and column in OPTIONAL_NUMBERS:
            continue
        if not is_number(value):
            return f"{column} is {value!r}, not a finite number"
        if column in PERCENT and not 0 <= value <= 100:
            return f"{column} is {value}, outside 0-100%"
        if value < 0:
            return f"{column} is {value}, below 0"
    selected = run.get("best_selection_top1")  # absent from older runs, None for --eval-only
    if selected is not None and not (is_number(selected) and 0 <= selected <= 100):
        return f"best_selection_top1 is {selected!r}, not a top-1 in 0-100%"
    temperature = run.get("temperature")  # None under --protocol paper (no validation split to fit it on)
    if temperature is not None and not (is_number(temperature) and temperature > 0):
        return f"temperature is {temperature!r}, not a number above 0"
    if "data" in run and not is_text(run["data"]):
        return f"data is {run['data']!r}, not a folder's path"
    if run["ece"] > 1 or run["brier"] > 2:
        return f"ece {run['ece']} or brier {run['brier']} is beyond its largest possible value"
    if run["dataset"] not in datasets.NAMES:
        return f"dataset {run['dataset']!r} is not a dataset of this tool"
    if not (isinstance(run["model"], str) and MODEL_NAME.fullmatch(run["model"])):
        return f"model {run['model']!r} is not a backbone name"
    if run["protocol"] not in ("val", "paper"):
        return f"protocol {run['protocol']!r} is not val or paper"
    for field in ("weights", "domain", "finished"):
        if not is_text(run[field]):
            return f"{field} is {run[field]!r}, not a line of text"
    if not (isinstance(run["dataset_fingerprint"], str) and HEX.fullmatch(run["dataset_fingerprint"])):
        return "dataset_fingerprint is not a hash"
    for field, kind in (("config", dict), ("dataset_options", dict)):
        if not isinstance(run[field], kind):
            return f"{field} is {run[field]!r}, not a {kind.__name__}"
    if not all(is_text(key) and (value is None or is_number(value) or is_text(value) or isinstance(value, bool))
               for key, value in run["dataset_options"].items()):  # fmt: skip
        return "dataset_options holds something other than flags and their values"
    for field in ("image_size", "default_image_size"):
        if not is_size(run[field]):
            return f"{field} is {run[field]!r}, not [height, width]"
    if not is_count(run["seed"]):
        return f"seed is {run['seed']!r}, not a whole number"
    for field in ("n_train", "n_val"):
        if not is_count(run[field]):
            return f"{field} is {run[field]!r}, not a count"
    if not is_count(run["n_test"], 1):
        return f"n_test is {run['n_test']!r}, not a count of at least one image"
    classes, num_classes = run.get("classes"), run.get("num_classes")
    if not (is_count(num_classes, 1) and isinstance(classes, list) and len(classes) == num_classes):
        return "classes and num_classes are missing or disagree"
    if not all(isinstance(name, str) for name in classes):
        return "classes holds something other than names"
    return check_history(run.get("history", []))


def check_history(history: object) -> str:
    """The per-epoch history that report.py plots: a list of rows of numbers (and the phase's name)."""
    if not isinstance(history, list):
        return "history is not a list of epochs"
    for row in history:
        if not isinstance(row, dict) or not is_text(row.get("phase", "")):
            return "history holds something other than epochs"
        if not all(is_number(value) for key, value in row.items() if key != "phase"):
            return "history holds a value that is not a finite number"
        if "epoch" not in row or "train_loss" not in row or not any(k.endswith("_top1") for k in row):
            return "history lacks epoch, train_loss or a top-1 column"
    return ""


def check_test_outputs(logits: np.ndarray, labels: np.ndarray, run: dict) -> str:
    """test_outputs.npz against its run: one row of finite logits per test image, a column per class, labels that
    name a class."""
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels):
        return f"test_outputs.npz holds logits {logits.shape} and labels {labels.shape}, not one row per image"
    if len(labels) != run["n_test"]:
        return f"test_outputs.npz holds {len(labels)} test images, metrics.json says {run['n_test']}"
    if logits.shape[1] != run["num_classes"]:
        return f"test_outputs.npz has {logits.shape[1]} logit columns for {run['num_classes']} classes"
    if not np.issubdtype(logits.dtype, np.floating) or not np.isfinite(logits).all():
        return "test_outputs.npz holds logits that are not finite numbers"
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() >= run["num_classes"]:
        return f"test_outputs.npz holds labels outside 0-{run['num_classes'] - 1}"
    return ""


def check_analysis(analysis: object, run: dict) -> str:
    """robustness.json: of its types, and written for this run (same data, model and seed, and a clean top-1 equal
    to the one the run recorded); an analysis copied from another run, or made up, is left out."""
    if not isinstance(analysis, dict):
        return "robustness.json does not hold an analysis"
    problem = schema_problem(analysis, "robustness.json")
    if problem:
        return problem
    for field in ("request", "clean", "corruptions", "invariance", "seconds"):
        if not isinstance(analysis.get(field), dict):
            return f"robustness.json lacks {field}"
    if analysis.get("dataset_fingerprint") is None:
        return "robustness.json was written by an older version, which does not say which data it analysed (rerun "
        "robustness.py --force)"
    if (analysis.get("dataset_fingerprint"), analysis.get("model"), analysis.get("seed")) != (
        run["dataset_fingerprint"], run["model"], run["seed"]
    ):  # fmt: skip
        return "robustness.json was written for another run (data, model or seed differ)"
    clean = analysis["clean"]
    if not (is_number(clean.get("recorded_top1")) and abs(clean["recorded_top1"] - run["top1"]) < 1e-9):
        return "robustness.json's clean top-1 is not the one this run recorded"
    for field in ("mean_corruption_top1", "relative_drop"):
        value = analysis.get(field)
        if value is not None and not is_number(value):
            return f"robustness.json's {field} is {value!r}, not a finite number"
    if analysis.get("mean_corruption_top1") is not None and not 0 <= analysis["mean_corruption_top1"] <= 100:
        return "robustness.json's mean corruption top-1 lies outside 0-100%"
    shares = analysis.get("image_corruption_top1")
    if not (isinstance(shares, list) and len(shares) == run["n_test"] and all(
            is_number(v) and 0 <= v <= 1 for v in shares)):  # fmt: skip
        return "robustness.json's per-image shares are not one share in 0-1 per test image"
    for name, corruption in analysis["corruptions"].items():
        if not isinstance(corruption, dict) or corruption.get("family") not in FAMILIES:
            return f"robustness.json's {name!r} is not of an ImageNet-C family"
        rows = corruption.get("severities")
        if not isinstance(rows, list) or not all(
            isinstance(r, dict) and is_number(r.get("top1")) and is_number(r.get("severity")) for r in rows
        ):
            return f"robustness.json's rows for {name!r} are not numbers per severity"
    return ""


def check_ranking(table: pd.DataFrame) -> str:
    """rank.py's table: its key and scores present (a column added later may be absent from an older table), the
    scores, counts and timings numbers (a score blank where it does not apply), the names lines of text."""
    required = (*RANKING_KEY, *(score for score, *_ in RANKING_SCORES))
    missing = [column for column in required if column not in table and column not in RANKING_ADDED_LATER]
    if missing:
        return f"it lacks the columns {', '.join(missing)}"
    timings = [column for column in ("features_seconds", "score_seconds") if column in table]
    later = [column for column in RANKING_ADDED_LATER if column in table]
    for column in (*(score for score, *_ in RANKING_SCORES), "train_fraction", *later, *timings):
        values = pd.to_numeric(table[column], errors="coerce")
        if (values.isna() & table[column].notna()).any() or np.isinf(values).any():
            return f"its column {column} holds something other than finite numbers"
        if column in timings and (values < 0).any():
            return f"its column {column} holds a negative time"
        if column == "probe_images" and (values.notna() & ((values < 1) | (values % 1 != 0))).any():
            return f"its column {column} holds something other than a count of images"
    for column in RANKING_TEXT:
        if not table[column].map(lambda v: isinstance(v, str) and v.isprintable()).all():
            return f"its column {column} holds something other than one line of text"
    return ""
