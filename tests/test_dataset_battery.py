"""The same checks on every dataset script, each on its fixture in the published on-disk layout (formats.FIXTURES):
the reader finds every image, the split is complete, seeded and keeps groups together, every split's images open,
and an empty --data is a clear error. A new dataset needs only its fixture; the per-dataset tests in
test_datasets.py check each dataset's own rules."""

from __future__ import annotations

import pandas as pd
import pytest

from backbones import datasets, runconfig
from backbones.errors import UserError
from backbones.loading import load_splits
from conftest import FAST
from formats import FIXTURES


def load(name: str, data, *extra: str) -> tuple:
    """(spec, catalog, samples, warnings): the data as the script reads and splits it, from its own flags."""
    spec = datasets.spec(name)
    config = runconfig.resolve(spec, [*FAST, "--data", str(data), "--no-download", *FIXTURES[name].flags, *extra])
    warnings: list[str] = []
    catalog, samples = load_splits(spec, config.data, warnings.append)
    return spec, catalog, samples, warnings


def test_every_dataset_script_has_a_fixture():
    assert sorted(FIXTURES) == sorted(datasets.NAMES)


@pytest.mark.parametrize("name", datasets.NAMES)
def test_each_dataset_reads_and_splits_its_fixture(tmp_path, name):
    fixture = FIXTURES[name]
    fixture.build(tmp_path / "data")
    _, catalog, samples, _ = load(name, tmp_path / "data")
    assert len(samples) == fixture.images and samples["sample"].is_unique
    assert len(catalog.classes) == fixture.classes
    assert samples["label"].between(0, len(catalog.classes) - 1).all()
    assert sorted(samples["split"].unique()) == ["test", "train", "val"]
    assert samples.groupby("group")["split"].nunique().eq(1).all(), "a group (a patient, say) is in two splits"
    for sample in samples.groupby("split")["sample"].first():
        image = catalog.read(sample)
        assert image.mode == "RGB" and min(image.size) > 0
    _, _, again, _ = load(name, tmp_path / "data")
    pd.testing.assert_frame_equal(again.reset_index(drop=True), samples.reset_index(drop=True))  # seeded


@pytest.mark.parametrize("name", [name for name in datasets.NAMES if name != "digits"])  # digits reads no --data
def test_each_dataset_names_what_it_expected_in_an_empty_folder(tmp_path, name):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError) as raised:
        load(name, empty)
    message = str(raised.value)
    assert str(empty) in message and datasets.spec(name).layout in message, message
    assert list(empty.iterdir()) == []
