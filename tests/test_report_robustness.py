"""The report's robustness part over real digits runs analysed by robustness.py: its numbers are the analyses' own,
like is compared with like, and the recommendation says when the most accurate backbone is not the most robust."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from backbones.report_robustness import robustness_board, robustness_sentence
from conftest import SWEEP_BACKBONES as BACKBONES
from conftest import setting_folder


def analyses(runs) -> dict:
    return {p.parent.name: json.loads(p.read_text()) for p in runs.glob("*/robustness.json")}


@pytest.mark.slow
def test_the_table_holds_each_backbones_mean_over_its_comparable_seeds(robust_sweep_report):
    runs, report, text = robust_sweep_report
    found = analyses(runs)
    board = pd.read_csv(setting_folder(report) / "robustness.csv").set_index("backbone")
    for backbone in BACKBONES:
        comparable = [a for name, a in found.items() if name.startswith(backbone) and "fog" not in a["corruptions"]]
        per_run = [np.mean([r["top1"] for c in a["corruptions"].values() for r in c["severities"]]) for a in comparable]
        assert board.loc[backbone, "corrupted_mean"] == pytest.approx(np.mean(per_run))
        assert board.loc[backbone, "seeds"] == ",".join(str(a["seed"]) for a in comparable)
        clean = np.mean([a["clean"]["top1"] for a in comparable])
        assert board.loc[backbone, "drop_mean"] == pytest.approx(
            np.mean(
                [100 * (a["clean"]["top1"] - m) / a["clean"]["top1"] for a, m in zip(comparable, per_run, strict=True)]
            )
        )
        assert board.loc[backbone, "clean_mean"] == pytest.approx(clean)
        assert f"{board.loc[backbone, 'corrupted_mean']:.2f}" in text
    assert "### Robustness to corruption" in text and "analysed with other corruptions" in text
    assert (setting_folder(report) / "robustness.png").exists() and (setting_folder(report) / "invariance.png").exists()


@pytest.mark.slow
def test_the_recommendation_says_whether_the_most_accurate_is_the_most_robust(robust_sweep_report):
    _, report, text = robust_sweep_report
    accurate = pd.read_csv(setting_folder(report) / "leaderboard.csv")["backbone"].iloc[0]
    board = pd.read_csv(setting_folder(report) / "robustness.csv").set_index("backbone")
    robust = board.index[0]
    if accurate == robust:
        assert "It is also the most robust to corruption" in text
    elif board.loc[robust, "corrupted_mean"] > board.loc[accurate, "corrupted_mean"]:
        assert f"But it is not the most robust: under corruption **{robust}**" in text
    else:  # ranked first on more seeds, not on a higher mean: no claim either way
        assert f"Under corruption it keeps {board.loc[accurate, 'corrupted_mean']:.2f}% top-1" in text
        assert "most robust" not in text.split("Best calibrated")[1].split("\n")[0]


@pytest.mark.slow
def test_the_mistakes_are_the_runs_own(robust_sweep_report):
    runs, _, text = robust_sweep_report
    for backbone in BACKBONES:
        counts = Counter()
        for folder in runs.glob(f"{backbone}-s*"):
            saved = np.load(folder / "test_outputs.npz")
            predicted, labels = saved["logits"].argmax(1), saved["labels"]
            counts.update((int(t), int(p)) for t, p in zip(labels, predicted, strict=True) if t != p)
        (true, predicted), count = counts.most_common(1)[0]
        line = next(line for line in text.splitlines() if line.startswith(f"- **{backbone}**"))
        assert f"{true} → {predicted} ({count}," in line


# ------------------------------------------------------------------------------------- sentences, by hand
def boards(accurate: list[str], corrupted: dict[str, list[float]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    accuracy = pd.DataFrame({"backbone": accurate})
    rows = [
        {
            "label": name,
            "seed": seed,
            "corrupted": value,
            "clean": 90.0,
            "drop": 100 * (90 - value) / 90,
            "analysis": {"image_corruption_top1": np.random.default_rng(len(name)).random(50).tolist()},
        }
        for name, values in corrupted.items()
        for seed, value in enumerate(values)
    ]
    return accuracy, robustness_board(pd.DataFrame(rows))


def test_the_sentence_names_the_more_robust_backbone():
    accuracy, board = boards(["a", "b"], {"a": [50.0, 52.0, 51.0], "b": [70.0, 71.0, 73.0]})
    sentence = robustness_sentence(accuracy, board)
    assert "not the most robust" in sentence and "**b** keeps 71.33%" in sentence and "51.00%" in sentence
    assert "statistically tied" not in sentence  # 20 points apart over three seeds


def test_the_sentence_agrees_when_the_most_accurate_is_also_the_most_robust():
    accuracy, board = boards(["a", "b"], {"a": [70.0, 71.0], "b": [50.0, 52.0]})
    assert robustness_sentence(accuracy, board).startswith(" It is also the most robust to corruption: 70.50%")


def test_no_claim_when_the_top_robustness_rank_comes_from_seed_count_alone():
    accuracy, board = boards(["a", "b"], {"a": [62.0], "b": [57.0, 61.0, 65.0]})  # b: 61 less 4 / sqrt(3) > 62 less 4
    assert board["backbone"].iloc[0] == "b"
    sentence = robustness_sentence(accuracy, board)
    assert sentence == " Under corruption it keeps 62.00% top-1 on average (a relative drop of 31.1%)."


def test_one_backbone_gets_no_comparison():
    accuracy, board = boards(["a"], {"a": [60.0]})
    sentence = robustness_sentence(accuracy, board)
    assert "keeps 60.00% top-1 on average" in sentence and "most robust" not in sentence
