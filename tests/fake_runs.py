"""Finished run folders written without training, in the layout and with the fields a dataset script writes
(metrics.json, test_outputs.npz, config.json, split.csv): for tests of what reads runs (report.py and its
robustness part), which then need no model and run in the fast tier."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def write_run(
    folder: Path,
    model: str = "mobilenet_v3_large",
    seed: int = 0,
    class_names: tuple[str, ...] = ("cat", "dog", "owl"),
    accuracy: float = 0.8,
    n_test: int = 30,
    dataset: str = "imagefolder",
    data: str = "/data/photos",
    lr: float = 0.001,
    selection_top1: float = 60.0,
    **fields,
) -> dict:
    """A run whose test logits classify a share `accuracy` of its `n_test` images right (seeded by model and
    seed); `fields` override metrics.json's values after they are computed (to write a damaged file)."""
    rng = np.random.default_rng([seed, sum(map(ord, model))])
    labels = np.arange(n_test) % len(class_names)
    right = rng.random(n_test) < accuracy
    predicted = np.where(right, labels, (labels + 1 + rng.integers(0, len(class_names) - 1, n_test)) % len(class_names))
    logits = rng.normal(0, 0.5, (n_test, len(class_names))).astype(np.float32)
    logits[np.arange(n_test), predicted] += 3.0
    folder.mkdir(parents=True)
    np.savez_compressed(folder / "test_outputs.npz", logits=logits, labels=labels)
    top1 = 100 * float(np.mean(logits.argmax(1) == labels))
    config = {"model": model, "bs": 8, "weights": "none", "image_size": [32, 32], "finetune": "full",
              "protocol": "val", "max_epochs": 1, "patience": 1, "lr": lr, "seed": seed, "data": data,
              "val_fraction": 0.1, "train_fraction": 1.0, "shots": None, "out": str(folder)}  # fmt: skip
    record = {
        "schema": 1, "dataset": dataset, "dataset_options": {}, "dataset_fingerprint": "0123456789abcdef",
        "classes": list(class_names), "data": data, "domain": "custom", "model": model, "weights": "none",
        "seed": seed, "protocol": "val", "eval_only": False, "selection": "val", "num_classes": len(class_names),
        "n_train": 90, "n_val": 9, "n_test": n_test, "image_size": [32, 32], "default_image_size": [224, 224],
        "top1": top1, "top5": None, "balanced_accuracy": top1, "macro_f1": top1, "nll": 0.9, "brier": 0.3,
        "ece": 0.1, "temperature": 1.2, "ece_temperature_scaled": 0.05, "params": 4_200_000, "gflops": 0.014,
        "latency_ms_batch1": 12.0, "throughput_images_per_s": 200.0, "train_seconds": 10.0,
        "peak_memory_mb": 1000.0, "history": [
            {"epoch": 1, "phase": "adamw", "train_loss": 1.0, "train_top1": 50.0, "val_loss": 1.0, "val_top1": 60.0,
             "lr": 0.001, "seconds": 1.0},
        ],
        "best_selection_top1": selection_top1, "config": config, "finished": f"2026-11-28T10:00:{seed:02d}",
        "out": str(folder),
    }  # fmt: skip
    record.update(fields)
    (folder / "metrics.json").write_text(json.dumps(record))
    (folder / "config.json").write_text(json.dumps({"script": f"{dataset}.py", "argv": [], "config": config}))
    (folder / "log.txt").write_text("")
    return record
