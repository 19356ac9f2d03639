"""The one splitter: stratified, seeded, groups kept whole; and split.py built on it."""

from __future__ import annotations

import hashlib
import math

import numpy as np
import pandas as pd
import pytest

from backbones import split
from backbones.datasets.common.splits import TEST_STREAM, VAL_STREAM, assign_splits, nested_subset, stratified_holdout
from backbones.errors import UserError
from conftest import assert_clean_error, run_inline
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
        "cat": 3,  # ceil(0.3 * 10) held out, ceil(2/3 * 3) of them test: the original's count
        "dog": 5,
        "eel": 2,
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
    result = run_inline("split.py", "--input_dir", tmp_path / "in", "--output_dir", tmp_path / "out", *args)
    assert_clean_error(result, *phrases)
    assert not (tmp_path / "out").exists()


def test_split_cli_refuses_to_overwrite_or_write_inside_input(tmp_path):
    make_class_folders(tmp_path / "in", {"a": 4, "b": 4})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    result = run_inline("split.py", "--input_dir", tmp_path / "in", "--output_dir", tmp_path / "out")
    assert_clean_error(result, "not empty", "never overwrites")
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"
    inside = run_inline("split.py", "--input_dir", tmp_path / "in", "--output_dir", tmp_path / "in" / "split")
    assert_clean_error(inside, "inside --input_dir")


def test_split_cli_names_a_class_too_small_to_split(tmp_path):
    make_class_folders(tmp_path / "in", {"a": 4, "lonely": 1})
    result = run_inline("split.py", "--input_dir", tmp_path / "in", "--output_dir", tmp_path / "out")
    assert_clean_error(result, "'lonely' (1)")


def test_groups_count_under_their_most_common_label():
    from backbones.datasets.common.splits import stratified_holdout

    rng = np.random.default_rng(0)
    labels, groups = rng.integers(0, 3, 300), rng.integers(0, 40, 300).astype(str)
    held = stratified_holdout(labels, 0.25, seed=1, stream=0, groups=groups)
    for group in np.unique(groups):  # a group is never split
        assert held[groups == group].all() or not held[groups == group].any()
    majority = {g: np.bincount(labels[groups == g]).argmax() for g in np.unique(groups)}
    for label in range(3):
        members = [g for g, m in majority.items() if m == label]
        assert sum(held[groups == g][0] for g in members) == math.ceil(len(members) * 0.25)


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
                            "split": ["train"] * 80 + ["test"] * 20})  # fmt: skip
    samples["group"] = samples["sample"]
    full = assign_splits(samples, None, 0.2, seed=0)
    few = assign_splits(samples, None, 0.2, seed=0, subset=lambda pool: nested_subset(pool["label"], "ab", 0, shots=5))
    assert few["split"].value_counts().to_dict() == {"unused": 70, "test": 20, "train": 8, "val": 2}
    assert few.loc[few["split"] == "test", "sample"].tolist() == full.loc[full["split"] == "test", "sample"].tolist()
    used = few[few["split"].isin(["train", "val"])]
    assert used.groupby("label").size().tolist() == [5, 5] and used.groupby("label")["split"].nunique().eq(2).all()


def test_subset_leaves_an_official_validation_split_whole():
    samples = pd.DataFrame({"sample": [str(i) for i in range(100)], "label": [i % 2 for i in range(100)],
                            "split": ["train"] * 60 + ["val"] * 20 + ["test"] * 20})  # fmt: skip
    samples["group"] = samples["sample"]
    few = assign_splits(samples, None, 0.2, seed=0, subset=lambda pool: nested_subset(pool["label"], "ab", 0, shots=5))
    assert few["split"].value_counts().to_dict() == {"unused": 50, "val": 20, "test": 20, "train": 10}
    assert (few["split"][60:80] == "val").all()  # the official validation images, untouched
    assert few.loc[few["split"] == "train", "label"].value_counts().tolist() == [5, 5]


AWKWARD = {"a": 2, "b": 3, "c": 4, "d": 7, "e": 11, "f": 13, "g": 26, "h": 101}


def sklearn_counts(n: int, test_size: float, val_size: float = 0.0) -> tuple[int, int, int]:
    """(train, val, test) the original's split.py gives a class of n: scikit-learn's train_test_split, twice."""
    from sklearn.model_selection import train_test_split

    train, held = train_test_split(list(range(n)), test_size=test_size + val_size, random_state=42)
    if val_size == 0:
        return len(train), 0, len(held)
    try:
        val, test = train_test_split(held, test_size=test_size / (test_size + val_size), random_state=42)
    except ValueError:  # too few held out for two parts: the original stops here; all of them are test
        return len(train), 0, len(held)
    return len(train), len(val), len(test)


