"""Data sets: where the images come from, how they are decoded, how the result is cached.

``load_dataset(spec, image_size)`` returns a :class:`Dataset`: uint8 ``(N, H, W, 3)`` images
and int32 labels in ``train``, ``val`` and ``test`` splits. ``spec`` is one of

* ``digits``: the bundled default, scikit-learn's 1,797 8x8 digits (16 grey levels, scaled
  0..16 -> 0..255) upscaled to ``image_size``. No download.
* a directory or a ``.zip`` (read in place, never extracted), its layout detected:
  (a) ``train/`` + ``test/`` (and optionally ``val/`` or ``validation/``) split folders, each
  with one folder per class; (b) one folder per class; (c) flat Kaggle-style files whose name
  starts with the label (``cat.0.jpg``, ``dog.12.jpg``, ``great_dane_3.png``). Single
  wrapping folders (``archive.zip/cifar10/train/...``) are looked through. Class order is the
  sorted folder names, or a ``classes.txt`` (one name a line) at the root; next to a zip, a
  ``classes.txt`` that names exactly the zip's classes is used too.
* ``tfds:NAME[:VERSION][:SPLIT...]``: a tensorflow-datasets data set prepared as ArrayRecord,
  read with ``tfds.data_source`` (no TensorFlow needed). 0 splits named: the builder's own
  train/validation/test; 1: that split is split here; 2: train, test; 3: train, val, test.

Splits: given split folders are kept. Where there is no test split, a stratified seeded
train/val/test split is made; where train and test are given but no val, val is carved from
train (stratified, seeded). ``Dataset.split_info`` records which, with counts per class.

Decoding (once, Pillow): JPEGs are first reduced in the DCT domain (``Image.draft``) to no
less than the target size, EXIF orientation is applied, greyscale/palette/CMYK/16-bit images
become RGB, transparency is composited onto white, then PIL bilinear resize (antialiased) to
exactly ``image_size``, aspect ratio not preserved. Unreadable images (empty, truncated, not
an image) are skipped and listed in ``Dataset.skipped`` with the reason, and one warning is
logged; non-image files (by extension), dotfiles and ``__MACOSX/`` entries are ignored.
Decoding runs in a thread pool, one thread per core (``workers``). Threads against processes,
measured on the 2-core machine while shared with other jobs (load average 8 to 12, so no run
had both cores to itself), decoding the 60,000 CIFAR-10 JPEGs: serially 21.9 to 25.4 s (9.2
to 9.4 s CPU), 2 threads 19.4 to 24.0 s (9.2 to 9.8 s CPU), 2 processes 26.6 to 29.8 s (10.9
to 11.1 s CPU: results pickled back, a zip directory parse per worker). On idle cores
processes would scale further for such tiny images (only ~19% of a 32x32 JPEG's time is in
Pillow's decoder, which releases the GIL); threads were chosen because they won here, gain
more as images grow (decoding and resizing release the GIL) and never fork a process that
is running JAX.

Cache: decoded arrays are cached under ``cache_dir`` (default ``$BENCH_CACHE_DIR/datasets``
or ``~/.cache/bench/datasets``), one folder per source and image size holding
``<group>_images.npy``, ``<group>_labels.npy`` and ``meta.json``. It is written into a
temporary folder beside it and renamed into place (``os.replace``), so a killed run leaves no
partial entry. The key is the source fingerprint (zip: member names, sizes and CRC-32s from
the central directory; folder: relative paths, sizes and mtimes), the image size and the
resize method. Splits are drawn after loading, gathered straight from memory-mapped arrays
(one copy), so every seed shares one entry.
Why not tensorflow-datasets' ArrayRecord, the intended format: measured on the 2-core
machine for 60,000 32x32x3 images, a GeneratorBasedBuilder writing ArrayRecord took 19.3 s
to write and 5.7 s to read back through ``data_source`` (over the 3 s budget, and records
come back in key-hash order); array_record's own reader with one raw record per image,
0.85 s to write and 0.82 s to read; ``.npy``, 0.04 s to write and 0.49 s to read (a memmap
opens at once). ``.npy`` needs no extra dependency, keeps file order and memory-maps.
Measured with the CIFAR-10 JPEG zip (60,000 images at 32x32) on the 2-core machine while
shared (load average 11 to 14): the first call (list, decode, write the cache) took 32.3 s
with 2 threads and 36.3 s with 1 (11.3 and 10.6 s CPU; 34 to 44 s in earlier runs at that
load); later calls load from the cache in 1.9 to 2.4 s (0.7 to 0.8 s CPU, ~0.35 s of it
listing the zip to fingerprint it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

__all__ = ["Dataset", "Split", "decode_image", "default_cache_dir", "load_dataset"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm",
})
# Folder names accepted as splits, and the split each one stands for.
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test"}
SPLITS = ("train", "val", "test")
RESIZE_METHOD = ("PIL bilinear (antialiased), aspect not preserved; JPEG reduced by "
                 "Image.draft to no less than the target first; EXIF orientation applied; "
                 "alpha composited on white")
# Label prefix of a flat file: everything before a final separator and number
# ("cat.0.jpg" -> "cat", "great_dane_12.png" -> "great_dane").
_FLAT_NAME = re.compile(r"^(?P<label>.+?)[._-](?P<id>\d+)\.[^./]+$")
_CACHE_FORMAT = 1          # bump when the cache file layout or the decoding changes
_CHUNK = 256               # images per decode task: small enough for a smooth progress bar


@dataclasses.dataclass
class Split:
    images: np.ndarray  # uint8 (N, H, W, 3)
    labels: np.ndarray  # int32 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass
class Dataset:
    """Decoded images in train/val/test splits, with where they came from.

    ``fingerprint`` identifies the source files *and* the split: it changes with the
    source's content, ``seed``, the split fractions and ``max_per_class``, never with the
    image size. Same fingerprint and image size means identical arrays, so it is safe as
    the key of anything computed from them (features, predictions). ``source_fingerprint``
    identifies the files alone.
    """

    name: str
    source: str
    fingerprint: str
    classes: list[str]
    image_size: tuple[int, int]
    splits: dict[str, Split]
    skipped: list[dict]
    split_info: dict
    resize: str
    source_fingerprint: str = ""
    cache: dict = dataclasses.field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> dict:
        """JSON-able description for run records (no arrays)."""
        return {
            "name": self.name,
            "source": self.source,
            "fingerprint": self.fingerprint,
            "source_fingerprint": self.source_fingerprint,
            "classes": list(self.classes),
            "num_classes": self.num_classes,
            "image_size": list(self.image_size),
            "sizes": {k: len(s) for k, s in self.splits.items()},
            "split_info": self.split_info,
            "resize": self.resize,
            "skipped_count": len(self.skipped),
            "skipped": self.skipped[:50],
            "cache": self.cache,
        }


def default_cache_dir() -> Path:
    """``$BENCH_CACHE_DIR/datasets``, else ``$XDG_CACHE_HOME`` or ``~/.cache``/bench/datasets."""
    if os.environ.get("BENCH_CACHE_DIR"):
        return Path(os.environ["BENCH_CACHE_DIR"]).expanduser() / "datasets"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "bench" / "datasets"


def load_dataset(
    spec: str | os.PathLike,
    image_size: int | tuple[int, int] = 32,
    *,
    cache_dir: str | os.PathLike | bool | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    progress: bool = True,
    max_per_class: int | None = None,
    workers: int | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
) -> Dataset:
    """Load, decode (or read from the cache) and split a data set.

    Args:
      spec: ``"digits"``, a directory or ``.zip`` of images, or ``"tfds:NAME[:SPLIT...]"``
        (see the module docstring).
      image_size: output size, ``S`` or ``(H, W)``.
      cache_dir: where decoded arrays are cached; None for the default
        (:func:`default_cache_dir`), False for no cache. ``digits`` is never cached.
      seed: seed of the stratified splits (and of the ``max_per_class`` subset).
      val_fraction, test_fraction: fractions per class for splits made here; a given test
        split is kept and only val is carved from train.
      progress: show a progress bar while decoding.
      max_per_class: keep at most this many images per class in each given split (a seeded
        random subset, drawn before decoding, so it also saves decoding time).
      workers: decoding threads; default one per available core (1: decode in this thread).
      data_dir: tensorflow-datasets data directory for ``tfds:`` specs.
      download: allow ``tfds:`` specs to download and prepare a data set.

    Returns:
      A :class:`Dataset` whose ``splits`` always has ``train``, ``val`` and ``test``.

    Raises:
      ValueError: the path is missing, holds no images or a single class, or its layout is
        not one of those above; the tfds data set is not prepared and ``download`` is False.
    """
    size = _as_size(image_size)
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
            and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction}: "
                         "expected fractions in [0, 1) whose sum is below 1")
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class={max_per_class}: expected a positive integer or None")
    opts = _Options(size=size, seed=seed, val_fraction=val_fraction,
                    test_fraction=test_fraction, progress=progress,
                    max_per_class=max_per_class, workers=workers or _cpu_count(),
                    cache_dir=_resolve_cache_dir(cache_dir))
    spec_str = os.fspath(spec)
    if spec_str == "digits":
        source = _digits_source()
        opts = dataclasses.replace(opts, cache_dir=None)
    elif spec_str.startswith("tfds:"):
        source = _tfds_source(spec_str, data_dir=data_dir, download=download)
    else:
        source = _path_source(Path(spec_str).expanduser())
    return _prepare(source, opts)


# --------------------------------------------------------------------------------------------
# The pipeline shared by every kind of spec: subset, cache or decode, split.


@dataclasses.dataclass(frozen=True)
class _Options:
    size: tuple[int, int]
    seed: int
    val_fraction: float
    test_fraction: float
    progress: bool
    max_per_class: int | None
    workers: int
    cache_dir: Path | None


@dataclasses.dataclass
class _Source:
    """A spec resolved to a list of items per group, before any decoding."""

    name: str
    source: str
    fingerprint: str                       # of the source content and the class order
    classes: list[str]
    groups: dict[str, tuple[list, np.ndarray]]   # 'train'/'val'/'test' or 'all' -> keys, labels
    reader: Any                            # .read(key) -> bytes or array; .display(key) -> str
    layout: str
    parallel: bool = True                  # whether the reader may be used from threads


def _prepare(src: _Source, opts: _Options) -> Dataset:
    groups = _subset(src.groups, opts.max_per_class, opts.seed)
    key = _digest({
        "format": _CACHE_FORMAT, "source": src.fingerprint, "size": opts.size,
        "resize": RESIZE_METHOD, "max_per_class": opts.max_per_class,
        "subset_seed": opts.seed if opts.max_per_class else None,
    })
    h, w = opts.size
    cache_path = None
    if opts.cache_dir is not None:
        cache_path = opts.cache_dir / f"{_safe_name(src.name)}-{h}x{w}-{key[:16]}"
    t0 = time.perf_counter()
    cached = _read_cache(cache_path, key) if cache_path is not None else None
    if cached is not None:
        arrays, skipped = cached
        cache_info = {"path": str(cache_path), "hit": True}
    else:
        arrays, skipped = {}, []
        for g, (keys, labels) in groups.items():
            images, ok, bad = _decode_all(src, keys, opts, f"{src.name} {g}")
            arrays[g] = (images, labels[ok])
            skipped += bad
        if sum(len(v[1]) for v in arrays.values()) == 0:
            first = skipped[0] if skipped else {}
            raise ValueError(f"{src.source}: none of its {len(skipped)} images could be "
                             f"decoded (first: {first.get('path')}: {first.get('reason')})")
        cache_info = {"path": str(cache_path) if cache_path else None, "hit": False}
        if cache_path is not None:
            meta = {"key": key, "format": _CACHE_FORMAT, "source": src.source,
                    "size": list(opts.size), "classes": src.classes, "groups": list(arrays),
                    "skipped": skipped}
            try:
                _write_cache(cache_path, arrays, meta)
            except OSError as e:  # a full or read-only disk costs the cache, not the run
                log.warning("could not write the dataset cache %s: %s", cache_path, e)
                cache_info["path"] = None
    if skipped:
        log.warning("%s: skipped %d unreadable image(s), e.g. %s (%s)", src.source,
                    len(skipped), skipped[0]["path"], skipped[0]["reason"])
    splits, split_info = _make_splits(arrays, src.classes, opts)
    cache_info["seconds"] = round(time.perf_counter() - t0, 3)  # decode or read, and split
    split_info["layout"] = src.layout
    fingerprint = _digest({
        "source": src.fingerprint, "seed": opts.seed, "val_fraction": opts.val_fraction,
        "test_fraction": opts.test_fraction, "max_per_class": opts.max_per_class,
    })
    return Dataset(name=src.name, source=src.source, fingerprint=fingerprint,
                   classes=list(src.classes), image_size=opts.size, splits=splits,
                   skipped=skipped, split_info=split_info, resize=RESIZE_METHOD,
                   source_fingerprint=src.fingerprint, cache=cache_info)


def _subset(groups, max_per_class, seed):
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


def _make_splits(arrays, classes, opts: _Options):
    """Train/val/test from the decoded groups. Cached images arrive as memmaps: indexing
    gathers each split straight out of the page cache, one copy in all."""
    rng = np.random.default_rng(opts.seed)
    info: dict[str, Any] = {"seed": opts.seed}
    if "all" in arrays:
        x, y = arrays["all"]
        tr, va, te = _stratified(y, [opts.val_fraction, opts.test_fraction], rng)
        splits = {"train": Split(x[tr], y[tr]), "val": Split(x[va], y[va]),
                  "test": Split(x[te], y[te])}
        info.update(method="stratified", val_fraction=opts.val_fraction,
                    test_fraction=opts.test_fraction)
    elif "test" not in arrays:
        raise AssertionError(f"groups {list(arrays)}: expected 'all' or a test split")
    elif "val" in arrays:
        splits = {k: Split(_own(arrays[k][0]), arrays[k][1]) for k in SPLITS}
        info.update(method="given")
    else:
        x, y = arrays["train"]
        tr, va = _stratified(y, [opts.val_fraction], rng)
        splits = {"train": Split(x[tr], y[tr]), "val": Split(x[va], y[va]),
                  "test": Split(_own(arrays["test"][0]), arrays["test"][1])}
        info.update(method="given train/test; val carved from train (stratified)",
                    val_fraction=opts.val_fraction)
    info["sizes"] = {k: len(s) for k, s in splits.items()}
    info["counts"] = {k: {c: int(n) for c, n in zip(classes, np.bincount(
        s.labels, minlength=len(classes)))} for k, s in splits.items()}
    return splits, info


# --------------------------------------------------------------------------------------------
# Decoding.


def decode_image(data: bytes | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Encoded image bytes (or a (H, W[, C]) uint8 array) -> uint8 RGB array of ``size``.

    Raises whatever Pillow raises for unreadable data; :func:`_decode_chunk` turns that into
    a skip reason.
    """
    from PIL import Image, ImageOps

    h, w = size
    if isinstance(data, np.ndarray):
        im = Image.fromarray(data[..., 0] if data.ndim == 3 and data.shape[-1] == 1 else data)
    else:
        if len(data) == 0:
            raise _Unreadable("empty file (0 bytes)")
        im = Image.open(io.BytesIO(data))
        if im.format == "JPEG":
            # DCT-domain downscale by up to 8x, never below the target (square bound: the
            # EXIF rotation below may swap the sides).
            im.draft("RGB", (max(h, w), max(h, w)))
        if "exif" in im.info or im.format == "TIFF":
            im = ImageOps.exif_transpose(im)
    im = _to_rgb(im)
    if im.size != (w, h):
        im = im.resize((w, h), Image.BILINEAR)
    return np.asarray(im, dtype=np.uint8)


