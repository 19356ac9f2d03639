"""What a run measures beyond top-1: quality and calibration from the test logits, and the model's cost.

Standard metrics come from scikit-learn. The ones written here (Brier score, expected calibration error,
temperature scaling) are checked against independent computations in tests/test_metrics.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax
from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, recall_score

ECE_BINS = 15


def brier_score(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class Brier score: mean over samples of the squared distance between p and the one-hot label."""
    onehot = np.eye(probs.shape[1])[labels]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def calibration_bins(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS):
    """Per equal-width confidence bin: (count, mean confidence, accuracy); the top-1 prediction is judged."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    index = np.minimum((confidence * bins).astype(int), bins - 1)  # [k/B, (k+1)/B); 1.0 joins the last
    count = np.bincount(index, minlength=bins)
    mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / np.maximum(count, 1)
    accuracy = np.bincount(index, weights=correct, minlength=bins) / np.maximum(count, 1)
    return count, mean_confidence, accuracy


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over equal-width confidence bins."""
    count, confidence, accuracy = calibration_bins(probs, labels, bins)
    return float((count * np.abs(confidence - accuracy)).sum() / count.sum())


TEMPERATURE_BOUNDS = (-4.0, 4.0)  # log T


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float | None:
    """The temperature T > 0 minimising the NLL of softmax(logits / T) (Guo et al., 2017), searched over log T.

    None when there is no minimum to find: when every validation image is classified correctly the NLL keeps
    falling as T shrinks (towards 0), so any "fit" is an artefact of the search (its bound, or where the loss
    underflows), not a calibration; likewise when the minimum lies at the search's edge."""
    if (np.asarray(logits).argmax(axis=1) == labels).all():
        return None

    def nll(log_t: float) -> float:
        return -log_softmax(logits / np.exp(log_t), axis=1)[np.arange(len(labels)), labels].mean()

    low, high = TEMPERATURE_BOUNDS
    log_t = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6}).x
    return None if min(log_t - low, high - log_t) < 1e-3 else float(np.exp(log_t))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy computed from log-softmax, so a confident mistake costs its full log-probability (a
    probability clipped at 1e-15, as `sklearn.metrics.log_loss` does, caps it at about 34.5)."""
    return float(-log_softmax(logits, axis=1)[np.arange(len(labels)), labels].mean())


def balanced_accuracy(labels: np.ndarray, predictions: np.ndarray) -> float:
    """Mean recall over the classes present in the test labels (a class absent from them is not averaged in)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true")
        return balanced_accuracy_score(labels, predictions)


def class_weighted_batch_accuracy(logits: np.ndarray, labels: np.ndarray, batch_size: int) -> float:
    """BreakHis's last figure in the original (%): in each test batch, each image weighted by one over its class's
    count in that batch (so every class present counts equally), then the batches' accuracies averaged."""
    hits = (np.asarray(logits).argmax(axis=1) == labels).astype(np.float64)
    accuracies = []
    for start in range(0, len(labels), batch_size):
        batch, right = labels[start : start + batch_size], hits[start : start + batch_size]
        weights = 1.0 / np.bincount(batch)[batch]
        accuracies.append(float((weights * right).sum() / weights.sum()))
    return 100 * float(np.mean(accuracies))


def quality(logits: np.ndarray, labels: np.ndarray, num_classes: int, temperature: float | None) -> dict:
    """Accuracy, per-class errors and calibration of test logits (percentages for accuracies).

    A class with no test image has no accuracy (None) and is left out of macro-F1, as of balanced accuracy; top-5
    is None with five classes or fewer, where it would be 100% by construction."""
    logits = np.asarray(logits, dtype=np.float64)
    everything = np.arange(num_classes)
    present = np.unique(labels)
    probs, predictions = softmax(logits, axis=1), logits.argmax(axis=1)
    top5 = np.argsort(-logits, axis=1)[:, :5]
    recall = 100 * recall_score(labels, predictions, labels=everything, average=None, zero_division=0)
    result = {
        "top1": 100 * float((predictions == labels).mean()),
        "top5": 100 * float((top5 == labels[:, None]).any(axis=1).mean()) if num_classes > 5 else None,
        "balanced_accuracy": 100 * balanced_accuracy(labels, predictions),
        "macro_f1": 100 * f1_score(labels, predictions, labels=present, average="macro", zero_division=0),
        "per_class_accuracy": [float(r) if k in present else None for k, r in enumerate(recall)],
        "confusion_matrix": confusion_matrix(labels, predictions, labels=everything).tolist(),
        "nll": negative_log_likelihood(logits, labels),
        "brier": brier_score(probs, labels),
        "ece": expected_calibration_error(probs, labels),
        "temperature": temperature,
        "ece_temperature_scaled": None,
    }
    if temperature is not None:
        result["ece_temperature_scaled"] = expected_calibration_error(softmax(logits / temperature, axis=1), labels)
    return result


def reliability_diagram(logits: np.ndarray, labels: np.ndarray, path: Path, title: str) -> None:
    """Accuracy against confidence per bin, with the diagonal of perfect calibration and each bin's share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count, confidence, accuracy = calibration_bins(softmax(np.asarray(logits, dtype=np.float64), axis=1), labels)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.bar(edges[:-1], accuracy, width=1 / ECE_BINS, align="edge", edgecolor="black", label="accuracy")
    axis.bar(edges[:-1], count / count.sum(), width=1 / ECE_BINS, align="edge", alpha=0.3, label="share of samples")
    axis.plot([0, 1], [0, 1], "k--", label="perfect calibration")
    axis.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    axis.legend(loc="upper left", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
