"""The decoded-image cache and the per-batch augmentation: same pixels and same draws as the per-image path."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import namedtuple

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from backbones import pipeline
from backbones.datasets.common.folders import class_folder_catalog
from backbones.errors import UserError
from backbones.pipeline import DeviceBatches, SplitImages, cached_images, decode, sample_seeds
from backbones.runtime import make_precision
from conftest import FAST, ROOT, finished_run, run_script
from formats import make_cifar10

SIZE = (24, 20)


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """Class folders of JPEG, PNG (with alpha) and grey images of varied sizes, and a private cache."""
    monkeypatch.setenv("BACKBONES_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for index in range(12):
        (tmp_path / "data" / f"c{index % 3}").mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (20 + 7 * index, 50 - 2 * index, 4), dtype=np.uint8)
        image = Image.fromarray(pixels, "RGBA")
        path = tmp_path / "data" / f"c{index % 3}" / f"{index}"
        if index % 3 == 0:
            image.convert("RGB").save(path.with_suffix(".jpg"), quality=90)
        elif index % 3 == 1:
            image.save(path.with_suffix(".png"))
        else:
            image.convert("L").save(path.with_suffix(".png"))
    return class_folder_catalog(tmp_path / "data", tmp_path / "data")


def test_cached_images_equal_the_direct_path_and_are_reused(folder):
    ids = folder.samples["sample"].tolist()
    said = []
    path, rows = cached_images("mine", folder.read, ids, SIZE, "disk", 0, said.append)
    assert said[0].startswith("Caching 12 decoded images at 24x20")
    cached = np.load(path, mmap_mode="r")
    assert cached.shape == (12, 3, *SIZE) and cached.dtype == np.uint8
    for sample in ids:
        assert np.array_equal(cached[rows[sample]], decode(folder.read, sample, SIZE).numpy()), sample
    built = path.stat().st_mtime_ns
    again, _ = cached_images("mine", folder.read, list(reversed(ids)), SIZE, "disk", 1, said.append)
    assert again == path and path.stat().st_mtime_ns == built and said[1].startswith("Reading 12 decoded images")
    labels = folder.samples["label"].tolist()
    direct, through_cache = SplitImages(ids, labels, folder.read, SIZE), SplitImages(ids, labels, folder.read, SIZE,
                                                                                     path, rows)  # fmt: skip
    for position in range(len(ids)):
        (image, label, index), (cached_image, cached_label, cached_index) = direct[position], through_cache[position]
        assert torch.equal(image, cached_image) and (label, index) == (cached_label, cached_index) == (
            labels[position],
            position,
        )
    assert cached_images("mine", folder.read, ids, (16, 16), "disk", 0, said.append)[0] != path  # size in the key
    assert cached_images("mine", folder.read, ids[:6], SIZE, "disk", 0, said.append)[0] != path  # samples too
    assert cached_images("mine", folder.read, ids, SIZE, "off", 0, said.append) == (None, None)


def test_a_changed_source_gets_a_new_cache(folder, tmp_path):
    ids = folder.samples["sample"].tolist()
    path, rows = cached_images("mine", folder.read, ids, SIZE, "disk", 0, lambda line: None)
    changed = tmp_path / "data" / ids[4]
    Image.fromarray(np.full((30, 30, 3), 7, dtype=np.uint8)).save(changed, format=Image.open(changed).format)
    os.utime(changed, ns=(time.time_ns(), time.time_ns() + 10**9))  # even where mtimes are coarse
    rebuilt, rebuilt_rows = cached_images("mine", folder.read, ids, SIZE, "disk", 0, lambda line: None)
    assert rebuilt != path
    assert (np.load(rebuilt)[rebuilt_rows[ids[4]]] == 7).all()
    assert not np.array_equal(np.load(path)[rows[ids[4]]], np.load(rebuilt)[rebuilt_rows[ids[4]]])


SLOW_BUILD = """
import sys, time
sys.path.insert(0, {root!r})
from backbones.datasets.common.folders import class_folder_catalog
from pathlib import Path
from backbones import pipeline
catalog = class_folder_catalog(Path({data!r}), Path({data!r}))
read = catalog.read
def slow(sample):
    time.sleep(0.3)
    return read(sample)
