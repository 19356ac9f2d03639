"""Scores that predict, from frozen features, how well a backbone will fine-tune on a dataset.

LogME (You et al., ICML 2021) and LEEP (Nguyen et al., ICML 2020) are written here, from the papers' equations;
tests/test_transferability.py checks them against direct computations. The kNN and linear-probe accuracies
come from scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import kendalltau
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize

LOGME_ITERATIONS = 100
LOGME_TOLERANCE = 1e-6


@dataclass(frozen=True)
class Evidence:
    """One target's Bayesian linear regression at the evidence maximum: log evidence / n, and the precisions."""

    log_evidence: float
    alpha: float  # precision of the prior on the weights
    beta: float  # precision of the noise


def logme_target(singular_values: np.ndarray, projections: np.ndarray, outside: float, n: int, d: int) -> Evidence:
    """Maximise the evidence of y = f w + noise, w ~ N(0, I/alpha), noise ~ N(0, 1/beta), by MacKay's fixed point.

    Works in the basis of f's singular vectors: `projections` = U^T y, `outside` = |y|^2 - |U^T y|^2 (the part of y
    no weight vector can reach); `d` is the feature dimension (directions beyond f's rank carry only the prior).
    """
    sigma = singular_values**2
    squared = projections**2
    alpha, beta = 1.0, 1.0
    for _ in range(LOGME_ITERATIONS):
        ratio = alpha / beta
        gamma = np.sum(sigma / (sigma + ratio))  # effective number of well-determined weights
        weight_norm = np.sum(sigma * squared / (sigma + ratio) ** 2)  # |m|^2, m the posterior mean
        residual = np.sum(squared * (ratio / (sigma + ratio)) ** 2) + outside  # |y - f m|^2
        alpha_new, beta_new = gamma / max(weight_norm, 1e-12), (n - gamma) / max(residual, 1e-12)
        converged = abs(alpha_new - alpha) <= LOGME_TOLERANCE * alpha and abs(beta_new - beta) <= LOGME_TOLERANCE * beta
        alpha, beta = alpha_new, beta_new
        if converged:
            break
    ratio = alpha / beta
    weight_norm = np.sum(sigma * squared / (sigma + ratio) ** 2)
    residual = np.sum(squared * (ratio / (sigma + ratio)) ** 2) + outside
    log_det = np.sum(np.log(alpha + beta * sigma)) + (d - len(sigma)) * np.log(alpha)
    evidence = (
        d / 2 * np.log(alpha)
        + n / 2 * np.log(beta)
        - alpha / 2 * weight_norm
        - beta / 2 * residual
        - log_det / 2
        - n / 2 * np.log(2 * np.pi)
    )
    return Evidence(float(evidence / n), float(alpha), float(beta))


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: the maximised log evidence per sample of a linear model from features to each class's one-hot
    column, averaged over classes. One SVD of the features serves every class. Higher predicts better transfer."""
    f = features.astype(np.float64)
    n, d = f.shape
    u, singular_values, _ = np.linalg.svd(f, full_matrices=False)
    keep = singular_values > singular_values.max() * max(n, d) * np.finfo(np.float64).eps  # the numerical rank
    u, singular_values = u[:, keep], singular_values[keep]
    scores = []
    for k in np.unique(labels):
        y = (labels == k).astype(np.float64)
        projections = u.T @ y
        outside = max(float(y @ y - projections @ projections), 0.0)
        scores.append(logme_target(singular_values, projections, outside, n, d).log_evidence)
    return float(np.mean(scores))


def leep(source_probabilities: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: the average log-likelihood of the target labels under the 'expected empirical predictor', which
    maps the source classifier's class probabilities to target labels through their empirical joint
    distribution. Closer to 0 predicts better transfer."""
    theta = source_probabilities.astype(np.float64)
    classes, target = np.unique(labels, return_inverse=True)
    joint = np.zeros((theta.shape[1], len(classes)))  # P(z, y)
    np.add.at(joint.T, target, theta)
    joint /= len(labels)
    conditional = joint / np.maximum(joint.sum(axis=1, keepdims=True), 1e-300)  # P(y | z)
    likelihood = np.einsum("iz,iz->i", theta, conditional[:, target].T)
    return float(np.mean(np.log(np.maximum(likelihood, 1e-300))))


def knn_accuracy(train: np.ndarray, train_labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray) -> float:
    """Top-1 (%) on the validation features of a 20-nearest-neighbour vote by cosine similarity, distance-weighted."""
    neighbours = KNeighborsClassifier(n_neighbors=min(20, len(train)), weights="distance")
    neighbours.fit(normalize(train), train_labels)
    return 100 * float(neighbours.score(normalize(val), val_labels))


def linear_probe_accuracy(
    train: np.ndarray, train_labels: np.ndarray, val: np.ndarray, val_labels: np.ndarray, seed: int
) -> float:
    """Top-1 (%) on the validation features of a logistic regression on standardised training features."""
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, random_state=seed))
    probe.fit(train, train_labels)
    return 100 * float(probe.score(val, val_labels))


def agreement(predicted: pd.Series, measured: pd.Series) -> dict:
    """How well a score ranks backbones that were also fine-tuned: Kendall's tau against measured top-1, whether
    its first pick is the true best, and the regret (top-1 points lost by taking its first pick)."""
    both = pd.concat([predicted.rename("predicted"), measured.rename("measured")], axis=1).dropna()
    if len(both) < 2:
        return {}
    pick, best = both["predicted"].idxmax(), both["measured"].idxmax()
    return {
        "backbones": len(both),
        "kendall_tau": float(kendalltau(both["predicted"], both["measured"]).statistic),
        "pick": pick,
        "true_best": best,
        "pick_is_best": bool(both.loc[pick, "measured"] == both["measured"].max()),
        "regret": float(both["measured"].max() - both.loc[pick, "measured"]),
    }
