"""Each dataset's reader and split on small data written in its published on-disk format, and the scripts' errors."""

from __future__ import annotations

import os
import time

import pandas as pd
import pytest

from backbones import datasets, finetune
from conftest import FAST, ROOT, assert_clean_error, finished_run, run_inline, run_script
from formats import (
    make_breakhis,
    make_cifar10,
    make_cifar100,
    make_class_folders,
    make_cub200,
    make_dtd,
    make_eurosat,
    make_flowers102,
    make_food101,
    make_galaxy10,
    make_plantvillage,
    make_rsna,
    make_stanfordcars,
    make_stanforddogs,
    make_tinyimagenet,
    make_ucmerced,
)


def run_on(script: str, data, tmp_path, *extra: str) -> tuple[dict, pd.DataFrame]:
    """The dataset as the script's run reads and splits it, checked in-process up to the first batch: the loop
    itself is tested end to end on digits, CIFAR and image folders."""
    spec = datasets.spec(script.removesuffix(".py"))
    job = finetune.prepare(spec, [*FAST, "--data", str(data), "--no-download", "--out", str(tmp_path / "run"),
                                  "--results", str(tmp_path / "results.csv"), *extra])  # fmt: skip
    split = job.samples[["sample", "label", "split"]].reset_index(drop=True)
    for sample in split.groupby("split")["sample"].first():  # the reader gives an image of every split
        assert job.catalog.read(sample).mode == "RGB"
    metrics = {
        "num_classes": len(job.catalog.classes),
        "classes": job.catalog.classes,
        "domain": spec.domain,
        **{f"n_{name}": job.count(name) for name in ("train", "val", "test")},
        **job.identity,
    }
    assert len(split) == metrics["n_train"] + metrics["n_val"] + metrics["n_test"]
    return metrics, split


@pytest.mark.parametrize("point_at_top_folder", [False, True])
def test_cifar10_official_split_from_pickled_batches(tmp_path, point_at_top_folder):
    base = make_cifar10(tmp_path / "data")
    metrics, split = run_on("cifar10.py", base if point_at_top_folder else tmp_path / "data", tmp_path)
    assert metrics["num_classes"] == 10
    assert (metrics["n_train"] + metrics["n_val"], metrics["n_test"]) == (50, 20)
    assert set(split.loc[split["split"] == "test", "sample"].str.split("/").str[0]) == {"test_batch"}
    assert split["sample"].str.match(r"^(data_batch_[1-5]|test_batch)/\d+$").all()


def test_cifar100_reads_fine_labels(tmp_path):
    make_cifar100(tmp_path / "data", train=200, test=100)
    metrics, split = run_on("cifar100.py", tmp_path / "data", tmp_path, "-bs", "64")
    assert metrics["num_classes"] == 100 and metrics["classes"][:2] == ["fine_0", "fine_1"]
    assert (metrics["n_train"] + metrics["n_val"], metrics["n_test"]) == (200, 100)
    assert sorted(split["label"].unique()) == list(range(100))  # fine labels, not the 20 coarse ones


@pytest.mark.parametrize(
    "script, build, classes, total, test_fraction",
    [("eurosat.py", make_eurosat, 10, 100, 0.3), ("ucmerced.py", make_ucmerced, 21, 105, 0.2)],
)
def test_class_folder_datasets_split_by_their_rule(tmp_path, script, build, classes, total, test_fraction):
    top = build(tmp_path / "data")
    for data in (tmp_path / "data", top):  # the extraction folder, or the dataset's own top folder
        metrics, split = run_on(script, data, tmp_path / data.name)
        assert metrics["num_classes"] == classes
        assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == total
        assert metrics["n_test"] == pytest.approx(total * test_fraction, abs=classes)
        assert split.groupby("label")["split"].apply(lambda s: (s == "test").any()).all()
        assert all((data / sample).is_file() for sample in split["sample"])


def test_flowers102_uses_official_val_split(tmp_path):
    make_flowers102(tmp_path / "data", classes=3, per_split=2)
    metrics, split = run_on("flowers102.py", tmp_path / "data", tmp_path)
    assert metrics["num_classes"] == 102
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (6, 6, 6)
    assert all((tmp_path / "data" / s).is_file() for s in split["sample"])


@pytest.mark.parametrize("mag", [40, 400])
def test_breakhis_splits_by_patient(tmp_path, mag):
    make_breakhis(tmp_path / "data", per_patient=3)
    metrics, split = run_on("breakhis.py", tmp_path / "data", tmp_path, "-mag", str(mag))
    assert metrics["num_classes"] == 2 and metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 30
    assert split["sample"].str.contains(f"/{mag}X/").all()
    assert metrics["dataset_options"] == {"mag": mag} and metrics["domain"] == "medical"  # report.py keeps mags apart
    patient = split["sample"].str.split("/").str[-3].str.extract(r"_(\d+-\d+)[A-Z]*$")[0]  # the patient number
    sides = split.assign(patient=patient).groupby("patient")["split"].nunique()
    assert (sides == 1).all(), "a patient appears in more than one split"
    assert split.loc[patient == "14-13412", "split"].nunique() == 1  # one patient filed under two tumour types
    assert split.loc[patient == "14-21998", "split"].nunique() == 1  # and one under two letter suffixes
    assert set(split.loc[split["split"] == "test", "label"]) == {0, 1}


