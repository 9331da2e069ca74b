"""Splits: keep the given split folders, make stratified seeded ones where there are none."""

from __future__ import annotations

from typing import Sequence

import dataclasses
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .options import Options

@dataclasses.dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int32 (N,)
    files: np.ndarray | None = None  # (N,) source file of each row (zip member / relative path)

    def __len__(self) -> int:
        return len(self.labels)





SPLITS = ("train", "val", "test")


def subset(groups, max_per_class, seed):
    """At most ``max_per_class`` items per class and group: a seeded subset in file order."""
    if max_per_class is None:
        return groups
    rng = np.random.default_rng([seed, 0x5EB5E7])
    out = {}
    for g, (keys, labels) in groups.items():
        keep = []
        for c in np.unique(labels):
            idx = np.flatnonzero(labels == c)
            if len(idx) > max_per_class:
                idx = rng.choice(idx, max_per_class, replace=False)
            keep.append(idx)
        keep = np.sort(np.concatenate(keep)) if keep else np.zeros(0, np.int64)
        out[g] = ([keys[i] for i in keep], labels[keep])
    return out


def _stratified(labels: np.ndarray, fractions: Sequence[float], rng) -> list[np.ndarray]:
    """Indices for each fraction, per class rounded; the remainder (at least one image of
    each class) comes first. Sorted, so arrays keep their file order."""
    parts = [[] for _ in range(len(fractions) + 1)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n, take = len(idx), []
        for f in fractions:
            k = min(int(np.floor(n * f + 0.5)), max(n - 1 - sum(take), 0))
            take.append(k)
        rest = n - sum(take)
        parts[0].append(idx[:rest])
        start = rest
        for i, k in enumerate(take):
            parts[i + 1].append(idx[start:start + k])
            start += k
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def _own(x: np.ndarray) -> np.ndarray:
    """An in-memory array (one copy out of a cache memmap; in-memory arrays pass through)."""
    return np.array(x) if isinstance(x, np.memmap) else x


def make_splits(arrays, classes, opts: Options, files: dict | None = None):
    """Train/val/test from the decoded groups. Cached images arrive as memmaps: indexing
    gathers each split straight out of the page cache, one copy in all. ``files``: each
    group's per-row source files, carried into ``Split.files``."""
    names = {g: np.asarray(files[g], dtype=object) if files and g in files
             else np.full(len(arrays[g][1]), None, dtype=object) for g in arrays}

    def split(x, y, rows=None, group=None):
        f = names[group] if rows is None else names[group][rows]
        return Split(x, y, f)

    rng = np.random.default_rng(opts.seed)
    info: dict[str, Any] = {"seed": opts.seed}
    if "all" in arrays:
        x, y = arrays["all"]
        tr, va, te = _stratified(y, [opts.val_fraction, opts.test_fraction], rng)
        splits = {"train": split(x[tr], y[tr], tr, "all"),
                  "val": split(x[va], y[va], va, "all"),
                  "test": split(x[te], y[te], te, "all")}
        info.update(method="stratified", val_fraction=opts.val_fraction,
                    test_fraction=opts.test_fraction)
    elif "test" not in arrays:
        raise AssertionError(f"groups {list(arrays)}: expected 'all' or a test split")
    elif "val" in arrays:
        splits = {k: split(_own(arrays[k][0]), arrays[k][1], group=k) for k in SPLITS}
        info.update(method="given")
    else:
        x, y = arrays["train"]
        tr, va = _stratified(y, [opts.val_fraction], rng)
        splits = {"train": split(x[tr], y[tr], tr, "train"),
                  "val": split(x[va], y[va], va, "train"),
                  "test": split(_own(arrays["test"][0]), arrays["test"][1], group="test")}
        info.update(method="given train/test; val carved from train (stratified)",
                    val_fraction=opts.val_fraction)
    info["sizes"] = {k: len(s) for k, s in splits.items()}
    info["counts"] = {k: {c: int(n) for c, n in zip(classes, np.bincount(
        s.labels, minlength=len(classes)))} for k, s in splits.items()}
    return splits, info


# --------------------------------------------------------------------------------------------
# Decoding.
