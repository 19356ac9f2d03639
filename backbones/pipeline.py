"""From a dataset's reader to device-ready batches, with the decoding paid once.

Every image is decoded and resized to the training size as uint8 (3, H, W): straight from its file on each
access (`--cache off`), or once into a memory-mapped file that later epochs and later runs on the same data read
instead (`--cache disk`). Both paths produce the same pixels. Augmentation and normalisation then happen per
batch, on the device, seeded per sample and epoch, so a run draws the same augmentations whichever path and
however many workers feed it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from filelock import FileLock
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.transforms import v2
from tqdm import tqdm

from backbones.datasets.common.spec import Normalisation
from backbones.errors import UserError
from backbones.files import atomic_write, cache_dir

AUGMENT_STREAM = 3  # beside the split streams of datasets.common.splits: augmentation draws never move a split
DECODING = "exif-upright"  # how images are decoded: part of the cache key, so a change never serves old pixels
MAX_SHARE_OF_FREE_DISK = 0.5  # the cache never takes more than this share of the free space


def decode(
    read: Callable[[str], Image.Image], sample: str, size: tuple[int, int], before_resize: Callable | None = None
) -> torch.Tensor:
    """One image as training sees it before augmentation: RGB, resized to `size` (PIL, antialiased), uint8;
    `before_resize` (the original's TrivialAugmentWide on some datasets) is applied to the image as read."""
    image = read(sample)
    if before_resize is not None:
        image = before_resize(image)
    return v2.functional.pil_to_tensor(v2.functional.resize(image, list(size), antialias=True))


class SplitImages(Dataset):
    """(uint8 image, label, position) for each sample of one split: decoded on access, or read from a cache.

    `cache` is the path of a cache file holding every sample in `cache_rows` order; each process maps it on
    first use (a memory map must not be pickled into a worker), so memory is bounded by the page cache, not RAM.
    `augment_first` (`--protocol paper` on datasets whose original script augments before resizing) applies
    TrivialAugmentWide to the image as read, drawn from the seed of (`seed`, `epoch`, sample) as on the device;
    such images cannot be cached, and a loader must not keep its workers across epochs (they hold `epoch`).
    """

    def __init__(
        self,
        ids: Sequence[str],
        labels: Sequence[int],
        read: Callable[[str], Image.Image],
        size: tuple[int, int],
        cache: Path | None = None,
        cache_rows: dict[str, int] | None = None,
        augment_first_seed: int | None = None,
    ) -> None:
        self.ids, self.labels, self.read, self.size = list(ids), list(labels), read, size
        self.cache = cache
        self.rows = [cache_rows[sample] for sample in self.ids] if cache is not None else None
        self._images = None
        self.augment_first_seed, self.epoch = augment_first_seed, 0
        self.augment_first = v2.TrivialAugmentWide() if augment_first_seed is not None else None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_images": None}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        if self.augment_first is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seeds(self.augment_first_seed, self.epoch, [position])[0])
                image = decode(self.read, self.ids[position], self.size, self.augment_first)
        elif self.cache is None:
            image = decode(self.read, self.ids[position], self.size)
        else:
            if self._images is None:
                self._images = np.load(self.cache, mmap_mode="r")
            image = torch.from_numpy(np.array(self._images[self.rows[position]]))
        return image, self.labels[position], position


# ------------------------------------------------------------------------------------------------- the cache
def cached_images(
    label: str, read, samples: Sequence[str], size: tuple[int, int], mode: str, workers: int, log=print
) -> tuple[Path, dict[str, int]] | tuple[None, None]:
    """The cache file holding `samples` decoded at `size`, building it if needed, and each sample's row in it.

    The file name is a hash of the dataset (`label`), the size, the sorted sample list and the reader's
    fingerprint of its sources (file sizes and times, or the arrays' bytes), so a changed source gets a new
    file. It is written through a temporary file and one rename, under a lock, so a killed build is never
    mistaken for a complete one and two runs of a sweep never build it twice. `mode` 'auto' skips the cache
    (and says why) where it would not fit on disk; 'disk' insists; 'off' returns (None, None).
    """
    if mode == "off":
        return None, None
    ids = sorted(set(samples))
    height, width = size
    key = [label, list(size), ids, read.fingerprint(ids), DECODING]
    key = hashlib.sha1(json.dumps(key).encode()).hexdigest()[:20]
    folder = cache_dir() / "images"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{label.replace('/', '_')}-{height}x{width}-{key}.npy"
    with FileLock(folder / f"{path.stem}.lock"):  # another process building the same file: wait for it
        if path.exists() and not _intact(path, (len(ids), 3, height, width)):
            log(f"The image cache {path} is damaged (truncated or overwritten); rebuilding it.")
            path.unlink()
        if not path.exists():
            for stale in folder.glob(f"{path.name}.*.tmp"):  # left by a killed build; we hold the lock
                stale.unlink(missing_ok=True)
            if not _build(path, ids, read, size, mode, workers, log):
                return None, None
        else:
            log(f"Reading {len(ids)} decoded images at {height}x{width} from the cache {path}")
    return path, {sample: row for row, sample in enumerate(ids)}


def _intact(path: Path, shape: tuple[int, ...]) -> bool:
    """Whether the cache file is a whole uint8 array of `shape` (its header and its size on disk agree)."""
    try:
        images = np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return images.dtype == np.uint8 and images.shape == shape


def _build(path: Path, ids: list[str], read, size: tuple[int, int], mode: str, workers: int, log) -> bool:
    shape = (len(ids), 3, *size)
    needed = int(np.prod(shape))
    disk = shutil.disk_usage(path.parent)
    if needed > MAX_SHARE_OF_FREE_DISK * disk.free:
        message = (
            f"the decoded images need {needed / 2**30:.2f} GiB and {path.parent} has {disk.free / 2**30:.2f} GiB "
            f"free of {disk.total / 2**30:.1f} GiB"
        )
        if mode == "disk":
            raise UserError(
                f"--cache disk: {message} (it may take at most {MAX_SHARE_OF_FREE_DISK:.0%} of it). Free some "
                "space, point $BACKBONES_CACHE at a larger disk, or pass --cache off to decode every image every epoch."
            )
        log(f"Image cache skipped: {message}; decoding every image every epoch instead.")
        return False
    log(f"Caching {len(ids)} decoded images at {size[0]}x{size[1]} ({needed / 2**20:.0f} MiB) in {path}")
    images = SplitImages(ids, [0] * len(ids), read, size)
    # its own generator: building the cache must not draw from the run's random stream
    loader = DataLoader(images, batch_size=64, num_workers=workers, generator=torch.Generator())

    def write(file) -> None:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(file, header)
        for images, _, _ in tqdm(loader, desc="caching images", leave=False, disable=None):
            file.write(images.numpy().tobytes())

    try:
        atomic_write(path, write)
    except OSError as err:  # the disk filled up after all (another writer), or the folder is read-only
        if mode == "disk":
            raise UserError(
                f"--cache disk: writing {path} failed ({err}). Free some space or pass --cache off."
            ) from err
        log(f"Image cache skipped: writing {path} failed ({err}); decoding every image every epoch instead.")
        return False
    return True


# ------------------------------------------------------------------------------------------ device batches
def sample_seeds(seed: int, epoch: int, positions: torch.Tensor) -> list[int]:
    """One seed per sample and epoch, independent of batch composition, workers and the cache."""
    return [int(np.random.SeedSequence([seed, AUGMENT_STREAM, epoch, int(p)]).generate_state(1)[0]) for p in positions]


class DeviceBatches:
    """Batches of a loader of uint8 images, moved to the device, augmented there and normalised.

    Augmentation (training only): a horizontal flip with probability 1/2 (`flip`), then (`trivial_augment`)
    torchvision's own TrivialAugmentWide, for each image with the random stream of its sample and epoch. The flip
    and the operation are those of the per-image transforms, so the distribution is theirs. `norm` is the (mean,
    std) per channel in [0, 1]. `perturb`, when set, maps each uint8 batch on the device to another before
    normalisation: robustness.py's corruptions and transformations of the test images.
    """

    def __init__(
        self, loader: DataLoader, norm: Normalisation, precision, seed: int, flip: bool, trivial_augment: bool
    ) -> None:
        self.loader, self.precision, self.seed, self.epoch = loader, precision, seed, 0
        self.flip = flip
        self.trivial_augment = v2.TrivialAugmentWide() if trivial_augment else None
        self.perturb: Callable[[torch.Tensor], torch.Tensor] | None = None
        shape = (1, 3, 1, 1)
        self.mean = 255 * torch.tensor(norm[0], device=precision.device).view(shape)
        self.std = 255 * torch.tensor(norm[1], device=precision.device).view(shape)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if isinstance(self.loader.dataset, SplitImages):
            self.loader.dataset.epoch = epoch  # its augmentation before the resize, if any
        if isinstance(self.loader.sampler, DistributedSampler):
            self.loader.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def augment(self, images: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = torch.empty_like(images)
        with torch.random.fork_rng(devices=[]):  # the run's own random streams are left where they were
            for index, sample_seed in enumerate(sample_seeds(self.seed, self.epoch, positions)):
                torch.default_generator.manual_seed(sample_seed)
                image = images[index]
                if self.flip and torch.rand(()) < 0.5:
                    image = image.flip(-1)
                out[index] = self.trivial_augment(image) if self.trivial_augment else image
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        device = self.precision.device
        for images, labels, positions in self.loader:
            images = images.to(device, non_blocking=True)
            if self.flip or self.trivial_augment:
                images = self.augment(images, positions)
            if self.perturb is not None:
                images = self.perturb(images)
            yield (
                self.precision.to_device((images.float() - self.mean) / self.std),
                labels.to(device, non_blocking=True),
            )
