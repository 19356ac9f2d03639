"""Each corruption against the reference implementation (`imagecorruptions` 1.1.2) at 224, 64 and 32 px: mean
PSNR against the clean image, this tool's beside the reference run it follows (`Corruption.small_sizes`), over
16 draws on five photographs shipped with scikit-learn and scikit-image. Prints the README's table.

Usage: python benchmarks/corruptions_reference.py   (needs requirements-dev.txt: imagecorruptions, scikit-image)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from skimage import data as skimage_data  # noqa: E402
from sklearn.datasets import load_sample_images  # noqa: E402
from test_corruptions_reference import centre_square, load_reference, our_psnr, reference_psnr  # noqa: E402

from backbones.corruptions import CORRUPTIONS  # noqa: E402


def main() -> None:
    reference = load_reference()
    images = [*load_sample_images().images, skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea()]
    photos = np.stack([centre_square(image, 224) for image in images])
    print(
        "| corruption | below 224 px follows | " + " | ".join(f"{s} px: ours / reference (dB)" for s in (224, 64, 32))
    )
    print("| --- | --- | --- | --- | --- |")
    for name, corruption in CORRUPTIONS.items():
        follows = "the package at 224 px, resized" if corruption.small_sizes == "224" else "the package on the image"
        cells = []
        for size in (224, 64, 32):
            pairs = [
                (our_psnr(name, photos, size, s), reference_psnr(reference, name, photos, size, s)) for s in range(1, 6)
            ]
            cells.append(" ".join(f"{a:.1f}/{b:.1f}" for a, b in pairs))
        print(f"| {name} | {follows} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
