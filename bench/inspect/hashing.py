"""Perceptual hashes (pHash) of decoded images and the near-duplicate band search.

Works on decoded arrays only, never on files. The search never compares all pairs: two
64-bit hashes within Hamming distance ``k`` agree exactly on at least one of ``k + 1``
disjoint bands of bits (pigeonhole), so each band is bucketed by a sort and only pairs that
share a bucket are verified with a popcount.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple, Sequence

import numpy as np

from .options import DEFAULT_MIN_CORR, DEFAULT_NEAR_THRESHOLD, SPLIT_ORDER

HASH_SIDE = 32                 # pHash input: 32x32 grey


class NearPair(NamedTuple):
    """Two images within the Hamming distance: ``split_a`` comes first in train/val/test."""

    split_a: str
    index_a: int
    split_b: str
    index_b: int
    distance: int




def _area_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights averaging each output pixel's share of the input (area resize)."""
    edges = np.arange(dst + 1) * (src / dst)
    lo, hi = edges[:-1, None], edges[1:, None]
    j = np.arange(src)[None, :]
    overlap = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None)
    return (overlap / overlap.sum(1, keepdims=True)).astype(np.float32)


def _grey32(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 32, 32) luma (ITU-R 601), area-resized if needed."""
    g = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    h, w = g.shape[1:]
    if (h, w) != (HASH_SIDE, HASH_SIDE):
        g = _area_matrix(h, HASH_SIDE) @ g @ _area_matrix(w, HASH_SIDE).T
    return g


def _dct_rows(n: int, k: int) -> np.ndarray:
    i = np.arange(n)
    return np.cos(np.pi * (2 * i[None, :] + 1) * np.arange(k)[:, None] / (2 * n)).astype(
        np.float32)


def phash(images: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """64-bit perceptual hashes (uint64, one per image) of uint8 ``(N, H, W, 3)`` images.

    The 32x32 grey image's 2-D DCT-II, its 8x8 lowest frequencies (DC included), each bit set
    where the coefficient is above the median of the 64 (the usual pHash; bit 63 is the DC
    term, row-major). Vectorised: two matrix products per chunk of images.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images of shape {images.shape}: expected (N, H, W, 3)")
    d8 = _dct_rows(HASH_SIDE, 8)
    weights = (np.uint64(1) << np.arange(63, -1, -1, dtype=np.uint64))
    out = np.empty(len(images), np.uint64)
    for s in range(0, len(images), chunk):
        g = _grey32(images[s:s + chunk])
        c = (d8 @ g @ d8.T).reshape(len(g), 64)
        bits = c > np.median(c, axis=1, keepdims=True)
        out[s:s + len(g)] = (bits.astype(np.uint64) * weights).sum(1, dtype=np.uint64)
    return out


def popcount(x: np.ndarray) -> np.ndarray:
    return np.bitwise_count(x).astype(np.int64)


def _bands(bands: int) -> list[tuple[int, int]]:
    """(shift, width) of ``bands`` disjoint runs of bits covering all 64."""
    widths = [64 // bands + (i < 64 % bands) for i in range(bands)]
    out, shift = [], 0
    for w in widths:
        out.append((shift, w))
        shift += w
    return out


def near_duplicate_pairs(hashes: np.ndarray, threshold: int = DEFAULT_NEAR_THRESHOLD, *,
                         groups: np.ndarray | None = None, cross_only: bool = False
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """All pairs ``i < j`` with Hamming distance ``<= threshold`` between 64-bit hashes.

    Pigeonhole / multi-index hashing: the hashes are cut into ``threshold + 1`` bands; a pair
    within the distance agrees exactly on one band at least, so only pairs sharing a band
    value (a bucket, found by sorting) are verified. With ``groups`` and ``cross_only`` only
    pairs whose group ids differ are kept.

    Returns ``(i, j, distance, stats)``, sorted by ``(i, j)``; ``stats`` counts the candidates
    verified.
    """
    h = np.ascontiguousarray(hashes, dtype=np.uint64)
    n = len(h)
    if not 0 <= threshold < 64:
        raise ValueError(f"threshold={threshold}: expected a Hamming distance in 0..63")
    if cross_only and groups is None:
        raise ValueError("cross_only needs groups")
    g = None if groups is None else np.asarray(groups)
    found_i, found_j, found_d = [], [], []
    candidates = 0
    pos = np.arange(n)
    for shift, width in _bands(threshold + 1):
        v = (h >> np.uint64(shift)) & np.uint64((1 << width) - 1)
        order = np.argsort(v, kind="stable")
        sv = v[order]
        starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
        run_end = np.repeat(np.r_[starts[1:], n], np.diff(np.r_[starts, n]))
        active = pos[run_end - pos > 1]
        offset = 1
        while active.size:  # the pairs (p, p + offset) of sorted positions in one bucket
            a, b = order[active], order[active + offset]
            candidates += a.size
            keep = np.ones(a.size, bool)
            if cross_only:
                keep &= g[a] != g[b]
            d = popcount(h[a] ^ h[b])
            keep &= d <= threshold
            if keep.any():
                lo, hi = np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])
                found_i.append(lo)
                found_j.append(hi)
                found_d.append(d[keep])
            offset += 1
            active = active[run_end[active] - active > offset]
    if found_i:
        i, j, d = (np.concatenate(x) for x in (found_i, found_j, found_d))
        key, first = np.unique(i.astype(np.int64) * n + j, return_index=True)
        i, j, d = i[first], j[first], d[first]
    else:
        i = j = d = np.zeros(0, np.int64)
    return i, j, d, {"candidates_verified": int(candidates), "bands": threshold + 1}


