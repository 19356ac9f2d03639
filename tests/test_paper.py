"""`--protocol paper` is the original's recipe per dataset, each point observed against its own computation."""

from __future__ import annotations

import json
import math
import re
import runpy
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.transforms import v2

from backbones.datasets import breakhis, cifar10, digits, flowers102
from backbones.loading import DataConfig, load_splits, split_batches
from backbones.pipeline import sample_seeds
from backbones.runconfig import RunConfig, resolve
from backbones.runtime import make_precision
from backbones.train_common import evaluate
from conftest import ROOT, assert_clean_error, call_captured, finished_run, run_inline, run_script
from formats import make_breakhis, make_cifar10, make_flowers102

PAPER = ["--protocol", "paper", "--no-download", "--workers", "0", "--cache", "off"]


def parsed(spec, *argv) -> tuple[RunConfig, DataConfig]:
    config = resolve(spec, ["-model", "mobilenet_v3_large", "--seed", "0", *map(str, argv)])
    return config, config.data


@pytest.mark.slow
def test_cifar10_trains_as_the_original_script(tmp_path):
    """CIFAR-10's script: no SGD phase (its counter is never reset), '>=' on batch-averaged test top-1, no
    BatchNorm re-estimation, patience 10, TrivialAugmentWide before the resize."""
    make_cifar10(tmp_path / "data", per_batch=10, test=20)
    out = tmp_path / "run"
    result = run_script("cifar10.py", "-model", "mobilenet_v3_large", "-bs", "8", "--weights", "none",
                        "--image-size", "32", "--max-epochs", "3", "--data", tmp_path / "data", *PAPER,
                        "--out", out, "--results", tmp_path / "r.csv")  # fmt: skip
    metrics = finished_run(result, out)
    config, recipe = metrics["config"], metrics["paper_recipe"]
    assert (config["patience"], config["sgd_patience"], config["bn_images"], config["lr"]) == (10, 10, 0, 1e-3)
    assert recipe["augment"] == "trivialaugment-first" and recipe["sgd_phase"] is False and recipe["ties_improve"]
    assert [h["phase"] for h in metrics["history"]] == ["adamw"] * 3  # the SGD phase never runs
    assert "never runs its SGD phase" in result.stdout
    assert metrics["n_train"] == 50 and metrics["n_val"] == 0 and metrics["selection"] == "test"

    outputs = np.load(out / "test_outputs.npz")
    hits = outputs["logits"].argmax(1) == outputs["labels"]
    batch_means = [hits[start : start + 8].mean() for start in range(0, len(hits), 8)]  # 8, 8, 4 images
    assert metrics["top1_batch_mean"] == pytest.approx(100 * np.mean(batch_means), abs=1e-3)
    assert metrics["top1"] == pytest.approx(100 * hits.mean(), abs=1e-3)
    assert result.stdout.strip().splitlines()[-1] == f"Top-1 accuracy: {100 * np.mean(batch_means):.2f}%"
    scores = [h["test_top1"] for h in metrics["history"]]
    assert metrics["best_epoch"] == max(e for e, s in enumerate(scores, 1) if s == max(scores))  # ties replace
    # robustness.py feeds the test images as the recipe does (its test statistics, batches of 2 x -bs)
    analysis = run_inline("robustness.py", "--runs", out, "--corruptions", "contrast", "--severities", "1",
                          "--no-invariance")  # fmt: skip
    assert analysis.returncode == 0, analysis.stderr
    clean = json.loads((out / "robustness.json").read_text())["clean"]
    assert clean["top1"] == pytest.approx(100 * hits.mean(), abs=1e-9) and clean["reproduces_record"]


@pytest.mark.slow
def test_digits_keeps_the_first_of_equal_epochs_and_runs_both_phases(tmp_path):
    out = tmp_path / "run"
    result = run_script("digits.py", "-model", "mobilenet_v3_large", "-bs", "128", "--weights", "none",
                        "--max-epochs", "2", "--patience", "1", *PAPER, "--out", out, "--log-every", "0.001",
                        "--results", tmp_path / "r.csv")  # fmt: skip
    metrics = finished_run(result, out)
    assert "PROTOCOL paper" in result.stdout and "TEST set" in result.stdout
    progress = r"epoch 1 adamw: batch \d+/\d+, [\d.]+ img/s, loss [\d.]+, acc [\d.]+%, \d+s left"  # not a terminal
    assert re.search(progress, result.stdout), result.stdout[:2000]
    assert metrics["n_val"] == 0 and metrics["selection"] == "test"
    assert metrics["config"]["sgd_patience"] == 1  # a --patience given applies to both phases
    assert {h["phase"] for h in metrics["history"]} == {"adamw", "sgd"}
    scores = [h["test_top1"] for h in metrics["history"]]
    assert metrics["best_epoch"] == min(e for e, s in enumerate(scores, 1) if s == max(scores))  # '>': first wins
    assert metrics["best_selection_top1"] == pytest.approx(metrics["top1_batch_mean"], abs=1e-3)