slow.fingerprint = read.fingerprint
pipeline.cached_images("mine", slow, catalog.samples["sample"].tolist(), {size!r}, "disk", 0, print)
"""


def test_a_killed_build_is_never_taken_for_a_complete_one(folder, tmp_path):
    ids = folder.samples["sample"].tolist()
    code = SLOW_BUILD.format(root=str(ROOT), data=str(tmp_path / "data"), size=SIZE)
    builder = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy(), stdout=subprocess.DEVNULL)
    images = tmp_path / "cache" / "images"
    deadline = time.time() + 120
    while not list(images.glob("*.tmp")) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a few images into the file
    builder.send_signal(signal.SIGKILL)
    builder.wait(timeout=60)
    [partial] = list(images.glob("*.tmp"))
    assert not list(images.glob("*.npy"))
    path, rows = cached_images("mine", folder.read, ids, SIZE, "disk", 0, lambda line: None)
    assert partial.name.startswith(path.name) and not partial.exists()
    assert all(np.array_equal(np.load(path)[rows[s]], decode(folder.read, s, SIZE).numpy()) for s in ids)


def test_the_cache_is_bounded_by_the_disk(folder, monkeypatch):
    ids = folder.samples["sample"].tolist()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(pipeline.shutil, "disk_usage", lambda path: usage(100_000, 95_000, 5_000))
    said = []
    assert cached_images("mine", folder.read, ids, SIZE, "auto", 0, said.append) == (None, None)
    assert said[0].startswith("Image cache skipped: the decoded images need") and "decoding every image" in said[0]
    with pytest.raises(UserError, match="--cache off"):
        cached_images("mine", folder.read, ids, SIZE, "disk", 0, said.append)
    assert not list(pipeline.cache_dir().glob("images/*.npy")) and not list(pipeline.cache_dir().glob("images/*.tmp"))


# ------------------------------------------------------------------------------------------- augmentation
class Positions(torch.utils.data.Dataset):
    """(uint8 image, label, position) for a fixed set of random images."""

    def __init__(self, count: int) -> None:
        self.images = torch.randint(
            0, 256, (count, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
        )

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, position: int):
        return self.images[position], position, position


def augmented(recipe: str, count: int, batch_size: int, epoch: int, shuffle_seed: int = 0) -> dict[int, torch.Tensor]:
    """Each position's training image at `epoch`, as DeviceBatches delivers it, un-normalised to uint8 values."""
    norm = ((0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255))
    loader = DataLoader(Positions(count), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(shuffle_seed))  # fmt: skip
    flip, trivial = recipe in ("hflip", "trivialaugment"), recipe == "trivialaugment"
    batches = DeviceBatches(loader, norm, make_precision(torch.device("cpu")), 5, flip, trivial)
    batches.set_epoch(epoch)
    return {int(p): image.round() for images, positions in batches for p, image in zip(positions, images, strict=True)}


def test_augmentation_draws_are_those_of_the_per_image_transforms():
    """For its sample and epoch seed, each image gets exactly what torchvision's per-image flip then
    TrivialAugmentWide draw and do with the global generator at that seed: the same distribution."""
    state = torch.get_rng_state()
    images = augmented("trivialaugment", 40, 8, epoch=3)
    assert torch.equal(torch.get_rng_state(), state)  # the run's own random stream is untouched
    per_image = v2.Compose([v2.RandomHorizontalFlip(), v2.TrivialAugmentWide()])
    originals = Positions(40).images
    for position, seed in enumerate(sample_seeds(5, 3, torch.arange(40))):
        torch.manual_seed(seed)
        assert torch.equal(images[position], per_image(originals[position]).float()), position
    assert sum(not torch.equal(images[p], originals[p].float()) for p in range(40)) >= 30  # it does augment


def test_augmentation_depends_on_sample_and_epoch_only():
    first = augmented("trivialaugment", 30, 4, epoch=1)
    other_batching = augmented("trivialaugment", 30, 7, epoch=1, shuffle_seed=9)
    assert all(torch.equal(first[p], other_batching[p]) for p in range(30))
    next_epoch = augmented("trivialaugment", 30, 4, epoch=2)
    assert sum(not torch.equal(first[p], next_epoch[p]) for p in range(30)) >= 20


def test_flip_recipe_flips_half_the_images_and_nothing_else():
    originals = Positions(400).images.float()
    images = augmented("hflip", 400, 50, epoch=1)
    flipped = [torch.equal(images[p], originals[p].flip(-1)) for p in range(400)]
    assert all(f or torch.equal(images[p], originals[p]) for p, f in enumerate(flipped))
    assert 160 <= sum(flipped) <= 240  # Binomial(400, 1/2): mean 200, sd 10
    assert all(torch.equal(i, originals[p]) for p, i in augmented("none", 400, 50, epoch=1).items())


@pytest.mark.slow
def test_a_run_is_the_same_with_the_cache_on_or_off(tmp_path):
    """CIFAR-10's recipe (flip + TrivialAugmentWide): cache off with a worker, and cache on, give the same run."""
    make_cifar10(tmp_path / "data", per_batch=12, test=20)
    runs = {}
    for cache, workers in (("off", "1"), ("disk", "0")):
        out = tmp_path / cache
        result = run_script("cifar10.py", *FAST, "--data", tmp_path / "data", "--no-download", "--cache", cache,
                            "--workers", workers, "--out", out, "--results", tmp_path / "r.csv")  # fmt: skip
        runs[cache] = finished_run(result, out)
        assert ("Caching 80 decoded images" in result.stdout) == (cache == "disk")
        runs[cache]["logits"] = np.load(out / "test_outputs.npz")["logits"]
    assert np.array_equal(runs["off"]["logits"], runs["disk"]["logits"])
    for key in ("top1", "nll", "best_epoch"):
        assert runs["off"][key] == runs["disk"][key]
    strip = lambda history: [{k: v for k, v in h.items() if "seconds" not in k} for h in history]  # noqa: E731
    assert strip(runs["off"]["history"]) == strip(runs["disk"]["history"])
