"""Test helpers: small synthetic data sets and the shared/assets location.

A plain module (not conftest.py): under pytest-xdist, ``from conftest import`` can resolve to
another folder's conftest."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO.parent / "shared" / "assets"


def synthetic_dataset(n_per_class: int = 40, size: int = 16, num_classes: int = 3,
                      seed: int = 0):
    """A learnable in-memory data set: each class is a noisy colour/stripe pattern."""
    from bench.data import Dataset, Split

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    images, labels = [], []
    for c in range(num_classes):
        base = np.zeros((size, size, 3), np.float32)
        base[..., c % 3] = 160
        base += 60 * np.sin((xx * (c + 1) + yy) / 3.0)[..., None]
        for _ in range(n_per_class):
            img = base + rng.normal(0, 30, base.shape)
            images.append(np.clip(img, 0, 255).astype(np.uint8))
            labels.append(c)
    images, labels = np.stack(images), np.array(labels, np.int32)
    perm = rng.permutation(len(labels))
    images, labels = images[perm], labels[perm]
    n = len(labels)
    a, b = int(0.7 * n), int(0.85 * n)
    splits = {"train": Split(images[:a], labels[:a]), "val": Split(images[a:b], labels[a:b]),
              "test": Split(images[b:], labels[b:])}
    return Dataset(name="synthetic", source="synthetic", fingerprint=f"synthetic-{seed}",
                   classes=[f"c{i}" for i in range(num_classes)], image_size=(size, size),
                   splits=splits, skipped=[], split_info={"method": "synthetic"},
                   resize="none")


def write_image_folder(root: Path, n_per_class: int = 30, size: int = 24,
                       num_classes: int = 3) -> Path:
    """Write ``synthetic_dataset`` images as one PNG folder per class under ``root``."""
    from PIL import Image

    ds = synthetic_dataset(n_per_class, size, num_classes)
    i = 0
    for split in ds.splits.values():
        for img, y in zip(split.images, split.labels):
            d = root / ds.classes[y]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:05d}.png")
            i += 1
    return root
