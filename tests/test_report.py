"""report.py over real digits runs: its numbers are the runs' own, ties are tested, broken runs are skipped."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from backbones.report import pareto_front
from backbones.statistics import bootstrap_p_value
from conftest import SWEEP_BACKBONES as BACKBONES
from conftest import SWEEP_SEEDS as SEEDS
from conftest import assert_clean_error, run_script, setting_folder


@pytest.fixture
def runs(digits_sweep) -> Path:
    return digits_sweep


def metrics_of(runs: Path) -> pd.DataFrame:
    return pd.DataFrame([json.loads(p.read_text()) for p in sorted(runs.glob("*/metrics.json"))])


def correct(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    saved = np.load(folder / "test_outputs.npz")
    return saved["labels"], saved["logits"].argmax(axis=1) == saved["labels"]


def copy_run(source: Path, target: Path, **changes) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("best.pt"))
    metrics = json.loads((target / "metrics.json").read_text())
    for key, value in changes.items():
        if key in metrics["config"]:
            metrics["config"][key] = value
        if key in metrics or key not in metrics["config"]:
            metrics[key] = value
    (target / "metrics.json").write_text(json.dumps(metrics))
    return target


@pytest.fixture(scope="module")
def report(digits_sweep) -> tuple[Path, str]:
    runs = digits_sweep
    out = runs.parent / "report"
    result = run_script("report.py", "--runs", runs, "--out", out)
    assert result.returncode == 0, result.stderr
    return out, result.stdout


@pytest.mark.slow
def test_leaderboard_numbers_are_the_runs_own(runs, report):
    out, printed = report
    board = pd.read_csv(setting_folder(out) / "leaderboard.csv").set_index("backbone")
    metrics = metrics_of(runs)
    assert sorted(board.index) == sorted(BACKBONES)
    for backbone, own in metrics.groupby("model"):
        row = board.loc[backbone]
        assert row["seeds"] == "0,1"
        for column in ("top1", "top5", "balanced_accuracy", "macro_f1", "nll", "ece", "gflops", "latency_ms_batch1"):
            assert row[f"{column}_mean"] == pytest.approx(statistics.mean(own[column]))
            assert row[f"{column}_std"] == pytest.approx(statistics.stdev(own[column]), abs=1e-12)
        assert f"| {backbone} | 0,1 (2) | {statistics.mean(own['top1']):.2f} ± " in printed
    means = metrics.groupby("model")["top1"].mean().sort_values(ascending=False)
    assert board.sort_values("rank").index.tolist() == means.index.tolist()
    assert board["rank"].tolist() == [1, 2] and len(pd.read_csv(out / "leaderboard.csv")) == 2


@pytest.mark.slow
def test_tie_with_best_is_a_paired_t_test_over_seeds(runs, report):
    out, _ = report
    board = pd.read_csv(setting_folder(out) / "leaderboard.csv")
    best, other = board.iloc[0], board.iloc[1]
    top1 = metrics_of(runs).pivot(index="seed", columns="model", values="top1")
    differences = (top1[best["backbone"]] - top1[other["backbone"]]).to_numpy()
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(len(differences)))
    assert other["tie_test"] == "paired t-test, 2 seeds"
    assert other["p_value"] == pytest.approx(2 * stats.t.sf(abs(t), df=len(differences) - 1))
    assert bool(other["tied_with_best"]) == (other["p_value"] >= 0.05)


@pytest.mark.slow
def test_single_seed_ties_use_a_bootstrap_over_test_images(runs, tmp_path):
    result = run_script("report.py", "--runs", *sorted(runs.glob("*-s0")), "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    board = pd.read_csv(setting_folder(tmp_path / "report") / "leaderboard.csv")
    n_test = metrics_of(runs)["n_test"].iloc[0]
    assert board["tie_test"].iloc[1] == f"bootstrap, {n_test} test images"
    assert 0 <= board["p_value"].iloc[1] <= 1 and board["top1_std"].isna().all()


def test_bootstrap_shortcut_matches_resampling_images():
    rng = np.random.default_rng(1)
    a = rng.random(300) < 0.8
    b = np.where(rng.random(300) < 0.15, ~a, a)  # b disagrees with a on about 15% of images
    index = rng.integers(0, len(a), (20_000, len(a)))
    difference = a[index].mean(axis=1) - b[index].mean(axis=1)
    by_images = min(1.0, 2 * min(np.mean(difference <= 0), np.mean(difference >= 0)))
    assert bootstrap_p_value(a, b, 20_000, seed=0) == pytest.approx(by_images, abs=0.02)
    assert bootstrap_p_value(a, a, 1000, seed=0) == 1.0
    assert bootstrap_p_value(np.ones(500, bool), rng.random(500) < 0.7, 1000, seed=0) < 0.001


def test_pareto_front_keeps_only_undominated_backbones():
    cost = np.array([1.0, 2.0, 3.0, 3.0, 0.5])
    accuracy = np.array([80.0, 85.0, 84.0, 90.0, 70.0])
    assert pareto_front(cost, accuracy).tolist() == [True, True, False, True, True]


@pytest.mark.slow
def test_error_consistency_is_cohens_kappa_of_correctness(runs, report):
    out, _ = report
    kappa = pd.read_csv(setting_folder(out) / "error_consistency.csv", index_col=0)
    values = []
    for seed in SEEDS:
        (labels_a, a), (labels_b, b) = (correct(runs / f"{backbone}-s{seed}") for backbone in BACKBONES)
        assert (labels_a == labels_b).all()
        observed = np.mean(a == b)
        chance = a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean())
        values.append((observed - chance) / (1 - chance))
    assert kappa.loc[BACKBONES[0], BACKBONES[1]] == pytest.approx(np.mean(values))
    assert kappa.loc[BACKBONES[1], BACKBONES[0]] == pytest.approx(np.mean(values))
    assert kappa.loc[BACKBONES[0], BACKBONES[0]] == pytest.approx(1.0)


@pytest.mark.slow
def test_calibration_pools_each_backbones_seeds_into_confidence_bins(runs, report):
    out, _ = report
    table = pd.read_csv(setting_folder(out) / "calibration.csv")
    for backbone in BACKBONES:
        confidence, hit = [], []
        for seed in SEEDS:
            saved = np.load(runs / f"{backbone}-s{seed}" / "test_outputs.npz")
            logits = saved["logits"].astype(np.float64)
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            confidence += list(probs.max(1))
            hit += list(probs.argmax(1) == saved["labels"])
        frame = pd.DataFrame({"confidence": confidence, "hit": hit})
        frame["bin"] = pd.cut(frame["confidence"], np.linspace(0, 1, 16), right=False, labels=False).fillna(14)
        expected = frame.groupby("bin").agg(
            images=("hit", "size"), confidence=("confidence", "mean"), accuracy=("hit", "mean")
        )
        mine = table[table["backbone"] == backbone].set_index("bin")
        assert mine.index.tolist() == expected.index.astype(int).tolist()
        assert mine["images"].tolist() == expected["images"].tolist()
        np.testing.assert_allclose(
            mine[["confidence", "accuracy"]].to_numpy(), expected[["confidence", "accuracy"]].to_numpy()
        )
    assert (setting_folder(out) / "calibration.png").exists()


@pytest.mark.slow
def test_report_has_domain_table_plots_and_recommendation(report):
    out, printed = report
    domains = pd.read_csv(next(out.glob("domains-*.csv"))).set_index("backbone")
    board = pd.read_csv(setting_folder(out) / "leaderboard.csv").set_index("backbone")
    assert domains["natural"].to_dict() == board["rank"].astype(float).to_dict()
    assert domains["overall"].to_dict() == board["rank"].astype(float).to_dict()
    for plot in ("cost.png", "error_consistency.png", "training.png"):
        assert (setting_folder(out) / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (out / "report.md").read_text()
    best = board.index[board["rank"] == 1][0]
    assert f"**{best}** is the most accurate" in text and "Best calibrated: **" in text
    assert "Average rank per domain" in printed and f"**{best}** is the most accurate" in printed


@pytest.mark.slow
def test_settings_and_configurations_are_never_averaged(runs, tmp_path):
    folder = tmp_path / "runs"
    source = runs / f"{BACKBONES[0]}-s0"
    copy_run(source, folder / "a")
    copy_run(source, folder / "paper", protocol="paper")
    copy_run(source, folder / "bigger", image_size=[64, 64])
    copy_run(source, folder / "other-lr", lr=0.01)
    result = run_script("report.py", "--runs", folder, "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    board = pd.read_csv(tmp_path / "report" / "leaderboard.csv", dtype={"seeds": str})
    assert sorted(board["protocol"] + " " + board["resolution"]) == [
        "paper 32x32 (default)", "val 32x32 (default)", "val 64x64",
    ]  # fmt: skip
    # two learning rates of one backbone are one row, at the rate chosen on validation (here an exact tie, so the
    # first); each rate's validation score is listed
    assert set(board["backbone"]) == {BACKBONES[0]}
    assert (board["seeds"] == "0").all()
    selected = json.loads((source / "metrics.json").read_text())["best_selection_top1"]
    listed = f"lr 0.001 ({selected:.2f}%), over 0.01 ({selected:.2f}%)"
    assert listed in " ".join((tmp_path / "report" / "report.md").read_text().split())


@pytest.mark.slow
def test_broken_runs_are_named_and_skipped(runs, tmp_path):
    folder = tmp_path / "runs"
    source = runs / f"{BACKBONES[0]}-s0"
    copy_run(source, folder / "good")
    (copy_run(source, folder / "killed") / "metrics.json").unlink()
    old = copy_run(source, folder / "old")
    metrics = json.loads((old / "metrics.json").read_text())
    del metrics["gflops"], metrics["domain"]
    (old / "metrics.json").write_text(json.dumps(metrics))
    (copy_run(source, folder / "torn") / "metrics.json").write_text('{"dataset": "dig')
    copy_run(source, folder / "malformed", top1="high")
    (copy_run(source, folder / "garbled") / "test_outputs.npz").write_bytes(b"PK\x03\x04 not an archive")
    copy_run(source, folder / "again")  # the same run twice: counted once
    (tmp_path / "empty").mkdir()
    result = run_script("report.py", "--runs", folder, tmp_path / "empty", "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    printed = " ".join(result.stdout.split())
    assert f"{folder / 'killed'}: no metrics.json: the run did not finish" in printed
    assert f"{folder / 'old'}: written by an older version: metrics.json lacks domain, gflops" in printed
    assert f"{folder / 'torn'}: metrics.json cannot be read" in printed
    assert f"{folder / 'malformed'}: metrics.json is malformed: top1 is 'high', not a finite number" in printed
    assert f"{folder / 'garbled'}: test_outputs.npz cannot be read (BadZipFile" in printed
    assert f"{tmp_path / 'empty'}: holds no runs" in printed
    assert "(same setting, configuration and seed); the newer run is used" in printed
    assert "Skipped 7:" in printed and "## Skipped" in (tmp_path / "report" / "report.md").read_text()
    assert pd.read_csv(tmp_path / "report" / "leaderboard.csv", dtype={"seeds": str})["seeds"].tolist() == ["0"]


@pytest.mark.slow
def test_no_runs_and_a_foreign_out_folder_are_clean_errors(runs, tmp_path):
    (tmp_path / "empty").mkdir()
    assert_clean_error(run_script("report.py", "--runs", tmp_path / "empty"), "No finished runs", "holds no runs")
    assert_clean_error(run_script("report.py", "--runs", tmp_path / "missing"), "is not a folder")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = run_script("report.py", "--runs", runs, "--out", mine)
    assert_clean_error(result, "does not hold only an earlier report")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_a_report_can_be_rewritten_in_place(runs, report):
    out, _ = report
    result = run_script("report.py", "--runs", runs, "--out", out)
    assert result.returncode == 0, result.stderr
    assert (out / "report.md").exists()


@pytest.mark.slow
def test_different_data_under_one_name_is_never_averaged(runs, tmp_path):
    folder = tmp_path / "runs"
    source = runs / f"{BACKBONES[0]}-s0"
    own = {"dataset": "imagefolder", "domain": "custom", "dataset_options": {}}
    copy_run(source, folder / "a0", data="/home/ann/photos", dataset_fingerprint="aaaaaaaaaaaaaaaa", **own)
    copy_run(source, folder / "a1", data="/home/ann/photos", dataset_fingerprint="aaaaaaaaaaaaaaaa", seed=1, **own)
    copy_run(source, folder / "b0", data="/home/bob/photos", dataset_fingerprint="bbbbbbbbbbbbbbbb", **own)
    result = run_script("report.py", "--runs", folder, "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    board = pd.read_csv(tmp_path / "report" / "leaderboard.csv", dtype={"seeds": str})
    assert sorted(zip(board["dataset"], board["seeds"], strict=True)) == [
        ("imagefolder photos #aaaaaa", "0,1"), ("imagefolder photos #bbbbbb", "0"),
    ]  # fmt: skip
    assert "repeats" not in result.stdout  # b0 is not taken for a rerun of a0


@pytest.mark.slow
def test_seed_counts_rank_rows_and_an_untested_row_says_so(runs, tmp_path):
    folder = tmp_path / "runs"
    a, b = BACKBONES
    copy_run(runs / f"{a}-s0", folder / "a0", top1=90.0)
    copy_run(runs / f"{a}-s1", folder / "a1", top1=92.0)
    copy_run(runs / f"{a}-s0", folder / "a2-uncached", top1=92.0, cache="off", seed=2)  # --cache is no setting
    copy_run(runs / f"{b}-s0", folder / "b5", top1=91.6, seed=5)  # one seed, above a's mean 91.33, none in common
    result = run_script("report.py", "--runs", folder, "--out", tmp_path / "report")
    assert result.returncode == 0, result.stderr
    board = pd.read_csv(setting_folder(tmp_path / "report") / "leaderboard.csv", dtype={"seeds": str}).set_index(
        "backbone"
    )
    assert sorted(board.index) == [a, b] and board.loc[a, "seeds"] == "0,1,2"
    spread = statistics.stdev([90.0, 92.0, 92.0])  # the pooled seed-to-seed std: a is the only row with two or more
    assert board.loc[a, "rank_score"] == pytest.approx(statistics.mean([90.0, 92.0, 92.0]) - spread / math.sqrt(3))
    assert board.loc[b, "rank_score"] == pytest.approx(91.6 - spread)
    assert board.loc[a, "rank"] == 1 and board.loc[b, "rank"] == 2  # mean order would put b first
    assert board.loc[b, "tie_test"] == "not tested: no seed in common"
    text = (tmp_path / "report" / "report.md").read_text()
    assert f"| 2 | {b} | 5 (1) |" in text and "| untested |" in text
    assert f"Not tested against it (no seed, or no test outputs, in common): {b}." in text
