"""The statistics that decide whether two backbones are tied: paired tests over seeds or over test images, and
the pooled seed-to-seed spread that ranks rows with different seed counts fairly. Shared by the accuracy and the
robustness leaderboards."""

from __future__ import annotations

import math

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


def pooled_seed_std(top1: pd.Series, labels: pd.Series) -> float:
    """The seed-to-seed standard deviation of top-1, pooled over every row with two or more seeds (NaN if none)."""
    groups = [values for _, values in top1.groupby(labels) if len(values) >= 2]
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