class _Unreadable(Exception):
    """A file that is not a decodable image, with the reason to report."""


def _to_rgb(im):
    """Any Pillow mode -> RGB; transparent pixels are composited onto white."""
    from PIL import Image

    if im.mode == "RGB" and "transparency" not in im.info:
        im.load()
        return im
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        a = np.asarray(im)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
            a = np.clip(a, 0, 65535) // 257        # 16-bit range -> 8-bit
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        im = im.convert("RGBA")
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, im)
    return im.convert("RGB")


def _skip_reason(e: Exception) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(e, _Unreadable):
        return str(e)
    if isinstance(e, UnidentifiedImageError):
        return "not an image (Pillow cannot identify the format)"
    msg = str(e)
    if isinstance(e, OSError) and "truncated" in msg.lower():
        return f"truncated image ({msg})"
    return f"{type(e).__name__}: {msg}"


def _decode_into(out: np.ndarray, keys: Sequence, reader):
    """Decode ``keys`` into ``out`` (their slice of the result) -> (ok mask, [(key, reason)])."""
    ok = np.zeros(len(keys), bool)
    bad = []
    for i, key in enumerate(keys):
        try:
            out[i] = decode_image(reader.read(key), out.shape[1:3])
            ok[i] = True
        except Exception as e:  # any failure of one file is that file's problem, reported
            bad.append((key, _skip_reason(e)))
    return ok, bad


