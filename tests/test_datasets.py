"""Each dataset script end to end on small data written in its published on-disk format."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import (
    FAST,
    assert_clean_error,
    finished_run,
    make_breakhis,
    make_cifar10,
    make_cifar100,
    make_class_folders,
    make_eurosat,
    make_flowers102,
    make_rsna,
    make_ucmerced,
    run_script,
)


def run_on(script: str, data, tmp_path, *extra: str) -> tuple[dict, pd.DataFrame]:
    out = tmp_path / "run"
    result = run_script(script, *FAST, "--data", data, "--no-download", "--out", out,
                        "--results", tmp_path / "results.csv", *extra)  # fmt: skip
    metrics = finished_run(result, out)
    split = pd.read_csv(out / "split.csv")
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
    assert metrics["num_classes"] == 2 and metrics["n_train"] + metrics["n_val"] + metrics["n_test"] == 27
    assert split["sample"].str.contains(f"/{mag}X/").all()
    patient = split["sample"].str.split("/").str[-3].str.rsplit("_", n=1).str[-1]
    sides = split.assign(patient=patient).groupby("patient")["split"].nunique()
    assert (sides == 1).all(), "a patient appears in more than one split"
    assert split.loc[patient == "14-13412", "split"].nunique() == 1  # one patient filed under two tumour types
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
    result = run_script("cifar10.py", *FAST, "--data", tmp_path / "data", "--no-download", "--out", tmp_path / "o")
    assert_clean_error(result, "data_batch_3", "partial extraction")


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
    import split

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
    result = run_script("imagefolder.py", *FAST, "--data", tmp_path / "mine", "--out", tmp_path / "o")
    assert_clean_error(result, "differ from those of", "missing there ['c']", "extra there ['d']")
    make_class_folders(tmp_path / "other", {"a": 3, "b": 3})
    (tmp_path / "other" / "empty").mkdir()
    result = run_script("imagefolder.py", *FAST, "--data", tmp_path / "other", "--out", tmp_path / "o")
    assert_clean_error(result, "hold no images: empty")
