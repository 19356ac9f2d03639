"""The shared loop end to end on digits: protocol, what a run leaves, re-evaluation, and bad input."""

from __future__ import annotations

import csv
import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from backbones import record
from backbones.models import create_model
from backbones.runfiles import RESUME_KEYS
from backbones.runtime import seed_everything
from conftest import FAST, ROOT, assert_clean_error, finished_run, run_inline, run_script
from formats import make_class_folders


def read_rows(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.slow
def test_short_run_from_scratch_learns(digits_run):
    # MobileNetV3 with BN momentum 0.01, two epochs per phase from random init: without BatchNorm statistics
    # recomputed before evaluation this scores ~10% (chance); with them it must be far above.
    _, metrics, _ = digits_run
    assert metrics["top1"] > 80
    assert metrics["balanced_accuracy"] > 80
    assert metrics["top5"] >= metrics["top1"]


@pytest.mark.slow
def test_metrics_carry_the_run_record_and_full_configuration(digits_run):
    out, metrics, _ = digits_run
    assert set(record.REQUIRED) <= set(metrics)  # what report.py needs, as record.py defines it
    assert set(record.ADDED_LATER) <= set(metrics) and metrics["schema"] == record.SCHEMA
    assert set(record.RESULT_COLUMNS) <= set(metrics) | set(metrics["config"])  # what the results table carries
    assert {"history", "versions", "git_commit", "epochs"} <= set(metrics)
    config = metrics["config"]
    assert config["model"] == "mobilenet_v3_large" and (config["patience"], config["sgd_patience"]) == (10, 10)


@pytest.mark.slow
def test_split_file_covers_every_sample_once_and_test_is_stratified(digits_run):
    out, metrics, _ = digits_run
    split = pd.read_csv(out / "split.csv")
    assert list(split.columns) == ["sample", "label", "split"]
    assert sorted(split["sample"]) == list(range(1797))
    counts = split["split"].value_counts()
    assert (counts["train"], counts["val"], counts["test"]) == (metrics["n_train"], metrics["n_val"], metrics["n_test"])
    per_class_test = split[split["split"] == "test"].groupby("label").size() / split.groupby("label").size()
    assert per_class_test.between(0.17, 0.23).all()


@pytest.mark.slow
def test_run_leaves_log_checkpoint_and_result_row(digits_run, tmp_path):
    out, metrics, result = digits_run
    log = (out / "log.txt").read_text()
    assert "epoch   6 sgd" in log and log.strip().splitlines()[-1] == result.stdout.strip().splitlines()[-1]
    rows = read_rows(out.parent / "results.csv")
    assert len(rows) == 1 and rows[0]["model"] == "mobilenet_v3_large" and float(rows[0]["top1"]) == metrics["top1"]
    recipe = {key: rows[0][key] for key in ("bs", "lr", "max_epochs", "patience", "sgd_patience")}
    assert recipe == {"bs": "64", "lr": "0.001", "max_epochs": "5", "patience": "10", "sgd_patience": "10"}  # README
    best = torch.load(out / "best.pt", weights_only=True)
    assert best["meta"]["num_classes"] == 10 and best["meta"]["seed"] == 0
    assert metrics["best_epoch"] == best["meta"]["epoch"]
    history = pd.read_csv(out / "history.csv")
    assert history.to_dict("records") == pd.DataFrame(metrics["history"]).to_dict("records")
    assert list(history["phase"]) == ["adamw"] * 5 + ["sgd"] * 5 and (history["lr"] == 1e-3).all()


@pytest.mark.slow
def test_eval_only_reproduces_the_printed_accuracy(digits_run, tmp_path):
    out, metrics, result = digits_run
    again = run_script(
        "digits.py",
        "-model",
        "mobilenet_v3_large",
        "-bs",
        "64",
        "--weights",
        out / "best.pt",
        "--eval-only",
        "--workers",
        "0",
        "--out",
        tmp_path / "eval",
        "--results",
        tmp_path / "r.csv",
    )
    evaluated = finished_run(again, tmp_path / "eval")
    assert again.stdout.strip().splitlines()[-1] == result.stdout.strip().splitlines()[-1]
    assert evaluated["top1"] == metrics["top1"] and evaluated["eval_only"] and evaluated["epochs"] == 0
    assert not (tmp_path / "r.csv").exists()  # an evaluation is not a new result
    assert f"Caching {metrics['n_val'] + metrics['n_test']} decoded images" in again.stdout  # no training images


@pytest.mark.slow
def test_eval_only_refuses_a_checkpoint_for_other_classes(digits_run, tmp_path):
    out, _, _ = digits_run
    make_class_folders(tmp_path / "mine", {"a": 3, "b": 3, "c": 3})
    result = run_script("imagefolder.py", "-model", "mobilenet", "--weights", out / "best.pt", "--eval-only",
                        "--data", tmp_path / "mine")  # fmt: skip
    assert_clean_error(result, "trained for 10 classes", "your image folder has 3")


@pytest.mark.slow
def test_few_shot_linear_probe_trains_only_the_head_on_a_nested_subset(tmp_path):
    runs = {}
    for shots in (3, 6):
        out = tmp_path / f"shots{shots}"
        result = run_script(
            "digits.py", *FAST, "-bs", "16", "--shots", shots, "--finetune", "head", "--out", out,
            "--results", tmp_path / "r.csv",
        )  # fmt: skip
        runs[shots] = (finished_run(result, out), pd.read_csv(out / "split.csv"), out)
    (metrics, split, out), (_, larger, _) = runs[3], runs[6]
    assert metrics["n_train"] + metrics["n_val"] == 30 and metrics["n_val"] == 10  # one validation image per class
    assert metrics["shots"] == 3 and metrics["finetune"] == "head" and metrics["n_test"] == 364  # ceil(0.2 n) a class
    assert metrics["n_unused"] == 1797 - 364 - 30 and (split["split"] == "unused").sum() == metrics["n_unused"]
    used = lambda table: set(table.loc[table["split"].isin(["train", "val"]), "sample"])  # noqa: E731
    assert used(split) < used(larger)  # nested: the 3-shot subset is inside the 6-shot one
    assert set(split.loc[split["split"] == "test", "sample"]) == set(larger.loc[larger["split"] == "test", "sample"])
    seed_everything(0)
    initial = create_model("mobilenet_v3_large", 10, "none").state_dict()
    trained = torch.load(out / "best.pt", weights_only=True)["model"]
    changed = sorted({key.rsplit(".", 1)[0] for key in initial if not torch.equal(initial[key], trained[key])})
    assert changed == ["classifier.3"]  # the backbone, BatchNorm statistics included, is untouched

    result = run_script("report.py", "--runs", tmp_path / "shots3", tmp_path / "shots6", "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    board = pd.read_csv(tmp_path / "report" / "leaderboard.csv")
    assert sorted(board["shots"]) == [3, 6] and (board["finetune"] == "head").all()  # one leaderboard per size
    curves = list((tmp_path / "report").glob("learning-curve-*.png"))
    assert len(curves) == 1 and "## Learning curves" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.slow
def test_an_existing_run_folder_is_never_overwritten(digits_run):
    out, _, _ = digits_run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    result = run_script("digits.py", *FAST, "--out", out)
    assert_clean_error(result, "already exists", "never overwrites")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before


@pytest.mark.slow
def test_default_out_makes_a_fresh_folder_per_run(tmp_path):
    for _ in range(2):
        assert run_script("digits.py", *FAST, "-model", "timm:test_resnet", "-bs", "128", cwd=tmp_path).returncode == 0
    runs = sorted((tmp_path / "runs").iterdir())
    assert len(runs) == 2 and all((r / "metrics.json").is_file() for r in runs)
    assert len(read_rows(tmp_path / "results" / "results.csv")) == 2


@pytest.mark.parametrize(
    "script, args, phrases",
    [
        ("digits.py", ["-model", "resnet9000", "-bs", "8"], ["Unknown model 'resnet9000'", "convnext_tiny"]),
        ("digits.py", ["-model", "resnet50", "-bs", "0"], ["-bs", "at least 1"]),
        ("digits.py", ["-model", "wavemix", "--weights", "none", "--image-size", "40"], ["multiples of 32"]),
        ("digits.py", ["-model", "resnet50", "--weights", "/nonexistent/best.pt"], ["does not exist"]),
        ("digits.py", ["-model", "resnet50", "--eval-only"], ["--weights FILE"]),
        ("breakhis.py", ["-model", "resnet50", "-mag", "50"], ["-mag", "invalid choice"]),
        (
            "cifar10.py",
            ["-model", "resnet50", "--data", "/nonexistent", "--no-download"],
            ["CIFAR-10 was not found", "cifar-10-batches-py", "cs.toronto.edu"],
        ),
        ("rsna.py", ["-model", "resnet50", "--data", "/nonexistent"], ["stage_2_train_labels.csv", "kaggle"]),
        ("digits.py", ["-model", "resnet50", "--device", "cuda:7"], ["--device cuda:7", "--device cpu"]),
        ("digits.py", ["-model", "resnet50", "--train-fraction", "0"], ["--train-fraction", "must be in (0, 1]"]),
        ("digits.py", ["-model", "resnet50", "--train-fraction", "1.5"], ["must be in (0, 1], got 1.5"]),
        ("digits.py", ["-model", "resnet50", "--shots", "5", "--train-fraction", "0.5"], ["not allowed with"]),
        ("digits.py", ["-model", "resnet50", "--shots", "500"], ["--shots 500", "class '", "the smallest class has"]),
    ],
)
def test_bad_input_gets_a_clear_message(script, args, phrases, tmp_path):
    result = run_inline(script, *args, "--out", tmp_path / "out")
    assert_clean_error(result, *phrases)
    assert not (tmp_path / "out").exists()  # nothing half-made


def test_corrupt_weights_file_is_reported(tmp_path):
    bad = tmp_path / "best.pt"
    bad.write_bytes(b"not a checkpoint at all")
    result = run_inline("digits.py", "-model", "mobilenet", "--weights", bad, "--out", tmp_path / "out")
    assert_clean_error(result, str(bad), "corrupt")


def test_failed_dataset_download_is_explained(tmp_path, monkeypatch, capsys):
    # No network exists here; make that certain on any machine by refusing every URL at the socket level.
    import urllib.request

    from backbones import finetune
    from backbones.datasets import cifar10
    from backbones.errors import UserError

    def refuse(*args, **kwargs):
        raise urllib.error.URLError("network unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    with pytest.raises(UserError, match=re.escape(f"not found under --data {tmp_path}: downloading it failed")) as e:
        finetune.main(cifar10.SPEC, ["-model", "mobilenet", "--data", str(tmp_path), "--workers", "0"])
    assert "network unreachable (test)" in str(e.value) and "Expected layout: --data/cifar-10-batches-py" in str(
        e.value
    )
    assert list(tmp_path.iterdir()) == []


def test_results_table_survives_concurrent_appends(tmp_path):
    import multiprocessing

    from backbones import runfiles

    table = tmp_path / "results.csv"
    rows = [{"dataset": "digits", "model": f"m{i}", "top1": i} for i in range(40)]
    with multiprocessing.get_context("fork").Pool(4) as pool:
        pool.starmap(runfiles.append_result, [(row, table) for row in rows])
    read = read_rows(table)
    assert sorted(int(r["top1"]) for r in read) == list(range(40))
    assert json.dumps(list(read[0])) == json.dumps(record.RESULT_COLUMNS)


RESUMABLE = [*FAST, "-bs", "64", "--max-epochs", "2", "--patience", "5"]  # two epochs per phase, four in all


def comparable(metrics: dict) -> dict:
    """Everything a run measured except wall-clock figures."""
    timing = ("seconds", "train_seconds", "latency", "throughput", "images_per_s", "peak_memory", "finished", "out")
    history = [{k: v for k, v in h.items() if "seconds" not in k} for h in metrics["history"]]
    kept = {k: v for k, v in metrics.items() if not any(t in k for t in timing) and k not in ("config", "history")}
    return {**kept, "history": history}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("resume") / "whole"
    finished_run(run_script("digits.py", *RESUMABLE, "--out", out), out)
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("kill_after", "retyped"), [(1, True), (3, False)])  # inside the AdamW phase, the SGD phase
def test_a_killed_run_resumes_to_exactly_the_uninterrupted_result(tmp_path, kill_after, retyped, uninterrupted):
    whole = json.loads((uninterrupted / "metrics.json").read_text())
    out = tmp_path / "killed"
    command = [sys.executable, str(ROOT / "digits.py"), *map(str, RESUMABLE), "--out", str(out)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if line.startswith(f"epoch {kill_after:3d}"):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert not (out / "metrics.json").exists() and (out / "checkpoint.pt").exists()
    flags = RESUMABLE if retyped else []  # without them, the run's config.json gives them
    result = run_script("digits.py", *flags, "--out", out, "--resume")
    resumed = finished_run(result, out)
    assert "resuming after epoch" in result.stdout
    assert comparable(resumed) == comparable(whole)
    assert not (out / "checkpoint.pt").exists()
    best = torch.load(out / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(v, best[k]) for k, v in torch.load(uninterrupted / "best.pt")["model"].items())


@pytest.mark.slow
def test_a_run_relaunched_from_its_config_is_the_same_run(tmp_path, uninterrupted):
    whole = json.loads((uninterrupted / "metrics.json").read_text())
    again = tmp_path / "again"
    relaunched = finished_run(run_script("digits.py", "--config", uninterrupted / "config.json", "--out", again), again)
    assert comparable(relaunched) == comparable(whole)
    first, second = (json.loads((folder / "config.json").read_text()) for folder in (uninterrupted, again))
    assert second["given"] == {**first["given"], "out": str(again)}  # the first run's flags, in a new folder
    other = run_script("imagefolder.py", "--config", uninterrupted / "config.json", "--out", tmp_path / "x")
    assert_clean_error(other, "is a run of digits.py, not of imagefolder.py")


@pytest.mark.slow
def test_resume_refuses_other_flags_and_finished_runs(tmp_path, uninterrupted):
    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    assert_clean_error(run_script("digits.py", *RESUMABLE, "--out", out, "--resume"), "already finished")
    (out / "metrics.json").rename(out / "metrics.moved")
    state = {**dict.fromkeys(RESUME_KEYS, {}), "history": [], "config": json.dumps({"lr": 0.5})}
    torch.save(state, out / "checkpoint.pt")
    before = sorted(p.name for p in out.iterdir())
    result = run_script("digits.py", *RESUMABLE, "--out", out, "--resume")
    assert_clean_error(result, "started with other flags", "lr 0.5 there, 0.001 now")
    assert sorted(p.name for p in out.iterdir()) == before
    assert_clean_error(run_script("digits.py", *RESUMABLE, "--resume"), "no --out was given")


@pytest.mark.slow
def test_tensorboard_gets_the_numbers_of_history_csv(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from backbones import finetune
    from backbones.datasets import digits

    out = tmp_path / "run"
    finetune.main(digits.SPEC, [*FAST, "-model", "timm:test_resnet", "-bs", "128", "--tensorboard", "--out", str(out),
                                "--results", str(tmp_path / "r.csv")])  # fmt: skip
    history = pd.read_csv(out / "history.csv")
    (events,) = (out / "tensorboard").iterdir()
    scalars = EventAccumulator(str(events.parent)).Reload()
    for column in ("train_loss", "val_top1", "lr"):
        logged = scalars.Scalars(column)
        assert [e.step for e in logged] == history["epoch"].tolist()
        assert [e.value for e in logged] == pytest.approx(history[column].tolist(), rel=1e-6)  # stored as float32


HIDDEN_TENSORBOARD = """
import importlib.util, sys
real = importlib.util.find_spec  # as on a machine without the package
importlib.util.find_spec = lambda name, *a: None if name == "tensorboard" else real(name, *a)
from backbones.datasets import digits
from backbones.finetune import run
run(digits.SPEC, sys.argv[1:])
"""


@pytest.mark.slow
def test_tensorboard_missing_is_refused_before_any_work(tmp_path):
    command = [sys.executable, "-c", HIDDEN_TENSORBOARD, *FAST, "--tensorboard", "--out", str(tmp_path / "o")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert_clean_error(result, "--tensorboard needs the tensorboard package", "pip install tensorboard")
    assert not (tmp_path / "o").exists()
