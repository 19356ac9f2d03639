"""The one splitter: stratified, seeded, groups kept whole; and split.py built on it."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
import pytest

import split
from conftest import assert_clean_error, run_script
from datasets.base import TEST_STREAM, VAL_STREAM, assign_splits, nested_subset, stratified_holdout
from errors import UserError
from formats import make_class_folders


def test_holdout_is_stratified_reproducible_and_seeded():
    labels = np.repeat(np.arange(4), [50, 30, 20, 10])
    held = stratified_holdout(labels, 0.2, seed=3, stream=TEST_STREAM)
    assert [int(held[labels == c].sum()) for c in range(4)] == [10, 6, 4, 2]
    assert np.array_equal(held, stratified_holdout(labels, 0.2, seed=3, stream=TEST_STREAM))
    assert not np.array_equal(held, stratified_holdout(labels, 0.2, seed=4, stream=TEST_STREAM))
    assert not np.array_equal(held, stratified_holdout(labels, 0.2, seed=3, stream=VAL_STREAM))


def test_tiny_classes_keep_a_sample_on_each_side():
    labels = np.array([0, 0, 1, 1, 1, 2])
    held = stratified_holdout(labels, 0.1, seed=0, stream=0)
    assert held[labels == 0].sum() == 1 and held[labels == 1].sum() == 1
    assert held[labels == 2].sum() == 0  # a class of one stays in training


def test_groups_never_straddle_the_split():
    rng = np.random.default_rng(0)
    groups = np.repeat([f"p{i}" for i in range(30)], rng.integers(1, 8, 30))
    labels = np.array([int(g[1:]) % 2 for g in groups])
    held = stratified_holdout(labels, 0.3, seed=0, stream=0, groups=groups)
    table = pd.DataFrame({"group": groups, "held": held})
    assert (table.groupby("group")["held"].nunique() == 1).all()
    assert 0.15 < held.mean() < 0.45


def test_assign_splits_keeps_official_splits_and_carves_val_from_train():
    samples = pd.DataFrame({"sample": [str(i) for i in range(40)], "label": [i % 2 for i in range(40)],
                            "split": ["train"] * 30 + ["test"] * 10})  # fmt: skip
    samples["group"] = samples["sample"]
    result = assign_splits(samples, None, 0.2, seed=0)
    assert (result["split"][30:] == "test").all()
    assert (result["split"][:30] == "val").sum() == 6


def _fingerprint(root):
    return {p.relative_to(root): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


@pytest.mark.parametrize("mode", ["copy", "symlink", "hardlink"])
def test_split_cli_writes_a_stratified_split_and_manifest(tmp_path, mode, capsys):
    make_class_folders(tmp_path / "in", {"cat": 10, "dog": 20, "eel": 5})
    before = _fingerprint(tmp_path / "in")
    plan = split.main(["--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"),
                       "--test_size", "0.2", "--val_size", "0.1", "--mode", mode])  # fmt: skip
    assert _fingerprint(tmp_path / "in") == before
    manifest = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert len(manifest) == 35 and set(manifest["split"]) == {"train", "val", "test"}
    assert manifest.groupby("class")["split"].apply(lambda s: (s == "test").sum()).to_dict() == {
        "cat": 2,
        "dog": 4,
        "eel": 1,
    }
    for row in manifest.itertuples():
        assert (tmp_path / "out" / row.destination).read_bytes() == (tmp_path / "in" / row.sample).read_bytes()
    assert "total" in capsys.readouterr().out
    again = split.plan_split(tmp_path / "in", 0.2, 0.1, seed=0)
    assert again["split"].tolist() == plan["split"].tolist()


def test_split_cli_matches_the_loops_test_split(tmp_path):
    make_class_folders(tmp_path / "in", {"a": 12, "b": 9})
    plan = split.plan_split(tmp_path / "in", 0.25, 0.0, seed=7)
    held = stratified_holdout(plan["label"], 0.25, seed=7, stream=TEST_STREAM)
    assert (plan["split"] == "test").tolist() == held.tolist()


@pytest.mark.parametrize(
    "args, phrases",
    [
        (["--test_size", "1.5"], ["impossible"]),
        (["--test_size", "0.6", "--val_size", "0.5"], ["together below 1"]),
    ],
)
def test_split_cli_refuses_impossible_sizes(tmp_path, args, phrases):
    make_class_folders(tmp_path / "in", {"a": 4, "b": 4})
    result = run_script("split.py", "--input_dir", tmp_path / "in", "--output_dir", tmp_path / "out", *args)
    assert_clean_error(result, *phrases)
    assert not (tmp_path / "out").exists()


def test_split_cli_refuses_to_overwrite_or_write_inside_input(tmp_path):
    make_class_folders(tmp_path / "in", {"a": 4, "b": 4})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    result = run_script("split.py", "--input_dir", tmp_path / "in", "--output_dir", tmp_path / "out")
    assert_clean_error(result, "not empty", "never overwrites")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"
    inside = run_script("split.py", "--input_dir", tmp_path / "in", "--output_dir", tmp_path / "in" / "split")
    assert_clean_error(inside, "inside --input_dir")


def test_split_cli_names_a_class_too_small_to_split(tmp_path):
    make_class_folders(tmp_path / "in", {"a": 4, "lonely": 1})
    result = run_script("split.py", "--input_dir", tmp_path / "in", "--output_dir", tmp_path / "out")
    assert_clean_error(result, "'lonely' (1)")


def test_groups_count_under_their_most_common_label():
    from datasets.base import stratified_holdout

    rng = np.random.default_rng(0)
    labels, groups = rng.integers(0, 3, 300), rng.integers(0, 40, 300).astype(str)
    held = stratified_holdout(labels, 0.25, seed=1, stream=0, groups=groups)
    for group in np.unique(groups):  # a group is never split
        assert held[groups == group].all() or not held[groups == group].any()
    majority = {g: np.bincount(labels[groups == g]).argmax() for g in np.unique(groups)}
    for label in range(3):
        members = [g for g, m in majority.items() if m == label]
        assert sum(held[groups == g][0] for g in members) == round(len(members) * 0.25)


def test_low_data_subsets_are_nested_stratified_and_seeded():
    labels = np.repeat(np.arange(3), [40, 20, 10])
    classes = ["a", "b", "c"]
    subsets = {
        size: nested_subset(labels, classes, seed=5, **size_kwargs)
        for size, size_kwargs in [
            ("1 shot", {"shots": 1}),
            ("5 shots", {"shots": 5}),
            ("10%", {"fraction": 0.1}),
            ("50%", {"fraction": 0.5}),
            ("100%", {"fraction": 1.0}),
        ]
    }
    assert [int(subsets["5 shots"][labels == c].sum()) for c in range(3)] == [5, 5, 5]
    assert [int(subsets["10%"][labels == c].sum()) for c in range(3)] == [4, 2, 1]
    assert subsets["100%"].all()
    ordered = ["1 shot", "10%", "5 shots", "50%", "100%"]  # each inside the next, class by class
    for smaller, larger in zip(ordered, ordered[1:], strict=False):
        assert not (subsets[smaller] & ~subsets[larger]).any(), (smaller, larger)
    assert not np.array_equal(subsets["50%"], nested_subset(labels, classes, seed=6, fraction=0.5))
    with pytest.raises(UserError, match=r"class 'c' has only 10 outside the test set \(the smallest class has 10\)"):
        nested_subset(labels, classes, seed=0, shots=11)


def test_subset_keeps_the_test_set_whole_and_carves_val_from_the_subset():
    samples = pd.DataFrame({"sample": [str(i) for i in range(100)], "label": [i % 2 for i in range(100)],
                            "split": ["train"] * 60 + ["val"] * 20 + ["test"] * 20})  # fmt: skip
    samples["group"] = samples["sample"]
    full = assign_splits(samples, None, 0.2, seed=0)
    few = assign_splits(samples, None, 0.2, seed=0, subset=lambda pool: nested_subset(pool["label"], "ab", 0, shots=5))
    assert few["split"].value_counts().to_dict() == {"unused": 70, "test": 20, "train": 8, "val": 2}
    assert few.loc[few["split"] == "test", "sample"].tolist() == full.loc[full["split"] == "test", "sample"].tolist()
    used = few[few["split"].isin(["train", "val"])]
    assert used.groupby("label").size().tolist() == [5, 5] and used.groupby("label")["split"].nunique().eq(2).all()
