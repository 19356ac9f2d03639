"""scikit-learn's bundled handwritten digits: the offline default that needs no download at all."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from backbones.datasets.common.readers import ArrayReader
from backbones.datasets.common.spec import Catalog, DatasetSpec, ReadOptions


def catalog(data: Path, options: ReadOptions) -> Catalog:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 8x8, values 0..16
    samples = [str(i) for i in range(len(images))]
    return Catalog.from_columns(samples, digits.target, [str(d) for d in range(10)], ArrayReader({"": images}))


SPEC = DatasetSpec(
    name="digits",
    title="Digits (scikit-learn)",
    domain="natural",
    num_classes=10,
    image_size=(32, 32),
    catalog=catalog,
    source="bundled with scikit-learn (sklearn.datasets.load_digits); nothing to download",
    layout="none: --data is ignored",
    test_fraction=0.2,
    augment="none",
    mean=(0.31, 0.31, 0.31),
    std=(0.38, 0.38, 0.38),
)
