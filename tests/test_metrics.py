"""The hand-written metrics against independent computations, and what a run writes about itself."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from backbones import metrics


def random_logits(n: int = 400, k: int = 7, seed: int = 0, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, scale, (n, k))
    logits[np.arange(n), labels] += rng.uniform(0, 4, n)  # better than chance, not perfect
    return logits, labels


def softmax(logits):
    return torch.softmax(torch.as_tensor(logits, dtype=torch.float64), 1).numpy()


def test_brier_score_matches_its_definition():
    logits, labels = random_logits()
    probs = softmax(logits)
    by_hand = np.mean([sum((probs[i, c] - (c == labels[i])) ** 2 for c in range(probs.shape[1]))
                       for i in range(len(labels))])  # fmt: skip
    assert metrics.brier_score(probs, labels) == pytest.approx(by_hand, rel=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ece_matches_a_loop_over_bins(seed):
    logits, labels = random_logits(seed=seed)
    probs = softmax(logits)
    confidence, correct = probs.max(1), probs.argmax(1) == labels
    edges, gaps = np.linspace(0, 1, 16), 0.0
    for b in range(15):
        upper = confidence <= edges[b + 1] if b == 14 else confidence < edges[b + 1]
        members = (confidence >= edges[b]) & upper
        if members.any():
            gaps += members.sum() * abs(confidence[members].mean() - correct[members].mean())
    assert metrics.expected_calibration_error(probs, labels) == pytest.approx(gaps / len(labels), rel=1e-12)
    assert metrics.expected_calibration_error(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2])) == 0  # sure and right


def test_temperature_is_the_nll_minimum_and_undoes_overconfidence():
    logits, labels = random_logits(n=4000, scale=1.0)
    temperature = metrics.fit_temperature(logits, labels)

    def nll(t):
        return torch.nn.functional.cross_entropy(torch.as_tensor(logits / t), torch.as_tensor(labels)).item()

    step = 1e-3 * temperature
    assert (nll(temperature + step) - nll(temperature - step)) / (2 * step) == pytest.approx(0, abs=1e-4)  # fixed point
    assert nll(temperature) <= min(nll(temperature * 1.05), nll(temperature / 1.05))
    assert metrics.fit_temperature(3 * logits, labels) == pytest.approx(3 * temperature, rel=1e-3)  # scale-equivariant


def test_quality_agrees_with_direct_computations():
    logits, labels = random_logits(k=7)
    labels[labels == 6] = 5  # a class with no test sample must not break per-class metrics
    scores = metrics.quality(logits, labels, num_classes=7, temperature=1.5)
    predictions = logits.argmax(1)
    matrix = np.array(scores["confusion_matrix"])
    assert matrix.sum() == len(labels) and matrix[0, 1] == ((labels == 0) & (predictions == 1)).sum()
    assert scores["top1"] == pytest.approx(100 * (predictions == labels).mean())
    per_class = [100 * (predictions[labels == c] == c).mean() for c in range(6)]
    assert scores["per_class_accuracy"][:6] == pytest.approx(per_class)
    assert scores["per_class_accuracy"][6] is None  # no test image: not applicable, never 0
    assert scores["balanced_accuracy"] == pytest.approx(np.mean(per_class))
    nll = torch.nn.functional.cross_entropy(torch.as_tensor(logits), torch.as_tensor(labels)).item()
    assert scores["nll"] == pytest.approx(nll, rel=1e-9)
    scaled = metrics.expected_calibration_error(softmax(logits / 1.5), labels)
    assert scores["ece_temperature_scaled"] == pytest.approx(scaled)


@pytest.mark.slow
def test_run_writes_every_metric_and_the_files_to_recompute_them(digits_run):
    out, metrics_json, _ = digits_run
    for key in ("top1", "top5", "balanced_accuracy", "macro_f1", "per_class_accuracy", "confusion_matrix", "nll",
                "brier", "ece", "temperature", "ece_temperature_scaled", "params", "gflops", "train_seconds",
                "epochs", "seconds_per_epoch", "train_images_per_s", "latency_ms_batch1", "throughput_images_per_s",
                "peak_memory_mb", "device"):  # fmt: skip
        assert metrics_json[key] is not None, key
    saved = np.load(out / "test_outputs.npz")
    assert len(saved["labels"]) == metrics_json["n_test"]
    again = metrics.quality(saved["logits"], saved["labels"], metrics_json["num_classes"], metrics_json["temperature"])
    for key in ("top1", "nll", "ece", "ece_temperature_scaled", "brier", "macro_f1"):
        assert again[key] == pytest.approx(metrics_json[key], abs=1e-5), key
    confusion = pd.read_csv(out / "confusion_matrix.csv", index_col=0)
    assert confusion.to_numpy().tolist() == metrics_json["confusion_matrix"]
    assert list(confusion.columns) == metrics_json["classes"]
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"
    assert metrics_json["temperature"] > 0 and metrics_json["gflops"] > 0
    assert json.loads((out / "metrics.json").read_text())["temperature"] == metrics_json["temperature"]
