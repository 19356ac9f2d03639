"""Turning a sample id into an 8-bit RGB image: from files under a root (EXIF-upright, 16-bit and float images
rescaled by their depth) or from in-memory arrays. Picklable, so DataLoader workers can use them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from backbones.errors import UserError


class FileReader:
    """Reads image files relative to a root; picklable so DataLoader workers can use it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def fingerprint(self, samples: Sequence[str]) -> str:
        """What changes when a source file does: its size and modification time (for the image cache's key)."""
        digest = hashlib.sha1(str(self.root.resolve()).encode())
        for sample in samples:
            try:
                info = os.stat(self.root / sample)
            except OSError as err:  # a dangling or looping symlink, or a file deleted since the listing
                raise UserError(
                    f"Cannot open {self.root / sample}: {err.strerror or err}. A broken or looping symbolic link, or "
                    "a file removed while the run started; fix or delete it, then run again."
                ) from err
            digest.update(f"{sample}:{info.st_size}:{info.st_mtime_ns};".encode())
        return digest.hexdigest()

    def __call__(self, sample: str) -> Image.Image:
        path = self.root / sample
        try:
            return open_image(path)
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
            raise UserError(
                f"Cannot read image {path}: {err}. The file is missing, truncated, not an image, or (a decompression "
                "bomb) far larger than any photograph; replace or delete it (and re-extract the dataset if many are "
                "affected), then run again."
            ) from err


def open_image(path: Path) -> Image.Image:
    """An image file as 8-bit RGB, turned upright as its EXIF orientation says (as a photo viewer shows it: a
    phone's portrait JPEG is stored sideways with a tag to turn it)."""
    with Image.open(path) as image:
        return to_rgb8(ImageOps.exif_transpose(image), path)


HIGH_DEPTH_MODES = {"I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16}


def to_rgb8(image: Image.Image, path: Path | str = "image") -> Image.Image:
    """An 8-bit RGB copy of `image`. 16-bit and 32-bit greyscale (medical, remote sensing) are rescaled by their bit
    depth rather than clipped at 255 as `convert("RGB")` does; float images must lie in [0, 1]."""
    if image.mode not in (*HIGH_DEPTH_MODES, "I", "F"):
        return image.convert("RGB")
    pixels = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        if not np.isfinite(pixels).all() or pixels.min() < 0 or pixels.max() > 1:
            raise ValueError(
                f"it is a floating-point image with values from {pixels.min():g} to {pixels.max():g}; only floats in "
                "[0, 1] have a known scale. Convert it to 8- or 16-bit integers"
            )
        scale = 1.0
    else:
        if pixels.min() < 0:
            raise ValueError("it is a signed 32-bit image with negative values, which have no 8-bit equivalent")
        scale = 2.0 ** HIGH_DEPTH_MODES.get(image.mode, 16 if pixels.max() <= 65535 else 32) - 1
    return Image.fromarray(np.round(pixels * (255.0 / scale)).astype(np.uint8)).convert("RGB")


class ArrayReader:
    """Serves images from in-memory uint8 arrays; sample ids are '<array>/<index>' (or '<index>' for one array)."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays

    def fingerprint(self, samples: Sequence[str]) -> str:
        """A hash of the arrays' pixels (for the image cache's key)."""
        digest = hashlib.sha1()
        for name in sorted(self.arrays):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(self.arrays[name]).tobytes())
        return digest.hexdigest()

    def __call__(self, sample: str) -> Image.Image:
        name, _, index = sample.rpartition("/")
        return Image.fromarray(self.arrays[name][int(index)]).convert("RGB")