def _decode_all(src: _Source, keys: list, opts: _Options, desc: str):
    """Decode every key, in a thread pool; returns images, ok mask, skipped."""
    n = len(keys)
    images = np.empty((n, *opts.size, 3), np.uint8)
    ok = np.zeros(n, bool)
    bad: list = []
    starts = range(0, n, _CHUNK)

    def chunk(start):  # threads write disjoint slices of ``images``
        stop = min(start + _CHUNK, n)
        return _decode_into(images[start:stop], keys[start:stop], src.reader)

    with _progress_bar(opts.progress, desc, n) as advance, contextlib.ExitStack() as stack:
        if opts.workers <= 1 or n <= _CHUNK or not src.parallel:
            results = map(chunk, starts)
        else:
            from concurrent.futures import ThreadPoolExecutor

            pool = stack.enter_context(ThreadPoolExecutor(opts.workers,
                                                          thread_name_prefix="decode"))
            results = pool.map(chunk, starts)
        for start, (mask, chunk_bad) in zip(starts, results):
            ok[start:start + len(mask)] = mask
            bad.extend(chunk_bad)
            advance(len(mask))
    skipped = [{"path": src.reader.display(k), "reason": r} for k, r in bad]
    skipped.sort(key=lambda d: d["path"])
    return (images if ok.all() else images[ok]), ok, skipped


