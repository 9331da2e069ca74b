"""``bench inspect``: look at a data set before trusting a leaderboard built on it.

``inspect_dataset(spec, out_dir)`` reads the same source and decoded cache as training
(:func:`bench.data.load_dataset`) and writes ``inspect.json``, ``inspect.md``, a contact sheet
``contact.png`` of the flagged images (each captioned with its reason) and an exclusion list
(``exclusions.txt`` and ``exclusions.json``). ``inspect_html_section(result)`` returns the
same findings as an HTML fragment for ``report.html``. It reports:

* class counts per split and their balance;
* histograms of the *original* image sizes (shorter side) and aspect ratios, read from the
  file headers (EXIF orientation applied, as the loader does), not from the decoded arrays;
* unreadable files (the loader's skip list, with its reasons) and files ignored because their
  extension is not an image's;
* exact duplicates: files with the same SHA-256 of their bytes;
* near duplicates: a 64-bit perceptual hash (pHash: the 8x8 lowest frequencies of the DCT of
  the 32x32 grey image, each bit "above the median of the 64") within a Hamming distance
  (``near_threshold``), confirmed by the zero-mean normalised correlation of the two grey
  images (``near_min_corr``), within a split and across the training splits;
* colour-statistics outliers by IQR, as report 001 did (per-image mean and standard deviation
  of R, G and B; outside ``[Q1 - k IQR, Q3 + k IQR]`` on any of the six), and low-resolution
  images (shorter original side below ``min_side``, by default below the IQR lower fence of
  log2(shorter side) at k = 3, so a set whose images all have one size flags none).

Splits are the ones training draws with the same ``seed``, ``val_fraction`` and
``test_fraction``; each file is named by its source-relative path (the zip member name, or
the path below the folder), which is also how the exclusion list names it.

Hashing runs on the decoded arrays (``image_size``, default 32, resized to 32x32 by area
averaging when different) in a few vectorised NumPy operations. The near-duplicate search
never compares all pairs: the pigeonhole principle says two 64-bit hashes within Hamming
distance ``k`` agree exactly on at least one of ``k + 1`` disjoint bands of bits, so each band
is bucketed (a sort), only pairs sharing a bucket are candidates, and each candidate is
verified with a popcount. Work grows with the number of candidates, not with N^2.

The decoded arrays are read twice from the cache: once with no val/test split (each given
folder whole, in file order, which maps a row to its file) and once with the training split;
the row-to-split mapping is rebuilt from the seed (the loader's stratified rule) and checked
image for image against the training split, so a change in the loader fails loudly here.

Exclusion list format (``exclusions.txt``): UTF-8, one source-relative path a line (``/``
separators, exactly the zip member name or the path below the folder), lines starting with
``#`` are comments, blank lines are ignored. ``exclusions.json`` holds the same paths with
their reasons: ``{"source", "source_fingerprint", "files": [{"path", "split", "reasons"}]}``.
:func:`read_exclusions` reads either. For a group of duplicates one file is kept (the first in
train, val, test order, then file order) and the others are listed, so a train/test pair
leaves the test copy out.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import os
import re
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np

from runtime import io as bio

from .data.sources import is_ignored, is_image_name
from .inspect_options import DEFAULT_MIN_CORR, DEFAULT_NEAR_THRESHOLD, KINDS

__all__ = [
    "DEFAULT_NEAR_THRESHOLD", "KINDS", "NearPair", "cmd_inspect",
    "cross_split_near_duplicates", "cross_split_warning", "inspect_dataset",
    "inspect_html_section", "inspect_markdown", "near_duplicate_pairs", "pair_correlation",
    "phash",
    "read_exclusions", "write_contact_sheet",
]

HASH_SIDE = 32                 # pHash input: 32x32 grey
SPLIT_ORDER = ("train", "val", "test")
_COLOUR_STATS = ("mean R", "mean G", "mean B", "std R", "std G", "std B")
_MAX_PAIRS_LISTED = 5000       # pairs written to inspect.json (all are counted)


class NearPair(NamedTuple):
    """Two images within the Hamming distance: ``split_a`` comes first in train/val/test."""

    split_a: str
    index_a: int
    split_b: str
    index_b: int
    distance: int


# --------------------------------------------------------------------------------------------
# Hashing and the near-duplicate search (decoded arrays only; no files).


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


def _popcount(x: np.ndarray) -> np.ndarray:
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
            d = _popcount(h[a] ^ h[b])
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


# --------------------------------------------------------------------------------------------
# Source files: listing, row mapping, header pass.


class _Files:
    """Reads a folder's or a zip's files by source-relative path (one zip handle a thread)."""

    def __init__(self, path: Path):
        self.path = path
        self.is_zip = path.is_file()
        self._local = threading.local()

    def list(self) -> tuple[list[str], list[str]]:
        """-> (image paths sorted, non-image files that are not ignored)."""
        images, others = [], []
        if self.is_zip:
            with zipfile.ZipFile(self.path) as zf:
                names = [i.filename for i in zf.infolist() if not i.is_dir()]
        else:
            names = []
            for dirpath, dirnames, filenames in os.walk(self.path, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not is_ignored(d))
                rel = os.path.relpath(dirpath, self.path)
                names += [f if rel == "." else f"{rel}/{f}".replace(os.sep, "/")
                          for f in filenames]
        for name in names:
            if is_ignored(name):
                continue
            if is_image_name(name):
                images.append(name)
            elif name.rsplit("/", 1)[-1] != "classes.txt":
                others.append(name)
        return sorted(images), sorted(others)

    def read(self, rel: str) -> bytes:
        if not self.is_zip:
            return (self.path / rel).read_bytes()
        zf = getattr(self._local, "zip", None)
        if zf is None:
            zf = self._local.zip = zipfile.ZipFile(self.path)
        return zf.read(rel)


def _header(data: bytes) -> tuple[int, int, str | None]:
    """(width, height) after EXIF orientation, from the header alone; or a reason."""
    from PIL import Image

    if not data:
        return 0, 0, "empty file (0 bytes)"
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if im.format in ("JPEG", "TIFF", "WEBP", "PNG") and im.getexif().get(0x0112) in (
                5, 6, 7, 8):
            w, h = h, w
        return w, h, None
    except Exception as e:  # reported per file
        return 0, 0, f"{type(e).__name__}: {e}"


def _file_pass(files: _Files, paths: list[str], workers: int):
    """SHA-256, byte size and original (w, h) of every file, in threads."""
    n = len(paths)
    digests = [b""] * n
    nbytes = np.zeros(n, np.int64)
    wh = np.zeros((n, 2), np.int64)
    problems: dict[int, str] = {}

    def work(start):
        for k in range(start, min(start + 512, n)):
            try:
                data = files.read(paths[k])
            except Exception as e:
                problems[k] = f"cannot read: {type(e).__name__}: {e}"
                continue
            digests[k] = hashlib.sha256(data).digest()
            nbytes[k] = len(data)
            w, h, why = _header(data)
            wh[k] = w, h
            if why:
                problems[k] = why

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="inspect") as pool:
        list(pool.map(work, range(0, n, 512)))
    return digests, nbytes, wh, problems


def _iqr_fences(x: np.ndarray, k: float) -> tuple[float, float, float, float]:
    q1, q3 = np.percentile(x, [25, 75])
    return float(q1), float(q3), float(q1 - k * (q3 - q1)), float(q3 + k * (q3 - q1))


def _colour_stats(images: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """(N, 6): per-image mean and standard deviation of R, G, B (0..255)."""
    out = np.empty((len(images), 6), np.float32)
    for s in range(0, len(images), chunk):
        x = images[s:s + chunk].reshape(len(images[s:s + chunk]), -1, 3).astype(np.float32)
        out[s:s + len(x), :3] = x.mean(1)
        out[s:s + len(x), 3:] = x.std(1)
    return out


def _histogram(values: np.ndarray, edges: Sequence[float]) -> dict:
    counts, e = np.histogram(values, bins=np.asarray(edges, float))
    return {"edges": [float(v) for v in e], "counts": [int(c) for c in counts]}


def _describe(x: np.ndarray) -> dict:
    if x.size == 0:
        return {}
    p = np.percentile(x, [0, 25, 50, 75, 100])
    return dict(zip(("min", "q1", "median", "q3", "max"), (round(float(v), 3) for v in p)))


class _Union:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _check_options(image_size, near_threshold, iqr_k, min_side, sheet_max, exclude,
                   val_fraction, test_fraction):
    if not isinstance(image_size, (int, np.integer)) or image_size < 8:
        raise ValueError(f"--image-size {image_size}: expected an integer of at least 8")
    if not isinstance(near_threshold, (int, np.integer)) or not 0 <= near_threshold <= 32:
        raise ValueError(f"--near-threshold {near_threshold}: expected a Hamming distance "
                         "in 0..32 (of 64 bits)")
    if not (isinstance(iqr_k, (int, float)) and math.isfinite(iqr_k) and iqr_k > 0):
        raise ValueError(f"--iqr-k {iqr_k}: expected a positive number (1.5 is Tukey's)")
    if min_side is not None and (not isinstance(min_side, (int, np.integer)) or min_side < 1):
        raise ValueError(f"--min-side {min_side}: expected a positive number of pixels")
    if not isinstance(sheet_max, (int, np.integer)) or sheet_max < 0:
        raise ValueError(f"--sheet-max {sheet_max}: expected a non-negative integer")
    bad = sorted(set(exclude) - set(KINDS))
    if bad:
        raise ValueError(f"--exclude {','.join(bad)}: unknown kind; expected some of "
                         f"{','.join(KINDS)}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
            and val_fraction + test_fraction < 1):
        raise ValueError(f"--val-fraction {val_fraction} / --test-fraction {test_fraction}: "
                         "expected fractions in [0, 1) whose sum is below 1")


def inspect_dataset(
    spec: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    *,
    image_size: int = 32,
    cache_dir: str | os.PathLike | bool | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    near_threshold: int = DEFAULT_NEAR_THRESHOLD,
    near_min_corr: float = DEFAULT_MIN_CORR,
    iqr_k: float = 1.5,
    min_side: int | None = None,
    low_res_k: float = 3.0,
    exclude: Sequence[str] = KINDS,
    sheet_max: int = 60,
    sheet_kinds: Sequence[str] | None = None,
    sheet_cross_split_only: bool = False,
    progress: bool = True,
    workers: int | None = None,
    data_dir: str | os.PathLike | None = None,
    labels=None, id_column: str | None = None, label_column: str | None = None,
) -> dict:
    """Inspect a data set; with ``out_dir``, write ``inspect.json``, ``inspect.md``,
    ``contact.png``, ``exclusions.txt`` and ``exclusions.json`` there. Returns the result
    (the content of ``inspect.json``).

    ``spec``, ``image_size``, ``cache_dir``, ``seed``, ``val_fraction``, ``test_fraction`` and
    ``data_dir`` are :func:`bench.data.load_dataset`'s (the same cache entry as a training run
    at that size). ``near_threshold``: largest pHash Hamming distance of a near duplicate.
    ``iqr_k``: the IQR fence factor for colour statistics (and the automatic low-resolution
    ``min_side``: flag originals whose shorter side is below it (default: the IQR lower
    fence of log2 of the shorter side with ``low_res_k``, Tukey's "far out" 3 by default:
    with 1.5, 122 of the 2,002 Kaggle photos, ordinary ones down to 177 px, were flagged). ``exclude``: which kinds of finding go into the
    exclusion list (see :data:`KINDS`). ``sheet_max``: images (or pairs) on the contact sheet
    (0: none); ``sheet_kinds`` / ``sheet_cross_split_only`` select what it shows.
    """
    from .data import load_dataset

    exclude = tuple(exclude)
    if not (isinstance(near_min_corr, (int, float)) and -1 <= near_min_corr <= 1):
        raise ValueError(f"--near-min-corr {near_min_corr}: expected a correlation in -1..1")
    if not (isinstance(low_res_k, (int, float)) and math.isfinite(low_res_k) and low_res_k > 0):
        raise ValueError(f"--low-res-k {low_res_k}: expected a positive number")
    _check_options(image_size, near_threshold, iqr_k, min_side, sheet_max, exclude,
                   val_fraction, test_fraction)
    sheet_kinds = tuple(sheet_kinds) if sheet_kinds else KINDS
    bad = sorted(set(sheet_kinds) - set(KINDS))
    if bad:
        raise ValueError(f"--sheet-kinds {','.join(bad)}: unknown kind; expected some of "
                         f"{','.join(KINDS)}")
    workers = workers or max(1, len(os.sched_getaffinity(0)))
    timing = {}
    t_all = time.perf_counter()
    spec_str = os.fspath(spec)

    # 1. The decoded arrays in training's split; each row knows its source file.
    t = time.perf_counter()
    ds = load_dataset(spec_str, image_size, val_fraction=val_fraction,
                      test_fraction=test_fraction, cache_dir=cache_dir, seed=seed,
                      progress=progress, workers=workers, data_dir=data_dir, labels=labels,
                      id_column=id_column, label_column=label_column)
    timing["load_s"] = time.perf_counter() - t
    is_files = ds.files_readable  # image files below ds.source (not digits, tfds, parquet)
    t = time.perf_counter()
    skipped_rel = []
    for s in ds.skipped:
        p = s["path"]
        rel = p[len(ds.source) + 1:].replace(os.sep, "/") if p.startswith(ds.source) else p
        skipped_rel.append({"path": rel, "reason": s["reason"]})
    ignored: list[str] = []
    files = None
    if is_files:
        files = _Files(Path(ds.source))
        _, ignored = files.list()
    parts = [(s, ds.splits[s]) for s in SPLIT_ORDER]
    paths = [str(f) if f is not None else f"{s}[{i}]" for s, sp in parts
             for i, f in enumerate(sp.files if sp.files is not None else [None] * len(sp))]
    n = len(paths)
    labels = np.concatenate([sp.labels for _, sp in parts]).astype(np.int64)
    split_of = np.array([s for s, sp in parts for _ in range(len(sp))], object)
    images = np.concatenate([np.asarray(sp.images) for _, sp in parts])
    timing["map_s"] = time.perf_counter() - t

    # 4. Original files: bytes, hash, size.
    t = time.perf_counter()
    if is_files:
        digests, nbytes, wh, problems = _file_pass(files, paths, workers)
    else:
        digests, nbytes, wh, problems = None, None, None, {}
    timing["files_s"] = time.perf_counter() - t

    def row(k: int) -> dict:
        return {"path": paths[k], "split": str(split_of[k]), "label": ds.classes[labels[k]]}

    findings: dict[int, list[dict]] = {}

    def flag(k: int, kind: str, reason: str, **extra):
        findings.setdefault(k, []).append({"kind": kind, "reason": reason, **extra})

    # 5. Exact duplicates (same bytes).
    t = time.perf_counter()
    exact_groups = []
    union = _Union(n)
    if digests is not None:
        by_digest: dict[bytes, list[int]] = {}
        for k, dg in enumerate(digests):
            if dg:
                by_digest.setdefault(dg, []).append(k)
        for ks in by_digest.values():
            if len(ks) > 1:
                exact_groups.append(ks)
                for k in ks[1:]:
                    union.union(ks[0], k)

    # 6. Near duplicates (pHash) over all rows, within and across splits.
    hashes = phash(images)
    timing["hash_s"] = time.perf_counter() - t
    t = time.perf_counter()
    pi, pj, pd, search = near_duplicate_pairs(hashes, near_threshold)
    corr = pair_correlation(images, pi, pj)
    search["hash_pairs"] = int(len(pi))
    search["rejected_by_correlation"] = int((corr < near_min_corr).sum())
    keep = corr >= near_min_corr
    pi, pj, pd, corr = pi[keep], pj[keep], pd[keep], corr[keep]
    timing["near_search_s"] = time.perf_counter() - t
    for a, b in zip(pi, pj):
        union.union(int(a), int(b))
    same_bytes = (np.array([digests[a] == digests[b] for a, b in zip(pi, pj)], bool)
                  if digests is not None else np.zeros(len(pi), bool))
    pair_rows = []
    by_splits = Counter()
    for a, b, d, ex, cc in zip(pi, pj, pd, same_bytes, corr):
        a, b = int(a), int(b)
        sa, sb = sorted((str(split_of[a]), str(split_of[b])), key=SPLIT_ORDER.index)
        by_splits[f"{sa}-{sb}"] += 1
        pair_rows.append({"a": row(a), "b": row(b), "distance": int(d), "exact": bool(ex),
                          "correlation": round(float(cc), 4), "cross_split": split_of[a] != split_of[b],
                          "label_conflict": bool(labels[a] != labels[b]), "_rows": (a, b)})
    pair_rows.sort(key=lambda p: (not p["cross_split"], p["distance"], p["_rows"]))

    # Components of duplicates (exact or near): keep the first in split then file order.
    members: dict[int, list[int]] = {}
    touched = set(pi.tolist()) | set(pj.tolist()) | {k for ks in exact_groups for k in ks}
    for k in touched:
        members.setdefault(union.find(k), []).append(k)
    dup_groups = []
    for ks in members.values():
        ks.sort(key=lambda k: (SPLIT_ORDER.index(split_of[k]), k))
        keep = ks[0]
        exact_of_keep = {k for grp in exact_groups if keep in grp for k in grp}
        for k in ks[1:]:
            kind = "exact-duplicate" if k in exact_of_keep or (
                digests is not None and digests[k] == digests[keep]) else "near-duplicate"
            d = int(_popcount(hashes[k:k + 1] ^ hashes[keep:keep + 1])[0])
            where = (f"{split_of[k]} copy of {split_of[keep]} {paths[keep]}"
                     if split_of[k] != split_of[keep] else f"copy of {paths[keep]}")
            flag(k, kind, f"{kind.replace('-', ' ')} (pHash d={d}): {where}",
                 of=paths[keep], distance=d, cross_split=split_of[k] != split_of[keep])
        dup_groups.append({"keep": paths[keep], "files": [row(k) for k in ks],
                           "splits": sorted({str(split_of[k]) for k in ks},
                                            key=SPLIT_ORDER.index),
                           "label_conflict": len({int(labels[k]) for k in ks}) > 1})
    dup_groups.sort(key=lambda g: (len(g["splits"]) == 1, -len(g["files"]), g["keep"]))

    # 7. Colour statistics by IQR, and low resolution.
    t = time.perf_counter()
    stats = _colour_stats(images)
    fences = {}
    for c, name in enumerate(_COLOUR_STATS):
        q1, q3, lo, hi = _iqr_fences(stats[:, c], iqr_k)
        fences[name] = {"q1": round(q1, 2), "q3": round(q3, 2), "low": round(lo, 2),
                        "high": round(hi, 2)}
        for k in np.flatnonzero((stats[:, c] < lo) | (stats[:, c] > hi)):
            v = float(stats[k, c])
            side = f"< {lo:.1f}" if v < lo else f"> {hi:.1f}"
            prev = [f for f in findings.get(int(k), []) if f["kind"] == "colour-outlier"]
            if prev:
                prev[0]["reason"] += f", {name} {v:.1f} {side}"
            else:
                flag(int(k), "colour-outlier", f"colour outlier: {name} {v:.1f} {side}")
    low_res = {}
    if wh is not None:
        short = wh.min(1)
        ok = short > 0
        if min_side is None and ok.any():
            _, _, lo, _ = _iqr_fences(np.log2(short[ok]), low_res_k)
            threshold_side = float(2 ** lo)
            rule = (f"shorter side < {threshold_side:.1f} px (IQR lower fence of log2 shorter "
                    f"side, k={low_res_k})")
        else:
            threshold_side = float(min_side or 0)
            rule = f"shorter side < {threshold_side:.0f} px (--min-side)"
        for k in np.flatnonzero(ok & (short < threshold_side)):
            flag(int(k), "low-resolution",
                 f"low resolution: {wh[k, 0]}x{wh[k, 1]} (shorter side < {threshold_side:.0f})")
        low_res = {"rule": rule, "min_side": round(threshold_side, 2),
                   "count": int((ok & (short < threshold_side)).sum())}
        for k, why in problems.items():  # readable by the decoder but not by the header pass
            flag(k, "unreadable", f"header unreadable: {why}")
    timing["stats_s"] = time.perf_counter() - t

    # 8. Counts, sizes, skipped.
    counts = {s: {c: int(v) for c, v in zip(ds.classes, np.bincount(
        ds.splits[s].labels, minlength=ds.num_classes))} for s in SPLIT_ORDER}
    per_class = np.bincount(labels, minlength=ds.num_classes)
    nz = per_class[per_class > 0]
    p = nz / nz.sum()
    balance = {"min_class": ds.classes[int(np.argmin(per_class))], "min": int(per_class.min()),
               "max_class": ds.classes[int(np.argmax(per_class))], "max": int(per_class.max()),
               "max_over_min": (round(float(per_class.max() / per_class.min()), 3)
                                if per_class.min() else None),
               "normalised_entropy": (round(float(-(p * np.log(p)).sum() / np.log(len(p))), 4)
                                      if len(p) > 1 else 0.0)}
    sizes = {}
    if wh is not None:
        good = wh.min(1) > 0
        w_, h_ = wh[good, 0], wh[good, 1]
        short, aspect = np.minimum(w_, h_), w_ / np.maximum(h_, 1)
        top = Counter(zip(w_.tolist(), h_.tolist())).most_common(5)
        sizes = {
            "width": _describe(w_), "height": _describe(h_), "shorter_side": _describe(short),
            "aspect_w_over_h": _describe(aspect),
            "most_common": [{"w": a, "h": b, "count": c} for (a, b), c in top],
            "distinct_sizes": len(set(zip(w_.tolist(), h_.tolist()))),
            "shorter_side_hist": _histogram(short, [0, 16, 32, 48, 64, 96, 128, 192, 256, 384,
                                                   512, 768, 1024, max(1025, int(short.max()) + 1)]),
            "aspect_hist": _histogram(aspect, [0, 0.5, 0.67, 0.8, 0.9, 0.99, 1.01, 1.11, 1.25,
                                               1.5, 2.0, max(2.01, float(aspect.max()) + 0.01)]),
            "bytes": _describe(nbytes[good].astype(float)),
        }
    flagged = []
    for k in sorted(findings, key=lambda k: (SPLIT_ORDER.index(split_of[k]), k)):
        flagged.append({**row(k), "kinds": sorted({f["kind"] for f in findings[k]},
                                                  key=KINDS.index),
                        "reasons": [f["reason"] for f in findings[k]]})
    exclusions = [f for f in flagged if set(f["kinds"]) & set(exclude)]
    exclusions += [{"path": s["path"], "split": None, "label": None, "kinds": ["unreadable"],
                    "reasons": [s["reason"]]} for s in skipped_rel if "unreadable" in exclude]
    cross = [p for p in pair_rows if p["cross_split"]]
    result = {
        "dataset": {
            "spec": spec_str, "name": ds.name, "source": ds.source, "classes": ds.classes,
            "fingerprint": ds.fingerprint, "source_fingerprint": ds.source_fingerprint,
            "layout": ds.split_info.get("layout", ""),
            "split_method": ds.split_info.get("method", ""), "seed": seed,
            "val_fraction": val_fraction, "test_fraction": test_fraction,
            "image_size": list(ds.image_size), "cache": ds.cache, "files_available": is_files,
        },
        "settings": {
            "hash": "pHash 64-bit: DCT-II of the 32x32 grey image, 8x8 lowest frequencies, "
                    "bit = coefficient > median of the 64",
            "near_threshold": near_threshold, "near_min_corr": near_min_corr,
            "iqr_k": iqr_k, "min_side": min_side,
            "low_res_k": low_res_k,
            "exclude": list(exclude),
        },
        "counts": {"images": n, "per_split": counts,
                   "per_class": {c: int(v) for c, v in zip(ds.classes, per_class)},
                   "balance": balance, "skipped": len(skipped_rel), "ignored": len(ignored),
                   "flagged": len(flagged), "excluded": len(exclusions)},
        "sizes": sizes,
        "skipped": skipped_rel,
        "ignored": [{"path": p, "reason": "not an image file extension"} for p in ignored],
        "exact_duplicates": {
            "groups": len(exact_groups), "extra_files": sum(len(g) - 1 for g in exact_groups),
            "cross_split_groups": sum(len({split_of[k] for k in g}) > 1 for g in exact_groups),
            "label_conflicts": sum(len({int(labels[k]) for k in g}) > 1 for g in exact_groups),
        },
        "near_duplicates": {
            "threshold": near_threshold, "pairs": len(pair_rows),
            "pairs_exact_bytes": int(same_bytes.sum()), "cross_split_pairs": len(cross),
            "by_splits": dict(sorted(by_splits.items())),
            "label_conflict_pairs": sum(p["label_conflict"] for p in pair_rows),
            "distance_hist": {str(d): int(c) for d, c in zip(*np.unique(pd, return_counts=True))},
            "search": {**search, "images": n},
            "listed": [{k: v for k, v in p.items() if k != "_rows"}
                       for p in pair_rows[:_MAX_PAIRS_LISTED]],
        },
        "duplicate_groups": dup_groups,
        "colour": {"stats": list(_COLOUR_STATS), "fences": fences,
                   "outliers": sum("colour-outlier" in f["kinds"] for f in flagged)},
        "low_resolution": low_res,
        "flagged": flagged,
        "exclusions": [{"path": f["path"], "split": f["split"], "reasons": f["reasons"]}
                       for f in exclusions],
        "timing": {},
        "outputs": {},
    }
    if out_dir is not None:
        out = Path(out_dir)
        t = time.perf_counter()
        if sheet_max:
            loader = _file_thumb(files) if files is not None else _array_thumb(images, paths)
            items = _sheet_items(result, pair_rows, findings, paths, sheet_kinds,
                                 sheet_cross_split_only)
            if items:
                _draw_sheet(items[:sheet_max], loader, out / "contact.png",
                            title=f"{ds.name}: {min(len(items), sheet_max)} of {len(items)} "
                                  "flagged tiles")
                result["outputs"]["contact_sheet"] = "contact.png"
        timing["sheet_s"] = time.perf_counter() - t
        _write_exclusions(out, result)
        result["outputs"].update(exclusions_txt="exclusions.txt",
                                 exclusions_json="exclusions.json",
                                 json="inspect.json", markdown="inspect.md")
    timing["total_s"] = time.perf_counter() - t_all
    result["timing"] = {k: round(v, 3) for k, v in timing.items()}
    if out_dir is not None:
        bio.write_json(out / "inspect.json", result)
        bio.write_text(out / "inspect.md", inspect_markdown(result))
    return result


# --------------------------------------------------------------------------------------------
# Exclusion lists.


def _write_exclusions(out: Path, result: dict) -> None:
    ds = result["dataset"]
    lines = ["# bench inspect exclusion list: one source-relative path a line",
             f"# source: {ds['source']}",
             f"# source_fingerprint: {ds['source_fingerprint']}",
             f"# kinds: {','.join(result['settings']['exclude'])}; "
             f"near_threshold {result['settings']['near_threshold']}"]
    lines += [e["path"] for e in result["exclusions"]]
    bio.write_text(out / "exclusions.txt", "\n".join(lines) + "\n")
    bio.write_json(out / "exclusions.json", {
        "source": ds["source"], "source_fingerprint": ds["source_fingerprint"],
        "settings": result["settings"], "files": result["exclusions"]})


def read_exclusions(path: str | os.PathLike) -> list[str]:
    """Source-relative paths of an ``exclusions.txt`` (one a line, ``#`` comments) or an
    ``exclusions.json`` (``{"files": [{"path": ...}]}``), in file order, without repeats."""
    path = Path(path)
    try:
        text = path.read_text("utf-8")
    except OSError as e:
        raise ValueError(f"exclusion list {str(path)!r}: cannot read it ({e.strerror})") \
            from None
    if path.suffix == ".json":
        try:
            files = json.loads(text)["files"]
            paths = [f["path"] if isinstance(f, dict) else f for f in files]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"exclusion list {str(path)!r}: expected JSON "
                             f"{{\"files\": [{{\"path\": ...}}]}} ({type(e).__name__}: {e})") \
                from None
        if not all(isinstance(p, str) and p for p in paths):
            raise ValueError(f"exclusion list {str(path)!r}: every file needs a non-empty "
                             "'path' string")
    else:
        paths = [ln.rstrip("\r") for ln in text.split("\n")]
        paths = [p for p in paths if p.strip() and not p.startswith("#")]
    return list(dict.fromkeys(paths))


# --------------------------------------------------------------------------------------------
# Contact sheet.


def _file_thumb(files: _Files) -> Callable[[str, int], "object"]:
    def load(path: str, side: int):
        from PIL import Image, ImageOps

        im = Image.open(io.BytesIO(files.read(path)))
        if im.format == "JPEG":
            im.draft("RGB", (side, side))
        im = ImageOps.exif_transpose(im).convert("RGB")
        im.thumbnail((side, side), Image.BILINEAR)
        if max(im.size) < side:  # small originals (CIFAR): enlarge, pixels kept visible
            f = side / max(im.size)
            im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))),
                           Image.NEAREST)
        return im
    return load


def _array_thumb(images: np.ndarray, paths: list[str]):
    index = {p: k for k, p in enumerate(paths)}

    def load(path: str, side: int):
        from PIL import Image

        return Image.fromarray(images[index[path]]).resize((side, side), Image.NEAREST)
    return load


def _sheet_items(result, pair_rows, findings, paths, kinds, cross_only) -> list[dict]:
    """Tiles: duplicate pairs (cross-split first) and single flagged images, interleaved by
    kind so every kind shows up on a capped sheet."""
    per_kind: dict[str, list[dict]] = {k: [] for k in KINDS}
    if "unreadable" in kinds and not cross_only:
        for s in result["skipped"]:
            per_kind["unreadable"].append({"paths": [], "caption": [s["path"], s["reason"]],
                                           "kind": "unreadable"})
    if cross_only:  # pairs that reach into the test split first: those inflate accuracy
        pair_rows = sorted(pair_rows, key=lambda p: "test" not in (p["a"]["split"],
                                                                   p["b"]["split"]))
    for p in pair_rows:
        kind = "exact-duplicate" if p["exact"] else "near-duplicate"
        if kind in kinds and (p["cross_split"] or not cross_only):
            a, b = p["a"], p["b"]
            where = f"{a['split']}/{b['split']}" if p["cross_split"] else a["split"]
            per_kind[kind].append({
                "paths": [a["path"], b["path"]], "kind": kind,
                "caption": [f"{kind} d={p['distance']} {where}"
                            + (" LABEL CONFLICT" if p["label_conflict"] else ""),
                            _short(a["path"]), _short(b["path"])]})
    if not cross_only:
        for k in sorted(findings):
            for f in findings[k]:
                if f["kind"] in ("low-resolution", "colour-outlier", "unreadable") \
                        and f["kind"] in kinds:
                    per_kind[f["kind"]].append({"paths": [paths[k]], "kind": f["kind"],
                                                "caption": [_short(paths[k]), f["reason"]]})
    items, queues = [], [q for q in per_kind.values() if q]
    while queues:
        for q in list(queues):
            items.append(q.pop(0))
            if not q:
                queues.remove(q)
    return items


def _short(path: str, n: int = 34) -> str:
    return path if len(path) <= n else "..." + path[-(n - 3):]


def _wrap(text: str, n: int) -> list[str]:
    out = []
    while len(text) > n:
        cut = text.rfind(" ", 0, n)
        cut = cut if cut > n // 2 else n
        out.append(text[:cut])
        text = text[cut:].lstrip()
    return out + [text]


def _draw_sheet(items: list[dict], load, path: Path, *, title: str, side: int = 112,
                cols: int | None = None) -> None:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # Pillow without FreeType sizes
        font = ImageFont.load_default()
    cell_w, text_h, pad = 2 * side + 6, 5 * 13, 6
    cols = cols or max(1, min(5, len(items)))
    rows = math.ceil(len(items) / cols)
    sheet = Image.new("RGB", (cols * (cell_w + pad) + pad,
                              rows * (side + text_h + pad) + pad + 20), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((pad, 4), title, fill="black", font=font)
    for n, item in enumerate(items):
        x0 = pad + (n % cols) * (cell_w + pad)
        y0 = 20 + pad + (n // cols) * (side + text_h + pad)
        if not item["paths"]:
            draw.rectangle([x0, y0, x0 + side, y0 + side], fill=(200, 200, 200))
            draw.text((x0 + 6, y0 + side // 2 - 6), "unreadable", fill="black", font=font)
        for m, p in enumerate(item["paths"]):
            try:
                im = load(p, side)
            except Exception as e:  # the caption says what went wrong
                im = Image.new("RGB", (side, side), (200, 200, 200))
                item["caption"].append(f"thumbnail: {type(e).__name__}")
            sheet.paste(im, (x0 + m * (side + 6), y0))
        lines = [ln for c in item["caption"] for ln in _wrap(c, 44)][:5]
        colour = (170, 0, 0) if "LABEL CONFLICT" in item["caption"][0] else (0, 0, 0)
        for k, ln in enumerate(lines):
            draw.text((x0, y0 + side + 2 + 13 * k), ln, fill=colour if k == 0 else "black",
                      font=font)
    with bio.atomic_path(path, suffix=".png") as tmp:
        sheet.save(tmp, format="PNG", optimize=True)


def write_contact_sheet(result: dict, path: str | os.PathLike, *, max_items: int = 60,
                        kinds: Sequence[str] = KINDS, cross_split_only: bool = False) -> Path:
    """A PNG of the flagged images of an inspect ``result`` (as returned or read back from
    ``inspect.json``), each captioned with its reason; duplicate pairs side by side. Reads
    the thumbnails from the source files (folder or zip) named in the result."""
    if not result["dataset"].get("files_available"):
        raise ValueError(f"{result['dataset']['spec']}: no source files to draw from; the "
                         "contact sheet of a digits/tfds data set is written by "
                         "inspect_dataset(out_dir=...)")
    files = _Files(Path(result["dataset"]["source"]))
    pairs = [{**p, "_rows": None} for p in result["near_duplicates"]["listed"]]
    findings = {}
    paths = []
    for k, f in enumerate(result["flagged"]):
        paths.append(f["path"])
        findings[k] = [{"kind": kind, "reason": r} for kind, r in zip(
            _kinds_of_reasons(f["reasons"]), f["reasons"])]
    items = _sheet_items(result, pairs, findings, paths, tuple(kinds), cross_split_only)
    path = Path(path)
    _draw_sheet(items[:max_items], _file_thumb(files), path,
                title=f"{result['dataset']['name']}: {min(len(items), max_items)} of "
                      f"{len(items)} flagged")
    return path


def _kinds_of_reasons(reasons: list[str]) -> list[str]:
    out = []
    for r in reasons:
        out.append(next((k for k in KINDS if r.startswith(k.replace("-", " "))),
                        "unreadable" if "unreadable" in r else "colour-outlier"))
    return out


# --------------------------------------------------------------------------------------------
# Markdown and HTML.


def _table_md(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
    return out


def _hist_rows(hist: dict, fmt: str) -> list[list]:
    e, c = hist["edges"], hist["counts"]
    return [[f"{fmt.format(e[i])} to {fmt.format(e[i + 1])}", c[i]] for i in range(len(c))
            if c[i]]


def inspect_markdown(result: dict, max_rows: int = 40) -> str:
    """``inspect.md``: the findings of :func:`inspect_dataset` for a reader."""
    ds, c, nd = result["dataset"], result["counts"], result["near_duplicates"]
    ex = result["exact_duplicates"]
    L = [f"# Inspection of {ds['name']}", "",
         f"Source `{ds['source']}` ({ds['layout']}; splits: {ds['split_method']}, seed "
         f"{ds['seed']}, val {ds['val_fraction']}, test {ds['test_fraction']}). "
         f"{c['images']} decoded images, {c['skipped']} unreadable, {c['ignored']} ignored "
         f"(not an image extension). {c['flagged']} flagged, {c['excluded']} in "
         "`exclusions.txt`.", "",
         "## Classes", ""]
    splits = [s for s in SPLIT_ORDER if sum(c["per_split"][s].values())]
    L += _table_md(["class"] + splits + ["all"],
                   [[k] + [c["per_split"][s][k] for s in splits] + [c["per_class"][k]]
                    for k in ds["classes"]])
    b = c["balance"]
    L += ["", f"Balance: largest {b['max_class']} ({b['max']}), smallest {b['min_class']} "
          f"({b['min']}), ratio {b['max_over_min']}; normalised entropy "
          f"{b['normalised_entropy']} (1 = balanced).", ""]
    s = result["sizes"]
    if s:
        L += ["## Original image sizes", "",
              f"{s['distinct_sizes']} distinct sizes; most common: "
              + ", ".join(f"{m['w']}x{m['h']} ({m['count']})" for m in s["most_common"])
              + ". Shorter side: " + ", ".join(f"{k} {v:g}" for k, v in s["shorter_side"].items())
              + "; aspect w/h: " + ", ".join(f"{k} {v:g}" for k, v in
                                             s["aspect_w_over_h"].items()) + ".", ""]
        L += _table_md(["shorter side (px)", "images"], _hist_rows(s["shorter_side_hist"],
                                                                    "{:g}"))
        L += [""] + _table_md(["aspect w/h", "images"], _hist_rows(s["aspect_hist"], "{:.2f}"))
        L += [""]
    L += ["## Unreadable and ignored files", ""]
    if result["skipped"] or result["ignored"]:
        L += _table_md(["file", "reason"], [[f"`{x['path']}`", x["reason"]] for x in
                                            (result["skipped"] + result["ignored"])[:max_rows]])
    else:
        L += ["None."]
    L += ["", "## Duplicates", "",
          f"Exact (same SHA-256 of the file): {ex['groups']} group(s), {ex['extra_files']} "
          f"extra file(s), {ex['cross_split_groups']} across splits, {ex['label_conflicts']} "
          "with conflicting labels.", "",
          f"Near (pHash Hamming distance <= {nd['threshold']} and grey correlation >= "
          f"{result['settings']['near_min_corr']}; {nd['search']['rejected_by_correlation']} "
          f"hash pair(s) rejected by the correlation): {nd['pairs']} pair(s) "
          f"({nd['pairs_exact_bytes']} of them byte-identical), {nd['cross_split_pairs']} "
          f"across splits; by splits: "
          + (", ".join(f"{k} {v}" for k, v in nd["by_splits"].items()) or "none")
          + f"; {nd['label_conflict_pairs']} with different labels. Distances: "
          + (", ".join(f"{k}: {v}" for k, v in nd["distance_hist"].items()) or "none")
          + f". Search: {nd['search']['bands']} bands, {nd['search']['candidates_verified']} "
          f"candidate pairs verified for {nd['search']['images']} images.", ""]
    if nd["listed"]:
        L += _table_md(["d", "splits", "a", "b", "labels"],
                       [[p["distance"], f"{p['a']['split']}/{p['b']['split']}",
                         f"`{p['a']['path']}`", f"`{p['b']['path']}`",
                         p["a"]["label"] if not p["label_conflict"]
                         else f"**{p['a']['label']} / {p['b']['label']}**"]
                        for p in nd["listed"][:max_rows]])
        if nd["pairs"] > max_rows:
            L += ["", f"({nd['pairs'] - max_rows} more in inspect.json.)"]
    col, lr = result["colour"], result["low_resolution"]
    L += ["", "## Colour statistics (IQR) and resolution", "",
          f"{col['outliers']} image(s) outside [Q1 - {result['settings']['iqr_k']} IQR, Q3 + "
          f"{result['settings']['iqr_k']} IQR] on a per-image colour statistic:", ""]
    L += _table_md(["statistic", "Q1", "Q3", "low fence", "high fence"],
                   [[k, v["q1"], v["q3"], v["low"], v["high"]] for k, v in col["fences"].items()])
    if lr:
        L += ["", f"Low resolution ({lr['rule']}): {lr['count']} image(s)."]
    L += ["", "## Flagged files", ""]
    if result["flagged"]:
        L += _table_md(["file", "split", "label", "reasons"],
                       [[f"`{f['path']}`", f["split"], f["label"], "; ".join(f["reasons"])]
                        for f in result["flagged"][:max_rows]])
        if len(result["flagged"]) > max_rows:
            L += ["", f"({len(result['flagged']) - max_rows} more in inspect.json.)"]
    else:
        L += ["None."]
    if result["outputs"].get("contact_sheet"):
        L += ["", f"![flagged images]({result['outputs']['contact_sheet']})"]
    t = result["timing"]
    L += ["", "Timing (s): " + ", ".join(f"{k[:-2]} {v}" for k, v in t.items()), ""]
    return "\n".join(L)


def inspect_html_section(result: dict, out_dir: str | os.PathLike | None = None) -> str:
    """An HTML fragment (``<section>``) for ``report.html``: the headline figures, class
    counts, cross-split duplicates and the contact sheet inlined as base64 PNG (read from
    ``out_dir``/contact.png when given and present). Self-contained: no external files."""
    e = html.escape
    ds, c, nd = result["dataset"], result["counts"], result["near_duplicates"]
    ex = result["exact_duplicates"]
    out = [f'<section class="inspect"><h2>Data inspection: {e(ds["name"])}</h2>',
           f'<p class="meta"><code>{e(ds["source"])}</code>, {e(ds["layout"])}; splits '
           f'{e(ds["split_method"])} (seed {ds["seed"]})</p>', "<ul>",
           f"<li>{c['images']} images, {len(ds['classes'])} classes; balance ratio "
           f"{c['balance']['max_over_min']} (largest/smallest)</li>",
           f"<li>{c['skipped']} unreadable, {c['ignored']} ignored</li>",
           f"<li>exact duplicates: {ex['groups']} groups ({ex['cross_split_groups']} across "
           "splits)</li>",
           f"<li>near duplicates (pHash d &le; {nd['threshold']}): {nd['pairs']} pairs, "
           f"<strong>{nd['cross_split_pairs']} across splits</strong> "
           f"({e(', '.join(f'{k} {v}' for k, v in nd['by_splits'].items()) or 'none')})</li>",
           f"<li>colour outliers (IQR): {result['colour']['outliers']}; low resolution: "
           f"{result['low_resolution'].get('count', 'n/a')}</li>",
           f"<li>{c['flagged']} flagged, {c['excluded']} in the exclusion list</li></ul>"]
    splits = [s for s in SPLIT_ORDER if sum(c["per_split"][s].values())]
    out.append("<table><thead><tr><th>class</th>" + "".join(f"<th>{s}</th>" for s in splits)
               + "</tr></thead><tbody>")
    for k in ds["classes"]:
        out.append(f"<tr><td>{e(k)}</td>" + "".join(
            f"<td>{c['per_split'][s][k]}</td>" for s in splits) + "</tr>")
    out.append("</tbody></table>")
    cross = [p for p in nd["listed"] if p["cross_split"]][:20]
    if cross:
        out.append("<table><thead><tr><th>d</th><th>splits</th><th>a</th><th>b</th></tr>"
                   "</thead><tbody>")
        out += [f"<tr><td>{p['distance']}</td><td>{e(p['a']['split'])}/{e(p['b']['split'])}"
                f"</td><td><code>{e(p['a']['path'])}</code></td><td><code>"
                f"{e(p['b']['path'])}</code></td></tr>" for p in cross]
        out.append("</tbody></table>")
    sheet = result["outputs"].get("contact_sheet")
    if sheet and out_dir is not None and (Path(out_dir) / sheet).is_file():
        data = base64.b64encode((Path(out_dir) / sheet).read_bytes()).decode("ascii")
        out.append(f'<img alt="flagged images" src="data:image/png;base64,{data}">')
    out.append("</section>")
    return "\n".join(out)


# --------------------------------------------------------------------------------------------
# Command line.


def cmd_inspect(args) -> int:
    """Run ``bench inspect``; prints the headline figures and where the files are."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(args.dataset)).stem
                  if ":" not in str(args.dataset) else str(args.dataset)).strip("_")
    out = Path(args.out) if args.out else Path("results") / "inspect" / (name or "dataset")
    result = inspect_dataset(
        args.dataset, out, image_size=args.image_size, cache_dir=args.cache_dir,
        seed=args.seed, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        near_threshold=args.near_threshold, near_min_corr=args.near_min_corr, iqr_k=args.iqr_k, min_side=args.min_side,
        low_res_k=args.low_res_k,
        exclude=args.exclude, sheet_max=args.sheet_max, sheet_kinds=args.sheet_kinds,
        sheet_cross_split_only=args.sheet_cross_split, progress=not args.quiet,
        data_dir=args.data_dir, labels=args.labels, id_column=args.id_column,
        label_column=args.label_column)
    c, nd = result["counts"], result["near_duplicates"]
    print(f"{result['dataset']['name']}: {c['images']} images, {c['skipped']} unreadable; "
          f"exact duplicate groups {result['exact_duplicates']['groups']}; near-duplicate "
          f"pairs {nd['pairs']} (d<={nd['threshold']}), {nd['cross_split_pairs']} across "
          f"splits; colour outliers {result['colour']['outliers']}; low resolution "
          f"{result['low_resolution'].get('count', 'n/a')}; {c['excluded']} excluded; "
          f"{result['timing']['total_s']:.1f} s")
    print(f"wrote {out}/inspect.md, inspect.json, exclusions.txt"
          + (", contact.png" if result["outputs"].get("contact_sheet") else ""))
    return 0
