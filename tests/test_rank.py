"""rank.py on digits: the table, the feature cache and its invalidation, and the check against fine-tuned runs."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest
import torch

from backbones import models
from backbones.transferability import agreement, logme
from conftest import SWEEP_BACKBONES, assert_clean_error, plant_imagenet_weights, run_inline, run_script, setting_folder
from formats import make_class_folders

RANK = ["--dataset", "digits", "--workers", "0", "-bs", "128"]


def rank(tmp_path, *args: str, env: dict | None = None):
    out = tmp_path / f"rank-{len(list(tmp_path.glob('rank-*.csv')))}.csv"
    result = run_inline("rank.py", *RANK, *args, "--out", out, env=env)  # in-process: no start-up of its own
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, pd.read_csv(out).set_index("backbone")


def test_ranks_an_image_folder_whose_own_flags_follow_data(tmp_path, monkeypatch):
    """`--data` is a prefix of `--dataset`: given after it, it must not hide which dataset's own flags
    (imagefolder's --test-size) exist. Half of each class held out for test leaves 5 + 5 of 20 to rank on."""
    monkeypatch.setenv("BACKBONES_CACHE", str(tmp_path / "cache"))
    photos = make_class_folders(tmp_path / "photos", {"cat": 10, "dog": 10})
    out = tmp_path / "rank.csv"
    flags = ["--models", "timm:test_resnet", "--weights", "none", "--image-size", "32", "--workers", "0", "--out", out]
    result = run_inline("rank.py", "--dataset", "imagefolder", "--data", photos, "--test-size", "0.5", *flags)
    assert result.returncode == 0, result.stderr
    table = pd.read_csv(out)
    assert table["n_train"].iloc[0] + table["n_val"].iloc[0] == 10


@pytest.mark.slow
def test_ranks_from_cached_features_of_train_and_val_only(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKBONES_CACHE", str(tmp_path / "cache"))
    printed, table = rank(tmp_path, "-models", "mobilenet", "shufflenet", "--weights", "none")
    assert sorted(table.index) == sorted(SWEEP_BACKBONES)
    assert "| rank | backbone | LogME | kNN top-1 % | linear probe top-1 % | LEEP |" in printed
    assert table["rank"].tolist() == [1, 2] and table["logme"].is_monotonic_decreasing
    assert table["leep"].isna().all()  # random weights have no source classifier
    cached = sorted((tmp_path / "cache" / "features").glob("digits-*.npz"))
    assert [p.name.split("-")[1] for p in cached] == ["train", "train", "val", "val"]  # never the test split
    n_train, n_val = table["n_train"].iloc[0], table["n_val"].iloc[0]
    assert n_train + n_val == 1797 - 364  # digits holds out ceil(20%) of each class for test
    train = np.load(next(p for p in cached if "train-mobilenet" in p.name))
    assert train["features"].shape == (n_train, 1280) and len(train["labels"]) == n_train
    assert table.loc["mobilenet_v3_large", "logme"] == pytest.approx(logme(train["features"], train["labels"]))

    again, same = rank(tmp_path, "-models", "mobilenet", "shufflenet", "--weights", "none")
    assert again.count("features reused from the cache") == 4
    timings = ["features_seconds", "score_seconds", "features_cached"]
    pd.testing.assert_frame_equal(same.drop(columns=timings), table.drop(columns=timings))


def test_a_probe_sample_is_drawn_class_by_class_from_the_training_split_only(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKBONES_CACHE", str(tmp_path / "cache"))
    flags = ["-models", "timm:test_resnet", "--weights", "none", "--image-size", "32"]
    _, full = rank(tmp_path, *flags)
    printed, sampled = rank(tmp_path, *flags, "--probe-images", "200")
    assert "val images; scored from a class-stratified sample of 200 training images; test split" in printed
    assert full["probe_images"].isna().all() and sampled["probe_images"].tolist() == [200]
    assert sampled["n_train"].tolist() == full["n_train"].tolist()  # the setting: the whole training split
    features = tmp_path / "cache" / "features"
    whole, sample = sorted((np.load(p)["labels"] for p in features.glob("digits-train-*.npz")), key=len, reverse=True)
    (val,) = (np.load(p)["labels"] for p in features.glob("digits-val-*.npz"))  # one file: the same images twice
    assert len(whole) == full["n_train"].iloc[0] and len(sample) == 200
    share = np.bincount(whole) / len(whole)
    assert np.all(np.abs(np.bincount(sample, minlength=10) - 200 * share) < 1)  # each class in proportion
    assert len(val) == full["n_val"].iloc[0]  # the validation split whole
    again, _ = rank(tmp_path, *flags, "--probe-images", "200")
    assert again.count("features reused from the cache") == 2  # the same seed draws the same sample
    result = run_inline("rank.py", *RANK, *flags, "--probe-images", "5", "--out", tmp_path / "few.csv")
    assert_clean_error(result, "--probe-images 5 cannot sample the", "at least one image per class")


@pytest.mark.slow
def test_changed_weights_file_invalidates_the_cache_and_leep_uses_its_head(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKBONES_CACHE", str(tmp_path / "cache"))
    weights = tmp_path / "best.pt"

    def save(seed: int) -> None:
        torch.manual_seed(seed)
        model = models.create_model("mobilenet", 10, "none")
        torch.save({"model": model.state_dict(), "meta": {"num_classes": 10}}, weights)

    save(0)
    first, table = rank(tmp_path, "-models", "mobilenet", "--weights", weights)
    assert "reused" not in first and table["leep"].iloc[0] < 0  # a log-likelihood
    second, _ = rank(tmp_path, "-models", "mobilenet", "--weights", weights)
    assert second.count("features reused from the cache") == 2
    save(1)
    os.utime(weights, (0, 0))  # even with an old date, new contents are new weights
    third, changed = rank(tmp_path, "-models", "mobilenet", "--weights", weights)
    assert "reused" not in third and changed["logme"].iloc[0] != table["logme"].iloc[0]


@pytest.mark.slow
def test_imagenet_weights_give_leep_from_the_imagenet_head(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKBONES_CACHE", str(tmp_path / "cache"))
    plant_imagenet_weights("shufflenet_v2_x2_0", tmp_path / "torch")
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch"), "HTTPS_PROXY": "http://127.0.0.1:9"}
    _, table = rank(tmp_path, "-models", "shufflenet", env=env)
    assert table["weights"].iloc[0] == "imagenet" and -np.log(10) - 1 < table["leep"].iloc[0] < 0


@pytest.mark.slow
def test_checked_against_fine_tuned_runs(digits_sweep, tmp_path):
    printed, table = rank(tmp_path, "-models", *SWEEP_BACKBONES, "--weights", "none", "--image-size", "32",
                          "--runs", digits_sweep)  # fmt: skip
    measured = table["measured_top1"]
    for backbone in SWEEP_BACKBONES:
        runs = [pd.read_json(p, typ="series") for p in digits_sweep.glob(f"{backbone}-s*/metrics.json")]
        assert measured[backbone] == pytest.approx(np.mean([run["top1"] for run in runs]))
    result = agreement(table["logme"], measured)
    assert result["regret"] == pytest.approx(measured.max() - measured[table["logme"].idxmax()])
    assert f"LogME: Kendall's tau {result['kendall_tau']:+.2f} over 2 backbones" in printed
    assert "Cost: ranking 2 backbones took" in printed and "of one fine-tuning run" in printed

    report = tmp_path / "report"
    result = run_script("report.py", "--runs", digits_sweep, "--out", report, "--rankings", tmp_path / "rank-0.csv")
    assert result.returncode == 0, result.stderr
    board = pd.read_csv(setting_folder(report) / "leaderboard.csv").set_index("backbone")
    assert board["logme_predicted_rank"].to_dict() == table["logme"].rank(ascending=False).to_dict()
    assert "Predicted by rank.py before fine-tuning: LogME: Kendall's tau" in result.stdout

    # a ranking from a sample of the training images is another estimate: never mixed with the full one
    _, sampled = rank(tmp_path, "-models", *SWEEP_BACKBONES, "--weights", "none", "--image-size", "32",
                      "--probe-images", "300")  # fmt: skip
    both = [tmp_path / "rank-0.csv", tmp_path / "rank-1.csv"]
    result = run_script("report.py", "--runs", digits_sweep, "--out", tmp_path / "both", "--rankings", *both)
    board = pd.read_csv(setting_folder(tmp_path / "both") / "leaderboard.csv").set_index("backbone")
    assert board["logme_predicted_rank"].to_dict() == table["logme"].rank(ascending=False).to_dict()
    assert "Predicted by rank.py before fine-tuning" in result.stdout
    result = run_script("report.py", "--runs", digits_sweep, "--out", tmp_path / "one", "--rankings", both[1])
    board = pd.read_csv(setting_folder(tmp_path / "one") / "leaderboard.csv").set_index("backbone")
    assert board["logme_predicted_rank"].to_dict() == sampled["logme"].rank(ascending=False).to_dict()
    assert "Predicted by rank.py from a sample of 300 training images before fine-tuning" in result.stdout


def test_agreement_of_a_perfect_and_a_reversed_ranking():
    measured = pd.Series({"a": 90.0, "b": 80.0, "c": 70.0})
    assert agreement(pd.Series({"a": 3, "b": 2, "c": 1, "d": 9}), measured) == {
        "backbones": 3, "kendall_tau": 1.0, "pick": "a", "true_best": "a", "pick_is_best": True, "regret": 0.0,
    }  # fmt: skip
    reversed_ = agreement(pd.Series({"a": 1, "b": 2, "c": 3}), measured)
    assert reversed_["kendall_tau"] == -1.0 and reversed_["regret"] == 20.0 and reversed_["pick"] == "c"


def test_kendall_tau_counts_concordant_and_discordant_pairs():
    predicted = pd.Series({"a": 5.0, "b": 4.0, "c": 3.0, "d": 2.0, "e": 1.0})
    measured = pd.Series({"a": 90.0, "b": 70.0, "c": 80.0, "d": 50.0, "e": 60.0})
    names = list(predicted.index)
    signs = [
        np.sign(predicted[x] - predicted[y]) * np.sign(measured[x] - measured[y])
        for i, x in enumerate(names)
        for y in names[i + 1 :]
    ]
    assert signs.count(-1) == 2 and len(signs) == 10  # (b, c) and (d, e) disagree
    assert agreement(predicted, measured)["kendall_tau"] == pytest.approx(sum(signs) / len(signs))  # 0.6


def test_bad_input_is_a_clean_error(tmp_path):
    taken = tmp_path / "taken.csv"
    taken.write_text("mine")
    assert_clean_error(run_inline("rank.py", *RANK, "--out", taken), "already exists")
    assert taken.read_text() == "mine"
    assert_clean_error(run_inline("rank.py", *RANK, "-models", "nonet"), "Unknown model 'nonet'")
    result = run_inline("rank.py", "--dataset", "mnist")
    assert result.returncode == 2 and "invalid choice: 'mnist'" in result.stderr and "Traceback" not in result.stderr
    assert_clean_error(run_inline("rank.py", *RANK, "--weights", tmp_path / "missing.pt"), "does not exist")


@pytest.mark.slow
def test_only_runs_of_the_same_setting_and_configuration_are_compared(digits_sweep, tmp_path):
    import json
    import shutil

    from backbones import rank

    folder = tmp_path / "runs"
    for run in digits_sweep.iterdir():
        shutil.copytree(run, folder / run.name, ignore=shutil.ignore_patterns("best.pt"))
        for variant, changes in {"tenth": {"train_fraction": 0.1, "top1": 30.5}, "probe": {"finetune": "head"},
                                 "other-lr": {"lr": 0.5, "top1": 11.0}}.items():  # fmt: skip
            if variant == "other-lr" and run.name.startswith(SWEEP_BACKBONES[0]):
                continue  # the other configuration covers one backbone only: the one covering both is chosen
            copy = folder / f"{run.name}-{variant}"
            shutil.copytree(run, copy, ignore=shutil.ignore_patterns("best.pt"))
            metrics = json.loads((copy / "metrics.json").read_text())
            metrics["config"].update({k: v for k, v in changes.items() if k != "top1"})
            metrics["top1"] = changes.get("top1", metrics["top1"])
            (copy / "metrics.json").write_text(json.dumps(metrics))
    truth = {b: np.mean([json.loads(p.read_text())["top1"] for p in digits_sweep.glob(f"{b}-s*/metrics.json")])
             for b in SWEEP_BACKBONES}  # fmt: skip
    fingerprint = json.loads(next(digits_sweep.glob("*/metrics.json")).read_text())["dataset_fingerprint"]
    config = rank.parse_args(["--dataset", "digits", "--image-size", "32", "--weights", "none", "--runs", str(folder)])
    lines = []
    measured, _, _ = rank.measured_top1(config, fingerprint, lines.append)
    assert measured.to_dict() == pytest.approx(truth)
    assert any("another training configuration are left out" in line for line in lines)
    tenth = dataclasses.replace(config, data=dataclasses.replace(config.data, train_fraction=0.1))
    assert rank.measured_top1(tenth, fingerprint, lines.append)[0].to_dict() == {b: 30.5 for b in SWEEP_BACKBONES}
    assert rank.measured_top1(config, "0" * 16, lines.append)[0].empty  # other data: nothing to compare