@contextlib.contextmanager
def _progress_bar(enabled: bool, desc: str, total: int) -> Iterator[Callable[[int], None]]:
    if not enabled or total == 0:
        yield lambda k: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    with Progress(TextColumn("decoding {task.description}"), BarColumn(),
                  MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True)) as bar:
        task = bar.add_task(desc, total=total)
        yield lambda k: bar.advance(task, k)


# --------------------------------------------------------------------------------------------
# Cache: one folder of .npy files per (source, image size), renamed into place when complete.


def _read_cache(path: Path, key: str):
    """-> ({group: (images memmap, labels)}, skipped), or None when absent or unusable."""
    meta_file = path / "meta.json"
    if not meta_file.exists():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        if meta.get("key") != key:
            return None
        arrays = {}
        for g in meta["groups"]:
            x = np.load(path / f"{g}_images.npy", mmap_mode="r", allow_pickle=False)
            y = np.load(path / f"{g}_labels.npy", allow_pickle=False)
            if x.shape[0] != y.shape[0] or x.shape[1:] != (*meta["size"], 3):
                raise ValueError(f"{g}: images {x.shape} and labels {y.shape} disagree")
            arrays[g] = (x, y)
        return arrays, meta["skipped"]
    except Exception as e:  # a damaged cache entry is rebuilt, never fatal
        log.warning("ignoring unreadable dataset cache %s (%s); rebuilding it", path, e)
        return None