def test_the_original_pipeline_normalises_train_and_test_apart_and_augments_before_the_resize(tmp_path):
    make_cifar10(tmp_path / "data", per_batch=4, test=6)
    config, data = parsed(cifar10.SPEC, "--data", tmp_path / "data", *PAPER, "--image-size", "48", "-bs", "4")
    catalog, samples = load_splits(cifar10.SPEC, data)
    precision = make_precision(torch.device("cpu"))
    batches = {
        split: split_batches(
            cifar10.SPEC, data, catalog, samples, split, precision, split == "train", (None, None)
        )  # fmt: skip
        for split in ("train", "test")
    }
    recipe = cifar10.SPEC.paper
    for split, norm in (("train", recipe.train_norm), ("test", recipe.test_norm)):
        assert torch.allclose(batches[split].mean.flatten(), 255 * torch.tensor(norm[0]))
        assert torch.allclose(batches[split].std.flatten(), 255 * torch.tensor(norm[1]))
        assert not batches[split].flip and batches[split].trivial_augment is None  # nothing on the device
    train = batches["train"].loader.dataset
    per_image = v2.Compose([v2.TrivialAugmentWide(), v2.Resize([48, 48]), v2.PILToTensor()])  # the original's order
    for epoch in (1, 2):
        batches["train"].set_epoch(epoch)
        for position in range(len(train)):
            torch.manual_seed(sample_seeds(config.seed, epoch, [position])[0])
            expected = per_image(catalog.read(train.ids[position]))
            assert torch.equal(train[position][0], expected), (epoch, position)
    assert batches["test"].loader.batch_size == 4 and batches["train"].loader.persistent_workers is False


def test_flowers_trains_on_the_official_train_split_alone_with_augmentation_after_the_resize(tmp_path):
    make_flowers102(tmp_path / "data", classes=3, per_split=2)
    config, data = parsed(flowers102.SPEC, "--data", tmp_path / "data", *PAPER)
    assert (config.train.patience, config.train.sgd_patience) == (20, 20)
    catalog, samples = load_splits(flowers102.SPEC, data)
    assert samples["split"].value_counts().to_dict() == {"train": 6, "unused": 6, "test": 6}  # official val unused
    precision = make_precision(torch.device("cpu"))
    no_cache = (None, None)
    batches = split_batches(flowers102.SPEC, data, catalog, samples, "train", precision, True, no_cache)
    assert batches.trivial_augment is not None and not batches.flip
    assert batches.loader.dataset.augment_first is None


def test_breakhis_is_split_image_by_image_under_paper_and_says_that_it_leaks(tmp_path, capsys):
    make_breakhis(tmp_path / "data", per_patient=3)
    _, data = parsed(breakhis.SPEC, "--data", tmp_path / "data", *PAPER, "-mag", "400")
    _, samples = load_splits(breakhis.SPEC, data)
    assert "image by image" in capsys.readouterr().err
    patients = samples["sample"].map(lambda s: breakhis.patient_of(s.split("/")[-3]))
    assert (samples.assign(patient=patients).groupby("patient")["split"].nunique() > 1).any()  # it does leak
    for label, count in samples["label"].value_counts().items():
        assert (samples.loc[samples["label"] == label, "split"] == "test").sum() == math.ceil(0.3 * count)
    norms = {mag: breakhis.SPEC.paper_recipe({"mag": mag}).train_norm for mag in breakhis.MAGNIFICATIONS}
    assert len(set(norms.values())) == 4  # one set of statistics per magnification


def test_protocol_defaults_are_the_projects_outside_paper():
    config, data = parsed(digits.SPEC)
    train = config.train
    assert (train.patience, train.sgd_patience, train.lr, train.bn_images) == (10, 10, 1e-3, 2048)
    assert data.paper is None and config.protocol.recipe is None and config.protocol.selection == "val"


