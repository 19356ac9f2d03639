"""One run over two processes with torchrun (gloo on CPU): every test image is counted exactly once."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import FAST, ROOT
from formats import make_cifar10


@pytest.mark.slow
def test_two_process_run_counts_every_test_image_once_and_writes_once(tmp_path):
    out = tmp_path / "run"
    make_cifar10(tmp_path / "data", per_batch=20, test=21)  # an odd test split: shards of 11 and 10
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(ROOT / "cifar10.py"), *FAST, "--data", str(tmp_path / "data"), "--no-download", "--device", "cpu",
               "--out", str(out), "--results", str(tmp_path / "results.csv")]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    split = pd.read_csv(out / "split.csv")
    test_labels = split.loc[split["split"] == "test", "label"].to_numpy()
    assert metrics["processes"] == 2 and metrics["n_test"] == len(test_labels) == 21
    saved = np.load(out / "test_outputs.npz")
    assert np.array_equal(saved["labels"], test_labels)  # all of them, once each, in the split's order
    accuracy = 100 * np.mean(saved["logits"].argmax(axis=1) == saved["labels"])
    assert metrics["top1"] == pytest.approx(accuracy, abs=1e-4)
    assert result.stdout.count("Top-1 accuracy:") == 1  # only the first process prints
    lines = (out / "log.txt").read_text().splitlines()
    assert len(lines) == len(set(lines)) and len(pd.read_csv(tmp_path / "results.csv")) == 1
    # robustness.py reads the run back in one process: the same test images, the same predictions
    analysis = subprocess.run(
        [sys.executable, str(ROOT / "robustness.py"), "--runs", str(out), "--corruptions", "fog", "--severities", "3",
         "--no-invariance", "--device", "cpu"], cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert analysis.returncode == 0, analysis.stderr[-3000:]
    robustness = json.loads((out / "robustness.json").read_text())
    assert robustness["n_test"] == 21 and robustness["clean"]["top1"] == pytest.approx(accuracy, abs=1e-9)