def test_rsna_has_one_sample_per_patient(tmp_path):
    make_rsna(tmp_path / "data", patients=16)
    rows = pd.read_csv(tmp_path / "data" / "stage_2_train_labels.csv")
    assert len(rows) > 16  # several label rows for patients with several boxes
    metrics, split = run_on("rsna.py", tmp_path / "data", tmp_path)
    assert metrics["num_classes"] == 2
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 16 == split["sample"].nunique()
    labels = rows.groupby("patientId")["Target"].max()
    by_sample = split.set_index(split["sample"].str.extract(r"/([^/]+)\.dcm$")[0])["label"]
    assert (by_sample.sort_index() == labels.sort_index()).all()


def test_partial_extraction_is_reported(tmp_path):
    base = make_cifar10(tmp_path / "data")
    (base / "data_batch_3").unlink()
    result = run_inline("cifar10.py", *FAST, "--data", tmp_path / "data", "--no-download", "--out", tmp_path / "o")
    assert_clean_error(result, "data_batch_3", "partial extraction")


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "1"])
def test_unreadable_image_is_named(tmp_path, workers):
    base = make_flowers102(tmp_path / "data", classes=2, per_split=2)
    broken = base / "jpg" / "image_00002.jpg"
    broken.write_bytes(b"\xff\xd8 truncated")
    result = run_script(
        "flowers102.py",
        *FAST,
        "--workers",
        workers,
        "--data",
        tmp_path / "data",
        "--no-download",
        "--out",
        tmp_path / "o",
    )
    assert_clean_error(result, "Cannot read image", str(broken))
    assert result.stderr.startswith("error: Cannot read image")


def test_imagefolder_splits_a_single_folder_like_split_py(tmp_path):
    from backbones import split

    make_class_folders(tmp_path / "mine", {"cat": 10, "dog": 6, "eel": 5})
    metrics, table = run_on("imagefolder.py", tmp_path / "mine", tmp_path, "--test_size", "0.3", "--seed", "4")
    assert metrics["num_classes"] == 3 and metrics["classes"] == ["cat", "dog", "eel"]
    plan = split.plan_split(tmp_path / "mine", 0.3, 0.0, seed=4)
    assert sorted(table.loc[table["split"] == "test", "sample"]) == sorted(plan.loc[plan["split"] == "test", "sample"])


def test_imagefolder_uses_given_train_val_test_folders(tmp_path):
    for split_name, count in (("train", 6), ("val", 2), ("test", 3)):
        make_class_folders(tmp_path / "mine" / split_name, {"a": count, "b": count})
    metrics, table = run_on("imagefolder.py", tmp_path / "mine", tmp_path)
    assert (metrics["n_train"], metrics["n_val"], metrics["n_test"]) == (12, 4, 6)
    assert table["sample"].str.split("/").str[0].eq(table["split"]).all()


def test_imagefolder_reports_mismatched_and_empty_class_folders(tmp_path):
    make_class_folders(tmp_path / "mine" / "train", {"a": 3, "b": 3, "c": 3})
    make_class_folders(tmp_path / "mine" / "test", {"a": 2, "b": 2, "d": 2})
    result = run_inline("imagefolder.py", *FAST, "--data", tmp_path / "mine", "--out", tmp_path / "o")
    assert_clean_error(result, "differ from those of", "missing there ['c']", "extra there ['d']")
    make_class_folders(tmp_path / "other", {"a": 3, "b": 3})
    (tmp_path / "other" / "empty").mkdir()
    result = run_inline("imagefolder.py", *FAST, "--data", tmp_path / "other", "--out", tmp_path / "o")
    assert_clean_error(result, "hold no images: empty")