def test_top1_is_averaged_over_batches_as_the_original_does():
    logits = torch.eye(3)[[0, 1, 2, 0, 0, 0, 2]]  # predicted classes 0 1 2 0 0 0 2
    labels = torch.tensor([0, 1, 0, 1, 1, 1, 2])  # hits: 1 1 0 | 0 0 0 | 1
    loader = Batches([(logits[i : i + 3], labels[i : i + 3]) for i in range(0, 7, 3)], batch_size=3)
    result = evaluate(nn.Identity(), loader, make_precision(torch.device("cpu")), "t")
    assert result.batch_top1 == pytest.approx(100 * (2 / 3 + 0 + 1) / 3)
    assert result.top1 == pytest.approx(100 * 3 / 7)


class Batches(list):
    """Ready batches with the loader attribute `evaluate` reads its batch size from."""

    def __init__(self, batches: list, batch_size: int) -> None:
        super().__init__(batches)
        self.loader = SimpleNamespace(batch_size=batch_size)


def original_epochs(scores: list[float], patience: int, ties_improve: bool) -> int:
    """How many epochs the original's loop runs on these test scores: its '>' scripts reset the counter on an
    improvement and then add one; its '>=' scripts add one and then reset."""
    best, counter, epochs = [0.0], 0, 0
    for score in scores:
        if counter >= patience:
            break
        epochs += 1
        if ties_improve:
            best.append(score)
            counter += 1
            if score >= max(best):
                counter = 0
        else:
            if score > max(best):
                counter = 0
            best.append(score)
            counter += 1
    return epochs


@pytest.mark.parametrize("ties_improve", [False, True])
@pytest.mark.parametrize("patience", [1, 3, 10])
def test_a_phase_stops_after_as_many_epochs_as_the_originals_loop(ties_improve, patience):
    from backbones.datasets.common.spec import PaperRecipe
    from backbones.train_common import Evaluation, judge, next_stale

    recipe = PaperRecipe(ties_improve=ties_improve)
    rng = np.random.default_rng(patience)
    for _ in range(50):
        scores = list(np.round(rng.uniform(50, 60, 40), 0))  # whole numbers: ties happen
        best, stale, epochs = {}, 0, 0
        for score in scores:
            if stale >= patience:
                break
            epochs += 1
            top1, improved = judge(Evaluation(1.0, score, score, None, None), best, recipe)
            if improved:
                best = {"epoch": epochs, "top1": top1, "loss": 1.0}
            stale = next_stale(stale, improved, recipe)
        assert epochs == original_epochs(scores, patience, ties_improve), scores


def test_breakhis_final_figure_is_the_originals_class_weighted_batch_mean():
    from backbones.metrics import class_weighted_batch_accuracy

    labels = np.array([0, 0, 0, 1, 1, 0, 1])
    logits = np.eye(2)[[0, 1, 0, 1, 0, 0, 1]]  # right: 1 0 1 1 0 1 1
    # batch 1 (0,0,0,1): class 0 has 2/3 right, class 1 1/1 -> (2/3 + 1) / 2; batch 2 (1,0,1): class 1 1/2, class 0 1/1
    expected = 100 * ((2 / 3 + 1) / 2 + (1 / 2 + 1) / 2) / 2
    assert class_weighted_batch_accuracy(logits, labels, 4) == pytest.approx(expected)


def test_the_paper_protocol_keeps_the_last_incomplete_training_batch_but_a_single_image():
    from backbones.loading import drops_last_batch

    assert not drops_last_batch(100, 32, paper=True) and drops_last_batch(97, 32, paper=True)
    assert drops_last_batch(100, 32, paper=False) and not drops_last_batch(96, 32, paper=False)
    assert not drops_last_batch(20, 32, paper=False)


def test_the_recipe_log_names_the_statistics_it_used():
    from backbones import datasets
    from backbones.finetune import describe_normalisation

    def said(name: str, options: dict | None = None) -> str:
        spec = datasets.spec(name)
        return describe_normalisation(spec.paper_recipe(options or {}), spec)

    assert said("dtd") == "ImageNet's statistics"
    assert said("galaxy10").startswith("no normalisation: pixel values of 0-255")
    assert said("breakhis", {"mag": 200}).startswith("its own statistics of the train images")
    assert said("stanforddogs") == "ImageNet's statistics"


def test_ucmercedlanduse_is_the_originals_name_for_ucmerced(tmp_path, monkeypatch):
    """The file itself, run as a script, inside the test process (no interpreter start-up to pay for)."""
    argv = ["ucmercedlanduse.py", "-model", "mobilenet", "--data", str(tmp_path), "--no-download"]
    monkeypatch.setattr(sys, "argv", argv)
    result = call_captured(lambda: runpy.run_path(str(ROOT / "ucmercedlanduse.py"), run_name="__main__"), argv)
    assert_clean_error(result, "UC Merced")
    assert result.returncode == 2