def _write_cache(path: Path, arrays: dict, meta: dict) -> None:
    """Write into a temporary folder beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        for g, (x, y) in arrays.items():
            np.save(tmp / f"{g}_images.npy", x)
            np.save(tmp / f"{g}_labels.npy", y)
        (tmp / "meta.json").write_text(json.dumps(meta))
        if path.exists():  # damaged (a sound entry would have been read): move it away
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            with contextlib.suppress(FileNotFoundError):
                os.replace(path, old / "entry")
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, path)
        except OSError:
            if not (path / "meta.json").exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process finished it first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------------------------
# Sources: the bundled digits.


class _ArrayReader:
    def __init__(self, images: np.ndarray):
        self.images = images

    def read(self, i: int) -> np.ndarray:
        return self.images[i]

    def display(self, i: int) -> str:
        return f"#{i}"


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: (1797, 8, 8) values 0..16 and labels.

    Read straight from the file scikit-learn ships: importing ``sklearn.datasets`` (and so
    scipy) costs seconds, the file a few milliseconds.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for base in (spec.submodule_search_locations or []) if spec else []:
        path = Path(base, "datasets", "data", "digits.csv.gz")
        if path.is_file():
            with gzip.open(path, "rt") as f:
                table = np.loadtxt(f, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int32)
    from sklearn.datasets import load_digits  # layout changed: the slow, public way

    d = load_digits()
    return d.images, d.target.astype(np.int32)


def _digits_source() -> _Source:
    raw, labels = _digits_arrays()
    images = np.round(raw * (255 / 16)).astype(np.uint8)   # 16 grey levels -> 0..255
    return _Source(
        name="digits", source="sklearn.datasets.load_digits",
        fingerprint=_digest({"digits": hashlib.sha256(images.tobytes() + labels.tobytes())
                             .hexdigest()}),
        classes=[str(i) for i in range(10)], groups={"all": (list(range(len(labels))), labels)},
        reader=_ArrayReader(images), layout="bundled")


# --------------------------------------------------------------------------------------------
# Sources: a folder or a zip of image files.


class _DirReader:
    def __init__(self, root: Path):
        self.root = root

    def read(self, key: str) -> bytes:
        return (self.root / key).read_bytes()

    def display(self, key: str) -> str:
        return str(self.root / key)


class _ZipReader:
    """Reads members of a zip, with one handle per decoding thread (no shared file offset)."""

    def __init__(self, path: Path):
        self.path = path
        self._local = threading.local()

    def read(self, key: str) -> bytes:
        zf = getattr(self._local, "zip", None)
        if zf is None:
            zf = self._local.zip = zipfile.ZipFile(self.path)
        return zf.read(key)

    def display(self, key: str) -> str:
        return f"{self.path}/{key}"


def _ignored(path: str) -> bool:
    """Dotfiles, dot-folders and macOS resource forks (``__MACOSX/``)."""
    return "/." in f"/{path}" or "__MACOSX" in path.split("/")


def _is_image_name(name: str) -> bool:
    _, dot, ext = name.rpartition(".")
    return bool(dot) and f".{ext.lower()}" in IMAGE_EXTENSIONS


def _list_zip(path: Path):
    """-> image member names, a digest of their central-directory entries, extra texts."""
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise ValueError(f"{path}: not a readable zip file ({e}); expected a directory, "
                         "a .zip of images, 'digits' or 'tfds:NAME'") from None
    with zf:
        keys, h, texts = [], hashlib.sha256(), {}
        for info in zf.infolist():
            name = info.filename
            if info.is_dir() or _ignored(name):
                continue
            if _is_image_name(name):
                keys.append(name)
                h.update(f"{name}\0{info.file_size}\0{info.CRC}\n".encode())
            elif name.rsplit("/", 1)[-1] == "classes.txt":
                texts[name] = zf.read(info).decode("utf-8", "replace")
    keys.sort()
    return keys, h.hexdigest(), texts


def _list_dir(root: Path):
    """-> image paths relative to root, a digest of paths + sizes + mtimes, extra texts."""
    entries, texts = [], {}
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a symlink loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))
        rel_dir = os.path.relpath(dirpath, root)
        for f in filenames:
            if _ignored(f):
                continue
            rel = f if rel_dir == "." else f"{rel_dir}/{f}".replace(os.sep, "/")
            if _is_image_name(f):
                st = os.stat(os.path.join(dirpath, f))
                entries.append((rel, st.st_size, st.st_mtime_ns))
            elif f == "classes.txt":
                texts[rel] = Path(dirpath, f).read_text("utf-8", "replace")
    entries.sort()
    h = hashlib.sha256()
    for rel, size, mtime in entries:
        h.update(f"{rel}\0{size}\0{mtime}\n".encode())
    return [e[0] for e in entries], h.hexdigest(), texts


def _path_source(path: Path) -> _Source:
    if not path.exists():
        raise ValueError(f"dataset path {str(path)!r} does not exist; expected a directory, "
                         "a .zip of images, 'digits' or 'tfds:NAME'")
    path = Path(os.path.abspath(path))  # not resolve(): a symlink keeps its own name
    if path.is_dir():
        keys, listing, texts = _list_dir(path)
        reader, name = _DirReader(path), path.name
    elif zipfile.is_zipfile(path):
        keys, listing, texts = _list_zip(path)
        reader, name = _ZipReader(path), path.stem
    else:
        raise ValueError(f"{path}: not a directory or a zip file; expected a directory, "
                         "a .zip of images, 'digits' or 'tfds:NAME'")
    if not keys:
        raise ValueError(f"{path}: no images found (looked for files ending in "
                         f"{', '.join(sorted(IMAGE_EXTENSIONS))})")
    layout, prefix, groups = _detect_layout(keys, path)
    classes = sorted({c for items in groups.values() for _, c in items})
    classes = _class_order(classes, path, prefix, texts)
    index = {c: i for i, c in enumerate(classes)}
    src_groups = {g: ([k for k, _ in items], np.array([index[c] for _, c in items], np.int32))
                  for g, items in groups.items()}
    fingerprint = _digest({"listing": listing, "classes": classes, "layout": layout,
                           "groups": {g: len(v[0]) for g, v in src_groups.items()}})
    return _Source(name=name, source=str(path), fingerprint=fingerprint, classes=classes,
                   groups=src_groups, reader=reader, layout=layout)


def _detect_layout(keys: list[str], where: Path):
    """-> (layout, wrapping prefix, {group: [(key, class name)]}); ValueError if unknown.

    Tries the root first, then looks through single wrapping folders; the first level that
    is a known layout with two or more classes wins.
    """
    parts = [tuple(k.split("/")) for k in keys]
    prefix: tuple[str, ...] = ()
    one_class = None
    first_problem = None
    while True:
        rel = [p[len(prefix):] for p in parts]
        found = _layout_at(rel)
        if isinstance(found, str):
            first_problem = first_problem or found
        else:
            layout, groups = found
            names = {c for items in groups.values() for _, c in items}
            if len(names) >= 2:
                full = {g: [(keys[i], c) for i, c in items] for g, items in groups.items()}
                return layout, prefix, full
            one_class = (layout, prefix, names.pop())  # the innermost one is reported
        tops = {p[0] for p in rel}
        if len(tops) == 1 and all(len(p) > 1 for p in rel):
            prefix += (tops.pop(),)
            continue
        break
    if one_class is not None:
        layout, pre, name = one_class
        at = f" (inside {'/'.join(pre)}/)" if pre else ""
        raise ValueError(f"{where}: only one class, {name!r}{at}, as {layout}; expected at "
                         "least two classes (one folder per class, or files named "
                         "'<class>.<n>.jpg')")
    raise ValueError(f"{where}: unknown layout: {first_problem}. Expected train/ and test/ "
                     "folders (optionally val/) of class folders, one folder per class, or "
                     "flat files named '<class>.<n>.<ext>'")


def _layout_at(rel: list[tuple[str, ...]]):
    """Layout of paths relative to one level: (layout, {group: [(index, class)]}) or why not."""
    depths = Counter(len(p) for p in rel)
    if len(depths) > 1:
        examples = {}
        for p in rel:
            examples.setdefault(len(p), "/".join(p))
        shown = ", ".join(f"{examples[d]!r} (depth {d})" for d in sorted(examples))
        return f"images at mixed depths, e.g. {shown}"
    depth = next(iter(depths))
    tops = {p[0] for p in rel}
    if depth == 3:
        if not tops <= set(SPLIT_FOLDERS):
            return (f"images three folders deep under {sorted(tops)[:5]}, which are not "
                    f"split folders ({', '.join(SPLIT_FOLDERS)})")
        named = {SPLIT_FOLDERS[t] for t in tops}
        if len(named) != len(tops):
            return f"two folders for the same split: {sorted(tops)}"
        if "train" not in named or named == {"train"}:
            return f"split folders {sorted(tops)} without both train/ and a test/ or val/"
        layout = "split folders"
        if "test" not in named:  # train + val only: the given val is the held-out test set
            named_as = {t: ("test" if SPLIT_FOLDERS[t] == "val" else "train") for t in tops}
            layout = "split folders (no test/: the given validation folder is the test split)"
        else:
            named_as = {t: SPLIT_FOLDERS[t] for t in tops}
        groups: dict[str, list] = {}
        for i, p in enumerate(rel):
            groups.setdefault(named_as[p[0]], []).append((i, p[1]))
        train_classes = {c for _, c in groups["train"]}
        for g, items in groups.items():
            extra = {c for _, c in items} - train_classes
            if extra:
                return f"{g} split has classes missing from train: {sorted(extra)[:5]}"
        return layout, groups
    if depth == 2:
        if tops <= set(SPLIT_FOLDERS) and len(tops) > 1:
            return (f"split folders {sorted(tops)} hold image files directly; expected one "
                    "folder per class inside each")
        return "class folders", {"all": [(i, p[0]) for i, p in enumerate(rel)]}
    if depth == 1:
        items = []
        for i, (name,) in enumerate(rel):
            m = _FLAT_NAME.match(name)
            if m is None:
                return (f"flat files, but {name!r} is not named '<class>.<n>.<ext>' "
                        "(label prefix, separator, number)")
            items.append((i, m["label"]))
        return "flat files, label from file-name prefix", {"all": items}
    return f"images {depth} folders deep, e.g. {'/'.join(rel[0])!r}"


def _class_order(classes: list[str], path: Path, prefix: tuple[str, ...],
                 texts: dict[str, str]) -> list[str]:
    """Sorted class names, or the order of a classes.txt at the (wrapped) root."""
    def parse(text: str) -> list[str]:
        return [line.strip() for line in text.splitlines() if line.strip()]

    for where in ("/".join(prefix + ("classes.txt",)), "classes.txt"):
        if where in texts:
            names = parse(texts[where])
            if sorted(names) != classes:
                missing = sorted(set(classes) - set(names))
                unknown = sorted(set(names) - set(classes))
                raise ValueError(f"{path}/{where}: class names do not match the class "
                                 f"folders (missing: {missing[:5]}, not found: {unknown[:5]})")
            return names
    sibling = path.parent / "classes.txt"
    if path.is_file() and sibling.is_file():
        names = parse(sibling.read_text("utf-8", "replace"))
        if sorted(names) == classes:  # only when it is clearly this zip's list
            return names
    return classes


# --------------------------------------------------------------------------------------------
# Sources: tensorflow-datasets.


class _TfdsReader:
    def __init__(self, sources: dict, image_key: str):
        self.sources = sources
        self.image_key = image_key

    def read(self, key: tuple[str, int]) -> np.ndarray:
        split, i = key
        return np.asarray(self.sources[split][i][self.image_key])

    def display(self, key: tuple[str, int]) -> str:
        return f"{key[0]}[{key[1]}]"


_TF_EXTRA = "pip install 'jax-image-bench[tf]'"


def _split_spec(text: str) -> list[str]:
    """Split on ':' outside brackets, so 'train[:80%]' stays one part."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == ":" and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    return parts + [cur]


