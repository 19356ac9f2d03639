"""LogME and LEEP against direct computations of the quantities they claim to compute."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from backbones.transferability import leep, logme, logme_target


def direct_log_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log p(y | alpha, beta) with the weights integrated out: y ~ N(0, f f^T / alpha + I / beta)."""
    covariance = f @ f.T / alpha + np.eye(len(y)) / beta
    return float(multivariate_normal(mean=np.zeros(len(y)), cov=covariance).logpdf(y))


def converged(f: np.ndarray, y: np.ndarray):
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    projections = u.T @ y
    return logme_target(s, projections, float(y @ y - projections @ projections), *f.shape)


@pytest.mark.parametrize("n, d", [(60, 6), (12, 30)])  # more samples than features, and fewer
def test_logme_evidence_is_the_marginal_likelihood_at_its_maximum(n, d):
    rng = np.random.default_rng(n)
    f = rng.normal(size=(n, d))
    y = (f @ rng.normal(size=d) + 0.5 * rng.normal(size=n) > 0).astype(float)
    result = converged(f, y)
    assert result.log_evidence * n == pytest.approx(direct_log_evidence(f, y, result.alpha, result.beta), rel=1e-8)
    step = 1e-3  # the fixed point is a maximum: no small change of alpha or beta raises the evidence
    for da, db in [(step, 0), (-step, 0), (0, step), (0, -step)]:
        moved = direct_log_evidence(f, y, result.alpha * np.exp(da), result.beta * np.exp(db))
        assert moved <= result.log_evidence * n + 1e-9


def test_logme_prefers_features_that_separate_the_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    centres = rng.normal(size=(4, 16)) * 3
    separating = centres[labels] + rng.normal(size=(200, 16))
    noise = rng.normal(size=(200, 16))
    assert logme(separating, labels) > logme(noise, labels) + 0.1


def test_logme_averages_the_per_class_evidence():
    rng = np.random.default_rng(2)
    f, labels = rng.normal(size=(30, 5)), rng.integers(0, 3, 30)
    per_class = [converged(f, (labels == k).astype(float)).log_evidence for k in range(3)]
    assert logme(f, labels) == pytest.approx(np.mean(per_class))


def test_leep_follows_its_definition():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(50, 7))
    theta = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = rng.integers(0, 3, 50)
    n = len(labels)
    expected = 0.0
    for i in range(n):  # 1/n sum_i log sum_z P(y_i | z) theta_i(z), P(y | z) from the empirical joint
        total = 0.0
        for z in range(7):
            joint_yz = sum(theta[j, z] for j in range(n) if labels[j] == labels[i]) / n
            marginal_z = sum(theta[j, z] for j in range(n)) / n
            total += joint_yz / marginal_z * theta[i, z]
        expected += np.log(total) / n
    assert leep(theta, labels) == pytest.approx(expected)


def test_leep_is_zero_for_a_source_that_names_the_target_and_the_prior_for_one_that_says_nothing():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    assert leep(np.eye(5)[labels], labels) == pytest.approx(0.0)
    prior = np.bincount(labels) / len(labels)
    assert leep(np.full((60, 5), 0.2), labels) == pytest.approx(np.mean(np.log(prior[labels])))