@pytest.mark.parametrize(
    "script, build, classes, n_train_val, n_test",
    [
        ("tinyimagenet.py", lambda root: make_tinyimagenet(root, train=2, val=1), 200, 400, 200),
        ("stanforddogs.py", lambda root: make_stanforddogs(root, train=2, test=1), 120, 240, 120),
        ("stanforddogs.py", lambda root: make_stanforddogs(root, train=2, lists_folder=True), 120, 240, 120),
        ("cub200.py", lambda root: make_cub200(root, per_class=3), 200, 400, 200),
        ("stanfordcars.py", lambda root: make_stanfordcars(root, train=2, test=1), 196, 392, 196),
        ("food101.py", lambda root: make_food101(root, train=2, test=1), 101, 202, 101),
        ("dtd.py", lambda root: make_dtd(root, per_split=1), 47, 94, 47),
    ],
)
def test_official_split_datasets(tmp_path, script, build, classes, n_train_val, n_test):
    build(tmp_path / "data")
    metrics, split = run_on(script, tmp_path / "data", tmp_path)
    assert metrics["num_classes"] == classes == split["label"].nunique()
    assert (metrics["n_train"] + metrics["n_val"], metrics["n_test"]) == (n_train_val, n_test)
    assert metrics["n_val"] > 0
    assert all((tmp_path / "data" / sample).is_file() for sample in split["sample"])


def test_tinyimagenet_tests_on_the_labelled_val_folder(tmp_path):
    make_tinyimagenet(tmp_path / "data", classes=200, train=2, val=1)
    metrics, split = run_on("tinyimagenet.py", tmp_path / "data", tmp_path)
    test = split[split["split"] == "test"]
    assert test["sample"].str.startswith("tiny-imagenet-200/val/images/val_").all()
    annotations = pd.read_csv(tmp_path / "data/tiny-imagenet-200/val/val_annotations.txt", sep="\t", header=None)
    wnid_of = dict(zip(annotations[0], annotations[1], strict=True))
    files = test["sample"].str.rsplit("/", n=1).str[-1]
    assert [metrics["classes"][label] for label in test["label"]] == [wnid_of[file] for file in files]
    assert not split["sample"].str.contains("/test/").any()  # the unlabelled test/ is not used


def test_dtd_uses_partition_one_with_its_val_as_validation(tmp_path):
    make_dtd(tmp_path / "data", per_split=1)
    metrics, split = run_on("dtd.py", tmp_path / "data", tmp_path)
    labels_dir = tmp_path / "data" / "dtd" / "dtd" / "labels"
    for name in ("train", "val", "test"):
        listed = sorted("dtd/dtd/images/" + line for line in (labels_dir / f"{name}1.txt").read_text().split())
        assert sorted(split.loc[split["split"] == name, "sample"]) == listed


@pytest.mark.slow
@pytest.mark.parametrize("wrapped", [False, True])
def test_plantvillage_splits_80_20_and_warns_about_missing_classes(tmp_path, wrapped):
    sizes = {"Apple___Apple_scab": 10, "Background_without_leaves": 10, "Corn___Cercospora_leaf_spot Gray_leaf_spot": 5}
    base = make_plantvillage(tmp_path / "data", sizes)
    if wrapped:  # --data/<some folder>/<class>/...: looked through, whatever the wrapper is called
        base = base.rename(tmp_path / "data" / "PlantVillage")
    out = tmp_path / "run"
    result = run_script("plantvillage.py", *FAST, "--data", tmp_path / "data", "--out", out)
    metrics = finished_run(result, out)
    assert "has 39 classes but" in result.stderr and "holds 3" in result.stderr
    assert metrics["classes"] == sorted(sizes)
    assert (metrics["n_train"] + metrics["n_val"], metrics["n_test"]) == (20, 2 + 2 + 1)


def test_plantclef_given_val_folder_is_the_test_set(tmp_path):
    species = {f"species_{i:02d}": 3 for i in range(20)}
    make_class_folders(tmp_path / "data" / "train", species)
    make_class_folders(tmp_path / "data" / "val", {name: 1 for name in species})
    metrics, split = run_on("plantclef.py", tmp_path / "data", tmp_path)
    assert metrics["num_classes"] == 20
    assert (metrics["n_train"] + metrics["n_val"], metrics["n_test"]) == (60, 20)
    assert split.loc[split["split"] == "test", "sample"].str.startswith("val/").all()
    assert split.loc[split["split"] != "test", "sample"].str.startswith("train/").all()


def test_galaxy10_reads_the_hdf5_file_and_splits_90_10(tmp_path):
    path = make_galaxy10(tmp_path / "data", per_class=10)
    metrics, split = run_on("galaxy10.py", tmp_path / "data", tmp_path)
    assert metrics["num_classes"] == 10
    assert (metrics["n_train"] + metrics["n_val"], metrics["n_test"]) == (90, 10)
    import h5py

    with h5py.File(path) as file:
        labels = file["ans"][:]
    rows = split["sample"].str.removeprefix("images/").astype(int)
    assert (labels[rows] == split["label"]).all()
    assert split.groupby("label")["split"].apply(lambda s: (s == "test").sum()).eq(1).all()