def _tfds_source(spec: str, *, data_dir, download: bool) -> _Source:
    parts = _split_spec(spec[len("tfds:"):])
    name, splits = parts[0], [s for s in parts[1:] if s]
    if splits and re.fullmatch(r"\d+\.\d+\.\d+", splits[0]):
        name, splits = f"{name}:{splits[0]}", splits[1:]
    if not name or len(splits) > 3:
        raise ValueError(f"{spec!r}: expected 'tfds:NAME[:VERSION][:SPLIT...]' with at most "
                         "three splits (train, val, test)")
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise ImportError(f"{spec!r} needs tensorflow-datasets ({e}): "
                          "pip install tensorflow-datasets array_record") from None
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            if not download:
                raise ValueError(_not_prepared_message(spec, builder))
            builder = tfds.builder(name, data_dir=data_dir, file_format="array_record")
            builder.download_and_prepare()
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(f"{spec!r}: no tensorflow-datasets builder {name!r} "
                         f"({str(e).splitlines()[0]})") from None
    except ModuleNotFoundError as e:
        if _needs_tensorflow(e):
            raise ImportError(f"{spec!r}: the {name!r} builder needs TensorFlow to prepare "
                              f"the data set; install the [tf] extra: {_TF_EXTRA}") from None
        raise
    file_format = str(getattr(builder.info, "file_format", "") or "")
    if "array_record" not in file_format.lower():
        raise ValueError(
            f"{spec!r} is prepared in {builder.data_dir} as {file_format or 'tfrecord'}, "
            "which needs TensorFlow to read; prepare it as ArrayRecord instead "
            f"(`tfds build {name} --file_format=array_record`, or delete it and pass "
            "download=True / --download)")
    available = list(builder.info.splits)
    if not splits:
        by_role = {SPLIT_FOLDERS.get(s): s for s in available if s in SPLIT_FOLDERS}
        if "train" not in by_role:
            raise ValueError(f"{spec!r}: no 'train' split (has {available}); name the splits "
                             f"to use, e.g. 'tfds:{name}:{available[0] if available else 'all'}'")
        roles = [r for r in ("train", "val", "test") if r in by_role]
        if roles == ["train", "val"]:
            roles = ["train", "test"]  # the given validation split is the held-out set
            by_role = {"train": by_role["train"], "test": by_role["val"]}
        chosen = {r: by_role[r] for r in roles}
    else:
        roles = {1: ["all"], 2: ["train", "test"], 3: ["train", "val", "test"]}[len(splits)]
        chosen = dict(zip(roles, splits))
    if list(chosen) == ["train"]:
        chosen = {"all": chosen["train"]}
    image_key, label_key = _supervised_keys(builder)
    label_feature = builder.info.features[label_key]
    try:
        sources = {g: builder.as_data_source(split=s) for g, s in chosen.items()}
    except ModuleNotFoundError as e:
        if _needs_tensorflow(e):
            raise ImportError(f"{spec!r}: reading it needs TensorFlow; install the [tf] "
                              f"extra: {_TF_EXTRA}") from None
        raise
    groups = {}
    for g, split in chosen.items():
        # Labels first, without decoding the images (those are decoded once, below).
        ds = builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
        n = len(ds)
        labels = np.empty(n, np.int32)
        for start in range(0, n, 4096):
            batch = ds.__getitems__(list(range(start, min(start + 4096, n))))
            labels[start:start + len(batch)] = [int(r[label_key]) for r in batch]
        groups[g] = ([(g, i) for i in range(n)], labels)
    names = getattr(label_feature, "names", None)
    if not names:
        top = max((int(v[1].max(initial=-1)) for v in groups.values()), default=-1)
        names = [str(i) for i in range(top + 1)]
    fingerprint = _digest({
        "tfds": builder.info.full_name, "splits": chosen,
        "sizes": {g: len(v[1]) for g, v in groups.items()},
        "files": _dir_listing_digest(Path(os.fspath(builder.data_dir))),
    })
    return _Source(name=f"tfds:{name}", source=f"{spec} ({builder.data_dir})",
                   fingerprint=fingerprint, classes=list(names),
                   groups={g: (v[0], v[1]) for g, v in groups.items()},
                   reader=_TfdsReader(sources, image_key), layout="tfds",
                   parallel=False)


