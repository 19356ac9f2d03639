"""robustness.py on real finished runs: the clean score reproduces the run's, every number is consistent with the
run's own saved test outputs, reruns are skipped or reproduced exactly; and the transformations do what they say."""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from backbones.corruptions import CORRUPTIONS
from backbones.robustness import TRANSFORMS, answered, confusion_pairs, scores
from backbones.runmodel import saved_split
from conftest import FAST, assert_clean_error, finished_run, run_inline, run_script
from formats import make_class_folders

SUBSET = ("--corruptions", "gaussian_noise", "snow", "elastic_transform", "jpeg_compression", "--severities", "2", "5")


def read(folder) -> dict:
    return json.loads((folder / "robustness.json").read_text())


def copied(run, tmp_path_factory, name: str):
    folder = tmp_path_factory.mktemp(name) / "run"
    shutil.copytree(run, folder)
    return folder


@pytest.fixture(scope="module")
def analysed(digits_run, tmp_path_factory):
    """The README's quick-start run, analysed with every corruption and transformation."""
    out, metrics, _ = digits_run
    folder = copied(out, tmp_path_factory, "robust")
    result = run_script("robustness.py", "--runs", folder.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, metrics, result


@pytest.mark.slow
def test_clean_images_reproduce_the_runs_recorded_predictions(analysed):
    folder, metrics, result = analysed
    found = read(folder)
    saved = np.load(folder / "test_outputs.npz")
    recorded = 100 * np.mean(saved["logits"].argmax(1) == saved["labels"])  # what the run itself predicted
    assert found["clean"]["top1"] == pytest.approx(recorded, abs=1e-9)
    assert found["clean"]["top1"] == pytest.approx(metrics["top1"], abs=1e-6) and found["clean"]["reproduces_record"]
    assert found["n_test"] == metrics["n_test"] == len(saved["labels"])
    assert f"clean top-1 {metrics['top1']:.2f}%" in result.stdout and "WARNING" not in result.stdout


@pytest.mark.slow
def test_every_corruption_and_severity_is_scored_and_summarised(analysed):
    folder, metrics, _ = analysed
    found = read(folder)
    assert list(found["corruptions"]) == list(CORRUPTIONS)
    n = metrics["n_test"]
    means = []
    for name, corruption in found["corruptions"].items():
        rows = corruption["severities"]
        assert [row["severity"] for row in rows] == [1, 2, 3, 4, 5], name
        for row in rows:
            correct = row["top1"] * n / 100
            assert correct == pytest.approx(round(correct), abs=1e-6)  # a count of test images
            assert row["nll"] > 0 and 0 <= row["true_class_prob"] <= 1
        means.append(np.mean([row["top1"] for row in rows]))
    assert found["mean_corruption_top1"] == pytest.approx(np.mean(means))
    per_image = found["image_corruption_top1"]  # each image's share of its 75 corrupted copies classified right
    assert len(per_image) == n and 100 * np.mean(per_image) == pytest.approx(np.mean(means), abs=0.01)
    clean = found["clean"]["top1"]
    assert found["relative_drop"] == pytest.approx((clean - np.mean(means)) / clean)
    families = {c.family for c in CORRUPTIONS.values()}
    assert set(found["family_top1"]) == families
    # the strongest Gaussian noise costs a model trained on clean digits accuracy
    assert found["corruptions"]["gaussian_noise"]["severities"][4]["top1"] < clean
    assert found["pixel_scale"] == pytest.approx(32 / 224)
    assert found["seconds"]["corruption"] > 0 and found["seconds"]["inference"] > 0


@pytest.mark.slow
def test_invariance_and_mistakes_are_recorded(analysed):
    folder, _, _ = analysed
    found = read(folder)
    assert list(found["invariance"]) == ["scale", "shift", "rotation", "hflip", "resolution"]
    assert [a["amount"] for a in found["invariance"]["shift"]["amounts"]] == [1, 2, 5, 9]  # 4..64 px at 32/224
    saved = np.load(folder / "test_outputs.npz")
    predicted, labels = saved["logits"].argmax(1), saved["labels"]
    wrong = Counter((int(t), int(p)) for t, p in zip(labels, predicted, strict=True) if t != p)
    top = found["confusion_pairs"][0]
    assert top["count"] == max(wrong.values())
    assert wrong[(int(top["true"]), int(top["predicted"]))] == top["count"]
    assert top["share_of_errors"] == pytest.approx(top["count"] / sum(wrong.values()), abs=1e-4)


@pytest.mark.slow
def test_a_rerun_is_skipped_and_a_forced_one_reproduces_every_number(analysed, tmp_path_factory):
    folder, _, _ = analysed
    before = (folder / "robustness.json").read_bytes()
    again = run_inline("robustness.py", "--runs", folder.parent)
    assert again.returncode == 0 and "analysed already" in again.stdout
    assert (folder / "robustness.json").read_bytes() == before
    # a different request redoes the run; the same corruption at the same seed draws the same images
    subset = copied(folder, tmp_path_factory, "subset")
    first = run_inline("robustness.py", "--runs", subset.parent, *SUBSET, "--no-invariance", "--force")
    assert first.returncode == 0, first.stderr
    partial = read(subset)
    assert list(partial["corruptions"]) == ["gaussian_noise", "snow", "elastic_transform", "jpeg_compression"]
    full = read(folder)
    for name, corruption in partial["corruptions"].items():
        assert corruption["severities"] == [
            row for row in full["corruptions"][name]["severities"] if row["severity"] in (2, 5)
        ]
    assert partial["invariance"] == {}


@pytest.mark.slow
def test_a_run_without_its_checkpoint_is_refused_clearly(digits_run, tmp_path_factory):
    folder = copied(digits_run[0], tmp_path_factory, "nobest")
    (folder / "best.pt").unlink()
    assert_clean_error(run_inline("robustness.py", "--runs", folder.parent), "has no best.pt")


@pytest.mark.slow
def test_an_imagefolder_run_is_analysed_on_its_own_split(tmp_path):
    data = make_class_folders(tmp_path / "mine", {"cat": 12, "dog": 12, "owl": 12})
    out = tmp_path / "runs" / "folder"
    run = finished_run(
        run_script("imagefolder.py", *FAST, "--data", data, "--out", out, "--results", tmp_path / "r.csv"), out
    )
    result = run_inline("robustness.py", "--runs", tmp_path / "runs", *SUBSET)
    assert result.returncode == 0, result.stderr
    found = read(out)
    assert found["clean"]["top1"] == pytest.approx(run["top1"], abs=1e-6) and found["clean"]["reproduces_record"]
    assert found["n_test"] == run["n_test"]


@pytest.mark.slow
def test_a_class_named_with_a_carriage_return_reads_back_as_its_own_split(tmp_path):
    """split.csv quotes its names: a class folder 'owl\\r' once made it read back as more rows than images, and
    robustness.py then called the unchanged data changed."""
    data = make_class_folders(tmp_path / "mine", {"cat": 6, "dog": 6, "owl\r": 6})
    out = tmp_path / "runs" / "folder"
    run = finished_run(
        run_script("imagefolder.py", *FAST, "--data", data, "--out", out, "--results", tmp_path / "r.csv"), out
    )
    saved = pd.read_csv(out / "split.csv", dtype={"sample": str})
    assert len(saved) == 18 and (saved["sample"].str.startswith("owl\r/")).sum() == 6
    result = run_inline("robustness.py", "--runs", tmp_path / "runs", *SUBSET)
    assert result.returncode == 0, result.stderr
    assert read(out)["clean"]["top1"] == pytest.approx(run["top1"], abs=1e-6)


def test_a_split_file_that_is_not_one_holds_no_images_to_compare(tmp_path):
    """A shared run's split.csv is untrusted: one that lacks a column or is not CSV compares as a changed split
    (a clear message), never as a traceback."""
    path = tmp_path / "split.csv"
    rows = {"sample": ["cat/0001.png", "dog/2.png", "owl/3.png"], "label": [0, 1, 2], "split": ["test", "val", "test"]}
    pd.DataFrame(rows).to_csv(path, index=False, quoting=csv.QUOTE_NONNUMERIC)
    assert saved_split(path, "test").values.tolist() == [["cat/0001.png", 0], ["owl/3.png", 2]]
    for damaged in ("", "sample,label\ncat/1.png,0\n", "\x00\x01\x02"):
        path.write_text(damaged)
        assert saved_split(path, "test").empty, repr(damaged)
    path.unlink()
    assert saved_split(path, "test").empty


def test_an_earlier_analysis_is_reused_only_when_it_answers_the_same_request(tmp_path):
    path, wanted = tmp_path / "robustness.json", {"corruptions": ["fog"], "severities": [1]}
    path.write_text(json.dumps({"request": wanted}))
    assert answered(path, wanted) and not answered(path, {**wanted, "severities": [2]})
    for damaged in ("[" * 100_000 + "]" * 100_000, '["request"]', "{"):  # analysed again, not a traceback
        path.write_text(damaged)
        assert not answered(path, wanted)


def test_no_runs_is_a_clear_error(tmp_path):
    assert_clean_error(run_inline("robustness.py", "--runs", tmp_path), "No finished runs")


# ------------------------------------------------------------------------------------- the pieces alone
def test_scores_against_hand_computed_values():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    found = scores(logits, labels)
    p = [np.exp(2) / (np.exp(2) + 1), np.exp(1) / (np.exp(1) + 1), 1 / (np.exp(3) + 1)]
    assert found["top1"] == pytest.approx(200 / 3)
    assert found["nll"] == pytest.approx(-np.mean(np.log(p)))
    assert found["true_class_prob"] == pytest.approx(np.mean(p))


def test_confusion_pairs_count_mistakes_only():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([1, 1, 0, 2, 1, 0])
    pairs = confusion_pairs(torch.nn.functional.one_hot(predictions, 3).float(), labels, ["a", "b", "c"])
    assert pairs[0] == {"true": "a", "predicted": "b", "count": 2, "share_of_errors": 0.5}
    assert sorted((p["true"], p["predicted"], p["count"]) for p in pairs[1:]) == [("b", "c", 1), ("c", "a", 1)]


def test_the_transformations_move_pixels_as_named():
    image = torch.zeros(1, 3, 16, 16, dtype=torch.uint8)
    image[..., 2:6, 3:9] = 200
    shifted = TRANSFORMS["shift"](image, 3)
    expected = torch.zeros_like(image)
    expected[..., 5:9, 6:12] = 200  # down and right by 3, black behind
    assert torch.equal(shifted, expected)
    assert torch.equal(TRANSFORMS["hflip"](image, 1), image.flip(-1))
    assert torch.equal(TRANSFORMS["rotation"](image, 90), torch.rot90(image, 1, (-2, -1)))  # anticlockwise
    zoomed_out = TRANSFORMS["scale"](torch.full((1, 3, 16, 16), 90, dtype=torch.uint8), 0.5)
    assert (zoomed_out[..., 4:12, 4:12] == 90).all() and zoomed_out.sum() == 90 * 3 * 64  # padded with black
    checker = ((torch.arange(16).view(-1, 1) + torch.arange(16)) % 2 * 255).to(torch.uint8).expand(1, 3, 16, 16)
    blurred = TRANSFORMS["resolution"](checker.contiguous(), 0.5).float()
    assert (blurred - 127.5).abs().max() <= 3  # half the resolution cannot hold a one-pixel checkerboard


def test_the_summary_of_a_run_with_no_clean_accuracy_has_no_relative_drop():
    from backbones.robustness import summary

    result = {
        "run": "runs/x", "model": "m", "dataset": "d", "mean_corruption_top1": 0.0, "relative_drop": None,
        "clean": {"top1": 0.0, "reproduces_record": True, "recorded_top1": 0.0},
        "seconds": {"corruption": 1.0, "inference": 4.0, "corruption_over_inference": 0.25},
    }  # fmt: skip
    text = summary(result)
    assert "clean top-1 0.00%, mean corruption top-1 0.00%; corrupting took 1.0s" in text and "drop" not in text
