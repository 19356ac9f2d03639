"""predict.py on real runs: a test image gets exactly the logits its run stored, the calibrated column is the
run's temperature applied, unreadable files are listed and skipped, and abstention is measured on validation."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from backbones.predict import parse_args, predict_files
from backbones.runmodel import open_finished
from backbones.runtime import make_precision
from conftest import assert_clean_error, run_inline

pytestmark = pytest.mark.slow  # every test reads a trained run


def split_paths(data: Path, run: Path, split: str) -> tuple[list[Path], np.ndarray]:
    table = pd.read_csv(run / "split.csv", dtype={"sample": str})
    rows = table[table["split"] == split]
    return [data / sample for sample in rows["sample"]], rows["label"].to_numpy()


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def test_a_test_image_gets_exactly_the_logits_its_run_stored(folder_runs):
    data, runs = folder_runs
    for backbone in ("mobilenet_v3_large", "swin_t"):
        paths, labels = split_paths(data, runs[backbone], "test")
        found = predict_files(open_finished(runs[backbone]), paths, make_precision(torch.device("cpu")), 4, 0)
        stored = np.load(runs[backbone] / "test_outputs.npz")
        assert np.array_equal(stored["labels"], labels)
        np.testing.assert_allclose(found.logits.numpy(), stored["logits"], rtol=0, atol=1e-5)


def test_the_csv_holds_raw_and_calibrated_probabilities_of_the_runs_temperature(folder_runs, tmp_path):
    """With the run's temperature set to 2.5 in its record, the calibrated columns are softmax(logits / 2.5) of
    the stored test logits, and the raw ones softmax(logits)."""
    data, runs = folder_runs
    run = tmp_path / "run"
    shutil.copytree(runs["mobilenet_v3_large"], run)
    record = json.loads((run / "metrics.json").read_text())
    record["temperature"] = 2.5
    (run / "metrics.json").write_text(json.dumps(record))
    paths, _ = split_paths(data, run, "test")
    listing = tmp_path / "list.csv"
    listing.write_text("path\n" + "".join(f"{path}\n" for path in paths))
    out = tmp_path / "p.csv"
    result = run_inline("predict.py", "--run", run, listing, "--out", out, "--top-k", "2", "--workers", "0")
    assert result.returncode == 0, result.stderr
    rows = read_csv(out)
    logits = np.load(run / "test_outputs.npz")["logits"].astype(np.float64)
    raw, calibrated = softmax(logits), softmax(logits / 2.5)
    classes = record["classes"]
    assert [row["path"] for row in rows] == [str(path) for path in paths]
    for index, row in enumerate(rows):
        order = np.argsort(-calibrated[index])
        assert [row["label_1"], row["label_2"]] == [classes[order[0]], classes[order[1]]]
        assert row["prediction"] == classes[order[0]]
        for rank in (1, 2):
            assert float(row[f"calibrated_{rank}"]) == pytest.approx(calibrated[index, order[rank - 1]], abs=2e-6)
            assert float(row[f"probability_{rank}"]) == pytest.approx(raw[index, order[rank - 1]], abs=2e-6)
        assert "label_3" not in row


def test_an_unreadable_file_is_listed_and_skipped_and_the_rest_predicted(folder_runs, tmp_path):
    data, runs = folder_runs
    photos = tmp_path / "photos"
    shutil.copytree(data / "cat", photos)
    (photos / "notes.jpg").write_text("not an image")
    good = (photos / "0.png").read_bytes()
    (photos / "truncated.png").write_bytes(good[: len(good) // 2])
    out = tmp_path / "p.jsonl"
    result = run_inline("predict.py", "--run", runs["mobilenet_v3_large"], photos, "--out", out, "--workers", "0")
    assert result.returncode == 1, result.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(Path(line["path"]).name for line in lines) == sorted(p.name for p in (data / "cat").iterdir())
    for name in ("notes.jpg", "truncated.png"):
        assert re.search(rf"skipped \S*{re.escape(name)}: \w+", result.stderr), result.stderr
    assert "2 file(s) could not be read" in result.stderr


def test_min_confidence_marks_unsure_and_reports_what_it_keeps_on_validation(folder_runs, tmp_path):
    data, runs = folder_runs
    run = runs["mobilenet_v3_large"]
    out = tmp_path / "p.csv"
    result = run_inline("predict.py", "--run", run, data, "--out", out, "--min-confidence", "0.4", "--workers", "0")
    assert result.returncode == 0, result.stderr
    rows = read_csv(out)
    assert all((row["status"] == "unsure") == (float(row["calibrated"]) < 0.4) for row in rows)
    # the validation figures, recomputed from the validation images read as files
    record = json.loads((run / "metrics.json").read_text())
    paths, labels = split_paths(data, run, "val")
    logits = predict_files(open_finished(run), paths, make_precision(torch.device("cpu")), 8, 0).logits.double()
    confidence, predicted = (logits / record["temperature"]).softmax(1).max(1)
    kept = confidence.numpy() >= 0.4
    share = f"{100 * kept.mean():.1f}%"
    accuracy = f"{100 * (predicted.numpy()[kept] == labels[kept]).mean():.2f}%" if kept.any() else "nan%"
    assert f"({len(labels)} images): keeps {share} of them, {accuracy} of which are right" in result.stdout


def test_batch_size_is_spelled_as_the_other_tools_spell_it():
    """`-bs`, as the training scripts, rank.py and bench.py take it, beside `--batch-size`."""
    short, long = (parse_args(["--run", "runs/x", "a.png", flag, "8"]).batch_size for flag in ("-bs", "--batch-size"))
    assert short == long == 8
    for flag in ("-bs", "--top-k"):
        refused = run_inline("predict.py", "--run", "runs/x", "a.png", flag, "0")
        assert refused.returncode == 2 and "must be at least 1, got 0" in refused.stderr


def test_refusals_are_clear(folder_runs, tmp_path):
    data, runs = folder_runs
    run = runs["mobilenet_v3_large"]
    taken = tmp_path / "taken.csv"
    taken.write_text("mine\n")
    assert_clean_error(run_inline("predict.py", "--run", run, data, "--out", taken), "already exists")
    assert taken.read_text() == "mine\n"
    assert_clean_error(run_inline("predict.py", "--run", tmp_path, data), "has no metrics.json")
    (tmp_path / "empty").mkdir()
    assert_clean_error(
        run_inline("predict.py", "--run", run, tmp_path / "empty", "--out", tmp_path / "p.csv"), "No images found"
    )