def test_a_galaxy10_file_with_fewer_test_images_than_classes_is_a_clear_error(tmp_path):
    make_galaxy10(tmp_path / "data", per_class=3)  # 30 images: 3 held out for 10 classes
    result = run_inline("galaxy10.py", "-model", "mobilenet", "--weights", "none", "--data", tmp_path / "data",
                        "--out", tmp_path / "run", "--results", tmp_path / "r.csv")  # fmt: skip
    assert_clean_error(result, "holds out 3 for test", "each of the 10 classes", "too few images")


DATASET_SCRIPTS = sorted(
    path.name
    for path in ROOT.glob("*.py")
    if "from backbones.finetune import run" in path.read_text() and path.name != "digits.py"  # digits is embedded
)


def test_every_benchmark_dataset_has_a_script():
    benchmark = "cifar10 cifar100 tinyimagenet stanforddogs flowers102 cub200 stanfordcars food101 dtd ucmerced eurosat"
    benchmark += " plantvillage plantclef galaxy10 breakhis rsna"  # 19 table rows: BreakHis is four (-mag)
    assert sorted(f"{name}.py" for name in [*benchmark.split(), "imagefolder"]) == DATASET_SCRIPTS


@pytest.mark.parametrize("script", DATASET_SCRIPTS)
def test_empty_data_without_network_fails_clearly(tmp_path, script):
    offline = {**os.environ, "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    offline.update(HTTP_PROXY=offline["http_proxy"], HTTPS_PROXY=offline["https_proxy"], NO_PROXY="")
    (tmp_path / "empty").mkdir()
    result = run_inline(script, *FAST, "--data", tmp_path / "empty", "--out", tmp_path / "o", env=offline)
    assert_clean_error(result, str(tmp_path / "empty"))
    assert "not found" in result.stderr or "Downloading the dataset" in result.stderr, result.stderr
    assert [p.name for p in (tmp_path / "empty").iterdir()] == []  # no half-written download left behind
    assert not (tmp_path / "o").exists()


def test_folder_index_is_reused_until_a_folder_changes(tmp_path, monkeypatch):
    from backbones.datasets.common import folders

    monkeypatch.setenv("BACKBONES_CACHE", str(tmp_path / "cache"))
    root = make_tinyimagenet(tmp_path / "data", classes=3, train=2, val=1) / "train"  # train/<wnid>/images/*.JPEG
    assert len(folders.scan_class_folders(root)) == 6 and not (tmp_path / "cache").exists()  # just written: no index
    for folder in [root, *(p for p in root.rglob("*") if p.is_dir())]:
        os.utime(folder, (time.time() - 60, time.time() - 60))
    first = folders.scan_class_folders(root)
    assert len(first) == 6 and first["sample"].str.endswith(".JPEG").all()  # the boxes .txt files are not images
    with monkeypatch.context() as patched:
        patched.setattr(folders.os, "walk", lambda *a, **k: pytest.fail("walked the folders again"))
        assert folders.scan_class_folders(root).equals(first)
    (root / first["class"][0] / "images" / "extra.JPEG").write_bytes(b"")  # a change two levels down
    assert len(folders.scan_class_folders(root)) == 7
    (root / "n09999999").mkdir()  # a new class folder: the root changed
    (root / "n09999999" / "x.png").write_bytes(b"")
    assert set(folders.scan_class_folders(root)["class"]) == {*first["class"], "n09999999"}


def test_missing_listed_image_is_named_before_training(tmp_path):
    base = make_food101(tmp_path / "data", classes=3, train=2, test=1)
    (base / "images" / "dish_001" / "1101.jpg").unlink()
    result = run_inline("food101.py", *FAST, "--data", tmp_path / "data", "--no-download", "--out", tmp_path / "o")
    assert_clean_error(result, "missing from", str(base / "images" / "dish_001"), "1101.jpg", "partial extraction")
    assert not (tmp_path / "o").exists()


def test_stanfordcars_reads_the_mirror_layout_as_shipped(tmp_path):

    from backbones.datasets import stanfordcars
    from backbones.datasets.common.spec import ReadOptions

    base = make_stanfordcars(tmp_path / "data", classes=3, train=2, test=1)
    expected = stanfordcars.catalog(tmp_path / "data", ReadOptions(download=False)).samples
    for name, nested in stanfordcars.MIRROR.items():  # car_devkit/devkit/, cars_train/cars_train/, ...
        (base / name).rename(base / f"{name}.moving")
        (base / nested).parent.mkdir()
        (base / f"{name}.moving").rename(base / nested)
    (base / "cars_test_annos_withlabels.mat").rename(base / "cars_test_annos_withlabels (1).mat")
    mirrored = stanfordcars.catalog(tmp_path / "data", ReadOptions(download=False)).samples
    assert mirrored[["label", "split"]].equals(expected[["label", "split"]]) and len(mirrored) == 9
    assert mirrored["sample"].str.startswith("stanford_cars/cars_t").all()
    assert mirrored.loc[mirrored["split"] == "test", "sample"].str.contains("cars_test/cars_test/").all()
