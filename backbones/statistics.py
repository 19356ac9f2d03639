"""The statistics that decide whether two backbones are tied: paired tests over seeds or over test images, and
the pooled seed-to-seed spread that ranks rows with different seed counts fairly. `seed_board` builds a
leaderboard with them; the accuracy and the robustness leaderboards are two uses of it."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy.stats import ttest_rel

ALPHA = 0.05
BOOTSTRAP_RESAMPLES = 10_000


def bootstrap_p_value(correct_a: np.ndarray, correct_b: np.ndarray, resamples: int, seed: int) -> float:
    """Two-sided p-value that a and b are equally accurate, by a paired bootstrap over the test images.

    Resampling n images with replacement only changes how many of the images that a alone gets right (and b alone
    gets right) are drawn, so the resampled accuracy difference is drawn exactly from a multinomial on those counts.
    """
    n = len(correct_a)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(correct_b & ~correct_a))
    draws = np.random.default_rng(seed).multinomial(n, [only_a / n, only_b / n, 1 - (only_a + only_b) / n], resamples)
    difference = draws[:, 0] - draws[:, 1]
    return float(min(1.0, 2 * min(np.mean(difference <= 0), np.mean(difference >= 0))))


def paired_t_p_value(top1_a: list[float], top1_b: list[float]) -> float:
    """Two-sided paired t-test p-value over seeds; a constant difference is decided without the test."""
    differences = np.subtract(top1_a, top1_b)
    if np.allclose(differences, differences[0]):
        return 1.0 if np.isclose(differences[0], 0) else 0.0
    return float(ttest_rel(top1_a, top1_b).pvalue)


def pooled_seed_std(scores: pd.Series, labels: pd.Series) -> float:
    """The seed-to-seed standard deviation of a score, pooled over every row with two or more seeds (NaN if none)."""
    groups = [values for _, values in scores.groupby(labels) if len(values) >= 2]
    freedom = sum(len(values) - 1 for values in groups)
    if not freedom:
        return math.nan
    return math.sqrt(sum(values.var(ddof=1) * (len(values) - 1) for values in groups) / freedom)


def tie_word(test: str, tied: bool, p: float) -> str:
    """'best', 'yes'/'no' with the p-value, or 'untested' where no test could be made (never read as 'no')."""
    if test == "best":
        return "best"
    if math.isnan(p):
        return "untested"
    return f"{'yes' if tied else 'no'} (p = {p:.3f})"


def tie_over_seeds(best: pd.DataFrame, other: pd.DataFrame, column: str, one_seed: Callable) -> tuple[str, float]:
    """(how the tie was tested, p-value) between the best row's runs and another row's on `column`: a paired
    t-test over the seeds they share when two or more, `one_seed(best run, other run)` when one (a test over
    that seed's test images), untested when none."""
    common = sorted(set(best["seed"]) & set(other["seed"]))
    if len(common) >= 2:
        a = best.set_index("seed").loc[common, column].tolist()
        b = other.set_index("seed").loc[common, column].tolist()
        return f"paired t-test, {len(common)} seeds", paired_t_p_value(a, b)
    if len(common) == 1:
        return one_seed(best.set_index("seed").loc[common[0]], other.set_index("seed").loc[common[0]])
    return "not tested: no seed in common", math.nan


def seed_board(runs: pd.DataFrame, columns: list[str], ranked_on: str, one_seed: Callable, tiebreak: str | None = None):
    """One row per `label` of `runs` (one run per row): its seeds, mean and sample std of each of `columns`, its
    rank on `ranked_on` less one standard error (the pooled seed-to-seed std over the root of its seed count, so
    one lucky seed does not outrank the mean of three; `tiebreak`, ascending, orders equal scores), and whether it
    is tied with the first (`tie_over_seeds`)."""
    grouped = runs.groupby("label", sort=False)
    board = pd.DataFrame({"seeds": grouped["seed"].apply(lambda s: ",".join(map(str, sorted(s))))})
    board["n_seeds"] = grouped["seed"].nunique()
    for column in columns:
        board[f"{column}_mean"] = grouped[column].mean()
        board[f"{column}_std"] = grouped[column].std(ddof=1)
    spread = pooled_seed_std(runs[ranked_on], runs["label"])
    error = 0 if math.isnan(spread) else spread / np.sqrt(board["n_seeds"])
    board["rank_score"] = board[f"{ranked_on}_mean"] - error
    order = ["rank_score"] + ([f"{tiebreak}_mean"] if tiebreak else [])
    board = board.sort_values(order, ascending=[False] + [True] * (len(order) - 1))
    board.insert(0, "rank", board["rank_score"].rank(method="min", ascending=False).astype(int))
    best = board.index[0]
    tests = {
        label: tie_over_seeds(grouped.get_group(best), grouped.get_group(label), ranked_on, one_seed)
        for label in board.index[1:]
    }
    board["tie_test"] = ["best" if label == best else tests[label][0] for label in board.index]
    board["p_value"] = [math.nan if label == best else tests[label][1] for label in board.index]
    board["tied_with_best"] = [
        label == best or p >= ALPHA for label, p in zip(board.index, board["p_value"], strict=True)
    ]
    return board.rename_axis("backbone").reset_index()


def tie_columns(board: pd.DataFrame, heading: str) -> dict[str, list[str]]:
    """A board's two tie columns as a table shows them: `heading` ('yes (p = ...)', 'best', 'untested'), and the
    test used."""
    return {
        heading: [
            tie_word(test, tied, p)
            for test, tied, p in zip(board["tie_test"], board["tied_with_best"], board["p_value"], strict=True)
        ],
        "tie test": ["" if test == "best" else test for test in board["tie_test"]],
    }
