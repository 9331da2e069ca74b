"""The decoded-array cache: one folder of .npy files per (source, image size), written beside
its final place and renamed into it when complete."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np

from runtime.hashing import arrays_digest
from runtime.paths import cache_root

log = logging.getLogger('bench.data')

CACHE_FORMAT = 2          # bump when the cache file layout or the decoding changes
# 2: per-row source files, a content checksum per group, labels range-checked on load


def default_cache_dir() -> Path:
    """``runtime.paths.cache_root() / "datasets"`` (``$BENCH_CACHE_DIR``, ``$XDG_CACHE_HOME/bench``
    or ``~/.cache/bench``)."""
    return cache_root() / "datasets"


def resolve_cache_dir(cache_dir) -> Path | None:
    if cache_dir is False:
        return None
    if cache_dir is None or cache_dir is True:
        return default_cache_dir()
    return Path(cache_dir).expanduser()


def read_cache(path: Path, key: str, num_classes: int | None = None):
    """-> ({group: (images memmap, labels)}, skipped, {group: files}), or None when absent or
    unusable: a wrong key, shapes that disagree, a checksum that does not match the arrays
    (bytes changed in place) or labels outside ``[0, num_classes)`` -- each rebuilt with a
    warning, never used."""
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
            if arrays_digest([x, y]) != meta["checksums"][g]:
                raise ValueError(f"{g}: the arrays do not match their checksum (changed "
                                 f"after they were written)")
            if len(y) and (y.min() < 0 or (num_classes is not None and y.max() >= num_classes)):
                raise ValueError(f"{g}: labels outside 0..{(num_classes or 1) - 1}")
            if len(meta["files"][g]) != len(y):
                raise ValueError(f"{g}: {len(meta['files'][g])} file names for {len(y)} rows")
            arrays[g] = (x, y)
        return arrays, meta["skipped"], {g: meta["files"][g] for g in meta["groups"]}
    except Exception as e:  # a damaged cache entry is rebuilt, never fatal
        log.warning("ignoring unreadable dataset cache %s (%s); rebuilding it", path, e)
        return None


def write_cache(path: Path, arrays: dict, meta: dict) -> None:
    """Write into a temporary folder beside ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
        meta = dict(meta, checksums={g: arrays_digest([x, y]) for g, (x, y) in arrays.items()})
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


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "dataset"