def _needs_tensorflow(e: ModuleNotFoundError) -> bool:
    # tfds re-raises with its own prefix and drops ``e.name``, so read the message too.
    return (e.name or "").split(".")[0] in ("tensorflow", "tensorflow_io") or bool(
        re.search(r"No module named '?tensorflow", str(e)))


def _supervised_keys(builder) -> tuple[str, str]:
    keys = builder.info.supervised_keys
    if isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys):
        return keys
    features = builder.info.features
    if "image" in features and "label" in features:
        return "image", "label"
    raise ValueError(f"tfds {builder.info.full_name!r}: no (image, label) supervised keys; "
                     f"features are {list(features)}")


def _not_prepared_message(spec: str, builder) -> str:
    try:
        infos = dict(builder.url_infos or {})
    except Exception:  # builders without a checksums file
        infos = {}
    urls = list(infos)
    sizes = [getattr(u, "size", None) for u in infos.values()]
    total = sum(sizes) if urls and all(sizes) else None
    what = (f"{len(urls)} file(s)" + (f", {total / 1e6:.0f} MB" if total else "")
            + (f" from {urls[0].split('/')[2]}" if urls else "")) if urls else "its source files"
    return (f"{spec!r} is not prepared in {builder.data_dir}. Preparing it downloads {what} "
            f"(see {builder.info.homepage or 'the tensorflow-datasets catalog'}) and writes "
            "ArrayRecord files there; allow it with download=True (CLI: --download), or pass "
            "the data_dir where it is already prepared")


def _dir_listing_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            h.update(f"{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# Small helpers.


def _as_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        image_size = (int(image_size), int(image_size))
    try:
        h, w = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise ValueError(f"image_size={image_size!r}: expected an int or (height, width)") \
            from None
    if h < 1 or w < 1:
        raise ValueError(f"image_size={image_size!r}: expected positive sizes")
    return h, w


def _resolve_cache_dir(cache_dir) -> Path | None:
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        return default_cache_dir()
    return Path(cache_dir).expanduser()


def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "dataset"
