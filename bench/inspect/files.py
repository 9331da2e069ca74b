"""The rows of an inspection (decoded images, each with its file, split and label) and the
pass over the source files: bytes, SHA-256 and the original size read from the header."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..data.sources import is_ignored, is_image_name
from .options import SPLIT_ORDER


class SourceFiles:
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


def _file_pass(files: SourceFiles, paths: list[str], workers: int):
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


@dataclasses.dataclass
class Rows:
    """The decoded images in train, val, test order; each row's file, split and label; and,
    for a folder or zip, what the file pass read (``digests``, ``nbytes``, ``wh``)."""

    ds: Any  # the bench.data.Dataset
    spec: str
    is_files: bool  # a folder or zip (not digits, not tfds:)
    files: SourceFiles | None
    paths: list[str]
    labels: np.ndarray
    split_of: np.ndarray
    images: np.ndarray
    skipped: list[dict]  # the loader's unreadable files, source-relative
    ignored: list[str]   # files whose extension is not an image's
    digests: list[bytes] | None = None
    nbytes: np.ndarray | None = None
    wh: np.ndarray | None = None  # original (width, height) after EXIF orientation
    problems: dict[int, str] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def row(self, k: int) -> dict:
        """Row ``k`` as inspect.json names a file: path, split, label."""
        return {"path": self.paths[k], "split": str(self.split_of[k]),
                "label": self.ds.classes[self.labels[k]]}


class Findings(dict):
    """Row -> its findings, ``{"kind", "reason", ...}``, in the order they were found."""

    def flag(self, k: int, kind: str, reason: str, **extra) -> None:
        self.setdefault(k, []).append({"kind": kind, "reason": reason, **extra})


def load_rows(spec_str: str, image_size: int, *, val_fraction: float, test_fraction: float,
              cache_dir, seed: int, progress: bool, workers: int, data_dir,
              timing: dict, labels=None, id_column=None, label_column=None) -> Rows:
    """The decoded arrays in training's split (through the training cache); each row mapped
    to its source file."""
    from ..data import load_dataset

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
        files = SourceFiles(Path(ds.source))
        _, ignored = files.list()
    parts = [(s, ds.splits[s]) for s in SPLIT_ORDER]
    paths = [str(f) if f is not None else f"{s}[{i}]" for s, sp in parts
             for i, f in enumerate(sp.files if sp.files is not None else [None] * len(sp))]
    labels = np.concatenate([sp.labels for _, sp in parts]).astype(np.int64)
    split_of = np.array([s for s, sp in parts for _ in range(len(sp))], object)
    images = np.concatenate([np.asarray(sp.images) for _, sp in parts])
    timing["map_s"] = time.perf_counter() - t
    return Rows(ds=ds, spec=spec_str, is_files=is_files, files=files, paths=paths,
                labels=labels, split_of=split_of, images=images, skipped=skipped_rel,
                ignored=ignored)


def read_files(rows: Rows, workers: int, timing: dict) -> None:
    """The file pass over a folder's or zip's originals (nothing for digits or tfds:)."""
    t = time.perf_counter()
    if rows.is_files:
        rows.digests, rows.nbytes, rows.wh, rows.problems = _file_pass(rows.files, rows.paths,
                                                                       workers)
    timing["files_s"] = time.perf_counter() - t