def pair_correlation(images: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Zero-mean normalised correlation of the 32x32 grey images of rows ``i`` and ``j``
    (the second stage of the near-duplicate test; computed for the given pairs only)."""
    rows = np.unique(np.concatenate([i, j]))
    if rows.size == 0:
        return np.zeros(0, np.float32)
    g = _grey32(np.asarray(images[rows])).reshape(len(rows), -1)
    g -= g.mean(1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True) + 1e-6
    where = {int(r): k for k, r in enumerate(rows)}
    a = g[[where[int(x)] for x in i]]
    b = g[[where[int(x)] for x in j]]
    return (a * b).sum(1)


def cross_split_near_duplicates(dataset, threshold: int = DEFAULT_NEAR_THRESHOLD, *,
                                min_corr: float = DEFAULT_MIN_CORR,
                                splits: Sequence[str] = SPLIT_ORDER) -> list[NearPair]:
    """Near-duplicate pairs (pHash within ``threshold`` and grey-image correlation at least
    ``min_corr``) between different splits of a :class:`bench.data.Dataset`, computed on
    its decoded arrays.

    Each pair is ``NearPair(split_a, index_a, split_b, index_b, distance)`` with ``split_a``
    before ``split_b`` in ``splits``' order and indices into ``dataset.splits[...]``. Exact
    copies are included (distance 0). CIFAR-10's 60,000 32x32 images: see
    ``results/examples/inspect-cifar10.md`` for the time.
    """
    names = [s for s in splits if s in dataset.splits and len(dataset.splits[s])]
    if len(names) < 2:
        return []
    hashes = np.concatenate([phash(dataset.splits[s].images) for s in names])
    gid = np.concatenate([np.full(len(dataset.splits[s]), k) for k, s in enumerate(names)])
    local = np.concatenate([np.arange(len(dataset.splits[s])) for s in names])
    i, j, d, _ = near_duplicate_pairs(hashes, threshold, groups=gid, cross_only=True)
    if min_corr > -1 and len(i):
        images = _Concat([dataset.splits[s].images for s in names])
        keep = pair_correlation(images, i, j) >= min_corr
        i, j, d = i[keep], j[keep], d[keep]
    pairs = [NearPair(names[gid[a]], int(local[a]), names[gid[b]], int(local[b]), int(dd))
             for a, b, dd in zip(i, j, d)]
    return sorted(pairs, key=lambda p: (names.index(p.split_a), names.index(p.split_b),
                                        p.index_a, p.index_b))


class _Concat:
    """Row access to several arrays as if concatenated (no copy of the images)."""

    def __init__(self, arrays):
        self.arrays = arrays
        self.starts = np.cumsum([0] + [len(a) for a in arrays])

    def __getitem__(self, rows):
        rows = np.asarray(rows)
        k = np.searchsorted(self.starts, rows, side="right") - 1
        return np.stack([self.arrays[a][r - self.starts[a]] for a, r in zip(k, rows)])


def cross_split_warning(dataset, threshold: int = DEFAULT_NEAR_THRESHOLD,
                        pairs: list[NearPair] | None = None) -> str | None:
    """One line for training logs when the test (or val) split shares near duplicates with
    train, else None."""
    pairs = cross_split_near_duplicates(dataset, threshold) if pairs is None else pairs
    leaks = Counter(f"{p.split_b}/{p.split_a}" for p in pairs if p.split_a == "train")
    if not leaks:
        return None
    what = ", ".join(f"{n} {k.split('/')[0]}-train pair(s)" for k, n in sorted(leaks.items()))
    return (f"{dataset.name}: {what} of near-duplicate images (pHash distance <= "
            f"{threshold}); held-out accuracy may be inflated. See `bench inspect --dataset "
            f"{dataset.source}`")
