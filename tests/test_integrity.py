"""Integrity: no file the tool reads runs code, no number is silently wrong, and bad input is a clear error.

Each test here failed on the code before these guarantees were added; most run in-process on small fixtures.
"""

from __future__ import annotations

import errno
import io
import json
import math
import os
import pickle
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from backbones import finetune, metrics, train_common
from backbones.datasets import cifar10, digits, flowers102, imagefolder
from backbones.datasets.common import download, folders, readers, splits
from backbones.datasets.common.spec import ReadOptions
from backbones.errors import UserError
from backbones.loading import load_splits, split_identity
from backbones.options import build_parser
from backbones.runconfig import RunConfig, resolve
from backbones.runfiles import RESUME_KEYS, append_result, check_results_table
from conftest import FAST, assert_clean_error, run_inline, run_script
from formats import make_cifar10, make_class_folders, make_flowers102


class Payload:
    """A pickle that, when loaded, creates a file: what an attacker would plant."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def age(root: Path) -> None:
    """Make every folder under `root` look unchanged for a minute, so its listing may be indexed."""
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(folder, (time.time() - 60, time.time() - 60))


# ------------------------------------------------------------------------------------------ code execution
def test_a_planted_folder_index_runs_nothing_and_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("BACKBONES_CACHE", str(tmp_path / "cache"))
    root = make_class_folders(tmp_path / "data", {"a": 2, "b": 3})
    age(root)
    listing = folders.scan_class_folders(root)
    (index,) = (tmp_path / "cache" / "index").iterdir()
    assert json.loads(index.read_text())["root"] == str(root.resolve())  # plain JSON
    marker = tmp_path / "owned"
    index.write_bytes(pickle.dumps(Payload(marker)))
    index.with_suffix(".pkl").write_bytes(pickle.dumps(Payload(marker)))  # where older versions looked
    assert folders.scan_class_folders(root).equals(listing)
    assert not marker.exists()
    assert json.loads(index.read_text())["rows"] == listing.to_numpy().tolist()  # rebuilt
    index.write_text(json.dumps({"root": str(root.resolve()), "folders": {}, "rows": [["x/evil.png", "a"]]}))
    assert folders.scan_class_folders(root).equals(listing)  # a foreign index proves nothing about the folders


def test_a_cifar_batch_that_would_run_code_is_refused(tmp_path):
    root = make_cifar10(tmp_path / "data")
    marker = tmp_path / "owned"
    (root / "data_batch_1").write_bytes(pickle.dumps({"data": Payload(marker), "labels": []}))
    with pytest.raises(UserError, match="pathlib.*which no CIFAR batch holds"):
        cifar10.catalog(tmp_path / "data", ReadOptions(download=False))
    assert not marker.exists()


def test_the_published_cifar_format_still_loads_through_the_restricted_unpickler(tmp_path):
    make_cifar10(tmp_path / "data", per_batch=4, test=6)
    catalog = cifar10.catalog(tmp_path / "data", ReadOptions(download=False))
    assert len(catalog.samples) == 5 * 4 + 6 and catalog.read("test_batch/5").size == (32, 32)


def hostile_tar(path: Path, member: str, link: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        info = tarfile.TarInfo(member)
        if link is None:
            info.size = 5
            archive.addfile(info, io.BytesIO(b"owned"))
        else:
            info.type, info.linkname = tarfile.SYMTYPE, link
            archive.addfile(info)
    return path


@pytest.mark.parametrize(("member", "link"), [("../escaped.txt", None), ("inside", "/etc")])
def test_archive_members_never_land_outside_the_target(tmp_path, member, link):
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(ValueError, match="unsafe to extract"):
        download.safe_extract(hostile_tar(tmp_path / "bad.tar.gz", member, link), target)
    assert not (tmp_path / "escaped.txt").exists() and list(target.iterdir()) == []


def test_archives_extracted_by_torchvision_get_the_data_filter_too(tmp_path):
    from torchvision.datasets.utils import extract_archive

    (tmp_path / "target").mkdir()
    with download.data_filter_by_default(), pytest.raises(tarfile.FilterError):
        extract_archive(str(hostile_tar(tmp_path / "bad.tar.gz", "../escaped.txt")), str(tmp_path / "target"))
    assert not (tmp_path / "escaped.txt").exists()


def test_an_absolute_archive_member_is_extracted_inside_the_target(tmp_path):
    outside = tmp_path / "outside.txt"
    target = tmp_path / "target"
    target.mkdir()
    download.safe_extract(hostile_tar(tmp_path / "bad.tar.gz", str(outside)), target)
    assert not outside.exists() and (target / str(outside).lstrip("/")).read_bytes() == b"owned"


def test_zip_members_never_land_outside_the_target(tmp_path):
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as archive:
        archive.writestr("../escaped.txt", "owned")
    (tmp_path / "target").mkdir()
    with pytest.raises(ValueError, match="outside"):
        download.safe_extract(tmp_path / "bad.zip", tmp_path / "target")
    assert not (tmp_path / "escaped.txt").exists()


# ---------------------------------------------------------------------------------------------- readers
def test_16_bit_images_are_rescaled_by_their_depth_not_clipped(tmp_path):
    values = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    Image.fromarray(values).save(tmp_path / "sixteen.png")
    image = readers.FileReader(tmp_path)("sixteen.png")
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert image.mode == "RGB" and (np.asarray(image) == expected[..., None]).all()
    assert (np.asarray(image) == 255).mean() < 0.01  # `convert("RGB")` turned 99.6% white


def test_float_images_in_unit_range_are_scaled_and_others_refused(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, dtype=np.float32)).save(tmp_path / "unit.tif")
    assert (np.asarray(readers.FileReader(tmp_path)("unit.tif")) == 128).all()
    Image.fromarray(np.full((4, 4), 1000.0, dtype=np.float32)).save(tmp_path / "radiance.tif")
    with pytest.raises(UserError, match="floating-point image with values from 1000"):
        readers.FileReader(tmp_path)("radiance.tif")


def test_a_decompression_bomb_is_a_clear_error(tmp_path, monkeypatch):
    Image.new("L", (50, 50)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 2,500 pixels is then a bomb, as 200M are by default
    with pytest.raises(UserError, match="Cannot read image .*bomb.png.*decompression bomb"):
        readers.FileReader(tmp_path)("bomb.png")


def test_broken_and_looping_symlinks_are_named(tmp_path):
    root = make_class_folders(tmp_path / "data", {"a": 3, "b": 3})
    (root / "a" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    (root / "b" / "loop.png").symlink_to(root / "b" / "loop.png")
    reader = readers.FileReader(root)
    for sample in ("a/dangling.png", "b/loop.png"):
        with pytest.raises(UserError, match=f"Cannot open .*{sample}.*symbolic link"):
            reader.fingerprint(["a/" + sorted(os.listdir(root / "a"))[0], sample])
        with pytest.raises(UserError, match=f"Cannot read image .*{sample}"):
            reader(sample)
    result = run_inline("imagefolder.py", *FAST, "--data", root, "--out", tmp_path / "o")
    assert_clean_error(result, "dangling.png")
    assert result.returncode == 2


def test_a_damaged_image_cache_is_rebuilt(tmp_path, monkeypatch):
    from backbones import pipeline

    monkeypatch.setenv("BACKBONES_CACHE", str(tmp_path / "cache"))
    root = make_class_folders(tmp_path / "data", {"a": 3, "b": 3})
    table = folders.scan_class_folders(root)
    reader, lines = readers.FileReader(root), []
    path, rows = pipeline.cached_images("t", reader, table["sample"], (16, 16), "disk", 0, lines.append)
    whole = np.load(path).copy()
    path.write_bytes(path.read_bytes()[:-100])  # truncated, as by a full disk or a killed copy
    again, _ = pipeline.cached_images("t", reader, table["sample"], (16, 16), "disk", 0, lines.append)
    assert again == path and "damaged" in lines[-2] and (np.load(path) == whole).all()


# ---------------------------------------------------------------------------------------------- metrics
def test_nll_is_the_full_log_probability_of_a_confident_mistake():
    logits, labels = np.array([[60.0, 0.0], [0.0, 3.0]]), np.array([1, 1])
    expected = (math.log1p(math.exp(60)) + math.log1p(math.exp(-3))) / 2  # -log softmax of the true class
    assert metrics.negative_log_likelihood(logits, labels) == pytest.approx(expected, rel=1e-12)
    assert metrics.quality(logits, labels, 2, None)["nll"] == pytest.approx(expected, rel=1e-12)


def test_temperature_on_a_perfectly_separated_validation_set_is_not_fitted():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200)
    separated = np.eye(4)[labels] * 8 + rng.normal(0, 0.5, (200, 4))
    assert (separated.argmax(1) == labels).all()
    assert metrics.fit_temperature(separated, labels) is None
    noisy = separated + rng.normal(0, 6, (200, 4))
    assert 0.05 < metrics.fit_temperature(noisy, labels) < 20


def test_a_class_without_test_images_is_not_applicable_not_zero():
    labels = np.array([0, 0, 1, 1, 2, 2, 3, 3])  # class 4 of five has no test image
    predictions = np.array([0, 1, 1, 1, 2, 2, 3, 0])
    scores = metrics.quality(np.eye(5)[predictions] * 5, labels, 5, None)
    assert scores["per_class_accuracy"] == [50.0, 100.0, 100.0, 50.0, None]
    f1 = []
    for k in range(4):  # F1 by hand over the four classes present
        tp = np.sum((predictions == k) & (labels == k))
        precision, recall = tp / max(np.sum(predictions == k), 1), tp / np.sum(labels == k)
        f1.append(0 if tp == 0 else 2 * precision * recall / (precision + recall))
    assert scores["macro_f1"] == pytest.approx(100 * np.mean(f1))
    assert scores["top5"] is None  # five classes: top-5 is 100% by construction
    ranked = np.array([[5.0, 4, 3, 2, 1, 0]] * 2)  # with six classes: the 5th is in the top five, the 6th is not
    assert metrics.quality(ranked, np.array([4, 5]), 6, None)["top5"] == 50.0


# --------------------------------------------------------------------------------------- splits and flags
def test_official_validation_stays_whole_so_learning_curves_nest(tmp_path):
    make_flowers102(tmp_path / "data", classes=3, per_split=6)
    catalog = flowers102.catalog(tmp_path / "data", ReadOptions(download=False))
    by_fraction = {}
    for fraction in (1.0, 0.5):
        subset = lambda pool, f=fraction: splits.nested_subset(pool["label"], catalog.classes, 0, f)  # noqa: E731
        by_fraction[fraction] = splits.assign_splits(catalog.samples, None, 0.1, 0, subset).set_index("sample")["split"]
    official_val = set(catalog.samples.loc[catalog.samples["split"] == "val", "sample"])
    for split in by_fraction.values():
        assert set(split[split == "val"].index) == official_val  # never pooled into training
    full, half = (set(s[s == "train"].index) for s in (by_fraction[1.0], by_fraction[0.5]))
    assert half < full and len(full) == 18 and len(half) == 9


def test_a_class_too_small_to_test_is_warned_about(tmp_path, capsys):
    root = make_class_folders(tmp_path / "data", {"a": 5, "b": 5, "lonely": 1})
    _, samples = load_splits(imagefolder.SPEC, imagefolder_config(root).data)
    assert "1 class(es) have no test image (lonely)" in capsys.readouterr().err
    assert (samples["split"] == "test").sum() == 2


def imagefolder_config(root: Path, *extra: str) -> RunConfig:
    return resolve(imagefolder.SPEC, ["-model", "mobilenet", "--data", str(root), *extra])


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--sgd-lr", "nan", "must be a finite number"),
        ("--lr", "0", "must be above 0"),
        ("--weight-decay", "-0.1", "must be 0 or more"),
        ("--workers", "-1", "must be 0 or more"),
        ("--bn-images", "-5", "must be 0 or more"),
    ],
)
def test_numeric_flags_are_checked_when_parsed(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_code:
        build_parser(digits.SPEC).parse_args(["-model", "mobilenet", flag, value])
    assert exit_code.value.code == 2 and message in capsys.readouterr().err


def test_results_table_that_is_not_one_is_refused_and_a_missing_newline_is_mended(tmp_path):
    foreign = tmp_path / "grades.csv"
    foreign.write_text("student,grade\nann,A\n")
    with pytest.raises(UserError, match="not a results table"):
        check_results_table(foreign)
    assert foreign.read_text() == "student,grade\nann,A\n"
    table = tmp_path / "results.csv"
    table.write_text("dataset,model,top1\ndigits,a,90.0")  # an older table, last line without its newline
    append_result({"dataset": "digits", "model": "b", "top1": 80.0}, table)
    assert pd.read_csv(table).to_dict("list") == {"dataset": ["digits", "digits"], "model": ["a", "b"],
                                                  "top1": [90.0, 80.0]}  # fmt: skip
    with pytest.raises(UserError, match="cannot be written"):
        check_results_table(foreign / "results.csv")  # under a file


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("results not a table", "not a results table"),
        ("out unwritable", "cannot be created"),
        ("out inside data", "the folder this dataset's images are read from"),
        ("image size too large", "GiB for one batch of input images alone"),
    ],
)
def test_bad_places_and_sizes_are_refused_before_any_work(tmp_path, case, message):
    root = make_class_folders(tmp_path / "data", {"a": 3, "b": 3})
    (tmp_path / "grades.csv").write_text("student,grade\n")
    flags = {
        "results not a table": ["--results", tmp_path / "grades.csv"],
        "out unwritable": ["--out", tmp_path / "grades.csv" / "run", "--results", tmp_path / "r.csv"],
        "out inside data": ["--out", root / "runs" / "first", "--results", tmp_path / "r.csv"],
        "image size too large": ["--image-size", "30000", "-bs", "2000", "--out", tmp_path / "o",
                                 "--results", tmp_path / "r.csv"],
    }[case]  # fmt: skip
    result = run_inline("imagefolder.py", *FAST, "--data", root, *flags)
    assert_clean_error(result, message)
    assert result.returncode == 2 and not (root / "runs").exists() and not (tmp_path / "o").exists()
    assert not (tmp_path / "r.csv").exists()


@pytest.mark.slow
def test_a_diverging_run_stops_at_the_first_non_finite_loss(tmp_path):
    result = run_script("digits.py", *FAST, "-bs", "64", "--lr", "1e8", "--out", tmp_path / "o",
                        "--results", tmp_path / "r.csv")  # fmt: skip
    assert_clean_error(result, "diverged in epoch 1 adamw", "training loss became nan", "Lower", "--lr")
    assert result.returncode == 2
    assert "*best*" not in (tmp_path / "o" / "log.txt").read_text()
    assert not (tmp_path / "o" / "best.pt").exists() and not (tmp_path / "r.csv").exists()


def test_split_py_falls_back_to_copies_across_filesystems(tmp_path, monkeypatch, capsys):
    from backbones import split

    root = make_class_folders(tmp_path / "in", {"a": 4, "b": 4})

    def cross_device(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(split.os, "link", cross_device)
    plan = split.main(["--input_dir", str(root), "--output_dir", str(tmp_path / "out"), "--mode", "hardlink"])
    assert "cannot hard-link" in capsys.readouterr().out
    for row in plan.itertuples():
        copied = tmp_path / "out" / row.split / row.sample
        assert copied.read_bytes() == (root / row.sample).read_bytes() and not copied.is_symlink()


# ------------------------------------------------------------------------------- checkpoints and splits
@pytest.mark.slow
def test_eval_only_refuses_another_split_another_class_order_and_plain_state_dicts(digits_run, tmp_path):
    out, _, _ = digits_run
    evaluate = ["-model", "mobilenet_v3_large", "-bs", "64", "--eval-only", "--workers", "0"]
    other_split = run_script("digits.py", *evaluate, "--weights", out / "best.pt", "--val-fraction", "0.2",
                             "--out", tmp_path / "a")  # fmt: skip
    assert_clean_error(other_split, "train/val split(s) hold other images", "--val-fraction 0.1 there, 0.2 now")
    checkpoint = torch.load(out / "best.pt", weights_only=True)
    checkpoint["meta"]["classes"] = checkpoint["meta"]["classes"][::-1]
    torch.save(checkpoint, tmp_path / "reordered.pt")
    reordered = run_script("digits.py", *evaluate, "--weights", tmp_path / "reordered.pt", "--out", tmp_path / "b")
    assert_clean_error(reordered, "class names differ", "another order", "label 0 is 9 there, 0 now")
    torch.save(checkpoint["model"], tmp_path / "plain.pt")
    plain = run_script("digits.py", *evaluate, "--weights", tmp_path / "plain.pt", "--out", tmp_path / "c")
    assert_clean_error(plain, "records no split")
    assert not any((tmp_path / name).exists() for name in "abc")


def resume_file(folder: Path, config: RunConfig) -> None:
    """The checkpoint.pt a run killed after its first epoch would have left, for `config` on the data as it is now."""
    catalog, samples = load_splits(config.spec, config.data)
    folder.mkdir(parents=True)
    identity = split_identity(config.spec, config.data, catalog, samples)
    state = {**dict.fromkeys(RESUME_KEYS, {}), "history": [], "config": json.dumps(config.flags), "identity": identity}
    torch.save(state, folder / "checkpoint.pt")


@pytest.mark.slow
def test_resume_refuses_other_data_and_a_redrawn_split(tmp_path):
    root = make_class_folders(tmp_path / "data", {"a": 6, "b": 6})
    run = tmp_path / "run"
    resume_file(run, imagefolder_config(root, *FAST, "--out", str(run), "--resume"))
    make_class_folders(tmp_path / "more", {"a": 2})
    for extra in (tmp_path / "more" / "a").iterdir():
        extra.rename(root / "a" / f"new-{extra.name}")  # the folder gained images: the split is re-drawn
    grown = run_script("imagefolder.py", *FAST, "--data", root, "--out", run, "--resume")
    assert_clean_error(grown, "other data or another split", "hold other images", "the data under --data changed")
    elsewhere = run_script("digits.py", *FAST, "--out", run, "--resume")  # another dataset continuing the run
    assert_clean_error(elsewhere, "dataset imagefolder {'test_size': 0.2} there, digits {} now")
    (run / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    damaged = run_script("imagefolder.py", *FAST, "--data", root, "--out", run, "--resume")
    assert_clean_error(damaged, "checkpoint.pt cannot be read", "Delete it to restart")


def test_the_test_split_is_read_once_on_the_chosen_checkpoint_and_never_for_selection(tmp_path, monkeypatch):
    """The protocol's guarantees, observed: which split each evaluation, the BatchNorm pass and the temperature
    fit read, and the weights the test split is scored with."""
    events, out = [], tmp_path / "run"
    split_of = {}
    predict, recompute, fit_temperature = (
        train_common.predict,
        train_common.recompute_bn_stats,
        finetune.fit_temperature,
    )

    def which(loader) -> str:
        (split,) = {split_of[sample] for sample in loader.loader.dataset.ids}
        return split

    def watched_predict(model, loader, precision, desc):
        split = which(loader)
        if split == "test":
            best = torch.load(out / "best.pt", weights_only=True)["model"]
            same = all(torch.equal(value, best[key]) for key, value in model.state_dict().items())
            events.append(("test on best.pt", same))
        events.append(("predict", split))
        return predict(model, loader, precision, desc)

    def watched_recompute(model, loader, precision, max_images):
        events.append(("batchnorm", which(loader)))
        return recompute(model, loader, precision, max_images)

    def watched_temperature(logits, labels):
        events.append(("temperature", labels.tolist()))
        return fit_temperature(logits, labels)

    original_load_splits = finetune.load_splits

    def watched_load_splits(spec, data, warn=None):
        catalog, samples = original_load_splits(spec, data, warn)
        split_of.update(zip(samples["sample"], samples["split"], strict=True))
        return catalog, samples

    monkeypatch.setattr(finetune, "load_splits", watched_load_splits)
    monkeypatch.setattr(train_common, "predict", watched_predict)
    monkeypatch.setattr(train_common, "recompute_bn_stats", watched_recompute)
    monkeypatch.setattr(finetune, "fit_temperature", watched_temperature)
    argv = [*FAST, "-model", "timm:test_resnet", "-bs", "64", "--max-epochs", "2", "--patience", "2", "--out", str(out),
            "--results", str(tmp_path / "r.csv")]  # fmt: skip
    result = finetune.main(digits.SPEC, argv)
    epochs = result["epochs"]
    predicted = [split for kind, split in events if kind == "predict"]
    assert predicted.count("test") == 1 and predicted[-1] == "test"  # once, after everything else
    assert predicted[:-1] == ["val"] * (epochs + 1)  # selection each epoch, then the temperature's data
    assert [split for kind, split in events if kind == "batchnorm"] == ["train"] * epochs
    assert ("test on best.pt", True) in events
    (temperature_labels,) = [labels for kind, labels in events if kind == "temperature"]
    split = pd.read_csv(out / "split.csv")
    assert temperature_labels == split.loc[split["split"] == "val", "label"].tolist()