@pytest.mark.parametrize(("test_size", "val_size"), [(0.2, 0.0), (0.3, 0.0), (0.15, 0.0), (0.2, 0.1), (0.1, 0.25)])
def test_split_py_counts_every_class_as_the_original(tmp_path, test_size, val_size):
    make_class_folders(tmp_path / "in", AWKWARD)
    plan = split.plan_split(tmp_path / "in", test_size, val_size, seed=0)
    counts = plan.groupby("class")["split"].value_counts().unstack(fill_value=0)
    for name, n in AWKWARD.items():
        produced = tuple(int(counts.loc[name].get(s, 0)) for s in ("train", "val", "test"))
        assert produced == sklearn_counts(n, test_size, val_size), name


def test_random_state_is_the_originals_name_for_the_seed(tmp_path):
    make_class_folders(tmp_path / "in", AWKWARD)
    by_name = split.main(
        ["--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "a"), "--random_state", "3"]
    )
    by_seed = split.main(["--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "b"), "--seed", "3"])
    assert by_name["split"].tolist() == by_seed["split"].tolist()


@pytest.mark.parametrize("dataset", ["imagefolder", "plantvillage", "ucmerced", "eurosat"])
def test_datasets_carve_their_test_split_with_the_originals_count(tmp_path, dataset):
    from backbones.datasets import spec
    from backbones.loading import load_splits
    from backbones.options import build_parser, data_config

    layout = {"ucmerced": "UCMerced_LandUse/Images", "eurosat": "eurosat/2750"}.get(dataset, "")  # published layouts
    make_class_folders(tmp_path / "data" / layout, AWKWARD)
    dataset_spec = spec(dataset)
    flags = ["-model", "x", "--data", str(tmp_path / "data"), "--val-fraction", "0", "--no-download"]
    args = build_parser(dataset_spec).parse_args(flags)
    args.seed = 0
    catalog, samples = load_splits(dataset_spec, data_config(dataset_spec, args))
    tests = samples[samples["split"] == "test"].groupby("label").size()
    for label, name in enumerate(catalog.classes):
        assert tests.get(label, 0) == sklearn_counts(AWKWARD[name], dataset_spec.test_fraction)[2], name
    assert samples["split"].isin(["train", "test"]).all()


def test_galaxy10_holds_out_ten_percent_of_the_whole_set():
    from sklearn.model_selection import train_test_split

    labels = np.repeat(np.arange(10), [1081, 1853, 2645, 2027, 334, 2043, 1829, 2628, 1423, 1873])  # Galaxy10 DECals
    assert len(labels) == 17_736
    held = stratified_holdout(labels, 0.1, seed=0, stream=TEST_STREAM, whole_set=True)
    assert (int((~held).sum()), int(held.sum())) == (15_962, 1_774)  # the table's counts
    assert len(train_test_split(labels, test_size=0.1)[1]) == 1_774  # the original's (unstratified) count
    per_class = np.bincount(labels[held], minlength=10)
    assert (np.abs(per_class - 0.1 * np.bincount(labels)) < 1).all()  # stratified
    summed = sum(math.ceil(0.1 * n) for n in np.bincount(labels))
    assert summed != 1_774  # why the whole-set count matters: class by class gives another total


def test_a_breakhis_patient_number_never_straddles_the_split(tmp_path):
    from backbones.datasets import breakhis
    from backbones.datasets.common.spec import ReadOptions
    from formats import make_breakhis

    make_breakhis(tmp_path / "data", per_patient=2)
    for mag in (40, 400):
        catalog = breakhis.catalog(tmp_path / "data", ReadOptions(download=False, own={"mag": mag}))
        assert set(catalog.samples["group"]) == {"14-22549", "14-9133", "14-21998", "14-3411", "14-13412", "14-13418",
                                                 "14-9146", "14-2523"}  # fmt: skip
        for seed in range(20):
            split = assign_splits(catalog.samples, breakhis.SPEC.test_fraction, 0.0, seed)
            assert (split.groupby("group")["split"].nunique() == 1).all(), seed


def test_split_takes_the_kebab_case_spellings_beside_the_originals(tmp_path):
    make_class_folders(tmp_path / "in", {"a": 5, "b": 5})
    for name, flags in (
        ("snake", ("--input_dir", "--output_dir", "--test_size", "--val_size", "--random_state")),
        ("kebab", ("--input-dir", "--output-dir", "--test-size", "--val-size", "--random-state")),
    ):
        values = (tmp_path / "in", tmp_path / name, "0.4", "0.2", "3")
        result = run_inline("split.py", *[item for pair in zip(flags, values, strict=True) for item in pair])
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "snake" / "manifest.csv").read_text() == (tmp_path / "kebab" / "manifest.csv").read_text()
    assert set(pd.read_csv(tmp_path / "kebab" / "manifest.csv")["split"]) == {"train", "val", "test"}
